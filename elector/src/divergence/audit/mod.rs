//! Divergence audit of a Mirror-Mode pair: are the two servers' entries the same?
//!
//! Why: with the syncprov session log, a node that was down can silently lose changes
//! while both nodes end with IDENTICAL `contextCSN` values (OPENLDAP-NOTES.md). Only an
//! entry-level comparison catches that.
//!
//! How (docs/divergence.md has the long version):
//! 1. One paged subtree search per server (concurrently) digests every entry (DN, user
//!    attributes and the replicated operational ones) and folds the digests into buckets
//!    keyed by the first `bucket_bits` of the entryUUID. Order-independent folding (a
//!    wrapping sum) means the servers' search orders do not matter, and memory is the
//!    bucket array, not the DIT.
//! 2. Buckets that differ are re-read with an entryUUID range filter (`>=`/`<=`, the
//!    UUIDOrderingMatch rule), a batch of buckets per search; a bucket too big for one
//!    batch is first split by a digest pass over its range. OpenLDAP's entryUUIDs are
//!    time-based, so a bulk load crowds a few buckets; splitting keeps memory bounded.
//! 3. Every differing entry is re-read by entryUUID in rounds with a growing back-off,
//!    together with each server's `contextCSN`. A difference counts as divergence only
//!    when it held unchanged over [`CONFIRMATIONS`] consecutive rounds in which each
//!    server had already processed everything the other had at the previous round (its
//!    contextCSN covers the other's). A write in flight changes the entry or is covered
//!    by neither contextCSN; it is retried, never reported as divergence. What keeps
//!    moving until the rounds run out is reported as "unsettled".
//!
//! Every LDAP operation has a timeout and the whole audit has a deadline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::PagedResults;
use ldap3::asn1::StructureTag;
use ldap3::controls::ManageDsaIt;
use ldap3::{Ldap, LdapConnAsync, Scope};
use serde::Serialize;
use tokio::time::Instant;

use ldap_elector_contract::backoff::Backoff;
use ldap_elector_contract::csn::ContextCsn;

use crate::slapd::ldap::{read_password, Bind, Credentials, LdapCheck, Tls};

/// Consecutive rounds a difference must hold (unchanged, both contextCSNs covering the
/// other's previous one) before it counts as divergence. Two, not one: a server's
/// contextCSN can trail a commit it already shows by a moment, so one covered round can
/// still be a delete in flight; the second round is read well after that moment.
pub const CONFIRMATIONS: u32 = 2;
/// Bucket width of the levels below the first (a split of an oversized bucket).
const SPLIT_BITS: u32 = 8;
/// At most this many entryUUID ranges OR-ed into one search.
const MAX_RANGES_PER_SEARCH: usize = 64;
/// At most this many entryUUIDs OR-ed into one re-read search.
const MAX_UUIDS_PER_SEARCH: usize = 64;
/// A leaf search may return this many times its planned entries (writes since the first
/// pass) before the audit gives up on it instead of growing without bound.
const LEAF_SLACK: usize = 4;
/// Entries without a usable entryUUID are named in a note, at most this many.
const MAX_NAMED_WITHOUT_UUID: usize = 10;
/// Operational attributes that replicate unchanged and so must be equal on both servers.
const OPERATIONAL: [&str; 7] = [
    "entryUUID",
    "entryCSN",
    "createTimestamp",
    "creatorsName",
    "modifyTimestamp",
    "modifiersName",
    "structuralObjectClass",
];
/// The last-change metadata: kept in a digest of its own, so a difference in it alone
/// can be told apart (on the suffix entry it is harmless in some delta-syncrepl setups).
const META: [&str; 3] = ["entrycsn", "modifytimestamp", "modifiersname"];
/// Per-server replication state, never compared (even when requested with `+`).
const ALWAYS_IGNORED: [&str; 1] = ["contextcsn"];

mod config;
mod digest;
mod judge;
mod plan;
mod report;
mod run;
#[cfg(test)]
mod tests;
mod uuid;

pub use config::*;
pub use digest::*;
pub use judge::*;
pub use plan::*;
pub use report::*;
pub use run::*;
pub use uuid::*;

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
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope};
use serde::Serialize;
use tokio::time::Instant;

use ldap_elector_contract::backoff::Backoff;
use ldap_elector_contract::csn::ContextCsn;

use crate::ldap::{read_password, Bind, Credentials, LdapCheck};

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

// ---------------------------------------------------------------------------------------
// Pure core: UUIDs, prefixes, digests, buckets, the in-flight judgement, the verdict.
// ---------------------------------------------------------------------------------------

/// An entryUUID as a number: its text form sorts like the number, and so does
/// slapd's UUIDOrderingMatch (memcmp of the 16 bytes).
pub type Uuid = u128;

/// Parses `8-4-4-4-12` hex (either case).
pub fn parse_uuid(s: &[u8]) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &c) in s.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = (c as char).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

pub fn format_uuid(u: Uuid) -> String {
    let h = format!("{u:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The first `len` bits of an entryUUID: a bucket, and the range of UUIDs in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The prefix bits, left-aligned; the bits after `len` are zero.
    bits: u128,
    len: u32,
}

impl Prefix {
    pub const ROOT: Prefix = Prefix { bits: 0, len: 0 };

    /// How many leading bits the prefix fixes.
    pub fn bits(&self) -> u32 {
        self.len
    }

    pub fn is_root(&self) -> bool {
        self.len == 0
    }

    /// The `index`-th of the `2^width` sub-buckets (`len + width <= 128`).
    pub fn child(&self, index: u128, width: u32) -> Prefix {
        let shift = 128 - self.len - width;
        Prefix { bits: self.bits | index.checked_shl(shift).unwrap_or(0), len: self.len + width }
    }

    /// Which of the `2^width` sub-buckets `uuid` falls in.
    pub fn index_of(&self, uuid: Uuid, width: u32) -> usize {
        let below = uuid.checked_shl(self.len).unwrap_or(0);
        below.checked_shr(128 - width).unwrap_or(0) as usize
    }

    pub fn contains(&self, uuid: Uuid) -> bool {
        uuid >= self.lo() && uuid <= self.hi()
    }

    fn lo(&self) -> Uuid {
        self.bits
    }

    fn hi(&self) -> Uuid {
        self.bits | u128::MAX.checked_shr(self.len).unwrap_or(0)
    }

    /// The search filter selecting this bucket's entries.
    pub fn filter(&self) -> String {
        if self.is_root() {
            "(objectClass=*)".to_string()
        } else {
            format!("(&(entryUUID>={})(entryUUID<={}))", format_uuid(self.lo()), format_uuid(self.hi()))
        }
    }

    /// Hex label (`9c96`, or `9c96/14` when not a whole number of hex digits).
    pub fn label(&self) -> String {
        if self.is_root() {
            return "*".to_string();
        }
        let digits = self.len.div_ceil(4) as usize;
        let hex = &format!("{:032x}", self.bits)[..digits];
        if self.len.is_multiple_of(4) {
            hex.to_string()
        } else {
            format!("{hex}/{}", self.len)
        }
    }
}

/// OR of the buckets' filters.
pub fn ranges_filter(prefixes: &[Prefix]) -> String {
    match prefixes {
        [one] => one.filter(),
        many => format!("(|{})", many.iter().map(Prefix::filter).collect::<String>()),
    }
}

/// OR of entryUUID equality filters.
pub fn uuids_filter(uuids: &[Uuid]) -> String {
    match uuids {
        [one] => format!("(entryUUID={})", format_uuid(*one)),
        many => format!("(|{})", many.iter().map(|u| format!("(entryUUID={})", format_uuid(*u))).collect::<String>()),
    }
}

/// One search result entry as raw bytes (attribute names as the server sent them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub dn: Vec<u8>,
    pub attrs: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
}

/// Takes a SearchResultEntry apart without panicking on malformed input (ldap3's
/// `SearchEntry::construct` panics on it): `None` when the shape is wrong.
pub fn parse_entry(tag: StructureTag) -> Option<RawEntry> {
    let mut parts = tag.match_id(4)?.expect_constructed()?.into_iter();
    let dn = parts.next()?.expect_primitive()?;
    let mut attrs = Vec::new();
    for attr in parts.next()?.expect_constructed()? {
        let mut attr = attr.expect_constructed()?.into_iter();
        let name = attr.next()?.expect_primitive()?;
        let values = attr
            .next()?
            .expect_constructed()?
            .into_iter()
            .map(StructureTag::expect_primitive)
            .collect::<Option<_>>()?;
        attrs.push((name, values));
    }
    Some(RawEntry { dn, attrs })
}

/// Which attributes the audit requests and which it leaves out of the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPolicy {
    /// Attribute list of every search (`*` plus the replicated operational attributes).
    pub request: Vec<String>,
    /// Lower-case names left out of the digests.
    pub ignore: HashSet<Vec<u8>>,
}

impl Default for AttrPolicy {
    fn default() -> Self {
        AttrPolicy::new(&[], &[])
    }
}

impl AttrPolicy {
    /// `extra`: more attributes to request (e.g. replicated ppolicy state);
    /// `ignore`: attributes that legitimately differ between the servers.
    pub fn new(extra: &[String], ignore: &[String]) -> AttrPolicy {
        let mut request: Vec<String> = std::iter::once("*").chain(OPERATIONAL).map(String::from).collect();
        for e in extra.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if !request.iter().any(|r| r.eq_ignore_ascii_case(e)) {
                request.push(e.to_string());
            }
        }
        let ignore = ignore
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .chain(ALWAYS_IGNORED)
            .map(|s| s.to_ascii_lowercase().into_bytes())
            .collect();
        AttrPolicy { request, ignore }
    }
}

/// What the audit keeps of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDigest {
    pub uuid: Option<Uuid>,
    pub dn: Vec<u8>,
    pub csn: Option<String>,
    /// DN and every compared attribute except the last-change metadata.
    pub content: u128,
    /// entryCSN, modifyTimestamp, modifiersName.
    pub meta: u128,
}

/// Digests an entry: attribute names are compared case-insensitively, attributes and
/// values as sets (sorted first), everything length-prefixed so no two entries encode alike.
pub fn digest_entry(mut entry: RawEntry, policy: &AttrPolicy) -> EntryDigest {
    for (name, values) in &mut entry.attrs {
        name.make_ascii_lowercase();
        values.sort_unstable();
    }
    entry.attrs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let first = |name: &[u8]| entry.attrs.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.first());
    let uuid = first(b"entryuuid").and_then(|v| parse_uuid(v));
    let csn = first(b"entrycsn").map(|v| String::from_utf8_lossy(v).into_owned());
    let mut content = ring::digest::Context::new(&ring::digest::SHA256);
    let mut meta = ring::digest::Context::new(&ring::digest::SHA256);
    put(&mut content, &entry.dn);
    for (name, values) in &entry.attrs {
        if policy.ignore.contains(name) {
            continue;
        }
        let ctx = if META.iter().any(|m| m.as_bytes() == name.as_slice()) { &mut meta } else { &mut content };
        put(ctx, name);
        ctx.update(&(values.len() as u32).to_be_bytes());
        for v in values {
            put(ctx, v);
        }
    }
    EntryDigest { uuid, dn: entry.dn, csn, content: truncate(content), meta: truncate(meta) }
}

fn put(ctx: &mut ring::digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u32).to_be_bytes());
    ctx.update(bytes);
}

fn truncate(ctx: ring::digest::Context) -> u128 {
    let digest = ctx.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// The order-independent fold of a bucket's entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub content: u128,
    pub meta: u128,
    pub count: u32,
}

impl Bucket {
    pub fn add(&mut self, d: &EntryDigest) {
        self.content = self.content.wrapping_add(d.content);
        self.meta = self.meta.wrapping_add(d.meta);
        self.count = self.count.saturating_add(1);
    }
}

/// The `2^width` buckets under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    pub prefix: Prefix,
    pub width: u32,
    pub buckets: Vec<Bucket>,
}

impl Buckets {
    pub fn new(prefix: Prefix, width: u32) -> Buckets {
        Buckets { prefix, width, buckets: vec![Bucket::default(); 1 << width] }
    }

    /// Folds an entry in; `false` (and nothing folded) when it has no UUID under the prefix.
    pub fn add(&mut self, d: &EntryDigest) -> bool {
        match d.uuid {
            Some(u) if self.prefix.contains(u) => {
                let i = self.prefix.index_of(u, self.width);
                self.buckets[i].add(d);
                true
            }
            _ => false,
        }
    }
}

/// A bucket whose digests differ, with each side's entry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketDiff {
    pub prefix: Prefix,
    pub count_a: u32,
    pub count_b: u32,
}

impl BucketDiff {
    pub fn size(&self) -> usize {
        self.count_a.max(self.count_b) as usize
    }
}

/// The buckets that differ between two passes over the same prefix and width.
pub fn differing(a: &Buckets, b: &Buckets) -> Vec<BucketDiff> {
    a.buckets
        .iter()
        .zip(&b.buckets)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| BucketDiff {
            prefix: a.prefix.child(i as u128, a.width),
            count_a: x.count,
            count_b: y.count,
        })
        .collect()
}

/// What to do with the next differing buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Read these buckets' entries in one search (at most `leaf_max` entries planned).
    Leaf(Vec<Prefix>),
    /// Too big for one read: digest its sub-buckets first.
    Split(Prefix),
}

/// Takes the next step off the front of `queue`: a bucket over `leaf_max` entries is
/// split (while it can be), otherwise buckets are batched up to `leaf_max` entries and
/// [`MAX_RANGES_PER_SEARCH`] ranges.
pub fn next_plan(queue: &mut VecDeque<BucketDiff>, leaf_max: usize) -> Option<Plan> {
    let first = queue.pop_front()?;
    if first.size() > leaf_max && first.prefix.bits() + SPLIT_BITS <= 128 {
        return Some(Plan::Split(first.prefix));
    }
    let mut batch = vec![first.prefix];
    let mut planned = first.size();
    while let Some(next) = queue.front() {
        if batch.len() >= MAX_RANGES_PER_SEARCH || planned + next.size() > leaf_max {
            break;
        }
        planned += next.size();
        batch.push(next.prefix);
        queue.pop_front();
    }
    Some(Plan::Leaf(batch))
}

/// An entry as one server holds it, for the entry-level comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub dn: String,
    pub csn: Option<String>,
    pub content: u128,
    pub meta: u128,
}

impl From<EntryDigest> for EntryState {
    fn from(d: EntryDigest) -> Self {
        EntryState { dn: String::from_utf8_lossy(&d.dn).into_owned(), csn: d.csn, content: d.content, meta: d.meta }
    }
}

impl EntryState {
    fn same(&self, other: &EntryState) -> bool {
        self.content == other.content && self.meta == other.meta
    }
}

/// Both servers' view of one entry (`None`: the server does not hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub a: Option<EntryState>,
    pub b: Option<EntryState>,
}

fn same(x: &Option<EntryState>, y: &Option<EntryState>) -> bool {
    match (x, y) {
        (None, None) => true,
        (Some(x), Some(y)) => x.same(y),
        _ => false,
    }
}

impl Observation {
    pub fn agrees(&self) -> bool {
        same(&self.a, &self.b)
    }

    fn unchanged_since(&self, earlier: &Observation) -> bool {
        same(&self.a, &earlier.a) && same(&self.b, &earlier.b)
    }
}

/// Each server's contextCSN just before and just after a round's reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundCtx {
    pub a_before: ContextCsn,
    pub a_after: ContextCsn,
    pub b_before: ContextCsn,
    pub b_after: ContextCsn,
}

/// How one re-read of a differing entry turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The servers agree now: the difference was a change in flight.
    Agrees,
    /// The entry changed on a server since the previous round.
    Moving,
    /// Unchanged, but a server had not yet processed all the other had at the previous
    /// round (replication still on its way).
    Lagging,
    /// Unchanged although each server had processed everything the other had: one step
    /// towards confirming divergence.
    Holds,
}

/// Judges the current round against the previous one (pure: the heart of "retry, do not
/// report, what is in flight").
pub fn judge(prev: &Observation, prev_ctx: &RoundCtx, cur: &Observation, cur_ctx: &RoundCtx) -> Judgement {
    if cur.agrees() {
        Judgement::Agrees
    } else if !cur.unchanged_since(prev) {
        Judgement::Moving
    } else if cur_ctx.a_before.covers(&prev_ctx.b_after) && cur_ctx.b_before.covers(&prev_ctx.a_after) {
        Judgement::Holds
    } else {
        Judgement::Lagging
    }
}

/// A differing entry the audit follows through its rounds.
#[derive(Debug, Clone)]
struct Tracked {
    obs: Observation,
    /// The contextCSN bracket of the read that made `obs`.
    ctx: Arc<RoundCtx>,
    streak: u32,
    last: Judgement,
}

/// The kind of a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Only server B holds the entry.
    MissingOnA,
    /// Only server A holds the entry.
    MissingOnB,
    /// Both hold it, with different contents or last-change metadata.
    Differs,
}

/// One entry that differs between the servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: DiffKind,
    /// The DN (A's when both hold the entry).
    pub dn: String,
    /// B's DN when it differs from A's (a missed rename).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dn_b: Option<String>,
    pub entry_uuid: String,
    pub entry_csn_a: Option<String>,
    pub entry_csn_b: Option<String>,
    /// Both hold the entry with equal attributes: only entryCSN/modifyTimestamp/modifiersName differ.
    pub metadata_only: bool,
    /// For unsettled entries: why the audit could not decide (`moving`, `lagging`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Difference {
    fn new(uuid: Uuid, obs: &Observation, reason: Option<&str>) -> Difference {
        let (kind, dn, dn_b) = match (&obs.a, &obs.b) {
            (None, Some(b)) => (DiffKind::MissingOnA, b.dn.clone(), None),
            (Some(a), None) => (DiffKind::MissingOnB, a.dn.clone(), None),
            (Some(a), Some(b)) => {
                (DiffKind::Differs, a.dn.clone(), Some(b.dn.clone()).filter(|d| !d.eq_ignore_ascii_case(&a.dn)))
            }
            // Both absent agrees; never tracked.
            (None, None) => (DiffKind::Differs, String::new(), None),
        };
        let metadata_only = matches!((&obs.a, &obs.b), (Some(a), Some(b)) if a.content == b.content);
        Difference {
            kind,
            dn,
            dn_b,
            entry_uuid: format_uuid(uuid),
            entry_csn_a: obs.a.as_ref().and_then(|s| s.csn.clone()),
            entry_csn_b: obs.b.as_ref().and_then(|s| s.csn.clone()),
            metadata_only,
            reason: reason.map(String::from),
        }
    }

    fn describe(&self) -> String {
        let csn = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".into());
        match self.kind {
            DiffKind::MissingOnA => {
                format!("missing on A  {}  (B holds it, entryCSN {})", self.dn, csn(&self.entry_csn_b))
            }
            DiffKind::MissingOnB => {
                format!("missing on B  {}  (A holds it, entryCSN {})", self.dn, csn(&self.entry_csn_a))
            }
            DiffKind::Differs => {
                let mut s = format!(
                    "differs       {}  entryCSN A {} vs B {}",
                    self.dn,
                    csn(&self.entry_csn_a),
                    csn(&self.entry_csn_b)
                );
                if let Some(dn_b) = &self.dn_b {
                    let _ = write!(s, "; B names it {dn_b}");
                }
                if self.metadata_only {
                    s.push_str(" (attributes equal)");
                }
                s
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every entry agrees (differences in flight were retried until they resolved).
    InSync,
    /// At least one entry differs for good.
    Diverged,
    /// No confirmed divergence, but some entries kept changing or replication lagged
    /// until the retries ran out (or differences were left unexamined): audit again.
    Unsettled,
}

impl Verdict {
    pub fn decide(confirmed: usize, unsettled: usize, unexamined: usize) -> Verdict {
        if confirmed > 0 {
            Verdict::Diverged
        } else if unsettled > 0 || unexamined > 0 {
            Verdict::Unsettled
        } else {
            Verdict::InSync
        }
    }

    /// Exit status of `ldap-elector audit`: 0 in sync, 1 diverged, 3 unsettled (2 is a
    /// usage error, 4 an audit that could not finish).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::InSync => 0,
            Verdict::Diverged => 1,
            Verdict::Unsettled => 3,
        }
    }
}

/// One server's side of the report.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    pub url: String,
    /// Entries seen by the first pass.
    pub entries: u64,
    pub context_csn: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Buckets of the first pass.
    pub buckets: usize,
    /// Buckets of the first pass whose digests differed.
    pub differing_buckets: usize,
    /// Buckets that were too big for one read and were split by a digest pass.
    pub split_buckets: usize,
    /// Entries re-read in differing buckets (both servers).
    pub entries_reread: u64,
    /// Entries that differed at first sight (before the retries).
    pub candidates: u64,
    /// Searches issued (both servers).
    pub searches: u64,
    /// Re-read rounds, summed over the batches.
    pub rounds: u32,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub base: String,
    pub a: SideReport,
    pub b: SideReport,
    /// Equal contextCSN values prove nothing (see the notes); shown because a divergence
    /// with equal values is the signature of the session-log bug.
    pub context_csn_equal: bool,
    /// Confirmed differences (at most `max_report`).
    pub differences: Vec<Difference>,
    /// Confirmed differences beyond `max_report`, counted but not listed.
    pub differences_not_listed: u64,
    /// Differences that did not settle within the retries.
    pub unsettled: Vec<Difference>,
    /// Differing buckets left unexamined (after `max_report` confirmed differences).
    pub unexamined_buckets: u64,
    pub notes: Vec<String>,
    pub stats: Stats,
}

impl Report {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "audit of {}", self.base);
        for (label, side) in [("A", &self.a), ("B", &self.b)] {
            let _ = writeln!(
                s,
                "  {label} {}: {} entries, contextCSN {}",
                side.url,
                side.entries,
                if side.context_csn.is_empty() { "-".into() } else { side.context_csn.join(" ") }
            );
        }
        let confirmed = self.differences.len() as u64 + self.differences_not_listed;
        match self.verdict {
            Verdict::InSync => {
                let _ = writeln!(s, "verdict: in sync");
            }
            Verdict::Diverged => {
                let _ = writeln!(
                    s,
                    "verdict: DIVERGED: {confirmed} {}{}",
                    if confirmed == 1 { "entry differs" } else { "entries differ" },
                    if self.context_csn_equal { " although both servers show the same contextCSN" } else { "" }
                );
            }
            Verdict::Unsettled => {
                let _ = writeln!(
                    s,
                    "verdict: unsettled: no divergence confirmed, but {} entr{} kept changing or lagging{}; audit again",
                    self.unsettled.len(),
                    if self.unsettled.len() == 1 { "y" } else { "ies" },
                    if self.unexamined_buckets > 0 {
                        format!(" and {} differing buckets were not examined", self.unexamined_buckets)
                    } else {
                        String::new()
                    }
                );
            }
        }
        for d in &self.differences {
            let _ = writeln!(s, "  {}", d.describe());
        }
        if self.differences_not_listed > 0 {
            let _ = writeln!(s, "  … and {} more (raise --max-report to list them)", self.differences_not_listed);
        }
        for d in &self.unsettled {
            let _ = writeln!(s, "  unsettled ({}): {}", d.reason.as_deref().unwrap_or("?"), d.describe());
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let st = &self.stats;
        let _ = writeln!(
            s,
            "{} buckets, {} differed ({} split); {} entries re-read, {} differed at first sight; {} rounds, {} searches; {:.2} s",
            st.buckets,
            st.differing_buckets,
            st.split_buckets,
            st.entries_reread,
            st.candidates,
            st.rounds,
            st.searches,
            st.elapsed_ms as f64 / 1000.0
        );
        s
    }
}

// ---------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub a: LdapCheck,
    pub b: LdapCheck,
    /// Width of the first-level buckets (8, 12, 16 or 20 bits of the entryUUID).
    pub bucket_bits: u32,
    /// Most entries (per server) read into memory at once.
    pub leaf_max: usize,
    pub page_size: i32,
    pub policy: AttrPolicy,
    /// Re-read rounds after the first read of a differing entry.
    pub settle_rounds: u32,
    /// Back-off before the first re-read; doubles per round up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Timeout of each LDAP operation (and of each page of a search).
    pub op_timeout: Duration,
    /// Deadline of the whole audit.
    pub timeout: Duration,
    /// Confirmed differences listed (the rest are counted; the audit stops descending).
    pub max_report: usize,
}

impl AuditConfig {
    /// The defaults with the two servers: `ldap://…?base=SUFFIX` / `ldapi://…?base=SUFFIX`,
    /// both bound with `creds` (simple bind with a DN; else SASL EXTERNAL over ldapi,
    /// anonymous over ldap).
    pub fn new(a: &str, b: &str, creds: &Credentials) -> Result<AuditConfig, String> {
        let parse = |label: &str, s: &str| {
            LdapCheck::parse(s).and_then(|c| c.with_credentials(creds)).map_err(|e| format!("server {label}: {e}"))
        };
        let (a, b) = (parse("A", a)?, parse("B", b)?);
        if !a.base.eq_ignore_ascii_case(&b.base) {
            return Err(format!(
                "the servers must be audited under the same suffix, got {:?} and {:?}",
                a.base, b.base
            ));
        }
        Ok(AuditConfig {
            a,
            b,
            bucket_bits: 16,
            leaf_max: 5000,
            page_size: 1000,
            policy: AttrPolicy::default(),
            settle_rounds: 6,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1600),
            op_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(300),
            max_report: 1000,
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if ![8, 12, 16, 20].contains(&self.bucket_bits) {
            return Err(format!("bucket bits must be 8, 12, 16 or 20, got {}", self.bucket_bits));
        }
        if !(100..=1_000_000).contains(&self.leaf_max) {
            return Err(format!("leaf max must be 100..=1000000 entries, got {}", self.leaf_max));
        }
        if !(1..=100_000).contains(&self.page_size) {
            return Err(format!("page size must be 1..=100000, got {}", self.page_size));
        }
        if self.settle_rounds < CONFIRMATIONS || self.settle_rounds > 50 {
            return Err(format!("settle rounds must be {CONFIRMATIONS}..=50, got {}", self.settle_rounds));
        }
        if self.max_report == 0 {
            return Err("max report must be at least 1".into());
        }
        Ok(())
    }

    fn backoff(&self, round: u32) -> Duration {
        Backoff::new(self.backoff, self.backoff_max).delay(round.saturating_sub(1))
    }
}

// ---------------------------------------------------------------------------------------
// Edges: the connections and the audit itself.
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("server {side} ({url}): {step}: {message}{hint}")]
    Ldap { side: &'static str, url: String, step: &'static str, message: String, code: Option<u32>, hint: &'static str },
    #[error("server {side} ({url}): {what} returned more than {limit} entries (it grew during the audit?); raise the bucket bits")]
    TooMany { side: &'static str, url: String, what: String, limit: usize },
    #[error("the audit did not finish within {0:?} (--timeout)")]
    Timeout(Duration),
}

/// Runs the audit. Never reports divergence for a change in flight; fails with an error
/// (not a verdict) when a server cannot be read completely.
pub async fn audit(cfg: &AuditConfig) -> Result<Report, AuditError> {
    match tokio::time::timeout(cfg.timeout, audit_inner(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(AuditError::Timeout(cfg.timeout)),
    }
}

async fn audit_inner(cfg: &AuditConfig) -> Result<Report, AuditError> {
    let started = Instant::now();
    let (a, b) = tokio::try_join!(Side::open("A", &cfg.a, cfg), Side::open("B", &cfg.b, cfg))?;
    let mut stats = Stats { buckets: 1 << cfg.bucket_bits, ..Stats::default() };
    let mut notes = Vec::new();

    let (pa, pb) =
        tokio::try_join!(a.digest_pass(Prefix::ROOT, cfg.bucket_bits), b.digest_pass(Prefix::ROOT, cfg.bucket_bits))?;
    for (label, pass) in [("A", &pa), ("B", &pb)] {
        if pass.without_uuid > 0 {
            notes.push(format!(
                "{} entries on {label} have no usable entryUUID and were not compared (e.g. {})",
                pass.without_uuid,
                pass.named_without_uuid.join("; ")
            ));
        }
    }
    let mut queue: VecDeque<BucketDiff> = differing(&pa.buckets, &pb.buckets).into();
    stats.differing_buckets = queue.len();
    let (entries_a, entries_b) = (pa.entries, pb.entries);
    drop((pa, pb));

    let mut outcome = Outcome::default();
    // Differing entries of several batches share their re-read rounds (and back-off), up
    // to `leaf_max` of them at a time.
    let mut pending: BTreeMap<Uuid, Tracked> = BTreeMap::new();
    while let Some(plan) = next_plan(&mut queue, cfg.leaf_max) {
        if outcome.confirmed_total >= cfg.max_report as u64 {
            // Enough to make the verdict and the repair decision; the rest is counted.
            let planned = match &plan {
                Plan::Leaf(prefixes) => prefixes.len(),
                Plan::Split(_) => 1,
            };
            outcome.unexamined = (queue.len() + planned) as u64;
            break;
        }
        match plan {
            Plan::Split(prefix) => {
                stats.split_buckets += 1;
                let (sa, sb) = tokio::try_join!(a.digest_pass(prefix, SPLIT_BITS), b.digest_pass(prefix, SPLIT_BITS))?;
                for d in differing(&sa.buckets, &sb.buckets).into_iter().rev() {
                    queue.push_front(d);
                }
            }
            Plan::Leaf(prefixes) => {
                read_leaf(&a, &b, &prefixes, cfg, &mut pending, &mut stats).await?;
                if pending.len() >= cfg.leaf_max {
                    settle(&a, &b, &mut pending, cfg, &mut outcome, &mut stats).await?;
                }
            }
        }
    }
    settle(&a, &b, &mut pending, cfg, &mut outcome, &mut stats).await?;

    let (ctx_a, ctx_b) = tokio::try_join!(a.context_csn(), b.context_csn())?;
    stats.searches = a.searches() + b.searches();
    a.close().await;
    b.close().await;

    // Last-change metadata of the suffix entry alone may differ harmlessly (delta-syncrepl
    // without a checkpoint on the accesslog database, OPENLDAP-NOTES.md).
    let base = cfg.a.base.clone();
    let (harmless, differences): (Vec<_>, Vec<_>) =
        outcome.confirmed.into_iter().partition(|d| d.metadata_only && d.dn.eq_ignore_ascii_case(&base));
    for d in harmless {
        notes.push(format!(
            "the suffix entry's last-change metadata differs (entryCSN A {} vs B {}), its attributes are equal: \
             harmless after delta-syncrepl without a checkpoint on the accesslog database",
            d.entry_csn_a.unwrap_or_default(),
            d.entry_csn_b.unwrap_or_default()
        ));
    }
    let listed_or_counted = differences.len() as u64 + outcome.not_listed;
    let verdict = Verdict::decide(listed_or_counted as usize, outcome.unsettled.len(), outcome.unexamined as usize);
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Report {
        verdict,
        base,
        context_csn_equal: ctx_a == ctx_b,
        a: SideReport { url: cfg.a.url.clone(), entries: entries_a, context_csn: ctx_a.values() },
        b: SideReport { url: cfg.b.url.clone(), entries: entries_b, context_csn: ctx_b.values() },
        differences,
        differences_not_listed: outcome.not_listed,
        unsettled: outcome.unsettled,
        unexamined_buckets: outcome.unexamined,
        notes,
        stats,
    })
}

#[derive(Default)]
struct Outcome {
    confirmed: Vec<Difference>,
    confirmed_total: u64,
    not_listed: u64,
    unsettled: Vec<Difference>,
    unexamined: u64,
}

/// Reads a batch of differing buckets on both servers; the entries that differ join
/// `pending`, with the contextCSN bracket of this read.
async fn read_leaf(
    a: &Side,
    b: &Side,
    prefixes: &[Prefix],
    cfg: &AuditConfig,
    pending: &mut BTreeMap<Uuid, Tracked>,
    stats: &mut Stats,
) -> Result<(), AuditError> {
    let filter = ranges_filter(prefixes);
    let limit = cfg.leaf_max.saturating_mul(LEAF_SLACK);
    let (ra, rb) = tokio::try_join!(a.observe(&filter, limit), b.observe(&filter, limit))?;
    stats.entries_reread += (ra.entries.len() + rb.entries.len()) as u64;
    let ctx = Arc::new(RoundCtx { a_before: ra.before, a_after: ra.after, b_before: rb.before, b_after: rb.after });
    let (mut ea, mut eb) = (ra.entries, rb.entries);
    let uuids: HashSet<Uuid> = ea.keys().chain(eb.keys()).copied().collect();
    for u in uuids {
        let obs = Observation { a: ea.remove(&u), b: eb.remove(&u) };
        if !obs.agrees() {
            stats.candidates += 1;
            pending.insert(u, Tracked { obs, ctx: ctx.clone(), streak: 0, last: Judgement::Moving });
        }
    }
    Ok(())
}

/// Follows the pending differing entries through the re-read rounds until each agrees, is
/// confirmed, or the rounds run out (then it is unsettled). Empties `pending`.
async fn settle(
    a: &Side,
    b: &Side,
    pending: &mut BTreeMap<Uuid, Tracked>,
    cfg: &AuditConfig,
    outcome: &mut Outcome,
    stats: &mut Stats,
) -> Result<(), AuditError> {
    for round in 1..=cfg.settle_rounds {
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(cfg.backoff(round)).await;
        stats.rounds += 1;
        let uuids: Vec<Uuid> = pending.keys().copied().collect();
        let (ra, rb) = tokio::try_join!(a.observe_uuids(&uuids), b.observe_uuids(&uuids))?;
        let ctx = Arc::new(RoundCtx { a_before: ra.before, a_after: ra.after, b_before: rb.before, b_after: rb.after });
        let (mut ea, mut eb) = (ra.entries, rb.entries);
        pending.retain(|u, t| {
            let obs = Observation { a: ea.remove(u), b: eb.remove(u) };
            let j = judge(&t.obs, &t.ctx, &obs, &ctx);
            t.streak = if j == Judgement::Holds { t.streak + 1 } else { 0 };
            t.last = j;
            t.obs = obs;
            t.ctx = ctx.clone();
            if j == Judgement::Agrees {
                return false;
            }
            if t.streak >= CONFIRMATIONS {
                outcome.confirmed_total += 1;
                if outcome.confirmed.len() < cfg.max_report {
                    outcome.confirmed.push(Difference::new(*u, &t.obs, None));
                } else {
                    outcome.not_listed += 1;
                }
                return false;
            }
            true
        });
    }
    for (u, t) in std::mem::take(pending) {
        let reason = match t.last {
            Judgement::Lagging => "lagging: a server had not caught up with the other",
            _ => "moving: the entry kept changing",
        };
        if outcome.unsettled.len() < cfg.max_report {
            outcome.unsettled.push(Difference::new(u, &t.obs, Some(reason)));
        }
    }
    Ok(())
}

/// A first-level or split digest pass.
struct Pass {
    buckets: Buckets,
    entries: u64,
    without_uuid: u64,
    named_without_uuid: Vec<String>,
}

/// A read with each server's contextCSN just before and after it.
struct Observed {
    before: ContextCsn,
    entries: HashMap<Uuid, EntryState>,
    after: ContextCsn,
}

/// One server: an open, bound connection with its driver task.
struct Side {
    label: &'static str,
    url: String,
    base: String,
    ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
    op_timeout: Duration,
    page_size: i32,
    policy: AttrPolicy,
    searches: std::sync::atomic::AtomicU64,
}

impl Side {
    async fn open(label: &'static str, check: &LdapCheck, cfg: &AuditConfig) -> Result<Side, AuditError> {
        let err = |step, e: String, code| AuditError::Ldap {
            side: label,
            url: check.url.clone(),
            step,
            message: e,
            code,
            hint: "",
        };
        let settings = LdapConnSettings::new().set_conn_timeout(cfg.op_timeout);
        let (conn, mut ldap) =
            match tokio::time::timeout(cfg.op_timeout, LdapConnAsync::with_settings(settings, &check.url)).await {
                Err(_) => return Err(err("connect", format!("no answer within {:?}", cfg.op_timeout), None)),
                Ok(Err(e)) => return Err(err("connect", e.to_string(), None)),
                Ok(Ok(c)) => c,
            };
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "audit LDAP connection ended");
            }
        });
        let bound = match &check.bind {
            Bind::Anonymous => Ok(()),
            Bind::SaslExternal => {
                ldap.with_timeout(cfg.op_timeout).sasl_external_bind().await.and_then(|r| r.success().map(drop))
            }
            Bind::Simple { dn, password_file } => {
                let password =
                    read_password(password_file).await.map_err(|m| err("read bind password file", m, None))?;
                ldap.with_timeout(cfg.op_timeout).simple_bind(dn, &password).await.and_then(|r| r.success().map(drop))
            }
        };
        if let Err(e) = bound {
            driver.abort();
            return Err(err("bind", e.to_string(), result_code(&e)));
        }
        Ok(Side {
            label,
            url: check.url.clone(),
            base: check.base.clone(),
            ldap,
            driver,
            op_timeout: cfg.op_timeout,
            page_size: cfg.page_size,
            policy: cfg.policy.clone(),
            searches: Default::default(),
        })
    }

    fn searches(&self) -> u64 {
        self.searches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn failed(&self, step: &'static str, e: ldap3::LdapError) -> AuditError {
        let code = result_code(&e);
        let hint = match code {
            Some(4) => " (sizeLimitExceeded: give the audit identity olcLimits size=unlimited, or bind as the rootDN)",
            Some(3) => " (timeLimitExceeded: give the audit identity olcLimits time=unlimited)",
            Some(50) => " (insufficientAccess: the audit identity needs read access to every entry)",
            Some(12) => " (unavailableCriticalExtension: the server refuses a control the audit sends)",
            _ => "",
        };
        AuditError::Ldap { side: self.label, url: self.url.clone(), step, message: e.to_string(), code, hint }
    }

    /// A paged subtree search under the base; every entry goes to `each`. At most `limit`
    /// entries (the search is abandoned beyond), referrals and intermediate messages skipped.
    async fn search(&self, filter: &str, limit: usize, mut each: impl FnMut(RawEntry)) -> Result<usize, AuditError> {
        self.searches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout).with_controls(ManageDsaIt);
        let adapter = PagedResults::<String, Vec<String>>::new(self.page_size);
        let mut stream = ldap
            .streaming_search_with(adapter, &self.base, Scope::Subtree, filter, self.policy.request.clone())
            .await
            .map_err(|e| self.failed("search", e))?;
        let mut n = 0;
        loop {
            let item = match stream.next().await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => return Err(self.failed("search", e)),
            };
            if item.is_ref() || item.is_intermediate() {
                continue;
            }
            n += 1;
            if n > limit {
                let _ = stream.finish().await;
                return Err(AuditError::TooMany {
                    side: self.label,
                    url: self.url.clone(),
                    what: format!("search {filter:.200}"),
                    limit,
                });
            }
            match parse_entry(item.0) {
                Some(entry) => each(entry),
                None => {
                    let _ = stream.finish().await;
                    return Err(AuditError::Ldap {
                        side: self.label,
                        url: self.url.clone(),
                        step: "search",
                        message: "malformed search result entry".into(),
                        code: None,
                        hint: "",
                    });
                }
            }
        }
        stream.finish().await.success().map_err(|e| self.failed("search", e))?;
        Ok(n)
    }

    async fn digest_pass(&self, prefix: Prefix, width: u32) -> Result<Pass, AuditError> {
        let mut pass =
            Pass { buckets: Buckets::new(prefix, width), entries: 0, without_uuid: 0, named_without_uuid: vec![] };
        let policy = &self.policy;
        self.search(&prefix.filter(), usize::MAX, |entry| {
            let d = digest_entry(entry, policy);
            pass.entries += 1;
            if !pass.buckets.add(&d) && prefix.is_root() {
                pass.without_uuid += 1;
                if pass.named_without_uuid.len() < MAX_NAMED_WITHOUT_UUID {
                    pass.named_without_uuid.push(String::from_utf8_lossy(&d.dn).into_owned());
                }
            }
        })
        .await?;
        Ok(pass)
    }

    /// The entries matching `filter` (with a UUID) between two contextCSN reads.
    async fn observe(&self, filter: &str, limit: usize) -> Result<Observed, AuditError> {
        self.observe_all(&[(filter.to_string(), limit)]).await
    }

    /// The entries with these UUIDs, read by equality in chunks, between two contextCSN reads.
    async fn observe_uuids(&self, uuids: &[Uuid]) -> Result<Observed, AuditError> {
        let searches: Vec<(String, usize)> =
            uuids.chunks(MAX_UUIDS_PER_SEARCH).map(|chunk| (uuids_filter(chunk), chunk.len())).collect();
        self.observe_all(&searches).await
    }

    /// The entries (with a UUID) of `searches` (filter, size limit), all between two
    /// contextCSN reads.
    async fn observe_all(&self, searches: &[(String, usize)]) -> Result<Observed, AuditError> {
        let before = self.context_csn().await?;
        let mut entries = HashMap::new();
        let policy = &self.policy;
        for (filter, limit) in searches {
            self.search(filter, *limit, |entry| {
                let d = digest_entry(entry, policy);
                if let Some(u) = d.uuid {
                    entries.insert(u, EntryState::from(d));
                }
            })
            .await?;
        }
        let after = self.context_csn().await?;
        Ok(Observed { before, entries, after })
    }

    async fn context_csn(&self) -> Result<ContextCsn, AuditError> {
        self.searches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ldap = self.ldap.clone();
        let mut stream = ldap
            .with_timeout(self.op_timeout)
            .streaming_search(&self.base, Scope::Base, "(objectClass=*)", vec!["contextCSN"])
            .await
            .map_err(|e| self.failed("read contextCSN", e))?;
        let mut values = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(item)) if !item.is_ref() && !item.is_intermediate() => {
                    let entry = parse_entry(item.0).unwrap_or(RawEntry { dn: vec![], attrs: vec![] });
                    for (name, vals) in entry.attrs {
                        if name.eq_ignore_ascii_case(b"contextCSN") {
                            values.extend(vals.iter().map(|v| String::from_utf8_lossy(v).into_owned()));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(self.failed("read contextCSN", e)),
            }
        }
        stream.finish().await.success().map_err(|e| self.failed("read contextCSN", e))?;
        Ok(ContextCsn::parse(&values))
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ldap.unbind()).await;
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn result_code(e: &ldap3::LdapError) -> Option<u32> {
    match e {
        ldap3::LdapError::LdapResult { result } => Some(result.rc),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{TagClass, PL};

    fn octets(b: &[u8]) -> StructureTag {
        StructureTag { class: TagClass::Universal, id: 4, payload: PL::P(b.to_vec()) }
    }

    fn constructed(id: u64, class: TagClass, inner: Vec<StructureTag>) -> StructureTag {
        StructureTag { class, id, payload: PL::C(inner) }
    }

    fn entry_tag(dn: &str, attrs: &[(&str, &[&str])]) -> StructureTag {
        let attrs = attrs
            .iter()
            .map(|(name, values)| {
                constructed(
                    16,
                    TagClass::Universal,
                    vec![
                        octets(name.as_bytes()),
                        constructed(17, TagClass::Universal, values.iter().map(|v| octets(v.as_bytes())).collect()),
                    ],
                )
            })
            .collect();
        constructed(4, TagClass::Application, vec![octets(dn.as_bytes()), constructed(16, TagClass::Universal, attrs)])
    }

    const U1: &str = "9c9686ac-7d80-1041-8ab7-d99470a38c5c";
    const U2: &str = "9c9688aa-7d80-1041-8ab8-d99470a38c5c";

    fn raw(dn: &str, attrs: &[(&str, &[&str])]) -> RawEntry {
        parse_entry(entry_tag(dn, attrs)).unwrap()
    }

    fn person(dn: &str, uuid: &str, csn: &str, mail: &[&str]) -> RawEntry {
        raw(
            dn,
            &[
                ("objectClass", &["top", "inetOrgPerson"]),
                ("mail", mail),
                ("entryUUID", &[uuid]),
                ("entryCSN", &[csn]),
                ("modifyTimestamp", &["20250101000000Z"]),
            ],
        )
    }

    const CSN1: &str = "20250101000000.000001Z#000000#001#000000";
    const CSN2: &str = "20250101000001.000001Z#000000#001#000000";

    #[test]
    fn uuids_parse_and_format_round_trip_and_order_like_their_text() {
        let u = parse_uuid(U1.as_bytes()).unwrap();
        assert_eq!(format_uuid(u), U1);
        assert_eq!(parse_uuid(U1.to_uppercase().as_bytes()), Some(u));
        assert!(parse_uuid(U1.as_bytes()) < parse_uuid(U2.as_bytes()));
        for bad in [
            "",
            "9c9686ac7d8010418ab7d99470a38c5c",
            "9c9686ac-7d80-1041-8ab7-d99470a38c5g",
            "9c9686ac-7d80-1041-8ab7_d99470a38c5c",
        ] {
            assert_eq!(parse_uuid(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_index_nest_and_bound_their_ranges() {
        let u = parse_uuid(U1.as_bytes()).unwrap();
        let root = Prefix::ROOT;
        assert_eq!(root.filter(), "(objectClass=*)");
        assert!(root.contains(u) && root.contains(0) && root.contains(u128::MAX));
        let i = root.index_of(u, 16);
        assert_eq!(i, 0x9c96);
        let bucket = root.child(i as u128, 16);
        assert_eq!(bucket.label(), "9c96");
        assert!(bucket.contains(u));
        assert_eq!(
            bucket.filter(),
            "(&(entryUUID>=9c960000-0000-0000-0000-000000000000)(entryUUID<=9c96ffff-ffff-ffff-ffff-ffffffffffff))"
        );
        // One level down: the next 8 bits.
        assert_eq!(bucket.index_of(u, 8), 0x86);
        let sub = bucket.child(0x86, 8);
        assert_eq!((sub.bits(), sub.label()), (24, "9c9686".to_string()));
        assert!(sub.contains(u) && !bucket.child(0x87, 8).contains(u));
        // The deepest prefix is one UUID.
        let mut p = root;
        while p.bits() < 128 {
            p = p.child(p.index_of(u, 8) as u128, 8);
        }
        assert!(p.contains(u) && !p.contains(u + 1) && !p.contains(u - 1));
        assert_eq!(ranges_filter(&[bucket]), bucket.filter());
        assert!(ranges_filter(&[bucket, sub]).starts_with("(|(&"));
        assert_eq!(uuids_filter(&[u]), format!("(entryUUID={U1})"));
    }

    #[test]
    fn malformed_entries_are_rejected_without_a_panic() {
        assert_eq!(parse_entry(octets(b"x")), None);
        assert_eq!(parse_entry(constructed(4, TagClass::Application, vec![])), None);
        let no_values = constructed(
            4,
            TagClass::Application,
            vec![
                octets(b"dc=x"),
                constructed(16, TagClass::Universal, vec![constructed(16, TagClass::Universal, vec![octets(b"cn")])]),
            ],
        );
        assert_eq!(parse_entry(no_values), None);
        let e = raw("dc=x", &[("cn", &["a", "b"])]);
        assert_eq!(e.attrs, vec![(b"cn".to_vec(), vec![b"a".to_vec(), b"b".to_vec()])]);
    }

    #[test]
    fn the_digest_ignores_order_and_name_case_but_not_values() {
        let p = AttrPolicy::default();
        let d = digest_entry(person("uid=a,dc=x", U1, CSN1, &["a@x", "b@x"]), &p);
        assert_eq!(d.uuid, parse_uuid(U1.as_bytes()));
        assert_eq!(d.csn.as_deref(), Some(CSN1));
        // Values and attributes in another order, names in another case: the same entry.
        let reordered = raw(
            "uid=a,dc=x",
            &[
                ("MODIFYTIMESTAMP", &["20250101000000Z"]),
                ("entryCSN", &[CSN1]),
                ("Mail", &["b@x", "a@x"]),
                ("entryuuid", &[U1]),
                ("objectclass", &["inetOrgPerson", "top"]),
            ],
        );
        assert_eq!(digest_entry(reordered, &p), d);
        // A changed value, DN or entryCSN changes the digest it belongs to.
        let other_value = digest_entry(person("uid=a,dc=x", U1, CSN1, &["a@x"]), &p);
        assert!(other_value.content != d.content && other_value.meta == d.meta);
        let other_dn = digest_entry(person("uid=b,dc=x", U1, CSN1, &["a@x", "b@x"]), &p);
        assert!(other_dn.content != d.content);
        let other_csn = digest_entry(person("uid=a,dc=x", U1, CSN2, &["a@x", "b@x"]), &p);
        assert!(other_csn.content == d.content && other_csn.meta != d.meta);
        // Values are length-prefixed: ["ab"] is not ["a", "b"].
        let joined = digest_entry(person("uid=a,dc=x", U1, CSN1, &["a@xb@x"]), &p);
        assert_ne!(joined.content, d.content);
    }

    #[test]
    fn ignored_attributes_and_context_csn_do_not_count() {
        let with_ctx = raw("dc=x", &[("dc", &["x"]), ("contextCSN", &[CSN1]), ("pwdFailureTime", &["1"])]);
        let without = raw("dc=x", &[("dc", &["x"]), ("pwdFailureTime", &["2"])]);
        let p = AttrPolicy::new(&["pwdFailureTime".into()], &["pwdFailureTime".into()]);
        assert_eq!(digest_entry(with_ctx.clone(), &p).content, digest_entry(without.clone(), &p).content);
        let strict = AttrPolicy::new(&["pwdFailureTime".into()], &[]);
        assert_ne!(digest_entry(with_ctx, &strict).content, digest_entry(without, &strict).content);
        assert!(strict.request.iter().any(|r| r == "pwdFailureTime") && strict.request[0] == "*");
    }

    fn buckets_of(entries: Vec<RawEntry>, width: u32) -> Buckets {
        let mut b = Buckets::new(Prefix::ROOT, width);
        for e in entries {
            b.add(&digest_entry(e, &AttrPolicy::default()));
        }
        b
    }

    #[test]
    fn bucket_digests_ignore_read_order_and_locate_the_difference() {
        let x = || person("uid=a,dc=x", U1, CSN1, &["a@x"]);
        let y = || person("uid=b,dc=x", "00000000-0000-1000-8000-000000000001", CSN1, &["b@x"]);
        let a = buckets_of(vec![x(), y()], 16);
        assert_eq!(a, buckets_of(vec![y(), x()], 16));
        assert!(differing(&a, &buckets_of(vec![y(), x()], 16)).is_empty());
        let b = buckets_of(vec![y()], 16);
        assert_eq!(
            differing(&a, &b),
            vec![BucketDiff { prefix: Prefix::ROOT.child(0x9c96, 16), count_a: 1, count_b: 0 }]
        );
        let modified = buckets_of(vec![person("uid=a,dc=x", U1, CSN2, &["new@x"]), y()], 16);
        let diffs = differing(&a, &modified);
        assert_eq!(diffs.len(), 1);
        assert_eq!((diffs[0].count_a, diffs[0].count_b), (1, 1));
        // An entry without a UUID is not folded in.
        let mut none = Buckets::new(Prefix::ROOT, 8);
        assert!(!none.add(&digest_entry(raw("dc=x", &[("dc", &["x"])]), &AttrPolicy::default())));
        assert!(none.buckets.iter().all(|b| *b == Bucket::default()));
    }

    fn diff(label: u128, a: u32, b: u32) -> BucketDiff {
        BucketDiff { prefix: Prefix::ROOT.child(label, 16), count_a: a, count_b: b }
    }

    #[test]
    fn plans_batch_small_buckets_and_split_big_ones() {
        let mut q: VecDeque<_> =
            vec![diff(1, 10, 12), diff(2, 3000, 2990), diff(3, 2500, 2500), diff(4, 9000, 1)].into();
        assert_eq!(next_plan(&mut q, 5000), Some(Plan::Leaf(vec![diff(1, 0, 0).prefix, diff(2, 0, 0).prefix])));
        assert_eq!(next_plan(&mut q, 5000), Some(Plan::Leaf(vec![diff(3, 0, 0).prefix])));
        assert_eq!(next_plan(&mut q, 5000), Some(Plan::Split(diff(4, 0, 0).prefix)));
        assert_eq!(next_plan(&mut q, 5000), None);
        // At most MAX_RANGES_PER_SEARCH ranges per search.
        let mut q: VecDeque<_> = (0..100).map(|i| diff(i, 1, 1)).collect();
        match next_plan(&mut q, 5000) {
            Some(Plan::Leaf(batch)) => assert_eq!(batch.len(), MAX_RANGES_PER_SEARCH),
            other => panic!("{other:?}"),
        }
        // A single-UUID bucket cannot be split further: read it whatever its size.
        let mut deepest = Prefix::ROOT;
        while deepest.bits() < 128 {
            deepest = deepest.child(0, 8);
        }
        let mut q: VecDeque<_> = vec![BucketDiff { prefix: deepest, count_a: 9000, count_b: 0 }].into();
        assert_eq!(next_plan(&mut q, 5000), Some(Plan::Leaf(vec![deepest])));
    }

    fn state(csn: &str, content: u128) -> Option<EntryState> {
        Some(EntryState { dn: "uid=a,dc=x".into(), csn: Some(csn.into()), content, meta: content })
    }

    fn ctx(a: &str, b: &str) -> RoundCtx {
        let c = |s: &str| ContextCsn::parse(&[s]);
        RoundCtx { a_before: c(a), a_after: c(a), b_before: c(b), b_after: c(b) }
    }

    #[test]
    fn judgement_retries_what_is_in_flight_and_holds_only_what_both_servers_passed() {
        let missing_on_b = Observation { a: state(CSN1, 1), b: None };
        // B has not processed A's change yet: lagging, not divergence.
        assert_eq!(judge(&missing_on_b, &ctx(CSN1, ""), &missing_on_b, &ctx(CSN1, "")), Judgement::Lagging);
        // B's contextCSN covers A's, entry still missing: holds.
        assert_eq!(judge(&missing_on_b, &ctx(CSN1, CSN1), &missing_on_b, &ctx(CSN1, CSN1)), Judgement::Holds);
        // The previous round's A is what B must cover (A moved on meanwhile: still lagging).
        assert_eq!(judge(&missing_on_b, &ctx(CSN2, CSN1), &missing_on_b, &ctx(CSN2, CSN1)), Judgement::Lagging);
        // Replication arrived: agrees.
        let arrived = Observation { a: state(CSN1, 1), b: state(CSN1, 1) };
        assert_eq!(judge(&missing_on_b, &ctx(CSN1, ""), &arrived, &ctx(CSN1, CSN1)), Judgement::Agrees);
        // The entry changed on A: moving, whatever the contextCSNs say.
        let changed = Observation { a: state(CSN2, 2), b: None };
        assert_eq!(judge(&missing_on_b, &ctx(CSN1, CSN2), &changed, &ctx(CSN2, CSN2)), Judgement::Moving);
        // Both absent agrees.
        assert!(Observation { a: None, b: None }.agrees());
    }

    #[test]
    fn differences_say_which_side_holds_what() {
        let u = parse_uuid(U1.as_bytes()).unwrap();
        let d = Difference::new(u, &Observation { a: state(CSN1, 1), b: None }, None);
        assert_eq!((d.kind, d.dn.as_str(), d.entry_csn_a.as_deref()), (DiffKind::MissingOnB, "uid=a,dc=x", Some(CSN1)));
        assert!(d.describe().starts_with("missing on B  uid=a,dc=x"));
        let d = Difference::new(u, &Observation { a: None, b: state(CSN1, 1) }, None);
        assert_eq!(d.kind, DiffKind::MissingOnA);
        let mut b = state(CSN2, 1);
        if let Some(b) = &mut b {
            b.meta = 7;
        }
        let d = Difference::new(u, &Observation { a: state(CSN1, 1), b }, Some("moving"));
        assert_eq!(d.kind, DiffKind::Differs);
        assert!(d.metadata_only);
        assert!(
            d.describe().contains(&format!("entryCSN A {CSN1} vs B {CSN2} (attributes equal)")),
            "{}",
            d.describe()
        );
    }

    #[test]
    fn the_verdict_never_says_in_sync_with_open_questions() {
        assert_eq!(Verdict::decide(0, 0, 0), Verdict::InSync);
        assert_eq!(Verdict::decide(1, 5, 0), Verdict::Diverged);
        assert_eq!(Verdict::decide(0, 1, 0), Verdict::Unsettled);
        assert_eq!(Verdict::decide(0, 0, 3), Verdict::Unsettled);
        assert_eq!([Verdict::InSync, Verdict::Diverged, Verdict::Unsettled].map(Verdict::exit_code), [0, 1, 3]);
    }

    fn report(verdict: Verdict, differences: Vec<Difference>) -> Report {
        let side = |url: &str| SideReport { url: url.into(), entries: 3, context_csn: vec![CSN1.into()] };
        Report {
            verdict,
            base: "dc=x".into(),
            a: side("ldap://a:389"),
            b: side("ldap://b:389"),
            context_csn_equal: true,
            differences,
            differences_not_listed: 0,
            unsettled: vec![],
            unexamined_buckets: 0,
            notes: vec![],
            stats: Stats::default(),
        }
    }

    #[test]
    fn reports_render_for_humans_and_scripts() {
        let text = report(Verdict::InSync, vec![]).render();
        assert!(text.contains("verdict: in sync") && text.contains("A ldap://a:389: 3 entries"), "{text}");
        let u = parse_uuid(U1.as_bytes()).unwrap();
        let missing = Difference::new(u, &Observation { a: state(CSN1, 1), b: None }, None);
        let r = report(Verdict::Diverged, vec![missing]);
        let text = r.render();
        assert!(text.contains("DIVERGED: 1 entry differs although both servers show the same contextCSN"), "{text}");
        assert!(text.contains("missing on B  uid=a,dc=x"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verdict"], "diverged");
        assert_eq!(json["differences"][0]["kind"], "missing_on_b");
        assert_eq!(json["differences"][0]["entry_uuid"], U1);
        assert_eq!(json["differences"][0]["dn"], "uid=a,dc=x");
    }

    #[test]
    fn config_checks_the_servers_and_the_limits() {
        let creds = Credentials::default();
        let c = AuditConfig::new("ldap://a:389?base=dc=x", "ldapi://%2Frun%2Fldapi?base=DC=X", &creds).unwrap();
        assert_eq!((c.a.bind.clone(), c.b.bind.clone()), (Bind::Anonymous, Bind::SaslExternal));
        assert!(c.validate().is_ok());
        assert!(AuditConfig::new("ldap://a:389?base=dc=x", "ldap://b:389?base=dc=y", &creds).is_err());
        assert!(AuditConfig::new("ldap://a:389", "ldap://b:389?base=dc=x", &creds).unwrap_err().contains("server A"));
        assert!(AuditConfig { bucket_bits: 10, ..c.clone() }.validate().is_err());
        assert!(AuditConfig { settle_rounds: 1, ..c.clone() }.validate().is_err());
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(400));
        assert_eq!(c.backoff(40), Duration::from_millis(1600));
    }
}

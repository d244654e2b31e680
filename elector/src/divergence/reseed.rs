//! `ldap-elector reseed`: repairs a diverged standby from the leader (docs/divergence.md).
//!
//! 1. Reads the Lease: refuses when the target holds it (the leader's data is the
//!    reference), when nobody holds it, or when it cannot be read (`policy::
//!    reseed_source`).
//! 2. With `--data-dir` (run where the standby's data directory is, with its slapd
//!    stopped): checks that the target's slapd does not answer, moves the directory aside
//!    (`<dir>.diverged-<unix time>`, kept for the operator) and leaves an empty one. slapd,
//!    started again on it, has no cookie and refreshes everything from the leader
//!    (refreshAndPersist). Without `--data-dir` the operator has done that step.
//! 3. Audits leader against target until the audit is clean (bounded by `--timeout`),
//!    checking before each audit that the target still does not lead.
//! 4. Clears the target's mark in the Lease (compare-and-swap, other annotations kept).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::divergence::audit::{self, AuditConfig, Verdict};
use crate::divergence::auditor::peer_check;
use crate::divergence::policy::{self, PeerUrls, Refusal};
use crate::election::lease::{self, LeaseClient, LeaseError};
use crate::slapd::ldap::Credentials;
use crate::slapd::ldap::Probe as _;
use ldap_elector_contract::LEASE_ANNOTATION_DIVERGED;

const API_TIMEOUT: Duration = Duration::from_secs(10);
const AUDIT_PAUSE: Duration = Duration::from_secs(2);

/// What `reseed` needs (from `args::ReseedArgs`).
#[derive(Clone, Debug)]
pub struct Plan {
    pub namespace: String,
    pub lease_name: String,
    pub target: String,
    pub servers: PeerUrls,
    pub creds: Credentials,
    /// StartTLS, the CA, the cleartext opt-in.
    pub tls: crate::slapd::ldap::Tls,
    pub data_dir: Option<PathBuf>,
    pub timeout: Duration,
    pub op_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReseedError {
    #[error("refusing to reseed: {0}")]
    Refused(#[from] Refusal),
    #[error("refusing to empty {dir}: the target's slapd ({url}) still answers; stop it first")]
    SlapdRunning { dir: String, url: String },
    #[error("{0}")]
    Config(String),
    #[error("emptying the data directory: {0}")]
    Io(String),
    #[error("the audit of {target} against the leader {leader} was not clean within {timeout:?}; last: {last}")]
    NotClean { target: String, leader: String, timeout: Duration, last: String },
    #[error("clearing the mark in the Lease: {0}")]
    Lease(String),
}

impl ReseedError {
    /// Exit status: 5 refused, 1 not clean in time, 2 bad configuration, 4 other failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReseedError::Refused(_) | ReseedError::SlapdRunning { .. } => 5,
            ReseedError::NotClean { .. } => 1,
            ReseedError::Config(_) => 2,
            ReseedError::Io(_) | ReseedError::Lease(_) => 4,
        }
    }
}

/// Where `dir` is moved aside to (pure).
pub fn aside_path(dir: &Path, unix_secs: u64) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    dir.with_file_name(format!("{name}.diverged-{unix_secs}"))
}

/// The leader to reseed from, read from the Lease now.
async fn leader(leases: &LeaseClient, target: &str) -> Result<String, Refusal> {
    let holder = match leases.get(API_TIMEOUT).await {
        Ok(l) => Ok(lease::observe(&l, crate::clock::Moment::now()).holder),
        Err(e) => Err(format!("reading the Lease {}: {e}", leases.name())),
    };
    policy::reseed_source(holder.as_ref().map(|h| h.as_deref()).map_err(Clone::clone), target)
}

fn server_url(servers: &PeerUrls, pod: &str) -> Result<String, ReseedError> {
    servers.url(pod).ok_or_else(|| ReseedError::Config(format!("--servers names no URL for {pod}")))
}

pub async fn reseed(client: kube::Client, plan: &Plan) -> Result<(), ReseedError> {
    let leases = LeaseClient::new(Api::<Lease>::namespaced(client, &plan.namespace), &plan.lease_name);
    let source = leader(&leases, &plan.target).await?;
    let target_url = server_url(&plan.servers, &plan.target)?;
    let target_check = peer_check(&target_url, "", &plan.creds, &plan.tls).map_err(ReseedError::Config)?;
    tracing::info!(target = %plan.target, leader = %source, "reseed: the Lease names the leader; the target is a standby");

    if let Some(dir) = &plan.data_dir {
        if target_check.probe(plan.op_timeout).await.is_ok() {
            return Err(ReseedError::SlapdRunning { dir: dir.display().to_string(), url: target_check.url.clone() });
        }
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let aside = aside_path(dir, unix);
        let meta = std::fs::metadata(dir).map_err(|e| ReseedError::Io(format!("{}: {e}", dir.display())))?;
        std::fs::rename(dir, &aside)
            .map_err(|e| ReseedError::Io(format!("moving {} to {}: {e}", dir.display(), aside.display())))?;
        std::fs::create_dir(dir).map_err(|e| ReseedError::Io(format!("creating {}: {e}", dir.display())))?;
        std::fs::set_permissions(dir, meta.permissions())
            .map_err(|e| ReseedError::Io(format!("permissions of {}: {e}", dir.display())))?;
        tracing::info!(target = %plan.target, data_dir = %dir.display(), kept = %aside.display(),
            "reseed: data directory emptied (the old one is kept); start the target's slapd now: it refreshes from the leader");
    }

    let deadline = Instant::now() + plan.timeout;
    loop {
        // The target must not have become leader meanwhile (e.g. an operator override).
        let source = leader(&leases, &plan.target).await?;
        let leader_url = server_url(&plan.servers, &source)?;
        let mut cfg = AuditConfig::new(&leader_url, &target_url, &plan.creds)
            .and_then(|c| c.with_tls(&plan.tls))
            .map_err(ReseedError::Config)?;
        cfg.op_timeout = plan.op_timeout;
        cfg.timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let last = match audit::audit(&cfg).await {
            Ok(report) if report.verdict == Verdict::InSync => {
                tracing::info!(target = %plan.target, leader = %source, entries = report.a.entries,
                    "reseed: audit clean: the target holds exactly the leader's entries");
                break;
            }
            Ok(report) => format!("{:?}: {}", report.verdict, policy::summarize(&report)),
            Err(e) => e.to_string(),
        };
        tracing::info!(target = %plan.target, last = %last, "reseed: not clean yet (refreshing?); auditing again");
        if Instant::now() + AUDIT_PAUSE >= deadline {
            return Err(ReseedError::NotClean {
                target: plan.target.clone(),
                leader: source,
                timeout: plan.timeout,
                last,
            });
        }
        tokio::time::sleep(AUDIT_PAUSE).await;
    }
    clear_mark(&leases, &plan.target).await
}

/// Removes `target`'s mark from the Lease (CAS; re-read on conflict), refusing if it leads.
async fn clear_mark(leases: &LeaseClient, target: &str) -> Result<(), ReseedError> {
    for _ in 0..5 {
        let current = leases.get(API_TIMEOUT).await.map_err(|e| ReseedError::Lease(e.to_string()))?;
        let holder = lease::observe(&current, crate::clock::Moment::now()).holder;
        policy::reseed_source(Ok(holder.as_deref()), target)?;
        let value = lease::annotation(&current, LEASE_ANNOTATION_DIVERGED).map(String::from);
        let next_value = policy::cleared(value.as_deref(), target).map_err(ReseedError::Lease)?;
        if next_value == value {
            tracing::info!(target, "reseed: the target was not marked in the Lease; nothing to clear");
            return Ok(());
        }
        let mut next = current.clone();
        lease::set_annotation(&mut next, LEASE_ANNOTATION_DIVERGED, next_value);
        match leases.write(&next, API_TIMEOUT).await {
            Ok(_) => {
                tracing::info!(target, "reseed: mark cleared; the target may be promoted again");
                return Ok(());
            }
            Err(LeaseError::Conflict) => continue,
            Err(e) => return Err(ReseedError::Lease(e.to_string())),
        }
    }
    Err(ReseedError::Lease("the Lease kept changing (5 conflicts); run reseed again".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_data_directory_is_kept_beside_the_new_one() {
        assert_eq!(aside_path(Path::new("/var/lib/ldap/data"), 42), PathBuf::from("/var/lib/ldap/data.diverged-42"));
        assert_eq!(aside_path(Path::new("/var/lib/ldap/data/"), 42), PathBuf::from("/var/lib/ldap/data.diverged-42"));
    }

    #[test]
    fn refusals_and_timeouts_have_distinct_exit_codes() {
        assert_eq!(ReseedError::Refused(Refusal::TargetLeads("a".into())).exit_code(), 5);
        assert_eq!(ReseedError::SlapdRunning { dir: "d".into(), url: "u".into() }.exit_code(), 5);
        let e =
            ReseedError::NotClean { target: "a".into(), leader: "b".into(), timeout: Duration::ZERO, last: "x".into() };
        assert_eq!(e.exit_code(), 1);
    }
}

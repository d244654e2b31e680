//! The leader's divergence audits (issue 9), at the edge: while this pod is in office, it
//! audits its own slapd against each standby's (the `audit` library) when it takes office,
//! when a standby answers again after it did not, after an inconclusive audit (back-off)
//! and on an interval — the schedule and the verdict handling are the pure
//! `divergence_policy`. The verdicts become `Edits` that the election loop writes into the
//! Lease with its next renew (a CAS, so they cannot race another writer).
//!
//! An audit of a large directory is seconds of CPU: it runs on its own OS thread with its
//! own runtime, never on the election loop's.

use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Moment;
use crate::divergence::audit::{self, AuditConfig};
use crate::divergence::policy::{self, Cadence, Edits, Outcome, PeerSchedule, PeerUrls};
use crate::slapd::ldap::Probe as _;
use crate::slapd::ldap::{Credentials, LdapCheck, Tls};

/// How often the standbys' slapd are probed (reachability: a rejoin triggers an audit).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What the audits need, validated at start-up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub identity: String,
    pub statefulset: String,
    /// The local slapd (the health check's URL, suffix and bind).
    pub local: LdapCheck,
    pub peers: PeerUrls,
    pub creds: Credentials,
    /// StartTLS, the CA, the cleartext opt-in (for the standbys' servers).
    pub tls: Tls,
    pub cadence: Cadence,
    /// Timeout of each LDAP operation, and of the reachability probe.
    pub op_timeout: Duration,
    /// Deadline of one whole audit.
    pub timeout: Duration,
}

impl Settings {
    /// The audit configuration of this leader (server A) against `peer_url` (server B; the
    /// local suffix is added when the URL names none).
    pub fn audit_config(&self, peer_url: &str) -> Result<AuditConfig, String> {
        let peer = peer_check(peer_url, &self.local.base, &self.creds, &self.tls)?;
        let local = format!("{}?base={}", self.local.url, self.local.base);
        let mut cfg = AuditConfig::new(&local, &peer_url_with_base(peer_url, &self.local.base), &self.creds)?;
        cfg.a = self.local.clone(); // the health check's own bind (SASL EXTERNAL over ldapi)
        cfg.b = peer;
        cfg.op_timeout = self.op_timeout;
        cfg.timeout = self.timeout;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The standbys whose server the rules keep this leader from reading (e.g. a simple
    /// bind over plain `ldap://` to another pod, not explicitly allowed), with the reason:
    /// no audits of them, and no reads of their contextCSN after an expiry.
    pub fn refused_peers(&self) -> Vec<(String, String)> {
        crate::divergence::policy::peers(&self.identity, &self.statefulset, &self.peers)
            .into_iter()
            .filter_map(|(pod, url)| peer_check(&url, &self.local.base, &self.creds, &self.tls).err().map(|e| (pod, e)))
            .collect()
    }
}

fn peer_url_with_base(url: &str, base: &str) -> String {
    if url.contains("?base=") {
        url.to_string()
    } else {
        format!("{url}?base={base}")
    }
}

/// A server's check from a URL that may lack the suffix, with the bind and the transport
/// settings; `Err` also when the cleartext rule refuses its bind.
pub fn peer_check(url: &str, base: &str, creds: &Credentials, tls: &Tls) -> Result<LdapCheck, String> {
    LdapCheck::parse(&peer_url_with_base(url, base))?.with_credentials(creds)?.with_tls(tls)
}

/// The election loop's end of the link.
pub struct Link {
    /// `Some(term)` while this pod is in office (Lease, label and lifted fence), else `None`.
    pub office: watch::Sender<Option<i32>>,
    /// The latest audit's verdict, to be written into the Lease once.
    edits: watch::Receiver<Edits>,
    /// A verdict not yet written (the write failed or has not happened yet).
    pending: Option<Edits>,
}

impl Link {
    /// `lease` (about to be written by the holder in `term`) with the newest verdict not yet
    /// written. A verdict is written once: if an operator's `reseed` clears a mark later,
    /// an old verdict does not put it back.
    pub fn apply(
        &mut self,
        lease: k8s_openapi::api::coordination::v1::Lease,
        term: i32,
    ) -> k8s_openapi::api::coordination::v1::Lease {
        if self.edits.has_changed().unwrap_or(false) {
            self.pending = Some(self.edits.borrow_and_update().clone());
        }
        match &self.pending {
            Some(edits) => crate::election::lease::with_divergence_edits(lease, edits, term),
            None => lease,
        }
    }

    /// The last `apply`ed Lease was written.
    pub fn written(&mut self) {
        self.pending = None;
    }
}

/// Starts the auditor thread. It ends when the `Link` is dropped.
pub fn start(settings: Settings) -> std::io::Result<Link> {
    let (office_tx, office_rx) = watch::channel(None);
    let (edits_tx, edits_rx) = watch::channel(Edits::default());
    std::thread::Builder::new().name("divergence-audit".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run(settings, office_rx, edits_tx)),
            Err(e) => tracing::error!(error = %e, "cannot start the divergence auditor's runtime; no audits"),
        }
    })?;
    Ok(Link { office: office_tx, edits: edits_rx, pending: None })
}

async fn run(settings: Settings, mut office: watch::Receiver<Option<i32>>, edits: watch::Sender<Edits>) {
    let peers = policy::peers(&settings.identity, &settings.statefulset, &settings.peers);
    if peers.is_empty() {
        tracing::warn!(pod = %settings.identity, "divergence audit: no standby URL for this pod's peers; no audits");
        return;
    }
    let mut schedules: Vec<PeerSchedule> = peers.iter().map(|_| PeerSchedule::default()).collect();
    loop {
        let term = *office.borrow_and_update();
        if let Some(term) = term {
            for ((pod, url), schedule) in peers.iter().zip(schedules.iter_mut()) {
                audit_peer(&settings, term, pod, url, schedule, &office, &edits).await;
            }
        }
        let wait = if term.is_some() { PROBE_EVERY } else { Duration::from_secs(3600) };
        tokio::select! {
            changed = office.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn audit_peer(
    settings: &Settings,
    term: i32,
    pod: &str,
    url: &str,
    schedule: &mut PeerSchedule,
    office: &watch::Receiver<Option<i32>>,
    edits: &watch::Sender<Edits>,
) {
    let reachable = match peer_check(url, &settings.local.base, &settings.creds, &settings.tls) {
        Ok(check) => check.probe(settings.op_timeout).await.is_ok(),
        Err(_) => false,
    };
    schedule.probed(reachable);
    let Some(trigger) = schedule.due(term, Moment::now(), &settings.cadence) else { return };
    let started = std::time::Instant::now();
    let result = match settings.audit_config(url) {
        Ok(cfg) => audit::audit(&cfg).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let outcome = policy::outcome_of(&result);
    schedule.audited(term, Moment::now(), &outcome);
    let elapsed = started.elapsed();
    let (differences, entries_a, entries_b) = match &result {
        Ok(r) => (r.differences.len() as u64 + r.differences_not_listed, r.a.entries, r.b.entries),
        Err(_) => (0, 0, 0),
    };
    match &outcome {
        Outcome::Diverged { summary } => tracing::error!(
            pod = %settings.identity, term, standby = pod, trigger = ?trigger, verdict = "diverged", differences,
            entries_leader = entries_a, entries_standby = entries_b, elapsed = ?elapsed, summary = %summary,
            "divergence audit: the standby DIVERGED from the leader; it is marked ineligible for promotion (repair: ldap-elector reseed)"
        ),
        Outcome::InSync => tracing::info!(
            pod = %settings.identity, term, standby = pod, trigger = ?trigger, verdict = "in_sync",
            entries_leader = entries_a, entries_standby = entries_b, elapsed = ?elapsed, "divergence audit: in sync"
        ),
        Outcome::Inconclusive { reason } => tracing::warn!(
            pod = %settings.identity, term, standby = pod, trigger = ?trigger, verdict = "inconclusive",
            reason = %reason, retries = schedule.inconclusive, elapsed = ?elapsed, "divergence audit inconclusive; retrying later"
        ),
    }
    // Only verdicts reached in office for this very term are written.
    if *office.borrow() != Some(term) {
        return;
    }
    let mut verdict = Edits::for_term(term);
    verdict.record(&settings.identity, pod, &outcome, &k8s_openapi::jiff::Timestamp::now().to_string());
    if !verdict.pods.is_empty() {
        edits.send_replace(verdict);
    }
}

/// Logs when this pod's own divergence mark appears or goes (between two observations).
pub fn log_own_mark(
    identity: &str,
    before: Option<&crate::election::decide::Observed>,
    after: &crate::election::decide::Observed,
) {
    let was = before.is_some_and(|o| o.ineligible.blocks(identity));
    let is = after.ineligible.blocks(identity);
    if is && !was {
        tracing::error!(pod = %identity, holder = ?after.holder, ineligible = ?after.ineligible,
            "this pod is marked DIVERGED in the Lease: it will not become leader until `ldap-elector reseed` repairs it or an operator allows it");
    } else if was && !is {
        tracing::info!(pod = %identity, "this pod's divergence mark was lifted: eligible for promotion again");
    }
}

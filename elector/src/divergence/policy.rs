//! Divergence policy (issue 9), pure: what the Lease's divergence marks say, how an audit
//! verdict changes them, when the leader audits a standby, and who may reseed.
//!
//! The marks live in the Lease ([`LEASE_ANNOTATION_DIVERGED`]): a JSON object mapping a pod
//! name to `{"since": RFC 3339, "summary": text}`. An operator may let a listed pod be
//! promoted anyway by naming it in [`LEASE_ANNOTATION_ALLOW_DIVERGED`] (comma list).
//! Only the leader writes marks, with its own renew (a CAS on the Lease), so they can never
//! be lost to a concurrent write; `ldap-elector reseed` clears one after a clean audit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ldap_elector_contract::backoff::Backoff;
pub use ldap_elector_contract::peers::PeerUrls;
use serde::{Deserialize, Serialize};

use crate::clock::Moment;
pub use ldap_elector_contract::{LEASE_ANNOTATION_ALLOW_DIVERGED, LEASE_ANNOTATION_DIVERGED};

/// One diverged pod's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When the leader first found it diverged (RFC 3339).
    #[serde(default)]
    pub since: String,
    /// What the audit found, for humans (e.g. `2 entries differ; missing on B: uid=…`).
    #[serde(default)]
    pub summary: String,
}

/// Pod name → mark.
pub type Marks = BTreeMap<String, Mark>;

/// The marks of an annotation value. A value that is not the documented JSON object is an
/// error: the caller must then treat every pod as possibly marked (fail closed).
pub fn parse_marks(value: &str) -> Result<Marks, String> {
    if value.trim().is_empty() {
        return Ok(Marks::new());
    }
    serde_json::from_str(value).map_err(|e| format!("{LEASE_ANNOTATION_DIVERGED} is not a JSON object of marks: {e}"))
}

/// The annotation value of `marks` (`None`: remove the annotation).
pub fn render_marks(marks: &Marks) -> Option<String> {
    if marks.is_empty() {
        None
    } else {
        serde_json::to_string(marks).ok()
    }
}

/// The pods an operator allows to be promoted although marked.
pub fn parse_allowed(value: Option<&str>) -> BTreeSet<String> {
    value.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// What blocks promotion, as the decision core needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Ineligible {
    /// Nobody is marked (or everybody marked is allowed).
    #[default]
    Nobody,
    /// These pods are marked and not allowed.
    Pods(BTreeSet<String>),
    /// The marks annotation cannot be read: every pod not explicitly allowed is blocked
    /// (consistency over availability; the operator fixes the annotation or allows a pod).
    AllExcept(BTreeSet<String>),
}

impl Ineligible {
    /// From the two annotation values of a Lease.
    pub fn from_annotations(diverged: Option<&str>, allowed: Option<&str>) -> Ineligible {
        let allowed = parse_allowed(allowed);
        match diverged.map(parse_marks).unwrap_or_else(|| Ok(Marks::new())) {
            Ok(marks) => {
                let blocked: BTreeSet<String> = marks.into_keys().filter(|p| !allowed.contains(p)).collect();
                if blocked.is_empty() {
                    Ineligible::Nobody
                } else {
                    Ineligible::Pods(blocked)
                }
            }
            Err(_) => Ineligible::AllExcept(allowed),
        }
    }

    /// Whether `pod` must not be promoted.
    pub fn blocks(&self, pod: &str) -> bool {
        match self {
            Ineligible::Nobody => false,
            Ineligible::Pods(pods) => pods.contains(pod),
            Ineligible::AllExcept(allowed) => !allowed.contains(pod),
        }
    }
}

/// What one audit of the leader against a standby concluded, for the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed differences: mark the standby.
    Diverged { summary: String },
    /// Every entry agrees: clear the marks of both servers.
    InSync,
    /// Unsettled, or the audit could not finish: change nothing, audit again soon.
    Inconclusive { reason: String },
}

/// A change to one pod's mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Mark (or keep marked; an existing `since` is kept).
    Set(Mark),
    /// Remove the mark.
    Clear,
}

/// One audit's changes to the marks, made in `term`: written into the Lease once, with the
/// next renew of that same term (never by a later term's leader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub term: i32,
    pub pods: BTreeMap<String, Edit>,
}

impl Edits {
    pub fn for_term(term: i32) -> Edits {
        Edits { term, pods: BTreeMap::new() }
    }

    /// Records what an audit of `leader` against `standby` concluded (`now`: RFC 3339).
    pub fn record(&mut self, leader: &str, standby: &str, outcome: &Outcome, now: &str) {
        match outcome {
            Outcome::Diverged { summary } => {
                self.pods.insert(standby.into(), Edit::Set(Mark { since: now.into(), summary: summary.clone() }));
            }
            // Both hold the same data: neither is diverged (this also lifts an operator-
            // allowed leader's own old mark).
            Outcome::InSync => {
                self.pods.insert(standby.into(), Edit::Clear);
                self.pods.insert(leader.into(), Edit::Clear);
            }
            Outcome::Inconclusive { .. } => {}
        }
    }
}

/// The new annotation value after applying `edits` to the current one (`None`: remove).
/// Marks of other pods are kept; a pod marked again keeps its first `since`. An unreadable
/// current value is kept as it is (fail closed: the operator must fix it).
pub fn apply_edits(current: Option<&str>, edits: &Edits) -> Result<Option<String>, String> {
    let mut marks = match current {
        Some(v) => parse_marks(v)?,
        None => Marks::new(),
    };
    for (pod, edit) in &edits.pods {
        match edit {
            Edit::Set(mark) => {
                let entry = marks.entry(pod.clone()).or_insert_with(|| mark.clone());
                entry.summary.clone_from(&mark.summary);
            }
            Edit::Clear => {
                marks.remove(pod);
            }
        }
    }
    Ok(render_marks(&marks))
}

/// A one-line summary of a diverged report, bounded in length for the annotation.
pub fn summarize(report: &crate::divergence::audit::Report) -> String {
    const MAX: usize = 400;
    let total = report.differences.len() as u64 + report.differences_not_listed;
    let mut s = format!("{total} entries differ (contextCSN equal: {})", report.context_csn_equal);
    for d in report.differences.iter().take(3) {
        s.push_str(&format!("; {:?} {}", d.kind, d.dn));
    }
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The outcome of an audit result for the policy.
pub fn outcome_of(result: &Result<crate::divergence::audit::Report, String>) -> Outcome {
    use crate::divergence::audit::Verdict;
    match result {
        Ok(r) if r.verdict == Verdict::Diverged => Outcome::Diverged { summary: summarize(r) },
        Ok(r) if r.verdict == Verdict::InSync => Outcome::InSync,
        Ok(_) => Outcome::Inconclusive { reason: "unsettled: entries kept changing or replication lagged".into() },
        Err(e) => Outcome::Inconclusive { reason: e.clone() },
    }
}

// ---- When the leader audits a standby ----

/// Why an audit runs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// This pod took office (after a failover or switchover): audit the standby once it is
    /// reachable.
    TookOffice,
    /// The standby's slapd answers again after it did not: it (re)joined.
    Rejoined,
    /// The last audit was inconclusive: retry after a back-off.
    Retry,
    /// The routine interval has passed.
    Interval,
}

/// Audit cadence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    /// Routine audits (`None`: only on taking office, rejoins and retries).
    pub interval: Option<Duration>,
    /// First retry after an inconclusive audit; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            interval: Some(Duration::from_secs(600)),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(120),
        }
    }
}

/// What the leader remembers of its audits of one standby.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSchedule {
    /// The term of the last audit (a new term audits at once).
    pub term: Option<i32>,
    pub last_audit: Option<Moment>,
    /// Consecutive inconclusive audits (0 after a conclusive one).
    pub inconclusive: u32,
    /// Whether the standby answered at the last probe (`None`: not probed this term).
    pub reachable: Option<bool>,
    /// The standby stopped answering since the last audit: audit when it answers again.
    pub missed: bool,
}

impl PeerSchedule {
    /// Notes a reachability probe of the standby.
    pub fn probed(&mut self, reachable: bool) {
        if !reachable && self.reachable == Some(true) {
            self.missed = true;
        }
        self.reachable = Some(reachable);
    }

    /// Whether to audit the standby now, and why (`term`: this leader's term in office).
    pub fn due(&self, term: i32, now: Moment, cadence: &Cadence) -> Option<Trigger> {
        if self.reachable != Some(true) {
            return None; // nothing to compare with; the probe notices when it is back
        }
        if self.term != Some(term) {
            return Some(Trigger::TookOffice);
        }
        if self.missed {
            return Some(Trigger::Rejoined);
        }
        let last = self.last_audit?;
        if self.inconclusive > 0 {
            let backoff = Backoff::new(cadence.retry_min, cadence.retry_max).delay(self.inconclusive - 1);
            if now >= last + backoff {
                return Some(Trigger::Retry);
            }
            return None;
        }
        cadence.interval.filter(|i| now >= last + *i).map(|_| Trigger::Interval)
    }

    /// Records an audit that ran in `term` at `now`.
    pub fn audited(&mut self, term: i32, now: Moment, outcome: &Outcome) {
        self.term = Some(term);
        self.last_audit = Some(now);
        self.missed = false;
        self.inconclusive = match outcome {
            Outcome::Inconclusive { .. } => self.inconclusive.saturating_add(1),
            _ => 0,
        };
    }
}

// ---- Reseed ----

/// Why `ldap-elector reseed` refuses to touch a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} holds the Lease: it is the leader, whose data is the reference; never reseed the leader")]
    TargetLeads(String),
    #[error("the Lease has no holder: there is no leader to reseed {0} from (wait for one, then retry)")]
    NoLeader(String),
    #[error("cannot tell who leads: {0}")]
    Unknown(String),
}

/// The leader to reseed `target` from, or why not (`holder`: the Lease's holder as read).
pub fn reseed_source(holder: Result<Option<&str>, String>, target: &str) -> Result<String, Refusal> {
    match holder {
        Err(e) => Err(Refusal::Unknown(e)),
        Ok(None) => Err(Refusal::NoLeader(target.into())),
        Ok(Some(h)) if h == target => Err(Refusal::TargetLeads(target.into())),
        Ok(Some(h)) => Ok(h.to_string()),
    }
}

/// The Lease annotation value after `ldap-elector reseed` cleared `pod`'s mark.
pub fn cleared(current: Option<&str>, pod: &str) -> Result<Option<String>, String> {
    let mut edits = Edits::for_term(0);
    edits.pods.insert(pod.into(), Edit::Clear);
    apply_edits(current, &edits)
}

// ---- Where the servers are ----

/// The standbys a leader `me` of `statefulset` audits: the other pod of the Mirror-Mode
/// pair (ordinals 0 and 1) with a URL.
pub fn peers(me: &str, statefulset: &str, urls: &PeerUrls) -> Vec<(String, String)> {
    (0..2)
        .map(|o| ldap_elector_contract::pod_name(statefulset, o))
        .filter(|p| p != me)
        .filter_map(|p| urls.url(&p).map(|u| (p, u)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn at(secs: u64) -> Moment {
        Moment::ZERO + Duration::from_secs(secs)
    }

    fn mark(since: &str, summary: &str) -> Mark {
        Mark { since: since.into(), summary: summary.into() }
    }

    #[test]
    fn marks_round_trip_and_absent_means_none() {
        let mut m = Marks::new();
        m.insert("ldap-1".into(), mark("2026-11-26T04:00:00Z", "2 entries differ"));
        let v = render_marks(&m).unwrap();
        assert_eq!(v, r#"{"ldap-1":{"since":"2026-11-26T04:00:00Z","summary":"2 entries differ"}}"#);
        assert_eq!(parse_marks(&v).unwrap(), m);
        assert_eq!(render_marks(&Marks::new()), None);
        assert_eq!(parse_marks(" ").unwrap(), Marks::new());
        assert!(parse_marks("ldap-1").is_err());
    }

    #[test]
    fn a_marked_pod_is_blocked_unless_allowed() {
        let v = r#"{"ldap-1":{"since":"t","summary":"s"}}"#;
        let i = Ineligible::from_annotations(Some(v), None);
        assert!(i.blocks("ldap-1") && !i.blocks("ldap-0"));
        let i = Ineligible::from_annotations(Some(v), Some(" ldap-1 ,x"));
        assert_eq!(i, Ineligible::Nobody);
        assert_eq!(Ineligible::from_annotations(None, None), Ineligible::Nobody);
    }

    #[test]
    fn unreadable_marks_block_everybody_not_allowed() {
        let i = Ineligible::from_annotations(Some("garbage"), Some("ldap-0"));
        assert!(i.blocks("ldap-1") && !i.blocks("ldap-0"));
    }

    #[test]
    fn verdicts_edit_the_marks_and_keep_others_and_the_first_since() {
        let current = r#"{"other":{"since":"t0","summary":"x"},"ldap-1":{"since":"t1","summary":"old"}}"#;
        let mut e = Edits::for_term(3);
        e.record("ldap-0", "ldap-1", &Outcome::Diverged { summary: "new".into() }, "t2");
        let v = apply_edits(Some(current), &e).unwrap().unwrap();
        let m = parse_marks(&v).unwrap();
        assert_eq!(m["ldap-1"], mark("t1", "new"));
        assert_eq!(m["other"], mark("t0", "x"));

        let mut e = Edits::for_term(3);
        e.record("ldap-0", "ldap-1", &Outcome::Diverged { summary: "s".into() }, "t2");
        assert_eq!(parse_marks(&apply_edits(None, &e).unwrap().unwrap()).unwrap()["ldap-1"], mark("t2", "s"));
    }

    #[test]
    fn in_sync_clears_both_and_inconclusive_changes_nothing() {
        let current = r#"{"ldap-0":{"since":"t","summary":"s"},"ldap-1":{"since":"t","summary":"s"}}"#;
        let mut e = Edits::for_term(1);
        e.record("ldap-0", "ldap-1", &Outcome::Inconclusive { reason: "timeout".into() }, "t2");
        assert!(e.pods.is_empty());
        assert_eq!(apply_edits(Some(current), &e).unwrap().as_deref(), Some(current));
        e.record("ldap-0", "ldap-1", &Outcome::InSync, "t2");
        assert_eq!(apply_edits(Some(current), &e).unwrap(), None, "annotation removed");
        // A later verdict for the same pod replaces the earlier one.
        e.record("ldap-0", "ldap-1", &Outcome::Diverged { summary: "again".into() }, "t3");
        assert!(parse_marks(&apply_edits(None, &e).unwrap().unwrap()).unwrap().contains_key("ldap-1"));
    }

    #[test]
    fn unreadable_current_marks_are_not_overwritten() {
        let mut e = Edits::for_term(1);
        e.record("a", "b", &Outcome::InSync, "t");
        assert!(apply_edits(Some("garbage"), &e).is_err());
    }

    #[test]
    fn schedule_audits_on_taking_office_once_the_standby_answers() {
        let c = Cadence::default();
        let mut s = PeerSchedule::default();
        assert_eq!(s.due(5, at(0), &c), None, "not probed yet");
        s.probed(false);
        assert_eq!(s.due(5, at(0), &c), None, "unreachable");
        s.probed(true);
        assert_eq!(s.due(5, at(0), &c), Some(Trigger::TookOffice));
        s.audited(5, at(1), &Outcome::InSync);
        assert_eq!(s.due(5, at(2), &c), None);
        assert_eq!(s.due(6, at(2), &c), Some(Trigger::TookOffice), "a new term audits again");
    }

    #[test]
    fn schedule_audits_a_rejoined_standby_and_on_the_interval() {
        let c = Cadence { interval: Some(600 * S), ..Cadence::default() };
        let mut s = PeerSchedule::default();
        s.probed(true);
        s.audited(5, at(0), &Outcome::InSync);
        s.probed(false);
        assert_eq!(s.due(5, at(10), &c), None);
        s.probed(true);
        assert_eq!(s.due(5, at(20), &c), Some(Trigger::Rejoined));
        s.audited(5, at(20), &Outcome::InSync);
        assert_eq!(s.due(5, at(619), &c), None);
        assert_eq!(s.due(5, at(620), &c), Some(Trigger::Interval));
        let off = Cadence { interval: None, ..c };
        assert_eq!(s.due(5, at(100_000), &off), None, "interval 0 = off");
    }

    #[test]
    fn schedule_retries_inconclusive_audits_with_backoff() {
        let c = Cadence { interval: None, retry_min: 5 * S, retry_max: 20 * S };
        let mut s = PeerSchedule::default();
        s.probed(true);
        let inconclusive = Outcome::Inconclusive { reason: "unsettled".into() };
        s.audited(1, at(0), &inconclusive);
        assert_eq!(s.due(1, at(4), &c), None);
        assert_eq!(s.due(1, at(5), &c), Some(Trigger::Retry));
        s.audited(1, at(5), &inconclusive);
        assert_eq!(s.due(1, at(14), &c), None);
        assert_eq!(s.due(1, at(15), &c), Some(Trigger::Retry));
        for _ in 0..10 {
            s.audited(1, at(15), &inconclusive);
        }
        assert_eq!(s.due(1, at(35), &c), Some(Trigger::Retry), "capped at retry_max");
        s.audited(1, at(35), &Outcome::Diverged { summary: "s".into() });
        assert_eq!(s.inconclusive, 0);
        assert_eq!(s.due(1, at(1000), &c), None);
    }

    #[test]
    fn reseed_refuses_the_leader_and_an_unknown_or_empty_lease() {
        assert_eq!(reseed_source(Ok(Some("ldap-0")), "ldap-1"), Ok("ldap-0".into()));
        assert!(matches!(reseed_source(Ok(Some("ldap-1")), "ldap-1"), Err(Refusal::TargetLeads(_))));
        assert!(matches!(reseed_source(Ok(None), "ldap-1"), Err(Refusal::NoLeader(_))));
        assert!(matches!(reseed_source(Err("forbidden".into()), "ldap-1"), Err(Refusal::Unknown(_))));
    }

    #[test]
    fn reseed_clears_only_its_pod() {
        let current = r#"{"a":{"since":"t","summary":"s"},"b":{"since":"t","summary":"s"}}"#;
        let v = cleared(Some(current), "b").unwrap().unwrap();
        assert_eq!(parse_marks(&v).unwrap().keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(cleared(None, "b").unwrap(), None);
    }

    #[test]
    fn peer_urls_from_a_template_or_explicit_pairs() {
        let t = PeerUrls::parse("ldap://{pod}.ldap-server:389?base=dc=x").unwrap();
        assert_eq!(
            peers("ldap-server-0", "ldap-server", &t),
            [("ldap-server-1".into(), "ldap://ldap-server-1.ldap-server:389?base=dc=x".into())]
        );
        let e = PeerUrls::parse(
            "ldap-server-0=ldap://127.0.0.1:1?base=dc=x,dc=org, ldap-server-1=ldap://127.0.0.1:2?base=dc=x,dc=org",
        )
        .unwrap();
        assert_eq!(
            peers("ldap-server-1", "ldap-server", &e),
            [("ldap-server-0".into(), "ldap://127.0.0.1:1?base=dc=x,dc=org".into())]
        );
        assert_eq!(e.url("ldap-server-1").as_deref(), Some("ldap://127.0.0.1:2?base=dc=x,dc=org"));
        assert!(PeerUrls::parse("ldap://h:389").is_err());
        assert!(PeerUrls::parse("").is_err());
    }
}

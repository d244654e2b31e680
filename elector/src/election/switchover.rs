//! Manual switchover (pure). An operator (or `ldap-elector switchover`) names a target pod in
//! the Lease annotation [`LEASE_ANNOTATION_SWITCHOVER_TO`]. The same eligibility rule,
//! [`verdict`], runs twice: in the CLI before it writes the request (a clear refusal at
//! once) and in the leader's elector before it acts (the facts may have changed, and an
//! annotation can be written by hand). An eligible target gets the Lease handed over
//! gracefully: the leader demotes and fences itself first, then CAS-writes the Lease with
//! holder = target, the same term and a fresh renewTime ([`handed_over`]); the target's
//! `decide` acquires a Lease naming it at once (term + 1), every other follower waits for
//! expiry. An ineligible request is cleared and the reason recorded ([`refused`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use ldap_elector_contract::csn::{self, caught_up};
use ldap_elector_contract::{
    self as contract, ANNOTATION_CONTEXT_CSN, ANNOTATION_HEALTH, HEALTH_HEALTHY, LEASE_ANNOTATION_ALLOW_DIVERGED,
    LEASE_ANNOTATION_CONTEXT_CSN, LEASE_ANNOTATION_DIVERGED, LEASE_ANNOTATION_SWITCHOVER_REFUSED,
    LEASE_ANNOTATION_SWITCHOVER_TO,
};

use crate::election::decide::Action;
use crate::election::lease::annotation;

/// How far (by CSN timestamps, per server ID) a target's *published* contextCSN may trail the
/// leader's and still count as caught up for a switchover. The published value is rate-limited
/// (see `publish.rs`), so under write load it always trails a little; the target itself still
/// waits until it holds the leader's final, fenced contextCSN before it takes over
/// (`decide::may_promote`), so this tolerance never lets a lagging standby take writes.
pub const MAX_PUBLISHED_LAG: Duration = Duration::from_secs(10);

/// What is known about the requested target, from its pod and the Lease (see [`target_facts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// Named like a pod of the StatefulSet (`<statefulset>-<ordinal>`).
    pub member: bool,
    /// The pod exists.
    pub exists: bool,
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    /// The pod's [`ANNOTATION_HEALTH`], as its elector published it.
    pub health: Option<String>,
    /// The pod's published contextCSN.
    pub csn: Vec<String>,
    /// Summary of the Lease's divergence mark for this pod, if it is marked.
    pub diverged: Option<String>,
    /// The operator allowed promoting it although marked diverged.
    pub allow_diverged: bool,
}

/// What is known about the current leader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leader {
    /// The Lease's holder, if the Lease is held and not expired.
    pub holder: Option<String>,
    /// The leader's contextCSN (its live value on the leader, the published one in the CLI).
    pub csn: Vec<String>,
}

/// Why a target may not take over. The text is what the operator reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{target} is not a pod of StatefulSet {statefulset}")]
    NotAMember { target: String, statefulset: String },
    #[error("pod {0} does not exist")]
    NoSuchPod(String),
    #[error("{0} is already the leader")]
    AlreadyLeader(String),
    #[error(
        "there is no current leader to hand over (the Lease is free or expired); the electors elect one by themselves"
    )]
    NoLeader,
    #[error("pod {0} is not Ready")]
    NotReady(String),
    #[error("{target} has not published its health (is its elector running?)")]
    HealthUnknown { target: String },
    #[error("{target} is unhealthy: {health}")]
    Unhealthy { target: String, health: String },
    #[error("{target} is behind the leader's contextCSN (target {target_csn:?}, leader {leader_csn:?})")]
    Behind { target: String, target_csn: Vec<String>, leader_csn: Vec<String> },
    #[error("{target} is marked diverged ({summary}); add it to the Lease annotation {LEASE_ANNOTATION_ALLOW_DIVERGED} to override")]
    Diverged { target: String, summary: String },
}

/// Whether `target` may take over from `leader` (pure; the one rule of CLI and leader).
pub fn verdict(target: &Target, leader: &Leader, statefulset: &str) -> Result<(), Refusal> {
    let name = || target.name.clone();
    if !target.member {
        return Err(Refusal::NotAMember { target: name(), statefulset: statefulset.to_string() });
    }
    if !target.exists {
        return Err(Refusal::NoSuchPod(name()));
    }
    let Some(holder) = leader.holder.as_deref() else { return Err(Refusal::NoLeader) };
    if holder == target.name {
        return Err(Refusal::AlreadyLeader(name()));
    }
    if !target.ready {
        return Err(Refusal::NotReady(name()));
    }
    match target.health.as_deref() {
        None => return Err(Refusal::HealthUnknown { target: name() }),
        Some(HEALTH_HEALTHY) => {}
        Some(other) => return Err(Refusal::Unhealthy { target: name(), health: other.to_string() }),
    }
    if let Some(summary) = &target.diverged {
        if !target.allow_diverged {
            return Err(Refusal::Diverged { target: name(), summary: summary.clone() });
        }
    }
    let close_enough = csn::lag(&target.csn, &leader.csn).is_some_and(|lag| lag <= MAX_PUBLISHED_LAG);
    if !caught_up(&target.csn, &leader.csn) && !close_enough {
        return Err(Refusal::Behind { target: name(), target_csn: target.csn.clone(), leader_csn: leader.csn.clone() });
    }
    Ok(())
}

/// The requested target of a pending switchover, if any.
pub fn requested(lease: &Lease) -> Option<&str> {
    annotation(lease, LEASE_ANNOTATION_SWITCHOVER_TO).map(str::trim).filter(|t| !t.is_empty())
}

/// One entry of the Lease's divergence marks (see `divergence_policy`).
pub type DivergedMark = crate::divergence::policy::Mark;

/// The Lease's divergence marks (pod → mark); an unreadable annotation is an error.
pub fn diverged_marks(lease: &Lease) -> Result<BTreeMap<String, DivergedMark>, String> {
    crate::divergence::policy::parse_marks(annotation(lease, LEASE_ANNOTATION_DIVERGED).unwrap_or(""))
}

/// The pods the operator allows to be promoted although marked diverged.
pub fn allowed_diverged(lease: &Lease) -> Vec<String> {
    crate::divergence::policy::parse_allowed(annotation(lease, LEASE_ANNOTATION_ALLOW_DIVERGED)).into_iter().collect()
}

/// Whether a pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The facts about `name` from its pod (`None`: not found) and the Lease.
pub fn target_facts(name: &str, pod: Option<&Pod>, lease: &Lease, statefulset: &str) -> Target {
    let annotations = pod.and_then(|p| p.metadata.annotations.as_ref());
    // Unreadable marks block every pod that is not allowed (as in `decide`): refuse then.
    let diverged = match diverged_marks(lease) {
        Ok(marks) => marks.get(name).map(|d| d.summary.clone()),
        Err(e) => Some(e),
    };
    Target {
        name: name.to_string(),
        member: contract::split_pod_name(name).is_some_and(|(set, _)| set == statefulset),
        exists: pod.is_some(),
        ready: pod.is_some_and(pod_ready),
        health: annotations.and_then(|a| a.get(ANNOTATION_HEALTH)).cloned(),
        csn: csn::split_annotation(annotations.and_then(|a| a.get(ANNOTATION_CONTEXT_CSN)).map(String::as_str)),
        diverged: diverged.map(|s| if s.is_empty() { "no summary".into() } else { s }),
        allow_diverged: allowed_diverged(lease).iter().any(|p| p == name),
    }
}

/// The leader's facts as a client sees them: the holder if the Lease has not expired by
/// `renew_age` (wall clock, advisory), and the contextCSN it published in the Lease.
pub fn leader_facts(lease: &Lease, renew_age: Option<Duration>) -> Leader {
    let spec = lease.spec.clone().unwrap_or_default();
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let live = renew_age.is_some_and(|age| age <= duration);
    Leader {
        holder: spec.holder_identity.filter(|h| !h.is_empty() && live),
        csn: csn::split_annotation(annotation(lease, LEASE_ANNOTATION_CONTEXT_CSN)),
    }
}

/// What the leader does about a pending request, given what `decide` chose this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing pending, or not now (not in office yet, or `decide` has something more urgent).
    None,
    /// Check the target (read its pod) and hand over or refuse.
    Consider(String),
}

/// Whether the leader should look at a switchover request now (pure). Only a leader in its
/// steady state does: `decide` chose to wait (a due renew goes first, so the check runs with
/// a whole renew period before the next one), it has taken office, and it is not stopping; a
/// stopping, demoting or releasing leader just releases, as without a request.
pub fn step(action: &Action, in_office: bool, stopping: bool, lease: Option<&Lease>) -> Step {
    if !in_office || stopping || !matches!(action, Action::Wait(_)) {
        return Step::None;
    }
    match lease.and_then(requested) {
        Some(target) => Step::Consider(target.to_string()),
        None => Step::None,
    }
}

fn without_request(mut lease: Lease) -> Lease {
    if let Some(a) = lease.metadata.annotations.as_mut() {
        a.remove(LEASE_ANNOTATION_SWITCHOVER_TO);
        a.remove(LEASE_ANNOTATION_SWITCHOVER_REFUSED);
    }
    lease
}

/// The Lease handed over to `target`: same term and duration, fresh renewTime (so the other
/// followers wait a whole lease duration), the request cleared, the leader's final contextCSN
/// published (the target waits until it holds it). `target_uid` is the target pod's UID as
/// read: only that pod takes the Lease at once (a replacement under the same name waits).
pub fn handed_over(lease: &Lease, target: &str, target_uid: Option<&str>, csn: &[String]) -> Lease {
    let mut next = crate::election::lease::with_context_csn(without_request(lease.clone()), csn);
    let uid = target_uid.map(String::from);
    crate::election::lease::set_annotation(&mut next, ldap_elector_contract::LEASE_ANNOTATION_HOLDER_UID, uid);
    let spec = next.spec.get_or_insert_with(LeaseSpec::default);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    spec.holder_identity = Some(target.to_string());
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    spec.preferred_holder = None;
    next
}

/// The Lease with the request cleared and the refusal recorded (`<target>: <reason>`).
pub fn refused(lease: &Lease, target: &str, reason: &Refusal) -> Lease {
    let mut next = without_request(lease.clone());
    next.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(LEASE_ANNOTATION_SWITCHOVER_REFUSED.into(), format!("{target}: {reason}"));
    next
}

/// The Lease with a request for `target` (what the CLI writes; a previous refusal cleared).
pub fn requesting(lease: &Lease, target: &str) -> Lease {
    let mut next = without_request(lease.clone());
    next.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(LEASE_ANNOTATION_SWITCHOVER_TO.into(), target.into());
    next
}

/// The recorded refusal, if any.
pub fn refusal(lease: &Lease) -> Option<&str> {
    annotation(lease, LEASE_ANNOTATION_SWITCHOVER_REFUSED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Moment;
    use serde_json::json;

    const CSN_A: &str = "20261125183700.000000Z#000000#001#000000";
    const CSN_A_LATER: &str = "20261125183730.000000Z#000000#001#000000";
    const CSN_A_SLIGHTLY: &str = "20261125183705.500000Z#000000#001#000000";
    const CSN_B: &str = "20261125183000.000000Z#000000#002#000000";

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn good_target() -> Target {
        Target {
            name: "ldap-1".into(),
            member: true,
            exists: true,
            ready: true,
            health: Some(HEALTH_HEALTHY.into()),
            csn: v(&[CSN_A, CSN_B]),
            diverged: None,
            allow_diverged: false,
        }
    }

    fn leader() -> Leader {
        Leader { holder: Some("ldap-0".into()), csn: v(&[CSN_A, CSN_B]) }
    }

    fn lease(annotations: serde_json::Value) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "ldap-leader", "resourceVersion": "7", "annotations": annotations},
            "spec": {"holderIdentity": "ldap-0", "leaseTransitions": 4, "leaseDurationSeconds": 8},
        }))
        .unwrap()
    }

    #[test]
    fn a_healthy_caught_up_ready_member_is_eligible() {
        assert_eq!(verdict(&good_target(), &leader(), "ldap"), Ok(()));
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let cases: Vec<(Target, Leader, &str)> = vec![
            (Target { member: false, ..good_target() }, leader(), "is not a pod of StatefulSet ldap"),
            (Target { exists: false, ..good_target() }, leader(), "does not exist"),
            (Target { name: "ldap-0".into(), ..good_target() }, leader(), "already the leader"),
            (good_target(), Leader { holder: None, ..leader() }, "no current leader"),
            (Target { ready: false, ..good_target() }, leader(), "not Ready"),
            (Target { health: None, ..good_target() }, leader(), "has not published its health"),
            (
                Target { health: Some("unhealthy: slapd down".into()), ..good_target() },
                leader(),
                "unhealthy: slapd down",
            ),
            (Target { csn: v(&[CSN_B]), ..good_target() }, leader(), "behind the leader"),
            (
                Target { diverged: Some("3 entries differ".into()), ..good_target() },
                leader(),
                "marked diverged (3 entries differ)",
            ),
        ];
        for (target, leader, reason) in cases {
            let err = verdict(&target, &leader, "ldap").unwrap_err();
            assert!(err.to_string().contains(reason), "{err} should say {reason:?}");
        }
    }

    #[test]
    fn checks_come_in_a_fixed_order_membership_first() {
        let t = Target { member: false, exists: false, ready: false, health: None, ..good_target() };
        assert!(matches!(verdict(&t, &Leader::default(), "ldap"), Err(Refusal::NotAMember { .. })));
        let t = Target { ready: false, health: None, ..good_target() };
        assert!(matches!(verdict(&t, &leader(), "ldap"), Err(Refusal::NotReady(_))));
    }

    #[test]
    fn an_override_allows_a_diverged_target() {
        let t = Target { diverged: Some("x".into()), allow_diverged: true, ..good_target() };
        assert_eq!(verdict(&t, &leader(), "ldap"), Ok(()));
    }

    #[test]
    fn a_slightly_trailing_published_csn_is_tolerated_a_far_one_is_not() {
        let l = Leader { csn: v(&[CSN_A_SLIGHTLY, CSN_B]), ..leader() };
        assert_eq!(verdict(&good_target(), &l, "ldap"), Ok(()));
        let l = Leader { csn: v(&[CSN_A_LATER, CSN_B]), ..leader() };
        assert!(matches!(verdict(&good_target(), &l, "ldap"), Err(Refusal::Behind { .. })));
    }

    #[test]
    fn facts_come_from_the_pod_and_the_lease() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ldap-1", "annotations": {ANNOTATION_HEALTH: "healthy", ANNOTATION_CONTEXT_CSN: format!("{CSN_A} {CSN_B}")}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let l = lease(json!({
            LEASE_ANNOTATION_DIVERGED: r#"{"ldap-1": {"since": "2026-11-25T10:00:00Z", "summary": "2 entries differ"}}"#,
            LEASE_ANNOTATION_ALLOW_DIVERGED: "ldap-2, ldap-1",
        }));
        let t = target_facts("ldap-1", Some(&pod), &l, "ldap");
        assert_eq!(t, Target { diverged: Some("2 entries differ".into()), allow_diverged: true, ..good_target() });
        let t = target_facts("other-1", None, &lease(json!({})), "ldap");
        assert!(!t.member && !t.exists && !t.ready && t.diverged.is_none());
        let unreadable = lease(json!({LEASE_ANNOTATION_DIVERGED: "[1]"}));
        assert!(diverged_marks(&unreadable).is_err());
        // Unreadable marks block promotion in `decide`: a switchover is refused, not attempted.
        let t = target_facts("ldap-1", Some(&pod), &unreadable, "ldap");
        assert!(t.diverged.as_deref().is_some_and(|d| d.contains("not a JSON object")), "{t:?}");
    }

    #[test]
    fn a_client_sees_no_leader_in_an_expired_lease() {
        let l = lease(json!({LEASE_ANNOTATION_CONTEXT_CSN: CSN_A}));
        assert_eq!(leader_facts(&l, Some(Duration::from_secs(3))).holder.as_deref(), Some("ldap-0"));
        assert_eq!(leader_facts(&l, Some(Duration::from_secs(9))).holder, None);
        assert_eq!(leader_facts(&l, None).holder, None);
        assert_eq!(leader_facts(&l, None).csn, v(&[CSN_A]));
    }

    #[test]
    fn only_a_leader_in_office_and_steady_state_considers_a_request() {
        let l = lease(json!({LEASE_ANNOTATION_SWITCHOVER_TO: "ldap-1"}));
        let wait = Action::Wait(Some(Moment::ZERO));
        assert_eq!(step(&wait, true, false, Some(&l)), Step::Consider("ldap-1".into()));
        assert_eq!(step(&Action::Renew, true, false, Some(&l)), Step::None, "renew first");
        assert_eq!(step(&wait, false, false, Some(&l)), Step::None, "not in office yet");
        assert_eq!(step(&wait, true, true, Some(&l)), Step::None, "stopping: release instead");
        for a in [
            Action::Release(crate::election::decide::ReleaseReason::Stopping),
            Action::Release(crate::election::decide::ReleaseReason::Unhealthy),
            Action::Demote(crate::election::decide::DemoteReason::LeaseLost),
            Action::Acquire,
        ] {
            assert_eq!(step(&a, true, false, Some(&l)), Step::None, "{a:?}");
        }
        assert_eq!(step(&wait, true, false, Some(&lease(json!({})))), Step::None);
        assert_eq!(step(&wait, true, false, Some(&lease(json!({LEASE_ANNOTATION_SWITCHOVER_TO: " "})))), Step::None);
    }

    #[test]
    fn handing_over_names_the_target_keeps_the_term_and_clears_the_request() {
        let l = lease(json!({LEASE_ANNOTATION_SWITCHOVER_TO: "ldap-1", LEASE_ANNOTATION_SWITCHOVER_REFUSED: "old"}));
        let next = handed_over(&l, "ldap-1", Some("uid-1"), &v(&[CSN_A]));
        let o = crate::election::lease::observe(&next, Moment::ZERO);
        assert_eq!((o.holder.as_deref(), o.transitions), (Some("ldap-1"), 4));
        assert_eq!(next.metadata.resource_version.as_deref(), Some("7"), "CAS on what was read");
        assert_eq!(requested(&next), None);
        assert_eq!(refusal(&next), None);
        assert_eq!(crate::election::lease::published_csn(&next), v(&[CSN_A]));
        assert!(next.spec.unwrap().renew_time.is_some());
    }

    #[test]
    fn refusing_clears_the_request_and_records_the_reason() {
        let l = lease(json!({LEASE_ANNOTATION_SWITCHOVER_TO: "ldap-1"}));
        let next = refused(&l, "ldap-1", &Refusal::NotReady("ldap-1".into()));
        assert_eq!(requested(&next), None);
        assert_eq!(refusal(&next), Some("ldap-1: pod ldap-1 is not Ready"));
        assert_eq!(crate::election::lease::observe(&next, Moment::ZERO).holder.as_deref(), Some("ldap-0"));
        let again = requesting(&next, "ldap-1");
        assert_eq!((requested(&again), refusal(&again)), (Some("ldap-1"), None));
    }
}

//! The Lease at the edge: pure transformations of the Lease object for acquire, renew and
//! release, and a thin client that writes them with resourceVersion compare-and-swap
//! (a 409 is reported, never overwritten) and a timeout on every call.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::Api;

use crate::clock::Moment;
use crate::election::decide::Observed;
use ldap_elector_contract::{
    LEASE_ANNOTATION_ALLOW_DIVERGED, LEASE_ANNOTATION_CONTEXT_CSN, LEASE_ANNOTATION_DIVERGED,
    LEASE_ANNOTATION_HOLDER_UID,
};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("conflict: the Lease changed since it was read")]
    Conflict,
    #[error("the Lease {0} does not exist (the webhook's reconciler creates it)")]
    NotFound(String),
    #[error("forbidden: {0} (check the elector's Role)")]
    Forbidden(String),
    #[error("API call timed out after {0:?}")]
    Timeout(Duration),
    #[error("API error: {0}")]
    Api(#[source] kube::Error),
}

impl From<kube::Error> for LeaseError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 409 => LeaseError::Conflict,
            kube::Error::Api(s) if s.code == 403 => LeaseError::Forbidden(s.message),
            other => LeaseError::Api(other),
        }
    }
}

/// The decision core's view of a Lease, seen (changed) at `seen_change_at`.
pub fn observe(lease: &Lease, seen_change_at: Moment) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    Observed {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        holder_uid: annotation(lease, LEASE_ANNOTATION_HOLDER_UID).filter(|u| !u.is_empty()).map(String::from),
        transitions: spec.lease_transitions.unwrap_or(0),
        lease_duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        seen_change_at,
        ineligible: crate::divergence::policy::Ineligible::from_annotations(
            annotation(lease, LEASE_ANNOTATION_DIVERGED),
            annotation(lease, LEASE_ANNOTATION_ALLOW_DIVERGED),
        ),
    }
}

/// The observation of `seen` after `previous` (the Lease and its observation before). A
/// Lease deleted and recreated while held shows no holder, but the deposed holder may not have
/// fenced its slapd: it counts as still held by that holder, for its lease duration from now,
/// so nobody acquires before the holder has seen the change and stood down. The holder seen
/// before may be stale (another pod may have taken the Lease since): it is inherited without
/// its pod UID, so not even that pod's own elector takes it back early.
pub fn observe_after(previous: Option<(&Lease, &Observed)>, seen: &Lease, now: Moment) -> Observed {
    let mut next = observe(seen, now);
    if let Some((lease, before)) = previous {
        let recreated = lease.metadata.uid != seen.metadata.uid;
        if recreated && next.holder().is_none() && before.holder().is_some() {
            next.holder.clone_from(&before.holder);
            next.holder_uid = None;
            next.lease_duration = next.lease_duration.max(before.lease_duration);
        }
    }
    next
}

/// The value of the Lease annotation `name`.
pub fn annotation<'a>(lease: &'a Lease, name: &str) -> Option<&'a str> {
    lease.metadata.annotations.as_ref().and_then(|a| a.get(name)).map(String::as_str)
}

/// `lease` with the leader's divergence `edits` applied to its marks annotation (other
/// annotations and other pods' marks kept). Edits of another term, or an unreadable
/// annotation, leave the Lease unchanged (logged by the caller's audit task).
pub fn with_divergence_edits(mut lease: Lease, edits: &crate::divergence::policy::Edits, term: i32) -> Lease {
    if edits.term != term || edits.pods.is_empty() {
        return lease;
    }
    let current = annotation(&lease, LEASE_ANNOTATION_DIVERGED).map(String::from);
    if let Ok(next) = crate::divergence::policy::apply_edits(current.as_deref(), edits) {
        set_annotation(&mut lease, LEASE_ANNOTATION_DIVERGED, next);
    }
    lease
}

/// Sets (`Some`) or removes (`None`) one annotation.
pub fn set_annotation(lease: &mut Lease, name: &str, value: Option<String>) {
    let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
    match value {
        Some(v) => {
            annotations.insert(name.into(), v);
        }
        None => {
            annotations.remove(name);
        }
    }
}

/// The Lease after `identity` (the pod with `uid`, when known) takes it: a new term
/// (transitions + 1), above `term_floor`, the newest term this elector knows was used (a
/// recreated Lease restarts at 0 while the pods still carry the old terms).
pub fn acquired(lease: &Lease, identity: &str, uid: Option<&str>, lease_duration: Duration, term_floor: i32) -> Lease {
    let mut next = lease.clone();
    set_annotation(&mut next, LEASE_ANNOTATION_HOLDER_UID, uid.map(String::from));
    let spec = next.spec.get_or_insert_with(LeaseSpec::default);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(lease_duration.as_secs().min(i32::MAX as u64) as i32);
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).max(term_floor).saturating_add(1));
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    spec.preferred_holder = None;
    next
}

/// The Lease after its holder renews it.
pub fn renewed(lease: &Lease) -> Lease {
    let mut next = lease.clone();
    next.spec.get_or_insert_with(LeaseSpec::default).renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    next
}

/// The Lease after its holder gives it up: no holder, so any standby may take it at once.
pub fn released(lease: &Lease) -> Lease {
    let mut next = lease.clone();
    set_annotation(&mut next, LEASE_ANNOTATION_HOLDER_UID, None);
    let spec = next.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    next
}

/// `lease` carrying the holder's contextCSN values (space-separated) for catch-up gating;
/// unchanged when there are none to publish.
pub fn with_context_csn(mut lease: Lease, csn: &[String]) -> Lease {
    if !csn.is_empty() {
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(LEASE_ANNOTATION_CONTEXT_CSN.into(), csn.join(" "));
    }
    lease
}

/// The contextCSN values the holder last published.
pub fn published_csn(lease: &Lease) -> Vec<String> {
    ldap_elector_contract::csn::split_annotation(annotation(lease, LEASE_ANNOTATION_CONTEXT_CSN))
}

/// Whether `candidate` is a newer version of the object than `known` (resourceVersions are
/// etcd revisions in practice; when either does not parse, assume newer). A recreated Lease
/// (another uid) is always news, whatever its resourceVersion.
pub fn is_newer(candidate: &Lease, known: Option<&Lease>) -> bool {
    let rv = |l: &Lease| l.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
    if known.is_some_and(|k| k.metadata.uid != candidate.metadata.uid) {
        return true;
    }
    match (rv(candidate), known.and_then(rv)) {
        (Some(c), Some(k)) => c > k,
        _ => known.is_none_or(|k| k.metadata.resource_version != candidate.metadata.resource_version),
    }
}

/// Whether the election loop adopts `seen` as the base of its next CAS write. An answer of
/// the API server (a GET or a CAS write) is authoritative whenever it differs, even with a
/// lower resourceVersion: after etcd is restored from a backup every write against the old
/// one would fail with 409 and the next GET would be ignored, Acquire→409 for ever. A watch
/// event only when it is newer (old events may arrive late).
pub fn adopts(seen: &Lease, known: Option<&Lease>, answered: bool) -> bool {
    if answered {
        known.is_none_or(|k| {
            k.metadata.resource_version != seen.metadata.resource_version || k.metadata.uid != seen.metadata.uid
        })
    } else {
        is_newer(seen, known)
    }
}

/// Reads and writes one Lease; every call bounded by a timeout.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    name: String,
}

impl LeaseClient {
    pub fn new(api: Api<Lease>, name: &str) -> Self {
        LeaseClient { api, name: name.to_string() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn api(&self) -> &Api<Lease> {
        &self.api
    }

    pub async fn get(&self, timeout: Duration) -> Result<Lease, LeaseError> {
        match tokio::time::timeout(timeout, self.api.get_opt(&self.name)).await {
            Err(_) => Err(LeaseError::Timeout(timeout)),
            Ok(Ok(Some(lease))) => Ok(lease),
            Ok(Ok(None)) => Err(LeaseError::NotFound(self.name.clone())),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Creates the Lease when it is absent and the Role allows it (normally the
    /// reconciler pre-creates it and the elector may not create anything).
    pub async fn create_empty(&self, timeout: Duration) -> Result<Lease, LeaseError> {
        let lease = Lease {
            metadata: kube::api::ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec::default()),
        };
        match tokio::time::timeout(timeout, self.api.create(&PostParams::default(), &lease)).await {
            Err(_) => Err(LeaseError::Timeout(timeout)),
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Compare-and-swap: replaces the Lease only if its resourceVersion is still the one
    /// in `next.metadata` (409 → `LeaseError::Conflict`).
    pub async fn write(&self, next: &Lease, timeout: Duration) -> Result<Lease, LeaseError> {
        debug_assert!(next.metadata.resource_version.is_some(), "CAS needs a resourceVersion");
        match tokio::time::timeout(timeout, self.api.replace(&self.name, &PostParams::default(), next)).await {
            Err(_) => Err(LeaseError::Timeout(timeout)),
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_of(uid: &str, rv: &str, holder: Option<&str>) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ldap-leader", "uid": uid, "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 8, "leaseTransitions": 3},
        }))
        .unwrap()
    }

    /// Issue 15, item 8: a Lease deleted and recreated while held is empty, but the old
    /// holder may still be writable: nobody may take it before a lease duration has passed.
    #[test]
    fn a_recreated_empty_lease_counts_as_held_by_the_previous_holder() {
        let t0 = Moment::ZERO + Duration::from_secs(100);
        let held = lease_of("a", "50", Some("ldap-0"));
        let before = observe(&held, t0);
        let recreated = lease_of("b", "7", None);
        assert!(is_newer(&recreated, Some(&held)), "another uid is news despite a lower resourceVersion");
        let later = t0 + Duration::from_secs(1);
        let seen = observe_after(Some((&held, &before)), &recreated, later);
        assert_eq!(seen.holder(), Some("ldap-0"));
        assert_eq!(seen.seen_change_at, later);
        assert_eq!(seen.lease_duration, Duration::from_secs(8));
        // A release (same uid, no holder) is what it says.
        let released = lease_of("a", "51", None);
        assert_eq!(observe_after(Some((&held, &before)), &released, later).holder(), None);
        // So is a recreated Lease that nobody held before.
        let empty = observe(&released, t0);
        assert_eq!(observe_after(Some((&released, &empty)), &recreated, later).holder(), None);
    }

    /// A recreated Lease inherits the holder seen before, but that view can be stale: the
    /// deposed holder, cut off while another pod took the Lease, read the recreated one as
    /// still its own and retook it at once while the other was fencing (dual writers; found by
    /// the simulation in CI). The inherited holder is never "this pod's earlier elector".
    #[test]
    fn a_recreated_lease_is_not_retaken_at_once_by_the_holder_seen_before() {
        use crate::election::decide::{decide, Action, Me, Timing};
        let t0 = Moment::ZERO + Duration::from_secs(100);
        let mut held = lease_of("a", "50", Some("ldap-0"));
        set_annotation(&mut held, LEASE_ANNOTATION_HOLDER_UID, Some("uid-0".into()));
        let before = observe(&held, t0);
        let later = t0 + Duration::from_secs(1);
        let seen = observe_after(Some((&held, &before)), &lease_of("b", "7", None), later);
        let me = Me { identity: "ldap-0", uid: Some("uid-0"), eligible: true, stopping: false, leading: None };
        let free_at = later + seen.lease_duration;
        assert_eq!(decide(Some(&seen), &me, later, &Timing::default()), Action::Wait(Some(free_at)));
        assert_eq!(decide(Some(&seen), &me, free_at, &Timing::default()), Action::Acquire);
    }

    fn lease(holder: Option<&str>, transitions: i32, rv: &str) -> Lease {
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("ldap-leader".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_transitions: Some(transitions),
                lease_duration_seconds: Some(8),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn acquiring_starts_a_new_term_and_keeps_the_resource_version_for_cas() {
        let next = acquired(&lease(Some("ldap-0"), 4, "17"), "ldap-1", Some("u1"), Duration::from_secs(8), 0);
        assert_eq!(observe(&next, Moment::ZERO).holder_uid.as_deref(), Some("u1"));
        assert_eq!(observe(&released(&next), Moment::ZERO).holder_uid, None);
        let spec = next.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("ldap-1"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
        assert_eq!(next.metadata.resource_version.as_deref(), Some("17"));
        let empty = Lease { spec: None, ..lease(None, 0, "1") };
        assert_eq!(acquired(&empty, "a", None, Duration::from_secs(8), 0).spec.unwrap().lease_transitions, Some(1));
        // Above the floor: a recreated Lease (transitions 0) after term 9 gives term 10.
        assert_eq!(acquired(&empty, "a", None, Duration::from_secs(8), 9).spec.unwrap().lease_transitions, Some(10));
        let held = acquired(&lease(Some("b"), 12, "3"), "a", None, Duration::from_secs(8), 9);
        assert_eq!(held.spec.unwrap().lease_transitions, Some(13), "a floor below the Lease's term changes nothing");
    }

    #[test]
    fn renewing_keeps_holder_and_term() {
        let next = renewed(&lease(Some("ldap-1"), 5, "20"));
        let spec = next.spec.unwrap();
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some("ldap-1"), Some(5)));
        assert!(spec.renew_time.is_some());
    }

    #[test]
    fn releasing_clears_the_holder_but_keeps_the_term() {
        let next = released(&lease(Some("ldap-1"), 5, "20"));
        let o = observe(&next, Moment::ZERO);
        assert_eq!(o.holder, None);
        assert_eq!(o.transitions, 5);
    }

    #[test]
    fn observe_treats_empty_holder_as_none() {
        let o = observe(&lease(Some(""), 2, "3"), Moment::ZERO);
        assert_eq!(o.holder, None);
        assert_eq!(o.lease_duration, Duration::from_secs(8));
    }

    #[test]
    fn context_csn_round_trips_through_the_annotation() {
        let csn = vec!["20261125100000.000000Z#000000#001#000000".to_string(), "x#0#002#0".to_string()];
        let l = with_context_csn(lease(Some("a"), 1, "1"), &csn);
        assert_eq!(published_csn(&l), csn);
        assert!(published_csn(&with_context_csn(lease(None, 0, "1"), &[])).is_empty());
    }

    #[test]
    fn observe_reads_the_divergence_marks_and_edits_keep_other_annotations() {
        use crate::divergence::policy::{Edits, Outcome};
        let mut l = with_context_csn(lease(Some("ldap-0"), 4, "9"), &["x#0#001#0".to_string()]);
        let mut e = Edits::for_term(4);
        e.record("ldap-0", "ldap-1", &Outcome::Diverged { summary: "s".into() }, "t");
        assert_eq!(with_divergence_edits(l.clone(), &e, 5), l, "edits of another term are not applied");
        l = with_divergence_edits(l, &e, 4);
        assert_eq!(published_csn(&l), ["x#0#001#0"]);
        let o = observe(&l, Moment::ZERO);
        assert!(o.ineligible.blocks("ldap-1") && !o.ineligible.blocks("ldap-0"));
        let mut e = Edits::for_term(4);
        e.record("ldap-0", "ldap-1", &Outcome::InSync, "t");
        let l = with_divergence_edits(l, &e, 4);
        assert!(!l.metadata.annotations.as_ref().unwrap().contains_key(LEASE_ANNOTATION_DIVERGED));
        assert!(!observe(&l, Moment::ZERO).ineligible.blocks("ldap-1"));
    }

    /// Issue 15, item 8: a resourceVersion that went backwards (etcd restore) is taken from
    /// the API server's answers, so the next CAS write is based on it; the watch's old events
    /// are not.
    #[test]
    fn an_answer_with_a_lower_resource_version_is_adopted_a_watch_event_is_not() {
        let before = lease_of("a", "50", Some("ldap-0"));
        let restored = lease_of("a", "7", Some("ldap-0"));
        assert!(adopts(&restored, Some(&before), true));
        assert!(!adopts(&restored, Some(&before), false));
        assert!(!adopts(&before, Some(&before), true), "the same version is not news");
        assert!(adopts(&lease_of("a", "51", None), Some(&before), false));
    }

    #[test]
    fn newer_compares_revisions_numerically() {
        assert!(is_newer(&lease(None, 0, "10"), Some(&lease(None, 0, "9"))));
        assert!(!is_newer(&lease(None, 0, "9"), Some(&lease(None, 0, "10"))));
        assert!(!is_newer(&lease(None, 0, "10"), Some(&lease(None, 0, "10"))));
        assert!(is_newer(&lease(None, 0, "x"), Some(&lease(None, 0, "y"))));
        assert!(is_newer(&lease(None, 0, "1"), None));
    }
}

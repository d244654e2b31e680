//! The election decision: a pure function of (the Lease as last observed, me, now, timing)
//! to the next action. No I/O, no clock reads: the runtime feeds it and carries it out.
//!
//! Safety argument (DESIGN.md invariant 2). A leader counts its renew deadline from the
//! moment it *sent* its last successful renew; a follower counts the lease duration from
//! the moment it *saw* that renew, which is never earlier than the send. So as long as
//! `renew_deadline·(1+ρ) + fence_budget ≤ lease_duration·(1−ρ)` (ρ = the clock-rate drift
//! bound), the leader has stood down before any follower may take over. Every Lease write is
//! a compare-and-swap on resourceVersion, so a stale observation can only cost a 409.

use std::time::Duration;

use ldap_elector_contract::csn;

use crate::clock::Moment;

/// The bound on relative clock-rate drift between two nodes we design for (1 %). NTP keeps
/// real machines within 0.05 %; the margin covers VMs with poor timekeeping.
pub const MAX_CLOCK_DRIFT: f64 = 0.01;
/// Time we reserve for a leader to fence itself (slapd read-only, label) once it gives up.
pub const FENCE_BUDGET: Duration = Duration::from_secs(1);

/// Election timings. Defaults: 8 s lease, renew every 2 s, give up after 5 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long followers wait after the last renew they saw before taking over.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// How long after the start of its last successful renew the leader stands down.
    pub renew_deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(8),
            renew_period: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TimingError {
    #[error("lease duration must be whole seconds ≥ 1 s (the Lease stores whole seconds), got {0:?}")]
    LeaseDuration(Duration),
    #[error("renew period {period:?} must be > 0 and at most half the renew deadline {deadline:?}, so a failed renew is retried before the deadline")]
    RenewPeriod { period: Duration, deadline: Duration },
    #[error(
        "renew deadline {deadline:?} is unsafe for lease duration {lease:?}: a leader must stand down \
         ({fence:?} fencing budget, {drift}% clock drift) before followers may take over; \
         use a renew deadline ≤ {max:?} or a longer lease"
    )]
    RenewDeadline { deadline: Duration, lease: Duration, fence: Duration, drift: f64, max: Duration },
}

impl Timing {
    /// Rejects combinations under which two leaders could overlap, with a message that
    /// says which bound failed and what would be safe.
    pub fn validate(&self) -> Result<(), TimingError> {
        let lease = self.lease_duration;
        if lease < Duration::from_secs(1) || lease.subsec_nanos() != 0 {
            return Err(TimingError::LeaseDuration(lease));
        }
        if self.renew_period.is_zero() || self.renew_period * 2 > self.renew_deadline {
            return Err(TimingError::RenewPeriod { period: self.renew_period, deadline: self.renew_deadline });
        }
        let max = self.max_safe_renew_deadline();
        if self.renew_deadline > max {
            return Err(TimingError::RenewDeadline {
                deadline: self.renew_deadline,
                lease,
                fence: FENCE_BUDGET,
                drift: MAX_CLOCK_DRIFT * 100.0,
                max,
            });
        }
        Ok(())
    }

    /// The longest renew deadline that keeps invariant 2 for this lease duration.
    pub fn max_safe_renew_deadline(&self) -> Duration {
        // The leader's clock may run slow and the follower's fast, by ρ each: the leader
        // fences within (D + F)·(1+ρ) real time, the follower waits at least L·(1−ρ).
        let follower_wait = self.lease_duration.mul_f64(1.0 - MAX_CLOCK_DRIFT);
        follower_wait.div_f64(1.0 + MAX_CLOCK_DRIFT).saturating_sub(FENCE_BUDGET)
    }
}

/// The Lease as this candidate last observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `spec.holderIdentity`; `None` (or empty) when released.
    pub holder: Option<String>,
    /// The holder pod's UID as it recorded on acquiring (`ldap-elector.dev/holder-uid`): a
    /// pod recreated under the same name (StatefulSet) is another pod, whose predecessor
    /// may still be writable.
    pub holder_uid: Option<String>,
    /// `spec.leaseTransitions`: the fencing term.
    pub transitions: i32,
    /// `spec.leaseDurationSeconds` as written by the holder.
    pub lease_duration: Duration,
    /// When this candidate saw the Lease's resourceVersion change, on its own clock.
    pub seen_change_at: Moment,
    /// Pods the leader's audit found diverged and no operator allowed: they never acquire
    /// (consistency over availability; see docs/divergence.md for the override).
    pub ineligible: crate::divergence::policy::Ineligible,
}

impl Observed {
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// This candidate's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Me<'a> {
    pub identity: &'a str,
    /// This pod's UID (`None`: unknown; a Lease held under this name is then never taken
    /// for this pod's own).
    pub uid: Option<&'a str>,
    /// Healthy and caught up: may become or stay leader.
    pub eligible: bool,
    /// Shutting down (SIGTERM or pod deletion): hand over.
    pub stopping: bool,
    /// `Some` while this candidate believes it leads.
    pub leading: Option<Leading>,
}

/// What a leader remembers of its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leading {
    pub term: i32,
    /// When the last successful acquire or renew was *sent* (not answered).
    pub renewed_at: Moment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take the Lease: CAS-update holder = me, transitions + 1.
    Acquire,
    /// Extend the Lease: CAS-update renewTime.
    Renew,
    /// Stop leading now, without touching the Lease (it is lost or unreachable).
    Demote(DemoteReason),
    /// Stop leading, then clear the holder so a standby takes over at once.
    Release(ReleaseReason),
    /// Nothing to do until `Some(t)`, or until something changes (`None`).
    Wait(Option<Moment>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoteReason {
    /// No successful renew within the renew deadline.
    RenewDeadlinePassed,
    /// The Lease shows another holder, or a newer term.
    LeaseLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    Stopping,
    Unhealthy,
}

/// The next action for `me`, given the Lease as last observed (`None`: not seen yet).
pub fn decide(lease: Option<&Observed>, me: &Me<'_>, now: Moment, timing: &Timing) -> Action {
    match me.leading {
        Some(leading) => decide_as_leader(lease, me, leading, now, timing),
        None => decide_as_follower(lease, me, now, timing),
    }
}

fn decide_as_leader(lease: Option<&Observed>, me: &Me<'_>, leading: Leading, now: Moment, timing: &Timing) -> Action {
    // First: has the deadline passed (e.g. after SIGSTOP or suspend)? Nothing else matters.
    let deadline = leading.renewed_at + timing.renew_deadline;
    if now >= deadline {
        return Action::Demote(DemoteReason::RenewDeadlinePassed);
    }
    let still_mine = lease.is_some_and(|l| l.holder() == Some(me.identity) && l.transitions == leading.term);
    if !still_mine {
        return Action::Demote(DemoteReason::LeaseLost);
    }
    if me.stopping {
        return Action::Release(ReleaseReason::Stopping);
    }
    if !me.eligible {
        return Action::Release(ReleaseReason::Unhealthy);
    }
    let next_renew = leading.renewed_at + timing.renew_period;
    if now >= next_renew {
        Action::Renew
    } else {
        Action::Wait(Some(next_renew))
    }
}

fn decide_as_follower(lease: Option<&Observed>, me: &Me<'_>, now: Moment, timing: &Timing) -> Action {
    if me.stopping || !me.eligible {
        return Action::Wait(None);
    }
    let Some(lease) = lease else {
        return Action::Wait(None); // the runtime reads the Lease first
    };
    if lease.ineligible.blocks(me.identity) {
        return Action::Wait(None); // marked diverged: only a reseed or an operator lifts it
    }
    match lease.holder() {
        // Never held (no term yet): a new Lease, or one deleted and recreated while its holder
        // may still be writable (it stands down by its renew deadline, within a lease
        // duration): wait one lease duration from when it was seen so.
        None if lease.transitions == 0 => {
            let free_at = lease.seen_change_at + timing.lease_duration;
            if now >= free_at {
                Action::Acquire
            } else {
                Action::Wait(Some(free_at))
            }
        }
        // Released (after a confirmed fence), or held by an earlier elector of this very pod
        // (same UID): take it. A replacement pod under the same name waits for expiry like
        // anyone else.
        None => Action::Acquire,
        Some(holder) if holder == me.identity && me.uid.is_some() && lease.holder_uid.as_deref() == me.uid => {
            Action::Acquire
        }
        Some(_) => {
            let expires = lease.seen_change_at + lease.lease_duration;
            if now >= expires {
                Action::Acquire
            } else {
                Action::Wait(Some(expires))
            }
        }
    }
}

/// Since when the Lease has been free on this candidate's clock: released (no holder) since
/// it was seen so, or expired since `seen_change_at + lease_duration`. `None` while held.
pub fn free_since(lease: &Observed, now: Moment) -> Option<Moment> {
    match lease.holder() {
        None => Some(lease.seen_change_at),
        Some(_) => Some(lease.seen_change_at + lease.lease_duration).filter(|t| *t <= now),
    }
}

/// Whether a healthy standby may take over: caught up with the leader's published
/// contextCSN, or the leader has been gone for longer than `grace` (the operator's
/// availability-over-consistency allowance; `None` = never promote a standby that is behind).
pub fn may_promote(
    mine: &[String],
    leaders: &[String],
    lease: Option<&Observed>,
    now: Moment,
    grace: Option<Duration>,
) -> bool {
    if csn::caught_up(mine, leaders) {
        return true;
    }
    match (grace, lease.and_then(|l| free_since(l, now))) {
        (Some(grace), Some(since)) => now.since(since) >= grace,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn at(secs: f64) -> Moment {
        Moment::ZERO + Duration::from_secs_f64(secs)
    }

    fn lease(holder: Option<&str>, transitions: i32, seen: f64) -> Observed {
        Observed {
            holder: holder.map(String::from),
            holder_uid: holder.map(|h| format!("uid-{h}")),
            transitions,
            lease_duration: 8 * S,
            seen_change_at: at(seen),
            ineligible: Default::default(),
        }
    }

    fn follower(identity: &'static str) -> Me<'static> {
        let uid = match identity {
            "a" => "uid-a",
            "b" => "uid-b",
            _ => "uid-other",
        };
        Me { identity, uid: Some(uid), eligible: true, stopping: false, leading: None }
    }

    fn leader(identity: &'static str, term: i32, renewed: f64) -> Me<'static> {
        Me { leading: Some(Leading { term, renewed_at: at(renewed) }), ..follower(identity) }
    }

    fn csn(time: &str, sid: u8) -> String {
        format!("{time}.000000Z#000000#{sid:03x}#000000")
    }

    #[test]
    fn a_published_csn_that_does_not_parse_never_lets_a_standby_promote() {
        // The old text comparison skipped a leader CSN without a server ID: "caught up".
        let mine = vec![csn("20991231235959", 1)];
        for leader in ["20261125100000.000000Z", "20261125100000.000000Z#000000#001", "garbage"] {
            assert!(!may_promote(&mine, &[leader.to_string()], None, at(0.0), None), "{leader}");
        }
    }

    #[test]
    fn default_timing_is_valid() {
        assert_eq!(Timing::default().validate(), Ok(()));
    }

    #[test]
    fn timing_rejects_deadline_too_close_to_lease() {
        let t = Timing { renew_deadline: 7 * S, ..Timing::default() };
        let err = t.validate().unwrap_err();
        assert!(matches!(err, TimingError::RenewDeadline { .. }));
        assert!(err.to_string().contains("renew deadline"), "{err}");
    }

    #[test]
    fn timing_rejects_renew_period_without_retry() {
        let t = Timing { renew_period: 3 * S, ..Timing::default() };
        assert!(matches!(t.validate(), Err(TimingError::RenewPeriod { .. })));
        let t = Timing { renew_period: Duration::ZERO, ..Timing::default() };
        assert!(matches!(t.validate(), Err(TimingError::RenewPeriod { .. })));
    }

    #[test]
    fn timing_rejects_fractional_or_tiny_lease() {
        let t = Timing { lease_duration: Duration::from_millis(8500), ..Timing::default() };
        assert!(matches!(t.validate(), Err(TimingError::LeaseDuration(_))));
        let t = Timing { lease_duration: Duration::ZERO, ..Timing::default() };
        assert!(matches!(t.validate(), Err(TimingError::LeaseDuration(_))));
    }

    #[test]
    fn max_safe_deadline_leaves_fence_budget() {
        let t = Timing::default();
        let max = t.max_safe_renew_deadline();
        assert!(max > 5 * S && max < 7 * S, "{max:?}");
        assert!((max + FENCE_BUDGET).mul_f64(1.0 + MAX_CLOCK_DRIFT) <= t.lease_duration.mul_f64(1.0 - MAX_CLOCK_DRIFT));
    }

    #[test]
    fn follower_waits_for_first_observation() {
        assert_eq!(decide(None, &follower("a"), at(0.0), &Timing::default()), Action::Wait(None));
    }

    #[test]
    fn follower_acquires_released_lease_at_once() {
        let l = lease(None, 3, 10.0);
        assert_eq!(decide(Some(&l), &follower("a"), at(10.0), &Timing::default()), Action::Acquire);
        let l = lease(Some(""), 3, 10.0);
        assert_eq!(decide(Some(&l), &follower("a"), at(10.0), &Timing::default()), Action::Acquire);
    }

    #[test]
    fn follower_waits_until_expiry_seen_on_its_own_clock() {
        let l = lease(Some("b"), 3, 10.0);
        let t = Timing::default();
        assert_eq!(decide(Some(&l), &follower("a"), at(12.0), &t), Action::Wait(Some(at(18.0))));
        assert_eq!(decide(Some(&l), &follower("a"), at(17.999), &t), Action::Wait(Some(at(18.0))));
        assert_eq!(decide(Some(&l), &follower("a"), at(18.0), &t), Action::Acquire);
    }

    #[test]
    fn follower_uses_the_lease_duration_the_holder_wrote() {
        let mut l = lease(Some("b"), 3, 10.0);
        l.lease_duration = 15 * S;
        assert_eq!(decide(Some(&l), &follower("a"), at(19.0), &Timing::default()), Action::Wait(Some(at(25.0))));
    }

    #[test]
    fn follower_retakes_lease_held_by_its_earlier_incarnation() {
        let l = lease(Some("a"), 3, 10.0);
        assert_eq!(decide(Some(&l), &follower("a"), at(10.0), &Timing::default()), Action::Acquire);
    }

    /// Issue 15, item 8: a StatefulSet recreates `a` as a new pod (another UID) while the old
    /// `a` may still be writable; the new one must wait for the Lease to expire.
    #[test]
    fn a_replacement_pod_with_the_same_name_waits_for_expiry() {
        let t = Timing::default();
        let l = lease(Some("a"), 3, 10.0);
        let replacement = Me { uid: Some("uid-a-2"), ..follower("a") };
        assert_eq!(decide(Some(&l), &replacement, at(10.0), &t), Action::Wait(Some(at(18.0))));
        assert_eq!(decide(Some(&l), &replacement, at(18.0), &t), Action::Acquire);
        // Neither an unknown own UID nor a Lease without one (an older elector) proves it ours.
        let unknown = Me { uid: None, ..follower("a") };
        assert_eq!(decide(Some(&l), &unknown, at(10.0), &t), Action::Wait(Some(at(18.0))));
        let legacy = Observed { holder_uid: None, ..l };
        assert_eq!(decide(Some(&legacy), &follower("a"), at(10.0), &t), Action::Wait(Some(at(18.0))));
    }

    #[test]
    fn a_lease_never_held_is_taken_only_after_one_lease_duration() {
        // A Lease with no holder and no transition is new, or was deleted and recreated: the
        // holder of the deleted one may still be writable until its renew deadline passes.
        let t = Timing::default();
        let fresh = lease(None, 0, 10.0);
        assert_eq!(decide(Some(&fresh), &follower("a"), at(10.0), &t), Action::Wait(Some(at(18.0))));
        assert_eq!(decide(Some(&fresh), &follower("a"), at(18.0), &t), Action::Acquire);
        // Released by a holder (a term was held, the fence confirmed first): free at once.
        assert_eq!(decide(Some(&lease(None, 3, 10.0)), &follower("a"), at(10.0), &t), Action::Acquire);
    }

    #[test]
    fn ineligible_follower_never_acquires() {
        let me = Me { eligible: false, ..follower("a") };
        for l in [lease(None, 1, 0.0), lease(Some("b"), 1, 0.0), lease(Some("a"), 1, 0.0)] {
            assert_eq!(decide(Some(&l), &me, at(100.0), &Timing::default()), Action::Wait(None));
        }
    }

    #[test]
    fn a_follower_marked_diverged_never_acquires_even_after_expiry() {
        use crate::divergence::policy::Ineligible;
        let t = Timing::default();
        let marked = |mut l: Observed| {
            l.ineligible = Ineligible::from_annotations(Some(r#"{"a":{"since":"t","summary":"s"}}"#), None);
            l
        };
        for l in [lease(None, 1, 0.0), lease(Some("b"), 1, 0.0), lease(Some("a"), 1, 0.0)] {
            assert_eq!(decide(Some(&marked(l.clone())), &follower("a"), at(1000.0), &t), Action::Wait(None));
            // Another, unmarked follower is not affected.
            assert_eq!(decide(Some(&marked(l)), &follower("c"), at(1000.0), &t), Action::Acquire);
        }
        // The operator's override lets it take over again.
        let mut l = lease(Some("b"), 1, 0.0);
        l.ineligible = Ineligible::from_annotations(Some(r#"{"a":{"since":"t","summary":"s"}}"#), Some("a"));
        assert_eq!(decide(Some(&l), &follower("a"), at(1000.0), &t), Action::Acquire);
    }

    proptest::proptest! {
        /// Whatever the Lease shows and however late it is, a marked follower that no
        /// operator allowed never acquires; allowed, it behaves as if unmarked.
        #[test]
        fn a_marked_follower_never_acquires(
            holder in proptest::option::of(proptest::sample::select(vec!["a", "b", ""])),
            seen in 0.0f64..100.0,
            later in 0.0f64..1000.0,
            allowed in proptest::bool::ANY,
        ) {
            use crate::divergence::policy::Ineligible;
            let mut l = lease(holder, 1, seen);
            let allow = if allowed { Some("a") } else { None };
            l.ineligible = Ineligible::from_annotations(Some(r#"{"a":{"since":"t","summary":"s"}}"#), allow);
            let action = decide(Some(&l), &follower("a"), at(seen + later), &Timing::default());
            if allowed {
                let unmarked = lease(holder, 1, seen);
                proptest::prop_assert_eq!(action, decide(Some(&unmarked), &follower("a"), at(seen + later), &Timing::default()));
            } else {
                proptest::prop_assert_eq!(action, Action::Wait(None));
            }
        }
    }

    #[test]
    fn stopping_follower_never_acquires() {
        let me = Me { stopping: true, ..follower("a") };
        assert_eq!(decide(Some(&lease(None, 1, 0.0)), &me, at(100.0), &Timing::default()), Action::Wait(None));
    }

    #[test]
    fn leader_waits_then_renews_on_period() {
        let l = lease(Some("a"), 4, 10.0);
        let t = Timing::default();
        assert_eq!(decide(Some(&l), &leader("a", 4, 10.0), at(11.0), &t), Action::Wait(Some(at(12.0))));
        assert_eq!(decide(Some(&l), &leader("a", 4, 10.0), at(12.0), &t), Action::Renew);
        // A failed renew is retried until the deadline.
        assert_eq!(decide(Some(&l), &leader("a", 4, 10.0), at(14.9), &t), Action::Renew);
    }

    #[test]
    fn leader_that_cannot_renew_demotes_before_expiry() {
        let l = lease(Some("a"), 4, 10.0);
        let t = Timing::default();
        assert_eq!(
            decide(Some(&l), &leader("a", 4, 10.0), at(15.0), &t),
            Action::Demote(DemoteReason::RenewDeadlinePassed)
        );
        // Even when stopping or unhealthy: the deadline comes first, the Lease is not touched.
        let me = Me { stopping: true, eligible: false, ..leader("a", 4, 10.0) };
        assert_eq!(decide(Some(&l), &me, at(60.0), &t), Action::Demote(DemoteReason::RenewDeadlinePassed));
    }

    #[test]
    fn leader_demotes_when_lease_shows_another_holder_or_term() {
        let t = Timing::default();
        let me = leader("a", 4, 10.0);
        assert_eq!(
            decide(Some(&lease(Some("b"), 5, 11.0)), &me, at(11.0), &t),
            Action::Demote(DemoteReason::LeaseLost)
        );
        assert_eq!(
            decide(Some(&lease(Some("a"), 5, 11.0)), &me, at(11.0), &t),
            Action::Demote(DemoteReason::LeaseLost)
        );
        assert_eq!(decide(Some(&lease(None, 4, 11.0)), &me, at(11.0), &t), Action::Demote(DemoteReason::LeaseLost));
        assert_eq!(decide(None, &me, at(11.0), &t), Action::Demote(DemoteReason::LeaseLost));
    }

    #[test]
    fn stopping_leader_releases() {
        let me = Me { stopping: true, ..leader("a", 4, 10.0) };
        assert_eq!(
            decide(Some(&lease(Some("a"), 4, 10.0)), &me, at(11.0), &Timing::default()),
            Action::Release(ReleaseReason::Stopping)
        );
    }

    #[test]
    fn unhealthy_leader_releases() {
        let me = Me { eligible: false, ..leader("a", 4, 10.0) };
        assert_eq!(
            decide(Some(&lease(Some("a"), 4, 10.0)), &me, at(11.0), &Timing::default()),
            Action::Release(ReleaseReason::Unhealthy)
        );
    }
    #[test]
    fn a_standby_behind_waits_unless_the_leader_is_gone_longer_than_the_grace() {
        let behind = vec![csn("20261125100000", 1)];
        let leader = vec![csn("20261125100500", 1)];
        let held = lease(Some("b"), 3, 10.0);
        let grace = Some(30 * S);
        assert!(!may_promote(&behind, &leader, Some(&held), at(12.0), grace), "held");
        assert!(!may_promote(&behind, &leader, Some(&held), at(40.0), grace), "expired at 18 s, only 22 s ago");
        assert!(may_promote(&behind, &leader, Some(&held), at(48.0), grace), "expired 30 s ago");
        assert!(!may_promote(&behind, &leader, Some(&held), at(1000.0), None), "grace off: never");
        let released = lease(None, 3, 10.0);
        assert!(may_promote(&behind, &leader, Some(&released), at(40.0), grace));
        assert!(may_promote(&leader, &leader, Some(&held), at(12.0), None), "caught up: at once");
    }
}

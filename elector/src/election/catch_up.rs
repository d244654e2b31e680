//! Catch-up gating after an expiry (pure; issue 15, item 4). A leader that stops renewing
//! keeps acknowledging writes until it is fenced, up to its renew deadline plus the fence
//! budget after its last renew, but the contextCSN in the Lease is the one of that renew.
//! So before a standby promotes after the Lease EXPIRED, it asks the old leader's slapd for
//! its CURRENT contextCSN (over the `--audit-peers` URLs) and waits until it holds that much
//! too. When that slapd does not answer within the verify bound, or no peer URLs are
//! configured, it promotes as before (caught up with the published contextCSN, or after the
//! grace) and the writes it could not verify are recorded as an uncovered window, like
//! Patroni's failover that judges a replica against the last WAL position in its DCS.
//!
//! A release or hand-over needs none of this: the old leader fenced itself first and then
//! published its final contextCSN.

use std::time::Duration;

use ldap_elector_contract::csn;

use crate::clock::Moment;
use crate::election::decide::{free_since, may_promote, Me, Observed, Timing, FENCE_BUDGET, MAX_CLOCK_DRIFT};

/// What is known of the old leader's slapd now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldLeader {
    /// No peer URLs configured (`--audit-peers`): the published contextCSN is all there is.
    NotConfigured,
    /// Not read yet, or the last read failed.
    NoAnswer,
    /// Its current contextCSN values.
    Current(Vec<String>),
}

/// Why a promotion could not verify that it holds every write the old leader acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UncoveredReason {
    /// No peer URLs configured: judged against the published contextCSN only.
    NotConfigured,
    /// The old leader's slapd did not answer within the verify bound.
    Unreachable,
    /// It answered, but this slapd was still behind it when the grace ran out.
    Behind,
}

impl UncoveredReason {
    /// The metric label and annotation value.
    pub fn label(self) -> &'static str {
        match self {
            UncoveredReason::NotConfigured => "not_configured",
            UncoveredReason::Unreachable => "unreachable",
            UncoveredReason::Behind => "behind",
        }
    }
}

/// A promotion that may lack acknowledged writes of the old leader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Uncovered {
    pub reason: UncoveredReason,
    /// How many seconds of the old leader's writes this slapd may lack (an upper bound; +Inf
    /// when the contextCSNs cannot be compared).
    pub seconds: f64,
}

/// The verdict for a healthy follower.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gate {
    /// Holds everything it knows of: may take over.
    Promote,
    /// May take over, but the window is recorded (metric, Event, Lease annotation).
    PromoteUncovered(Uncovered),
    /// Not yet.
    Wait,
}

impl Gate {
    pub fn may_promote(&self) -> bool {
        !matches!(self, Gate::Wait)
    }
}

/// The operator's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `--catch-up-grace`: promote although behind once free this long (`None`: never).
    pub grace: Option<Duration>,
    /// `--catch-up-verify`: how long after the expiry to wait for the old leader's answer.
    pub verify: Duration,
    pub timing: Timing,
}

/// The grace that applies to this follower: none while it has never held what the leader
/// published since its elector started (a pod still seeding its empty volume from its peer,
/// `Readiness::seeded`). Promoted, such a pod would lead with a fraction of the directory, and
/// when the old leader's server returns, slapd's refresh from the new leader deletes every
/// entry the new leader lacks on the returning server too (measured on slapd 2.5: the full copy
/// of 20,000 entries lost 10,000 to a seeding server promoted after 10 writes). Like Patroni,
/// which never fails over to a replica beyond `maximum_lag_on_failover`.
pub fn grace_for(grace: Option<Duration>, seeded: bool) -> Option<Duration> {
    grace.filter(|_| seeded)
}

/// The holder whose Lease expired (not released, not handed to `me`), if the Lease is free
/// because of that: its slapd may hold writes acknowledged after its last renew.
pub fn expired_holder<'a>(lease: Option<&'a Observed>, me: &Me<'_>, now: Moment) -> Option<&'a str> {
    let lease = lease?;
    let holder = lease.holder()?;
    let ours = holder == me.identity && me.uid.is_some() && lease.holder_uid.as_deref() == me.uid;
    (!ours && free_since(lease, now).is_some()).then_some(holder)
}

/// The `previous` of an uncovered promotion whose previous leader is unknown.
pub const UNKNOWN_PREVIOUS: &str = "unknown";

/// Whose slapd may hold acknowledged writes the Lease does not show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous<'a> {
    /// The holder whose Lease expired ([`expired_holder`]).
    Expired(&'a str),
    /// A free Lease behind the newest term this elector knows was used (`term_floor`: a
    /// Lease seen before it was recreated, a pod's term annotation): recreated (or etcd
    /// restored) since that term. Who led last, and what it acknowledged, is unknown; every
    /// peer is asked.
    Unknown,
}

impl Previous<'_> {
    /// As recorded with an uncovered promotion.
    pub fn name(&self) -> &str {
        match self {
            Previous::Expired(holder) => holder,
            Previous::Unknown => UNKNOWN_PREVIOUS,
        }
    }
}

/// The previous leader a follower must verify before it takes over, if any.
///
/// A free Lease behind a known term comes first: the holder it shows (inherited from a Lease
/// seen before the recreation) may not be the last one.
pub fn previous<'a>(lease: Option<&'a Observed>, me: &Me<'_>, term_floor: i32, now: Moment) -> Option<Previous<'a>> {
    let behind = lease.is_some_and(|l| l.transitions < term_floor && free_since(l, now).is_some());
    if behind {
        return Some(Previous::Unknown);
    }
    expired_holder(lease, me, now).map(Previous::Expired)
}

/// Whether a healthy follower may take over, given its contextCSN `mine`, the one the leader
/// `published`, the `previous` leader to verify ([`previous`]) and what its slapd says now.
pub fn gate(
    mine: &[String],
    published: &[String],
    lease: Option<&Observed>,
    previous: Option<Previous<'_>>,
    old: &OldLeader,
    now: Moment,
    policy: &Policy,
) -> Gate {
    let promote = || may_promote(mine, published, lease, now, policy.grace);
    let Some(previous) = previous else {
        return if promote() { Gate::Promote } else { Gate::Wait };
    };
    let expired_at = lease.and_then(|l| free_since(l, now)).unwrap_or(now);
    let graced = policy.grace.is_some_and(|g| now.since(expired_at) >= g);
    // Writes acknowledged after the last renew the follower saw, until the old leader fenced
    // (unbounded when nobody knows who led).
    let unverified = || match previous {
        Previous::Unknown => f64::INFINITY,
        Previous::Expired(_) => {
            let after_renew = policy.timing.renew_deadline.mul_f64(1.0 + MAX_CLOCK_DRIFT) + FENCE_BUDGET;
            let behind = if csn::caught_up(mine, published) { Some(Duration::ZERO) } else { csn::lag(mine, published) };
            behind.map_or(f64::INFINITY, |b| (b + after_renew).as_secs_f64())
        }
    };
    match old {
        OldLeader::Current(current) => {
            if csn::caught_up(mine, current) && csn::caught_up(mine, published) {
                Gate::Promote
            } else if graced {
                let all: Vec<String> = current.iter().chain(published).cloned().collect();
                let seconds = csn::lag(mine, &all).map_or(f64::INFINITY, |l| l.as_secs_f64());
                Gate::PromoteUncovered(Uncovered { reason: UncoveredReason::Behind, seconds })
            } else {
                Gate::Wait
            }
        }
        OldLeader::NotConfigured if promote() => {
            Gate::PromoteUncovered(Uncovered { reason: UncoveredReason::NotConfigured, seconds: unverified() })
        }
        OldLeader::NoAnswer if now.since(expired_at) >= policy.verify && promote() => {
            Gate::PromoteUncovered(Uncovered { reason: UncoveredReason::Unreachable, seconds: unverified() })
        }
        _ => Gate::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_still_seeding_is_never_promoted_by_the_grace() {
        let policy = |seeded| Policy { grace: grace_for(Some(30 * S), seeded), ..policy() };
        let base = vec![csn("20260101000000", 1)];
        let published = vec![csn("20261206120000", 1), csn("20261206120010", 2)];
        let l = lease(Some("ldap-0"));
        let previous = Some(Previous::Expired("ldap-0"));
        for old in [OldLeader::NoAnswer, OldLeader::NotConfigured, OldLeader::Current(published.clone())] {
            for secs in [60.0, 600.0, 6000.0] {
                let seeding = gate(&base, &published, Some(&l), previous, &old, at(secs), &policy(false));
                assert_eq!(seeding, Gate::Wait, "{old:?} at {secs} s");
            }
            let seeded = gate(&base, &published, Some(&l), previous, &old, at(600.0), &policy(true));
            assert!(seeded.may_promote(), "{old:?}: a follower that held a complete copy once keeps the grace");
        }
        // Without an expiry to verify: the same.
        assert_eq!(
            gate(&base, &published, Some(&l), None, &OldLeader::NoAnswer, at(600.0), &policy(false)),
            Gate::Wait
        );
    }

    const S: Duration = Duration::from_secs(1);

    fn at(secs: f64) -> Moment {
        Moment::ZERO + Duration::from_secs_f64(secs)
    }

    fn csn(time: &str, sid: u8) -> String {
        format!("{time}.000000Z#000000#{sid:03x}#000000")
    }

    /// Held by `holder` (uid `uid-<holder>`), renewed (seen) at 10 s: expires at 18 s.
    fn lease(holder: Option<&str>) -> Observed {
        Observed {
            holder: holder.map(String::from),
            holder_uid: holder.map(|h| format!("uid-{h}")),
            transitions: 3,
            lease_duration: 8 * S,
            seen_change_at: at(10.0),
            ineligible: Default::default(),
        }
    }

    fn me() -> Me<'static> {
        Me { identity: "b", uid: Some("uid-b"), eligible: true, stopping: false, leading: None }
    }

    /// The gate for `me` (no term floor) with the previous leader `previous` finds.
    fn verdict(mine: &[String], published: &[String], l: &Observed, old: &OldLeader, now: Moment, p: &Policy) -> Gate {
        gate(mine, published, Some(l), previous(Some(l), &me(), 0, now), old, now, p)
    }

    fn policy() -> Policy {
        Policy { grace: Some(30 * S), verify: 3 * S, timing: Timing::default() }
    }

    /// Issue 15, item 4: the leader published `renewed` at its last renew and acknowledged
    /// `later` before it was fenced. Today's rule (`may_promote`, against the published
    /// contextCSN) lets a standby holding only `renewed` take over at expiry; the gate waits
    /// until it holds the old leader's current contextCSN.
    #[test]
    fn a_standby_waits_for_the_old_leaders_current_csn_not_the_published_one() {
        let (renewed, later) = (vec![csn("20261125100000", 1)], vec![csn("20261125100004", 1)]);
        let l = lease(Some("a"));
        assert!(may_promote(&renewed, &renewed, Some(&l), at(18.0), Some(30 * S)), "today's rule: promote");
        let old = OldLeader::Current(later.clone());
        assert_eq!(verdict(&renewed, &renewed, &l, &old, at(18.0), &policy()), Gate::Wait);
        assert_eq!(verdict(&later, &renewed, &l, &old, at(18.0), &policy()), Gate::Promote);
        // Still behind when the grace runs out (30 s after the expiry): promote, recorded.
        assert_eq!(verdict(&renewed, &renewed, &l, &old, at(47.9), &policy()), Gate::Wait);
        let Gate::PromoteUncovered(u) = verdict(&renewed, &renewed, &l, &old, at(48.0), &policy()) else {
            panic!("the grace ran out")
        };
        assert_eq!(u.reason, UncoveredReason::Behind);
        assert_eq!(u.seconds, 4.0);
        // Grace off: never.
        let off = Policy { grace: None, ..policy() };
        assert_eq!(verdict(&renewed, &renewed, &l, &old, at(1000.0), &off), Gate::Wait);
    }

    #[test]
    fn an_unreachable_old_leader_costs_the_verify_bound_and_is_recorded() {
        let renewed = vec![csn("20261125100000", 1)];
        let l = lease(Some("a"));
        let p = policy();
        assert_eq!(verdict(&renewed, &renewed, &l, &OldLeader::NoAnswer, at(20.9), &p), Gate::Wait);
        let Gate::PromoteUncovered(u) = verdict(&renewed, &renewed, &l, &OldLeader::NoAnswer, at(21.0), &p) else {
            panic!("the verify bound passed")
        };
        assert_eq!(u.reason, UncoveredReason::Unreachable);
        // Up to the old leader's renew deadline (with drift) and fence budget after its renew.
        assert!((u.seconds - (5.05 + 1.0)).abs() < 1e-9, "{u:?}");
        // Behind the published contextCSN as well: the grace rule as before, and the lag counts.
        let behind = vec![csn("20261125095958", 1)];
        assert_eq!(verdict(&behind, &renewed, &l, &OldLeader::NoAnswer, at(47.9), &p), Gate::Wait);
        let Gate::PromoteUncovered(u) = verdict(&behind, &renewed, &l, &OldLeader::NoAnswer, at(48.0), &p) else {
            panic!("the grace ran out")
        };
        assert!((u.seconds - (2.0 + 5.05 + 1.0)).abs() < 1e-9, "{u:?}");
    }

    #[test]
    fn without_peer_urls_the_published_csn_decides_as_before_and_the_window_is_recorded() {
        let renewed = vec![csn("20261125100000", 1)];
        let l = lease(Some("a"));
        let g = verdict(&renewed, &renewed, &l, &OldLeader::NotConfigured, at(18.0), &policy());
        assert!(matches!(g, Gate::PromoteUncovered(Uncovered { reason: UncoveredReason::NotConfigured, .. })), "{g:?}");
        let behind = vec![csn("20261125095958", 1)];
        assert_eq!(verdict(&behind, &renewed, &l, &OldLeader::NotConfigured, at(18.0), &policy()), Gate::Wait);
    }

    #[test]
    fn a_release_a_hand_over_and_a_held_lease_need_no_old_leader() {
        let renewed = vec![csn("20261125100000", 1)];
        let p = policy();
        for (l, now) in [(lease(None), 10.0), (lease(Some("b")), 10.0), (lease(Some("a")), 12.0)] {
            assert_eq!(expired_holder(Some(&l), &me(), at(now)), None, "{l:?}");
            assert_eq!(verdict(&renewed, &renewed, &l, &OldLeader::NoAnswer, at(now), &p), Gate::Promote);
        }
        // A replacement pod under this pod's name: the old one's Lease expired, it is checked.
        let mut replaced = lease(Some("b"));
        replaced.holder_uid = Some("uid-b-old".into());
        assert_eq!(expired_holder(Some(&replaced), &me(), at(18.0)), Some("b"));
    }

    /// A Lease recreated unseen after terms were used: the leader that acknowledged the last
    /// writes is unknown, and the Lease publishes nothing. Found by the simulation: a
    /// restarted elector promoted against the empty Lease and lost what the old leader
    /// acknowledged. Now every peer is asked, or the promotion is recorded.
    #[test]
    fn a_free_lease_behind_a_known_term_verifies_every_peer() {
        let mine = vec![csn("20261125100000", 1)];
        let later = vec![csn("20261125100004", 2)];
        let new = Observed { holder: None, holder_uid: None, transitions: 0, ..lease(None) };
        let p = policy();
        // At a first start (no term known) there is nothing to verify.
        assert_eq!(previous(Some(&new), &me(), 0, at(18.0)), None);
        assert_eq!(gate(&mine, &[], Some(&new), None, &OldLeader::NotConfigured, at(18.0), &p), Gate::Promote);
        // Terms were used before: every peer's slapd decides.
        let unknown = previous(Some(&new), &me(), 3, at(18.0));
        assert_eq!(unknown, Some(Previous::Unknown));
        assert_eq!(unknown.map(|u| u.name().to_string()), Some(UNKNOWN_PREVIOUS.to_string()));
        let peers = OldLeader::Current(later.clone());
        assert_eq!(gate(&mine, &[], Some(&new), unknown, &peers, at(18.0), &p), Gate::Wait);
        assert_eq!(gate(&later, &[], Some(&new), unknown, &peers, at(18.0), &p), Gate::Promote);
        // No peer URLs, or a peer that does not answer: promoted, recorded, the window unbounded.
        for (old, reason, now) in [
            (OldLeader::NotConfigured, UncoveredReason::NotConfigured, 18.0),
            (OldLeader::NoAnswer, UncoveredReason::Unreachable, 13.0),
        ] {
            let Gate::PromoteUncovered(u) = gate(&mine, &[], Some(&new), unknown, &old, at(now), &p) else {
                panic!("{old:?}: promoted, recorded")
            };
            assert_eq!((u.reason, u.seconds), (reason, f64::INFINITY));
        }
        assert_eq!(gate(&mine, &[], Some(&new), unknown, &OldLeader::NoAnswer, at(12.9), &p), Gate::Wait);
        // Released in a term this elector knows of (the fence confirmed): nothing to verify.
        assert_eq!(previous(Some(&lease(None)), &me(), 3, at(18.0)), None);
        // Released below a known term (taken on a recreated Lease, then given up for a pod's
        // newer term): whoever held that term is unknown.
        assert_eq!(previous(Some(&lease(None)), &me(), 4, at(18.0)), Some(Previous::Unknown));
        // Held: the holder's business; once expired, behind a known term: unknown too (the
        // holder shown may be inherited from before a recreation, not the last one).
        assert_eq!(previous(Some(&lease(Some("a"))), &me(), 4, at(12.0)), None);
        assert_eq!(previous(Some(&lease(Some("a"))), &me(), 4, at(18.0)), Some(Previous::Unknown));
        assert_eq!(previous(Some(&lease(Some("a"))), &me(), 3, at(18.0)), Some(Previous::Expired("a")));
    }
}

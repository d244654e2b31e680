//! The pod's readiness (`/readyz`, pure): a pod is Ready when it leads, or when its slapd
//! holds what the leader published. A new pod still seeding from its peer is therefore not
//! Ready, so a StatefulSet rolling update (which waits for Ready before it takes the next
//! pod) or a drain under a PodDisruptionBudget never takes away the only complete copy while
//! the other one is still copying it. Seen on the real node: a pod re-created with an empty
//! volume was Ready (port open) with 1320 of 5860 entries; its peer was then removed, and the
//! writes only that peer held were gone with it.
//!
//! Once caught up, a short lag keeps a pod Ready: the leader publishes its contextCSN with a
//! renew, the follower reads its own with each health check, so a healthy follower trails
//! the published value for up to a check period after every renew.

use std::time::Duration;

use ldap_elector_contract::csn;

use crate::clock::Moment;

/// How long a follower that has caught up once may trail the published contextCSN and stay
/// Ready (replication that stalls longer makes it not Ready).
pub const LAG_TOLERANCE: Duration = Duration::from_secs(10);

/// Readiness state of one elector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    caught_up_once: bool,
    behind_since: Option<Moment>,
}

impl Readiness {
    /// Whether this pod has held what the leader published at least once since its elector
    /// started (or led): a pod still seeding its empty volume has not, and takes over only
    /// once it has (`catch_up::grace_for`).
    pub fn seeded(&self) -> bool {
        self.caught_up_once
    }

    /// The verdict now: `None` when Ready, else why not. `mine` is the local contextCSN,
    /// `published` the leader's in the Lease (empty: nothing to catch up with).
    pub fn update(&mut self, leading: bool, mine: &[String], published: &[String], now: Moment) -> Option<String> {
        if leading || csn::caught_up(mine, published) {
            self.caught_up_once = true;
            self.behind_since = None;
            return None;
        }
        let since = *self.behind_since.get_or_insert(now);
        if !self.caught_up_once {
            Some(format!("not caught up with the leader yet: mine {mine:?}, the leader's {published:?}\n"))
        } else if now.since(since) >= LAG_TOLERANCE {
            Some(format!("behind the leader for {:?}: mine {mine:?}, the leader's {published:?}\n", now.since(since)))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csn(secs: u32) -> Vec<String> {
        vec![format!("20261206120{secs:03}.000000Z#000000#001#000000")]
    }

    fn at(secs: u64) -> Moment {
        Moment::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn a_new_pod_is_not_ready_until_it_holds_what_the_leader_published() {
        let mut r = Readiness::default();
        let base = vec!["20260101000000.000000Z#000000#001#000000".to_string()];
        let leader = vec!["20261206120000.000000Z#000000#002#000000".to_string()];
        assert!(r.update(false, &[], &leader, at(0)).is_some_and(|w| w.contains("not caught up")));
        assert!(!r.seeded(), "still seeding: no catch-up grace");
        // However long it takes: never Ready on the lag tolerance alone.
        assert!(r.update(false, &base, &leader, at(600)).is_some());
        let mut both = base.clone();
        both.extend(leader.clone());
        assert_eq!(r.update(false, &both, &leader, at(601)), None);
        assert!(r.seeded());
    }

    #[test]
    fn once_caught_up_a_short_lag_keeps_it_ready_and_a_long_one_does_not() {
        let mut r = Readiness::default();
        assert_eq!(r.update(false, &csn(1), &csn(1), at(0)), None);
        assert_eq!(r.update(false, &csn(1), &csn(2), at(100)), None, "trails the renew just published");
        assert_eq!(r.update(false, &csn(1), &csn(3), at(109)), None);
        assert!(r.update(false, &csn(1), &csn(4), at(110)).is_some_and(|w| w.contains("behind the leader for 10s")));
        assert_eq!(r.update(false, &csn(4), &csn(4), at(111)), None, "caught up again");
        assert_eq!(r.update(false, &csn(4), &csn(5), at(112)), None, "the lag is counted afresh");
    }

    #[test]
    fn a_leader_and_a_pod_with_nothing_to_catch_up_with_are_ready() {
        let mut r = Readiness::default();
        assert_eq!(r.update(true, &[], &csn(1), at(0)), None);
        assert_eq!(Readiness::default().update(false, &[], &[], at(0)), None, "no leader published anything yet");
    }
}

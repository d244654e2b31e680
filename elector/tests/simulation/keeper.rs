//! The fence keeper (item 3): in the elector's process, it re-reads slapd's fence every
//! second and repairs a drifted one. The role it repairs to is the real
//! `WantedFence::role`, decided before the read-back (old) or after it (current). A pause
//! of the elector inside the read-back defers its answer; on resume the answer is handled
//! first (network before timers), before `decide` can demote.

use ldap_elector::slapd::fence::WantedFence;
use ldap_elector_contract::ROLE_LEADER;

use super::*;

/// How often the keeper reads the fence back (`fence.rs`: `VERIFY_EVERY`).
pub(crate) const VERIFY_EVERY: Duration = Duration::from_secs(1);

impl Sim {
    /// A round: read slapd's `olcReadOnly` back (answers after `keeper_verify`).
    pub(crate) fn keeper_round(&mut self, c: usize) {
        let now = self.local(c);
        let role = self.cands[c].wanted.role(now);
        if self.cands[c].wanted != WantedFence::Standby {
            let d = match self.sc.fence {
                FencePolicy::Random => self.rng.up_to(nanos(self.sc.keeper_verify)),
                FencePolicy::Max => nanos(self.sc.keeper_verify),
            };
            self.after_local(c, Duration::from_nanos(d), Msg::KeeperVerified { role });
        }
        self.after_local(c, VERIFY_EVERY, Msg::KeeperRound);
    }

    /// The read-back answered: slapd is read-only. Repair if the (re)decided role is leader.
    pub(crate) fn keeper_verified(&mut self, c: usize, role_before: &'static str) {
        let now = self.local(c);
        let cand = &mut self.cands[c];
        let role = match self.sc.variants.keeper {
            KeeperRole::BeforeVerify => role_before,
            KeeperRole::AfterEveryAwait => cand.wanted.role(now),
        };
        if role == ROLE_LEADER && !cand.writable {
            cand.writable = true;
            cand.paused_since_feed = false; // a running process made it writable just now
            self.log(Some(c), "keeper: the fence drifted; unfencing slapd");
        }
    }
}

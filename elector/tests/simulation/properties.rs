//! The properties checked: one writable slapd at every event, no acknowledged write lost
//! when a slapd becomes writable, liveness at the end, one leader label once the label
//! writes settled.

use ldap_elector::election::labels::role_of;
use ldap_elector_contract::ROLE_LEADER;

use super::*;

impl Sim {
    pub(crate) fn check_safety(&self) -> Result<(), String> {
        let leaders: Vec<&str> =
            self.cands.iter().filter(|c| c.counts_as_leader(self.now)).map(|c| c.id.as_str()).collect();
        if leaders.len() > 1 {
            return Err(self.report(&format!("SAFETY VIOLATION: {leaders:?} count as leader at the same instant")));
        }
        Ok(())
    }

    pub(crate) fn check_liveness(&mut self) -> Result<(), String> {
        if self.now < self.quiet_at {
            return Ok(());
        }
        let leader = self.cands.iter().position(Candidate::runtime_leads);
        if self.first_leader_after_quiet.is_none() && leader.is_some() {
            self.first_leader_after_quiet = Some(self.now);
        }
        if self.now >= self.live_by {
            match (self.stable_leader, leader) {
                (_, None) => return Err(self.report("LIVENESS: no leader in the fault-free tail")),
                (None, Some(l)) => self.stable_leader = Some(l),
                (Some(s), Some(l)) if s != l => {
                    return Err(self.report("LIVENESS: leadership changed in the fault-free tail"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The property: `c`'s slapd, just made writable, holds every write acknowledged by a
    /// slapd it can reach, unless the gate recorded the promotion as uncovered.
    pub(crate) fn check_no_lost_writes(&mut self, c: usize) {
        if self.cands[c].uncovered {
            return; // waived when it acquired (`waive_uncovered`)
        }
        self.stats.promotions_checked += 1;
        for o in 0..self.cands.len() {
            let acked = self.cands[o].holds[o];
            let reachable = self.cands[o].partitioned == 0 && self.cands[c].partitioned == 0;
            if !reachable {
                // Out of the property's scope, for good: a later promotion lacks them too.
                self.waived[o] = self.waived[o].max(acked);
            } else if o != c && self.cands[c].holds[o] < acked && acked > self.waived[o] {
                self.failure = Some(format!(
                    "LOST WRITES: {} writable without the write {} acknowledged at {:.6}s (it holds {:.6}s)",
                    self.cands[c].id,
                    self.cands[o].id,
                    secs(acked),
                    secs(self.cands[c].holds[o])
                ));
            }
        }
    }

    /// When an acquisition commits, what it lacks is waived (for this term and later ones) when the gate
    /// let it through as uncovered (recorded: metric, Event, Lease annotation), and the writes
    /// of a slapd it cannot reach then (out of the property's scope for good).
    pub(crate) fn waive_at_acquisition(&mut self, c: usize) {
        let uncovered = self.cands[c].uncovered;
        self.stats.promotions_uncovered += u64::from(uncovered);
        for o in 0..self.cands.len() {
            let unreachable = self.cands[o].partitioned > 0 || self.cands[c].partitioned > 0;
            if uncovered || unreachable {
                self.waived[o] = self.waived[o].max(self.cands[o].holds[o]);
            }
        }
    }

    /// The property: at most one pod labelled leader once the label writes settled.
    pub(crate) fn check_labels(&self) -> Result<(), String> {
        let leaders: Vec<&str> = self
            .server
            .pods
            .iter()
            .filter(|p| role_of(p) == Some(ROLE_LEADER))
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        if leaders.len() > 1 {
            return Err(self.report(&format!("LABELS: {leaders:?} labelled leader after the last label write")));
        }
        Ok(())
    }
}

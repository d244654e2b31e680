//! The properties checked: safety at every event, liveness at the end.

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
}

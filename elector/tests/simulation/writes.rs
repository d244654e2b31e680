//! Acknowledged writes, Mirror-Mode replication and catch-up (items 4 and 5).
//!
//! Clients write every `WRITE_EVERY` through kept connections: every slapd that counts as
//! leader acknowledges one (its own server ID, stamped with the real time). Each write
//! replicates to every peer after up to `max_rep_lag`, unless replication into the peer is
//! cut or either pod is partitioned; then the peer catches up when that heals. A stopped
//! slapd acknowledges and sends nothing. The elector's contextCSN (`my_csn`) is what its
//! health check read last (every tick); the leader publishes it in the Lease on every write.
//!
//! Catch-up runs the real `catch_up::gate` (current) or `decide::may_promote` against the
//! published contextCSN (old). Checked when a slapd becomes writable: it holds every write
//! any other reachable slapd acknowledged (`properties.rs`).

use ldap_elector::election::catch_up::{self, Gate, OldLeader, Policy, Previous};
use ldap_elector::election::decide::may_promote;
use ldap_elector::election::lease::published_csn;

use super::*;

/// How often clients write.
pub(crate) const WRITE_EVERY: Duration = Duration::from_millis(100);
/// `--catch-up-verify`'s default.
pub(crate) const CATCH_UP_VERIFY: Duration = Duration::from_secs(3);
/// The hand-over hook's bound and how often the model looks.
pub(crate) const HANDOVER_WAIT: Duration = Duration::from_secs(15);
pub(crate) const HANDOVER_POLL: Duration = Duration::from_millis(100);

/// slapd's contextCSN form of a write of server `sid` at real time `t` (2026-01-01 + t).
pub(crate) fn csn(t: Nanos, sid: usize) -> String {
    let micros = t / 1_000;
    let s = micros / 1_000_000;
    let (day, h, m, sec) = (1 + s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("202601{day:02}{h:02}{m:02}{sec:02}.{:06}Z#000000#{:03x}#000000", micros % 1_000_000, sid + 1)
}

impl Sim {
    /// The contextCSN values of `c`'s slapd now.
    pub(crate) fn slapd_csn(&self, c: usize) -> Vec<String> {
        let holds = &self.cands[c].holds;
        holds.iter().enumerate().filter(|(_, t)| **t > 0).map(|(sid, t)| csn(*t, sid)).collect()
    }

    /// Whether `c`'s slapd takes writes now (counts as leader, and runs).
    pub(crate) fn takes_writes(&self, c: usize) -> bool {
        !self.cands[c].slapd_down && self.cands[c].counts_as_leader(self.now)
    }

    pub(crate) fn write(&mut self) {
        for o in 0..self.cands.len() {
            if !self.takes_writes(o) {
                continue;
            }
            self.stats.writes_acked += 1;
            self.cands[o].holds[o] = self.now;
            for p in 0..self.cands.len() {
                if p != o {
                    let at = self.now + self.rng.up_to(nanos(self.sc.max_rep_lag));
                    self.push(at, Ev::Replicated { to: p, origin: o, stamp: self.now });
                }
            }
        }
        self.push(self.now + nanos(WRITE_EVERY), Ev::Write);
    }

    fn replicates(&self, from: usize, to: usize) -> bool {
        let (f, t) = (&self.cands[from], &self.cands[to]);
        !f.slapd_down && !t.slapd_down && f.partitioned == 0 && t.partitioned == 0 && t.rep_cut == 0
    }

    pub(crate) fn replicated(&mut self, to: usize, origin: usize, stamp: Nanos) {
        // Not delivered now: the consumer catches up when replication heals (`catch_up_all`).
        if self.replicates(origin, to) {
            let h = &mut self.cands[to].holds[origin];
            *h = (*h).max(stamp);
        }
    }

    /// syncrepl reconnected: every pod pulls what its reachable peers hold.
    pub(crate) fn catch_up_all(&mut self) {
        let n = self.cands.len();
        for to in 0..n {
            for from in 0..n {
                if from != to && self.replicates(from, to) {
                    for sid in 0..n {
                        let t = self.cands[from].holds[sid];
                        let h = &mut self.cands[to].holds[sid];
                        *h = (*h).max(t);
                    }
                }
            }
        }
    }

    /// Eligibility of a healthy follower: caught up (the catch-up gate of its variant), and
    /// whether a promotion now would be recorded as uncovered.
    pub(crate) fn caught_up(&self, c: usize, now: Moment) -> (bool, bool) {
        let cand = &self.cands[c];
        let obs = cand.obs.as_ref().map(|(o, _)| o);
        let mut published = cand.known.as_ref().map(published_csn).unwrap_or_default();
        published.extend(cand.csn_floor.iter().cloned());
        match self.sc.variants.catch_up {
            CatchUp::Published => (may_promote(&cand.my_csn, &published, obs, now, None), false),
            CatchUp::OldLeadersCurrent => {
                let me = Me { identity: &cand.id, uid: Some(&cand.id), eligible: true, stopping: false, leading: None };
                let previous = catch_up::previous(obs, &me, cand.term_floor, now);
                // The servers read: the expired holder's, or every other one when unknown.
                let servers: Vec<usize> = match previous {
                    Some(Previous::Expired(h)) => self.index_of(h).into_iter().collect(),
                    Some(Previous::Unknown) => (0..self.cands.len()).filter(|&o| o != c).collect(),
                    None => Vec::new(),
                };
                // Read over LDAP: a server answers while both pods are reachable and it runs.
                let answers =
                    |o: usize| self.cands[o].partitioned == 0 && cand.partitioned == 0 && !self.cands[o].slapd_down;
                let old = if !self.sc.audit_peers {
                    OldLeader::NotConfigured
                } else if !servers.is_empty() && servers.iter().all(|&o| answers(o)) {
                    OldLeader::Current(servers.iter().flat_map(|&o| self.slapd_csn(o)).collect())
                } else {
                    OldLeader::NoAnswer
                };
                let policy = Policy { grace: None, verify: CATCH_UP_VERIFY, timing: self.sc.timing };
                let gate = catch_up::gate(&cand.my_csn, &published, obs, previous, &old, now, &policy);
                (gate.may_promote(), matches!(gate, Gate::PromoteUncovered(_)))
            }
        }
    }

    /// The contextCSN a stepped-down leader publishes: read again after the fence (its
    /// final one), or the last one its health check saw when slapd does not answer.
    pub(crate) fn final_csn(&mut self, c: usize) -> Vec<String> {
        if !self.cands[c].slapd_down {
            self.cands[c].my_csn = self.slapd_csn(c);
        }
        self.cands[c].my_csn.clone()
    }

    /// FaultKind::Stop (item 5): when slapd stops. Old: at once (SIGTERM in parallel with
    /// the hand-over). Current: its preStop waits until another pod holds the Lease (≤ 15 s).
    pub(crate) fn slapd_stop_after_sigterm(&mut self, c: usize) {
        if self.sc.variants.deletion == Deletion::InParallel {
            let at = self.now + self.rng.up_to(nanos(FENCE_BUDGET));
            self.push(at, Ev::SlapdStop(c));
        }
    }

    /// The preStop hook's wait (current): polled from the elector's exit.
    pub(crate) fn handover_poll(&mut self, c: usize, since: Nanos) {
        let id = &self.cands[c].id;
        let other = self.server.lease.holder.as_ref().is_some_and(|h| h != id);
        if !self.cands[c].down {
            return; // recreated meanwhile
        }
        if other || self.now >= since + nanos(HANDOVER_WAIT) {
            self.push(self.now, Ev::SlapdStop(c));
        } else {
            self.push(self.now + nanos(HANDOVER_POLL), Ev::HandoverPoll { cand: c, since });
        }
    }

    pub(crate) fn slapd_stop(&mut self, c: usize) {
        if !self.cands[c].slapd_down {
            self.cands[c].slapd_down = true;
            self.log(Some(c), "slapd stopped");
        }
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.cands.iter().position(|c| c.id == id)
    }
}

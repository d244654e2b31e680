//! slapd's write fence as the runtime drives it: fence stalls (a slapd that does not confirm
//! `olcReadOnly` for a while), release only after a confirmed fence (item 1), the watchdog in
//! the elector's container or in a guard of its own (item 2), the fence at start.

use super::*;

impl Sim {
    /// The real instant at which a fence asked for now is applied by slapd.
    pub(crate) fn fence_applies_at(&mut self, c: usize) -> Nanos {
        if self.cands[c].slapd_down {
            return self.now; // not running: nothing accepts writes
        }
        let budget = nanos(FENCE_BUDGET);
        let d = match self.sc.fence {
            FencePolicy::Random => self.rng.up_to(budget),
            FencePolicy::Max => budget,
        };
        let clock = self.cands[c].clock;
        let done = clock.real_at(clock.local(self.now) + Duration::from_nanos(d), self.now);
        done.max(self.cands[c].stall_until)
    }

    /// Demote or release (runtime contract item 5/6): fence slapd, then maybe release.
    pub(crate) fn fence(&mut self, c: usize, release: Option<(u64, LeaseSpec)>) {
        self.cands[c].busy = Busy::Fencing { release };
        let applied = self.fence_applies_at(c);
        let clock = self.cands[c].clock;
        let budget_end = clock.real_at(clock.local(self.now) + FENCE_BUDGET, self.now);
        if applied <= budget_end {
            self.to(c, applied, Msg::FenceDone);
        } else {
            self.to(c, budget_end, Msg::FenceTimedOut);
            self.push(applied, Ev::SlapdFenced(c));
        }
    }

    /// The elector stopped waiting for its fence (item 1).
    pub(crate) fn fence_timed_out(&mut self, c: usize) {
        let Busy::Fencing { release } = self.cands[c].busy.clone() else { return };
        self.cands[c].busy = Busy::Idle;
        self.stats.unconfirmed_fences += 1;
        match self.sc.variants.release {
            ReleaseAfter::FenceBudget => {
                self.log(Some(c), "fence not confirmed within the budget: releasing anyway (old)");
                self.cands[c].guard.command(Command::Disarm);
                match release {
                    Some((rv, spec)) => {
                        let spec = LeaseSpec { csn: self.final_csn(c), ..spec };
                        self.call(c, Call::Release, Req::Write { expected_rv: rv, spec }, CALL_TIMEOUT)
                    }
                    None => self.step(c),
                }
            }
            ReleaseAfter::ConfirmedFence => {
                self.log(Some(c), "fence not confirmed within the budget: keeping the Lease and the watchdog");
                self.cands[c].unfenced = true;
                self.step(c);
            }
        }
    }

    /// slapd applied a fence late; the elector learns of it (the keeper's read-back).
    pub(crate) fn slapd_fenced(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        if cand.leading.is_some() && cand.in_office {
            return; // a newer term's unfence was queued behind it
        }
        // Otherwise nothing lifts it (an acquisition in flight changes no fence: the keeper
        // still wants standby until the new term takes office).
        cand.writable = false;
        cand.orphan_until = None;
        self.log(Some(c), "slapd applied the stalled fence");
        self.to(c, self.now, Msg::FenceConfirmed);
    }

    /// `settle_unfenced_term`: once the fence is confirmed, release what is still ours.
    pub(crate) fn fence_confirmed(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        if !cand.unfenced {
            return;
        }
        cand.unfenced = false;
        cand.guard.command(Command::Disarm);
        let ours = cand.obs.as_ref().filter(|(o, _)| o.holder() == Some(cand.id.as_str())).cloned();
        match ours {
            Some((o, rv)) if cand.leading.is_none() && matches!(cand.busy, Busy::Idle) => {
                let (csn, switchover_to) = (self.final_csn(c), self.request_seen(c));
                let lease_duration = o.lease_duration;
                let spec = LeaseSpec { holder: None, transitions: o.transitions, lease_duration, csn, switchover_to };
                self.call(c, Call::Release, Req::Write { expected_rv: rv, spec }, CALL_TIMEOUT);
            }
            _ => self.step(c),
        }
    }

    /// FaultKind::FenceStall: bounded by the fence budget after the renew deadline of the
    /// term it starts in (after the fence budget for a slapd that is not writable).
    pub(crate) fn stall(&mut self, c: usize, end: Nanos) {
        let cand = &self.cands[c];
        let bound = if cand.writable || cand.orphan_until.is_some() {
            let mut at = cand.watchdog_at;
            if let Some(o) = cand.orphan_until {
                at = at.min(o);
            }
            cand.clock.real_at(at, self.now)
        } else {
            self.now + nanos(FENCE_BUDGET)
        };
        let until = end.min(bound).max(self.cands[c].stall_until);
        self.cands[c].stall_until = until;
        self.log(Some(c), format_args!("slapd holds fence changes until {:.6}s", secs(until)));
    }

    /// FaultKind::ContainerKill (item 2): the elector dies; the guard fences on EOF, a
    /// watchdog in the same container dies with it.
    pub(crate) fn container_kill(&mut self, c: usize) {
        let local = self.local(c);
        let leading_slapd = self.cands[c].writable && !self.cands[c].down;
        self.crash(c);
        match self.sc.variants.watchdog {
            Watchdog::Guard => {
                if self.cands[c].guard.lost() || self.cands[c].guard.must_fence() {
                    let applied = self.fence_applies_at(c);
                    let cand = &mut self.cands[c];
                    let at = cand.clock.local(applied);
                    cand.orphan_until = cand.orphan_until.map(|o| o.min(at));
                    cand.guard.fenced(true);
                    self.stats.guard_fences += u64::from(leading_slapd);
                    self.log(Some(c), "the guard saw EOF: fencing slapd");
                }
            }
            Watchdog::SameContainer if leading_slapd => {
                // Writable until the restarted elector fences at start.
                self.cands[c].orphan_until = Some(local + Duration::from_secs(1_000_000));
                self.log(Some(c), "the watchdog died with the container: slapd stays writable");
            }
            Watchdog::SameContainer => {}
        }
    }

    /// FaultKind::GuardKill: the guard container restarts fail-closed and fences slapd; the
    /// elector reads EOF: a leader steps down without releasing, nobody leads until it is
    /// connected again (`length`).
    pub(crate) fn guard_kill(&mut self, c: usize, end: Nanos) {
        if self.sc.variants.watchdog != Watchdog::Guard {
            return;
        }
        self.cands[c].guard = Warden::fail_closed();
        self.cands[c].guard_down += 1;
        self.stats.guard_restarts += 1;
        let applied = self.fence_applies_at(c);
        self.push(applied, Ev::GuardFenced(c));
        self.to(c, self.now, Msg::GuardLost);
        self.push(end, Ev::GuardBack(c));
    }

    pub(crate) fn guard_fenced(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        if cand.guard.must_fence() {
            cand.guard.fenced(true);
            cand.writable = false;
            cand.orphan_until = None;
            self.log(Some(c), "the restarted guard fenced slapd");
        }
    }

    /// Run by `step` first: a leader without its guard steps down without releasing (true).
    pub(crate) fn step_down_without_guard(&mut self, c: usize) -> bool {
        if self.cands[c].leading.is_none() || self.cands[c].guard_down == 0 {
            return false;
        }
        self.log(Some(c), "lost the fence guard while leading: stepping down, keeping the Lease");
        self.stand_down(c);
        self.fence(c, None);
        true
    }

    /// On start a pod is standby: fence first (bounded by the budget), then read the Lease.
    pub(crate) fn start_fence(&mut self, c: usize) -> Nanos {
        let applied = self.fence_applies_at(c);
        self.push(applied, Ev::StartFenced(c));
        let clock = self.cands[c].clock;
        applied.min(clock.real_at(clock.local(self.now) + FENCE_BUDGET, self.now))
    }

    pub(crate) fn start_fenced(&mut self, c: usize) {
        if self.cands[c].orphan_until.take().is_some() {
            self.log(Some(c), "fenced at start");
        }
    }
}

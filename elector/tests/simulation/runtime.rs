//! The runtime contract (module docs of `main.rs`, points 2-7) as each candidate follows it.

use ldap_elector::slapd::fence::WantedFence;

use super::*;

impl Sim {
    /// A message reaches candidate `c`'s process.
    pub(crate) fn arrive(&mut self, c: usize, inc: u32, msg: Msg) {
        let cand = &self.cands[c];
        if cand.inc != inc || cand.down {
            return;
        }
        if msg.is_network() && cand.partitioned > 0 {
            if let Msg::Watch { gen, .. } = msg {
                if gen == cand.watch_gen {
                    self.log(Some(c), "watch event lost in partition: watch broken");
                    self.break_watch(c, RECONNECT_BACKOFF);
                }
            }
            return;
        }
        if cand.paused {
            self.cands[c].deferred.push(msg);
            return;
        }
        self.deliver(c, msg);
    }

    pub(crate) fn deliver(&mut self, c: usize, msg: Msg) {
        match msg {
            Msg::Reply { req_id, reply } => match self.cands[c].busy.clone() {
                Busy::Call { req_id: r, what, sent_at } if r == req_id => self.on_call_reply(c, what, sent_at, reply),
                _ if self.cands[c].office.as_ref().is_some_and(|o| o.pending == req_id) => {
                    self.office_reply(c, Some(reply))
                }
                _ if self.cands[c].relist == Some(req_id) => {
                    self.cands[c].relist = None;
                    if let Reply::Ok(rec) = reply {
                        self.cands[c].watch_ok = true;
                        self.observe(c, &rec, true);
                    }
                    self.step(c);
                }
                _ => {} // the call already timed out: the reply is dropped
            },
            Msg::Timeout { req_id } => {
                if matches!(self.cands[c].busy, Busy::Call { req_id: r, .. } if r == req_id) {
                    self.log(Some(c), "call timed out");
                    self.cands[c].busy = Busy::Idle;
                    self.step(c);
                } else if self.cands[c].office.as_ref().is_some_and(|o| o.pending == req_id) {
                    self.office_reply(c, None);
                } else if self.cands[c].relist == Some(req_id) {
                    self.cands[c].relist = None;
                    self.after_local(c, RECONNECT_BACKOFF, Msg::Reconnect);
                }
            }
            Msg::Watch { gen, rec } => {
                if gen == self.cands[c].watch_gen {
                    self.observe(c, &rec, false);
                    self.step(c);
                }
            }
            Msg::Wake { gen } => {
                if gen == self.cands[c].wake_gen {
                    self.step(c);
                }
            }
            Msg::Tick => {
                if !self.cands[c].slapd_down {
                    self.cands[c].my_csn = self.slapd_csn(c); // the health check
                }
                self.step(c);
                self.after_local(c, TICK, Msg::Tick);
            }
            Msg::FenceDone => {
                if let Busy::Fencing { release } = self.cands[c].busy.clone() {
                    // One slapd per pod: this also fences what a crashed incarnation left.
                    self.cands[c].writable = false;
                    self.cands[c].orphan_until = None;
                    self.cands[c].guard.command(Command::Disarm);
                    self.cands[c].busy = Busy::Idle;
                    self.log(Some(c), "fenced");
                    match release {
                        Some((rv, spec)) => {
                            let spec = LeaseSpec { csn: self.final_csn(c), ..spec };
                            self.call(c, Call::Release, Req::Write { expected_rv: rv, spec }, CALL_TIMEOUT)
                        }
                        None => self.step(c),
                    }
                }
            }
            Msg::FenceTimedOut => self.fence_timed_out(c),
            Msg::GuardLost => self.step(c),
            Msg::OfficeRetry => {
                if self.cands[c].office.is_none() {
                    self.start_office(c);
                }
            }
            Msg::KeeperRound => self.keeper_round(c),
            Msg::KeeperVerified { role } => self.keeper_verified(c, role),
            Msg::FenceConfirmed => self.fence_confirmed(c),
            Msg::Reconnect => self.reconnect(c),
            Msg::HealthChanged => self.step(c),
            Msg::Sigterm => {
                self.log(Some(c), "SIGTERM");
                self.cands[c].stopping = true;
                self.step(c);
            }
        }
    }

    // --- the runtime ----------------------------------------------------------------------

    /// Run `decide` and carry out its action (runtime contract items 3–7).
    pub(crate) fn step(&mut self, c: usize) {
        let timing = self.sc.timing;
        let cand = &self.cands[c];
        if cand.down || cand.paused || !matches!(cand.busy, Busy::Idle) || self.office_blocks(c) {
            return;
        }
        let now = cand.clock.local(self.now);
        if self.step_down_without_guard(c) {
            return;
        }
        if let Some(newer) = self.cands[c].newer_term.take() {
            return self.newer_term(c, newer);
        }
        let cand = &self.cands[c];
        let caught_up = cand.leading.is_some() || {
            let (caught_up, uncovered) = self.caught_up(c, now);
            self.cands[c].uncovered = uncovered; // for the promotion that may follow
            caught_up
        };
        let cand = &self.cands[c];
        let me =
            // One pod per name in the model (restarts keep the pod): its UID is its name.
            Me {
                identity: &cand.id,
                uid: Some(&cand.id),
                eligible: cand.unhealthy == 0 && cand.guard_down == 0 && caught_up,
                stopping: cand.stopping,
                leading: cand.leading,
            };
        let action = decide(cand.obs.as_ref().map(|(o, _)| o), &me, now, &timing);
        let obs = cand.obs.clone();
        let id = cand.id.clone();
        if !matches!(action, Action::Wait(_)) {
            self.log(Some(c), format_args!("decide -> {action:?}"));
        }
        self.cands[c].wake_gen += 1;
        if self.consider_switchover(c, &action) {
            return;
        }
        match action {
            Action::Acquire | Action::Renew => {
                let Some((o, rv)) = obs else {
                    self.failure = Some(format!("{id}: decide returned {action:?} before the Lease was read"));
                    return;
                };
                if action == Action::Acquire && o.transitions == 0 && !self.own_term_read(c) {
                    return self.read_own_term(c);
                }
                let (what, transitions, timeout) = if action == Action::Acquire {
                    (Call::Acquire, o.transitions.max(self.cands[c].term_floor) + 1, CALL_TIMEOUT)
                } else {
                    (Call::Renew, o.transitions, self.leader_timeout(c))
                };
                let (csn, switchover_to) = (self.cands[c].my_csn.clone(), self.request_seen(c));
                let spec = LeaseSpec {
                    holder: Some(id),
                    transitions,
                    lease_duration: timing.lease_duration,
                    csn,
                    switchover_to,
                };
                self.call(c, what, Req::Write { expected_rv: rv, spec }, timeout);
            }
            Action::Demote(reason) => {
                match reason {
                    DemoteReason::RenewDeadlinePassed => self.stats.demoted_deadline += 1,
                    DemoteReason::LeaseLost => self.stats.demoted_lost += 1,
                }
                self.stand_down(c);
                self.fence(c, None);
            }
            Action::Release(_) => {
                self.stats.released += 1;
                self.stand_down(c);
                let Some((o, rv)) = obs else {
                    self.failure = Some(format!("{id}: decide returned {action:?} without an observed Lease"));
                    return;
                };
                let spec = LeaseSpec {
                    holder: None,
                    transitions: o.transitions,
                    lease_duration: o.lease_duration,
                    csn: Vec::new(), // read after the fence
                    switchover_to: self.request_seen(c),
                };
                self.fence(c, Some((rv, spec)));
            }
            Action::Wait(until) => {
                if let Some(t) = until {
                    if t <= now {
                        self.failure = Some(format!("{id}: decide returned Wait({t:?}) at {now:?}: a busy loop"));
                        return;
                    }
                    let gen = self.cands[c].wake_gen;
                    let at = self.cands[c].clock.real_at(t, self.now);
                    self.to(c, at, Msg::Wake { gen });
                }
                let unfenced = self.cands[c].unfenced;
                if self.cands[c].stopping && self.cands[c].leading.is_none() && !unfenced {
                    self.exit(c);
                }
            }
        }
    }

    /// Client timeout of a call: capped at the renew deadline while leading (contract item 4).
    pub(crate) fn leader_timeout(&self, c: usize) -> Duration {
        let cand = &self.cands[c];
        match cand.leading {
            Some(l) if self.sc.cap_leader_timeouts => {
                CALL_TIMEOUT.min((l.renewed_at + self.sc.timing.renew_deadline).since(self.local(c)))
            }
            _ => CALL_TIMEOUT,
        }
    }

    pub(crate) fn call(&mut self, c: usize, what: Call, req: Req, timeout: Duration) {
        let req_id = self.next_req;
        self.next_req += 1;
        let sent_at = self.local(c);
        self.cands[c].busy = Busy::Call { req_id, what, sent_at };
        self.send(c, req_id, req, timeout);
    }

    /// Put a request on the network and arm its client timeout.
    pub(crate) fn send(&mut self, c: usize, req_id: u64, req: Req, timeout: Duration) {
        let faulty = self.now < self.fault_end;
        let lost = self.cands[c].partitioned > 0 || (faulty && self.rng.chance(self.sc.loss));
        if lost {
            self.log(Some(c), format_args!("request #{req_id} lost: {req:?}"));
        } else {
            let (min, max) = (nanos(self.sc.min_latency), nanos(self.sc.max_latency));
            let mut delay = min + self.rng.up_to(max.saturating_sub(min));
            if matches!(req, Req::PodPatch { pod, .. } if pod == c) {
                if let Some(late) = self.cands[c].late_label.take() {
                    delay = nanos(late);
                }
            }
            if faulty && self.rng.chance(self.sc.straggler) {
                let limit = (self.fault_end + nanos(self.sc.max_latency)).saturating_sub(self.now);
                delay = self.rng.up_to(nanos(3 * self.sc.timing.lease_duration)).min(limit);
            }
            let inc = self.cands[c].inc;
            self.push(self.now + delay, Ev::AtServer { from: c, inc, req_id, req });
        }
        self.after_local(c, timeout, Msg::Timeout { req_id });
    }

    pub(crate) fn on_call_reply(&mut self, c: usize, what: Call, sent_at: Moment, reply: Reply) {
        self.cands[c].busy = Busy::Idle;
        match reply {
            Reply::Conflict => {
                self.stats.conflicts += 1;
                self.log(Some(c), format_args!("{what:?}: 409 Conflict, re-reading"));
                let timeout = self.leader_timeout(c);
                self.call(c, Call::Get, Req::Read { relist_gen: None }, timeout);
            }
            Reply::Pod(_) | Reply::Patched | Reply::Invalid => unreachable!("a pod reply to a Lease call"),
            Reply::Ok(rec) => {
                self.observe(c, &rec, true);
                if matches!(what, Call::Acquire | Call::Renew) {
                    let deadline = self.sc.timing.renew_deadline;
                    let now = self.local(c);
                    let cand = &mut self.cands[c];
                    assert_eq!(rec.holder.as_deref(), Some(cand.id.as_str()));
                    cand.leading = Some(Leading { term: rec.transitions, renewed_at: sent_at });
                    // A reply handled late (after a pause) may already be past the deadline:
                    // then decide demotes at once and slapd must not be unfenced or fed.
                    // slapd is unfenced once in office (`office.rs`), fed on every renew.
                    if what == Call::Acquire {
                        cand.in_office = false;
                        self.stats.acquired += 1;
                        self.log(Some(c), format_args!("LEADS, term {}", rec.transitions));
                        self.start_office(c);
                    } else {
                        if cand.in_office && now < sent_at + deadline {
                            self.unfence(c, sent_at);
                        }
                        self.stats.renewed += 1;
                    }
                }
                self.step(c);
            }
        }
    }

    /// Whether the pod's term was read for the Lease never held that `c` observes.
    fn own_term_read(&self, c: usize) -> bool {
        let cand = &self.cands[c];
        cand.term_read_for == cand.known.as_ref().and_then(|l| l.metadata.uid.clone())
    }

    /// Before taking a Lease never held, the runtime reads the term its pod carries into its
    /// floor (`acquire`), then decides again (instantaneous here). Out of reach of the API
    /// server the read fails: no acquisition, decided again at the next tick.
    fn read_own_term(&mut self, c: usize) {
        if self.cands[c].partitioned > 0 {
            return;
        }
        let carried = ldap_elector::election::labels::term_of(&self.server.pods[c]).unwrap_or(0);
        let cand = &mut self.cands[c];
        cand.term_floor = cand.term_floor.max(carried);
        cand.term_read_for = cand.known.as_ref().and_then(|l| l.metadata.uid.clone());
        self.step(c);
    }

    /// Stop leading: the fence keeper's wish is standby, a label step in flight is dropped
    /// (a write already sent may still land).
    pub(crate) fn stand_down(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        cand.leading = None;
        cand.wanted = WantedFence::Standby;
        cand.office = None;
        cand.in_office = false;
    }

    pub(crate) fn break_watch(&mut self, c: usize, reconnect_after: Duration) {
        let cand = &mut self.cands[c];
        cand.watch_ok = false;
        cand.relist = None;
        cand.watch_gen += 1;
        self.server.watches[c] = None;
        self.after_local(c, reconnect_after, Msg::Reconnect);
    }

    /// Re-read the Lease and restart the watch from that read.
    pub(crate) fn reconnect(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        if cand.watch_ok || cand.relist.is_some() {
            return;
        }
        cand.watch_gen += 1;
        let gen = cand.watch_gen;
        let req_id = self.next_req;
        self.next_req += 1;
        cand.relist = Some(req_id);
        self.send(c, req_id, Req::Read { relist_gen: Some(gen) }, CALL_TIMEOUT);
    }
}

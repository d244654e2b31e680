//! The simulation: the world's state and the event loop.

use super::*;

pub(crate) struct Sim {
    pub(crate) sc: Scenario,
    pub(crate) rng: Rng,
    pub(crate) now: Nanos,
    pub(crate) seq: u64,
    pub(crate) queue: BinaryHeap<Queued>,
    pub(crate) server: Server,
    pub(crate) cands: Vec<Candidate>,
    pub(crate) next_req: u64,
    /// Faults start and end before this; messages sent before it drain by `quiet_at`.
    pub(crate) fault_end: Nanos,
    pub(crate) quiet_at: Nanos,
    /// Some candidate must lead by then, and keep leading until `end`.
    pub(crate) live_by: Nanos,
    pub(crate) end: Nanos,
    pub(crate) trace: VecDeque<String>,
    pub(crate) failure: Option<String>,
    pub(crate) stats: Stats,
    pub(crate) first_leader_after_quiet: Option<Nanos>,
    pub(crate) stable_leader: Option<usize>,
    /// Per server ID: writes up to this time fall in a recorded uncovered window.
    pub(crate) waived: Vec<Nanos>,
}

impl Sim {
    pub(crate) fn new(sc: Scenario) -> Self {
        let t = sc.timing;
        let n = sc.clocks.len();
        let fault_end = nanos(sc.fault_phase);
        let quiet_at = fault_end
            + nanos(CALL_TIMEOUT + RECONNECT_BACKOFF + FENCE_BUDGET + sc.max_watch_delay)
            + 2 * nanos(sc.max_latency);
        let lease_real = t.lease_duration.div_f64(1.0 - MAX_CLOCK_DRIFT);
        let live_by = quiet_at + nanos(lease_real + 3 * t.renew_period + 2 * CALL_TIMEOUT + 2 * TICK);
        let end = live_by + nanos(t.lease_duration + 2 * t.renew_period);
        let mut sim = Sim {
            rng: Rng(sc.seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            server: Server {
                // Pre-created by the reconciler.
                lease: LeaseRecord {
                    holder: None,
                    transitions: 0,
                    lease_duration: t.lease_duration,
                    rv: REVISION_STEP,
                    uid: 1,
                    csn: Vec::new(),
                    switchover_to: None,
                },
                watches: vec![None; n],
                stream_floor: vec![0; n],
                issued: REVISION_STEP,
                restored: Default::default(),
                pods: sc.clocks.iter().enumerate().map(|(i, _)| new_pod(&format!("ldap-server-{i}"))).collect(),
            },
            cands: sc.clocks.iter().enumerate().map(|(i, &c)| Candidate::new(i, c, n)).collect(),
            next_req: 0,
            fault_end,
            quiet_at,
            live_by,
            end,
            trace: VecDeque::new(),
            failure: None,
            stats: Stats::default(),
            first_leader_after_quiet: None,
            stable_leader: None,
            waived: vec![0; n],
            sc,
        };
        for c in 0..n {
            sim.start(c);
        }
        sim.push(nanos(WRITE_EVERY), Ev::Write);
        for f in sim.sc.faults.clone() {
            sim.push(nanos(f.at).min(fault_end), Ev::Fault(f));
        }
        sim
    }

    pub(crate) fn run(mut self) -> Result<Stats, String> {
        while let Some(Queued { at, ev, .. }) = self.queue.pop() {
            if at > self.end {
                break;
            }
            debug_assert!(at >= self.now, "time runs forward");
            self.now = at;
            self.stats.events += 1;
            if self.stats.events > MAX_EVENTS {
                return Err(self.report("event budget exhausted: livelock?"));
            }
            self.handle(ev);
            if let Some(f) = self.failure.take() {
                return Err(self.report(&f));
            }
            self.check_safety()?;
            self.check_liveness()?;
        }
        if self.stable_leader.is_none() {
            return Err(self.report("the run ended before the liveness check"));
        }
        self.check_labels()?;
        Ok(self.stats)
    }

    // --- bookkeeping -----------------------------------------------------------------------

    pub(crate) fn push(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    pub(crate) fn to(&mut self, c: usize, at: Nanos, msg: Msg) {
        let inc = self.cands[c].inc;
        self.push(at, Ev::To { cand: c, inc, msg });
    }

    /// Deliver `msg` to `c` after `d` on its local clock.
    pub(crate) fn after_local(&mut self, c: usize, d: Duration, msg: Msg) {
        let clock = self.cands[c].clock;
        let at = clock.real_at(clock.local(self.now) + d, self.now);
        self.to(c, at, msg);
    }

    pub(crate) fn local(&self, c: usize) -> Moment {
        self.cands[c].clock.local(self.now)
    }

    pub(crate) fn log(&mut self, who: Option<usize>, text: impl std::fmt::Display) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        let who = who.map_or("server".to_string(), |c| format!("c{c}"));
        self.trace.push_back(format!("{:>10.6}s {who:>6}: {text}", secs(self.now)));
    }

    pub(crate) fn report(&self, what: &str) -> String {
        let mut s = format!(
            "{what}\n at t={:.6}s (seed {}, faults end {:.3}s, live_by {:.3}s)\n",
            secs(self.now),
            self.sc.seed,
            secs(self.fault_end),
            secs(self.live_by)
        );
        let _ = writeln!(s, " lease: {:?}", self.server.lease);
        for c in &self.cands {
            let _ = writeln!(s, " {}", c.describe(self.now));
        }
        let _ = writeln!(s, " timing: {:?}\n last {} events:", self.sc.timing, self.trace.len());
        for line in &self.trace {
            let _ = writeln!(s, "  {line}");
        }
        s
    }
}

impl Sim {
    pub(crate) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::AtServer { from, inc, req_id, req } => self.at_server(from, inc, req_id, req),
            Ev::To { cand, inc, msg } => self.arrive(cand, inc, msg),
            Ev::Fault(f) => self.fault(f),
            Ev::Resume(c) => self.resume(c),
            Ev::Restart(c) => self.restart(c),
            Ev::Healthy(c) => {
                self.cands[c].unhealthy -= 1;
                self.log(Some(c), "healthy again");
                self.to(c, self.now, Msg::HealthChanged);
            }
            Ev::SlapdFenced(c) => self.slapd_fenced(c),
            Ev::Write => self.write(),
            Ev::GuardFenced(c) => self.guard_fenced(c),
            Ev::GuardBack(c) => {
                self.cands[c].guard_down -= 1;
                self.to(c, self.now, Msg::HealthChanged);
            }
            Ev::Replicated { to, origin, stamp } => self.replicated(to, origin, stamp),
            Ev::RepHealed(c) => {
                self.cands[c].rep_cut -= 1;
                self.catch_up_all();
            }
            Ev::SlapdStop(c) => self.slapd_stop(c),
            Ev::HandoverPoll { cand, since } => self.handover_poll(cand, since),
            Ev::StartFenced(c) => self.start_fenced(c),
            Ev::Heal(c) => {
                self.cands[c].partitioned -= 1;
                self.catch_up_all();
                self.log(Some(c), "partition healed");
            }
        }
    }
}

pub(crate) fn simulate(sc: &Scenario) -> Result<Stats, String> {
    Sim::new(sc.clone()).run()
}

//! Deterministic discrete-event simulation of the election: the pure core `decide()` plus the
//! runtime around it, several candidates with drifting clocks, a compare-and-swap API server, a
//! lossy network, watches, pauses, crashes, graceful stops and health flaps. proptest draws the
//! scenarios; given a `Scenario` (printed on failure) a run is fully reproducible.
//!
//! Checked at every event: at most one pod counts as leader (may accept writes) at the same REAL
//! instant (DESIGN.md invariant 1/2). Checked at the end: once all faults stop, some candidate
//! leads within `lease_duration` plus a few renew periods, and keeps leading.
//!
//! # Runtime contract (what the real runtime must do; this file models exactly that)
//! 1. Clock: every `Moment` given to `decide` is the candidate's own `CLOCK_BOOTTIME`. Clocks of
//!    different nodes run at rate `1 + δ` of real time, `|δ| ≤ MAX_CLOCK_DRIFT`, with arbitrary
//!    offsets; nothing is ever compared across nodes.
//! 2. Observing the Lease: a watch delivers every committed change, in order, after a delay. A
//!    watch can break (reset, partition); the runtime then re-reads the Lease (GET) and watches
//!    again from there. An observation replaces the current one only if its resourceVersion is
//!    NEWER (the Lease's resourceVersion is etcd's revision, increasing per object); then
//!    `seen_change_at = local now`. A candidate starts with no observation and reads first.
//! 3. Deciding: `decide()` runs whenever the runtime is idle and something happened: a change was
//!    observed, the `Wait(Some(t))` timer fired (`t` on the local clock), health or stop state
//!    changed, a call finished, or a periodic 1 s tick. Never while a call or fence is pending.
//! 4. Acquire / Renew: record `sent_at = local now` BEFORE sending a compare-and-swap update of
//!    the observed object. Success: `leading = Some(Leading { term: transitions, renewed_at:
//!    sent_at })` and the response updates the observation; then, only if the local clock is
//!    still before `sent_at + renew_deadline` (a reply handled late, after a pause, may not be;
//!    `decide` then demotes at once), slapd is made writable and the watchdog is fed (fence at
//!    `sent_at + renew_deadline + FENCE_BUDGET`). 409: GET the Lease, then decide.
//!    Timeout / loss: decide again. Every call has a 1.5 s client timeout, and while leading the
//!    timeout is capped at the renew deadline (`renewed_at + renew_deadline − now`): decide never
//!    gets a chance to demote while the runtime is blocked in a call, so an uncapped renew that
//!    is lost right before the deadline would keep a deposed leader writable for up to 1.5 s
//!    more (see `uncapped_leader_call_timeout_overshoots_the_deadline`).
//! 5. Demote: `leading = None` at once, then fence slapd (read-only, label) — takes at most
//!    `FENCE_BUDGET` on the local clock; the pod counts as leader until the fence is done, and
//!    the runtime decides again only after it.
//! 6. Release: like Demote, then a CAS write `holder = None` against the resourceVersion of the
//!    observation `decide` saw (the one that showed us as holder), never a fresher one: a fresher
//!    one may belong to a new holder whose lease we would then erase.
//! 7. Stop (SIGTERM): `stopping = true`; the process exits once it is no longer leading (after
//!    its release was sent) and is recreated later. If it has not exited by then, it is killed.
//!
//! # Fault model
//! - Network: one-way delays `0..=max_latency`; during the fault phase every request and every
//!   reply is lost with probability `loss` (request lost: no effect; reply lost: effect applied,
//!   client times out) and a request may straggle for up to 3 lease durations (it still arrives
//!   before the fault phase ends). Partitions drop all traffic of one pod and break its watch.
//! - Pause (SIGSTOP of the elector only, up to 3 lease durations): no steps; replies, watch events
//!   and timers are queued and handled on resume (network first: tokio's `timeout` polls the
//!   inner future before its timer). The watchdog is a separate process and is NOT paused.
//! - Crash (SIGKILL) and restart of the elector as a fresh incarnation on the same node (same
//!   clock). slapd keeps whatever mode it had; only the watchdog fences it.
//! - Health flaps (ineligible for a while), watch resets, graceful stops.
//!
//! # What counts as leader (may accept writes)
//! - A running elector: from its successful Acquire until its fence after Demote/Release is done.
//! - An elector paused since it last fed the watchdog (even if running again), or slapd orphaned
//!   by a crashed elector: as above, but at most until the watchdog fences slapd at
//!   `renewed_at + renew_deadline + FENCE_BUDGET` (its own clock). A leader resuming after that
//!   time finds slapd fenced already.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use ldap_elector::clock::Moment;
use ldap_elector::election::decide::{
    decide, Action, DemoteReason, Leading, Me, Observed, Timing, FENCE_BUDGET, MAX_CLOCK_DRIFT,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Client-side timeout of every API call.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Periodic re-decide (health checks) while waiting.
const TICK: Duration = Duration::from_secs(1);
/// Back-off before re-establishing a broken watch.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// A run that needs more events than this is livelocked.
const MAX_EVENTS: u64 = 300_000;
/// Trace lines kept for failure reports.
const TRACE_LEN: usize = 250;

/// Real (simulated) time in nanoseconds.
type Nanos = u64;

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).expect("simulated times fit in u64")
}

fn secs(t: Nanos) -> f64 {
    t as f64 / 1e9
}

// ---------------------------------------------------------------------------------------------
// Randomness inside a run: a tiny deterministic PRNG seeded by the scenario.

struct Rng(u64);

impl Rng {
    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next() % bound,
            None => self.next(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: everything a run depends on.

#[derive(Clone, Copy, Debug)]
struct ClockSpec {
    /// Rate is `1 + drift` of real time.
    drift: f64,
    /// Reading at real time 0.
    offset: Duration,
}

impl ClockSpec {
    fn local(&self, real: Nanos) -> Moment {
        let elapsed = (real as f64 * (1.0 + self.drift)).floor() as u64;
        Moment::from_origin(self.offset + Duration::from_nanos(elapsed))
    }

    /// The first real instant (not before `not_before`) at which this clock reads ≥ `m`.
    fn real_at(&self, m: Moment, not_before: Nanos) -> Nanos {
        let target = m.since(Moment::from_origin(self.offset));
        let mut real = (nanos(target) as f64 / (1.0 + self.drift)).ceil() as u64;
        while self.local(real) < m {
            real += 1;
        }
        while real > 0 && self.local(real - 1) >= m {
            real -= 1;
        }
        real.max(not_before)
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Cand(usize),
    /// Whoever counts as leader when the fault starts (else a random candidate).
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// SIGSTOP the elector for `length`.
    Pause,
    /// SIGKILL the elector; restart after `length`.
    Crash,
    /// SIGTERM; the pod is recreated after `length` (killed if it has not exited by then).
    Stop,
    /// slapd unhealthy for `length`.
    Unhealthy,
    /// The watch breaks; it is re-established after `length`.
    WatchReset,
    /// All traffic of the pod is dropped for `length`.
    Partition,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    at: Duration,
    target: Target,
    kind: FaultKind,
    length: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FencePolicy {
    /// Fencing takes a random time in `0..=FENCE_BUDGET`.
    Random,
    /// Fencing always takes the whole budget (worst case, for scripted scenarios).
    Max,
}

#[derive(Clone, Debug)]
struct Scenario {
    timing: Timing,
    clocks: Vec<ClockSpec>,
    max_latency: Duration,
    max_watch_delay: Duration,
    /// Loss probability of each request and each reply during the fault phase.
    loss: f64,
    /// Probability that a request straggles (fault phase only).
    straggler: f64,
    /// Faults start (and end) within this time; afterwards the system is fault-free.
    fault_phase: Duration,
    faults: Vec<Fault>,
    seed: u64,
    /// Runtime contract item 4; `false` only to show why it is needed.
    cap_leader_timeouts: bool,
    fence: FencePolicy,
}

impl Scenario {
    /// A fault-free, zero-latency scenario with worst-case fencing, for scripted tests.
    fn scripted(timing: Timing, drifts: &[f64], faults: Vec<Fault>, fault_phase: Duration) -> Self {
        Scenario {
            timing,
            clocks: drifts
                .iter()
                .enumerate()
                .map(|(i, &drift)| ClockSpec { drift, offset: Duration::from_secs(1000 * (i as u64 + 1)) })
                .collect(),
            max_latency: Duration::ZERO,
            max_watch_delay: Duration::ZERO,
            loss: 0.0,
            straggler: 0.0,
            fault_phase,
            faults,
            seed: 7,
            cap_leader_timeouts: true,
            fence: FencePolicy::Max,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The API server: one Lease, compare-and-swap on resourceVersion, watches.

#[derive(Clone, Debug)]
struct LeaseRecord {
    holder: Option<String>,
    transitions: i32,
    lease_duration: Duration,
    rv: u64,
}

/// The object a client PUTs (the observed object with its changes).
#[derive(Clone, Debug)]
struct LeaseSpec {
    holder: Option<String>,
    transitions: i32,
    lease_duration: Duration,
}

#[derive(Clone, Debug)]
enum Req {
    /// GET; `relist_gen` also (re)starts the watch of that generation from this read.
    Read { relist_gen: Option<u64> },
    /// PUT with `metadata.resourceVersion = expected_rv`.
    Write { expected_rv: u64, spec: LeaseSpec },
}

#[derive(Clone, Debug)]
enum Reply {
    Ok(LeaseRecord),
    Conflict,
}

struct Server {
    lease: LeaseRecord,
    /// Per candidate: the watch stream (incarnation, generation) currently open.
    watches: Vec<Option<(u32, u64)>>,
    /// Per candidate: the last delivery time on its stream (streams are FIFO).
    stream_floor: Vec<Nanos>,
}

// ---------------------------------------------------------------------------------------------
// Candidates.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Acquire,
    Renew,
    Release,
    Get,
}

#[derive(Clone, Debug)]
enum Busy {
    Idle,
    Call {
        req_id: u64,
        what: Call,
        sent_at: Moment,
    },
    /// Fencing slapd; then maybe send the release (PUT against that resourceVersion).
    Fencing {
        release: Option<(u64, LeaseSpec)>,
    },
}

/// Something delivered to a candidate's process.
#[derive(Clone, Debug)]
enum Msg {
    Reply { req_id: u64, reply: Reply },
    Watch { gen: u64, rec: LeaseRecord },
    Timeout { req_id: u64 },
    Wake { gen: u64 },
    Tick,
    FenceDone,
    Reconnect,
    HealthChanged,
    Sigterm,
}

impl Msg {
    fn is_network(&self) -> bool {
        matches!(self, Msg::Reply { .. } | Msg::Watch { .. })
    }
}

struct Candidate {
    id: String,
    clock: ClockSpec,
    // The process.
    /// Incarnation: messages for an earlier one are dropped.
    inc: u32,
    down: bool,
    paused: bool,
    /// Messages that arrived while paused.
    deferred: Vec<Msg>,
    restart_pending: bool,
    // The pod's environment.
    unhealthy: u32,
    partitioned: u32,
    // The runtime's state.
    stopping: bool,
    obs: Option<(Observed, u64)>,
    leading: Option<Leading>,
    busy: Busy,
    wake_gen: u64,
    watch_gen: u64,
    watch_ok: bool,
    relist: Option<u64>,
    // slapd.
    /// slapd accepts writes (set on a successful acquire/renew, cleared when a fence completes).
    writable: bool,
    /// When the watchdog fences slapd (local clock), fed on every successful acquire/renew.
    watchdog_at: Moment,
    /// The elector was paused since it last fed the watchdog: only the watchdog bounds slapd's
    /// writable time now (the elector's own loop did not run on time).
    paused_since_feed: bool,
    /// slapd left writable by a crashed elector: writable until the watchdog fences it.
    orphan_until: Option<Moment>,
}

impl Candidate {
    fn new(i: usize, clock: ClockSpec) -> Self {
        Candidate {
            id: format!("ldap-server-{i}"),
            clock,
            inc: 0,
            down: false,
            paused: false,
            deferred: Vec::new(),
            restart_pending: false,
            unhealthy: 0,
            partitioned: 0,
            stopping: false,
            obs: None,
            leading: None,
            busy: Busy::Idle,
            wake_gen: 0,
            watch_gen: 0,
            watch_ok: false,
            relist: None,
            writable: false,
            watchdog_at: Moment::ZERO,
            paused_since_feed: false,
            orphan_until: None,
        }
    }

    fn counts_as_leader(&self, real: Nanos) -> bool {
        let local = self.clock.local(real);
        let orphan = self.orphan_until.is_some_and(|t| local < t);
        let frozen = self.paused || self.down || self.paused_since_feed;
        orphan || (self.writable && (!frozen || local < self.watchdog_at))
    }

    /// Leading by the runtime's own account (for liveness).
    fn runtime_leads(&self) -> bool {
        !self.down && !self.paused && self.writable && self.leading.is_some()
    }

    fn describe(&self, real: Nanos) -> String {
        let local = self.clock.local(real);
        format!(
            "{} drift={:+.4} local={:?} down={} paused={} writable={} leading={:?} watchdog_in={:?} orphan={:?} obs={:?} busy={:?}",
            self.id,
            self.clock.drift,
            local.since(Moment::ZERO),
            self.down,
            self.paused,
            self.writable,
            self.leading.map(|l| (l.term, local.since(l.renewed_at))),
            self.watchdog_at.since(local),
            self.orphan_until.map(|t| t.since(local)),
            self.obs.as_ref().map(|(o, rv)| (o.holder.clone(), o.transitions, rv, local.since(o.seen_change_at))),
            self.busy,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The event queue.

#[derive(Clone, Debug)]
enum Ev {
    AtServer { from: usize, inc: u32, req_id: u64, req: Req },
    To { cand: usize, inc: u32, msg: Msg },
    Fault(Fault),
    Resume(usize),
    Restart(usize),
    Healthy(usize),
    Heal(usize),
}

struct Queued {
    at: Nanos,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed: `BinaryHeap` pops the earliest (then first scheduled) event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    events: u64,
    acquired: u64,
    /// Acquisitions of a Lease another candidate held (expiry takeovers).
    takeovers: u64,
    renewed: u64,
    conflicts: u64,
    demoted_deadline: u64,
    demoted_lost: u64,
    released: u64,
    paused_leaders: u64,
    watchdog_fences: u64,
    orphans: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.acquired += o.acquired;
        self.takeovers += o.takeovers;
        self.renewed += o.renewed;
        self.conflicts += o.conflicts;
        self.demoted_deadline += o.demoted_deadline;
        self.demoted_lost += o.demoted_lost;
        self.released += o.released;
        self.paused_leaders += o.paused_leaders;
        self.watchdog_fences += o.watchdog_fences;
        self.orphans += o.orphans;
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation.

struct Sim {
    sc: Scenario,
    rng: Rng,
    now: Nanos,
    seq: u64,
    queue: BinaryHeap<Queued>,
    server: Server,
    cands: Vec<Candidate>,
    next_req: u64,
    /// Faults start and end before this; messages sent before it drain by `quiet_at`.
    fault_end: Nanos,
    quiet_at: Nanos,
    /// Some candidate must lead by then, and keep leading until `end`.
    live_by: Nanos,
    end: Nanos,
    trace: VecDeque<String>,
    failure: Option<String>,
    stats: Stats,
    first_leader_after_quiet: Option<Nanos>,
    stable_leader: Option<usize>,
}

impl Sim {
    fn new(sc: Scenario) -> Self {
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
                lease: LeaseRecord { holder: None, transitions: 0, lease_duration: t.lease_duration, rv: 1 },
                watches: vec![None; n],
                stream_floor: vec![0; n],
            },
            cands: sc.clocks.iter().enumerate().map(|(i, &c)| Candidate::new(i, c)).collect(),
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
            sc,
        };
        for c in 0..n {
            sim.start(c);
        }
        for f in sim.sc.faults.clone() {
            sim.push(nanos(f.at).min(fault_end), Ev::Fault(f));
        }
        sim
    }

    fn run(mut self) -> Result<Stats, String> {
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
        Ok(self.stats)
    }

    // --- bookkeeping -----------------------------------------------------------------------

    fn push(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    fn to(&mut self, c: usize, at: Nanos, msg: Msg) {
        let inc = self.cands[c].inc;
        self.push(at, Ev::To { cand: c, inc, msg });
    }

    /// Deliver `msg` to `c` after `d` on its local clock.
    fn after_local(&mut self, c: usize, d: Duration, msg: Msg) {
        let clock = self.cands[c].clock;
        let at = clock.real_at(clock.local(self.now) + d, self.now);
        self.to(c, at, msg);
    }

    fn local(&self, c: usize) -> Moment {
        self.cands[c].clock.local(self.now)
    }

    fn log(&mut self, who: Option<usize>, text: impl std::fmt::Display) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        let who = who.map_or("server".to_string(), |c| format!("c{c}"));
        self.trace.push_back(format!("{:>10.6}s {who:>6}: {text}", secs(self.now)));
    }

    fn report(&self, what: &str) -> String {
        let mut s = format!(
            "{what}\n at t={:.6}s (faults end {:.3}s, live_by {:.3}s)\n",
            secs(self.now),
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

    fn check_safety(&self) -> Result<(), String> {
        let leaders: Vec<&str> =
            self.cands.iter().filter(|c| c.counts_as_leader(self.now)).map(|c| c.id.as_str()).collect();
        if leaders.len() > 1 {
            return Err(self.report(&format!("SAFETY VIOLATION: {leaders:?} count as leader at the same instant")));
        }
        Ok(())
    }

    fn check_liveness(&mut self) -> Result<(), String> {
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

    // --- dispatch ----------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) {
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
            Ev::Heal(c) => {
                self.cands[c].partitioned -= 1;
                self.log(Some(c), "partition healed");
            }
        }
    }

    /// A message reaches candidate `c`'s process.
    fn arrive(&mut self, c: usize, inc: u32, msg: Msg) {
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

    fn deliver(&mut self, c: usize, msg: Msg) {
        match msg {
            Msg::Reply { req_id, reply } => match self.cands[c].busy.clone() {
                Busy::Call { req_id: r, what, sent_at } if r == req_id => self.on_call_reply(c, what, sent_at, reply),
                _ if self.cands[c].relist == Some(req_id) => {
                    self.cands[c].relist = None;
                    if let Reply::Ok(rec) = reply {
                        self.cands[c].watch_ok = true;
                        self.observe(c, &rec);
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
                } else if self.cands[c].relist == Some(req_id) {
                    self.cands[c].relist = None;
                    self.after_local(c, RECONNECT_BACKOFF, Msg::Reconnect);
                }
            }
            Msg::Watch { gen, rec } => {
                if gen == self.cands[c].watch_gen {
                    self.observe(c, &rec);
                    self.step(c);
                }
            }
            Msg::Wake { gen } => {
                if gen == self.cands[c].wake_gen {
                    self.step(c);
                }
            }
            Msg::Tick => {
                self.step(c);
                self.after_local(c, TICK, Msg::Tick);
            }
            Msg::FenceDone => {
                if let Busy::Fencing { release } = self.cands[c].busy.clone() {
                    // One slapd per pod: this also fences what a crashed incarnation left.
                    self.cands[c].writable = false;
                    self.cands[c].orphan_until = None;
                    self.cands[c].busy = Busy::Idle;
                    self.log(Some(c), "fenced");
                    match release {
                        Some((rv, spec)) => {
                            self.call(c, Call::Release, Req::Write { expected_rv: rv, spec }, CALL_TIMEOUT)
                        }
                        None => self.step(c),
                    }
                }
            }
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
    fn step(&mut self, c: usize) {
        let timing = self.sc.timing;
        let cand = &self.cands[c];
        if cand.down || cand.paused || !matches!(cand.busy, Busy::Idle) {
            return;
        }
        let now = cand.clock.local(self.now);
        let me =
            Me { identity: &cand.id, eligible: cand.unhealthy == 0, stopping: cand.stopping, leading: cand.leading };
        let action = decide(cand.obs.as_ref().map(|(o, _)| o), &me, now, &timing);
        let obs = cand.obs.clone();
        let id = cand.id.clone();
        if !matches!(action, Action::Wait(_)) {
            self.log(Some(c), format_args!("decide -> {action:?}"));
        }
        self.cands[c].wake_gen += 1;
        match action {
            Action::Acquire | Action::Renew => {
                let Some((o, rv)) = obs else {
                    self.failure = Some(format!("{id}: decide returned {action:?} before the Lease was read"));
                    return;
                };
                let (what, transitions, timeout) = if action == Action::Acquire {
                    (Call::Acquire, o.transitions + 1, CALL_TIMEOUT)
                } else {
                    (Call::Renew, o.transitions, self.leader_timeout(c))
                };
                let spec = LeaseSpec { holder: Some(id), transitions, lease_duration: timing.lease_duration };
                self.call(c, what, Req::Write { expected_rv: rv, spec }, timeout);
            }
            Action::Demote(reason) => {
                match reason {
                    DemoteReason::RenewDeadlinePassed => self.stats.demoted_deadline += 1,
                    DemoteReason::LeaseLost => self.stats.demoted_lost += 1,
                }
                self.cands[c].leading = None;
                self.fence(c, None);
            }
            Action::Release(_) => {
                self.stats.released += 1;
                self.cands[c].leading = None;
                let Some((o, rv)) = obs else {
                    self.failure = Some(format!("{id}: decide returned {action:?} without an observed Lease"));
                    return;
                };
                let spec = LeaseSpec { holder: None, transitions: o.transitions, lease_duration: o.lease_duration };
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
                if self.cands[c].stopping && self.cands[c].leading.is_none() {
                    self.exit(c);
                }
            }
        }
    }

    /// Client timeout of a call: capped at the renew deadline while leading (contract item 4).
    fn leader_timeout(&self, c: usize) -> Duration {
        let cand = &self.cands[c];
        match cand.leading {
            Some(l) if self.sc.cap_leader_timeouts => {
                CALL_TIMEOUT.min((l.renewed_at + self.sc.timing.renew_deadline).since(self.local(c)))
            }
            _ => CALL_TIMEOUT,
        }
    }

    fn fence(&mut self, c: usize, release: Option<(u64, LeaseSpec)>) {
        self.cands[c].busy = Busy::Fencing { release };
        let budget = nanos(FENCE_BUDGET);
        let d = match self.sc.fence {
            FencePolicy::Random => self.rng.up_to(budget),
            FencePolicy::Max => budget,
        };
        self.after_local(c, Duration::from_nanos(d), Msg::FenceDone);
    }

    fn call(&mut self, c: usize, what: Call, req: Req, timeout: Duration) {
        let req_id = self.next_req;
        self.next_req += 1;
        let sent_at = self.local(c);
        self.cands[c].busy = Busy::Call { req_id, what, sent_at };
        self.send(c, req_id, req, timeout);
    }

    /// Put a request on the network and arm its client timeout.
    fn send(&mut self, c: usize, req_id: u64, req: Req, timeout: Duration) {
        let faulty = self.now < self.fault_end;
        let lost = self.cands[c].partitioned > 0 || (faulty && self.rng.chance(self.sc.loss));
        if lost {
            self.log(Some(c), format_args!("request #{req_id} lost: {req:?}"));
        } else {
            let mut delay = self.rng.up_to(nanos(self.sc.max_latency));
            if faulty && self.rng.chance(self.sc.straggler) {
                let limit = (self.fault_end + nanos(self.sc.max_latency)).saturating_sub(self.now);
                delay = self.rng.up_to(nanos(3 * self.sc.timing.lease_duration)).min(limit);
            }
            let inc = self.cands[c].inc;
            self.push(self.now + delay, Ev::AtServer { from: c, inc, req_id, req });
        }
        self.after_local(c, timeout, Msg::Timeout { req_id });
    }

    fn on_call_reply(&mut self, c: usize, what: Call, sent_at: Moment, reply: Reply) {
        self.cands[c].busy = Busy::Idle;
        match reply {
            Reply::Conflict => {
                self.stats.conflicts += 1;
                self.log(Some(c), format_args!("{what:?}: 409 Conflict, re-reading"));
                let timeout = self.leader_timeout(c);
                self.call(c, Call::Get, Req::Read { relist_gen: None }, timeout);
            }
            Reply::Ok(rec) => {
                self.observe(c, &rec);
                if matches!(what, Call::Acquire | Call::Renew) {
                    let deadline = self.sc.timing.renew_deadline;
                    let now = self.local(c);
                    let cand = &mut self.cands[c];
                    assert_eq!(rec.holder.as_deref(), Some(cand.id.as_str()));
                    cand.leading = Some(Leading { term: rec.transitions, renewed_at: sent_at });
                    // A reply handled late (after a pause) may already be past the deadline:
                    // then decide demotes at once and slapd must not be unfenced or fed.
                    if now < sent_at + deadline {
                        cand.writable = true;
                        cand.watchdog_at = sent_at + deadline + FENCE_BUDGET;
                        cand.paused_since_feed = false;
                    }
                    if what == Call::Acquire {
                        self.stats.acquired += 1;
                        self.log(Some(c), format_args!("LEADS, term {}", rec.transitions));
                    } else {
                        self.stats.renewed += 1;
                    }
                }
                self.step(c);
            }
        }
    }

    /// Contract item 2: take an observation only if it is newer.
    fn observe(&mut self, c: usize, rec: &LeaseRecord) {
        let now = self.local(c);
        let cand = &mut self.cands[c];
        if cand.obs.as_ref().is_some_and(|(_, rv)| *rv >= rec.rv) {
            return;
        }
        cand.obs = Some((
            Observed {
                holder: rec.holder.clone(),
                transitions: rec.transitions,
                lease_duration: rec.lease_duration,
                seen_change_at: now,
                ineligible: Default::default(),
            },
            rec.rv,
        ));
    }

    fn break_watch(&mut self, c: usize, reconnect_after: Duration) {
        let cand = &mut self.cands[c];
        cand.watch_ok = false;
        cand.relist = None;
        cand.watch_gen += 1;
        self.server.watches[c] = None;
        self.after_local(c, reconnect_after, Msg::Reconnect);
    }

    /// Re-read the Lease and restart the watch from that read.
    fn reconnect(&mut self, c: usize) {
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

    // --- the server ---------------------------------------------------------------------------

    fn at_server(&mut self, from: usize, inc: u32, req_id: u64, req: Req) {
        let lose_reply = self.now < self.fault_end && self.rng.chance(self.sc.loss);
        let back = self.now + self.rng.up_to(nanos(self.sc.max_latency));
        let reply = match req {
            Req::Read { relist_gen } => {
                if let Some(gen) = relist_gen {
                    // The stream exists only if the client still waits for it (else its
                    // connection is closed) and the list reply reaches it.
                    let cand = &self.cands[from];
                    if !lose_reply && cand.inc == inc && cand.watch_gen == gen {
                        self.server.watches[from] = Some((inc, gen));
                        self.server.stream_floor[from] = self.server.stream_floor[from].max(back);
                    }
                }
                Reply::Ok(self.server.lease.clone())
            }
            Req::Write { expected_rv, spec } => {
                if expected_rv != self.server.lease.rv {
                    Reply::Conflict
                } else {
                    let old = std::mem::replace(
                        &mut self.server.lease,
                        LeaseRecord {
                            holder: spec.holder,
                            transitions: spec.transitions,
                            lease_duration: spec.lease_duration,
                            rv: expected_rv + 1,
                        },
                    );
                    let new = self.server.lease.clone();
                    if old.holder.is_some() && new.holder.is_some() && old.holder != new.holder {
                        self.stats.takeovers += 1;
                    }
                    self.log(None, format_args!("commit #{req_id} from c{from}: {new:?}"));
                    self.notify(&new);
                    Reply::Ok(new)
                }
            }
        };
        if lose_reply {
            self.log(None, format_args!("reply to #{req_id} lost"));
        } else {
            self.push(back, Ev::To { cand: from, inc, msg: Msg::Reply { req_id, reply } });
        }
    }

    fn notify(&mut self, rec: &LeaseRecord) {
        for c in 0..self.cands.len() {
            if let Some((inc, gen)) = self.server.watches[c] {
                let at = (self.now + self.rng.up_to(nanos(self.sc.max_watch_delay))).max(self.server.stream_floor[c]);
                self.server.stream_floor[c] = at;
                self.push(at, Ev::To { cand: c, inc, msg: Msg::Watch { gen, rec: rec.clone() } });
            }
        }
    }

    // --- faults and process life cycle --------------------------------------------------------

    fn start(&mut self, c: usize) {
        self.to(c, self.now, Msg::Reconnect);
        self.after_local(c, TICK, Msg::Tick);
    }

    fn fault(&mut self, f: Fault) {
        let n = self.cands.len();
        let c = match f.target {
            Target::Cand(i) => i % n,
            Target::Leader => match (0..n).find(|&c| self.cands[c].counts_as_leader(self.now)) {
                Some(c) => c,
                None => self.rng.up_to(n as u64 - 1) as usize,
            },
        };
        let end = (self.now + nanos(f.length)).min(self.fault_end).max(self.now);
        self.log(Some(c), format_args!("FAULT {:?} for {:.3}s", f.kind, secs(end - self.now)));
        let cand = &mut self.cands[c];
        match f.kind {
            FaultKind::Pause => {
                if !cand.down && !cand.paused {
                    cand.paused = true;
                    cand.paused_since_feed = true;
                    if cand.counts_as_leader(self.now) {
                        self.stats.paused_leaders += 1;
                    }
                    self.push(end, Ev::Resume(c));
                }
            }
            FaultKind::Crash => {
                if !cand.down {
                    self.crash(c);
                    if !self.cands[c].restart_pending {
                        self.cands[c].restart_pending = true;
                        self.push(end, Ev::Restart(c));
                    }
                }
            }
            FaultKind::Stop => {
                if !cand.down && !cand.restart_pending {
                    cand.restart_pending = true;
                    self.to(c, self.now, Msg::Sigterm);
                    self.push(end, Ev::Restart(c));
                }
            }
            FaultKind::Unhealthy => {
                cand.unhealthy += 1;
                self.to(c, self.now, Msg::HealthChanged);
                self.push(end, Ev::Healthy(c));
            }
            FaultKind::WatchReset => {
                if !cand.down {
                    let d = Duration::from_nanos(end - self.now);
                    self.break_watch(c, d);
                }
            }
            FaultKind::Partition => {
                cand.partitioned += 1;
                self.push(end, Ev::Heal(c));
            }
        }
    }

    fn resume(&mut self, c: usize) {
        let now = self.local(c);
        let cand = &mut self.cands[c];
        if !cand.paused {
            return;
        }
        cand.paused = false;
        if cand.writable && now >= cand.watchdog_at {
            cand.writable = false;
            self.stats.watchdog_fences += 1;
            self.log(Some(c), "resumed; the watchdog had fenced slapd");
        } else {
            self.log(Some(c), "resumed");
        }
        let (network, timers): (Vec<Msg>, Vec<Msg>) =
            std::mem::take(&mut self.cands[c].deferred).into_iter().partition(Msg::is_network);
        let inc = self.cands[c].inc;
        for msg in network.into_iter().chain(timers) {
            if self.cands[c].inc != inc || self.cands[c].down {
                break;
            }
            self.deliver(c, msg);
        }
    }

    fn crash(&mut self, c: usize) {
        let now = self.local(c);
        let cand = &mut self.cands[c];
        if cand.down {
            return;
        }
        if cand.writable && now < cand.watchdog_at {
            cand.orphan_until = Some(cand.orphan_until.map_or(cand.watchdog_at, |o| o.max(cand.watchdog_at)));
            self.stats.orphans += 1;
        }
        self.kill(c);
    }

    /// Graceful exit after SIGTERM.
    fn exit(&mut self, c: usize) {
        if self.cands[c].writable {
            self.failure = Some(format!("{} exited while slapd is writable", self.cands[c].id));
        }
        self.log(Some(c), "exited");
        self.kill(c);
    }

    fn kill(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        cand.down = true;
        cand.paused = false;
        cand.deferred.clear();
        cand.inc += 1;
        cand.stopping = false;
        cand.obs = None;
        cand.leading = None;
        cand.busy = Busy::Idle;
        cand.watch_ok = false;
        cand.relist = None;
        cand.watch_gen += 1;
        cand.writable = false;
        cand.paused_since_feed = false;
        self.server.watches[c] = None;
    }

    fn restart(&mut self, c: usize) {
        if !self.cands[c].down {
            self.log(Some(c), "grace period over: killed");
            self.crash(c);
        }
        self.log(Some(c), "restarted");
        let cand = &mut self.cands[c];
        cand.down = false;
        cand.restart_pending = false;
        self.start(c);
    }
}

fn simulate(sc: &Scenario) -> Result<Stats, String> {
    Sim::new(sc.clone()).run()
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// A valid timing: whole-second lease, deadline up to the bound, period up to half of it.
fn timing_strategy() -> impl Strategy<Value = Timing> {
    let random = (4u64..=20, 0u32..=1000, 0u32..=1000).prop_map(|(lease_s, dl, per)| {
        let lease = Duration::from_secs(lease_s);
        let max = Timing { lease_duration: lease, ..Timing::default() }.max_safe_renew_deadline();
        let min = Duration::from_secs(2);
        // A tenth of the draws sit exactly on the bound.
        let renew_deadline = if dl >= 900 {
            max
        } else {
            min + Duration::from_millis(((max - min).as_millis() as u64) * u64::from(dl) / 900)
        };
        let half = renew_deadline / 2;
        let renew_period = Duration::from_secs(1)
            + Duration::from_millis(((half - Duration::from_secs(1)).as_millis() as u64) * u64::from(per) / 1000);
        Timing { lease_duration: lease, renew_period, renew_deadline }
    });
    prop_oneof![1 => Just(Timing::default()), 3 => random]
}

fn drift_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![Just(-MAX_CLOCK_DRIFT), Just(MAX_CLOCK_DRIFT), Just(0.0), -MAX_CLOCK_DRIFT..=MAX_CLOCK_DRIFT]
}

/// A fault with its time and length as fractions (‰) of the fault phase and of 3 leases.
#[derive(Clone, Copy, Debug)]
struct RawFault {
    at: u32,
    target: Target,
    kind: FaultKind,
    length: u32,
}

fn fault_strategy() -> impl Strategy<Value = RawFault> {
    let target = prop_oneof![2 => Just(Target::Leader), 3 => (0usize..5).prop_map(Target::Cand)];
    let kind = prop_oneof![
        4 => Just(FaultKind::Pause),
        2 => Just(FaultKind::Partition),
        1 => Just(FaultKind::Crash),
        1 => Just(FaultKind::Stop),
        1 => Just(FaultKind::Unhealthy),
        1 => Just(FaultKind::WatchReset),
    ];
    (0u32..=1000, target, kind, 0u32..=1000).prop_map(|(at, target, kind, length)| RawFault {
        at,
        target,
        kind,
        length,
    })
}

fn scenario_strategy() -> impl Strategy<Value = Scenario> {
    (
        timing_strategy(),
        prop::collection::vec((drift_strategy(), 0u64..=1_000_000_000), 2..=5),
        0u64..=300,
        0u64..=1000,
        prop_oneof![Just(0.0), 0.0..0.3],
        prop_oneof![Just(0.0), 0.0..0.05],
        any::<u64>(),
        prop::collection::vec(fault_strategy(), 0..=24),
    )
        .prop_map(|(timing, clocks, latency_ms, watch_ms, loss, straggler, seed, raw)| {
            let fault_phase = 5 * timing.lease_duration;
            let faults = raw
                .into_iter()
                .map(|f| Fault {
                    at: fault_phase.mul_f64(f64::from(f.at) / 1000.0),
                    target: f.target,
                    kind: f.kind,
                    length: (3 * timing.lease_duration).mul_f64(f64::from(f.length) / 1000.0),
                })
                .collect();
            Scenario {
                timing,
                clocks: clocks
                    .into_iter()
                    .map(|(drift, offset_ms)| ClockSpec { drift, offset: Duration::from_millis(offset_ms) })
                    .collect(),
                max_latency: Duration::from_millis(latency_ms),
                max_watch_delay: Duration::from_millis(watch_ms),
                loss,
                straggler,
                fault_phase,
                faults,
                seed,
                cap_leader_timeouts: true,
                fence: FencePolicy::Random,
            }
        })
}

/// `cases`, unless `PROPTEST_CASES` asks for another number (e.g. a long soak run).
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    Config {
        cases,
        // Failures print the whole scenario (it replays exactly); keep the source tree clean.
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

proptest! {
    #![proptest_config(config(256))]

    /// Invariant 1/2 under random faults, and liveness once they stop.
    #[test]
    fn at_most_one_leader_and_a_leader_after_faults(sc in scenario_strategy()) {
        prop_assert_eq!(sc.timing.validate(), Ok(()));
        if let Err(report) = simulate(&sc) {
            prop_assert!(false, "{}", report);
        }
    }
}

/// The random runs actually reach the dangerous paths (else the property is vacuous).
#[test]
fn random_runs_exercise_takeovers_pauses_and_fences() {
    let mut runner = TestRunner::new_with_rng(config(48), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = scenario_strategy();
    let mut total = Stats::default();
    for _ in 0..48 {
        let sc = strategy.new_tree(&mut runner).expect("a scenario").current();
        match simulate(&sc) {
            Ok(stats) => total.add(&stats),
            Err(report) => panic!("{report}\nscenario: {sc:?}"),
        }
    }
    println!("{total:#?}");
    assert!(total.takeovers >= 10, "{total:?}");
    assert!(total.demoted_deadline >= 5, "{total:?}");
    assert!(total.released >= 5, "{total:?}");
    assert!(total.conflicts >= 10, "{total:?}");
    assert!(total.paused_leaders >= 5, "{total:?}");
    assert!(total.watchdog_fences >= 1, "{total:?}");
    assert!(total.orphans >= 1, "{total:?}");
}

fn pause_leader(at_s: u64, for_s: u64) -> Fault {
    Fault {
        at: Duration::from_secs(at_s),
        target: Target::Leader,
        kind: FaultKind::Pause,
        length: Duration::from_secs(for_s),
    }
}

/// Keep candidate 1 out of the first election so candidate 0 (with its clock) leads.
fn let_first_lead() -> Fault {
    Fault { at: Duration::ZERO, target: Target::Cand(1), kind: FaultKind::Unhealthy, length: Duration::from_secs(1) }
}

/// The checker can fail: a renew deadline too close to the lease duration (rejected by
/// `validate`) lets a follower take over while the paused leader's slapd is still writable.
#[test]
fn checker_finds_overlap_with_unsafe_renew_deadline() {
    let timing = Timing {
        lease_duration: Duration::from_secs(8),
        renew_period: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(7500),
    };
    assert!(timing.renew_deadline > timing.max_safe_renew_deadline());
    assert!(timing.validate().is_err());
    let sc =
        Scenario::scripted(timing, &[0.0, 0.0], vec![let_first_lead(), pause_leader(20, 20)], Duration::from_secs(40));
    let report = simulate(&sc).expect_err("an unsafe timing must produce two leaders");
    assert!(report.contains("SAFETY VIOLATION"), "{report}");

    // The same scenario with the default timing is safe.
    let sc = Scenario { timing: Timing::default(), ..sc };
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
}

/// Contract item 4: a leader whose renews are lost keeps retrying with 1.5 s timeouts; if the
/// last retry is not cut off at the renew deadline, it demotes up to 1.5 s late.
#[test]
fn uncapped_leader_call_timeout_overshoots_the_deadline() {
    let timing = Timing {
        lease_duration: Duration::from_secs(8),
        renew_period: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(6800),
    };
    assert_eq!(timing.validate(), Ok(()));
    let partition = Fault {
        at: Duration::from_secs(20),
        target: Target::Leader,
        kind: FaultKind::Partition,
        length: Duration::from_secs(20),
    };
    let sc = Scenario::scripted(timing, &[0.0, 0.0], vec![let_first_lead(), partition], Duration::from_secs(40));
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
    let sc = Scenario { cap_leader_timeouts: false, ..sc };
    let report = simulate(&sc).expect_err("an uncapped renew timeout must overshoot the deadline");
    assert!(report.contains("SAFETY VIOLATION"), "{report}");
}

/// Extreme drift (leader slow, follower fast), zero latency, the leader paused right after a
/// renew, and the renew deadline exactly at the bound the fence budget needs.
fn boundary_scenario(renew_deadline: Duration) -> Scenario {
    let timing =
        Timing { lease_duration: Duration::from_secs(8), renew_period: Duration::from_secs(2), renew_deadline };
    assert_eq!(timing.validate(), Ok(()));
    Scenario::scripted(
        timing,
        &[-MAX_CLOCK_DRIFT, MAX_CLOCK_DRIFT],
        vec![let_first_lead(), pause_leader(20, 20)],
        Duration::from_secs(40),
    )
}

/// Regression: `max_safe_renew_deadline` once was (L·(1−ρ) − F)/(1+ρ) (6.851 s for an 8 s
/// lease), not scaling the fence budget by the drift: the watchdog fenced a slow clock's leader
/// at (D + F)/(1−ρ) = 7.9308 s real after its renew while the fast follower took over at
/// L/(1+ρ) = 7.9208 s: 10 ms of two writable primaries. Now D ≤ L·(1−ρ)/(1+ρ) − F (6.8416 s).
#[test]
fn boundary_renew_deadline_is_safe_under_extreme_drift() {
    let sc = boundary_scenario(Timing::default().max_safe_renew_deadline());
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
}

//! The model's time, randomness and scenarios: everything a run depends on.

use super::*;

/// Client-side timeout of every API call.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Periodic re-decide (health checks) while waiting.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// Back-off before re-establishing a broken watch.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// A run that needs more events than this is livelocked.
pub(crate) const MAX_EVENTS: u64 = 300_000;
/// Trace lines kept for failure reports.
pub(crate) const TRACE_LEN: usize = 100;

/// Real (simulated) time in nanoseconds.
pub(crate) type Nanos = u64;

pub(crate) fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).expect("simulated times fit in u64")
}

pub(crate) fn secs(t: Nanos) -> f64 {
    t as f64 / 1e9
}

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// splitmix64.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub(crate) fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next() % bound,
            None => self.next(),
        }
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ClockSpec {
    /// Rate is `1 + drift` of real time.
    pub(crate) drift: f64,
    /// Reading at real time 0.
    pub(crate) offset: Duration,
}

impl ClockSpec {
    pub(crate) fn local(&self, real: Nanos) -> Moment {
        let elapsed = (real as f64 * (1.0 + self.drift)).floor() as u64;
        Moment::from_origin(self.offset + Duration::from_nanos(elapsed))
    }

    /// The first real instant (not before `not_before`) at which this clock reads ≥ `m`.
    pub(crate) fn real_at(&self, m: Moment, not_before: Nanos) -> Nanos {
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
pub(crate) enum Target {
    Cand(usize),
    /// Whoever counts as leader when the fault starts (else a random candidate).
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
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
    /// slapd holds `olcReadOnly` changes for `length`, at most until the fence budget after
    /// its leader's renew deadline (the bound `Timing::validate` rests on).
    FenceStall,
    /// The elector's whole container dies (kill -9 of PID 1, OOM); restarted after `length`.
    ContainerKill,
    /// The pod's next label write on itself is delivered `length` late.
    LateLabelWrite,
    /// The fence guard's container dies and restarts (fail-closed); reconnected after `length`.
    GuardKill,
    /// An operator asks for a switchover to the pod (length unused).
    Switchover,
    /// Replication into the pod's slapd is cut for `length`.
    ReplicationCut,
    /// The Lease is deleted and created empty (target and length unused).
    LeaseRecreated,
    /// etcd is restored from a backup: the Lease's resourceVersion goes back (content kept).
    EtcdRestored,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    pub(crate) at: Duration,
    pub(crate) target: Target,
    pub(crate) kind: FaultKind,
    pub(crate) length: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FencePolicy {
    /// Fencing takes a random time in `0..=FENCE_BUDGET`.
    Random,
    /// Fencing always takes the whole budget (worst case, for scripted scenarios).
    Max,
}

#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) timing: Timing,
    pub(crate) clocks: Vec<ClockSpec>,
    pub(crate) max_latency: Duration,
    pub(crate) max_watch_delay: Duration,
    /// Loss probability of each request and each reply during the fault phase.
    pub(crate) loss: f64,
    /// Probability that a request straggles (fault phase only).
    pub(crate) straggler: f64,
    /// Faults start (and end) within this time; afterwards the system is fault-free.
    pub(crate) fault_phase: Duration,
    pub(crate) faults: Vec<Fault>,
    pub(crate) seed: u64,
    /// Runtime contract item 4; `false` only to show why it is needed.
    pub(crate) cap_leader_timeouts: bool,
    pub(crate) fence: FencePolicy,
    /// `--audit-peers` configured: after an expiry a standby reads the old leader's current
    /// contextCSN (else `OldLeader::NotConfigured`: judged against the published one).
    pub(crate) audit_peers: bool,
    /// Shortest one-way network delay (scripted slow API servers).
    pub(crate) min_latency: Duration,
    /// Longest replication delay of a write to a peer.
    pub(crate) max_rep_lag: Duration,
    /// Longest answer time of the fence keeper's read-back of slapd's fence.
    pub(crate) keeper_verify: Duration,
    /// Old or current runtime policies (issue 15).
    pub(crate) variants: Variants,
}

impl Scenario {
    /// A fault-free, zero-latency scenario with worst-case fencing, for scripted tests.
    pub(crate) fn scripted(timing: Timing, drifts: &[f64], faults: Vec<Fault>, fault_phase: Duration) -> Self {
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
            keeper_verify: Duration::from_millis(100),
            max_rep_lag: Duration::ZERO,
            min_latency: Duration::ZERO,
            audit_peers: false,
            variants: Variants::current(),
        }
    }
}

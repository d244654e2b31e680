//! proptest strategies for timings, drifts, faults and whole scenarios.

use super::*;

/// A valid timing: whole-second lease, deadline up to the bound, period up to half of it.
pub(crate) fn timing_strategy() -> impl Strategy<Value = Timing> {
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

pub(crate) fn drift_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![Just(-MAX_CLOCK_DRIFT), Just(MAX_CLOCK_DRIFT), Just(0.0), -MAX_CLOCK_DRIFT..=MAX_CLOCK_DRIFT]
}

/// A fault with its time and length as fractions (‰) of the fault phase and of 3 leases.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawFault {
    pub(crate) at: u32,
    pub(crate) target: Target,
    pub(crate) kind: FaultKind,
    pub(crate) length: u32,
}

pub(crate) fn fault_strategy() -> impl Strategy<Value = RawFault> {
    let target = prop_oneof![2 => Just(Target::Leader), 3 => (0usize..5).prop_map(Target::Cand)];
    let kind = prop_oneof![
        4 => Just(FaultKind::Pause),
        2 => Just(FaultKind::Partition),
        1 => Just(FaultKind::Crash),
        1 => Just(FaultKind::Stop),
        1 => Just(FaultKind::Unhealthy),
        1 => Just(FaultKind::WatchReset),
        1 => Just(FaultKind::FenceStall),
        1 => Just(FaultKind::ContainerKill),
        1 => Just(FaultKind::ReplicationCut),
        1 => Just(FaultKind::LateLabelWrite),
        1 => Just(FaultKind::Switchover),
        1 => Just(FaultKind::GuardKill),
        1 => Just(FaultKind::LeaseRecreated),
        1 => Just(FaultKind::EtcdRestored),
    ];
    (0u32..=1000, target, kind, 0u32..=1000).prop_map(|(at, target, kind, length)| RawFault {
        at,
        target,
        kind,
        length,
    })
}

/// Pairs of faults that the paths need together, rarely drawn independently:
/// a fence stall then a release or a stop of the leader, a replication cut then a pause of
/// the leader. (at ‰ of the fault phase, which pair, length ‰ of 3 leases, cut pod.)
pub(crate) fn compound_strategy() -> impl Strategy<Value = (u32, u8, u32, usize)> {
    (0u32..=1000, 0u8..3, 0u32..=1000, 0usize..5)
}

fn compound(at: Duration, which: u8, length: Duration, pod: usize) -> [Fault; 2] {
    let first = match which {
        0 | 1 => Fault { at, target: Target::Leader, kind: FaultKind::FenceStall, length },
        _ => Fault { at, target: Target::Cand(pod), kind: FaultKind::ReplicationCut, length: 3 * length },
    };
    let kind = [FaultKind::Unhealthy, FaultKind::Stop, FaultKind::Pause][usize::from(which.min(2))];
    [first, Fault { at: at + Duration::from_millis(100), target: Target::Leader, kind, length }]
}

pub(crate) fn scenario_strategy() -> impl Strategy<Value = Scenario> {
    (
        timing_strategy(),
        prop::collection::vec((drift_strategy(), 0u64..=1_000_000_000), 2..=5),
        0u64..=300,
        0u64..=1000,
        prop_oneof![Just(0.0), 0.0..0.3],
        prop_oneof![Just(0.0), 0.0..0.05],
        any::<u64>(),
        prop::collection::vec(fault_strategy(), 0..=24),
        (0u64..=500, any::<bool>(), prop::collection::vec(compound_strategy(), 0..=2), 0u64..=800),
    )
        .prop_map(
            |(
                timing,
                clocks,
                latency_ms,
                watch_ms,
                loss,
                straggler,
                seed,
                raw,
                (rep_ms, audit_peers, pairs, verify_ms),
            )| {
                let fault_phase = 5 * timing.lease_duration;
                let pairs = pairs.into_iter().flat_map(|(at, which, length, pod)| {
                    let at = fault_phase.mul_f64(f64::from(at) / 1000.0);
                    compound(at, which, (3 * timing.lease_duration).mul_f64(f64::from(length) / 1000.0), pod)
                });
                let faults = raw
                    .into_iter()
                    .map(|f| Fault {
                        at: fault_phase.mul_f64(f64::from(f.at) / 1000.0),
                        target: f.target,
                        kind: f.kind,
                        length: (3 * timing.lease_duration).mul_f64(f64::from(f.length) / 1000.0),
                    })
                    .chain(pairs)
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
                    keeper_verify: Duration::from_millis(verify_ms),
                    max_rep_lag: Duration::from_millis(rep_ms),
                    min_latency: Duration::ZERO,
                    audit_peers,
                    variants: Variants::current(),
                }
            },
        )
}

/// `cases`, unless `PROPTEST_CASES` asks for another number (e.g. a long soak run).
pub(crate) fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    Config {
        cases,
        // Failures print the whole scenario (it replays exactly); keep the source tree clean.
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

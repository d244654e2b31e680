//! Issue 15, items 1–8: for each old behaviour the model can express, a scripted scenario in
//! which the simulation FINDS the violation with the old variant and none with the current
//! runtime. (Items it cannot express are listed in `main.rs`.)

use super::*;

fn fault(at_ms: u64, c: usize, kind: FaultKind, for_ms: u64) -> Fault {
    f(at_ms, Target::Cand(c), kind, for_ms)
}

/// A fault as the random runs print it (times in ms), to replay one.
fn f(at_ms: u64, target: Target, kind: FaultKind, for_ms: u64) -> Fault {
    Fault { at: Duration::from_millis(at_ms), target, kind, length: Duration::from_millis(for_ms) }
}

fn clock(drift: f64) -> ClockSpec {
    ClockSpec { drift, offset: Duration::ZERO }
}

/// Candidate 0 leads from the start (candidate 1 is kept out of the first election).
pub(crate) fn scripted(faults: Vec<Fault>) -> Scenario {
    let mut all = vec![let_first_lead()];
    all.extend(faults);
    Scenario::scripted(Timing::default(), &[0.0, 0.0], all, Duration::from_secs(40))
}

/// The old variant's run fails with `expect` in its report; the current one passes.
pub(crate) fn found_with_old_only(sc: &Scenario, old: Variants, expect: &str) {
    assert_ne!(old, Variants::current());
    let report = simulate(&Scenario { variants: old, ..sc.clone() }).expect_err("the old variant must fail");
    assert!(report.contains(expect), "expected {expect:?}:\n{report}");
    if std::env::var_os("SIM_SHOW").is_some() {
        println!("{report}");
    }
    simulate(sc).unwrap_or_else(|r| panic!("the current runtime must pass:\n{r}"));
}

/// Like `found_with_old_only` over `seeds`: the old variant fails for one of them at least
/// (the report of the first is checked), the current one passes for every one.
pub(crate) fn found_with_old_only_over_seeds(sc: &Scenario, seeds: std::ops::Range<u64>, old: Variants, expect: &str) {
    let runs: Vec<Scenario> = seeds.map(|seed| Scenario { seed, ..sc.clone() }).collect();
    let failed = runs.iter().find_map(|sc| simulate(&Scenario { variants: old, ..sc.clone() }).err());
    let report = failed.expect("the old variant must fail for some seed");
    assert!(report.contains(expect), "expected {expect:?}:\n{report}");
    for sc in &runs {
        simulate(sc).unwrap_or_else(|r| panic!("the current runtime must pass (seed {}):\n{r}", sc.seed));
    }
}

/// Item 1: slapd holds the fence (cn=config change queued behind a syncrepl consumer), then
/// the leader turns unhealthy and releases. Old: released after the fence budget without
/// a confirmed fence; the standby acquires at once while the old slapd still takes writes.
#[test]
fn item1_release_without_a_confirmed_fence_is_found() {
    let sc =
        scripted(vec![fault(20_050, 0, FaultKind::FenceStall, 5_000), fault(20_100, 0, FaultKind::Unhealthy, 15_000)]);
    let old = Variants { release: ReleaseAfter::FenceBudget, ..Variants::current() };
    found_with_old_only(&sc, old, "SAFETY VIOLATION");
}

/// Item 1, hand-over: slapd holds the fence, then an operator asks for a switchover to
/// candidate 1 (judged by the real `switchover::verdict`). Old: the Lease is handed over after
/// the fence budget without a confirmed fence, and the target takes over at once.
#[test]
fn item1_hand_over_without_a_confirmed_fence_is_found() {
    let sc = scripted(vec![fault(20_050, 0, FaultKind::FenceStall, 5_000), fault(20_100, 1, FaultKind::Switchover, 0)]);
    let old = Variants { release: ReleaseAfter::FenceBudget, ..Variants::current() };
    found_with_old_only(&sc, old, "SAFETY VIOLATION");
}

/// Item 2: the leader's elector container is killed (its restart takes 10 s,
/// CrashLoopBackOff). Old: the watchdog died with it; slapd stays writable until the restart
/// while the standby takes over after the lease. Current: the guard fences on EOF.
#[test]
fn item2_watchdog_dying_with_its_container_is_found() {
    let sc = scripted(vec![fault(20_100, 0, FaultKind::ContainerKill, 10_000)]);
    let old = Variants { watchdog: Watchdog::SameContainer, ..Variants::current() };
    found_with_old_only(&sc, old, "SAFETY VIOLATION");
}

/// Item 3: the leader's elector is paused while its fence keeper waits for slapd's read-back;
/// the watchdog fences at the deadline and the standby takes over. Old: on resume the keeper
/// repairs the "drifted" fence to the role it decided before the read: writable again.
#[test]
fn item3_keeper_deciding_before_its_read_back_is_found() {
    let sc = scripted(vec![fault(20_050, 0, FaultKind::Pause, 20_000)]);
    let old = Variants { keeper: KeeperRole::BeforeVerify, ..Variants::current() };
    found_with_old_only(&sc, old, "SAFETY VIOLATION");
}

/// Item 4: replication into the standby is cut right after the leader's renew at 21 s, then
/// the leader's elector freezes; its slapd acknowledges writes until the watchdog fences it.
/// Old: at expiry the standby holds the contextCSN published at that renew and promotes
/// without the later writes. Current: it reads the old leader's current contextCSN (its slapd
/// stays reachable) and waits until replication brought it.
#[test]
fn item4_catch_up_against_the_published_csn_is_found() {
    let sc = Scenario {
        audit_peers: true,
        ..scripted(vec![
            fault(21_010, 1, FaultKind::ReplicationCut, 15_000),
            fault(21_050, 0, FaultKind::Pause, 18_000),
        ])
    };
    let old = Variants { catch_up: CatchUp::Published, ..Variants::current() };
    found_with_old_only(&sc, old, "LOST WRITES");
}

/// Item 5: the leader's pod is deleted (recreated 10 s later); writes take up to 300 ms to
/// replicate. Old: slapd stops at once, in parallel with the hand-over; the final
/// contextCSN read fails, the stale one is published, the standby promotes without the
/// writes slapd acknowledged last. Current: slapd's preStop waits for the hand-over.
#[test]
fn item5_slapd_stopping_in_parallel_with_the_hand_over_is_found() {
    let sc = Scenario {
        max_rep_lag: Duration::from_millis(300),
        ..scripted(vec![fault(20_550, 0, FaultKind::Stop, 10_000)])
    };
    let old = Variants { deletion: Deletion::InParallel, ..Variants::current() };
    found_with_old_only_over_seeds(&sc, 0..16, old, "LOST WRITES");
}

/// Item 6: candidate 0 takes office in term 3 from a pod labelled standby under term 2; its
/// own leader label write is delivered late (20 s) and it freezes before it retries.
/// Candidate 1 takes term 4. Old: it rewrites only pods labelled leader, so the late write
/// (testing term 2) still lands: two pods labelled leader. Current: every older term moves.
#[test]
fn item6_a_late_label_write_leaving_two_leader_labels_is_found() {
    let faults = vec![
        fault(10_000, 0, FaultKind::Pause, 12_000), // term 2 to candidate 1
        fault(23_000, 1, FaultKind::Pause, 15_000), // term 3 to candidate 0
        fault(23_000, 0, FaultKind::LateLabelWrite, 20_000),
        fault(31_100, 0, FaultKind::Pause, 15_000), // term 4 to candidate 1
    ];
    let sc = Scenario { fault_phase: Duration::from_secs(60), ..scripted(faults) };
    let old = Variants { demote: Demote::LeaderLabelled, ..Variants::current() };
    found_with_old_only(&sc, old, "LABELS");
}

/// Item 7: a slow API server (0.7 s each way: four label steps take 5.6 s, longer than the
/// renew deadline). Old: no renew while taking office; the leader misses its deadline every
/// term and nobody leads. Current: the renewals go on beside the label writes.
#[test]
fn item7_taking_office_starving_the_renewals_is_found() {
    let slow = Duration::from_millis(700);
    let sc = Scenario { min_latency: slow, max_latency: slow, ..scripted(vec![]) };
    let old = Variants { office: Office::Inline, ..Variants::current() };
    found_with_old_only(&sc, old, "LIVENESS");
}

/// Item 8: the Lease is deleted and recreated while held. Old: a follower takes the empty
/// Lease at once while the leader is still fencing. Current: `lease::observe_after` counts it
/// as held by the previous holder for a lease duration.
#[test]
fn item8_a_recreated_lease_taken_at_once_is_found() {
    let sc = scripted(vec![fault(20_100, 0, FaultKind::LeaseRecreated, 0)]);
    let old = Variants { adopt: Adopt::NewerOnly, ..Variants::current() };
    found_with_old_only(&sc, old, "SAFETY VIOLATION");
}

/// Item 8: etcd restored from a backup (the Lease's resourceVersion goes back). Old: answers
/// with a lower resourceVersion are ignored, every CAS write fails with 409 for ever.
/// Current: `lease::adopts` takes the API server's answers.
#[test]
fn item8_a_restored_etcd_wedging_the_election_is_found() {
    let sc = scripted(vec![fault(20_100, 0, FaultKind::EtcdRestored, 0)]);
    let old = Variants { adopt: Adopt::NewerOnly, ..Variants::current() };
    found_with_old_only(&sc, old, "livelock");
}

/// Found by this simulation in the code after the first item-8 fix: `lease::observe_after`
/// keeps a recreated Lease held only for an elector that saw it held before; one that started
/// meanwhile took the empty Lease at once while the deposed leader was still fencing.
/// Current: `decide` waits a lease duration on a Lease never held (no term). Candidate 1
/// restarts just after the Lease was recreated under candidate 0.
#[test]
fn a_recreated_lease_is_not_free_to_a_restarted_elector() {
    let sc = scripted(vec![fault(19_000, 1, FaultKind::Crash, 1_100), fault(20_500, 0, FaultKind::LeaseRecreated, 0)]);
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
}

/// A recreated Lease restarts its terms at 0 while the pods keep the old ones: after two
/// hand-overs (term 3) the next leader took term 1, its label writes were refused as stale,
/// and nobody took office again (liveness; found by this simulation). Current: a leader whose
/// pods carry a newer term releases and takes a term above it (`LabelError::NewerTerm`), and
/// an elector that saw the Lease before it was recreated acquires above that term at once.
#[test]
fn after_a_recreated_lease_the_terms_go_on_and_someone_takes_office() {
    let sc = scripted(vec![
        fault(10_000, 0, FaultKind::Stop, 1_000),
        fault(15_000, 1, FaultKind::Stop, 1_000),
        fault(20_100, 0, FaultKind::LeaseRecreated, 0),
    ]);
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
}

/// A recreated Lease publishes no contextCSN: a switchover handed the Lease (with the old
/// leader's final contextCSN) to a standby whose replication was cut, the Lease was then
/// recreated, and the standby, judged against the empty one, promoted without the writes it
/// lacked (LOST WRITES; the random runs found it in CI: this is that run, seed and faults as
/// printed). Current: an elector that saw the Lease before it was recreated keeps its
/// published contextCSN as a floor (`csn_floor`) and catches up with it first.
#[test]
fn after_a_recreated_lease_a_follower_still_catches_up_with_what_the_old_one_published() {
    let ms = Duration::from_millis;
    let sc = Scenario {
        timing: Timing::default(),
        clocks: vec![clock(-0.01), clock(-0.01), clock(-0.01), clock(0.00510763801755615)],
        max_latency: ms(148),
        max_watch_delay: ms(674),
        loss: 0.0,
        straggler: 0.0,
        fault_phase: Duration::from_secs(40),
        faults: vec![
            f(160, Target::Leader, FaultKind::Pause, 456),
            f(0, Target::Leader, FaultKind::Switchover, 0),
            f(22_200, Target::Cand(1), FaultKind::Switchover, 0),
            f(21_920, Target::Leader, FaultKind::Pause, 2_832),
            f(25_720, Target::Leader, FaultKind::LeaseRecreated, 0),
            f(8_840, Target::Cand(3), FaultKind::Partition, 13_392),
            f(21_840, Target::Cand(1), FaultKind::ReplicationCut, 5_544),
            f(21_940, Target::Leader, FaultKind::Pause, 1_848),
        ],
        seed: 2569529416047876973,
        cap_leader_timeouts: true,
        fence: FencePolicy::Random,
        audit_peers: false,
        min_latency: Duration::ZERO,
        max_rep_lag: Duration::ZERO,
        keeper_verify: Duration::ZERO,
        variants: Variants::current(),
    };
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
}

/// The random scenarios find the old variants too (not only the scripted ones above), and the
/// current runtime passes every one of them. Required: items 1, 2, 4, 5 and 8, which the
/// random mix finds several times; printed only: item 3 (a pause inside the keeper's read-back
/// is rare), 6 (a deposed term's late label write landing after the next term took office)
/// and 7 (an API slower than the random latencies), which their scripted scenarios show.
#[test]
fn random_runs_find_the_old_variants() {
    const RUNS: usize = 160;
    let mut runner = TestRunner::new_with_rng(config(1), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = scenario_strategy();
    let scenarios: Vec<Scenario> =
        (0..RUNS).map(|_| strategy.new_tree(&mut runner).expect("a scenario").current()).collect();
    for sc in &scenarios {
        simulate(sc).unwrap_or_else(|r| panic!("{r}\nscenario: {sc:?}"));
    }
    for (item, old) in Variants::old_ones() {
        let failures: Vec<String> =
            scenarios.iter().filter_map(|sc| simulate(&Scenario { variants: old, ..sc.clone() }).err()).collect();
        let first = failures.first().and_then(|r| r.lines().next()).unwrap_or("-");
        println!("item {item}: {} of {RUNS} random runs fail; first: {first}", failures.len());
        let required = ['1', '2', '4', '5', '8'].iter().any(|n| item.starts_with(*n));
        assert!(!failures.is_empty() || !required, "item {item}: not found by the random runs");
    }
}

/// A recreated Lease counts as held by the holder seen before it, but that view may be stale:
/// candidate 0 led, was cut off and deposed (fenced), candidate 1 took the Lease, and the Lease
/// was recreated as the partition healed; candidate 0, which never saw candidate 1 hold it,
/// read the recreated Lease as still its own and retook it at once while candidate 1 was
/// fencing (SAFETY VIOLATION; the random runs found it in CI, seed 2561613697934575301).
/// Current: an inherited holder is never "this pod's earlier elector", everyone waits a lease
/// duration.
#[test]
fn a_recreated_lease_is_not_retaken_at_once_by_a_deposed_holder_with_a_stale_view() {
    let mut sc =
        scripted(vec![fault(20_000, 0, FaultKind::Partition, 9_000), fault(29_001, 1, FaultKind::LeaseRecreated, 0)]);
    sc.fence = FencePolicy::Max;
    for seed in 0..8 {
        simulate(&Scenario { seed, ..sc.clone() }).unwrap_or_else(|r| panic!("{r}"));
    }
}

/// The model, not the runtime: a leader stepped down for a switchover while slapd stalled its
/// fence, then (its Lease still its own) sent an acquisition that a partition swallowed. The
/// model dropped the stalled fence when it landed during that call, as if a newer term's
/// unfence were queued behind it, and kept slapd writable while another pod took over
/// (SAFETY VIOLATION in a 3000-case soak; this is that run, seed and faults as printed). The
/// runtime's fence keeper wants standby until a new term takes office, so the fence lands.
#[test]
fn a_stalled_fence_landing_while_an_acquisition_is_in_flight_still_fences() {
    let ms = Duration::from_millis;
    use FaultKind::*;
    use Target::*;
    let sc = Scenario {
        timing: Timing { lease_duration: ms(4_000), renew_period: ms(1_212), renew_deadline: ms(2_652) },
        clocks: vec![clock(0.01), clock(-0.01), clock(-0.01), clock(0.0)],
        max_latency: ms(23),
        max_watch_delay: ms(484),
        loss: 0.0,
        straggler: 0.0,
        fault_phase: ms(20_000),
        faults: vec![
            f(11_120, Leader, Switchover, 0),
            f(5_600, Cand(1), Crash, 3_120),
            f(2_360, Cand(0), WatchReset, 8_688),
            f(8_300, Leader, Unhealthy, 1_260),
            f(9_220, Cand(2), Pause, 0),
            f(10_880, Leader, GuardKill, 336),
            f(7_620, Leader, Switchover, 0),
            f(11_400, Leader, Partition, 6_996),
            f(9_120, Leader, FenceStall, 0),
            f(9_220, Leader, Unhealthy, 0),
            f(10_920, Leader, FenceStall, 1_476),
            f(11_020, Leader, Stop, 1_476),
        ],
        seed: 15467290007124446259,
        cap_leader_timeouts: true,
        fence: FencePolicy::Random,
        audit_peers: true,
        min_latency: Duration::ZERO,
        max_rep_lag: ms(144),
        keeper_verify: Duration::ZERO,
        variants: Variants::current(),
    };
    simulate(&sc).unwrap_or_else(|r| panic!("{r}"));
}

/// A recreated Lease that no living elector saw held: candidate 0 leads and acknowledges
/// writes that candidate 1 (replication cut) lacks; candidate 0's elector dies (its guard
/// fences slapd), the Lease is recreated, and candidate 1's elector restarts after that, so
/// nobody knows the Lease was ever held. Old: candidate 1 took the empty Lease against no
/// published contextCSN and promoted without those writes (LOST WRITES; the random runs found
/// this in a soak). Current: its pod's term annotation tells it terms came before
/// (`term_floor`), so `catch_up::previous` is unknown: with `--audit-peers` it waits until it
/// holds what candidate 0's slapd holds; without, the promotion is recorded as uncovered.
#[test]
fn a_lease_recreated_unseen_is_not_taken_without_the_writes_of_the_terms_before_it() {
    let faults = vec![
        fault(5_000, 1, FaultKind::ReplicationCut, 40_000),
        fault(20_000, 0, FaultKind::ContainerKill, 30_000),
        fault(20_500, 0, FaultKind::LeaseRecreated, 0),
        fault(21_000, 1, FaultKind::ContainerKill, 500),
    ];
    for audit_peers in [true, false] {
        let sc = Scenario { audit_peers, ..scripted(faults.clone()) };
        let stats = simulate(&sc).unwrap_or_else(|r| panic!("audit_peers {audit_peers}: {r}"));
        assert_eq!(stats.promotions_uncovered > 0, !audit_peers, "audit_peers {audit_peers}: {stats:?}");
    }
}

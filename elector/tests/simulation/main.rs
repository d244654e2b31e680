//! Deterministic discrete-event simulation of the election: the real pure cores (`decide`,
//! `catch_up::gate`, `labels::{needs_demotion, role_patch}`, `lease::{adopts, observe_after,
//! published_csn}`, `switchover::{step, verdict}`, `WantedFence::role`, the watchdog's `Warden`)
//! inside a model of the runtime around them: several candidates with drifting clocks, a
//! compare-and-swap API server with pods, a lossy network, watches, slapd with its write
//! fence, acknowledged writes and Mirror-Mode replication, and faults. proptest draws the scenarios; a `Scenario` (printed
//! on failure, with its SplitMix `seed`) replays exactly.
//!
//! # Properties (`properties.rs`)
//! - At every event: at most one slapd may accept writes at the same REAL instant.
//! - When a slapd becomes writable: it holds every write that a reachable slapd acknowledged,
//!   unless `catch_up::gate` recorded the promotion as uncovered (0 acknowledged writes lost
//!   while the old leader's slapd stays reachable).
//! - Once all faults stop: some candidate leads within a lease duration plus a few renew
//!   periods, and keeps leading.
//! - At the end, after the last label write settled: at most one pod labelled leader.
//!
//! # Runtime contract (what the real runtime must do; this model does exactly that)
//! 1. Clock: every `Moment` given to `decide` is the candidate's own `CLOCK_BOOTTIME`. Clocks of
//!    different nodes run at rate `1 + δ` of real time, `|δ| ≤ MAX_CLOCK_DRIFT`, with arbitrary
//!    offsets; nothing is ever compared across nodes.
//! 2. Observing the Lease: a watch delivers every committed change, in order, after a delay. A
//!    watch can break (reset, partition, etcd restore); the runtime then re-reads the Lease
//!    (GET) and watches again from there. A version is taken by `lease::adopts` (answers of the
//!    API server always, watch events only when newer) and observed by `lease::observe_after`
//!    (a recreated empty Lease stays held by the previous holder); `seen_change_at = local now`.
//!    A candidate starts with no observation and reads first (after fencing slapd).
//! 3. Deciding: `decide()` runs whenever the runtime is idle and something happened: a change was
//!    observed, the `Wait(Some(t))` timer fired (`t` on the local clock), health or stop state
//!    changed, a call finished, or a periodic 1 s tick. Never while a Lease call or fence is
//!    pending. A follower is eligible only when healthy and `catch_up::gate` lets it promote.
//! 4. Acquire / Renew: record `sent_at = local now` BEFORE sending a compare-and-swap update of
//!    the observed object (carrying the contextCSN the health check read last). Success:
//!    `leading = Some(Leading { term: transitions, renewed_at: sent_at })`. An acquisition then
//!    takes office (`office.rs`): other pods demoted, itself labelled leader; only then, and
//!    only while the local clock is before `sent_at + renew_deadline`, is slapd made writable
//!    and the watchdog armed (fence at `sent_at + renew_deadline + FENCE_BUDGET`); a renew in
//!    office feeds both. 409: GET the Lease, then decide. Timeout / loss: decide again. Every
//!    call has a 1.5 s client timeout, capped at the renew deadline while leading: decide never
//!    gets a chance to demote while the runtime is blocked in a call, so an uncapped renew lost
//!    right before the deadline would keep a deposed leader writable for up to 1.5 s more (see
//!    `uncapped_leader_call_timeout_overshoots_the_deadline`).
//! 5. Demote: `leading = None` at once, then fence slapd, waiting at most `FENCE_BUDGET` on the
//!    local clock for the read-back; the pod counts as leader until slapd applied the fence.
//! 6. Release (and a switchover's hand-over, `holder = target`): like Demote; once the fence is
//!    confirmed, a CAS write `holder = None` (with the final contextCSN read after the fence)
//!    against the resourceVersion of the observation `decide` saw, never a fresher one (that
//!    may be a new holder's). An unconfirmed fence keeps the Lease (it expires) and the
//!    watchdog armed; the release follows the late confirmation.
//! 7. Stop (pod deletion): `stopping = true`; the process exits once it is no longer leading and
//!    its fence is confirmed; slapd stops once another pod holds the Lease (its preStop hook),
//!    at most 15 s later. The pod is recreated later; not exited by then, it is killed.
//!
//! # Fault model
//! - Network: one-way delays `min_latency..=max_latency`; during the fault phase every request
//!   and every reply is lost with probability `loss` (request lost: no effect; reply lost: effect
//!   applied, client times out) and a request may straggle for up to 3 lease durations (it still
//!   arrives before the fault phase ends). Partitions drop all traffic of one pod (API and
//!   replication) and break its watch. A label write on its own pod can arrive late.
//! - Pause (SIGSTOP of the elector only, up to 3 lease durations): no steps; replies, watch events,
//!   the fence keeper's read-back and timers are queued and handled on resume (network first:
//!   tokio's `timeout` polls the inner future before its timer). The watchdog is NOT paused.
//! - Crash (SIGKILL of the elector) and restart as a fresh incarnation on the same node (same
//!   clock); slapd keeps whatever mode it had until the watchdog fences it. Container kill: the
//!   fence guard fences on the connection's EOF; the elector restarts after the given time.
//!   Guard kill: the guard restarts fail-closed (fences); the elector, reading EOF, steps down
//!   without releasing and is not eligible until it is connected again.
//! - Fence stall: slapd does not apply `olcReadOnly` for a while, at most until the fence budget
//!   after its leader's renew deadline (the bound `Timing::validate` rests on; the syncrepl
//!   `timeout=` that `config_guard` checks keeps cn=config changes within it).
//! - Replication cuts, a Lease deleted and recreated, etcd restored (the Lease's resourceVersion
//!   goes back, content kept, no version handed out twice), health flaps, watch resets,
//!   graceful stops, switchover requests. Compound faults pair a stall with a release or stop,
//!   a cut with a pause.
//!
//! # What counts as leader (may accept writes)
//! - slapd running, and: unfenced by a running elector, until the fence it asked for applied;
//!   or an elector paused since it last fed the watchdog (even if running again), or slapd
//!   orphaned by a dead elector: as above, but at most until the watchdog fences slapd at
//!   `renewed_at + renew_deadline + FENCE_BUDGET` (its own clock), a guard on a container kill
//!   within the fence budget.
//!
//! # Issue 15, old behaviours (`variants.rs`, `items.rs`)
//! Each item's old runtime policy is a named variant; a scripted scenario finds it with the old
//! variant and not with the current one (items 1–8), and the random runs find items 1, 2, 4,
//! 5 and 8 as well (3 and 7 rarely, 6 not yet: `random_runs_find_the_old_variants`). Item 8 covers the recreated Lease, the restored etcd (resourceVersion backwards)
//! and the syncrepl timeout (the stall bound above). Not modelled: the replacement pod under the
//! same name (one slapd per pod name here: its predecessor would need a slot of its own), and
//! `ldap-elector status` (a CLI, not the election). The model's own findings in the current
//! code are ignored reproducers in `items.rs` (`gap_*`).

mod api;
mod candidate;
mod faults;
mod items;
mod keeper;
mod lease;
mod model;
mod office;
mod properties;
mod queue;
mod runtime;
mod sim;
mod slapd;
mod strategies;
mod switchover;
mod variants;
mod writes;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use ldap_elector::clock::Moment;
use ldap_elector::election::decide::{
    decide, Action, DemoteReason, Leading, Me, Observed, Timing, FENCE_BUDGET, MAX_CLOCK_DRIFT,
};
use ldap_elector::slapd::watchdog::{Command, Warden};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use api::*;
use candidate::*;
use model::*;
use office::new_pod;
// Ours, not proptest's `Rng` trait (both come in by glob).
use keeper::VERIFY_EVERY;
use model::Rng;
use queue::*;
use sim::*;
use strategies::*;
use variants::*;
use writes::*;

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
    assert!(total.writes_acked >= 1000, "{total:?}");
    assert!(total.promotions_checked >= 10, "{total:?}");
    assert!(total.promotions_uncovered >= 1, "{total:?}");
    assert!(total.unconfirmed_fences >= 1, "{total:?}");
    assert!(total.guard_fences >= 1, "{total:?}");
    assert!(total.office_retries >= 1, "{total:?}");
    assert!(total.handovers >= 1, "{total:?}");
    assert!(total.guard_restarts >= 1, "{total:?}");
}

pub(crate) fn pause_leader(at_s: u64, for_s: u64) -> Fault {
    Fault {
        at: Duration::from_secs(at_s),
        target: Target::Leader,
        kind: FaultKind::Pause,
        length: Duration::from_secs(for_s),
    }
}

/// Keep candidate 1 out of the first election so candidate 0 (with its clock) leads.
pub(crate) fn let_first_lead() -> Fault {
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

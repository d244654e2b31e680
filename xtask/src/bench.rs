//! `make bench`: measures the elector on the real bed and prints numbers (no assertions on
//! time — the machines are noisy). Over N runs each (default 20, `BENCH_RUNS`):
//! - graceful handover: SIGTERM to the leader's elector → another pod's leader label
//!   visible through the observer's watch;
//! - crash failover: kill -9 of the leader's elector → the same;
//! - API requests per minute of the leader and of a follower at steady state (counted in
//!   the API server's audit log by the pod the bound token names);
//! - RSS and CPU time of each elector process (release build).
//!
//! The measurements live in `ldap_elector_tests::measure` (shared with `make compare`).
//! `ELECTOR_BINARY=<path>` measures another build, e.g. the static musl binary of the image.

use std::time::Duration;

use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::measure::{self, Machine};
use ldap_elector_tests::workloads::electors::{Pair, PairOptions};

#[tokio::main]
pub async fn run() -> anyhow::Result<()> {
    ldap_elector_tests::logging::init("warn,kube_client=off");
    let runs = measure::runs();
    let program = std::env::var_os("ELECTOR_BINARY").map(std::path::PathBuf::from);
    let options = PairOptions { audit: true, release: true, program, ..Default::default() };
    let pair = Pair::start_with(2, &[], options).await?;
    pair.leader(Duration::from_secs(60)).await?;

    let steady = measure::steady_state(&pair, measure::window()).await?;
    let graceful = measure::failovers(&pair, runs, Signal::Term).await?;
    let crash = measure::failovers(&pair, runs, Signal::Kill).await?;
    pair.observer.assert_never_two_leaders();

    println!("\n## ldap-elector benchmark ({}, {runs} runs each, timing 8 s / 2 s / 5 s)\n", Machine::detect());
    println!("| metric | p50 | p99 | max | runs |\n|---|---|---|---|---|");
    for (name, samples) in [
        ("graceful handover (SIGTERM → new leader label)", &graceful),
        ("crash failover (kill -9 → new leader label)", &crash),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            measure::ms(measure::percentile(samples, 50)),
            measure::ms(measure::percentile(samples, 99)),
            measure::ms(measure::percentile(samples, 100)),
            samples.len()
        );
    }
    println!("\n{}", steady.table());
    Ok(())
}

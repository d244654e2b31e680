//! `make bench`: measures the elector on the real bed and prints numbers (no assertions on
//! time — the machines are noisy). Over N runs each (default 20, `BENCH_RUNS`):
//! - graceful handover: SIGTERM to the leader's elector → another pod's leader label
//!   visible through the observer's watch;
//! - crash failover: kill -9 of the leader's elector → the same;
//! - API requests per minute of the leader and of a follower at steady state (counted in
//!   the API server's audit log by the pod the bound token names);
//! - RSS of each elector process (release build).

use std::time::{Duration, Instant};

use ldap_elector::contract::SIDECAR_CONTAINER;
use ldap_elector_tests::electors::{Pair, PairOptions};
use ldap_elector_tests::process::Signal;
use ldap_elector_tests::wait_for;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .init();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let pair = Pair::start_with(2, &[], PairOptions { audit: true, release: true }).await?;
    pair.leader(Duration::from_secs(60)).await?;

    let steady = steady_state(&pair).await?;
    let graceful = measure(&pair, runs, Signal::Term).await?;
    let crash = measure(&pair, runs, Signal::Kill).await?;
    pair.observer.assert_never_two_leaders();

    println!("\n## ldap-elector benchmark ({} cores, {runs} runs each, timing 8 s / 2 s / 5 s)\n", num_cpus());
    println!("| metric | p50 | p99 | max | runs |\n|---|---|---|---|---|");
    for (name, samples) in [
        ("graceful handover (SIGTERM → new leader label)", &graceful),
        ("crash failover (kill -9 → new leader label)", &crash),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            ms(pct(samples, 50)),
            ms(pct(samples, 99)),
            ms(pct(samples, 100)),
            samples.len()
        );
    }
    println!("\n{steady}");
    Ok(())
}

/// Repeats: fault the leader's elector with `signal`, time until another pod is labelled
/// leader, restart the faulted elector, wait until it runs again.
async fn measure(pair: &Pair, runs: usize, signal: Signal) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let leader = pair.leader(Duration::from_secs(60)).await?;
        let starts = pair.log(&leader).matches("elector started").count();
        let fault = Instant::now();
        anyhow::ensure!(pair.signal(&leader, signal), "no elector process for {leader}");
        let (next, at) = wait_for("a new leader", Duration::from_secs(60), || async {
            pair.observer.new_leader_after(Some(&leader), fault).ok_or("not yet")
        })
        .await?;
        samples.push(at - fault);
        eprintln!("{signal:?} run {run}: {leader} -> {next} in {:?}", at - fault);
        wait_for("the faulted elector to exit", Duration::from_secs(20), || async {
            match pair.kubelet.pid(&pair.namespace, &leader, SIDECAR_CONTAINER) {
                None => Ok(()),
                Some(pid) => Err(format!("pid {pid} still running")),
            }
        })
        .await?;
        pair.kubelet.restart(&pair.namespace, &leader, SIDECAR_CONTAINER).await?;
        wait_for("the restarted elector to run", Duration::from_secs(20), || async {
            if pair.log(&leader).matches("elector started").count() > starts {
                Ok(())
            } else {
                Err("starting")
            }
        })
        .await?;
    }
    Ok(samples)
}

/// Counts API requests of the leader and the follower over a steady 60 s window and reads
/// their RSS.
async fn steady_state(pair: &Pair) -> anyhow::Result<String> {
    let leader = pair.leader(Duration::from_secs(60)).await?;
    let follower = if leader == pair.pod(0) { pair.pod(1) } else { pair.pod(0) };
    let window = Duration::from_secs(std::env::var("BENCH_WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(60));
    // Let start-up traffic settle, then count the window.
    let settle = Instant::now();
    wait_for("start-up to settle", Duration::from_secs(30), || async {
        if settle.elapsed() >= Duration::from_secs(10) {
            Ok(())
        } else {
            Err("settling")
        }
    })
    .await?;
    let audit = pair.bed.dir.join("audit.log");
    let before = std::fs::read_to_string(&audit)?.len();
    let start = Instant::now();
    wait_for("the measurement window", window + Duration::from_secs(5), || async {
        if start.elapsed() >= window {
            Ok(())
        } else {
            Err("measuring")
        }
    })
    .await?;
    let log = std::fs::read_to_string(&audit)?;
    let per_minute = |pod: &str| -> (f64, Vec<String>) {
        let mut verbs = std::collections::BTreeMap::<String, usize>::new();
        let mut n = 0usize;
        for line in log[before..].lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let by_pod = event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] == pod;
            if by_pod && event["stage"] == "ResponseStarted"
                || by_pod && event["stage"] == "ResponseComplete" && event["verb"] != "watch"
            {
                n += 1;
                let key = format!(
                    "{} {}",
                    event["verb"].as_str().unwrap_or("?"),
                    event["objectRef"]["resource"].as_str().unwrap_or("?")
                );
                *verbs.entry(key).or_default() += 1;
            }
        }
        (n as f64 * 60.0 / window.as_secs_f64(), verbs.into_iter().map(|(k, v)| format!("{k}: {v}")).collect())
    };
    let (leader_rpm, leader_verbs) = per_minute(&leader);
    let (follower_rpm, follower_verbs) = per_minute(&follower);
    let rss = |pod: &str| {
        pair.kubelet
            .pid(&pair.namespace, pod, SIDECAR_CONTAINER)
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    // CPU seconds (user + system) since the process started, from /proc/<pid>/stat.
    let cpu = |pod: &str| {
        pair.kubelet
            .pid(&pair.namespace, pod, SIDECAR_CONTAINER)
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .and_then(|s| {
                let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
                let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
                Some(format!("{:.2}", ticks as f64 / 100.0))
            })
            .unwrap_or_else(|| "?".into())
    };
    Ok(format!(
        "| steady state ({}s window) | API requests/min | by verb | RSS (KiB) | CPU s since start |\n|---|---|---|---|---|\n\
         | leader {leader} | {leader_rpm:.1} | {} | {} | {} |\n| follower {follower} | {follower_rpm:.1} | {} | {} | {} |\n\
         (a watch counts once, when its response starts; the renew period is 2 s → 30 renews/min)",
        window.as_secs(),
        leader_verbs.join(", "),
        rss(&leader),
        cpu(&leader),
        follower_verbs.join(", "),
        rss(&follower),
        cpu(&follower)
    ))
}

fn pct(samples: &[Duration], p: usize) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p * s.len()).div_ceil(100)).clamp(1, s.len()) - 1;
    s[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

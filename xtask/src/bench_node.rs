//! `make bench-node`: the consumer on the real node (`node::consumer::scenario`), faults
//! repeated `BENCH_RUNS` times each (default 20), p50/p99 printed. No assertions on time;
//! the invariants (never two writable slapd servers, no acknowledged write lost, never two
//! ready endpoints) are checked once at the end over all runs and printed.
//!
//! - slapd container of the leader killed → the first write acknowledged through the
//!   ClusterIP after the kill; the pod is deleted afterwards to reset the restart back-off;
//! - graceful deletion of the leader pod → client-visible write gap (the longest time
//!   between two consecutive acknowledgements from the last one before the deletion to the
//!   first one after the new leader's label);
//! - the leader's elector container killed (its PID 1, from the host) → the first probe of
//!   the old leader's slapd that is not accepted, and whether that came before the other
//!   slapd accepted any; the pod is deleted afterwards to reset CrashLoopBackOff;
//! - the sidecar container's working set (cgroup) at steady state.
//!
//! `BENCH_FAULTS` (e.g. `deletion`, or `slapd,elector`; default all three) picks the faults;
//! `LDAP_ELECTOR_KUBE_PROXY_MIN_SYNC_MS` measures a cluster whose kube-proxy syncs more often
//! than its default (1000), `LDAP_ELECTOR_KUBE_PROXY_MODE=nftables` one whose kube-proxy runs
//! in nftables mode (default iptables).
//! Each deletion run also prints what the client saw in its longest gap. After every round
//! all acknowledged writes must be on both servers: a loss stops the bench with the logs
//! (`BENCH_AUDIT=end`: only at the end, as before).

use std::time::{Duration, Instant};

use anyhow::Context;

use ldap_elector_contract::SIDECAR_CONTAINER;
use ldap_elector_tests::ldap::writer::{Attempt, ConnectFailure};
use ldap_elector_tests::measure::writability::Answer;
use ldap_elector_tests::measure::{self, Machine};
use ldap_elector_tests::node::consumer::manifests::SLAPD_CONTAINER;
use ldap_elector_tests::node::consumer::scenario::{Plain, Scenario, LEASE};
use ldap_elector_tests::node::consumer::{faults, pod_name, summary, NAMESPACE};

const RECOVERY: Duration = Duration::from_secs(120);
/// How long a re-created pod may take to become Ready: it copies every entry written so far
/// from its peer (the client writes all along, ~50 a second) and is Ready only once it holds
/// them. A 20 + 20 round run (2026-12-08) stopped after 41,000 writes because a re-created pod
/// was not Ready within `RECOVERY`.
const SEEDING: Duration = Duration::from_secs(600);
const MEMORY_SAMPLES: usize = 10;
/// How long the client may write: longer than any bench (its default bound is a test's).
const WRITE_FOR: Duration = Duration::from_secs(6 * 3600);

#[tokio::main]
pub async fn run() -> anyhow::Result<()> {
    ldap_elector_tests::logging::init("warn,kube_client=off");
    let runs = measure::runs();
    let s = Scenario::start_writing_for(&Plain, WRITE_FOR).await?;
    let proxy = s.node().proxy_settings;
    eprintln!(
        "set-up {:.1}s; kube-proxy mode {}, minSyncPeriod {:?}",
        s.setup.as_secs_f64(),
        proxy.mode.as_str(),
        proxy.min_sync
    );

    let mut memory = Vec::new();
    for _ in 0..MEMORY_SAMPLES {
        for ordinal in 0..2 {
            let pod = s.consumer.pods().get(&pod_name(ordinal)).await?;
            memory.push(faults::working_set(&pod, SIDECAR_CONTAINER)?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let faults_wanted = std::env::var("BENCH_FAULTS").unwrap_or_else(|_| "slapd,deletion,elector".into());
    let wanted = |fault: &str| faults_wanted.split(',').any(|f| f.trim() == fault);
    let runs_of = |fault: &str| if wanted(fault) { runs } else { 0 };

    // On a failure the containers' logs go into the bed directory (kept with
    // LDAP_ELECTOR_KEEP_BED=1) before the node goes: a stall is read from them.
    let measured = async {
        let mut slapd_killed = Vec::new();
        for run in 0..runs_of("slapd") {
            settle(&s).await?;
            let (leader, pod) = s.leader().await?;
            let fault = faults::sigkill(faults::container_pid(s.node(), &pod, SLAPD_CONTAINER)?)?;
            let back = s.writer.wait_ack_after(fault, RECOVERY).await?;
            slapd_killed.push(back.end - fault);
            let story = gap_story(&s.writer.attempts(), &s.writer.connect_failures(), fault, back.end);
            let endpoints = endpoint_story(&s.observer.endpoint_history(), fault, back.end);
            eprintln!(
                "slapd kill {run}: pod {leader}, writes back after {:?}; write Service endpoints: {endpoints}; the \
                 client saw: {story}",
                back.end - fault
            );
            // A fresh pod resets the kubelet's restart back-off of the killed container (it
            // doubles from 10 s with every restart and would dominate later runs).
            keep_logs(&s, "slapd kill", run);
            replace_pod(&s, leader).await?;
            audit(&s, "slapd kill", run).await?;
        }

        let mut deletion_gap = Vec::new();
        for run in 0..runs_of("deletion") {
            settle(&s).await?;
            let (leader, _) = s.leader().await?;
            keep_logs(&s, "deletion", run);
            let fault = Instant::now();
            delete_pod(&s, leader)?;
            let old = pod_name(leader);
            let (_, at) =
                s.observer.wait_for_new_leader("a new leader after the deletion", Some(&old), fault, RECOVERY).await?;
            let next = s.writer.wait_ack_after(at, RECOVERY).await?;
            let ends: Vec<Instant> = s.writer.acked().iter().map(|a| a.end).collect();
            let gap = longest_gap(&ends, fault, next.end);
            deletion_gap.push(gap);
            let story = gap_story(&s.writer.attempts(), &s.writer.connect_failures(), fault, next.end);
            let label = (at - fault).as_secs_f64();
            let endpoints = endpoint_story(&s.observer.endpoint_history(), fault, next.end);
            eprintln!(
                "deletion {run}: pod {leader}, new leader label after {label:.3}s, longest gap between acknowledgements \
                 {gap:?}; write Service endpoints: {endpoints}; the client saw: {story}"
            );
            audit(&s, "deletion", run).await?;
        }

        let (mut refused, mut refused_first) = (Vec::new(), 0);
        for run in 0..runs_of("elector") {
            settle(&s).await?;
            let (leader, pod) = s.leader().await?;
            let fault = faults::sigkill(faults::container_pid(s.node(), &pod, SIDECAR_CONTAINER)?)?;
            let stopped = ldap_elector_tests::wait_for("the old leader's slapd to refuse", RECOVERY, || async {
                s.prober.first_after(leader, fault, |a| a != Answer::Writable).ok_or("still writable")
            })
            .await?;
            let other = s.prober.first_after(1 - leader, fault, |a| a == Answer::Writable);
            let fault_at = fault.saturating_duration_since(s.prober.epoch());
            refused.push(stopped.sent.saturating_sub(fault_at));
            if other.is_none_or(|o| stopped.received <= o.sent) {
                refused_first += 1;
            }
            eprintln!("elector kill {run}: pod {leader}, refused after {:?}", stopped.sent.saturating_sub(fault_at));
            // A fresh pod resets the CrashLoopBackOff of the killed container.
            s.writer.wait_ack_after(fault, RECOVERY).await?;
            keep_logs(&s, "elector kill", run);
            replace_pod(&s, leader).await?;
            audit(&s, "elector kill", run).await?;
        }
        anyhow::Ok((slapd_killed, deletion_gap, refused, refused_first))
    }
    .await;
    let (slapd_killed, deletion_gap, refused, refused_first) = match measured {
        Ok(m) => m,
        Err(e) => {
            s.save_container_logs();
            return Err(e);
        }
    };

    let verdict = s.finish().await?;
    println!("\n## Real node ({}, {runs} runs each, lease {} s)\n", Machine::detect(), LEASE.as_secs());
    println!("| metric | p50 | p99 | max | runs |\n|---|---|---|---|---|");
    for (name, samples) in [
        ("slapd container killed → writes succeed again via the ClusterIP", &slapd_killed),
        ("graceful deletion of the leader pod → client-visible write gap", &deletion_gap),
        ("elector container killed → old leader's slapd refuses writes", &refused),
    ] {
        let (p50, p99, max) =
            (measure::percentile(samples, 50), measure::percentile(samples, 99), measure::percentile(samples, 100));
        println!("| {name} | {} | {} | {} | {} |", measure::ms(p50), measure::ms(p99), measure::ms(max), samples.len());
    }
    memory.sort_unstable();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let (mid, top) = (memory.get(memory.len() / 2).copied().unwrap_or(0), memory.last().copied().unwrap_or(0));
    println!(
        "| sidecar working set (cgroup, steady state) | {} | {} | {} | {} |",
        mib(mid),
        mib(top),
        mib(top),
        memory.len()
    );
    println!("\nold leader refused before the other slapd accepted: {refused_first}/{runs}");
    println!("acknowledged writes: {}", verdict.acked);
    let violations = verdict.violations();
    if violations.is_empty() {
        println!("invariants: no violation over all runs");
    } else {
        println!("INVARIANT VIOLATIONS:\n{}\ntimeline:\n{}", violations.join("\n"), verdict.timeline);
    }
    Ok(())
}

/// Every write acknowledged so far is on both servers (`Scenario::audit_acknowledged`): a
/// loss stops the bench in the round that caused it. `BENCH_AUDIT=end` leaves it to the final
/// check instead (the audit pauses the client and lets replication settle between rounds,
/// which a loss may need not to happen).
async fn audit(s: &Scenario, fault: &str, run: usize) -> anyhow::Result<()> {
    if std::env::var("BENCH_AUDIT").is_ok_and(|v| v == "end") {
        return Ok(());
    }
    settle(s).await?;
    let n = s.audit_acknowledged().await.with_context(|| format!("after {fault} {run}"))?;
    eprintln!("  audit after {fault} {run}: all {n} acknowledged writes on both servers");
    Ok(())
}

/// With `LDAP_ELECTOR_KEEP_BED=1`, the containers' logs of this round before a pod is
/// deleted (the deletion takes its logs along).
fn keep_logs(s: &Scenario, fault: &str, run: usize) {
    if std::env::var("LDAP_ELECTOR_KEEP_BED").is_ok_and(|v| v == "1") {
        s.save_container_logs_in(&format!("container-logs/{}-{run}", fault.replace(' ', "-")));
    }
}

/// The longest time between consecutive acknowledgements (`ends`, in order) from the last
/// one at or before `from` to `to`.
fn longest_gap(ends: &[Instant], from: Instant, to: Instant) -> Duration {
    let start = ends.iter().rposition(|e| *e <= from).unwrap_or(0);
    let window: Vec<Instant> = ends[start..].iter().copied().filter(|e| *e <= to).collect();
    window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// What the client saw from `from` to `to`: its attempts and failed connects (each with its
/// duration when it took over 200 ms) in order, as offsets from `from`, runs of equal
/// outcomes folded.
fn gap_story(attempts: &[Attempt], connects: &[ConnectFailure], from: Instant, to: Instant) -> String {
    let seen = attempts
        .iter()
        .map(|a| (a.start, a.end, format!("{:?}", a.outcome)))
        .chain(connects.iter().map(|c| (c.start, c.end, format!("connect failed ({})", short(&c.error)))));
    let mut seen: Vec<(Instant, Instant, String)> = seen.filter(|(start, ..)| *start >= from && *start <= to).collect();
    seen.sort_by_key(|(start, ..)| *start);
    let mut parts: Vec<(String, String, usize)> = Vec::new();
    for (start, end, what) in seen {
        let long = end - start > Duration::from_millis(200);
        let what = if long { format!("{what} in {:.3}s", (end - start).as_secs_f64()) } else { what };
        match parts.last_mut() {
            Some((_, last, n)) if *last == what => *n += 1,
            _ => parts.push((format!("+{:.3}s", (start - from).as_secs_f64()), what, 1)),
        }
    }
    let fold = |(at, what, n): (String, String, usize)| {
        if n > 1 {
            format!("{at} {what}×{n}")
        } else {
            format!("{at} {what}")
        }
    };
    parts.into_iter().map(fold).collect::<Vec<_>>().join(", ")
}

/// The write Service's ready endpoints as they changed from `from` to `to`, as offsets.
fn endpoint_story(history: &[(Instant, Vec<String>)], from: Instant, to: Instant) -> String {
    let seen: Vec<String> = history
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .map(|(at, ready)| format!("+{:.3}s {ready:?}", (*at - from).as_secs_f64()))
        .collect();
    if seen.is_empty() {
        "unchanged".into()
    } else {
        seen.join(", ")
    }
}

/// The last part of an error chain, shortened.
fn short(error: &str) -> String {
    let last = error.rsplit(": ").next().unwrap_or(error);
    last.chars().take(60).collect()
}

/// Deletes pod `ordinal` and waits until the StatefulSet's new pod of that name is Ready.
async fn replace_pod(s: &Scenario, ordinal: usize) -> anyhow::Result<()> {
    let old = s.consumer.pod_uid(ordinal).await?;
    delete_pod(s, ordinal)?;
    s.consumer.wait_replaced(ordinal, old.as_deref(), SEEDING).await
}

/// Both pods Ready (none terminating), one leader, and a write acknowledged after now.
async fn settle(s: &Scenario) -> anyhow::Result<()> {
    let pods = s.consumer.pods();
    ldap_elector_tests::wait_for("no pod terminating", RECOVERY, || async {
        for ordinal in 0..2 {
            match pods.get_opt(&pod_name(ordinal)).await {
                Ok(Some(p)) if p.metadata.deletion_timestamp.is_none() => {}
                other => return Err(format!("{}: {:?}", pod_name(ordinal), other.map(|p| p.map(|p| summary(&p))))),
            }
        }
        Ok(())
    })
    .await?;
    s.consumer.wait_ready(SEEDING).await?;
    s.observer.wait_for_single_leader(RECOVERY).await?;
    s.writer.wait_ack_after(Instant::now(), RECOVERY).await?;
    Ok(())
}

fn delete_pod(s: &Scenario, ordinal: usize) -> anyhow::Result<()> {
    let out = s.bed.kubectl().args(["delete", "pod", &pod_name(ordinal), "-n", NAMESPACE, "--wait=false"]).output()?;
    anyhow::ensure!(out.status.success(), "kubectl delete pod: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap_elector_tests::ldap::writer::Outcome;

    #[test]
    fn longest_gap_spans_from_the_last_acknowledgement_before_the_fault() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ends = [at(0), at(100), at(120), at(900), at(920), at(5000)];
        assert_eq!(longest_gap(&ends, at(110), at(920)), Duration::from_millis(780));
        assert_eq!(longest_gap(&ends, at(950), at(950)), Duration::ZERO);
    }

    #[test]
    fn the_endpoint_story_lists_changes_within_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let history = [(at(0), vec!["a".to_string()]), (at(500), vec![]), (at(1500), vec!["a".to_string()])];
        assert_eq!(endpoint_story(&history, at(100), at(2000)), "+0.400s [], +1.400s [\"a\"]");
        assert_eq!(endpoint_story(&history, at(2000), at(3000)), "unchanged");
    }

    #[test]
    fn the_gap_story_folds_repeats_and_shows_slow_connects() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let attempt = |start: u64, end: u64, outcome: Outcome| Attempt {
            uid: String::new(),
            start: at(start),
            end: at(end),
            outcome,
        };
        let attempts = [
            attempt(10, 12, Outcome::Acked),
            attempt(50, 52, Outcome::Refused(53)),
            attempt(90, 92, Outcome::Refused(53)),
            attempt(1500, 1502, Outcome::Acked),
        ];
        let connect =
            |start: u64, end: u64| ConnectFailure { start: at(start), end: at(end), error: "x: refused".into() };
        let connects = [connect(100, 101), connect(140, 141), connect(180, 1480)];
        assert_eq!(
            gap_story(&attempts, &connects, at(0), at(2000)),
            "+0.010s Acked, +0.050s Refused(53)×2, +0.100s connect failed (refused)×2, \
             +0.180s connect failed (refused) in 1.300s, +1.500s Acked"
        );
    }
}

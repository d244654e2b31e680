//! `make demo`: the whole story on a local bed, with a live timeline. A real control plane
//! starts, electors run beside each pod of a 2-replica StatefulSet, one is elected and
//! labelled leader, then the leader is killed (kill -9) and the standby takes over; then
//! the new leader is stopped gracefully and hands over at once.

use std::time::{Duration, Instant};

use ldap_elector_tests::electors::Pair;
use ldap_elector_tests::process::Signal;
use ldap_elector_tests::wait_for;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .init();
    let t0 = Instant::now();
    say(t0, "starting etcd, kube-apiserver (RBAC), kube-controller-manager and a test kubelet on loopback");
    let pair = Pair::start(2, &[]).await?;
    say(t0, &format!("control plane up; logs in {}", pair.bed.dir.display()));
    say(
        t0,
        &format!(
            "StatefulSet {}/{} created with 2 replicas; electors start with their pods",
            pair.namespace, pair.statefulset
        ),
    );

    let printed = std::cell::Cell::new(0);
    let print_timeline = || {
        for line in pair.observer.timeline_from(printed.get()) {
            println!("    observer {line}");
            printed.set(printed.get() + 1);
        }
    };
    let leader = follow(&pair, t0, &print_timeline, None).await?;
    say(t0, &format!("elected: {leader}. Now kill -9 its elector (crash): the standby waits for the lease to expire"));
    let fault = Instant::now();
    pair.signal(&leader, Signal::Kill);
    let next = follow(&pair, t0, &print_timeline, Some(&leader)).await?;
    say(t0, &format!("failover {leader} -> {next} after {:.2}s", fault.elapsed().as_secs_f64()));

    say(t0, &format!("restart {leader}'s elector: it comes back as standby"));
    pair.kubelet.restart(&pair.namespace, &leader, ldap_elector::contract::SIDECAR_CONTAINER).await?;
    wait_for("the restarted elector to start", Duration::from_secs(20), || async {
        if pair.log(&leader).matches("elector started").count() >= 2 {
            Ok(())
        } else {
            Err("starting")
        }
    })
    .await?;
    say(t0, &format!("now stop {next} gracefully (SIGTERM): it demotes, releases, and the standby takes over at once"));
    let fault = Instant::now();
    pair.signal(&next, Signal::Term);
    let last = follow(&pair, t0, &print_timeline, Some(&next)).await?;
    say(t0, &format!("graceful handover {next} -> {last} after {:.3}s", fault.elapsed().as_secs_f64()));
    pair.observer.assert_never_two_leaders();
    say(t0, "never more than one pod labelled leader. Done; tearing the bed down.");
    Ok(())
}

fn say(t0: Instant, what: &str) {
    println!("[{:>7.2}s] {what}", t0.elapsed().as_secs_f64());
}

/// Prints the timeline until a leader other than `old` is labelled; returns it.
async fn follow(pair: &Pair, t0: Instant, print: &dyn Fn(), old: Option<&str>) -> anyhow::Result<String> {
    let since = Instant::now();
    let found = wait_for("a new leader", Duration::from_secs(60), || async {
        print();
        pair.observer.new_leader_after(old, since).map(|(p, _)| p).ok_or("not yet")
    })
    .await?;
    print();
    let _ = t0;
    Ok(found)
}

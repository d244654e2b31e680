//! `make demo`: the whole story on a local bed, with a live timeline. A real control plane
//! starts; the admission webhook is installed (registered by URL on loopback); a 2-replica
//! StatefulSet is created with one annotation, together with its write Service; the real
//! StatefulSet controller creates its pods (held back by the webhook until the reconciler
//! has made the Service select only the leader), which arrive injected with the elector sidecar and its identity; the electors
//! elect a leader and the write Service's endpoints follow it; then the leader is killed
//! (kill -9) and the standby takes over; then the new leader is stopped gracefully and
//! hands over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::electors::{Pair, PairOptions, WRITE_SERVICE};

#[tokio::main]
pub async fn run() -> anyhow::Result<()> {
    ldap_elector_tests::logging::init("error,kube_client=off");
    let t0 = Instant::now();
    say(t0, "starting etcd, kube-apiserver (RBAC, Pod Security), kube-controller-manager, a test kubelet,");
    say(t0, "and the ldap-elector webhook (its own ServiceAccount, least-privilege ClusterRole, TLS on loopback)");
    let pair = Pair::start_with(2, &[], PairOptions { webhook: true, ..Default::default() }).await?;
    say(t0, &format!("up; logs in {}", pair.bed.dir.display()));
    say(
        t0,
        &format!(
            "created Service {WRITE_SERVICE} and StatefulSet {}/{} (2 replicas) annotated {}: \"true\"",
            pair.namespace,
            pair.statefulset,
            contract::ANNOTATION_INJECT
        ),
    );
    say(t0, "the webhook holds the pods back until the reconciler has made the Service select only the leader");
    let pods: Api<Pod> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let pod = wait_for("the first pod to be admitted", Duration::from_secs(60), || async {
        pods.get_opt(&pair.pod(0)).await.map_err(|e| e.to_string())?.ok_or_else(|| "not yet".to_string())
    })
    .await?;
    let spec = pod.spec.clone().unwrap_or_default();
    let sidecar = spec.init_containers.iter().flatten().any(|c| c.name == contract::SIDECAR_CONTAINER);
    say(
        t0,
        &format!(
            "{} admitted by the real StatefulSet controller: sidecar injected: {sidecar}; serviceAccount {}; \
             token automount {:?}; label {}={}",
            pair.pod(0),
            spec.service_account_name.unwrap_or_default(),
            spec.automount_service_account_token,
            contract::LABEL_ROLE,
            pod.metadata.labels.unwrap_or_default().get(contract::LABEL_ROLE).cloned().unwrap_or_default()
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
    wait_for("the write Service to follow", Duration::from_secs(30), || async {
        if pair.observer.ready_endpoints() == vec![leader.clone()] {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await?;
    print_timeline();
    say(t0, &format!("elected: {leader}; {WRITE_SERVICE} routes only to it."));
    say(t0, "now kill -9 its elector (crash): the standby waits for the lease to expire, then takes over");
    let fault = Instant::now();
    pair.signal(&leader, Signal::Kill);
    let next = follow(&pair, t0, &print_timeline, Some(&leader)).await?;
    say(t0, &format!("failover {leader} -> {next} after {:.2}s", fault.elapsed().as_secs_f64()));

    say(t0, &format!("restart {leader}'s elector: it comes back as standby"));
    pair.kubelet.restart(&pair.namespace, &leader, ldap_elector_contract::SIDECAR_CONTAINER).await?;
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

//! The elector on the real bed, with exactly the RBAC the webhook creates and an observer
//! that fails the test if two pods are ever labelled leader.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::electors::Pair;

const ELECT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_started_together_elect_exactly_one() -> anyhow::Result<()> {
    let pair = Pair::start(2, &[]).await?;
    let leader = pair.leader(ELECT).await?;
    // Stable: still exactly that one after a few renew periods.
    let since = Instant::now();
    wait_for("a few renew periods to pass", Duration::from_secs(10), || async {
        if since.elapsed() >= Duration::from_secs(6) {
            Ok(())
        } else {
            Err("waiting")
        }
    })
    .await?;
    assert_eq!(pair.observer.leaders(), vec![leader.clone()], "{}", pair.observer.timeline());
    let lease: Lease =
        Api::namespaced(pair.client.clone(), &pair.namespace).get(&contract::lease_name(&pair.statefulset)).await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), Some(leader));
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_candidates_started_together_elect_exactly_one() -> anyhow::Result<()> {
    let pair = Pair::start(5, &[]).await?;
    pair.leader(ELECT).await?;
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_of_the_leader_hands_over_at_once() -> anyhow::Result<()> {
    let pair = Pair::start(2, &[]).await?;
    let old = pair.leader(ELECT).await?;
    let fault = Instant::now();
    assert!(pair.signal(&old, Signal::Term));
    let (new, at) = pair.wait_for_new_leader(&old, fault, Duration::from_secs(20)).await?;
    println!("graceful handover {old} -> {new}: {:?}", at - fault);
    assert!(pair.log(&old).contains("released the Lease"), "{}", pair.log(&old));
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_leader_pod_hands_over_before_it_goes() -> anyhow::Result<()> {
    let pair = Pair::start(2, &[]).await?;
    let old = pair.leader(ELECT).await?;
    let fault = Instant::now();
    Api::<Pod>::namespaced(pair.client.clone(), &pair.namespace).delete(&old, &DeleteParams::default()).await?;
    let (new, at) = pair.wait_for_new_leader(&old, fault, Duration::from_secs(20)).await?;
    println!("handover on pod deletion {old} -> {new}: {:?}", at - fault);
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_lets_the_standby_take_over_after_expiry() -> anyhow::Result<()> {
    let pair = Pair::start(2, &[]).await?;
    let old = pair.leader(ELECT).await?;
    let fault = Instant::now();
    assert!(pair.signal(&old, Signal::Kill));
    let (new, at) = pair.wait_for_new_leader(&old, fault, Duration::from_secs(30)).await?;
    let took = at - fault;
    println!("crash failover {old} -> {new}: {took:?}");
    // Not a timing goal: a safety check. Nobody may take over before the lease expired.
    assert!(took >= Duration::from_secs(8) - Duration::from_secs(2), "took over after {took:?}, before expiry");
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_never_relabels_itself_and_stands_down() -> anyhow::Result<()> {
    let pair = Pair::start(2, &[]).await?;
    let old = pair.leader(ELECT).await?;
    let fault = Instant::now();
    assert!(pair.signal(&old, Signal::Stop));
    let (new, _) = pair.wait_for_new_leader(&old, fault, Duration::from_secs(30)).await?;
    let resumed = Instant::now();
    assert!(pair.signal(&old, Signal::Cont));
    wait_for("the resumed elector to stand down", Duration::from_secs(10), || async {
        let log = pair.log(&old);
        if log.contains("RenewDeadlinePassed") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await?;
    // A few renew periods later the old pod has still not relabelled itself.
    wait_for("a few renew periods", Duration::from_secs(10), || async {
        if resumed.elapsed() >= Duration::from_secs(5) {
            Ok(())
        } else {
            Err("waiting")
        }
    })
    .await?;
    assert_eq!(pair.observer.became_leader_after(&old, resumed), None, "{}", pair.observer.timeline());
    assert_eq!(pair.observer.leaders(), vec![new]);
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_demotes_the_leader_within_its_deadline_and_one_leader_returns() -> anyhow::Result<()> {
    let pair = Pair::start(2, &[]).await?;
    let leader = pair.leader(ELECT).await?;
    // kill -9: the outage starts at a known instant (a SIGTERMed API server keeps serving
    // while it drains).
    pair.bed.kill_apiserver();
    let outage = Instant::now();
    wait_for("the leader to stand down while the API is away", Duration::from_secs(15), || async {
        let log = pair.log(&leader);
        if log.contains("RenewDeadlinePassed") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await?;
    // Reported, not asserted (noisy machines): the bound is the renew deadline (5 s) after
    // the last successful renew, which was at most a renew period before the outage.
    println!("leader stood down at most {:?} after the API server died", outage.elapsed());
    wait_for("20 s of outage", Duration::from_secs(30), || async {
        if outage.elapsed() >= Duration::from_secs(20) {
            Ok(())
        } else {
            Err("waiting")
        }
    })
    .await?;
    pair.bed.start_apiserver().await?;
    // Exactly one leader again, and it is the Lease holder.
    let leases: Api<Lease> = Api::namespaced(pair.client.clone(), &pair.namespace);
    wait_for("one leader label on the Lease holder after the outage", ELECT, || async {
        let holder = leases
            .get(&contract::lease_name(&pair.statefulset))
            .await
            .map_err(|e| e.to_string())?
            .spec
            .and_then(|s| s.holder_identity);
        match (pair.observer.leaders().as_slice(), holder) {
            ([one], Some(holder)) if *one == holder => Ok(()),
            (labels, holder) => Err(format!("labels {labels:?}, holder {holder:?}\n{}", pair.observer.timeline())),
        }
    })
    .await?;
    pair.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elector_identity_cannot_read_secrets_or_touch_another_lease() -> anyhow::Result<()> {
    let pair = Pair::start(1, &[]).await?;
    let client = pair.bed.service_account_client(&pair.namespace, &contract::identity_name(&pair.statefulset)).await?;
    let admin_leases: Api<Lease> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let other = admin_leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "other"}, "spec": {}}))?,
        )
        .await?;
    let forbidden = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(forbidden(
        Api::<Secret>::namespaced(client.clone(), &pair.namespace).list(&Default::default()).await.map(drop)
    ));
    assert!(forbidden(Api::<Secret>::namespaced(client.clone(), &pair.namespace).get("any").await.map(drop)));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &pair.namespace);
    assert!(forbidden(leases.get("other").await.map(drop)));
    assert!(forbidden(leases.replace("other", &PostParams::default(), &other).await.map(drop)));
    assert!(forbidden(
        leases.delete(&contract::lease_name(&pair.statefulset), &DeleteParams::default()).await.map(drop)
    ));
    assert!(forbidden(leases.create(&PostParams::default(), &other).await.map(drop)));
    // ...while its own Lease is readable: the denial above is RBAC, not a broken token.
    leases.get(&contract::lease_name(&pair.statefulset)).await?;
    Ok(())
}

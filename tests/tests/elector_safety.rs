//! Reproducers of the elector-safety review (issue 15) on the process bed, with a real
//! Mirror-Mode slapd pair behind the injected electors (the OpenLDAP rig).
//!
//! Item 1: the Lease is released or handed over only after the leader's slapd confirmed the
//! fence (`olcReadOnly: TRUE` read back) or is known dead. A stalled slapd (SIGSTOP) cannot
//! confirm anything, so a leader told to step down (its health fails, then SIGTERM) must keep
//! the Lease until it expires on the standby's clock; before the fix it released at once and
//! the standby unfenced its slapd while the old one could still commit queued writes.
//!
//! Item 2: the leader's slapd is fenced within 1 s of its elector dying in any way, even
//! when everything in the elector's container dies with it (kill -9 of the container, an
//! OOM kill): the fence guard, a container of its own, fences when the elector's
//! connection closes. Before the fix the watchdog was the elector's child in the same
//! container and died with it, and the old slapd stayed writable.
//!
//! Item 5: on graceful deletion of the leader's pod, slapd is stopped only after the
//! hand-over: the kubelet runs slapd's injected `preStop` hook (`/handover` on the
//! elector's probe port), which returns once the elector is out of office with a confirmed
//! fence and the standby holds the Lease; no acknowledged write is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use ldap_elector::election::decide::{Timing, MAX_CLOCK_DRIFT};
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::forwarder::Forwarder;
use ldap_elector_tests::bed::kubelet::Step;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::ldap::rig::{self as ldap_rig, ordinal, LdapRig};
use ldap_elector_tests::ldap::writer::{self, Outcome, Writer};
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::electors::WRITE_SERVICE;

const ELECT: Duration = Duration::from_secs(90);
const FENCE: Duration = Duration::from_secs(30);
/// Acknowledged writes before the leader's pod is deleted (the writer keeps writing).
const WRITES_BEFORE: usize = 50;
/// Issue 15, item 2: a leader's slapd is fenced this soon after its elector died.
const FENCE_AFTER_DEATH: Duration = Duration::from_secs(1);

/// One version of the Lease as this test saw it, with the holders' own wall-clock stamps
/// (all electors run on this machine: one clock, and no lag of this test's watch in them).
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    holder: Option<String>,
    transitions: i32,
    renewed: Option<k8s_openapi::jiff::Timestamp>,
    acquired: Option<k8s_openapi::jiff::Timestamp>,
}

/// Every version of one Lease, in the order the watch delivered them.
#[derive(Clone, Default)]
struct LeaseLog(Arc<Mutex<Vec<Seen>>>);

impl LeaseLog {
    fn start(client: Client, namespace: &str, name: &str) -> LeaseLog {
        let log = LeaseLog::default();
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let sink = log.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().applied_objects().boxed();
            while let Some(event) = events.next().await {
                let Ok(lease) = event else { continue };
                let spec = lease.spec.unwrap_or_default();
                let holder = spec.holder_identity.filter(|h| !h.is_empty());
                let seen = Seen {
                    at: Instant::now(),
                    holder,
                    transitions: spec.lease_transitions.unwrap_or(0),
                    renewed: spec.renew_time.map(|t| t.0),
                    acquired: spec.acquire_time.map(|t| t.0),
                };
                sink.0.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
            }
        });
        log
    }

    fn history(&self) -> Vec<Seen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn other(pod: &str) -> String {
    contract::pod_name(ldap_rig::STATEFULSET, 1 - ordinal(pod).min(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_stalled_slapd_keeps_the_lease_until_it_expires() -> anyhow::Result<()> {
    let rig = LdapRig::start(1).await?;
    let leader = rig.observer.wait_for_single_leader(ELECT).await?;
    let standby = other(&leader);
    rig.wait_fences(&leader, &standby, FENCE).await?;
    let leases = LeaseLog::start(rig.client.clone(), ldap_rig::NAMESPACE, &contract::lease_name(ldap_rig::STATEFULSET));
    wait_for("the Lease watch to see the leader", FENCE, || async {
        match leases.history().last() {
            Some(s) if s.holder.as_deref() == Some(leader.as_str()) => Ok(()),
            last => Err(format!("last seen {last:?}")),
        }
    })
    .await?;

    // Stall the leader's slapd, then tell its elector to stop: it cannot confirm the fence.
    anyhow::ensure!(rig.node(&leader).signal(Signal::Stop), "the leader's slapd runs");
    let stalled = Instant::now();
    rig.kubelet.signal(ldap_rig::NAMESPACE, &leader, contract::SIDECAR_CONTAINER, Signal::Term);

    let lease = Timing::default().lease_duration;
    let taken = wait_for(&format!("{standby} to hold the Lease"), lease * 4, || async {
        let history = leases.history();
        match history.iter().find(|s| s.at >= stalled && s.holder.as_deref() == Some(standby.as_str())) {
            Some(s) => Ok(s.clone()),
            None => Err(format!("{:?}", history.last())),
        }
    })
    .await;
    rig.node(&leader).signal(Signal::Cont);
    let taken = taken.map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;

    let history = leases.history();
    let after: Vec<&Seen> = history.iter().filter(|s| s.at >= stalled && s.at <= taken.at).collect();
    assert!(
        after.iter().all(|s| s.holder.is_some()),
        "the Lease was released while the leader's slapd could not confirm its fence: {after:?}\n{}",
        rig.logs()
    );
    // The standby stamps its acquisition after waiting a lease duration from when it saw the
    // leader's last renew, which the leader stamped before sending it.
    let last_renew = history
        .iter()
        .filter(|s| s.at <= taken.at && s.holder.as_deref() == Some(leader.as_str()))
        .filter_map(|s| s.renewed)
        .max()
        .expect("the leader's renewals were seen");
    let acquired = taken.acquired.expect("an acquired Lease has an acquireTime");
    let waited = Duration::try_from(acquired.duration_since(last_renew))?;
    let bound = lease.mul_f64(1.0 - MAX_CLOCK_DRIFT);
    println!(
        "{standby} took the Lease (term {}) {waited:?} after {leader}'s last renew; lease {lease:?}",
        taken.transitions
    );
    assert!(
        waited >= bound,
        "{standby} acquired {waited:?} after the last renew, before the lease expired ({bound:?})"
    );

    // Once slapd runs again, the fences follow the Lease.
    rig.wait_fences(&standby, &leader, FENCE).await?;
    rig.observer.assert_never_two_leaders();
    Ok(())
}

/// The real-node counterpart (killing the sidecar container's PID 1, an OOM kill) lives in
/// the real-node harness; this one kills the elector's process and everything it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_elector_container_is_killed_is_fenced_within_a_second() -> anyhow::Result<()> {
    let rig = LdapRig::start(1).await?;
    let leader = rig.observer.wait_for_single_leader(ELECT).await?;
    let standby = other(&leader);
    rig.wait_fences(&leader, &standby, FENCE).await?;

    let killed = Instant::now();
    anyhow::ensure!(
        rig.kubelet.kill_container(ldap_rig::NAMESPACE, &leader, contract::SIDECAR_CONTAINER),
        "{leader}'s elector runs"
    );
    let node = rig.node(&leader);
    let fenced = wait_for(
        &format!("{leader}'s slapd fenced after its elector container was killed"),
        FENCE_AFTER_DEATH,
        || async {
            match node.root().await.map_err(|e| e.to_string())?.read_only().await {
                Ok(true) => Ok(killed.elapsed()),
                Ok(false) => Err(format!("still writable {:?} after the kill", killed.elapsed())),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n--- guard ---\n{}", rig.logs(), guard_log(&rig, &leader)))?;
    println!("{leader}'s slapd was fenced {fenced:?} after its elector container was killed");

    // The standby takes over once the Lease expires on its clock; the old slapd stays fenced.
    rig.wait_fences(&standby, &leader, ELECT).await?;
    rig.observer.assert_never_two_leaders();
    Ok(())
}

/// The fence guard's log of `pod` (empty where none runs).
fn guard_log(rig: &LdapRig, pod: &str) -> String {
    std::fs::read_to_string(rig.kubelet.log_path(ldap_rig::NAMESPACE, pod, contract::GUARD_CONTAINER))
        .unwrap_or_default()
}

/// The guard's own death (item 2): the leader can no longer count on a fence that outlives
/// it, so it fences its slapd at once and steps down without releasing; once the guard is
/// back (it fences at start), a leader is elected again: this pod (it still holds the
/// Lease), or the standby after expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_guard_fences_itself_and_keeps_the_lease() -> anyhow::Result<()> {
    let rig = LdapRig::start(1).await?;
    let leader = rig.observer.wait_for_single_leader(ELECT).await?;
    let standby = other(&leader);
    rig.wait_fences(&leader, &standby, FENCE).await?;
    let leases = LeaseLog::start(rig.client.clone(), ldap_rig::NAMESPACE, &contract::lease_name(ldap_rig::STATEFULSET));

    let term = wait_for("the Lease watch to see the leader", FENCE, || async {
        match leases.history().last() {
            Some(s) if s.holder.as_deref() == Some(leader.as_str()) => Ok(s.transitions),
            last => Err(format!("last seen {last:?}")),
        }
    })
    .await?;
    let killed = Instant::now();
    anyhow::ensure!(
        rig.kubelet.kill_container(ldap_rig::NAMESPACE, &leader, contract::GUARD_CONTAINER),
        "{leader}'s guard runs"
    );
    let node = rig.node(&leader);
    let fenced =
        wait_for(&format!("{leader}'s slapd fenced after its guard was killed"), FENCE_AFTER_DEATH, || async {
            match node.root().await.map_err(|e| e.to_string())?.read_only().await {
                Ok(true) => Ok(killed.elapsed()),
                Ok(false) => Err(format!("still writable {:?} after the kill", killed.elapsed())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    println!("{leader} fenced its slapd {fenced:?} after its guard was killed");

    rig.kubelet.restart(ldap_rig::NAMESPACE, &leader, contract::GUARD_CONTAINER).await?;
    let holder = wait_for("a new term", ELECT, || async {
        match leases.history().last() {
            Some(s) if s.transitions > term => s.holder.clone().ok_or_else(|| format!("{s:?}")),
            last => Err(format!("last seen {last:?}")),
        }
    })
    .await?;
    rig.wait_fences(&holder, &other(&holder), ELECT).await?;
    let history = leases.history();
    let released: Vec<&Seen> = history.iter().filter(|s| s.at >= killed && s.holder.is_none()).collect();
    assert!(released.is_empty(), "{leader} released the Lease after losing its guard: {history:?}");
    println!("{holder} leads after {leader}'s guard came back");
    rig.observer.assert_never_two_leaders();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_leader_pod_hands_over_before_its_slapd_is_stopped() -> anyhow::Result<()> {
    let rig = LdapRig::start_with(1, true).await?;
    let leader = rig.observer.wait_for_single_leader(ELECT).await?;
    let standby = other(&leader);
    rig.wait_fences(&leader, &standby, FENCE).await?;
    let leases = LeaseLog::start(rig.client.clone(), ldap_rig::NAMESPACE, &contract::lease_name(ldap_rig::STATEFULSET));

    // A client of the write Service, each pod standing for its slapd.
    let backends: HashMap<String, SocketAddr> = (0..2u32)
        .map(|o| {
            (
                contract::pod_name(ldap_rig::STATEFULSET, o),
                SocketAddr::from(([127, 0, 0, 1], rig.slapd.node(o + 1).port())),
            )
        })
        .collect();
    let forwarder =
        Forwarder::start(rig.client.clone(), ldap_rig::NAMESPACE, WRITE_SERVICE, move |pod| backends.get(pod).copied())
            .await?;
    let writer = Writer::start(forwarder.ldap_url());
    wait_for("acknowledged writes through the write Service", ELECT, || async {
        match writer.acked().len() {
            n if n >= WRITES_BEFORE => Ok(()),
            n => Err(format!("{n} acknowledged")),
        }
    })
    .await?;

    let deleted = Instant::now();
    Api::<Pod>::namespaced(rig.client.clone(), ldap_rig::NAMESPACE).delete(&leader, &DeleteParams::default()).await?;
    let (hook, stopped) = wait_for(&format!("the kubelet to stop {leader}'s slapd container"), ELECT, || async {
        let steps = rig.kubelet.terminations();
        let hook = steps.iter().find(|t| t.pod == leader && matches!(t.step, Step::PreStop(_)));
        let stop = hook.and_then(|h| {
            steps.iter().find(|t| t.pod == leader && t.container == h.container && t.step == Step::Stopping)
        });
        match (hook, stop) {
            (Some(h), Some(s)) => Ok((h.clone(), s.clone())),
            _ => Err(format!("{steps:?}")),
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    println!("{leader} deleted; its preStop hook returned {:?} after {:?}", hook.step, hook.at - deleted);
    assert_eq!(hook.step, Step::PreStop(Ok("HTTP/1.1 200 OK".into())), "the hand-over hook\n{}", rig.logs());

    // The standby held the Lease before slapd was told to stop: the old leader had fenced,
    // published its final contextCSN and released, and the standby had caught up.
    let history = leases.history();
    let taken = history.iter().find(|s| s.at >= deleted && s.holder.as_deref() == Some(standby.as_str()));
    assert!(
        taken.is_some_and(|t| t.at <= stopped.at),
        "{standby} did not hold the Lease before {leader}'s slapd was stopped at {:?}: {history:?}",
        stopped.at - deleted
    );
    anyhow::ensure!(rig.node(&leader).root().await?.read_only().await?, "{leader}'s slapd is fenced");

    // Writes go on through the new leader; every acknowledged write is there.
    writer.wait_ack_after(Instant::now(), ELECT).await?;
    let attempts = writer.stop().await;
    let on_new = writer::entry_server_ids(rig.node(&standby)).await?;
    let acked: Vec<&writer::Attempt> = attempts.iter().filter(|a| a.outcome == Outcome::Acked).collect();
    let lost: Vec<&str> = acked.iter().filter(|a| !on_new.contains_key(&a.uid)).map(|a| a.uid.as_str()).collect();
    println!("{} writes acknowledged, {} lost", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged writes missing on the new leader {standby}: {lost:?}");
    rig.observer.assert_never_two_leaders();
    Ok(())
}

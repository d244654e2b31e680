//! Nubus' primary LDAP servers with real slapd on the real node (issue 16): installed as its
//! chart would (slapd from a static slapd.conf, the socket directory on a PersistentVolumeClaim,
//! uid 101/gid 102, the proof of concept's `leader-elector`, the placeholder write Service),
//! then adopted by annotations on the live StatefulSet and a rollout restart
//! (`node::nubus`). Each test runs the observers of `node::consumer::scenario` from the end
//! of the rollout and checks, at the end: never two writable slapd servers, no acknowledged
//! write lost, never two ready endpoints in the write Service.
//!
//! One real node per machine: these tests serialise on its lock (docs/real-node.md).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use kube::Api;
use ldap_elector::cli::{assess, operator};
use ldap_elector_contract as contract;
use ldap_elector_tests::ldap::conn::Conn;
use ldap_elector_tests::ldap::slapd::{ADMIN_DN, ADMIN_PASSWORD};
use ldap_elector_tests::measure::writability::{self, Answer, RC_FENCED};
use ldap_elector_tests::node::consumer::faults;
use ldap_elector_tests::node::consumer::scenario::{accepting_servers, Scenario, RECOVERY};
use ldap_elector_tests::node::consumer::{is_ready, server_id, summary};
use ldap_elector_tests::node::nubus::manifests::{nubus, run_claim, LDAP_PORT, NAMESPACE, SLAPD_GID, SLAPD_UID};
use ldap_elector_tests::node::nubus::NubusOnNode;
use ldap_elector_tests::node::volumes;
use ldap_elector_tests::workloads::nubus::{MAIN, POC_ELECTOR, SOCKET_DIR, SOCKET_VOLUME};

/// Fresh connections through the write Service (kube-proxy picks an endpoint per connection).
const ROUTE_CHECKS: usize = 20;
/// The faults run this long with the client writing before the checks.
const SETTLE: Duration = Duration::from_secs(3);
/// Issue 16: a restarted standby's slapd is fenced within this of accepting connections.
const FENCE_BUDGET: Duration = Duration::from_secs(1);

fn containers(pod: &Pod) -> Vec<Container> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers.into_iter().flatten().chain(spec.containers).collect()
}

/// `Uid:`/`Gid:` (real ids) of a host PID from /proc.
fn proc_ids(pid: i32) -> anyhow::Result<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u32> {
        status.lines().find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
    };
    match (field("Uid:"), field("Gid:")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => anyhow::bail!("no Uid/Gid in /proc/{pid}/status"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_loop_annotate_the_live_statefulset_one_leader_and_the_cluster_ip_reaches_only_its_slapd(
) -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode::AS_SHIPPED).await?;
    eprintln!("set-up {:.1}s (bed, chart, consumer, adoption, first leader, first write)", s.setup.as_secs_f64());
    let (leader, _) = s.leader().await?;
    let standby = 1 - leader;

    // The write Service: the proof of concept's pinned pod name replaced by the leader selector.
    let n = nubus();
    let services: Api<Service> = Api::namespaced(s.bed.admin_client()?, NAMESPACE);
    let selector = services.get(&n.write_service_name()).await?.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.get(contract::LABEL_ROLE).map(String::as_str), Some(contract::ROLE_LEADER), "{selector:?}");
    assert!(!selector.contains_key(contract::LABEL_STATEFULSET_POD_NAME), "pinned pod name kept: {selector:?}");

    // Only the leader's slapd takes writes through the ClusterIP.
    let ids = accepting_servers(&s.consumer.write_url(), ROUTE_CHECKS).await?;
    let distinct: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct, HashSet::from([server_id(leader)]), "the write Service reached {ids:?}; leader is {leader}");

    for ordinal in 0..2 {
        let name = s.consumer.pod_name(ordinal);
        let pod = s.consumer.pods().get(&name).await?;
        let all = containers(&pod);
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        // Never two electors: the proof of concept removed, ours in.
        assert!(!names.contains(&POC_ELECTOR), "{name}: {names:?}");
        for injected in [contract::SIDECAR_CONTAINER, contract::GUARD_CONTAINER] {
            assert!(names.contains(&injected), "{name}: {names:?}");
        }
        // slapd.conf: no slapd.d for the start-fenced init container to fence.
        assert!(!names.contains(&contract::START_FENCED_CONTAINER), "{name}: {names:?}");
        // The sidecars share the claim at the socket directory, read-only; main keeps its token.
        for c in
            all.iter().filter(|c| [contract::SIDECAR_CONTAINER, contract::GUARD_CONTAINER].contains(&c.name.as_str()))
        {
            let mount = c.volume_mounts.iter().flatten().find(|m| m.mount_path == SOCKET_DIR);
            let shared = mount.is_some_and(|m| m.name == SOCKET_VOLUME && m.read_only == Some(true));
            assert!(shared, "{name}/{}: {mount:?}", c.name);
        }
        let main = all.iter().find(|c| c.name == MAIN).expect("main");
        assert!(
            main.volume_mounts.iter().flatten().any(|m| m.mount_path == contract::TOKEN_MOUNT_PATH),
            "{name}: main lost its token"
        );
        // slapd runs as 101:102 (the image's openldap user is another).
        let pid = faults::container_pid(s.node(), &pod, MAIN)?;
        assert_eq!(proc_ids(pid)?, (SLAPD_UID, SLAPD_GID), "{name}: slapd's ids");
        // The kubelet applied fsGroup to the claim's volume: that is how slapd (101) may
        // create its socket there and the sidecar (65532) may reach it.
        let dir = volumes::local_volume_dir(s.node(), NAMESPACE, &run_claim(&n, ordinal));
        let meta = std::fs::metadata(&dir)?;
        assert_eq!(meta.gid(), SLAPD_GID, "{}: group", dir.display());
        assert!(dir.join("ldapi").exists(), "no socket in {}", dir.display());
    }

    // As shipped, the data database has a session log: each elector's configuration guard
    // says so loud (the DangerousSlapdConfig Event on its pod), and `ldap-elector status`
    // warns for both pods.
    let admin = s.bed.admin_client()?;
    let flagged = || async {
        let snapshot = operator::gather(&admin, NAMESPACE, &n.statefulset_name()).await.map_err(|e| e.to_string())?;
        let warnings = assess::assess(&snapshot).warnings;
        let pods: HashSet<String> = warnings
            .iter()
            .filter(|w| w.contains("session-log-on-mirror-mode"))
            .filter_map(|w| w.split(':').next().map(String::from))
            .collect();
        if pods.len() == 2 {
            Ok(warnings)
        } else {
            Err(format!("{warnings:?}"))
        }
    };
    let warnings = ldap_elector_tests::wait_for("both pods flagged in ldap-elector status", RECOVERY, flagged).await?;
    eprintln!("  ldap-elector status: {warnings:?}");

    // The standby's slapd refuses a real write at its pod IP.
    let standby_ip = s.consumer.pod_ip(standby).await?.unwrap_or_default();
    let mut direct = Conn::open(&format!("ldap://{standby_ip}:{LDAP_PORT}")).await?;
    direct.ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
    let refused = direct.add_person("to-the-standby").await?;
    assert_eq!(refused.rc, RC_FENCED, "the standby's slapd must refuse writes: {refused:?}");
    assert_eq!(s.prober.last_answer(standby), Some(Answer::Refused(RC_FENCED)));
    assert_eq!(s.prober.last_answer(leader), Some(Answer::Writable));
    let verdict = s.finish().await?;
    verdict.assert_safe();
    assert!(verdict.acked > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_elector_container_killed_from_the_host_leaves_no_two_writable_servers() -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode::AS_SHIPPED).await?;
    s.kill_the_leaders_elector().await?;
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// The failover, switchover and freeze stories of the real-node issue, in a row on one bed (a
/// bed each would cost a minute of set-up apiece): a switchover asked on the Lease, the
/// leader's pod frozen past the Lease and thawed, then the leader's slapd killed and restarted
/// by the kubelet from slapd.conf (with docs/nubus.md's `readonly on`: read-only until the
/// elector fences or promotes it). The verdict covers the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_freeze_and_slapd_kill_of_the_leader_in_a_row_never_two_writable_servers() -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode::CHANGED_AS_DOCUMENTED).await?;
    s.switch_over().await?;
    s.freeze_the_leader_past_the_lease().await?;
    s.writer.wait_ack_after(Instant::now(), RECOVERY).await?;
    s.kill_the_leaders_slapd().await?;
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// A slapd.conf keeps no fence across restarts: the standby's slapd restarted by the kubelet
/// must be fenced within [`FENCE_BUDGET`] of its first answer, and never be writable while
/// the leader is. Runs with docs/nubus.md's `readonly on`: as shipped, the restarted slapd
/// accepted a probe's write 23 ms and 27 ms before its first 53, while the leader was
/// writable, in 2 of 3 runs (2026-12-06; issue 16 item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standbys_slapd_restarted_from_slapd_conf_is_fenced_within_a_second_never_two_writable_servers(
) -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode::CHANGED_AS_DOCUMENTED).await?;
    let (leader, _) = s.leader().await?;
    let standby = 1 - leader;
    let killed_at = s.kill_slapd_until_restarted(standby).await?;
    let answered = |pred: fn(Answer) -> bool| {
        let s = &s;
        move || async move { s.prober.first_after(standby, killed_at, pred).ok_or("no such answer yet") }
    };
    let first = ldap_elector_tests::wait_for(
        "the restarted slapd to answer",
        RECOVERY,
        answered(|a| matches!(a, Answer::Refused(_) | Answer::Writable)),
    )
    .await?;
    let fenced = ldap_elector_tests::wait_for(
        "the restarted slapd to be fenced",
        RECOVERY,
        answered(|a| a == Answer::Refused(RC_FENCED)),
    )
    .await?;
    eprintln!(
        "  first answer after the kill: {:?} at +{:.3}s; first 53 at +{:.3}s",
        first.answer,
        first.sent.as_secs_f64(),
        fenced.sent.as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    let took = fenced.sent.saturating_sub(first.sent);
    assert!(took <= FENCE_BUDGET, "fenced {:.3}s after its first answer ({:?})", took.as_secs_f64(), first.answer);
    Ok(())
}

/// Graceful deletion of the leader: hand-over, then the re-created pod (same claim) starts
/// slapd from slapd.conf while the other pod leads. Runs with docs/nubus.md's `readonly on`:
/// as shipped, the re-created slapd accepted a probe's write 25 ms before its fence while
/// the leader was writable (1 run of 1, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_pod_of_the_leader_hands_over_without_two_writable_servers() -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode::CHANGED_AS_DOCUMENTED).await?;
    let (leader, pod) = s.leader().await?;
    let old = s.consumer.pod_name(leader);
    let old_uid = pod.metadata.uid.clone().unwrap_or_default();
    let deleted_at = Instant::now();
    let mut kubectl = s.bed.kubectl();
    kubectl.args(["delete", "pod", &old, "-n", NAMESPACE, "--wait=false"]);
    let out = kubectl.output()?;
    anyhow::ensure!(out.status.success(), "kubectl delete: {}", String::from_utf8_lossy(&out.stderr));
    let (new_leader, at) =
        s.observer.wait_for_new_leader("a new leader after the deletion", Some(&old), deleted_at, RECOVERY).await?;
    eprintln!("{} {new_leader} leader after the deletion", s.at(at));
    s.writer.wait_ack_after(at, RECOVERY).await?;
    // The re-created pod (same claim, so the same socket directory): its slapd starts from
    // slapd.conf, writable, while the other pod leads. The prober must see it answer before
    // the verdict: the deleted pod stays Ready while it hands over, so waiting for "Ready"
    // alone could end the test before the new slapd ran. The StatefulSet controller creates
    // the new pod once the old one is gone, containers and all.
    let recreated_at = ldap_elector_tests::wait_for("the pod re-created", RECOVERY * 2, || async {
        let pod = s.consumer.pods().get_opt(&old).await.map_err(|e| e.to_string())?;
        match pod.and_then(|p| p.metadata.uid) {
            Some(uid) if uid != old_uid => Ok(Instant::now()),
            other => Err(format!("uid {other:?}")),
        }
    })
    .await?;
    let first = ldap_elector_tests::wait_for("the re-created slapd to answer a probe", RECOVERY, || async {
        s.prober.first_after(leader, recreated_at, |a| matches!(a, Answer::Refused(_) | Answer::Writable)).ok_or("none")
    })
    .await?;
    eprintln!("  the re-created slapd's first answer: {:?} at +{:.3}s", first.answer, first.sent.as_secs_f64());
    ldap_elector_tests::wait_for("the re-created pod Ready", RECOVERY, || async {
        let pod = s.consumer.pods().get(&old).await.map_err(|e| e.to_string())?;
        is_ready(&pod).then_some(()).ok_or_else(|| summary(&pod))
    })
    .await?;
    s.consumer.wait_ready(RECOVERY).await?;
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// What a standby missed in [`standby_down_while_the_leader_adds_then_deletes`].
#[derive(Debug)]
struct Outage {
    /// Entries the leader added while the standby's slapd was down, missing on the standby
    /// once both servers' contextCSN agree again.
    missing: Vec<String>,
    /// Whether the standby applied the delete that followed those adds.
    delete_applied: bool,
}

/// The standby's slapd down (its pod frozen, slapd killed, thawed: its buffered replication
/// dies with it) while the leader adds [`OUTAGE_ADDS`] entries and then deletes one the
/// standby had, and nothing else changes: the order that the session log gets wrong
/// (docs/divergence.md). Waits until
/// the restarted standby's contextCSN equals the leader's and the delete arrived, then says
/// which adds it lacks. `round` names the entries.
async fn standby_down_while_the_leader_adds_then_deletes(s: &Scenario, round: u32) -> anyhow::Result<Outage> {
    // The session log drops the changes of the lowest server ID: lead from pod 0 (ID 1).
    if s.leader().await?.0 != 0 {
        s.switch_over().await?;
    }
    let (leader, standby) = (0, 1);
    // The client pauses: a session log of 100 covers an outage only while fewer changes were
    // missed (with more, the provider falls back to a full refresh, which loses nothing), so
    // the client's 50 writes a second would hide what a quiet directory loses.
    let _paused = s.writer.pause().await;
    let urls = s.consumer.pod_urls().await?;
    let mut writer = Conn::open(&urls[leader]).await?;
    writer.ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
    let victim = format!("outage-{round}-victim");
    anyhow::ensure!(writer.add_person(&victim).await?.rc == 0, "adding {victim}");
    ldap_elector_tests::wait_for("the standby to hold the entry to delete", RECOVERY, || async {
        let uids = writability::uids(&urls[standby]).await.map_err(|e| e.to_string())?;
        uids.contains(&victim).then_some(()).ok_or_else(|| "not yet".to_string())
    })
    .await?;

    let pod = s.consumer.pods().get(&s.consumer.pod_name(standby)).await?;
    let slapd = faults::container_pid(s.node(), &pod, MAIN)?;
    let before = s.restarts(standby, MAIN).await?;
    let cgroup = faults::pod_freezer(pod.metadata.uid.as_deref().unwrap_or_default())?;
    faults::set_frozen(&cgroup, true)?;
    let killed = faults::sigkill(slapd);
    let mut added = Vec::new();
    let changes = async {
        for i in 0..OUTAGE_ADDS {
            let uid = format!("outage-{round}-{i}");
            anyhow::ensure!(writer.add_person(&uid).await?.rc == 0, "adding {uid}");
            added.push(uid);
        }
        anyhow::ensure!(writer.delete_person(&victim).await?.rc == 0, "deleting {victim}");
        Ok(())
    }
    .await;
    faults::set_frozen(&cgroup, false)?;
    eprintln!(
        "{} standby frozen, slapd killed, {} added and {victim} deleted on the leader, thawed",
        s.at(killed?),
        added.len()
    );
    changes?;
    s.wait_restarted("the kubelet to restart the standby's slapd", standby, MAIN, before).await?;
    ldap_elector_tests::wait_for(
        "the standby's contextCSN to equal the leader's, the delete applied",
        RECOVERY,
        || async {
            let csn = |i: usize| writability::context_csn(&urls[i]);
            let (l, r) =
                (csn(leader).await.map_err(|e| e.to_string())?, csn(standby).await.map_err(|e| e.to_string())?);
            let gone = !writability::uids(&urls[standby]).await.map_err(|e| e.to_string())?.contains(&victim);
            (l == r && gone).then_some(()).ok_or(format!("leader {l:?}, standby {r:?}, delete applied: {gone}"))
        },
    )
    .await?;
    // Replication is done by contextCSN; a moment more for anything still in flight.
    tokio::time::sleep(SETTLE).await;
    let present = writability::uids(&urls[standby]).await?;
    Ok(Outage { missing: writability::missing(&added, &present), delete_applied: !present.contains(&victim) })
}

/// Adds on the leader while the standby is down, before the delete.
const OUTAGE_ADDS: usize = 5;
/// Outages tried before the session log's loss counts as not reproduced.
const OUTAGES: u32 = 3;

/// Issue 16 item 7, reproduced on this fixture's replication configuration: with
/// `syncprov-sessionlog 100` (as Nubus ships it; `readonly on` kept so that only the session
/// log differs from the next test), a standby that was down while the leader added entries
/// and then deleted one comes back with the delete but without the adds, while both
/// servers' contextCSN agree — the loss docs/nubus.md's change removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_session_log_a_standby_that_was_down_loses_the_adds_before_a_delete() -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode { start_read_only: true, session_log: true }).await?;
    let mut outages = Vec::new();
    for round in 0..OUTAGES {
        let outage = standby_down_while_the_leader_adds_then_deletes(&s, round).await?;
        eprintln!("  outage {round}: {outage:?}");
        let lost = !outage.missing.is_empty();
        outages.push(outage);
        if lost {
            break;
        }
    }
    assert!(
        outages.iter().any(|o| o.delete_applied && !o.missing.is_empty()),
        "the session log lost nothing in {} outages: {outages:?}",
        outages.len()
    );
    Ok(())
}

/// The same outages with docs/nubus.md's changes (no session log): the standby comes back
/// with every add and the delete, and the run's invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_session_log_a_standby_that_was_down_misses_nothing() -> anyhow::Result<()> {
    let s = Scenario::start_with(&NubusOnNode::CHANGED_AS_DOCUMENTED).await?;
    for round in 0..OUTAGES {
        let outage = standby_down_while_the_leader_adds_then_deletes(&s, round).await?;
        eprintln!("  outage {round}: {outage:?}");
        assert!(outage.delete_applied && outage.missing.is_empty(), "outage {round}: {outage:?}");
    }
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

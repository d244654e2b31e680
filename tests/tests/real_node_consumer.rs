//! The consumer on the real node (issue 14, items 3–4): the chart installed with helm, a
//! Mirror-Mode pair of real slapd containers opted in by annotations in a `restricted`
//! namespace, and faults injected from the host. Every test runs the independent observers
//! of `node::consumer::scenario` and checks, at the end: never two writable slapd servers,
//! no acknowledged write lost, never two ready endpoints in the write Service.
//!
//! One real node per machine: these tests serialise on its lock (docs/real-node.md).

use std::collections::HashSet;

use anyhow::Context as _;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::Api;
use ldap_elector_contract::{SIDECAR_CONTAINER, START_FENCED_CONTAINER};
use ldap_elector_tests::ldap::conn::Conn;
use ldap_elector_tests::ldap::slapd::{ADMIN_DN, ADMIN_PASSWORD};
use ldap_elector_tests::measure::writability::{Answer, RC_FENCED};
use ldap_elector_tests::node::config::NODE_NAME;
use ldap_elector_tests::node::consumer::faults;
use ldap_elector_tests::node::consumer::manifests::CONTAINER_PORT;
use ldap_elector_tests::node::consumer::scenario::{accepting_servers, Scenario, RECOVERY};
use ldap_elector_tests::node::consumer::{pod_name, server_id, NAMESPACE};

/// Fresh connections through the write Service in the full loop (kube-proxy picks an
/// endpoint per connection).
const ROUTE_CHECKS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_loop_helm_install_annotate_one_leader_and_the_cluster_ip_reaches_only_its_slapd() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    eprintln!("set-up {:.1}s (bed, chart, consumer, first leader, first write)", s.setup.as_secs_f64());
    let (leader, _) = s.leader().await?;
    let ids = accepting_servers(&s.consumer.write_url(), ROUTE_CHECKS).await?;
    let distinct: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(
        distinct,
        HashSet::from([server_id(leader)]),
        "the write Service reached {ids:?}; leader is pod {leader}"
    );
    // The standby's slapd is fenced: its probes are refused with 53.
    let standby = 1 - leader;
    let since = Instant::now();
    ldap_elector_tests::wait_for("a probe of the standby", Duration::from_secs(5), || async {
        s.prober.first_after(standby, since, |_| true).ok_or("none yet")
    })
    .await?;
    let mut answers = std::collections::BTreeMap::new();
    for p in s.prober.probes() {
        *answers.entry((p.server, format!("{:?}", p.answer))).or_insert(0) += 1;
    }
    // A real write to the standby's slapd, at its pod IP: refused.
    let standby_ip = s.consumer.pod_ip(standby).await?.unwrap_or_default();
    let mut direct = Conn::open(&format!("ldap://{standby_ip}:{CONTAINER_PORT}")).await?;
    direct.ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
    let refused = direct.add_person("to-the-standby").await?;
    assert_eq!(refused.rc, RC_FENCED, "the standby's slapd must refuse writes: {refused:?}");
    assert_eq!(s.prober.last_answer(standby), Some(Answer::Refused(RC_FENCED)), "the standby's probes: {answers:?}");
    assert_eq!(s.prober.last_answer(leader), Some(Answer::Writable));
    let verdict = s.finish().await?;
    verdict.assert_safe();
    assert!(verdict.acked > 0);
    Ok(())
}

/// The faults run this long with the client writing before the checks.
const SETTLE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_slapd_container_killed_is_restarted_by_the_kubelet_and_writes_resume() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    s.kill_the_leaders_slapd().await?;
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// Issue 15/16: a standby's slapd restarts from its on-disk cn=config while the other pod
/// leads; the elector must fence it as soon as it accepts connections, whatever that
/// config says (before that fix: at its next verify, up to 1 s later; the prober saw it
/// accept writes for 35 ms to 4 s, two writable servers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standbys_slapd_container_killed_restarts_fenced_never_two_writable_servers() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (leader, _) = s.leader().await?;
    let standby = 1 - leader;
    let killed_at = s.kill_slapd_until_restarted(standby).await?;
    let answered = ldap_elector_tests::wait_for("the restarted slapd to answer", RECOVERY, || async {
        s.prober
            .first_after(standby, killed_at, |a| matches!(a, Answer::Refused(_) | Answer::Writable))
            .ok_or("no answer")
    })
    .await?;
    eprintln!("  its first answer after the kill: {:?} at +{:.3}s", answered.answer, answered.sent.as_secs_f64());
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_pod_frozen_for_longer_than_the_lease_and_thawed_never_gives_two_writable_servers(
) -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    s.freeze_the_leader_past_the_lease().await?;
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_its_connection_to_the_old_leader_gets_refused_or_closed_never_success() -> anyhow::Result<()>
{
    let s = Scenario::start().await?;
    let mut held = Conn::open(&s.consumer.write_url()).await?;
    held.ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
    held.add_person("held-before").await?.success()?;
    // A graceful switchover: the old leader's pod (and so the held connection) stays up.
    s.switch_over().await?;
    for i in 0..5 {
        let uid = format!("held-after{i}");
        match held.add_person(&uid).await {
            Ok(r) => {
                eprintln!("held connection: {uid} answered {} {:?}", r.rc, r.text);
                assert_ne!(r.rc, 0, "{uid} acknowledged on the connection to the old leader");
            }
            Err(e) => {
                eprintln!("held connection: {e} (closed)");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(held);
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// Why `container` of pod `ordinal` last terminated (`OOMKilled`, `Error`, ...).
async fn last_termination(s: &Scenario, ordinal: usize, container: &str) -> anyhow::Result<Option<String>> {
    let status = s.container_status(ordinal, container).await?;
    Ok(status.and_then(|c| c.last_state?.terminated?.reason))
}

/// Kills of the leader's elector in a row, each after the killed container ran again: the
/// kubelet restarts a container at once after its first exit, then with a growing back-off
/// (10 s, 20 s, ...), longer than the Lease: the container is left in CrashLoopBackOff.
const ELECTOR_KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_elector_container_killed_from_the_host_into_crash_loop_leaves_no_two_writable_servers(
) -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    for _ in 0..ELECTOR_KILLS {
        s.kill_the_leaders_elector().await?;
    }
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// The elector's container OOM-killed by the kernel at its memory limit (the injected
/// sidecar's `resources.limits.memory`): the same as a kill -9, from the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_elector_oom_killed_at_its_memory_limit_leaves_no_two_writable_servers() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (leader, pod) = s.leader().await?;
    let before = s.restarts(leader, SIDECAR_CONTAINER).await?;
    let (filled_at, mut filler) = faults::oom_kill(&pod, SIDECAR_CONTAINER)?;
    eprintln!("{} the elector's memory cgroup in {} filled to its limit", s.at(filled_at), pod_name(leader));
    let covered = s.elector_death_is_covered(leader, filled_at, before).await;
    let filler_exit = filler.wait(); // killed in turn, once the container's processes are gone
    covered?;
    eprintln!("  the filler ended: {:?}", filler_exit?);
    let reason = last_termination(&s, leader, SIDECAR_CONTAINER).await?;
    anyhow::ensure!(reason.as_deref() == Some("OOMKilled"), "the elector ended with {reason:?}, not OOMKilled");
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_pod_of_the_leader_hands_over_without_two_writable_servers() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (leader, _) = s.leader().await?;
    let old = s.consumer.pod_uid(leader).await?;
    let deleted_at = Instant::now();
    let mut kubectl = s.bed.kubectl();
    kubectl.args(["delete", "pod", &pod_name(leader), "-n", NAMESPACE, "--wait=false"]);
    let out = kubectl.output()?;
    anyhow::ensure!(out.status.success(), "kubectl delete: {}", String::from_utf8_lossy(&out.stderr));
    let (new_leader, at) = s
        .observer
        .wait_for_new_leader("a new leader after the deletion", Some(&pod_name(leader)), deleted_at, RECOVERY)
        .await?;
    eprintln!("{} {new_leader} leader after the deletion", s.at(at));
    s.writer.wait_ack_after(at, RECOVERY).await?;
    s.consumer.wait_replaced(leader, old.as_deref(), RECOVERY * 2).await?;
    // The re-created pod's slapd starts fenced: the init container ldap-elector-start-fenced
    // set olcReadOnly in its slapd.d first (before, it took writes until the elector's fence
    // reached it, while the other pod led: CI saw one 25 ms in, an overlap the verdict flags).
    let fenced = s.container_status(leader, START_FENCED_CONTAINER).await?.context("no start-fenced container")?;
    let exit = fenced.state.and_then(|st| st.terminated).map(|t| t.exit_code);
    assert_eq!(exit, Some(0), "{START_FENCED_CONTAINER} of the re-created pod");
    tokio::time::sleep(SETTLE).await;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// What the leader's data volume is filled with: more than the 32 MiB that the injected
/// containers' ephemeral-storage limits used to cap the whole pod at.
const FILLER_BYTES: u64 = 48 << 20;
/// How long the pod must stay after the kubelet measured the filler: several cycles of its
/// eviction manager (every 10 s), which evicted at the first one before the fix.
const EVICTION_CYCLES: Duration = Duration::from_secs(35);

/// Reproducer of a lost-write path found by `make bench-node`: the injected containers had
/// ephemeral-storage limits (16 + 8 + 8 MiB), so the kubelet capped the whole LDAP pod at
/// 32 MiB, its emptyDir database and slapd's logs included, and evicted it at once (no
/// grace, no hand-over) when the directory outgrew that: the leader went with its data while
/// the re-created standby was still copying (13,000 entries). A consumer's data must never
/// count against a limit the webhook brought. The leader's data volume gets 48 MiB more,
/// written from the host; once the kubelet has measured it, the pod must stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_data_outgrows_the_injected_containers_requests_is_not_evicted() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (leader, pod) = s.leader().await?;
    let uid = pod.metadata.uid.clone().context("the leader has no UID")?;
    let volume = s.node().layout().kubelet_root().join("pods").join(&uid).join("volumes/kubernetes.io~empty-dir/state");
    let filler = volume.join("filler");
    std::fs::write(&filler, vec![0x5a_u8; FILLER_BYTES as usize]).with_context(|| format!("{}", filler.display()))?;
    let still_there = || async {
        let now = s.consumer.pods().get_opt(&pod_name(leader)).await?;
        match now {
            Some(p) if p.metadata.uid.as_deref() == Some(uid.as_str()) && p.metadata.deletion_timestamp.is_none() => {
                anyhow::Ok(())
            }
            other => {
                let status = other.as_ref().and_then(|p| p.status.as_ref());
                let why = status.map(|st| format!("{:?}: {:?}", st.reason, st.message)).unwrap_or_default();
                anyhow::bail!("pod {} ({uid}) was removed after its data grew: {why}", pod_name(leader))
            }
        }
    };
    let deadline = Instant::now() + RECOVERY * 2;
    loop {
        still_there().await?;
        let used = pod_storage_used(&s, &uid)?;
        if used >= FILLER_BYTES {
            eprintln!("the kubelet measured {used} bytes of ephemeral storage in the leader's pod");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the kubelet never measured the filler: {used} bytes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let measured = Instant::now();
    while measured.elapsed() < EVICTION_CYCLES {
        still_there().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    std::fs::remove_file(&filler)?;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// The ephemeral storage the kubelet's stats summary reports for the pod `uid` (0 if not yet).
fn pod_storage_used(s: &Scenario, uid: &str) -> anyhow::Result<u64> {
    let path = format!("/api/v1/nodes/{NODE_NAME}/proxy/stats/summary");
    let out = s.bed.kubectl().args(["get", "--raw", &path]).output()?;
    anyhow::ensure!(out.status.success(), "kubectl get --raw {path}: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pods = summary["pods"].as_array().into_iter().flatten();
    let used = pods.filter(|p| p["podRef"]["uid"] == uid).map(|p| p["ephemeral-storage"]["usedBytes"].as_u64());
    Ok(used.flatten().next().unwrap_or(0))
}

/// How long replication into the re-created standby stays cut (several readiness periods).
const REPLICATION_CUT: Duration = Duration::from_secs(20);

/// Points the peer Service of pod `ordinal` (its peer's syncrepl provider) at `pod`.
async fn point_peer_service(s: &Scenario, ordinal: usize, pod: &str) -> anyhow::Result<()> {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(s.bed.admin_client()?, NAMESPACE);
    let patch = serde_json::json!({"spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod}}});
    services.patch(&pod_name(ordinal), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// A pod re-created with an empty volume copies its peer before it may be Ready: a rolling
/// update or a drain (both wait for Ready) would otherwise take the only complete copy away.
/// Replication into the new standby is cut (its provider Service selects nothing) while the
/// client keeps writing; the pod must not turn Ready before it holds every write acknowledged
/// before its deletion. Before the fix its sidecar was Ready as soon as it ran: the bench saw
/// such a pod Ready with 1320 of 5860 entries, and the writes only its peer held were lost
/// when that peer went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_standby_is_not_ready_before_it_holds_every_acknowledged_write() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (leader, _) = s.leader().await?;
    let standby = 1 - leader;
    let pods = s.consumer.pods();
    let old = pods.get(&pod_name(standby)).await?.metadata.uid;
    let (before, deleted_at) = re_create_the_standby_cut_off(&s, leader).await?;

    let mut restored = None;
    let ready_at = loop {
        anyhow::ensure!(deleted_at.elapsed() < RECOVERY * 3, "the re-created standby never turned Ready");
        if restored.is_none() && deleted_at.elapsed() >= REPLICATION_CUT {
            point_peer_service(&s, leader, &pod_name(leader)).await?;
            restored = Some(Instant::now());
            eprintln!("{} replication into the new standby restored", s.at(Instant::now()));
        }
        match pods.get_opt(&pod_name(standby)).await? {
            Some(p) if p.metadata.uid != old && ldap_elector_tests::node::consumer::is_ready(&p) => {
                break Instant::now()
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let url = s.consumer.pod_urls().await?[standby].clone();
    let held = ldap_elector_tests::measure::writability::uids(&url).await?;
    let missing = ldap_elector_tests::measure::writability::missing(&before, &held);
    eprintln!("{} the new standby Ready, holding {} entries", s.at(ready_at), held.len());
    assert!(
        missing.is_empty(),
        "the re-created standby turned Ready {:?} after its deletion (replication restored: {:?}) lacking {} of \
         the {} writes acknowledged before it",
        ready_at - deleted_at,
        restored.map(|r| r.saturating_duration_since(deleted_at)),
        missing.len(),
        before.len()
    );
    assert!(restored.is_some_and(|r| ready_at >= r), "Ready while replication into it was cut");
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

/// After 100 acknowledged writes, cuts replication into the standby (the peer Service of
/// `leader`, its provider, selects nothing) and deletes the standby's pod: the StatefulSet
/// re-creates it with an empty volume that cannot seed. Returns the writes acknowledged
/// before and when the pod was deleted.
async fn re_create_the_standby_cut_off(s: &Scenario, leader: usize) -> anyhow::Result<(Vec<String>, Instant)> {
    ldap_elector_tests::wait_for("100 acknowledged writes", RECOVERY, || async {
        let n = s.writer.acked().len();
        if n >= 100 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await?;
    point_peer_service(s, leader, "nobody").await?;
    let before: Vec<String> = s.writer.acked().into_iter().map(|a| a.uid).collect();
    let mut kubectl = s.bed.kubectl();
    kubectl.args(["delete", "pod", &pod_name(1 - leader), "-n", NAMESPACE, "--wait=false"]);
    let out = kubectl.output()?;
    anyhow::ensure!(out.status.success(), "kubectl delete: {}", String::from_utf8_lossy(&out.stderr));
    Ok((before, Instant::now()))
}

/// How long the leader stays frozen: past its Lease, the catch-up verify and the catch-up
/// grace (30 s, the default), with a margin.
const PAST_THE_GRACE: Duration = Duration::from_secs(55);

/// Reproducer: the catch-up grace promoted a standby that was still seeding its empty volume
/// (the bench, after the kubelet evicted the leader: the new leader held 2 entries of 13,000).
/// Where the old leader's data survives (a PersistentVolume, a frozen or partitioned pod) its
/// return is worse: slapd's refresh from the promoted server deletes on the returning one
/// every entry the new leader lacks. Here the re-created standby cannot seed (its provider
/// Service selects nothing) and the leader is frozen past the Lease and the grace: nobody may
/// take over; thawed, the old leader leads again, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_still_seeding_never_takes_over_however_long_the_leader_is_gone() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (leader, pod) = s.leader().await?;
    let (standby, leader_name) = (1 - leader, pod_name(leader));
    let old = s.consumer.pod_uid(standby).await?;
    re_create_the_standby_cut_off(&s, leader).await?;
    ldap_elector_tests::wait_for("the re-created standby's elector to start", RECOVERY, || async {
        let uid = s.consumer.pod_uid(standby).await.map_err(|e| e.to_string())?;
        let started = s.container_status(standby, SIDECAR_CONTAINER).await.map_err(|e| e.to_string())?;
        match started.and_then(|c| c.started) {
            Some(true) if uid != old => Ok(()),
            other => Err(format!("{uid:?} started: {other:?}")),
        }
    })
    .await?;
    let cgroup = faults::pod_freezer(pod.metadata.uid.as_deref().unwrap_or_default())?;
    let frozen_at = Instant::now();
    faults::set_frozen(&cgroup, true)?;
    eprintln!("{} froze the leader {leader_name}", s.at(frozen_at));
    tokio::time::sleep(PAST_THE_GRACE).await;
    let promoted = s.observer.new_leader_after(Some(&leader_name), frozen_at);
    faults::set_frozen(&cgroup, false)?;
    eprintln!("{} thawed", s.at(Instant::now()));
    assert_eq!(promoted, None, "a standby still seeding took over:\n{}", s.observer.timeline());
    let (back, at) = s.observer.wait_for_single_leader(RECOVERY).await.map(|l| (l, Instant::now()))?;
    assert_eq!(back, leader_name, "after the thaw");
    s.writer.wait_ack_after(at, RECOVERY).await?;
    point_peer_service(&s, leader, &leader_name).await?;
    let verdict = s.finish().await?;
    verdict.assert_safe();
    Ok(())
}

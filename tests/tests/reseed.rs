//! Issue 9, parts 3 and 5 on the real bed and a real slapd pair with the session log:
//! divergence is reproduced while the electors run → the leader's audit marks the diverged
//! standby in the Lease → the standby does not take over even when the leader is gone and
//! the Lease has long expired → `ldap-elector reseed` refuses the leader, then empties the
//! standby's data directory, waits for a clean audit and clears the mark → the standby takes
//! over when the leader stops.
//!
//! Pod ordinal `o` ↔ slapd node `o + 1`. Node 2 is stopped before the electors start, so
//! `ldap-server-0` (node 1) leads and node 2 is the one that returns and diverges (the notes
//! saw changes made on the lowest server ID dropped).
//!
//! Run with `--nocapture` to see the steps.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use ldap_elector::divergence::audit::{self, AuditConfig, Verdict};
use ldap_elector::divergence::policy::parse_marks;
use ldap_elector::slapd::ldap::Credentials;
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::ldap::slapd::{self, MirrorPair, SUFFIX};
use ldap_elector_tests::ldap::{divergence, writer};
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::build::elector_binary;
use ldap_elector_tests::workloads::electors::{Pair, PairOptions};

const ELECT: Duration = Duration::from_secs(90);
/// From a standby's return to its mark in the Lease: a probe period (5 s), the audit, a renew.
const MARKED: Duration = Duration::from_secs(60);
/// The Lease duration of the electors (the default).
const LEASE: Duration = Duration::from_secs(8);
/// Fresh scenarios tried before concluding that this slapd no longer diverges.
const ATTEMPTS: u32 = 3;
const RESEED: Duration = Duration::from_secs(150);

/// The servers as the electors and `reseed` reach them: `POD=URL` pairs.
fn servers(slapd: &MirrorPair) -> String {
    (0..2u32)
        .map(|o| format!("{}={}?base={SUFFIX}", contract::pod_name("ldap-server", o), slapd.node(o + 1).ldap_url()))
        .collect::<Vec<_>>()
        .join(",")
}

async fn lease(pair: &Pair) -> anyhow::Result<Lease> {
    let name = contract::lease_name(&pair.statefulset);
    Ok(Api::<Lease>::namespaced(pair.client.clone(), &pair.namespace).get(&name).await?)
}

fn annotation(lease: &Lease, name: &str) -> Option<String> {
    lease.metadata.annotations.as_ref().and_then(|a| a.get(name)).cloned()
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty())
}

/// Node 1 (A) against node 2 (B), anonymous over ldap (the rig's default ACL lets anyone read).
async fn audit_pair(slapd: &MirrorPair) -> anyhow::Result<audit::Report> {
    let url = |i: u32| format!("{}?base={SUFFIX}", slapd.node(i).ldap_url());
    let mut cfg = AuditConfig::new(&url(1), &url(2), &Credentials::default()).map_err(anyhow::Error::msg)?;
    cfg.timeout = Duration::from_secs(60);
    Ok(audit::audit(&cfg).await?)
}

/// `ldap-elector reseed` as the operator runs it, with the bed's admin kubeconfig.
fn reseed_command(pair: &Pair, slapd: &MirrorPair, pod: &str, data_dir: bool) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(elector_binary(false));
    cmd.arg("reseed")
        .args(["--pod", pod, "--namespace", &pair.namespace, "--servers", &servers(slapd)])
        .args(["--timeout", "120s", "--op-timeout", "10s"])
        .env("KUBECONFIG", &pair.bed.kubeconfig)
        .env("ELECTOR_LOG_FORMAT", "text")
        .env_remove(contract::ENV_AUDIT_PEERS)
        .kill_on_drop(true);
    if data_dir {
        cmd.arg("--data-dir").arg(slapd.node(2).data_dir());
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_standby_is_marked_never_promoted_and_promotable_again_after_reseed() -> anyhow::Result<()> {
    let started = Instant::now();
    let step = |what: &str| println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let slapd = MirrorPair::start(slapd::PairOptions::default().session_log(100)).await?;
    divergence::prepare(&slapd, "run1").await?;

    // Electors wired to their own slapd (health, fence) and auditing each other's.
    let mut env = writer::elector_env(&slapd)?;
    env.push((contract::ENV_AUDIT_PEERS.into(), servers(&slapd)));
    env.push((contract::ENV_AUDIT_INTERVAL.into(), "off".into()));
    let pair = Pair::start_with(2, &[], PairOptions { runner_env: Some(env), ..Default::default() }).await?;
    let (leader, standby) = (pair.pod(0), pair.pod(1));
    assert_eq!(pair.leader(ELECT).await?, leader, "node 2 is down: only {leader} is eligible");
    // The leader lifts its fence after its label: the scenario writes once slapd takes writes.
    wait_for("the leader's slapd to be unfenced", ELECT, || async {
        match slapd.read_only(1).await {
            Ok(false) => Ok(()),
            other => Err(format!("read-only: {other:?}")),
        }
    })
    .await?;
    step(&format!("{leader} leads; node 2 is down"));

    // 1. Reproduce: changes on the leader while node 2 is down; node 2 returns.
    let mut diverged = None;
    for attempt in 1..=ATTEMPTS {
        let tag = format!("run{attempt}");
        if attempt > 1 {
            divergence::prepare(&slapd, &tag).await?;
        }
        if divergence::change_and_restart(&slapd, &tag).await?.diverged() {
            diverged = Some(tag);
            break;
        }
        step(&format!("attempt {attempt}: node 2 caught up (no divergence this time)"));
    }
    let Some(tag) = diverged else {
        panic!("slapd did not diverge in {ATTEMPTS} attempts with the session log; see tests/tests/divergence.rs")
    };
    step(&format!("{tag}: node 2 diverged (contextCSN equal)"));

    // 2. The leader's audit (on the standby's return) marks it in the Lease.
    let marks = wait_for("the leader to mark the standby diverged in the Lease", MARKED, || async {
        let l = lease(&pair).await?;
        let value = annotation(&l, contract::LEASE_ANNOTATION_DIVERGED).unwrap_or_default();
        let marks = parse_marks(&value).map_err(anyhow::Error::msg)?;
        if marks.contains_key(&standby) {
            Ok(marks)
        } else {
            Err(anyhow::anyhow!("annotation {value:?}; leader log tail: {}", tail(&pair.log(&leader))))
        }
    })
    .await?;
    step(&format!("marked: {marks:?}"));
    assert_eq!(marks.len(), 1, "only the standby is marked: {marks:?}");
    assert!(marks[&standby].summary.contains(&tag), "the summary names the lost entries: {marks:?}");
    assert!(marks[&standby].since.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{marks:?}");
    let l = lease(&pair).await?;
    assert!(annotation(&l, contract::LEASE_ANNOTATION_CONTEXT_CSN).is_some(), "other annotations are kept");

    // 3. The leader goes away (kill -9 of its elector; its watchdog fences node 1). The Lease
    // expires, yet the diverged standby must not take it over.
    assert!(pair.signal(&leader, Signal::Kill));
    let gone = Instant::now();
    let window = LEASE * 3;
    while gone.elapsed() < window {
        let l = lease(&pair).await?;
        assert_eq!(holder(&l).as_deref(), Some(leader.as_str()), "the Lease changed hands to a diverged standby");
        assert!(pair.observer.leaders().iter().all(|p| p != &standby), "{}", pair.observer.timeline());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(pair.log(&standby).contains("marked DIVERGED"), "{}", tail(&pair.log(&standby)));
    step(&format!("{standby} stayed standby for {window:?} after the leader died (lease {LEASE:?})"));

    // The leader's elector comes back and takes its Lease again.
    pair.kubelet.restart(&pair.namespace, &leader, contract::SIDECAR_CONTAINER).await?;
    wait_for("the old leader to lead again", ELECT, || async {
        let l = lease(&pair).await?;
        let leaders = pair.observer.leaders();
        if holder(&l).as_deref() == Some(leader.as_str()) && leaders == [leader.clone()] && !slapd.read_only(1).await? {
            Ok(())
        } else {
            Err(anyhow::anyhow!("holder {:?}, labelled {leaders:?}", holder(&l)))
        }
    })
    .await?;
    step(&format!("{leader} leads again"));

    // 4. Reseed: refused on the leader, refused while the standby's slapd runs.
    let out = tokio::time::timeout(RESEED, reseed_command(&pair, &slapd, &leader, false).output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("holds the Lease"), "{stderr}");
    let out = tokio::time::timeout(RESEED, reseed_command(&pair, &slapd, &standby, true).output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("still answers"), "{stderr}");

    // Stop the standby's slapd, reseed empties its data directory; start it on the empty one.
    let entries_before = slapd.search_uids(1).await?;
    slapd.node(2).stop().await;
    let mut reseed = reseed_command(&pair, &slapd, &standby, true).spawn()?;
    let data = slapd.node(2).data_dir();
    wait_for("reseed to empty node 2's data directory", Duration::from_secs(30), || async {
        let empty = std::fs::read_dir(&data).map(|mut d| d.next().is_none()).unwrap_or(false);
        let aside = std::fs::read_dir(slapd.node(2).dir())?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("data.diverged-"));
        if empty && aside {
            Ok(())
        } else {
            Err(anyhow::anyhow!("empty {empty}, moved aside {aside}"))
        }
    })
    .await?;
    slapd.node(2).start().await?;
    let status = tokio::time::timeout(RESEED, reseed.wait()).await??;
    assert!(status.success(), "reseed failed: {status}");
    step("reseed finished");

    // 5. Clean: the audit is in sync, node 2 holds what it had lost, the leader lost nothing,
    // the mark is gone.
    let report = audit_pair(&slapd).await?;
    assert_eq!(report.verdict, Verdict::InSync, "{}", report.render());
    assert_eq!(slapd.search_uids(1).await?, entries_before, "the leader's data is unchanged");
    assert_eq!(slapd.search_uids(2).await?, entries_before);
    let l = lease(&pair).await?;
    let value = annotation(&l, contract::LEASE_ANNOTATION_DIVERGED).unwrap_or_default();
    assert!(!parse_marks(&value).map_err(anyhow::Error::msg)?.contains_key(&standby), "{value:?}");

    // 6. Promotion allowed: the leader stops, the reseeded standby takes over.
    assert!(pair.signal(&leader, Signal::Term));
    wait_for("the reseeded standby to take over", ELECT, || async {
        let leaders = pair.observer.leaders();
        if leaders == [standby.clone()] {
            Ok(())
        } else {
            Err(anyhow::anyhow!("labelled leader: {leaders:?}; standby log tail: {}", tail(&pair.log(&standby))))
        }
    })
    .await?;
    step(&format!("{standby} took over"));
    pair.observer.assert_never_two_leaders();
    Ok(())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

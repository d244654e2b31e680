//! Reproducers of the elector-safety review (issue 15) about the way into office and out of
//! it after a failover, on the process bed.
//!
//! Item 4: after an expiry, catch-up is judged against the old leader's CURRENT contextCSN,
//! read from its slapd, not the one it published at its last renew: the writes it
//! acknowledged after that renew, until its watchdog fenced it, are not lost by the failover.
//!
//! Item 7: taking office (demote the others, label itself, lift the fence, run the hook)
//! must not starve the renewals. Before the fix those steps ran one after another inside the
//! renew deadline with no renew in between; a slow role-change hook held the Lease's
//! renewTime still for seconds, and a slow enough one made the new leader give up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use ldap3::{Mod, Scope};
use ldap_elector::election::decide::Timing;
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::ldap::slapd::{MirrorPair, PairOptions as SlapdOptions, SlapdNode, DATA_DB, SUFFIX};
use ldap_elector_tests::ldap::writer;
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::electors::{Pair, PairOptions};

const ELECT: Duration = Duration::from_secs(90);
/// How late a renew may come after the renew period (API latency, scheduling).
const RENEW_SLACK: Duration = Duration::from_secs(1);

/// One renewal of the Lease as polled: the holder's wall-clock stamp and the term.
#[derive(Clone, Debug, PartialEq)]
struct Stamp {
    holder: Option<String>,
    term: i32,
    renewed: Option<k8s_openapi::jiff::Timestamp>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_role_change_hook_does_not_starve_the_renewals() -> anyhow::Result<()> {
    // The hook fails its first four `leader` runs, each after 0.7 s (inside the hook's 1 s
    // timeout): the fence keeper retries, and the leader is in office after about 4.5 s.
    let dir = std::env::temp_dir().join(format!("failover-catch-up-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\n[ \"$2\" = leader ] || exit 0\nn=$(cat \"$1/runs\" 2>/dev/null || echo 0)\n\
         n=$((n + 1))\necho $n > \"$1/runs\"\nsleep 0.7\n[ $n -gt 4 ]\n",
    )?;
    let command = format!("sh {} {}", hook.display(), dir.display());
    let pair = Pair::start(1, &[(contract::ENV_ON_ROLE_CHANGE, command.as_str())]).await?;
    let leases: Api<Lease> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let name = contract::lease_name(&pair.statefulset);

    // Every distinct renewal from the first acquisition until well after taking office.
    let timing = Timing::default();
    let mut stamps: Vec<(Instant, Stamp)> = Vec::new();
    let started = Instant::now();
    let mut watched_until: Option<Instant> = None;
    while watched_until.is_none_or(|t| Instant::now() < t) {
        anyhow::ensure!(started.elapsed() < ELECT, "no leader within {ELECT:?}\n{}", pair.log(&pair.pod(0)));
        if let Some(spec) = leases.get_opt(&name).await?.and_then(|l| l.spec) {
            let stamp = Stamp {
                holder: spec.holder_identity.filter(|h| !h.is_empty()),
                term: spec.lease_transitions.unwrap_or(0),
                renewed: spec.renew_time.map(|t| t.0),
            };
            if stamp.holder.is_some() && stamps.last().is_none_or(|(_, s)| *s != stamp) {
                stamps.push((Instant::now(), stamp));
            }
        }
        if watched_until.is_none() && pair.observer.leaders().len() == 1 {
            watched_until = Some(Instant::now() + timing.lease_duration);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = pair.log(&pair.pod(0));
    let runs = std::fs::read_to_string(dir.join("runs"))?;
    std::fs::remove_dir_all(&dir)?;
    println!("hook runs for leader: {}", runs.trim());
    for (at, s) in &stamps {
        println!("{:?} {s:?}", at.duration_since(started));
    }

    let first = &stamps.first().expect("the Lease was acquired").1;
    assert!(
        stamps.iter().all(|(_, s)| s.holder == first.holder && s.term == first.term),
        "the leader gave the Lease up (or lost it) while taking office: {stamps:?}\n{log}"
    );
    let bound = timing.renew_period + RENEW_SLACK;
    for w in stamps.windows(2) {
        let (a, b) = (w[0].1.renewed.expect("renewTime"), w[1].1.renewed.expect("renewTime"));
        let gap = Duration::try_from(b.duration_since(a))?;
        assert!(gap <= bound, "{gap:?} between two renewals (bound {bound:?}) while taking office\n{log}");
    }
    assert!(stamps.len() >= 4, "renewals went on: {stamps:?}");
    Ok(())
}

/// Points `node`'s syncrepl consumer at `port` (a closed one cuts replication into it).
async fn set_provider(node: &SlapdNode, port: u16) -> anyhow::Result<()> {
    let mut root = node.root().await?;
    let current = root.values_of(DATA_DB, Scope::Base, "(objectClass=*)", "olcSyncrepl").await?;
    let [value] = current.as_slice() else { anyhow::bail!("one olcSyncrepl expected, got {current:?}") };
    let start = value.find("provider=").ok_or_else(|| anyhow::anyhow!("no provider in {value}"))?;
    let end = value[start..].find(char::is_whitespace).map_or(value.len(), |e| start + e);
    let next = format!("{}provider=ldap://127.0.0.1:{port}{}", &value[..start], &value[end..]);
    root.ldap
        .with_timeout(Duration::from_secs(10))
        .modify(DATA_DB, vec![Mod::Replace("olcSyncrepl", HashSet::from([next.as_str()]))])
        .await?
        .success()?;
    Ok(())
}

/// The holder of the Lease and its annotation `ldap-elector.dev/uncovered-window` (none while
/// the Lease does not exist).
async fn holder(leases: &Api<Lease>, name: &str) -> anyhow::Result<(Option<String>, Option<String>)> {
    let Some(lease) = leases.get_opt(name).await? else { return Ok((None, None)) };
    let uncovered =
        lease.metadata.annotations.as_ref().and_then(|a| a.get(contract::LEASE_ANNOTATION_UNCOVERED)).cloned();
    Ok((lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()), uncovered))
}

/// A slapd pair whose electors ask each other's slapd before a take-over (`--audit-peers`), with
/// a grace long enough that only catching up can promote within a test; one leader, both
/// servers converged, then replication into the standby cut. Returns the pair and slapd, the
/// leader and the standby.
async fn audited_pair_with_the_standby_cut_off() -> anyhow::Result<(MirrorPair, Pair, String, String)> {
    let slapd = MirrorPair::start(SlapdOptions::default()).await?;
    let servers = (0..2u32)
        .map(|o| {
            format!(
                "{}=ldap://127.0.0.1:{}?base={SUFFIX}",
                contract::pod_name("ldap-server", o),
                slapd.node(o + 1).port()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut env = writer::elector_env(&slapd)?;
    env.push((contract::ENV_AUDIT_PEERS.into(), servers));
    env.push((contract::ENV_AUDIT_INTERVAL.into(), "off".into()));
    env.push((contract::ENV_CATCH_UP_GRACE.into(), "120s".into()));
    let pair = Pair::start_with(2, &[], PairOptions { runner_env: Some(env), ..Default::default() }).await?;
    let leader = pair.leader(ELECT).await?;
    let standby = pair.pod(1 - contract::split_pod_name(&leader).map_or(0, |(_, o)| o.min(1)));
    slapd.wait_converged(Duration::from_secs(30)).await?;
    let new = writer::node_of(&slapd, &standby);
    set_provider(new, 1).await?;
    wait_for("the standby's consumer to disconnect", Duration::from_secs(30), || async {
        match new.consumer_connected().await {
            Ok(()) => Err("still connected".to_string()),
            Err(_) => Ok(()),
        }
    })
    .await?;
    Ok((slapd, pair, leader, standby))
}

/// Freezes (SIGSTOP) the `leader`'s elector right after it renewed (in office, the renew
/// deadline ahead); returns when.
async fn freeze_right_after_a_renew(pair: &Pair, leader: &str) -> anyhow::Result<Instant> {
    let leases: Api<Lease> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let name = contract::lease_name(&pair.statefulset);
    let renewed = leases.get(&name).await?.spec.and_then(|s| s.renew_time);
    wait_for("a renew", Duration::from_secs(10), || async {
        let now = leases.get(&name).await.map_err(|e| e.to_string())?.spec.and_then(|s| s.renew_time);
        if now != renewed {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await?;
    anyhow::ensure!(pair.signal(leader, Signal::Stop), "the leader's elector runs");
    Ok(Instant::now())
}

/// A standby's take-over: when, when replication into it returned, the uids its slapd held
/// then, and the Lease's uncovered-window annotation.
struct TakeOver {
    at: Instant,
    restored: Option<Instant>,
    uids: Vec<String>,
    uncovered: Option<String>,
}

impl TakeOver {
    /// It held `write` (acknowledged by the old leader's slapd), took over only once replication
    /// returned, and left nothing uncovered: it verified what the old slapd holds.
    fn assert_caught_up(&self, write: &str, standby: &str, pair: &Pair) {
        assert!(
            self.uids.iter().any(|u| u == write),
            "{standby} took over without the acknowledged write {write}\n{}",
            pair.log(standby)
        );
        assert!(self.restored.is_some_and(|r| self.at >= r), "taken before replication returned");
        assert_eq!(self.uncovered, None, "it verified the old slapd's contextCSN: nothing is uncovered");
    }
}

/// Waits until `standby` holds the Lease, restoring replication into it from `old` at
/// `restore_at`.
async fn take_over_after(
    slapd: &MirrorPair,
    pair: &Pair,
    standby: &str,
    old: &SlapdNode,
    restore_at: Instant,
) -> anyhow::Result<TakeOver> {
    let new = writer::node_of(slapd, standby);
    let leases: Api<Lease> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let name = contract::lease_name(&pair.statefulset);
    let mut restored = None;
    loop {
        anyhow::ensure!(
            Instant::now() < restore_at + Duration::from_secs(80),
            "{standby} never took over\n{}",
            pair.log(standby)
        );
        if restored.is_none() && Instant::now() >= restore_at {
            set_provider(new, old.port()).await?;
            restored = Some(Instant::now());
            println!("replication into {standby} restored");
        }
        let (holder, uncovered) = holder(&leases, &name).await?;
        if holder.as_deref() == Some(standby) {
            let uids = slapd.search_uids(new.id()).await?;
            return Ok(TakeOver { at: Instant::now(), restored, uids, uncovered });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_expiry_the_standby_waits_for_the_old_leaders_current_csn() -> anyhow::Result<()> {
    let (slapd, pair, leader, standby) = audited_pair_with_the_standby_cut_off().await?;
    let old = writer::node_of(&slapd, &leader);
    // Replication into the standby is cut; the leader's elector freezes right after a renew,
    // and its slapd acknowledges a write before the watchdog fences it at the renew deadline.
    let frozen = freeze_right_after_a_renew(&pair, &leader).await?;
    old.admin().await?.add_person("after-the-last-renew").await?.success()?;
    println!("{leader}'s slapd acknowledged a write {:?} after its elector froze", frozen.elapsed());

    // Replication returns well after the Lease expired (lease duration after the last renew).
    let restore_at = frozen + Timing::default().lease_duration + Duration::from_secs(6);
    let taken = take_over_after(&slapd, &pair, &standby, old, restore_at).await?;
    println!("{standby} took over {:?} after the freeze; uncovered: {:?}", taken.at - frozen, taken.uncovered);
    pair.signal(&leader, Signal::Cont);
    taken.assert_caught_up("after-the-last-renew", &standby, &pair);
    Ok(())
}

/// Found by the simulation: the Lease deleted while the leader's elector is frozen, and the
/// standby's elector restarted, so no living elector saw the Lease held. Before, the standby
/// took the recreated Lease after a lease duration, judged against nothing, without the write
/// the leader acknowledged. Its pod's term annotation tells it terms came before: it asks every
/// other member's slapd and takes over only once it holds what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lease_recreated_unseen_the_standby_waits_for_every_peers_current_csn() -> anyhow::Result<()> {
    let (slapd, pair, leader, standby) = audited_pair_with_the_standby_cut_off().await?;
    let old = writer::node_of(&slapd, &leader);
    let frozen = freeze_right_after_a_renew(&pair, &leader).await?;
    old.admin().await?.add_person("before-the-recreation").await?.success()?;
    // The standby's elector dies, the Lease is deleted and recreated empty (as the webhook's
    // reconciler does), then the elector starts again: it never sees the Lease held.
    anyhow::ensure!(pair.signal(&standby, Signal::Kill), "the standby's elector runs");
    wait_for("the standby's elector to exit", Duration::from_secs(10), || async {
        match pair.kubelet.pid(&pair.namespace, &standby, contract::SIDECAR_CONTAINER) {
            None => Ok(()),
            Some(pid) => Err(format!("pid {pid}")),
        }
    })
    .await?;
    let leases: Api<Lease> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let name = contract::lease_name(&pair.statefulset);
    leases.delete(&name, &Default::default()).await?;
    wait_for("the Lease to be gone", Duration::from_secs(10), || async {
        match leases.get_opt(&name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let empty: Lease = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {}}))?;
    leases.create(&Default::default(), &empty).await?;
    pair.kubelet.restart(&pair.namespace, &standby, contract::SIDECAR_CONTAINER).await?;
    // A Lease never held is taken a lease duration after it was seen; replication returns later.
    let restore_at = Instant::now() + Timing::default().lease_duration + Duration::from_secs(6);
    let taken = take_over_after(&slapd, &pair, &standby, old, restore_at).await?;
    println!("{standby} took over {:?} after the freeze; uncovered: {:?}", taken.at - frozen, taken.uncovered);
    pair.signal(&leader, Signal::Cont);
    taken.assert_caught_up("before-the-recreation", &standby, &pair);
    Ok(())
}

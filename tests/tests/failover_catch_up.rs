//! Reproducers of the elector-safety review (issue 15) about the way into office and out of
//! it after a failover, on the process bed.
//!
//! Item 7: taking office (demote the others, label itself, lift the fence, run the hook)
//! must not starve the renewals. Before the fix those steps ran one after another inside the
//! renew deadline with no renew in between; a slow role-change hook held the Lease's
//! renewTime still for seconds, and a slow enough one made the new leader give up.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use ldap_elector::election::decide::Timing;
use ldap_elector_contract as contract;
use ldap_elector_tests::workloads::electors::Pair;

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

//! `testbed` (`make bed`): start a real control plane with an emulated pod network and a test
//! kubelet that runs the Helm chart's webhook and controller pods (`ldap-elector-webhook`) and the injected
//! elector sidecars (`ldap-elector`) as local processes; print how to use it; keep it running
//! until Ctrl-C (or SIGTERM), then tear everything down. docs/getting-started.md walks through
//! it, and tests/tests/getting_started.rs runs that walk-through against this binary.
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::kubelet::Runner;
use ldap_elector_tests::bed::BedOptions;
use ldap_elector_tests::workloads::build::{elector_binary, webhook_debug_binary};
use ldap_elector_tests::{Bed, Kubelet};

/// The container names of the chart's admission and controller Deployments (one binary).
const WEBHOOK_CONTAINERS: [&str; 2] = ["webhook", "controller"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ldap_elector_tests::logging::init("info,kube_client=off");
    let started = std::time::Instant::now();
    let elector = elector_binary(false);
    let webhook = webhook_debug_binary()?;
    let bed = Bed::start_with(BedOptions { pod_network: true, ..Default::default() }).await?;
    let kubelet = Kubelet::start(&bed, "bed-node").await?;
    for container in WEBHOOK_CONTAINERS {
        kubelet.add_runner(Runner { container: container.into(), program: webhook.clone(), env: Vec::new() });
    }
    kubelet.add_runner(Runner {
        container: contract::SIDECAR_CONTAINER.into(),
        program: elector.clone(),
        env: Vec::new(),
    });
    let target = elector.parent().map(|p| p.display().to_string()).unwrap_or_default();
    println!("test bed up in {:.1}s", started.elapsed().as_secs_f64());
    println!("  logs:       {} (pods: kubelet/bed-node/<namespace>_<pod>_<container>.log)", bed.dir.display());
    println!("In another shell, paste:");
    println!("export KUBECONFIG={}", bed.kubeconfig.display());
    println!("export PATH={}:{target}:$PATH", bed.bin.display());
    println!("Ctrl-C stops the bed and removes its directory (LDAP_ELECTOR_KEEP_BED=1 keeps it).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    drop(kubelet);
    drop(bed);
    Ok(())
}

//! `testbed`: start a real control plane and a test kubelet, print how to use it, keep it
//! running until Ctrl-C, then tear everything down.
use ldap_elector_tests::{Bed, Kubelet};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .init();
    let started = std::time::Instant::now();
    let bed = Bed::start().await?;
    let _kubelet = Kubelet::start(&bed, "bed-node").await?;
    println!("test bed up in {:.1}s", started.elapsed().as_secs_f64());
    println!("  logs:       {}", bed.dir.display());
    println!("  kubeconfig: export KUBECONFIG={}", bed.kubeconfig.display());
    println!("  kubectl:    {}/kubectl get nodes,pods -A", bed.bin.display());
    println!("Ctrl-C stops the bed and removes its directory (LDAP_ELECTOR_KEEP_BED=1 keeps it).");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

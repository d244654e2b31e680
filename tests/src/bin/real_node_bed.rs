//! `make bed NODE=real`: a control plane with a real node (containerd, kubelet, kube-proxy,
//! kube-scheduler; docs/real-node.md), the images imported; prints how to use it and keeps
//! running until Ctrl-C (or SIGTERM), then removes the node and the bed. Needs root.
use ldap_elector_tests::bed::BedOptions;
use ldap_elector_tests::Bed;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the real node needs root (containerd, kubelet, iptables, cgroups)");
    }
    let started = std::time::Instant::now();
    let bed = Bed::start_with(BedOptions { real_node: true, ..Default::default() }).await?;
    let node = bed.real_node.as_ref().ok_or_else(|| anyhow::anyhow!("the bed has no real node"))?;
    let images = &node.images;
    println!("test bed with a real node up in {:.1}s ({:?})", started.elapsed().as_secs_f64(), node.timings);
    println!("  logs:    {}/{{kubelet,containerd,kube-proxy,kube-scheduler,kube-apiserver}}.log", bed.dir.display());
    println!("  pods:    {} (<namespace>_<pod>_<uid>/<container>/N.log)", node.layout().pod_logs().display());
    println!(
        "  images:  {} {} {} {} (imagePullPolicy: Never)",
        images.pause, images.elector, images.webhook, images.openldap
    );
    println!("  node:    {} ({})", node.name(), node.layout().machine.display());
    println!("In another shell, paste:");
    println!("export KUBECONFIG={}", bed.kubeconfig.display());
    println!("export PATH={}:$PATH", bed.bin.display());
    println!("kubectl get nodes -o wide");
    println!("ctr --address {} -n k8s.io containers ls", node.layout().containerd_socket().display());
    println!("Ctrl-C stops the bed and removes the node (LDAP_ELECTOR_KEEP_BED=1 keeps the bed's logs).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    drop(bed);
    Ok(())
}

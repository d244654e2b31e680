//! `images` (`make images`): build the real node's container images (pause, ldap-elector,
//! ldap-elector-webhook, OpenLDAP) as OCI archives in ~/.cache/ldap-elector/images and, with
//! `--containerd <socket>`, import them into its `k8s.io` namespace. Prints the references,
//! archive sizes, build times and the chart's `--set` arguments. docs/images.md.
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ldap_elector_tests::node::images::{self, ImportTarget};

#[derive(Parser)]
#[command(about = "Build (and import) the real node's container images without a registry")]
struct Args {
    /// containerd socket to import into (namespace k8s.io); without it, only build.
    #[arg(long, env = "CONTAINERD_SOCKET")]
    containerd: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let started = Instant::now();
    let built = images::build()?;
    let build_time = started.elapsed();
    println!("{:<58} {:>10} {:>9}", "image", "archive", "build");
    for archive in &built.archives {
        let size = std::fs::metadata(&archive.path)?.len();
        println!("{:<58} {:>7.1} MB {:>8.1}s", archive.reference, size as f64 / 1e6, archive.took.as_secs_f64());
    }
    println!(
        "all built in {:.1}s; archives in {}",
        build_time.as_secs_f64(),
        images::cache_root().join("images").display()
    );
    if let Some(socket) = args.containerd {
        let started = Instant::now();
        built.import(&ImportTarget::k8s(socket))?;
        println!("imported into namespace {} in {:.1}s", images::K8S_NAMESPACE, started.elapsed().as_secs_f64());
    }
    println!(
        "openldap runs as uid {} gid {}; helm: {}",
        built.images.openldap_uid,
        built.images.openldap_gid,
        built.images.helm_set_args().join(" ")
    );
    Ok(())
}

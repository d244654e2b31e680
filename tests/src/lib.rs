//! Test support for ldap-elector, in four groups:
//! - `bed`: a real control plane on loopback, a test kubelet that runs pods as local
//!   processes, their PKI, pod network, proxies and forwarders;
//! - `ldap`: real slapd Mirror-Mode pairs and the rigs, writers and scenarios built on them;
//! - `workloads`: what runs on the bed (electors, the webhook) and the objects tests create;
//! - `measure`: the independent observer and the measurements of `make bench` and friends;
//! - `node`: a real node (containerd, CNI, kubelet, kube-proxy, scheduler) and its images.
//!
//! Plus waiting helpers (`wait`) and a seeded generator for reproducible runs (`splitmix`).
pub mod bed;
pub mod ldap;
pub mod logging;
pub mod measure;
pub mod node;
pub mod splitmix;
pub mod wait;
pub mod workloads;

pub use bed::kubelet::Kubelet;
pub use bed::Bed;
pub use wait::wait_for;

/// The repository root (the workspace), for its scripts, charts and docs.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

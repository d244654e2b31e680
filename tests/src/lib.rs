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

/// The fenced code block between `<!-- MARKER:begin` and `<!-- MARKER:end -->` of the
/// repository file `doc` (a page's commands or configuration that a test runs as written).
pub fn doc_block(doc: &str, marker: &str) -> anyhow::Result<String> {
    let path = repo_root().join(doc);
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let block = text
        .split_once(&format!("<!-- {marker}:begin"))
        .and_then(|(_, rest)| rest.split_once(&format!("<!-- {marker}:end -->")))
        .and_then(|(block, _)| block.split_once("```"))
        .and_then(|(_, fenced)| fenced.split_once('\n'))
        .and_then(|(_, code)| code.split_once("```"))
        .map(|(code, _)| code.to_string());
    block.ok_or_else(|| anyhow::anyhow!("{doc} has no ``` block between the {marker}:begin and {marker}:end markers"))
}

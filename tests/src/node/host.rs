//! The host-global side of the real node: the per-machine lock, the record of what the node
//! changes on the host (sysctls, directories it creates), the node's own interface and
//! routes, the egress guard, and iptables clean-up. The kubelet, kube-proxy and the CNI bridge
//! change host state that no directory of ours holds; this module records it before they
//! start so that clean-up (also after a crashed run) can put it back.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::config::{NODE_IP, NODE_LINK, POD_CIDR, SERVICE_CIDR};

/// Sysctls the kubelet (kernel tunables), the CNI bridge (forwarding) and kube-proxy
/// (bridge netfilter) may change, relative to /proc/sys.
pub const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];

/// Host directories the kubelet or containerd create outside our dirs; removed again when the
/// node created them (a list of paths we own, never a pattern).
pub const HOST_DIRS: &[&str] = &["/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods"];

/// Our own FORWARD guard: pod traffic to anything outside the pod range is dropped, so nothing a
/// pod sends leaves the machine (Services are DNATed to pod addresses before FORWARD).
pub const EGRESS_CHAIN: &str = "CNI-LDAPBED-EGRESS";

/// Chains of ours, the kubelet's, kube-proxy's and the CNI plugins' (removed at clean-up).
const CHAIN_PREFIXES: &[&str] = &["KUBE-", "CNI-"];

/// One real node per machine: an exclusive flock held for the node's lifetime.
pub struct MachineLock {
    _file: File,
}

impl MachineLock {
    /// Waits (up to `timeout`) for the machine's real-node lock.
    pub async fn acquire(path: &Path, timeout: Duration) -> anyhow::Result<MachineLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::options().create(true).truncate(false).write(true).open(path)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // SAFETY: flock on an fd we own; LOCK_NB so the async runtime is never blocked.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(MachineLock { _file: file });
            }
            if std::time::Instant::now() >= deadline {
                bail!("another real-node bed holds {} (one real node per machine)", path.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What the node changed on the host, as recorded before it started.
#[derive(Debug, Default, PartialEq)]
pub struct HostState {
    /// (sysctl path relative to /proc/sys, original value)
    pub sysctls: Vec<(String, String)>,
    /// Host directories that did not exist before.
    pub created: Vec<PathBuf>,
}

impl HostState {
    /// The host as it is now.
    pub fn capture() -> HostState {
        let sysctls = SYSCTLS.iter().filter_map(|k| read_sysctl(k).map(|v| (k.to_string(), v))).collect();
        let created = HOST_DIRS.iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        HostState { sysctls, created }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.sysctls {
            out.push_str(&format!("sysctl {k} {v}\n"));
        }
        for p in &self.created {
            out.push_str(&format!("created {}\n", p.display()));
        }
        out
    }

    pub fn parse(text: &str) -> HostState {
        let mut state = HostState::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("sysctl", rest)) => {
                    if let Some((k, v)) = rest.split_once(' ') {
                        state.sysctls.push((k.to_string(), v.to_string()));
                    }
                }
                Some(("created", path)) => state.created.push(PathBuf::from(path)),
                _ => {}
            }
        }
        state
    }

    /// Puts the sysctls back and removes the directories the node created.
    pub fn restore(&self) {
        for (k, v) in &self.sysctls {
            if read_sysctl(k).as_deref() != Some(v.as_str()) {
                if let Err(e) = std::fs::write(Path::new("/proc/sys").join(k), v) {
                    tracing::warn!(sysctl = %k, error = %e, "real node: cannot restore sysctl");
                }
            }
        }
        for p in &self.created {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok().map(|v| v.trim().replace('\t', " "))
}

/// Runs a host command; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node IP on an interface of its own (a bridge without ports: these VMs' kernels have no
/// `dummy` driver); Service addresses routed to it, so traffic to a ClusterIP that kube-proxy
/// has not (yet) rewritten is dropped there instead of leaving through the default route; the
/// egress guard for pods.
pub fn setup_network() -> anyhow::Result<()> {
    run("ip", &["link", "add", NODE_LINK, "type", "bridge"])?;
    run("ip", &["addr", "add", &format!("{NODE_IP}/32"), "dev", NODE_LINK])?;
    run("ip", &["link", "set", NODE_LINK, "up"])?;
    run("ip", &["route", "add", SERVICE_CIDR, "dev", NODE_LINK])?;
    run("iptables", &["-w", "-N", EGRESS_CHAIN])?;
    run("iptables", &["-w", "-A", EGRESS_CHAIN, "-d", POD_CIDR, "-j", "RETURN"])?;
    run("iptables", &["-w", "-A", EGRESS_CHAIN, "-j", "DROP"])?;
    run("iptables", &["-w", "-I", "FORWARD", "1", "-s", POD_CIDR, "-j", EGRESS_CHAIN])?;
    Ok(())
}

/// Removes every chain named KUBE-* or CNI-* and every rule that refers to one, in all tables
/// of iptables and ip6tables (save, filter, restore per table: atomic, and quoting-safe).
pub fn remove_chains() {
    for (save, restore) in [("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")] {
        for table in ["filter", "nat", "mangle", "raw"] {
            let Ok(dump) = run(save, &["-t", table]) else { continue };
            if let Some(stripped) = strip_chains(&dump) {
                if let Err(e) = restore_table(restore, &stripped) {
                    tracing::warn!(table, error = %e, "real node: cannot remove chains");
                }
            }
        }
    }
}

/// kube-proxy's table in nftables mode, in both families.
const NFT_TABLES: [(&str, &str); 2] = [("ip", "kube-proxy"), ("ip6", "kube-proxy")];

/// Removes kube-proxy's nftables tables (nftables mode); nothing without `nft` or the tables.
pub fn remove_nft_tables() {
    for (family, table) in NFT_TABLES {
        if nft_table_exists(family, table) {
            if let Err(e) = run("nft", &["delete", "table", family, table]) {
                tracing::warn!(family, table, error = %e, "real node: cannot remove the nftables table");
            }
        }
    }
}

/// Whether one of kube-proxy's nftables tables is still there.
pub fn nft_tables_left() -> bool {
    NFT_TABLES.iter().any(|(family, table)| nft_table_exists(family, table))
}

fn nft_table_exists(family: &str, table: &str) -> bool {
    run("nft", &["list", "table", family, table]).is_ok()
}

fn restore_table(restore: &str, rules: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new(restore)
        .arg("-w")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("no stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{restore}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ours(word: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|p| word.starts_with(p))
}

/// `dump` (one table of `iptables-save`) without our chains and the rules that mention them;
/// `None` when there is nothing of ours (so an idle clean-up writes nothing).
pub fn strip_chains(dump: &str) -> Option<String> {
    let mut changed = false;
    let kept: Vec<&str> = dump
        .lines()
        .filter(|line| {
            let drop = if let Some(decl) = line.strip_prefix(':') {
                ours(decl)
            } else if line.starts_with("-A ") {
                line.split_whitespace().any(ours)
            } else {
                false
            };
            changed |= drop;
            !drop
        })
        .collect();
    changed.then(|| kept.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_state_round_trips() {
        let state = HostState {
            sysctls: vec![("kernel/panic".into(), "0".into()), ("vm/x".into(), "1 2".into())],
            created: vec![PathBuf::from("/var/lib/kubelet")],
        };
        assert_eq!(HostState::parse(&state.render()), state);
    }

    #[tokio::test]
    async fn the_machine_lock_admits_one_holder_at_a_time() -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("ldap-elector-node-lock-test-{}", std::process::id()));
        let held = MachineLock::acquire(&path, Duration::from_secs(1)).await?;
        assert!(MachineLock::acquire(&path, Duration::from_millis(300)).await.is_err(), "second holder refused");
        drop(held);
        let again = MachineLock::acquire(&path, Duration::from_secs(1)).await;
        assert!(again.is_ok(), "free again after the holder dropped");
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn strip_chains_removes_ours_and_the_jumps_to_them() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-abc - [0:0]\n:OTHER - [0:0]\n\
                    -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                    -A PREROUTING -j OTHER\n-A KUBE-SERVICES -j RETURN\n-A POSTROUTING -s 198.51.100.2/32 -j CNI-abc\nCOMMIT\n";
        let out = strip_chains(dump).unwrap_or_default();
        assert_eq!(out, "*nat\n:PREROUTING ACCEPT [0:0]\n:OTHER - [0:0]\n-A PREROUTING -j OTHER\nCOMMIT\n");
        assert_eq!(strip_chains(&out), None, "nothing of ours left: nothing to restore");
    }
}

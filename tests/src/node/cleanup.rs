//! Removing a real node, idempotently: after a normal stop, and at the next start when a
//! crashed run left one behind (a kill -9 of the test leaves containerd's shims, the
//! containers, mounts, the bridge, iptables chains or nftables tables, cgroups and changed
//! sysctls).
//! Everything is found from fixed names (the machine dir, our links, our chain prefixes, the
//! `kubepods` cgroups) — never by a broad process name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::{Layout, BRIDGE, NODE_LINK};
use super::host::{self, HostState};

/// The record of host changes inside the machine dir.
pub const HOST_STATE_FILE: &str = "host-state";
/// The cgroup of all pods (cgroupfs driver), in every hierarchy.
const KUBEPODS: &str = "kubepods";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes everything of a node at `layout` (running or crashed); safe to call when there is
/// nothing. Returns what it found, for logs.
pub fn cleanup(layout: &Layout) -> Vec<String> {
    let mut found = Vec::new();
    let machine = layout.machine.display().to_string();
    // Node processes carry the machine dir in their arguments (configs, root dir, socket):
    // the kubelet and containerd go first so nothing restarts what is killed next.
    let procs = pids_mentioning(&machine);
    if !procs.is_empty() {
        found.push(format!("{} node processes", procs.len()));
    }
    kill_all(&procs);
    let containers = kill_cgroup_processes();
    if containers > 0 {
        found.push(format!("{containers} container processes"));
    }
    let mounts = unmount_under(&layout.machine);
    if mounts > 0 {
        found.push(format!("{mounts} mounts"));
    }
    let cgroups = remove_cgroups();
    if cgroups > 0 {
        found.push(format!("{cgroups} cgroups"));
    }
    for link in pod_links().into_iter().chain([BRIDGE.to_string(), NODE_LINK.to_string()]) {
        if host::run("ip", &["link", "del", &link]).is_ok() {
            found.push(format!("link {link}"));
        }
    }
    host::remove_chains();
    host::remove_nft_tables();
    let state_file = layout.machine.join(HOST_STATE_FILE);
    if let Ok(text) = std::fs::read_to_string(&state_file) {
        HostState::parse(&text).restore();
        found.push("host state restored".into());
    }
    remove_stale_sockets(Path::new("/run/containerd/s"));
    if layout.machine.exists() {
        if let Err(e) = std::fs::remove_dir_all(&layout.machine) {
            tracing::warn!(dir = %layout.machine.display(), error = %e, "real node: cannot remove the machine dir");
        }
    }
    found
}

/// What of a node at `layout` is still on the host (empty after a clean-up): processes,
/// pod cgroups, mounts, links, iptables chains, the machine dir.
pub fn leftovers(layout: &Layout) -> Vec<String> {
    let mut left = Vec::new();
    let machine = layout.machine.display().to_string();
    for pid in pids_mentioning(&machine).into_iter().filter(|p| !is_zombie(*p)) {
        left.push(format!("process {pid}"));
    }
    left.extend(kubepods_dirs().into_iter().map(|d| format!("cgroup {}", d.display())));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(mounts_under(&info, &layout.machine).into_iter().map(|m| format!("mount {}", m.display())));
    for link in [BRIDGE, NODE_LINK] {
        if Path::new("/sys/class/net").join(link).exists() {
            left.push(format!("link {link}"));
        }
    }
    for save in ["iptables-save", "ip6tables-save"] {
        let dump = host::run(save, &[]).unwrap_or_default();
        if host::strip_chains(&dump).is_some() {
            left.push(format!("{save}: KUBE-/CNI- chains"));
        }
    }
    if host::nft_tables_left() {
        left.push("nftables table kube-proxy".into());
    }
    if layout.machine.exists() {
        left.push(format!("dir {machine}"));
    }
    left
}

/// PIDs of all processes in pod cgroups (the containers and their sandboxes).
pub fn pod_pids() -> Vec<i32> {
    let mut pids: Vec<i32> = kubepods_dirs()
        .iter()
        .flat_map(|root| subdirs_deepest_first(root))
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect::<Vec<_>>())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
        })
        .collect()
}

fn kill_all(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: plain syscall; the pids were just read as processes of our node.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| is_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` still runs: it exists and is no zombie (a killed process whose parent has
/// not reaped it yet holds no resources and runs no code).
pub fn is_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// The `kubepods` cgroup dirs of every hierarchy (v1 controllers and the unified one).
fn kubepods_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else { return Vec::new() };
    entries.flatten().map(|e| e.path().join(KUBEPODS)).filter(|p| p.is_dir()).collect()
}

fn subdirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            all.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()));
        }
        i += 1;
    }
    all.reverse();
    all
}

/// SIGKILLs every process in a pod cgroup (thawing frozen ones first); returns how many.
fn kill_cgroup_processes() -> usize {
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pids = Vec::new();
        for root in kubepods_dirs() {
            for dir in subdirs_deepest_first(&root) {
                let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
                let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() || Instant::now() >= deadline {
            return killed;
        }
        killed += pids.len();
        kill_all(&pids);
    }
}

fn remove_cgroups() -> usize {
    let mut removed = 0;
    for root in kubepods_dirs() {
        for dir in subdirs_deepest_first(&root) {
            // A cgroup whose last process just died can be busy for a moment.
            for _ in 0..50 {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {
                        removed += 1;
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }
    }
    removed
}

/// Mount points (from /proc/self/mountinfo) at or under `root`, deepest first.
pub fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

fn unescape_octal(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Lazily unmounts everything under `root` (repeatedly: a bind mount may hide another).
pub fn unmount_under(root: &Path) -> usize {
    let mut count = 0;
    for _ in 0..10 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let points = mounts_under(&info, root);
        if points.is_empty() {
            break;
        }
        for point in points {
            let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else { continue };
            // SAFETY: umount2 with a valid C string; MNT_DETACH never blocks on busy mounts.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                count += 1;
            }
        }
    }
    count
}

/// Host ends of pod veths still attached to our bridge (normally they vanish with the pods'
/// network namespaces).
fn pod_links() -> Vec<String> {
    host::run("ip", &["-o", "link", "show", "master", BRIDGE])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|name| name.split('@').next().unwrap_or(name).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// containerd 1.6 puts shim sockets under /run/containerd/s whatever its state dir; a killed
/// shim leaves its socket. Removes those no process has bound (so another containerd's live
/// shims are left alone).
fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let bound = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.display().to_string();
        if !bound.lines().any(|l| l.ends_with(&name)) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_picks_ours_deepest_first_and_unescapes() {
        let info = "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:30 / /m/kubelet rw - tmpfs tmpfs rw\n\
                    31 30 0:31 / /m/kubelet/pods/x/volumes/a\\040b rw - tmpfs tmpfs rw\n\
                    32 22 0:32 / /mother rw - tmpfs tmpfs rw\n";
        let got = mounts_under(info, Path::new("/m"));
        assert_eq!(got, [PathBuf::from("/m/kubelet/pods/x/volumes/a b"), PathBuf::from("/m/kubelet")]);
    }
}

//! Faults injected from the host into the real node's containers: a container's PID 1
//! killed with SIGKILL (as a crash would), a container OOM-killed by the kernel at its own
//! memory limit, and a whole pod frozen through its cgroup v1 freezer. Also a container's
//! memory working set, read from its cgroup.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;

use crate::node::RealNode;

const FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer/kubepods";
const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory/kubepods";
const CONTAINERD_PREFIX: &str = "containerd://";

/// The containerd ID of `container` (regular or native sidecar) in `pod`'s status.
pub fn container_id(pod: &Pod, container: &str) -> anyhow::Result<String> {
    let status = pod.status.as_ref().context("pod without status")?;
    let statuses = status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten());
    for c in statuses {
        if c.name == container {
            if let Some(id) = c.container_id.as_deref().and_then(|id| id.strip_prefix(CONTAINERD_PREFIX)) {
                return Ok(id.to_string());
            }
        }
    }
    bail!("no running container {container} in the pod's status")
}

/// Parses `ctr tasks ls` (`TASK PID STATUS`): the host PID of task `id`.
pub fn task_pid(listing: &str, id: &str) -> Option<i32> {
    listing.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(task), Some(pid)) if task == id => pid.parse().ok(),
            _ => None,
        }
    })
}

/// The host PID of container `id`'s PID 1.
pub fn host_pid(node: &RealNode, id: &str) -> anyhow::Result<i32> {
    let out = node.ctr().args(["tasks", "ls"]).output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    task_pid(&listing, id).with_context(|| format!("container {id} not in `ctr tasks ls`:\n{listing}"))
}

/// The host PID of the PID 1 of `container` in `pod`.
pub fn container_pid(node: &RealNode, pod: &Pod, container: &str) -> anyhow::Result<i32> {
    host_pid(node, &container_id(pod, container)?)
}

/// SIGKILL to `pid` from the host (look it up first with [`container_pid`]: `ctr` takes
/// tens of milliseconds); returns the instant of the kill.
pub fn sigkill(pid: i32) -> anyhow::Result<Instant> {
    let at = Instant::now();
    // SAFETY: kill(2) with a PID read just before; a recycled PID would only be one of the
    // node's own processes, which the test owns.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(at)
}

/// The freezer cgroup of the pod with `uid` (any QoS class).
pub fn pod_freezer(uid: &str) -> anyhow::Result<PathBuf> {
    pod_cgroup(FREEZER_ROOT, uid)
}

/// The cgroup of the pod with `uid` under the hierarchy's `kubepods` (any QoS class).
fn pod_cgroup(root: &str, uid: &str) -> anyhow::Result<PathBuf> {
    let name = format!("pod{uid}");
    let root = Path::new(root);
    for dir in [root.to_path_buf(), root.join("burstable"), root.join("besteffort")] {
        let candidate = dir.join(&name);
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    bail!("no cgroup {name} under {}", root.display())
}

/// Working set of `container` in `pod` as the kubelet computes it (cgroup v1): usage minus
/// inactive file pages, in bytes.
pub fn working_set(pod: &Pod, container: &str) -> anyhow::Result<u64> {
    let dir = memory_cgroup(pod, container)?;
    let read =
        |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("{}/{name}", dir.display()));
    let usage: u64 = read("memory.usage_in_bytes")?.trim().parse()?;
    Ok(usage.saturating_sub(stat_value(&read("memory.stat")?, "total_inactive_file").unwrap_or(0)))
}

/// A value of `memory.stat`.
pub fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The memory cgroup of `container` in `pod` (cgroup v1).
fn memory_cgroup(pod: &Pod, container: &str) -> anyhow::Result<PathBuf> {
    let uid = pod.metadata.uid.as_deref().context("pod without uid")?;
    Ok(pod_cgroup(MEMORY_ROOT, uid)?.join(container_id(pod, container)?))
}

/// The kernel's OOM killer kills `container`'s processes at the container's own memory
/// limit: a host `dd` joins the container's memory cgroup and allocates the whole limit in
/// one buffer. The killer picks the container's processes first: the kubelet gives a
/// burstable container an `oom_score_adj` near 1000, which within a cgroup weighs as much
/// as the limit itself, while the filler keeps the test's (0; lowering it needs
/// CAP_SYS_RESOURCE). The filler is killed next (it cannot fit). Returns the instant the
/// filler started (the kill follows within its allocation) and the filler, to be reaped.
pub fn oom_kill(pod: &Pod, container: &str) -> anyhow::Result<(Instant, std::process::Child)> {
    let cgroup = memory_cgroup(pod, container)?;
    let limit_file = cgroup.join("memory.limit_in_bytes");
    let limit: u64 = std::fs::read_to_string(&limit_file)
        .with_context(|| limit_file.display().to_string())?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a number", limit_file.display()))?;
    anyhow::ensure!(limit < 1 << 40, "{container} has no memory limit ({limit})");
    let at = Instant::now();
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && exec dd if=/dev/zero of=/dev/null bs="$2" count=1 status=none"#,
            "oom-filler",
        ])
        .arg(&cgroup)
        .arg(limit.to_string())
        .spawn()
        .context("starting the OOM filler")?;
    Ok((at, child))
}

/// Freezes (`true`) or thaws every process of the pod at `cgroup`.
pub fn set_frozen(cgroup: &Path, frozen: bool) -> anyhow::Result<()> {
    let state = if frozen { "FROZEN" } else { "THAWED" };
    let file = cgroup.join("freezer.state");
    std::fs::write(&file, state).with_context(|| format!("writing {state} to {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_pid_reads_the_pid_column_of_the_named_task_only() {
        let listing = "TASK    PID     STATUS\nabc     4242    RUNNING\nabcd    17      RUNNING\n";
        assert_eq!(task_pid(listing, "abc"), Some(4242));
        assert_eq!(task_pid(listing, "abcd"), Some(17));
        assert_eq!(task_pid(listing, "ab"), None);
    }

    #[test]
    fn stat_value_matches_the_whole_key() {
        let stat = "inactive_file 5\ntotal_inactive_file 4096\ntotal_inactive_file_x 1\n";
        assert_eq!(stat_value(stat, "total_inactive_file"), Some(4096));
        assert_eq!(stat_value(stat, "inactive_file"), Some(5));
        assert_eq!(stat_value(stat, "active_file"), None);
    }
}

//! Faults injected from the host into the real node's containers: a container's PID 1
//! killed with SIGKILL (as the OOM killer or a crash would), and a whole pod frozen through
//! its cgroup v1 freezer.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;

use crate::node::RealNode;

const FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer/kubepods";
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

/// SIGKILL to the PID 1 of `container` in `pod`, from the host; returns the PID.
pub fn kill_container(node: &RealNode, pod: &Pod, container: &str) -> anyhow::Result<i32> {
    let pid = host_pid(node, &container_id(pod, container)?)?;
    // SAFETY: kill(2) with a PID read just now; a recycled PID would only be one of the
    // node's own processes, which the test owns.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(pid)
}

/// The freezer cgroup of the pod with `uid` (any QoS class).
pub fn pod_freezer(uid: &str) -> anyhow::Result<PathBuf> {
    let name = format!("pod{uid}");
    let root = Path::new(FREEZER_ROOT);
    for dir in [root.to_path_buf(), root.join("burstable"), root.join("besteffort")] {
        let candidate = dir.join(&name);
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    bail!("no freezer cgroup {name} under {FREEZER_ROOT}")
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
}

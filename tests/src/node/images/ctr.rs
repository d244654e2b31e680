//! Import into containerd with its own client, `ctr` (Debian's containerd package).
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::{cmd, ImageError, ImportTarget};

const CTR: &str = "ctr";

fn ctr(target: &ImportTarget) -> Command {
    let mut command = Command::new(CTR);
    command.arg("--address").arg(&target.containerd_socket).arg("--namespace").arg(&target.namespace);
    command
}

/// The image references present in the target namespace.
pub fn list(target: &ImportTarget) -> Result<BTreeSet<String>, ImageError> {
    let out = cmd::output(ctr(target).args(["images", "ls", "-q"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Imports one OCI archive; ctr names the image from the index's `io.containerd.image.name`
/// and unpacks it into the default snapshotter, which the CRI plugin uses too.
pub fn import(target: &ImportTarget, archive: &Path) -> Result<(), ImageError> {
    if !cmd::on_path(CTR) {
        return Err(ImageError::MissingTool { tool: CTR, package: "containerd" });
    }
    cmd::output(ctr(target).args(["images", "import"]).arg(archive))?;
    Ok(())
}

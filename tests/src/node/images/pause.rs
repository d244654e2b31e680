//! The sandbox image: `pause.c` compiled static with musl on an empty base.
use std::path::Path;
use std::process::Command;

use super::layer::{Entry, Tree};
use super::oci::{ImageSpec, RunConfig, DEFAULT_PATH};
use super::{cmd, ImageError, REPOSITORY_PREFIX};

const SOURCE: &str = include_str!("pause.c");
pub const NAME: &str = "ldap-elector-pause";
/// Bumped when pause.c changes meaningfully (the tag's hash changes anyway).
const VERSION: &str = "1.0";
const COMPILER: &str = "musl-gcc";
/// Kubernetes' pause image runs as 65535 too.
const USER: &str = "65535:65535";

/// Compiles pause.c in `work` (a scratch directory) and returns the image's spec and layer.
pub fn image(work: &Path) -> Result<(ImageSpec, Tree), ImageError> {
    if !cmd::on_path(COMPILER) {
        return Err(ImageError::MissingTool { tool: COMPILER, package: "musl-tools" });
    }
    std::fs::create_dir_all(work).map_err(|e| ImageError::io(work, e))?;
    let source = work.join("pause.c");
    let binary = work.join("pause");
    std::fs::write(&source, SOURCE).map_err(|e| ImageError::io(&source, e))?;
    // -s: no symbols or debug info, so no build path ends up in the binary.
    cmd::output(Command::new(COMPILER).args(["-static", "-Os", "-s", "-o"]).arg(&binary).arg(&source))?;
    let data = std::fs::read(&binary).map_err(|e| ImageError::io(&binary, e))?;
    let mut tree = Tree::default();
    tree.insert(Entry::file("pause", 0o755, data))?;
    let spec = ImageSpec {
        repository: format!("{REPOSITORY_PREFIX}{NAME}"),
        version: VERSION.into(),
        config: RunConfig {
            user: Some(USER.into()),
            entrypoint: vec!["/pause".into()],
            env: vec![DEFAULT_PATH.into()],
            ..RunConfig::default()
        },
    };
    Ok((spec, tree))
}

//! Our binaries, built with cargo once per process in the shared target directory, for the
//! test kubelet and the benchmarks to run as local processes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;

/// Builds binary `bin` of workspace package `package` (quietly, in the debug or release
/// profile) and returns its path in the target directory.
pub fn cargo_build(package: &str, bin: &str, release: bool) -> anyhow::Result<PathBuf> {
    let root = crate::repo_root();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin]).current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().with_context(|| format!("running cargo build for {bin}"))?;
    anyhow::ensure!(status.success(), "building {bin} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(target.join(if release { "release" } else { "debug" }).join(bin))
}

/// The `ldap-elector` binary (the release profile for benchmarks, debug for tests).
pub fn elector_binary(release: bool) -> PathBuf {
    static BINS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    BINS[release as usize]
        .get_or_init(|| match cargo_build("ldap-elector", "ldap-elector", release) {
            Ok(path) => path,
            Err(e) => panic!("{e:#}"),
        })
        .clone()
}

/// The debug `ldap-elector-webhook` binary (for the chart's pods on a bed with a pod network).
pub fn webhook_debug_binary() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = BIN.get() {
        return Ok(path.clone());
    }
    let path = cargo_build("ldap-elector-webhook", "ldap-elector-webhook", false)?;
    Ok(BIN.get_or_init(|| path).clone())
}

/// The release `ldap-elector-webhook`; `WEBHOOK_BENCH_BINARY` names another build instead
/// (e.g. one with symbols, for `perf`).
pub fn webhook_release_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("WEBHOOK_BENCH_BINARY") {
        Some(path) => Ok(PathBuf::from(path)),
        None => cargo_build("ldap-elector-webhook", "ldap-elector-webhook", true),
    }
}

//! The ldap-elector and ldap-elector-webhook images: what their Dockerfiles build (a static
//! musl release binary on `scratch`, uid 65532, the same labels) without Docker.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::layer::{Entry, Tree};
use super::oci::{ImageSpec, RunConfig, DEFAULT_PATH};
use super::{cmd, ImageError, REPOSITORY_PREFIX};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The Dockerfiles' `USER`.
const USER: &str = "65532:65532";
/// The Dockerfiles' `ARG REVISION=unknown`: a git revision label would make every commit a
/// new image even when the binary is the same.
const REVISION: &str = "unknown";
const LICENSES: &str = "Apache-2.0";

/// One shipped binary: package, binary (= image) name and the Dockerfile's description label.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    pub package: &'static str,
    pub name: &'static str,
    pub description: &'static str,
}

pub const ELECTOR: Binary = Binary {
    package: "ldap-elector",
    name: "ldap-elector",
    description: "Lease-based leader election sidecar for OpenLDAP Mirror Mode",
};

pub const WEBHOOK: Binary = Binary {
    package: "ldap-elector-webhook",
    name: "ldap-elector-webhook",
    description: "Admission webhook injecting the ldap-elector sidecar",
};

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

/// The Dockerfiles' RUSTFLAGS. Their `--remap-path-prefix=/src=.` is not needed: cargo passes
/// workspace sources relative to the workspace root, and leaving the checkout path out of the
/// flags keeps one cache for every checkout (changed RUSTFLAGS rebuild everything).
fn rustflags() -> String {
    format!("-C target-feature=+crt-static --remap-path-prefix={}=cargo", cargo_home().display())
}

/// Installs the musl standard library for the pinned toolchain if it is missing (rustup reads
/// `targets` in rust-toolchain.toml only when it installs the toolchain).
fn ensure_musl_target(repo: &Path) -> Result<(), ImageError> {
    let out = cmd::output(Command::new("rustc").current_dir(repo).args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib").join(MUSL_TARGET).is_dir() {
        return Ok(());
    }
    cmd::status(Command::new("rustup").current_dir(repo).args(["target", "add", MUSL_TARGET]))
}

/// Variables cargo sets for the crates it builds and runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`,
/// ...). Inherited by the nested cargo they would reach its build-script checks (ring reruns
/// when `CARGO_PKG_NAME` differs from the last build), so a build from `cargo test` and one
/// from a shell would rebuild ring and all above it in turn. Flags that would beat ours go too.
fn inherited_cargo_vars() -> Vec<std::ffi::OsString> {
    const EXACT: [&str; 11] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_CFG_", "CARGO_BIN_"];
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| {
            let name = name.to_string_lossy();
            EXACT.contains(&name.as_ref()) || PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect()
}

/// A cargo in `repo` building into `target_dir`, without the variables of an enclosing cargo.
fn cargo(repo: &Path, target_dir: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    for name in inherited_cargo_vars() {
        cargo.env_remove(name);
    }
    cargo.current_dir(repo).env("CARGO_TARGET_DIR", target_dir);
    cargo
}

/// `cargo build --release --locked --target x86_64-unknown-linux-musl` of one binary into
/// `target_dir`; cargo decides what is stale. Returns the binary's path.
pub fn build(repo: &Path, target_dir: &Path, binary: &Binary) -> Result<PathBuf, ImageError> {
    if !cmd::on_path("musl-gcc") {
        return Err(ImageError::MissingTool { tool: "musl-gcc", package: "musl-tools" });
    }
    ensure_musl_target(repo)?;
    cmd::status(
        cargo(repo, target_dir)
            .args(["build", "--release", "--locked", "--target", MUSL_TARGET])
            .args(["-p", binary.package, "--bin", binary.name])
            .env("CARGO_INCREMENTAL", "0")
            .env("SOURCE_DATE_EPOCH", "0")
            .env("RUSTFLAGS", rustflags()),
    )?;
    Ok(target_dir.join(MUSL_TARGET).join("release").join(binary.name))
}

/// `cargo metadata --no-deps` of the workspace in `repo` (JSON).
pub fn workspace_metadata(repo: &Path, target_dir: &Path) -> Result<Vec<u8>, ImageError> {
    let args = ["metadata", "--no-deps", "--locked", "--format-version", "1"];
    Ok(cmd::output(cargo(repo, target_dir).args(args))?.stdout)
}

/// What reaches a binary besides its sources: the target, the flags, the profile, the
/// toolchain (`rustc -vV` in `repo`, which picks rust-toolchain.toml) and the user's build
/// settings ([`BUILD_VARIABLE_PREFIXES`]).
pub fn build_facts(repo: &Path) -> Result<String, ImageError> {
    let rustc = cmd::output(Command::new("rustc").current_dir(repo).arg("-vV"))?;
    let mut facts = format!("{MUSL_TARGET}\n{}\nrelease\n{}", rustflags(), String::from_utf8_lossy(&rustc.stdout));
    let mut variables: Vec<String> = std::env::vars()
        .filter(|(name, _)| BUILD_VARIABLE_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect();
    variables.sort();
    facts.extend(variables);
    facts.push_str(&std::fs::read_to_string(cargo_home().join("config.toml")).unwrap_or_default());
    Ok(facts)
}

/// Variables a user may set that change what cargo or the C compiler (ring's) builds: profile
/// and target overrides, compilers and their flags. The user's cargo config counts too.
const BUILD_VARIABLE_PREFIXES: [&str; 6] =
    ["CARGO_PROFILE_", "CARGO_TARGET_X86_64", "CC", "CFLAGS", "TARGET_C", "RUSTC"];

/// Removes what `target_dir` holds of the workspace's own packages (`cargo clean -p` each),
/// keeping the registry crates.
pub fn clean_workspace_members(repo: &Path, target_dir: &Path) -> Result<(), ImageError> {
    let members = workspace_members(&workspace_metadata(repo, target_dir)?)?;
    let mut clean = cargo(repo, target_dir);
    clean.args(["clean", "--release", "--target", MUSL_TARGET]);
    for member in &members {
        clean.args(["-p", member]);
    }
    cmd::status(&mut clean)
}

/// The package names in `cargo metadata --no-deps` output.
fn workspace_members(metadata: &[u8]) -> Result<Vec<String>, ImageError> {
    let json: serde_json::Value = serde_json::from_slice(metadata).map_err(super::oci::OciError::from)?;
    Ok(json["packages"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str().map(String::from)).collect())
}

/// The image of a built binary: `/<name>` (0755, root-owned like Docker's COPY), USER
/// 65532:65532, ENTRYPOINT `/<name>`, the Dockerfile's labels. Nothing else: no shell.
pub fn image(binary: &Binary, version: &str, data: Vec<u8>) -> Result<(ImageSpec, Tree), ImageError> {
    let mut tree = Tree::default();
    tree.insert(Entry::file(binary.name, 0o755, data))?;
    let labels = BTreeMap::from([
        ("org.opencontainers.image.title", binary.name),
        ("org.opencontainers.image.description", binary.description),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.revision", REVISION),
        ("org.opencontainers.image.licenses", LICENSES),
    ])
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let spec = ImageSpec {
        repository: format!("{REPOSITORY_PREFIX}{}", binary.name),
        version: version.to_owned(),
        config: RunConfig {
            user: Some(USER.into()),
            entrypoint: vec![format!("/{}", binary.name)],
            env: vec![DEFAULT_PATH.into()],
            labels,
            ..RunConfig::default()
        },
    };
    Ok((spec, tree))
}

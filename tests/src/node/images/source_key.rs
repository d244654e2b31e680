//! Shipped binaries kept by the content they are built from. A fat-LTO musl release link costs
//! minutes per binary, and cargo's freshness check is per checkout (`musl_target_dir`), so a
//! CI clone of a commit already built here would link both binaries again. The key hashes
//! everything that reaches the binary: the sources of its package and of every workspace
//! package it depends on (not dev-dependencies), the workspace manifest, Cargo.lock, the
//! toolchain file, `rustc -vV` and the flags. A key that is too wide only costs a build; the
//! walk takes every file under those package directories, so it cannot be too narrow.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{oci, ImageError};

/// Files at the workspace root that reach every binary.
const WORKSPACE_FILES: [&str; 3] = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"];
/// Directories under a package that hold no input (build output, VCS).
const SKIPPED_DIRS: [&str; 2] = ["target", ".git"];

/// The manifest directories of `package` and of every workspace package it depends on
/// (normal and build dependencies, transitively), from `cargo metadata --no-deps` output.
pub fn package_dirs(metadata: &[u8], package: &str) -> Result<BTreeSet<PathBuf>, ImageError> {
    let json: serde_json::Value = serde_json::from_slice(metadata).map_err(oci::OciError::from)?;
    // package name -> (its directory, the directories of its path dependencies)
    let mut packages: BTreeMap<&str, (PathBuf, Vec<PathBuf>)> = BTreeMap::new();
    for p in json["packages"].as_array().into_iter().flatten() {
        let (Some(name), Some(manifest)) = (p["name"].as_str(), p["manifest_path"].as_str()) else { continue };
        let dir = Path::new(manifest).parent().unwrap_or(Path::new("")).to_owned();
        let deps = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["path"].as_str().map(PathBuf::from))
            .collect();
        packages.insert(name, (dir, deps));
    }
    let by_dir: BTreeMap<&PathBuf, &str> = packages.iter().map(|(name, (dir, _))| (dir, *name)).collect();
    let mut dirs = BTreeSet::new();
    let mut todo = vec![package];
    while let Some(name) = todo.pop() {
        let Some((dir, deps)) = packages.get(name) else {
            return Err(ImageError::NotInWorkspace(name.to_owned()));
        };
        if dirs.insert(dir.clone()) {
            todo.extend(deps.iter().filter_map(|d| by_dir.get(d).copied()));
        }
    }
    Ok(dirs)
}

/// Every file under `dir`, recursively, without [`SKIPPED_DIRS`].
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| ImageError::io(&path, e))?;
        if kind.is_dir() {
            if !SKIPPED_DIRS.iter().any(|s| entry.file_name() == *s) {
                files_under(&path, out)?;
            }
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The key of a binary built in `repo` from the packages in `dirs`, with `facts` (flags,
/// toolchain, target, binary name) folded in: hex SHA-256 over each file's path relative to
/// `repo` and its content, length-prefixed so no two inputs concatenate alike.
pub fn key(repo: &Path, dirs: &BTreeSet<PathBuf>, facts: &[&str]) -> Result<String, ImageError> {
    let mut files: Vec<PathBuf> = WORKSPACE_FILES.iter().map(|f| repo.join(f)).filter(|p| p.exists()).collect();
    for dir in dirs {
        files_under(dir, &mut files)?;
    }
    files.sort();
    let mut hasher = Sha256::new();
    let mut feed = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for fact in facts {
        feed(fact.as_bytes());
    }
    for file in &files {
        let relative = file.strip_prefix(repo).unwrap_or(file);
        feed(relative.to_string_lossy().as_bytes());
        feed(&std::fs::read(file).map_err(|e| ImageError::io(file, e))?);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three workspace packages the way `cargo metadata --no-deps` lists them: the binary
    /// depends on `lib` by path, `lib` on `base`; `tests` is a dev-dependency only.
    fn metadata(root: &Path) -> Vec<u8> {
        let p = |name: &str| root.join(name).to_string_lossy().into_owned();
        serde_json::to_vec(&serde_json::json!({ "packages": [
            { "name": "bin", "manifest_path": format!("{}/Cargo.toml", p("bin")), "dependencies": [
                { "name": "lib", "kind": null, "path": p("lib") },
                { "name": "tests", "kind": "dev", "path": p("tests") },
                { "name": "serde", "kind": null },
            ]},
            { "name": "lib", "manifest_path": format!("{}/Cargo.toml", p("lib")), "dependencies": [
                { "name": "base", "kind": "build", "path": p("base") },
            ]},
            { "name": "base", "manifest_path": format!("{}/Cargo.toml", p("base")), "dependencies": [] },
            { "name": "tests", "manifest_path": format!("{}/Cargo.toml", p("tests")), "dependencies": [] },
        ]}))
        .unwrap()
    }

    /// A scratch workspace, removed on drop.
    struct Workspace(PathBuf);

    impl Drop for Workspace {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn workspace(name: &str) -> Workspace {
        let root = Workspace(std::env::temp_dir().join(format!("ldap-elector-{name}-{}", std::process::id())));
        for (file, text) in [
            ("Cargo.lock", "lock"),
            ("bin/Cargo.toml", "[package]"),
            ("bin/src/main.rs", "fn main() {}"),
            ("bin/target/release/bin", "built"),
            ("lib/src/lib.rs", "pub fn f() {}"),
            ("base/src/lib.rs", "pub fn g() {}"),
            ("tests/src/lib.rs", "#[test] fn t() {}"),
        ] {
            let path = root.0.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn a_binary_depends_on_its_path_dependencies_transitively_but_not_on_dev_dependencies() {
        let root = Path::new("/ws");
        let dirs = package_dirs(&metadata(root), "bin").unwrap();
        assert_eq!(dirs, ["base", "bin", "lib"].map(|d| root.join(d)).into_iter().collect());
        assert!(matches!(package_dirs(&metadata(root), "absent"), Err(ImageError::NotInWorkspace(_))));
    }

    #[test]
    fn the_key_changes_with_any_source_of_the_binary_and_with_nothing_else() {
        let ws = workspace("source-key");
        let root = ws.0.as_path();
        let dirs = package_dirs(&metadata(root), "bin").unwrap();
        let key_now = || key(root, &dirs, &["flags"]).unwrap();
        let first = key_now();
        assert_eq!(first.len(), 64);
        assert_eq!(key_now(), first, "the same inputs give the same key");

        // Outside the binary's inputs: a dev-dependency, build output, an unrelated file.
        std::fs::write(root.join("tests/src/lib.rs"), "changed").unwrap();
        std::fs::write(root.join("bin/target/release/bin"), "rebuilt").unwrap();
        std::fs::write(root.join("README.md"), "docs").unwrap();
        assert_eq!(key_now(), first);

        for (file, text) in [("base/src/lib.rs", "pub fn h() {}"), ("lib/src/new.rs", ""), ("Cargo.lock", "lock 2")] {
            let before = key_now();
            std::fs::write(root.join(file), text).unwrap();
            assert_ne!(key_now(), before, "{file} reaches the binary");
        }
        let before = key_now();
        std::fs::rename(root.join("lib/src/new.rs"), root.join("lib/src/renamed.rs")).unwrap();
        assert_ne!(key_now(), before, "a renamed file changes the key");
        assert_ne!(key(root, &dirs, &["other flags"]).unwrap(), key_now(), "flags and toolchain reach the binary");
    }
}

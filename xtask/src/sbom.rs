//! `make sbom`: a CycloneDX 1.5 JSON SBOM per shipped binary (`ldap-elector`,
//! `ldap-elector-webhook`), from `cargo metadata` (the resolved dependency graph for the
//! images' target, normal dependencies only: what is linked into the binary) and the
//! checksums of `Cargo.lock` (parsed with the `cargo-lock` crate). Deterministic: no random
//! serial number, and a timestamp only from `SOURCE_DATE_EPOCH`, so the same commit yields
//! the same bytes.
//!
//! `xtask sbom [OUT_DIR]` writes `<OUT_DIR>/<package>.cdx.json` (default `results/sbom`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// The packages whose binaries ship as images.
const SHIPPED: [&str; 2] = ["ldap-elector", "ldap-elector-webhook"];
/// The images' target (static musl, see the Dockerfiles).
const TARGET: &str = "x86_64-unknown-linux-musl";

pub fn run(out: &Path) -> anyhow::Result<()> {
    let root = ldap_elector_tests::repo_root();
    let metadata = cargo_metadata(&root)?;
    let checksums = lock_checksums(&root.join("Cargo.lock"))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for package in SHIPPED {
        let bom = sbom(&metadata, &checksums, package)?;
        let path = out.join(format!("{package}.cdx.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&bom)? + "\n")?;
        let components = bom["components"].as_array().map_or(0, Vec::len);
        println!("{}: {components} components", path.display());
    }
    Ok(())
}

fn cargo_metadata(root: &Path) -> anyhow::Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", TARGET])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `(name, version) → sha256` of every registry package in the lock file.
fn lock_checksums(path: &Path) -> anyhow::Result<BTreeMap<(String, String), String>> {
    let lockfile = cargo_lock::Lockfile::load(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(lockfile
        .packages
        .into_iter()
        .filter_map(|p| Some(((p.name.to_string(), p.version.to_string()), p.checksum?.to_string())))
        .collect())
}

/// The SBOM of `package`: every package reachable from it over normal dependencies.
fn sbom(metadata: &Value, checksums: &BTreeMap<(String, String), String>, package: &str) -> anyhow::Result<Value> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("metadata without packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
        .as_array()
        .context("metadata without a resolved graph")?
        .iter()
        .filter_map(|n| {
            let normal = n["deps"]
                .as_array()?
                .iter()
                .filter(|d| d["dep_kinds"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null())));
            Some((n["id"].as_str()?, normal.filter_map(|d| d["pkg"].as_str()).collect()))
        })
        .collect();
    let root = packages
        .iter()
        .find(|(_, p)| p["name"] == package && p["source"].is_null())
        .map(|(id, _)| *id)
        .with_context(|| format!("workspace package {package} not found"))?;

    let mut reachable = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if reachable.insert(id) {
            todo.extend(nodes.get(id).into_iter().flatten().copied());
        }
    }
    let purl = |id: &str| {
        let p = packages[id];
        format!("pkg:cargo/{}@{}", p["name"].as_str().unwrap_or_default(), p["version"].as_str().unwrap_or_default())
    };
    let component = |id: &str, kind: &str| {
        let p = packages[id];
        let (name, version) = (p["name"].as_str().unwrap_or_default(), p["version"].as_str().unwrap_or_default());
        let mut c = json!({"type": kind, "bom-ref": purl(id), "name": name, "version": version, "purl": purl(id)});
        if let Some(license) = p["license"].as_str() {
            c["licenses"] = json!([{"expression": license}]);
        }
        if let Some(sum) = checksums.get(&(name.to_string(), version.to_string())) {
            c["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
        }
        c
    };
    let dependencies: Vec<Value> = reachable
        .iter()
        .map(|id| {
            let on: BTreeSet<String> = nodes.get(id).into_iter().flatten().map(|d| purl(d)).collect();
            json!({"ref": purl(id), "dependsOn": on})
        })
        .collect();
    let mut metadata_section = json!({
        "component": component(root, "application"),
        "properties": [{"name": "cdx:cargo:target", "value": TARGET}],
    });
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        metadata_section["timestamp"] = json!(rfc3339(epoch.parse().context("SOURCE_DATE_EPOCH is not a number")?)?);
    }
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": metadata_section,
        "components": reachable.iter().filter(|id| **id != root).map(|id| component(id, "library")).collect::<Vec<_>>(),
        "dependencies": dependencies,
    }))
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
fn rfc3339(secs: i64) -> anyhow::Result<String> {
    Ok(jiff::Timestamp::from_second(secs).context("SOURCE_DATE_EPOCH is out of range")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_651_200).unwrap(), "2026-11-26T00:00:00Z");
    }

    #[test]
    fn shipped_binaries_list_what_they_link_and_not_what_they_test_with() {
        let root = ldap_elector_tests::repo_root();
        let metadata = cargo_metadata(&root).unwrap();
        let checksums = lock_checksums(&root.join("Cargo.lock")).unwrap();
        let names = |bom: &Value| -> BTreeSet<String> {
            bom["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
        };
        let elector = sbom(&metadata, &checksums, "ldap-elector").unwrap();
        let webhook = sbom(&metadata, &checksums, "ldap-elector-webhook").unwrap();
        assert_eq!(elector["metadata"]["component"]["name"], "ldap-elector");
        for linked in ["kube-client", "tokio", "ldap3", "rustls"] {
            assert!(names(&elector).contains(linked), "elector SBOM lacks {linked}");
        }
        for linked in ["hyper", "rustls", "rcgen", "ldap-elector-contract", "ldap-elector-certs"] {
            assert!(names(&webhook).contains(linked), "webhook SBOM lacks {linked}");
        }
        // The webhook shares only the contract with the elector, not the elector's library.
        assert!(!names(&webhook).contains("ldap-elector"), "the webhook links the elector library");
        for bom in [&elector, &webhook] {
            assert!(!names(bom).contains("proptest"), "a dev-dependency is not in the binary");
            for c in bom["components"].as_array().unwrap() {
                let local = c["name"].as_str().unwrap().starts_with("ldap-elector");
                let hash = c["hashes"][0]["content"].as_str().unwrap_or_default();
                assert!(local || (hash.len() == 64 && hash.chars().all(|h| h.is_ascii_hexdigit())), "{c}");
                assert!(c["purl"].as_str().unwrap().starts_with("pkg:cargo/"), "{c}");
            }
        }
    }
}

//! The shipped alert rules and Grafana dashboard only use metrics that exist: every
//! `ldap_elector_*` name in an alert expression or a panel query is one the elector or the
//! webhook registers (`contract::metric`), and each alert has the fields Prometheus needs.

use ldap_elector_tests::repo_root;
use std::path::Path;
use std::process::Command;

use ldap_elector_contract::metric;
use ldap_elector_tests::bed::binaries;
use serde_json::Value;

/// YAML → JSON with the bed's `helm` (its `fromYaml | toJson`), so no YAML crate is needed.
fn yaml_to_json(file: &Path) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("ldap-elector-yaml2json-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("chart/templates"))?;
    std::fs::write(dir.join("chart/Chart.yaml"), "apiVersion: v2\nname: yaml2json\nversion: 0.1.0\n")?;
    std::fs::write(dir.join("chart/templates/doc.yaml"), "{{ .Values.doc | fromYaml | toJson }}\n")?;
    let out = Command::new(binaries()?.join("helm"))
        .args(["template", "x"])
        .arg(dir.join("chart"))
        .arg("--set-file")
        .arg(format!("doc={}", file.display()))
        .env("KUBECONFIG", dir.join("no-cluster"))
        .env("HELM_CACHE_HOME", dir.join("cache"))
        .env("HELM_CONFIG_HOME", dir.join("config"))
        .env("HELM_DATA_HOME", dir.join("data"))
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(out.status.success(), "helm: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let json = text.lines().find(|l| l.starts_with('{')).ok_or_else(|| anyhow::anyhow!("no JSON in {text}"))?;
    let value: Value = serde_json::from_str(json)?;
    anyhow::ensure!(value.get("Error").is_none(), "{} is not valid YAML: {}", file.display(), value["Error"]);
    Ok(value)
}

/// Every `ldap_elector_*` metric name in `expr`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ldap_elector_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Whether `name` is a registered family, or a histogram's `_bucket`/`_sum`/`_count` series.
fn registered(name: &str) -> bool {
    let known = |n: &str| metric::ELECTOR.contains(&n) || metric::WEBHOOK.contains(&n);
    known(name) || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(known))
}

#[test]
fn alert_rules_are_well_formed_and_use_only_registered_metrics() -> anyhow::Result<()> {
    let rules = yaml_to_json(&repo_root().join("deploy/prometheus/alerts.yaml"))?;
    let groups = rules["groups"].as_array().ok_or_else(|| anyhow::anyhow!("no groups: {rules}"))?;
    let mut alerts = Vec::new();
    for group in groups {
        assert!(group["name"].is_string(), "{group}");
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["alert"].as_str().ok_or_else(|| anyhow::anyhow!("rule without alert: {rule}"))?;
            let expr = rule["expr"].as_str().ok_or_else(|| anyhow::anyhow!("{name}: no expr"))?;
            let used = metric_names(expr);
            assert!(!used.is_empty(), "{name}: uses no ldap-elector metric: {expr}");
            for m in used {
                assert!(registered(&m), "{name}: {m} is not a registered metric");
            }
            assert!(rule["labels"]["severity"].is_string(), "{name}: no severity");
            assert!(rule["annotations"]["summary"].is_string(), "{name}: no summary");
            alerts.push(name.to_string());
        }
    }
    // The alerts the docs promise.
    for wanted in [
        "LdapElectorNoLeader",
        "LdapElectorTwoLeaders",
        "LdapElectorRenewLatencyHigh",
        "LdapElectorStandbyLagging",
        "LdapElectorStandbyDiverged",
        "LdapElectorWebhookCertificateExpiring",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing from {alerts:?}");
    }
    Ok(())
}

#[test]
fn dashboard_queries_use_only_registered_metrics() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/ldap-elector.json"))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let panels = dashboard["panels"].as_array().ok_or_else(|| anyhow::anyhow!("no panels"))?;
    let mut seen = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().ok_or_else(|| anyhow::anyhow!("panel without targets: {panel}"))?;
        for target in targets {
            let expr = target["expr"].as_str().ok_or_else(|| anyhow::anyhow!("target without expr: {target}"))?;
            for m in metric_names(expr) {
                assert!(registered(&m), "panel {}: {m} is not a registered metric", panel["title"]);
                seen.insert(m);
            }
        }
    }
    assert!(seen.iter().any(|m| m == metric::IS_LEADER), "{seen:?}");
    Ok(())
}

#[test]
fn the_name_checker_finds_names_and_histogram_series() {
    assert_eq!(
        metric_names("sum(rate(ldap_elector_x_bucket{a=\"b\"}[5m])) > ldap_elector_y"),
        vec!["ldap_elector_x_bucket", "ldap_elector_y"]
    );
    assert!(registered("ldap_elector_lease_renew_latency_seconds_bucket"));
    assert!(registered(metric::IS_LEADER));
    assert!(!registered("ldap_elector_is_leader_bucket_x"));
    assert!(!registered("ldap_elector_made_up"));
}

//! The chart's ValidatingAdmissionPolicies on a bed, applied as `helm install` would: the
//! leader-label protection (`templates/label-protection.yaml`) and the protection of an
//! injected pod's code and credentials (`templates/pod-protection.yaml`) and the Lease's
//! operator overrides (`templates/lease-protection.yaml`), for the release
//! `ldap-elector` installed where the test webhook runs, so the exemptions name its account.

use crate::bed::process::run;
use crate::workloads::webhook::{WEBHOOK_NS, WEBHOOK_SA};
use crate::Bed;

/// The chart templates holding the policies.
pub const POLICY_TEMPLATES: [&str; 3] =
    ["templates/label-protection.yaml", "templates/pod-protection.yaml", "templates/lease-protection.yaml"];
/// Policy names of the release `ldap-elector` (`<fullname>-...`).
pub const POD_ROLE_POLICY: &str = "ldap-elector-pod-role";
pub const LEADER_SERVICE_POLICY: &str = "ldap-elector-leader-service";
pub const POD_SPEC_POLICY: &str = "ldap-elector-pod-spec";
pub const POD_BOUND_TOKEN_POLICY: &str = "ldap-elector-pod-bound-token";
pub const POD_MARKER_POLICY: &str = "ldap-elector-pod-marker";
pub const LEASE_OVERRIDES_POLICY: &str = "ldap-elector-lease-overrides";
pub const OPT_IN_POLICY: &str = "ldap-elector-opt-in";
pub const WEBHOOK_CONFIGURATION_POLICY: &str = "ldap-elector-webhook-configuration";
pub const WEBHOOK_SECRET_POLICY: &str = "ldap-elector-webhook-secret";

/// Renders the policy templates with `helm template` and applies them with `kubectl`;
/// returns the rendered YAML.
pub async fn install(bed: &Bed) -> anyhow::Result<String> {
    install_with(bed, &POLICY_TEMPLATES, &[]).await
}

/// Renders `templates` of the chart with the extra `helm` arguments `sets` (e.g.
/// `["--set", "key=value"]`) and applies them; returns the rendered YAML.
pub async fn install_with(bed: &Bed, templates: &[&str], sets: &[&str]) -> anyhow::Result<String> {
    let rendered = render(bed, templates, sets).await?;
    run(bed.kubectl().args(["apply", "-f", "-"]), Some(&rendered))?;
    Ok(String::from_utf8_lossy(&rendered).into_owned())
}

/// `helm template` of `templates` (release `ldap-elector` in the test webhook's namespace).
pub async fn render(bed: &Bed, templates: &[&str], sets: &[&str]) -> anyhow::Result<Vec<u8>> {
    let chart = crate::repo_root().join("charts/ldap-elector");
    // The chart's kubeVersion is checked against the bed's real version.
    let version = bed.admin_client()?.apiserver_version().await?.git_version;
    let chart = chart.display().to_string();
    let service_account = format!("serviceAccount.name={WEBHOOK_SA}");
    let mut args = vec!["template", "ldap-elector", &chart, "--namespace", WEBHOOK_NS, "--set", &service_account];
    for template in templates {
        args.extend(["--show-only", template]);
    }
    args.extend(sets);
    args.extend(["--kube-version", &version]);
    Ok(run(bed.helm().args(&args), None)?.stdout)
}

/// The scope of the chart's pod webhook rendered with `sets`: its `namespaceSelector` and
/// `objectSelector`, as JSON.
pub async fn pod_webhook_scope(bed: &Bed, sets: &[&str]) -> anyhow::Result<Scope> {
    let rendered = render(bed, &["templates/mutatingwebhookconfiguration.yaml"], sets).await?;
    let json = run(bed.kubectl().args(["create", "--dry-run=client", "-o", "json", "-f", "-"]), Some(&rendered))?;
    let mwc: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let webhooks = mwc["webhooks"].as_array().cloned().unwrap_or_default();
    let pods = webhooks.iter().find(|w| w["name"] == "pods.ldap-elector.dev");
    let pods = pods.ok_or_else(|| anyhow::anyhow!("the chart renders no pod webhook"))?;
    Ok(Scope { namespaces: pods["namespaceSelector"].clone(), objects: pods["objectSelector"].clone() })
}

/// Which pods a webhook configuration sends to the pod webhook.
#[derive(Clone, Debug)]
pub struct Scope {
    pub namespaces: serde_json::Value,
    pub objects: serde_json::Value,
}

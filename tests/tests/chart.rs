//! The Helm chart: it lints strictly, renders in every certificate mode, refuses unsafe
//! values, is accepted by a real API server (server-side dry run) in a namespace that
//! enforces Pod Security `restricted`, and once installed its pods are admitted there. Two
//! Deployments with an account each (issue 17, item 2): the admission server's only reads,
//! the controller's may create exactly the per-StatefulSet RBAC it needs (no `escalate`);
//! and an upgrade keeps the caBundle the controller published.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::ByteString;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::process::{output, run};
use ldap_elector_tests::bed::{binaries, random_hex};
use ldap_elector_tests::workloads::fixtures;
use ldap_elector_tests::{wait_for, Bed};
use ldap_elector_webhook::reconcile as rbac;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const RELEASE: &str = "ldap-elector";
const NS: &str = "ldap-elector";
/// Object names with the default values and release name `ldap-elector`.
const WEBHOOK: &str = "ldap-elector-webhook";
/// The controller's Deployment, ServiceAccount, RBAC, PDB and NetworkPolicy.
const CONTROLLER: &str = "ldap-elector-controller";
const WEBHOOK_CONFIG: &str = "ldap-elector";
const TLS_SECRET: &str = "ldap-elector-webhook-tls";
const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const KUBE_VERSION: &str = "1.35.0";

fn chart() -> PathBuf {
    ldap_elector_tests::repo_root().join("charts/ldap-elector")
}

/// `helm` without a cluster, with its state in a throwaway directory.
struct OfflineHelm {
    bin: PathBuf,
    home: PathBuf,
}

impl OfflineHelm {
    fn new() -> anyhow::Result<Self> {
        let home = std::env::temp_dir().join(format!("ldap-elector-helm-{}", random_hex(6)?));
        std::fs::create_dir_all(&home)?;
        Ok(OfflineHelm { bin: binaries()?.join("helm"), home })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", self.home.join("no-cluster"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"));
        cmd
    }
}

impl Drop for OfflineHelm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// `helm template` args for the release with extra `--set`-style args.
fn template_args<'a>(chart: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["template", RELEASE, chart, "--namespace", NS, "--kube-version", KUBE_VERSION];
    args.extend_from_slice(extra);
    args
}

const CERT_MANAGER: &[&str] = &["--set", "certMode=certManager"];
const FILES: &[&str] = &["--set", "certMode=files", "--set", "files.secretName=my-tls", "--set", "files.caBundle=Q0E="];

#[test]
fn chart_lints_strictly_and_renders_in_every_cert_mode_and_refuses_unsafe_values() -> anyhow::Result<()> {
    let helm = OfflineHelm::new()?;
    let chart = chart().display().to_string();
    for (mode, extra) in [("secret", &[][..]), ("certManager", CERT_MANAGER), ("files", FILES)] {
        let mut lint = vec!["lint", "--strict", &chart, "--namespace", NS, "--kube-version", KUBE_VERSION];
        lint.extend_from_slice(extra);
        run(&mut helm.cmd(&lint), None).map_err(|e| e.context(format!("helm lint --strict, certMode={mode}")))?;
        let out = run(&mut helm.cmd(&template_args(&chart, extra)), None)?;
        let text = String::from_utf8(out.stdout)?;
        for kind in ["Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
            assert!(text.contains(&format!("\nkind: {kind}\n")), "certMode={mode}: no {kind} rendered");
        }
        assert!(text.contains("kind: MutatingWebhookConfiguration"), "certMode={mode}");
        // The admission server, and the controller (reconcile is on by default).
        assert!(text.contains("- --component=admission\n"), "certMode={mode}");
        assert!(text.contains("- --component=controller\n"), "certMode={mode}");
        assert!(text.contains(&format!("\nkind: Deployment\nmetadata:\n  name: {CONTROLLER}\n")), "certMode={mode}");
        match mode {
            "secret" => {
                assert!(text.contains("--cert-mode=secret") && text.contains(&format!("--cert-secret={TLS_SECRET}")));
                assert!(!text.contains("caBundle:"), "no caBundle without a cluster in secret mode");
                assert!(text.contains("kind: Role\n"), "secret mode needs the Secret Role");
            }
            "certManager" => {
                assert!(text.contains("kind: Certificate") && text.contains("kind: Issuer"));
                assert!(text.contains(&format!("cert-manager.io/inject-ca-from: {NS}/{WEBHOOK}")));
                assert!(text.contains("--cert-mode=files") && !text.contains("kind: Role\n"));
                assert!(
                    !text.contains("mutatingwebhookconfigurations"),
                    "no caBundle rights when cert-manager injects"
                );
            }
            _ => {
                assert!(text.contains("secretName: my-tls") && text.contains("caBundle: Q0E="));
                assert!(text.contains("--cert-file=/etc/ldap-elector-webhook/tls/tls.crt"));
            }
        }
    }

    // Without the reconciler and with a certificate the controller does not write, nothing
    // is left for a controller to do: none is rendered, nor its account or rights.
    let no_controller = [CERT_MANAGER, &["--set", "reconcile=false"]].concat();
    let mut lint = vec!["lint", "--strict", &chart, "--namespace", NS, "--kube-version", KUBE_VERSION];
    lint.extend_from_slice(&no_controller);
    run(&mut helm.cmd(&lint), None).map_err(|e| e.context("helm lint --strict, no controller"))?;
    let text = String::from_utf8(run(&mut helm.cmd(&template_args(&chart, &no_controller)), None)?.stdout)?;
    assert!(text.contains("- --component=admission\n"));
    assert!(!text.contains(CONTROLLER) && !text.contains("component: controller"), "{text}");

    // Client authentication: the CA reaches the admission server only, as a ConfigMap
    // mounted and named by --client-ca-file; by default there is none.
    let default = String::from_utf8(run(&mut helm.cmd(&template_args(&chart, &[])), None)?.stdout)?;
    assert!(!default.contains("--client-ca-file"), "no client authentication by default");
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let client_auth = ["--set", &format!("clientAuth.caBundle={ca}")].map(String::from);
    let client_auth: Vec<&str> = client_auth.iter().map(String::as_str).collect();
    let text = String::from_utf8(run(&mut helm.cmd(&template_args(&chart, &client_auth)), None)?.stdout)?;
    assert_eq!(text.matches("- --client-ca-file=/etc/ldap-elector-webhook/client-ca/ca.crt").count(), 1, "{text}");
    assert!(text.contains(&format!("name: {WEBHOOK}-client-ca")) && text.contains("kind: ConfigMap"), "{text}");

    // The API server's addresses for the LDAP NetworkPolicies reach the controller only.
    let cidrs = ["--set", "ldapNetworkPolicy.apiServerCIDRs={198.51.100.10/32,2001:db8::/64}"];
    let text = String::from_utf8(run(&mut helm.cmd(&template_args(&chart, &cidrs)), None)?.stdout)?;
    assert_eq!(text.matches("- --api-server-cidrs=198.51.100.10/32,2001:db8::/64").count(), 1, "{text}");
    assert!(!default.contains("--api-server-cidrs"), "any address by default");

    // Values that would produce an unsafe or broken install are refused with a clear message.
    let refused: &[(&[&str], &str)] = &[
        (&["--set", "image.tag=latest"], "latest"),
        (&["--set", "sidecar.image.tag=latest"], "latest"),
        (&["--set", "failurePolicy=Maybe"], "failurePolicy"),
        (&["--set", "timeoutSeconds=31"], "timeoutSeconds"),
        (&["--set", "certMode=files", "--set", "files.secretName=x"], "files.caBundle"),
        (&["--set", "tlsProfile=legacy"], "tlsProfile"),
        (&["--set", "sidecar.image.digest=md5:abc"], "digest"),
        (&["--set", "tokenExpirationSeconds=60"], "tokenExpirationSeconds"),
        (&["--set", "controller.serviceAccount.name=ldap-elector-webhook"], "must differ"),
        (&["--set", "clientAuth.caBundle=not-pem"], "clientAuth.caBundle must be PEM"),
        (&["--set", "ldapNetworkPolicy.apiServerCIDRs={api.example}"], "apiServerCIDRs"),
    ];
    for (extra, needle) in refused {
        let out = output(&mut helm.cmd(&template_args(&chart, extra)), None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} must be refused");
        assert!(stderr.contains(needle), "{extra:?}: error should mention {needle}: {stderr}");
    }

    // An old cluster is refused by kubeVersion (native sidecars are GA only since 1.33).
    let mut old = template_args(&chart, &[]);
    old[6] = "1.32.0";
    let out = output(&mut helm.cmd(&old), None)?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("kubeVersion"));
    Ok(())
}

/// Every Pod Security `restricted` rule (and our stricter defaults) a pod spec breaks.
fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut v = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == json!(true) {
            v.push(format!("{host}=true"));
        }
    }
    let pod_sc = &spec["securityContext"];
    const VOLUMES: [&str; 8] =
        ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = vol.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| *k != "name").collect();
        if kinds.iter().any(|k| !VOLUMES.contains(&k.as_str())) {
            v.push(format!("volume {} has type {kinds:?}", vol["name"]));
        }
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect::<Vec<_>>();
    if containers.is_empty() {
        v.push("no containers".into());
    }
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        let either = |key: &str| if sc[key].is_null() { pod_sc[key].clone() } else { sc[key].clone() };
        if sc["privileged"] == json!(true) {
            v.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != json!(false) {
            v.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if either("runAsNonRoot") != json!(true) {
            v.push(format!("{name}: runAsNonRoot is not true"));
        }
        if either("runAsUser") == json!(0) {
            v.push(format!("{name}: runAsUser 0"));
        }
        let seccomp = either("seccompProfile")["type"].clone();
        if seccomp != json!("RuntimeDefault") && seccomp != json!("Localhost") {
            v.push(format!("{name}: seccompProfile {seccomp}"));
        }
        if !sc["capabilities"]["drop"].as_array().is_some_and(|d| d.contains(&json!("ALL"))) {
            v.push(format!("{name}: capabilities do not drop ALL"));
        }
        if sc["capabilities"]["add"].as_array().is_some_and(|a| a.iter().any(|c| c != "NET_BIND_SERVICE")) {
            v.push(format!("{name}: adds capabilities"));
        }
        if c["ports"].as_array().is_some_and(|p| p.iter().any(|p| !p["hostPort"].is_null())) {
            v.push(format!("{name}: hostPort"));
        }
        // Not part of `restricted`, but our defaults (BSI SYS.1.6.A15/A23, APP.4.4.A11).
        if sc["readOnlyRootFilesystem"] != json!(true) {
            v.push(format!("{name}: root filesystem is writable"));
        }
        for (kind, resources) in [
            ("requests", &["cpu", "memory", "ephemeral-storage"][..]),
            ("limits", &["memory", "ephemeral-storage"][..]),
        ] {
            for r in resources {
                if c["resources"][kind][r].is_null() {
                    v.push(format!("{name}: no {kind}.{r}"));
                }
            }
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if c[probe].is_null() {
                v.push(format!("{name}: no {probe}"));
            }
        }
    }
    v
}

fn forbidden<T>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {:?}", other.map(|_| ())),
    }
}

fn items_of_kind<'a>(items: &'a [Value], kind: &str) -> Vec<&'a Value> {
    items.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(items: &'a [Value], kind: &str) -> &'a Value {
    let found = items_of_kind(items, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

/// The one object of `kind` named `name`.
fn named<'a>(items: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = items_of_kind(items, kind).into_iter().filter(|o| o["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}, got {}", found.len());
    found[0]
}

/// A `matchLabels` selector selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().filter(|s| !s.is_empty()).expect("a non-empty matchLabels selector");
    selector.iter().all(|(k, v)| &labels[k] == v)
}

/// The rules of the `kind` (ClusterRole or Role) `name`, with only the fields a PolicyRule has.
fn rules(items: &[Value], kind: &str, name: &str) -> Vec<Value> {
    named(items, kind, name)["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut r = r.clone();
            if let Some(o) = r.as_object_mut() {
                o.retain(|k, _| ["apiGroups", "resources", "resourceNames", "verbs"].contains(&k.as_str()));
            }
            r
        })
        .collect()
}

fn expected_rules(rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>) -> Vec<Value> {
    rules.iter().map(|r| serde_json::to_value(r).expect("rule serialises")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_passes_server_dry_run_in_a_namespace_enforcing_restricted() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let client = bed.admin_client()?;
    fixtures::namespace(&client, NS, Some("restricted")).await?;
    // Deployments are only warned about (enforcement is on pods): warn too, and fail on a warning.
    run(bed.kubectl().args(["label", "namespace", NS, "pod-security.kubernetes.io/warn=restricted"]), None)?;

    let chart = chart().display().to_string();
    let rendered = run(bed.helm().args(template_args(&chart, &[])), None)?.stdout;
    let applied = run(bed.kubectl().args(["apply", "--dry-run=server", "-o", "json", "-f", "-"]), Some(&rendered))?;
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!stderr.contains("PodSecurity"), "Pod Security warnings: {stderr}");
    let list: Value = serde_json::from_slice(&applied.stdout)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = items.iter().filter_map(|o| o["kind"].as_str()).collect();
    // The marker policy mirrors the webhook's selectors in CEL: with every kind of selector
    // set, the API server still accepts its expressions.
    let selectors = [
        "--show-only=templates/pod-protection.yaml",
        "--set=webhookConfiguration.podOptInLabel=true",
        "--set=webhookConfiguration.objectSelector.matchLabels.team=ldap",
        "--set-json=webhookConfiguration.objectSelector.matchExpressions=[{\"key\":\"a\",\"operator\":\"In\",\"values\":[\"x\"]},{\"key\":\"b\",\"operator\":\"NotIn\",\"values\":[\"y\",\"z\"]},{\"key\":\"c\",\"operator\":\"Exists\"},{\"key\":\"d\",\"operator\":\"DoesNotExist\"}]",
        "--set=webhookConfiguration.namespaceSelector.matchLabels.ldap=enabled",
        "--set-json=webhookConfiguration.namespaceSelector.matchExpressions=[{\"key\":\"tier\",\"operator\":\"In\",\"values\":[\"prod\"]}]",
    ];
    let marker = run(bed.helm().args(template_args(&chart, &selectors)), None)?.stdout;
    let text = String::from_utf8_lossy(&marker);
    assert!(text.contains("ldap-elector-pod-marker") && text.contains(r#"\"b\" in object.metadata.labels"#), "{text}");
    run(bed.kubectl().args(["apply", "--dry-run=server", "-f", "-"]), Some(&marker))?;
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&kind), "server dry run lacks {kind}: {kinds:?}");
    }

    // Two Deployments (issue 17, item 2): the admission server and the controller, each
    // with its own account; restricted pods, explicit projected token only.
    let admission = named(&items, "Deployment", WEBHOOK);
    let controller = named(&items, "Deployment", CONTROLLER);
    assert_eq!(items_of_kind(&items, "Deployment").len(), 2);
    for (deploy, account) in [(admission, WEBHOOK), (controller, CONTROLLER)] {
        let name = &deploy["metadata"]["name"];
        // High availability (BSI APP.4.4.A19): 2 replicas spread over nodes and zones, kept
        // apart by anti-affinity.
        assert_eq!(deploy["spec"]["replicas"], 2, "{name}");
        let spec = &deploy["spec"]["template"]["spec"];
        let spread: Vec<&str> = spec["topologySpreadConstraints"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["topologyKey"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(spread, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"], "{name}: {spec}");
        assert!(spec["affinity"]["podAntiAffinity"].is_object(), "{name}: no pod anti-affinity: {spec}");
        let violations = restricted_violations(spec);
        assert!(violations.is_empty(), "{name}: restricted violations: {violations:#?}");
        assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
        assert_eq!(spec["enableServiceLinks"], false, "{name}");
        assert_eq!(spec["securityContext"]["runAsUser"], 65532, "{name}");
        assert_eq!(spec["serviceAccountName"], account, "{name}");
        let containers = spec["containers"].as_array().cloned().unwrap_or_default();
        assert_eq!(containers.len(), 1, "{name}");
        let container = &containers[0];
        let token_volume = spec["volumes"]
            .as_array()
            .and_then(|vols| vols.iter().find(|v| v["projected"]["sources"][0]["serviceAccountToken"].is_object()))
            .expect("a projected token volume");
        assert_eq!(token_volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3600);
        let mount = container["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == token_volume["name"]))
            .expect("the token volume is mounted");
        assert_eq!(mount["mountPath"], TOKEN_MOUNT, "{name}");
        assert_eq!(mount["readOnly"], true, "{name}");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], "health", "{name}: {probe}");
        }
    }
    let args = |deploy: &Value| -> Vec<String> {
        let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].as_array().cloned();
        args.into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect()
    };
    let admission_args = args(admission);
    for expected in [
        "--component=admission",
        "--listen=0.0.0.0:8443",
        "--health-listen=0.0.0.0:8080",
        "--tls-profile=bsi",
        "--cert-mode=secret",
        "--service-name=ldap-elector-webhook",
        "--webhook-config=ldap-elector",
        "--sidecar-image=ghcr.io/ldap-elector/ldap-elector:0.1.0",
    ] {
        assert!(admission_args.iter().any(|a| a == expected), "admission: {expected} missing from {admission_args:?}");
    }
    let controller_args = args(controller);
    for expected in [
        "--component=controller",
        "--health-listen=0.0.0.0:8080",
        "--cert-mode=secret",
        &format!("--cert-secret={TLS_SECRET}"),
        // The admission Service's name: its DNS names go into the certificate.
        "--service-name=ldap-elector-webhook",
        "--webhook-config=ldap-elector",
        "--sidecar-image=ghcr.io/ldap-elector/ldap-elector:0.1.0",
    ] {
        assert!(
            controller_args.iter().any(|a| a == expected),
            "controller: {expected} missing from {controller_args:?}"
        );
    }
    assert!(!controller_args.iter().any(|a| a.starts_with("--listen")), "controller listens: {controller_args:?}");
    let env_names = |deploy: &Value| -> Vec<String> {
        let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"].as_array().cloned();
        env.into_iter().flatten().filter_map(|e| e["name"].as_str().map(String::from)).collect()
    };
    // The admission server neither reconciles nor competes for the reconciler Lease.
    assert_eq!(env_names(admission), ["POD_NAMESPACE"]);
    assert_eq!(env_names(controller), ["POD_NAMESPACE", "POD_NAME", "WEBHOOK_RECONCILE"]);
    // Ports: admission https + health; the controller health only.
    let ports = |deploy: &Value| -> Vec<(String, i64)> {
        let ports = deploy["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().cloned();
        ports
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str().unwrap_or("?").to_string(), p["containerPort"].as_i64().unwrap_or(0)))
            .collect()
    };
    assert_eq!(ports(admission), [("https".to_string(), 8443), ("health".to_string(), 8080)]);
    assert_eq!(ports(controller), [("health".to_string(), 8080)]);

    // The Service exposes only 443 -> https (8443); each PDB keeps one replica.
    let service = named(&items, "Service", WEBHOOK);
    assert_eq!(items_of_kind(&items, "Service").len(), 1, "no Service for the controller");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}])
    );
    assert_eq!(named(&items, "PodDisruptionBudget", WEBHOOK)["spec"]["minAvailable"], 1);
    assert_eq!(named(&items, "PodDisruptionBudget", CONTROLLER)["spec"]["minAvailable"], 1);

    // NetworkPolicies: the admission server takes 8443 only; the controller nothing (its
    // health port only from networkPolicy.healthIngressFrom, empty by default); both go out
    // only to the API server ports.
    let api_server = json!([{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]);
    let np = &named(&items, "NetworkPolicy", WEBHOOK)["spec"];
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["ingress"], json!([{"ports": [{"port": 8443, "protocol": "TCP"}]}]));
    assert_eq!(np["egress"], api_server);
    let np = &named(&items, "NetworkPolicy", CONTROLLER)["spec"];
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    // `ingress: []` with policyType Ingress: nothing in (the API server drops the empty list).
    assert!(np["ingress"].as_array().is_none_or(|i| i.is_empty()), "controller ingress: {np}");
    assert_eq!(np["egress"], api_server);

    // No selector of one Deployment's objects matches the other's pods: the admission Service
    // never routes to a controller, and neither Deployment's PDB, NetworkPolicy,
    // anti-affinity or spread counts the other's pods.
    let pod_labels = |deploy: &Value| deploy["spec"]["template"]["metadata"]["labels"].clone();
    for (own, other) in [(admission, controller), (controller, admission)] {
        let name = own["metadata"]["name"].as_str().unwrap_or("?");
        let spec = &own["spec"]["template"]["spec"];
        let mut selectors = vec![
            ("Deployment", own["spec"]["selector"]["matchLabels"].clone()),
            (
                "PodDisruptionBudget",
                named(&items, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"].clone(),
            ),
            ("NetworkPolicy", named(&items, "NetworkPolicy", name)["spec"]["podSelector"]["matchLabels"].clone()),
            (
                "anti-affinity",
                spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
                    ["podAffinityTerm"]["labelSelector"]["matchLabels"]
                    .clone(),
            ),
        ];
        for c in spec["topologySpreadConstraints"].as_array().into_iter().flatten() {
            selectors.push(("spread", c["labelSelector"]["matchLabels"].clone()));
        }
        if name == WEBHOOK {
            selectors.push(("Service", service["spec"]["selector"].clone()));
        }
        for (what, selector) in selectors {
            assert!(selects(&selector, &pod_labels(own)), "{name}: {what} {selector} misses its own pods");
            assert!(!selects(&selector, &pod_labels(other)), "{name}: {what} {selector} selects the other's pods");
        }
    }

    // RBAC: enumerated, no wildcards; cluster-scoped write on the webhook config by name only;
    // Secrets only in the release namespace.
    for role in items_of_kind(&items, "ClusterRole").into_iter().chain(items_of_kind(&items, "Role")) {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for key in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(!rule[key].as_array().into_iter().flatten().any(|x| x == "*"), "wildcard in {rule}");
            }
            let verbs = rule["verbs"].as_array().cloned().unwrap_or_default();
            assert!(!verbs.iter().any(|v| v == "escalate" || v == "bind" || v == "impersonate"), "{rule}");
            if rule["resources"].as_array().is_some_and(|r| r.iter().any(|r| r == "mutatingwebhookconfigurations")) {
                assert_eq!(rule["resourceNames"], json!([WEBHOOK_CONFIG]));
            }
            if role["kind"] == "ClusterRole" {
                assert!(!rule["resources"].as_array().into_iter().flatten().any(|r| r == "secrets"), "{rule}");
            }
        }
    }

    // Exactly the rules the webhook's code states for each account (webhook/src/reconcile/rbac.rs),
    // each bound to its own account only.
    assert_eq!(
        rules(&items, "ClusterRole", WEBHOOK),
        expected_rules(rbac::admission_cluster_role_rules(WEBHOOK_CONFIG))
    );
    assert_eq!(rules(&items, "Role", WEBHOOK), expected_rules(rbac::admission_namespace_role_rules(TLS_SECRET)));
    assert_eq!(
        rules(&items, "ClusterRole", CONTROLLER),
        expected_rules(rbac::controller_cluster_role_rules(WEBHOOK_CONFIG))
    );
    assert_eq!(rules(&items, "Role", CONTROLLER), expected_rules(rbac::controller_namespace_role_rules(TLS_SECRET)));
    for (kind, name, account) in [
        ("ClusterRoleBinding", WEBHOOK, WEBHOOK),
        ("RoleBinding", WEBHOOK, WEBHOOK),
        ("ClusterRoleBinding", CONTROLLER, CONTROLLER),
        ("RoleBinding", CONTROLLER, CONTROLLER),
    ] {
        let binding = named(&items, kind, name);
        assert_eq!(binding["roleRef"]["name"], name, "{kind} {name}");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": account, "namespace": NS}]),
            "{kind} {name}"
        );
    }

    // The policies that let only the release's writer write name the controller's account;
    // none names the admission server's, which writes nothing.
    let controller_user = format!("system:serviceaccount:{NS}:{CONTROLLER}");
    let webhook_user = format!("system:serviceaccount:{NS}:{WEBHOOK}");
    for (policy, condition) in [
        ("webhook-configuration", "by-the-ldap-elector-webhook"),
        ("webhook-secret", "by-the-ldap-elector-webhook"),
        ("leader-service", "not-the-ldap-elector-webhook"),
    ] {
        let policy = named(&items, "ValidatingAdmissionPolicy", &format!("{RELEASE}-{policy}"));
        let conditions = policy["spec"]["matchConditions"].as_array().cloned().unwrap_or_default();
        let expression = conditions.iter().find(|c| c["name"] == condition).map(|c| &c["expression"]);
        assert!(
            expression.and_then(Value::as_str).is_some_and(|e| e.contains(&format!("'{controller_user}'"))),
            "{}: {condition} does not name {controller_user}: {conditions:?}",
            policy["metadata"]["name"]
        );
    }
    for policy in items_of_kind(&items, "ValidatingAdmissionPolicy") {
        assert!(!policy.to_string().contains(&webhook_user), "{} names {webhook_user}", policy["metadata"]["name"]);
    }

    // app.kubernetes.io/* labels on every object (BSI APP.4.4.A8).
    for o in &items {
        let labels = &o["metadata"]["labels"];
        for key in ["name", "instance", "version", "managed-by", "component", "part-of"] {
            assert!(
                labels[format!("app.kubernetes.io/{key}")].is_string(),
                "{} lacks app.kubernetes.io/{key}",
                o["kind"]
            );
        }
        if o["metadata"]["namespace"].is_string() {
            assert_eq!(o["metadata"]["namespace"], NS, "{} outside the release namespace", o["kind"]);
        }
    }

    // The webhook configuration.
    let mwc = one(&items, "MutatingWebhookConfiguration");
    assert_eq!(mwc["metadata"]["name"], WEBHOOK_CONFIG);
    let hooks = mwc["webhooks"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = hooks.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, ["pods.ldap-elector.dev", "services.ldap-elector.dev"]);
    let pods = &hooks[0];
    assert_eq!(pods["failurePolicy"], "Fail");
    assert_eq!(pods["timeoutSeconds"], 5);
    assert_eq!(pods["sideEffects"], "None");
    // Never: the webhook refuses every pod arriving with the injection marker, its own output too.
    assert_eq!(pods["reinvocationPolicy"], "Never");
    assert_eq!(pods["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(pods["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(pods["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(
        pods["clientConfig"]["service"],
        json!({"name": WEBHOOK, "namespace": NS, "path": "/mutate", "port": 443})
    );
    assert!(pods["clientConfig"]["caBundle"].is_null(), "the webhook publishes caBundle itself");
    assert_eq!(
        pods["namespaceSelector"]["matchExpressions"],
        json!([{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NS]}])
    );
    // By default only namespaces an admin opted in (issue 17, item 5).
    assert_eq!(pods["namespaceSelector"]["matchLabels"], json!({contract::LABEL_NAMESPACE_ENABLED: "true"}));
    assert_eq!(
        pods["matchConditions"][0]["expression"],
        "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, r.kind == 'StatefulSet')"
    );
    let services = &hooks[1];
    assert_eq!(services["failurePolicy"], "Ignore");
    assert_eq!(services["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(services["rules"][0]["resources"], json!(["services"]));
    assert_eq!(services["namespaceSelector"], pods["namespaceSelector"]);

    // The admission policies (labelProtection on, certMode=secret), each bound.
    let names = |kind: &str| -> Vec<String> {
        let mut names: Vec<String> = items_of_kind(&items, kind)
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    let expected: Vec<String> = [
        "leader-service",
        "lease-overrides",
        "opt-in",
        "pod-bound-token",
        "pod-marker",
        "pod-role",
        "pod-spec",
        "webhook-configuration",
        "webhook-secret",
    ]
    .iter()
    .map(|p| format!("{RELEASE}-{p}"))
    .collect();
    assert_eq!(names("ValidatingAdmissionPolicy"), expected);
    assert_eq!(names("ValidatingAdmissionPolicyBinding"), expected);

    // reconcile=false (certMode=secret): the controller keeps only its certificate rights,
    // and no account is exempt from the leader-Service policy.
    let rendered = run(bed.helm().args(template_args(&chart, &["--set", "reconcile=false"])), None)?.stdout;
    let applied = run(bed.kubectl().args(["apply", "--dry-run=server", "-o", "json", "-f", "-"]), Some(&rendered))?;
    let list: Value = serde_json::from_slice(&applied.stdout)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let certificate_rules: Vec<_> = rbac::controller_cluster_role_rules(WEBHOOK_CONFIG)
        .into_iter()
        .filter(|r| r.resources.iter().flatten().any(|r| r == "mutatingwebhookconfigurations"))
        .collect();
    assert_eq!(rules(&items, "ClusterRole", CONTROLLER), expected_rules(certificate_rules));
    assert_eq!(
        rules(&items, "ClusterRole", WEBHOOK),
        expected_rules(rbac::admission_cluster_role_rules(WEBHOOK_CONFIG))
    );
    assert_eq!(rules(&items, "Role", CONTROLLER), expected_rules(rbac::controller_namespace_role_rules(TLS_SECRET)));
    let controller = named(&items, "Deployment", CONTROLLER);
    assert!(controller.to_string().contains(r#"{"name":"WEBHOOK_RECONCILE","value":"false"}"#), "{controller}");
    let leader_service = named(&items, "ValidatingAdmissionPolicy", &format!("{RELEASE}-leader-service"));
    assert!(!leader_service.to_string().contains("system:serviceaccount:"), "{leader_service}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_chart_runs_restricted_grants_elector_rbac_without_escalate_and_keeps_ca_bundle_on_upgrade(
) -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let client = bed.admin_client()?;
    fixtures::namespace(&client, NS, Some("restricted")).await?;
    let chart = chart().display().to_string();
    // Against the real server: the kubeVersion constraint is checked against its /version.
    let installed = run(bed.helm().args(["install", RELEASE, &chart, "--namespace", NS]), None)?;
    let notes = String::from_utf8_lossy(&installed.stdout);
    assert!(notes.contains("ldap-elector.dev/inject=true"), "NOTES tell how to opt in: {notes}");

    // The ReplicaSet controller creates the pods; Pod Security `restricted` admits them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let admitted = wait_for("2 webhook and 2 controller pods admitted in the restricted namespace", T, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| e.to_string())?;
        let of = |component: &str| {
            let component = Some(component.to_string());
            list.items.iter().filter(|p| p.labels().get("app.kubernetes.io/component") == component.as_ref()).count()
        };
        if of("webhook") == 2 && of("controller") == 2 {
            return Ok(list.items);
        }
        let rs = sets.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let conditions: Vec<_> = rs.items.iter().filter_map(|r| r.status.as_ref()?.conditions.clone()).collect();
        Err(format!("{} pods; ReplicaSet conditions: {conditions:?}", list.items.len()))
    })
    .await?;
    for pod in &admitted {
        let spec = serde_json::to_value(pod.spec.as_ref().expect("spec"))?;
        let violations = restricted_violations(&spec);
        assert!(violations.is_empty(), "admitted pod: {violations:#?}");
        // No implicit token volume came back (ServiceAccount admission plugin).
        let volumes: Vec<&str> =
            spec["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
        assert!(!volumes.iter().any(|v| v.starts_with("kube-api-access-")), "default token volume: {volumes:?}");
        let mounts = &spec["containers"][0]["volumeMounts"];
        let token_mounts: Vec<&Value> =
            mounts.as_array().into_iter().flatten().filter(|m| m["mountPath"] == TOKEN_MOUNT).collect();
        assert_eq!(token_mounts.len(), 1, "{mounts}");
        assert_eq!(token_mounts[0]["name"], "api-token");
    }

    // The controller's identity may create the elector's per-StatefulSet RBAC and Lease in a
    // tenant namespace without `escalate`/`bind`, because it holds those rights itself.
    fixtures::namespace(&client, "tenant", None).await?;
    let controller = bed.service_account_client(NS, CONTROLLER).await?;
    let sa_name = contract::identity_name("ldap");
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa_name}}))?;
    Api::<ServiceAccount>::namespaced(controller.clone(), "tenant").create(&pp, &sa).await?;
    let rules = contract::elector_role_rules("ldap", 2);
    fixtures::service_account_role(&controller, "tenant", &sa_name, "tenant", rules).await?;
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": contract::lease_name("ldap")}, "spec": {}}))?;
    Api::<Lease>::namespaced(controller.clone(), "tenant").create(&pp, &lease).await?;

    // ... and nothing beyond: no Secrets outside its own, no other webhook config, no ClusterRoles.
    forbidden(
        Api::<Secret>::namespaced(controller.clone(), "tenant").list(&ListParams::default()).await,
        "list tenant Secrets",
    );
    forbidden(Api::<Secret>::namespaced(controller.clone(), NS).get("other").await, "get another Secret");
    forbidden(
        Api::<MutatingWebhookConfiguration>::all(controller.clone()).get("someone-elses").await,
        "get another webhook configuration",
    );
    forbidden(
        Api::<ClusterRole>::all(controller.clone())
            .create(&pp, &serde_json::from_value(json!({"metadata": {"name": "x"}}))?)
            .await,
        "create a ClusterRole",
    );
    // Its own TLS Secret: allowed (not found yet, as no controller ran).
    match Api::<Secret>::namespaced(controller.clone(), NS).get(TLS_SECRET).await {
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        other => panic!("controller, own TLS Secret: expected 404, got {:?}", other.map(|_| ())),
    }

    // The admission server's identity, which every pod creation reaches, only reads: its
    // certificate's Secret and its webhook configuration, and the objects admission needs.
    let admission = bed.service_account_client(NS, WEBHOOK).await?;
    match Api::<Secret>::namespaced(admission.clone(), NS).get(TLS_SECRET).await {
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        other => panic!("admission, own TLS Secret: expected 404, got {:?}", other.map(|_| ())),
    }
    let mut seen = Api::<MutatingWebhookConfiguration>::all(admission.clone()).get(WEBHOOK_CONFIG).await?;
    Api::<StatefulSet>::namespaced(admission.clone(), "tenant").list(&ListParams::default()).await?;
    Api::<Service>::namespaced(admission.clone(), "tenant").list(&ListParams::default()).await?;
    let tls: Secret = serde_json::from_value(json!({"metadata": {"name": TLS_SECRET}, "type": "kubernetes.io/tls"}))?;
    forbidden(Api::<Secret>::namespaced(admission.clone(), NS).create(&pp, &tls).await, "admission: create its Secret");
    for hook in seen.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ByteString(b"planted".to_vec()));
    }
    forbidden(
        Api::<MutatingWebhookConfiguration>::all(admission.clone()).replace(WEBHOOK_CONFIG, &pp, &seen).await,
        "admission: update its webhook configuration",
    );
    let other_sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "other"}}))?;
    forbidden(
        Api::<ServiceAccount>::namespaced(admission.clone(), "tenant").create(&pp, &other_sa).await,
        "admission: create a ServiceAccount",
    );
    forbidden(
        Api::<Lease>::namespaced(admission.clone(), "tenant").get(&contract::lease_name("ldap")).await,
        "admission: read a Lease",
    );
    forbidden(
        Api::<Pod>::namespaced(admission.clone(), "tenant").list(&ListParams::default()).await,
        "admission: list pods",
    );
    let configs: Api<MutatingWebhookConfiguration> = Api::all(controller.clone());
    let mut config = configs.get(WEBHOOK_CONFIG).await?;

    // The controller publishes the caBundle (as certs::publish_ca_bundle does) ...
    let ca = ByteString(bed.ca_pem.clone().into_bytes());
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ca.clone());
    }
    configs.replace(WEBHOOK_CONFIG, &pp, &config).await?;

    // ... and a Helm upgrade that changes the configuration keeps it, via `lookup`.
    run(bed.helm().args(["upgrade", RELEASE, &chart, "--namespace", NS, "--set", "timeoutSeconds=4"]), None)?;
    let after = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(WEBHOOK_CONFIG).await?;
    for hook in after.webhooks.iter().flatten() {
        assert_eq!(hook.timeout_seconds, Some(4), "{}: upgrade applied", hook.name);
        assert_eq!(hook.client_config.ca_bundle.as_ref(), Some(&ca), "{}: caBundle kept", hook.name);
    }
    let manifest = run(bed.helm().args(["get", "manifest", RELEASE, "--namespace", NS]), None)?;
    assert!(String::from_utf8_lossy(&manifest.stdout).contains("caBundle: "), "rendered from the live object");

    // Rollback (BSI APP.4.4.A2) to revision 1's values. Revision 1 was rendered before any
    // caBundle existed, so the rollback drops it: the running webhook publishes it again
    // (docs: chart README, Rollback). Rolling back to a revision rendered with it keeps it.
    run(bed.helm().args(["rollback", RELEASE, "1", "--namespace", NS, "--wait=false"]), None)?;
    let rolled_back = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(WEBHOOK_CONFIG).await?;
    for hook in rolled_back.webhooks.iter().flatten() {
        assert_ne!(hook.timeout_seconds, Some(4), "{}: rollback restores revision 1", hook.name);
    }
    run(bed.helm().args(["rollback", RELEASE, "2", "--namespace", NS, "--wait=false"]), None)?;
    let rolled_forward = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(WEBHOOK_CONFIG).await?;
    for hook in rolled_forward.webhooks.iter().flatten() {
        assert_eq!(hook.timeout_seconds, Some(4), "{}: rollback to revision 2", hook.name);
        assert_eq!(hook.client_config.ca_bundle.as_ref(), Some(&ca), "{}: caBundle of revision 2", hook.name);
    }

    // Uninstall removes every cluster-scoped object of the release: nothing keeps calling a
    // webhook that is gone, and no ClusterRole or policy is left behind.
    run(bed.helm().args(["uninstall", RELEASE, "--namespace", NS, "--wait"]), None)?;
    let leftovers = run(
        bed.kubectl().args([
            "get",
            "mutatingwebhookconfigurations,validatingadmissionpolicies,validatingadmissionpolicybindings,clusterroles,clusterrolebindings",
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "name",
        ]),
        None,
    )?;
    let leftovers = String::from_utf8_lossy(&leftovers.stdout).trim().to_string();
    assert!(leftovers.is_empty(), "left after helm uninstall: {leftovers}");
    Ok(())
}

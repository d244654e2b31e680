//! The webhook run in-process against a bed as the chart runs it: the admission server and
//! the controller apart, each as its own ServiceAccount holding exactly the rules of
//! `reconcile::{admission,controller}_cluster_role_rules` (a missing rule fails the tests);
//! the admission server serves a certificate for 127.0.0.1 and is registered with
//! `clientConfig.url`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use ldap_elector_webhook::args::Args;
use ldap_elector_webhook::reconcile::{
    admission_cluster_role_rules, admission_namespace_role_rules, controller_cluster_role_rules,
    controller_namespace_role_rules,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bed::free_port;
use crate::bed::process::Child;
use crate::workloads::fixtures;
use crate::workloads::policies::Scope;
use crate::{wait_for, Bed};

/// The process bed's usual stage for injection tests: the test kubelet running the elector
/// binary as the sidecar (probes off; JSON logs), and the webhook started and registered for
/// `namespace` (created with Pod Security `restricted`) with failurePolicy `Fail`.
pub async fn injecting(bed: &Bed, namespace: &str) -> anyhow::Result<(crate::Kubelet, Client, Webhook)> {
    let kubelet = crate::Kubelet::start(bed, "bed-node").await?;
    kubelet.add_runner(crate::bed::kubelet::Runner {
        container: ldap_elector_contract::SIDECAR_CONTAINER.into(),
        program: crate::workloads::build::elector_binary(false),
        env: vec![("ELECTOR_PROBE_ADDR".into(), "off".into())],
    });
    let admin = bed.admin_client()?;
    let webhook = Webhook::start(bed).await?;
    fixtures::namespace(&admin, namespace, Some("restricted")).await?;
    webhook.register(bed, namespace, "Fail").await?;
    Ok((kubelet, admin, webhook))
}

pub const WEBHOOK_NS: &str = "ldap-elector-system";
/// The admission server's account (reads only).
pub const WEBHOOK_SA: &str = "ldap-elector-webhook";
/// The controller's account (reconciler and certificate: every write).
pub const CONTROLLER_SA: &str = "ldap-elector-controller";
pub const WEBHOOK_CONFIG: &str = "ldap-elector";
pub const SIDECAR_IMAGE: &str = "registry.invalid/ldap-elector:e2e";

/// Clients acting as the webhook's two ServiceAccounts.
#[derive(Clone)]
pub struct Identities {
    pub admission: Client,
    /// Also what `--component=all` needs: its rules include the admission server's.
    pub controller: Client,
}

/// Namespace, the two ServiceAccounts and their ClusterRole(Binding)s, exactly as the chart
/// creates them (certMode=secret rules; files mode needs a subset).
pub async fn webhook_identities(bed: &Bed) -> anyhow::Result<Identities> {
    let admin = bed.admin_client()?;
    fixtures::namespace(&admin, WEBHOOK_NS, None).await?;
    Ok(Identities {
        admission: account(bed, &admin, WEBHOOK_SA, admission_cluster_role_rules(WEBHOOK_CONFIG)).await?,
        controller: account(bed, &admin, CONTROLLER_SA, controller_cluster_role_rules(WEBHOOK_CONFIG)).await?,
    })
}

/// The ServiceAccount `name` in [`WEBHOOK_NS`] bound to a ClusterRole `name` of `rules`.
async fn account(bed: &Bed, admin: &Client, name: &str, rules: Vec<PolicyRule>) -> anyhow::Result<Client> {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), WEBHOOK_NS).create(&PostParams::default(), &sa).await?;
    let role = ClusterRole {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        rules: Some(rules),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &role).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": WEBHOOK_NS}],
    }))?;
    Api::<ClusterRoleBinding>::all(admin.clone()).create(&PostParams::default(), &binding).await?;
    bed.service_account_client(WEBHOOK_NS, name).await
}

/// The Roles of both accounts for the serving certificate's Secret `tls_secret`
/// (certMode=secret), exactly as the chart creates them.
pub async fn grant_secret_roles(admin: &Client, tls_secret: &str) -> anyhow::Result<()> {
    use crate::workloads::fixtures::service_account_role;
    service_account_role(admin, WEBHOOK_NS, WEBHOOK_SA, WEBHOOK_NS, admission_namespace_role_rules(tls_secret)).await?;
    service_account_role(admin, WEBHOOK_NS, CONTROLLER_SA, WEBHOOK_NS, controller_namespace_role_rules(tls_secret))
        .await
}

/// The webhook configuration as the chart installs it before the webhook published its CA
/// (no caBundle, calling the in-cluster Service); it matches no namespace.
pub fn unpublished_configuration() -> anyhow::Result<MutatingWebhookConfiguration> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [{
            "name": "pods.ldap-elector.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 5,
            "clientConfig": {"service": {"namespace": WEBHOOK_NS, "name": WEBHOOK_SA, "path": "/mutate"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"ldap-elector.dev/never": "true"}},
        }],
    }))?)
}

/// A serving certificate for `127.0.0.1` and its CA, written to files in `dir`: (cert, key,
/// CA PEM).
fn serving_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let validity = Duration::from_secs(24 * 3600);
    let ca = ldap_elector_certs::generate_ca("webhook-e2e-ca", validity)?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let serving = ldap_elector_certs::issue_serving(&ca, &[], &[loopback], validity)?;
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &serving.cert_pem)?;
    std::fs::write(&key, &serving.key_pem)?;
    Ok((cert, key, ca.cert_pem()))
}

/// The flags of a webhook on loopback `port` (health: `health_port`) serving `cert`/`key`.
fn files_mode_args(port: u16, health_port: u16, cert: &Path, key: &Path) -> [String; 6] {
    [
        format!("--listen=127.0.0.1:{port}"),
        format!("--health-listen=127.0.0.1:{health_port}"),
        "--cert-mode=files".into(),
        format!("--cert-file={}", cert.display()),
        format!("--key-file={}", key.display()),
        format!("--sidecar-image={SIDECAR_IMAGE}"),
    ]
}

/// `GET path` on a plain-HTTP port (`Connection: close`); the whole response.
async fn http_response(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
    Ok(response)
}

/// `GET path` on a plain-HTTP port; the status code.
pub async fn http_status(port: u16, path: &str) -> Result<u16, String> {
    let response = http_response(port, path).await?;
    response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or(response)
}

/// Whether `/readyz` on the plain-HTTP `health_port` answers 200; why not otherwise.
pub async fn ready(health_port: u16) -> Result<(), String> {
    match http_status(health_port, "/readyz").await? {
        200 => Ok(()),
        status => Err(format!("status {status}")),
    }
}

/// Waits up to `timeout` until `what` is [`ready`] on `health_port`.
pub async fn wait_ready(what: &str, health_port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_for(&format!("{what} /readyz"), timeout, || ready(health_port)).await
}

/// `GET path` on a plain-HTTP port; the body of a 200 response.
pub async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let response = http_response(port, path).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(response),
    }
}

/// The webhook configuration as the chart registers it, calling `url` (trusting `ca_pem`)
/// for `namespace`: pod CREATE of StatefulSet pods with `failure_policy`, and Service
/// CREATE/UPDATE with `Ignore`.
pub fn configuration(
    url: &str,
    ca_pem: &str,
    namespace: &str,
    failure_policy: &str,
) -> anyhow::Result<MutatingWebhookConfiguration> {
    let client_config = json!({
        "url": url,
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
    });
    let namespace_selector = json!({"matchLabels": {"kubernetes.io/metadata.name": namespace}});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [{
            "name": "pods.ldap-elector.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure_policy,
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 5,
            "clientConfig": client_config,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": namespace_selector,
            "matchConditions": [{"name": "statefulset-pods",
                "expression": "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, r.kind == 'StatefulSet')"}],
        }, {
            "name": "services.ldap-elector.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 5,
            "clientConfig": client_config,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["services"], "scope": "Namespaced"}],
            "namespaceSelector": namespace_selector,
        }],
    }))?)
}

/// A running in-process webhook (files mode): its admission server and, unless started with
/// `--reconcile=false`, its controller, each as its own account.
pub struct Webhook {
    pub port: u16,
    /// The admission server's health and metrics.
    pub health_port: u16,
    /// The controller's health and metrics (the reconciler's gauges); `None` without one.
    pub controller_health_port: Option<u16>,
    pub ca_pem: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ldap_elector_webhook::app::AppError>>>,
}

impl Webhook {
    /// Starts the webhook as its own ServiceAccounts and waits until `/readyz`.
    pub async fn start(bed: &Bed) -> anyhow::Result<Webhook> {
        Self::start_with(bed, &[]).await
    }

    /// [`Webhook::start`] with extra command-line flags for both components (e.g.
    /// `--reconcile=false`: no controller).
    pub async fn start_with(bed: &Bed, flags: &[&str]) -> anyhow::Result<Webhook> {
        Self::start_as(bed, &webhook_identities(bed).await?, flags).await
    }

    /// Another replica: [`Webhook::start_with`] as `identities` (from [`webhook_identities`]).
    pub async fn start_as(bed: &Bed, identities: &Identities, flags: &[&str]) -> anyhow::Result<Webhook> {
        let (port, health_port) = (free_port()?, free_port()?);
        // Files of its own: a replica polls its files and would reload another's.
        let (cert, key, ca_pem) = serving_files(&bed.dir.join(format!("webhook-{port}")))?;
        let mut admission = vec!["--component=admission".to_string()];
        admission.extend(files_mode_args(port, health_port, &cert, &key));
        let shutdown = CancellationToken::new();
        let mut tasks = vec![start_component(&identities.admission, admission, flags, health_port, &shutdown).await?];
        let controller_health_port = match flags.contains(&"--reconcile=false") {
            true => None,
            false => {
                let health = free_port()?;
                let controller = vec![
                    "--component=controller".to_string(),
                    format!("--health-listen=127.0.0.1:{health}"),
                    "--cert-mode=files".into(),
                    format!("--sidecar-image={SIDECAR_IMAGE}"),
                ];
                tasks.push(start_component(&identities.controller, controller, flags, health, &shutdown).await?);
                Some(health)
            }
        };
        Ok(Webhook { port, health_port, controller_health_port, ca_pem, shutdown, tasks })
    }

    /// Registers the webhook as the chart does (see [`configuration`]), for `namespace`.
    pub async fn register(&self, bed: &Bed, namespace: &str, failure_policy: &str) -> anyhow::Result<()> {
        let url = format!("https://127.0.0.1:{}/mutate", self.port);
        replace_configuration(bed, configuration(&url, &self.ca_pem, namespace, failure_policy)?).await
    }

    /// [`Webhook::register`] with the pod webhook's scope (`namespaceSelector`,
    /// `objectSelector`) as the chart renders it (`policies::pod_webhook_scope`).
    pub async fn register_scoped(&self, bed: &Bed, failure_policy: &str, scope: Scope) -> anyhow::Result<()> {
        let url = format!("https://127.0.0.1:{}/mutate", self.port);
        let mut mwc = configuration(&url, &self.ca_pem, "", failure_policy)?;
        // As in the chart: both webhooks select the same namespaces, the pod webhook also pods.
        for webhook in mwc.webhooks.iter_mut().flatten() {
            webhook.namespace_selector = Some(serde_json::from_value(scope.namespaces.clone())?);
        }
        if let Some(pods) = mwc.webhooks.as_mut().and_then(|w| w.first_mut()) {
            pods.object_selector = Some(serde_json::from_value(scope.objects)?);
        }
        replace_configuration(bed, mwc).await
    }

    /// The controller's health port; an error when it was started without one.
    pub fn controller_port(&self) -> anyhow::Result<u16> {
        self.controller_health_port.ok_or_else(|| anyhow::anyhow!("the webhook was started without its controller"))
    }

    /// Stops the webhook gracefully and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }
}

/// Runs one component (`args`, then `flags`) in-process as `client` and waits until its
/// `/readyz` on `health_port` answers 200.
async fn start_component(
    client: &Client,
    args: Vec<String>,
    flags: &[&str],
    health_port: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), ldap_elector_webhook::app::AppError>>> {
    let args =
        std::iter::once("ldap-elector-webhook".to_string()).chain(args).chain(flags.iter().map(|f| f.to_string()));
    let settings = Args::try_parse_from(args)?.into_settings().map_err(anyhow::Error::msg)?;
    let component = settings.component;
    let task = tokio::spawn(ldap_elector_webhook::app::run(settings, client.clone(), shutdown.clone(), Duration::ZERO));
    wait_ready(&format!("webhook {component:?}"), health_port, Duration::from_secs(60)).await?;
    Ok(task)
}

/// The debug `ldap-elector-webhook` binary as a process of its own (files mode, admission and
/// reconciler in one: `--component=all`), acting as the controller's ServiceAccount (whose
/// rules include the admission server's): for what an in-process webhook cannot show, such
/// as its memory.
pub struct WebhookProcess {
    pub port: u16,
    pub health_port: u16,
    pub ca_pem: String,
    child: Child,
}

/// A process's memory from `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// The most it was ever resident (`VmHWM`): what a memory limit would have met.
    pub peak_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).ok_or_else(|| anyhow::anyhow!("no {name}"))?;
            Ok(line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("empty {name}"))?.parse()?)
        };
        Ok(Memory { rss_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
    }
}

impl WebhookProcess {
    /// The webhook's identities ([`webhook_identities`]) and a kubeconfig acting as the
    /// controller, in `<bed>/webhook-process`; once per bed, for every process started with it.
    pub async fn kubeconfig(bed: &Bed) -> anyhow::Result<PathBuf> {
        webhook_identities(bed).await?;
        let dir = bed.dir.join("webhook-process");
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, bed.service_account_token(WEBHOOK_NS, CONTROLLER_SA, None).await?)?;
        let kubeconfig = dir.join("webhook.kubeconfig");
        std::fs::write(&kubeconfig, bed.kubeconfig_for_token_file(&token_file))?;
        Ok(kubeconfig)
    }

    /// Starts the webhook as `name` (its log: `<bed>/<name>.log`) and waits until `/readyz`.
    pub async fn start(bed: &Bed, kubeconfig: &Path, name: &str) -> anyhow::Result<WebhookProcess> {
        let binary = crate::workloads::build::webhook_debug_binary()?;
        let (cert, key, ca_pem) = serving_files(&bed.dir.join(name))?;
        let (port, health_port) = (free_port()?, free_port()?);
        let mut cmd = std::process::Command::new(binary);
        cmd.args(files_mode_args(port, health_port, &cert, &key)).env("KUBECONFIG", kubeconfig);
        let log = bed.dir.join(format!("{name}.log"));
        let child = Child::spawn(name, cmd, &log)?;
        wait_ready("webhook process", health_port, Duration::from_secs(60))
            .await
            .map_err(|e| e.context(format!("see {}", log.display())))?;
        Ok(WebhookProcess { port, health_port, ca_pem, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its memory now; an error once it has exited (e.g. OOM-killed).
    pub fn memory(&self) -> anyhow::Result<Memory> {
        anyhow::ensure!(self.child.is_running(), "webhook process exited: {:?}", self.child.exit_status());
        Memory::of(self.pid())
    }

    /// Registers it as the chart does (see [`configuration`]), for `namespace`.
    pub async fn register(&self, bed: &Bed, namespace: &str, failure_policy: &str) -> anyhow::Result<()> {
        let url = format!("https://127.0.0.1:{}/mutate", self.port);
        replace_configuration(bed, configuration(&url, &self.ca_pem, namespace, failure_policy)?).await
    }
}

/// Registers `mwc` as [`WEBHOOK_CONFIG`], replacing any earlier registration.
async fn replace_configuration(bed: &Bed, mwc: MutatingWebhookConfiguration) -> anyhow::Result<()> {
    let api = Api::<MutatingWebhookConfiguration>::all(bed.admin_client()?);
    let _ = api.delete(WEBHOOK_CONFIG, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &mwc).await?;
    Ok(())
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

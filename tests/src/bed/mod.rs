//! A real control plane on loopback: etcd, kube-apiserver (RBAC, PodSecurity, admission
//! webhooks on) and kube-controller-manager, in a fresh temporary directory on free
//! ports. Several beds can run at once. Dropping the `Bed` stops everything; with
//! `LDAP_ELECTOR_KEEP_BED=1` the directory (logs, kubeconfig) is kept for inspection;
//! `LDAP_ELECTOR_APISERVER_V` and `LDAP_ELECTOR_KCM_V` raise the log level (klog `--v`,
//! default 1) of kube-apiserver and kube-controller-manager, e.g. `4` shows every
//! informer's watch and relist.
//!
//! Its parts: the bed's key material (`pki`), child processes that die with the test
//! (`process`), a test kubelet (`kubelet`), an emulated pod network (`pod_network`), a
//! faulty-network proxy (`proxy`) and a kube-proxy stand-in (`forwarder`).

pub mod forwarder;
pub mod kubelet;
pub mod pki;
pub mod pod_network;
pub mod process;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use kube::Client;

use crate::bed::pki::BedPki;
use crate::bed::process::Child;
use crate::wait::wait_for;

/// The admission plugins the bed enables on top of the defaults; the ones our product
/// depends on are named explicitly so a changed default cannot silently drop them.
const ADMISSION_PLUGINS: &str = "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,\
MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota";
/// Controllers the product relies on (plus namespace clean-up, the CA publisher that
/// fills the `kube-root-ca.crt` ConfigMap every projected token volume refers to, and the
/// ClusterRole aggregation that fills the built-in `admin`/`edit`/`view` roles a tenant is
/// bound to: without it they are empty and every attack would fail for the wrong reason).
const CONTROLLERS: &str = "statefulset-controller,endpointslice-controller,endpoints-controller,\
serviceaccount-controller,serviceaccount-token-controller,garbage-collector-controller,namespace-controller,\
root-ca-certificate-publisher-controller,replicaset-controller,deployment-controller,disruption-controller,\
clusterrole-aggregation-controller";
/// The one non-admin user of every bed (token authentication, no groups beyond
/// `system:authenticated`): tests bind it to what a tenant holds (see [`Bed::tenant_client`]).
pub const TENANT_USER: &str = "tenant";
const SERVICE_CIDR: &str = "198.19.0.0/16";
/// Log levels of the control plane (module docs).
const APISERVER_V_ENV: &str = "LDAP_ELECTOR_APISERVER_V";
const KCM_V_ENV: &str = "LDAP_ELECTOR_KCM_V";
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Bed {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub api_url: String,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    admin_token: String,
    tenant_token: String,
    pub kubeconfig: PathBuf,
    apiserver_args: Vec<String>,
    etcd: Child,
    apiserver: std::sync::Mutex<Option<Child>>,
    controller_manager: Option<Child>,
    keep: bool,
    /// The emulated pod network, when started with `BedOptions::pod_network`.
    pub pod_network: Option<crate::bed::pod_network::PodNetwork>,
    /// The real node, when started with `BedOptions::real_node` (see [`crate::node`]).
    pub real_node: Option<crate::node::RealNode>,
}

/// The CA (in the bed's directory) of the API server's client certificate for admission
/// webhooks: what a webhook run with `--client-ca-file` trusts.
pub const WEBHOOK_CLIENT_CA: &str = "webhook-client-ca.crt";

/// The API server authenticates to admission webhooks with a client certificate (the webhook
/// admission plugins' `kubeConfigFile`, user `*`: every webhook), as a cluster admin would
/// configure it for a webhook that requires one (`--client-ca-file`); a webhook that asks
/// for none sees no difference.
fn write_webhook_client_config(dir: &Path) -> anyhow::Result<()> {
    let d = |p: &str| dir.join(p).display().to_string();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    client-certificate: {}\n    client-key: {}\n",
        d("webhook-client.crt"),
        d("webhook-client.key")
    );
    write_private(&dir.join("webhook-client.kubeconfig"), &kubeconfig)?;
    let plugin = |name: &str| {
        format!(
            "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    \
             kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            d("webhook-client.kubeconfig")
        )
    };
    let admission = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
        plugin("ValidatingAdmissionWebhook"),
        plugin("MutatingAdmissionWebhook")
    );
    write_private(&dir.join("admission.yaml"), &admission)
}

/// Optional features of a bed.
#[derive(Clone, Debug, Default)]
pub struct BedOptions {
    /// Write an audit log (`audit.log`, one JSON line per request, metadata level) so that
    /// benchmarks can count API requests per client.
    pub audit: bool,
    /// An emulated pod network (see [`crate::bed::pod_network`]): the API server reaches pods
    /// (webhooks behind a Service, the pods' proxy subresource) at their loopback stand-in
    /// addresses, and the test kubelet gives each pod its own. Off by default.
    pub pod_network: bool,
    /// A real node (containerd, kubelet, kube-proxy, kube-scheduler; see [`crate::node`]):
    /// one per machine, so such beds wait for each other. Off by default.
    pub real_node: bool,
}

impl Bed {
    /// Builds (or finds cached) binaries, starts the control plane and waits until the
    /// API server is ready and the controllers run.
    pub async fn start() -> anyhow::Result<Bed> {
        Bed::start_with(BedOptions::default()).await
    }

    pub async fn start_with(options: BedOptions) -> anyhow::Result<Bed> {
        let started = std::time::Instant::now();
        let bin = binaries()?;
        let dir = fresh_dir()?;
        let pki = BedPki::generate()?;
        for (name, body) in [
            ("ca.crt", &pki.ca_pem),
            ("apiserver.crt", &pki.serving_cert_pem),
            ("apiserver.key", &pki.serving_key_pem),
            ("sa.key", &pki.sa_key_pem),
            ("sa.pub", &pki.sa_pub_pem),
            (WEBHOOK_CLIENT_CA, &pki.webhook_client_ca_pem),
            ("webhook-client.crt", &pki.webhook_client_cert_pem),
            ("webhook-client.key", &pki.webhook_client_key_pem),
        ] {
            write_private(&dir.join(name), body)?;
        }
        let node = match options.real_node {
            true => Some(crate::node::Prepared::prepare(&dir).await?),
            false => None,
        };
        let admin_token = random_hex(24)?;
        let kcm_token = random_hex(24)?;
        let tenant_token = random_hex(24)?;
        write_private(
            &dir.join("tokens.csv"),
            &format!(
                "{admin_token},admin,admin-uid,system:masters\n\
                 {kcm_token},system:kube-controller-manager,kcm-uid,system:masters\n\
                 {tenant_token},{TENANT_USER},tenant-uid\n{}",
                node.as_ref().map(|n| n.token_lines()).unwrap_or_default()
            ),
        )?;

        write_webhook_client_config(&dir)?;
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let api_host = if node.is_some() { crate::node::config::NODE_IP.to_string() } else { "127.0.0.1".into() };
        let api_url = format!("https://{api_host}:{api_port}");
        let d = |p: &str| dir.join(p).display().to_string();

        let mut etcd_cmd = Command::new(bin.join("etcd"));
        etcd_cmd.args([
            "--name=bed",
            &format!("--data-dir={}", d("etcd")),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=bed=http://127.0.0.1:{etcd_peer}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        let etcd = Child::spawn("etcd", etcd_cmd, &dir.join("etcd.log"))?;

        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", d("apiserver-certs")),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            format!("--enable-admission-plugins={ADMISSION_PLUGINS}"),
            format!("--admission-control-config-file={}", d("admission.yaml")),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(), // as real clusters: Pod Security decides
            "--profiling=false".into(),
            verbosity(APISERVER_V_ENV),
        ];
        let mut apiserver_args = apiserver_args;
        if options.audit {
            let policy =
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n";
            write_private(&dir.join("audit-policy.yaml"), policy)?;
            apiserver_args.push(format!("--audit-policy-file={}", d("audit-policy.yaml")));
            apiserver_args.push(format!("--audit-log-path={}", d("audit.log")));
        }
        let pod_network = if options.pod_network {
            let network = crate::bed::pod_network::PodNetwork::start(&dir.join("pod-network.sock"))?;
            write_private(&dir.join("egress-selector.yaml"), &network.egress_config())?;
            apiserver_args.push(format!("--egress-selector-config-file={}", d("egress-selector.yaml")));
            apiserver_args.push("--enable-aggregator-routing=true".into());
            Some(network)
        } else {
            None
        };
        if let Some(node) = &node {
            node.apiserver_flags(&mut apiserver_args);
        }
        let apiserver = spawn_apiserver(&bin, &dir, &apiserver_args)?;

        let kcm_kubeconfig = dir.join("kcm.kubeconfig");
        write_private(&kcm_kubeconfig, &kubeconfig_yaml(&api_url, &pki.ca_pem, Token::Inline(&kcm_token)))?;
        let kubeconfig = dir.join("admin.kubeconfig");
        write_private(&kubeconfig, &kubeconfig_yaml(&api_url, &pki.ca_pem, Token::Inline(&admin_token)))?;

        let ca_der = pem_to_der(&pki.ca_pem)?;
        let bed = Bed {
            controller_manager: None,
            dir,
            bin,
            api_url,
            ca_pem: pki.ca_pem,
            ca_der,
            admin_token,
            tenant_token,
            kubeconfig,
            apiserver_args,
            etcd,
            apiserver: std::sync::Mutex::new(Some(apiserver)),
            keep: std::env::var("LDAP_ELECTOR_KEEP_BED").is_ok_and(|v| v == "1"),
            pod_network,
            real_node: None,
        };
        bed.wait_ready(Duration::from_secs(90)).await?;

        let mut kcm = Command::new(bed.bin.join("kube-controller-manager"));
        kcm.args([
            format!("--kubeconfig={}", kcm_kubeconfig.display()),
            format!("--controllers={}", node.as_ref().map_or(CONTROLLERS.to_string(), |n| n.controllers(CONTROLLERS))),
            format!("--service-account-private-key-file={}", bed.dir.join("sa.key").display()),
            format!("--root-ca-file={}", bed.dir.join("ca.crt").display()),
            "--use-service-account-credentials=false".into(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--concurrent-statefulset-syncs=2".into(),
            verbosity(KCM_V_ENV),
        ]);
        let mut bed = bed;
        bed.controller_manager =
            Some(Child::spawn("kube-controller-manager", kcm, &bed.dir.join("kube-controller-manager.log"))?);
        // The serviceaccount controller creating `default` proves the controllers run.
        let client = bed.admin_client()?;
        let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> = kube::Api::namespaced(client, "default");
        let kcm = bed.controller_manager.as_ref().map(|c| c.exited());
        wait_for("controller-manager creates the default ServiceAccount", Duration::from_secs(60), || {
            let sas = sas.clone();
            let kcm = kcm.clone();
            async move {
                if kcm.as_ref().is_some_and(|k| *k.borrow()) {
                    return Err(process_exited("kube-controller-manager"));
                }
                sas.get_opt("default").await.ok().flatten().map(|_| ()).ok_or_else(|| "not yet".to_string())
            }
        })
        .await
        .with_context(|| format!("see {}", bed.dir.join("kube-controller-manager.log").display()))?;
        if let Some(node) = node {
            bed.real_node = Some(node.start(&bed).await?);
        }
        tracing::info!(dir = %bed.dir.display(), api = %bed.api_url, secs = started.elapsed().as_secs_f64(), "test bed ready");
        Ok(bed)
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.admin_client()?;
        let exited = self.apiserver.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Child::exited);
        wait_for("kube-apiserver /readyz", timeout, || {
            let client = client.clone();
            let exited = exited.clone();
            async move {
                if exited.as_ref().is_some_and(|e| *e.borrow()) {
                    return Err(process_exited("kube-apiserver"));
                }
                let req = http::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
                client.request_text(req).await.map_err(|e| e.to_string())
            }
        })
        .await
        .with_context(|| format!("see {}", self.dir.join("kube-apiserver.log").display()))?;
        Ok(())
    }

    /// A client acting as cluster admin (system:masters).
    pub fn admin_client(&self) -> anyhow::Result<Client> {
        self.client_with_token(&self.admin_token)
    }

    /// A client acting as [`TENANT_USER`]: no rights until a test binds some.
    pub fn tenant_client(&self) -> anyhow::Result<Client> {
        self.client_with_token(&self.tenant_token)
    }

    /// A client authenticating with `token`.
    pub fn client_with_token(&self, token: &str) -> anyhow::Result<Client> {
        let mut config = kube::Config::new(self.api_url.parse()?);
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.auth_info.token = Some(token.to_string().into());
        config.default_namespace = "default".into();
        Ok(Client::try_from(config)?)
    }

    /// A token for `namespace/service_account` from the TokenRequest API, optionally
    /// bound to a pod (then it dies with the pod, like a kubelet-projected token).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        request_token(&self.admin_client()?, namespace, service_account, bound_pod).await
    }

    /// A client acting as `namespace/service_account`.
    pub async fn service_account_client(&self, namespace: &str, service_account: &str) -> anyhow::Result<Client> {
        let token = self.service_account_token(namespace, service_account, None).await?;
        self.client_with_token(&token)
    }

    /// A kubeconfig whose token is read from `token_file` (so it can be rotated).
    pub fn kubeconfig_for_token_file(&self, token_file: &Path) -> String {
        kubeconfig_yaml(&self.api_url, &self.ca_pem, Token::File(token_file))
    }

    /// Stops the API server (SIGTERM, then SIGKILL) — for outage tests.
    pub async fn stop_apiserver(&self) {
        let child = self.apiserver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(child) = child {
            child.stop(Duration::from_secs(10)).await;
        }
    }

    /// Kills the API server (SIGKILL): an outage that starts at once.
    pub fn kill_apiserver(&self) {
        if let Some(child) = self.apiserver.lock().unwrap_or_else(|p| p.into_inner()).take() {
            child.kill_now();
        }
    }

    /// Starts the API server again with the same flags and port; waits until ready.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        {
            let mut slot = self.apiserver.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(spawn_apiserver(&self.bin, &self.dir, &self.apiserver_args)?);
            }
        }
        self.wait_ready(Duration::from_secs(90)).await
    }

    /// `kubectl` against this bed.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// `helm` against this bed.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// PIDs of the control-plane processes (for the no-leftover-process checks).
    pub fn control_plane_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.etcd.pid()];
        pids.extend(self.controller_manager.as_ref().map(Child::pid));
        if let Some(a) = self.apiserver.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            pids.push(a.pid());
        }
        pids
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop(self.real_node.take());
        if let Some(kcm) = self.controller_manager.take() {
            kcm.kill_now();
        }
        if let Some(a) = self.apiserver.lock().unwrap_or_else(|p| p.into_inner()).take() {
            a.kill_now();
        }
        self.etcd.kill_now();
        if self.keep {
            eprintln!("test bed kept: {} (KUBECONFIG={})", self.dir.display(), self.kubeconfig.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// klog's `--v` from `env`, 1 when unset.
fn verbosity(env: &str) -> String {
    format!("--v={}", std::env::var(env).ok().and_then(|v| v.parse::<u8>().ok()).unwrap_or(1))
}

fn process_exited(what: &str) -> String {
    format!("{what} exited (see its log in the bed directory)")
}

fn spawn_apiserver(bin: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Child> {
    let mut cmd = Command::new(bin.join("kube-apiserver"));
    cmd.args(args);
    Child::spawn("kube-apiserver", cmd, &dir.join("kube-apiserver.log"))
}

/// The directory of the pinned binaries: `$LDAP_ELECTOR_BIN`, or whatever
/// `hack/build-testbed.sh` prints (it builds on a cache miss, else returns at once).
pub fn binaries() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("LDAP_ELECTOR_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = crate::repo_root().join("hack/build-testbed.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed (see its output above)", script.display());
    }
    let stdout = String::from_utf8(out.stdout)?;
    let dir = stdout.lines().last().context("build-testbed.sh printed no directory")?;
    Ok(PathBuf::from(dir.trim()))
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("LDAP_ELECTOR_BED_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ldap-elector-bed-{}-{}", std::process::id(), random_hex(4)?));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn write_private(path: &Path, body: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
    f.write_all(body.as_bytes())?;
    Ok(())
}

/// A free loopback TCP port (bound, then released; the window for a clash is tiny).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

pub(crate) enum Token<'a> {
    Inline(&'a str),
    File(&'a Path),
}

pub(crate) fn kubeconfig_yaml(server: &str, ca_pem: &str, token: Token<'_>) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let user = match token {
        Token::Inline(t) => format!("token: {t}"),
        Token::File(p) => format!("tokenFile: {}", p.display()),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: user\n  user:\n    {user}\ncontexts:\n- name: bed\n  context:\n    cluster: bed\n    user: user\n\
         current-context: bed\n"
    )
}

/// A token for `namespace/service_account` from the TokenRequest API, optionally bound to
/// a pod `(name, uid)` so that it dies with the pod, like a kubelet-projected token.
pub async fn request_token(
    admin: &Client,
    namespace: &str,
    service_account: &str,
    bound_pod: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![SA_ISSUER.to_string()],
            expiration_seconds: Some(3600),
            bound_object_ref: bound_pod.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
        },
        ..Default::default()
    };
    let response = sas
        .create_token_request(service_account, &Default::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{service_account}"))?;
    response.status.map(|s| s.token).context("TokenRequest returned no token")
}

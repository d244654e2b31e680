//! The real node of the bed (`BedOptions::real_node`): containerd + runc, CNI (bridge,
//! host-local, loopback), the real kubelet, kube-proxy (iptables mode) and kube-scheduler, all
//! built from the same pinned Kubernetes as the control plane. docs/real-node.md explains the
//! settings and addresses.
//!
//! One real node per machine: the kubelet, kube-proxy and the CNI bridge change host-global
//! state (iptables, sysctls, `/kubepods` cgroups, `/var/lib/kubelet`), so beds with a real node
//! serialise on a machine-wide lock, and each start first removes whatever a crashed run left
//! ([`cleanup`]). Every process dies with the test (PDEATHSIG); dropping the node removes the
//! containers, mounts, links, chains and cgroups and restores the sysctls.
//!
//! Start-up is in two steps because the API server must know the node before it starts
//! (tokens, kubelet client certificate, the node IP it listens on): [`Prepared::prepare`]
//! before the API server, [`Prepared::start`] once it is ready.

pub mod cleanup;
pub mod config;
pub mod consumer;
pub mod host;
pub mod images;
pub mod nubus;
pub mod pki;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::PostParams;
use kube::Api;

use crate::bed::process::Child;
use crate::bed::{kubeconfig_yaml, random_hex, write_private, Bed, Token};
use crate::wait::wait_for;
use config::Layout;

/// The fixed per-machine directory (containerd root/state/socket, kubelet root, CNI state):
/// `$LDAP_ELECTOR_NODE_DIR`, else this.
const DEFAULT_MACHINE_DIR: &str = "/var/lib/ldap-elector-node";
/// How long a bed waits for another real-node bed on this machine to finish.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const NODE_LIFECYCLE_CONTROLLER: &str = "node-lifecycle-controller";
/// Binds PersistentVolumeClaims to PersistentVolumes: without it a pod with a claim is never
/// scheduled (the test kubelet of the process bed does not care; the real one does).
const PV_BINDER_CONTROLLER: &str = "persistentvolume-binder-controller";
/// The ClusterRole that lets the API server use the kubelet API (logs, exec, port-forward).
const KUBELET_API_ADMIN: &str = "system:kubelet-api-admin";

/// The machine dir of the real node.
pub fn machine_dir() -> PathBuf {
    std::env::var_os("LDAP_ELECTOR_NODE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_MACHINE_DIR))
}

/// Removes the node at `layout` when dropped (also a half-started one).
struct Teardown {
    layout: Layout,
    _lock: host::MachineLock,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let started = Instant::now();
        let found = cleanup::cleanup(&self.layout);
        tracing::info!(secs = started.elapsed().as_secs_f64(), ?found, "real node removed");
    }
}

/// A node whose host side is ready (lock held, leftovers removed, node IP up, key material
/// written) and whose API server flags and tokens are known.
pub struct Prepared {
    teardown: Teardown,
    kubelet_token: String,
    proxy_token: String,
    scheduler_token: String,
    /// The images, built (or found) while the control plane starts.
    images: tokio::task::JoinHandle<Result<images::Built, images::ImageError>>,
}

impl Prepared {
    /// Takes the machine lock, removes what a crashed run left, records the host state,
    /// brings up the node IP and writes the node's key material. `bed_dir` gets the logs.
    pub async fn prepare(bed_dir: &Path) -> anyhow::Result<Prepared> {
        let machine = machine_dir();
        let lock_path = machine.with_extension("lock");
        let lock = host::MachineLock::acquire(&lock_path, LOCK_TIMEOUT).await?;
        let layout = Layout { machine, logs: bed_dir.to_path_buf() };
        let leftovers = cleanup::cleanup(&layout);
        if !leftovers.is_empty() {
            tracing::warn!(?leftovers, "real node: removed what a previous run left");
        }
        // From here on a failure removes what was set up.
        let teardown = Teardown { layout, _lock: lock };
        let l = &teardown.layout;
        for dir in ["containerd", "cni/net.d", "cni/ipam", "kubelet", "pki", "pod-logs"] {
            std::fs::create_dir_all(l.path(dir))?;
        }
        write_private(&l.path(cleanup::HOST_STATE_FILE), &host::HostState::capture().render())?;
        host::setup_network().context("node network (node IP link, routes, egress guard)")?;
        let pki = pki::NodePki::generate()?;
        for (name, body) in pki.files() {
            write_private(&l.pki(name), body)?;
        }
        Ok(Prepared {
            images: tokio::task::spawn_blocking(images::build_once),
            teardown,
            kubelet_token: random_hex(24)?,
            proxy_token: random_hex(24)?,
            scheduler_token: random_hex(24)?,
        })
    }

    /// Lines for the API server's token file.
    pub fn token_lines(&self) -> String {
        config::token_lines(&self.kubelet_token, &self.proxy_token, &self.scheduler_token)
    }

    /// The controller-manager's controllers with the node lifecycle controller, which removes the
    /// `node.kubernetes.io/not-ready` taint the kubelet registers with (else nothing schedules),
    /// and the PersistentVolume binder (claims of StatefulSets' `volumeClaimTemplates`).
    pub fn controllers(&self, base: &str) -> String {
        format!("{base},{NODE_LIFECYCLE_CONTROLLER},{PV_BINDER_CONTROLLER}")
    }

    /// Sets the API server flags a real node needs (see [`config::apiserver_flags`]).
    pub fn apiserver_flags(&self, args: &mut Vec<String>) {
        for (name, value) in config::apiserver_flags(&self.teardown.layout) {
            config::set_flag(args, name, &value);
        }
    }

    /// Starts containerd (with the images imported), the kubelet, kube-proxy and the scheduler
    /// against `bed`'s API server, and waits until the node is Ready.
    pub async fn start(self, bed: &Bed) -> anyhow::Result<RealNode> {
        let started = Instant::now();
        let l = self.teardown.layout.clone();
        let images = self.images.await??;
        let kubeconfig = |name: &str, token: &str| -> anyhow::Result<PathBuf> {
            let path = l.path(&format!("{name}.kubeconfig"));
            write_private(&path, &kubeconfig_yaml(&bed.api_url, &bed.ca_pem, Token::Inline(token)))?;
            Ok(path)
        };
        let kubelet_kubeconfig = kubeconfig("kubelet", &self.kubelet_token)?;
        let proxy_kubeconfig = kubeconfig("kube-proxy", &self.proxy_token)?;
        let scheduler_kubeconfig = kubeconfig("kube-scheduler", &self.scheduler_token)?;
        write_private(&l.containerd_config(), &config::containerd_toml(&l, &images.images.pause))?;
        write_private(&l.cni_conf_dir().join("10-ldap-elector-bed.conflist"), &config::cni_conflist(&l))?;
        let kubelet_port = free_node_port()?;
        write_private(&l.path("kubelet.yaml"), &config::kubelet_yaml(&l, kubelet_port))?;
        let proxy_settings = config::ProxySettings::from_env()?;
        write_private(&l.path("kube-proxy.yaml"), &config::kube_proxy_yaml(&proxy_kubeconfig, proxy_settings))?;

        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(l.containerd_config());
        let containerd = Child::spawn("containerd", containerd, &l.logs.join("containerd.log"))?;
        wait_for("containerd answers on its socket", Duration::from_secs(30), || async {
            if !containerd.is_running() {
                return Err("containerd exited (see containerd.log)".to_string());
            }
            ctr(&l).arg("version").output().map_err(|e| e.to_string()).and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
        })
        .await?;
        let target = images::ImportTarget::k8s(l.containerd_socket());
        let images = tokio::task::spawn_blocking(move || images.import(&target).map(|()| images)).await??;
        let images_ready = started.elapsed();

        grant_kubelet_api(bed).await?;
        let mut kubelet = Command::new(bed.bin.join("kubelet"));
        kubelet.args([
            format!("--config={}", l.path("kubelet.yaml").display()),
            format!("--kubeconfig={}", kubelet_kubeconfig.display()),
            format!("--root-dir={}", l.kubelet_root().display()),
            format!("--hostname-override={}", config::NODE_NAME),
            format!("--node-ip={}", config::NODE_IP),
            "--v=2".into(),
        ]);
        let kubelet = Child::spawn("kubelet", kubelet, &l.logs.join("kubelet.log"))?;
        let mut proxy = Command::new(bed.bin.join("kube-proxy"));
        proxy.args([format!("--config={}", l.path("kube-proxy.yaml").display()), "--v=2".into()]);
        let kube_proxy = Child::spawn("kube-proxy", proxy, &l.logs.join("kube-proxy.log"))?;
        let mut scheduler = Command::new(bed.bin.join("kube-scheduler"));
        scheduler.args([
            format!("--kubeconfig={}", scheduler_kubeconfig.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--v=2".into(),
        ]);
        let scheduler = Child::spawn("kube-scheduler", scheduler, &l.logs.join("kube-scheduler.log"))?;

        let kubelet_started = Instant::now();
        let nodes: Api<Node> = Api::all(bed.admin_client()?);
        let watched = [&containerd, &kubelet, &kube_proxy, &scheduler];
        wait_for("the real node is Ready", READY_TIMEOUT, || async {
            if let Some(dead) = watched.iter().find(|c| !c.is_running()) {
                return Err(format!("{} exited (see {}.log in the bed dir)", dead.name(), dead.name()));
            }
            let node = nodes.get_opt(config::NODE_NAME).await.map_err(|e| e.to_string())?;
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            match ready {
                Some(c) if c.status == "True" => Ok(()),
                Some(c) => Err(format!("Ready={}: {}", c.status, c.message.clone().unwrap_or_default())),
                None => Err("node not registered yet".into()),
            }
        })
        .await?;
        let timings = Timings { images: images_ready, node_ready: kubelet_started.elapsed(), total: started.elapsed() };
        tracing::info!(?timings, "real node Ready");
        Ok(RealNode {
            images: images.images,
            timings,
            proxy_settings,
            processes: vec![kubelet, kube_proxy, scheduler, containerd],
            teardown: self.teardown,
        })
    }
}

/// How long the node took to come up.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// From `start` until the images were built (or found) and imported.
    pub images: Duration,
    /// From the kubelet's start until the Node was Ready.
    pub node_ready: Duration,
    pub total: Duration,
}

/// A running real node; dropping it removes it.
pub struct RealNode {
    /// The images imported into the node's containerd.
    pub images: images::Images,
    pub timings: Timings,
    /// kube-proxy's mode and `minSyncPeriod` on this node ([`config::ProxySettings::from_env`]).
    pub proxy_settings: config::ProxySettings,
    /// In stop order: the kubelet first (it would restart containers), containerd last.
    processes: Vec<Child>,
    teardown: Teardown,
}

impl RealNode {
    pub fn name(&self) -> &'static str {
        config::NODE_NAME
    }

    pub fn layout(&self) -> &Layout {
        &self.teardown.layout
    }

    /// PIDs of the node's own processes (kubelet, kube-proxy, scheduler, containerd).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Child::pid).collect()
    }

    /// `ctr` against the node's containerd, in the CRI namespace.
    pub fn ctr(&self) -> Command {
        ctr(&self.teardown.layout)
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        for child in &self.processes {
            child.kill_now();
        }
        // `teardown` (dropped next) removes containers, mounts, links, chains and cgroups.
    }
}

fn ctr(l: &Layout) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(l.containerd_socket()).args(["--namespace", config::CRI_NAMESPACE]);
    cmd
}

/// The API server's kubelet client (node CA certificate) may use the kubelet API.
async fn grant_kubelet_api(bed: &Bed) -> anyhow::Result<()> {
    let bindings: Api<ClusterRoleBinding> = Api::all(bed.admin_client()?);
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ldap-elector-bed:apiserver-kubelet-client"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": KUBELET_API_ADMIN},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": config::APISERVER_KUBELET_CLIENT}],
    }))?;
    bindings.create(&PostParams::default(), &binding).await?;
    Ok(())
}

/// A TCP port free on the node IP.
fn free_node_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((config::NODE_IP, 0))?.local_addr()?.port())
}

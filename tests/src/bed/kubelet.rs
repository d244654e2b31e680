//! A test kubelet: registers a Node, binds pending pods to it, marks them Running/Ready
//! with placeholder IPs from TEST-NET-1 (192.0.2.0/24: strings only, never connected
//! to), runs chosen containers (and the containers of the same image: one image, one
//! program) as local processes with a pod-bound service-account token,
//! signals them on request, and finalises deleted pods after SIGTERM and the grace period.
//! On a bed with a pod network (`BedOptions::pod_network`) each pod's IP stands for its own
//! loopback address `127.B.C.N` instead: its processes bind there where their arguments or
//! environment say `0.0.0.0` (the pod's network namespace), and the API server reaches them
//! through `pod_network`'s proxy.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Container, Node, ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use ldap_elector_contract::check::percent_encode;

use crate::bed::process::{Child, Signal};
use crate::bed::{kubeconfig_yaml, Bed, Token};

/// How to run one container of a pod as a local process.
#[derive(Clone, Debug)]
pub struct Runner {
    /// The container (or init container) name this runner takes.
    pub container: String,
    /// The local program standing in for the container image's entrypoint; it gets the
    /// container's `args`.
    pub program: PathBuf,
    /// Extra environment, e.g. addresses of local stand-ins. Values may name the pod:
    /// `{pod}` becomes the pod's name and `{ordinal}` its StatefulSet ordinal (the number
    /// after the last `-`; empty for other pods), so that each pod's process reaches ITS
    /// OWN stand-in (e.g. `ldapi://%2Ftmp%2Fslapd-{ordinal}.sock`).
    pub env: Vec<(String, String)>,
}

impl Runner {
    /// `value` with `{pod}` and `{ordinal}` replaced for pod `pod`.
    pub fn expand(value: &str, pod: &str) -> String {
        let ordinal = pod.rsplit_once('-').map(|(_, n)| n).filter(|n| n.parse::<u32>().is_ok()).unwrap_or_default();
        value.replace("{pod}", pod).replace("{ordinal}", ordinal)
    }
}

type PodKey = (String, String);

/// A step of a pod's termination, as the test kubelet took it.
#[derive(Clone, Debug)]
pub struct Termination {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub step: Step,
    /// When the step was done (a hook: when it returned).
    pub at: std::time::Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The container's `preStop` httpGet hook returned this status line, or failed.
    PreStop(Result<String, String>),
    /// The container was told to stop (SIGTERM to its process, if it runs here).
    Stopping,
}

struct Running {
    uid: String,
    children: BTreeMap<String, Child>,
}

struct Inner {
    client: Client,
    node: String,
    api_url: String,
    ca_pem: String,
    dir: PathBuf,
    runners: Mutex<Vec<Runner>>,
    pods: Mutex<HashMap<PodKey, Running>>,
    ips: Mutex<HashMap<String, String>>,
    /// Root of the pods' volume directories, once `map_volumes` was called.
    volume_root: Mutex<Option<PathBuf>>,
    terminations: Mutex<Vec<Termination>>,
    /// UIDs of the pods being terminated (a pod's updates during its termination, e.g. by
    /// its own elector, must not start another one).
    terminating: Mutex<std::collections::HashSet<String>>,
    // Token requests need the bed; keep what they need.
    token_client: Client,
    /// The bed's emulated pod network (`127.B.C`): processes listen on their pod's own
    /// loopback address instead of `0.0.0.0`.
    pod_network: Option<[u8; 2]>,
}

pub struct Kubelet {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Registers node `node` and starts serving it.
    pub async fn start(bed: &Bed, node: &str) -> anyhow::Result<Kubelet> {
        let client = bed.admin_client()?;
        register_node(&client, node).await?;
        let dir = bed.dir.join("kubelet").join(node);
        std::fs::create_dir_all(&dir)?;
        let inner = Arc::new(Inner {
            client: client.clone(),
            node: node.to_string(),
            api_url: bed.api_url.clone(),
            ca_pem: bed.ca_pem.clone(),
            dir,
            runners: Mutex::new(Vec::new()),
            pods: Mutex::new(HashMap::new()),
            ips: Mutex::new(HashMap::new()),
            volume_root: Mutex::new(None),
            terminations: Mutex::new(Vec::new()),
            terminating: Mutex::new(std::collections::HashSet::new()),
            token_client: client,
            pod_network: bed.pod_network.as_ref().map(|n| n.prefix),
        });
        let task = tokio::spawn(run(inner.clone()));
        Ok(Kubelet { inner, task })
    }

    /// From now on, containers named `runner.container` run as local processes.
    pub fn add_runner(&self, runner: Runner) {
        lock(&self.inner.runners).push(runner);
    }

    /// From now on, every pod volume gets a directory on this machine,
    /// `<root>/<namespace>_<pod>/<volume>` (see [`Kubelet::volume_dir`]), as a real kubelet
    /// gives each one a host directory; and in the environment of a container started here,
    /// paths under its volume mounts (plain, or percent-encoded as in `ldapi://` URLs) are
    /// rewritten to that directory — processes share a volume's directory the way
    /// containers share the volume. A container without the mount keeps the path as it is
    /// (and finds nothing there), so a missing mount still fails. Keep `root` short: Unix
    /// socket paths are limited to 107 bytes.
    pub fn map_volumes(&self, root: PathBuf) {
        *lock(&self.inner.volume_root) = Some(root);
    }

    /// The directory of volume `volume` of `namespace/pod` (`None` before `map_volumes`).
    pub fn volume_dir(&self, namespace: &str, pod: &str, volume: &str) -> Option<PathBuf> {
        lock(&self.inner.volume_root).as_ref().map(|root| root.join(format!("{namespace}_{pod}")).join(volume))
    }

    /// Sends `signal` to the process of `container` in `namespace/pod`; false if none runs.
    pub fn signal(&self, namespace: &str, pod: &str, container: &str, signal: Signal) -> bool {
        let pods = lock(&self.inner.pods);
        match pods.get(&(namespace.to_string(), pod.to_string())).and_then(|r| r.children.get(container)) {
            Some(child) if child.is_running() => {
                child.signal(signal);
                true
            }
            _ => false,
        }
    }

    /// Kills the process of `container` in `namespace/pod` together with every process it
    /// started, at once, as a container runtime kills a container's cgroup (kill -9 or OOM
    /// kill of the container): nothing in the container outlives it. False if none runs.
    pub fn kill_container(&self, namespace: &str, pod: &str, container: &str) -> bool {
        let Some(pid) = self.pid(namespace, pod, container) else { return false };
        let all = with_descendants(pid);
        // Stop them all first, so none reacts to another's death, then kill them.
        for signal in [libc::SIGSTOP, libc::SIGKILL] {
            for p in &all {
                // SAFETY: plain syscalls; the container's process is ours and not reaped
                // (checked above), its descendants were listed just now.
                unsafe { libc::kill(*p as libc::pid_t, signal) };
            }
        }
        true
    }

    /// The PID of the process of `container` in `namespace/pod`, if it runs.
    pub fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        let pods = lock(&self.inner.pods);
        let child = pods.get(&(namespace.to_string(), pod.to_string()))?.children.get(container)?;
        child.is_running().then(|| child.pid())
    }

    /// Starts the container again after it exited (a kubelet's container restart).
    pub async fn restart(&self, namespace: &str, pod: &str, container: &str) -> anyhow::Result<()> {
        let pod: Pod = Api::namespaced(self.inner.client.clone(), namespace).get(pod).await?;
        start_container(&self.inner, &pod, container).await
    }

    /// Every termination step taken so far, in order.
    pub fn terminations(&self) -> Vec<Termination> {
        lock(&self.inner.terminations).clone()
    }

    /// The log file of a container's process.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.inner.dir.join(format!("{namespace}_{pod}_{container}.log"))
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.inner.pods).clear(); // Child::drop kills each process
    }
}

/// `pid` and all its descendants (e.g. a watchdog child), from `/proc/<pid>/task/<tid>/children`.
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() && all.len() < 1000 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i])).into_iter().flatten().flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    all
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn register_node(client: &Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let body: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}},
    }))?;
    match nodes.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("registering the test node"),
    }
    let status = serde_json::json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "TestKubeletReady",
                        "message": "test kubelet", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "addresses": [{"type": "InternalIP", "address": "192.0.2.254"}],
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "500Gi"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "500Gi"},
    }});
    nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn run(inner: Arc<Inner>) {
    let pods: Api<Pod> = Api::all(inner.client.clone());
    let mut events =
        watcher(pods, watcher::Config::default()).backoff(ldap_elector_contract::backoff::QUICK_WATCH.delays()).boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                forget(&inner, &pod);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "test kubelet watch error (retrying)");
                continue;
            }
        };
        if let Err(e) = sync_pod(&inner, &pod).await {
            tracing::warn!(pod = %pod.name_any(), error = %format!("{e:#}"), "test kubelet could not sync pod");
        }
    }
}

fn forget(inner: &Inner, pod: &Pod) {
    lock(&inner.terminating).remove(pod.metadata.uid.as_deref().unwrap_or_default());
    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
    let mut pods = lock(&inner.pods);
    if pods.get(&key).is_some_and(|r| Some(r.uid.as_str()) == pod.metadata.uid.as_deref()) {
        pods.remove(&key);
    }
}

async fn sync_pod(inner: &Arc<Inner>, pod: &Pod) -> anyhow::Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(inner.client.clone(), &ns);
    let spec = pod.spec.as_ref().context("pod without spec")?;
    match spec.node_name.as_deref() {
        None if pod.metadata.deletion_timestamp.is_none() => return bind(&api, &name, &inner.node).await,
        Some(n) if n == inner.node => {}
        _ => return Ok(()),
    }
    if pod.metadata.deletion_timestamp.is_some() {
        if !lock(&inner.terminating).insert(pod.metadata.uid.clone().unwrap_or_default()) {
            return Ok(());
        }
        let inner = inner.clone();
        let pod = pod.clone();
        tokio::spawn(async move { terminate(&inner, &pod).await });
        return Ok(());
    }
    let key = (ns.clone(), name.clone());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let started = lock(&inner.pods).get(&key).is_some_and(|r| r.uid == uid);
    if !started {
        lock(&inner.pods).insert(key, Running { uid: uid.clone(), children: BTreeMap::new() });
        let runners = lock(&inner.runners).clone();
        for container in all_containers(pod) {
            if runner_for(&runners, pod, &container.name).is_some() {
                start_container(inner, pod, &container.name).await?;
            }
        }
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
        mark_running(inner, &api, pod).await?;
    }
    Ok(())
}

fn all_containers(pod: &Pod) -> Vec<&Container> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect()
}

async fn bind(api: &Api<Pod>, name: &str, node: &str) -> anyhow::Result<()> {
    let binding = Binding {
        metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        target: ObjectReference { kind: Some("Node".into()), name: Some(node.into()), ..Default::default() },
    };
    match api.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn mark_running(inner: &Inner, api: &Api<Pod>, pod: &Pod) -> anyhow::Result<()> {
    let ip = pod_ip(inner, pod);
    let t = now();
    let statuses = |cs: &[Container], sidecar_only: bool| -> Vec<serde_json::Value> {
        cs.iter()
            .filter(|c| !sidecar_only || c.restart_policy.as_deref() == Some("Always"))
            .map(|c| {
                serde_json::json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}})
            })
            .collect()
    };
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let cond = |ty: &str| serde_json::json!({"type": ty, "status": "True", "lastTransitionTime": t});
    let status = serde_json::json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.254", "startTime": t,
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        "containerStatuses": statuses(&spec.containers, false),
        "initContainerStatuses": statuses(spec.init_containers.as_deref().unwrap_or_default(), true),
    }});
    api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

/// The runner of `container` in `pod`: its own, else that of a container of the same pod
/// with the same image, since one image runs one program (e.g. the fence guard: the
/// elector's image with other arguments).
fn runner_for(runners: &[Runner], pod: &Pod, container: &str) -> Option<Runner> {
    if let Some(own) = runners.iter().find(|r| r.container == container) {
        return Some(own.clone());
    }
    let containers = all_containers(pod);
    let image = containers.iter().find(|c| c.name == container)?.image.as_deref()?;
    runners
        .iter()
        .find(|r| containers.iter().any(|c| c.name == r.container && c.image.as_deref() == Some(image)))
        .cloned()
}

/// The pod's IP (TEST-NET-1), handed out once per pod UID.
fn pod_ip(inner: &Inner, pod: &Pod) -> String {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut ips = lock(&inner.ips);
    let n = ips.len() % 250 + 1;
    ips.entry(uid).or_insert_with(|| format!("192.0.2.{n}")).clone()
}

async fn start_container(inner: &Arc<Inner>, pod: &Pod, container_name: &str) -> anyhow::Result<()> {
    let runner = runner_for(&lock(&inner.runners), pod, container_name)
        .with_context(|| format!("no runner for container {container_name}"))?;
    let container = all_containers(pod)
        .into_iter()
        .find(|c| c.name == container_name)
        .with_context(|| format!("pod has no container {container_name}"))?
        .clone();
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_dir = inner.dir.join(format!("{ns}_{name}"));
    std::fs::create_dir_all(&pod_dir)?;

    // Volume mounts of this container: (container path, local directory), see `map_volumes`.
    let volume_root = lock(&inner.volume_root).clone();
    let mut local_mounts = Vec::new();
    let mounts = volume_root.iter().flat_map(|root| container.volume_mounts.iter().flatten().map(move |m| (root, m)));
    for (root, m) in mounts {
        let mut dir = root.join(format!("{ns}_{name}")).join(&m.name);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            dir = dir.join(sub);
        }
        std::fs::create_dir_all(&dir)?;
        local_mounts.push((m.mount_path.clone(), dir.display().to_string()));
    }

    // With the bed's pod network, the pod's own loopback address is its network namespace:
    // what the container binds to `0.0.0.0` it binds there (see `pod_network`).
    let own_ip = inner
        .pod_network
        .and_then(|prefix| crate::bed::pod_network::local_ip(prefix, &pod_ip(inner, pod)))
        .map(|ip| ip.to_string());
    let bind = |v: &str| match &own_ip {
        Some(ip) => v.replace("0.0.0.0", ip),
        None => v.to_string(),
    };
    let mut cmd = Command::new(&runner.program);
    cmd.args(container.args.iter().flatten().map(|a| bind(a)));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(from)) => from.field_ref.as_ref().and_then(|f| match f.field_path.as_str() {
                "metadata.name" => Some(name.clone()),
                "metadata.namespace" => Some(ns.clone()),
                "metadata.uid" => Some(uid.clone()),
                "spec.nodeName" => Some(inner.node.clone()),
                "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()),
                _ => None,
            }),
            _ => None,
        };
        if let Some(v) = value {
            let v = local_mounts.iter().fold(v, |v, (mount, local)| rewrite_path(&v, mount, local));
            cmd.env(&e.name, bind(&v));
        }
    }
    cmd.env("POD_NAME", &name).env("POD_NAMESPACE", &ns).env("POD_UID", &uid);
    cmd.envs(runner.env.iter().map(|(k, v)| (k, bind(&Runner::expand(v, &name)))));

    // The API identity a real kubelet would project: the pod's service account, bound to
    // this pod, delivered via a kubeconfig whose token file we own.
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let token = crate::bed::request_token(&inner.token_client, &ns, &sa, Some((&name, &uid))).await?;
    let token_file = pod_dir.join(format!("{container_name}.token"));
    std::fs::write(&token_file, token)?;
    let kubeconfig = pod_dir.join(format!("{container_name}.kubeconfig"));
    std::fs::write(&kubeconfig, kubeconfig_yaml(&inner.api_url, &inner.ca_pem, Token::File(&token_file)))?;
    cmd.env("KUBECONFIG", &kubeconfig);

    let log = inner.dir.join(format!("{ns}_{name}_{container_name}.log"));
    let child = Child::spawn(&format!("{ns}/{name}/{container_name}"), cmd, &log)?;
    let mut pods = lock(&inner.pods);
    if let Some(running) = pods.get_mut(&(ns, name)) {
        running.children.insert(container_name.to_string(), child);
    }
    Ok(())
}

/// `value` with the container path `mount` replaced by `local` wherever it starts a path
/// (not inside a longer one), plainly (`/run/slapd/ldapi`) or percent-encoded with upper-case
/// escapes (`ldapi://%2Frun%2Fslapd%2Fldapi`).
fn rewrite_path(value: &str, mount: &str, local: &str) -> String {
    let (mount, local) = (mount.trim_end_matches('/'), local.trim_end_matches('/'));
    if mount.is_empty() {
        return value.to_string();
    }
    let mut out = value.to_string();
    let forms = [
        (mount.to_string(), local.to_string(), "/", false),
        (percent_encode(mount), percent_encode(local), "%2F", true),
    ];
    for (from, to, separator, after_slash_ok) in forms {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&from) {
            let before = rest[..i].chars().next_back();
            let starts_path = before
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || "-_.~%".contains(c) || (c == '/' && !after_slash_ok)));
            let tail = &rest[i + from.len()..];
            let ends_path = tail.starts_with(separator)
                || tail.chars().next().is_none_or(|c| !(c.is_ascii_alphanumeric() || "-_.~%".contains(c)));
            result.push_str(&rest[..i]);
            result.push_str(if starts_path && ends_path { &to } else { &from });
            rest = tail;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// What a kubelet does on pod deletion, within the grace period: the main containers'
/// `preStop` hooks (httpGet only, and only with a pod network to reach the pod; others are
/// skipped), then SIGTERM to the main containers, then the native sidecars one by one in
/// reverse order (SIGKILL once the grace period is over); then remove the pod object
/// (grace 0, guarded by the pod's UID).
async fn terminate(inner: &Inner, pod: &Pod) {
    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
    let grace = Duration::from_secs(pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64);
    let deadline = tokio::time::Instant::now() + grace;
    let Some(mut children) = lock(&inner.pods).remove(&key).map(|r| r.children) else {
        return finalise(inner, pod, &key).await; // not ours, or already terminating
    };
    let Some(spec) = pod.spec.as_ref() else { return };
    let record = |container: &str, step: Step| {
        lock(&inner.terminations).push(Termination {
            namespace: key.0.clone(),
            pod: key.1.clone(),
            container: container.to_string(),
            step,
            at: std::time::Instant::now(),
        })
    };
    let hooks = spec.containers.iter().filter_map(|c| {
        let get = c.lifecycle.as_ref()?.pre_stop.as_ref()?.http_get.as_ref()?;
        Some(async move {
            let result = tokio::time::timeout_at(deadline, http_hook(inner, pod, get)).await;
            let result = result.unwrap_or_else(|_| Err("the grace period ended".into()));
            record(&c.name, Step::PreStop(result));
        })
    });
    futures::future::join_all(hooks).await;
    // The main containers together, then each sidecar (init containers that restart) in
    // reverse order; what is left (an init container still running) last.
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut waves: Vec<Vec<&str>> = vec![spec.containers.iter().map(|c| c.name.as_str()).collect()];
    waves.extend(sidecars.rev().map(|c| vec![c.name.as_str()]));
    let rest: Vec<String> = children.keys().cloned().collect();
    waves.push(rest.iter().map(String::as_str).collect());
    for wave in waves {
        let stopping: Vec<Child> = wave.iter().filter_map(|name| children.remove(*name)).collect();
        wave.iter().for_each(|name| record(name, Step::Stopping));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        futures::future::join_all(stopping.iter().map(|c| c.stop(left))).await;
    }
    finalise(inner, pod, &key).await
}

/// A `preStop` httpGet hook: `GET` on the pod's own address (its loopback address on the
/// bed's pod network), the status line of the answer.
async fn http_hook(
    inner: &Inner,
    pod: &Pod,
    get: &k8s_openapi::api::core::v1::HTTPGetAction,
) -> Result<String, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let prefix = inner.pod_network.ok_or("no pod network: the pod cannot be reached")?;
    let ip = crate::bed::pod_network::local_ip(prefix, &pod_ip(inner, pod)).ok_or("the pod has no local address")?;
    let port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|e| e.to_string())?,
        IntOrString::String(name) => all_containers(pod)
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name}"))?,
    };
    let path = get.path.as_deref().unwrap_or("/");
    let mut stream = tokio::net::TcpStream::connect((ip, port)).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {ip}:{port}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

async fn finalise(inner: &Inner, pod: &Pod, key: &PodKey) {
    let api: Api<Pod> = Api::namespaced(inner.client.clone(), &key.0);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    if let Err(e) = api.delete(&key.1, &dp).await {
        tracing::debug!(pod = %key.1, error = %e, "finalising deleted pod");
    }
}

#[cfg(test)]
mod tests {
    use super::Runner;

    #[test]
    fn mounted_paths_in_env_values_are_rewritten_to_the_local_directory() {
        use super::rewrite_path;
        let local = "/tmp/b/ldap_p-0/v";
        let cases = [
            ("ldapi://%2Frun%2Fslapd%2Fldapi?base=dc=x", "ldapi://%2Ftmp%2Fb%2Fldap_p-0%2Fv%2Fldapi?base=dc=x"),
            ("ldapi://%2Frun%2Fslapd", "ldapi://%2Ftmp%2Fb%2Fldap_p-0%2Fv"),
            ("/run/slapd/ldapi", "/tmp/b/ldap_p-0/v/ldapi"),
            ("sh /run/slapd/hook /run/slapd", "sh /tmp/b/ldap_p-0/v/hook /tmp/b/ldap_p-0/v"),
            ("--dir=/run/slapd --x", "--dir=/tmp/b/ldap_p-0/v --x"),
            // Not a path under the mount: left alone.
            ("/var/run/slapd/ldapi", "/var/run/slapd/ldapi"),
            ("ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi", "ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi"),
            ("/run/slapd2/ldapi", "/run/slapd2/ldapi"),
            ("ldapi://%2Frun%2Fslapd2%2Fldapi", "ldapi://%2Frun%2Fslapd2%2Fldapi"),
            ("tcp://127.0.0.1:389", "tcp://127.0.0.1:389"),
        ];
        for (value, expected) in cases {
            assert_eq!(rewrite_path(value, "/run/slapd/", local), expected, "{value}");
        }
    }

    #[test]
    fn env_placeholders_name_the_pod_and_its_ordinal() {
        assert_eq!(Runner::expand("ldapi://%2Ftmp%2Fn-{ordinal}.sock", "ldap-server-1"), "ldapi://%2Ftmp%2Fn-1.sock");
        assert_eq!(Runner::expand("sh hook {pod} {pod}", "ldap-server-0"), "sh hook ldap-server-0 ldap-server-0");
        assert_eq!(Runner::expand("x{ordinal}y", "standalone"), "xy");
        assert_eq!(Runner::expand("plain", "ldap-server-0"), "plain");
    }
}

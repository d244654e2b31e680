//! Admission load on the release webhook, shared by `make webhook-bench` and `make compare`:
//! the RELEASE `ldap-elector-webhook` as its own process pinned to one core with `taskset`
//! (files mode, `--reconcile=false`, as its ServiceAccount against a real bed), an opted-in
//! StatefulSet and its write Service for its caches, and a load generator posting the
//! `fresh-pod` AdmissionReview over keep-alive connections, checking every answer (200,
//! `allowed: true`, a JSON Patch, the request's uid), closed loop (saturation) or open loop
//! at a fixed rate (latency counted from when a review was due, so a stall is not hidden by
//! the load generator waiting for it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::PostParams;
use kube::Api;
use ldap_elector_certs::{generate_ca, issue_serving, Ca};
use ldap_elector_contract as contract;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::bed::free_port;
use crate::bed::process::Child;
use crate::measure::{Machine, Usage};
use crate::workloads::fixtures;
use crate::workloads::webhook::{wait_ready, webhook_identities, SIDECAR_IMAGE, WEBHOOK_NS, WEBHOOK_SA};
use crate::Bed;

/// The StatefulSet the reviewed pod belongs to (the fixture's names).
pub const NAMESPACE: &str = "ldap";
pub const STATEFULSET: &str = "ldap-server";
/// A realistic review: a fresh pod of an opted-in StatefulSet, as the API server sends it.
const REVIEW_FIXTURE: &str = include_str!("../../../webhook/tests/fixtures/fresh-pod.review.json");
/// The core the webhook is pinned to.
pub const WEBHOOK_CORE: usize = 0;
/// Not measured: connections set up, first reviews answered.
pub const WARM_UP: Duration = Duration::from_secs(3);

/// A runtime whose threads (and the processes they start, e.g. a bed) stay off the
/// webhook's core when there is more than one, so that "one core" means one core. Pins the
/// calling thread (they inherit its mask); the flag says whether that worked.
pub fn runtime_off_the_webhook_core(machine: &Machine) -> anyhow::Result<(tokio::runtime::Runtime, bool)> {
    let others: Vec<usize> = (0..machine.cores).filter(|&c| c != WEBHOOK_CORE).collect();
    let pinned_away = !others.is_empty() && pin_current_thread(&others).is_ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(others.len().max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Ok((runtime, pinned_away))
}

/// `sched_setaffinity` for the calling thread; threads and processes it starts inherit it.
fn pin_current_thread(cores: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cores < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The running webhook and what to send it.
pub struct Setup {
    pub webhook: Child,
    pub target: Arc<Target>,
    /// The CA of the serving certificate, and the files the webhook polls.
    pub ca: Ca,
    pub certs: CertDir,
    /// The webhook's log (one JSON line per review).
    pub log: PathBuf,
    pub binary: PathBuf,
    /// Whether `taskset` pinned the webhook to `WEBHOOK_CORE`.
    pub pinned: bool,
    /// The cores the webhook may run on.
    pub affinity: String,
    pub idle_rss_kib: Option<u64>,
    /// The first review, checked in depth.
    pub answer: Answer,
    /// The leaf certificate served before any rotation.
    pub first_leaf: CertificateDer<'static>,
}

impl Setup {
    /// Starts the webhook (pinned) against `bed` with everything it needs, and checks one
    /// review in depth (the patch adds the sidecar).
    pub async fn start(bed: &Bed, h2: bool) -> anyhow::Result<Setup> {
        let binary = crate::workloads::build::webhook_release_binary()?;
        let taskset = which("taskset");
        let admin = bed.admin_client()?;
        // The webhook's identity, and an opted-in StatefulSet for the owner cache to hold.
        webhook_identities(bed).await?;
        fixtures::namespace(&admin, NAMESPACE, None).await?;
        let annotations = json!({
            contract::ANNOTATION_INJECT: "true",
            contract::ANNOTATION_LEADER_SERVICE: format!("{STATEFULSET}-primary"),
        });
        // No replicas: the controller creates no pods, the reviews are ours alone.
        let sts = fixtures::statefulset(STATEFULSET, 0, annotations)?;
        let sts = Api::<StatefulSet>::namespaced(admin.clone(), NAMESPACE).create(&PostParams::default(), &sts).await?;
        let owner_uid = sts.metadata.uid.context("StatefulSet without uid")?;
        let (uid, body) = review_body(&owner_uid)?;
        // Its write Service in the steady state (selecting the leader, marked as the reconciler
        // leaves it), so admission finds it in its cache instead of reading it per review.
        let mut primary = fixtures::service(
            &format!("{STATEFULSET}-primary"),
            json!({"app": STATEFULSET, contract::LABEL_ROLE: contract::ROLE_LEADER}),
        )?;
        primary.metadata.labels = Some([(contract::LABEL_STATEFULSET.to_string(), STATEFULSET.to_string())].into());
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), NAMESPACE)
            .create(&PostParams::default(), &primary)
            .await?;

        // A token of the webhook's ServiceAccount, a kubeconfig reading it, serving files.
        let dir = bed.dir.join("webhook-bench");
        std::fs::create_dir_all(&dir)?;
        let token = bed.service_account_token(WEBHOOK_NS, WEBHOOK_SA, None).await?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let kubeconfig = dir.join("webhook.kubeconfig");
        std::fs::write(&kubeconfig, bed.kubeconfig_for_token_file(&token_file))?;
        let ca = generate_ca("webhook-bench-ca", Duration::from_secs(24 * 3600))?;
        let certs = CertDir::create(&dir.join("tls"), &ca)?;

        let (port, health_port) = (free_port()?, free_port()?);
        let args = [
            format!("--listen=127.0.0.1:{port}"),
            format!("--health-listen=127.0.0.1:{health_port}"),
            "--cert-mode=files".into(),
            format!("--cert-file={}", certs.cert_path().display()),
            format!("--key-file={}", certs.key_path().display()),
            format!("--sidecar-image={SIDECAR_IMAGE}"),
            // The admission server as the chart runs it, as its (read-only) account.
            "--component=admission".into(),
            // The load generator is one peer with WEBHOOK_BENCH_CONNS (default 16) connections
            // plus fresh ones: above the per-peer cap meant for a flooding pod.
            "--max-connections-per-peer=1024".into(),
            "--max-connections=1024".into(),
        ];
        let mut cmd = match &taskset {
            Some(taskset) => {
                let mut cmd = Command::new(taskset);
                cmd.arg("-c").arg(WEBHOOK_CORE.to_string()).arg(&binary);
                cmd
            }
            None => {
                eprintln!("webhook-bench: `taskset` (util-linux) not found; the webhook runs unpinned");
                Command::new(&binary)
            }
        };
        cmd.args(&args).env("KUBECONFIG", &kubeconfig);
        let log = bed.dir.join("webhook.log");
        let webhook = Child::spawn("ldap-elector-webhook", cmd, &log)?;
        wait_ready("webhook", health_port, Duration::from_secs(60))
            .await
            .with_context(|| format!("see {}", log.display()))?;
        let affinity = cpus_allowed(webhook.pid()).unwrap_or_else(|| "?".into());
        let idle_rss = Usage::of(Some(webhook.pid())).rss_kib;

        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone())?;
        let target = Arc::new(Target {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tls: client_config(roots, h2),
            body: Bytes::from(body),
            uid,
            h2,
        });

        // One fully checked review (the patch decodes to a JSON Patch adding the sidecar).
        let (mut sender, old_leaf) = connect(&target).await?;
        let answer = post(&mut sender, &target).await.map_err(anyhow::Error::msg)?;
        check_patch(&answer.patch)?;
        drop(sender);
        Ok(Setup {
            webhook,
            target,
            ca,
            certs,
            log,
            binary,
            pinned: taskset.is_some(),
            affinity,
            idle_rss_kib: idle_rss,
            answer,
            first_leaf: old_leaf,
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// The fixture review, pointed at the real StatefulSet; compact, as the API server sends
/// it. Returns the request uid and the body.
fn review_body(owner_uid: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut review: serde_json::Value = serde_json::from_str(REVIEW_FIXTURE)?;
    let request = &mut review["request"];
    request["namespace"] = json!(NAMESPACE);
    let meta = &mut request["object"]["metadata"];
    meta["namespace"] = json!(NAMESPACE);
    let owner = &mut meta["ownerReferences"][0];
    owner["name"] = json!(STATEFULSET);
    owner["uid"] = json!(owner_uid);
    let uid = review["request"]["uid"].as_str().context("fixture without request uid")?.to_string();
    Ok((uid, serde_json::to_vec(&review)?))
}

/// Serving certificate and key laid out as the kubelet lays out a Secret volume:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..<generation>/`. A rotation writes a new
/// generation directory and swaps `..data` with one `rename`, so the webhook never reads a
/// new certificate with an old key.
pub struct CertDir {
    dir: PathBuf,
    generation: u32,
}

impl CertDir {
    pub fn create(dir: &Path, ca: &Ca) -> anyhow::Result<CertDir> {
        std::fs::create_dir_all(dir)?;
        let mut certs = CertDir { dir: dir.to_path_buf(), generation: 0 };
        certs.rotate(ca)?;
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name))?;
        }
        Ok(certs)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// A new serving certificate for 127.0.0.1 from `ca` (new key), swapped in atomically;
    /// returns its DER.
    pub fn rotate(&mut self, ca: &Ca) -> anyhow::Result<CertificateDer<'static>> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        self.generation += 1;
        let serving = issue_serving(ca, &[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], Duration::from_secs(24 * 3600))?;
        let generation = format!("..generation-{}", self.generation);
        let gen_dir = self.dir.join(&generation);
        std::fs::create_dir(&gen_dir)?;
        std::fs::write(gen_dir.join("tls.crt"), &serving.cert_pem)?;
        let mut key =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(gen_dir.join("tls.key"))?;
        key.write_all(serving.key_pem.as_bytes())?;
        key.sync_all()?;
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&generation, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        Ok(CertificateDer::from_pem_slice(serving.cert_pem.as_bytes())?)
    }
}

fn client_config(roots: RootCertStore, h2: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Arc::new(config)
}

/// Where and what to send.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<ClientConfig>,
    pub body: Bytes,
    pub uid: String,
    pub h2: bool,
}

pub enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A new TLS connection (full handshake: the webhook issues no tickets) and the leaf
/// certificate it was served.
pub async fn connect(target: &Target) -> anyhow::Result<(Sender, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = TlsConnector::from(target.tls.clone()).connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).context("no server certificate")?;
    let leaf = leaf.clone().into_owned();
    let io = TokioIo::new(tls);
    let sender = if target.h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    Ok((sender, leaf))
}

#[derive(Deserialize)]
struct ReviewOut {
    response: Option<ResponseOut>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut {
    uid: String,
    allowed: bool,
    patch: Option<PatchBytes>,
    patch_type: Option<String>,
}

/// `patch` is `[]byte` on the API server's side, which Go's JSON decoding accepts as a
/// base64 string or as an array of numbers (what kube-rs' `AdmissionResponse` writes).
struct PatchBytes(Vec<u8>);

impl<'de> Deserialize<'de> for PatchBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PatchBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string or an array of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PatchBytes, E> {
                base64::engine::general_purpose::STANDARD.decode(v).map(PatchBytes).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<PatchBytes, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(PatchBytes(bytes))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A checked answer: the decoded JSON Patch and the response body's size.
pub struct Answer {
    pub patch: Vec<u8>,
    pub body_bytes: usize,
}

/// One review; `Ok` when the answer is 200, allowed, for our uid, with a JSON Patch.
/// Anything else is a failed request, described.
pub async fn post(sender: &mut Sender, target: &Target) -> Result<Answer, String> {
    // HTTP/2 needs the authority in the URI; HTTP/1.1 sends it as Host.
    let uri = if target.h2 { format!("https://127.0.0.1:{}/mutate", target.addr.port()) } else { "/mutate".into() };
    let request = Request::post(uri)
        .header(header::HOST, format!("127.0.0.1:{}", target.addr.port()))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(target.body.clone()))
        .map_err(|e| e.to_string())?;
    let response = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            s.send_request(request).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            s.send_request(request).await
        }
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
    }
    let review: ReviewOut = serde_json::from_slice(&body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let r = review.response.ok_or("AdmissionReview without response")?;
    match r {
        ResponseOut { allowed: false, .. } => Err("denied".into()),
        ResponseOut { ref uid, .. } if *uid != target.uid => Err(format!("answer for uid {uid}")),
        ResponseOut { patch: Some(PatchBytes(patch)), patch_type: Some(t), .. }
            if t == "JSONPatch" && patch.first() == Some(&b'[') =>
        {
            Ok(Answer { patch, body_bytes: body.len() })
        }
        _ => Err("allowed without a JSON Patch".into()),
    }
}

/// The one review checked in depth: the patch is a JSON Patch adding our sidecar.
fn check_patch(patch: &[u8]) -> anyhow::Result<()> {
    let ops: Vec<serde_json::Value> = serde_json::from_slice(patch)?;
    let adds_sidecar = ops.iter().any(|op| {
        op["path"].as_str().is_some_and(|p| p.starts_with("/spec/initContainers"))
            && op.to_string().contains(contract::SIDECAR_CONTAINER)
    });
    if !adds_sidecar {
        bail!("the patch does not add the {} init container: {ops:?}", contract::SIDECAR_CONTAINER);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub enum Schedule {
    /// Next review as soon as the last is answered.
    Closed,
    /// Each connection sends one review every `per_connection`; latency counts from when
    /// it was due.
    Rate { per_connection: Duration },
}

/// What one phase measured.
#[derive(Debug, Default)]
pub struct Phase {
    pub wall: Duration,
    pub latencies: Vec<Duration>,
    pub failed: usize,
    /// Failures after the certificate files were rotated.
    pub failed_after_rotation: usize,
    /// The webhook's own `duration_ms` of each review (decode, owner lookup, inject; not
    /// TLS, HTTP, the log line or serialisation), from its log.
    pub handler: Vec<Duration>,
    pub reconnects: usize,
    pub errors: Vec<String>,
}

impl Phase {
    pub fn ok(&self) -> usize {
        self.latencies.len()
    }

    pub fn rate(&self) -> f64 {
        self.ok() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.failed += other.failed;
        self.failed_after_rotation += other.failed_after_rotation;
        self.reconnects += other.reconnects;
        for e in other.errors {
            if self.errors.len() < 5 && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
    }
}

/// `conns` connections for `duration`; failures after `rotated` turned true are counted
/// apart.
pub async fn run_phase(
    target: &Arc<Target>,
    conns: usize,
    schedule: Schedule,
    duration: Duration,
    rotated: &Arc<AtomicBool>,
) -> Phase {
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            // Spread the connections' schedules evenly over one interval.
            let first = match schedule {
                Schedule::Closed => start,
                Schedule::Rate { per_connection } => start + per_connection.mul_f64(i as f64 / conns as f64),
            };
            tokio::spawn(worker(target.clone(), schedule, first, end, rotated.clone()))
        })
        .collect();
    let mut phase = Phase::default();
    for w in workers {
        match w.await {
            Ok(p) => phase.merge(p),
            Err(e) => {
                phase.failed += 1;
                phase.errors.push(format!("worker: {e}"));
            }
        }
    }
    phase.wall = start.elapsed().min(duration.max(Duration::from_millis(1)));
    phase
}

async fn worker(
    target: Arc<Target>,
    schedule: Schedule,
    first: Instant,
    end: Instant,
    rotated: Arc<AtomicBool>,
) -> Phase {
    let mut phase = Phase::default();
    let mut sender: Option<Sender> = None;
    let mut due = first;
    let mut connected_once = false;
    loop {
        let started = match schedule {
            Schedule::Closed => Instant::now(),
            Schedule::Rate { per_connection } => {
                tokio::time::sleep_until(due).await;
                let this = due;
                due += per_connection;
                this
            }
        };
        if started >= end {
            break;
        }
        if sender.is_none() {
            match connect(&target).await {
                Ok((s, _)) => {
                    phase.reconnects += usize::from(connected_once);
                    connected_once = true;
                    sender = Some(s);
                }
                Err(e) => {
                    phase.failed += 1;
                    phase.failed_after_rotation += usize::from(rotated.load(Ordering::Relaxed));
                    phase.errors.truncate(4);
                    phase.errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match post(s, &target).await {
            Ok(_) => phase.latencies.push(started.elapsed()),
            Err(e) => {
                phase.failed += 1;
                phase.failed_after_rotation += usize::from(rotated.load(Ordering::Relaxed));
                phase.errors.truncate(4);
                phase.errors.push(e);
                sender = None;
            }
        }
    }
    phase
}

/// A line of `/proc/<pid>/status`, without its label.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    Some(line[field.len()..].trim().to_string())
}

/// The cores `pid` may run on.
pub fn cpus_allowed(pid: u32) -> Option<String> {
    status_field(pid, "Cpus_allowed_list:")
}

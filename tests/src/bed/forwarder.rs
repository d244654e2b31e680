//! A loopback TCP forwarder standing in for kube-proxy in front of one Service: it listens
//! on `127.0.0.1:<free port>`, watches the Service's EndpointSlices (label
//! `kubernetes.io/service-name`), and sends each NEW connection to the local stand-in of
//! the pod listed ready at that moment (pod name → `127.0.0.1:<port>` by a function the
//! test passes in). Established connections stay where they were opened, as kube-proxy
//! keeps them (conntrack): when the Service moves, only a fence on the old server stops
//! writes on them. With no ready endpoint a new connection is closed at once; with more
//! than one (which the product must never cause) connections alternate between them, and
//! `max_ready` says so.
//!
//! Bounded: at most `MAX_CONNECTIONS` forwarded connections at once, a connect timeout to
//! the backend, and capped histories. Dropping the forwarder stops the listener, the watch
//! and every forwarded connection. Only loopback backends are ever connected to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwarded connections open at the same time, at most (more are closed at accept).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connect to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries kept in each history (older ones are dropped first).
const HISTORY: usize = 10_000;

/// The Service's ready endpoints changed (pod names, sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub at: Instant,
    pub ready: Vec<String>,
}

/// Where one new connection went (`None`: no ready endpoint or no backend for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub at: Instant,
    pub pod: Option<String>,
}

#[derive(Default)]
struct State {
    ready: Vec<String>,
    changes: Vec<Change>,
    routed: Vec<Routed>,
    max_ready: usize,
    next: usize,
}

type Backend = dyn Fn(&str) -> Option<SocketAddr> + Send + Sync;

pub struct Forwarder {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    /// Forwards `127.0.0.1:<free port>` to the ready endpoints of Service
    /// `namespace/service`, mapping each pod to `backend(pod)`.
    pub async fn start(
        client: Client,
        namespace: &str,
        service: &str,
        backend: impl Fn(&str) -> Option<SocketAddr> + Send + Sync + 'static,
    ) -> anyhow::Result<Forwarder> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let slices: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let selector = format!("kubernetes.io/service-name={service}");
        let tasks = vec![
            tokio::spawn(watch_slices(slices, selector, state.clone())),
            tokio::spawn(accept(listener, state.clone(), Arc::new(backend))),
        ];
        Ok(Forwarder { addr, state, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ldap://127.0.0.1:<port>`: the Service as a client inside the cluster sees it.
    pub fn ldap_url(&self) -> String {
        format!("ldap://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The pods listed ready now, sorted.
    pub fn ready(&self) -> Vec<String> {
        self.lock().ready.clone()
    }

    /// Every change of the ready endpoints seen so far.
    pub fn changes(&self) -> Vec<Change> {
        self.lock().changes.clone()
    }

    /// The first moment at or after `since` when exactly `pod` was listed ready.
    pub fn ready_only_after(&self, pod: &str, since: Instant) -> Option<Instant> {
        self.lock().changes.iter().find(|c| c.at >= since && c.ready == [pod]).map(|c| c.at)
    }

    /// Where each new connection went.
    pub fn routed(&self) -> Vec<Routed> {
        self.lock().routed.clone()
    }

    /// The most ready endpoints ever listed at once (the product keeps it ≤ 1).
    pub fn max_ready(&self) -> usize {
        self.lock().max_ready
    }

    /// Waits until exactly `pod` is listed ready.
    pub async fn wait_ready_only(&self, pod: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for(&format!("the Service to list exactly {pod} ready"), timeout, || async {
            match self.ready() {
                ready if ready == [pod] => Ok(()),
                ready => Err(format!("ready: {ready:?}")),
            }
        })
        .await
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn push_capped<T>(v: &mut Vec<T>, item: T) {
    if v.len() >= HISTORY {
        v.remove(0);
    }
    v.push(item);
}

/// The pods of a slice's ready endpoints.
fn ready_pods(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()))
        .collect()
}

fn publish(state: &Mutex<State>, slices: &BTreeMap<String, Vec<String>>) {
    let mut ready: Vec<String> = slices.values().flatten().cloned().collect();
    ready.sort();
    ready.dedup();
    let mut st = lock(state);
    if st.ready != ready {
        st.max_ready = st.max_ready.max(ready.len());
        st.ready.clone_from(&ready);
        push_capped(&mut st.changes, Change { at: Instant::now(), ready });
    }
}

/// Keeps `state.ready` equal to the ready endpoints of all the Service's slices, as
/// kube-proxy does from its own watch; a re-list replaces what the watch had built.
async fn watch_slices(api: Api<EndpointSlice>, selector: String, state: Arc<Mutex<State>>) {
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher(api, config).backoff(ldap_elector_contract::backoff::QUICK_WATCH.delays()).boxed();
    let mut slices: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Vec<String>>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                relist.get_or_insert_with(BTreeMap::new).insert(s.name_any(), ready_pods(&s));
            }
            Ok(watcher::Event::InitDone) => {
                slices = relist.take().unwrap_or_default();
                publish(&state, &slices);
            }
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(s.name_any(), ready_pods(&s));
                publish(&state, &slices);
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&s.name_any());
                publish(&state, &slices);
            }
            Err(e) => tracing::debug!(error = %e, "forwarder: EndpointSlice watch error (retrying)"),
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<Mutex<State>>, backend: Arc<Backend>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let client = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                tracing::debug!(error = %e, "forwarder: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            tracing::warn!("forwarder: {MAX_CONNECTIONS} connections open; refusing a new one");
            continue; // dropping `client` closes it
        }
        let pod = {
            let mut st = lock(&state);
            let pod = match st.ready.len() {
                0 => None,
                n => {
                    st.next = st.next.wrapping_add(1);
                    Some(st.ready[st.next % n].clone())
                }
            };
            push_capped(&mut st.routed, Routed { at: Instant::now(), pod: pod.clone() });
            pod
        };
        // Loopback only, whatever the mapping says.
        let Some(target) = pod.as_deref().and_then(|p| backend(p)).filter(|t| t.ip().is_loopback()) else {
            continue;
        };
        connections.spawn(forward(client, target));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let mut server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        // As for a dead pod behind kube-proxy: the client's connection just ends.
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

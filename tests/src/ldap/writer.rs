//! The client side of the Mirror-Mode rigs (`mirror_failover`, `chaos`): electors wired to
//! their own slapd, a forwarder standing in for kube-proxy in front of the write Service, a
//! writer that adds entries through it and records what was acknowledged, and the checks
//! on those acknowledgements (which server accepted each write, and was its pod the leader).
//!
//! Pod ordinal `o` ↔ slapd node `o + 1` (server ID `o + 1`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldap3::{Scope, SearchEntry};
use ldap_elector_contract as contract;
use tokio_util::sync::CancellationToken;

use crate::bed::forwarder::Forwarder;
use crate::ldap::conn::Conn;
use crate::ldap::slapd::{MirrorPair, SlapdNode, ADMIN_DN, ADMIN_PASSWORD, PEOPLE, SUFFIX};
use crate::measure::observer::Observer;
use crate::wait_for;
use crate::workloads::electors::Pair;

/// The runner environment of an elector that health-checks and fences ITS OWN slapd over
/// ldapi: each pod reaches its node through `<pair dir>/o<ordinal>.sock` (symlinks made
/// here), the test kubelet expands `{ordinal}` per pod. Debug logs, text format, no probe
/// server.
pub fn elector_env(slapd: &MirrorPair) -> anyhow::Result<Vec<(String, String)>> {
    for ordinal in 0..2u32 {
        let link = slapd.dir.join(format!("o{ordinal}.sock"));
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(slapd.node(ordinal + 1).socket(), link)?;
        }
    }
    let n1 = slapd.node(1).ldapi_url();
    let ldapi = format!("{}%2Fo{{ordinal}}.sock", n1.strip_suffix("%2Fn1%2Fldapi").unwrap_or(&n1));
    Ok(vec![
        ("ELECTOR_PROBE_ADDR".to_string(), "off".to_string()),
        ("ELECTOR_LOG_FORMAT".into(), "text".into()),
        ("ELECTOR_LOG".into(), "info,ldap_elector=debug".into()),
        (contract::ENV_HEALTH_CHECK.into(), format!("{ldapi}?base={SUFFIX}")),
        (contract::ENV_FENCE_LDAPI.into(), ldapi),
    ])
}

/// A forwarder for the write Service `service` of `pair`, each pod mapped to its slapd.
pub async fn forwarder(pair: &Pair, slapd: &MirrorPair, service: &str) -> anyhow::Result<Forwarder> {
    let backends: HashMap<String, SocketAddr> =
        (0..2u32).map(|o| (pair.pod(o), SocketAddr::from(([127, 0, 0, 1], slapd.node(o + 1).port())))).collect();
    Forwarder::start(pair.client.clone(), &pair.namespace, service, move |pod| backends.get(pod).copied()).await
}

/// The slapd node of `pod` (ordinal + 1).
pub fn node_of<'a>(slapd: &'a MirrorPair, pod: &str) -> &'a SlapdNode {
    slapd.node(contract::split_pod_name(pod).map_or(0, |(_, o)| o.min(1)) + 1)
}

// ---------------------------------------------------------------------------------------
// The writer: one client of the write Service.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Refused(u32),
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Attempt {
    pub uid: String,
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

/// Pace and bounds of a writer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Pause between two attempts.
    pub pace: Duration,
    /// How long one connect (TCP and bind) may take before the client tries a new one.
    pub connect_timeout: Duration,
    pub max_attempts: u64,
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pace: Duration::from_millis(10),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 200_000,
            max_time: Duration::from_secs(600),
        }
    }
}

/// A connection (with its bind) the writer could not open: not an attempt (no write was
/// sent), kept to explain gaps between attempts.
#[derive(Clone, Debug)]
pub struct ConnectFailure {
    pub start: Instant,
    pub end: Instant,
    pub error: String,
}

/// What the writer records, shared with its task.
#[derive(Clone, Default)]
struct Logs {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    connect_failures: Arc<Mutex<Vec<ConnectFailure>>>,
}

pub struct Writer {
    logs: Logs,
    /// Held by the writer during each attempt; the test takes it to pause the writer.
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(url: String) -> Writer {
        Writer::start_with(url, Limits::default())
    }

    pub fn start_with(url: String, limits: Limits) -> Writer {
        let logs = Logs::default();
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(url, limits, logs.clone(), gate.clone(), stop.clone()));
        Writer { logs, gate, stop, task }
    }

    pub fn connect_failures(&self) -> Vec<ConnectFailure> {
        self.logs.connect_failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.logs.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn acked(&self) -> Vec<Attempt> {
        self.attempts().into_iter().filter(|a| a.outcome == Outcome::Acked).collect()
    }

    /// Pauses the writer (after its current attempt) until the guard is dropped.
    pub async fn pause(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.gate.clone().lock_owned().await
    }

    /// The first acknowledged write sent at or after `since`.
    pub async fn wait_ack_after(&self, since: Instant, timeout: Duration) -> anyhow::Result<Attempt> {
        wait_for("an acknowledged write through the Service", timeout, || async {
            let attempts = self.attempts();
            match attempts.iter().find(|a| a.start >= since && a.outcome == Outcome::Acked) {
                Some(a) => Ok(a.clone()),
                None => Err(format!("last attempts: {:?}", attempts.iter().rev().take(3).collect::<Vec<_>>())),
            }
        })
        .await
    }

    /// Stops the writer (bounded) and returns every attempt it made.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let attempts = self.logs.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        attempts
    }
}

async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Conn> {
    let mut conn = Conn::open_within(url, timeout).await?;
    conn.ldap
        .with_timeout(timeout.min(Duration::from_secs(2)))
        .simple_bind(ADMIN_DN, ADMIN_PASSWORD)
        .await?
        .success()?;
    Ok(conn)
}

/// Adds `uid=wNNNNNN` one after the other through `url`; a new connection after any error
/// (as a client following the Service does). Bounded in attempts and time.
async fn write_loop(
    url: String,
    limits: Limits,
    logs: Logs,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
) {
    let deadline = Instant::now() + limits.max_time;
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    for _ in 0..limits.max_attempts * 2 {
        if stop.is_cancelled() || Instant::now() >= deadline || seq >= limits.max_attempts {
            return;
        }
        {
            let _turn = tokio::select! {
                g = gate.lock() => g,
                _ = stop.cancelled() => return,
            };
            let started = Instant::now();
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(&url, limits.connect_timeout).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        let failure = ConnectFailure { start: started, end: Instant::now(), error: format!("{e:#}") };
                        logs.connect_failures.lock().unwrap_or_else(|p| p.into_inner()).push(failure);
                        drop(_turn);
                        tokio::time::sleep(limits.pace * 2).await;
                        continue;
                    }
                },
            };
            seq += 1;
            let uid = format!("w{seq:06}");
            let start = Instant::now();
            let outcome = match c.add_person(&uid).await {
                Ok(r) if r.rc == 0 => Outcome::Acked,
                Ok(r) => Outcome::Refused(r.rc),
                Err(e) => Outcome::Failed(e.to_string()),
            };
            let end = Instant::now();
            if outcome != Outcome::Acked {
                conn = None;
            }
            logs.attempts.lock().unwrap_or_else(|p| p.into_inner()).push(Attempt { uid, start, end, outcome });
        }
        tokio::time::sleep(limits.pace).await;
    }
}

// ---------------------------------------------------------------------------------------
// Checks on what was acknowledged.

/// The server ID in the entryCSN of every `uid=w…` entry on `node`.
pub async fn entry_server_ids(node: &SlapdNode) -> anyhow::Result<HashMap<String, u32>> {
    let mut conn = node.admin().await?;
    let (entries, _) = conn
        .ldap
        .with_timeout(Duration::from_secs(60))
        .search(PEOPLE, Scope::OneLevel, "(uid=w*)", vec!["uid", "entryCSN"])
        .await?
        .success()?;
    let mut sids = HashMap::new();
    for entry in entries {
        let entry = SearchEntry::construct(entry);
        let first = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).cloned();
        let (Some(uid), Some(csn)) = (first("uid"), first("entryCSN")) else { continue };
        // 20250101120000.123456Z#000000#001#000000: the third field is the server ID (hex).
        if let Some(sid) = csn.split('#').nth(2).and_then(|s| u32::from_str_radix(s, 16).ok()) {
            sids.insert(uid, sid);
        }
    }
    Ok(sids)
}

/// The observer's "became leader" events since `since`, in order.
pub fn leader_history(observer: &Observer, since: Instant) -> Vec<(Instant, String)> {
    let mut history = Vec::new();
    let mut from = since;
    for _ in 0..10_000 {
        let Some((pod, at)) = observer.new_leader_after(None, from) else { break };
        history.push((at, pod));
        from = at + Duration::from_nanos(1);
    }
    history
}

/// Acknowledged writes that a standby accepted, or whose accepting server is unknown, one
/// line each (`epoch`: the zero of the printed times).
///
/// The server that accepted a write is the server ID in its entryCSN (`sids`); its pod
/// (`pod_of_sid`) must be the one the observer saw labelled leader when the write was sent
/// (`history`: [`leader_history`]), or — the observer's watch lags, and a new leader lifts
/// its fence as soon as its label write returns — the one seen becoming leader between
/// the send and `lag` after the answer.
pub fn accepted_by_standby(
    acked: &[&Attempt],
    sids: &HashMap<String, u32>,
    history: &[(Instant, String)],
    pod_of_sid: impl Fn(u32) -> String,
    lag: Duration,
    epoch: Instant,
) -> Vec<String> {
    let leader_at = |t: Instant| history.iter().rev().find(|(at, _)| *at <= t).map(|(_, p)| p.as_str());
    let mut problems = Vec::new();
    for a in acked {
        let Some(sid) = sids.get(&a.uid) else {
            problems.push(format!("{} was acknowledged but has no entryCSN", a.uid));
            continue;
        };
        let pod = pod_of_sid(*sid);
        let was_leader = leader_at(a.start) == Some(pod.as_str())
            || history.iter().any(|(at, p)| *p == pod && *at > a.start && *at <= a.end + lag);
        if !was_leader {
            problems.push(format!(
                "{} accepted by server {sid} ({pod}) at +{:.3}s while the observer saw {:?} as leader",
                a.uid,
                a.start.saturating_duration_since(epoch).as_secs_f64(),
                leader_at(a.start)
            ));
        }
    }
    problems
}

/// The uids of writes the client never saw acknowledged (failed or cut off).
pub fn unacknowledged(attempts: &[Attempt]) -> std::collections::HashSet<String> {
    attempts.iter().filter(|a| a.outcome != Outcome::Acked).map(|a| a.uid.clone()).collect()
}

/// A write the client saw fail may still be committed on the slapd that was killed under it
/// and never replicate (the contextCSNs converge all the same): not a lost acknowledged
/// write, but the servers differ. Reported, not failed on; the entry-level audit of
/// docs/divergence.md is what detects it in production.
pub fn report_one_sided(one_sided: &[String], after: &str) {
    if !one_sided.is_empty() {
        println!("          DIVERGED after the {after}: unacknowledged writes on one server only: {one_sided:?}");
    }
}

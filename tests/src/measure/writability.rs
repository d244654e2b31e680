//! An independent writability observer for the real node: it probes BOTH slapd servers at
//! their pod IPs every [`PROBE_PERIOD`] with a modify carrying the No-Op control (answered
//! `16654 noOperation` by a writable server, `53` by a fenced one; nothing changes), and
//! records when each accepted one. The pure checks below turn the probes, the acknowledged
//! writes of a client (`crate::ldap::writer::Writer`) and the write Service's ready
//! endpoints (`observer::Observer::endpoint_history`) into violations:
//!
//! - [`overlapping`]: an instant at which both servers may have been writable. A probe only
//!   proves its server writable somewhere between its send and its answer, and consecutive
//!   accepted probes are assumed writable in between, so the check is conservative.
//! - [`missing`]: acknowledged writes not readable after convergence.
//! - [`endpoint_violations`]: more than one ready endpoint at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use tokio_util::sync::CancellationToken;

use crate::ldap::slapd::{ADMIN_DN, ADMIN_PASSWORD, PEOPLE, SUFFIX};

/// How often each server is probed (the issue asks for ≤ 50 ms).
pub const PROBE_PERIOD: Duration = Duration::from_millis(25);
/// A probe not answered within this is `Failed` (a frozen server answers after the thaw; an
/// answer that late would prove nothing about the instant it was sent).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// OpenLDAP's No-Op control (in its experimental arc), and the result code of a writable
/// server.
const NOOP_CONTROL: &str = "1.3.6.1.4.1.4203.666.5.2";
const RC_NOOP: u32 = 16654;
const RC_SUCCESS: u32 = 0;
/// `unwillingToPerform`: what a fenced (`olcReadOnly`) slapd answers.
pub const RC_FENCED: u32 = 53;

/// What a probe got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The server would have applied the write.
    Writable,
    /// An LDAP error (53 when fenced).
    Refused(u32),
    /// No answer in time, no connection, no pod IP.
    Failed,
}

/// One probe of server `server` (0 or 1), times from the observer's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub server: usize,
    pub sent: Duration,
    pub received: Duration,
    pub answer: Answer,
}

/// A span during which `server` is taken as writable: from the send of the first of a run of
/// accepted probes to the answer of its last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub server: usize,
    pub from: Duration,
    pub to: Duration,
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server {} writable +{:.3}s..+{:.3}s", self.server, self.from.as_secs_f64(), self.to.as_secs_f64())
    }
}

/// The writable intervals of each server, in order of start. Any probe that was not
/// accepted ends a run.
pub fn writable_intervals(probes: &[Probe]) -> Vec<Interval> {
    let mut by_server: BTreeMap<usize, Vec<&Probe>> = BTreeMap::new();
    for p in probes {
        by_server.entry(p.server).or_default().push(p);
    }
    let mut intervals = Vec::new();
    for (server, mut list) in by_server {
        list.sort_by_key(|p| p.sent);
        let mut open: Option<Interval> = None;
        for p in list {
            match (p.answer, open.as_mut()) {
                (Answer::Writable, Some(i)) => i.to = i.to.max(p.received),
                (Answer::Writable, None) => open = Some(Interval { server, from: p.sent, to: p.received }),
                (_, _) => intervals.extend(open.take()),
            }
        }
        intervals.extend(open);
    }
    intervals.sort_by_key(|i| (i.from, i.server));
    intervals
}

/// Pairs of intervals of different servers that share an instant.
pub fn overlapping(intervals: &[Interval]) -> Vec<(Interval, Interval)> {
    let mut found = Vec::new();
    for (i, a) in intervals.iter().enumerate() {
        for b in &intervals[i + 1..] {
            if a.server != b.server && a.from <= b.to && b.from <= a.to {
                found.push((*a, *b));
            }
        }
    }
    found
}

/// Acknowledged uids that `present` lacks, in acknowledgement order.
pub fn missing(acked: &[String], present: &[String]) -> Vec<String> {
    let present: HashSet<&str> = present.iter().map(String::as_str).collect();
    acked.iter().filter(|u| !present.contains(u.as_str())).cloned().collect()
}

/// Probes refused with another code than [`RC_FENCED`]: the observer could not tell whether
/// the server was writable (a broken probe must not pass for a fenced server).
pub fn unexplained(probes: &[Probe]) -> Vec<Probe> {
    probes.iter().filter(|p| matches!(p.answer, Answer::Refused(rc) if rc != RC_FENCED)).copied().collect()
}

/// Snapshots of the write Service's ready endpoints with more than one of them.
pub fn endpoint_violations<T: Copy>(history: &[(T, Vec<String>)]) -> Vec<(T, Vec<String>)> {
    history.iter().filter(|(_, ready)| ready.len() > 1).cloned().collect()
}

/// The probes around `at` (±`window`), one line each, for failure messages.
pub fn probes_around(probes: &[Probe], at: Duration, window: Duration) -> String {
    probes
        .iter()
        .filter(|p| p.received + window >= at && p.sent <= at + window)
        .map(|p| {
            format!(
                "  server {} sent +{:.3}s answered +{:.3}s {:?}",
                p.server,
                p.sent.as_secs_f64(),
                p.received.as_secs_f64(),
                p.answer
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every overlap with the probes around it; empty when there is none.
pub fn overlap_report(probes: &[Probe]) -> String {
    overlapping(&writable_intervals(probes))
        .iter()
        .map(|(a, b)| {
            let at = a.from.max(b.from);
            format!("{a} and {b}:\n{}", probes_around(probes, at, Duration::from_millis(300)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// The live prober.

/// Probes the two pods (by name, at whatever IP they have now) until stopped.
pub struct Prober {
    probes: Arc<Mutex<Vec<Probe>>>,
    epoch: Instant,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Prober {
    /// Starts watching `pods` in `namespace` for their IPs and probing their slapd on `port`.
    pub fn start(client: Client, namespace: &str, pods: [String; 2], port: u16, epoch: Instant) -> Prober {
        let probes = Arc::new(Mutex::new(Vec::new()));
        let ips: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let stop = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(follow_ips(Api::namespaced(client, namespace), ips.clone()))];
        for (server, pod) in pods.into_iter().enumerate() {
            let ctx = ProbeLoop { server, pod, port, epoch, ips: ips.clone(), probes: probes.clone() };
            tasks.push(tokio::spawn(ctx.run(stop.clone())));
        }
        Prober { probes, epoch, stop, tasks }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn probes(&self) -> Vec<Probe> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The answer of `server`'s latest probe.
    pub fn last_answer(&self, server: usize) -> Option<Answer> {
        self.probes().iter().rev().find(|p| p.server == server).map(|p| p.answer)
    }

    /// The first probe of `server` sent at or after `since` with an answer matching `pred`.
    pub fn first_after(&self, server: usize, since: Instant, pred: impl Fn(Answer) -> bool) -> Option<Probe> {
        let since = since.saturating_duration_since(self.epoch);
        self.probes().into_iter().find(|p| p.server == server && p.sent >= since && pred(p.answer))
    }

    /// Stops probing; returns every probe.
    pub async fn stop(mut self) -> Vec<Probe> {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.probes()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps `ips` (pod name → pod IP) current from a watch.
async fn follow_ips(api: Api<Pod>, ips: Arc<Mutex<BTreeMap<String, String>>>) {
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let ip_of = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
        let mut map = ips.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => match ip_of(&p) {
                Some(ip) => map.insert(p.name_any(), ip),
                None => map.remove(&p.name_any()),
            },
            Ok(watcher::Event::Delete(p)) => map.remove(&p.name_any()),
            _ => None,
        };
    }
}

struct ProbeLoop {
    server: usize,
    pod: String,
    port: u16,
    epoch: Instant,
    ips: Arc<Mutex<BTreeMap<String, String>>>,
    probes: Arc<Mutex<Vec<Probe>>>,
}

impl ProbeLoop {
    async fn run(self, stop: CancellationToken) {
        let mut conn: Option<(String, Ldap)> = None;
        let mut tick = tokio::time::interval(PROBE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_cancelled() {
            tick.tick().await;
            let ip = self.ips.lock().unwrap_or_else(|p| p.into_inner()).get(&self.pod).cloned();
            let Some(ip) = ip else { continue };
            let sent = self.epoch.elapsed();
            if conn.as_ref().is_none_or(|(at, _)| *at != ip) {
                conn = connect(&format!("ldap://{ip}:{}", self.port)).await.ok().map(|l| (ip.clone(), l));
            }
            let answer = match conn.as_mut() {
                Some((_, ldap)) => noop_modify(ldap).await,
                None => Answer::Failed,
            };
            if answer == Answer::Failed {
                conn = None;
            }
            let probe = Probe { server: self.server, sent, received: self.epoch.elapsed(), answer };
            self.probes.lock().unwrap_or_else(|p| p.into_inner()).push(probe);
        }
    }
}

/// A connection bound as the rootDN, within [`PROBE_TIMEOUT`] each step.
pub async fn connect(url: &str) -> anyhow::Result<Ldap> {
    let settings = LdapConnSettings::new().set_conn_timeout(PROBE_TIMEOUT);
    let (conn, mut ldap) = tokio::time::timeout(PROBE_TIMEOUT, LdapConnAsync::with_settings(settings, url)).await??;
    ldap3::drive!(conn);
    ldap.with_timeout(PROBE_TIMEOUT).simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
    Ok(ldap)
}

async fn noop_modify(ldap: &mut Ldap) -> Answer {
    let noop = RawControl { ctype: NOOP_CONTROL.to_string(), crit: true, val: None };
    let change = vec![Mod::Replace("description", HashSet::from(["writability probe"]))];
    match ldap.with_controls(noop).with_timeout(PROBE_TIMEOUT).modify(PEOPLE, change).await {
        Ok(r) if r.rc == RC_NOOP || r.rc == RC_SUCCESS => Answer::Writable,
        Ok(r) => Answer::Refused(r.rc),
        Err(_) => Answer::Failed,
    }
}

/// The uids under `ou=people` on the server at `url`, sorted.
pub async fn uids(url: &str) -> anyhow::Result<Vec<String>> {
    values(url, PEOPLE, Scope::OneLevel, "(uid=*)", "uid").await
}

/// The suffix's contextCSN values on the server at `url`, sorted.
pub async fn context_csn(url: &str) -> anyhow::Result<Vec<String>> {
    values(url, SUFFIX, Scope::Base, "(objectClass=*)", "contextCSN").await
}

/// Every value of `attribute` in the entries `filter` finds, sorted (bound as the rootDN).
async fn values(url: &str, base: &str, scope: Scope, filter: &str, attribute: &str) -> anyhow::Result<Vec<String>> {
    let mut ldap = connect_patiently(url).await?;
    let (entries, _) =
        ldap.with_timeout(Duration::from_secs(30)).search(base, scope, filter, vec![attribute]).await?.success()?;
    let mut found: Vec<String> = entries
        .into_iter()
        .flat_map(|e| SearchEntry::construct(e).attrs.remove(attribute).unwrap_or_default())
        .collect();
    found.sort();
    let _ = ldap.unbind().await;
    Ok(found)
}

async fn connect_patiently(url: &str) -> anyhow::Result<Ldap> {
    let timeout = Duration::from_secs(5);
    let settings = LdapConnSettings::new().set_conn_timeout(timeout);
    let (conn, mut ldap) = tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, url)).await??;
    ldap3::drive!(conn);
    ldap.with_timeout(timeout).simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
    Ok(ldap)
}

/// Waits until both servers hold the same uids, except uids in `unacknowledged` (a write in
/// flight at a kill may be on one server only); returns server 0's uids.
pub async fn wait_converged(
    urls: &[String; 2],
    unacknowledged: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    crate::wait_for("both slapd servers to hold the same entries", timeout, || async {
        let (a, b) =
            (uids(&urls[0]).await.map_err(|e| e.to_string())?, uids(&urls[1]).await.map_err(|e| e.to_string())?);
        let one_sided: Vec<&String> =
            a.iter().filter(|u| !b.contains(u)).chain(b.iter().filter(|u| !a.contains(u))).collect();
        if one_sided.iter().all(|u| unacknowledged.contains(*u)) {
            Ok(a)
        } else {
            Err(format!(
                "{} vs {} entries; differ: {:?}",
                a.len(),
                b.len(),
                one_sided.iter().take(10).collect::<Vec<_>>()
            ))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn probe(server: usize, sent: u64, received: u64, answer: Answer) -> Probe {
        Probe { server, sent: ms(sent), received: ms(received), answer }
    }

    /// A clean handover: server 0 fenced at ~100 ms, server 1 writable from ~200 ms.
    fn handover() -> Vec<Probe> {
        vec![
            probe(0, 0, 2, Answer::Writable),
            probe(0, 50, 52, Answer::Writable),
            probe(1, 60, 61, Answer::Refused(53)),
            probe(0, 100, 101, Answer::Refused(53)),
            probe(1, 110, 112, Answer::Refused(53)),
            probe(0, 150, 151, Answer::Refused(53)),
            probe(1, 200, 203, Answer::Writable),
            probe(1, 250, 251, Answer::Writable),
        ]
    }

    #[test]
    fn consecutive_accepted_probes_form_one_interval_and_a_refusal_ends_it() {
        let intervals = writable_intervals(&handover());
        assert_eq!(
            intervals,
            vec![Interval { server: 0, from: ms(0), to: ms(52) }, Interval { server: 1, from: ms(200), to: ms(251) }]
        );
        assert!(overlapping(&intervals).is_empty());
        assert_eq!(overlap_report(&handover()), "");
    }

    #[test]
    fn a_bad_timeline_with_two_writable_servers_is_caught() {
        let mut probes = handover();
        // Server 0 still writable at 220 ms, after server 1 took over.
        probes.push(probe(0, 220, 222, Answer::Writable));
        let found = overlapping(&writable_intervals(&probes));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0.server, 1);
        assert_eq!(found[0].1, Interval { server: 0, from: ms(220), to: ms(222) });
        assert!(overlap_report(&probes).contains("server 0 writable +0.220s"));
    }

    #[test]
    fn a_failed_probe_also_ends_an_interval_and_an_unanswered_one_proves_nothing() {
        // Server 0 frozen: its probe at 100 ms fails; server 1 takes over; server 0 comes
        // back fenced.
        let probes = vec![
            probe(0, 0, 1, Answer::Writable),
            probe(0, 100, 350, Answer::Failed),
            probe(1, 200, 201, Answer::Writable),
            probe(0, 400, 401, Answer::Refused(53)),
            probe(1, 400, 402, Answer::Writable),
        ];
        assert!(overlapping(&writable_intervals(&probes)).is_empty());
        // ...but coming back writable is a violation.
        let mut bad = probes.clone();
        bad[3].answer = Answer::Writable;
        assert_eq!(overlapping(&writable_intervals(&bad)).len(), 1);
    }

    #[test]
    fn intervals_that_touch_count_as_overlapping() {
        let probes = vec![probe(0, 0, 10, Answer::Writable), probe(1, 10, 11, Answer::Writable)];
        assert_eq!(overlapping(&writable_intervals(&probes)).len(), 1);
    }

    #[test]
    fn refusals_other_than_the_fence_are_unexplained() {
        assert!(unexplained(&handover()).is_empty());
        let mut probes = handover();
        probes.push(probe(1, 300, 301, Answer::Refused(12)));
        assert_eq!(unexplained(&probes), vec![probe(1, 300, 301, Answer::Refused(12))]);
    }

    #[test]
    fn lost_writes_are_the_acknowledged_ones_not_present() {
        let acked: Vec<String> = ["w1", "w2", "w3"].map(String::from).into();
        assert!(missing(&acked, &["w3".into(), "w2".into(), "w1".into(), "w9".into()]).is_empty());
        assert_eq!(missing(&acked, &["w1".into(), "w3".into()]), vec!["w2".to_string()]);
    }

    #[test]
    fn two_ready_endpoints_at_once_are_a_violation() {
        let good = vec![(1, vec!["ldap-0".to_string()]), (2, vec![]), (3, vec!["ldap-1".to_string()])];
        assert!(endpoint_violations(&good).is_empty());
        let mut bad = good.clone();
        bad.push((4, vec!["ldap-0".to_string(), "ldap-1".to_string()]));
        assert_eq!(endpoint_violations(&bad), vec![(4, vec!["ldap-0".to_string(), "ldap-1".to_string()])]);
    }
}

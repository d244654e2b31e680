//! Measurements on a running `electors::Pair`, shared by `make bench` and `make compare`:
//! handover/failover latencies and time to the first leader as seen by the observer's
//! watch, API requests per minute from the API server's audit log, RSS and CPU time from
//! `/proc`, and the machine the figures were taken on. No assertions on time: the
//! machines are noisy; the binaries print what they measured.
//!
//! Also the independent observer of role labels (`observer`) and the admission load on the
//! release webhook (`webhook_load`).

pub mod observer;
pub mod webhook_load;
pub mod writability;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use ldap_elector_contract::SIDECAR_CONTAINER;

use crate::bed::process::Signal;
use crate::bed::proxy::{Mode, Proxy};
use crate::wait_for;
use crate::workloads::electors::Pair;

/// `BENCH_RUNS` (default 20): how many times each latency is measured.
pub fn runs() -> usize {
    env_number("BENCH_RUNS").unwrap_or(20)
}

/// `BENCH_WINDOW` (seconds, default 60): the steady-state window for request counts.
pub fn window() -> Duration {
    Duration::from_secs(env_number("BENCH_WINDOW").unwrap_or(60))
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The machine figures were measured on: `nproc` and the CPU model from `/proc/cpuinfo`.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cores: usize,
    pub model: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine { cores, model }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (nproc {})", self.model, self.cores)
    }
}

/// The `p`th percentile (nearest rank; 100 = max) of `samples`; zero if there are none.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p * s.len()).div_ceil(100)).clamp(1, s.len()) - 1;
    s[idx]
}

/// A duration in milliseconds, e.g. `412 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `p50 / p99 / max` of `samples`.
pub fn summary(samples: &[Duration]) -> String {
    format!("{} / {} / {}", ms(percentile(samples, 50)), ms(percentile(samples, 99)), ms(percentile(samples, 100)))
}

/// Repeats `runs` times: fault the leader's sidecar with `signal`, time until another pod
/// is labelled leader (observer timestamps), wait until the faulted process has exited,
/// restart it and wait until it logs `elector started` again.
pub async fn failovers(pair: &Pair, runs: usize, signal: Signal) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let leader = pair.leader(Duration::from_secs(60)).await?;
        let starts = pair.log(&leader).matches("elector started").count();
        let fault = Instant::now();
        anyhow::ensure!(pair.signal(&leader, signal), "no elector process for {leader}");
        let (next, at) =
            pair.observer.wait_for_new_leader("a new leader", Some(&leader), fault, Duration::from_secs(60)).await?;
        samples.push(at - fault);
        eprintln!("{signal:?} run {run}: {leader} -> {next} in {:?}", at - fault);
        wait_for("the faulted elector to exit", Duration::from_secs(20), || async {
            match pair.kubelet.pid(&pair.namespace, &leader, SIDECAR_CONTAINER) {
                None => Ok(()),
                Some(pid) => Err(format!("pid {pid} still running")),
            }
        })
        .await?;
        pair.kubelet.restart(&pair.namespace, &leader, SIDECAR_CONTAINER).await?;
        wait_for("the restarted elector to run", Duration::from_secs(20), || async {
            if pair.log(&leader).matches("elector started").count() > starts {
                Ok(())
            } else {
                Err("starting")
            }
        })
        .await?;
    }
    Ok(samples)
}

/// Failovers on an API partition (see [`partitions`]).
#[derive(Clone, Debug, Default)]
pub struct Partitions {
    /// Cut → another pod labelled leader.
    pub samples: Vec<Duration>,
    /// Runs after which the old leader still carried the leader label once the network was
    /// back (for `settle`), so its sidecar had to be restarted to clear it.
    pub stale: usize,
}

/// Repeats `runs` times: cut the leader's connection to the API server (`proxies[ordinal]`
/// closes its connections and refuses new ones; the pair must run its sidecars through
/// `proxy::via_proxies`), time until another pod is labelled leader (observer timestamps),
/// restore the network, and give the old leader `settle` to lose its label. If it has not,
/// restart its sidecar (as for a crash) so the next run starts from one leader label.
pub async fn partitions(pair: &Pair, proxies: &[Proxy], runs: usize, settle: Duration) -> anyhow::Result<Partitions> {
    let mut result = Partitions::default();
    for run in 0..runs {
        let leader = pair.leader(Duration::from_secs(60)).await?;
        let ordinal = ldap_elector_contract::split_pod_name(&leader).map_or(usize::MAX, |(_, o)| o as usize);
        let proxy = proxies.get(ordinal).with_context(|| format!("no proxy for {leader}"))?;
        let fault = Instant::now();
        proxy.set(Mode::Cut);
        let next = pair
            .observer
            .wait_for_new_leader("a new leader during the partition", Some(&leader), fault, Duration::from_secs(60))
            .await;
        proxy.set(Mode::Pass);
        let (next, at) = next?;
        result.samples.push(at - fault);
        let single = wait_for("the old leader to lose its label", settle, || async {
            match pair.observer.leaders().as_slice() {
                [one] if *one == next => Ok(()),
                other => Err(format!("leaders: {other:?}")),
            }
        })
        .await;
        let stale = single.is_err();
        eprintln!(
            "partition run {run}: {leader} -> {next} in {:?}{}",
            at - fault,
            if stale { ", stale label" } else { "" }
        );
        if stale {
            result.stale += 1;
            restart_sidecar(pair, &leader).await?;
        }
    }
    Ok(result)
}

/// SIGTERM the sidecar of `pod`, wait until it has exited, start it again and wait until it
/// logs `elector started` again.
async fn restart_sidecar(pair: &Pair, pod: &str) -> anyhow::Result<()> {
    let starts = pair.log(pod).matches("elector started").count();
    pair.signal(pod, Signal::Term);
    wait_for("the sidecar to exit", Duration::from_secs(30), || async {
        match pair.kubelet.pid(&pair.namespace, pod, SIDECAR_CONTAINER) {
            None => Ok(()),
            Some(pid) => Err(format!("pid {pid} still running")),
        }
    })
    .await?;
    pair.kubelet.restart(&pair.namespace, pod, SIDECAR_CONTAINER).await?;
    wait_for("the restarted sidecar to run", Duration::from_secs(20), || async {
        if pair.log(pod).matches("elector started").count() > starts {
            Ok(())
        } else {
            Err("starting")
        }
    })
    .await
}

/// Repeats `runs` times: SIGTERM the sidecars of all `pods`, wait until all have exited and
/// no pod is labelled leader, start them all at once (concurrent container restarts) and
/// time until the first leader label.
pub async fn time_to_leader(pair: &Pair, pods: &[String], runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        for pod in pods {
            pair.signal(pod, Signal::Term);
        }
        wait_for("all candidates to stop and no leader label", Duration::from_secs(30), || async {
            let running: Vec<&String> =
                pods.iter().filter(|p| pair.kubelet.pid(&pair.namespace, p, SIDECAR_CONTAINER).is_some()).collect();
            let leaders = pair.observer.leaders();
            if running.is_empty() && leaders.is_empty() {
                Ok(())
            } else {
                Err(format!("running: {running:?}, leaders: {leaders:?}"))
            }
        })
        .await?;
        let start = Instant::now();
        let restarts = pods.iter().map(|pod| pair.kubelet.restart(&pair.namespace, pod, SIDECAR_CONTAINER));
        for result in futures::future::join_all(restarts).await {
            result?;
        }
        let (leader, at) = pair
            .observer
            .wait_for_new_leader("a leader among the fresh candidates", None, start, Duration::from_secs(60))
            .await?;
        samples.push(at - start);
        eprintln!("{} candidates, run {run}: {leader} after {:?}", pods.len(), at - start);
    }
    Ok(samples)
}

/// Moments at which the observer saw two or more pods labelled leader, in the timeline
/// entries from `from` on: how many episodes and how long they lasted in total.
#[derive(Clone, Copy, Debug, Default)]
pub struct DualLeaders {
    pub episodes: usize,
    pub total: Duration,
}

impl DualLeaders {
    /// Reads the observer's timeline lines (`+   1.234s pod -> role (leaders: [..])`).
    pub fn since(pair: &Pair, from: usize) -> DualLeaders {
        let mut result = DualLeaders::default();
        let mut since: Option<f64> = None;
        for line in pair.observer.timeline_from(from) {
            let at = line.trim_start_matches('+').split('s').next().and_then(|t| t.trim().parse::<f64>().ok());
            let leaders = line.rsplit_once("(leaders: [").map_or(0, |(_, l)| l.matches('"').count() / 2);
            match (since, leaders >= 2, at) {
                (None, true, Some(at)) => {
                    result.episodes += 1;
                    since = Some(at);
                }
                (Some(start), false, Some(at)) => {
                    result.total += Duration::from_secs_f64((at - start).max(0.0));
                    since = None;
                }
                _ => {}
            }
        }
        result
    }
}

impl fmt::Display for DualLeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.episodes == 0 {
            write!(f, "0")
        } else {
            write!(f, "{} ({} in total)", self.episodes, ms(self.total))
        }
    }
}

/// Resident set size and CPU time (user + system) of a process and its descendants (e.g.
/// a watchdog child), from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: Option<u64>,
    pub cpu: Option<Duration>,
}

impl Usage {
    pub fn of(pid: Option<u32>) -> Usage {
        let Some(pid) = pid else { return Usage::default() };
        let mut total = Usage::default();
        for pid in crate::bed::kubelet::with_descendants(pid) {
            let own = Usage::of_process(pid);
            total.rss_kib = add(total.rss_kib, own.rss_kib);
            total.cpu = add(total.cpu, own.cpu);
        }
        total
    }

    fn of_process(pid: u32) -> Usage {
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        });
        // Fields 14 and 15 of /proc/<pid>/stat (utime, stime) in clock ticks; the command
        // name may contain spaces, so count from the closing parenthesis.
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            Some(Duration::from_secs_f64(ticks as f64 / hz))
        });
        Usage { rss_kib, cpu }
    }
}

fn add<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// One sidecar at steady state.
#[derive(Clone, Debug)]
pub struct Member {
    pub pod: String,
    /// API requests per minute made with this pod's bound token.
    pub requests_per_minute: f64,
    /// `verb resource` → count over the window.
    pub verbs: BTreeMap<String, usize>,
    /// At the end of the window.
    pub usage: Usage,
    /// CPU time spent during the window.
    pub cpu_in_window: Option<Duration>,
}

impl Member {
    pub fn verbs(&self) -> String {
        self.verbs.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    }

    pub fn rss_mib(&self) -> String {
        self.usage.rss_kib.map_or_else(|| "?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
    }

    /// CPU milliseconds per minute during the window.
    pub fn cpu_ms_per_minute(&self, window: Duration) -> String {
        self.cpu_in_window
            .map_or_else(|| "?".into(), |c| format!("{:.0}", c.as_secs_f64() * 1000.0 * 60.0 / window.as_secs_f64()))
    }
}

/// Leader and follower over one steady window.
#[derive(Clone, Debug)]
pub struct SteadyState {
    pub window: Duration,
    pub leader: Member,
    pub follower: Member,
}

impl SteadyState {
    /// The Markdown table `make bench` prints.
    pub fn table(&self) -> String {
        let row = |what: &str, m: &Member| {
            format!(
                "| {what} {} | {:.1} | {} | {} | {} | {} |",
                m.pod,
                m.requests_per_minute,
                m.verbs(),
                m.usage.rss_kib.map_or_else(|| "?".into(), |k| k.to_string()),
                m.cpu_ms_per_minute(self.window),
                m.usage.cpu.map_or_else(|| "?".into(), |c| format!("{:.2}", c.as_secs_f64())),
            )
        };
        format!(
            "| steady state ({}s window) | API requests/min | by verb | RSS (KiB) | CPU ms/min in window | CPU s since start |\n\
             |---|---|---|---|---|---|\n{}\n{}\n\
             (a watch counts once, when its response starts; the renew period is 2 s → 30 renews/min)",
            self.window.as_secs(),
            row("leader", &self.leader),
            row("follower", &self.follower)
        )
    }
}

/// Lets start-up traffic settle for 10 s, then counts the API requests of the leader and a
/// follower in the audit log over `window` (the bed must have been started with `audit`)
/// and reads their RSS and CPU time.
pub async fn steady_state(pair: &Pair, window: Duration) -> anyhow::Result<SteadyState> {
    let leader = pair.leader(Duration::from_secs(60)).await?;
    let follower = if leader == pair.pod(0) { pair.pod(1) } else { pair.pod(0) };
    // Fixed-length measurement windows, not synchronisation: plain sleeps are right here.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let audit = pair.bed.dir.join("audit.log");
    let pid = |pod: &str| pair.kubelet.pid(&pair.namespace, pod, SIDECAR_CONTAINER);
    let before = std::fs::read_to_string(&audit)?.len();
    let cpu_before = [Usage::of(pid(&leader)).cpu, Usage::of(pid(&follower)).cpu];
    tokio::time::sleep(window).await;
    let log = std::fs::read_to_string(&audit)?;
    let member = |pod: &str, cpu_before: Option<Duration>| {
        let mut verbs = BTreeMap::<String, usize>::new();
        let mut n = 0usize;
        for line in log.get(before..).unwrap_or_default().lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let by_pod = event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] == pod;
            // A watch counts once, when its response starts; everything else when complete.
            if by_pod && event["stage"] == "ResponseStarted"
                || by_pod && event["stage"] == "ResponseComplete" && event["verb"] != "watch"
            {
                n += 1;
                let key = format!(
                    "{} {}",
                    event["verb"].as_str().unwrap_or("?"),
                    event["objectRef"]["resource"].as_str().unwrap_or("?")
                );
                *verbs.entry(key).or_default() += 1;
            }
        }
        let usage = Usage::of(pid(pod));
        Member {
            pod: pod.to_string(),
            requests_per_minute: n as f64 * 60.0 / window.as_secs_f64(),
            verbs,
            usage,
            cpu_in_window: usage.cpu.zip(cpu_before).map(|(after, before)| after.saturating_sub(before)),
        }
    };
    Ok(SteadyState { window, leader: member(&leader, cpu_before[0]), follower: member(&follower, cpu_before[1]) })
}

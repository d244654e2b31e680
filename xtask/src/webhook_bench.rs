//! `make webhook-bench`: load on the admission webhook, with a certificate rotation in the
//! middle. Prints numbers (no assertions on time — the machines are noisy):
//! - the RELEASE `ldap-elector-webhook` runs as its own process, pinned to one core with
//!   `taskset -c 0`, in files mode (`--reconcile=false`) as its ServiceAccount against a
//!   real bed; everything else (bed, load generator) is kept off that core when there is
//!   more than one;
//! - the load generator POSTs the `fresh-pod` AdmissionReview of the webhook's fixtures,
//!   pointed at a real opted-in StatefulSet (so the owner lookup is a cache hit; the API
//!   server's audit log shows whether it was), over N keep-alive connections (HTTP/1.1, or
//!   HTTP/2 with `WEBHOOK_BENCH_H2=1`) and checks every answer: 200, `allowed: true`, a
//!   patch, the request's uid;
//! - phase 1, saturation: closed loop (each connection sends the next review when the last
//!   one is answered) for `WEBHOOK_BENCH_SATURATE_SECS` (default 10): the most the webhook
//!   does on one core;
//! - phase 2, steady load: open loop at `WEBHOOK_BENCH_RATE` reviews/s (default 2000) for
//!   `WEBHOOK_BENCH_SECS` (default 60). Latency counts from when a review was *due*, so a
//!   stall is not hidden by the load generator waiting for it. Halfway, a new serving
//!   certificate (same CA, new key) replaces the files the webhook polls, the way the
//!   kubelet updates a Secret volume (new directory, atomic `..data` symlink swap). A
//!   prober opens a fresh TLS connection every 200 ms, sends one review, and records which
//!   leaf certificate it was served, until the new one shows up;
//! - webhook RSS (current and peak) and CPU time from `/proc`, log bytes per review.
//!
//! Other knobs: `WEBHOOK_BENCH_CONNS` (default 16); `WEBHOOK_BENCH_BINARY` (a webhook build
//! to run instead of the release one, e.g. with symbols for `perf`); `WEBHOOK_LOG` is passed
//! to the webhook (e.g. `WEBHOOK_LOG=warn` to see what the per-review log line costs).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use ldap_elector_tests::bed::BedOptions;
use ldap_elector_tests::measure::webhook_load::{
    self, connect, post, run_phase, status_field, Phase, Schedule, Setup, Target, WARM_UP, WEBHOOK_CORE,
};
use ldap_elector_tests::measure::{self, Machine, Usage};
use ldap_elector_tests::workloads::webhook::{WEBHOOK_NS, WEBHOOK_SA};
use ldap_elector_tests::Bed;
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;

/// How often the prober opens a fresh connection.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// After the run, how long to keep probing for the rotated certificate (the webhook polls
/// its files every `app::FILE_POLL_INTERVAL`, 10 s).
const ROTATION_GRACE: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

/// The knobs, from the environment.
#[derive(Clone, Debug)]
struct Settings {
    secs: u64,
    saturate_secs: u64,
    rate: f64,
    conns: usize,
    h2: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let s = Settings {
            secs: env_or("WEBHOOK_BENCH_SECS", 60)?,
            saturate_secs: env_or("WEBHOOK_BENCH_SATURATE_SECS", 10)?,
            rate: env_or("WEBHOOK_BENCH_RATE", 2000.0)?,
            conns: env_or("WEBHOOK_BENCH_CONNS", 16)?,
            h2: env_or("WEBHOOK_BENCH_H2", 0u8)? != 0,
        };
        if s.secs < 4 || s.conns == 0 || s.rate.is_nan() || s.rate <= 0.0 {
            bail!("need WEBHOOK_BENCH_SECS ≥ 4, WEBHOOK_BENCH_CONNS ≥ 1 and WEBHOOK_BENCH_RATE > 0: {s:?}");
        }
        Ok(s)
    }

    fn protocol(&self) -> &'static str {
        if self.h2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

pub fn run() -> anyhow::Result<()> {
    ldap_elector_tests::logging::init("warn,kube_client=off");
    let settings = Settings::from_env()?;
    let machine = Machine::detect();
    // Everything but the webhook (this process's threads, the bed's processes, which
    // inherit the mask) stays off the webhook's core, so "one core" means one core.
    let (runtime, pinned_away) = webhook_load::runtime_off_the_webhook_core(&machine)?;
    runtime.block_on(bench(settings, machine, pinned_away))
}

async fn bench(settings: Settings, machine: Machine, pinned_away: bool) -> anyhow::Result<()> {
    let bed = Bed::start_with(BedOptions { audit: true, ..Default::default() }).await?;

    let Setup {
        webhook,
        target,
        ca,
        mut certs,
        log,
        binary,
        pinned,
        affinity,
        idle_rss_kib: idle_rss,
        answer,
        first_leaf: old_leaf,
    } = Setup::start(&bed, settings.h2).await?;
    let not_rotated = Arc::new(AtomicBool::new(false));
    run_phase(&target, settings.conns, Schedule::Closed, WARM_UP, &not_rotated).await;

    let audit = bed.dir.join("audit.log");
    let audit_from = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    let log_from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let self_cpu_0 = own_cpu();
    let wpid = webhook.pid().to_string();
    let waits_0 = [runqueue_wait(&wpid), runqueue_wait("self")];

    // Phase 1: saturation.
    let cpu_0 = Usage::of(Some(webhook.pid())).cpu;
    let saturation =
        run_phase(&target, settings.conns, Schedule::Closed, secs(settings.saturate_secs), &not_rotated).await;
    let cpu_1 = Usage::of(Some(webhook.pid())).cpu;
    let self_cpu_1 = own_cpu();
    let log_1 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let waits_1 = [runqueue_wait(&wpid), runqueue_wait("self")];

    // Phase 2: steady rate, with the rotation halfway and the prober throughout.
    let steady_for = secs(settings.secs);
    let started = Instant::now();
    let rotated: Arc<Mutex<Option<Rotated>>> = Arc::default();
    let rotated_flag = Arc::new(AtomicBool::new(false));
    let rotation = tokio::spawn({
        let (rotated, flag) = (rotated.clone(), rotated_flag.clone());
        async move {
            tokio::time::sleep(steady_for / 2).await;
            let new_leaf = certs.rotate(&ca)?;
            *rotated.lock().unwrap_or_else(|p| p.into_inner()) = Some(Rotated { at: Instant::now(), leaf: new_leaf });
            flag.store(true, Ordering::Relaxed);
            anyhow::Ok(())
        }
    });
    let prober = tokio::spawn(probe(target.clone(), old_leaf.clone(), rotated.clone(), started + steady_for));
    let schedule = Schedule::Rate { per_connection: Duration::from_secs_f64(settings.conns as f64 / settings.rate) };
    let steady = run_phase(&target, settings.conns, schedule, steady_for, &rotated_flag).await;
    let cpu_2 = Usage::of(Some(webhook.pid())).cpu;
    let self_cpu_2 = own_cpu();
    let log_2 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let waits_2 = [runqueue_wait(&wpid), runqueue_wait("self")];
    rotation.await??;
    let mut probes = prober.await?;
    let rotated = rotated.lock().unwrap_or_else(|p| p.into_inner()).take().context("no rotation happened")?;
    // The poll may not have come round yet within a short run: keep handshaking a while.
    let mut served_new = probes.first_new;
    let deadline = Instant::now() + ROTATION_GRACE;
    while served_new.is_none() && Instant::now() < deadline {
        if let Ok((_, leaf)) = connect(&target).await {
            if leaf == rotated.leaf {
                served_new = Some(Instant::now());
            }
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    // Confirmation after the run: a fresh handshake gets the new leaf.
    let final_leaf = connect(&target).await.map(|(_, leaf)| leaf).ok();
    let confirmed = final_leaf.as_ref() == Some(&rotated.leaf);
    probes.rotation_at = Some(rotated.at.duration_since(started));

    let usage = Usage::of(Some(webhook.pid()));
    let peak_rss_kib = peak_rss(webhook.pid());
    let live_gets = owner_gets(&audit, audit_from);
    let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0).saturating_sub(log_from);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut saturation = saturation;
    let mut steady = steady;
    saturation.handler = handler_durations(&log_text, log_from, log_1);
    steady.handler = handler_durations(&log_text, log_1, log_2);
    let reloads = log_text.matches("reloaded TLS serving certificate").count();
    let unusable = log_text.matches("certificate files are unusable").count();
    webhook.stop(Duration::from_secs(15)).await;

    let report = Report {
        settings,
        machine,
        loadavg: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
        pinned,
        pinned_away,
        affinity,
        body_bytes: target.body.len(),
        response_bytes: answer.body_bytes,
        patch_bytes: answer.patch.len(),
        saturation,
        saturation_cpu: cpu_diff(cpu_1, cpu_0),
        saturation_client_cpu: self_cpu_1.saturating_sub(self_cpu_0),
        steady,
        steady_cpu: cpu_diff(cpu_2, cpu_1),
        steady_client_cpu: self_cpu_2.saturating_sub(self_cpu_1),
        saturation_waits: [cpu_diff(waits_1[0], waits_0[0]), cpu_diff(waits_1[1], waits_0[1])],
        steady_waits: [cpu_diff(waits_2[0], waits_1[0]), cpu_diff(waits_2[1], waits_1[1])],
        probes,
        rotation_to_served: served_new.map(|t| t.saturating_duration_since(rotated.at)),
        confirmed,
        reloads,
        unusable,
        idle_rss_kib: idle_rss,
        rss_kib: usage.rss_kib,
        peak_rss_kib,
        live_gets,
        log_bytes,
        binary_bytes: std::fs::metadata(&binary).map(|m| m.len()).ok(),
    };
    println!("\n{}", report.markdown());
    Ok(())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cpu_diff(after: Option<Duration>, before: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

/// The rotation, as the prober and the report see it.
struct Rotated {
    at: Instant,
    leaf: CertificateDer<'static>,
}

/// Fresh connections during the steady phase: which certificate each was served, and
/// whether its review succeeded.
#[derive(Debug, Default)]
struct Probes {
    latencies: Vec<Duration>,
    failed: usize,
    old: usize,
    new: usize,
    /// Served the old certificate after the new one had been seen.
    old_after_new: usize,
    other: usize,
    first_new: Option<Instant>,
    rotation_at: Option<Duration>,
    errors: Vec<String>,
}

async fn probe(
    target: Arc<Target>,
    old_leaf: CertificateDer<'static>,
    rotated: Arc<Mutex<Option<Rotated>>>,
    end: Instant,
) -> Probes {
    let mut probes = Probes::default();
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        ticker.tick().await;
        let started = Instant::now();
        let outcome = match connect(&target).await {
            Ok((mut sender, leaf)) => post(&mut sender, &target).await.map(|_| leaf),
            Err(e) => Err(format!("connect: {e}")),
        };
        match outcome {
            Ok(leaf) => {
                probes.latencies.push(started.elapsed());
                let new_leaf = rotated.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|r| r.leaf.clone());
                if leaf == old_leaf {
                    probes.old += 1;
                    probes.old_after_new += usize::from(probes.first_new.is_some());
                } else if Some(&leaf) == new_leaf.as_ref() {
                    probes.new += 1;
                    probes.first_new.get_or_insert(started);
                } else {
                    probes.other += 1;
                }
            }
            Err(e) => {
                probes.failed += 1;
                if probes.errors.len() < 5 {
                    probes.errors.push(e);
                }
            }
        }
    }
    probes
}

/// `duration_ms` of the webhook's "admission review" log lines between two byte offsets.
fn handler_durations(log: &str, from: u64, to: u64) -> Vec<Duration> {
    let part = log.get(from as usize..(to as usize).min(log.len())).unwrap_or_default();
    part.lines()
        .filter(|l| l.contains("\"admission review\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["duration_ms"].as_f64())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect()
}

/// Live GETs of StatefulSets by the webhook's ServiceAccount in the audit log since byte
/// `from`: owner lookups that missed the cache.
fn owner_gets(audit: &Path, from: u64) -> Option<usize> {
    let log = std::fs::read(audit).ok()?;
    let user = format!("system:serviceaccount:{WEBHOOK_NS}:{WEBHOOK_SA}");
    let tail = log.get(from as usize..).unwrap_or_default();
    let n = tail
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|e| {
            e["user"]["username"] == user.as_str()
                && e["verb"] == "get"
                && e["objectRef"]["resource"] == "statefulsets"
                && e["stage"] == "ResponseComplete"
        })
        .count();
    Some(n)
}

/// Peak resident set (`VmHWM`), KiB.
fn peak_rss(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")?.split_whitespace().next()?.parse().ok()
}

/// Time the threads of `pid` (or "self") spent runnable but waiting for a CPU, from
/// `/proc/<pid>/task/*/schedstat` (second field, ns).
fn runqueue_wait(pid: &str) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Some(Duration::from_nanos(ns))
}

/// CPU time (user + system) of this process, all threads.
fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Report {
    settings: Settings,
    machine: Machine,
    loadavg: String,
    pinned: bool,
    pinned_away: bool,
    affinity: String,
    body_bytes: usize,
    response_bytes: usize,
    patch_bytes: usize,
    saturation: Phase,
    saturation_cpu: Option<Duration>,
    saturation_client_cpu: Duration,
    steady: Phase,
    steady_cpu: Option<Duration>,
    steady_client_cpu: Duration,
    /// Time runnable but not running (webhook, load generator) per phase.
    saturation_waits: [Option<Duration>; 2],
    steady_waits: [Option<Duration>; 2],
    probes: Probes,
    rotation_to_served: Option<Duration>,
    confirmed: bool,
    reloads: usize,
    unusable: usize,
    idle_rss_kib: Option<u64>,
    rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    live_gets: Option<usize>,
    log_bytes: u64,
    binary_bytes: Option<u64>,
}

fn lat(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 * 1024.0 / MIB)).unwrap_or_else(|| "?".into())
}

/// CPU time as a share of one core over `wall`, and per review.
fn share(cpu: Option<Duration>, wall: Duration, reviews: usize) -> String {
    let Some(cpu) = cpu else { return "?".into() };
    let per_review = cpu.as_secs_f64() * 1e6 / reviews.max(1) as f64;
    format!("{:.0} % ({per_review:.0} µs/review)", 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

impl Report {
    fn phase_row(&self, out: &mut String, name: &str, p: &Phase, cpu: Option<Duration>, client: Duration) {
        let pct = |n| lat(measure::percentile(&p.latencies, n));
        let handler = if p.handler.is_empty() {
            "–".to_string()
        } else {
            let h = |n| lat(measure::percentile(&p.handler, n));
            format!("{} / {}", h(50), h(99))
        };
        let _ = writeln!(
            out,
            "| {name} | {:.0} s | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            p.wall.as_secs_f64(),
            p.ok() + p.failed,
            p.rate(),
            pct(50),
            pct(99),
            pct(100),
            p.failed,
            handler,
            share(cpu, p.wall, p.ok() + p.failed),
            share(Some(client), p.wall, p.ok() + p.failed),
        );
    }

    fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "## Webhook\n");
        let _ = writeln!(
            out,
            "`make webhook-bench` on {} (load average at the end: {}). Release `ldap-elector-webhook` {}; \
             load generator and test bed {}. {} keep-alive {} connections posting the `fresh-pod` \
             AdmissionReview ({} bytes) of an opted-in StatefulSet; every answer checked (200, allowed, \
             JSON Patch, uid; {} bytes carrying a {}-byte patch). CPU: share of one core. Latency is \
             client-side, from when a review was due; \"handler\" is the webhook's own `duration_ms` (decode, \
             owner lookup, inject: not TLS, HTTP, the log line or the JSON encoding of the answer).\n",
            self.machine,
            self.loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            if self.pinned {
                format!("pinned with `taskset -c {WEBHOOK_CORE}` (allowed cores: {})", self.affinity)
            } else {
                format!("NOT pinned (`taskset` missing; allowed cores: {})", self.affinity)
            },
            if self.pinned_away { "on the other core(s)" } else { "sharing the webhook's core" },
            s.conns,
            s.protocol(),
            self.body_bytes,
            self.response_bytes,
            self.patch_bytes,
        );
        let _ = writeln!(
            out,
            "| phase | time | reviews | reviews/s | p50 | p99 | max | failed | handler p50 / p99 | webhook CPU \
             | load generator CPU |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        self.phase_row(
            &mut out,
            "saturation (closed loop)",
            &self.saturation,
            self.saturation_cpu,
            self.saturation_client_cpu,
        );
        self.phase_row(
            &mut out,
            &format!("steady {:.0}/s (open loop), cert rotated halfway", s.rate),
            &self.steady,
            self.steady_cpu,
            self.steady_client_cpu,
        );
        let p = &self.probes;
        let _ = writeln!(
            out,
            "| fresh connection + review, 1 per {} ms (same time) | | {} | | {} | {} | {} | {} | | | |",
            PROBE_INTERVAL.as_millis(),
            p.latencies.len() + p.failed,
            lat(measure::percentile(&p.latencies, 50)),
            lat(measure::percentile(&p.latencies, 99)),
            lat(measure::percentile(&p.latencies, 100)),
            p.failed,
        );
        let _ = writeln!(out, "\n| webhook | |\n|---|---|");
        let _ = writeln!(
            out,
            "| RSS idle / after the run / peak (VmHWM) | {} / {} / {} |",
            mib(self.idle_rss_kib),
            mib(self.rss_kib),
            mib(self.peak_rss_kib)
        );
        let rotation_at = p.rotation_at.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "?".into());
        let served = self
            .rotation_to_served
            .map(|d| format!("{:.1} s later", d.as_secs_f64()))
            .unwrap_or_else(|| "**never**".into());
        let _ = writeln!(
            out,
            "| certificate rotation | new cert + key (same CA) swapped in at {rotation_at}; first served on a fresh \
             handshake {served}; after the run a fresh handshake gets the new leaf: {}; fresh connections served \
             old/new/other: {}/{}/{} (old after new: {}); reloads logged: {}, `unusable` warnings: {} |",
            if self.confirmed { "yes" } else { "**no**" },
            p.old,
            p.new,
            p.other,
            p.old_after_new,
            self.reloads,
            self.unusable,
        );
        let _ = writeln!(
            out,
            "| failed reviews | saturation {}, steady {} ({} after the rotation), fresh connections {}; \
             reconnects {} |",
            self.saturation.failed,
            self.steady.failed,
            self.steady.failed_after_rotation,
            p.failed,
            self.saturation.reconnects + self.steady.reconnects,
        );
        let waited = |w: Option<Duration>, phase: &Phase| {
            w.map(|w| format!("{:.0} ms/s", w.as_secs_f64() * 1000.0 / phase.wall.as_secs_f64().max(1e-9)))
                .unwrap_or_else(|| "?".into())
        };
        let _ = writeln!(
            out,
            "| waiting for a CPU while runnable (`/proc/*/task/*/schedstat`) | webhook: saturation {}, steady {}; \
             load generator: saturation {}, steady {} |",
            waited(self.saturation_waits[0], &self.saturation),
            waited(self.steady_waits[0], &self.steady),
            waited(self.saturation_waits[1], &self.saturation),
            waited(self.steady_waits[1], &self.steady),
        );
        if let Some(cpu) = self.saturation_cpu.filter(|_| self.saturation.ok() > 0) {
            let per_review = cpu.as_secs_f64() / self.saturation.ok() as f64;
            let _ = writeln!(
                out,
                "| capacity of one core at the saturation phase's CPU per review | ≈ {:.0} reviews/s |",
                1.0 / per_review.max(1e-9)
            );
        }
        let reviews = self.saturation.ok() + self.steady.ok() + p.latencies.len();
        let _ = writeln!(
            out,
            "| owner lookups sent to the API server (audit log) | {} of {reviews} reviews |",
            self.live_gets.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
        );
        let _ = writeln!(
            out,
            "| log volume (one JSON line per review) | {:.0} bytes per review |",
            self.log_bytes as f64 / reviews.max(1) as f64
        );
        if let Some(bytes) = self.binary_bytes {
            let _ = writeln!(out, "| release binary | {:.1} MB |", bytes as f64 / 1e6);
        }
        let p99 = measure::percentile(&self.steady.latencies, 99);
        let rate_ok = self.steady.rate() >= 2000.0 * 0.99;
        let rss_ok = self.peak_rss_kib.is_some_and(|k| k as f64 * 1024.0 <= 30.0 * MIB);
        let rotation_failed = self.steady.failed_after_rotation + p.failed;
        let _ = writeln!(
            out,
            "\nTargets: p99 < 5 ms at ≥ 2,000 reviews/s on one core: {} (p99 {} at {:.0}/s); RSS ≤ 30 MiB: {} \
             (peak {}); zero failed requests during rotation: {} ({}).",
            verdict(p99 < Duration::from_millis(5) && rate_ok),
            lat(p99),
            self.steady.rate(),
            verdict(rss_ok),
            mib(self.peak_rss_kib),
            verdict(rotation_failed == 0 && self.steady.failed == 0 && self.confirmed),
            rotation_failed,
        );
        let errors: Vec<_> = self.saturation.errors.iter().chain(&self.steady.errors).chain(&p.errors).collect();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nFirst errors: {errors:?}");
        }
        out
    }
}

//! `make compare`: ldap-elector side by side with client-go leader election
//! (`tests/peers/client-go-elector`, built by `hack/build-peers.sh`) on the real bed.
//!
//! Each implementation runs as the same sidecar container of the same StatefulSet, through
//! the test kubelet, on a fresh bed (same machine, same run):
//! - ldap-elector (release build) with its defaults: 8 s lease / 5 s renew deadline / 2 s renew period;
//! - client-go with its defaults: 15 s lease / 10 s renew deadline / 2 s retry period;
//! - client-go with our timings: 8 s / 5 s / 2 s.
//!
//! Measured (the shared code is `ldap_elector_tests::measure`, as for `make bench`):
//! graceful handover and crash failover latency (`BENCH_RUNS`, default 20), API requests
//! per minute of leader and follower from the audit log, RSS and CPU time of each process,
//! time to the first leader label when 2 and 5 candidates start at once, and the moments at
//! which the observer saw two pods labelled leader. Then, on a second bed whose sidecars
//! reach the API server through loopback proxies (`proxy::via_proxies`), failover on an API
//! partition: the leader's connection is cut until another pod is labelled leader.
//!
//! Last, in the same run, the admission webhook (`ldap_elector_tests::measure::webhook_load`, as for
//! `make webhook-bench`): the release binary pinned to one core, 16 keep-alive connections,
//! saturation (closed loop, 10 s) and latency at 2,000 reviews/s (open loop,
//! `COMPARE_WEBHOOK_SECS`, default 30). Only ldap-elector has a webhook.
//!
//! Writes `results/compare-<date>.md` and an SVG bar chart of the latencies,
//! `results/compare-<date>.svg`. `COMPARE_ONLY=ours,client-go-defaults,client-go-tuned,webhook`
//! runs a subset.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Patch, PatchParams};
use kube::Api;
use ldap_elector_contract::{self as contract, SIDECAR_CONTAINER};
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::bed::proxy::{self, Proxy};
use ldap_elector_tests::measure::webhook_load::{self, Phase, Schedule, Setup};
use ldap_elector_tests::measure::{self, DualLeaders, Machine, Partitions, SteadyState};
use ldap_elector_tests::workloads::build::{cargo_build, elector_binary};
use ldap_elector_tests::workloads::electors::{Pair, PairOptions};
use ldap_elector_tests::{wait_for, Bed};

mod plot;
mod report;

use plot::svg;
use report::markdown;

/// The client-go-elector's go.mod: the pinned client-go version is read from it.
const PEER_GO_MOD: &str = include_str!("../../../tests/peers/client-go-elector/go.mod");
const OURS: &str = "ldap-elector";
/// Most candidates started at once (the Role is widened to this many pods).
const MAX_CANDIDATES: i32 = 5;
/// After an API partition heals, how long the old leader gets to lose its label before its
/// sidecar is restarted (client-go never retries a label write that failed).
const PARTITION_SETTLE: Duration = Duration::from_secs(5);
/// The webhook load: connections, the fixed rate, the saturation phase.
const WEBHOOK_CONNS: usize = 16;
const WEBHOOK_RATE: f64 = 2000.0;
const WEBHOOK_SATURATE: Duration = Duration::from_secs(10);

/// One implementation under test.
struct Contender {
    /// For `COMPARE_ONLY`.
    key: &'static str,
    name: &'static str,
    /// Lease duration / renew deadline / renew (retry) period.
    timing: &'static str,
    program: Option<PathBuf>,
    /// The sidecar container's env in the StatefulSet.
    env: &'static [(&'static str, &'static str)],
    /// The process env the test kubelet adds.
    runner_env: Vec<(String, String)>,
}

/// What was measured for one contender.
struct Outcome {
    name: &'static str,
    timing: &'static str,
    steady: SteadyState,
    graceful: Vec<Duration>,
    crash: Vec<Duration>,
    start2: Vec<Duration>,
    start5: Vec<Duration>,
    partition: Partitions,
    /// Graceful, crash, start-ups, partition.
    dual: [DualLeaders; 4],
}

/// The webhook under load, on one pinned core.
#[derive(serde::Serialize, serde::Deserialize)]
struct WebhookFigures {
    saturation: PhaseFigures,
    steady: PhaseFigures,
    /// `taskset` pinned the webhook; the rest of the process stayed off its core.
    pinned: bool,
    pinned_away: bool,
}

/// One load phase, in milliseconds.
#[derive(serde::Serialize, serde::Deserialize)]
struct PhaseFigures {
    secs: f64,
    reviews_per_s: f64,
    p50: f64,
    p99: f64,
    max: f64,
    failed: usize,
    errors: Vec<String>,
}

impl From<&Phase> for PhaseFigures {
    fn from(p: &Phase) -> Self {
        let ms = |n| measure::percentile(&p.latencies, n).as_secs_f64() * 1000.0;
        PhaseFigures {
            secs: p.wall.as_secs_f64(),
            reviews_per_s: p.rate(),
            p50: ms(50),
            p99: ms(99),
            max: ms(100),
            failed: p.failed,
            errors: p.errors.clone(),
        }
    }
}

/// Set for a child `compare` (release build): measure only the webhook, write the figures
/// as JSON to this file. A debug build's TLS load generator saturates long before the
/// webhook does, so a debug `compare` hands the webhook part to a release one.
const WEBHOOK_JSON_ENV: &str = "COMPARE_WEBHOOK_JSON";

#[tokio::main]
pub async fn run() -> anyhow::Result<()> {
    ldap_elector_tests::logging::init("warn,kube_client=off");
    let runs = measure::runs();
    let window = measure::window();
    let machine = Machine::detect();
    if let Ok(path) = std::env::var(WEBHOOK_JSON_ENV) {
        let figures = measure_webhook_here(machine).await?;
        std::fs::write(path, serde_json::to_vec(&figures)?)?;
        return Ok(());
    }
    let client_go = client_go_version();
    let peer = peers_bin()?.join("client-go-elector");
    let ours = frozen(&elector_binary(true))?;
    let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    let contenders = [
        Contender {
            key: "ours",
            name: OURS,
            timing: "8 s / 5 s / 2 s",
            program: Some(ours.clone()),
            env: &[],
            // Info level as in production: debug logging would inflate CPU time.
            runner_env: env(&[("ELECTOR_PROBE_ADDR", "off"), ("ELECTOR_LOG_FORMAT", "text"), ("ELECTOR_LOG", "info")]),
        },
        Contender {
            key: "client-go-defaults",
            name: "client-go defaults",
            timing: "15 s / 10 s / 2 s",
            program: Some(peer.clone()),
            env: &[],
            runner_env: Vec::new(),
        },
        Contender {
            key: "client-go-tuned",
            name: "client-go, our timings",
            timing: "8 s / 5 s / 2 s",
            program: Some(peer),
            env: &[("ELECTOR_LEASE_DURATION", "8s"), ("ELECTOR_RENEW_DEADLINE", "5s"), ("ELECTOR_RETRY_PERIOD", "2s")],
            runner_env: Vec::new(),
        },
    ];
    let only: Option<Vec<String>> =
        std::env::var("COMPARE_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let date = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let results = ldap_elector_tests::repo_root().join("results");
    std::fs::create_dir_all(&results)?;
    let (md_path, svg_path) = (results.join(format!("compare-{date}.md")), results.join(format!("compare-{date}.svg")));

    let selected = |key: &str| only.as_ref().is_none_or(|o| o.iter().any(|k| k == key));
    let scratch = ours.parent().unwrap_or(&ours).to_path_buf();
    let mut outcomes = Vec::new();
    let mut webhook = None;
    for contender in contenders {
        if !selected(contender.key) {
            continue;
        }
        eprintln!("== {} ({}): {runs} runs", contender.name, contender.timing);
        let started = Instant::now();
        let outcome = measure_contender(contender, runs, window, &scratch).await?;
        eprintln!("== {} done in {:.0?}", outcome.name, started.elapsed());
        outcomes.push(outcome);
        // Written after each contender, so a failure later keeps what was measured.
        std::fs::write(&md_path, markdown(&outcomes, webhook.as_ref(), &machine, runs, window, &client_go, &date))?;
        std::fs::write(&svg_path, svg(&outcomes, &machine, runs, &date))?;
    }
    if selected("webhook") {
        eprintln!("== the admission webhook under load");
        webhook = Some(measure_webhook(machine.clone()).await?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let report = markdown(&outcomes, webhook.as_ref(), &machine, runs, window, &client_go, &date);
    std::fs::write(&md_path, &report)?;
    println!("{report}");
    eprintln!("wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
}

async fn measure_contender(c: Contender, runs: usize, window: Duration, scratch: &Path) -> anyhow::Result<Outcome> {
    let options = PairOptions {
        audit: true,
        release: true,
        program: c.program.clone(),
        runner_env: Some(c.runner_env.clone()),
        ..Default::default()
    };
    let pair = Pair::start_with(2, c.env, options).await?;
    // Allow up to MAX_CANDIDATES pods to label themselves (the reconciler sizes the Role by replicas).
    let rules = contract::elector_role_rules(&pair.statefulset, MAX_CANDIDATES as u32);
    Api::<Role>::namespaced(pair.client.clone(), &pair.namespace)
        .patch(
            &contract::identity_name(&pair.statefulset),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "rules": rules })),
        )
        .await?;
    pair.leader(Duration::from_secs(60)).await?;

    let steady = measure::steady_state(&pair, window).await?;
    let mark = || pair.observer.timeline_from(0).len();
    let at = mark();
    let graceful = measure::failovers(&pair, runs, Signal::Term).await?;
    let dual_graceful = DualLeaders::since(&pair, at);
    let at = mark();
    let crash = measure::failovers(&pair, runs, Signal::Kill).await?;
    let dual_crash = DualLeaders::since(&pair, at);
    let at = mark();
    let start2 = measure::time_to_leader(&pair, &[pair.pod(0), pair.pod(1)], runs).await?;
    pair.scale(MAX_CANDIDATES).await?;
    let pods: Vec<String> = (0..MAX_CANDIDATES as u32).map(|i| pair.pod(i)).collect();
    wait_for("all candidates to run", Duration::from_secs(60), || async {
        let waiting: Vec<&String> = pods
            .iter()
            .filter(|p| {
                pair.kubelet.pid(&pair.namespace, p, SIDECAR_CONTAINER).is_none()
                    || !pair.log(p).contains("elector started")
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("not running yet: {waiting:?}"))
        }
    })
    .await?;
    pair.leader(Duration::from_secs(60)).await?;
    let start5 = measure::time_to_leader(&pair, &pods, runs).await?;
    let dual_start = DualLeaders::since(&pair, at);
    drop(pair);
    let (partition, dual_partition) = measure_partitions(&c, runs, scratch).await?;
    Ok(Outcome {
        name: c.name,
        timing: c.timing,
        steady,
        graceful,
        crash,
        start2,
        start5,
        partition,
        dual: [dual_graceful, dual_crash, dual_start, dual_partition],
    })
}

/// A fresh bed whose sidecars reach the API server through one proxy per ordinal; the
/// leader's is cut `runs` times.
async fn measure_partitions(c: &Contender, runs: usize, scratch: &Path) -> anyhow::Result<(Partitions, DualLeaders)> {
    let program = c.program.clone().context("a contender without a program")?;
    let proxies = vec![Proxy::start_unbound().await?, Proxy::start_unbound().await?];
    let wrapper = proxy::via_proxies(&scratch.join(c.key), &proxies, &program)?;
    let mut runner_env = c.runner_env.clone();
    runner_env.push((proxy::ORDINAL_ENV.0.to_string(), proxy::ORDINAL_ENV.1.to_string()));
    let options =
        PairOptions { release: true, program: Some(wrapper), runner_env: Some(runner_env), ..Default::default() };
    let pair = Pair::start_with(2, c.env, options).await?;
    let upstream = pair.bed.api_url.trim_start_matches("https://").to_string();
    for proxy in &proxies {
        proxy.set_upstream(upstream.clone());
    }
    pair.leader(Duration::from_secs(60)).await?;
    let at = pair.observer.timeline_from(0).len();
    let partitions = measure::partitions(&pair, &proxies, runs, PARTITION_SETTLE).await?;
    Ok((partitions, DualLeaders::since(&pair, at)))
}

/// The webhook under load, measured by a release build of this program (see
/// `WEBHOOK_JSON_ENV`).
async fn measure_webhook(machine: Machine) -> anyhow::Result<WebhookFigures> {
    if !cfg!(debug_assertions) {
        return measure_webhook_here(machine).await;
    }
    let xtask = tokio::task::spawn_blocking(|| cargo_build("ldap-elector-xtask", "xtask", true)).await??;
    let json = std::env::temp_dir().join(format!("ldap-elector-compare-webhook-{}.json", std::process::id()));
    let status = tokio::process::Command::new(xtask)
        .arg("compare")
        .env(WEBHOOK_JSON_ENV, &json)
        .kill_on_drop(true)
        .status()
        .await
        .context("running the release compare for the webhook")?;
    anyhow::ensure!(status.success(), "the webhook measurement failed (see its output above)");
    let figures = serde_json::from_slice(&std::fs::read(&json)?)?;
    let _ = std::fs::remove_file(json);
    Ok(figures)
}

/// The webhook on a fresh bed, from a thread (and runtime) kept off the webhook's core.
async fn measure_webhook_here(machine: Machine) -> anyhow::Result<WebhookFigures> {
    let secs = std::env::var("COMPARE_WEBHOOK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("webhook-load".into()).spawn(move || {
        let measured = webhook_load::runtime_off_the_webhook_core(&machine).and_then(|(runtime, pinned_away)| {
            runtime.block_on(webhook_under_load(Duration::from_secs(secs), pinned_away))
        });
        let _ = done.send(measured);
    })?;
    result.await.context("the webhook measurement thread ended without an answer")?
}

async fn webhook_under_load(steady_for: Duration, pinned_away: bool) -> anyhow::Result<WebhookFigures> {
    let bed = Bed::start().await?;
    let setup = Setup::start(&bed, false).await?;
    let never = Arc::new(AtomicBool::new(false)); // no certificate rotation here
    let target = &setup.target;
    webhook_load::run_phase(target, WEBHOOK_CONNS, Schedule::Closed, webhook_load::WARM_UP, &never).await;
    let saturation = webhook_load::run_phase(target, WEBHOOK_CONNS, Schedule::Closed, WEBHOOK_SATURATE, &never).await;
    let per_connection = Duration::from_secs_f64(WEBHOOK_CONNS as f64 / WEBHOOK_RATE);
    let steady =
        webhook_load::run_phase(target, WEBHOOK_CONNS, Schedule::Rate { per_connection }, steady_for, &never).await;
    setup.webhook.stop(Duration::from_secs(15)).await;
    Ok(WebhookFigures { saturation: (&saturation).into(), steady: (&steady).into(), pinned: setup.pinned, pinned_away })
}

/// A private copy of `binary`: the target directory is shared with other builds, and a
/// rebuild during the run must not change what the kubelet restarts.
fn frozen(binary: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ldap-elector-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(binary.file_name().context("binary without a file name")?);
    std::fs::copy(binary, &copy).with_context(|| format!("copying {}", binary.display()))?;
    Ok(copy)
}

/// The directory with the peer binaries: `$LDAP_ELECTOR_PEERS_BIN`, or what
/// `hack/build-peers.sh` prints (it builds on a cache miss, else returns at once).
fn peers_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("LDAP_ELECTOR_PEERS_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = ldap_elector_tests::repo_root().join("hack/build-peers.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed (see its output above)", script.display());
    let stdout = String::from_utf8(out.stdout)?;
    Ok(PathBuf::from(stdout.lines().last().context("build-peers.sh printed no directory")?.trim()))
}

fn client_go_version() -> String {
    PEER_GO_MOD
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/client-go "))
        .map_or_else(|| "?".into(), |v| v.split_whitespace().next().unwrap_or("?").to_string())
}

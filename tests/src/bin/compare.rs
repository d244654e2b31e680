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
//! Last, in the same run, the admission webhook (`ldap_elector_tests::webhook_load`, as for
//! `make webhook-bench`): the release binary pinned to one core, 16 keep-alive connections,
//! saturation (closed loop, 10 s) and latency at 2,000 reviews/s (open loop,
//! `COMPARE_WEBHOOK_SECS`, default 30). Only ldap-elector has a webhook.
//!
//! Writes `results/compare-<date>.md` and an SVG bar chart of the latencies,
//! `results/compare-<date>.svg`. `COMPARE_ONLY=ours,client-go-defaults,client-go-tuned,webhook`
//! runs a subset.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Patch, PatchParams};
use kube::Api;
use ldap_elector_contract::{self as contract, SIDECAR_CONTAINER};
use ldap_elector_tests::electors::{Pair, PairOptions};
use ldap_elector_tests::measure::{self, DualLeaders, Machine, Partitions, SteadyState};
use ldap_elector_tests::process::Signal;
use ldap_elector_tests::proxy::{self, Proxy};
use ldap_elector_tests::webhook_load::{self, Phase, Schedule, Setup};
use ldap_elector_tests::{wait_for, Bed};

/// The client-go-elector's go.mod: the pinned client-go version is read from it.
const PEER_GO_MOD: &str = include_str!("../../peers/client-go-elector/go.mod");
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
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .init();
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
    let ours = frozen(&ldap_elector_tests::electors::elector_binary(true))?;
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
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = tokio::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "-p", "ldap-elector-tests", "--bin", "compare"])
        .current_dir(&root)
        .status()
        .await
        .context("running cargo build --release for compare")?;
    anyhow::ensure!(status.success(), "building the release compare failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let json = std::env::temp_dir().join(format!("ldap-elector-compare-webhook-{}.json", std::process::id()));
    let status = tokio::process::Command::new(target.join("release/compare"))
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/build-peers.sh");
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

fn markdown(
    outcomes: &[Outcome],
    webhook: Option<&WebhookFigures>,
    machine: &Machine,
    runs: usize,
    window: Duration,
    client_go: &str,
    date: &str,
) -> String {
    let mut s = String::new();
    let w = window.as_secs();
    let _ = writeln!(s, "# Leader election: ldap-elector vs client-go ({date})\n");
    let _ = writeln!(
        s,
        "Machine: {machine}. Control plane: the real test bed (kube-apiserver v1.35.4, etcd v3.6.16 on loopback), \
         a fresh bed per implementation, same run. client-go: `k8s.io/client-go` {client_go} \
         (`tests/peers/client-go-elector`). Timing: lease duration / renew deadline / renew (retry) period. \
         Latencies are p50 / p99 / max over {runs} runs each (with fewer than 100 runs p99 is a high rank, \
         at 20 runs the maximum), from the fault to the new leader label seen by an independent watch. \
         Steady state: one {w} s window after 10 s of settling; CPU in that window; RSS at its end.\n"
    );
    let _ = write!(s, "| metric |");
    for o in outcomes {
        let _ = write!(s, " {} ({}) |", o.name, o.timing);
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(outcomes.len()));
    let mut row = |name: String, cell: &dyn Fn(&Outcome) -> String| {
        let _ = write!(s, "| {name} |");
        for o in outcomes {
            let _ = write!(s, " {} |", cell(o));
        }
        let _ = writeln!(s);
    };
    row(format!("graceful handover, SIGTERM → new leader (n={runs})"), &|o| measure::summary(&o.graceful));
    row(format!("crash failover, kill -9 → new leader (n={runs})"), &|o| measure::summary(&o.crash));
    row(format!("time to leader, 2 candidates started at once (n={runs})"), &|o| measure::summary(&o.start2));
    row(format!("time to leader, 5 candidates started at once (n={runs})"), &|o| measure::summary(&o.start5));
    row(format!("failover on API partition, leader's API connection cut → new leader (n={runs})"), &|o| {
        measure::summary(&o.partition.samples)
    });
    row("partition runs after which the old leader kept its label (healed only by a restart)".into(), &|o| {
        format!("{} of {}", o.partition.stale, o.partition.samples.len())
    });
    row("moments with 2 leader labels: graceful / crash / start-ups / partition".into(), &|o| {
        format!("{} / {} / {} / {}", o.dual[0], o.dual[1], o.dual[2], o.dual[3])
    });
    row(format!("leader API requests/min ({w} s)"), &|o| format!("{:.1}", o.steady.leader.requests_per_minute));
    row(format!("follower API requests/min ({w} s)"), &|o| format!("{:.1}", o.steady.follower.requests_per_minute));
    row("leader RSS (MiB)".into(), &|o| o.steady.leader.rss_mib());
    row("follower RSS (MiB)".into(), &|o| o.steady.follower.rss_mib());
    row("leader CPU (ms per min)".into(), &|o| o.steady.leader.cpu_ms_per_minute(window));
    row("follower CPU (ms per min)".into(), &|o| o.steady.follower.cpu_ms_per_minute(window));
    if let Some(w) = webhook {
        // Only ldap-elector has a webhook.
        let cell = |text: String| move |o: &Outcome| if o.name == OURS { text.clone() } else { "– (none)".into() };
        let st = &w.steady;
        row(
            format!(
                "admission webhook at {WEBHOOK_RATE:.0} reviews/s for {:.0} s, one core: p50 / p99 / max (failed)",
                st.secs
            ),
            &cell(format!(
                "{} / {} / {} ({}; {:.0} reviews/s done)",
                webhook_ms(st.p50),
                webhook_ms(st.p99),
                webhook_ms(st.max),
                st.failed,
                st.reviews_per_s
            )),
        );
        let sat = &w.saturation;
        row(
            format!(
                "admission webhook saturation, {WEBHOOK_CONNS} connections closed loop, {:.0} s: reviews/s (p99, failed)",
                sat.secs
            ),
            &cell(format!("{:.0} ({}, {})", sat.reviews_per_s, webhook_ms(sat.p99), sat.failed)),
        );
    }
    let _ =
        writeln!(s, "\nAPI requests by verb in the {w} s window (audit log; a watch counts once, when it starts):\n");
    for o in outcomes {
        let _ = writeln!(
            s,
            "- {}: leader {}; follower {}",
            o.name,
            none_if_empty(o.steady.leader.verbs()),
            none_if_empty(o.steady.follower.verbs())
        );
    }
    let _ = writeln!(
        s,
        "\nPartition: each sidecar reaches the API server through its own loopback proxy (on a second fresh bed); \
         the leader's proxy closes its connections and refuses new ones until another pod is labelled leader, \
         then passes traffic again. If the old leader still carries the label {} s later, its sidecar is \
         restarted so the next run starts from one leader label.",
        PARTITION_SETTLE.as_secs()
    );
    if let Some(w) = webhook {
        let _ = writeln!(
            s,
            "\nWebhook: the release `ldap-elector-webhook` {}, everything else {}; {WEBHOOK_CONNS} keep-alive HTTP/1.1 \
             connections posting the `fresh-pod` AdmissionReview of an opted-in StatefulSet, every answer checked; \
             latency client-side from when a review was due (`make webhook-bench` has the full breakdown). \
             Saturation: {:.0} reviews/s, p99 {} ({} failed); at {WEBHOOK_RATE:.0}/s: {:.0} reviews/s done, \
             p50 / p99 / max {} / {} / {} ({} failed).",
            if w.pinned { "pinned to one core with `taskset`" } else { "NOT pinned (`taskset` missing)" },
            if w.pinned_away { "on the other core(s)" } else { "sharing its core" },
            w.saturation.reviews_per_s,
            webhook_ms(w.saturation.p99),
            w.saturation.failed,
            w.steady.reviews_per_s,
            webhook_ms(w.steady.p50),
            webhook_ms(w.steady.p99),
            webhook_ms(w.steady.max),
            w.steady.failed,
        );
        let errors: Vec<&String> = w.saturation.errors.iter().chain(&w.steady.errors).collect();
        if !errors.is_empty() {
            let _ = writeln!(s, "\nWebhook errors (first): {errors:?}");
        }
    }
    s
}

fn webhook_ms(ms: f64) -> String {
    format!("{ms:.2} ms")
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// A grouped bar chart: p50 and p99 of graceful handover and crash failover per
/// implementation, one panel (own scale) each. Plain SVG rects and text.
fn svg(outcomes: &[Outcome], machine: &Machine, runs: usize, date: &str) -> String {
    type Samples = fn(&Outcome) -> &[Duration];
    let panels: [(&str, Samples); 3] = [
        ("Graceful handover (SIGTERM)", |o| &o.graceful),
        ("Crash failover (kill -9)", |o| &o.crash),
        ("Failover on API partition", |o| &o.partition.samples),
    ];
    let colors = [("p50", "#4878d0"), ("p99", "#ee854a")];
    let (width, height) = (1200.0, 470.0);
    let (top, bottom, panel_w, gap) = (70.0, 360.0, 330.0, 60.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold" text-anchor="middle">Leader election latency: ldap-elector vs client-go (lower is better)</text>"#,
        width / 2.0
    );
    for (i, (title, samples)) in panels.iter().enumerate() {
        let x0 = 60.0 + i as f64 * (panel_w + gap);
        let max = outcomes.iter().map(|o| measure::percentile(samples(o), 99).as_secs_f64()).fold(0.0, f64::max);
        let step = nice_step(max);
        let scale_max = (max / step).ceil().max(1.0) * step;
        let y = |v: f64| bottom - (v / scale_max) * (bottom - top);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="52" font-size="14" text-anchor="middle">{}</text>"#,
            x0 + panel_w / 2.0,
            esc(title)
        );
        let mut tick = 0.0;
        while tick <= scale_max + step / 2.0 {
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + panel_w,
                x0 - 6.0,
                y(tick) + 4.0,
                seconds(tick),
                y = y(tick)
            );
            tick += step;
        }
        let _ = writeln!(s, r#"<line x1="{x0}" x2="{x0}" y1="{top}" y2="{bottom}" stroke="black"/>"#);
        let group_w = panel_w / outcomes.len().max(1) as f64;
        let bar_w = (group_w * 0.3).min(50.0);
        for (j, o) in outcomes.iter().enumerate() {
            let center = x0 + group_w * (j as f64 + 0.5);
            for (k, (label, color)) in colors.iter().enumerate() {
                let v = measure::percentile(samples(o), if k == 0 { 50 } else { 99 }).as_secs_f64();
                let bx = center - bar_w + k as f64 * bar_w;
                let _ = writeln!(
                    s,
                    r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {label}: {}</title></rect>"#,
                    y(v),
                    bar_w - 2.0,
                    (bottom - y(v)).max(0.5),
                    esc(o.name),
                    seconds(v)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                    bx + (bar_w - 2.0) / 2.0,
                    y(v) - 4.0,
                    seconds(v)
                );
            }
            let _ = writeln!(
                s,
                r##"<text x="{center:.1}" y="{}" font-size="10" text-anchor="middle">{}</text><text x="{center:.1}" y="{}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
                bottom + 18.0,
                esc(o.name),
                bottom + 33.0,
                esc(o.timing)
            );
        }
    }
    for (k, (label, color)) in colors.iter().enumerate() {
        let x = width / 2.0 - 60.0 + k as f64 * 80.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{label}</text>"#,
            bottom + 50.0,
            x + 16.0,
            bottom + 60.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{runs} runs each; timing = lease duration / renew deadline / retry period; {}; {date}</text>"##,
        width / 2.0,
        height - 20.0,
        esc(&machine.to_string())
    );
    s.push_str("</svg>\n");
    s
}

/// A round axis step giving at most about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 0.1;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude)
}

fn seconds(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1.0 {
        format!("{:.0} ms", v * 1000.0)
    } else {
        format!("{v:.1} s")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap_elector_tests::measure::{Member, Usage};

    fn outcome(name: &'static str, timing: &'static str, scale: u64) -> Outcome {
        let member = |pod: &str| Member {
            pod: pod.into(),
            requests_per_minute: 30.0,
            verbs: Default::default(),
            usage: Usage::default(),
            cpu_in_window: None,
        };
        let ms = |v: u64| (1..=20).map(|i| Duration::from_millis(v * scale + i * 10)).collect::<Vec<_>>();
        Outcome {
            name,
            timing,
            steady: SteadyState { window: Duration::from_secs(60), leader: member("a-0"), follower: member("a-1") },
            graceful: ms(50),
            crash: ms(8000),
            start2: ms(80),
            start5: ms(120),
            partition: Partitions { samples: ms(7000), stale: 0 },
            dual: Default::default(),
        }
    }

    /// The plot has one panel per latency and one bar group per implementation; set
    /// `COMPARE_SVG_PREVIEW=<file>` to look at it.
    #[test]
    fn plot_has_three_panels_and_a_bar_pair_per_implementation() {
        let outcomes = [
            outcome("ldap-elector", "8 s / 5 s / 2 s", 1),
            outcome("client-go defaults", "15 s / 10 s / 2 s", 2),
            outcome("client-go, our timings", "8 s / 5 s / 2 s", 1),
        ];
        let machine = Machine { cores: 2, model: "test CPU".into() };
        let plot = svg(&outcomes, &machine, 20, "2026-01-01");
        assert_eq!(plot.matches("<rect x=").count(), 3 * 3 * 2 + 2, "bars plus legend");
        assert!(plot.contains("Failover on API partition"));
        if let Ok(path) = std::env::var("COMPARE_SVG_PREVIEW") {
            std::fs::write(path, &plot).unwrap();
        }
    }
}

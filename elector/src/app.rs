//! The `ldap-elector` binary's commands: the elector's set-up around the election loop, the
//! fence guard, and the one-shot `audit`, `reseed`, `status` and `switchover`. `main.rs` only dispatches.

use std::process::ExitCode;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::cli::args::{AuditArgs, Command, Config, LogFormat, Output, ReseedArgs, RunArgs};
use crate::cli::operator;
use crate::election::run;
use crate::observe::handover::Gate;
use crate::observe::metrics::{ElectorMetrics, Telemetry};
use crate::observe::probe::{self, Heartbeat, Ready};
use crate::slapd::fence_guard;
use crate::slapd::health;
use crate::slapd::watchdog::{self, Watchdog};
use ldap_elector_contract::events::{EventSink, Subject};

/// `ldap-elector audit`: prints the report on stdout; exit 0 in sync, 1 diverged,
/// 3 unsettled, 2 bad flags, 4 the audit could not finish.
pub fn audit(args: AuditArgs) -> ExitCode {
    let json = args.output == Output::Json;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ldap-elector audit: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Two workers: the two servers' results are decoded and digested in parallel.
    let runtime = match runtime("ldap-elector audit", 2, 4) {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    match runtime.block_on(crate::divergence::audit::audit(&config)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("ldap-elector audit: cannot encode the report: {e}");
                        return ExitCode::from(4);
                    }
                }
            } else {
                print!("{}", report.render());
            }
            ExitCode::from(report.verdict.exit_code())
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "verdict": "failed", "error": e.to_string() }));
            }
            eprintln!("ldap-elector audit: {e}");
            ExitCode::from(4)
        }
    }
}

/// `ldap-elector status` and `switchover`: operator commands with the operator's kubeconfig.
pub fn operator_command(command: Command) -> ExitCode {
    let runtime = match runtime("ldap-elector", 0, operator::exit::API) {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    ExitCode::from(match command {
        Command::Status(args) => runtime.block_on(operator::status(args)),
        Command::Switchover(args) => runtime.block_on(operator::switchover(args)),
        _ => operator::exit::USAGE,
    })
}

/// `ldap-elector reseed`: exit 0 repaired and unmarked, 1 not clean in time, 2 bad flags,
/// 4 failed, 5 refused (the target leads, no leader, Lease unreadable, slapd still running).
pub fn reseed(args: ReseedArgs) -> ExitCode {
    let plan = match args.into_plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ldap-elector reseed: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime("ldap-elector reseed", 2, 4) {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ldap-elector reseed: cannot configure the Kubernetes client: {e}");
                return ExitCode::from(2);
            }
        };
        match crate::divergence::reseed::reseed(client, &plan).await {
            Ok(()) => {
                println!("reseeded {}: audit clean, divergence mark cleared", plan.target);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ldap-elector reseed: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// Logs to stderr, filtered by `ELECTOR_LOG`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ldap_elector_contract::ENV_LOG)
        .unwrap_or_else(|_| "info,kube_client=warn,kube_runtime=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The watchdog: the fence guard's socket when one is configured (the injected pod), else
/// this binary again, with the same flags, as `... watchdog`.
fn start_watchdog(config: &Config) -> Option<Watchdog> {
    if let Some(socket) = &config.guard_socket {
        return Some(Watchdog::guard(socket.clone()));
    }
    if !config.watchdog || !config.fence().is_configured() {
        return None;
    }
    let flags: Vec<String> = std::env::args().skip(1).filter(|a| a != "run").collect();
    let program = std::env::current_exe().ok()?;
    match Watchdog::spawn(&program, &flags) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the watchdog; a paused elector would not fence slapd");
            None
        }
    }
}

/// The elector (`run`, the default) or its watchdog process, with the flags' configuration.
pub fn run(args: RunArgs, command: Command) -> ExitCode {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ldap-elector: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime("ldap-elector", 0, 1) {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    match command {
        Command::Watchdog => {
            runtime.block_on(watchdog::serve(config.fence()));
            ExitCode::SUCCESS
        }
        _ => runtime.block_on(elect(config)),
    }
}

/// `ldap-elector guard`: the fence guard (see `fence_guard.rs`) until SIGTERM. Exit 2 on bad
/// flags or when it cannot listen.
pub fn guard(args: RunArgs) -> ExitCode {
    let (fence, socket) = match args.into_guard_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ldap-elector guard: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime("ldap-elector guard", 0, 1) {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(forward_sigterm(stop.clone()));
        match fence_guard::serve(fence, &socket, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ldap-elector guard: {e}");
                ExitCode::from(2)
            }
        }
    })
}

/// `ldap-elector start-fenced`: one line on what it did (the init container's log).
pub fn start_fenced(args: &crate::cli::args::StartFencedArgs) -> ExitCode {
    use crate::slapd::start_fenced::{start_fenced, Outcome};
    match start_fenced(&args.config_dir, &args.database.database()) {
        Ok(Outcome::Fenced(path)) => println!("ldap-elector start-fenced: olcReadOnly: TRUE written to {}", path.display()),
        Ok(Outcome::AlreadyFenced(path)) => println!("ldap-elector start-fenced: {} is read-only already", path.display()),
        Ok(Outcome::NoConfiguration) => println!(
            "ldap-elector start-fenced: no slapd.d in {} yet; slapd starts as it is configured and the elector fences it",
            args.config_dir.display()
        ),
        Err(e) => {
            eprintln!("ldap-elector start-fenced: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// Sets up every task around the election loop, runs it, and drains on the way out.
async fn elect(config: Config) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ldap-elector: cannot configure the Kubernetes client: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(audit) = &config.audit {
        for (standby, reason) in audit.refused_peers() {
            tracing::error!(pod = %config.identity, standby = %standby, error = %reason,
                "divergence audits of this standby and reads of its contextCSN after an expiry are OFF until this is fixed");
        }
    }
    let terminate = CancellationToken::new();
    let tasks = CancellationToken::new();
    let heartbeat = Heartbeat::default();
    heartbeat.beat();
    let ready = Ready::default();

    let (deleting_tx, deleting) = tokio::sync::watch::channel(false);
    let (handed_over_tx, handed_over) = tokio::sync::watch::channel(false);
    if let Some(addr) = &config.probe_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let stale = config.timing.lease_duration * 2;
                let gate = Gate::new(deleting.clone(), handed_over);
                tokio::spawn(probe::serve(
                    listener,
                    heartbeat.clone(),
                    ready.clone(),
                    stale,
                    Some(gate),
                    tasks.clone(),
                ));
            }
            Err(e) => {
                eprintln!("ldap-elector: cannot listen on probe address {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let metrics = Arc::new(ElectorMetrics::default());
    let (health_tx, healthy) = tokio::sync::watch::channel(false);
    let (csn_tx, csn) = tokio::sync::watch::channel(Vec::new());
    if let Some(addr) = &config.metrics_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.clone());
                tracing::info!(metrics_addr = %bound, "serving Prometheus metrics on /metrics");
                let (metrics, csn) = (metrics.clone(), csn.clone());
                let gather = move || metrics.render(&csn.borrow());
                tokio::spawn(crate::observe::http::serve_metrics(listener, gather, tasks.clone()));
            }
            Err(e) => {
                eprintln!("ldap-elector: cannot listen on metrics address {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let recheck = Arc::new(tokio::sync::Notify::new());
    {
        let monitor = health::Monitor {
            check: config.health_check.clone(),
            interval: config.health_interval,
            threshold: config.health_failures,
            healthy: health_tx,
            csn: Some(csn_tx),
            recheck: recheck.clone(),
            tally: Some(metrics.health_checks.clone()),
        };
        tokio::spawn(monitor.run(tasks.clone()));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    tokio::spawn(run::watch_own_pod(pods, config.identity.clone(), deleting_tx, tasks.clone()));
    tokio::spawn(forward_sigterm(terminate.clone()));

    // Off the election loop: keeps this pod's health and contextCSN annotations current.
    tokio::spawn(crate::observe::publish::run(
        Api::namespaced(client.clone(), &config.namespace),
        config.identity.clone(),
        healthy.clone(),
        csn.clone(),
        tasks.clone(),
    ));
    let divergence = match config.audit.clone().map(crate::divergence::auditor::start) {
        None => None,
        Some(Ok(link)) => Some(link),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot start the divergence auditor; no audits");
            None
        }
    };
    let watchdog = start_watchdog(&config);
    // Every Event on the pod and on its StatefulSet (that copy's note names the pod).
    let subjects = vec![
        Subject::new("v1", "Pod", &config.identity),
        Subject::new("apps/v1", "StatefulSet", &config.statefulset).with_note_prefix(&config.identity),
    ];
    let (events, events_drained) = EventSink::start(
        client.clone(),
        &config.namespace,
        ldap_elector_contract::EVENT_REPORTER,
        &config.identity,
        subjects,
        metrics.events_dropped.clone(),
        tasks.clone(),
    );
    let fence_configured = config.fence().is_configured();
    let ops = Telemetry::new(metrics, events, &config.identity, config.timing.renew_deadline, fence_configured);
    // Off the election loop: reports dangerous replication settings (the session log on a
    // Mirror-Mode database) once slapd answers, and again every config_guard::RECHECK; see
    // config_guard.rs. It holds an Event sink, so it ends with the loop (before the Events drain).
    let guard_stop = tasks.child_token();
    if let Some(fence) = &config.fence_ldapi {
        let (url, stop, ops) = (fence.ldapi_url.clone(), guard_stop.clone(), ops.clone());
        let target = match &config.health_check {
            crate::slapd::health::HealthCheck::Ldap(check) => Some(crate::slapd::config_guard::FenceTarget {
                database: fence.database.clone(),
                suffix: check.base.clone(),
            }),
            _ => None,
        };
        tokio::spawn(crate::slapd::config_guard::watch_findings(url, target, stop, move |codes| {
            ops.config_checked(&codes)
        }));
    }
    let elector = run::Elector::new(config, client, heartbeat, watchdog)
        .with_telemetry(ops)
        .with_handover(handed_over_tx)
        .with_readiness(ready);
    let exit = elector.run(run::Inputs { healthy, csn, deleting, recheck, divergence }, terminate).await;
    guard_stop.cancel();
    // The loop (and with it every Event sink) is gone: let the last Events out, bounded.
    events_drained.wait(std::time::Duration::from_secs(3)).await;
    tasks.cancel();
    tracing::info!(?exit, "ldap-elector stopped");
    ExitCode::SUCCESS
}

async fn forward_sigterm(terminate: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("termination signal: standing down");
    terminate.cancel();
}

/// A Tokio runtime for `command` (`workers`: 0 for the current thread only), or the exit
/// code `exit` after saying why there is none.
fn runtime(command: &str, workers: usize, exit: u8) -> Result<tokio::runtime::Runtime, ExitCode> {
    let built = match workers {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    built.map_err(|e| {
        eprintln!("{command}: cannot start the runtime: {e}");
        ExitCode::from(exit)
    })
}

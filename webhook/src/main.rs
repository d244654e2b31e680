//! `ldap-elector-webhook`: flags, logging, signals; everything else is [`app::run`].
//! Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 2 for invalid configuration,
//! 1 for a failure at run time.

use std::process::ExitCode;

use clap::Parser;
use ldap_elector_webhook::app;
use ldap_elector_webhook::args::{Args, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let settings = match args.into_settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ldap-elector-webhook: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // One worker per CPU the process may use (affinity mask and cgroup CPU quota: the
    // chart's 500m limit gives one), at most two. Two workers time-sliced on one CPU stall
    // each other's reviews (`make webhook-bench`: three times the handler's p99).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ldap-elector-webhook: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("ldap-elector-webhook: cannot configure the Kubernetes client: {e}");
                return ExitCode::from(2);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match app::run(settings, client, shutdown, app::DEFAULT_SHUTDOWN_DELAY).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "webhook failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM (the kubelet) or SIGINT (a terminal) starts the graceful stop.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; stopping");
            shutdown.cancel();
            return;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stop requested");
    shutdown.cancel();
}

/// JSON lines (or text) on stderr; `WEBHOOK_LOG` overrides the filter. Admission's own
/// per-decision lines are filtered out by default: the handler logs one complete line
/// per review (with the duration).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEBHOOK_LOG")
        .unwrap_or_else(|_| "info,kube_client=warn,kube_runtime=warn,ldap_elector_webhook::admission=error".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

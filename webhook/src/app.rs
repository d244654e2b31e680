//! The webhook process, minus flag parsing, logging set-up and signals (those are
//! `main`'s): health server, serving certificate (Secret or files), the shared watches,
//! reconciler and the TLS admission server, started and stopped in the right order.
//! Tests run it in-process with [`run`].
//!
//! Certificate order in secret mode (see the `ldap_elector_certs` crate docs): ensure the
//! Secret, publish its CA list into the webhook configuration's `caBundle`, and only then
//! serve its certificate, at start and at every rotation; so the API server never sees a
//! certificate whose CA it does not trust. The `caBundle` is also re-published whenever the
//! webhook configuration changes (a watch on that one object) and every minute, which
//! repairs a configuration re-applied without it (e.g. by a `helm rollback` to a revision
//! rendered before it existed) at once instead of failing pod creation until the next
//! rotation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use ldap_elector_certs::{
    ensure_secret, issuing_ca_pem, load_rustls, publish_ca_bundle, CertBundle, CertError, StoreError,
};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::{CertSource, SecretCert, Settings};
use crate::cluster::ClusterCache;
use crate::handler::AdmissionHandler;
use crate::metrics::WebhookMetrics;
use crate::reconcile::leadership::Leadership;
use crate::reconcile::run_reconciler_on;
use crate::server::{serve_health, serve_tls, Limits};
use crate::tls::{server_config, ReloadingCert, TlsError};
use crate::watches::SharedWatches;

/// Files mode: how often the PEM files are compared with what is served.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Secret mode: how often the Secret is checked for a due rotation.
pub const CERT_RECHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Secret mode: how often the `caBundle` is re-published (a no-op unless it was lost).
pub const CA_BUNDLE_RECHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Between readiness turning false and the listener closing on shutdown: time for the
/// endpoint to leave the Service, so the API server stops sending new reviews here.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// Retry bounds of the certificate bootstrap.
const BOOTSTRAP_BACKOFF_MIN: Duration = Duration::from_secs(1);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("stopped before a serving certificate was available")]
    Cancelled,
}

/// Runs until `shutdown`, then: readiness false, wait `shutdown_delay`, stop accepting,
/// drain in-flight reviews, stop the reconciler. `Ok` after a graceful stop (also when
/// stopped while still waiting for the certificate); `Err` when it cannot start.
pub async fn run(
    settings: Settings,
    client: Client,
    shutdown: CancellationToken,
    shutdown_delay: Duration,
) -> Result<(), AppError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })
    };
    let health_listener = bind(settings.health_listen).await?;
    let listener = bind(settings.listen).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let health_stop = CancellationToken::new();
    let flag = ready.clone();
    let metrics = Arc::new(WebhookMetrics::default());
    let gather = metrics.clone();
    let health = tokio::spawn(serve_health(
        health_listener,
        move || flag.load(Ordering::Relaxed),
        move || gather.render(),
        health_stop.clone(),
    ));

    // Background work (cert reload, caches, reconciler) stops after the server drained.
    let background = CancellationToken::new();
    let started = async {
        let cert = start_certificate(&settings.cert, &client, &shutdown, &background).await?;
        metrics.serving(cert.clone());
        Ok::<_, AppError>(Arc::new(server_config(settings.tls_profile, cert)?))
    };
    let tls = match started.await {
        Ok(tls) => tls,
        Err(e) => {
            background.cancel();
            health_stop.cancel();
            let _ = health.await;
            return match e {
                AppError::Cancelled => {
                    info!("stopped before serving");
                    Ok(())
                }
                e => Err(e),
            };
        }
    };
    // One watch per kind, shared by admission and the reconciler.
    let (watches, changes) = if settings.reconcile {
        let (watches, changes) = SharedWatches::start_with_changes(&client, &background);
        (watches, Some(changes))
    } else {
        (SharedWatches::start(&client, &background), None)
    };
    let cluster = ClusterCache::new(client.clone(), &watches);
    // `reconciler_lease` is set only with the reconciler on and a namespace to hold the Lease.
    let (leadership, election) = match &settings.reconciler_lease {
        Some(lease) => {
            let (leadership, task) = Leadership::start(client.clone(), lease, background.clone());
            (leadership, Some(task))
        }
        None => (Leadership::alone(), None),
    };
    let reconciler = changes.map(|changes| {
        metrics.reconciling(leadership.clone());
        tokio::spawn(run_reconciler_on(client.clone(), watches, changes, leadership, background.clone()))
    });

    let server_stop = CancellationToken::new();
    let handler = AdmissionHandler::new(settings.inject.clone(), cluster).with_metrics(metrics.clone());
    let limits = Limits {
        max_connections: settings.max_connections,
        max_connections_per_peer: settings.max_connections_per_peer,
        ..Limits::default()
    };
    let server = tokio::spawn(serve_tls(listener, tls, handler, limits, server_stop.clone()));
    ready.store(true, Ordering::Relaxed);
    info!(listen = %settings.listen, health = %settings.health_listen, tls_profile = %settings.tls_profile,
          reconcile = settings.reconcile, "webhook ready");

    shutdown.cancelled().await;
    ready.store(false, Ordering::Relaxed);
    info!(delay_s = shutdown_delay.as_secs_f64(), "shutting down: readiness off, draining after the delay");
    tokio::time::sleep(shutdown_delay).await;
    server_stop.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "admission server stopped with an error"),
        Err(error) => warn!(%error, "admission server task failed"),
    }
    background.cancel();
    if let Some(reconciler) = reconciler {
        let _ = reconciler.await;
    }
    // Gives the reconciler Lease back, so another replica takes over at once.
    if let Some(election) = election {
        let _ = election.await;
    }
    health_stop.cancel();
    let _ = health.await;
    info!("webhook stopped");
    Ok(())
}

/// The serving certificate, with its reload/rotation task running under `background`.
async fn start_certificate(
    source: &CertSource,
    client: &Client,
    shutdown: &CancellationToken,
    background: &CancellationToken,
) -> Result<Arc<ReloadingCert>, AppError> {
    match source {
        CertSource::Files { cert, key } => {
            let resolver = Arc::new(ReloadingCert::from_pem_files(cert, key)?);
            let (r, c, k, stop) = (resolver.clone(), cert.clone(), key.clone(), background.clone());
            tokio::spawn(async move { r.watch_files(c, k, FILE_POLL_INTERVAL, stop).await });
            info!(cert = %cert.display(), key = %key.display(), "serving certificate from files (polled)");
            Ok(resolver)
        }
        CertSource::Secret(source) => {
            let mut delay = BOOTSTRAP_BACKOFF_MIN;
            let (bundle, resolver) = loop {
                match secret_round(client, source).await {
                    Ok(bundle) => match load(&bundle) {
                        Ok((chain, key)) => break (bundle, Arc::new(ReloadingCert::new(chain, key)?)),
                        Err(error) => warn!(%error, "certificate from the Secret is unusable; retrying"),
                    },
                    Err(error) => {
                        warn!(%error, retry_in_s = delay.as_secs(), "cannot obtain the serving certificate yet")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(AppError::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(BOOTSTRAP_BACKOFF_MAX);
            };
            info!("serving certificate from the Secret; caBundle published");
            let (c, s, r, stop) = (client.clone(), source.clone(), resolver.clone(), background.clone());
            tokio::spawn(async move { keep_rotating(c, s, r, bundle, stop).await });
            Ok(resolver)
        }
    }
}

/// Ensure the Secret (creating or rotating it when due), then publish the CA that issued its
/// certificate: only that one, never other entries of the Secret's `ca.crt` (issue 17, item 7).
async fn secret_round(client: &Client, source: &SecretCert) -> Result<CertBundle, StoreError> {
    let bundle = ensure_secret(client.clone(), &source.namespace, &source.secret, &source.dns_names).await?;
    publish_ca_bundle(client.clone(), &source.webhook_config, &issuing_ca_pem(&bundle)?).await?;
    Ok(bundle)
}

type Loaded = (Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>);

fn load(bundle: &CertBundle) -> Result<Loaded, CertError> {
    load_rustls(bundle)
}

/// Secret mode after start: re-publish the caBundle when the webhook configuration changes
/// and every minute, re-check the Secret
/// every hour (every minute after a failure), and swap in a rotated certificate only after
/// its CA list was published.
async fn keep_rotating(
    client: Client,
    source: SecretCert,
    resolver: Arc<ReloadingCert>,
    mut serving: CertBundle,
    stop: CancellationToken,
) {
    let webhook_config = &source.webhook_config;
    let mut ticker = tokio::time::interval(CA_BUNDLE_RECHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; we just published
                         // Our own publish shows up here too; publishing again is then a no-op (no write).
    let by_name = watcher::Config::default().fields(&format!("metadata.name={webhook_config}"));
    let changes =
        watcher(Api::<MutatingWebhookConfiguration>::all(client.clone()), by_name).default_backoff().applied_objects();
    let mut changes = std::pin::pin!(changes);
    let mut next_check = Instant::now() + CERT_RECHECK_INTERVAL;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            change = changes.next() => match change {
                Some(Ok(_)) => {}
                // Logged and retried with backoff by the watcher; the ticker still runs.
                Some(Err(error)) => {
                    warn!(%error, "watching the webhook configuration failed; retrying");
                    continue;
                }
                None => {}
            },
        }
        if Instant::now() < next_check {
            let published = match issuing_ca_pem(&serving) {
                Ok(issuer) => publish_ca_bundle(client.clone(), webhook_config, &issuer).await.map(drop),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = published {
                warn!(%error, "re-publishing the caBundle failed; retrying in a minute");
            }
            continue;
        }
        next_check = Instant::now() + CA_BUNDLE_RECHECK_INTERVAL;
        let bundle = match secret_round(&client, &source).await {
            Ok(bundle) => bundle,
            Err(error) => {
                warn!(%error, "certificate re-check failed; still serving the current certificate, retrying in a minute");
                continue;
            }
        };
        next_check = Instant::now() + CERT_RECHECK_INTERVAL;
        if bundle.cert_pem == serving.cert_pem {
            serving = bundle;
            continue;
        }
        match load(&bundle)
            .map_err(|e| e.to_string())
            .and_then(|(c, k)| resolver.replace(c, k).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                info!("serving the rotated certificate (its CA was published first)");
                serving = bundle;
            }
            Err(error) => warn!(%error, "rotated certificate is unusable; still serving the current one"),
        }
    }
}

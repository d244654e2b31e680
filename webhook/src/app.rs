//! The webhook process, minus flag parsing, logging set-up and signals (those are
//! `main`'s): health server, serving certificate (Secret or files), the shared watches,
//! reconciler and the TLS admission server, started and stopped in the right order.
//! Tests run it in-process with [`run`].
//!
//! Components ([`Component`]): the chart runs the admission server (reads only) and the
//! controller (reconciler and certificate, every write) as two Deployments under two
//! ServiceAccounts; `all` runs both in one process.
//!
//! Certificate order in secret mode (see the `ldap_elector_certs` crate docs): the writer
//! (controller, or `all`) ensures the Secret and publishes the CA that issued it into the
//! webhook configuration's `caBundle`; a server serves a certificate only after that: `all`
//! because it published first, the admission server because it reads the `caBundle` and
//! finds the CA there. So the API server never sees a certificate whose CA it does not
//! trust, at start and at every rotation. The writer also re-publishes the `caBundle`
//! whenever the webhook configuration changes (a watch on that one object) and every minute,
//! which repairs a configuration re-applied without it (e.g. by a `helm rollback` to a
//! revision rendered before it existed) at once instead of failing pod creation until the
//! next rotation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use ldap_elector_certs::{
    ca_bundle_published, ensure_secret, issuing_ca_pem, load_rustls, publish_ca_bundle, read_secret, CertBundle,
    CertError, StoreError,
};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::{CertSource, Component, SecretCert, Settings};
use crate::cluster::ClusterCache;
use crate::handler::AdmissionHandler;
use crate::metrics::WebhookMetrics;
use crate::reconcile::leadership::Leadership;
use crate::reconcile::run_reconciler_on;
use crate::server::{serve_health, serve_tls, Limits};
use crate::tls::{crypto_provider, server_config, ClientCas, ReloadingCert, TlsError};
use crate::watches::SharedWatches;

/// Files mode and the client CA file: how often the PEM files are compared with what is in force.
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
    let listener = match settings.component.serves_admission() {
        true => Some(bind(settings.listen).await?),
        false => None,
    };

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
        let Some(cert) = start_certificate(&settings, &client, &shutdown, &background).await? else {
            return Ok(None);
        };
        metrics.serving(cert.clone());
        let client_cas = start_client_cas(&settings, &background)?;
        Ok::<_, AppError>(Some(Arc::new(server_config(settings.tls_profile, cert, client_cas)?)))
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
    // One watch per kind, shared by admission and the reconciler; none for a controller
    // that only keeps the certificate.
    let (watches, changes) = match (settings.reconcile, tls.is_some()) {
        (true, _) => {
            let (watches, changes) = SharedWatches::start_with_changes(&client, &background);
            (Some(watches), Some(changes))
        }
        (false, true) => (Some(SharedWatches::start(&client, &background)), None),
        (false, false) => (None, None),
    };
    // `reconciler_lease` is set only with the reconciler on and a namespace to hold the Lease.
    let (leadership, election) = match &settings.reconciler_lease {
        Some(lease) => {
            let (leadership, task) = Leadership::start(client.clone(), lease, background.clone());
            (leadership, Some(task))
        }
        None => (Leadership::alone(), None),
    };
    let reconciler = changes.zip(watches.clone()).map(|(changes, watches)| {
        metrics.reconciling(leadership.clone());
        let egress = settings.egress.clone();
        tokio::spawn(run_reconciler_on(client.clone(), watches, changes, leadership, egress, background.clone()))
    });

    let server_stop = CancellationToken::new();
    let server = match (tls, listener, watches) {
        (Some(tls), Some(listener), Some(watches)) => {
            let cluster = ClusterCache::new(client.clone(), &watches);
            let handler = AdmissionHandler::new(settings.inject.clone(), cluster).with_metrics(metrics.clone());
            let limits = Limits {
                max_connections: settings.max_connections,
                max_connections_per_peer: settings.max_connections_per_peer,
                ..Limits::default()
            };
            Some(tokio::spawn(serve_tls(listener, tls, handler, limits, server_stop.clone())))
        }
        _ => None,
    };
    ready.store(true, Ordering::Relaxed);
    info!(component = ?settings.component, listen = %settings.listen, health = %settings.health_listen,
          tls_profile = %settings.tls_profile, admission = server.is_some(), reconcile = settings.reconcile,
          "webhook ready");

    shutdown.cancelled().await;
    ready.store(false, Ordering::Relaxed);
    if let Some(server) = server {
        info!(delay_s = shutdown_delay.as_secs_f64(), "shutting down: readiness off, draining after the delay");
        tokio::time::sleep(shutdown_delay).await;
        server_stop.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "admission server stopped with an error"),
            Err(error) => warn!(%error, "admission server task failed"),
        }
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

/// The CAs of `--client-ca-file`, polled under `background`; `None` without the flag.
fn start_client_cas(settings: &Settings, background: &CancellationToken) -> Result<Option<Arc<ClientCas>>, AppError> {
    let Some(path) = &settings.client_ca_file else { return Ok(None) };
    let cas = Arc::new(ClientCas::from_pem_file(path, Arc::new(crypto_provider(settings.tls_profile)))?);
    let (c, p, stop) = (cas.clone(), path.clone(), background.clone());
    tokio::spawn(async move { c.watch_file(p, FILE_POLL_INTERVAL, stop).await });
    info!(client_ca = %path.display(), "admission clients must present a certificate of these CAs");
    Ok(Some(cas))
}

/// The serving certificate (`None` for the controller: it serves none), with its reload or
/// rotation task running under `background`.
async fn start_certificate(
    settings: &Settings,
    client: &Client,
    shutdown: &CancellationToken,
    background: &CancellationToken,
) -> Result<Option<Arc<ReloadingCert>>, AppError> {
    let source = match &settings.cert {
        None => return Ok(None),
        Some(CertSource::Files { cert, key }) => {
            let resolver = Arc::new(ReloadingCert::from_pem_files(cert, key)?);
            let (r, c, k, stop) = (resolver.clone(), cert.clone(), key.clone(), background.clone());
            tokio::spawn(async move { r.watch_files(c, k, FILE_POLL_INTERVAL, stop).await });
            info!(cert = %cert.display(), key = %key.display(), "serving certificate from files (polled)");
            return Ok(Some(resolver));
        }
        Some(CertSource::Secret(source)) => source.clone(),
    };
    let component = settings.component;
    let round = || async {
        match component {
            // Reads only: the controller writes the Secret and publishes its CA.
            Component::Admission => read_round(client, &source).await,
            Component::All | Component::Controller => secret_round(client, &source).await.map_err(|e| e.to_string()),
        }
    };
    let mut delay = BOOTSTRAP_BACKOFF_MIN;
    let (bundle, resolver) = loop {
        let attempt = async {
            let bundle = round().await?;
            if !component.serves_admission() {
                return Ok((bundle, None));
            }
            let (chain, key) = load(&bundle).map_err(|e| format!("the Secret's certificate is unusable: {e}"))?;
            let resolver = ReloadingCert::new(chain, key).map_err(|e| e.to_string())?;
            Ok::<_, String>((bundle, Some(Arc::new(resolver))))
        };
        match attempt.await {
            Ok(started) => break started,
            Err(error) => warn!(%error, retry_in_s = delay.as_secs(), "cannot obtain the serving certificate yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(AppError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(BOOTSTRAP_BACKOFF_MAX);
    };
    let (c, r, stop) = (client.clone(), resolver.clone(), background.clone());
    match component {
        Component::Admission => {
            info!("serving certificate from the Secret; its CA is published");
            if let Some(r) = r {
                tokio::spawn(async move { keep_reading(c, source, r, bundle, stop).await });
            }
        }
        Component::All | Component::Controller => {
            info!(serving = resolver.is_some(), "the Secret's certificate is current; caBundle published");
            tokio::spawn(async move { keep_rotating(c, source, r, bundle, stop).await });
        }
    }
    Ok(resolver)
}

/// Ensure the Secret (creating or rotating it when due), then publish the CA that issued its
/// certificate: only that one, never other entries of the Secret's `ca.crt` (issue 17, item 7).
async fn secret_round(client: &Client, source: &SecretCert) -> Result<CertBundle, StoreError> {
    let bundle = ensure_secret(client.clone(), &source.namespace, &source.secret, &source.dns_names).await?;
    publish_ca_bundle(client.clone(), &source.webhook_config, &issuing_ca_pem(&bundle)?).await?;
    Ok(bundle)
}

/// The admission server's round: read the Secret, and accept its certificate only once the CA
/// that issued it is in the webhook configuration's `caBundle`.
async fn read_round(client: &Client, source: &SecretCert) -> Result<CertBundle, String> {
    let bundle = read_secret(client.clone(), &source.namespace, &source.secret).await.map_err(|e| e.to_string())?;
    let issuer = issuing_ca_pem(&bundle).map_err(|e| e.to_string())?;
    match ca_bundle_published(client.clone(), &source.webhook_config, &issuer).await {
        Ok(true) => Ok(bundle),
        Ok(false) => Err(format!(
            "the CA of Secret {}/{} is not in the caBundle of {} yet; the controller publishes it",
            source.namespace, source.secret, source.webhook_config
        )),
        Err(e) => Err(e.to_string()),
    }
}

type Loaded = (Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>);

fn load(bundle: &CertBundle) -> Result<Loaded, CertError> {
    load_rustls(bundle)
}

/// Swaps in `bundle` when it differs from what is served (kept when it is unusable).
fn swap_in(resolver: &ReloadingCert, serving: &mut CertBundle, bundle: CertBundle) {
    if bundle.cert_pem == serving.cert_pem {
        *serving = bundle;
        return;
    }
    match load(&bundle).map_err(|e| e.to_string()).and_then(|(c, k)| resolver.replace(c, k).map_err(|e| e.to_string()))
    {
        Ok(()) => {
            info!("serving the rotated certificate (its CA was published first)");
            *serving = bundle;
        }
        Err(error) => warn!(%error, "rotated certificate is unusable; still serving the current one"),
    }
}

/// The admission server in secret mode after start: every minute, read the Secret and serve a
/// rotated certificate once its CA is published.
async fn keep_reading(
    client: Client,
    source: SecretCert,
    resolver: Arc<ReloadingCert>,
    mut serving: CertBundle,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(CA_BUNDLE_RECHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; we just read it
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match read_round(&client, &source).await {
            Ok(bundle) => swap_in(&resolver, &mut serving, bundle),
            Err(error) => warn!(%error, "certificate re-check failed; still serving the current certificate"),
        }
    }
}

/// Secret mode, the writer after start: re-publish the caBundle when the webhook configuration
/// changes and every minute, re-check the Secret every hour (every minute after a failure),
/// and (when it serves too) swap in a rotated certificate only after its CA was published.
async fn keep_rotating(
    client: Client,
    source: SecretCert,
    resolver: Option<Arc<ReloadingCert>>,
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
        match &resolver {
            Some(resolver) => swap_in(resolver, &mut serving, bundle),
            None => serving = bundle,
        }
    }
}

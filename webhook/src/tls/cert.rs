//! The serving certificate, replaceable at run time (rotation without a restart): from
//! memory ([`ReloadingCert::replace`]) or from polled PEM files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use super::{Result, TlsError};

/// A serving certificate that can be swapped while the server runs. New handshakes pick
/// up the replacement; established connections keep the keys they negotiated.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self> {
        Ok(Self { current: RwLock::new(Arc::new(certified_key(chain, key)?)) })
    }

    /// Load the chain and key from PEM files (e.g. a mounted Secret).
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let (chain, key) = parse_pem(
            &read(cert_path)?,
            &read(key_path)?,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )?;
        Self::new(chain, key)
    }

    /// Swap in a new chain and key. On error the current certificate stays in use.
    pub fn replace(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<()> {
        let new = Arc::new(certified_key(chain, key)?);
        // A poisoned lock only means a panic elsewhere while holding it; the slot itself
        // is always a complete value, so keep serving it.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }

    /// The certificate new handshakes will present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Poll the PEM files every `interval` until `cancel` fires, and swap in their contents
    /// when they change. Comparing contents (not mtimes) also catches Kubernetes' atomic
    /// `..data` symlink swap of Secret volumes. Invalid files are logged and ignored.
    pub async fn watch_files(
        &self,
        cert_path: PathBuf,
        key_path: PathBuf,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        let mut seen = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.reload_if_changed(&cert_path, &key_path, &mut seen).await {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Replaced) => tracing::info!(
                    cert = %cert_path.display(),
                    key = %key_path.display(),
                    "reloaded TLS serving certificate"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    cert = %cert_path.display(),
                    "new TLS certificate files are unusable; still serving the previous certificate"
                ),
            }
        }
    }

    /// One poll step. `seen` holds the file contents last acted on, so an invalid pair is
    /// reported once, not on every tick (unreadable files are reported on every tick).
    async fn reload_if_changed(
        &self,
        cert_path: &Path,
        key_path: &Path,
        seen: &mut Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Reload> {
        let cert_pem = read_async(cert_path).await?;
        let key_pem = read_async(key_path).await?;
        if matches!(seen, Some((c, k)) if *c == cert_pem && *k == key_pem) {
            return Ok(Reload::Unchanged);
        }
        let parsed = parse_pem(&cert_pem, &key_pem, &cert_path.display().to_string(), &key_path.display().to_string());
        *seen = Some((cert_pem, key_pem));
        let (chain, key) = parsed?;
        // The first poll usually sees what `from_pem_files` already loaded.
        if chain == self.current().cert {
            return Ok(Reload::Unchanged);
        }
        self.replace(chain, key)?;
        Ok(Reload::Replaced)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reload {
    Unchanged,
    Replaced,
}

/// Build the rustls key, checking that it matches the leaf certificate.
fn certified_key(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey> {
    if chain.is_empty() {
        return Err(TlsError::NoCertificate("certificate chain".into()));
    }
    // Key parsing is the same for every profile; the profile only limits negotiation.
    CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(TlsError::Key)
}

pub(crate) fn parse_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pem_err =
        |what: &str, e: rustls_pki_types::pem::Error| TlsError::Pem { what: what.to_owned(), detail: e.to_string() };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_name, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_name.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_err(key_name, e))?;
    Ok((chain, key))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

async fn read_async(path: &Path) -> Result<Vec<u8>> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{crypto_provider, server_config, TlsProfile};
    use super::*;
    use rustls::client::ClientConfig;
    use rustls::pki_types::ServerName;
    use rustls::RootCertStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    #[tokio::test]
    async fn replaced_cert_serves_new_handshakes_while_old_connections_continue() {
        let (old, new) = (TestCert::generate(), TestCert::generate());
        let resolver = old.resolver();
        let server = Arc::new(server_config(TlsProfile::Bsi, resolver.clone(), None).unwrap());
        let mut roots = RootCertStore::empty();
        roots.add(old.chain[0].clone()).unwrap();
        roots.add(new.chain[0].clone()).unwrap();
        let client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(crypto_provider(TlsProfile::Bsi)))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );

        // An echo connection established with the old certificate.
        let (c, s) = tokio::io::duplex(4096);
        let acceptor = TlsAcceptor::from(server.clone());
        let echo = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.flush().await.unwrap();
        });
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = TlsConnector::from(client.clone()).connect(name, c).await.unwrap();
        assert_eq!(conn.get_ref().1.peer_certificates().unwrap()[0], old.chain[0]);

        resolver.replace(new.chain.clone(), new.key.clone_key()).unwrap();

        conn.write_all(b"hello").await.unwrap();
        conn.flush().await.unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        echo.await.unwrap();

        let n = handshake((*server).clone(), client).await.unwrap();
        assert_eq!(n.peer_cert, new.chain[0]);
    }

    #[test]
    fn replace_with_mismatched_key_keeps_old_cert() {
        let (a, b) = (TestCert::generate(), TestCert::generate());
        let resolver = a.resolver();
        let mismatch = resolver.replace(b.chain.clone(), a.key.clone_key());
        assert!(matches!(mismatch, Err(TlsError::Key(_))));
        assert!(resolver.replace(Vec::new(), b.key.clone_key()).is_err());
        assert_eq!(resolver.current().cert, a.chain);
    }

    fn write_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&c, cert_pem).unwrap();
        std::fs::write(&k, key_pem).unwrap();
        (c, k)
    }

    #[tokio::test]
    async fn reload_step_replaces_on_change_and_keeps_old_cert_on_invalid_files() {
        let dir = TempDir::new("reload-step");
        let (a, b) = (TestCert::generate(), TestCert::generate());
        let (crt, key) = write_pair(&dir.0, &a.cert_pem, &a.key_pem);
        let resolver = ReloadingCert::from_pem_files(&crt, &key).unwrap();
        let mut seen = None;

        let out = resolver.reload_if_changed(&crt, &key, &mut seen).await;
        assert_eq!(out.unwrap(), Reload::Unchanged, "same files as loaded");

        write_pair(&dir.0, &b.cert_pem, &a.key_pem); // new cert, old key: mid-rotation
        assert!(resolver.reload_if_changed(&crt, &key, &mut seen).await.is_err());
        assert_eq!(resolver.current().cert, a.chain);

        std::fs::write(&key, "not a key").unwrap();
        let out = resolver.reload_if_changed(&crt, &key, &mut seen).await;
        assert!(matches!(out, Err(TlsError::Pem { .. })));
        assert_eq!(resolver.current().cert, a.chain);

        write_pair(&dir.0, &b.cert_pem, &b.key_pem);
        let out = resolver.reload_if_changed(&crt, &key, &mut seen).await;
        assert_eq!(out.unwrap(), Reload::Replaced);
        assert_eq!(resolver.current().cert, b.chain);

        let out = resolver.reload_if_changed(&crt, &key, &mut seen).await;
        assert_eq!(out.unwrap(), Reload::Unchanged);
    }

    #[tokio::test]
    async fn watch_files_picks_up_rotated_files_and_stops_on_cancel() {
        let dir = TempDir::new("watch");
        let (a, b) = (TestCert::generate(), TestCert::generate());
        let (crt, key) = write_pair(&dir.0, &a.cert_pem, &a.key_pem);
        let resolver = Arc::new(ReloadingCert::from_pem_files(&crt, &key).unwrap());
        let cancel = CancellationToken::new();
        let watcher = tokio::spawn({
            let (r, c) = (resolver.clone(), cancel.clone());
            async move { r.watch_files(crt, key, Duration::from_millis(10), c).await }
        });

        write_pair(&dir.0, &b.cert_pem, &b.key_pem);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while resolver.current().cert != b.chain {
            assert!(tokio::time::Instant::now() < deadline, "watcher did not reload within 10s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), watcher).await.expect("watcher stops on cancel").unwrap();
    }
}

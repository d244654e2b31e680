//! Client authentication of the admission port (issue 17, item 4). Every pod of the cluster
//! can reach the admission server; with `--client-ca-file` only a client presenting a
//! certificate issued by a CA of that file completes the TLS handshake: the API server, given
//! a client certificate for webhooks in its AdmissionConfiguration's kubeconfig. Anyone else
//! fails the handshake before a byte of a request is read.
//!
//! The CA file is polled like the serving certificate (a mounted ConfigMap changes in
//! place), so a new CA takes effect without a restart; an unusable file keeps the CAs in
//! force. No CA names are sent in the CertificateRequest: clients with one certificate (the
//! API server) send it anyway, and the list would leak nothing useful.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio_util::sync::CancellationToken;

use super::{Result, TlsError};

/// The client CAs in force, replaceable at run time.
pub struct ClientCas {
    provider: Arc<CryptoProvider>,
    current: RwLock<(Vec<u8>, Arc<dyn ClientCertVerifier>)>,
}

impl fmt::Debug for ClientCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCas").finish_non_exhaustive()
    }
}

impl ClientCas {
    /// The CAs of the PEM file `path`; at least one certificate.
    pub fn from_pem_file(path: &Path, provider: Arc<CryptoProvider>) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
        let verifier = verifier(&pem, &path.display().to_string(), &provider)?;
        Ok(Self { provider, current: RwLock::new((pem, verifier)) })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).1.clone()
    }

    /// Takes the CAs of `pem` (read from `name`) when they differ from those in force;
    /// whether it replaced them. An unusable `pem` is an error and changes nothing.
    fn replace_if_changed(&self, pem: Vec<u8>, name: &str) -> Result<bool> {
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == pem {
            return Ok(false);
        }
        let verifier = verifier(&pem, name, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (pem, verifier);
        Ok(true)
    }

    /// Re-reads `path` every `interval` until `cancel`.
    pub async fn watch_file(&self, path: PathBuf, interval: Duration, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let pem = match tokio::fs::read(&path).await {
                Ok(pem) => pem,
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "cannot read the client CA file; keeping the CAs in force");
                    continue;
                }
            };
            match self.replace_if_changed(pem.clone(), &path.display().to_string()) {
                Ok(true) => tracing::info!(path = %path.display(), "reloaded the client CAs"),
                Ok(false) => {}
                // Once per content, not on every tick.
                Err(error) if reported.as_ref() != Some(&pem) => {
                    tracing::warn!(%error, path = %path.display(), "the new client CA file is unusable; keeping the CAs in force");
                    reported = Some(pem);
                }
                Err(_) => {}
            }
        }
    }
}

fn verifier(pem: &[u8], name: &str, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::Pem { what: name.to_owned(), detail: e.to_string() })?;
        roots.add(cert).map_err(|e| TlsError::Pem { what: name.to_owned(), detail: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(name.to_owned()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::ClientVerifier(e.to_string()))
}

impl ClientCertVerifier for ClientCas {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{handshake, TempDir, TestCert};
    use super::super::{crypto_provider, server_config, TlsProfile};
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    use rustls::client::ClientConfig;
    use rustls::ServerConfig;
    use rustls_pki_types::PrivateKeyDer;

    /// A CA (PEM) and a client certificate it issued (DER chain, key).
    fn ca_and_client() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca.pem(), vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }

    fn client(
        server: &TestCert,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(server.chain[0].clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(crypto_provider(TlsProfile::Bsi)))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    fn cas(dir: &Path, pem: &str) -> (PathBuf, Arc<ClientCas>) {
        let path = dir.join("client-ca.crt");
        std::fs::write(&path, pem).unwrap();
        let provider = Arc::new(crypto_provider(TlsProfile::Bsi));
        (path.clone(), Arc::new(ClientCas::from_pem_file(&path, provider).unwrap()))
    }

    /// The server's side of a handshake: over TLS 1.3 a client learns of a refused
    /// certificate only on its first read, so the server's result is what counts.
    async fn server_accepts(server: ServerConfig, client: Arc<ClientConfig>) -> bool {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let accept = tokio::spawn(tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(s));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let _client = tokio_rustls::TlsConnector::from(client).connect(name, c).await;
        accept.await.unwrap().is_ok()
    }

    #[tokio::test]
    async fn only_a_client_with_a_certificate_of_the_configured_ca_completes_the_handshake() {
        let dir = TempDir::new("client-ca");
        let (ca, chain, key) = ca_and_client();
        let (_, cas) = cas(&dir.0, &ca);
        let server_cert = TestCert::generate();
        let server = || server_config(TlsProfile::Bsi, server_cert.resolver(), Some(cas.clone())).unwrap();

        assert!(
            server_accepts(server(), client(&server_cert, Some((chain, key)))).await,
            "the API server's certificate"
        );
        assert!(!server_accepts(server(), client(&server_cert, None)).await, "no certificate");
        let (_, other_chain, other_key) = ca_and_client();
        assert!(!server_accepts(server(), client(&server_cert, Some((other_chain, other_key)))).await, "another CA's");
        // Without client CAs the server asks for nothing (the default).
        let open = server_config(TlsProfile::Bsi, server_cert.resolver(), None).unwrap();
        assert!(handshake(open, client(&server_cert, None)).await.is_ok());
    }

    #[tokio::test]
    async fn a_new_ca_file_takes_effect_without_a_restart_and_a_broken_one_changes_nothing() {
        let dir = TempDir::new("client-ca-reload");
        let (old_ca, old_chain, old_key) = ca_and_client();
        let (new_ca, new_chain, new_key) = ca_and_client();
        let (path, cas) = cas(&dir.0, &old_ca);
        let server_cert = TestCert::generate();
        let server = || server_config(TlsProfile::Bsi, server_cert.resolver(), Some(cas.clone())).unwrap();
        let (old, new) = ((old_chain, old_key), (new_chain, new_key));
        let with = |id: &(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)| {
            client(&server_cert, Some((id.0.clone(), id.1.clone_key())))
        };

        std::fs::write(&path, "not a certificate").unwrap();
        assert!(cas.replace_if_changed(std::fs::read(&path).unwrap(), "f").is_err());
        assert!(server_accepts(server(), with(&old)).await, "a broken file keeps the CAs in force");

        std::fs::write(&path, &new_ca).unwrap();
        let stop = CancellationToken::new();
        let watcher = tokio::spawn({
            let (cas, path, stop) = (cas.clone(), path.clone(), stop.clone());
            async move { cas.watch_file(path, Duration::from_millis(20), stop).await }
        });
        let mut switched = false;
        for _ in 0..100 {
            if server_accepts(server(), with(&new)).await {
                switched = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        watcher.await.unwrap();
        assert!(switched, "the new CA was not taken");
        assert!(!server_accepts(server(), with(&old)).await, "the old CA is no longer trusted");
    }
}

//! Test support: a throwaway certificate, clients trusting it, and an in-memory handshake.

use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::crypto::{ring, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::{
    CipherSuite, NamedGroup, ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ReloadingCert;

/// A self-signed ECDSA P-256 certificate for `localhost`, as DER and as PEM.
pub(crate) struct TestCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCert {
    pub(crate) fn generate() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("rcgen generates a P-256 certificate");
        Self {
            chain: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        }
    }

    pub(crate) fn resolver(&self) -> Arc<ReloadingCert> {
        Arc::new(ReloadingCert::new(self.chain.clone(), self.key.clone_key()).unwrap())
    }

    /// A client trusting this certificate, restricted to the given algorithms.
    pub(crate) fn client(
        &self,
        suites: &[SupportedCipherSuite],
        groups: &[&'static dyn SupportedKxGroup],
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let provider =
            CryptoProvider { cipher_suites: suites.to_vec(), kx_groups: groups.to_vec(), ..ring::default_provider() };
        let mut roots = RootCertStore::empty();
        roots.add(self.chain[0].clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client with rustls' full *ring* defaults.
    pub(crate) fn default_client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let p = ring::default_provider();
        self.client(&p.cipher_suites, &p.kx_groups, rustls::ALL_VERSIONS, alpn)
    }
}

pub(crate) struct Negotiated {
    pub(crate) version: ProtocolVersion,
    pub(crate) suite: CipherSuite,
    pub(crate) group: NamedGroup,
    pub(crate) peer_cert: CertificateDer<'static>,
}

/// Handshake over an in-memory pipe; returns the client's view or the client's error.
pub(crate) async fn handshake(
    server: ServerConfig,
    client: Arc<ClientConfig>,
) -> std::result::Result<Negotiated, String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(TlsAcceptor::from(Arc::new(server)).accept(s));
    let name = ServerName::try_from("localhost").unwrap();
    let result = TlsConnector::from(client).connect(name, c).await;
    let _ = server.await;
    let stream = result.map_err(|e| e.to_string())?;
    let conn = stream.get_ref().1;
    Ok(Negotiated {
        version: conn.protocol_version().unwrap(),
        suite: conn.negotiated_cipher_suite().unwrap().suite(),
        group: conn.negotiated_key_exchange_group().unwrap().name(),
        peer_cert: conn.peer_certificates().unwrap()[0].clone(),
    })
}

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("ldap-elector-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

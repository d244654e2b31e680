//! TLS for the webhook: a BSI TR-02102-2 profile on top of rustls' *ring* provider, and a
//! serving certificate that can be replaced at run time (cert rotation without a restart).
//!
//! The rustls defaults offer X25519 and ChaCha20-Poly1305, neither of which is on the BSI
//! list, so the [`TlsProfile::Bsi`] profile (the default) filters the provider explicitly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, NamedGroup, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// ALPN identifiers we serve, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TR-02102-2 suites available in *ring*: AES-GCM only (no ChaCha20, no RSA key transport;
/// TLS 1.2 only with ECDHE and the ECDSA certificates we issue).
const BSI_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
];

/// TR-02102-2 groups available in *ring*: the NIST curves, not X25519.
const BSI_GROUPS: &[NamedGroup] = &[NamedGroup::secp256r1, NamedGroup::secp384r1];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("unknown TLS profile {0:?}: use \"bsi\" or \"rustls-default\"")]
    UnknownProfile(String),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: String, detail: String },
    #[error("{0} contains no certificate")]
    NoCertificate(String),
    #[error("certificate and key unusable (unsupported key type, or the key does not match the certificate): {0}")]
    Key(rustls::Error),
    #[error("building the TLS server config failed: {0}")]
    Config(#[from] rustls::Error),
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Which cipher suites and key-exchange groups the server offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsProfile {
    /// BSI TR-02102-2: TLS 1.3/1.2, AES-GCM, ECDHE on P-256/P-384, extended master secret.
    #[default]
    Bsi,
    /// Whatever rustls' *ring* provider enables by default (adds X25519 and ChaCha20).
    RustlsDefault,
}

impl FromStr for TlsProfile {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bsi" => Ok(Self::Bsi),
            "rustls-default" => Ok(Self::RustlsDefault),
            other => Err(TlsError::UnknownProfile(other.to_owned())),
        }
    }
}

impl fmt::Display for TlsProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bsi => "bsi",
            Self::RustlsDefault => "rustls-default",
        })
    }
}

/// The *ring* provider, restricted to the profile's suites and groups.
pub fn crypto_provider(profile: TlsProfile) -> CryptoProvider {
    let mut provider = ring::default_provider();
    if profile == TlsProfile::Bsi {
        // Filter rather than list the statics, so the provider's own order and any
        // future additions are judged by the same allow-list.
        provider.cipher_suites.retain(|s| BSI_SUITES.contains(&s.suite()));
        provider.kx_groups.retain(|g| BSI_GROUPS.contains(&g.name()));
    }
    provider
}

/// A server config for `profile`: TLS 1.3 and 1.2, ALPN h2 then http/1.1, no 0-RTT, no
/// client authentication (the API server authenticates us, not the other way round).
pub fn server_config(profile: TlsProfile, cert_resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(crypto_provider(profile)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert_resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.max_early_data_size = 0;
    // The API server keeps connections open; resumption tickets buy little and would
    // outlive a certificate rotation.
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    config.require_ems = profile == TlsProfile::Bsi;
    Ok(config)
}

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
pub(crate) mod tests {
    use super::*;
    use rustls::client::ClientConfig;
    use rustls::crypto::SupportedKxGroup;
    use rustls::pki_types::ServerName;
    use rustls::{ProtocolVersion, RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

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
            let provider = CryptoProvider {
                cipher_suites: suites.to_vec(),
                kx_groups: groups.to_vec(),
                ..ring::default_provider()
            };
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

    struct Negotiated {
        version: ProtocolVersion,
        suite: CipherSuite,
        group: NamedGroup,
        peer_cert: CertificateDer<'static>,
    }

    /// Handshake over an in-memory pipe; returns the client's view or the client's error.
    async fn handshake(server: ServerConfig, client: Arc<ClientConfig>) -> std::result::Result<Negotiated, String> {
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

    fn bsi_server(cert: &TestCert) -> ServerConfig {
        server_config(TlsProfile::Bsi, cert.resolver()).unwrap()
    }

    use rustls::crypto::ring::{cipher_suite as cs, kx_group as kx};
    const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

    #[test]
    fn profile_parses_from_flag_values_and_defaults_to_bsi() {
        assert_eq!(TlsProfile::default(), TlsProfile::Bsi);
        for p in [TlsProfile::Bsi, TlsProfile::RustlsDefault] {
            assert_eq!(p.to_string().parse::<TlsProfile>().unwrap(), p);
        }
        assert!("X25519".parse::<TlsProfile>().is_err());
        // The clap flag and FromStr accept the same spellings.
        for p in [TlsProfile::Bsi, TlsProfile::RustlsDefault] {
            let flag = clap::ValueEnum::to_possible_value(&p).unwrap();
            assert_eq!(flag.get_name(), p.to_string());
        }
    }

    #[test]
    fn bsi_provider_offers_only_listed_suites_and_groups() {
        let p = crypto_provider(TlsProfile::Bsi);
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites.len(), BSI_SUITES.len());
        assert!(suites.iter().all(|s| BSI_SUITES.contains(s)));
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, BSI_GROUPS);
    }

    #[tokio::test]
    async fn bsi_rejects_client_offering_only_x25519() {
        let cert = TestCert::generate();
        let client = cert.client(&[cs::TLS13_AES_128_GCM_SHA256], &[kx::X25519], BOTH, &[]);
        assert!(handshake(bsi_server(&cert), client).await.is_err());
    }

    #[tokio::test]
    async fn bsi_rejects_client_offering_only_chacha20() {
        let cert = TestCert::generate();
        let chacha = [cs::TLS13_CHACHA20_POLY1305_SHA256, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256];
        let client = cert.client(&chacha, &[kx::SECP256R1], BOTH, &[]);
        assert!(handshake(bsi_server(&cert), client).await.is_err());
    }

    #[tokio::test]
    async fn bsi_accepts_p256_with_aes_gcm_over_tls13() {
        let cert = TestCert::generate();
        let client = cert.client(&[cs::TLS13_AES_128_GCM_SHA256], &[kx::SECP256R1], &[&rustls::version::TLS13], &[]);
        let n = handshake(bsi_server(&cert), client).await.unwrap();
        assert_eq!(n.version, ProtocolVersion::TLSv1_3);
        assert_eq!(n.suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(n.group, NamedGroup::secp256r1);
    }

    #[tokio::test]
    async fn bsi_accepts_tls12_ecdhe_ecdsa_aes_gcm() {
        let cert = TestCert::generate();
        let client = cert.client(
            &[cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
            &[kx::SECP384R1],
            &[&rustls::version::TLS12],
            &[],
        );
        let n = handshake(bsi_server(&cert), client).await.unwrap();
        assert_eq!(n.version, ProtocolVersion::TLSv1_2);
        assert_eq!(n.suite, CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
        assert_eq!(n.group, NamedGroup::secp384r1);
    }

    #[tokio::test]
    async fn bsi_steers_a_default_client_away_from_x25519_and_chacha20() {
        let cert = TestCert::generate();
        let n = handshake(bsi_server(&cert), cert.default_client(&[])).await.unwrap();
        assert_eq!(n.version, ProtocolVersion::TLSv1_3);
        assert!(BSI_SUITES.contains(&n.suite));
        assert!(BSI_GROUPS.contains(&n.group));
    }

    /// ClientHello extensions for hand-written hellos: P-256, uncompressed points,
    /// signature algorithms (ecdsa_secp256r1_sha256, rsa_pkcs1_sha256), extended master secret.
    const EXT_GROUPS: &[u8] = &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17];
    const EXT_POINT_FORMATS: &[u8] = &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00];
    const EXT_SIGNATURE_ALGORITHMS: &[u8] = &[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01];
    const EXT_EMS: &[u8] = &[0x00, 0x17, 0x00, 0x00];

    /// A ClientHello written by hand (rustls cannot speak TLS 1.0/1.1 or leave out EMS):
    /// `legacy_version` = `version`, no `supported_versions` extension (so `version` is the
    /// highest the client speaks), ECDHE and CBC suites, the given compression methods and
    /// extensions.
    fn raw_client_hello(version: u16, compression: &[u8], extensions: &[&[u8]]) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend([0x42; 32]); // random
        body.push(0); // no session id

        // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, _AES_128_CBC_SHA, TLS_RSA_WITH_AES_128_CBC_SHA
        let suites: [u16; 3] = [0xc02b, 0xc009, 0x002f];
        body.extend(((suites.len() * 2) as u16).to_be_bytes());
        suites.iter().for_each(|s| body.extend(s.to_be_bytes()));
        body.push(compression.len() as u8);
        body.extend(compression);
        let extensions = extensions.concat();
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut handshake = vec![1]; // client_hello
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record layer
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    /// Sends `hello` to a BSI server; the server's answer (until it closes or 2 s of
    /// silence) and whether the handshake failed on its side.
    async fn answer_to(hello: &[u8]) -> (Vec<u8>, bool) {
        let cert = TestCert::generate();
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(TlsAcceptor::from(Arc::new(bsi_server(&cert))).accept(server_io));
        client.write_all(hello).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            answer.extend(&buf[..n]);
        }
        drop(client);
        (answer, server.await.unwrap().is_err())
    }

    /// A single fatal alert record with `description`: type 21, TLS 1.2 record layer,
    /// length 2, level 2 (fatal).
    fn fatal_alert(description: u8) -> [u8; 7] {
        [21, 3, 3, 0, 2, 2, description]
    }

    #[tokio::test]
    async fn bsi_refuses_tls11_and_tls10_clients_with_a_protocol_version_alert() {
        let extensions = [EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIGNATURE_ALGORITHMS];
        for (name, version) in [("TLS 1.1", 0x0302u16), ("TLS 1.0", 0x0301)] {
            let (answer, failed) = answer_to(&raw_client_hello(version, &[0], &extensions)).await;
            assert!(failed, "{name}: handshake must fail");
            assert_eq!(answer, fatal_alert(70), "{name}: expected a fatal protocol_version alert: {answer:02x?}");
            // signature_algorithms is a TLS 1.2 extension that many clients capped at 1.1
            // send anyway; without it rustls refuses even earlier: handshake_failure.
            let (answer, failed) = answer_to(&raw_client_hello(version, &[0], &extensions[..2])).await;
            assert!(failed, "{name} without signature_algorithms: handshake must fail");
            assert_eq!(answer, fatal_alert(40), "{name}: {answer:02x?}");
        }
    }

    #[tokio::test]
    async fn bsi_requires_extended_master_secret_and_null_compression_from_tls12_clients() {
        let with_ems = [EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIGNATURE_ALGORITHMS, EXT_EMS];
        // The same TLS 1.2 hello with EMS gets a ServerHello (a handshake record) ...
        let (answer, _) = answer_to(&raw_client_hello(0x0303, &[0], &with_ems)).await;
        assert_eq!(answer.get(..2), Some(&[22, 3][..]), "expected a ServerHello: {answer:02x?}");
        assert_eq!(answer.get(5), Some(&2), "expected a ServerHello: {answer:02x?}");
        // ... without EMS a fatal handshake_failure (RFC 7627; TR-02102-2) ...
        let (answer, failed) = answer_to(&raw_client_hello(0x0303, &[0], &with_ems[..3])).await;
        assert!(failed);
        assert_eq!(answer, fatal_alert(40), "without EMS: {answer:02x?}");
        // ... and offering only DEFLATE compression (CRIME) a fatal illegal_parameter.
        let (answer, failed) = answer_to(&raw_client_hello(0x0303, &[1], &with_ems)).await;
        assert!(failed);
        assert_eq!(answer, fatal_alert(47), "deflate only: {answer:02x?}");
    }

    #[test]
    fn bsi_server_config_has_no_early_data_no_tickets_and_requires_ems() {
        let config = bsi_server(&TestCert::generate());
        assert_eq!(config.max_early_data_size, 0, "0-RTT must be off");
        assert_eq!(config.send_tls13_tickets, 0);
        assert!(config.require_ems);
    }

    #[tokio::test]
    async fn rustls_default_profile_accepts_x25519() {
        let cert = TestCert::generate();
        let server = server_config(TlsProfile::RustlsDefault, cert.resolver()).unwrap();
        let client = cert.client(&[cs::TLS13_AES_128_GCM_SHA256], &[kx::X25519], BOTH, &[]);
        let n = handshake(server, client).await.unwrap();
        assert_eq!(n.group, NamedGroup::X25519);
    }

    #[tokio::test]
    async fn replaced_cert_serves_new_handshakes_while_old_connections_continue() {
        let (old, new) = (TestCert::generate(), TestCert::generate());
        let resolver = old.resolver();
        let server = Arc::new(server_config(TlsProfile::Bsi, resolver.clone()).unwrap());
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

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
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

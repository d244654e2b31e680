//! TLS for the webhook: a BSI TR-02102-2 profile on top of rustls' *ring* provider, and a
//! serving certificate that can be replaced at run time (cert rotation without a restart).
//!
//! The rustls defaults offer X25519 and ChaCha20-Poly1305, neither of which is on the BSI
//! list, so the [`TlsProfile::Bsi`] profile (the default) filters the provider explicitly.//!
//! [`cert`] holds the replaceable serving certificate.

mod cert;
mod client_auth;
#[cfg(test)]
pub(crate) mod testing;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::ResolvesServerCert;
use rustls::{CipherSuite, NamedGroup, ServerConfig};

#[cfg(test)]
pub(crate) use cert::parse_pem;
pub use cert::ReloadingCert;
pub use client_auth::ClientCas;

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
    #[error("the client CAs are unusable: {0}")]
    ClientVerifier(String),
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

/// A server config for `profile`: TLS 1.3 and 1.2, ALPN h2 then http/1.1, no 0-RTT. Client
/// authentication only with `client_cas` (every client must then present a certificate one
/// of them issued, [`ClientCas`]); without, any client that reaches the port may talk.
pub fn server_config(
    profile: TlsProfile,
    cert_resolver: Arc<dyn ResolvesServerCert>,
    client_cas: Option<Arc<ClientCas>>,
) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(Arc::new(crypto_provider(profile)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_cas {
        Some(cas) => builder.with_client_cert_verifier(cas),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert_resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.max_early_data_size = 0;
    // The API server keeps connections open; resumption tickets buy little and would
    // outlive a certificate rotation.
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    config.require_ems = profile == TlsProfile::Bsi;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use rustls::{ProtocolVersion, SupportedProtocolVersion};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    fn bsi_server(cert: &TestCert) -> ServerConfig {
        server_config(TlsProfile::Bsi, cert.resolver(), None).unwrap()
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
        let server = server_config(TlsProfile::RustlsDefault, cert.resolver(), None).unwrap();
        let client = cert.client(&[cs::TLS13_AES_128_GCM_SHA256], &[kx::X25519], BOTH, &[]);
        let n = handshake(server, client).await.unwrap();
        assert_eq!(n.group, NamedGroup::X25519);
    }
}

//! The BSI TLS profile (TR-02102-2) where it matters: between the test bed's real
//! kube-apiserver and the running webhook. A transparent TCP relay sits between the two
//! and reads the plaintext part of every handshake (ClientHello, HelloRetryRequest,
//! ServerHello); the admission call must succeed AND every connection must have
//! negotiated a listed version, suite and group. Clients offering only X25519 or only
//! ChaCha20-Poly1305 are refused by the running webhook (its default profile).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use ldap_elector_contract as contract;
use ldap_elector_tests::workloads::fixtures;
use ldap_elector_tests::workloads::webhook::{self, Webhook};
use ldap_elector_tests::{wait_for, Bed};
use rustls::crypto::ring::{cipher_suite as cs, kx_group as kx};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(90);
const NS: &str = "ldap";
const STS: &str = "ldap-server";

const TLS13: u16 = 0x0304;
const TLS12: u16 = 0x0303;
/// TR-02102-2 parameters the webhook may negotiate (IANA code points).
const BSI_SUITES: [u16; 4] = [0x1301, 0x1302, 0xc02b, 0xc02c]; // TLS_AES_128/256_GCM, ECDHE_ECDSA_AES_128/256_GCM
const BSI_GROUPS: [u16; 2] = [0x0017, 0x0018]; // secp256r1, secp384r1
/// ServerHello.random of a HelloRetryRequest (RFC 8446, 4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11,
    0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What the relay read from one connection's plaintext handshake.
#[derive(Clone, Debug, Default)]
struct Handshake {
    /// From the (first) ClientHello.
    offered_versions: Vec<u16>,
    offered_suites: Vec<u16>,
    offered_groups: Vec<u16>,
    /// The server asked for another key share first.
    retry_requested: bool,
    /// From the final ServerHello (and, in TLS 1.2, the ServerKeyExchange).
    version: Option<u16>,
    suite: Option<u16>,
    group: Option<u16>,
}

/// A big-endian reader over a handshake message body; `None` when it runs short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        })
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// (type, body) of each extension.
    fn extensions(&mut self) -> Vec<(u16, &'a [u8])> {
        let mut out = Vec::new();
        let mut list = Reader(self.vec16().unwrap_or_default());
        while let (Some(kind), Some(body)) = (list.u16(), list.vec16()) {
            out.push((kind, body));
        }
        out
    }
}

fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
}

fn client_hello(body: &[u8], seen: &mut Handshake) -> Option<()> {
    if !seen.offered_suites.is_empty() {
        return Some(()); // the second ClientHello after a retry request repeats the offer
    }
    let mut r = Reader(body);
    let legacy = r.u16()?;
    r.take(32)?;
    r.vec8()?;
    seen.offered_suites = u16s(r.vec16()?);
    r.vec8()?;
    seen.offered_versions = vec![legacy];
    for (kind, ext) in r.extensions() {
        match kind {
            10 => seen.offered_groups = u16s(Reader(ext).vec16()?),
            43 => seen.offered_versions = u16s(Reader(ext).vec8()?),
            _ => {}
        }
    }
    Some(())
}

fn server_hello(body: &[u8], seen: &mut Handshake) -> Option<()> {
    let mut r = Reader(body);
    let legacy = r.u16()?;
    let retry = r.take(32)? == HRR_RANDOM;
    r.vec8()?;
    let suite = r.u16()?;
    r.u8()?;
    let mut version = legacy;
    let mut group = None;
    for (kind, ext) in r.extensions() {
        match kind {
            43 => version = Reader(ext).u16()?,
            51 => group = Some(Reader(ext).u16()?), // selected group (retry) or the server's share
            _ => {}
        }
    }
    seen.retry_requested |= retry;
    if !retry {
        (seen.version, seen.suite) = (Some(version), Some(suite));
        seen.group = group.or(seen.group);
    }
    Some(())
}

/// TLS 1.2 only: ServerKeyExchange names the ECDHE curve (curve_type 3 = named_curve).
fn server_key_exchange(body: &[u8], seen: &mut Handshake) -> Option<()> {
    let mut r = Reader(body);
    if r.u8()? == 3 {
        seen.group = Some(r.u16()?);
    }
    Some(())
}

/// Reads the plaintext records of one direction of a connection until encryption starts.
struct Sniffer {
    from_client: bool,
    records: Vec<u8>,
    messages: Vec<u8>,
    done: bool,
}

impl Sniffer {
    fn new(from_client: bool) -> Self {
        Sniffer { from_client, records: Vec::new(), messages: Vec::new(), done: false }
    }

    fn feed(&mut self, bytes: &[u8], seen: &Mutex<Handshake>) {
        if self.done {
            return;
        }
        self.records.extend_from_slice(bytes);
        while self.records.len() >= 5 {
            let len = u16::from_be_bytes([self.records[3], self.records[4]]) as usize;
            if self.records.len() < 5 + len {
                return;
            }
            let record: Vec<u8> = self.records.drain(..5 + len).collect();
            let retrying = {
                let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.retry_requested && seen.version.is_none()
            };
            match record[0] {
                22 => self.messages.extend_from_slice(&record[5..]),
                // TLS 1.3 servers in middlebox-compatibility mode send a dummy
                // ChangeCipherSpec after a HelloRetryRequest; the ServerHello follows.
                20 if retrying && !self.from_client => {}
                // Otherwise ChangeCipherSpec, alert or application data: nothing plaintext follows.
                _ => {
                    self.done = true;
                    return;
                }
            }
            while self.messages.len() >= 4 {
                let len = u32::from_be_bytes([0, self.messages[1], self.messages[2], self.messages[3]]) as usize;
                if self.messages.len() < 4 + len {
                    break;
                }
                let message: Vec<u8> = self.messages.drain(..4 + len).collect();
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                let body = &message[4..];
                let _ = match (self.from_client, message[0]) {
                    (true, 1) => client_hello(body, &mut seen),
                    (false, 2) => server_hello(body, &mut seen),
                    (false, 12) => server_key_exchange(body, &mut seen),
                    _ => Some(()),
                };
            }
        }
        if self.records.len() > 1 << 20 {
            self.done = true;
        }
    }
}

/// Copies `from` to `to`, feeding what passes through to the sniffer.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut sniffer: Sniffer,
    seen: Arc<Mutex<Handshake>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sniffer.feed(&buf[..n], &seen);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A loopback relay to `upstream`; every accepted connection's handshake is recorded.
async fn start_relay(upstream: u16) -> anyhow::Result<(u16, Arc<Mutex<Vec<Arc<Mutex<Handshake>>>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let log: Arc<Mutex<Vec<Arc<Mutex<Handshake>>>>> = Arc::default();
    let connections = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
            let seen = Arc::new(Mutex::new(Handshake::default()));
            connections.lock().unwrap_or_else(|p| p.into_inner()).push(seen.clone());
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, Sniffer::new(true), seen.clone()));
            tokio::spawn(pump(server_read, client_write, Sniffer::new(false), seen));
        }
    });
    Ok((port, log))
}

fn names(code_points: &[u16]) -> Vec<String> {
    code_points
        .iter()
        .map(|c| match c {
            0x001d => "x25519".into(),
            0x0017 => "secp256r1".into(),
            0x0018 => "secp384r1".into(),
            0x0019 => "secp521r1".into(),
            0x11ec => "X25519MLKEM768".into(),
            0x1301 => "TLS_AES_128_GCM_SHA256".into(),
            0x1302 => "TLS_AES_256_GCM_SHA384".into(),
            0x1303 => "TLS_CHACHA20_POLY1305_SHA256".into(),
            0xc02b => "ECDHE_ECDSA_AES_128_GCM".into(),
            0xc02c => "ECDHE_ECDSA_AES_256_GCM".into(),
            0xc02f => "ECDHE_RSA_AES_128_GCM".into(),
            0xc030 => "ECDHE_RSA_AES_256_GCM".into(),
            0xcca8 => "ECDHE_RSA_CHACHA20".into(),
            0xcca9 => "ECDHE_ECDSA_CHACHA20".into(),
            0x0304 => "TLS1.3".into(),
            0x0303 => "TLS1.2".into(),
            other => format!("{other:#06x}"),
        })
        .collect()
}

/// A TLS handshake with the webhook by a rustls client restricted to `provider`.
async fn handshake_with(port: u16, ca_pem: &str, provider: CryptoProvider) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_calls_the_webhook_over_the_bsi_tls_profile() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    // The webhook as the tests run it everywhere: its default profile, no --tls-profile flag.
    let webhook = Webhook::start(&bed).await?;
    let (relay, connections) = start_relay(webhook.port).await?;
    fixtures::namespace(&admin, NS, Some("restricted")).await?;
    // Registered as the chart does, but calling the relay.
    let mwc = webhook::configuration(&format!("https://127.0.0.1:{relay}/mutate"), &webhook.ca_pem, NS, "Fail")?;
    Api::<MutatingWebhookConfiguration>::all(admin.clone()).create(&PostParams::default(), &mwc).await?;

    // An admission call through the relay succeeds: the StatefulSet's pod is injected.
    let annotations = json!({contract::ANNOTATION_INJECT: "true"});
    Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &fixtures::statefulset(STS, 1, annotations)?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let pod = contract::pod_name(STS, 0);
    wait_for("the StatefulSet pod admitted through the webhook", T, || async {
        let found = pods.get_opt(&pod).await.map_err(|e| e.to_string())?.ok_or("no pod yet")?;
        let status = found.metadata.annotations.unwrap_or_default().remove(contract::ANNOTATION_STATUS);
        match status.as_deref() {
            Some(contract::STATUS_INJECTED) => Ok(()),
            other => Err(format!("pod not injected: {other:?}")),
        }
    })
    .await?;

    let seen: Vec<Handshake> = connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|h| h.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    assert!(!seen.is_empty(), "the API server did not connect through the relay");
    for h in &seen {
        println!(
            "kube-apiserver offered versions {:?}, groups {:?}, suites {:?}; webhook {}chose {:?} {:?} {:?}",
            names(&h.offered_versions),
            names(&h.offered_groups),
            names(&h.offered_suites),
            if h.retry_requested { "sent a HelloRetryRequest and " } else { "" },
            names(&h.version.into_iter().collect::<Vec<_>>()),
            names(&h.suite.into_iter().collect::<Vec<_>>()),
            names(&h.group.into_iter().collect::<Vec<_>>()),
        );
        let version = h.version.expect("a ServerHello was seen");
        assert!(version == TLS13 || version == TLS12, "{h:?}");
        assert!(h.suite.is_some_and(|s| BSI_SUITES.contains(&s)), "suite not on the BSI list: {h:?}");
        assert!(h.group.is_some_and(|g| BSI_GROUPS.contains(&g)), "group not on the BSI list: {h:?}");
    }

    // The running webhook refuses what TR-02102-2 does not list, whatever the client prefers.
    let ring = rustls::crypto::ring::default_provider;
    let only_x25519 = CryptoProvider { kx_groups: vec![kx::X25519], ..ring() };
    assert!(handshake_with(webhook.port, &webhook.ca_pem, only_x25519).await.is_err(), "X25519 accepted");
    let chacha = vec![cs::TLS13_CHACHA20_POLY1305_SHA256, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256];
    let only_chacha = CryptoProvider { cipher_suites: chacha, ..ring() };
    assert!(handshake_with(webhook.port, &webhook.ca_pem, only_chacha).await.is_err(), "ChaCha20 accepted");
    handshake_with(webhook.port, &webhook.ca_pem, ring()).await?;
    Ok(())
}

//! Turning a bundle into what rustls serves (pure).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::inspect::{parse_pem_certs, validate};
use crate::{CertBundle, CertError};

/// The certificate chain and private key for a rustls `ServerConfig`. The bundle is validated
/// first, so a mismatched or foreign key is never served.
pub fn load_rustls(bundle: &CertBundle) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    validate(bundle)?;
    let chain = parse_pem_certs(&bundle.cert_pem, "serving certificate (tls.crt)")?;
    let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes())
        .map_err(|e| CertError::Pem { what: "private key (tls.key)", detail: e.to_string() })?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use rustls::client::ClientConnection;
    use rustls::pki_types::ServerName;
    use rustls::server::ServerConnection;
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    use super::*;
    use crate::generate::rotate;
    use crate::test_support::{fresh_bundle, names, t0, DAY};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Completes an in-memory TLS handshake: the client trusts `trusted_ca_pem` and connects
    /// to `server_name`; webpki does the full path validation (signature, SAN, EKU, dates).
    fn handshake(served: &CertBundle, trusted_ca_pem: &str, server_name: &str) -> Result<(), rustls::Error> {
        let (chain, key) = load_rustls(served).expect("load");
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let mut roots = RootCertStore::empty();
        for der in parse_pem_certs(trusted_ca_pem, "trust").expect("PEM") {
            roots.add(der)?;
        }
        let client_config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let mut client = ClientConnection::new(Arc::new(client_config), name)?;
        let mut server = ServerConnection::new(Arc::new(server_config))?;
        for _ in 0..20 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("client write");
            }
            let mut rd = wire.as_slice();
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server read");
                server.process_new_packets()?;
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("server write");
            }
            let mut rd = wire.as_slice();
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client read");
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn loads_one_certificate_and_a_pkcs8_key() {
        let bundle = fresh_bundle(t0());
        let (chain, key) = load_rustls(&bundle).expect("load");
        assert_eq!(chain.len(), 1);
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    }

    #[test]
    fn mismatched_bundle_is_never_loaded() {
        let mut bundle = fresh_bundle(t0());
        bundle.key_pem = fresh_bundle(t0()).key_pem;
        assert!(matches!(load_rustls(&bundle), Err(CertError::KeyMismatch)));
    }

    #[test]
    fn generated_chain_passes_webpki_for_every_service_name() {
        let bundle = rotate(None, &names(), 30 * DAY, SystemTime::now()).expect("bundle");
        for name in names() {
            handshake(&bundle, &bundle.ca_pem, &name).expect("handshake");
        }
        assert!(handshake(&bundle, &bundle.ca_pem, "evil.example").is_err(), "SAN is enforced");
    }

    #[test]
    fn during_ca_rotation_the_new_trust_list_verifies_old_and_new_certificates() {
        let now = SystemTime::now();
        let old = rotate(None, &names(), 30 * DAY, now).expect("old");
        let new = rotate(Some(&old.ca_pem), &names(), 30 * DAY, now).expect("new");
        let name = &names()[2];
        handshake(&old, &new.ca_pem, name).expect("replica still serving the old cert");
        handshake(&new, &new.ca_pem, name).expect("replica serving the new cert");
        // Why the caBundle must be published before the new cert is served:
        assert!(handshake(&new, &old.ca_pem, name).is_err());
    }
}

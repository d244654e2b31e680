//! Transport security of the elector's LDAP connections over TCP (issue 17, item 7): the
//! connection settings for `ldaps://` and StartTLS, trusting only the CA file given
//! (`--ldap-ca-file`), with the server's name checked against the URL's host; and the
//! last check before a password is sent ([`refuse_cleartext_bind`], the pure rule is
//! `LdapCheck::cleartext_bind_refused` in the contract).
//!
//! The client uses rustls with ring (the provider of the whole binary), TLS 1.2 and 1.3
//! with rustls' default suites, and no system roots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldap3::LdapConnSettings;
use ldap_elector_contract::check::{LdapCheck, Transport};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The settings to connect `check` with: StartTLS or `ldaps://` with a client that trusts
/// only the CA file (read now, so a rotated CA is picked up by the next connection).
/// `Err` says what is wrong with the CA file.
pub fn settings(check: &LdapCheck, timeout: Duration) -> Result<LdapConnSettings, String> {
    let settings = LdapConnSettings::new().set_conn_timeout(timeout);
    let transport = check.transport();
    if !transport.is_tls() {
        return Ok(settings);
    }
    let ca_file = check.tls.ca_file.as_deref().ok_or_else(|| {
        format!("{}: TLS needs the CA that signed the server's certificate (--ldap-ca-file)", check.url)
    })?;
    let config = client_config(ca_file)?;
    Ok(settings.set_config(config).set_starttls(transport == Transport::StartTls))
}

/// A rustls client trusting exactly the certificates in `ca_file` (PEM, one or more).
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {}: no PEM certificate in it", ca_file.display()));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The last check before a simple bind: `Err` (nothing is sent) when the rule refuses it.
/// The configuration is validated at start-up too; this keeps every path that binds
/// (health check, audits, the old leader's reads, `reseed`) under the rule.
pub fn refuse_cleartext_bind(check: &LdapCheck) -> Result<(), String> {
    match check.cleartext_bind_refused() {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap_elector_contract::check::{Credentials, Tls};

    fn dir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("elector-tls-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_client_trusts_only_a_readable_ca_file_with_certificates() {
        let d = dir();
        let missing = d.join("missing.crt");
        assert!(client_config(&missing).unwrap_err().contains("missing.crt"));
        let empty = d.join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(client_config(&empty).unwrap_err().contains("no PEM certificate"));
        let ca = ldap_elector_certs::generate_ca("test-ldap-ca", Duration::from_secs(3600)).unwrap();
        let good = d.join("ca.crt");
        std::fs::write(&good, ca.cert_pem()).unwrap();
        assert!(client_config(&good).is_ok());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn settings_use_tls_only_for_ldaps_and_starttls() {
        let d = dir();
        let ca = ldap_elector_certs::generate_ca("test-ldap-ca", Duration::from_secs(3600)).unwrap();
        let file = d.join("ca.crt");
        std::fs::write(&file, ca.cert_pem()).unwrap();
        let tls = Tls { starttls: true, ca_file: Some(file.clone()), allow_cleartext_bind: false };
        let check =
            |url: &str, tls: &Tls| LdapCheck::parse(&format!("{url}?base=dc=x")).unwrap().with_tls(tls).unwrap();
        let timeout = Duration::from_secs(1);
        assert!(settings(&check("ldap://ldap-0.ldap:389", &tls), timeout).unwrap().starttls());
        let ldaps = Tls { starttls: false, ..tls.clone() };
        assert!(!settings(&check("ldaps://ldap-0.ldap:636", &ldaps), timeout).unwrap().starttls());
        assert!(!settings(&check("ldapi://%2Frun%2Fldapi", &tls), timeout).unwrap().starttls());
        assert!(!settings(&check("ldap://127.0.0.1:389", &Tls::default()), timeout).unwrap().starttls());
        // The CA file is read per connection: a CA that went away is an error then.
        let c = check("ldaps://ldap-0.ldap:636", &ldaps);
        std::fs::remove_dir_all(d).unwrap();
        let err = settings(&c, timeout).err().unwrap_or_default();
        assert!(err.contains("ca.crt"), "{err}");
    }

    #[test]
    fn the_edge_refuses_what_the_rule_refuses() {
        let creds = Credentials { bind_dn: Some("cn=a,dc=x".into()), password_file: Some("/pw".into()) };
        let mut check = LdapCheck::parse("ldap://ldap-1.ldap:389?base=dc=x").unwrap().with_credentials(&creds).unwrap();
        // Built without `with_tls` (e.g. a caller that forgot it): still refused here.
        assert!(refuse_cleartext_bind(&check).unwrap_err().contains("cleartext"));
        check.tls.allow_cleartext_bind = true;
        assert!(refuse_cleartext_bind(&check).is_ok());
    }
}

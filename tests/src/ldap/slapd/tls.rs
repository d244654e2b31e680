//! A test CA and a serving certificate for the pair's TLS ([`super::PairOptions::tls`]).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The PEM files slapd's cn=config names (`olcTLS…`), and the CA clients trust.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A fresh test CA (ECDSA P-256) and a certificate for `127.0.0.1` (an IP SAN, no DNS
/// name: `localhost` does not match it) in `dir`.
pub(super) fn tls_files(dir: &Path) -> anyhow::Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let validity = Duration::from_secs(24 * 3600);
    let ca = ldap_elector_certs::generate_ca("ldap-elector-test-ldap-ca", validity)?;
    let serving = ldap_elector_certs::issue_serving(&ca, &[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], validity)?;
    let files = TlsFiles { ca: dir.join("ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key") };
    std::fs::write(&files.ca, ca.cert_pem())?;
    std::fs::write(&files.cert, &serving.cert_pem)?;
    std::fs::write(&files.key, &serving.key_pem)?;
    Ok(files)
}

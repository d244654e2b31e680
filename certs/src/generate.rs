//! Generation of CAs and serving certificates (pure apart from key randomness).

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::inspect::parse_pem_certs;
use crate::{CertBundle, CertError};

/// Lifetime of generated CAs and serving certificates; renewal starts after 2/3 (60 days).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Common name of the generated CAs.
pub const CA_COMMON_NAME: &str = "ldap-elector-webhook-ca";

const MIN_VALIDITY: Duration = Duration::from_secs(60);
const MAX_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// `not_before` is backdated by this much (at most a tenth of the validity) so that a peer
/// or API server whose clock lags a little already accepts a fresh certificate.
const MAX_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Upper bound on the trust list: the new CA plus this many earlier ones.
const MAX_PREVIOUS_CAS: usize = 3;

/// A CA able to sign serving certificates. Its private key lives only in memory.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Ca {
    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    #[cfg(test)]
    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A serving certificate and its private key (PKCS#8), both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// The names under which the API server reaches a webhook Service.
pub fn webhook_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A new self-signed CA (ECDSA P-256), valid from now for `validity`. It may sign end-entity
/// certificates only (path length 0).
pub fn generate_ca(common_name: &str, validity: Duration) -> Result<Ca, CertError> {
    generate_ca_at(common_name, validity, SystemTime::now())
}

pub(crate) fn generate_ca_at(common_name: &str, validity: Duration, now: SystemTime) -> Result<Ca, CertError> {
    let (not_before, not_after) = window(now, validity)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = new_key("CA key")?;
    let issuer = CertifiedIssuer::self_signed(params, key)
        .map_err(|source| CertError::Generate { what: "CA certificate", source })?;
    Ok(Ca { issuer, not_before, not_after })
}

/// A serving certificate signed by `ca`: serverAuth, not a CA, SANs from `dns_names` and
/// `ip_addrs`, valid from now for `validity` but never beyond the CA.
pub fn issue_serving(
    ca: &Ca,
    dns_names: &[String],
    ip_addrs: &[IpAddr],
    validity: Duration,
) -> Result<ServingCert, CertError> {
    issue_serving_at(ca, dns_names, ip_addrs, validity, SystemTime::now())
}

pub(crate) fn issue_serving_at(
    ca: &Ca,
    dns_names: &[String],
    ip_addrs: &[IpAddr],
    validity: Duration,
    now: SystemTime,
) -> Result<ServingCert, CertError> {
    let common_name = match (dns_names.first(), ip_addrs.first()) {
        (Some(dns), _) => dns.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => return Err(CertError::NoSubjectNames),
    };
    let (not_before, not_after) = window(now, validity)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&common_name);
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| {
            name.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| CertError::Generate { what: "serving certificate (invalid DNS name)", source })
        })
        .collect::<Result<_, _>>()?;
    params.subject_alt_names.extend(ip_addrs.iter().copied().map(SanType::IpAddress));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.max(ca.not_before);
    params.not_after = not_after.min(ca.not_after);
    let key = new_key("serving key")?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| CertError::Generate { what: "serving certificate", source })?;
    Ok(ServingCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A fresh bundle: new CA, new serving certificate for `dns_names`, and a trust list of the new
/// CA followed by the CAs of `previous_ca_pem` that are still valid at `now` (see the crate's
/// rotation scheme). Unparseable earlier entries are dropped.
pub fn rotate(
    previous_ca_pem: Option<&str>,
    dns_names: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<CertBundle, CertError> {
    let ca = generate_ca_at(CA_COMMON_NAME, validity, now)?;
    let serving = issue_serving_at(&ca, dns_names, &[], validity, now)?;
    let mut ca_pem = ca.cert_pem();
    let previous = previous_ca_pem.and_then(|pem| parse_pem_certs(pem, "previous trust list").ok()).unwrap_or_default();
    let still_valid = previous.iter().filter(|der| {
        *der != ca.cert_der() && crate::inspect::cert_info(der).is_ok_and(|info| info.is_ca && info.not_after > now)
    });
    for der in still_valid.take(MAX_PREVIOUS_CAS) {
        ca_pem.push_str(&to_pem(der));
    }
    Ok(CertBundle { ca_pem, cert_pem: serving.cert_pem, key_pem: serving.key_pem })
}

/// PEM text of one DER certificate (RFC 7468).
pub(crate) fn to_pem(der: &CertificateDer<'_>) -> String {
    let b64 = BASE64.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    // Base64 is ASCII, so every 64-byte chunk is a char boundary.
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn new_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Generate { what, source })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ldap-elector");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// `[now - backdate, now + validity]` as X.509 times.
fn window(now: SystemTime, validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    if !(MIN_VALIDITY..=MAX_VALIDITY).contains(&validity) {
        return Err(CertError::Validity(validity));
    }
    let backdate = MAX_BACKDATE.min(validity / 10);
    let start = now.checked_sub(backdate);
    let end = now.checked_add(validity);
    match (start, end) {
        (Some(start), Some(end)) => Ok((start.into(), end.into())),
        _ => Err(CertError::Validity(validity)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use x509_parser::oid_registry::{OID_EC_P256, OID_SIG_ECDSA_WITH_SHA256};
    use x509_parser::parse_x509_certificate;

    use super::*;
    use crate::inspect::{cert_info, parse_pem_certs};
    use crate::test_support::{names, t0, DAY};

    fn parse(pem: &str) -> CertificateDer<'static> {
        parse_pem_certs(pem, "test").expect("PEM").remove(0)
    }

    fn assert_p256_sha256(der: &CertificateDer<'_>) {
        let (_, cert) = parse_x509_certificate(der).expect("X.509");
        assert_eq!(cert.signature_algorithm.algorithm, OID_SIG_ECDSA_WITH_SHA256);
        let curve = cert.public_key().algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        assert_eq!(curve, Some(OID_EC_P256));
    }

    #[test]
    fn ca_is_a_self_signed_p256_ca_limited_to_leaf_certificates() {
        let ca = generate_ca("unit-ca", 30 * DAY).expect("CA");
        let der = parse(&ca.cert_pem());
        assert_eq!(&der, ca.cert_der());
        assert_p256_sha256(&der);
        let (_, cert) = parse_x509_certificate(&der).expect("X.509");
        assert!(cert.is_ca());
        assert_eq!(cert.subject(), cert.issuer());
        cert.verify_signature(None).expect("self-signature verifies");
        let constraints = cert.basic_constraints().expect("ext").expect("present").value;
        assert_eq!(constraints.path_len_constraint, Some(0));
        assert!(cert.key_usage().expect("ext").expect("present").value.key_cert_sign());
    }

    #[test]
    fn serving_cert_is_signed_by_its_ca_with_sans_and_server_auth() {
        let ca = generate_ca("unit-ca", 30 * DAY).expect("CA");
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let serving = issue_serving(&ca, &names(), &[ip], 30 * DAY).expect("serving");
        let der = parse(&serving.cert_pem);
        assert_p256_sha256(&der);

        let (_, leaf) = parse_x509_certificate(&der).expect("X.509");
        let ca_der = ca.cert_der().clone();
        let (_, ca_cert) = parse_x509_certificate(&ca_der).expect("X.509");
        assert_eq!(leaf.issuer(), ca_cert.subject());
        leaf.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
        assert!(leaf.verify_signature(None).is_err(), "not self-signed");
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().expect("ext").expect("present").value;
        assert!(eku.server_auth && !eku.client_auth && !eku.any);

        let info = cert_info(&der).expect("info");
        assert_eq!(info.dns_names, names());
        assert_eq!(info.ip_addrs, vec![ip]);
        assert!(serving.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{serving:?}").contains("PRIVATE KEY"), "Debug hides the key");
    }

    #[test]
    fn webhook_dns_names_cover_every_service_form() {
        assert_eq!(
            webhook_dns_names("hook", "sys"),
            ["hook", "hook.sys", "hook.sys.svc", "hook.sys.svc.cluster.local"]
        );
    }

    #[test]
    fn serving_cert_never_outlives_its_ca() {
        let ca = generate_ca_at("unit-ca", 10 * DAY, t0()).expect("CA");
        let later = t0() + 5 * DAY;
        let serving = issue_serving_at(&ca, &names(), &[], 90 * DAY, later).expect("serving");
        let leaf = cert_info(&parse(&serving.cert_pem)).expect("info");
        let ca_info = cert_info(ca.cert_der()).expect("info");
        assert_eq!(leaf.not_after, ca_info.not_after);
        assert!(leaf.not_before >= ca_info.not_before);
    }

    #[test]
    fn not_before_is_backdated_for_clock_skew_but_not_beyond_a_tenth_of_validity() {
        let ca = generate_ca_at("unit-ca", 30 * DAY, t0()).expect("CA");
        let info = cert_info(ca.cert_der()).expect("info");
        assert_eq!(info.not_before, t0() - MAX_BACKDATE);
        assert_eq!(info.not_after, t0() + 30 * DAY);

        let short = generate_ca_at("unit-ca", Duration::from_secs(600), t0()).expect("CA");
        let info = cert_info(short.cert_der()).expect("info");
        assert_eq!(info.not_before, t0() - Duration::from_secs(60));
        assert!(!info.renewal_due(t0()), "a short-lived cert is not due at birth");
    }

    #[test]
    fn bad_inputs_are_rejected_with_errors() {
        assert!(matches!(generate_ca("x", Duration::ZERO), Err(CertError::Validity(_))));
        assert!(matches!(generate_ca("x", 100 * 365 * DAY), Err(CertError::Validity(_))));
        let ca = generate_ca("x", DAY).expect("CA");
        assert!(matches!(issue_serving(&ca, &[], &[], DAY), Err(CertError::NoSubjectNames)));
        let bad = vec!["not a dns name ü".to_owned()];
        assert!(matches!(issue_serving(&ca, &bad, &[], DAY), Err(CertError::Generate { .. })));
    }

    #[test]
    fn rotate_keeps_still_valid_earlier_cas_after_the_new_one() {
        let first = rotate(None, &names(), 90 * DAY, t0()).expect("first");
        assert_eq!(parse_pem_certs(&first.ca_pem, "t").expect("PEM").len(), 1);

        let second = rotate(Some(&first.ca_pem), &names(), 90 * DAY, t0() + 60 * DAY).expect("second");
        let trust = parse_pem_certs(&second.ca_pem, "t").expect("PEM");
        assert_eq!(trust.len(), 2);
        assert_eq!(trust[1], parse(&first.ca_pem), "old CA kept during overlap");
        crate::validate(&second).expect("signing CA is first");

        let third = rotate(Some(&second.ca_pem), &names(), 90 * DAY, t0() + 120 * DAY).expect("third");
        let trust = parse_pem_certs(&third.ca_pem, "t").expect("PEM");
        assert_eq!(trust.len(), 2, "the first CA expired and was dropped");
        assert_eq!(trust[1], parse_pem_certs(&second.ca_pem, "t").expect("PEM")[0]);
    }

    #[test]
    fn rotate_bounds_the_trust_list_and_ignores_garbage() {
        let mut ca_pem = String::new();
        for _ in 0..6 {
            ca_pem = rotate(Some(&ca_pem), &names(), 90 * DAY, t0()).expect("rotate").ca_pem;
        }
        assert_eq!(parse_pem_certs(&ca_pem, "t").expect("PEM").len(), 1 + MAX_PREVIOUS_CAS);
        let fresh = rotate(Some("garbage"), &names(), 90 * DAY, t0()).expect("rotate");
        assert_eq!(parse_pem_certs(&fresh.ca_pem, "t").expect("PEM").len(), 1);
    }

    #[test]
    fn to_pem_round_trips_through_the_pem_parser() {
        let ca = generate_ca("unit-ca", DAY).expect("CA");
        let pem = to_pem(ca.cert_der());
        assert_eq!(pem, ca.cert_pem().replace("\r\n", "\n"));
        assert_eq!(&parse(&pem), ca.cert_der());
    }
}

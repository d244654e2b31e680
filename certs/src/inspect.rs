//! Inspection and validation of PEM bundles, and the renewal decision (pure).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256};
use x509_parser::time::ASN1Time;

use crate::generate::to_pem;
use crate::{CertBundle, CertError};

/// What the renewal decision needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    pub dns_names: Vec<String>,
    pub ip_addrs: Vec<IpAddr>,
}

impl CertInfo {
    /// The moment 2/3 into the lifetime, from which on renewal is due.
    pub fn renewal_point(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 3 * 2
    }

    /// Due: past the renewal point, or not valid yet (clock far behind the issuer's).
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        now < self.not_before || now >= self.renewal_point()
    }
}

/// Why a stored bundle must be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reissue {
    /// The bundle does not validate (message of the [`CertError`]).
    Invalid(String),
    /// Past 2/3 of the serving certificate's or the CA's lifetime.
    Due,
    /// The serving certificate lacks these wanted DNS names.
    MissingNames(Vec<String>),
}

impl fmt::Display for Reissue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reissue::Invalid(why) => write!(f, "invalid bundle: {why}"),
            Reissue::Due => f.write_str("past 2/3 of its lifetime"),
            Reissue::MissingNames(names) => write!(f, "lacks DNS names {}", names.join(", ")),
        }
    }
}

/// Parses one DER certificate.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    let cert = parse_x509(der, "certificate")?;
    let mut info = CertInfo {
        not_before: to_system_time(cert.validity().not_before),
        not_after: to_system_time(cert.validity().not_after),
        is_ca: cert.is_ca(),
        dns_names: Vec::new(),
        ip_addrs: Vec::new(),
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::X509 { what: "certificate", detail: format!("subjectAltName: {e}") })?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => info.dns_names.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_bytes(bytes) {
                    info.ip_addrs.push(ip);
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Checks that the bundle is usable: P-256/SHA-256 throughout, the serving certificate is no
/// CA and is signed by the first CA of the trust list, and the key belongs to it.
pub fn validate(bundle: &CertBundle) -> Result<(), CertError> {
    checked(bundle).map(|_| ())
}

/// True when the bundle should be replaced: it is invalid, or `now` is past 2/3 of the
/// lifetime of the serving certificate or of its CA (or before either's start).
pub fn renewal_due(bundle: &CertBundle, now: SystemTime) -> bool {
    match checked(bundle) {
        Ok((leaf, ca)) => leaf.renewal_due(now) || ca.renewal_due(now),
        Err(_) => true,
    }
}

/// The full store decision: `None` keeps the bundle, `Some(reason)` replaces it.
pub fn reissue_reason(bundle: &CertBundle, dns_names: &[String], now: SystemTime) -> Option<Reissue> {
    let (leaf, ca) = match checked(bundle) {
        Ok(infos) => infos,
        Err(e) => return Some(Reissue::Invalid(e.to_string())),
    };
    if leaf.renewal_due(now) || ca.renewal_due(now) {
        return Some(Reissue::Due);
    }
    let missing: Vec<String> = dns_names
        .iter()
        .filter(|want| !leaf.dns_names.iter().any(|have| have.eq_ignore_ascii_case(want)))
        .cloned()
        .collect();
    (!missing.is_empty()).then_some(Reissue::MissingNames(missing))
}

/// The `caBundle` to publish, or `None` when `existing` already trusts every CA of `desired`
/// and holds nothing expired. The result is `desired` followed by the entries of `existing`
/// that are still valid at `now`, so concurrent or stale publishers never remove a CA that is
/// still in use (see the crate's rotation scheme). Unparseable existing content is dropped.
pub fn merge_ca_bundle(
    existing: Option<&[u8]>,
    desired_pem: &str,
    now: SystemTime,
) -> Result<Option<String>, CertError> {
    let desired = parse_pem_certs(desired_pem, "trust list to publish")?;
    let existing = bundle_certs(existing);

    let mut merged: Vec<&CertificateDer<'static>> = Vec::new();
    for der in &desired {
        if !merged.contains(&der) {
            merged.push(der);
        }
    }
    for der in &existing {
        let valid = cert_info(der).is_ok_and(|info| info.not_after > now);
        if valid && !merged.contains(&der) {
            merged.push(der);
        }
    }

    let as_set = |certs: &mut dyn Iterator<Item = &CertificateDer<'static>>| {
        certs.map(|der| der.as_ref().to_vec()).collect::<BTreeSet<_>>()
    };
    if as_set(&mut merged.iter().copied()) == as_set(&mut existing.iter()) {
        return Ok(None);
    }
    Ok(Some(merged.into_iter().map(to_pem).collect()))
}

/// The certificates of a `caBundle` as published, up to the first unparseable entry (none
/// when it is absent).
fn bundle_certs(existing: Option<&[u8]>) -> Vec<CertificateDer<'static>> {
    existing.map(|pem| CertificateDer::pem_slice_iter(pem).map_while(Result::ok).collect()).unwrap_or_default()
}

/// Whether the `caBundle` `existing` already trusts every CA of `ca_pem`: what a replica that
/// only serves a certificate checks before serving it (it cannot publish).
pub fn trusts(existing: Option<&[u8]>, ca_pem: &str) -> Result<bool, CertError> {
    let wanted = parse_pem_certs(ca_pem, "CA to look for")?;
    let existing = bundle_certs(existing);
    Ok(wanted.iter().all(|der| existing.contains(der)))
}

/// The one certificate of the trust list `bundle.ca_pem` that issued the serving certificate
/// (subject = its issuer, a CA, and its signature verifies), as PEM: the only CA a replica
/// publishes into `caBundle`. Anything else in the Secret's `ca.crt` is never published from
/// there: a CA someone added (whoever may write that Secret would otherwise make the API
/// server trust certificates of their own CA for admission cluster-wide), or an earlier CA of
/// our rotation, which was published when it signed and which [`merge_ca_bundle`] keeps until
/// it expires (every replica re-publishes the issuer of what it serves, so the overlap holds).
pub fn issuing_ca_pem(bundle: &CertBundle) -> Result<String, CertError> {
    const CA: &str = "CA certificate (ca.crt)";
    const LEAF: &str = "serving certificate (tls.crt)";
    let leaf_der = first(parse_pem_certs(&bundle.cert_pem, LEAF)?);
    let leaf = parse_x509(&leaf_der, LEAF)?;
    for der in parse_pem_certs(&bundle.ca_pem, CA)? {
        let issued = parse_x509(&der, CA).is_ok_and(|ca| {
            ca.is_ca() && ca.subject() == leaf.issuer() && leaf.verify_signature(Some(ca.public_key())).is_ok()
        });
        if issued {
            return Ok(to_pem(&der));
        }
    }
    Err(CertError::NotIssuedByCa { detail: format!("no certificate of {CA} issued {LEAF} (issuer {})", leaf.issuer()) })
}

/// All certificates of a PEM text; at least one.
pub(crate) fn parse_pem_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem { what, detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(CertError::Empty { what });
    }
    Ok(certs)
}

/// Validates and returns (serving, signing CA) infos.
fn checked(bundle: &CertBundle) -> Result<(CertInfo, CertInfo), CertError> {
    const CA: &str = "CA certificate (ca.crt)";
    const LEAF: &str = "serving certificate (tls.crt)";
    const KEY: &str = "private key (tls.key)";

    let ca_der = first(parse_pem_certs(&bundle.ca_pem, CA)?);
    let leaf_der = first(parse_pem_certs(&bundle.cert_pem, LEAF)?);
    let ca = parse_x509(&ca_der, CA)?;
    let leaf = parse_x509(&leaf_der, LEAF)?;
    check_profile(&ca, CA)?;
    check_profile(&leaf, LEAF)?;
    if leaf.is_ca() {
        return Err(CertError::ServingIsCa);
    }
    if leaf.issuer() != ca.subject() {
        return Err(CertError::NotIssuedByCa {
            detail: format!("issuer {} but CA subject {}", leaf.issuer(), ca.subject()),
        });
    }
    leaf.verify_signature(Some(ca.public_key()))
        .map_err(|e| CertError::NotIssuedByCa { detail: format!("signature check: {e}") })?;

    let key_der = PrivatePkcs8KeyDer::from_pem_slice(bundle.key_pem.as_bytes())
        .map_err(|e| CertError::Pem { what: KEY, detail: format!("expected a PKCS#8 \"PRIVATE KEY\": {e}") })?;
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &PKCS_ECDSA_P256_SHA256)
        .map_err(|_| CertError::Algorithm { what: KEY })?;
    if key.public_key_raw() != leaf.public_key().subject_public_key.data.as_ref() {
        return Err(CertError::KeyMismatch);
    }
    Ok((cert_info(&leaf_der)?, cert_info(&ca_der)?))
}

fn first(mut certs: Vec<CertificateDer<'static>>) -> CertificateDer<'static> {
    // `parse_pem_certs` never returns an empty list.
    certs.swap_remove(0)
}

fn parse_x509<'a>(der: &'a CertificateDer<'_>, what: &'static str) -> Result<X509Certificate<'a>, CertError> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::X509 { what, detail: "trailing bytes after the certificate".into() }),
        Err(e) => Err(CertError::X509 { what, detail: e.to_string() }),
    }
}

fn check_profile(cert: &X509Certificate<'_>, what: &'static str) -> Result<(), CertError> {
    let spki = &cert.public_key().algorithm;
    let curve_ok = spki.parameters.as_ref().and_then(|p| p.as_oid().ok()).is_some_and(|curve| curve == OID_EC_P256);
    if cert.signature_algorithm.algorithm == OID_SIG_ECDSA_WITH_SHA256
        && spki.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && curve_ok
    {
        Ok(())
    } else {
        Err(CertError::Algorithm { what })
    }
}

fn to_system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    let offset = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 { UNIX_EPOCH.checked_add(offset) } else { UNIX_EPOCH.checked_sub(offset) };
    t.unwrap_or(UNIX_EPOCH)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, PKCS_ECDSA_P384_SHA384};

    use super::*;
    use crate::generate::{generate_ca_at, issue_serving_at};
    use crate::test_support::{bundle_from, fresh_bundle, names, t0, DAY};

    fn leaf_info(bundle: &CertBundle) -> CertInfo {
        cert_info(&parse_pem_certs(&bundle.cert_pem, "t").expect("PEM")[0]).expect("info")
    }

    #[test]
    fn a_ca_bundle_trusts_a_ca_only_when_it_holds_that_very_certificate() {
        let (old, new) = (fresh_bundle(t0()), fresh_bundle(t0()));
        let issuer = |b: &CertBundle| issuing_ca_pem(b).expect("issuer");
        let both = format!("{}{}", issuer(&new), issuer(&old));
        assert!(trusts(Some(both.as_bytes()), &issuer(&old)).expect("PEM"));
        assert!(trusts(Some(issuer(&new).as_bytes()), &issuer(&new)).expect("PEM"));
        assert!(!trusts(Some(issuer(&new).as_bytes()), &issuer(&old)).expect("PEM"));
        assert!(!trusts(None, &issuer(&old)).expect("PEM"));
        assert!(!trusts(Some(b"garbage"), &issuer(&old)).expect("PEM"));
        assert!(trusts(None, "not PEM").is_err(), "nothing to look for is an error, not a yes");
    }

    #[test]
    fn fresh_bundle_validates_and_round_trips_its_dates() {
        let bundle = fresh_bundle(t0());
        validate(&bundle).expect("valid");
        let info = leaf_info(&bundle);
        assert_eq!(info.not_after, t0() + 90 * DAY);
        assert!(info.not_before <= t0() && !info.is_ca);
        assert_eq!(info.dns_names, names());
        assert!(!format!("{bundle:?}").contains("PRIVATE KEY"), "Debug hides the key");
    }

    #[test]
    fn key_of_another_certificate_is_rejected() {
        let mut bundle = fresh_bundle(t0());
        bundle.key_pem = fresh_bundle(t0()).key_pem;
        assert!(matches!(validate(&bundle), Err(CertError::KeyMismatch)));
        assert!(renewal_due(&bundle, t0()), "an invalid bundle is always due");
    }

    #[test]
    fn serving_cert_of_another_ca_is_rejected() {
        let mut bundle = fresh_bundle(t0());
        bundle.ca_pem = fresh_bundle(t0()).ca_pem;
        assert!(matches!(validate(&bundle), Err(CertError::NotIssuedByCa { .. })));
    }

    #[test]
    fn ca_used_as_serving_cert_is_rejected() {
        let ca = generate_ca_at("unit-ca", DAY, t0()).expect("CA");
        let bundle = CertBundle { ca_pem: ca.cert_pem(), cert_pem: ca.cert_pem(), key_pem: ca.key_pem() };
        assert!(matches!(validate(&bundle), Err(CertError::ServingIsCa)));
    }

    #[test]
    fn p384_bundle_is_rejected_as_outside_the_profile() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
        let mut params = CertificateParams::new(names()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("cert");
        let bundle = CertBundle { ca_pem: cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        assert!(matches!(validate(&bundle), Err(CertError::Algorithm { .. })));
    }

    #[test]
    fn garbage_pem_is_rejected() {
        let mut bundle = fresh_bundle(t0());
        bundle.cert_pem = "not a certificate".into();
        assert!(matches!(validate(&bundle), Err(CertError::Empty { .. })));
        let mut bundle = fresh_bundle(t0());
        bundle.ca_pem = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".into();
        assert!(matches!(validate(&bundle), Err(CertError::Pem { .. })));
        let mut bundle = fresh_bundle(t0());
        bundle.key_pem = String::new();
        assert!(matches!(validate(&bundle), Err(CertError::Pem { .. })));
    }

    #[test]
    fn renewal_is_due_from_two_thirds_of_the_serving_lifetime() {
        let bundle = fresh_bundle(t0());
        let point = leaf_info(&bundle).renewal_point();
        assert!(point > t0() + 59 * DAY && point < t0() + 61 * DAY);
        assert!(!renewal_due(&bundle, t0()));
        assert!(!renewal_due(&bundle, point - Duration::from_secs(1)));
        assert!(renewal_due(&bundle, point));
        assert!(renewal_due(&bundle, t0() + 91 * DAY), "expired");
        assert!(renewal_due(&bundle, t0() - DAY), "not valid yet");
        assert_eq!(reissue_reason(&bundle, &names(), point), Some(Reissue::Due));
        assert_eq!(reissue_reason(&bundle, &names(), t0()), None);
    }

    #[test]
    fn renewal_is_due_when_only_the_ca_is_past_two_thirds() {
        // CA from t0 for 90 days (due at ~day 60); serving cert issued at day 50 (due ~day 76).
        let ca = generate_ca_at("unit-ca", 90 * DAY, t0()).expect("CA");
        let bundle = bundle_from(&ca, t0() + 50 * DAY, 90 * DAY);
        let day61 = t0() + 61 * DAY;
        assert!(!leaf_info(&bundle).renewal_due(day61));
        assert!(renewal_due(&bundle, day61));
        assert!(!renewal_due(&bundle, t0() + 55 * DAY));
    }

    #[test]
    fn missing_dns_names_trigger_reissue() {
        let bundle = fresh_bundle(t0());
        let upper: Vec<String> = names().iter().map(|n| n.to_uppercase()).collect();
        assert_eq!(reissue_reason(&bundle, &upper, t0()), None, "DNS names are case-insensitive");
        let renamed = crate::webhook_dns_names("other", "ldap-elector-system");
        assert_eq!(reissue_reason(&bundle, &renamed, t0()), Some(Reissue::MissingNames(renamed.clone())));
        let mut broken = bundle.clone();
        broken.key_pem = fresh_bundle(t0()).key_pem;
        assert!(matches!(reissue_reason(&broken, &names(), t0()), Some(Reissue::Invalid(_))));
    }

    #[test]
    fn only_the_ca_that_issued_the_serving_certificate_is_published() {
        // Our trust list after a rotation (new CA, then the previous one), with a foreign CA
        // someone wrote into ca.crt in front and behind.
        let first = crate::generate::rotate(None, &names(), 90 * DAY, t0()).expect("first");
        let mut bundle =
            crate::generate::rotate(Some(&first.ca_pem), &names(), 90 * DAY, t0() + 60 * DAY).expect("second");
        let ours = parse_pem_certs(&bundle.ca_pem, "t").expect("PEM");
        assert_eq!(ours.len(), 2, "new and previous CA");
        let foreign = ca_pem_at(t0());
        bundle.ca_pem = format!("{foreign}{}{foreign}", bundle.ca_pem);
        let published = issuing_ca_pem(&bundle).expect("issuer");
        assert_eq!(parse_pem_certs(&published, "t").expect("PEM"), vec![ours[0].clone()]);
        // Same subject (every CA of the rotation has the same name), other key: not the issuer.
        bundle.cert_pem = first.cert_pem.clone();
        assert_eq!(
            parse_pem_certs(&issuing_ca_pem(&bundle).expect("issuer"), "t").expect("PEM"),
            vec![ours[1].clone()]
        );
        // Nothing in ca.crt issued tls.crt: an error, nothing published.
        bundle.ca_pem = foreign;
        assert!(matches!(issuing_ca_pem(&bundle), Err(CertError::NotIssuedByCa { .. })));
    }

    fn ca_pem_at(now: SystemTime) -> String {
        generate_ca_at("unit-ca", 90 * DAY, now).expect("CA").cert_pem()
    }

    fn count(pem: &str) -> usize {
        parse_pem_certs(pem, "t").map(|c| c.len()).unwrap_or(0)
    }

    #[test]
    fn merge_publishes_into_an_empty_bundle_and_is_quiet_when_current() {
        let ca = ca_pem_at(t0());
        let merged = merge_ca_bundle(None, &ca, t0()).expect("merge").expect("changed");
        assert_eq!(count(&merged), 1);
        assert_eq!(merge_ca_bundle(Some(merged.as_bytes()), &ca, t0()).expect("merge"), None);
        // Same set, different order or duplicates: still no write.
        let doubled = format!("{ca}{ca}");
        assert_eq!(merge_ca_bundle(Some(doubled.as_bytes()), &ca, t0()).expect("merge"), None);
    }

    #[test]
    fn merge_keeps_the_old_ca_while_it_is_valid_and_ignores_stale_publishers() {
        let old = ca_pem_at(t0());
        let new = ca_pem_at(t0() + 60 * DAY);
        let now = t0() + 60 * DAY;
        let published = merge_ca_bundle(Some(old.as_bytes()), &new, now).expect("merge").expect("changed");
        assert_eq!(published, format!("{}{}", new, old).replace("\r\n", "\n"));
        // A replica that still holds the old trust list publishes late: nothing is removed.
        assert_eq!(merge_ca_bundle(Some(published.as_bytes()), &old, now).expect("merge"), None);
        // After the old CA expired, the next publish prunes it.
        let later = t0() + 91 * DAY;
        let pruned = merge_ca_bundle(Some(published.as_bytes()), &new, later).expect("merge").expect("changed");
        assert_eq!(count(&pruned), 1);
    }

    #[test]
    fn merge_replaces_garbage_and_refuses_to_publish_garbage() {
        let ca = ca_pem_at(t0());
        let merged = merge_ca_bundle(Some(b"junk"), &ca, t0()).expect("merge").expect("changed");
        assert_eq!(count(&merged), 1);
        assert!(merge_ca_bundle(None, "junk", t0()).is_err());
    }

    #[test]
    fn serving_cert_issued_by_ca_reports_ip_sans() {
        let ca = generate_ca_at("unit-ca", DAY, t0()).expect("CA");
        let ip: IpAddr = "::1".parse().expect("ip");
        let serving = issue_serving_at(&ca, &[], &[ip], DAY, t0()).expect("serving");
        let info = cert_info(&parse_pem_certs(&serving.cert_pem, "t").expect("PEM")[0]).expect("info");
        assert_eq!(info.ip_addrs, vec![ip]);
        assert!(info.dns_names.is_empty());
    }
}

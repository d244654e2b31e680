//! Helpers shared by the unit tests.

use std::time::{Duration, SystemTime};

use crate::generate::{generate_ca_at, issue_serving_at, Ca};
use crate::CertBundle;

pub const DAY: Duration = Duration::from_secs(24 * 3600);

pub fn names() -> Vec<String> {
    crate::webhook_dns_names("ldap-elector-webhook", "ldap-elector-system")
}

/// 2030-01-01T00:00:00Z, a fixed "now".
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

pub fn bundle_from(ca: &Ca, now: SystemTime, validity: Duration) -> CertBundle {
    let serving = issue_serving_at(ca, &names(), &[], validity, now).expect("issue serving cert");
    CertBundle { ca_pem: ca.cert_pem(), cert_pem: serving.cert_pem, key_pem: serving.key_pem }
}

pub fn fresh_bundle(now: SystemTime) -> CertBundle {
    let ca = generate_ca_at("test-ca", 90 * DAY, now).expect("generate CA");
    bundle_from(&ca, now, 90 * DAY)
}

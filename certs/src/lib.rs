//! TLS material for the ldap-elector admission webhook: generate, inspect, load, store and
//! publish.
//!
//! Layout: [`generate`], [`inspect`] and [`load`] are pure (no I/O, the clock is a parameter
//! where a decision depends on it); [`store`] is the thin Kubernetes edge.
//!
//! # Profile (BSI TR-02102-2)
//! Every key is ECDSA P-256, every signature ECDSA with SHA-256. Stored bundles that use
//! anything else are rejected as invalid and replaced.
//!
//! # Rotation scheme
//! The CA is *ephemeral*: each issuance creates a fresh CA, signs exactly one serving
//! certificate with it and drops the CA's private key. No CA key is ever stored, so reading
//! the Secret never lets anyone mint certificates (SYS.1.6.A8). CA and serving certificate
//! share one validity window, so "renew the serving certificate" and "rotate the CA" are the
//! same event, and it happens regularly (the path is exercised, not left for year ten).
//!
//! * Renewal is due past 2/3 of the lifetime of the serving certificate or of its CA
//!   ([`inspect::renewal_due`]), or when the bundle is invalid or lacks a wanted DNS name.
//! * The Secret's `ca.crt` is a trust list: the signing CA first, then every earlier CA that
//!   has not expired yet ([`generate::rotate`]). A replica still serving the previous
//!   certificate keeps verifying against the same `caBundle` during the overlap (1/3 of the
//!   lifetime).
//! * The webhook configuration's `caBundle` only grows until entries expire
//!   ([`inspect::merge_ca_bundle`]): publishing adds the wanted CAs and keeps entries that
//!   are still valid. So a replica that publishes a stale bundle a moment after another
//!   replica rotated cannot remove the new CA.
//! * Order, for callers: run [`store::ensure_secret`] at start and periodically (hourly is
//!   plenty), publish the CA that issued its certificate ([`inspect::issuing_ca_pem`],
//!   [`store::publish_ca_bundle`]; never the rest of `ca.crt`, which whoever may write the
//!   Secret could extend), and only then serve the bundle's certificate
//!   ([`load::load_rustls`]). Then no client sees a certificate whose CA it lacks.
//!   A replica that may not write (the webhook's admission server; its controller writes)
//!   reads the Secret ([`store::read_secret`]) and serves a certificate only once
//!   [`store::ca_bundle_published`] says its issuing CA is trusted.
//! * To drop a compromised CA at once: delete the Secret and clear `caBundle` (or re-apply the
//!   webhook configuration); the next start creates and publishes a fresh bundle.

pub mod generate;
pub mod inspect;
pub mod load;
pub mod store;
#[cfg(test)]
mod test_support;

pub use generate::{generate_ca, issue_serving, rotate, webhook_dns_names, Ca, ServingCert, DEFAULT_VALIDITY};
pub use inspect::{
    cert_info, issuing_ca_pem, merge_ca_bundle, reissue_reason, renewal_due, trusts, validate, CertInfo, Reissue,
};
pub use load::load_rustls;
pub use store::{
    ca_bundle_published, ensure_secret, ensure_secret_with_validity, publish_ca_bundle, publish_validating_ca_bundle,
    read_secret, StoreError,
};

use std::fmt;
use std::time::Duration;

/// What the webhook serves and what its clients trust. All fields are PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertBundle {
    /// Trust list for `caBundle`: the signing CA first, then still-valid earlier CAs.
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key, PKCS#8.
    pub key_pem: String,
}

impl fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertBundle")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// Errors of the pure parts: generation, parsing, validation.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the {what} failed: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate validity {0:?} is out of range: use between 1 minute and 20 years")]
    Validity(Duration),
    #[error("a serving certificate needs at least one DNS name or IP address")]
    NoSubjectNames,
    #[error("{what} is not valid PEM ({detail}); regenerate it")]
    Pem { what: &'static str, detail: String },
    #[error("{what} contains no certificate; regenerate it")]
    Empty { what: &'static str },
    #[error("{what} is not a valid X.509 certificate ({detail}); regenerate it")]
    X509 { what: &'static str, detail: String },
    #[error(
        "{what} does not use ECDSA P-256 with SHA-256, the only profile allowed here \
         (BSI TR-02102-2); regenerate it"
    )]
    Algorithm { what: &'static str },
    #[error(
        "the private key does not belong to the serving certificate (the bundle was edited \
         or mixed up); delete the Secret so a fresh bundle is generated"
    )]
    KeyMismatch,
    #[error(
        "the serving certificate was not issued by the first CA of the trust list ({detail}); \
         delete the Secret so a fresh bundle is generated"
    )]
    NotIssuedByCa { detail: String },
    #[error("the serving certificate is marked as a CA; regenerate it")]
    ServingIsCa,
}

//! Kubernetes edge: the TLS Secret and the `caBundle` of the webhook configurations.
//!
//! Every API call is bounded by [`API_TIMEOUT`]. Writes are compare-and-swap on
//! `resourceVersion`, so two replicas starting at once converge on one bundle: the loser of a
//! create or replace re-reads and uses the winner's. The account that writes (the webhook's
//! controller) needs `get`, `create` and `update` on Secrets in its namespace, and `get` and
//! `update` on the named webhook configuration; one that only serves the certificate
//! ([`read_secret`], [`ca_bundle_published`]) needs `get` on both.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::core::ClusterResourceScope;
use kube::{Client, Resource};
use ldap_elector_contract::api::{self, ApiError, Hints};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info};

use crate::generate::{rotate, DEFAULT_VALIDITY};
use crate::inspect::{cert_info, merge_ca_bundle, parse_pem_certs, reissue_reason, Reissue};
use crate::{CertBundle, CertError};

/// Upper bound for every API call.
pub use ldap_elector_contract::api::API_TIMEOUT;
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
pub const SECRET_KEY_CERT: &str = "tls.crt";
pub const SECRET_KEY_KEY: &str = "tls.key";
pub const SECRET_KEY_CA: &str = "ca.crt";
/// Create/replace attempts before giving up on a contended object.
const MAX_ATTEMPTS: usize = 4;

/// Errors of the Kubernetes edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "Secret {namespace}/{name} has type {found:?}, not {SECRET_TYPE_TLS}, and the type cannot \
         change; delete the Secret so it is recreated"
    )]
    WrongSecretType { namespace: String, name: String, found: String },
    #[error(
        "{kind} {name} does not exist; install the webhook configuration (Helm chart) first \
         or fix the configured name"
    )]
    ConfigNotFound { kind: String, name: String },
    #[error("{op} conflicted with concurrent writers {attempts} times in a row; retry later")]
    Contended { op: String, attempts: usize },
    #[error("Secret {namespace}/{name} does not exist yet; the controller creates it (is it running?)")]
    SecretNotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} holds no usable bundle: {why}")]
    InvalidSecret { namespace: String, name: String, why: String },
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Api(e) if e.status_code() == Some(409))
    }
}

/// Reads the webhook's TLS Secret, creating or rotating it when needed, and returns the bundle
/// to serve. Lifetime [`DEFAULT_VALIDITY`].
pub async fn ensure_secret(
    client: Client,
    namespace: &str,
    name: &str,
    dns_names: &[String],
) -> Result<CertBundle, StoreError> {
    ensure_secret_with_validity(client, namespace, name, dns_names, DEFAULT_VALIDITY).await
}

/// [`ensure_secret`] with an explicit lifetime for new certificates (tests use minutes).
pub async fn ensure_secret_with_validity(
    client: Client,
    namespace: &str,
    name: &str,
    dns_names: &[String],
    validity: Duration,
) -> Result<CertBundle, StoreError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let what = format!("Secret {namespace}/{name}");
    for attempt in 1..=MAX_ATTEMPTS {
        let now = SystemTime::now();
        let Some(existing) = call(format!("reading {what}"), api.get_opt(name)).await? else {
            let bundle = rotate(None, dns_names, validity, now)?;
            let secret = new_secret(namespace, name, &bundle);
            match call(format!("creating {what}"), api.create(&PostParams::default(), &secret)).await {
                Ok(_) => {
                    log_issued(&what, "created", "no Secret yet", &bundle);
                    return Ok(bundle);
                }
                Err(e) if e.is_conflict() => {
                    debug!(secret = %what, attempt, "another replica created the Secret first; reading it");
                    continue;
                }
                Err(e) => return Err(e),
            }
        };

        let found_type = existing.type_.as_deref().unwrap_or("Opaque");
        if found_type != SECRET_TYPE_TLS {
            return Err(StoreError::WrongSecretType {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                found: found_type.to_owned(),
            });
        }
        let reason = match bundle_from_secret(&existing) {
            Ok(bundle) => match reissue_reason(&bundle, dns_names, now) {
                None => return Ok(bundle),
                Some(reason) => reason,
            },
            Err(why) => Reissue::Invalid(why),
        };
        let previous_cas = secret_text(&existing, SECRET_KEY_CA);
        let bundle = rotate(previous_cas.as_deref(), dns_names, validity, now)?;
        // `existing` carries its resourceVersion: the replace is a compare-and-swap.
        let mut updated = existing;
        put_bundle(&mut updated, &bundle);
        match call(format!("replacing {what}"), api.replace(name, &PostParams::default(), &updated)).await {
            Ok(_) => {
                log_issued(&what, "rotated", &reason.to_string(), &bundle);
                return Ok(bundle);
            }
            Err(e) if e.is_conflict() => {
                debug!(secret = %what, attempt, "another replica replaced the Secret first; reading it");
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended { op: format!("writing {what}"), attempts: MAX_ATTEMPTS })
}

/// Reads the webhook's TLS Secret as it is, never writing it: for a replica that only serves
/// the certificate (the admission server; the controller creates and rotates the Secret).
pub async fn read_secret(client: Client, namespace: &str, name: &str) -> Result<CertBundle, StoreError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = call(format!("reading Secret {namespace}/{name}"), api.get_opt(name))
        .await?
        .ok_or_else(|| StoreError::SecretNotFound { namespace: namespace.to_owned(), name: name.to_owned() })?;
    let invalid =
        |why: String| StoreError::InvalidSecret { namespace: namespace.to_owned(), name: name.to_owned(), why };
    let bundle = bundle_from_secret(&secret).map_err(invalid)?;
    crate::inspect::validate(&bundle).map_err(|e| invalid(e.to_string()))?;
    Ok(bundle)
}

/// Whether every webhook of the MutatingWebhookConfiguration `name` already trusts every CA
/// of `ca_pem` ([`crate::inspect::trusts`]); reads only.
pub async fn ca_bundle_published(client: Client, name: &str, ca_pem: &str) -> Result<bool, StoreError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let what = format!("MutatingWebhookConfiguration {name}");
    let Some(mut config) = call(format!("reading {what}"), api.get_opt(name)).await? else {
        return Err(StoreError::ConfigNotFound { kind: "MutatingWebhookConfiguration".into(), name: name.to_owned() });
    };
    for client_config in config.client_configs() {
        if !crate::inspect::trusts(client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()), ca_pem)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Adds the CAs of `ca_pem` to the `caBundle` of every webhook of the
/// MutatingWebhookConfiguration `name` (see [`merge_ca_bundle`]). Writes only when something
/// changes; returns whether it wrote.
pub async fn publish_ca_bundle(client: Client, name: &str, ca_pem: &str) -> Result<bool, StoreError> {
    publish::<MutatingWebhookConfiguration>(client, name, ca_pem).await
}

/// [`publish_ca_bundle`] for a ValidatingWebhookConfiguration.
pub async fn publish_validating_ca_bundle(client: Client, name: &str, ca_pem: &str) -> Result<bool, StoreError> {
    publish::<ValidatingWebhookConfiguration>(client, name, ca_pem).await
}

/// The two webhook configuration kinds, seen as lists of client configs.
trait WebhookConfiguration:
    Resource<DynamicType = (), Scope = ClusterResourceScope> + Clone + fmt::Debug + Serialize + DeserializeOwned
{
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig>;
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig> {
        self.webhooks.iter_mut().flatten().map(|w| &mut w.client_config).collect()
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig> {
        self.webhooks.iter_mut().flatten().map(|w| &mut w.client_config).collect()
    }
}

async fn publish<K: WebhookConfiguration>(client: Client, name: &str, ca_pem: &str) -> Result<bool, StoreError> {
    // Refuse to publish garbage before touching the API.
    parse_pem_certs(ca_pem, "trust list to publish")?;
    let api: Api<K> = Api::all(client);
    let what = format!("{} {name}", K::kind(&()));
    for attempt in 1..=MAX_ATTEMPTS {
        let now = SystemTime::now();
        let Some(mut config) = call(format!("reading {what}"), api.get_opt(name)).await? else {
            return Err(StoreError::ConfigNotFound { kind: K::kind(&()).into_owned(), name: name.to_owned() });
        };
        let mut changed = 0usize;
        for client_config in config.client_configs() {
            let existing = client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
            if let Some(merged) = merge_ca_bundle(existing, ca_pem, now)? {
                client_config.ca_bundle = Some(ByteString(merged.into_bytes()));
                changed += 1;
            }
        }
        if changed == 0 {
            debug!(config = %what, "caBundle already up to date");
            return Ok(false);
        }
        // `config` carries its resourceVersion: the replace is a compare-and-swap.
        match call(format!("updating caBundle of {what}"), api.replace(name, &PostParams::default(), &config)).await {
            Ok(_) => {
                info!(config = %what, webhooks = changed, "published caBundle");
                return Ok(true);
            }
            Err(e) if e.is_conflict() => {
                debug!(config = %what, attempt, "webhook configuration changed concurrently; retrying");
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended { op: format!("updating caBundle of {what}"), attempts: MAX_ATTEMPTS })
}

/// Runs one API call under [`API_TIMEOUT`].
async fn call<T>(op: String, request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, StoreError> {
    Ok(api::call(op, API_TIMEOUT, &HINTS, request).await?)
}

const HINTS: Hints = Hints {
    unauthorized: "; the webhook's credentials were rejected: check its ServiceAccount token",
    forbidden: "; RBAC denies it: grant the ServiceAccount (the webhook controller's writes, the admission server's reads) this verb on this object, as the chart does",
    conflict: "",
    invalid: "; the object was rejected as invalid (immutable Secret?): delete it so it is recreated",
};

fn log_issued(what: &str, action: &str, reason: &str, bundle: &CertBundle) {
    let not_after = parse_pem_certs(&bundle.cert_pem, "serving certificate")
        .ok()
        .and_then(|certs| certs.first().and_then(|der| cert_info(der).ok()))
        .map(|info| info.not_after);
    info!(secret = %what, action, reason, ?not_after, "issued webhook serving certificate and CA");
}

fn new_secret(namespace: &str, name: &str, bundle: &CertBundle) -> Secret {
    let labels = [
        ("app.kubernetes.io/name", "ldap-elector"),
        ("app.kubernetes.io/component", "webhook-tls"),
        ("app.kubernetes.io/managed-by", "ldap-elector-webhook"),
    ];
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE_TLS.to_owned()),
        ..Secret::default()
    };
    put_bundle(&mut secret, bundle);
    secret
}

/// Writes the bundle's three keys, keeping any other keys of the Secret.
fn put_bundle(secret: &mut Secret, bundle: &CertBundle) {
    secret.string_data = None;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in
        [(SECRET_KEY_CERT, &bundle.cert_pem), (SECRET_KEY_KEY, &bundle.key_pem), (SECRET_KEY_CA, &bundle.ca_pem)]
    {
        data.insert(key.to_owned(), ByteString(value.clone().into_bytes()));
    }
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The bundle stored in a Secret, or why there is none.
fn bundle_from_secret(secret: &Secret) -> Result<CertBundle, String> {
    let get = |key: &str| secret_text(secret, key).ok_or_else(|| format!("key {key} is missing or not UTF-8"));
    Ok(CertBundle { ca_pem: get(SECRET_KEY_CA)?, cert_pem: get(SECRET_KEY_CERT)?, key_pem: get(SECRET_KEY_KEY)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fresh_bundle, t0};

    #[test]
    fn bundle_round_trips_through_a_tls_secret() {
        let bundle = fresh_bundle(t0());
        let secret = new_secret("ns", "hook-tls", &bundle);
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE_TLS));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ns"));
        let keys: Vec<&str> = secret.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [SECRET_KEY_CA, SECRET_KEY_CERT, SECRET_KEY_KEY]);
        assert_eq!(bundle_from_secret(&secret), Ok(bundle));
    }

    #[test]
    fn replacing_the_bundle_keeps_foreign_keys_and_metadata() {
        let mut secret = new_secret("ns", "hook-tls", &fresh_bundle(t0()));
        secret.metadata.resource_version = Some("42".into());
        secret.data.get_or_insert_with(BTreeMap::new).insert("extra".into(), ByteString(b"x".to_vec()));
        let next = fresh_bundle(t0());
        put_bundle(&mut secret, &next);
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("42"), "CAS token kept");
        assert!(secret.data.as_ref().is_some_and(|d| d.contains_key("extra")));
        assert_eq!(bundle_from_secret(&secret), Ok(next));
    }

    #[test]
    fn secret_without_a_key_is_reported_not_unwrapped() {
        let mut secret = new_secret("ns", "hook-tls", &fresh_bundle(t0()));
        secret.data.as_mut().map(|d| d.remove(SECRET_KEY_KEY));
        let why = bundle_from_secret(&secret).expect_err("missing key");
        assert!(why.contains(SECRET_KEY_KEY));
        assert!(bundle_from_secret(&Secret::default()).is_err());
    }

    #[test]
    fn conflicts_are_recognised_for_retry_and_other_errors_carry_a_hint() {
        let api_error = |code| {
            StoreError::Api(ApiError::Failed {
                op: "x".into(),
                hint: "",
                source: kube::Error::Api(kube::core::Status::failure("m", "r").with_code(code).boxed()),
            })
        };
        assert!(api_error(409).is_conflict());
        assert!(!api_error(403).is_conflict());
        let forbidden = kube::Error::Api(kube::core::Status::failure("m", "Forbidden").with_code(403).boxed());
        assert!(HINTS.for_error(&forbidden).contains("RBAC"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_call_that_hangs_times_out() {
        let hung = std::future::pending::<Result<(), kube::Error>>();
        let err = call("reading Secret ns/x".into(), hung).await.expect_err("timeout");
        assert!(matches!(err, StoreError::Api(ApiError::Timeout { timeout, .. }) if timeout == API_TIMEOUT));
        assert!(err.to_string().contains("reading Secret ns/x"));
    }
}

//! The reconciler: for every StatefulSet that opts in ([`contract::is_opted_in`]) it keeps,
//! in the StatefulSet's namespace,
//! - the elector ServiceAccount ([`inject::elector_service_account`]; created only when it
//!   is our generated [`contract::identity_name`], a custom account is the consumer's),
//! - the Role [`contract::identity_name`] with exactly [`contract::elector_role_rules`],
//!   in step with the replica count, and a RoleBinding of it to that account,
//! - the Lease [`contract::lease_name`] (created when absent; its spec is never written:
//!   that belongs to the electors),
//! - with [`contract::ANNOTATION_NETWORK_POLICY`], an egress NetworkPolicy for its pods
//!   ([`ldap_network_policy`]),
//!
//! all labelled [`contract::LABEL_MANAGED_BY`]/[`contract::LABEL_STATEFULSET`] and owned by
//! the StatefulSet (garbage-collected with it), and it adds `LABEL_ROLE: ROLE_LEADER` to
//! the selector of each Service named by [`contract::leader_services`]. When the opt-in
//! goes away it deletes what it created and restores those selectors, but only once no
//! pod of the StatefulSet still runs an elector (see `Reconciler::clean_up`).
//!
//! [`desired`] and the Service decisions ([`crate::leader_service`]) are pure and
//! unit-tested; the rest is the edge.
//!
//! # Several webhook replicas
//! Every replica reconciles everything; no leader election is needed because every write
//! is idempotent and converges: the generated objects are written by server-side apply
//! with one fixed field manager ([`FIELD_MANAGER`]), so two replicas applying the same
//! desired state are one owner applying it twice, and a replica with a stale view is
//! corrected by the next apply of a replica (or itself) with the fresh one. Service
//! selectors are JSON merge patches guarded by `resourceVersion`, deletions carry a UID
//! precondition, so a concurrent change makes the write fail and retry instead of
//! clobbering it. Leader election would only save a few duplicate no-op requests.
//!
//! # Layout
//! [`desired`] (pure: what should exist) → [`apply`] (the API calls that make it so) under
//! [`controller`] (watches, triggers, backoff); [`rbac`] is the webhook's own RBAC in code.
//! The chart's ClusterRole and Role are the webhook's RBAC, with the reason for every rule.

mod apply;
mod controller;
mod desired;
mod rbac;

use std::future::Future;
use std::time::Duration;

pub use controller::{run_reconciler, run_reconciler_on};
pub use desired::{desired, elector_replicas, ldap_network_policy, DesiredObjects};
pub use rbac::{cluster_role_rules, namespace_role_rules};

/// The one field manager of every server-side apply (see "Several webhook replicas").
pub const FIELD_MANAGER: &str = "ldap-elector-webhook";
/// Upper bound for every API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("StatefulSet has no {0}; cannot derive its objects")]
    Incomplete(&'static str),
    #[error("{op} got no answer within {API_TIMEOUT:?}; check that the API server is reachable")]
    Timeout { op: String },
    #[error("{op} failed: {source}{hint}")]
    Api {
        op: String,
        hint: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot serialise the patch for {op}: {source}")]
    Serialize {
        op: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Runs one API call under [`API_TIMEOUT`].
async fn call<T>(op: &str, request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ReconcileError> {
    match tokio::time::timeout(API_TIMEOUT, request).await {
        Err(_) => Err(ReconcileError::Timeout { op: op.to_string() }),
        Ok(Err(source)) => Err(ReconcileError::Api { op: op.to_string(), hint: hint(&source), source }),
        Ok(Ok(value)) => Ok(value),
    }
}

fn hint(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) => match status.code {
            403 => "; RBAC denies it: grant the webhook's ServiceAccount the rules of the chart's ClusterRole (templates/clusterrole.yaml)",
            409 => "; changed concurrently, will retry",
            422 => "; rejected as invalid (an existing object with this name and an immutable field?)",
            _ => "",
        },
        _ => "; check the network path to the API server",
    }
}

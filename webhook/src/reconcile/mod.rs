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
//! the selector of each Service named by [`contract::leader_services`] (replacing a pinned
//! pod name, see [`crate::leader_service::REPLACED_SELECTOR_KEYS`]), and reports one that
//! selects no ready pod for longer than a failover ([`empty`]). When the opt-in
//! goes away it deletes what it created and restores those selectors, but only once no
//! pod of the StatefulSet still runs an elector (see `Reconciler::clean_up`).
//!
//! [`desired`] and the Service decisions ([`crate::leader_service`]) are pure and
//! unit-tested; the rest is the edge.
//!
//! # Several controller replicas
//! One replica reconciles at a time: the replicas compete for a Lease ([`leadership`]), and
//! a replica that takes it reconciles every StatefulSet. The writes stay safe when two ever
//! overlap (a replica that missed losing its Lease): the generated objects are written by
//! server-side apply with one fixed field manager ([`FIELD_MANAGER`]), so two replicas
//! applying the same desired state are one owner applying it twice; Service selectors are
//! JSON merge patches guarded by `resourceVersion`, deletions carry a UID precondition, so a
//! concurrent change makes the write fail and retry instead of clobbering it.
//!
//! # Layout
//! [`desired`] (pure: what should exist) → [`apply`] (the API calls that make it so) under
//! [`controller`] (watches, triggers, backoff); [`rbac`] is the RBAC of the webhook's two
//! accounts in code. The chart's ClusterRoles and Roles are the source, with the reason for
//! every rule.

mod apply;
mod controller;
mod desired;
mod empty;
pub mod leadership;
mod rbac;

use std::future::Future;

use ldap_elector_contract::api::{self, ApiError, Hints};

pub use controller::{run_reconciler, run_reconciler_on};
pub use desired::{desired, elector_replicas, ldap_network_policy, DesiredObjects, Egress};
pub use empty::family as leader_service_empty_family;
pub use rbac::{
    admission_cluster_role_rules, admission_namespace_role_rules, controller_cluster_role_rules,
    controller_namespace_role_rules,
};

/// The one field manager of every server-side apply (see "Several webhook replicas").
pub const FIELD_MANAGER: &str = "ldap-elector-webhook";
/// Upper bound for every API call.
pub use ldap_elector_contract::api::API_TIMEOUT;
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("StatefulSet has no {0}; cannot derive its objects")]
    Incomplete(&'static str),
    /// Refused, not retried: the StatefulSet gets an Event and its objects stay as they are.
    #[error(transparent)]
    TooManyReplicas(#[from] ldap_elector_contract::ReplicasOutOfRange),
    /// Refused: an object we would generate exists and is not ours; never taken over.
    #[error("{kind} {namespace}/{name} exists and is not ours to take over: {why}")]
    NotOurs { kind: String, namespace: String, name: String, why: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot serialise the patch for {op}: {source}")]
    Serialize {
        op: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Runs one API call under [`API_TIMEOUT`].
async fn call<T>(op: &str, request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ReconcileError> {
    Ok(api::call(op, API_TIMEOUT, &HINTS, request).await?)
}

const HINTS: Hints = Hints {
    unauthorized: "",
    forbidden: "; RBAC denies it: grant the controller's ServiceAccount the rules of the chart's ClusterRole (templates/clusterrole.yaml)",
    conflict: "; changed concurrently, will retry",
    invalid: "; rejected as invalid (an existing object with this name and an immutable field?)",
};

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
//! pod of the StatefulSet still runs an elector (see [`clean_up`](Ctx::clean_up)).
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
//! # RBAC the webhook needs (copy into the chart)
//! Bound to the webhook's ServiceAccount by a ClusterRoleBinding (kept equal to
//! [`cluster_role_rules`] by a unit test):
//! ```yaml
//! rules:
//!   # Owner cache and live GET at admission; the reconciler's main watch.
//!   - apiGroups: ["apps"]
//!     resources: ["statefulsets"]
//!     verbs: ["get", "list", "watch"]
//!   # list: the opt-out check for pods still running an elector. get/watch/patch are never
//!   # used by the webhook itself: it must HOLD every permission it grants in an elector
//!   # Role (see "escalate and bind" below).
//!   - apiGroups: [""]
//!     resources: ["pods"]
//!     verbs: ["get", "list", "watch", "patch"]
//!   # The per-StatefulSet Lease (create/patch: server-side apply; delete: opt-out);
//!   # get/list/watch/update are also held for the elector Role.
//!   - apiGroups: ["coordination.k8s.io"]
//!     resources: ["leases"]
//!     verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
//!   - apiGroups: [""]
//!     resources: ["serviceaccounts"]
//!     verbs: ["list", "watch", "create", "patch", "delete"]
//!   - apiGroups: ["rbac.authorization.k8s.io"]
//!     resources: ["roles", "rolebindings"]
//!     verbs: ["list", "watch", "create", "patch", "delete"]
//!   # Write Services: read at pod admission (pods wait for the leader selector), patched
//!   # by the reconciler.
//!   - apiGroups: [""]
//!     resources: ["services"]
//!     verbs: ["get", "list", "watch", "patch"]
//!   # The optional egress NetworkPolicy of the LDAP pods (ldap-elector.dev/network-policy).
//!   - apiGroups: ["networking.k8s.io"]
//!     resources: ["networkpolicies"]
//!     verbs: ["list", "create", "patch", "delete"]
//!   # Events on the StatefulSet (opt-out pending, a leader Service refused or missing).
//!   - apiGroups: ["events.k8s.io"]
//!     resources: ["events"]
//!     verbs: ["create", "patch"]
//!   # --cert-mode=secret only: keep caBundle in sync (resourceNames = --webhook-config).
//!   - apiGroups: ["admissionregistration.k8s.io"]
//!     resources: ["mutatingwebhookconfigurations"]
//!     resourceNames: ["ldap-elector"]
//!     verbs: ["get", "list", "watch", "update"]
//! ```
//! and, `--cert-mode=secret` only, a Role in the webhook's own namespace (kept equal to
//! [`namespace_role_rules`]); `create` cannot be limited by name in RBAC:
//! ```yaml
//! rules:
//!   - apiGroups: [""]
//!     resources: ["secrets"]
//!     resourceNames: ["ldap-elector-webhook-tls"]
//!     verbs: ["get", "update"]
//!   - apiGroups: [""]
//!     resources: ["secrets"]
//!     verbs: ["create"]
//! ```
//! With `--reconcile=false` only the statefulsets rule, services get/list/watch (admission)
//! and the secret-mode rules remain.
//!
//! ## escalate and bind
//! The API server lets a subject create or update a Role only if it already holds every
//! permission the Role grants (in that namespace), or has the `escalate` verb on roles;
//! and create a RoleBinding only if it holds the bound Role's permissions, or has `bind`
//! on it. We choose *holding*: the pods get/watch/patch and leases get/list/watch/update
//! rows above exist for that check alone. Price: the webhook's ServiceAccount may patch
//! any pod's labels and update any Lease in the cluster (including kube-system leader
//! election Leases), so its token, image and namespace deserve cluster-admin-grade
//! protection. `escalate` + `bind` instead would be strictly worse: with them it could
//! grant itself any namespaced permission. No `escalate`, `bind`, wildcard or Secret
//! access outside its own namespace is needed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use ldap_elector_contract as contract;
use ldap_elector_contract::api::{self, ApiError, Hints};
use ldap_elector_contract::backoff::Backoff;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::spawn_store;
use crate::inject;
use crate::leader_service::{leader_selector_change, restore_selector_change, ServiceChange};

/// The one field manager of every server-side apply (see "Several webhook replicas").
pub const FIELD_MANAGER: &str = "ldap-elector-webhook";
/// Upper bound for every API call.
pub use ldap_elector_contract::api::API_TIMEOUT;
/// Periodic re-check of an opted-in StatefulSet (repairs manual edits and deletions).
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check while a named leader Service does not exist (yet).
const MISSING_SERVICE_RETRY: Duration = Duration::from_secs(30);
/// Re-check while an opt-out waits for pods that still run an elector.
const OPT_OUT_RETRY: Duration = Duration::from_secs(30);
/// Kubernetes' per-namespace account; never bound to the elector Role.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Error backoff: doubles from the first to the last value.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("StatefulSet has no {0}; cannot derive its objects")]
    Incomplete(&'static str),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot serialise the patch for {op}: {source}")]
    Serialize {
        op: String,
        #[source]
        source: serde_json::Error,
    },
}

// ---------------------------------------------------------------------------------------
// RBAC of the webhook itself (documented in the module docs, checked by a unit test)
// ---------------------------------------------------------------------------------------

fn rule(groups: &[&str], resources: &[&str], names: Option<&[&str]>, verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        resource_names: names.map(strings),
        verbs: strings(verbs),
        non_resource_urls: None,
    }
}

/// The webhook's ClusterRole; `webhook_config` is `--webhook-config`.
pub fn cluster_role_rules(webhook_config: &str) -> Vec<PolicyRule> {
    vec![
        rule(&["apps"], &["statefulsets"], None, &["get", "list", "watch"]),
        rule(&[""], &["pods"], None, &["get", "list", "watch", "patch"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            None,
            &["get", "list", "watch", "create", "update", "patch", "delete"],
        ),
        rule(&[""], &["serviceaccounts"], None, &["list", "watch", "create", "patch", "delete"]),
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            None,
            &["list", "watch", "create", "patch", "delete"],
        ),
        rule(&[""], &["services"], None, &["get", "list", "watch", "patch"]),
        rule(&["networking.k8s.io"], &["networkpolicies"], None, &["list", "create", "patch", "delete"]),
        rule(&["events.k8s.io"], &["events"], None, &["create", "patch"]),
        rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations"],
            Some(&[webhook_config]),
            &["get", "list", "watch", "update"],
        ),
    ]
}

/// The webhook's Role in its own namespace (secret mode); `secret` is `--cert-secret`.
pub fn namespace_role_rules(secret: &str) -> Vec<PolicyRule> {
    vec![rule(&[""], &["secrets"], Some(&[secret]), &["get", "update"]), rule(&[""], &["secrets"], None, &["create"])]
}

// ---------------------------------------------------------------------------------------
// Pure core: what should exist for a StatefulSet
// ---------------------------------------------------------------------------------------

/// The objects an opted-in StatefulSet needs, ready for server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub namespace: String,
    pub statefulset: String,
    /// `Some` only when the electors run as our generated account.
    pub service_account: Option<ServiceAccount>,
    /// The account the RoleBinding binds (generated or the consumer's own).
    pub service_account_name: String,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// Metadata only: the spec belongs to the electors.
    pub lease: Lease,
    pub leader_services: Vec<String>,
    /// With [`contract::ANNOTATION_NETWORK_POLICY`]: see [`ldap_network_policy`].
    pub network_policy: Option<NetworkPolicy>,
}

/// The pod names the elector Role must cover: the larger of the wanted and the existing
/// replica count, so that pods of a scale-down keep their rights while they terminate
/// (a leader must still be able to remove its own label on SIGTERM).
pub fn elector_replicas(sts: &StatefulSet) -> u32 {
    let wanted = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let existing = sts.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    u32::try_from(wanted.max(existing)).unwrap_or(0)
}

/// `None` when the StatefulSet is not opted in (then everything we made should go).
///
/// `accounts_in_use`: the ServiceAccounts that pods of the StatefulSet running an elector
/// use now. They stay bound (and our generated one stays) until those pods are replaced,
/// so switching the template's account mid-life does not cut a running leader off the
/// API (it could neither renew nor remove its own label). `default` is never bound.
pub fn desired(sts: &StatefulSet, accounts_in_use: &BTreeSet<String>) -> Result<Option<Desired>, ReconcileError> {
    if !contract::is_opted_in(sts.metadata.annotations.as_ref()) {
        return Ok(None);
    }
    let name = sts.metadata.name.clone().ok_or(ReconcileError::Incomplete("name"))?;
    let namespace = sts.metadata.namespace.clone().ok_or(ReconcileError::Incomplete("namespace"))?;
    let uid = sts.metadata.uid.clone().ok_or(ReconcileError::Incomplete("uid"))?;
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: name.clone(),
        uid,
        controller: Some(true),
        // Blocking the owner's deletion would need `update` on statefulsets/finalizers.
        block_owner_deletion: None,
    };
    let meta = |object: String| ObjectMeta {
        name: Some(object),
        namespace: Some(namespace.clone()),
        labels: Some(our_labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let identity = contract::identity_name(&name);
    let template_spec = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let account = inject::elector_service_account(&name, template_spec);
    let mut bound: BTreeSet<String> =
        accounts_in_use.iter().filter(|a| !a.is_empty() && *a != DEFAULT_SERVICE_ACCOUNT).cloned().collect();
    bound.insert(account.clone());
    let service_account = bound.contains(&identity).then(|| ServiceAccount {
        metadata: meta(identity.clone()),
        // The token reaches the elector only through the projected volume the webhook adds.
        automount_service_account_token: Some(false),
        ..Default::default()
    });
    let role = Role {
        metadata: meta(identity.clone()),
        rules: Some(contract::elector_role_rules(&name, elector_replicas(sts))),
    };
    let role_binding = RoleBinding {
        metadata: meta(identity.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: identity.clone(),
        },
        subjects: Some(
            bound
                .iter()
                .map(|a| Subject {
                    kind: "ServiceAccount".into(),
                    name: a.clone(),
                    namespace: Some(namespace.clone()),
                    api_group: None,
                })
                .collect(),
        ),
    };
    let lease = Lease { metadata: meta(contract::lease_name(&name)), spec: None };
    let wants_policy = sts.metadata.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_NETWORK_POLICY));
    let network_policy =
        wants_policy.is_some_and(|v| v == "true").then(|| ldap_network_policy(sts, meta(identity.clone())));
    Ok(Some(Desired {
        leader_services: contract::leader_services(sts.metadata.annotations.as_ref()),
        namespace: namespace.clone(),
        statefulset: name,
        service_account,
        service_account_name: account,
        role,
        role_binding,
        lease,
        network_policy,
    }))
}

/// Egress NetworkPolicy for the pods of `sts` (BSI APP.4.4.A7): the elector needs the API
/// server and reaches its slapd over ldapi (no network); slapd needs its Mirror-Mode peer
/// (the StatefulSet's own pods, on the ports the template declares; all ports if it declares
/// none) and DNS for the peer's name. The API server is allowed by port only, since its
/// address differs per cluster (narrow it with a policy of your own). Ingress is left to
/// the consumer: LDAP clients are theirs to list.
pub fn ldap_network_policy(sts: &StatefulSet, metadata: ObjectMeta) -> NetworkPolicy {
    let spec = sts.spec.as_ref();
    let pods = spec.map(|s| s.selector.clone()).unwrap_or_default();
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut peer_ports: Vec<NetworkPolicyPort> = spec
        .and_then(|s| s.template.spec.as_ref())
        .map(|t| t.containers.iter().flat_map(|c| c.ports.iter().flatten()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(p.container_port)),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
            ..Default::default()
        })
        .collect();
    peer_ports.dedup();
    let dns = ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.into()),
        ..Default::default()
    });
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods.clone()),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(vec![
                NetworkPolicyEgressRule { ports: Some(vec![tcp(443), tcp(6443)]), to: None },
                NetworkPolicyEgressRule {
                    ports: (!peer_ports.is_empty()).then_some(peer_ports),
                    to: Some(vec![NetworkPolicyPeer { pod_selector: Some(pods), ..Default::default() }]),
                },
                NetworkPolicyEgressRule { ports: Some(dns.to_vec()), to: None },
            ]),
            ingress: None,
        }),
    }
}

fn our_labels(statefulset: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (contract::LABEL_MANAGED_BY.to_string(), contract::MANAGED_BY.to_string()),
        (contract::LABEL_STATEFULSET.to_string(), statefulset.to_string()),
    ])
}

/// Label selector of the objects we generated for `statefulset`.
fn ours_selector(statefulset: &str) -> String {
    format!("{}={},{}={statefulset}", contract::LABEL_MANAGED_BY, contract::MANAGED_BY, contract::LABEL_STATEFULSET)
}

/// Whether `have` carries our labels and owner reference (the only metadata we apply).
fn meta_matches(have: &ObjectMeta, want: &ObjectMeta) -> bool {
    let labels_ok = want.labels.iter().flatten().all(|(k, v)| have.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let owners_ok = want.owner_references.iter().flatten().all(|w| {
        have.owner_references
            .iter()
            .flatten()
            .any(|h| h.uid == w.uid && h.controller == w.controller && h.kind == w.kind)
    });
    labels_ok && owners_ok
}

/// The objects we compare and apply, with what "already as wanted" means for each.
trait Generated:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn body_matches(have: &Self, want: &Self) -> bool;
}

impl Generated for ServiceAccount {
    fn body_matches(have: &Self, want: &Self) -> bool {
        have.automount_service_account_token == want.automount_service_account_token
    }
}

impl Generated for Role {
    fn body_matches(have: &Self, want: &Self) -> bool {
        have.rules == want.rules
    }
}

impl Generated for RoleBinding {
    fn body_matches(have: &Self, want: &Self) -> bool {
        let norm = |s: &Option<Vec<Subject>>| {
            s.iter()
                .flatten()
                .map(|s| (s.kind.clone(), s.name.clone(), s.namespace.clone(), s.api_group.clone().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        have.role_ref == want.role_ref && norm(&have.subjects) == norm(&want.subjects)
    }
}

impl Generated for NetworkPolicy {
    fn body_matches(have: &Self, want: &Self) -> bool {
        have.spec == want.spec
    }
}

impl Generated for Lease {
    /// Never compare (or write) the spec: the electors own it.
    fn body_matches(_: &Self, _: &Self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------
// Edge: the controller
// ---------------------------------------------------------------------------------------

/// Stores of what we generated, so that a StatefulSet that is not opted in (nearly all of
/// them) costs no API call: only if one of these knows an object of it is there work.
#[derive(Clone)]
struct Footprint {
    service_accounts: Store<ServiceAccount>,
    roles: Store<Role>,
    role_bindings: Store<RoleBinding>,
    /// Services carrying `LABEL_STATEFULSET` (our selector mark).
    services: Store<Service>,
}

impl Footprint {
    fn start(client: &Client, shutdown: &CancellationToken) -> Self {
        let ours =
            watcher::Config::default().labels(&format!("{}={}", contract::LABEL_MANAGED_BY, contract::MANAGED_BY));
        let marked = watcher::Config::default().labels(contract::LABEL_STATEFULSET);
        Self {
            service_accounts: spawn_store(client, ours.clone(), shutdown),
            roles: spawn_store(client, ours.clone(), shutdown),
            role_bindings: spawn_store(client, ours, shutdown),
            services: spawn_store(client, marked, shutdown),
        }
    }

    async fn wait_until_ready(&self) {
        let _ = futures::join!(
            self.service_accounts.wait_until_ready(),
            self.roles.wait_until_ready(),
            self.role_bindings.wait_until_ready(),
            self.services.wait_until_ready(),
        );
    }

    fn knows_objects_of(&self, namespace: &str, statefulset: &str) -> bool {
        fn of<K: Resource + Clone + 'static>(store: &Store<K>, ns: &str, sts: &str) -> bool
        where
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            store
                .find(|o| {
                    o.meta().namespace.as_deref() == Some(ns)
                        && o.meta().labels.as_ref().and_then(|l| l.get(contract::LABEL_STATEFULSET)).map(String::as_str)
                            == Some(sts)
                })
                .is_some()
        }
        of(&self.service_accounts, namespace, statefulset)
            || of(&self.roles, namespace, statefulset)
            || of(&self.role_bindings, namespace, statefulset)
            || of(&self.services, namespace, statefulset)
    }
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    footprint: Footprint,
    failures: Mutex<HashMap<ObjectRef<StatefulSet>, u32>>,
}

/// Reconciles all StatefulSets of the cluster until `shutdown`; reconciles in flight finish
/// first. Errors are logged and retried with backoff; this returns only on shutdown.
pub async fn run_reconciler(client: Client, shutdown: CancellationToken) {
    let footprint = Footprint::start(&client, &shutdown);
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = footprint.wait_until_ready() => {}
    }
    info!("reconciler caches synced; reconciling StatefulSets");
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: None };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Ctx { client: client.clone(), recorder, footprint, failures: Mutex::new(HashMap::new()) });
    let stop = shutdown.clone();
    Controller::new(Api::<StatefulSet>::all(client.clone()), watcher::Config::default())
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)).concurrency(4))
        // A marked Service that changes (e.g. a chart upgrade dropped our selector key)
        // is repaired at once rather than at the next resync.
        .watches(Api::<Service>::all(client), watcher::Config::default().labels(contract::LABEL_STATEFULSET), |svc| {
            let ns = svc.namespace()?;
            let sts = svc.labels().get(contract::LABEL_STATEFULSET)?;
            Some(ObjectRef::<StatefulSet>::new(sts).within(&ns))
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => debug!(%object, ?action, "reconciled"),
                // Logged with context by `error_policy`.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::ObjectNotFound(object)) => debug!(%object, "StatefulSet gone before reconcile"),
                Err(error) => warn!(%error, "reconciler watch failed (retrying with backoff)"),
            }
        })
        .await;
    info!("reconciler stopped");
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if sts.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes what we own; Services keep their selector, which
        // is right if the pods were orphaned (`--cascade=orphan`) and keep running.
        return Ok(Action::await_change());
    }
    let in_use = if contract::is_opted_in(sts.metadata.annotations.as_ref()) {
        ctx.elector_pods(&sts).await?.into_values().collect()
    } else {
        BTreeSet::new()
    };
    let action = match desired(&sts, &in_use)? {
        Some(want) => ctx.ensure(&sts, &want).await?,
        None => ctx.clean_up(&sts).await?,
    };
    ctx.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&ObjectRef::from_obj(sts.as_ref()));
    Ok(action)
}

fn error_policy(sts: Arc<StatefulSet>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    let attempt = {
        let mut failures = ctx.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(ObjectRef::from_obj(sts.as_ref())).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Backoff::new(BACKOFF_MIN, BACKOFF_MAX).delay(attempt.saturating_sub(1));
    warn!(
        namespace = sts.namespace().unwrap_or_default(),
        statefulset = sts.name_any(),
        %error,
        attempt,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

impl Ctx {
    /// Bring an opted-in StatefulSet's objects and Services to the desired state.
    async fn ensure(&self, owner: &StatefulSet, want: &Desired) -> Result<Action, ReconcileError> {
        let (ns, sts) = (want.namespace.as_str(), want.statefulset.as_str());
        // Role before RoleBinding: binding a Role is checked against the Role's rules.
        self.sync(ns, sts, want.service_account.as_ref()).await?;
        self.sync(ns, sts, Some(&want.role)).await?;
        self.sync(ns, sts, Some(&want.role_binding)).await?;
        self.sync(ns, sts, Some(&want.lease)).await?;
        self.sync(ns, sts, want.network_policy.as_ref()).await?;

        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let mut missing = Vec::new();
        for name in &want.leader_services {
            let op = format!("reading Service {ns}/{name}");
            match call(&op, services.get_opt(name)).await? {
                None => missing.push(name.as_str()),
                Some(svc) => {
                    let change = leader_selector_change(&svc, sts);
                    if let ServiceChange::Refuse(reason) = &change {
                        let note = format!("Service {name} left alone: {reason}");
                        self.event(owner, EventType::Warning, "LeaderServiceRefused", note).await;
                    }
                    self.change_service(&services, &svc, sts, change).await?
                }
            }
        }
        for svc in self.marked_services(&services, ns, sts).await? {
            if !want.leader_services.iter().any(|n| Some(n.as_str()) == svc.metadata.name.as_deref()) {
                self.change_service(&services, &svc, sts, restore_selector_change(&svc, sts)).await?;
            }
        }
        if !missing.is_empty() {
            warn!(namespace = ns, statefulset = sts, services = ?missing, "leader Service not found (yet); retrying");
            let note = format!("leader Service(s) {} not found; retrying", missing.join(", "));
            self.event(owner, EventType::Warning, "LeaderServiceMissing", note).await;
            return Ok(Action::requeue(MISSING_SERVICE_RETRY));
        }
        Ok(Action::requeue(RESYNC))
    }

    /// Remove what we made for a StatefulSet that is no longer opted in; restore its
    /// Services. Deferred while any of its pods still runs an elector: deleting the Role
    /// under a running leader would leave it unable to remove its own label, and restoring
    /// the selector would send writes to a fenced standby. The consumer finishes the
    /// opt-out by restarting the pods (`kubectl rollout restart`); we re-check meanwhile.
    async fn clean_up(&self, sts: &StatefulSet) -> Result<Action, ReconcileError> {
        let ns = sts.namespace().ok_or(ReconcileError::Incomplete("namespace"))?;
        let name = sts.metadata.name.clone().ok_or(ReconcileError::Incomplete("name"))?;
        if !self.footprint.knows_objects_of(&ns, &name) {
            return Ok(Action::await_change());
        }
        let injected: Vec<String> = self.elector_pods(sts).await?.into_keys().collect();
        if !injected.is_empty() {
            info!(
                namespace = %ns, statefulset = %name, pods = ?injected,
                "opt-out pending: pods still run the elector; restart them (kubectl rollout restart) to finish"
            );
            let note = format!(
                "opt-out pending: pods {} still run the elector, so its Role, Lease and the leader Service \
                 selector stay; restart them (kubectl rollout restart) to finish",
                injected.join(", ")
            );
            self.event(sts, EventType::Normal, "OptOutPending", note).await;
            return Ok(Action::requeue(OPT_OUT_RETRY));
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        for svc in self.marked_services(&services, &ns, &name).await? {
            self.change_service(&services, &svc, &name, restore_selector_change(&svc, &name)).await?;
        }
        self.sync::<NetworkPolicy>(&ns, &name, None).await?;
        self.sync::<Lease>(&ns, &name, None).await?;
        self.sync::<RoleBinding>(&ns, &name, None).await?;
        self.sync::<Role>(&ns, &name, None).await?;
        self.sync::<ServiceAccount>(&ns, &name, None).await?;
        info!(namespace = %ns, statefulset = %name, "opt-out complete: elector objects deleted, Service selectors restored");
        let note = "elector ServiceAccount, Role, RoleBinding and Lease deleted, leader Service selectors restored";
        self.event(sts, EventType::Normal, "OptOutComplete", note.to_string()).await;
        Ok(Action::await_change())
    }

    /// Best effort: an Event on the StatefulSet (shown by `kubectl describe`); a failure
    /// is only logged, it never fails the reconcile.
    async fn event(&self, sts: &StatefulSet, type_: EventType, reason: &str, note: String) {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        let reference = sts.object_ref(&());
        match tokio::time::timeout(API_TIMEOUT, self.recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, reason, "cannot publish Event"),
            Err(_) => debug!(reason, "publishing an Event timed out"),
        }
    }

    /// Pods of the StatefulSet that run an elector (carry the injection marker), with the
    /// ServiceAccount each runs as.
    async fn elector_pods(&self, sts: &StatefulSet) -> Result<BTreeMap<String, String>, ReconcileError> {
        let ns = sts.namespace().ok_or(ReconcileError::Incomplete("namespace"))?;
        let name = sts.name_any();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let op = format!("listing pods of {ns}/{name}");
        // Injection labels every pod with LABEL_ROLE, so this skips all other pods.
        let list = call(&op, pods.list(&ListParams::default().labels(contract::LABEL_ROLE))).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| inject::owner_statefulset_name(&p.metadata) == Some(name.as_str()))
            .filter(|p| {
                p.annotations().get(contract::ANNOTATION_STATUS).map(String::as_str) == Some(contract::STATUS_INJECTED)
            })
            .map(|p| {
                let account = p.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default();
                (p.name_any(), account)
            })
            .collect())
    }

    async fn marked_services(&self, api: &Api<Service>, ns: &str, sts: &str) -> Result<Vec<Service>, ReconcileError> {
        let op = format!("listing Services of {ns}/{sts}");
        let selector = format!("{}={sts}", contract::LABEL_STATEFULSET);
        Ok(call(&op, api.list(&ListParams::default().labels(&selector))).await?.items)
    }

    async fn change_service(
        &self,
        api: &Api<Service>,
        svc: &Service,
        sts: &str,
        change: ServiceChange,
    ) -> Result<(), ReconcileError> {
        let name = svc.name_any();
        let ns = svc.namespace().unwrap_or_default();
        match change {
            ServiceChange::Unchanged => Ok(()),
            ServiceChange::Refuse(reason) => {
                warn!(namespace = %ns, statefulset = sts, service = %name, reason, "leaving Service selector alone");
                Ok(())
            }
            ServiceChange::Patch(patch) => {
                let op = format!("patching the selector of Service {ns}/{name}");
                call(&op, api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))).await?;
                let selector = patch.pointer("/spec/selector").cloned().unwrap_or_default();
                info!(namespace = %ns, statefulset = sts, service = %name, %selector, "patched Service selector");
                Ok(())
            }
        }
    }

    /// Make the objects of kind `K` we generated for `sts` be exactly `want` (or none):
    /// apply it when absent or different, delete any other (stale) one.
    async fn sync<K: Generated>(&self, ns: &str, sts: &str, want: Option<&K>) -> Result<(), ReconcileError> {
        let kind = K::kind(&());
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let op = format!("listing {kind}s of {ns}/{sts}");
        let existing = call(&op, api.list(&ListParams::default().labels(&ours_selector(sts)))).await?.items;
        let want_name = want.and_then(|w| w.meta().name.clone());
        if let (Some(want), Some(name)) = (want, &want_name) {
            let have = existing.iter().find(|e| e.meta().name.as_ref() == Some(name));
            let current = have.is_some_and(|h| meta_matches(h.meta(), want.meta()) && K::body_matches(h, want));
            if !current {
                let op = format!("applying {kind} {ns}/{name}");
                let params = PatchParams::apply(FIELD_MANAGER).force();
                call(&op, api.patch(name, &params, &Patch::Apply(want))).await?;
                let action = if have.is_some() { "updated" } else { "created" };
                info!(namespace = ns, statefulset = sts, kind = %kind, name = %name, action, "applied generated object");
            }
        }
        for stale in existing.iter().filter(|e| e.meta().name != want_name) {
            let name = stale.name_any();
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: stale.meta().uid.clone(), resource_version: None }),
                ..DeleteParams::background()
            };
            let op = format!("deleting {kind} {ns}/{name}");
            match call(&op, api.delete(&name, &params)).await {
                Ok(_) => {
                    info!(namespace = ns, statefulset = sts, kind = %kind, name = %name, action = "deleted", "deleted generated object")
                }
                Err(ReconcileError::Api(e)) if e.status_code() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Runs one API call under [`API_TIMEOUT`].
async fn call<T>(op: &str, request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ReconcileError> {
    Ok(api::call(op, API_TIMEOUT, &HINTS, request).await?)
}

const HINTS: Hints = Hints {
    unauthorized: "",
    forbidden: "; RBAC denies it: grant the webhook's ServiceAccount the rules in reconcile.rs's module docs",
    conflict: "; changed concurrently, will retry",
    invalid: "; rejected as invalid (an existing object with this name and an immutable field?)",
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sts(
        annotations: Value,
        replicas: i32,
        status_replicas: Option<i32>,
        service_account: Option<&str>,
    ) -> StatefulSet {
        let mut v = json!({
            "metadata": {"name": "ldap", "namespace": "dir", "uid": "u-1", "annotations": annotations},
            "spec": {"replicas": replicas, "serviceName": "ldap", "selector": {"matchLabels": {"app": "ldap"}},
                     "template": {"metadata": {"labels": {"app": "ldap"}}, "spec": {"containers": [{"name": "ldap"}]}}},
        });
        if let Some(sa) = service_account {
            v["spec"]["template"]["spec"]["serviceAccountName"] = json!(sa);
        }
        if let Some(r) = status_replicas {
            v["status"] = json!({"replicas": r});
        }
        serde_json::from_value(v).unwrap()
    }

    /// `desired` with no pod running an elector yet.
    fn desired_now(s: &StatefulSet) -> Result<Option<Desired>, ReconcileError> {
        desired(s, &BTreeSet::new())
    }

    fn opted_in() -> Value {
        json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: "ldap-primary, ldap-rw"})
    }

    #[test]
    fn not_opted_in_wants_nothing() {
        assert_eq!(desired_now(&sts(json!({}), 2, None, None)).unwrap(), None);
        assert_eq!(desired_now(&sts(json!({contract::ANNOTATION_INJECT: "false"}), 2, None, None)).unwrap(), None);
    }

    #[test]
    fn opted_in_statefulset_gets_identity_role_binding_and_lease_owned_and_labelled() {
        let want = desired_now(&sts(opted_in(), 2, None, None)).unwrap().unwrap();
        let identity = contract::identity_name("ldap");
        assert_eq!(want.service_account_name, identity);
        let sa = want.service_account.as_ref().expect("generated account");
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert_eq!(want.role.rules, Some(contract::elector_role_rules("ldap", 2)));
        assert_eq!(want.role_binding.role_ref.name, identity);
        let subjects = want.role_binding.subjects.clone().unwrap();
        assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("ServiceAccount", identity.as_str()));
        assert_eq!(subjects[0].namespace.as_deref(), Some("dir"));
        assert_eq!(want.lease.metadata.name, Some(contract::lease_name("ldap")));
        assert_eq!(want.lease.spec, None, "the Lease spec belongs to the electors");
        assert_eq!(want.leader_services, vec!["ldap-primary", "ldap-rw"]);
        for meta in [&sa.metadata, &want.role.metadata, &want.role_binding.metadata, &want.lease.metadata] {
            assert_eq!(meta.namespace.as_deref(), Some("dir"));
            assert_eq!(meta.labels.as_ref(), Some(&our_labels("ldap")));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("StatefulSet", "ldap", "u-1"));
            assert_eq!(owner.controller, Some(true));
        }
    }

    #[test]
    fn custom_service_account_is_bound_but_not_created_and_default_is_never_bound() {
        let want = desired_now(&sts(opted_in(), 2, None, Some("ldap-custom"))).unwrap().unwrap();
        assert!(want.service_account.is_none());
        assert_eq!(want.role_binding.subjects.unwrap()[0].name, "ldap-custom");
        let want = desired_now(&sts(opted_in(), 2, None, Some("default"))).unwrap().unwrap();
        assert_eq!(want.role_binding.subjects.unwrap()[0].name, contract::identity_name("ldap"));
        assert!(want.service_account.is_some());
    }

    #[test]
    fn accounts_of_running_electors_stay_bound_until_their_pods_are_replaced() {
        let identity = contract::identity_name("ldap");
        let in_use = BTreeSet::from([identity.clone(), "default".to_string(), String::new()]);
        let want = desired(&sts(opted_in(), 2, None, Some("ldap-custom")), &in_use).unwrap().unwrap();
        let bound: Vec<String> = want.role_binding.subjects.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(bound, vec!["ldap-custom".to_string(), identity.clone()], "default is never bound");
        assert!(want.service_account.is_some(), "the generated account stays while pods use it");
        assert_eq!(want.service_account_name, "ldap-custom");
    }

    #[test]
    fn role_follows_scale_up_at_once_and_scale_down_once_pods_are_gone() {
        let rules = |r, s| desired_now(&sts(opted_in(), r, s, None)).unwrap().unwrap().role.rules;
        assert_eq!(rules(3, Some(2)), Some(contract::elector_role_rules("ldap", 3)));
        assert_eq!(rules(2, Some(3)), Some(contract::elector_role_rules("ldap", 3)), "terminating pod keeps rights");
        assert_eq!(rules(2, Some(2)), Some(contract::elector_role_rules("ldap", 2)));
        assert_eq!(rules(0, Some(0)), Some(contract::elector_role_rules("ldap", 0)));
    }

    #[test]
    fn incomplete_statefulset_is_an_error_not_a_panic() {
        let mut s = sts(opted_in(), 2, None, None);
        s.metadata.uid = None;
        assert!(matches!(desired_now(&s), Err(ReconcileError::Incomplete("uid"))));
    }

    #[test]
    fn network_policy_only_on_request_and_allows_api_server_dns_and_the_peer_pods() {
        assert!(desired_now(&sts(opted_in(), 2, None, None)).unwrap().unwrap().network_policy.is_none());
        let mut annotations = opted_in();
        annotations[contract::ANNOTATION_NETWORK_POLICY] = json!("true");
        let mut s = sts(annotations, 2, None, None);
        let template = s.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        template.containers[0].ports =
            Some(serde_json::from_value(json!([{"containerPort": 389}, {"containerPort": 636}])).unwrap());
        let policy = desired_now(&s).unwrap().unwrap().network_policy.expect("requested");
        assert_eq!(policy.metadata.name.as_deref(), Some(contract::identity_name("ldap").as_str()));
        let value = serde_json::to_value(&policy.spec).unwrap();
        assert_eq!(value["podSelector"], json!({"matchLabels": {"app": "ldap"}}));
        assert_eq!(value["policyTypes"], json!(["Egress"]), "ingress (the LDAP clients) stays the consumer's");
        let rules = value["egress"].as_array().unwrap();
        let ports =
            |i: usize| rules[i]["ports"].as_array().unwrap().iter().map(|p| p["port"].clone()).collect::<Vec<_>>();
        assert_eq!(ports(0), vec![json!(443), json!(6443)], "the API server");
        assert_eq!(ports(1), vec![json!(389), json!(636)], "the Mirror-Mode peer");
        assert_eq!(rules[1]["to"], json!([{"podSelector": {"matchLabels": {"app": "ldap"}}}]));
        assert_eq!(ports(2), vec![json!(53), json!(53)], "DNS, UDP and TCP");
    }

    #[test]
    fn generated_objects_compare_by_what_we_apply() {
        let want = desired_now(&sts(opted_in(), 2, None, None)).unwrap().unwrap();
        let mut have = want.role.clone();
        have.metadata.labels.get_or_insert_with(BTreeMap::new).insert("extra".into(), "x".into());
        have.metadata.resource_version = Some("9".into());
        assert!(meta_matches(&have.metadata, &want.role.metadata) && Role::body_matches(&have, &want.role));
        have.rules = Some(contract::elector_role_rules("ldap", 3));
        assert!(!Role::body_matches(&have, &want.role));
        let mut lease = want.lease.clone();
        lease.metadata.owner_references = None;
        assert!(!meta_matches(&lease.metadata, &want.lease.metadata));
        // The API server drops an empty apiGroup of a ServiceAccount subject.
        let mut binding = want.role_binding.clone();
        binding.subjects.as_mut().unwrap()[0].api_group = Some(String::new());
        assert!(RoleBinding::body_matches(&binding, &want.role_binding));
    }

    /// The YAML in the module docs (what the chart author copies) equals the functions
    /// (what the e2e tests grant). Flow sequences in that YAML are JSON arrays.
    #[test]
    fn documented_rbac_matches_the_rule_functions() {
        let source = include_str!("reconcile.rs");
        let docs: Vec<&str> =
            source.lines().take_while(|l| l.starts_with("//!")).map(|l| l.trim_start_matches("//!").trim()).collect();
        let mut blocks: Vec<Vec<PolicyRule>> = Vec::new();
        let mut inside = false;
        for line in docs {
            match line {
                "```yaml" => {
                    inside = true;
                    blocks.push(Vec::new());
                }
                "```" => inside = false,
                _ if inside => {
                    let rules = blocks.last_mut().unwrap();
                    let (key, value) = match line.trim_start_matches("- ").split_once(':') {
                        Some((k, v)) if !v.trim().is_empty() && !line.starts_with('#') => (k.trim(), v.trim()),
                        _ => continue,
                    };
                    let list: Vec<String> = serde_json::from_str(value).unwrap_or_else(|e| panic!("{line}: {e}"));
                    if line.starts_with("- ") {
                        rules.push(PolicyRule::default());
                    }
                    let rule = rules.last_mut().unwrap();
                    match key {
                        "apiGroups" => rule.api_groups = Some(list),
                        "resources" => rule.resources = Some(list),
                        "resourceNames" => rule.resource_names = Some(list),
                        "verbs" => rule.verbs = list,
                        other => panic!("unexpected key {other}"),
                    }
                }
                _ => {}
            }
        }
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0], cluster_role_rules("ldap-elector"));
        assert_eq!(blocks[1], namespace_role_rules("ldap-elector-webhook-tls"));
        let all = blocks.concat();
        assert!(all.iter().all(|r| !r.verbs.iter().any(|v| v == "*" || v == "escalate" || v == "bind")));
    }

    /// The RBAC escalation check: the webhook must hold every permission of every Role it
    /// creates (it has no `escalate`/`bind`).
    #[test]
    fn webhook_holds_every_permission_it_grants() {
        let held = cluster_role_rules("x");
        for granted in contract::elector_role_rules("ldap", 3) {
            for group in granted.api_groups.iter().flatten() {
                for resource in granted.resources.iter().flatten() {
                    for verb in &granted.verbs {
                        let covered = held.iter().any(|h| {
                            h.resource_names.is_none()
                                && h.api_groups.iter().flatten().any(|g| g == group)
                                && h.resources.iter().flatten().any(|r| r == resource)
                                && h.verbs.iter().any(|v| v == verb)
                        });
                        assert!(covered, "webhook lacks {verb} on {group}/{resource}");
                    }
                }
            }
        }
    }
}

//! The reconciler's controller: what triggers a reconcile of a StatefulSet, the
//! [`Reconciler`] state every reconcile shares, and the error backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use ldap_elector_contract as contract;
use ldap_elector_contract::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::desired::{desired, Egress};
use super::empty::EmptyServices;
use super::leadership::Leadership;
use super::{ReconcileError, FIELD_MANAGER};
use crate::watches::{spawn_store, without_managed_fields, Changes, SharedWatches};

/// Error backoff: doubles from the first to the last value.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

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
    /// Watches our generated objects until `shutdown`; the marked Services are the shared store.
    fn start(client: &Client, marked_services: Store<Service>, shutdown: &CancellationToken) -> Self {
        let ours =
            watcher::Config::default().labels(&format!("{}={}", contract::LABEL_MANAGED_BY, contract::MANAGED_BY));
        Self {
            service_accounts: spawn_store(client, ours.clone(), without_managed_fields, None, shutdown),
            roles: spawn_store(client, ours.clone(), without_managed_fields, None, shutdown),
            role_bindings: spawn_store(client, ours, without_managed_fields, None, shutdown),
            services: marked_services,
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

/// What every reconcile shares: the client, the Event recorder, the footprint stores and
/// the failure counts of the error backoff.
pub(super) struct Reconciler {
    pub(super) client: Client,
    pub(super) recorder: Recorder,
    footprint: Footprint,
    /// Since when each write Service has selected no ready pod.
    pub(super) empty: Mutex<EmptyServices>,
    failures: Mutex<HashMap<ObjectRef<StatefulSet>, u32>>,
    /// Only the replica holding the reconciler Lease writes.
    leadership: Leadership,
    /// Where the generated LDAP NetworkPolicies let the electors go.
    egress: Egress,
}

impl Reconciler {
    /// Whether the footprint stores know an object we generated for `namespace/statefulset`.
    pub(super) fn knows_objects_of(&self, namespace: &str, statefulset: &str) -> bool {
        self.footprint.knows_objects_of(namespace, statefulset)
    }
}

/// [`run_reconciler_on`] with watches of its own (the webhook process shares its watches
/// with admission instead), alone (no Lease).
pub async fn run_reconciler(client: Client, shutdown: CancellationToken) {
    let (watches, changes) = SharedWatches::start_with_changes(&client, &shutdown);
    run_reconciler_on(client, watches, changes, Leadership::alone(), Egress::default(), shutdown).await
}

/// Reconciles all StatefulSets of the cluster until `shutdown`, triggered by `changes` of
/// the shared `watches`; reconciles in flight finish first. Errors are logged and retried
/// with backoff; this returns only on shutdown.
pub async fn run_reconciler_on(
    client: Client,
    watches: SharedWatches,
    changes: Changes,
    leadership: Leadership,
    egress: Egress,
    shutdown: CancellationToken,
) {
    let footprint = Footprint::start(&client, watches.marked_services.clone(), &shutdown);
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = footprint.wait_until_ready() => {}
    }
    info!("reconciler caches synced; reconciling StatefulSets");
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: None };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Reconciler {
        client,
        recorder,
        footprint,
        empty: Mutex::new(EmptyServices::default()),
        failures: Mutex::new(HashMap::new()),
        leadership: leadership.clone(),
        egress,
    });
    // Whenever this replica starts leading, everything is reconciled once: what the previous
    // holder left undone, and what changed while this one only watched.
    let gained = futures::stream::unfold(leadership, |mut l| async move {
        l.gained().await;
        Some(((), l))
    });
    let stop = shutdown.clone();
    let statefulsets = changes.statefulsets.map(Ok::<_, watcher::Error>);
    Controller::for_stream(statefulsets, watches.statefulsets)
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)).concurrency(4))
        // A marked Service that changes (e.g. a chart upgrade dropped our selector key)
        // is repaired at once rather than at the next resync.
        .watches_stream(changes.marked_services.map(Ok::<_, watcher::Error>), |svc| {
            let ns = svc.namespace()?;
            let sts = svc.labels().get(contract::LABEL_STATEFULSET)?;
            Some(ObjectRef::<StatefulSet>::new(sts).within(&ns))
        })
        .reconcile_all_on(gained)
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

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Reconciler>) -> Result<Action, ReconcileError> {
    if !ctx.leadership.leading() {
        // The holder does it; on taking the Lease this replica reconciles everything.
        return Ok(Action::await_change());
    }
    // The store keeps a pruned copy (`watches::prune`): an opted-in StatefulSet's objects
    // are derived from the whole of it (template account and ports, selector), read live.
    // Every watch event triggers this, so a change of a pruned field is seen here too.
    let sts = if contract::is_opted_in(sts.metadata.annotations.as_ref()) {
        match ctx.live(&sts).await? {
            Some(live) => Arc::new(live),
            // Deleted meanwhile; the watch reports it.
            None => return Ok(Action::await_change()),
        }
    } else {
        sts
    };
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
    let outcome = match desired(&sts, &in_use, &ctx.egress) {
        Ok(Some(want)) => ctx.ensure(&sts, &want).await,
        Ok(None) => ctx.clean_up(&sts).await,
        Err(e) => Err(e),
    };
    // Refusals are not retried with backoff: only a change of the StatefulSet (or of the
    // object in the way) can fix them.
    let action = match outcome {
        Ok(action) => action,
        Err(ReconcileError::TooManyReplicas(refused)) => {
            ctx.refuse_too_many_replicas(&sts, refused).await;
            Action::await_change()
        }
        Err(e @ ReconcileError::NotOurs { .. }) => ctx.refuse_not_ours(&sts, &e).await,
        Err(e) => return Err(e),
    };
    ctx.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&ObjectRef::from_obj(sts.as_ref()));
    Ok(action)
}

fn error_policy(sts: Arc<StatefulSet>, error: &ReconcileError, ctx: Arc<Reconciler>) -> Action {
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

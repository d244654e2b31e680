//! What admission reads from the cluster: a pod's owning StatefulSet, the StatefulSets of a
//! namespace, and a StatefulSet's write Services. Reflector caches, with live GETs where a
//! cache can be behind in a way that matters.
//!
//! Why a cache *and* a GET for the owner: a StatefulSet created a moment ago has its first
//! pods created before our watch delivers it, so a pure cache would let those pods through
//! uninjected. A miss therefore asks the API server; an API error is an `Err`, which
//! admission turns into a denial, so the StatefulSet controller retries the pod instead of a
//! pod starting slapd without its elector. A cached object whose UID differs from the pod's
//! owner reference (deleted and recreated under the same name) also goes to the API server.
//! An annotation added to an existing StatefulSet reaches the cache within milliseconds,
//! long before the controller has replaced any pod; a pod admitted in that window without
//! an elector carries no role label, so the write Service does not select it (safe, but
//! uninjected until it is recreated).
//!
//! Write Services: only the ones carrying our mark ([`ldap_elector_contract::LABEL_STATEFULSET`]) are
//! cached — those are the ones that already select the leader in steady state, so a pod
//! creation costs no request; anything else (unmarked, missing, or not selecting the leader
//! in the cache) is read live, because refusing or admitting a pod on a stale view would
//! either stall the StatefulSet or let the Service select two pods.
//!
//! The namespace's StatefulSets (for a Service being created or replaced) come from the
//! cache alone: a Service admitted before its StatefulSet reached the cache gets its
//! selector from the reconciler, and its pods are refused until it has.
//!
//! The cache holds pruned StatefulSets ([`crate::watches::prune`]): everything admission
//! reads, except for an opted-in one with labels above the bound, which is read live like a
//! miss (and, for a Service, gets its selector from the reconciler).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::core::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Api;
use kube::Client;
use serde::de::DeserializeOwned;

use crate::leader_service::{leader_selector_change, ServiceChange};
use crate::watches::{needs_live_read, SharedWatches};

/// Bound on a live GET: it must answer well inside the API server's webhook timeout (the
/// chart sets a few seconds), so the denial (and the retry) happens on our terms.
pub const LIVE_GET_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    #[error("API error: {0}")]
    Api(#[from] kube::Error),
}

/// The cluster as admission sees it.
pub trait Cluster: Send + Sync + 'static {
    /// The StatefulSet `namespace/name` whose UID should be `uid` (from the pod's owner
    /// reference; `None` = any). `Ok(None)`: it does not exist.
    fn statefulset(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<Option<StatefulSet>, LookupError>> + Send;

    /// The StatefulSets of `namespace` as far as known (cache only, never fails).
    fn statefulsets(&self, namespace: &str) -> Vec<StatefulSet>;

    /// Those of the Services `names` (of `statefulset`) that exist.
    fn services(
        &self,
        namespace: &str,
        statefulset: &str,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<Service>, LookupError>> + Send;
}

/// The production [`Cluster`]: reflector caches plus live GETs.
#[derive(Clone)]
pub struct ClusterCache {
    statefulsets: Store<StatefulSet>,
    marked_services: Store<Service>,
    client: Client,
}

impl ClusterCache {
    /// Reads the shared `watches` (see [`SharedWatches`]) and GETs live through `client`.
    /// Lookups work from the first moment, before the stores have synced, thanks to the
    /// live GETs.
    pub fn new(client: Client, watches: &SharedWatches) -> Self {
        Self { statefulsets: watches.statefulsets.clone(), marked_services: watches.marked_services.clone(), client }
    }

    fn cached_statefulset(&self, namespace: &str, name: &str, uid: Option<&str>) -> Option<Arc<StatefulSet>> {
        let hit = self.statefulsets.get(&ObjectRef::new(name).within(namespace))?;
        let uid_ok = match (uid, hit.metadata.uid.as_deref()) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        (uid_ok && !needs_live_read(&hit)).then_some(hit)
    }
}

impl Cluster for ClusterCache {
    async fn statefulset(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<Option<StatefulSet>, LookupError> {
        if let Some(hit) = self.cached_statefulset(namespace, name, uid) {
            return Ok(Some(StatefulSet::clone(&hit)));
        }
        live_get(Api::namespaced(self.client.clone(), namespace), name).await
    }

    fn statefulsets(&self, namespace: &str) -> Vec<StatefulSet> {
        self.statefulsets
            .state()
            .iter()
            .filter(|s| in_namespace(namespace, &s.metadata))
            .map(|s| StatefulSet::clone(s))
            .collect()
    }

    async fn services(
        &self,
        namespace: &str,
        statefulset: &str,
        names: &[String],
    ) -> Result<Vec<Service>, LookupError> {
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            let cached = self.marked_services.get(&ObjectRef::new(name).within(namespace));
            match cached {
                // Already selecting the leader: the common case, no request.
                Some(svc) if leader_selector_change(&svc, statefulset) == ServiceChange::Unchanged => {
                    found.push(Service::clone(&svc))
                }
                _ => found.extend(live_get(Api::namespaced(self.client.clone(), namespace), name).await?),
            }
        }
        Ok(found)
    }
}

async fn live_get<K>(api: Api<K>, name: &str) -> Result<Option<K>, LookupError>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match tokio::time::timeout(LIVE_GET_TIMEOUT, api.get_opt(name)).await {
        Err(_) => Err(LookupError::Timeout(LIVE_GET_TIMEOUT)),
        Ok(result) => Ok(result?),
    }
}

/// A cluster of fixed objects, answering from them alone (never an error): the golden
/// admission tests, and anything else that replays reviews offline.
#[derive(Clone, Debug, Default)]
pub struct FixedCluster {
    pub statefulsets: Vec<StatefulSet>,
    pub services: Vec<Service>,
}

impl Cluster for FixedCluster {
    async fn statefulset(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<Option<StatefulSet>, LookupError> {
        let hit = |s: &&StatefulSet| {
            in_namespace(namespace, &s.metadata)
                && s.metadata.name.as_deref() == Some(name)
                && (uid.is_none() || s.metadata.uid.as_deref() == uid)
        };
        Ok(self.statefulsets.iter().find(hit).cloned())
    }

    fn statefulsets(&self, namespace: &str) -> Vec<StatefulSet> {
        self.statefulsets.iter().filter(|s| in_namespace(namespace, &s.metadata)).cloned().collect()
    }

    async fn services(
        &self,
        namespace: &str,
        _statefulset: &str,
        names: &[String],
    ) -> Result<Vec<Service>, LookupError> {
        let named = |s: &&Service| {
            in_namespace(namespace, &s.metadata) && names.iter().any(|n| s.metadata.name.as_ref() == Some(n))
        };
        Ok(self.services.iter().filter(named).cloned().collect())
    }
}

fn in_namespace(namespace: &str, meta: &ObjectMeta) -> bool {
    meta.namespace.as_deref() == Some(namespace)
}

//! The owner lookup behind admission: a reflector cache of all StatefulSets, with a live
//! GET when the cache has no (or a different) object.
//!
//! Why a cache *and* a GET: a StatefulSet created a moment ago has its first pods created
//! before our watch delivers it, so a pure cache would let those pods through uninjected.
//! A miss therefore asks the API server; an API error is an `Err`, which admission turns
//! into a denial, so the StatefulSet controller retries the pod instead of a pod starting
//! slapd without its elector. A cached object whose UID differs from the pod's owner
//! reference (deleted and recreated under the same name) also goes to the API server.
//!
//! The remaining window: an annotation added to an existing StatefulSet reaches the cache
//! within milliseconds, long before the controller has replaced any pod; a pod admitted
//! in that window without an elector carries no role label, so the write Service does not
//! select it (safe, but uninjected until it is recreated).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// Bound on the live GET: it must answer well inside the API server's webhook timeout
/// (the chart sets a few seconds), so the denial (and the retry) happens on our terms.
pub const LIVE_GET_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    #[error("API error: {0}")]
    Api(#[from] kube::Error),
}

/// Looks up the StatefulSet `namespace/name` whose UID should be `uid` (from the pod's
/// owner reference; `None` = any). `Ok(None)`: it does not exist.
pub trait Owners: Send + Sync + 'static {
    fn get(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<Option<StatefulSet>, OwnerError>> + Send;
}

/// The production [`Owners`]: reflector cache plus live GET.
#[derive(Clone)]
pub struct OwnerCache {
    store: Store<StatefulSet>,
    client: Client,
}

impl OwnerCache {
    /// Starts watching all StatefulSets until `shutdown`. The watch retries with backoff
    /// on errors (logged); lookups work from the first moment thanks to the live GET.
    pub fn start(client: Client, shutdown: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (store, writer) = reflector::store();
        let api: Api<StatefulSet> = Api::all(client.clone());
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default())
                .default_backoff()
                // Halves the cache's memory; admission never looks at managed fields.
                .modify(|sts| sts.managed_fields_mut().clear()),
        );
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.next() => match event {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            tracing::warn!(%error, "StatefulSet watch failed (retrying with backoff); admission falls back to live GETs")
                        }
                        None => return,
                    },
                }
            }
        });
        (Self { store, client }, task)
    }

    fn cached(&self, namespace: &str, name: &str, uid: Option<&str>) -> Option<Arc<StatefulSet>> {
        let hit = self.store.get(&ObjectRef::new(name).within(namespace))?;
        let uid_ok = match (uid, hit.metadata.uid.as_deref()) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        uid_ok.then_some(hit)
    }
}

impl Owners for OwnerCache {
    async fn get(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<Option<StatefulSet>, OwnerError> {
        if let Some(hit) = self.cached(namespace, name, uid) {
            return Ok(Some(StatefulSet::clone(&hit)));
        }
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(LIVE_GET_TIMEOUT, api.get_opt(name)).await {
            Err(_) => Err(OwnerError::Timeout(LIVE_GET_TIMEOUT)),
            Ok(result) => Ok(result?),
        }
    }
}

//! The process's watches of the cluster: one reflector store per kind, shared by admission
//! ([`crate::cluster::ClusterCache`]) and the reconciler. Every StatefulSet is watched once,
//! and so are the Services carrying our mark ([`contract::LABEL_STATEFULSET`]).
//!
//! The reconciler's controller is not a second watch: the task driving a shared store
//! forwards what it sees to [`Changes`] (applied StatefulSets; applied or deleted marked
//! Services, as `Controller::watches` would), and the controller reads the shared store.
//! The channels are unbounded so that a busy or still-starting reconciler never holds back
//! the stores admission reads; they carry each object once per watch event.

use futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use ldap_elector_contract as contract;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The stores admission and the reconciler share.
#[derive(Clone)]
pub struct SharedWatches {
    /// Every StatefulSet of the cluster.
    pub statefulsets: Store<StatefulSet>,
    /// The Services carrying [`contract::LABEL_STATEFULSET`].
    pub marked_services: Store<Service>,
}

/// What the shared watches saw, for the reconciler's triggers.
pub struct Changes {
    /// StatefulSets created, changed, or listed at a (re)start of the watch.
    pub statefulsets: UnboundedReceiver<StatefulSet>,
    /// Marked Services created, changed, listed or deleted.
    pub marked_services: UnboundedReceiver<Service>,
}

/// Which watch events a subscriber hears about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    Applied,
    AppliedOrDeleted,
}

impl SharedWatches {
    /// Starts both watches until `shutdown`, for admission alone.
    pub fn start(client: &Client, shutdown: &CancellationToken) -> Self {
        Self {
            statefulsets: spawn_store(client, statefulsets(), None, shutdown),
            marked_services: spawn_store(client, marked_services(), None, shutdown),
        }
    }

    /// Starts both watches until `shutdown`, also reporting what they see to the returned
    /// [`Changes`] (for the reconciler).
    pub fn start_with_changes(client: &Client, shutdown: &CancellationToken) -> (Self, Changes) {
        let (sts_tx, sts_rx) = mpsc::unbounded();
        let (svc_tx, svc_rx) = mpsc::unbounded();
        let watches = Self {
            statefulsets: spawn_store(client, statefulsets(), Some((sts_tx, Trigger::Applied)), shutdown),
            marked_services: spawn_store(
                client,
                marked_services(),
                Some((svc_tx, Trigger::AppliedOrDeleted)),
                shutdown,
            ),
        };
        (watches, Changes { statefulsets: sts_rx, marked_services: svc_rx })
    }
}

fn statefulsets() -> watcher::Config {
    watcher::Config::default()
}

fn marked_services() -> watcher::Config {
    watcher::Config::default().labels(contract::LABEL_STATEFULSET)
}

/// The object an event reports to a subscriber of `trigger`, if any.
fn triggered<K>(event: &watcher::Event<K>, trigger: Trigger) -> Option<&K> {
    match event {
        watcher::Event::Apply(object) | watcher::Event::InitApply(object) => Some(object),
        watcher::Event::Delete(object) if trigger == Trigger::AppliedOrDeleted => Some(object),
        _ => None,
    }
}

/// A reflector store of `K` (all namespaces, `config`'s selector, without managed fields),
/// driven until `shutdown`; with `changes`, what it sees is also sent there. Watch errors
/// are logged and retried with backoff.
pub(crate) fn spawn_store<K>(
    client: &Client,
    config: watcher::Config,
    changes: Option<(UnboundedSender<K>, Trigger)>,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), config)
            .default_backoff()
            // Halves the cache's memory; neither admission nor the reconciler looks at
            // managed fields.
            .modify(|object| object.managed_fields_mut().clear()),
    );
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        if let Some((tx, trigger)) = &changes {
                            if let Some(object) = triggered(&event, *trigger) {
                                // A stopped reconciler is no reason to stop the store.
                                let _ = tx.unbounded_send(object.clone());
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, kind, "watch failed (retrying with backoff)")
                    }
                    None => return,
                },
            }
        }
    });
    store
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn named(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn statefulsets_trigger_on_apply_and_services_also_on_delete() {
        let name = |o: Option<&ConfigMap>| o.and_then(|o| o.metadata.name.clone());
        let (a, b) = (named("a"), named("b"));
        for trigger in [Trigger::Applied, Trigger::AppliedOrDeleted] {
            assert_eq!(name(triggered(&watcher::Event::Apply(a.clone()), trigger)), Some("a".into()));
            assert_eq!(name(triggered(&watcher::Event::InitApply(b.clone()), trigger)), Some("b".into()));
            assert_eq!(name(triggered(&watcher::Event::<ConfigMap>::Init, trigger)), None);
            assert_eq!(name(triggered(&watcher::Event::<ConfigMap>::InitDone, trigger)), None);
        }
        assert_eq!(name(triggered(&watcher::Event::Delete(a.clone()), Trigger::Applied)), None);
        assert_eq!(name(triggered(&watcher::Event::Delete(a), Trigger::AppliedOrDeleted)), Some("a".into()));
    }
}

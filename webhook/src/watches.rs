//! The process's watches of the cluster: one reflector store per kind, shared by admission
//! ([`crate::cluster::ClusterCache`]) and the reconciler. Every StatefulSet is watched once,
//! and so are the Services carrying our mark ([`contract::LABEL_STATEFULSET`]).
//!
//! The reconciler's controller is not a second watch: the task driving a shared store
//! forwards what it sees to [`Changes`] (applied StatefulSets; applied or deleted marked
//! Services, as `Controller::watches` would), and the controller reads the shared store.
//! The channels are unbounded so that a busy or still-starting reconciler never holds back
//! the stores admission reads; they carry each object once per watch event.
//!
//! Memory (issue 17, item 4): any tenant may create StatefulSets of up to 1.5 MiB each, no
//! opt-in needed, and every one reaches this watch. The store therefore keeps only what is
//! read of a StatefulSet ([`prune`]): a few hundred bytes for one that did not opt in. The
//! objects the channel forwards are pruned too; the reconciler reads an opted-in
//! StatefulSet live. The list at start and after a lost watch holds one page at a time while
//! it is decoded, so pages are small ([`STATEFULSET_PAGE`]).

use std::collections::BTreeMap;

use futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
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
    /// StatefulSets created, changed, or listed at a (re)start of the watch, pruned ([`prune`]).
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
            statefulsets: spawn_store(client, statefulsets(), prune, None, shutdown),
            marked_services: spawn_store(client, marked_services(), without_managed_fields, None, shutdown),
        }
    }

    /// Starts both watches until `shutdown`, also reporting what they see to the returned
    /// [`Changes`] (for the reconciler).
    pub fn start_with_changes(client: &Client, shutdown: &CancellationToken) -> (Self, Changes) {
        let (sts_tx, sts_rx) = mpsc::unbounded();
        let (svc_tx, svc_rx) = mpsc::unbounded();
        let watches = Self {
            statefulsets: spawn_store(client, statefulsets(), prune, Some((sts_tx, Trigger::Applied)), shutdown),
            marked_services: spawn_store(
                client,
                marked_services(),
                without_managed_fields,
                Some((svc_tx, Trigger::AppliedOrDeleted)),
                shutdown,
            ),
        };
        (watches, Changes { statefulsets: sts_rx, marked_services: svc_rx })
    }
}

/// StatefulSets per page of a list. A page is held whole while it is decoded, before
/// [`prune`] sees its objects: at most 2 × 1.5 MiB (etcd's object limit) plus its body, well
/// inside the chart's 128 MiB, at the price of one request per 2 StatefulSets at start and
/// after a lost watch.
pub const STATEFULSET_PAGE: u32 = 2;

/// Bound on the labels an opted-in StatefulSet keeps in the store (its selector's
/// `matchLabels` and its template's labels, keys and values, in bytes). Real ones take a
/// few hundred; above it the store keeps no spec and admission reads the StatefulSet live.
pub const MAX_KEPT_LABEL_BYTES: usize = 16 * 1024;

fn statefulsets() -> watcher::Config {
    watcher::Config::default().page_size(STATEFULSET_PAGE)
}

/// What the webhook reads of a StatefulSet from the store, and nothing else; applied to
/// every object before it enters the store.
///
/// - All: name, namespace, uid, resourceVersion (the store's key, the owner check, Events)
///   and deletionTimestamp (the reconciler leaves a deleting one alone).
/// - Opted in, for admission: the annotations of our domain ([`contract::is_our_key`]:
///   opt-in, leader Services, tuning, ...; not a tenant's other ones), `spec.replicas` and
///   `status.replicas` (the replica bound), the selector's `matchLabels` and the template's
///   labels (which Services are its write Services), bounded by [`MAX_KEPT_LABEL_BYTES`].
///   Nothing of the pod template's spec: the pod itself is in the review, and the reconciler
///   reads an opted-in StatefulSet live.
/// - Not opted in: no annotations, spec or status. An opt-in (an annotation change) is a
///   watch event like any other, so the store and the reconciler's trigger see it at once.
pub fn prune(sts: StatefulSet) -> StatefulSet {
    let StatefulSet { metadata, spec, status } = sts;
    let opted_in = contract::is_opted_in(metadata.annotations.as_ref());
    // Not opted in: no annotation at all says the same, and keeps nothing of the tenant's.
    let annotations = metadata
        .annotations
        .filter(|_| opted_in)
        .map(|a| a.into_iter().filter(|(key, _)| contract::is_our_key(key)).collect::<BTreeMap<_, _>>());
    let spec = spec.filter(|_| opted_in).and_then(admission_spec);
    let status =
        status.filter(|_| spec.is_some()).map(|s| StatefulSetStatus { replicas: s.replicas, ..Default::default() });
    let metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        deletion_timestamp: metadata.deletion_timestamp,
        annotations,
        ..Default::default()
    };
    StatefulSet { metadata, spec, status }
}

/// The part of an opted-in StatefulSet's spec admission reads; `None` when its labels are
/// above [`MAX_KEPT_LABEL_BYTES`].
fn admission_spec(spec: StatefulSetSpec) -> Option<StatefulSetSpec> {
    let match_labels = spec.selector.match_labels;
    let template_labels = spec.template.metadata.and_then(|m| m.labels);
    let bytes = |labels: &Option<BTreeMap<String, String>>| -> usize {
        labels.iter().flatten().map(|(k, v)| k.len() + v.len()).sum()
    };
    if bytes(&match_labels) + bytes(&template_labels) > MAX_KEPT_LABEL_BYTES {
        return None;
    }
    Some(StatefulSetSpec {
        replicas: spec.replicas,
        selector: LabelSelector { match_labels, match_expressions: None },
        template: PodTemplateSpec {
            metadata: template_labels.map(|labels| ObjectMeta { labels: Some(labels), ..Default::default() }),
            spec: None,
        },
        ..Default::default()
    })
}

/// Whether the store's copy of `sts` lacks what admission reads (an opted-in StatefulSet
/// whose labels were above [`MAX_KEPT_LABEL_BYTES`]), so it must be read live.
pub fn needs_live_read(sts: &StatefulSet) -> bool {
    contract::is_opted_in(sts.metadata.annotations.as_ref()) && sts.spec.is_none()
}

/// Neither admission nor the reconciler looks at managed fields, about half of an object.
pub(crate) fn without_managed_fields<K: Resource>(mut object: K) -> K {
    object.managed_fields_mut().clear();
    object
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

/// A reflector store of `K` (all namespaces, `config`'s selector), each object passed
/// through `keep` before it is stored, driven until `shutdown`; with `changes`, what it
/// stores is also sent there. Watch errors are logged and retried with backoff.
pub(crate) fn spawn_store<K>(
    client: &Client,
    config: watcher::Config,
    keep: fn(K) -> K,
    changes: Option<(UnboundedSender<K>, Trigger)>,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Default + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), config)
            .default_backoff()
            .modify(move |object| *object = keep(std::mem::take(object))),
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

    use crate::inject::testing::{cfg, pod_json};
    use crate::inject::{inject, Decision, SkipReason};
    use crate::leader_service::{not_selecting_leader, statefulset_naming};
    use crate::reconcile::{desired, elector_replicas};
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    const MIB: usize = 1024 * 1024;

    /// The owner of `pod_json()` with `annotations`, a template of ~1 MiB (environment
    /// values), 256 KiB of a tenant's annotation, labels, managed fields and a status.
    fn big_statefulset(annotations: Value) -> StatefulSet {
        let filler = |n: usize| "x".repeat(n);
        let mut annotations = annotations;
        annotations["tenant.example/notes"] = json!(filler(256 * 1024 - 64));
        let env: Vec<Value> = (0..10).map(|i| json!({"name": format!("FILL{i}"), "value": filler(MIB / 10)})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "ldap-server", "namespace": "ns", "uid": "sts-uid", "resourceVersion": "42",
                         "labels": {"app": "ldap", "team": "dir"}, "annotations": annotations,
                         "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"replicas": 2, "serviceName": "ldap", "selector": {"matchLabels": {"app": "ldap"}},
                     "template": {"metadata": {"labels": {"app": "ldap", "tier": "directory"},
                                               "annotations": {"tenant.example/notes": filler(64 * 1024)}},
                                  "spec": {"serviceAccountName": "ldap-custom",
                                           "containers": [{"name": "slapd", "image": "slapd", "env": env,
                                                           "ports": [{"containerPort": 389}]}]}}},
            "status": {"replicas": 3, "readyReplicas": 3, "currentRevision": "ldap-server-1"},
        }))
        .unwrap()
    }

    fn size(sts: &StatefulSet) -> usize {
        serde_json::to_vec(sts).unwrap().len()
    }

    fn pod() -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(pod_json()).unwrap()
    }

    #[test]
    fn a_statefulset_that_did_not_opt_in_keeps_nothing_of_its_template_or_annotations() {
        for annotations in [json!({}), json!({contract::ANNOTATION_INJECT: "false"})] {
            let whole = big_statefulset(annotations);
            assert!(size(&whole) > MIB + 256 * 1024, "the fixture is big: {} bytes", size(&whole));
            let pruned = prune(whole.clone());
            assert!(size(&pruned) < 256, "{} bytes kept: {pruned:?}", size(&pruned));
            assert_eq!((pruned.spec.as_ref(), pruned.status.as_ref()), (None, None));
            assert_eq!(pruned.metadata.annotations, None);
            let meta = |s: &StatefulSet| {
                let m = &s.metadata;
                (m.name.clone(), m.namespace.clone(), m.uid.clone(), m.resource_version.clone())
            };
            assert_eq!(meta(&pruned), meta(&whole));
            // Admission and the reconciler decide the same: not ours.
            for sts in [&whole, &pruned] {
                assert_eq!(inject(&pod(), Some(sts), &cfg()).unwrap(), Decision::Skip(SkipReason::NotOptedIn));
                assert_eq!(desired(sts, &BTreeSet::new(), &Default::default()).unwrap(), None);
                assert!(statefulset_naming("ldap-primary", [sts]).is_none());
                assert!(!needs_live_read(sts));
            }
        }
    }

    #[test]
    fn what_admission_reads_of_an_opted_in_statefulset_is_the_same_after_pruning() {
        let whole = big_statefulset(json!({
            contract::ANNOTATION_INJECT: "true",
            contract::ANNOTATION_LEADER_SERVICE: "ldap-primary",
            contract::ANNOTATION_LEASE_DURATION: "12",
            contract::ANNOTATION_METRICS_PORT: "9090",
        }));
        let pruned = prune(whole.clone());
        assert!(size(&pruned) < 1024, "{} bytes kept: {pruned:?}", size(&pruned));
        assert!(!needs_live_read(&pruned));
        assert!(pruned.metadata.managed_fields.is_none() && pruned.metadata.labels.is_none());
        let ours = |s: &StatefulSet| {
            let a = s.metadata.annotations.clone().unwrap_or_default();
            a.into_iter().filter(|(k, _)| contract::is_our_key(k)).collect::<BTreeMap<_, _>>()
        };
        assert_eq!(pruned.metadata.annotations, Some(ours(&whole)), "our annotations, and only those");
        assert_eq!(inject(&pod(), Some(&pruned), &cfg()).unwrap(), inject(&pod(), Some(&whole), &cfg()).unwrap());
        assert_eq!(elector_replicas(&pruned), elector_replicas(&whole));
        assert_eq!(elector_replicas(&pruned), Ok(3));
        let services: Vec<Service> = [
            json!({"app": "ldap"}),
            json!({"app": "ldap", "tier": "directory", contract::LABEL_ROLE: contract::ROLE_LEADER}),
            json!({"app": "ldap", "tier": "other"}),
            json!({"other": "x"}),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, selector)| {
            let svc = json!({"metadata": {"name": format!("svc-{i}"), "namespace": "ns",
                                          "labels": {contract::LABEL_STATEFULSET: "ldap-server"}},
                             "spec": {"selector": selector}});
            serde_json::from_value(svc).unwrap()
        })
        .collect();
        assert_eq!(not_selecting_leader(&services, &pruned), not_selecting_leader(&services, &whole));
        assert_eq!(not_selecting_leader(&services, &pruned), vec!["svc-0"], "the fixture tells them apart");
        let named = |s: &StatefulSet| statefulset_naming("ldap-primary", [s]).map(|s| s.metadata.name.clone());
        assert_eq!(named(&pruned), named(&whole));
        assert!(named(&pruned).is_some());
    }

    #[test]
    fn opting_in_or_out_changes_what_is_kept_and_labels_above_the_bound_are_read_live() {
        let opted_in = json!({contract::ANNOTATION_INJECT: "true"});
        let mut sts = big_statefulset(opted_in.clone());
        assert!(prune(sts.clone()).spec.is_some());
        sts.metadata.annotations.as_mut().unwrap().remove(contract::ANNOTATION_INJECT);
        let out = prune(sts);
        assert!(out.spec.is_none() && !contract::is_opted_in(out.metadata.annotations.as_ref()));

        let mut sts = big_statefulset(opted_in);
        let labels = (0..=MAX_KEPT_LABEL_BYTES / 32).map(|i| (format!("tenant.example/l{i:05}"), "v".repeat(16)));
        let template = sts.spec.as_mut().unwrap().template.metadata.as_mut().unwrap();
        template.labels.as_mut().unwrap().extend(labels);
        let out = prune(sts);
        assert!(out.spec.is_none() && out.status.is_none(), "no labels above the bound are kept");
        assert!(needs_live_read(&out), "so admission reads it live");
        assert!(contract::is_opted_in(out.metadata.annotations.as_ref()), "and it is still opted in");
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

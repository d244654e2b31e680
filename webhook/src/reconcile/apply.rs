//! The reconciler's edge: the API calls that bring a StatefulSet's generated objects and
//! write Services to [`DesiredObjects`] (or remove them on opt-out), and its Events.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use ldap_elector_contract as contract;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::controller::Reconciler;
use super::desired::{ours_selector, DesiredObjects};
use super::empty::{self, Verdict};
use super::{call, ReconcileError, API_TIMEOUT, FIELD_MANAGER};
use crate::inject;
use crate::leader_service::{is_replaced_key, leader_selector_change_for, restore_selector_change, ServiceChange};

/// Periodic re-check of an opted-in StatefulSet (repairs manual edits and deletions).
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check while a named leader Service does not exist (yet).
const MISSING_SERVICE_RETRY: Duration = Duration::from_secs(30);
/// Re-check while a write Service selects no ready pod.
const EMPTY_RECHECK: Duration = Duration::from_secs(5);
/// Re-check while an opt-out waits for pods that still run an elector.
const OPT_OUT_RETRY: Duration = Duration::from_secs(30);

/// Ready and not terminating: an endpoint the write Service would route to.
fn is_ready(pod: &Pod) -> bool {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && pod.metadata.deletion_timestamp.is_none()
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

/// Why an existing object named like one we generate is not ours to apply over (`None`: it
/// is ours). Ours means: our StatefulSet controls it (labels may have been stripped; the
/// apply restores them), or it carries our labels (`want`'s) and no other controller.
/// Server-side apply with `force` would otherwise take over, say, a Lease `<name>-leader`
/// someone else made, and our opt-out would delete it (issue 17, item 6).
fn not_ours(have: &ObjectMeta, want: &ObjectMeta) -> Option<String> {
    let ours = |uid: &str| want.owner_references.iter().flatten().any(|w| w.uid == uid);
    let controller = have.owner_references.iter().flatten().find(|h| h.controller == Some(true));
    match controller {
        Some(c) if ours(&c.uid) => None,
        Some(c) => Some(format!("it is controlled by {} {}", c.kind, c.name)),
        None => {
            let unlabelled =
                want.labels.iter().flatten().find(|(k, v)| have.labels.as_ref().and_then(|l| l.get(*k)) != Some(v));
            unlabelled.map(|(k, v)| format!("it lacks our label {k}={v}, so ldap-elector did not create it"))
        }
    }
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

impl Reconciler {
    /// Bring an opted-in StatefulSet's objects and Services to the desired state.
    pub(super) async fn ensure(&self, owner: &StatefulSet, want: &DesiredObjects) -> Result<Action, ReconcileError> {
        let (ns, sts) = (want.namespace.as_str(), want.statefulset.as_str());
        self.claimable(ns, want.service_account.as_ref()).await?;
        self.claimable(ns, Some(&want.role)).await?;
        self.claimable(ns, Some(&want.role_binding)).await?;
        self.claimable(ns, Some(&want.lease)).await?;
        self.claimable(ns, want.network_policy.as_ref()).await?;
        // Role before RoleBinding: binding a Role is checked against the Role's rules.
        self.sync(ns, sts, want.service_account.as_ref()).await?;
        self.sync(ns, sts, Some(&want.role)).await?;
        self.sync(ns, sts, Some(&want.role_binding)).await?;
        self.sync(ns, sts, Some(&want.lease)).await?;
        self.sync(ns, sts, want.network_policy.as_ref()).await?;

        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let mut missing = Vec::new();
        let mut recheck = RESYNC;
        for name in &want.leader_services {
            let op = format!("reading Service {ns}/{name}");
            match call(&op, services.get_opt(name)).await? {
                None => missing.push(name.as_str()),
                Some(svc) => {
                    let mut change = leader_selector_change_for(&svc, owner);
                    if let ServiceChange::Patch(_) = change {
                        let foreign = self.foreign_pods(&svc, owner).await?;
                        if !foreign.is_empty() {
                            change = ServiceChange::Refuse(format!(
                                "it also selects pods that are not StatefulSet {sts}'s ({}); narrowing it to our leader \
                                 would cut them off",
                                foreign.join(", ")
                            ));
                        }
                    }
                    if let ServiceChange::Refuse(reason) = &change {
                        let note = format!("Service {name} left alone: {reason}");
                        self.event(owner, EventType::Warning, contract::EVENT_LEADER_SERVICE_REFUSED, note).await;
                    }
                    let refused = matches!(change, ServiceChange::Refuse(_));
                    self.change_service(&services, &svc, sts, change).await?;
                    if !refused {
                        recheck = recheck.min(self.check_serving(owner, &svc).await?);
                    }
                }
            }
        }
        for svc in self.marked_services(&services, ns, sts).await? {
            if !want.leader_services.iter().any(|n| Some(n.as_str()) == svc.metadata.name.as_deref()) {
                self.forget_serving(&svc);
                self.change_service(&services, &svc, sts, restore_selector_change(&svc, sts)).await?;
            }
        }
        if !missing.is_empty() {
            warn!(namespace = ns, statefulset = sts, services = ?missing, "leader Service not found (yet); retrying");
            let note = format!("leader Service(s) {} not found; retrying", missing.join(", "));
            self.event(owner, EventType::Warning, "LeaderServiceMissing", note).await;
            return Ok(Action::requeue(MISSING_SERVICE_RETRY));
        }
        Ok(Action::requeue(recheck))
    }

    /// Whether the write Service `svc` of `sts` (as our selector makes it) selects a ready
    /// pod; empty for longer than a failover is a Warning Event and
    /// [`metric::WEBHOOK_LEADER_SERVICE_EMPTY`](contract::metric::WEBHOOK_LEADER_SERVICE_EMPTY).
    /// Pod changes do not trigger a reconcile, so it returns when to look again.
    async fn check_serving(&self, sts: &StatefulSet, svc: &Service) -> Result<Duration, ReconcileError> {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).cloned().unwrap_or_default();
        let mut labels: Vec<String> = selector
            .iter()
            .filter(|(k, _)| *k != contract::LABEL_ROLE && !is_replaced_key(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.push(format!("{}={}", contract::LABEL_ROLE, contract::ROLE_LEADER));
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let op = format!("listing the pods Service {ns}/{name} selects");
        let list = call(&op, pods.list(&ListParams::default().labels(&labels.join(",")))).await?;
        let serving = list.items.iter().any(is_ready);
        let grace = empty::failover_grace(sts.metadata.annotations.as_ref());
        let key = (ns.clone(), name.clone());
        let verdict = self.empty.lock().unwrap_or_else(PoisonError::into_inner).observe(
            key.clone(),
            serving,
            Instant::now(),
            grace,
        );
        empty::set_overdue(&key, matches!(verdict, Verdict::Overdue(_)));
        Ok(match verdict {
            Verdict::Serving => RESYNC,
            Verdict::Waiting(left) => left.min(EMPTY_RECHECK),
            Verdict::Overdue(empty_for) => {
                warn!(namespace = %ns, service = %name, empty_s = empty_for.as_secs(), "write Service selects no ready pod");
                let note = format!(
                    "Service {name} has selected no ready pod for {}s (longer than a failover, {}s): \
                     writes through it fail; check `ldap-elector status` and its selector",
                    empty_for.as_secs(),
                    grace.as_secs()
                );
                self.event(sts, EventType::Warning, contract::EVENT_LEADER_SERVICE_EMPTY, note).await;
                EMPTY_RECHECK
            }
        })
    }

    /// Stop watching `svc` for emptiness (it is no longer a write Service of ours).
    fn forget_serving(&self, svc: &Service) {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        self.empty.lock().unwrap_or_else(PoisonError::into_inner).forget(&key);
        empty::set_overdue(&key, false);
    }

    /// Remove what we made for a StatefulSet that is no longer opted in; restore its
    /// Services. Deferred while any of its pods still runs an elector: deleting the Role
    /// under a running leader would leave it unable to remove its own label, and restoring
    /// the selector would send writes to a fenced standby. The consumer finishes the
    /// opt-out by restarting the pods (`kubectl rollout restart`); we re-check meanwhile.
    pub(super) async fn clean_up(&self, sts: &StatefulSet) -> Result<Action, ReconcileError> {
        let ns = sts.namespace().ok_or(ReconcileError::Incomplete("namespace"))?;
        let name = sts.metadata.name.clone().ok_or(ReconcileError::Incomplete("name"))?;
        if !self.knows_objects_of(&ns, &name) {
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
            self.forget_serving(&svc);
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

    /// A StatefulSet above [`contract::MAX_REPLICAS`]: its objects stay as they are (running
    /// electors keep their rights), its new pods are refused at admission; it says so.
    pub(super) async fn refuse_too_many_replicas(&self, sts: &StatefulSet, refused: contract::ReplicasOutOfRange) {
        let (ns, name) = (sts.namespace().unwrap_or_default(), sts.name_any());
        warn!(namespace = %ns, statefulset = %name, replicas = refused.replicas, "not reconciled: {refused}");
        let note = format!("not reconciled, new pods are refused: {refused}");
        self.event(sts, EventType::Warning, contract::EVENT_TOO_MANY_REPLICAS, note).await;
    }

    /// An object we would generate belongs to someone else: left alone, said as an Event,
    /// re-checked at the next resync (the owner may delete or rename it).
    pub(super) async fn refuse_not_ours(&self, sts: &StatefulSet, error: &ReconcileError) -> Action {
        let (ns, name) = (sts.namespace().unwrap_or_default(), sts.name_any());
        warn!(namespace = %ns, statefulset = %name, %error, "not reconciled");
        let note = format!("not reconciled: {error}; rename or remove that object, or rename the StatefulSet");
        self.event(sts, EventType::Warning, contract::EVENT_OBJECT_NOT_OURS, note).await;
        Action::requeue(RESYNC)
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

    /// `sts` as the API server has it now (`None`: gone); the store keeps only a pruned copy.
    pub(super) async fn live(&self, sts: &StatefulSet) -> Result<Option<StatefulSet>, ReconcileError> {
        let ns = sts.namespace().ok_or(ReconcileError::Incomplete("namespace"))?;
        let name = sts.metadata.name.as_deref().ok_or(ReconcileError::Incomplete("name"))?;
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &ns);
        call(&format!("reading StatefulSet {ns}/{name}"), api.get_opt(name)).await
    }

    /// Pods of the StatefulSet that run an elector (carry the injection marker), with the
    /// ServiceAccount each runs as.
    pub(super) async fn elector_pods(&self, sts: &StatefulSet) -> Result<BTreeMap<String, String>, ReconcileError> {
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

    /// Pods the Service `svc` selects without the keys the leader selector sets or replaces that `sts`
    /// does not control (at most a few names, for the message).
    async fn foreign_pods(&self, svc: &Service, sts: &StatefulSet) -> Result<Vec<String>, ReconcileError> {
        let ns = sts.namespace().ok_or(ReconcileError::Incomplete("namespace"))?;
        let uid = sts.metadata.uid.clone().ok_or(ReconcileError::Incomplete("uid"))?;
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).cloned().unwrap_or_default();
        let labels: Vec<String> = selector
            .iter()
            .filter(|(k, _)| *k != contract::LABEL_ROLE && !is_replaced_key(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let op = format!("listing the pods Service {ns}/{} selects", svc.name_any());
        let list = call(&op, pods.list_metadata(&ListParams::default().labels(&labels.join(",")).limit(100))).await?;
        let controlled = |p: &kube::core::PartialObjectMeta<Pod>| {
            p.metadata.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
        };
        Ok(list.items.iter().filter(|p| !controlled(p)).take(3).map(|p| p.name_any()).collect())
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

    /// `Err(NotOurs)` if an object named like `want` exists and is not ours ([`not_ours`]).
    /// Checked for every object before any is applied: a Role granting the electors a Lease
    /// someone else owns would be a takeover too.
    async fn claimable<K: Generated>(&self, ns: &str, want: Option<&K>) -> Result<(), ReconcileError> {
        let Some((want, name)) = want.and_then(|w| Some((w, w.meta().name.clone()?))) else {
            return Ok(());
        };
        let kind = K::kind(&()).to_string();
        let op = format!("reading {kind} {ns}/{name}");
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        // A list by name: the webhook holds `list` on every kind it generates, not `get`.
        let named = ListParams::default().fields(&format!("metadata.name={name}"));
        let found = call(&op, api.list(&named)).await?.items.into_iter().next();
        match found.and_then(|have| not_ours(have.meta(), want.meta())) {
            Some(why) => Err(ReconcileError::NotOurs { kind, namespace: ns.to_string(), name, why }),
            None => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::super::desired::tests::{desired_now, opted_in, sts};
    use super::*;

    #[test]
    fn an_object_we_did_not_create_is_never_taken_over() {
        let want = desired_now(&sts(opted_in(), 2, None, None)).unwrap().unwrap();
        assert_eq!(not_ours(&want.lease.metadata, &want.lease.metadata), None, "our own object");
        // Someone else's Lease of the same name: no labels of ours.
        let theirs = ObjectMeta { name: want.lease.metadata.name.clone(), ..Default::default() };
        let why = not_ours(&theirs, &want.lease.metadata).expect("refused");
        assert!(why.contains(contract::LABEL_MANAGED_BY), "{why}");
        // Our labels copied onto an object another controller owns.
        let mut controlled = want.lease.metadata.clone();
        let owner = &mut controlled.owner_references.as_mut().unwrap()[0];
        (owner.uid, owner.kind, owner.name) = ("u-other".into(), "Deployment".into(), "payroll".into());
        assert_eq!(
            not_ours(&controlled, &want.lease.metadata).as_deref(),
            Some("it is controlled by Deployment payroll")
        );
        // Ours with a label stripped: the apply restores it.
        let mut stripped = want.lease.metadata.clone();
        stripped.labels.as_mut().unwrap().remove(contract::LABEL_STATEFULSET);
        assert_eq!(not_ours(&stripped, &want.lease.metadata), None);
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
}

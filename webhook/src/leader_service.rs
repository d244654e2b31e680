//! The write ("leader") Services of an opted-in StatefulSet: what their selector must look
//! like, and who makes it so. Pure; used by the reconciler (Services that already exist, and
//! restoring them on opt-out) and by admission (a Service created or replaced after its
//! StatefulSet, and pods, which are refused until their write Services select the leader).
//!
//! Why a write Service publishes not-ready addresses: it selects one pod, the Lease holder,
//! and the fence, not readiness, keeps writes off every other. A leader whose slapd container
//! restarts is NotReady until the consumer's readiness probe passes again; a Service that
//! lists ready pods only would drop its endpoint and add it back (a probe period and two
//! endpoint propagations, kube-proxy's sync among them) although no other pod may take the
//! writes. Published regardless of readiness, the endpoint stays and writes succeed as soon
//! as slapd listens again (real node, slapd killed: docs/design.md).
//!
//! Why pods wait for the Service: a StatefulSet pod starts labelled `role=standby`, but a
//! Service whose selector lacks `role=leader` selects every pod of the set. Were pods
//! admitted before the selector is in place (a Service and a StatefulSet applied together),
//! the write Service would list two ready endpoints for a reconcile round. Refusing the pod
//! costs only a retry of the StatefulSet controller; the reconciler adds the selector.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use ldap_elector_contract as contract;
use serde_json::json;

/// What to do with a Service's selector.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceChange {
    Unchanged,
    /// A JSON merge patch (guarded by the Service's `resourceVersion`).
    Patch(serde_json::Value),
    /// Left alone, with the reason (logged as a warning).
    Refuse(String),
}

/// Selector keys that pin one pod by name, which the leader selector replaces rather than
/// adds to: a write Service created with `statefulset.kubernetes.io/pod-name: <placeholder>`
/// for another elector to fill in (Univention Nubus) would otherwise select nothing, ever.
pub const REPLACED_SELECTOR_KEYS: &[&str] = &[contract::LABEL_STATEFULSET_POD_NAME];

/// Whether `key` of a write Service's selector is one the leader selector replaces.
pub fn is_replaced_key(key: &str) -> bool {
    REPLACED_SELECTOR_KEYS.contains(&key)
}

/// The entries of `svc`'s selector the leader selector replaces.
fn pinned(svc: &Service) -> BTreeMap<String, String> {
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
    selector.into_iter().flatten().filter(|(k, _)| is_replaced_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Whether `svc` lists its pods whether they are ready or not.
fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false)
}

/// The replaced entries recorded on `svc` (see [`contract::ANNOTATION_REPLACED_SELECTOR`]);
/// `None` when nothing is recorded, or the record is not ours to read.
fn recorded(svc: &Service) -> Option<BTreeMap<String, String>> {
    let text = svc.annotations().get(contract::ANNOTATION_REPLACED_SELECTOR)?;
    let entries: BTreeMap<String, String> = serde_json::from_str(text).ok()?;
    Some(entries.into_iter().filter(|(k, _)| is_replaced_key(k)).collect())
}

/// Make `svc` select only the leader of `statefulset`: add `LABEL_ROLE: ROLE_LEADER` to its
/// selector (keeping the rest, but replacing a pinned pod name, [`REPLACED_SELECTOR_KEYS`],
/// recorded in [`contract::ANNOTATION_REPLACED_SELECTOR`] for the opt-out), publish its
/// endpoint whether ready or not (module docs; the old value recorded in
/// [`contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY`]) and mark it with `LABEL_STATEFULSET`,
/// which later tells us which Services to restore (the leader-service annotation may be gone
/// by then). The selector map is atomic for server-side apply, so a merge patch is used
/// instead: it touches exactly our keys.
pub fn leader_selector_change(svc: &Service, statefulset: &str) -> ServiceChange {
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty());
    let Some(selector) = selector else {
        return ServiceChange::Refuse(
            "the Service has no selector (manually managed endpoints); adding one would change what it routes to"
                .into(),
        );
    };
    let marked = svc.labels().get(contract::LABEL_STATEFULSET);
    if let Some(other) = marked.filter(|m| *m != statefulset) {
        return ServiceChange::Refuse(format!("the Service already routes to the leader of StatefulSet {other}"));
    }
    let role = selector.get(contract::LABEL_ROLE).map(String::as_str);
    let pins = pinned(svc);
    match (role, marked.is_some()) {
        (Some(contract::ROLE_LEADER), true) if pins.is_empty() && publishes_not_ready(svc) => ServiceChange::Unchanged,
        // The consumer selects the leader by itself: theirs to keep, nothing for us to undo.
        (Some(contract::ROLE_LEADER), false) => ServiceChange::Unchanged,
        (Some(other), false) => ServiceChange::Refuse(format!(
            "the Service's own selector has {}={other}; not overriding it",
            contract::LABEL_ROLE
        )),
        _ => {
            let mut selector = json!({contract::LABEL_ROLE: contract::ROLE_LEADER});
            for key in pins.keys() {
                selector[key] = serde_json::Value::Null;
            }
            let mut metadata = json!({
                "resourceVersion": svc.metadata.resource_version,
                "labels": {contract::LABEL_STATEFULSET: statefulset},
            });
            let records = records(svc, &pins);
            if !records.is_empty() {
                metadata["annotations"] = serde_json::Value::from_iter(records);
            }
            ServiceChange::Patch(
                json!({"metadata": metadata, "spec": {"selector": selector, "publishNotReadyAddresses": true}}),
            )
        }
    }
}

/// The annotations that record what making `svc` a write Service replaces: the pinned
/// selector entries `pins` ([`contract::ANNOTATION_REPLACED_SELECTOR`]) and a
/// `publishNotReadyAddresses` that was off ([`contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY`]).
/// The first record wins: a pin or setting put back later (by another elector, or a chart
/// upgrade) is not what the consumer had before us.
fn records(svc: &Service, pins: &BTreeMap<String, String>) -> BTreeMap<&'static str, String> {
    let mut records = BTreeMap::new();
    let unrecorded = |key: &str| !svc.annotations().contains_key(key);
    if !pins.is_empty() && unrecorded(contract::ANNOTATION_REPLACED_SELECTOR) {
        records.insert(contract::ANNOTATION_REPLACED_SELECTOR, serde_json::Value::from_iter(pins.clone()).to_string());
    }
    if !publishes_not_ready(svc) && unrecorded(contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY) {
        records.insert(contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY, false.to_string());
    }
    records
}

/// Why `svc` is not a write Service of `sts` at all (`None`: it is, or it has no selector,
/// which [`leader_selector_change`] refuses itself). Its selector, without the role key, must
/// contain the StatefulSet's own `matchLabels` (so it selects no pod the StatefulSet's selector
/// would not) and be matched by the StatefulSet's pod template (so it selects its pods).
/// Otherwise the leader-service annotation would let any StatefulSet steer any Service of its
/// namespace (issue 17, item 6): the other team's Service would select nothing, or only the
/// annotating StatefulSet's leader. The reconciler also checks the live pods
/// (`Reconciler::foreign_pods`): this is the part that needs no request.
pub fn foreign_service(svc: &Service, sts: &StatefulSet) -> Option<String> {
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty())?;
    let spec = sts.spec.as_ref();
    let own = spec.and_then(|s| s.selector.match_labels.as_ref());
    let template = spec.and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.as_ref());
    let name = sts.name_any();
    if let Some((k, v)) = own.into_iter().flatten().find(|(k, v)| selector.get(*k) != Some(*v)) {
        return Some(format!(
            "its selector lacks {k}={v} of StatefulSet {name}'s selector, so it may select pods that are not {name}'s"
        ));
    }
    let unmatched = selector
        .iter()
        .filter(|(k, _)| *k != contract::LABEL_ROLE && !is_replaced_key(k))
        .find(|(k, v)| template.and_then(|t| t.get(*k)) != Some(*v));
    unmatched.map(|(k, v)| format!("its selector {k}={v} does not match the pods of StatefulSet {name}"))
}

/// [`leader_selector_change`] for `sts`, refusing a Service that is not its write Service
/// ([`foreign_service`]).
pub fn leader_selector_change_for(svc: &Service, sts: &StatefulSet) -> ServiceChange {
    match foreign_service(svc, sts) {
        Some(why) => ServiceChange::Refuse(format!("not a write Service of StatefulSet {}: {why}", sts.name_any())),
        None => leader_selector_change(svc, &sts.name_any()),
    }
}

/// Undo [`leader_selector_change`] on a Service we marked for `statefulset`: drop the role
/// key and put back the selector entries and the `publishNotReadyAddresses` it replaced.
pub fn restore_selector_change(svc: &Service, statefulset: &str) -> ServiceChange {
    if svc.labels().get(contract::LABEL_STATEFULSET).map(String::as_str) != Some(statefulset) {
        return ServiceChange::Unchanged;
    }
    let has_role =
        svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| s.contains_key(contract::LABEL_ROLE));
    let mut selector = serde_json::Map::new();
    if has_role {
        selector.insert(contract::LABEL_ROLE.into(), serde_json::Value::Null);
    }
    let mut metadata =
        json!({"resourceVersion": svc.metadata.resource_version, "labels": {contract::LABEL_STATEFULSET: null}});
    let mut spec = json!({});
    if let Some(entries) = recorded(svc) {
        selector.extend(entries.into_iter().map(|(k, v)| (k, json!(v))));
        metadata["annotations"] = json!({contract::ANNOTATION_REPLACED_SELECTOR: null});
    }
    if svc.annotations().contains_key(contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY) {
        spec["publishNotReadyAddresses"] = json!(false); // the only value ever recorded
        metadata["annotations"][contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY] = serde_json::Value::Null;
    }
    if !selector.is_empty() {
        spec["selector"] = selector.into();
    }
    ServiceChange::Patch(json!({"metadata": metadata, "spec": spec}))
}

/// The opted-in StatefulSet among `statefulsets` (of the Service's namespace) whose
/// leader-service annotation names `service`; the first by name if several do (the others
/// are refused by [`leader_selector_change`] once the Service carries the first one's mark).
pub fn statefulset_naming<'a>(
    service: &str,
    statefulsets: impl IntoIterator<Item = &'a StatefulSet>,
) -> Option<&'a StatefulSet> {
    statefulsets
        .into_iter()
        .filter(|sts| {
            let annotations = sts.metadata.annotations.as_ref();
            contract::is_opted_in(annotations) && contract::leader_services(annotations).iter().any(|s| s == service)
        })
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
}

/// The admission-time form of [`leader_selector_change`]: the JSON patch that gives a
/// Service being created or replaced the leader selector and our mark, or `None` when it
/// needs none (or is not ours to change: the reconciler reports why, as an Event).
pub fn admission_patch(svc: &Service, sts: &StatefulSet) -> Option<Patch> {
    let ServiceChange::Patch(_) = leader_selector_change_for(svc, sts) else {
        return None;
    };
    let statefulset = sts.name_any();
    let statefulset = statefulset.as_str();
    let add = |tokens: &[&str], value: serde_json::Value| {
        PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(tokens.iter().copied()), value })
    };
    let label = match svc.metadata.labels {
        Some(_) => add(&["metadata", "labels", contract::LABEL_STATEFULSET], json!(statefulset)),
        None => add(&["metadata", "labels"], json!({contract::LABEL_STATEFULSET: statefulset})),
    };
    // A Patch decision implies a non-empty selector, so the map exists.
    let selector = add(&["spec", "selector", contract::LABEL_ROLE], json!(contract::ROLE_LEADER));
    let published = add(&["spec", "publishNotReadyAddresses"], json!(true));
    let pins = pinned(svc);
    let mut ops = vec![label, selector, published];
    let records = records(svc, &pins);
    match svc.metadata.annotations {
        Some(_) => {
            ops.extend(records.into_iter().map(|(key, record)| add(&["metadata", "annotations", key], json!(record))))
        }
        None if records.is_empty() => {}
        None => ops.push(add(&["metadata", "annotations"], serde_json::Value::from_iter(records))),
    }
    ops.extend(pins.keys().map(|key| {
        PatchOperation::Remove(RemoveOperation { path: PointerBuf::from_tokens(["spec", "selector", key.as_str()]) })
    }));
    Some(Patch(ops))
}

/// The Services among `services` (those of `statefulset`'s leader-service annotation that
/// exist) that do not select its leader yet: while any does, its pods are refused. Only the
/// selector counts: whether the Service publishes not-ready addresses is not a matter of
/// safety (module docs).
pub fn not_selecting_leader<'a>(services: &'a [Service], sts: &StatefulSet) -> Vec<&'a str> {
    let selects_leader = |svc: &Service| {
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
        let role = selector.and_then(|s| s.get(contract::LABEL_ROLE)).map(String::as_str);
        role == Some(contract::ROLE_LEADER) && pinned(svc).is_empty()
    };
    services
        .iter()
        .filter(|svc| matches!(leader_selector_change_for(svc, sts), ServiceChange::Patch(_)) && !selects_leader(svc))
        .map(|svc| svc.metadata.name.as_deref().unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn svc(selector: Option<Value>, labels: Value) -> Service {
        let mut v = json!({"metadata": {"name": "ldap-primary", "namespace": "dir", "resourceVersion": "7", "labels": labels},
                           "spec": {}});
        if let Some(s) = selector {
            v["spec"]["selector"] = s;
        }
        serde_json::from_value(v).unwrap()
    }

    fn sts(name: &str, annotations: Value) -> StatefulSet {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "dir", "annotations": annotations}}))
            .unwrap()
    }

    /// StatefulSet `ldap` selecting and labelling its pods `app=ldap` (its template adds `tier`).
    fn ldap() -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "ldap", "namespace": "dir"},
            "spec": {"serviceName": "ldap", "selector": {"matchLabels": {"app": "ldap"}},
                     "template": {"metadata": {"labels": {"app": "ldap", "tier": "directory"}}}},
        }))
        .unwrap()
    }

    #[test]
    fn only_a_service_selecting_exactly_the_statefulsets_pods_is_its_write_service() {
        let set = ldap();
        for ok in [json!({"app": "ldap"}), json!({"app": "ldap", "tier": "directory"})] {
            assert_eq!(foreign_service(&svc(Some(ok.clone()), json!({})), &set), None, "{ok}");
        }
        // Another team's Service: the annotation must not let us narrow it to our leader.
        let theirs = svc(Some(json!({"app": "payroll"})), json!({}));
        let why = foreign_service(&theirs, &set).expect("refused");
        assert!(why.contains("app=ldap"), "{why}");
        assert!(matches!(leader_selector_change_for(&theirs, &set), ServiceChange::Refuse(_)));
        // Wider than the StatefulSet's selector, or naming labels its pods do not carry.
        assert!(foreign_service(&svc(Some(json!({"tier": "directory"})), json!({})), &set).is_some());
        assert!(foreign_service(&svc(Some(json!({"app": "ldap", "zone": "a"})), json!({})), &set).is_some());
        assert!(admission_patch(&theirs, &set).is_none());
        assert!(not_selecting_leader(&[theirs], &set).is_empty(), "pods do not wait for a Service that is not theirs");
    }

    #[test]
    fn leader_selector_is_merged_and_marked() {
        let s = svc(Some(json!({"app": "ldap"})), json!({"team": "x"}));
        let ServiceChange::Patch(p) = leader_selector_change(&s, "ldap") else { panic!() };
        assert_eq!(p["spec"]["selector"], json!({contract::LABEL_ROLE: contract::ROLE_LEADER}));
        assert_eq!(p["metadata"]["labels"], json!({contract::LABEL_STATEFULSET: "ldap"}));
        assert_eq!(p["metadata"]["resourceVersion"], json!("7"), "guarded against concurrent writers");
        // Applying the merge patch keeps the consumer's keys.
        let mut merged = serde_json::to_value(&s).unwrap();
        json_patch::merge(&mut merged, &p);
        assert_eq!(merged["spec"]["selector"], json!({"app": "ldap", contract::LABEL_ROLE: contract::ROLE_LEADER}));
        let merged: Service = serde_json::from_value(merged).unwrap();
        assert_eq!(leader_selector_change(&merged, "ldap"), ServiceChange::Unchanged, "idempotent");

        // ... and restoring gives the original selector and labels back.
        let ServiceChange::Patch(undo) = restore_selector_change(&merged, "ldap") else { panic!() };
        let mut restored = serde_json::to_value(&merged).unwrap();
        json_patch::merge(&mut restored, &undo);
        assert_eq!(restored["spec"]["selector"], json!({"app": "ldap"}));
        assert_eq!(restored["metadata"]["labels"], json!({"team": "x"}));
        assert_eq!(restored["metadata"]["annotations"], json!({}));
    }

    #[test]
    fn a_write_service_lists_its_leader_ready_or_not_and_the_opt_out_restores_the_consumers_setting() {
        let original = svc(Some(json!({"app": "ldap"})), json!({}));
        let ours = merged(&original, leader_selector_change(&original, "ldap"));
        assert_eq!(ours.spec.as_ref().unwrap().publish_not_ready_addresses, Some(true));
        assert_eq!(ours.annotations().get(contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY).unwrap(), "false");
        assert_eq!(leader_selector_change(&ours, "ldap"), ServiceChange::Unchanged, "idempotent");

        // Turned off again (a chart upgrade): on again, the first record kept.
        let mut off = ours.clone();
        off.spec.as_mut().unwrap().publish_not_ready_addresses = Some(false);
        let again = merged(&off, leader_selector_change(&off, "ldap"));
        assert_eq!(again.spec.as_ref().unwrap().publish_not_ready_addresses, Some(true));
        assert_eq!(again.annotations(), ours.annotations());
        assert!(
            not_selecting_leader(std::slice::from_ref(&off), &ldap()).is_empty(),
            "pods wait for the selector only"
        );

        let restored = merged(&again, restore_selector_change(&again, "ldap"));
        assert_eq!(restored.spec.as_ref().unwrap().publish_not_ready_addresses, Some(false));
        assert!(restored.annotations().is_empty(), "{:?}", restored.annotations());

        // A consumer's Service that published them already keeps doing so after the opt-out.
        let mut publishing = original.clone();
        publishing.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let ours = merged(&publishing, leader_selector_change(&publishing, "ldap"));
        assert!(ours.annotations().is_empty(), "nothing replaced, nothing recorded");
        let restored = merged(&ours, restore_selector_change(&ours, "ldap"));
        assert_eq!(restored.spec.as_ref().unwrap().publish_not_ready_addresses, Some(true));
    }

    /// Univention Nubus' write Service: its selector pins a pod name another elector was to
    /// fill in. Adding the role key beside it would select nothing, ever.
    fn placeholder() -> Service {
        svc(
            Some(json!({"app": "ldap", contract::LABEL_STATEFULSET_POD_NAME: "will-be-updated-by-elector"})),
            json!({"team": "x"}),
        )
    }

    fn merged(s: &Service, change: ServiceChange) -> Service {
        let ServiceChange::Patch(p) = change else { panic!("expected a patch, got {change:?}") };
        let mut merged = serde_json::to_value(s).unwrap();
        json_patch::merge(&mut merged, &p);
        serde_json::from_value(merged).unwrap()
    }

    fn selector_of(s: &Service) -> Value {
        serde_json::to_value(s.spec.as_ref().unwrap().selector.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn a_pinned_pod_name_is_replaced_by_the_leader_selector_and_restored_on_opt_out() {
        let original = placeholder();
        assert_eq!(foreign_service(&original, &ldap()), None, "the pin does not make it another's Service");
        let ours = merged(&original, leader_selector_change_for(&original, &ldap()));
        assert_eq!(selector_of(&ours), json!({"app": "ldap", contract::LABEL_ROLE: contract::ROLE_LEADER}));
        assert_eq!(leader_selector_change(&ours, "ldap"), ServiceChange::Unchanged, "idempotent");

        // Another elector (or a chart upgrade) pins a pod again: replaced again, and the
        // first record (the consumer's original) is kept.
        let mut repinned = ours.clone();
        repinned
            .spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .insert(contract::LABEL_STATEFULSET_POD_NAME.into(), "ldap-1".into());
        let again = merged(&repinned, leader_selector_change(&repinned, "ldap"));
        assert_eq!(selector_of(&again), selector_of(&ours));
        assert_eq!(again.annotations(), ours.annotations());

        let restored = merged(&again, restore_selector_change(&again, "ldap"));
        assert_eq!(selector_of(&restored), selector_of(&original), "the placeholder is back");
        assert_eq!(restored.labels(), original.labels());
        assert!(restored.annotations().is_empty(), "{:?}", restored.annotations());
    }

    #[test]
    fn admission_replaces_a_pinned_pod_name_like_the_reconciler() {
        let s = placeholder();
        let patch = admission_patch(&s, &ldap()).expect("needs the selector");
        let mut patched = serde_json::to_value(&s).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        let patched: Service = serde_json::from_value(patched).unwrap();
        let merged = merged(&s, leader_selector_change(&s, "ldap"));
        assert_eq!(selector_of(&patched), selector_of(&merged));
        assert_eq!(patched.annotations(), merged.annotations());
        assert_eq!(patched.labels(), merged.labels());
        assert!(admission_patch(&patched, &ldap()).is_none(), "idempotent");
        assert_eq!(not_selecting_leader(&[s], &ldap()), vec!["ldap-primary"], "pods wait for it");
    }

    #[test]
    fn foreign_or_selectorless_services_are_left_alone() {
        let refuse = |s: &Service| matches!(leader_selector_change(s, "ldap"), ServiceChange::Refuse(_));
        assert!(refuse(&svc(None, json!({}))));
        assert!(refuse(&svc(Some(json!({})), json!({}))));
        assert!(refuse(&svc(Some(json!({"app": "x"})), json!({contract::LABEL_STATEFULSET: "other"}))));
        assert!(refuse(&svc(Some(json!({contract::LABEL_ROLE: contract::ROLE_STANDBY})), json!({}))));
        let own = svc(Some(json!({"app": "x", contract::LABEL_ROLE: contract::ROLE_LEADER})), json!({}));
        assert_eq!(leader_selector_change(&own, "ldap"), ServiceChange::Unchanged);
        assert_eq!(restore_selector_change(&own, "ldap"), ServiceChange::Unchanged, "never ours to undo");
        let other = svc(Some(json!({"app": "x"})), json!({contract::LABEL_STATEFULSET: "other"}));
        assert_eq!(restore_selector_change(&other, "ldap"), ServiceChange::Unchanged);
    }

    #[test]
    fn admission_patch_gives_the_same_result_as_the_reconciler() {
        for labels in [Value::Null, json!({"team": "x"})] {
            let s = svc(Some(json!({"app": "ldap"})), labels);
            let patch = admission_patch(&s, &ldap()).expect("needs the selector");
            let mut patched = serde_json::to_value(&s).unwrap();
            json_patch::patch(&mut patched, &patch).unwrap();
            let ServiceChange::Patch(merge) = leader_selector_change(&s, "ldap") else { panic!() };
            let mut merged = serde_json::to_value(&s).unwrap();
            json_patch::merge(&mut merged, &merge);
            merged["metadata"]["resourceVersion"] = patched["metadata"]["resourceVersion"].clone();
            assert_eq!(patched, merged);
            let patched: Service = serde_json::from_value(patched).unwrap();
            assert!(admission_patch(&patched, &ldap()).is_none(), "idempotent");
        }
        assert!(admission_patch(&svc(None, json!({})), &ldap()).is_none(), "no selector: not ours to add one");
    }

    #[test]
    fn the_first_opted_in_statefulset_naming_the_service_owns_it() {
        let names = |v: &str| json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: v});
        let all = [
            sts("b", names("x, ldap-primary")),
            sts("a", names("ldap-primary")),
            sts("0", json!({contract::ANNOTATION_LEADER_SERVICE: "ldap-primary"})), // not opted in
            sts("1", names("ldap-primary-2")),
        ];
        let owner = statefulset_naming("ldap-primary", &all).and_then(|s| s.metadata.name.as_deref());
        assert_eq!(owner, Some("a"));
        assert!(statefulset_naming("other", &all).is_none());
    }

    #[test]
    fn pods_wait_only_for_services_that_would_be_changed() {
        let mut waiting = svc(Some(json!({"app": "ldap"})), json!({}));
        waiting.metadata.name = Some("rw".into());
        let ready = svc(Some(json!({"app": "ldap", contract::LABEL_ROLE: contract::ROLE_LEADER})), json!({}));
        let manual = svc(None, json!({}));
        assert_eq!(not_selecting_leader(&[waiting, ready.clone(), manual.clone()], &ldap()), vec!["rw"]);
        assert!(not_selecting_leader(&[ready, manual], &ldap()).is_empty());
    }
}

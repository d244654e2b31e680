//! The JSON patch builder ([`PatchOps`]) and the edits of the pod's own fields: the default
//! token removed, the elector's identity, the pod security context and the metadata.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::{PointerBuf, Token};
use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ldap_elector_contract as contract;
use serde::Serialize;

use super::template::runtime_default;
use super::{elector_service_account, InjectError, DEFAULT_TOKEN_VOLUME_PREFIX};

pub(super) fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// The operations of one patch, in order.
#[derive(Default)]
pub(super) struct PatchOps(Vec<PatchOperation>);

impl PatchOps {
    /// `add`, or `replace` when the member exists (a replace on a missing member fails
    /// loudly instead of silently creating it, so a wrong assumption shows up in tests).
    pub(super) fn set(&mut self, path: PointerBuf, value: impl Serialize, exists: bool) -> Result<(), InjectError> {
        let value = serde_json::to_value(value)?;
        self.0.push(if exists {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
        Ok(())
    }

    /// `add` of one element into `array` at `index` (`0`, `-`), or of the whole
    /// one-element array when it is missing (`index` None).
    pub(super) fn add_item(
        &mut self,
        array: PointerBuf,
        index: Option<Token>,
        item: impl Serialize,
    ) -> Result<(), InjectError> {
        let item = serde_json::to_value(item)?;
        let (path, value) = match index {
            Some(i) => (array.with_trailing_token(i), item),
            None => (array, serde_json::Value::Array(vec![item])),
        };
        self.0.push(PatchOperation::Add(AddOperation { path, value }));
        Ok(())
    }

    pub(super) fn remove(&mut self, path: PointerBuf) {
        self.0.push(PatchOperation::Remove(RemoveOperation { path }));
    }

    pub(super) fn into_patch(self) -> Patch {
        Patch(self.0)
    }
}

/// Removes the ServiceAccount plugin's token volume and its mounts. Indices are those of
/// the incoming pod, so this runs before anything is inserted, highest index first.
pub(super) fn strip_default_token(ops: &mut PatchOps, spec: &PodSpec) {
    let is_default = |name: &str| name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX);
    let lists = [("initContainers", spec.init_containers.as_deref()), ("containers", Some(&spec.containers[..]))];
    for (list, containers) in lists {
        for (c, container) in containers.unwrap_or_default().iter().enumerate() {
            let mounts = container.volume_mounts.as_deref().unwrap_or_default();
            for (m, _) in mounts.iter().enumerate().rev().filter(|(_, m)| is_default(&m.name)) {
                let mut path = ptr(&["spec", list]);
                path.push_back(c);
                path.push_back("volumeMounts");
                path.push_back(m);
                ops.remove(path);
            }
        }
    }
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    for (v, _) in volumes.iter().enumerate().rev().filter(|(_, v)| is_default(&v.name)) {
        ops.remove(ptr(&["spec", "volumes"]).with_trailing_token(v));
    }
}

/// Whether the consumer's containers keep the token the ServiceAccount plugin mounted for
/// them (before us). Yes, unless
/// - the pod runs as the elector's own account [`contract::identity_name`]: it ran as
///   `default` and is switched to it, or its template names it. That account exists for the
///   elector alone; a token of it in slapd would pass the label-protection policies as the
///   pod's own elector, so naming it is handled exactly like `default`, or
/// - the StatefulSet asks for [`contract::TOKEN_MODE_STRICT`]: only the elector holds a token.
///
/// Kept, a consumer container holds a token of the pod's own ServiceAccount, which the
/// reconciler also binds to the elector Role: it may renew the Lease and set role labels
/// as the elector can. That is the consumer's choice of account (docs/nubus.md); `strict`
/// is the way out for pods whose containers need no token.
///
/// Where the consumer keeps no token, a token volume of the template's own (`projected`
/// with a `serviceAccountToken` source) is refused: the kubelet projects it for the pod's
/// account, i.e. the elector's. Removing it would silently break whoever reads it.
pub(super) fn keeps_consumer_tokens(
    annotations: Option<&BTreeMap<String, String>>,
    spec: &PodSpec,
    statefulset: &str,
) -> Result<bool, InjectError> {
    let strict = match annotations.and_then(|a| a.get(contract::ANNOTATION_TOKEN_MODE)).map(String::as_str) {
        None | Some(contract::TOKEN_MODE_KEEP) => false,
        Some(contract::TOKEN_MODE_STRICT) => true,
        Some(other) => {
            return Err(InjectError::InvalidAnnotation {
                key: contract::ANNOTATION_TOKEN_MODE,
                value: other.to_string(),
                reason: format!("must be {:?} or {:?}", contract::TOKEN_MODE_KEEP, contract::TOKEN_MODE_STRICT),
            })
        }
    };
    let account = elector_service_account(statefulset, Some(spec));
    let elector_account = account == contract::identity_name(statefulset);
    if !strict && !elector_account {
        return Ok(true);
    }
    let projects_token = |v: &&Volume| {
        let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        !v.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX) && sources.clone().any(|s| s.service_account_token.is_some())
    };
    if let Some(volume) = spec.volumes.iter().flatten().find(projects_token) {
        let reason = if elector_account {
            format!(
                "the pod runs as the elector's ServiceAccount {account} (the webhook runs a pod whose template names \
                 no account, or `default`, as it), so that token would carry the elector's rights. Name a \
                 ServiceAccount of your own in the pod template (serviceAccountName) or remove the volume"
            )
        } else {
            format!(
                "with StatefulSet annotation {key}={strict} only the elector holds a token of {account}, the account \
                 the elector Role is bound to. Remove the volume, or set {key}={keep}",
                key = contract::ANNOTATION_TOKEN_MODE,
                strict = contract::TOKEN_MODE_STRICT,
                keep = contract::TOKEN_MODE_KEEP,
            )
        };
        return Err(InjectError::ProjectedToken { volume: volume.name.clone(), reason });
    }
    Ok(false)
}

/// Service account, automount off (see the module docs).
pub(super) fn identity(ops: &mut PatchOps, spec: &PodSpec, statefulset: &str) -> Result<(), InjectError> {
    let account = elector_service_account(statefulset, Some(spec));
    if spec.service_account_name.as_deref() != Some(account.as_str()) {
        ops.set(ptr(&["spec", "serviceAccountName"]), &account, spec.service_account_name.is_some())?;
    }
    // The deprecated alias mirrors serviceAccountName in v1; keep them equal.
    if spec.service_account.as_deref().is_some_and(|a| a != account) {
        ops.set(ptr(&["spec", "serviceAccount"]), &account, true)?;
    }
    if spec.automount_service_account_token != Some(false) {
        let present = spec.automount_service_account_token.is_some();
        ops.set(ptr(&["spec", "automountServiceAccountToken"]), false, present)?;
    }
    Ok(())
}

/// Adds restricted defaults without overriding the user's choices. The apiserver
/// defaults a missing pod securityContext to `{}`, so in practice only seccomp is added:
/// forcing runAsNonRoot on an existing pod could stop a root-running slapd image.
pub(super) fn pod_security_context(ops: &mut PatchOps, spec: &PodSpec) -> Result<(), InjectError> {
    match &spec.security_context {
        None => {
            let sc = PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(runtime_default()),
                ..Default::default()
            };
            ops.set(ptr(&["spec", "securityContext"]), sc, false)
        }
        Some(sc) if sc.seccomp_profile.is_none() => {
            ops.set(ptr(&["spec", "securityContext", "seccompProfile"]), runtime_default(), false)
        }
        Some(_) => Ok(()),
    }
}

/// Role label `standby` (a pod is never born leader; only the Lease holder writes
/// `leader`), the injection marker, and no pre-set fencing term.
/// `handover_note`: the [`contract::ANNOTATION_HANDOVER_HOOK`] value, when slapd kept its own
/// preStop hook.
pub(super) fn metadata(
    ops: &mut PatchOps,
    meta: &ObjectMeta,
    handover_note: Option<String>,
) -> Result<(), InjectError> {
    set_map_entry(ops, "labels", meta.labels.as_ref(), contract::LABEL_ROLE, contract::ROLE_STANDBY)?;
    if meta.annotations.as_ref().is_some_and(|a| a.contains_key(contract::ANNOTATION_TERM)) {
        ops.remove(ptr(&["metadata", "annotations", contract::ANNOTATION_TERM]));
    }
    let annotations = meta.annotations.as_ref();
    set_map_entry(ops, "annotations", annotations, contract::ANNOTATION_STATUS, contract::STATUS_INJECTED)?;
    if let Some(note) = handover_note {
        // The map exists by now (the status marker went in first).
        let key = contract::ANNOTATION_HANDOVER_HOOK;
        let exists = annotations.is_some_and(|a| a.contains_key(key));
        ops.set(ptr(&["metadata", "annotations", key]), note, exists)?;
    }
    Ok(())
}

fn set_map_entry(
    ops: &mut PatchOps,
    field: &str,
    map: Option<&BTreeMap<String, String>>,
    key: &str,
    value: &str,
) -> Result<(), InjectError> {
    let Some(map) = map else {
        return ops.set(ptr(&["metadata", field]), BTreeMap::from([(key, value)]), false);
    };
    match map.get(key) {
        Some(v) if v == value => Ok(()),
        existing => ops.set(ptr(&["metadata", field, key]), value, existing.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Decision;
    use ldap_elector_contract as contract;
    use serde_json::json;

    /// Which API token each container holds after injection, per token mode and account:
    /// (consumer's `slapd`, the elector, the guard) → the account whose token it holds.
    #[test]
    fn which_container_holds_which_token() {
        use super::super::elector_service_account;
        use k8s_openapi::api::core::v1::Pod;
        let token_of = |pod: &serde_json::Value, name: &str| -> Option<String> {
            let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
            let spec = typed.spec.unwrap();
            let account = spec.service_account_name.clone().unwrap_or_default();
            let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
            let c = all.into_iter().find(|c| c.name == name)?;
            let mounts = c.volume_mounts.iter().flatten();
            mounts.into_iter().any(|m| m.mount_path == contract::TOKEN_MOUNT_PATH).then_some(account)
        };
        let mut custom = pod_json();
        custom["spec"]["serviceAccountName"] = json!("ldap-server-primary");
        custom["spec"]["serviceAccount"] = json!("ldap-server-primary");
        let socket =
            [(contract::ANNOTATION_LDAPI_SOCKET_DIR, "/run/slapd"), (contract::ANNOTATION_LDAP_SUFFIX, "dc=x")];
        let strict = [socket[0], socket[1], (contract::ANNOTATION_TOKEN_MODE, contract::TOKEN_MODE_STRICT)];
        let elector = contract::identity_name("ldap-server");
        let mut named_elector = pod_json();
        named_elector["spec"]["serviceAccountName"] = json!(elector);
        named_elector["spec"]["serviceAccount"] = json!(elector);
        let cases = [
            // The consumer's own account: its container keeps that token; the elector Role is
            // bound to the same account, so that container has the elector's rights too.
            (&custom, &socket[..], Some("ldap-server-primary"), "ldap-server-primary"),
            // Strict: only the elector holds a token.
            (&custom, &strict[..], None, "ldap-server-primary"),
            // `default` is switched to the elector's account: the consumer's `default` token goes.
            (&pod_json(), &socket[..], None, elector.as_str()),
            // The elector's own account named by the template: handled like `default`.
            (&named_elector, &socket[..], None, elector.as_str()),
        ];
        for (pod, annotations, slapd_token, account) in cases {
            let out = apply(pod, &decide(pod, Some(&owner(annotations))).unwrap());
            assert_eq!(token_of(&out, "slapd").as_deref(), slapd_token, "{annotations:?}");
            assert_eq!(token_of(&out, contract::SIDECAR_CONTAINER).as_deref(), Some(account));
            assert_eq!(token_of(&out, contract::GUARD_CONTAINER), None, "the guard never has a token");
            assert_eq!(
                out["spec"]["automountServiceAccountToken"],
                json!(false),
                "no token for containers added later"
            );
            let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(out).unwrap();
            assert_eq!(elector_service_account("ldap-server", typed.spec.as_ref()), account, "the Role is bound to it");
        }
        let bad = owner(&[(contract::ANNOTATION_TOKEN_MODE, "none")]);
        assert!(decide(&custom, Some(&bad)).unwrap_err().to_string().contains("\"keep\" or \"strict\""));
    }

    /// A token volume the template projects itself carries the pod's account: refused where
    /// that is the elector's (the pod is switched to it, or names it) or where only the elector
    /// may hold a token (`strict`); kept with an account of the consumer's own.
    #[test]
    fn a_template_projected_token_is_refused_where_it_would_carry_the_elector_account() {
        let with_projected = |account: &str| {
            let mut pod = pod_json();
            pod["spec"]["serviceAccountName"] = json!(account);
            pod["spec"]["serviceAccount"] = json!(account);
            pod["spec"]["volumes"].as_array_mut().unwrap().push(
                json!({"name": "vault-token", "projected": {"sources": [
                    {"configMap": {"name": "ca"}},
                    {"serviceAccountToken": {"audience": "vault", "path": "token"}},
                ]}}),
            );
            pod["spec"]["containers"][0]["volumeMounts"] =
                json!([{"name": "vault-token", "mountPath": "/var/run/secrets/vault"}]);
            pod
        };
        let elector = contract::identity_name("ldap-server");
        let strict = [(contract::ANNOTATION_TOKEN_MODE, contract::TOKEN_MODE_STRICT)];
        for (account, annotations, why) in [
            ("default", &[][..], "runs as the elector's ServiceAccount"),
            (elector.as_str(), &[][..], "runs as the elector's ServiceAccount"),
            ("ldap-server-primary", &strict[..], contract::TOKEN_MODE_STRICT),
        ] {
            let err = decide(&with_projected(account), Some(&owner(annotations))).unwrap_err().to_string();
            let volume = "volume \"vault-token\" projects a service-account token";
            assert!(err.contains(volume) && err.contains(why), "{account}: {err}");
            let wanted = if account == "ldap-server-primary" { account } else { elector.as_str() };
            assert!(err.contains(wanted), "names the account: {err}");
        }
        // An account of the consumer's own, tokens kept: the volume stays, in slapd only.
        let pod = with_projected("ldap-server-primary");
        let out = apply(&pod, &decide(&pod, Some(&owner(&[]))).unwrap());
        assert!(out["spec"]["volumes"].as_array().unwrap().iter().any(|v| v["name"] == json!("vault-token")));
        assert_eq!(mounts_at(&out, "slapd", "/var/run/secrets/vault").len(), 1);
        assert!(mounts_at(&out, contract::SIDECAR_CONTAINER, "/var/run/secrets/vault").is_empty());
    }

    #[test]
    fn keys_with_slashes_are_escaped() {
        let Decision::Patch(patch) = decide(&pod_json(), Some(&owner(&[]))).unwrap() else { panic!() };
        let paths: Vec<&str> = patch.0.iter().map(|op| op.path().as_str()).collect();
        assert!(paths.contains(&"/metadata/labels/ldap-elector.dev~1role"), "{paths:?}");
        // No annotations on the pod: the whole map is added, its key unescaped inside.
        assert!(paths.contains(&"/metadata/annotations"), "{paths:?}");
    }

    #[test]
    fn leader_label_at_creation_is_overwritten_and_term_dropped() {
        let mut pod = pod_json();
        pod["metadata"]["labels"][contract::LABEL_ROLE] = json!(contract::ROLE_LEADER);
        pod["metadata"]["annotations"] = json!({contract::ANNOTATION_TERM: "7"});
        let out = apply(&pod, &decide(&pod, Some(&owner(&[]))).unwrap());
        assert_eq!(out["metadata"]["labels"][contract::LABEL_ROLE], json!(contract::ROLE_STANDBY));
        assert!(out["metadata"]["annotations"].get(contract::ANNOTATION_TERM).is_none());
    }

    #[test]
    fn user_pod_security_context_is_kept() {
        let mut pod = pod_json();
        pod["spec"]["securityContext"] = json!({"runAsUser": 0, "seccompProfile": {"type": "Unconfined"}});
        let out = apply(&pod, &decide(&pod, Some(&owner(&[]))).unwrap());
        assert_eq!(out["spec"]["securityContext"], pod["spec"]["securityContext"]);
        pod["spec"]["securityContext"] = json!({"runAsUser": 0});
        let out = apply(&pod, &decide(&pod, Some(&owner(&[]))).unwrap());
        assert_eq!(
            out["spec"]["securityContext"],
            json!({"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}})
        );
    }
}

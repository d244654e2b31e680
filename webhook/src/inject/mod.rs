//! Pure injection: from a Pod as the apiserver hands it to admission (already defaulted,
//! already mutated by the in-tree ServiceAccount plugin) and its owning StatefulSet to a
//! minimal, deterministic JSON patch. No I/O and no clocks: the caller looks up the owner.
//!
//! Decisions worth knowing (see DESIGN.md, "Kubernetes facts that bite"):
//! - The elector is the FIRST init container, as a native sidecar with a startup probe:
//!   the kubelet starts init containers in order and waits for a sidecar's startup probe,
//!   so the elector runs before any other init container and before slapd, and is stopped
//!   after them. It holds no leadership during init (slapd is not healthy yet), so running
//!   early is harmless. With the OpenLDAP integration the fence guard
//!   ([`contract::GUARD_CONTAINER`]) goes in before it: sidecars stop in the reverse order,
//!   so the guard outlives the elector on deletion as it does on a crash.
//! - `automountServiceAccountToken: false`: otherwise the ServiceAccount plugin (re-run
//!   after every webhook that changed the pod) would hand a token to our containers too (the
//!   guard must have none). The elector mounts an explicit projected token. The consumer's
//!   containers keep the token their own ServiceAccount gave them (`kube-api-access-*`,
//!   mounted before us): a consumer container may rely on the API (Univention Nubus' does).
//!   It is removed when the pod runs as the elector's own account (switched from `default`,
//!   or named by the template: a token of that account would carry the elector's rights) or
//!   with [`contract::ANNOTATION_TOKEN_MODE`] `strict`; a token volume the template projects
//!   itself is then refused (see [`patch::keeps_consumer_tokens`]).
//! - The pod is switched to the elector's ServiceAccount only when it runs as `default`;
//!   a custom account is kept (see [`elector_service_account`]).
//! - The OpenLDAP integration is opt-in by [`contract::ANNOTATION_LDAPI_SOCKET_DIR`]: slapd's
//!   ldapi socket directory is shared with the sidecar, which fences and health-checks slapd
//!   through it (see [`ldapi`] and docs/openldap.md). Without the annotation nothing of
//!   it is injected. Where slapd runs from a slapd.d directory on a volume, the init
//!   container [`contract::START_FENCED_CONTAINER`] goes in LAST, so that slapd starts
//!   fenced (see [`start_fenced`]).
//!
//! Layout: [`inject`] decides and assembles; [`config`] holds the sidecar settings,
//! [`annotations`] parses the StatefulSet's tuning, metrics and audit annotations, [`ldapi`]
//! plans the OpenLDAP integration ([`handover`]: slapd's preStop hook), [`template`] builds the sidecar container and token
//! volume, and [`patch`] the JSON patch and the edits of the pod's own fields.

mod annotations;
mod config;
mod electors;
mod handover;
mod ldapi;
mod patch;
mod start_fenced;
mod template;
#[cfg(test)]
pub(crate) mod testing;

use json_patch::Patch;
use jsonptr::Token;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ContainerPort, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ldap_elector_contract as contract;

pub use config::{ConfigError, InjectConfig, SidecarResources};

use annotations::{audit_plan, metrics_port, tuning_env};
use electors::{elector_removals, remove_containers};
use ldapi::ldapi_plan;
use patch::{identity, keeps_consumer_tokens, metadata, pod_security_context, ptr, strip_default_token, PatchOps};
use template::{env_value, guard_socket, run_mount, sidecar, socket_volume, token_volume};

/// Prefix of the token volume the ServiceAccount admission plugin adds (Kubernetes' name).
const DEFAULT_TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The account the ServiceAccount plugin fills in when a pod names none.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Why a pod is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    NotOwnedByStatefulSet,
    /// The pod names a StatefulSet that the caller could not find.
    OwnerNotFound,
    NotOptedIn,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOwnedByStatefulSet => "not owned by a StatefulSet",
            Self::OwnerNotFound => "owner StatefulSet not found",
            Self::NotOptedIn => "StatefulSet not opted in",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Skip(SkipReason),
    Patch(Patch),
}

/// Reasons to deny the pod; the message is shown to whoever creates it (and in the
/// StatefulSet's events), so it says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("StatefulSet annotation {key}={value:?} must be a positive whole number of seconds, e.g. \"15\"")]
    InvalidTiming { key: &'static str, value: String },
    #[error("StatefulSet annotations: {shorter} must be less than {longer}")]
    InconsistentTiming { shorter: &'static str, longer: &'static str },
    #[error("pod already has a {what} named {name:?} but no {marker} annotation; remove it from the pod template", marker = contract::ANNOTATION_STATUS)]
    NameConflict { what: &'static str, name: &'static str },
    #[error("the owner passed in ({got}) is not the pod's controller ({expected}); retry")]
    OwnerMismatch { expected: String, got: String },
    #[error("StatefulSet annotation {key}={value:?}: {reason}")]
    InvalidAnnotation { key: &'static str, value: String, reason: String },
    #[error(
        "StatefulSet annotation {needed} is required with {given}: the injected health check reads the contextCSN \
         of the data database's suffix (e.g. \"dc=example,dc=org\"); or set {health} yourself",
        needed = contract::ANNOTATION_LDAP_SUFFIX,
        given = contract::ANNOTATION_LDAPI_SOCKET_DIR,
        health = contract::ANNOTATION_HEALTH_CHECK
    )]
    MissingLdapSuffix,
    #[error(
        "pod has container {container:?}, an elector of its own (the webhook's elector container names): two electors \
         would fight over the Lease and the write Service. Set annotation {annotation}={container} on the StatefulSet \
         to have the webhook remove it from the pods it injects, or remove it from the pod template",
        annotation = contract::ANNOTATION_REPLACE_CONTAINERS
    )]
    ForeignElector { container: String },
    #[error("StatefulSet annotation {annotation}: cannot remove container {container:?}: {reason}", annotation = contract::ANNOTATION_REPLACE_CONTAINERS)]
    CannotReplace { container: String, reason: String },
    #[error("cannot share the ldapi socket directory {dir} with the sidecar: {reason}")]
    SocketDirConflict { dir: String, reason: String },
    #[error(
        "pod arrives carrying {marker}={injected}, which only the ldap-elector webhook sets (when it injects the \
         pod): the label-protection policies trust a pod carrying it to run the webhook's elector, so it is never \
         taken from a client. Remove that annotation from the pod template or manifest; the webhook injects the \
         pod and sets it",
        marker = contract::ANNOTATION_STATUS,
        injected = contract::STATUS_INJECTED
    )]
    MarkerFromClient,
    #[error("pod template volume {volume:?} projects a service-account token: {reason}")]
    ProjectedToken { volume: String, reason: String },
    #[error("pod has no spec")]
    NoSpec,
    #[error("cannot serialise patch value: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The name of the pod's controlling StatefulSet (`apps/v1`), from its ownerReferences.
pub fn owner_statefulset_name(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == "StatefulSet" && r.api_version == "apps/v1")
        .map(|r| r.name.as_str())
}

/// The ServiceAccount the elector of `statefulset` runs as, given the pod spec (a pod's,
/// or the StatefulSet's template). The webhook and the reconciler (which binds the
/// elector Role to it) both call this, so they cannot disagree.
///
/// Unset or `default` → the per-StatefulSet account [`contract::identity_name`], which
/// the reconciler creates (the ServiceAccount plugin refuses pods naming a missing
/// account, so the first pods may be retried until it exists). A custom account is kept:
/// it may carry imagePullSecrets or workload identity the chart relies on. The Role is
/// then bound to that account, so every pod running as it could touch the Lease —
/// acceptable because the consumer chose to share it; `default` is never bound.
pub fn elector_service_account(statefulset: &str, spec: Option<&PodSpec>) -> String {
    let named =
        spec.and_then(|s| [&s.service_account_name, &s.service_account].into_iter().flatten().find(|n| !n.is_empty()));
    match named {
        Some(n) if n != DEFAULT_SERVICE_ACCOUNT => n.clone(),
        _ => contract::identity_name(statefulset),
    }
}

/// Whether a pod carries the injection marker. Only this webhook's patch sets it, and the
/// pod webhook is registered with `reinvocationPolicy: Never`, so it never reviews its own
/// output: a pod that arrives marked got the marker from a client (a manifest, a template,
/// a copied pod) and is refused, not trusted (issue 17, item 7). Checking that the pod
/// "looks injected" instead would have to prove the whole pod equal to our output (any
/// container could mount the token volume or run other code as the elector's account).
pub fn carries_marker(meta: &ObjectMeta) -> bool {
    let status = meta.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_STATUS));
    status.is_some_and(|v| v == contract::STATUS_INJECTED)
}

/// Decide whether and how to inject `pod`, whose controlling StatefulSet the caller has
/// looked up (`None` if not found).
pub fn inject(pod: &Pod, owner: Option<&StatefulSet>, cfg: &InjectConfig) -> Result<Decision, InjectError> {
    let meta = &pod.metadata;
    if carries_marker(meta) {
        return Err(InjectError::MarkerFromClient);
    }
    let Some(owner_name) = owner_statefulset_name(meta) else {
        return Ok(Decision::Skip(SkipReason::NotOwnedByStatefulSet));
    };
    let Some(sts) = owner else {
        return Ok(Decision::Skip(SkipReason::OwnerNotFound));
    };
    check_owner(meta, owner_name, sts)?;
    if !contract::is_opted_in(sts.metadata.annotations.as_ref()) {
        return Ok(Decision::Skip(SkipReason::NotOptedIn));
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    check_conflicts(spec)?;
    let annotations = sts.metadata.annotations.as_ref();
    let slapd: Vec<String> = annotations
        .and_then(|a| a.get(contract::ANNOTATION_LDAP_CONTAINER))
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_string())
        .collect();
    let removals = elector_removals(annotations, spec, cfg, &slapd)?;
    let keep_tokens = keeps_consumer_tokens(annotations, spec, owner_name)?;
    let mut env = tuning_env(annotations)?;
    let metrics_port = metrics_port(annotations, cfg)?;
    if let Some(port) = metrics_port {
        env.push(env_value(contract::ENV_METRICS_ADDR, format!("0.0.0.0:{port}")));
    }
    let ldapi = ldapi_plan(annotations, spec)?;
    let audit = audit_plan(annotations, spec)?;
    env.extend(audit.env);

    let mut ops = PatchOps::default();
    if !keep_tokens {
        strip_default_token(&mut ops, spec);
    }
    let volumes_at = spec.volumes.is_some().then(|| Token::new("-"));
    ops.add_item(ptr(&["spec", "volumes"]), volumes_at, token_volume(cfg))?;
    let mut sidecar_mounts = Vec::new();
    let mut guard = None;
    let mut start_fenced = None;
    let mut handover_note = None;
    if let Some(plan) = ldapi {
        // Before the sidecar goes in at initContainers/0: the indices are the incoming pod's.
        plan.apply(&mut ops, cfg.probe_port)?;
        handover_note = plan.handover.note(cfg.probe_port);
        ops.add_item(ptr(&["spec", "volumes"]), Some(Token::new("-")), socket_volume(contract::RUN_VOLUME))?;
        let socket = env_value(contract::ENV_GUARD_SOCKET, guard_socket());
        let mut guard_env = plan.fence_env();
        guard_env.push(socket.clone());
        guard = Some(template::guard(cfg, guard_env, plan.sidecar_mount.clone()));
        start_fenced = plan.start_fenced(cfg);
        env.extend(plan.env);
        env.push(socket);
        sidecar_mounts.push(plan.sidecar_mount);
        sidecar_mounts.push(run_mount(true));
    }
    for (volume, mount) in audit.bind_secret.into_iter().chain(audit.ca) {
        ops.add_item(ptr(&["spec", "volumes"]), Some(Token::new("-")), volume)?;
        sidecar_mounts.push(mount);
    }
    // First, so the elector starts before every other init container (module docs).
    let inits_at = spec.init_containers.is_some().then(|| Token::from(0usize));
    let mut container = sidecar(cfg, owner_name, env, sidecar_mounts);
    container.ports = metrics_port.map(|port| {
        vec![ContainerPort {
            name: Some(contract::METRICS_PORT_NAME.to_string()),
            container_port: i32::from(port),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]
    });
    ops.add_item(ptr(&["spec", "initContainers"]), inits_at, container)?;
    if let Some(guard) = guard {
        // Before the elector: started before it, stopped after it (sidecars stop in reverse).
        ops.add_item(ptr(&["spec", "initContainers"]), Some(Token::from(0usize)), guard)?;
    }
    if let Some(start_fenced) = start_fenced {
        // Last: after the consumer's init containers, which may write slapd's configuration.
        ops.add_item(ptr(&["spec", "initContainers"]), Some(Token::new("-")), start_fenced)?;
    }
    identity(&mut ops, spec, owner_name)?;
    pod_security_context(&mut ops, spec)?;
    metadata(&mut ops, meta, handover_note)?;
    remove_containers(&mut ops, &removals);
    Ok(Decision::Patch(ops.into_patch()))
}

/// Guards against a caller passing the wrong or a stale (deleted and recreated) owner.
fn check_owner(meta: &ObjectMeta, owner_name: &str, sts: &StatefulSet) -> Result<(), InjectError> {
    let ref_uid = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.name == owner_name && r.controller == Some(true))
        .map(|r| r.uid.as_str());
    let name_ok = sts.metadata.name.as_deref() == Some(owner_name);
    let uid_ok = match (ref_uid, sts.metadata.uid.as_deref()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if name_ok && uid_ok {
        return Ok(());
    }
    let show = |name: Option<&str>, uid: Option<&str>| format!("{} uid {}", name.unwrap_or("?"), uid.unwrap_or("?"));
    Err(InjectError::OwnerMismatch {
        expected: show(Some(owner_name), ref_uid),
        got: show(sts.metadata.name.as_deref(), sts.metadata.uid.as_deref()),
    })
}

/// A container or volume already using our names would make the patched pod invalid.
fn check_conflicts(spec: &PodSpec) -> Result<(), InjectError> {
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for name in contract::INJECTED_CONTAINERS {
        if containers.clone().any(|c| c.name == name) {
            return Err(InjectError::NameConflict { what: "container", name });
        }
    }
    for name in [contract::TOKEN_VOLUME, contract::RUN_VOLUME] {
        if spec.volumes.iter().flatten().any(|v| v.name == name) {
            return Err(InjectError::NameConflict { what: "volume", name });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn second_pass_on_own_output_is_refused_never_injected_twice() {
        let sts = owner(&[]);
        let pod = pod_json();
        let patched = apply(&pod, &decide(&pod, Some(&sts)).unwrap());
        assert!(refused_as_marked(&patched, Some(&sts)));
    }

    #[test]
    fn only_the_sidecar_mounts_a_token() {
        let pod = apply(&pod_json(), &decide(&pod_json(), Some(&owner(&[]))).unwrap());
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let spec = pod.spec.unwrap();
        let inits = spec.init_containers.unwrap();
        assert_eq!(inits[0].name, contract::SIDECAR_CONTAINER);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name.as_deref(), Some("ldap-server-ldap-elector"));
        let volumes = spec.volumes.unwrap();
        assert!(volumes.iter().all(|v| !v.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX)));
        for c in spec.containers.iter().chain(&inits) {
            let mounts = c.volume_mounts.clone().unwrap_or_default();
            let token =
                mounts.iter().any(|m| m.name == contract::TOKEN_VOLUME || m.mount_path == contract::TOKEN_MOUNT_PATH);
            assert_eq!(token, c.name == contract::SIDECAR_CONTAINER, "container {}", c.name);
        }
    }

    #[test]
    fn a_pod_arriving_with_the_marker_is_refused_whatever_it_carries_and_whoever_owns_it() {
        let mut forged = pod_json();
        forged["metadata"]["annotations"] = json!({contract::ANNOTATION_STATUS: contract::STATUS_INJECTED});
        // With a container posing as the elector (the attacker's code under our name) ...
        let mut posing = forged.clone();
        posing["spec"]["initContainers"] =
            json!([{"name": contract::SIDECAR_CONTAINER, "image": "registry.invalid/attacker:1"}]);
        let mut not_opted_in = owner(&[]);
        not_opted_in.metadata.annotations = None;
        let mut orphan = forged.clone();
        orphan["metadata"]["ownerReferences"] = json!([]);
        for (pod, sts) in [
            (&forged, Some(&owner(&[]))),
            (&posing, Some(&owner(&[]))),
            (&forged, Some(&not_opted_in)),
            (&forged, None),
            (&orphan, None),
        ] {
            let err = decide(pod, sts).unwrap_err();
            assert!(matches!(err, InjectError::MarkerFromClient), "{err}");
            let message = err.to_string();
            assert!(
                message.contains(contract::ANNOTATION_STATUS) && message.contains("only the ldap-elector webhook sets")
            );
        }
        // Another value of the annotation is no marker: injected as usual.
        let mut other = pod_json();
        other["metadata"]["annotations"] = json!({contract::ANNOTATION_STATUS: "pending"});
        assert!(matches!(decide(&other, Some(&owner(&[]))), Ok(Decision::Patch(_))));
    }

    #[test]
    fn skips_without_opted_in_owner() {
        let mut sts = owner(&[]);
        sts.metadata.annotations = None;
        assert_eq!(decide(&pod_json(), Some(&sts)).unwrap(), Decision::Skip(SkipReason::NotOptedIn));
        assert_eq!(decide(&pod_json(), None).unwrap(), Decision::Skip(SkipReason::OwnerNotFound));
        let mut orphan = pod_json();
        orphan["metadata"]["ownerReferences"] = json!([]);
        assert_eq!(decide(&orphan, None).unwrap(), Decision::Skip(SkipReason::NotOwnedByStatefulSet));
        let mut recreated = owner(&[]);
        recreated.metadata.uid = Some("other".into());
        assert!(matches!(decide(&pod_json(), Some(&recreated)), Err(InjectError::OwnerMismatch { .. })));
    }

    proptest! {
        #[test]
        fn random_pods_get_a_patch_that_applies_and_converges(pod in arb_pod()) {
            let sts = owner(&[]);
            let already = pod["metadata"]["annotations"].get(contract::ANNOTATION_STATUS) == Some(&json!(contract::STATUS_INJECTED));
            if already {
                prop_assert!(refused_as_marked(&pod, Some(&sts)));
                return Ok(());
            }
            let decision = decide(&pod, Some(&sts)).unwrap();
            let out = apply(&pod, &decision);
            let typed: Pod = serde_json::from_value(out.clone()).unwrap();
            let spec = typed.spec.clone().unwrap();
            prop_assert_eq!(&spec.init_containers.clone().unwrap()[0].name, contract::SIDECAR_CONTAINER);
            // The consumer's containers keep their token only when the pod keeps its own
            // (custom) account, never one of the elector's; ours never get it.
            let kept = pod["spec"]["serviceAccountName"] == json!("custom");
            let ours = contract::INJECTED_CONTAINERS;
            let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
            for c in all {
                for m in c.volume_mounts.iter().flatten() {
                    let allowed = kept && !ours.contains(&c.name.as_str());
                    prop_assert!(allowed || !m.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX));
                    prop_assert_eq!(m.name == contract::TOKEN_VOLUME, c.name == contract::SIDECAR_CONTAINER);
                }
            }
            prop_assert!(kept || spec.volumes.iter().flatten().all(|v| !v.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX)));
            prop_assert_eq!(&out["metadata"]["labels"][contract::LABEL_ROLE], &json!(contract::ROLE_STANDBY));
            prop_assert!(refused_as_marked(&out, Some(&sts)));
        }
    }
}

//! Pure injection: from a Pod as the apiserver hands it to admission (already defaulted,
//! already mutated by the in-tree ServiceAccount plugin) and its owning StatefulSet to a
//! minimal, deterministic JSON patch. No I/O and no clocks: the caller looks up the owner.
//!
//! Decisions worth knowing (see DESIGN.md, "Kubernetes facts that bite"):
//! - The elector is the FIRST init container, as a native sidecar with a startup probe:
//!   the kubelet starts init containers in order and waits for a sidecar's startup probe,
//!   so the elector runs before any other init container and before slapd, and is stopped
//!   after them. It holds no leadership during init (slapd is not healthy yet), so running
//!   early is harmless.
//! - `automountServiceAccountToken: false` plus removal of the `kube-api-access-*` volume
//!   and its mounts: otherwise the ServiceAccount plugin (re-run after every webhook that
//!   changed the pod) would hand a token to every container. The elector alone mounts an
//!   explicit projected token.
//! - The pod is switched to the elector's ServiceAccount only when it runs as `default`;
//!   a custom account is kept (see [`elector_service_account`]).

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::{PointerBuf, Token};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ldap_elector::contract;
use serde::Serialize;

/// Prefix of the token volume the ServiceAccount admission plugin adds (Kubernetes' name).
const DEFAULT_TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The account the ServiceAccount plugin fills in when a pod names none.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// ConfigMap the kube-root-ca publisher puts into every namespace.
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The apiserver refuses projected tokens shorter-lived than this.
const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// Sidecar settings from the webhook's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Elector image; pin a digest in production (`repo@sha256:...`).
    pub image: String,
    pub image_pull_policy: String,
    pub resources: SidecarResources,
    /// Fixed non-root UID/GID of the elector (distroless `nonroot` is 65532).
    pub uid: i64,
    pub gid: i64,
    /// Port of the elector's probe server (`ELECTOR_PROBE_ADDR`).
    pub probe_port: u16,
    /// Audience of the projected token; `None` = the apiserver's own audience.
    pub token_audience: Option<String>,
    pub token_expiration_seconds: i64,
}

/// Requests and limits of the sidecar, as Kubernetes quantities. Small: the elector idles
/// between renewals. CPU throttling delays renewals, so keep the CPU limit well above
/// the request; ephemeral storage is request = limit (it writes nothing but logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    pub ephemeral_storage: String,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "100m".into(),
            memory_limit: "64Mi".into(),
            ephemeral_storage: "16Mi".into(),
        }
    }
}

impl InjectConfig {
    /// Safe defaults for everything but the image, which has no sane default.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: SidecarResources::default(),
            uid: 65532,
            gid: 65532,
            probe_port: contract::DEFAULT_PROBE_PORT,
            token_audience: None,
            token_expiration_seconds: contract::TOKEN_EXPIRATION_SECONDS,
        }
    }

    /// Start-up validation, so a bad flag fails the webhook instead of every pod.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        let r = &self.resources;
        if self.image.trim().is_empty() {
            return fail("the sidecar image must not be empty".into());
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return fail(format!("imagePullPolicy {:?} is not Always, IfNotPresent or Never", self.image_pull_policy));
        }
        if self.uid <= 0 || self.gid <= 0 {
            return fail(format!("sidecar uid/gid must be non-zero (got {}/{})", self.uid, self.gid));
        }
        if self.probe_port == 0 {
            return fail("the probe port must not be 0".into());
        }
        if self.token_expiration_seconds < MIN_TOKEN_EXPIRATION_SECONDS {
            return fail(format!(
                "token expiration {}s is below the apiserver minimum of {MIN_TOKEN_EXPIRATION_SECONDS}s",
                self.token_expiration_seconds
            ));
        }
        let quantities = [&r.cpu_request, &r.memory_request, &r.cpu_limit, &r.memory_limit, &r.ephemeral_storage];
        if quantities.iter().any(|q| q.trim().is_empty()) {
            return fail("sidecar requests and limits must all be set".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid webhook configuration: {0}")]
pub struct ConfigError(String);

/// Why a pod is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The pod carries the injection marker: a reinvocation or a second webhook pass.
    AlreadyInjected,
    NotOwnedByStatefulSet,
    /// The pod names a StatefulSet that the caller could not find.
    OwnerNotFound,
    NotOptedIn,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already injected",
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

/// Decide whether and how to inject `pod`, whose controlling StatefulSet the caller has
/// looked up (`None` if not found).
pub fn inject(pod: &Pod, owner: Option<&StatefulSet>, cfg: &InjectConfig) -> Result<Decision, InjectError> {
    let meta = &pod.metadata;
    let marked = meta.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_STATUS));
    if marked.is_some_and(|v| v == contract::STATUS_INJECTED) {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
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
    let tuning = tuning_env(sts.metadata.annotations.as_ref())?;

    let mut ops = Ops::default();
    strip_default_token(&mut ops, spec);
    let volumes_at = spec.volumes.is_some().then(|| Token::new("-"));
    ops.add_item(ptr(&["spec", "volumes"]), volumes_at, token_volume(cfg))?;
    // First, so the elector starts before every other init container (module docs).
    let inits_at = spec.init_containers.is_some().then(|| Token::from(0usize));
    ops.add_item(ptr(&["spec", "initContainers"]), inits_at, sidecar(cfg, owner_name, tuning))?;
    identity(&mut ops, spec, owner_name)?;
    pod_security_context(&mut ops, spec)?;
    metadata(&mut ops, meta)?;
    Ok(Decision::Patch(Patch(ops.0)))
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
    if containers.clone().any(|c| c.name == contract::SIDECAR_CONTAINER) {
        return Err(InjectError::NameConflict { what: "container", name: contract::SIDECAR_CONTAINER });
    }
    if spec.volumes.iter().flatten().any(|v| v.name == contract::TOKEN_VOLUME) {
        return Err(InjectError::NameConflict { what: "volume", name: contract::TOKEN_VOLUME });
    }
    Ok(())
}

/// StatefulSet tuning annotations → sidecar env, validated here so a typo is a clear
/// admission error rather than a crash-looping sidecar. Absent ones keep the elector's
/// own (safe) defaults, so relations are checked only between the ones given.
fn tuning_env(annotations: Option<&BTreeMap<String, String>>) -> Result<Vec<EnvVar>, InjectError> {
    let get = |key: &'static str| -> Result<Option<u32>, InjectError> {
        let Some(value) = annotations.and_then(|a| a.get(key)) else {
            return Ok(None);
        };
        let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        match value.parse::<u32>() {
            Ok(n) if digits && n > 0 => Ok(Some(n)),
            _ => Err(InjectError::InvalidTiming { key, value: value.clone() }),
        }
    };
    let duration = get(contract::ANNOTATION_LEASE_DURATION)?;
    let deadline = get(contract::ANNOTATION_RENEW_DEADLINE)?;
    let period = get(contract::ANNOTATION_RENEW_PERIOD)?;
    let ordered = [
        (deadline, contract::ANNOTATION_RENEW_DEADLINE, duration, contract::ANNOTATION_LEASE_DURATION),
        (period, contract::ANNOTATION_RENEW_PERIOD, deadline, contract::ANNOTATION_RENEW_DEADLINE),
    ];
    for (short, shorter, long, longer) in ordered {
        if let (Some(s), Some(l)) = (short, long) {
            if s >= l {
                return Err(InjectError::InconsistentTiming { shorter, longer });
            }
        }
    }
    let mut env: Vec<EnvVar> = [
        (contract::ENV_LEASE_DURATION, duration),
        (contract::ENV_RENEW_DEADLINE, deadline),
        (contract::ENV_RENEW_PERIOD, period),
    ]
    .into_iter()
    .filter_map(|(name, v)| Some(env_value(name, v?.to_string())))
    .collect();
    let health = annotations.and_then(|a| a.get(contract::ANNOTATION_HEALTH_CHECK));
    if let Some(h) = health.filter(|h| !h.trim().is_empty()) {
        env.push(env_value(contract::ENV_HEALTH_CHECK, h.clone()));
    }
    Ok(env)
}

/// Removes the ServiceAccount plugin's token volume and its mounts. Indices are those of
/// the incoming pod, so this runs before anything is inserted, highest index first.
fn strip_default_token(ops: &mut Ops, spec: &PodSpec) {
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

/// Service account, automount off (see the module docs).
fn identity(ops: &mut Ops, spec: &PodSpec, statefulset: &str) -> Result<(), InjectError> {
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
fn pod_security_context(ops: &mut Ops, spec: &PodSpec) -> Result<(), InjectError> {
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
fn metadata(ops: &mut Ops, meta: &ObjectMeta) -> Result<(), InjectError> {
    set_map_entry(ops, "labels", meta.labels.as_ref(), contract::LABEL_ROLE, contract::ROLE_STANDBY)?;
    if meta.annotations.as_ref().is_some_and(|a| a.contains_key(contract::ANNOTATION_TERM)) {
        ops.remove(ptr(&["metadata", "annotations", contract::ANNOTATION_TERM]));
    }
    let annotations = meta.annotations.as_ref();
    set_map_entry(ops, "annotations", annotations, contract::ANNOTATION_STATUS, contract::STATUS_INJECTED)
}

fn set_map_entry(
    ops: &mut Ops,
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

fn sidecar(cfg: &InjectConfig, statefulset: &str, tuning: Vec<EnvVar>) -> Container {
    let mut env = vec![
        env_field(contract::ENV_POD_NAME, "metadata.name"),
        env_field(contract::ENV_POD_NAMESPACE, "metadata.namespace"),
        env_field(contract::ENV_POD_UID, "metadata.uid"),
        env_value(contract::ENV_STATEFULSET, statefulset.to_string()),
        env_value(contract::ENV_LEASE_NAME, contract::lease_name(statefulset)),
        env_value(contract::ENV_PROBE_ADDR, format!("0.0.0.0:{}", cfg.probe_port)),
    ];
    env.extend(tuning);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(cfg.probe_port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let r = &cfg.resources;
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("ephemeral-storage".to_string(), Quantity(r.ephemeral_storage.clone())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ]))
    };
    Container {
        name: contract::SIDECAR_CONTAINER.to_string(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        // Native sidecar: started before, stopped after the main containers.
        restart_policy: Some("Always".to_string()),
        env: Some(env),
        // Startup gates the next init container and slapd on a listening elector
        // (up to 30 s); liveness restarts a hung elector after ~30 s.
        startup_probe: Some(probe(contract::PROBE_PATH_LIVE, 1, 30)),
        liveness_probe: Some(probe(contract::PROBE_PATH_LIVE, 10, 3)),
        readiness_probe: Some(probe(contract::PROBE_PATH_READY, 5, 3)),
        resources: Some(ResourceRequirements {
            requests: quantities(&r.cpu_request, &r.memory_request),
            limits: quantities(&r.cpu_limit, &r.memory_limit),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".to_string()]) }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(cfg.uid),
            run_as_group: Some(cfg.gid),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        volume_mounts: Some(vec![VolumeMount {
            name: contract::TOKEN_VOLUME.to_string(),
            mount_path: contract::TOKEN_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The same three files the default token volume has, so kube's in-cluster config works.
fn token_volume(cfg: &InjectConfig) -> Volume {
    Volume {
        name: contract::TOKEN_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: cfg.token_audience.clone(),
                        expiration_seconds: Some(cfg.token_expiration_seconds),
                        path: "token".to_string(),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: ROOT_CA_CONFIGMAP.to_string(),
                        items: Some(vec![KeyToPath { key: "ca.crt".into(), path: "ca.crt".into(), mode: None }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_string(),
                            field_ref: Some(field("metadata.namespace")),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector { field_path: path.to_string(), api_version: None }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    let source = EnvVarSource { field_ref: Some(field(path)), ..Default::default() };
    EnvVar { name: name.to_string(), value: None, value_from: Some(source) }
}

fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value), value_from: None }
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    /// `add`, or `replace` when the member exists (a replace on a missing member fails
    /// loudly instead of silently creating it, so a wrong assumption shows up in tests).
    fn set(&mut self, path: PointerBuf, value: impl Serialize, exists: bool) -> Result<(), InjectError> {
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
    fn add_item(&mut self, array: PointerBuf, index: Option<Token>, item: impl Serialize) -> Result<(), InjectError> {
        let item = serde_json::to_value(item)?;
        let (path, value) = match index {
            Some(i) => (array.with_trailing_token(i), item),
            None => (array, serde_json::Value::Array(vec![item])),
        };
        self.0.push(PatchOperation::Add(AddOperation { path, value }));
        Ok(())
    }

    fn remove(&mut self, path: PointerBuf) {
        self.0.push(PatchOperation::Remove(RemoveOperation { path }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn cfg() -> InjectConfig {
        InjectConfig::new("example.invalid/ldap-elector:test")
    }

    fn owner(annotations: &[(&str, &str)]) -> StatefulSet {
        let mut a: BTreeMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        a.insert(contract::ANNOTATION_INJECT.into(), "true".into());
        serde_json::from_value(json!({
            "metadata": {"name": "ldap-server", "namespace": "ns", "uid": "sts-uid", "annotations": a},
            "spec": {"selector": {}, "template": {}}
        }))
        .unwrap()
    }

    /// A pod as the apiserver shows it to webhooks: defaulted, with the default token.
    fn pod_json() -> Value {
        json!({
            "metadata": {
                "name": "ldap-server-0", "namespace": "ns",
                "labels": {"app": "ldap"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ldap-server",
                                     "uid": "sts-uid", "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
                "containers": [{"name": "slapd", "image": "slapd", "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/ldap"},
                    {"name": "kube-api-access-abcde", "mountPath": contract::TOKEN_MOUNT_PATH, "readOnly": true}]}],
                "volumes": [{"name": "data", "emptyDir": {}},
                            {"name": "kube-api-access-abcde", "projected": {"sources": []}}]
            }
        })
    }

    fn apply(pod: &Value, decision: &Decision) -> Value {
        let Decision::Patch(patch) = decision else { panic!("expected a patch, got {decision:?}") };
        let mut out = pod.clone();
        json_patch::patch(&mut out, patch).unwrap_or_else(|e| panic!("patch does not apply: {e}\n{patch}"));
        out
    }

    fn decide(pod: &Value, sts: Option<&StatefulSet>) -> Result<Decision, InjectError> {
        inject(&serde_json::from_value(pod.clone()).unwrap(), sts, &cfg())
    }

    #[test]
    fn second_pass_on_own_output_is_a_no_op() {
        let sts = owner(&[]);
        let pod = pod_json();
        let patched = apply(&pod, &decide(&pod, Some(&sts)).unwrap());
        assert_eq!(decide(&patched, Some(&sts)).unwrap(), Decision::Skip(SkipReason::AlreadyInjected));
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
    fn tuning_annotations_are_validated_and_copied() {
        let env_of = |annotations: &[(&str, &str)]| {
            let out = apply(&pod_json(), &decide(&pod_json(), Some(&owner(annotations))).unwrap());
            out["spec"]["initContainers"][0]["env"].clone()
        };
        let env = env_of(&[
            (contract::ANNOTATION_LEASE_DURATION, "8"),
            (contract::ANNOTATION_HEALTH_CHECK, "tcp://127.0.0.1:389"),
        ]);
        assert!(env.as_array().unwrap().contains(&json!({"name": contract::ENV_LEASE_DURATION, "value": "8"})));
        assert!(env
            .as_array()
            .unwrap()
            .contains(&json!({"name": contract::ENV_HEALTH_CHECK, "value": "tcp://127.0.0.1:389"})));
        for bad in ["0", "-1", "+5", "1.5", "", "8s", "99999999999"] {
            let sts = owner(&[(contract::ANNOTATION_RENEW_PERIOD, bad)]);
            let err = decide(&pod_json(), Some(&sts)).unwrap_err();
            assert!(matches!(err, InjectError::InvalidTiming { .. }), "{bad:?}: {err}");
        }
        let sts = owner(&[(contract::ANNOTATION_LEASE_DURATION, "5"), (contract::ANNOTATION_RENEW_DEADLINE, "5")]);
        assert!(matches!(decide(&pod_json(), Some(&sts)), Err(InjectError::InconsistentTiming { .. })));
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

    #[test]
    fn config_defaults_are_valid() {
        assert_eq!(cfg().validate(), Ok(()));
        let mut bad = cfg();
        bad.uid = 0;
        assert!(bad.validate().is_err());
    }

    fn arb_map(keys: &'static [&'static str]) -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
        proptest::option::of(proptest::collection::btree_map(
            proptest::sample::select(keys).prop_map(String::from),
            "[a-z0-9]{0,4}",
            0..4,
        ))
    }

    /// (container count, mount picks) with volume names drawn from a pool that contains
    /// several default-token volumes.
    fn arb_pod() -> impl Strategy<Value = Value> {
        const VOLUMES: &[&str] = &["data", "kube-api-access-x1", "config", "kube-api-access-zz9"];
        const LABELS: &[&str] = &["app", "ldap-elector.dev/role", "a~b/c"];
        const ANNOTATIONS: &[&str] = &["x/y", "ldap-elector.dev/term", "ldap-elector.dev/status"];
        let mounts = proptest::collection::vec(proptest::sample::select(VOLUMES), 0..4);
        (
            proptest::collection::vec(mounts.clone(), 0..4),
            proptest::option::of(proptest::collection::vec(mounts, 0..3)),
            proptest::option::of(proptest::sample::subsequence(VOLUMES, 0..=VOLUMES.len())),
            arb_map(LABELS),
            arb_map(ANNOTATIONS),
            proptest::option::of(proptest::sample::select(&["", "default", "custom"][..])),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(containers, inits, volumes, labels, annotations, sa, automount, sc)| {
                let list = |prefix: &str, v: &[Vec<&str>]| -> Vec<Value> {
                    v.iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let mounts: Vec<Value> =
                                m.iter().map(|n| json!({"name": n, "mountPath": format!("/m/{n}")})).collect();
                            json!({"name": format!("{prefix}{i}"), "volumeMounts": mounts})
                        })
                        .collect()
                };
                let mut pod = pod_json();
                pod["metadata"]["labels"] = json!(labels);
                pod["metadata"]["annotations"] = json!(annotations);
                let spec = &mut pod["spec"];
                spec["containers"] = json!(list("c", &containers));
                if let Some(inits) = inits {
                    spec["initContainers"] = json!(list("i", &inits));
                }
                match volumes {
                    Some(v) => {
                        spec["volumes"] =
                            json!(v.iter().map(|n| json!({"name": n, "emptyDir": {}})).collect::<Vec<_>>())
                    }
                    None => drop(spec.as_object_mut().unwrap().remove("volumes")),
                }
                match sa {
                    Some(sa) => spec["serviceAccountName"] = json!(sa),
                    None => drop(spec.as_object_mut().unwrap().remove("serviceAccountName")),
                }
                if let Some(a) = automount {
                    spec["automountServiceAccountToken"] = json!(a);
                }
                match sc {
                    Some(true) => spec["securityContext"] = json!({"runAsUser": 1000}),
                    Some(false) => {}
                    None => drop(spec.as_object_mut().unwrap().remove("securityContext")),
                }
                pod
            })
    }

    proptest! {
        #[test]
        fn random_pods_get_a_patch_that_applies_and_converges(pod in arb_pod()) {
            let sts = owner(&[]);
            let decision = decide(&pod, Some(&sts)).unwrap();
            let already = pod["metadata"]["annotations"].get(contract::ANNOTATION_STATUS) == Some(&json!(contract::STATUS_INJECTED));
            if already {
                prop_assert_eq!(decision, Decision::Skip(SkipReason::AlreadyInjected));
                return Ok(());
            }
            let out = apply(&pod, &decision);
            let typed: Pod = serde_json::from_value(out.clone()).unwrap();
            let spec = typed.spec.clone().unwrap();
            prop_assert_eq!(&spec.init_containers.clone().unwrap()[0].name, contract::SIDECAR_CONTAINER);
            let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
            for c in all {
                for m in c.volume_mounts.iter().flatten() {
                    prop_assert!(!m.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX));
                    prop_assert_eq!(m.name == contract::TOKEN_VOLUME, c.name == contract::SIDECAR_CONTAINER);
                }
            }
            prop_assert!(spec.volumes.iter().flatten().all(|v| !v.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX)));
            prop_assert_eq!(&out["metadata"]["labels"][contract::LABEL_ROLE], &json!(contract::ROLE_STANDBY));
            prop_assert_eq!(decide(&out, Some(&sts)).unwrap(), Decision::Skip(SkipReason::AlreadyInjected));
        }
    }
}

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
//! - The OpenLDAP integration is opt-in by [`contract::ANNOTATION_LDAPI_SOCKET_DIR`]: slapd's
//!   ldapi socket directory is shared with the sidecar, which fences and health-checks slapd
//!   through it (see [`ldapi_plan`] and docs/openldap.md). Without the annotation nothing of
//!   it is injected.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::{PointerBuf, Token};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, PodSecurityContext,
    PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ldap_elector_contract as contract;
use serde::Serialize;

/// Prefix of the token volume the ServiceAccount admission plugin adds (Kubernetes' name).
const DEFAULT_TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The account the ServiceAccount plugin fills in when a pod names none.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// ConfigMap the kube-root-ca publisher puts into every namespace.
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The apiserver refuses projected tokens shorter-lived than this.
const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;
/// Size limit of the in-memory socket volume: it holds a socket and at most slapd's pid
/// and args files, and tmpfs pages count against the pod's memory.
const LDAPI_VOLUME_SIZE_LIMIT: &str = "1Mi";
/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

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
    #[error("cannot share the ldapi socket directory {dir} with the sidecar: {reason}")]
    SocketDirConflict { dir: String, reason: String },
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
    let annotations = sts.metadata.annotations.as_ref();
    let mut env = tuning_env(annotations)?;
    let metrics_port = metrics_port(annotations, cfg)?;
    if let Some(port) = metrics_port {
        env.push(env_value(contract::ENV_METRICS_ADDR, format!("0.0.0.0:{port}")));
    }
    let ldapi = ldapi_plan(annotations, spec)?;
    let audit = audit_plan(annotations, spec)?;
    env.extend(audit.env);

    let mut ops = Ops::default();
    strip_default_token(&mut ops, spec);
    let volumes_at = spec.volumes.is_some().then(|| Token::new("-"));
    ops.add_item(ptr(&["spec", "volumes"]), volumes_at, token_volume(cfg))?;
    let mut sidecar_mounts = Vec::new();
    if let Some(plan) = ldapi {
        // Before the sidecar goes in at initContainers/0: the indices are the incoming pod's.
        plan.apply(&mut ops)?;
        env.extend(plan.env);
        sidecar_mounts.push(plan.sidecar_mount);
    }
    if let Some((volume, mount)) = audit.bind_secret {
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

/// The optional metrics port annotation: a port number other than the probe port.
fn metrics_port(
    annotations: Option<&BTreeMap<String, String>>,
    cfg: &InjectConfig,
) -> Result<Option<u16>, InjectError> {
    let Some(value) = annotations.and_then(|a| a.get(contract::ANNOTATION_METRICS_PORT)) else {
        return Ok(None);
    };
    let invalid = |reason: &str| InjectError::InvalidAnnotation {
        key: contract::ANNOTATION_METRICS_PORT,
        value: value.clone(),
        reason: reason.to_string(),
    };
    match value.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid("must be a port number from 1 to 65535, e.g. \"9090\"")),
        Ok(p) if p == cfg.probe_port => Err(invalid("must differ from the sidecar's probe port")),
        Ok(p) => Ok(Some(p)),
    }
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

/// The leader's divergence audits and the elector's LDAP bind identity (docs/divergence.md).
struct AuditPlan {
    env: Vec<EnvVar>,
    /// The bind Secret's password as a volume (only that key) and the sidecar's mount of it.
    bind_secret: Option<(Volume, VolumeMount)>,
}

/// The optional audit annotations → sidecar env, validated here (a typo is an admission
/// error, not a crash-looping sidecar); the bind Secret reaches the sidecar only: the DN as
/// env from the Secret, the password as a read-only file.
fn audit_plan(annotations: Option<&BTreeMap<String, String>>, spec: &PodSpec) -> Result<AuditPlan, InjectError> {
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim()).filter(|v| !v.is_empty());
    let invalid = |key: &'static str, value: &str, reason: String| InjectError::InvalidAnnotation {
        key,
        value: value.to_string(),
        reason,
    };
    let mut env = Vec::new();
    if let Some(peers) = get(contract::ANNOTATION_AUDIT_PEERS) {
        ldap_elector_contract::peers::PeerUrls::parse(peers)
            .map_err(|e| invalid(contract::ANNOTATION_AUDIT_PEERS, peers, e))?;
        env.push(env_value(contract::ENV_AUDIT_PEERS, peers.to_string()));
    }
    if let Some(interval) = get(contract::ANNOTATION_AUDIT_INTERVAL) {
        if !matches!(interval, "0" | "off") {
            ldap_elector_contract::duration::parse_duration(interval)
                .map_err(|e| invalid(contract::ANNOTATION_AUDIT_INTERVAL, interval, e))?;
        }
        env.push(env_value(contract::ENV_AUDIT_INTERVAL, interval.to_string()));
    }
    let Some(secret) = get(contract::ANNOTATION_LDAP_BIND_SECRET) else {
        return Ok(AuditPlan { env, bind_secret: None });
    };
    if !is_subdomain(secret) {
        let reason = "not a Secret name (RFC 1123 subdomain)".to_string();
        return Err(invalid(contract::ANNOTATION_LDAP_BIND_SECRET, secret, reason));
    }
    if spec.volumes.iter().flatten().any(|v| v.name == contract::BIND_SECRET_VOLUME) {
        return Err(InjectError::NameConflict { what: "volume", name: contract::BIND_SECRET_VOLUME });
    }
    env.push(EnvVar {
        name: ldap_elector_contract::ENV_LDAP_BIND_DN.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: contract::BIND_SECRET_KEY_DN.to_string(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let password_file = format!("{}/{}", contract::BIND_SECRET_MOUNT_PATH, contract::BIND_SECRET_KEY_PASSWORD);
    env.push(env_value(ldap_elector_contract::ENV_LDAP_BIND_PASSWORD_FILE, password_file));
    let volume = Volume {
        name: contract::BIND_SECRET_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(vec![KeyToPath {
                key: contract::BIND_SECRET_KEY_PASSWORD.to_string(),
                path: contract::BIND_SECRET_KEY_PASSWORD.to_string(),
                mode: None,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: contract::BIND_SECRET_VOLUME.to_string(),
        mount_path: contract::BIND_SECRET_MOUNT_PATH.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    Ok(AuditPlan { env, bind_secret: Some((volume, mount)) })
}

/// RFC 1123 subdomain, as Kubernetes names Secrets.
fn is_subdomain(name: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && ok(bytes[0])
        && ok(bytes[bytes.len() - 1])
        && bytes.iter().all(|&c| ok(c) || c == b'-' || c == b'.')
}

/// What the OpenLDAP integration adds to a pod, resolved against the incoming pod before
/// any patch operation is built.
#[derive(Debug)]
struct LdapiPlan {
    /// The volume the socket directory lives on: [`contract::LDAPI_VOLUME`], or the one
    /// slapd already mounts there.
    volume: String,
    /// Whether `volume` has to be added to the pod.
    add_volume: bool,
    /// Mounts of `volume` for slapd containers that lack one: (list, index, has a
    /// `volumeMounts` array, the mount).
    mounts: Vec<(&'static str, usize, bool, VolumeMount)>,
    /// The sidecar's mount of the directory: read-only, connecting to a socket needs no
    /// write access to the file system, so the elector cannot create or replace files there.
    sidecar_mount: VolumeMount,
    /// Fence and health-check settings of the elector.
    env: Vec<EnvVar>,
}

impl LdapiPlan {
    /// Adds the volume (after the token volume, so `volumes` exists) and slapd's mounts.
    fn apply(&self, ops: &mut Ops) -> Result<(), InjectError> {
        if self.add_volume {
            let volume = Volume {
                name: self.volume.clone(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_string()),
                    size_limit: Some(Quantity(LDAPI_VOLUME_SIZE_LIMIT.to_string())),
                }),
                ..Default::default()
            };
            ops.add_item(ptr(&["spec", "volumes"]), Some(Token::new("-")), volume)?;
        }
        for (list, index, has_mounts, mount) in &self.mounts {
            let mut path = ptr(&["spec", list]);
            path.push_back(*index);
            path.push_back("volumeMounts");
            ops.add_item(path, has_mounts.then(|| Token::new("-")), mount)?;
        }
        Ok(())
    }
}

/// The OpenLDAP integration the StatefulSet asks for (`None` without
/// [`contract::ANNOTATION_LDAPI_SOCKET_DIR`]), validated against the pod: the socket
/// directory is shared through the volume slapd already mounts there if there is one (no
/// duplicate), else through a small in-memory `emptyDir`; the elector gets the fence and,
/// unless [`contract::ANNOTATION_HEALTH_CHECK`] sets one, an ldapi health check that reads
/// the suffix's contextCSN.
fn ldapi_plan(
    annotations: Option<&BTreeMap<String, String>>,
    spec: &PodSpec,
) -> Result<Option<LdapiPlan>, InjectError> {
    let get = |key: &str| annotations.and_then(|a| a.get(key));
    let Some(raw_dir) = get(contract::ANNOTATION_LDAPI_SOCKET_DIR) else {
        return Ok(None);
    };
    let dir = socket_dir(raw_dir)?;
    let containers = ldap_containers(get(contract::ANNOTATION_LDAP_CONTAINER).map(String::as_str), spec)?;
    let conflict = |reason: String| InjectError::SocketDirConflict { dir: dir.clone(), reason };

    // The mounts slapd already has at the directory decide which volume is shared; the
    // default token's mounts do not count, `strip_default_token` removes them.
    let at_dir = |c: &Container| {
        let mut kept = c.volume_mounts.iter().flatten().filter(|m| !m.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX));
        kept.find(|m| m.mount_path.trim_end_matches('/') == dir).cloned()
    };
    let existing: Vec<(&str, VolumeMount)> =
        containers.iter().filter_map(|(_, _, c)| Some((c.name.as_str(), at_dir(c)?))).collect();
    let (volume, add_volume, sub_path) = match existing.first() {
        Some((first_container, first)) => {
            if let Some((other, m)) =
                existing.iter().find(|(_, m)| m.name != first.name || m.sub_path != first.sub_path)
            {
                return Err(conflict(format!(
                    "containers {first_container:?} and {other:?} mount different volumes there ({:?} {:?}, {:?} {:?})",
                    first.name, first.sub_path, m.name, m.sub_path
                )));
            }
            if let Some((c, _)) = existing.iter().find(|(_, m)| m.read_only == Some(true)) {
                return Err(conflict(format!(
                    "container {c:?} mounts it read-only, but slapd must create its socket there"
                )));
            }
            if let Some((c, _)) = existing.iter().find(|(_, m)| m.sub_path_expr.is_some()) {
                return Err(conflict(format!(
                    "container {c:?} mounts it with subPathExpr, which the sidecar cannot reproduce; use subPath"
                )));
            }
            let Some(v) = spec.volumes.iter().flatten().find(|v| v.name == first.name) else {
                return Err(conflict(format!("the pod has no volume {:?}", first.name)));
            };
            let read_only_kind = [
                (v.config_map.is_some(), "configMap"),
                (v.secret.is_some(), "secret"),
                (v.downward_api.is_some(), "downwardAPI"),
                (v.projected.is_some(), "projected"),
            ];
            if let Some((_, kind)) = read_only_kind.iter().find(|(is, _)| *is) {
                return Err(conflict(format!(
                    "volume {:?} is a {kind} volume (read-only), but slapd must create its socket there",
                    v.name
                )));
            }
            (first.name.clone(), false, first.sub_path.clone())
        }
        None => match spec.volumes.iter().flatten().find(|v| v.name == contract::LDAPI_VOLUME) {
            // Ours already (e.g. a template copied from an injected pod): share it as it is.
            Some(v) if v.empty_dir.is_some() => (v.name.clone(), false, None),
            Some(_) => {
                return Err(InjectError::NameConflict { what: "non-emptyDir volume", name: contract::LDAPI_VOLUME })
            }
            None => (contract::LDAPI_VOLUME.to_string(), true, None),
        },
    };
    let mount = |read_only: Option<bool>| VolumeMount {
        name: volume.clone(),
        mount_path: dir.clone(),
        read_only,
        sub_path: sub_path.clone(),
        ..Default::default()
    };
    let mounts = containers
        .iter()
        .filter(|(_, _, c)| at_dir(c).is_none())
        .map(|(list, index, c)| (*list, *index, c.volume_mounts.is_some(), mount(None)))
        .collect();

    let socket = ldap_elector_contract::check::ldapi_url(&format!("{dir}/{}", contract::LDAPI_SOCKET_NAME));
    let mut env = vec![env_value(contract::ENV_FENCE_LDAPI, socket.clone())];
    if let Some(db) = get(contract::ANNOTATION_FENCE_DATABASE) {
        env.push(env_value(contract::ENV_FENCE_DATABASE, fence_database(db)?));
    }
    let health_set = get(contract::ANNOTATION_HEALTH_CHECK).is_some_and(|h| !h.trim().is_empty());
    if !health_set {
        let suffix = get(contract::ANNOTATION_LDAP_SUFFIX).map(|s| s.trim()).filter(|s| !s.is_empty());
        let suffix = suffix.ok_or(InjectError::MissingLdapSuffix)?;
        let invalid = |reason: String| InjectError::InvalidAnnotation {
            key: contract::ANNOTATION_LDAP_SUFFIX,
            value: suffix.to_string(),
            reason,
        };
        if suffix.chars().any(char::is_control) {
            return Err(invalid("control characters are not allowed".into()));
        }
        // `=` and `,` stay readable; the elector decodes the rest.
        let check = ldap_elector_contract::check::with_base(&socket, suffix);
        // Parsed as the elector will parse it, so a bad value is denied here instead of
        // crash-looping the sidecar.
        ldap_elector_contract::check::LdapCheck::parse(&check).map_err(invalid)?;
        env.push(env_value(contract::ENV_HEALTH_CHECK, check));
    }
    Ok(Some(LdapiPlan { volume: volume.clone(), add_volume, mounts, sidecar_mount: mount(Some(true)), env }))
}

/// The socket directory, validated and without trailing `/`.
fn socket_dir(raw: &str) -> Result<String, InjectError> {
    let invalid = |reason: &str| InjectError::InvalidAnnotation {
        key: contract::ANNOTATION_LDAPI_SOCKET_DIR,
        value: raw.to_string(),
        reason: reason.to_string(),
    };
    let dir = raw.trim().trim_end_matches('/');
    if !raw.trim().starts_with('/') || dir.is_empty() {
        return Err(invalid("must be an absolute directory other than /, e.g. \"/run/slapd\""));
    }
    if dir.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(invalid("must be a normalised path (no //, . or ..)"));
    }
    if dir.contains(':') || dir.chars().any(char::is_control) {
        return Err(invalid("must not contain ':' or control characters"));
    }
    if dir.len() + 1 + contract::LDAPI_SOCKET_NAME.len() > MAX_SOCKET_PATH {
        return Err(invalid("is too long for a Unix socket path (108 bytes with the socket name)"));
    }
    // Equal, inside or above: nested in the sidecar's read-only mount, the runtime could
    // not create the token's mountpoint.
    let token = contract::TOKEN_MOUNT_PATH;
    let nested = |inner: &str, outer: &str| inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'));
    if dir == token || nested(dir, token) || nested(token, dir) {
        return Err(invalid("must not overlap the sidecar's service-account token mount"));
    }
    Ok(dir.to_string())
}

/// The slapd containers named by the annotation (default: the first container), as
/// (list, index, container); init containers may be named too.
fn ldap_containers<'a>(
    names: Option<&str>,
    spec: &'a PodSpec,
) -> Result<Vec<(&'static str, usize, &'a Container)>, InjectError> {
    let all: Vec<(&'static str, usize, &Container)> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| ("containers", i, c))
        .chain(spec.init_containers.iter().flatten().enumerate().map(|(i, c)| ("initContainers", i, c)))
        .collect();
    let mut wanted: Vec<&str> = Vec::new();
    for name in names.unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !wanted.contains(&name) {
            wanted.push(name);
        }
    }
    if wanted.is_empty() {
        return Ok(all.into_iter().filter(|(list, ..)| *list == "containers").take(1).collect());
    }
    wanted
        .iter()
        .map(|name| {
            all.iter().find(|(_, _, c)| c.name == *name).copied().ok_or_else(|| InjectError::InvalidAnnotation {
                key: contract::ANNOTATION_LDAP_CONTAINER,
                value: names.unwrap_or_default().to_string(),
                reason: format!(
                    "the pod has no container {name:?} (it has {})",
                    all.iter().map(|(_, _, c)| c.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            })
        })
        .collect()
}

/// The fence's data database entry, e.g. `olcDatabase={1}mdb,cn=config`.
fn fence_database(raw: &str) -> Result<String, InjectError> {
    let db = raw.trim();
    let in_config = db.len() > ",cn=config".len() && db.to_ascii_lowercase().ends_with(",cn=config");
    if !in_config || db.chars().any(char::is_control) {
        return Err(InjectError::InvalidAnnotation {
            key: contract::ANNOTATION_FENCE_DATABASE,
            value: raw.to_string(),
            reason: "must name the data database's entry in cn=config, e.g. \"olcDatabase={1}mdb,cn=config\"".into(),
        });
    }
    Ok(db.to_string())
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

fn sidecar(cfg: &InjectConfig, statefulset: &str, tuning: Vec<EnvVar>, mounts: Vec<VolumeMount>) -> Container {
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
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: contract::TOKEN_VOLUME.to_string(),
                mount_path: contract::TOKEN_MOUNT_PATH.to_string(),
                read_only: Some(true),
                ..Default::default()
            })
            .chain(mounts)
            .collect(),
        ),
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
    fn audit_annotations_are_validated_and_the_bind_secret_reaches_only_the_sidecar() {
        let annotations = [
            (contract::ANNOTATION_AUDIT_PEERS, "ldap://{pod}.ldap:389?base=dc=example,dc=org"),
            (contract::ANNOTATION_AUDIT_INTERVAL, "300s"),
            (contract::ANNOTATION_LDAP_BIND_SECRET, "ldap-auditor"),
        ];
        let out = apply(&pod_json(), &decide(&pod_json(), Some(&owner(&annotations))).unwrap());
        let sidecar = &out["spec"]["initContainers"][0];
        let env = sidecar["env"].as_array().unwrap();
        let peers = json!({"name": contract::ENV_AUDIT_PEERS, "value": "ldap://{pod}.ldap:389?base=dc=example,dc=org"});
        assert!(env.contains(&peers), "{env:?}");
        assert!(env.contains(&json!({"name": contract::ENV_AUDIT_INTERVAL, "value": "300s"})));
        let dn = json!({"name": ldap_elector_contract::ENV_LDAP_BIND_DN,
            "valueFrom": {"secretKeyRef": {"name": "ldap-auditor", "key": contract::BIND_SECRET_KEY_DN}}});
        assert!(env.contains(&dn), "{env:?}");
        let volume =
            out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == contract::BIND_SECRET_VOLUME);
        assert_eq!(volume.unwrap()["secret"]["items"], json!([{"key": "password", "path": "password"}]));
        let mounts_of = |c: &Value| c["volumeMounts"].to_string().contains(contract::BIND_SECRET_VOLUME);
        assert!(mounts_of(sidecar));
        assert!(out["spec"]["containers"].as_array().unwrap().iter().all(|c| !mounts_of(c)), "only the sidecar");
        for (key, bad) in [
            (contract::ANNOTATION_AUDIT_PEERS, "nonsense"),
            (contract::ANNOTATION_AUDIT_INTERVAL, "soon"),
            (contract::ANNOTATION_LDAP_BIND_SECRET, "Not_A_Name"),
        ] {
            let err = decide(&pod_json(), Some(&owner(&[(key, bad)]))).unwrap_err();
            assert!(matches!(err, InjectError::InvalidAnnotation { key: k, .. } if k == key), "{key}={bad}: {err}");
        }
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
    fn metrics_port_annotation_is_validated_and_exposed() {
        let out = apply(
            &pod_json(),
            &decide(&pod_json(), Some(&owner(&[(contract::ANNOTATION_METRICS_PORT, "9090")]))).unwrap(),
        );
        let sidecar = &out["spec"]["initContainers"][0];
        assert!(sidecar["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": contract::ENV_METRICS_ADDR, "value": "0.0.0.0:9090"})));
        assert_eq!(
            sidecar["ports"],
            json!([{"name": contract::METRICS_PORT_NAME, "containerPort": 9090, "protocol": "TCP"}])
        );
        let without = apply(&pod_json(), &decide(&pod_json(), Some(&owner(&[]))).unwrap());
        assert!(without["spec"]["initContainers"][0].get("ports").is_none(), "off by default");
        let probe = contract::DEFAULT_PROBE_PORT.to_string();
        for bad in ["0", "65536", "http", "", probe.as_str()] {
            let err = decide(&pod_json(), Some(&owner(&[(contract::ANNOTATION_METRICS_PORT, bad)]))).unwrap_err();
            assert!(
                matches!(err, InjectError::InvalidAnnotation { key: contract::ANNOTATION_METRICS_PORT, .. }),
                "{bad:?}: {err}"
            );
        }
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

    /// The OpenLDAP integration's annotations on an opted-in owner.
    fn ldap_owner(extra: &[(&str, &str)]) -> StatefulSet {
        let mut a = vec![
            (contract::ANNOTATION_LDAPI_SOCKET_DIR, "/run/slapd"),
            (contract::ANNOTATION_LDAP_SUFFIX, "dc=example,dc=org"),
        ];
        a.extend_from_slice(extra);
        owner(&a)
    }

    fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
        let spec = &pod["spec"];
        let all = spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten();
        all.into_iter().find(|c| c["name"] == json!(name)).unwrap_or_else(|| panic!("no container {name}"))
    }

    fn mounts_at<'a>(pod: &'a Value, name: &str, path: &str) -> Vec<&'a Value> {
        let mounts = container(pod, name)["volumeMounts"].as_array().into_iter().flatten();
        mounts.filter(|m| m["mountPath"] == json!(path)).collect()
    }

    fn env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
        let env = container(pod, contract::SIDECAR_CONTAINER)["env"].as_array()?;
        env.iter().find(|e| e["name"] == json!(name))?["value"].as_str()
    }

    #[test]
    fn without_the_socket_dir_annotation_nothing_of_openldap_is_injected() {
        let sts = owner(&[(contract::ANNOTATION_LDAP_SUFFIX, "dc=x"), (contract::ANNOTATION_LDAP_CONTAINER, "nope")]);
        let out = apply(&pod_json(), &decide(&pod_json(), Some(&sts)).unwrap());
        assert_eq!(env(&out, contract::ENV_FENCE_LDAPI), None);
        assert_eq!(env(&out, contract::ENV_HEALTH_CHECK), None);
        assert!(!out["spec"]["volumes"].to_string().contains(contract::LDAPI_VOLUME));
        assert_eq!(container(&out, contract::SIDECAR_CONTAINER)["volumeMounts"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn socket_dir_is_shared_and_fence_and_health_check_point_at_it() {
        let pod = pod_json();
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        let volume =
            out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == json!(contract::LDAPI_VOLUME));
        assert_eq!(
            volume,
            Some(&json!({"name": contract::LDAPI_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}))
        );
        assert_eq!(
            mounts_at(&out, "slapd", "/run/slapd"),
            [&json!({"name": contract::LDAPI_VOLUME, "mountPath": "/run/slapd"})]
        );
        assert_eq!(
            mounts_at(&out, contract::SIDECAR_CONTAINER, "/run/slapd"),
            [&json!({"name": contract::LDAPI_VOLUME, "mountPath": "/run/slapd", "readOnly": true})]
        );
        assert_eq!(env(&out, contract::ENV_FENCE_LDAPI), Some("ldapi://%2Frun%2Fslapd%2Fldapi"));
        let health = env(&out, contract::ENV_HEALTH_CHECK).unwrap();
        assert_eq!(health, "ldapi://%2Frun%2Fslapd%2Fldapi?base=dc=example,dc=org");
        // The elector reads both as meant: SASL EXTERNAL over the socket, the suffix's contextCSN.
        let creds = ldap_elector_contract::check::Credentials::default();
        match ldap_elector_contract::check::HealthCheck::parse_with(health, &creds) {
            Ok(ldap_elector_contract::check::HealthCheck::Ldap(check)) => {
                assert_eq!(check.url, "ldapi://%2Frun%2Fslapd%2Fldapi");
                assert_eq!(check.base, "dc=example,dc=org");
                assert_eq!(check.bind, ldap_elector_contract::check::Bind::SaslExternal);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(env(&out, contract::ENV_FENCE_DATABASE), None, "the elector's default stays");
        assert_eq!(decide(&out, Some(&ldap_owner(&[]))).unwrap(), Decision::Skip(SkipReason::AlreadyInjected));
    }

    #[test]
    fn explicit_health_check_and_fence_database_win() {
        let sts = owner(&[
            (contract::ANNOTATION_LDAPI_SOCKET_DIR, "/var/run/slapd/"),
            (contract::ANNOTATION_HEALTH_CHECK, "tcp://127.0.0.1:389"),
            (contract::ANNOTATION_FENCE_DATABASE, " olcDatabase={2}mdb,cn=config "),
        ]);
        let out = apply(&pod_json(), &decide(&pod_json(), Some(&sts)).unwrap());
        assert_eq!(env(&out, contract::ENV_HEALTH_CHECK), Some("tcp://127.0.0.1:389"));
        assert_eq!(env(&out, contract::ENV_FENCE_LDAPI), Some("ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi"));
        assert_eq!(env(&out, contract::ENV_FENCE_DATABASE), Some("olcDatabase={2}mdb,cn=config"));
        let health = container(&out, contract::SIDECAR_CONTAINER)["env"].to_string();
        assert_eq!(health.matches(contract::ENV_HEALTH_CHECK).count(), 1, "{health}");
    }

    #[test]
    fn suffixes_are_encoded_so_the_elector_reads_them_back() {
        for suffix in ["o=A&B Co.,c=DE", "dc=ex%61mple,dc=org", "cn=x?y#z,o=ü"] {
            let out = apply(
                &pod_json(),
                &decide(&pod_json(), Some(&ldap_owner(&[(contract::ANNOTATION_LDAP_SUFFIX, suffix)]))).unwrap(),
            );
            let check =
                ldap_elector_contract::check::LdapCheck::parse(env(&out, contract::ENV_HEALTH_CHECK).unwrap()).unwrap();
            assert_eq!(check.base, suffix);
        }
    }

    #[test]
    fn bad_openldap_annotations_are_denied_with_the_reason() {
        let denied = |extra: &[(&str, &str)]| decide(&pod_json(), Some(&ldap_owner(extra))).unwrap_err();
        let long = format!("/{}", "a".repeat(101));
        for dir in [
            "run/slapd",
            "/",
            "//",
            "/run//slapd",
            "/run/../etc",
            "/run/./x",
            "/a:b",
            &long,
            contract::TOKEN_MOUNT_PATH,
            "/var/run/secrets/kubernetes.io/serviceaccount/x",
            "/var/run/secrets",
        ] {
            let err = denied(&[(contract::ANNOTATION_LDAPI_SOCKET_DIR, dir)]);
            assert!(
                matches!(err, InjectError::InvalidAnnotation { key: contract::ANNOTATION_LDAPI_SOCKET_DIR, .. }),
                "{dir:?}: {err}"
            );
        }
        // The longest path that still fits sun_path is fine.
        assert!(
            decide(&pod_json(), Some(&ldap_owner(&[(contract::ANNOTATION_LDAPI_SOCKET_DIR, &long[..101])]))).is_ok()
        );
        let err = denied(&[(contract::ANNOTATION_LDAP_CONTAINER, "slapd,ghost")]);
        assert!(err.to_string().contains("no container \"ghost\" (it has slapd)"), "{err}");
        for db in ["", "cn=config", "olcDatabase={1}mdb"] {
            let err = denied(&[(contract::ANNOTATION_FENCE_DATABASE, db)]);
            assert!(
                matches!(err, InjectError::InvalidAnnotation { key: contract::ANNOTATION_FENCE_DATABASE, .. }),
                "{db:?}: {err}"
            );
        }
        let err = denied(&[(contract::ANNOTATION_LDAP_SUFFIX, " ")]);
        assert!(matches!(err, InjectError::MissingLdapSuffix), "{err}");
        assert!(err.to_string().contains(contract::ANNOTATION_HEALTH_CHECK), "{err}");
    }

    #[test]
    fn a_volume_slapd_already_mounts_there_is_shared_not_duplicated() {
        let mut pod = pod_json();
        pod["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": "run", "emptyDir": {}}));
        pod["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "run", "mountPath": "/run/slapd/", "subPath": "s"}));
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        assert!(!out["spec"]["volumes"].to_string().contains(contract::LDAPI_VOLUME));
        assert_eq!(
            container(&out, "slapd")["volumeMounts"],
            pod["spec"]["containers"][0]["volumeMounts"].as_array().map(|m| json!([m[0], m[2]])).unwrap()
        );
        assert_eq!(
            mounts_at(&out, contract::SIDECAR_CONTAINER, "/run/slapd"),
            [&json!({"name": "run", "mountPath": "/run/slapd", "readOnly": true, "subPath": "s"})]
        );

        // Our own volume, already there as an emptyDir, is reused too.
        let mut pod = pod_json();
        pod["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": contract::LDAPI_VOLUME, "emptyDir": {}}));
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        assert_eq!(out["spec"]["volumes"].to_string().matches(contract::LDAPI_VOLUME).count(), 1);
        assert_eq!(mounts_at(&out, "slapd", "/run/slapd").len(), 1);
    }

    #[test]
    fn real_conflicts_at_the_socket_dir_are_denied() {
        let with = |volume: Value, mount: Value| {
            let mut pod = pod_json();
            pod["spec"]["volumes"].as_array_mut().unwrap().push(volume);
            pod["spec"]["containers"][0]["volumeMounts"].as_array_mut().unwrap().push(mount);
            decide(&pod, Some(&ldap_owner(&[])))
        };
        let cases = [
            (
                json!({"name": "run", "emptyDir": {}}),
                json!({"name": "run", "mountPath": "/run/slapd", "readOnly": true}),
                "read-only",
            ),
            (
                json!({"name": "run", "configMap": {"name": "x"}}),
                json!({"name": "run", "mountPath": "/run/slapd"}),
                "configMap",
            ),
            (
                json!({"name": "run", "emptyDir": {}}),
                json!({"name": "run", "mountPath": "/run/slapd", "subPathExpr": "$(POD_NAME)"}),
                "subPathExpr",
            ),
            (
                json!({"name": "other", "emptyDir": {}}),
                json!({"name": "run", "mountPath": "/run/slapd"}),
                "no volume \"run\"",
            ),
        ];
        for (volume, mount, fragment) in cases {
            let err = with(volume, mount).unwrap_err();
            assert!(
                matches!(err, InjectError::SocketDirConflict { .. }) && err.to_string().contains(fragment),
                "{fragment}: {err}"
            );
        }
        let err = with(
            json!({"name": contract::LDAPI_VOLUME, "secret": {"secretName": "x"}}),
            json!({"name": "data", "mountPath": "/x"}),
        )
        .unwrap_err();
        assert!(matches!(err, InjectError::NameConflict { .. }), "{err}");
        // Two slapd containers sharing the directory through different volumes.
        let mut pod = pod_json();
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .extend([json!({"name": "a", "emptyDir": {}}), json!({"name": "b", "emptyDir": {}})]);
        pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "a", "mountPath": "/run/slapd"}]);
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "tools", "volumeMounts": [{"name": "b", "mountPath": "/run/slapd"}]}));
        let err = decide(&pod, Some(&ldap_owner(&[(contract::ANNOTATION_LDAP_CONTAINER, "slapd,tools")]))).unwrap_err();
        assert!(err.to_string().contains("different volumes"), "{err}");
    }

    #[test]
    fn named_containers_get_the_mount_including_init_containers_shifted_by_the_sidecar() {
        let mut pod = pod_json();
        pod["spec"]["containers"].as_array_mut().unwrap().insert(0, json!({"name": "exporter", "image": "x"}));
        pod["spec"]["initContainers"] =
            json!([{"name": "chown", "image": "x"}, {"name": "load-config", "image": "x", "volumeMounts": []}]);
        let sts = ldap_owner(&[(contract::ANNOTATION_LDAP_CONTAINER, " slapd , load-config,slapd")]);
        let out = apply(&pod, &decide(&pod, Some(&sts)).unwrap());
        for name in ["slapd", "load-config", contract::SIDECAR_CONTAINER] {
            assert_eq!(mounts_at(&out, name, "/run/slapd").len(), 1, "{name}");
        }
        for name in ["exporter", "chown"] {
            assert!(mounts_at(&out, name, "/run/slapd").is_empty(), "{name}");
        }
        assert_eq!(out["spec"]["initContainers"][0]["name"], json!(contract::SIDECAR_CONTAINER));
        // Default: the first app container only.
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        assert_eq!(mounts_at(&out, "exporter", "/run/slapd").len(), 1);
        assert!(mounts_at(&out, "slapd", "/run/slapd").is_empty());
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
        /// With the OpenLDAP integration on random pods (whose mounts may already use the
        /// socket directory, with volumes that may be missing): a clear denial, or a patch
        /// after which every slapd container and the sidecar mount the directory exactly
        /// once, no volume name is duplicated, and a second pass is a no-op.
        #[test]
        fn random_pods_with_the_openldap_integration_share_the_socket_dir_once(
            pod in arb_pod(),
            dir in proptest::sample::select(&["/run/slapd", "/m/data", "/m/config", "/m/kube-api-access-x1"][..]),
            names in proptest::sample::select(&["", "c0", "c1,i0", "i1"][..]),
        ) {
            let sts = ldap_owner(&[
                (contract::ANNOTATION_LDAPI_SOCKET_DIR, dir),
                (contract::ANNOTATION_LDAP_CONTAINER, names),
            ]);
            let decision = match decide(&pod, Some(&sts)) {
                Ok(d) => d,
                Err(InjectError::SocketDirConflict { .. } | InjectError::InvalidAnnotation { .. }) => return Ok(()),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
            };
            if matches!(decision, Decision::Skip(_)) {
                return Ok(());
            }
            let out = apply(&pod, &decision);
            let volumes: Vec<&Value> = out["spec"]["volumes"].as_array().into_iter().flatten().collect();
            let mut names_seen: Vec<&Value> = volumes.iter().map(|v| &v["name"]).collect();
            names_seen.sort_by_key(|v| v.to_string());
            names_seen.dedup();
            prop_assert_eq!(names_seen.len(), volumes.len(), "duplicate volume names: {:?}", volumes);
            let wanted: Vec<&str> = match names {
                "" => out["spec"]["containers"][0]["name"].as_str().into_iter().collect(),
                n => n.split(',').collect(),
            };
            for name in wanted.iter().copied().chain([contract::SIDECAR_CONTAINER]) {
                let at = mounts_at(&out, name, dir);
                // The generator may repeat a mount path in one container (invalid, but not ours to
                // fix); default-token mounts are stripped.
                let kept =
                    |m: &&Value| !m["name"].as_str().unwrap_or_default().starts_with(DEFAULT_TOKEN_VOLUME_PREFIX);
                let before = match name {
                    contract::SIDECAR_CONTAINER => 0,
                    _ => mounts_at(&pod, name, dir).into_iter().filter(kept).count(),
                };
                prop_assert_eq!(at.len(), before.max(1), "{} mounts {} {:?} times", name, dir, at);
                let volume = at[0]["name"].as_str().unwrap_or_default();
                let defined = volumes.iter().any(|v| v["name"] == json!(volume));
                prop_assert!(defined, "{} mounts missing volume {}", name, volume);
            }
            prop_assert_eq!(decide(&out, Some(&sts)).unwrap(), Decision::Skip(SkipReason::AlreadyInjected));
        }

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

//! The pod-spec pieces the webhook adds: the elector container (a native sidecar) and its
//! projected token volume, and with the OpenLDAP integration the fence guard and the volume
//! it shares with the elector, built from [`InjectConfig`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ldap_elector_contract as contract;

use super::start_fenced::StartFencedPlan;
use super::InjectConfig;

/// ConfigMap the kube-root-ca publisher puts into every namespace.
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

pub(super) fn sidecar(
    cfg: &InjectConfig,
    statefulset: &str,
    tuning: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
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
        resources: Some(resources(
            (&r.cpu_request, &r.memory_request, &r.ephemeral_storage_request),
            (&r.cpu_limit, &r.memory_limit),
        )),
        security_context: Some(restricted(cfg)),
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

/// The fence guard (docs/design.md, "Write fencing"): the elector's image running
/// `ldap-elector guard`, a native sidecar placed before the elector so that it starts
/// before and stops after it. No API token (the pod does not automount one and the guard
/// mounts none), the ldapi socket directory read-only, and the run volume read-write (it
/// creates its socket there). `env`: the fence settings.
pub(super) fn guard(cfg: &InjectConfig, env: Vec<EnvVar>, ldapi_mount: VolumeMount) -> Container {
    Container {
        name: contract::GUARD_CONTAINER.to_string(),
        args: Some(vec![contract::GUARD_COMMAND.to_string()]),
        restart_policy: Some("Always".to_string()),
        env: Some(env),
        security_context: Some(restricted(cfg)),
        volume_mounts: Some(vec![ldapi_mount, run_mount(false)]),
        ..small_helper(cfg)
    }
}

/// `ldap-elector start-fenced` (docs/design.md, "Write fencing"): a plain init container,
/// run to completion after the consumer's, as slapd's user (the configuration files are
/// slapd's), with slapd's configuration volume and nothing else; no token.
pub(super) fn start_fenced(cfg: &InjectConfig, env: Vec<EnvVar>, plan: &StartFencedPlan) -> Container {
    let mut security = restricted(cfg);
    security.run_as_user = Some(plan.uid);
    security.run_as_group = plan.gid.or(security.run_as_group);
    Container {
        name: contract::START_FENCED_CONTAINER.to_string(),
        args: Some(vec![contract::START_FENCED_COMMAND.to_string()]),
        env: Some(env),
        security_context: Some(security),
        volume_mounts: Some(vec![plan.mount.clone()]),
        ..small_helper(cfg)
    }
}

/// The image, pull policy, log policy and small resources of the guard and start-fenced.
fn small_helper(cfg: &InjectConfig) -> Container {
    Container {
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        resources: Some(resources(GUARD_REQUESTS, GUARD_LIMITS)),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    }
}

/// The guard idles on a socket and a timer; it needs CPU only to fence (a few LDAP
/// operations), so its limit stays well above its request, like the elector's.
/// Requests are `(cpu, memory, ephemeral-storage)`, limits `(cpu, memory)` ([`resources`]).
const GUARD_REQUESTS: (&str, &str, &str) = ("5m", "8Mi", "8Mi");
const GUARD_LIMITS: (&str, &str) = ("100m", "32Mi");

/// Requests `(cpu, memory, ephemeral-storage)` and limits `(cpu, memory)` of an injected
/// container. Never an ephemeral-storage limit: once any container of a pod has one, the
/// kubelet caps the WHOLE pod at the sum of them, counting the consumer's emptyDirs (slapd's
/// database), slapd's logs and writable layer, and evicts the pod at once (no grace, no
/// hand-over) when it is exceeded. Seen on the real node: the injected 16 + 8 + 8 MiB
/// evicted a leader whose emptyDir held 13,000 entries, with its data.
fn resources(
    (cpu, memory, storage): (&str, &str, &str),
    (cpu_limit, memory_limit): (&str, &str),
) -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        Some(pairs.iter().map(|(name, q)| (name.to_string(), Quantity(q.to_string()))).collect::<BTreeMap<_, _>>())
    };
    ResourceRequirements {
        requests: quantities(&[("cpu", cpu), ("memory", memory), ("ephemeral-storage", storage)]),
        limits: quantities(&[("cpu", cpu_limit), ("memory", memory_limit)]),
        ..Default::default()
    }
}

/// Size limit of the small in-memory volumes (the ldapi socket directory, the run volume):
/// they hold a socket and at most slapd's pid and args files, and tmpfs pages count
/// against the pod's memory.
const SOCKET_VOLUME_SIZE_LIMIT: &str = "1Mi";

/// A small in-memory `emptyDir` for sockets.
pub(super) fn socket_volume(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: Some(Quantity(SOCKET_VOLUME_SIZE_LIMIT.to_string())),
        }),
        ..Default::default()
    }
}

/// A mount of the run volume: read-only for the elector (connecting to a socket needs no
/// write access), read-write for the guard.
pub(super) fn run_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: contract::RUN_VOLUME.to_string(),
        mount_path: contract::RUN_DIR.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The guard's socket, as both containers see it.
pub(super) fn guard_socket() -> String {
    format!("{}/{}", contract::RUN_DIR, contract::GUARD_SOCKET_NAME)
}

/// The restricted Pod Security Standard's container settings, as a fixed non-root user.
fn restricted(cfg: &InjectConfig) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".to_string()]) }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(cfg.uid),
        run_as_group: Some(cfg.gid),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The same three files the default token volume has, so kube's in-cluster config works.
pub(super) fn token_volume(cfg: &InjectConfig) -> Volume {
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

pub(super) fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector { field_path: path.to_string(), api_version: None }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    let source = EnvVarSource { field_ref: Some(field(path)), ..Default::default() };
    EnvVar { name: name.to_string(), value: None, value_from: Some(source) }
}

pub(super) fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value), value_from: None }
}

//! The OpenLDAP integration (opt-in by [`contract::ANNOTATION_LDAPI_SOCKET_DIR`]): slapd's
//! ldapi socket directory is shared with the sidecar, which fences and health-checks slapd
//! through it (docs/openldap.md). [`ldapi_plan`] resolves it against the incoming pod before
//! any patch operation is built.

use std::collections::BTreeMap;

use jsonptr::Token;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Volume, VolumeMount};
use ldap_elector_contract as contract;

use super::handover::{handover_plan, HandoverPlan};
use super::patch::{ptr, PatchOps};
use super::start_fenced::{start_fenced_plan, StartFencedPlan};
use super::template::{self, env_value, socket_volume};
use super::{InjectConfig, InjectError, DEFAULT_TOKEN_VOLUME_PREFIX};

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// What the OpenLDAP integration adds to a pod, resolved against the incoming pod before
/// any patch operation is built.
#[derive(Debug)]
pub(super) struct LdapiPlan {
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
    pub(super) sidecar_mount: VolumeMount,
    /// Fence and health-check settings of the elector.
    pub(super) env: Vec<EnvVar>,
    /// The hand-over hooks of slapd's containers.
    pub(super) handover: HandoverPlan,
    /// The offline fence before slapd starts, where slapd's configuration can be reached.
    pub(super) start_fenced: Option<StartFencedPlan>,
}

impl LdapiPlan {
    /// The fence settings alone (the guard's environment).
    pub(super) fn fence_env(&self) -> Vec<EnvVar> {
        self.env_of(&[contract::ENV_FENCE_LDAPI, contract::ENV_FENCE_DATABASE, contract::ENV_FENCE_SUFFIX])
    }

    /// The init container that fences slapd's configuration before slapd starts.
    pub(super) fn start_fenced(&self, cfg: &InjectConfig) -> Option<Container> {
        let plan = self.start_fenced.as_ref()?;
        let mut env = self.env_of(&[contract::ENV_FENCE_DATABASE, contract::ENV_FENCE_SUFFIX]);
        env.push(env_value(contract::ENV_SLAPD_CONFIG_DIR, plan.config_dir.clone()));
        Some(template::start_fenced(cfg, env, plan))
    }

    fn env_of(&self, names: &[&str]) -> Vec<EnvVar> {
        self.env.iter().filter(|e| names.contains(&e.name.as_str())).cloned().collect()
    }

    /// Adds the volume (after the token volume, so `volumes` exists), slapd's mounts and
    /// its hand-over hooks on the probe port `probe_port`.
    pub(super) fn apply(&self, ops: &mut PatchOps, probe_port: u16) -> Result<(), InjectError> {
        self.handover.apply(ops, probe_port)?;
        if self.add_volume {
            ops.add_item(ptr(&["spec", "volumes"]), Some(Token::new("-")), socket_volume(&self.volume))?;
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
pub(super) fn ldapi_plan(
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
    // The consumer's containers may keep their API token (`keeps_consumer_tokens`): a
    // token at the socket directory would then sit beside our mount at the same path.
    let token_at_dir = containers.iter().find(|(_, _, c)| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX) && m.mount_path.trim_end_matches('/') == dir)
    });
    if let Some((_, _, c)) = token_at_dir {
        return Err(conflict(format!("container {:?} has its API token mounted there", c.name)));
    }
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
            if let Some(kind) = read_only_volume_kind(v) {
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
    let suffix = get(contract::ANNOTATION_LDAP_SUFFIX).map(|s| s.trim()).filter(|s| !s.is_empty());
    let invalid = |suffix: &str, reason: String| InjectError::InvalidAnnotation {
        key: contract::ANNOTATION_LDAP_SUFFIX,
        value: suffix.to_string(),
        reason,
    };
    if let Some(suffix) = suffix.filter(|s| s.chars().any(char::is_control)) {
        return Err(invalid(suffix, "control characters are not allowed".into()));
    }
    // The data database: named outright, else found by the clients' suffix (its number
    // depends on the consumer's configuration).
    match (get(contract::ANNOTATION_FENCE_DATABASE), suffix) {
        (Some(db), _) => env.push(env_value(contract::ENV_FENCE_DATABASE, fence_database(db)?)),
        (None, Some(suffix)) => env.push(env_value(contract::ENV_FENCE_SUFFIX, suffix.to_string())),
        (None, None) => {}
    }
    let health_set = get(contract::ANNOTATION_HEALTH_CHECK).is_some_and(|h| !h.trim().is_empty());
    if !health_set {
        let suffix = suffix.ok_or(InjectError::MissingLdapSuffix)?;
        // `=` and `,` stay readable; the elector decodes the rest.
        let check = ldap_elector_contract::check::with_base(&socket, suffix);
        // Parsed as the elector will parse it, so a bad value is denied here instead of
        // crash-looping the sidecar.
        ldap_elector_contract::check::LdapCheck::parse(&check).map_err(|e| invalid(suffix, e))?;
        env.push(env_value(contract::ENV_HEALTH_CHECK, check));
    }
    Ok(Some(LdapiPlan {
        volume: volume.clone(),
        add_volume,
        mounts,
        sidecar_mount: mount(Some(true)),
        env,
        handover: handover_plan(&containers),
        start_fenced: start_fenced_plan(
            spec,
            containers.iter().filter(|(list, ..)| *list == "containers").map(|(.., c)| *c),
        ),
    }))
}

/// The kind of `v` when the kubelet mounts it read-only whatever the mount says.
pub(super) fn read_only_volume_kind(v: &Volume) -> Option<&'static str> {
    let kinds = [
        (v.config_map.is_some(), "configMap"),
        (v.secret.is_some(), "secret"),
        (v.downward_api.is_some(), "downwardAPI"),
        (v.projected.is_some(), "projected"),
    ];
    kinds.into_iter().find(|(is, _)| *is).map(|(_, kind)| kind)
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
    let run = contract::RUN_DIR;
    if dir == run || nested(dir, run) || nested(run, dir) {
        return Err(invalid("must not overlap the fence guard's socket directory"));
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Decision, InjectError, DEFAULT_TOKEN_VOLUME_PREFIX};
    use ldap_elector_contract as contract;
    use proptest::prelude::*;
    use serde_json::{json, Value};

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
        // The fence finds the data database by the same suffix, whatever its number.
        assert_eq!(env(&out, contract::ENV_FENCE_DATABASE), None);
        assert_eq!(env(&out, contract::ENV_FENCE_SUFFIX), Some("dc=example,dc=org"));
        let guard = container(&out, contract::GUARD_CONTAINER)["env"].to_string();
        assert!(guard.contains(contract::ENV_FENCE_SUFFIX) && guard.contains("dc=example,dc=org"), "{guard}");
        assert!(refused_as_marked(&out, Some(&ldap_owner(&[]))));
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
        assert_eq!(env(&out, contract::ENV_FENCE_SUFFIX), None, "named outright, not looked up");
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
            contract::RUN_DIR,
            "/run/ldap-elector-guard/slapd",
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
    fn the_fence_guard_has_the_fence_and_a_socket_shared_with_the_elector_only_and_no_token() {
        let pod = pod_json();
        let sts = ldap_owner(&[(contract::ANNOTATION_FENCE_DATABASE, "olcDatabase={2}mdb,cn=config")]);
        let out = apply(&pod, &decide(&pod, Some(&sts)).unwrap());
        let guard = container(&out, contract::GUARD_CONTAINER);
        assert_eq!(guard["args"], json!([contract::GUARD_COMMAND]));
        assert_eq!(guard["image"], container(&out, contract::SIDECAR_CONTAINER)["image"]);
        assert_eq!(guard["restartPolicy"], json!("Always"));
        assert_eq!(guard["securityContext"], container(&out, contract::SIDECAR_CONTAINER)["securityContext"]);
        let socket = format!("{}/{}", contract::RUN_DIR, contract::GUARD_SOCKET_NAME);
        let names: Vec<&str> = guard["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(names, [contract::ENV_FENCE_LDAPI, contract::ENV_FENCE_DATABASE, contract::ENV_GUARD_SOCKET]);
        assert_eq!(env(&out, contract::ENV_GUARD_SOCKET), Some(socket.as_str()));
        let env_of =
            |c: &Value, name: &str| c["env"].as_array().unwrap().iter().find(|e| e["name"] == json!(name)).cloned();
        let sidecar = container(&out, contract::SIDECAR_CONTAINER);
        for name in [contract::ENV_FENCE_LDAPI, contract::ENV_FENCE_DATABASE, contract::ENV_GUARD_SOCKET] {
            assert_eq!(env_of(guard, name), env_of(sidecar, name), "{name}");
        }
        assert_eq!(
            guard["volumeMounts"],
            json!([
                {"name": contract::LDAPI_VOLUME, "mountPath": "/run/slapd", "readOnly": true},
                {"name": contract::RUN_VOLUME, "mountPath": contract::RUN_DIR},
            ]),
            "no token, the socket directory read-only, the run volume writable"
        );
        assert_eq!(
            mounts_at(&out, contract::SIDECAR_CONTAINER, contract::RUN_DIR),
            [&json!({"name": contract::RUN_VOLUME, "mountPath": contract::RUN_DIR, "readOnly": true})]
        );
        assert!(mounts_at(&out, "slapd", contract::RUN_DIR).is_empty(), "slapd cannot reach the guard");
        let volume =
            out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == json!(contract::RUN_VOLUME));
        assert_eq!(
            volume,
            Some(&json!({"name": contract::RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}))
        );
        // Without the OpenLDAP integration there is no fence to guard.
        let plain = apply(&pod, &decide(&pod, Some(&owner(&[]))).unwrap());
        assert!(!plain.to_string().contains(contract::GUARD_CONTAINER));
        assert!(!plain.to_string().contains(contract::RUN_VOLUME));
    }

    #[test]
    fn named_containers_get_the_mount_including_init_containers_shifted_by_the_sidecar() {
        let mut pod = pod_json();
        pod["spec"]["containers"].as_array_mut().unwrap().insert(0, json!({"name": "exporter", "image": "x"}));
        pod["spec"]["initContainers"] =
            json!([{"name": "chown", "image": "x"}, {"name": "load-config", "image": "x", "volumeMounts": []}]);
        let sts = ldap_owner(&[(contract::ANNOTATION_LDAP_CONTAINER, " slapd , load-config,slapd")]);
        let out = apply(&pod, &decide(&pod, Some(&sts)).unwrap());
        for name in ["slapd", "load-config", contract::SIDECAR_CONTAINER, contract::GUARD_CONTAINER] {
            assert_eq!(mounts_at(&out, name, "/run/slapd").len(), 1, "{name}");
        }
        for name in ["exporter", "chown"] {
            assert!(mounts_at(&out, name, "/run/slapd").is_empty(), "{name}");
        }
        // The guard first (it stops last), then the elector, then the pod's own.
        let inits: Vec<&Value> = out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| &c["name"]).collect();
        assert_eq!(
            inits,
            [
                &json!(contract::GUARD_CONTAINER),
                &json!(contract::SIDECAR_CONTAINER),
                &json!("chown"),
                &json!("load-config")
            ]
        );
        // Default: the first app container only.
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        assert_eq!(mounts_at(&out, "exporter", "/run/slapd").len(), 1);
        assert!(mounts_at(&out, "slapd", "/run/slapd").is_empty());
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
            prop_assert!(refused_as_marked(&out, Some(&sts)));
        }
    }
}

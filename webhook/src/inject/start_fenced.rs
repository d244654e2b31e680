//! slapd starts fenced (elector/src/slapd/start_fenced.rs): when slapd's container runs
//! `slapd -F DIR` with DIR on a pod volume, the init container
//! [`contract::START_FENCED_CONTAINER`] goes last before the main containers (after the
//! consumer's own init containers, which may write that configuration) and sets
//! `olcReadOnly: TRUE` there, as slapd's user, before slapd starts. Otherwise a new pod's
//! slapd takes writes from its first instant until the elector's fence reaches it.
//!
//! Not injected (slapd then starts as it is configured, and the elector fences it within its
//! start watch) when the directory cannot be known or reached from another container: no
//! `-F` in slapd's command line (a `slapd.conf`, or a wrapper script), a directory on the
//! image's own file system or on a read-only volume, or no known non-root user for slapd.

use k8s_openapi::api::core::v1::{Container, PodSpec, VolumeMount};

use super::ldapi::read_only_volume_kind;
use super::DEFAULT_TOKEN_VOLUME_PREFIX;

/// What the init container needs: slapd's configuration directory, the mount that holds
/// it, and slapd's user (the files are slapd's, mode 0600).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StartFencedPlan {
    pub config_dir: String,
    pub mount: VolumeMount,
    pub uid: i64,
    pub gid: Option<i64>,
}

/// The plan for the first of slapd's main containers whose configuration directory can be
/// fenced from another container.
pub(super) fn start_fenced_plan<'a>(
    spec: &PodSpec,
    slapd: impl IntoIterator<Item = &'a Container>,
) -> Option<StartFencedPlan> {
    slapd.into_iter().find_map(|c| plan_for(spec, c))
}

fn plan_for(spec: &PodSpec, c: &Container) -> Option<StartFencedPlan> {
    let config_dir = config_dir(c)?;
    let covers = |m: &&VolumeMount| {
        let at = m.mount_path.trim_end_matches('/');
        !m.name.starts_with(DEFAULT_TOKEN_VOLUME_PREFIX)
            && (config_dir == at || config_dir.strip_prefix(at).is_some_and(|rest| rest.starts_with('/')))
    };
    let mount = c.volume_mounts.iter().flatten().filter(covers).max_by_key(|m| m.mount_path.len())?;
    let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name)?;
    if mount.read_only == Some(true) || mount.sub_path_expr.is_some() || read_only_volume_kind(volume).is_some() {
        return None;
    }
    let pod = spec.security_context.as_ref();
    let own = c.security_context.as_ref();
    let uid = own.and_then(|s| s.run_as_user).or(pod.and_then(|s| s.run_as_user)).filter(|uid| *uid > 0)?;
    let gid = own.and_then(|s| s.run_as_group).or(pod.and_then(|s| s.run_as_group));
    let mount = VolumeMount {
        name: mount.name.clone(),
        mount_path: mount.mount_path.clone(),
        sub_path: mount.sub_path.clone(),
        ..Default::default()
    };
    Some(StartFencedPlan { config_dir, mount, uid, gid })
}

/// slapd's `-F DIR` (or `-FDIR`): an absolute, normalised path. When the container names its
/// command, it must be slapd itself (a wrapper's arguments say nothing about slapd's).
fn config_dir(c: &Container) -> Option<String> {
    if let Some(program) = c.command.as_ref().and_then(|c| c.first()) {
        if program.rsplit('/').next() != Some("slapd") {
            return None;
        }
    }
    let words: Vec<&str> = c.command.iter().flatten().chain(c.args.iter().flatten()).map(String::as_str).collect();
    let dir = words
        .windows(2)
        .find(|w| w[0] == "-F")
        .map(|w| w[1])
        .or_else(|| words.iter().find_map(|w| w.strip_prefix("-F").filter(|d| !d.is_empty())))?;
    let dir = dir.trim_end_matches('/');
    let normal = dir.starts_with('/') && dir.split('/').skip(1).all(|part| !matches!(part, "" | "." | ".."));
    normal.then(|| dir.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(slapd: serde_json::Value) -> PodSpec {
        serde_json::from_value(json!({
            "securityContext": {"runAsUser": 101, "runAsGroup": 102, "fsGroup": 102},
            "containers": [slapd],
            "volumes": [
                {"name": "state", "emptyDir": {}},
                {"name": "seed", "configMap": {"name": "seed"}},
            ],
        }))
        .unwrap()
    }

    fn plan(slapd: serde_json::Value) -> Option<StartFencedPlan> {
        let spec = pod(slapd);
        start_fenced_plan(&spec, &spec.containers)
    }

    #[test]
    fn slapd_d_on_a_volume_is_fenced_as_slapds_user_through_the_deepest_mount() {
        let p = plan(json!({"name": "slapd", "command": ["/usr/sbin/slapd"], "args": ["-d", "0", "-F", "/var/lib/slapd/config/", "-h", "ldap:///"],
            "volumeMounts": [{"name": "state", "mountPath": "/var/lib"}, {"name": "state", "mountPath": "/var/lib/slapd", "subPath": "s"}]}))
        .unwrap();
        assert_eq!(p.config_dir, "/var/lib/slapd/config");
        assert_eq!((p.mount.mount_path.as_str(), p.mount.sub_path.as_deref()), ("/var/lib/slapd", Some("s")));
        assert_eq!((p.uid, p.gid), (101, Some(102)));
        let own_user =
            plan(json!({"name": "slapd", "args": ["-F/etc/ldap/slapd.d"], "securityContext": {"runAsUser": 7},
            "volumeMounts": [{"name": "state", "mountPath": "/etc/ldap"}]}))
            .unwrap();
        assert_eq!((own_user.config_dir.as_str(), own_user.uid, own_user.gid), ("/etc/ldap/slapd.d", 7, Some(102)));
    }

    #[test]
    fn nothing_is_injected_where_the_directory_cannot_be_known_or_reached() {
        let mounts = json!([{"name": "state", "mountPath": "/var/lib/slapd"}]);
        let cases = [
            ("slapd.conf", json!({"name": "s", "command": ["slapd", "-f", "/etc/slapd.conf"], "volumeMounts": mounts})),
            (
                "wrapper",
                json!({"name": "s", "command": ["/entrypoint.sh"], "args": ["-F", "/var/lib/slapd/c"], "volumeMounts": mounts}),
            ),
            ("image fs", json!({"name": "s", "args": ["-F", "/etc/ldap/slapd.d"], "volumeMounts": mounts})),
            ("relative", json!({"name": "s", "args": ["-F", "var/lib/slapd/c"], "volumeMounts": mounts})),
            ("dot-dot", json!({"name": "s", "args": ["-F", "/var/lib/slapd/../x"], "volumeMounts": mounts})),
            (
                "read-only mount",
                json!({"name": "s", "args": ["-F", "/var/lib/slapd/c"],
                "volumeMounts": [{"name": "state", "mountPath": "/var/lib/slapd", "readOnly": true}]}),
            ),
            (
                "configMap",
                json!({"name": "s", "args": ["-F", "/seed/c"], "volumeMounts": [{"name": "seed", "mountPath": "/seed"}]}),
            ),
            (
                "root",
                json!({"name": "s", "args": ["-F", "/var/lib/slapd/c"], "securityContext": {"runAsUser": 0}, "volumeMounts": mounts}),
            ),
            ("prefix only", json!({"name": "s", "args": ["-F", "/var/lib/slapdx/c"], "volumeMounts": mounts})),
        ];
        for (what, slapd) in cases {
            assert_eq!(plan(slapd), None, "{what}");
        }
        let mut no_user = pod(json!({"name": "s", "args": ["-F", "/var/lib/slapd/c"], "volumeMounts": mounts}));
        no_user.security_context = None;
        assert_eq!(start_fenced_plan(&no_user, &no_user.containers), None, "the image's user is unknown here");
    }

    /// Reproducer: an ephemeral-storage limit on any injected container made the kubelet cap
    /// the whole LDAP pod at the sum of them (32 MiB), slapd's emptyDir database included, and
    /// evict the leader with its data (`make bench-node`, 13,000 entries).
    #[test]
    fn no_injected_container_limits_ephemeral_storage_so_the_pod_gets_no_storage_cap_from_us() {
        use super::super::testing::{apply, decide, ldap_owner, pod_json};
        use ldap_elector_contract as contract;
        let mut pod = pod_json();
        pod["spec"]["securityContext"] = json!({"runAsUser": 101, "runAsGroup": 102});
        pod["spec"]["containers"][0]["args"] = json!(["-F", "/var/lib/ldap/slapd.d"]);
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        let injected: Vec<&serde_json::Value> =
            out["spec"]["initContainers"].as_array().unwrap().iter().filter(|c| c["name"] != json!("slapd")).collect();
        let names: Vec<&str> = injected.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, [contract::GUARD_CONTAINER, contract::SIDECAR_CONTAINER, contract::START_FENCED_CONTAINER]);
        for c in injected {
            let resources = &c["resources"];
            assert_eq!(resources["limits"]["ephemeral-storage"], json!(null), "{}: {resources}", c["name"]);
            assert!(resources["requests"]["ephemeral-storage"].is_string(), "{}: {resources}", c["name"]);
            assert!(resources["limits"]["memory"].is_string(), "{}: {resources}", c["name"]);
        }
    }

    #[test]
    fn the_injected_pod_fences_last_before_slapd_as_slapds_user_without_a_token() {
        use super::super::testing::{apply, container, decide, ldap_owner, pod_json};
        use ldap_elector_contract as contract;
        let mut pod = pod_json();
        pod["spec"]["securityContext"] = json!({"runAsUser": 101, "runAsGroup": 102});
        pod["spec"]["containers"][0]["args"] = json!(["-F", "/var/lib/ldap/slapd.d"]);
        pod["spec"]["initContainers"] = json!([{"name": "write-config", "image": "slapd"}]);
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        let names: Vec<&str> =
            out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        let expected =
            [contract::GUARD_CONTAINER, contract::SIDECAR_CONTAINER, "write-config", contract::START_FENCED_CONTAINER];
        assert_eq!(names, expected);
        let fence = container(&out, contract::START_FENCED_CONTAINER);
        assert_eq!(fence["args"], json!([contract::START_FENCED_COMMAND]));
        assert_eq!(fence["restartPolicy"], json!(null), "runs to completion before slapd");
        assert_eq!(fence["securityContext"]["runAsUser"], json!(101));
        assert_eq!(fence["securityContext"]["runAsGroup"], json!(102));
        assert_eq!(fence["securityContext"]["readOnlyRootFilesystem"], json!(true));
        assert_eq!(
            fence["volumeMounts"],
            json!([{"name": "data", "mountPath": "/var/lib/ldap"}]),
            "no token, no socket"
        );
        let env = fence["env"].as_array().unwrap();
        assert!(
            env.contains(&json!({"name": contract::ENV_SLAPD_CONFIG_DIR, "value": "/var/lib/ldap/slapd.d"})),
            "{env:?}"
        );

        pod["spec"]["containers"][0]["args"] = json!(["-f", "/etc/ldap/slapd.conf"]);
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        let names = out["spec"]["initContainers"].as_array().unwrap();
        assert!(
            names.iter().all(|c| c["name"] != json!(contract::START_FENCED_CONTAINER)),
            "slapd.conf: nothing to fence on disk"
        );
    }
}

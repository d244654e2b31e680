//! The StatefulSet's tuning, metrics and audit annotations, parsed and validated into the
//! sidecar's env (and, for the bind Secret, a volume): a typo is a clear admission error
//! instead of a crash-looping sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EnvVar, EnvVarSource, KeyToPath, PodSpec, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use ldap_elector_contract as contract;

use super::template::env_value;
use super::{InjectConfig, InjectError};

/// The optional metrics port annotation: a port number other than the probe port.
pub(super) fn metrics_port(
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
pub(super) fn tuning_env(annotations: Option<&BTreeMap<String, String>>) -> Result<Vec<EnvVar>, InjectError> {
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

/// A volume only the sidecar mounts, with its mount.
pub(super) type SidecarVolume = (Volume, VolumeMount);

/// The leader's divergence audits and the elector's LDAP bind identity (docs/divergence.md).
pub(super) struct AuditPlan {
    pub(super) env: Vec<EnvVar>,
    /// The bind Secret's password as a volume (only that key) and the sidecar's mount of it.
    pub(super) bind_secret: Option<SidecarVolume>,
    /// The LDAP CA ConfigMap (only its `ca.crt`) and the sidecar's mount of it.
    pub(super) ca: Option<SidecarVolume>,
}

/// The optional audit annotations → sidecar env, validated here (a typo is an admission
/// error, not a crash-looping sidecar); the bind Secret reaches the sidecar only: the DN as
/// env from the Secret, the password as a read-only file.
pub(super) fn audit_plan(
    annotations: Option<&BTreeMap<String, String>>,
    spec: &PodSpec,
) -> Result<AuditPlan, InjectError> {
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
    let (tls_env, ca) = tls_plan(annotations, spec)?;
    env.extend(tls_env);
    let Some(secret) = get(contract::ANNOTATION_LDAP_BIND_SECRET) else {
        return Ok(AuditPlan { env, bind_secret: None, ca });
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
            items: Some(only_key(contract::BIND_SECRET_KEY_PASSWORD)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = read_only_mount(contract::BIND_SECRET_VOLUME, contract::BIND_SECRET_MOUNT_PATH);
    Ok(AuditPlan { env, bind_secret: Some((volume, mount)), ca })
}

/// Transport security of the elector's LDAP reads of the other pods (issue 17, item 7):
/// `ldap-starttls` and `allow-cleartext-bind` (`"true"`/`"false"`) become the elector's env,
/// `ldap-ca-configmap` a ConfigMap volume (only its `ca.crt`) mounted into the sidecar alone
/// and its path. StartTLS without a CA is refused here: the elector would refuse to start.
/// Nothing is set without the annotations: a password over plain `ldap://` to another pod
/// is then refused by the elector (its audits of that pod are off, and it logs why).
fn tls_plan(
    annotations: Option<&BTreeMap<String, String>>,
    spec: &PodSpec,
) -> Result<(Vec<EnvVar>, Option<SidecarVolume>), InjectError> {
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim()).filter(|v| !v.is_empty());
    let flag = |key: &'static str| match get(key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(InjectError::InvalidAnnotation {
            key,
            value: other.to_string(),
            reason: "must be \"true\" or \"false\"".to_string(),
        }),
    };
    let starttls = flag(contract::ANNOTATION_LDAP_STARTTLS)?;
    let allow_cleartext = flag(contract::ANNOTATION_ALLOW_CLEARTEXT_BIND)?;
    let ca_configmap = get(contract::ANNOTATION_LDAP_CA_CONFIGMAP);
    let mut env = Vec::new();
    if starttls {
        if ca_configmap.is_none() {
            return Err(InjectError::InvalidAnnotation {
                key: contract::ANNOTATION_LDAP_STARTTLS,
                value: "true".to_string(),
                reason: format!(
                    "StartTLS needs the servers' CA: name a ConfigMap with key {} in {}",
                    contract::LDAP_CA_CONFIGMAP_KEY,
                    contract::ANNOTATION_LDAP_CA_CONFIGMAP
                ),
            });
        }
        env.push(env_value(contract::ENV_LDAP_STARTTLS, "true".to_string()));
    }
    if allow_cleartext {
        env.push(env_value(contract::ENV_ALLOW_CLEARTEXT_BIND, "true".to_string()));
    }
    let Some(name) = ca_configmap else {
        return Ok((env, None));
    };
    if !is_subdomain(name) {
        return Err(InjectError::InvalidAnnotation {
            key: contract::ANNOTATION_LDAP_CA_CONFIGMAP,
            value: name.to_string(),
            reason: "not a ConfigMap name (RFC 1123 subdomain)".to_string(),
        });
    }
    if spec.volumes.iter().flatten().any(|v| v.name == contract::LDAP_CA_VOLUME) {
        return Err(InjectError::NameConflict { what: "volume", name: contract::LDAP_CA_VOLUME });
    }
    let ca_file = format!("{}/{}", contract::LDAP_CA_MOUNT_PATH, contract::LDAP_CA_CONFIGMAP_KEY);
    env.push(env_value(contract::ENV_LDAP_CA_FILE, ca_file));
    let volume = Volume {
        name: contract::LDAP_CA_VOLUME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.to_string(),
            items: Some(only_key(contract::LDAP_CA_CONFIGMAP_KEY)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = read_only_mount(contract::LDAP_CA_VOLUME, contract::LDAP_CA_MOUNT_PATH);
    Ok((env, Some((volume, mount))))
}

/// A Secret or ConfigMap volume's one file: `key`, under its own name.
fn only_key(key: &str) -> Vec<KeyToPath> {
    vec![KeyToPath { key: key.to_string(), path: key.to_string(), mode: None }]
}

/// The sidecar's read-only mount of `volume` at `path`.
fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount { name: volume.to_string(), mount_path: path.to_string(), read_only: Some(true), ..Default::default() }
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::InjectError;
    use ldap_elector_contract as contract;
    use serde_json::{json, Value};

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
    fn tls_annotations_become_the_electors_env_and_the_ca_reaches_only_the_sidecar() {
        let annotations = [
            (contract::ANNOTATION_AUDIT_PEERS, "ldap://{pod}.ldap:389?base=dc=example,dc=org"),
            (contract::ANNOTATION_LDAP_BIND_SECRET, "ldap-auditor"),
            (contract::ANNOTATION_LDAP_STARTTLS, "true"),
            (contract::ANNOTATION_LDAP_CA_CONFIGMAP, "ldap-ca"),
        ];
        let out = apply(&pod_json(), &decide(&pod_json(), Some(&owner(&annotations))).unwrap());
        let sidecar = &out["spec"]["initContainers"][0];
        let env = sidecar["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": contract::ENV_LDAP_STARTTLS, "value": "true"})), "{env:?}");
        let ca_file = format!("{}/{}", contract::LDAP_CA_MOUNT_PATH, contract::LDAP_CA_CONFIGMAP_KEY);
        assert!(env.contains(&json!({"name": contract::ENV_LDAP_CA_FILE, "value": ca_file})), "{env:?}");
        assert!(!env.iter().any(|e| e["name"] == contract::ENV_ALLOW_CLEARTEXT_BIND), "never by default");
        let volume = out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == contract::LDAP_CA_VOLUME);
        assert_eq!(
            volume.unwrap()["configMap"],
            json!({"name": "ldap-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
        );
        let mounts_of = |c: &Value| c["volumeMounts"].to_string().contains(contract::LDAP_CA_VOLUME);
        assert!(mounts_of(sidecar));
        assert!(out["spec"]["containers"].as_array().unwrap().iter().all(|c| !mounts_of(c)), "only the sidecar");

        // The explicit opt-in to cleartext, and nothing of TLS without its annotations.
        let cleartext = [
            (contract::ANNOTATION_AUDIT_PEERS, "ldap://{pod}.ldap:389?base=dc=example,dc=org"),
            (contract::ANNOTATION_ALLOW_CLEARTEXT_BIND, "true"),
        ];
        let out = apply(&pod_json(), &decide(&pod_json(), Some(&owner(&cleartext))).unwrap());
        let env = out["spec"]["initContainers"][0]["env"].as_array().unwrap().clone();
        assert!(env.contains(&json!({"name": contract::ENV_ALLOW_CLEARTEXT_BIND, "value": "true"})), "{env:?}");
        assert!(!env
            .iter()
            .any(|e| e["name"] == contract::ENV_LDAP_STARTTLS || e["name"] == contract::ENV_LDAP_CA_FILE));

        for (bad, key) in [
            (vec![(contract::ANNOTATION_LDAP_STARTTLS, "true")], contract::ANNOTATION_LDAP_STARTTLS),
            (vec![(contract::ANNOTATION_LDAP_STARTTLS, "yes")], contract::ANNOTATION_LDAP_STARTTLS),
            (vec![(contract::ANNOTATION_ALLOW_CLEARTEXT_BIND, "1")], contract::ANNOTATION_ALLOW_CLEARTEXT_BIND),
            (vec![(contract::ANNOTATION_LDAP_CA_CONFIGMAP, "Not_A_Name")], contract::ANNOTATION_LDAP_CA_CONFIGMAP),
        ] {
            let err = decide(&pod_json(), Some(&owner(&bad))).unwrap_err();
            assert!(matches!(err, InjectError::InvalidAnnotation { key: k, .. } if k == key), "{bad:?}: {err}");
        }
        let err = decide(&pod_json(), Some(&owner(&[(contract::ANNOTATION_LDAP_STARTTLS, "true")]))).unwrap_err();
        assert!(err.to_string().contains(contract::ANNOTATION_LDAP_CA_CONFIGMAP), "{err}");
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
}

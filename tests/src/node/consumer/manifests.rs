//! The consumer's objects, as a user writes them (pure): a namespace enforcing Pod Security
//! `restricted`, one Service per pod for replication (no DNS on the bed: the peers reach each
//! other at these ClusterIPs), the write Service, the ConfigMap with each server's cn=config
//! and the base entries, and the StatefulSet of two slapd containers opted in by annotations
//! (docs/openldap.md).

use std::path::Path;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use ldap_elector_contract as contract;
use serde_json::json;

use crate::ldap::slapd::{render, NodeConfig, PairOptions, ADMIN_DN, PEOPLE, SUFFIX};

pub const NAMESPACE: &str = "directory";
pub const STATEFULSET: &str = "ldap";
/// The write Service: the webhook's reconciler adds the `role=leader` selector.
pub const WRITE_SERVICE: &str = "ldap-primary";
pub const CONFIG_MAP: &str = "ldap-config";
pub const SLAPD_CONTAINER: &str = "slapd";
pub const INIT_CONTAINER: &str = "slapd-config";
/// slapd runs unprivileged (all capabilities dropped), so it listens above 1024; the
/// Services map the LDAP port to it.
pub const CONTAINER_PORT: u16 = 1389;
pub const SERVICE_PORT: u16 = 389;
/// Where slapd creates its ldapi socket (the webhook shares it with the sidecar).
pub const SOCKET_DIR: &str = "/run/slapd";
/// slapd's writable state (emptyDir): cn=config and the data database.
const STATE_DIR: &str = "/var/lib/slapd";
const CONFIG_DIR: &str = "/var/lib/slapd/config";
const DATA_DIR: &str = "/var/lib/slapd/data";
/// The ConfigMap's mount point.
const SEED_DIR: &str = "/etc/ldap-seed";
/// The uid/gid the injected sidecar runs as (webhook `InjectConfig::new`).
pub const SIDECAR_ID: (u32, u32) = (65532, 65532);
/// One CSN for the base entries on both servers: loaded offline on each, so a pod created
/// again (empty volumes) starts from the same entries and catches up from its peer.
const BASE_CSN: &str = "20260101000000.000000Z#000000#001#000000";
const SUFFIX_UUID: &str = "6b1a0c8e-5f0d-4a9e-9d1e-000000000001";
const PEOPLE_UUID: &str = "6b1a0c8e-5f0d-4a9e-9d1e-000000000002";
/// mdb's map size (sparse): slapd's 10 MiB default fills under a long write loop.
const DB_MAX_SIZE: u64 = 256 << 20;
/// syncrepl `timeout=1`: docs/openldap.md (at most the fence budget).
const SYNC_TIMEOUT: u32 = 1;

/// Pod `ordinal` of the StatefulSet.
pub fn pod_name(ordinal: usize) -> String {
    format!("{STATEFULSET}-{ordinal}")
}

/// The slapd server ID of pod `ordinal` (ordinal + 1).
pub fn server_id(ordinal: usize) -> u32 {
    ordinal as u32 + 1
}

/// What the observers need to know of this consumer.
pub fn target() -> super::Target {
    super::Target {
        namespace: NAMESPACE.into(),
        statefulset: STATEFULSET.into(),
        write_service: WRITE_SERVICE.into(),
        pod_selector: format!("app={STATEFULSET}"),
        slapd_container: SLAPD_CONTAINER.into(),
        container_port: CONTAINER_PORT,
        service_port: SERVICE_PORT,
    }
}

pub fn namespace() -> anyhow::Result<Namespace> {
    restricted_namespace(NAMESPACE)
}

/// A namespace that enforces Pod Security `restricted`, opted in to the webhook by a cluster
/// admin (the chart's default scope).
pub fn restricted_namespace(name: &str) -> anyhow::Result<Namespace> {
    Ok(serde_json::from_value(json!({"metadata": {"name": name, "labels": {
        contract::LABEL_NAMESPACE_ENABLED: "true",
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}}))?)
}

/// The Service of pod `ordinal` (its peer replicates from it): ready or not, so replication
/// does not wait for readiness.
pub fn peer_service(ordinal: usize) -> anyhow::Result<Service> {
    let pod = pod_name(ordinal);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": pod},
        "spec": {
            "selector": {"statefulset.kubernetes.io/pod-name": pod},
            "publishNotReadyAddresses": true,
            "ports": [{"name": "ldap", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT}],
        },
    }))?)
}

/// The write Service: selects both pods; the reconciler narrows it to the leader.
pub fn write_service() -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": WRITE_SERVICE},
        "spec": {
            "selector": {"app": STATEFULSET},
            "ports": [{"name": "ldap", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT}],
        },
    }))?)
}

/// The suffix entry and `ou=people` with fixed entryUUID and entryCSN (for `slapadd -w`).
pub fn base_ldif() -> String {
    format!(
        "dn: {SUFFIX}
objectClass: top
objectClass: dcObject
objectClass: organization
dc: example
o: Example
entryUUID: {SUFFIX_UUID}
entryCSN: {BASE_CSN}
creatorsName: {ADMIN_DN}
createTimestamp: 20260101000000Z

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people
entryUUID: {PEOPLE_UUID}
entryCSN: {BASE_CSN}
creatorsName: {ADMIN_DN}
createTimestamp: 20260101000000Z
"
    )
}

/// cn=config of pod `ordinal`, replicating from its peer's Service at `peer_ip`: the loopback
/// pair's safe settings (tests/src/ldap/slapd/config.rs) with the container's paths, the image's
/// openldap user as root of cn=config, and the sidecar's ACL.
pub fn config_ldif(ordinal: usize, peer_ip: &str, openldap: (u32, u32)) -> String {
    let node =
        NodeConfig { provider: format!("ldap://{peer_ip}:{SERVICE_PORT}"), root: openldap, sidecar: Some(SIDECAR_ID) };
    let opts = PairOptions::default().sync_timeout(SYNC_TIMEOUT).db_max_size(DB_MAX_SIZE);
    render(server_id(ordinal), Path::new(DATA_DIR), &node, &opts)
}

/// The init container's script: loads cn=config and the base entries once per pod (the
/// emptyDir outlives container restarts, not the pod).
fn init_script() -> String {
    format!(
        "set -eu
ordinal=\"${{POD_NAME##*-}}\"
if [ ! -e '{CONFIG_DIR}/cn=config.ldif' ]; then
  mkdir -p '{CONFIG_DIR}' '{DATA_DIR}'
  slapadd -n0 -F '{CONFIG_DIR}' -l \"{SEED_DIR}/config-$ordinal.ldif\"
  slapadd -q -w -b '{SUFFIX}' -F '{CONFIG_DIR}' -l '{SEED_DIR}/base.ldif'
fi
"
    )
}

/// The ConfigMap: `config-<ordinal>.ldif` per pod, `base.ldif`, `init.sh`.
pub fn config_map(peer_ips: &[String; 2], openldap: (u32, u32)) -> anyhow::Result<ConfigMap> {
    let mut data = serde_json::Map::new();
    for ordinal in 0..2 {
        let peer = &peer_ips[1 - ordinal];
        data.insert(format!("config-{ordinal}.ldif"), config_ldif(ordinal, peer, openldap).into());
    }
    data.insert("base.ldif".into(), base_ldif().into());
    data.insert("init.sh".into(), init_script().into());
    Ok(serde_json::from_value(json!({"metadata": {"name": CONFIG_MAP}, "data": data}))?)
}

/// `ldap://…` and `ldapi://…` URLs slapd listens on.
pub fn listen_urls() -> String {
    let socket = format!("{SOCKET_DIR}/ldapi").replace('/', "%2F");
    format!("ldap://:{CONTAINER_PORT}/ ldapi://{socket}/")
}

/// slapd's `-d` level: `LDAP_ELECTOR_SLAPD_DEBUG` (e.g. `sync`, to read replication in the
/// container logs a failed bench keeps), `0` (nothing) by default.
fn slapd_debug_level() -> String {
    std::env::var("LDAP_ELECTOR_SLAPD_DEBUG").unwrap_or_else(|_| "0".into())
}

/// The StatefulSet: two slapd servers as the image's openldap user, read-only root file
/// system, emptyDirs where slapd writes, opted in with `lease_duration` (whole seconds).
pub fn statefulset(image: &str, openldap: (u32, u32), lease_duration: &str) -> anyhow::Result<StatefulSet> {
    let (uid, gid) = openldap;
    let container_security = json!({
        "runAsNonRoot": true, "runAsUser": uid, "runAsGroup": gid,
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    });
    let state_mount = json!({"name": "state", "mountPath": STATE_DIR});
    let annotations: std::collections::BTreeMap<&str, &str> = [
        (contract::ANNOTATION_INJECT, "true"),
        (contract::ANNOTATION_LEADER_SERVICE, WRITE_SERVICE),
        (contract::ANNOTATION_LDAPI_SOCKET_DIR, SOCKET_DIR),
        (contract::ANNOTATION_LDAP_SUFFIX, SUFFIX),
        (contract::ANNOTATION_LDAP_CONTAINER, SLAPD_CONTAINER),
        (contract::ANNOTATION_LEASE_DURATION, lease_duration),
    ]
    .into();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": STATEFULSET, "annotations": annotations},
        "spec": {
            "replicas": 2,
            "serviceName": STATEFULSET,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": STATEFULSET}},
            "template": {
                "metadata": {"labels": {"app": STATEFULSET}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": uid, "runAsGroup": gid, "fsGroup": gid,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [{
                        "name": INIT_CONTAINER,
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", format!("{SEED_DIR}/init.sh")],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "securityContext": container_security,
                        "volumeMounts": [state_mount, {"name": "seed", "mountPath": SEED_DIR, "readOnly": true}],
                    }],
                    "containers": [{
                        "name": SLAPD_CONTAINER,
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["/usr/sbin/slapd"],
                        "args": ["-d", slapd_debug_level(), "-F", CONFIG_DIR, "-h", listen_urls()],
                        "ports": [{"name": "ldap", "containerPort": CONTAINER_PORT}],
                        "readinessProbe": {"tcpSocket": {"port": CONTAINER_PORT}, "periodSeconds": 2},
                        "securityContext": container_security,
                        "volumeMounts": [state_mount, {"name": "run", "mountPath": SOCKET_DIR}],
                    }],
                    "volumes": [
                        {"name": "state", "emptyDir": {}},
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "seed", "configMap": {"name": CONFIG_MAP}},
                    ],
                },
            },
        },
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_replicates_from_its_peer_with_its_own_id_and_grants_the_sidecar_its_acl() {
        let ips = ["198.18.0.20".to_string(), "198.18.0.21".to_string()];
        let cm = config_map(&ips, (101, 102)).unwrap();
        let data = cm.data.unwrap();
        let c0 = &data["config-0.ldif"];
        let c1 = &data["config-1.ldif"];
        assert!(c0.contains("olcServerID: 1\n") && c0.contains("provider=ldap://198.18.0.21:389"), "{c0}");
        assert!(c1.contains("olcServerID: 2\n") && c1.contains("provider=ldap://198.18.0.20:389"), "{c1}");
        for c in [c0, c1] {
            assert!(c.contains("olcRootDN: gidNumber=102+uidNumber=101,cn=peercred"), "{c}");
            assert!(c.contains("gidNumber=65532+uidNumber=65532,cn=peercred,cn=external,cn=auth\" write"), "{c}");
            assert!(!c.contains("olcSpSessionLog"), "the safe setting has no session log");
            assert!(c.contains("timeout=1 network-timeout=1"), "{c}");
        }
        assert!(data["base.ldif"].contains(BASE_CSN));
    }

    #[test]
    fn slapd_listens_on_the_annotated_socket_dir() {
        assert_eq!(listen_urls(), "ldap://:1389/ ldapi://%2Frun%2Fslapd%2Fldapi/");
        let sts = statefulset("localhost/openldap:x", (101, 102), "8").unwrap();
        let annotations = sts.metadata.annotations.unwrap();
        assert_eq!(annotations[contract::ANNOTATION_LDAPI_SOCKET_DIR], SOCKET_DIR);
    }
}

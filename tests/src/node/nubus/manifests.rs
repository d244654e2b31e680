//! Nubus' primary LDAP servers with real slapd on the real node (pure): the process bed's
//! shape (`workloads::nubus`: names, selector labels, ServiceAccount, the placeholder write
//! Service, the per-pod provider Services) with containers that run. Written from the facts
//! of issue 16, nothing copied from Univention's chart:
//!
//! - slapd from a static `slapd.conf` (`slapd -f`), on `ldapi:///` (Debian's default socket
//!   `/var/run/slapd/ldapi`) and ldap on [`LDAP_PORT`];
//! - the sockname ACL (write for any peer on that socket) on cn=config and every database;
//! - three databases with syncprov: `cn=internal` first, so the data suffix is `{2}mdb` (not
//!   the webhook's default `{1}mdb`), and `cn=translog`;
//! - the data database replicates from the peer's provider Service (`multiprovider on`,
//!   `timeout=1`, `retry="60 +"`); no syncprov session log (the change docs/nubus.md asks for:
//!   with it a returning server can silently lose changes);
//! - uid 101 / gid 102, `fsGroup: 102` (the image's `openldap` user is 100:101: slapd needs
//!   no passwd entry), read-only root file system, all capabilities dropped;
//! - `/var/run/slapd` on a claim from `volumeClaimTemplates` (`shared-run`), in `main` only;
//! - OrderedReady, a readiness probe `ldapsearch` over ldapi on cn=config with
//!   `failureThreshold: 1`, and the stand-in `leader-elector` container.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use ldap_elector_contract as contract;
use serde_json::{json, Value};

use super::NubusOnNode;
use crate::ldap::slapd::{ADMIN_DN, ADMIN_PASSWORD, SUFFIX};
use crate::node::consumer::manifests::base_ldif;
use crate::workloads::nubus::{Nubus, MAIN, POC_ELECTOR, SOCKET_DIR, SOCKET_VOLUME};

pub const RELEASE: &str = "nubus";
pub const NAMESPACE: &str = "nubus";
/// slapd runs without capabilities, so it listens above 1024; the Services map 389 to it.
pub const LDAP_PORT: u16 = 1389;
/// Debian's slapd and ldap tools take `ldapi:///` as this socket.
pub const LDAPI_SOCKET: &str = "/var/run/slapd/ldapi";
/// slapd's user and group, and the pod's fsGroup.
pub const SLAPD_UID: u32 = 101;
pub const SLAPD_GID: u32 = 102;
/// The rendered slapd.conf (an emptyDir: the root file system is read-only).
const CONF_DIR: &str = "/etc/ldap/rendered";
const CONF_FILE: &str = "/etc/ldap/rendered/slapd.conf";
/// The databases' directories (an emptyDir).
const DB_DIR: &str = "/var/lib/ldap";
/// The ConfigMap's mount point.
const SEED_DIR: &str = "/etc/ldap-seed";
const CONFIG_MAP: &str = "ldap-server-config";
/// The claim size of `shared-run` (a socket and slapd's pid and args files).
pub const RUN_CLAIM_SIZE: &str = "16Mi";
/// mdb's map size (sparse): slapd's 10 MiB default fills under a long write loop.
const DB_MAX_SIZE: u64 = 256 << 20;
/// The proof of concept's stand-in: idles, and exits at once on SIGTERM (a sleeping PID 1
/// would hold every rollout for the grace period).
const POC_SCRIPT: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

/// The consumer's names and shape, slapd on [`LDAP_PORT`].
pub fn nubus() -> Nubus {
    Nubus { target_port: LDAP_PORT, ..Nubus::new(RELEASE) }
}

/// The claim of `shared-run` for pod `ordinal` (`<template>-<statefulset>-<ordinal>`).
pub fn run_claim(n: &Nubus, ordinal: usize) -> String {
    format!("{SOCKET_VOLUME}-{}", contract::pod_name(&n.statefulset_name(), ordinal as u32))
}

/// The sockname ACL of every database: write for whoever connects through the socket,
/// nothing for anyone else (the data's rootdn, which replication and the tests bind as,
/// is not subject to ACLs).
fn sockname_acl() -> String {
    format!("access to * by sockname=\"PATH={LDAPI_SOCKET}\" write by * none")
}

/// One mdb database with its syncprov overlay (and session log).
fn database(suffix: &str, dir: &str, extra: &str, session_log: bool) -> String {
    let session_log = if session_log { "syncprov-sessionlog 100\n" } else { "" };
    format!(
        "database mdb
suffix \"{suffix}\"
directory {DB_DIR}/{dir}
maxsize {DB_MAX_SIZE}
index objectClass eq
index entryCSN,entryUUID eq
{acl}
{extra}overlay syncprov
syncprov-checkpoint 10 1
{session_log}",
        acl = sockname_acl()
    )
}

/// slapd.conf of pod `ordinal` (server ID ordinal + 1), replicating the data suffix from its
/// peer's provider Service at `peer_ip`, with or without docs/nubus.md's changes (`conf`).
pub fn slapd_conf(ordinal: usize, peer_ip: &str, conf: &NubusOnNode) -> String {
    let id = ordinal + 1;
    let peer_id = 2 - ordinal;
    let readonly = if conf.start_read_only { "readonly on\n" } else { "" };
    let data = format!(
        "{readonly}rootdn \"{ADMIN_DN}\"
rootpw {ADMIN_PASSWORD}
syncrepl rid=00{peer_id} provider=ldap://{peer_ip}:389 bindmethod=simple
  binddn=\"{ADMIN_DN}\" credentials={ADMIN_PASSWORD} searchbase=\"{SUFFIX}\"
  type=refreshAndPersist retry=\"60 +\" timeout=1
multiprovider on
"
    );
    format!(
        "# slapd.conf of server {id} (ldap-elector tests: Nubus' shape, issue 16)
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov
pidfile {SOCKET_DIR}/slapd.pid
argsfile {SOCKET_DIR}/slapd.args
serverID {id}

database config
{acl}

{internal}
{data_db}
{translog}",
        acl = sockname_acl(),
        internal = database("cn=internal", "internal", "", false),
        data_db = database(SUFFIX, "data", &data, conf.session_log),
        translog = database("cn=translog", "translog", "", false),
    )
}

/// `render-config`: this pod's slapd.conf into the config emptyDir.
fn render_script() -> String {
    format!("set -eu\ncp \"{SEED_DIR}/slapd-${{POD_NAME##*-}}.conf\" '{CONF_FILE}'\n")
}

/// `load-base`: the databases' directories and, once per pod (the emptyDir lives as long as
/// the pod), the base entries with their fixed entryUUID/entryCSN (as the plain consumer).
fn load_script() -> String {
    format!(
        "set -eu
mkdir -p '{DB_DIR}/internal' '{DB_DIR}/data' '{DB_DIR}/translog'
if [ ! -e '{DB_DIR}/data/data.mdb' ]; then
  slapadd -q -w -b '{SUFFIX}' -f '{CONF_FILE}' -l '{SEED_DIR}/base.ldif'
fi
"
    )
}

/// The ConfigMap: `slapd-<ordinal>.conf` per pod, `base.ldif` and the init scripts.
pub fn config_map(peer_ips: &[String; 2], conf: &NubusOnNode) -> anyhow::Result<ConfigMap> {
    let mut data = serde_json::Map::new();
    for ordinal in 0..2 {
        data.insert(format!("slapd-{ordinal}.conf"), slapd_conf(ordinal, &peer_ips[1 - ordinal], conf).into());
    }
    data.insert("base.ldif".into(), base_ldif().into());
    data.insert("render.sh".into(), render_script().into());
    data.insert("load.sh".into(), load_script().into());
    Ok(serde_json::from_value(json!({"metadata": {"name": CONFIG_MAP}, "data": data}))?)
}

/// slapd's `-d` level: `LDAP_ELECTOR_SLAPD_DEBUG`, as for the plain consumer.
fn slapd_debug_level() -> String {
    std::env::var("LDAP_ELECTOR_SLAPD_DEBUG").unwrap_or_else(|_| "0".into())
}

/// The StatefulSet as the chart installs it: no annotation of ours.
pub fn statefulset(n: &Nubus, image: &str) -> anyhow::Result<StatefulSet> {
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let seed = json!({"name": "seed", "mountPath": SEED_DIR, "readOnly": true});
    let conf = json!({"name": "config", "mountPath": CONF_DIR});
    let db = json!({"name": "data", "mountPath": DB_DIR});
    let init = |name: &str, script: &str, mounts: Value| {
        json!({
            "name": name,
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", format!("{SEED_DIR}/{script}")],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "securityContext": restricted,
            "volumeMounts": mounts,
        })
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": n.statefulset_name(), "labels": n.selector_labels()},
        "spec": {
            "replicas": n.replicas,
            "serviceName": format!("{}-headless", n.statefulset_name()),
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": n.selector_labels()},
            "template": {
                "metadata": {"labels": n.selector_labels()},
                "spec": {
                    "serviceAccountName": n.service_account_name(),
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": SLAPD_UID, "runAsGroup": SLAPD_GID, "fsGroup": SLAPD_GID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [
                        init("render-config", "render.sh", json!([seed, conf])),
                        init("load-base", "load.sh", json!([seed, conf, db])),
                    ],
                    "containers": [
                        {
                            "name": MAIN,
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["/usr/sbin/slapd"],
                            "args": ["-d", slapd_debug_level(), "-f", CONF_FILE,
                                     "-h", format!("ldapi:/// ldap://:{LDAP_PORT}/")],
                            "ports": [{"name": "ldap", "containerPort": LDAP_PORT}],
                            "securityContext": restricted,
                            "readinessProbe": {
                                "exec": {"command": ["ldapsearch", "-Q", "-LLL", "-H", "ldapi:///", "-Y", "EXTERNAL",
                                                     "-b", "cn=config", "-s", "base", "1.1"]},
                                "periodSeconds": 2,
                                "failureThreshold": 1,
                            },
                            "volumeMounts": [conf, db, {"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR}],
                        },
                        {
                            "name": POC_ELECTOR,
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", POC_SCRIPT],
                            "securityContext": restricted,
                        },
                    ],
                    "volumes": [
                        {"name": "seed", "configMap": {"name": CONFIG_MAP}},
                        {"name": "config", "emptyDir": {}},
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": SOCKET_VOLUME},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": RUN_CLAIM_SIZE}}},
            }],
        },
    }))?)
}

/// The annotations that opt the live StatefulSet in (`kubectl annotate`): the process bed's
/// (inject, write Service, replace the proof of concept) and the OpenLDAP integration on this
/// image: the socket's directory (the claim, shared read-only into the sidecars), the suffix
/// (whose database the fence finds by itself: cn=internal is `{1}mdb`, the data `{2}mdb`) and
/// slapd's container.
pub fn opt_in_annotations(n: &Nubus) -> Vec<(&'static str, String)> {
    let mut annotations: Vec<(&'static str, String)> = vec![
        (contract::ANNOTATION_INJECT, "true".into()),
        (contract::ANNOTATION_LEADER_SERVICE, n.write_service_name()),
        (contract::ANNOTATION_REPLACE_CONTAINERS, POC_ELECTOR.into()),
        (contract::ANNOTATION_LDAPI_SOCKET_DIR, SOCKET_DIR.into()),
        (contract::ANNOTATION_LDAP_SUFFIX, SUFFIX.into()),
        (contract::ANNOTATION_LDAP_CONTAINER, MAIN.into()),
    ];
    annotations.sort();
    annotations
}

/// docs/nubus.md's adoption commands (migration, step 2), as the page shows them.
pub fn documented_adoption() -> anyhow::Result<String> {
    crate::doc_block("docs/nubus.md", "nubus-adopt")
}

/// The `KEY=VALUE` arguments of the `kubectl annotate` in `commands` (lines continued with
/// `\` joined; single quotes removed), sorted.
pub fn annotated(commands: &str) -> Vec<(String, String)> {
    let joined = commands.replace("\\\n", " ");
    let mut found: Vec<(String, String)> = joined
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == "annotate"))
        .flat_map(|l| l.split_whitespace().map(|w| w.trim_matches('\'').to_string()).collect::<Vec<_>>())
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .filter(|(k, _)| k.starts_with(contract::DOMAIN))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_replicates_the_data_suffix_from_its_peer_and_the_socket_may_write_everything() {
        let ips = ["198.18.0.20".to_string(), "198.18.0.21".to_string()];
        let data = config_map(&ips, &NubusOnNode::CHANGED_AS_DOCUMENTED).unwrap().data.unwrap();
        let (c0, c1) = (&data["slapd-0.conf"], &data["slapd-1.conf"]);
        assert!(c0.contains("serverID 1\n") && c0.contains("rid=002 provider=ldap://198.18.0.21:389"), "{c0}");
        assert!(c1.contains("serverID 2\n") && c1.contains("rid=001 provider=ldap://198.18.0.20:389"), "{c1}");
        for c in [c0, c1] {
            // config + three databases, each writable through the socket only.
            assert_eq!(c.matches("by sockname=\"PATH=/var/run/slapd/ldapi\" write by * none").count(), 4, "{c}");
            assert_eq!(c.matches("overlay syncprov").count(), 3, "{c}");
            assert_eq!(c.matches("syncrepl ").count(), 1, "only the data suffix replicates");
            assert!(c.contains("timeout=1") && c.contains("multiprovider on"), "{c}");
            assert!(!c.contains("sessionlog"), "no session log");
            // The data database is the second mdb: {2}mdb in cn=config.
            let order: Vec<&str> = c.lines().filter_map(|l| l.strip_prefix("suffix ")).collect();
            assert_eq!(order, ["\"cn=internal\"", &format!("\"{SUFFIX}\""), "\"cn=translog\""]);
        }
    }

    #[test]
    fn the_documented_changes_are_readonly_on_and_no_session_log_on_the_data_database() {
        let data_db = |c: &str| {
            c.split("database mdb").find(|db| db.contains(&format!("suffix \"{SUFFIX}\""))).unwrap().to_string()
        };
        let shipped = slapd_conf(0, "198.18.0.21", &NubusOnNode::AS_SHIPPED);
        assert!(!shipped.contains("readonly"), "{shipped}");
        assert_eq!(shipped.matches("syncprov-sessionlog 100").count(), 1, "{shipped}");
        assert!(data_db(&shipped).contains("syncprov-sessionlog 100\n"), "{shipped}");
        let changed = slapd_conf(0, "198.18.0.21", &NubusOnNode::CHANGED_AS_DOCUMENTED);
        assert!(!changed.contains("sessionlog"), "{changed}");
        assert_eq!(changed.matches("readonly on").count(), 1, "{changed}");
        assert!(data_db(&changed).contains("readonly on\n"), "{changed}");
    }

    /// The page's commands (run as written on the real node) opt in exactly as the process
    /// bed's API calls do.
    #[test]
    fn the_documented_adoption_annotates_what_the_fixture_opts_in_with() {
        let n = nubus();
        let commands = documented_adoption().unwrap();
        let expected: Vec<(String, String)> =
            opt_in_annotations(&n).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(annotated(&commands), expected, "{commands}");
        let target = format!("-n {NAMESPACE} annotate statefulset {}", n.statefulset_name());
        assert!(commands.contains(&target), "{commands}");
        for step in ["rollout restart", "rollout status"] {
            assert!(
                commands.contains(&format!("-n {NAMESPACE} {step} statefulset {}", n.statefulset_name())),
                "{step}"
            );
        }
    }

    #[test]
    fn the_statefulset_has_the_consumers_shape_and_none_of_our_annotations() {
        let n = nubus();
        let sts = statefulset(&n, "localhost/openldap:x").unwrap();
        assert!(sts.metadata.annotations.unwrap_or_default().keys().all(|k| !k.starts_with(contract::DOMAIN)));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
        let pod = spec.template.spec.unwrap();
        let sc = pod.security_context.unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group, sc.fs_group), (Some(101), Some(102), Some(102)));
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [MAIN, POC_ELECTOR]);
        let main = &pod.containers[0];
        assert!(main.args.as_ref().unwrap().iter().any(|a| a == "-f"), "slapd.conf, not slapd.d");
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some(SOCKET_VOLUME));
        assert_eq!(run_claim(&n, 1), "shared-run-nubus-ldap-server-primary-1");
    }
}

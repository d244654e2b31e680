//! A consumer of the shape of Univention Nubus' primary LDAP servers (issue 16), written
//! from the facts listed there (nothing copied from Univention's chart): StatefulSet
//! `<release>-ldap-server-primary` (OrderedReady, selected by `app.kubernetes.io/name`,
//! `app.kubernetes.io/instance` and `ldap-server-type: primary`), its own ServiceAccount with
//! an automounted token, slapd as uid 101/gid 102 with `fsGroup: 102` and a read-only root,
//! the socket directory `/var/run/slapd` on a PersistentVolumeClaim mounted in `main` only,
//! init containers, a stand-in for its proof-of-concept elector (`leader-elector`), the write
//! Service with the placeholder selector that elector was to fill in, and one provider
//! Service per pod for the Mirror-Mode replication.
//!
//! On the process bed the containers are not run (the test kubelet marks them running):
//! this fixture is for admission and reconciliation.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use ldap_elector_contract as contract;
use serde_json::{json, Value};

/// The placeholder the proof-of-concept elector replaces with its own pod name.
pub const PLACEHOLDER: &str = "will-be-updated-by-elector";
/// The proof-of-concept elector's container.
pub const POC_ELECTOR: &str = "leader-elector";
/// The slapd container.
pub const MAIN: &str = "main";
/// slapd's socket directory (the ldapi socket is `ldapi` in it).
pub const SOCKET_DIR: &str = "/var/run/slapd";
/// The volume (from `volumeClaimTemplates`) at [`SOCKET_DIR`].
pub const SOCKET_VOLUME: &str = "shared-run";
/// The data database's suffix.
pub const SUFFIX: &str = "dc=nubus,dc=example";
/// The LDAP port of slapd and of the Services.
pub const LDAP_PORT: u16 = 389;

/// One installation (a Helm release) of the consumer.
#[derive(Clone, Debug)]
pub struct Nubus {
    pub release: String,
    pub replicas: i32,
    /// The Services' `targetPort` (slapd's port); [`LDAP_PORT`] by default.
    pub target_port: u16,
}

impl Nubus {
    pub fn new(release: &str) -> Nubus {
        Nubus { release: release.into(), replicas: 2, target_port: LDAP_PORT }
    }

    /// `<release>-ldap-server`, the chart's full name.
    pub fn fullname(&self) -> String {
        format!("{}-ldap-server", self.release)
    }

    /// The StatefulSet, `<fullname>-primary`.
    pub fn statefulset_name(&self) -> String {
        format!("{}-primary", self.fullname())
    }

    /// The write Service, `<fullname>-primary` (the StatefulSet's name too).
    pub fn write_service_name(&self) -> String {
        format!("{}-primary", self.fullname())
    }

    /// The per-pod provider Services, `<fullname>-primary-<n>`.
    pub fn provider_service_names(&self) -> Vec<String> {
        (0..self.replicas).map(|i| format!("{}-primary-{i}", self.fullname())).collect()
    }

    pub fn service_account_name(&self) -> String {
        self.fullname()
    }

    /// The StatefulSet's selector labels (also on its pods).
    pub fn selector_labels(&self) -> Value {
        json!({
            "app.kubernetes.io/name": "ldap-server",
            "app.kubernetes.io/instance": self.release,
            "ldap-server-type": "primary",
        })
    }

    /// A label selector string for the pods.
    pub fn pod_selector(&self) -> String {
        format!("app.kubernetes.io/instance={},ldap-server-type=primary", self.release)
    }

    /// The annotations that opt the live StatefulSet in (`kubectl annotate`): the write
    /// Service and the proof-of-concept elector to replace.
    pub fn opt_in_annotations(&self) -> Value {
        json!({
            contract::ANNOTATION_INJECT: "true",
            contract::ANNOTATION_LEADER_SERVICE: self.write_service_name(),
            contract::ANNOTATION_REPLACE_CONTAINERS: POC_ELECTOR,
        })
    }

    pub fn service_account(&self) -> anyhow::Result<ServiceAccount> {
        // automountServiceAccountToken unset: the pods' containers get the token.
        Ok(serde_json::from_value(json!({"metadata": {"name": self.service_account_name()}}))?)
    }

    pub fn statefulset(&self) -> anyhow::Result<StatefulSet> {
        let restricted = json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        });
        let socket = format!("ldapi://{}", SOCKET_DIR.replace('/', "%2F") + "%2Fldapi");
        Ok(serde_json::from_value(json!({
            "metadata": {"name": self.statefulset_name(), "labels": self.selector_labels()},
            "spec": {
                "replicas": self.replicas,
                "serviceName": format!("{}-headless", self.statefulset_name()),
                "podManagementPolicy": "OrderedReady",
                "updateStrategy": {"type": "RollingUpdate"},
                "selector": {"matchLabels": self.selector_labels()},
                "template": {
                    "metadata": {"labels": self.selector_labels()},
                    "spec": {
                        "serviceAccountName": self.service_account_name(),
                        "terminationGracePeriodSeconds": 10,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 101, "runAsGroup": 102, "fsGroup": 102,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "initContainers": [
                            {"name": "load-internal-schema", "image": "registry.invalid/nubus/ldap-server:test",
                             "securityContext": restricted},
                            {"name": "render-config", "image": "registry.invalid/nubus/ldap-server:test",
                             "securityContext": restricted},
                        ],
                        "containers": [
                            {
                                "name": MAIN,
                                "image": "registry.invalid/nubus/ldap-server:test",
                                "args": ["slapd", "-d", "0", "-f", "/etc/ldap/slapd.conf",
                                         "-h", format!("{socket} ldap://:389/")],
                                "ports": [{"name": "ldap", "containerPort": 389}],
                                "securityContext": restricted,
                                "readinessProbe": {
                                    "exec": {"command": ["ldapsearch", "-Q", "-H", socket, "-Y", "EXTERNAL",
                                                         "-b", "cn=config", "-s", "base"]},
                                    "failureThreshold": 1,
                                },
                                "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR}],
                            },
                            {
                                // Stands in for the proof of concept: holds its own Lease and
                                // patches the write Service's selector (here: never runs).
                                "name": POC_ELECTOR,
                                "image": "registry.invalid/nubus/leader-elector:test",
                                "securityContext": restricted,
                            },
                        ],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": SOCKET_VOLUME},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
                }],
            },
        }))?)
    }

    /// The write Service with the placeholder selector.
    pub fn write_service(&self) -> anyhow::Result<Service> {
        let mut selector = self.selector_labels();
        selector[contract::LABEL_STATEFULSET_POD_NAME] = json!(PLACEHOLDER);
        service(&self.write_service_name(), selector, self.target_port)
    }

    /// The provider Services, each selecting one pod by name.
    pub fn provider_services(&self) -> anyhow::Result<Vec<Service>> {
        (0..self.replicas)
            .map(|i| {
                let mut selector = self.selector_labels();
                selector[contract::LABEL_STATEFULSET_POD_NAME] =
                    json!(contract::pod_name(&self.statefulset_name(), i as u32));
                service(&self.provider_service_names()[i as usize], selector, self.target_port)
            })
            .collect()
    }

    /// Creates everything in `namespace`, as `helm install` would.
    pub async fn install(&self, client: &Client, namespace: &str) -> anyhow::Result<()> {
        let pp = PostParams::default();
        Api::<ServiceAccount>::namespaced(client.clone(), namespace).create(&pp, &self.service_account()?).await?;
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        services.create(&pp, &self.write_service()?).await?;
        for svc in self.provider_services()? {
            services.create(&pp, &svc).await?;
        }
        Api::<StatefulSet>::namespaced(client.clone(), namespace).create(&pp, &self.statefulset()?).await?;
        Ok(())
    }
}

fn service(name: &str, selector: Value, target_port: u16) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "ldap", "port": LDAP_PORT, "targetPort": target_port}]},
    }))?)
}

//! A StatefulSet whose pods run the real `ldap-elector` binary through the test kubelet,
//! with exactly the identity the webhook's reconciler creates (ServiceAccount, Role from
//! `contract::elector_role_rules`, RoleBinding, pre-created Lease).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{EnvVar, Service, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ldap_elector_contract as contract;
use serde_json::json;

use crate::bed::kubelet::Runner;
use crate::measure::observer::Observer;
use crate::workloads::build::elector_binary;
use crate::workloads::fixtures;
use crate::workloads::webhook::Webhook;
use crate::{Bed, Kubelet};

/// Options of a `Pair`.
#[derive(Clone, Debug, Default)]
pub struct PairOptions {
    /// Audit log on the API server (for counting requests).
    pub audit: bool,
    /// Run the release build of the elector (for benchmarks).
    pub release: bool,
    /// The program the test kubelet runs as the sidecar container (e.g. a peer
    /// implementation for comparisons); default: the `ldap-elector` binary.
    pub program: Option<PathBuf>,
    /// The process environment the test kubelet adds for the sidecar; default: the
    /// elector's test settings (probe server off, text logs, debug level).
    pub runner_env: Option<Vec<(String, String)>>,
    /// The whole product: the webhook (in-process, registered by URL, failurePolicy Fail)
    /// injects the pods of an *annotated* StatefulSet and its reconciler creates the
    /// identity and points the write Service `ldap-server-primary` at the leader (which the
    /// observer then watches too). Without it the test creates the identity and a pod
    /// template with the sidecar itself.
    pub webhook: bool,
    /// The chart's admission policies (leader-label, pod and Lease protection,
    /// `policies::install`), applied before the StatefulSet is created.
    pub policies: bool,
}

/// The write Service of a `Pair` started with `webhook`.
pub const WRITE_SERVICE: &str = "ldap-server-primary";

/// Creates the elector identity for `statefulset` as the reconciler does.
pub async fn create_identity(client: &Client, ns: &str, statefulset: &str, replicas: u32) -> anyhow::Result<()> {
    let name = contract::identity_name(statefulset);
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}, "automountServiceAccountToken": false}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&pp, &sa).await?;
    fixtures::service_account_role(client, ns, &name, ns, contract::elector_role_rules(statefulset, replicas)).await?;
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": contract::lease_name(statefulset)}, "spec": {}}))?;
    Api::<Lease>::namespaced(client.clone(), ns).create(&pp, &lease).await?;
    Ok(())
}

/// A StatefulSet (pod template as the webhook would leave it) with the elector sidecar.
pub fn elected_statefulset(name: &str, replicas: i32, env: &[(&str, &str)]) -> anyhow::Result<StatefulSet> {
    let mut set = fixtures::statefulset(name, replicas, json!({}))?;
    let env: Vec<serde_json::Value> = env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let patch = json!({"spec": {"template": {
        "metadata": {"labels": {contract::LABEL_ROLE: contract::ROLE_STANDBY}},
        "spec": {
            "serviceAccountName": contract::identity_name(name),
            "automountServiceAccountToken": false,
            "initContainers": [{
                "name": contract::SIDECAR_CONTAINER,
                "image": "registry.invalid/ldap-elector:test",
                "restartPolicy": "Always",
                "env": env,
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }}});
    let mut value = serde_json::to_value(&set)?;
    json_merge(&mut value, &patch);
    set = serde_json::from_value(value)?;
    Ok(set)
}

fn json_merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A bed, a kubelet running the elector sidecars, a namespace and an observer.
pub struct Pair {
    pub bed: Bed,
    pub kubelet: Kubelet,
    pub client: Client,
    pub namespace: String,
    pub statefulset: String,
    pub observer: Observer,
    /// The in-process webhook, when started with `PairOptions::webhook`.
    pub webhook: Option<Webhook>,
}

impl Pair {
    /// Starts `replicas` electors at once (Parallel pod management) with elector `env`.
    pub async fn start(replicas: i32, env: &[(&str, &str)]) -> anyhow::Result<Pair> {
        Pair::start_with(replicas, env, PairOptions::default()).await
    }

    pub async fn start_with(replicas: i32, env: &[(&str, &str)], options: PairOptions) -> anyhow::Result<Pair> {
        let bed = Bed::start_with(crate::bed::BedOptions { audit: options.audit, ..Default::default() }).await?;
        let kubelet = Kubelet::start(&bed, "bed-node").await?;
        kubelet.add_runner(Runner {
            container: contract::SIDECAR_CONTAINER.into(),
            program: options.program.unwrap_or_else(|| elector_binary(options.release)),
            env: options.runner_env.unwrap_or_else(|| {
                vec![
                    ("ELECTOR_PROBE_ADDR".into(), "off".into()),
                    ("ELECTOR_LOG_FORMAT".into(), "text".into()),
                    ("ELECTOR_LOG".into(), "info,ldap_elector=debug".into()),
                ]
            }),
        });
        let client = bed.admin_client()?;
        let namespace = "ldap".to_string();
        let statefulset = "ldap-server".to_string();
        fixtures::namespace(&client, &namespace, Some("restricted")).await?;
        let mut observer = Observer::start(client.clone(), &namespace, &format!("app={statefulset}"));
        let sets = Api::<StatefulSet>::namespaced(client.clone(), &namespace);
        if options.policies {
            crate::workloads::policies::install(&bed).await?;
        }
        let webhook = if options.webhook {
            let webhook = Webhook::start(&bed).await?;
            webhook.register(&bed, &namespace, "Fail").await?;
            Api::<Service>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &fixtures::service(WRITE_SERVICE, json!({"app": statefulset}))?)
                .await?;
            observer.watch_service(client.clone(), &namespace, WRITE_SERVICE);
            let annotations =
                json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: WRITE_SERVICE});
            // Applied together with the Service, which does not select the leader yet: the
            // webhook holds the pods back until the reconciler has added the selector.
            let mut set = fixtures::statefulset(&statefulset, replicas, annotations)?;
            if let Some(template) = set.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
                let ldap = &mut template.containers[0];
                ldap.env = Some(
                    env.iter()
                        .map(|(k, v)| EnvVar { name: k.to_string(), value: Some(v.to_string()), ..Default::default() })
                        .collect(),
                );
            }
            sets.create(&PostParams::default(), &set).await?;
            Some(webhook)
        } else {
            create_identity(&client, &namespace, &statefulset, replicas as u32).await?;
            sets.create(&PostParams::default(), &elected_statefulset(&statefulset, replicas, env)?).await?;
            None
        };
        Ok(Pair { bed, kubelet, client, namespace, statefulset, observer, webhook })
    }

    pub fn pod(&self, ordinal: u32) -> String {
        contract::pod_name(&self.statefulset, ordinal)
    }

    /// Sends a signal to the elector of `pod`.
    pub fn signal(&self, pod: &str, signal: crate::bed::process::Signal) -> bool {
        self.kubelet.signal(&self.namespace, pod, contract::SIDECAR_CONTAINER, signal)
    }

    /// The elector log of `pod`.
    pub fn log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.kubelet.log_path(&self.namespace, pod, contract::SIDECAR_CONTAINER))
            .unwrap_or_default()
    }

    /// Scales the StatefulSet.
    pub async fn scale(&self, replicas: i32) -> anyhow::Result<()> {
        Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
            .patch(&self.statefulset, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}})))
            .await?;
        Ok(())
    }

    /// Waits for a single leader, bounded.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<String> {
        self.observer.wait_for_single_leader(timeout).await
    }

    /// Waits up to `timeout` for another pod than `old` to be labelled leader after `fault`;
    /// that pod and when its label was seen (see [`Observer::wait_for_new_leader`]).
    pub async fn wait_for_new_leader(
        &self,
        old: &str,
        fault: Instant,
        timeout: Duration,
    ) -> anyhow::Result<(String, Instant)> {
        self.observer.wait_for_new_leader("another pod labelled leader", Some(old), fault, timeout).await
    }
}

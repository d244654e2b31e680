//! Nubus' primary LDAP servers on the real node (issue 16): installed as its chart would
//! ([`manifests`], with `local` PersistentVolumes for its claims), running the proof of
//! concept's stand-in, then adopted by docs/nubus.md's commands, run as the page shows them:
//! `kubectl annotate` of the live StatefulSet and `kubectl rollout restart` — no template
//! change. As a
//! [`Fixture`](crate::node::consumer::scenario::Fixture) the scenario measures it like the
//! plain consumer, from the end of the rollout on.

pub mod manifests;

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ldap_elector_contract as contract;
use serde_json::json;

use crate::bed::process::run;
use crate::node::consumer::manifests::restricted_namespace;
use crate::node::consumer::scenario::Fixture;
use crate::node::consumer::{cluster_ip, Consumer, Target};
use crate::node::images::Images;
use crate::node::volumes;
use crate::workloads::nubus::{Nubus, MAIN};
use crate::Bed;
use manifests::{nubus, run_claim, NAMESPACE, RUN_CLAIM_SIZE};

/// Both pods Ready, before and after the rollout (OrderedReady: one after the other).
const PODS_TIMEOUT: Duration = Duration::from_secs(180);

/// The fixture: Nubus' shape, adopted by annotations.
pub struct NubusOnNode {
    /// docs/nubus.md's `readonly on` in the data database's section of slapd.conf (the
    /// consumer's one-line change that closes the window in which a slapd started from
    /// slapd.conf takes writes before the elector fences it).
    pub start_read_only: bool,
    /// `syncprov-sessionlog 100` on the data database, as Nubus ships it (docs/nubus.md
    /// asks to remove it: it can lose changes silently, docs/divergence.md).
    pub session_log: bool,
}

impl NubusOnNode {
    /// As Nubus ships it: no change to its templates.
    pub const AS_SHIPPED: NubusOnNode = NubusOnNode { start_read_only: false, session_log: true };
    /// With docs/nubus.md's two changes to slapd.conf: `readonly on` for the data database,
    /// no session log.
    pub const CHANGED_AS_DOCUMENTED: NubusOnNode = NubusOnNode { start_read_only: true, session_log: false };
}

impl Fixture for NubusOnNode {
    fn target(&self) -> Target {
        let n = nubus();
        Target {
            namespace: NAMESPACE.into(),
            statefulset: n.statefulset_name(),
            write_service: n.write_service_name(),
            pod_selector: n.pod_selector(),
            slapd_container: MAIN.into(),
            container_port: manifests::LDAP_PORT,
            service_port: crate::workloads::nubus::LDAP_PORT,
        }
    }

    async fn install(&self, bed: &Bed, images: &Images) -> anyhow::Result<Consumer> {
        let consumer = install(bed, images, self.target(), self).await?;
        adopt(bed, &consumer).await?;
        Ok(consumer)
    }
}

/// Installs the consumer as its chart would (namespace, claims' volumes, ServiceAccount,
/// Services, ConfigMap, StatefulSet) and waits until both pods are Ready, the proof of
/// concept's stand-in running.
pub async fn install(bed: &Bed, images: &Images, target: Target, conf: &NubusOnNode) -> anyhow::Result<Consumer> {
    let n = nubus();
    let client = bed.admin_client()?;
    let node = bed.real_node.as_ref().context("no real node")?;
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone()).create(&pp, &restricted_namespace(NAMESPACE)?).await?;
    let claims: Vec<String> = (0..2).map(|i| run_claim(&n, i)).collect();
    volumes::create_local_volumes(&client, node, NAMESPACE, &claims, RUN_CLAIM_SIZE).await?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE).create(&pp, &n.service_account()?).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let mut peer_ips = [String::new(), String::new()];
    for (ip, svc) in peer_ips.iter_mut().zip(n.provider_services()?) {
        *ip = cluster_ip(&services.create(&pp, &svc).await?)?;
    }
    let write_ip = cluster_ip(&services.create(&pp, &n.write_service()?).await?)?;
    Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .create(&pp, &manifests::config_map(&peer_ips, conf)?)
        .await?;
    let sts = manifests::statefulset(&n, &images.openldap)?;
    Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE).create(&pp, &sts).await?;
    let consumer = Consumer::new(client, target, write_ip, peer_ips);
    consumer.wait_ready(PODS_TIMEOUT).await.context("the consumer before adoption")?;
    Ok(consumer)
}

/// Adopts the running consumer as docs/nubus.md's migration does: the proof of concept has
/// pinned its pod in the write Service (the test plays that part: the stand-in does not
/// talk to the API), then the page's commands as written (`kubectl annotate` of the live
/// StatefulSet, `rollout restart`, `rollout status`); returns once both pods are injected and
/// Ready.
pub async fn adopt(bed: &Bed, consumer: &Consumer) -> anyhow::Result<()> {
    pin_write_service(&bed.admin_client()?, &nubus(), 0).await?;
    let commands = manifests::documented_adoption()?;
    let mut bash = std::process::Command::new("bash");
    bash.args(["-euo", "pipefail", "-c", &commands]).env("KUBECONFIG", &bed.kubeconfig);
    bash.env("PATH", format!("{}:{}", bed.bin.display(), std::env::var("PATH").unwrap_or_default()));
    tokio::task::spawn_blocking(move || run(&mut bash, None)).await?.context("docs/nubus.md's adoption commands")?;
    consumer.wait_ready(PODS_TIMEOUT).await?;
    for ordinal in 0..2 {
        let pod = consumer.pods().get(&consumer.pod_name(ordinal)).await?;
        let status = pod.metadata.annotations.unwrap_or_default().get(contract::ANNOTATION_STATUS).cloned();
        anyhow::ensure!(
            status.as_deref() == Some(contract::STATUS_INJECTED),
            "{} not injected after the rollout",
            consumer.pod_name(ordinal)
        );
    }
    Ok(())
}

/// What the proof of concept does as leader: the write Service's pod-name key set to its pod.
pub async fn pin_write_service(client: &Client, n: &Nubus, ordinal: u32) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = contract::pod_name(&n.statefulset_name(), ordinal);
    let patch = json!({"spec": {"selector": {contract::LABEL_STATEFULSET_POD_NAME: pod}}});
    services.patch(&n.write_service_name(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

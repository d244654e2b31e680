//! The consumer as a user runs it on the real node: the chart installed with helm (unchanged,
//! only [`crate::node::images::Images::helm_set_args`]), then a Mirror-Mode pair of real slapd
//! containers opted in by annotations ([`manifests`]), and the faults the e2e tests inject
//! from the host ([`faults`]). [`scenario`] measures any consumer described by a [`Target`]
//! and installed by a [`scenario::Fixture`] (this one, or Nubus' shape: `node::nubus`).

pub mod faults;
pub mod manifests;
pub mod scenario;

use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::bed::process::run;
use crate::node::images::Images;
use crate::{wait_for, Bed};
pub use manifests::{pod_name, server_id, NAMESPACE, STATEFULSET, WRITE_SERVICE};

/// The chart's release and namespace.
pub const RELEASE: &str = "ldap-elector";
pub const RELEASE_NAMESPACE: &str = "ldap-elector-system";
/// The chart's webhook configuration (values.yaml `webhookConfiguration.name`).
const WEBHOOK_CONFIG: &str = "ldap-elector";
/// The chart's controller Deployment (`<fullname>-controller`).
const CONTROLLER: &str = "ldap-elector-controller";
const CHART_TIMEOUT: Duration = Duration::from_secs(150);
const PODS_TIMEOUT: Duration = Duration::from_secs(120);

/// `helm install` of charts/ldap-elector with the local images; waits until the webhook's
/// Deployment is available, its configuration carries a CA bundle and the controller's
/// Deployment (reconciler, certificate) is available.
pub async fn install_chart(bed: &Bed, images: &Images) -> anyhow::Result<()> {
    let chart = crate::repo_root().join("charts/ldap-elector");
    let mut helm = bed.helm();
    helm.args(["install", RELEASE])
        .arg(&chart)
        .args(["--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait"])
        .arg(format!("--timeout={}s", CHART_TIMEOUT.as_secs()))
        .args(images.helm_set_args());
    tokio::task::spawn_blocking(move || run(&mut helm, None)).await?.context("helm install of the chart")?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(bed.admin_client()?);
    wait_for("the webhook configuration's caBundle", CHART_TIMEOUT, || async {
        let mwc = configs.get(WEBHOOK_CONFIG).await.map_err(|e| e.to_string())?;
        let webhooks = mwc.webhooks.unwrap_or_default();
        if !webhooks.is_empty()
            && webhooks.iter().all(|w| w.client_config.ca_bundle.as_ref().is_some_and(|b| !b.0.is_empty()))
        {
            Ok(())
        } else {
            Err("caBundle not set yet".to_string())
        }
    })
    .await?;
    // `--wait` covers it too; explicit, so a controller that never becomes available is
    // named as such rather than as a missing caBundle or an uninjected pod later.
    let deployments: Api<Deployment> = Api::namespaced(bed.admin_client()?, RELEASE_NAMESPACE);
    wait_for("the controller's Deployment available", CHART_TIMEOUT, || async {
        let deployment = deployments.get(CONTROLLER).await.map_err(|e| e.to_string())?;
        let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = deployment.status.unwrap_or_default();
        if status.available_replicas.unwrap_or(0) >= wanted && status.updated_replicas.unwrap_or(0) >= wanted {
            Ok(())
        } else {
            Err(format!("{wanted} wanted; status: {status:?}"))
        }
    })
    .await
}

/// What the observers need to know of a consumer on the real node: where its pods and its
/// write Service are, which container runs slapd and on which port.
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    pub statefulset: String,
    pub write_service: String,
    /// A label selector of the StatefulSet's pods (the observer's watch).
    pub pod_selector: String,
    pub slapd_container: String,
    /// slapd's port in the container (the prober connects to the pod IPs).
    pub container_port: u16,
    /// The write Service's port.
    pub service_port: u16,
}

impl Target {
    /// Pod `ordinal` of the StatefulSet.
    pub fn pod_name(&self, ordinal: usize) -> String {
        ldap_elector_contract::pod_name(&self.statefulset, ordinal as u32)
    }
}

/// The installed consumer.
pub struct Consumer {
    client: Client,
    pub target: Target,
    /// ClusterIP of the write Service.
    pub write_ip: String,
    /// ClusterIPs of the per-pod Services (replication).
    pub peer_ips: [String; 2],
}

impl Consumer {
    /// Creates the namespace, Services, ConfigMap and StatefulSet (the chart must be
    /// installed) and waits until both pods are Ready.
    pub async fn install(bed: &Bed, images: &Images, lease_duration: &str) -> anyhow::Result<Consumer> {
        let client = bed.admin_client()?;
        let pp = PostParams::default();
        Api::<Namespace>::all(client.clone()).create(&pp, &manifests::namespace()?).await?;
        let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
        let mut peer_ips = [String::new(), String::new()];
        for (ordinal, ip) in peer_ips.iter_mut().enumerate() {
            *ip = cluster_ip(&services.create(&pp, &manifests::peer_service(ordinal)?).await?)?;
        }
        let write_ip = cluster_ip(&services.create(&pp, &manifests::write_service()?).await?)?;
        let openldap = (images.openldap_uid, images.openldap_gid);
        Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .create(&pp, &manifests::config_map(&peer_ips, openldap)?)
            .await?;
        let sts = manifests::statefulset(&images.openldap, openldap, lease_duration)?;
        Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE).create(&pp, &sts).await?;
        let consumer = Consumer::new(client, manifests::target(), write_ip, peer_ips);
        consumer.wait_ready(PODS_TIMEOUT).await?;
        Ok(consumer)
    }

    /// A consumer installed by other means (a [`scenario::Fixture`]).
    pub fn new(client: Client, target: Target, write_ip: String, peer_ips: [String; 2]) -> Consumer {
        Consumer { client, target, write_ip, peer_ips }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.target.namespace)
    }

    /// Pod `ordinal` of the consumer's StatefulSet.
    pub fn pod_name(&self, ordinal: usize) -> String {
        self.target.pod_name(ordinal)
    }

    /// `ldap://<write Service ClusterIP>:<port>`.
    pub fn write_url(&self) -> String {
        format!("ldap://{}:{}", self.write_ip, self.target.service_port)
    }

    /// Waits until both pods are Ready (all containers, the sidecar included).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let pods = self.pods();
        wait_for("both slapd pods Ready", timeout, || async {
            let mut seen = Vec::new();
            for ordinal in 0..2 {
                let name = self.pod_name(ordinal);
                let pod = pods.get_opt(&name).await.map_err(|e| e.to_string())?;
                let ready = pod.as_ref().is_some_and(is_ready);
                seen.push(format!("{name}: {}", pod.as_ref().map(summary).unwrap_or_else(|| "absent".into())));
                if !ready {
                    return Err(seen.join("; "));
                }
            }
            Ok(())
        })
        .await
    }

    /// The uid of pod `ordinal` now (to tell its replacement apart).
    pub async fn pod_uid(&self, ordinal: usize) -> anyhow::Result<Option<String>> {
        Ok(self.pods().get_opt(&self.pod_name(ordinal)).await?.and_then(|p| p.metadata.uid))
    }

    /// Waits until pod `ordinal` is a new pod (not uid `old`) and Ready: a deleted pod stays
    /// Ready while it hands over, so "both Ready" alone may still see the old one.
    pub async fn wait_replaced(&self, ordinal: usize, old: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
        let pods = self.pods();
        wait_for("the re-created pod to be Ready", timeout, || async {
            match pods.get_opt(&self.pod_name(ordinal)).await {
                Ok(Some(p)) if p.metadata.uid.as_deref() != old && is_ready(&p) => Ok(()),
                Ok(p) => Err(p.map(|p| summary(&p)).unwrap_or_else(|| "absent".into())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// The pod IP of pod `ordinal`, if it has one.
    pub async fn pod_ip(&self, ordinal: usize) -> anyhow::Result<Option<String>> {
        let pod = self.pods().get_opt(&self.pod_name(ordinal)).await?;
        Ok(pod.and_then(|p| p.status).and_then(|s| s.pod_ip))
    }

    /// `ldap://<pod IP>:<port>` of both pods (slapd's own port, not the Service's).
    pub async fn pod_urls(&self) -> anyhow::Result<[String; 2]> {
        let port = self.target.container_port;
        Ok([self.pod_ip(0).await?, self.pod_ip(1).await?].map(|ip| format!("ldap://{}:{port}", ip.unwrap_or_default())))
    }
}

/// The ClusterIP of a created Service.
pub fn cluster_ip(service: &Service) -> anyhow::Result<String> {
    match service.spec.as_ref().and_then(|s| s.cluster_ip.clone()) {
        Some(ip) if ip != "None" && !ip.is_empty() => Ok(ip),
        other => bail!("Service without a ClusterIP: {other:?}"),
    }
}

/// Pod condition Ready = True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Phase and container states, for wait messages.
pub fn summary(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else { return "no status".into() };
    let states = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|c| {
            let state = c.state.as_ref().map_or("?".to_string(), |s| {
                if let Some(w) = &s.waiting {
                    format!("waiting {}", w.reason.clone().unwrap_or_default())
                } else if let Some(t) = &s.terminated {
                    format!("terminated {} ({})", t.exit_code, t.reason.clone().unwrap_or_default())
                } else {
                    "running".into()
                }
            });
            format!("{}={state} ready={} restarts={}", c.name, c.ready, c.restart_count)
        })
        .collect::<Vec<_>>();
    format!("{} [{}]", status.phase.clone().unwrap_or_default(), states.join(", "))
}

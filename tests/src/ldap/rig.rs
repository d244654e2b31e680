//! The OpenLDAP integration on the bed, configured only by the webhook: a real Mirror-Mode
//! slapd pair, the bed, a test kubelet running the elector binary, the in-process webhook
//! (registered `Fail`), the write Service and a StatefulSet annotated for injection with the
//! ldapi socket directory and the suffix. Shared by `openldap_injection.rs` and `switchover.rs`.
//!
//! How a pod's socket directory reaches the local machine: the kubelet gives every pod
//! volume a directory (`Kubelet::map_volumes`) and rewrites paths under a container's mounts
//! in its environment; the socket volume's directory of pod `o` is a symlink to slapd node
//! `o + 1`'s directory, in which that slapd creates its `ldapi` socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ldap_elector_contract as contract;
use serde_json::json;

use crate::bed::kubelet::Runner;
use crate::ldap::slapd::{self, MirrorPair, SlapdNode, SUFFIX};
use crate::measure::observer::Observer;
use crate::workloads::build::elector_binary;
use crate::workloads::electors::WRITE_SERVICE;
use crate::workloads::fixtures;
use crate::workloads::webhook::Webhook;
use crate::{wait_for, Bed, Kubelet};

pub const NAMESPACE: &str = "ldap";
pub const STATEFULSET: &str = "ldap-server";
/// Where the pods' slapd creates its ldapi socket (the annotation's value).
pub const SOCKET_DIR: &str = "/run/slapd";
/// How long the webhook may hold the pods back until the write Service selects the leader.
const ADMIT: Duration = Duration::from_secs(60);

pub struct LdapRig {
    pub slapd: MirrorPair,
    pub kubelet: Kubelet,
    pub client: Client,
    pub observer: Observer,
    pub bed: Bed,
    _webhook: Webhook,
}

impl LdapRig {
    /// Starts everything; the StatefulSet starts with 0 replicas and is scaled to 2 once the
    /// write Service selects the leader label (the webhook would hold the pods back until
    /// then, and the StatefulSet controller's retry backoff only slows the test down).
    /// `sync_timeout`: the syncrepl `timeout=` of the pair (seconds).
    pub async fn start(sync_timeout: u32) -> anyhow::Result<LdapRig> {
        LdapRig::start_with(sync_timeout, false).await
    }

    /// [`LdapRig::start`], optionally on a bed with a pod network (`pod_network`): each
    /// elector then serves its probe port on its pod's own address, where the test kubelet
    /// calls the injected `preStop` hooks.
    pub async fn start_with(sync_timeout: u32, pod_network: bool) -> anyhow::Result<LdapRig> {
        let slapd = MirrorPair::start(slapd::PairOptions::default().sync_timeout(sync_timeout)).await?;
        let bed = Bed::start_with(crate::bed::BedOptions { pod_network, ..Default::default() }).await?;
        let kubelet = Kubelet::start(&bed, "bed-node").await?;
        // Under the pair's directory: short enough for socket paths.
        kubelet.map_volumes(slapd.dir.join("pods"));
        for o in 0..2u32 {
            let pod = contract::pod_name(STATEFULSET, o);
            let dir =
                kubelet.volume_dir(NAMESPACE, &pod, contract::LDAPI_VOLUME).context("the kubelet maps volumes")?;
            std::fs::create_dir_all(dir.parent().context("volume directory has a parent")?)?;
            std::os::unix::fs::symlink(slapd.node(o + 1).dir(), &dir)?;
            let socket: PathBuf = dir.join(contract::LDAPI_SOCKET_NAME);
            anyhow::ensure!(socket.exists(), "slapd {} has no socket at {}", o + 1, socket.display());
            anyhow::ensure!(
                socket.as_os_str().len() <= 107,
                "socket path {} too long; set LDAP_ELECTOR_BED_DIR to a shorter directory",
                socket.display()
            );
        }
        // The injected environment as it is, plus log settings; the probe server off without
        // a pod network, since two local electors cannot both listen on the injected port.
        let mut env = vec![
            (contract::ENV_LOG_FORMAT.into(), "text".into()),
            ("ELECTOR_LOG".into(), "info,ldap_elector=debug".into()),
        ];
        if !pod_network {
            env.push((contract::ENV_PROBE_ADDR.into(), "off".into()));
        }
        kubelet.add_runner(Runner {
            container: contract::SIDECAR_CONTAINER.into(),
            program: elector_binary(false),
            env,
        });

        let client = bed.admin_client()?;
        fixtures::namespace(&client, NAMESPACE, Some("restricted")).await?;
        let mut observer = Observer::start(client.clone(), NAMESPACE, &format!("app={STATEFULSET}"));
        let webhook = Webhook::start(&bed).await?;
        webhook.register(&bed, NAMESPACE, "Fail").await?;
        let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
        services
            .create(&PostParams::default(), &fixtures::service(WRITE_SERVICE, json!({"app": STATEFULSET}))?)
            .await?;
        observer.watch_service(client.clone(), NAMESPACE, WRITE_SERVICE);

        let annotations = json!({
            contract::ANNOTATION_INJECT: "true",
            contract::ANNOTATION_LEADER_SERVICE: WRITE_SERVICE,
            contract::ANNOTATION_LDAPI_SOCKET_DIR: SOCKET_DIR,
            contract::ANNOTATION_LDAP_SUFFIX: SUFFIX,
        });
        let sets = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE);
        sets.create(&PostParams::default(), &fixtures::statefulset(STATEFULSET, 0, annotations)?).await?;
        wait_for("the write Service to select the leader label", ADMIT, || async {
            let svc = services.get(WRITE_SERVICE).await.map_err(|e| e.to_string())?;
            let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
            match selector.get(contract::LABEL_ROLE) {
                Some(role) if role == contract::ROLE_LEADER => Ok(()),
                _ => Err(format!("selector {selector:?}")),
            }
        })
        .await?;
        sets.patch(STATEFULSET, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await?;
        Ok(LdapRig { slapd, kubelet, client, observer, bed, _webhook: webhook })
    }

    /// The slapd of `pod` (ordinal `o` ↔ node `o + 1`).
    pub fn node(&self, pod: &str) -> &SlapdNode {
        self.slapd.node(ordinal(pod) + 1)
    }

    /// The last lines of both electors' logs, for failure messages.
    pub fn logs(&self) -> String {
        (0..2)
            .map(|o| {
                let pod = contract::pod_name(STATEFULSET, o);
                let path = self.kubelet.log_path(NAMESPACE, &pod, contract::SIDECAR_CONTAINER);
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!("--- {} ---\n{}", path.display(), lines[lines.len().saturating_sub(15)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (up to `bound`) until `leader`'s slapd is writable and `standby`'s read-only, as
    /// cn=config says (`olcReadOnly`, read over ldapi as root).
    pub async fn wait_fences(&self, leader: &str, standby: &str, bound: Duration) -> anyhow::Result<()> {
        let what = format!("{leader}'s slapd writable and {standby}'s read-only");
        wait_for(&what, bound, || async {
            let read_only = |pod: &str| {
                let node = self.node(pod);
                async move { node.root().await?.read_only().await }
            };
            match (read_only(leader).await, read_only(standby).await) {
                (Ok(false), Ok(true)) => Ok(()),
                (l, s) => Err(format!(
                    "olcReadOnly of {leader}: {:?}, of {standby}: {:?}",
                    l.map_err(|e| e.to_string()),
                    s.map_err(|e| e.to_string())
                )),
            }
        })
        .await
        .with_context(|| self.logs())
    }
}

/// The StatefulSet ordinal of `pod` (`u32::MAX` for another name).
pub fn ordinal(pod: &str) -> u32 {
    contract::split_pod_name(pod).map_or(u32::MAX, |(_, o)| o)
}

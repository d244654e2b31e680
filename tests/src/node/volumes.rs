//! PersistentVolumes for the real node: static `local` volumes, each a directory under the
//! machine dir and pre-bound to the claim a StatefulSet's `volumeClaimTemplates` will create
//! (`<template>-<statefulset>-<ordinal>`), so no provisioner is needed. `local` and not
//! `hostPath`: the kubelet applies the pod's `fsGroup` to a `local` volume (group owner,
//! setgid, group rw), as it would to a provisioned one; a `hostPath` is left as it is.
//!
//! The objects go with the bed's etcd; the directories with the machine dir
//! (`node::cleanup`), also after a crashed run.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use super::RealNode;

/// Where the volumes' directories live, under the machine dir.
const VOLUMES_DIR: &str = "volumes";
/// Kubernetes' node label with the node's name (the kubelet's `--hostname-override`).
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A `local` PersistentVolume of `size` on `node` at `path`, reserved for the claim
/// `namespace/claim` (its `claimRef`): the binder gives it to that claim only.
pub fn local_volume(
    name: &str,
    node: &str,
    path: &str,
    size: &str,
    namespace: &str,
    claim: &str,
) -> anyhow::Result<PersistentVolume> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "claimRef": {"namespace": namespace, "name": claim},
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]},
            ]}]}},
        },
    }))?)
}

/// The directory of the volume [`create_local_volumes`] made for `namespace/claim`.
pub fn local_volume_dir(node: &RealNode, namespace: &str, claim: &str) -> std::path::PathBuf {
    node.layout().path(VOLUMES_DIR).join(volume_name(namespace, claim))
}

fn volume_name(namespace: &str, claim: &str) -> String {
    format!("{namespace}-{claim}")
}

/// Creates the directory and the PersistentVolume for each claim in `namespace` (named
/// `<namespace>-<claim>`). The directories are root's, mode 0755: only the kubelet's
/// `fsGroup` handling lets the pod's non-root user write there.
pub async fn create_local_volumes(
    client: &Client,
    node: &RealNode,
    namespace: &str,
    claims: &[String],
    size: &str,
) -> anyhow::Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for claim in claims {
        let name = volume_name(namespace, claim);
        let dir = local_volume_dir(node, namespace, claim);
        std::fs::create_dir_all(&dir)?;
        let path = dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", dir.display()))?;
        pvs.create(&PostParams::default(), &local_volume(&name, node.name(), path, size, namespace, claim)?).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_volume_is_reserved_for_its_claim_on_the_node() {
        let pv = local_volume("v", "real-node", "/x/v", "16Mi", "ns", "run-sts-0").unwrap();
        let spec = pv.spec.unwrap();
        let claim = spec.claim_ref.unwrap();
        assert_eq!((claim.namespace.as_deref(), claim.name.as_deref()), (Some("ns"), Some("run-sts-0")));
        assert_eq!(spec.storage_class_name.as_deref(), Some(""), "claims without a class bind to it");
        assert_eq!(spec.local.unwrap().path, "/x/v");
        let term = &spec.node_affinity.unwrap().required.unwrap().node_selector_terms[0];
        assert_eq!(term.match_expressions.as_ref().unwrap()[0].values, Some(vec!["real-node".to_string()]));
    }
}

//! Adopting a consumer of Univention Nubus' shape (issue 16) on the process bed, with no
//! change to its templates: installed as its chart would, running its proof-of-concept
//! elector; then opted in by annotations on the live StatefulSet (`kubectl annotate`) and a
//! `kubectl rollout restart`. One leader; the write Service, created with a placeholder
//! pod-name selector, selects exactly the leader (the placeholder replaced, not kept beside
//! ours); the proof of concept is gone from the pods (never two electors); the consumer's
//! `main` container keeps its own ServiceAccount's token. While no pod runs our elector yet,
//! the empty write Service raises an Event and a metric. Opting out restores it all.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use ldap_elector_contract as contract;
use ldap_elector_contract::metric;
use ldap_elector_tests::measure::observer::Observer;
use ldap_elector_tests::workloads::nubus::{self, Nubus};
use ldap_elector_tests::workloads::webhook::{http_get, injecting};
use ldap_elector_tests::{wait_for, Bed};
use serde_json::json;

const T: Duration = Duration::from_secs(120);
const NS: &str = "nubus";

/// The ready endpoints of `service` (pod names).
async fn ready_endpoints(client: &Client, service: &str) -> Result<Vec<String>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let selector = format!("kubernetes.io/service-name={service}");
    let list = slices.list(&ListParams::default().labels(&selector)).await.map_err(|e| e.to_string())?;
    let mut ready: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()))
        .collect();
    ready.sort();
    Ok(ready)
}

/// `kubectl rollout restart`: a new template annotation, nothing else. Returns the
/// StatefulSet's new generation.
async fn rollout_restart(sets: &Api<StatefulSet>, name: &str, round: u32) -> anyhow::Result<i64> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": format!("round-{round}")}}}}});
    let sts = sets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(sts.metadata.generation.unwrap_or_default())
}

/// Waits until the StatefulSet controller has seen `generation` and every pod is of the
/// current revision and ready, and returns them.
async fn wait_rolled_out(
    client: &Client,
    sets: &Api<StatefulSet>,
    nubus: &Nubus,
    generation: i64,
) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for("the rollout to finish", T, || async {
        let sts = sets.get(&nubus.statefulset_name()).await.map_err(|e| e.to_string())?;
        let status = sts.status.unwrap_or_default();
        let done = status.observed_generation >= Some(generation)
            && status.update_revision.is_some()
            && status.current_revision == status.update_revision
            && status.updated_replicas == Some(nubus.replicas)
            && status.ready_replicas == Some(nubus.replicas);
        if !done {
            return Err(format!("status: {status:?}"));
        }
        let list = pods.list(&ListParams::default().labels(&nubus.pod_selector())).await.map_err(|e| e.to_string())?;
        let revision = status.update_revision.unwrap_or_default();
        let current: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.labels().get("controller-revision-hash") == Some(&revision))
            .collect();
        if current.len() == nubus.replicas as usize {
            Ok(current)
        } else {
            Err(format!("{} pods of revision {revision}", current.len()))
        }
    })
    .await
}

fn container_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers.iter().flatten().chain(spec.containers.iter()).map(|c| c.name.clone()).collect()
}

fn has_token(pod: &Pod, container: &str) -> bool {
    let spec = pod.spec.clone().unwrap_or_default();
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter()).cloned().collect::<Vec<_>>();
    all.iter()
        .find(|c| c.name == container)
        .is_some_and(|c| c.volume_mounts.iter().flatten().any(|m| m.mount_path == contract::TOKEN_MOUNT_PATH))
}

/// The API server omits `false`.
fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false)
}

fn selector(svc: &Service) -> serde_json::Value {
    json!(svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotating_the_live_statefulset_adopts_it_and_opting_out_restores_it() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let (_kubelet, admin, webhook) = injecting(&bed, NS).await?;
    let controller_port = webhook.controller_port()?;

    // Installed as its chart would, before anyone thinks of ldap-elector.
    let nubus = Nubus::new("nubus");
    nubus.install(&admin, NS).await?;
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let write = nubus.write_service_name();
    let before = wait_rolled_out(&admin, &sets, &nubus, 1).await?;
    for pod in &before {
        assert!(container_names(pod).contains(&nubus::POC_ELECTOR.to_string()), "{}", pod.name_any());
        assert!(has_token(pod, nubus::MAIN), "{}: the consumer's own token", pod.name_any());
    }
    let original = selector(&services.get(&write).await?);

    // `kubectl annotate statefulset ... ` + `kubectl rollout restart`: no template change.
    let mut observer = Observer::start(admin.clone(), NS, &nubus.pod_selector());
    observer.watch_service(admin.clone(), NS, &write);
    let annotate = json!({"metadata": {"annotations": nubus.opt_in_annotations()}});
    sets.patch(&nubus.statefulset_name(), &PatchParams::default(), &Patch::Merge(&annotate)).await?;

    // Until a pod runs our elector, nobody is leader: the write Service selects no pod. Past
    // a failover's time that is loud: an Event on the StatefulSet and a metric.
    let gauge = format!("{}{{namespace=\"{NS}\",service=\"{write}\"}} 1", metric::WEBHOOK_LEADER_SERVICE_EMPTY);
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    wait_for("Event LeaderServiceEmpty and the gauge", T, || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let event = list.items.iter().find(|e| {
            e.reason.as_deref() == Some(contract::EVENT_LEADER_SERVICE_EMPTY)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(nubus.statefulset_name().as_str())
                && e.note.as_deref().is_some_and(|n| n.contains(&write))
        });
        let metrics = http_get(controller_port, "/metrics").await?;
        match (event, metrics.contains(&gauge)) {
            (Some(_), true) => Ok(()),
            (event, gauge) => Err(format!("event {:?}, gauge {gauge}", event.map(|e| &e.note))),
        }
    })
    .await?;

    let generation = rollout_restart(&sets, &nubus.statefulset_name(), 1).await?;
    let adopted = wait_rolled_out(&admin, &sets, &nubus, generation).await?;
    let leader = observer.wait_for_single_leader(T).await?;

    // The write Service selects exactly the leader: the placeholder is replaced.
    let svc = services.get(&write).await?;
    let mut want = nubus.selector_labels();
    want[contract::LABEL_ROLE] = json!(contract::ROLE_LEADER);
    assert_eq!(selector(&svc), want, "the placeholder is replaced, not kept beside ours");
    let recorded = svc.annotations().get(contract::ANNOTATION_REPLACED_SELECTOR).cloned().unwrap_or_default();
    assert!(recorded.contains(nubus::PLACEHOLDER), "recorded for the opt-out: {recorded:?}");
    assert!(publishes_not_ready(&svc), "the leader's endpoint does not wait for readiness");
    wait_for(&format!("{write} to list exactly {leader}"), T, || async {
        match ready_endpoints(&admin, &write).await?.as_slice() {
            [one] if *one == leader => Ok(()),
            other => Err(format!("ready endpoints: {other:?}")),
        }
    })
    .await?;

    // Never two electors; the consumer's container keeps its own account's token; the pod
    // keeps its own account (the reconciler binds the elector Role to it).
    for pod in &adopted {
        let name = pod.name_any();
        let containers = container_names(pod);
        assert!(containers.contains(&contract::SIDECAR_CONTAINER.to_string()), "{name}: {containers:?}");
        assert!(!containers.contains(&nubus::POC_ELECTOR.to_string()), "{name}: two electors: {containers:?}");
        assert!(has_token(pod, nubus::MAIN), "{name}: main lost its token");
        assert!(has_token(pod, contract::SIDECAR_CONTAINER), "{name}: the elector has no token");
        let spec = pod.spec.clone().unwrap_or_default();
        assert_eq!(spec.service_account_name, Some(nubus.service_account_name()), "{name}");
    }
    observer.assert_never_two_leaders();
    wait_for("the gauge to clear", T, || async {
        let metrics = http_get(controller_port, "/metrics").await?;
        (!metrics.contains(&gauge)).then_some(()).ok_or_else(|| "still reported".to_string())
    })
    .await?;

    // Opt-out (rollback): annotation off + rollout restart; the placeholder comes back and
    // so does the proof of concept (the template was never changed).
    let opt_out = json!({"metadata": {"annotations": {contract::ANNOTATION_INJECT: "false"}}});
    sets.patch(&nubus.statefulset_name(), &PatchParams::default(), &Patch::Merge(&opt_out)).await?;
    let generation = rollout_restart(&sets, &nubus.statefulset_name(), 2).await?;
    let after = wait_rolled_out(&admin, &sets, &nubus, generation).await?;
    for pod in &after {
        assert!(container_names(pod).contains(&nubus::POC_ELECTOR.to_string()), "{}", pod.name_any());
    }
    wait_for(&format!("{write}'s selector restored"), T, || async {
        let svc = services.get(&write).await.map_err(|e| e.to_string())?;
        let restored = selector(&svc) == original
            && !svc.annotations().contains_key(contract::ANNOTATION_REPLACED_SELECTOR)
            && !svc.annotations().contains_key(contract::ANNOTATION_REPLACED_PUBLISH_NOT_READY)
            && !publishes_not_ready(&svc)
            && !svc.labels().contains_key(contract::LABEL_STATEFULSET);
        restored.then_some(()).ok_or_else(|| format!("{:?} {:?}", selector(&svc), svc.metadata.annotations))
    })
    .await?;
    Ok(())
}

//! The test bed is real: the StatefulSet and EndpointSlice controllers act, RBAC denies,
//! Pod Security enforces, and a bed leaves no process behind.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use ldap_elector_tests::workloads::fixtures;
use ldap_elector_tests::{wait_for, Bed, Kubelet};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_come_from_the_controller_and_endpointslice_lists_the_labelled_pod() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let _kubelet = Kubelet::start(&bed, "bed-node").await?;
    let client = bed.admin_client()?;
    fixtures::namespace(&client, "smoke", None).await?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "smoke");
    sets.create(&PostParams::default(), &fixtures::statefulset("ldap", 2, json!({}))?).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "smoke");
    services
        .create(&PostParams::default(), &fixtures::service("ldap-one", json!({"app": "ldap", "pick": "me"}))?)
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "smoke");
    let ready = wait_for("2 Ready pods created by the StatefulSet controller", T, || async {
        let list = pods.list(&ListParams::default().labels("app=ldap")).await.map_err(|e| e.to_string())?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.name_any())
            .collect();
        if ready.len() == 2 {
            Ok(list.items)
        } else {
            Err(format!("ready pods: {ready:?} of {}", list.items.len()))
        }
    })
    .await?;
    for pod in &ready {
        let owner = pod.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| o.kind.clone());
        assert_eq!(owner.as_deref(), Some("StatefulSet"), "{} not owned by the StatefulSet", pod.name_any());
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        assert!(ip.starts_with("192.0.2."), "placeholder IP from TEST-NET-1, got {ip}");
    }

    pods.patch("ldap-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"pick": "me"}}})))
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "smoke");
    let pod1_ip = ready.iter().find(|p| p.name_any() == "ldap-1").and_then(|p| p.status.clone()?.pod_ip).unwrap();
    wait_for("EndpointSlice of ldap-one lists exactly ldap-1", T, || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=ldap-one"))
            .await
            .map_err(|e| e.to_string())?;
        let endpoints: Vec<(String, Vec<String>)> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| (e.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_default(), e.addresses.clone()))
            .collect();
        if endpoints == vec![("ldap-1".to_string(), vec![pod1_ip.clone()])] {
            Ok(())
        } else {
            Err(format!("{endpoints:?}"))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_without_binding_is_forbidden_to_update_a_lease() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let client = bed.admin_client()?;
    fixtures::namespace(&client, "rbac", None).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "rbac");
    sas.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "nobody"}}))?).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "rbac");
    let lease = leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "some-lease"}, "spec": {}}))?,
        )
        .await?;

    let nobody: Api<Lease> = Api::namespaced(bed.service_account_client("rbac", "nobody").await?, "rbac");
    let err = nobody.replace("some-lease", &PostParams::default(), &lease).await.expect_err("update must be denied");
    match err {
        kube::Error::Api(e) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("expected 403 Forbidden, got {other}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_namespace_rejects_a_privileged_pod() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let client = bed.admin_client()?;
    fixtures::namespace(&client, "locked", Some("restricted")).await?;
    let pods: Api<Pod> = Api::namespaced(client, "locked");
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]},
    }))?;
    let err = pods.create(&PostParams::default(), &privileged).await.expect_err("must be rejected");
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(e.message.contains("violates PodSecurity \"restricted"), "{}", e.message);
        }
        other => panic!("expected a PodSecurity rejection, got {other}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_bed_leaves_no_process_and_two_beds_run_at_once() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(Bed::start(), Bed::start())?;
    assert_ne!(a.api_url, b.api_url);
    let pids: Vec<u32> = a.control_plane_pids().into_iter().chain(b.control_plane_pids()).collect();
    assert_eq!(pids.len(), 6, "etcd, apiserver and controller-manager per bed");
    let dirs = [a.dir.clone(), b.dir.clone()];
    drop(a);
    drop(b);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} survived its bed");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
    Ok(())
}

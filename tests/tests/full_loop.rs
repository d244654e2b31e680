//! The whole product on the real bed: the webhook (registered by URL on loopback) injects
//! the pods the real StatefulSet controller creates, the reconciler creates their identity
//! and points the write Service at the leader, the electors (local processes with their
//! pod-bound tokens) elect one leader, and the write Service's EndpointSlice follows it —
//! never listing two ready pods, even when the Service existed before the StatefulSet.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use ldap_elector_contract as contract;
use ldap_elector_tests::measure::observer::Observer;
use ldap_elector_tests::workloads::fixtures;
use ldap_elector_tests::workloads::webhook::injecting;
use ldap_elector_tests::{wait_for, Bed};
use serde_json::json;

const T: Duration = Duration::from_secs(90);
const NS: &str = "ldap";
const STS: &str = "ldap-server";
const PRIMARY: &str = "ldap-server-primary";
/// A second write Service, created after the StatefulSet.
const LATE: &str = "ldap-server-rw";

/// The ready endpoints of `service`, as (pod name, address).
async fn ready_endpoints(client: &Client, service: &str) -> Result<Vec<(String, String)>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| e.to_string())?;
    let mut ready: Vec<(String, String)> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .map(|e| {
            let pod = e.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_default();
            (pod, e.addresses.first().cloned().unwrap_or_default())
        })
        .collect();
    ready.sort();
    Ok(ready)
}

async fn wait_endpoints_are(client: &Client, pod: &str) -> anyhow::Result<()> {
    wait_for(&format!("{PRIMARY} to list exactly {pod}"), T, || async {
        let ready = ready_endpoints(client, PRIMARY).await?;
        match ready.as_slice() {
            [(p, _)] if p == pod => Ok(()),
            other => Err(format!("ready endpoints: {other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_inject_elect_route_and_fail_over() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    // The elector logs in its default format (JSON), checked line by line at the end.
    let (kubelet, admin, mut webhook) = injecting(&bed, NS).await?;

    // The write Service exists before the StatefulSet and selects every pod: the webhook
    // refuses the pods until the reconciler has added the leader selector, so it never
    // lists two ready endpoints (the observer watches it from before the first pod).
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    services.create(&PostParams::default(), &fixtures::service(PRIMARY, json!({"app": STS}))?).await?;
    let mut observer = Observer::start(admin.clone(), NS, &format!("app={STS}"));
    observer.watch_service(admin.clone(), NS, PRIMARY);
    let annotations =
        json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: format!("{PRIMARY}, {LATE}")});
    Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &fixtures::statefulset(STS, 2, annotations)?)
        .await?;

    let leader = observer.wait_for_single_leader(T).await?;
    wait_endpoints_are(&admin, &leader).await?;

    // A write Service created after the StatefulSet gets the leader selector at admission,
    // and keeps it when replaced by a manifest without it (`kubectl apply`, a chart upgrade).
    let selects_leader = |svc: &Service| {
        let selector = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        selector.get(contract::LABEL_ROLE).map(String::as_str) == Some(contract::ROLE_LEADER)
            && selector.get("app").map(String::as_str) == Some(STS)
    };
    let late = services.create(&PostParams::default(), &fixtures::service(LATE, json!({"app": STS}))?).await?;
    assert!(selects_leader(&late), "{LATE} as created: {:?}", late.spec);
    let mut replacement = fixtures::service(LATE, json!({"app": STS}))?;
    replacement.metadata.resource_version = late.metadata.resource_version.clone();
    replacement.spec.get_or_insert_default().cluster_ip = late.spec.as_ref().and_then(|s| s.cluster_ip.clone());
    let replaced = services.replace(LATE, &PostParams::default(), &replacement).await?;
    assert!(selects_leader(&replaced), "{LATE} as replaced: {:?}", replaced.spec);

    // The admitted pods: injected, and the slapd container holds no API token.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    for name in [contract::pod_name(STS, 0), contract::pod_name(STS, 1)] {
        let pod = pods.get(&name).await?;
        let spec = pod.spec.clone().unwrap_or_default();
        assert_eq!(spec.automount_service_account_token, Some(false), "{name}");
        let ldap = spec.containers.iter().find(|c| c.name == "ldap").expect("the ldap container");
        let mounts: Vec<&str> = ldap.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert!(
            !mounts.iter().any(|m| m.contains("serviceaccount")),
            "{name}: ldap container mounts a token: {mounts:?}"
        );
        let sidecar = spec.init_containers.iter().flatten().find(|c| c.name == contract::SIDECAR_CONTAINER);
        assert!(sidecar.is_some_and(|c| c.restart_policy.as_deref() == Some("Always")), "{name}: no native sidecar");
    }

    // Deleting the leader pod: it hands over before it goes; the Service follows.
    let fault = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await?;
    let (next, at) =
        observer.wait_for_new_leader("a new leader after deleting the leader pod", Some(&leader), fault, T).await?;
    println!("leader pod deleted: {leader} -> {next} in {:?}", at - fault);
    wait_endpoints_are(&admin, &next).await?;
    observer.wait_for_single_leader(T).await?;

    // With the webhook down and failurePolicy Fail, pods of opted-in StatefulSets are not
    // created at all (never an uninjected, unfenced slapd): the controller reports it.
    webhook.stop().await?;
    let standby =
        if next == contract::pod_name(STS, 0) { contract::pod_name(STS, 1) } else { contract::pod_name(STS, 0) };
    pods.delete(&standby, &DeleteParams::default()).await?;
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    wait_for("FailedCreate on the StatefulSet naming the webhook", T, || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let failed = list.items.iter().find(|e| {
            e.reason.as_deref() == Some("FailedCreate")
                && e.note.as_deref().is_some_and(|n| {
                    // Not the refusals of the start, while the Service lacked the selector.
                    n.contains("failed calling webhook") && n.contains("ldap-elector.dev") && n.contains(&standby)
                })
        });
        failed
            .map(|_| ())
            .ok_or_else(|| format!("{:?}", list.items.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>()))
    })
    .await?;
    assert!(pods.get_opt(&standby).await?.is_none(), "{standby} was created without the webhook");
    // The leader keeps leading, and the write Service keeps pointing at it.
    wait_endpoints_are(&admin, &next).await?;
    observer.assert_never_two_leaders();

    // Logs (BSI SYS.1.6.A7): every line the electors wrote is one JSON object with time,
    // level and message, and taking office is logged with the pod and the term.
    let mut took_office = Vec::new();
    for pod in [contract::pod_name(STS, 0), contract::pod_name(STS, 1)] {
        let path = kubelet.log_path(NS, &pod, contract::SIDECAR_CONTAINER);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let entry: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}: not JSON ({e}): {line}", path.display()))?;
            for key in ["timestamp", "level", "message"] {
                assert!(entry[key].is_string(), "{}: no {key}: {line}", path.display());
            }
            if entry["message"] == "took office: labelled leader" {
                assert!(entry["term"].is_u64(), "no term: {line}");
                took_office.push(entry["pod"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert!(took_office.contains(&next), "no JSON line shows {next} taking office: {took_office:?}");
    Ok(())
}

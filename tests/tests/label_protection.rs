//! Leader-label protection (BSI APP.4.4.A18) on the real bed: the chart's
//! ValidatingAdmissionPolicies (rendered with `helm template`, applied with `kubectl`)
//! refuse anyone but the electors and cluster admins who sets, changes or removes the
//! pod label `ldap-elector.dev/role` or the annotation `ldap-elector.dev/term`, even with
//! RBAC rights to patch pods, while the real webhook still injects pods created by the
//! StatefulSet controller (born `standby`) and the real electors still elect, hand over
//! gracefully and fail over with a demotion of the crashed leader's pod. A write Service
//! keeps its leader selector against anyone but the webhook and admins.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::kubelet::Runner;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::measure::observer::Observer;
use ldap_elector_tests::workloads::build::elector_binary;
use ldap_elector_tests::workloads::webhook::{Webhook, CONTROLLER_SA, WEBHOOK_NS};
use ldap_elector_tests::workloads::{fixtures, policies};
use ldap_elector_tests::{wait_for, Bed, Kubelet};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);
const NS: &str = "ldap";
const STS: &str = "ldap-server";
const PRIMARY: &str = "ldap-server-primary";
/// A namespace member with RBAC rights to patch pods and Services, but no elector.
const INTRUDER: &str = "intruder";
const POD_POLICY: &str = policies::POD_ROLE_POLICY;
const SERVICE_POLICY: &str = policies::LEADER_SERVICE_POLICY;

/// Applies the chart's policies, as a cluster admin would with `helm install`.
async fn install_label_protection(bed: &Bed) -> anyhow::Result<()> {
    let text = policies::install(bed).await?;
    for name in [contract::LABEL_ROLE, contract::ANNOTATION_TERM, contract::ANNOTATION_STATUS] {
        anyhow::ensure!(text.contains(&format!("'{name}'")), "the policy does not name {name}");
    }
    Ok(())
}

/// Creates ServiceAccount `sa_ns/name`.
async fn service_account(admin: &Client, sa_ns: &str, name: &str) -> anyhow::Result<()> {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), sa_ns).create(&PostParams::default(), &sa).await?;
    Ok(())
}

/// Grants ServiceAccount `sa_ns/name` a Role with `rules` in `ns`; returns a client acting
/// as that account (with a token not bound to any pod).
async fn grant(bed: &Bed, ns: &str, sa_ns: &str, name: &str, rules: Value) -> anyhow::Result<Client> {
    let rules = serde_json::from_value(rules)?;
    fixtures::service_account_role(&bed.admin_client()?, ns, name, sa_ns, rules).await?;
    bed.service_account_client(sa_ns, name).await
}

/// A pod that passes Pod Security `restricted`, with `labels`.
fn restricted_pod(name: &str, labels: Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c",
                "image": "registry.invalid/probe:1",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))?)
}

/// Asserts a 403 from `policy` whose message contains `needle`; returns the message.
fn refused<T>(result: Result<T, kube::Error>, what: &str, policy: &str, needle: &str) -> String {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(policy) && e.message.contains(needle) => {
            e.message.clone()
        }
        Err(e) => panic!("{what}: expected 403 from {policy} mentioning {needle:?}, got: {e}"),
        Ok(_) => panic!("{what}: expected 403 from {policy} mentioning {needle:?}, but it was admitted"),
    }
}

/// Waits until the pod policy refuses a dry-run creation of a `leader` pod by `client`
/// (policies become active a moment after they are created).
async fn wait_pod_policy_active(client: &Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let probe = restricted_pod("policy-probe", json!({contract::LABEL_ROLE: contract::ROLE_LEADER}))?;
    let dry = PostParams { dry_run: true, ..Default::default() };
    wait_for("the pod-role policy to refuse a leader pod", T, || async {
        match pods.create(&dry, &probe).await {
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(POD_POLICY) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("admitted (policy not active yet)".to_string()),
        }
    })
    .await
}

fn merge(value: Value) -> Patch<Value> {
    Patch::Merge(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_electors_and_admins_change_the_leader_label_and_electors_still_elect_and_hand_over() -> anyhow::Result<()>
{
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    fixtures::namespace(&admin, NS, Some("restricted")).await?;
    // RBAC lets the intruder patch, update and create pods (and their status): what
    // RBAC cannot restrict is WHICH labels such a patch touches.
    service_account(&admin, NS, INTRUDER).await?;
    let intruder = grant(
        &bed,
        NS,
        NS,
        INTRUDER,
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "patch", "update"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]},
        ]),
    )
    .await?;
    install_label_protection(&bed).await?;
    wait_pod_policy_active(&intruder).await?;

    // The product as installed: webhook (injection + reconciler), electors run by the kubelet.
    let kubelet = Kubelet::start(&bed, "bed-node").await?;
    kubelet.add_runner(Runner {
        container: contract::SIDECAR_CONTAINER.into(),
        program: elector_binary(false),
        env: vec![("ELECTOR_PROBE_ADDR".into(), "off".into()), ("ELECTOR_LOG_FORMAT".into(), "text".into())],
    });
    let webhook = Webhook::start(&bed).await?;
    webhook.register(&bed, NS, "Fail").await?;
    Api::<Service>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &fixtures::service(PRIMARY, json!({"app": STS}))?)
        .await?;
    let observer = Observer::start(admin.clone(), NS, &format!("app={STS}"));
    let annotations = json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: PRIMARY});
    Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &fixtures::statefulset(STS, 2, annotations)?)
        .await?;

    // (c) The StatefulSet controller created both pods; the webhook made them `standby`
    // at creation, which the policy admits. Then exactly one elector labelled itself leader.
    let leader = observer.wait_for_single_leader(T).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let standby =
        [contract::pod_name(STS, 0), contract::pod_name(STS, 1)].into_iter().find(|p| *p != leader).expect("two pods");
    for name in [&leader, &standby] {
        let pod = pods.get(name).await?;
        let status = pod.metadata.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_STATUS));
        assert_eq!(status.map(String::as_str), Some(contract::STATUS_INJECTED), "{name} was not injected");
    }
    let dry = PostParams { dry_run: true, ..Default::default() };
    let as_intruder: Api<Pod> = Api::namespaced(intruder.clone(), NS);
    as_intruder
        .create(&dry, &restricted_pod("born-standby", json!({contract::LABEL_ROLE: contract::ROLE_STANDBY}))?)
        .await
        .map_err(|e| anyhow::anyhow!("a pod created as standby must be admitted: {e}"))?;
    refused(
        as_intruder
            .create(&dry, &restricted_pod("born-leader", json!({contract::LABEL_ROLE: contract::ROLE_LEADER}))?)
            .await,
        "create a pod labelled leader",
        POD_POLICY,
        &format!("may not be created with label {}={}", contract::LABEL_ROLE, contract::ROLE_LEADER),
    );

    // (a) A namespace member allowed by RBAC to patch pods cannot touch the election metadata.
    let pp = PatchParams::default();
    let who = format!("system:serviceaccount:{NS}:{INTRUDER}");
    let message = refused(
        as_intruder
            .patch(&standby, &pp, &merge(json!({"metadata": {"labels": {contract::LABEL_ROLE: "leader"}}})))
            .await,
        "intruder labels the standby leader",
        POD_POLICY,
        &format!("{who} may not set, change or remove the label {} (standby -> leader)", contract::LABEL_ROLE),
    );
    println!("refused as expected: {message}");
    refused(
        as_intruder.patch(&leader, &pp, &merge(json!({"metadata": {"labels": {contract::LABEL_ROLE: null}}}))).await,
        "intruder removes the leader label",
        POD_POLICY,
        "(leader -> <none>)",
    );
    refused(
        as_intruder
            .patch(&leader, &pp, &merge(json!({"metadata": {"annotations": {contract::ANNOTATION_TERM: "999"}}})))
            .await,
        "intruder rewrites the fencing term",
        POD_POLICY,
        contract::ANNOTATION_TERM,
    );
    refused(
        as_intruder
            .patch(&standby, &pp, &merge(json!({"metadata": {"annotations": {contract::ANNOTATION_STATUS: null}}})))
            .await,
        "intruder removes the injection marker",
        POD_POLICY,
        &format!("the annotation {} of pod {NS}/{standby}", contract::ANNOTATION_STATUS),
    );
    refused(
        as_intruder
            .patch_status(&standby, &pp, &merge(json!({"metadata": {"labels": {contract::LABEL_ROLE: "leader"}}})))
            .await,
        "intruder labels the standby leader through pods/status",
        POD_POLICY,
        "(standby -> leader)",
    );
    // The same RBAC rights do reach the pod: other labels change freely.
    as_intruder.patch(&standby, &pp, &merge(json!({"metadata": {"labels": {"team": "ldap"}}}))).await?;
    // The elector's own account, but with a token not bound to its pod (e.g. copied out
    // of a Secret): its Role allows the patch, the policy does not.
    let unbound = bed.service_account_client(NS, &contract::identity_name(STS)).await?;
    refused(
        Api::<Pod>::namespaced(unbound, NS)
            .patch(&standby, &pp, &merge(json!({"metadata": {"labels": {contract::LABEL_ROLE: "leader"}}})))
            .await,
        "the elector account with an unbound token labels the standby leader",
        POD_POLICY,
        "may not set, change or remove",
    );
    assert_eq!(observer.leaders(), vec![leader.clone()], "{}", observer.timeline());

    // (b) Graceful handover with the policy active: the leader steps down (labels itself
    // standby), the standby labels itself leader.
    let fault = Instant::now();
    assert!(kubelet.signal(NS, &leader, contract::SIDECAR_CONTAINER, Signal::Term));
    let (next, at) =
        observer.wait_for_new_leader("the standby to take over after SIGTERM", Some(&leader), fault, T).await?;
    assert_eq!(next, standby);
    println!("graceful handover {leader} -> {next} in {:?} with the policy active", at - fault);

    // Crash failover: the old leader's elector runs again, the new leader dies with
    // kill -9 and keeps its label; the survivor demotes that OTHER pod to standby (the
    // policy's sibling rule) before labelling itself leader.
    wait_for("the stopped elector to exit", T, || async {
        kubelet.pid(NS, &leader, contract::SIDECAR_CONTAINER).map_or(Ok(()), |pid| Err(format!("pid {pid}")))
    })
    .await?;
    kubelet.restart(NS, &leader, contract::SIDECAR_CONTAINER).await?;
    let log_path = kubelet.log_path(NS, &leader, contract::SIDECAR_CONTAINER);
    let crash = Instant::now();
    assert!(kubelet.signal(NS, &next, contract::SIDECAR_CONTAINER, Signal::Kill));
    let (survivor, at) =
        observer.wait_for_new_leader("the restarted elector to take over after kill -9", Some(&next), crash, T).await?;
    assert_eq!(survivor, leader);
    println!("crash failover {next} -> {survivor} in {:?} with the policy active", at - crash);
    let crashed = pods.get(&next).await?;
    let role = crashed.metadata.labels.as_ref().and_then(|l| l.get(contract::LABEL_ROLE)).cloned();
    assert_eq!(role.as_deref(), Some(contract::ROLE_STANDBY), "the crashed leader's pod was demoted");
    // The label writes run before the elector logs them: wait for the line (bounded).
    wait_for("the survivor's log to say it demoted the crashed leader when taking office", T, || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.lines().any(|l| l.contains("took office") && l.contains(&next)) {
            Ok(())
        } else {
            Err(format!("{leader} did not log demoting {next}:\n{log}"))
        }
    })
    .await?;

    // The electors were never refused.
    for pod in [&leader, &next] {
        let log = std::fs::read_to_string(kubelet.log_path(NS, pod, contract::SIDECAR_CONTAINER)).unwrap_or_default();
        assert!(!log.contains("ValidatingAdmissionPolicy"), "{pod}'s elector was refused:\n{log}");
    }
    observer.assert_never_two_leaders();
    drop(webhook);
    Ok(())
}

/// Creating a Service that selects `role=leader` is admitted (that is how consumers create
/// their write Service; the webhook adds the selector at admission, and a selector matching
/// only the elected leader reaches nothing new), but once it selects the leader, only the
/// webhook (opt-out) and admins may remove or change that selector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_service_keeps_its_leader_selector_against_all_but_the_webhook_and_admins() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    fixtures::namespace(&admin, NS, None).await?;
    fixtures::namespace(&admin, WEBHOOK_NS, None).await?;
    let service_rules =
        json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "patch", "update"]}]);
    service_account(&admin, NS, INTRUDER).await?;
    let intruder = grant(&bed, NS, NS, INTRUDER, service_rules.clone()).await?;
    // The webhook controller's account, as the chart names it (it is exempt from this policy only).
    service_account(&admin, WEBHOOK_NS, CONTROLLER_SA).await?;
    let webhook = grant(&bed, NS, WEBHOOK_NS, CONTROLLER_SA, service_rules).await?;
    install_label_protection(&bed).await?;

    let leader_selector = json!({"app": STS, contract::LABEL_ROLE: contract::ROLE_LEADER});
    let as_intruder: Api<Service> = Api::namespaced(intruder.clone(), NS);
    as_intruder
        .create(&PostParams::default(), &fixtures::service(PRIMARY, leader_selector.clone())?)
        .await
        .map_err(|e| anyhow::anyhow!("creating a write Service must be admitted: {e}"))?;
    let drop_role = merge(json!({"spec": {"selector": {contract::LABEL_ROLE: null}}}));
    let dry = PatchParams { dry_run: true, ..Default::default() };
    wait_for("the leader-service policy to refuse dropping the selector", T, || async {
        match as_intruder.patch(PRIMARY, &dry, &drop_role).await {
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(SERVICE_POLICY) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("admitted (policy not active yet)".to_string()),
        }
    })
    .await?;

    // (d) A non-admin cannot widen the write Service to every LDAP pod.
    let pp = PatchParams::default();
    let message = refused(
        as_intruder.patch(PRIMARY, &pp, &drop_role).await,
        "intruder drops the leader selector",
        SERVICE_POLICY,
        "may not remove or change that selector",
    );
    println!("refused as expected: {message}");
    refused(
        as_intruder.patch(PRIMARY, &pp, &merge(json!({"spec": {"selector": {contract::LABEL_ROLE: "standby"}}}))).await,
        "intruder points the write Service at the standby",
        SERVICE_POLICY,
        &format!("Service {NS}/{PRIMARY} routes writes only to the Mirror-Mode leader"),
    );
    let mut replaced = as_intruder.get(PRIMARY).await?;
    if let Some(selector) = replaced.spec.as_mut().and_then(|s| s.selector.as_mut()) {
        selector.remove(contract::LABEL_ROLE);
    }
    refused(
        as_intruder.replace(PRIMARY, &PostParams::default(), &replaced).await,
        "intruder replaces the write Service without the leader selector",
        SERVICE_POLICY,
        "may not remove or change that selector",
    );
    // Other changes, and adding the leader selector (the safe direction), stay allowed.
    as_intruder.patch(PRIMARY, &pp, &merge(json!({"metadata": {"labels": {"team": "ldap"}}}))).await?;
    let read = "ldap-server-read";
    as_intruder.create(&PostParams::default(), &fixtures::service(read, json!({"app": STS}))?).await?;
    as_intruder
        .patch(read, &pp, &merge(json!({"spec": {"selector": {contract::LABEL_ROLE: contract::ROLE_LEADER}}})))
        .await?;

    // The webhook's reconciler restores the consumer's selector on opt-out; admins may too.
    Api::<Service>::namespaced(webhook, NS).patch(PRIMARY, &pp, &drop_role).await?;
    let as_admin: Api<Service> = Api::namespaced(admin, NS);
    as_admin.patch(read, &pp, &drop_role).await?;
    let selector = as_admin.get(PRIMARY).await?.spec.and_then(|s| s.selector).unwrap_or_default();
    assert!(!selector.contains_key(contract::LABEL_ROLE), "{selector:?}");
    Ok(())
}

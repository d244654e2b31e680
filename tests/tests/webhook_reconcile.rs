//! The webhook against the real bed: the reconciler creates the per-StatefulSet RBAC,
//! Lease and leader selector (and takes them away again), and the admission server
//! injects opted-in pods that still pass Pod Security `restricted`. Both run in-process
//! as a ServiceAccount holding exactly the ClusterRole documented in `reconcile.rs`, so a
//! missing rule (or an RBAC escalation refusal) fails here.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::free_port;
use ldap_elector_tests::workloads::electors::create_identity;
use ldap_elector_tests::workloads::fixtures;
use ldap_elector_tests::workloads::webhook::{
    http_get, ready, wait_ready, webhook_identities, Webhook, WEBHOOK_CONFIG, WEBHOOK_NS, WEBHOOK_SA,
};
use ldap_elector_tests::{wait_for, Bed, Kubelet};
use ldap_elector_webhook::args::Args;
use ldap_elector_webhook::reconcile::{leadership, run_reconciler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(90);
/// The webhook's log lines, shown for failed tests (`RUST_LOG` overrides the filter).
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "warn,kube_client=off,ldap_elector_webhook=info,ldap_elector_webhook::admission=error".into()
    });
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

fn owned_by(meta: &ObjectMeta, sts: &StatefulSet) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "StatefulSet" && Some(&o.uid) == sts.metadata.uid.as_ref() && o.controller == Some(true))
}

fn labelled_for(meta: &ObjectMeta, sts: &str) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    labels.get(contract::LABEL_MANAGED_BY).map(String::as_str) == Some(contract::MANAGED_BY)
        && labels.get(contract::LABEL_STATEFULSET).map(String::as_str) == Some(sts)
}

/// `namespace/name` of kind `K` exists, is owned by `sts` and carries our labels.
async fn generated<K>(client: &Client, ns: &str, name: &str, sts: &StatefulSet) -> Result<K, String>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let object = api.get_opt(name).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{name} absent"))?;
    let sts_name = sts.name_any();
    if owned_by(object.meta(), sts) && labelled_for(object.meta(), &sts_name) {
        Ok(object)
    } else {
        Err(format!("{name} lacks owner reference or labels: {:?}", object.meta()))
    }
}

async fn absent<K>(client: &Client, ns: &str, name: &str) -> Result<(), String>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        None => Ok(()),
        Some(_) => Err(format!("{} {name} still exists", K::kind(&()))),
    }
}

async fn selector(services: &Api<Service>, name: &str) -> Result<BTreeMap<String, String>, String> {
    let svc = services.get(name).await.map_err(|e| e.to_string())?;
    Ok(svc.spec.and_then(|s| s.selector).unwrap_or_default())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_creates_identity_role_lease_policy_and_selector_follows_scale_and_undoes_all_on_opt_out(
) -> anyhow::Result<()> {
    logs();
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let webhook = webhook_identities(&bed).await?.controller;
    let ns = "reconcile";
    fixtures::namespace(&admin, ns, None).await?;
    let services: Api<Service> = Api::namespaced(admin.clone(), ns);
    services.create(&PostParams::default(), &fixtures::service("ldap-primary", json!({"app": "ldap"}))?).await?;
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), ns);
    let annotations = json!({
        contract::ANNOTATION_INJECT: "true",
        contract::ANNOTATION_LEADER_SERVICE: "ldap-primary",
        contract::ANNOTATION_NETWORK_POLICY: "true",
    });
    let sts = sets.create(&PostParams::default(), &fixtures::statefulset("ldap", 2, annotations)?).await?;
    // A bystander: never touched.
    sets.create(&PostParams::default(), &fixtures::statefulset("other", 1, json!({}))?).await?;

    let shutdown = CancellationToken::new();
    let reconciler = tokio::spawn(run_reconciler(webhook, shutdown.clone()));
    let identity = contract::identity_name("ldap");
    let lease_name = contract::lease_name("ldap");

    let (role, binding) =
        wait_for("ServiceAccount, Role, RoleBinding and Lease owned by the StatefulSet", T, || async {
            let sa: ServiceAccount = generated(&admin, ns, &identity, &sts).await?;
            let role: Role = generated(&admin, ns, &identity, &sts).await?;
            let binding: RoleBinding = generated(&admin, ns, &identity, &sts).await?;
            let _: Lease = generated(&admin, ns, &lease_name, &sts).await?;
            let policy: NetworkPolicy = generated(&admin, ns, &identity, &sts).await?;
            if policy.spec.and_then(|s| s.policy_types) != Some(vec!["Egress".to_string()]) {
                return Err("the NetworkPolicy is not egress-only".to_string());
            }
            if sa.automount_service_account_token != Some(false) {
                return Err("ServiceAccount automounts its token".to_string());
            }
            Ok((role, binding))
        })
        .await?;
    assert_eq!(role.rules, Some(contract::elector_role_rules("ldap", 2)));
    assert_eq!((binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()), ("Role", identity.as_str()));
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("ServiceAccount", identity.as_str()));
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns));

    wait_for("the leader Service selects role=leader and keeps its own key", T, || async {
        let seen = selector(&services, "ldap-primary").await?;
        let want = map(&[("app", "ldap"), (contract::LABEL_ROLE, contract::ROLE_LEADER)]);
        if seen == want {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await?;

    // An elector takes the Lease; someone strips our label from it. The next reconcile
    // re-applies the metadata and must leave the electors' spec alone.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let mut lease = leases.get(&lease_name).await?;
    lease.spec.get_or_insert_with(Default::default).holder_identity = Some("ldap-0".into());
    lease.spec.get_or_insert_with(Default::default).lease_transitions = Some(4);
    lease.metadata.labels.get_or_insert_with(BTreeMap::new).remove(contract::LABEL_STATEFULSET);
    leases.replace(&lease_name, &PostParams::default(), &lease).await?;

    sets.patch("ldap", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await?;
    let want3 = contract::elector_role_rules("ldap", 3);
    wait_for("Role lists 3 pods after scaling to 3", T, || async {
        let role: Role = generated(&admin, ns, &identity, &sts).await?;
        if role.rules.as_ref() == Some(&want3) {
            Ok(())
        } else {
            Err(format!("{:?}", role.rules))
        }
    })
    .await?;
    let lease: Lease =
        wait_for("Lease labels restored", T, || generated::<Lease>(&admin, ns, &lease_name, &sts)).await?;
    let spec = lease.spec.unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("ldap-0"), "reconciler overwrote the Lease spec");
    assert_eq!(spec.lease_transitions, Some(4), "reconciler overwrote the Lease spec");

    let opt_out = json!({"metadata": {"annotations": {contract::ANNOTATION_INJECT: null, contract::ANNOTATION_LEADER_SERVICE: null}}});
    sets.patch("ldap", &PatchParams::default(), &Patch::Merge(opt_out)).await?;
    wait_for("generated objects deleted and selector restored after opt-out", T, || async {
        absent::<ServiceAccount>(&admin, ns, &identity).await?;
        absent::<Role>(&admin, ns, &identity).await?;
        absent::<RoleBinding>(&admin, ns, &identity).await?;
        absent::<Lease>(&admin, ns, &lease_name).await?;
        absent::<NetworkPolicy>(&admin, ns, &identity).await?;
        let svc = services.get("ldap-primary").await.map_err(|e| e.to_string())?;
        let seen = svc.spec.clone().and_then(|s| s.selector).unwrap_or_default();
        if seen != map(&[("app", "ldap")]) {
            return Err(format!("selector {seen:?}"));
        }
        if svc.labels().contains_key(contract::LABEL_STATEFULSET) {
            return Err(format!("Service still marked: {:?}", svc.labels()));
        }
        Ok(())
    })
    .await?;

    let other = contract::identity_name("other");
    absent::<Role>(&admin, ns, &other).await.map_err(anyhow::Error::msg)?;
    absent::<Lease>(&admin, ns, &contract::lease_name("other")).await.map_err(anyhow::Error::msg)?;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), reconciler).await.context("reconciler stops on shutdown")??;
    Ok(())
}

fn injection_problems(pod: &Pod, sts: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();
    let inits = spec.init_containers.clone().unwrap_or_default();
    match inits.first() {
        Some(c) if c.name == contract::SIDECAR_CONTAINER && c.restart_policy.as_deref() == Some("Always") => {}
        other => problems.push(format!("first init container is not the native sidecar: {:?}", other.map(|c| &c.name))),
    }
    if spec.automount_service_account_token != Some(false) {
        problems.push("automountServiceAccountToken is not false".into());
    }
    if spec.service_account_name.as_deref() != Some(contract::identity_name(sts).as_str()) {
        problems.push(format!("serviceAccountName {:?}", spec.service_account_name));
    }
    for c in spec.containers.iter().chain(inits.iter().filter(|c| c.name != contract::SIDECAR_CONTAINER)) {
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        if let Some(m) = mounts
            .iter()
            .find(|m| m.mount_path.starts_with(contract::TOKEN_MOUNT_PATH) || m.name.starts_with("kube-api-access-"))
        {
            problems.push(format!("container {} mounts a token: {m:?}", c.name));
        }
    }
    if spec.volumes.iter().flatten().any(|v| v.name.starts_with("kube-api-access-")) {
        problems.push("default token volume still present".into());
    }
    if pod.labels().get(contract::LABEL_ROLE).map(String::as_str) != Some(contract::ROLE_STANDBY) {
        problems.push(format!("role label {:?}", pod.labels().get(contract::LABEL_ROLE)));
    }
    if pod.annotations().get(contract::ANNOTATION_STATUS).map(String::as_str) != Some(contract::STATUS_INJECTED) {
        problems.push("no injection marker".into());
    }
    problems
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_injects_opted_in_pods_under_restricted_pod_security_and_leaves_others_alone() -> anyhow::Result<()> {
    logs();
    let bed = Bed::start().await?;
    let _kubelet = Kubelet::start(&bed, "bed-node").await?;
    let admin = bed.admin_client()?;
    // The shared in-process webhook: its own ServiceAccount with exactly the documented
    // ClusterRole, files mode, registered by URL with failurePolicy Fail.
    let mut webhook = Webhook::start(&bed).await?;

    let ns = "inject";
    fixtures::namespace(&admin, ns, Some("restricted")).await?;
    webhook.register(&bed, ns, "Fail").await?;

    let services: Api<Service> = Api::namespaced(admin.clone(), ns);
    services.create(&PostParams::default(), &fixtures::service("ldap-primary", json!({"app": "ldap"}))?).await?;
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), ns);
    let annotations = json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: "ldap-primary"});
    let ldap = sets.create(&PostParams::default(), &fixtures::statefulset("ldap", 2, annotations)?).await?;
    sets.create(&PostParams::default(), &fixtures::statefulset("plain", 1, json!({}))?).await?;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    wait_for("both ldap pods admitted injected and Running", T, || async {
        let mut problems = Vec::new();
        for name in ["ldap-0", "ldap-1"] {
            match pods.get_opt(name).await.map_err(|e| e.to_string())? {
                None => problems.push(format!("{name}: not created (yet)")),
                Some(pod) => {
                    problems.extend(injection_problems(&pod, "ldap").into_iter().map(|p| format!("{name}: {p}")));
                    if !is_running(&pod) {
                        problems.push(format!("{name}: not Running"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    })
    .await?;

    let plain = wait_for("the un-annotated pod is admitted", T, || async {
        pods.get_opt("plain-0").await.map_err(|e| e.to_string())?.ok_or_else(|| "not created (yet)".to_string())
    })
    .await?;
    let spec = plain.spec.clone().unwrap_or_default();
    assert!(spec.init_containers.unwrap_or_default().is_empty(), "plain-0 got an init container");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert_ne!(spec.automount_service_account_token, Some(false));
    assert!(spec.volumes.iter().flatten().any(|v| v.name.starts_with("kube-api-access-")), "plain-0 lost its token");
    assert!(!plain.labels().contains_key(contract::LABEL_ROLE));
    assert!(!plain.annotations().contains_key(contract::ANNOTATION_STATUS));

    wait_for("the leader Service selects role=leader", T, || async {
        let seen = selector(&services, "ldap-primary").await?;
        if seen.get(contract::LABEL_ROLE).map(String::as_str) == Some(contract::ROLE_LEADER) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await?;

    // Opting out, then restarting the pods: the new pods come back plain, and once no pod
    // runs an elector any more the reconciler removes the RBAC and restores the selector.
    let opt_out = json!({"metadata": {"annotations": {contract::ANNOTATION_INJECT: null}}});
    sets.patch("ldap", &PatchParams::default(), &Patch::Merge(opt_out)).await?;
    // While injected pods run, the opt-out waits: the leader must keep the rights to
    // remove its own label, and the write Service must keep selecting only the leader.
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    wait_for("an OptOutPending Event on the StatefulSet", T, || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let pending = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("OptOutPending")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("ldap")
        });
        if pending {
            Ok(())
        } else {
            Err(format!("events: {:?}", list.items.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()))
        }
    })
    .await?;
    let _: Role = generated(&admin, ns, &contract::identity_name("ldap"), &ldap).await.map_err(anyhow::Error::msg)?;
    let _: Lease = generated(&admin, ns, &contract::lease_name("ldap"), &ldap).await.map_err(anyhow::Error::msg)?;
    let seen = selector(&services, "ldap-primary").await.map_err(anyhow::Error::msg)?;
    assert_eq!(seen.get(contract::LABEL_ROLE).map(String::as_str), Some(contract::ROLE_LEADER));

    let old: Vec<String> =
        pods.list(&ListParams::default().labels("app=ldap")).await?.items.iter().filter_map(|p| p.uid()).collect();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=ldap")).await?;
    wait_for("restarted pods are not injected and the opt-out is complete", T, || async {
        let list = pods.list(&ListParams::default().labels("app=ldap")).await.map_err(|e| e.to_string())?;
        let fresh: Vec<&Pod> = list.items.iter().filter(|p| p.uid().is_some_and(|u| !old.contains(&u))).collect();
        if fresh.len() != 2 || fresh.iter().any(|p| p.annotations().contains_key(contract::ANNOTATION_STATUS)) {
            return Err(format!(
                "{} fresh pods, injected: {:?}",
                fresh.len(),
                fresh.iter().map(|p| p.name_any()).collect::<Vec<_>>()
            ));
        }
        absent::<Role>(&admin, ns, &contract::identity_name("ldap")).await?;
        absent::<Lease>(&admin, ns, &contract::lease_name("ldap")).await?;
        let seen = selector(&services, "ldap-primary").await?;
        if seen != map(&[("app", "ldap")]) {
            return Err(format!("selector {seen:?}"));
        }
        Ok(())
    })
    .await?;

    webhook.stop().await.context("webhook stops on shutdown")?;
    Ok(())
}

/// The certificate a TLS client sees at `127.0.0.1:port` when it trusts `ca_pem` and asks
/// for `server_name`.
async fn presented_certificate(
    port: u16,
    ca_pem: &[u8],
    server_name: &str,
) -> Result<rustls_pki_types::CertificateDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(der.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = ldap_elector_webhook::tls::crypto_provider(ldap_elector_webhook::tls::TlsProfile::Bsi);
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
    peer.map(|c| c.into_owned()).ok_or_else(|| "no peer certificate".to_string())
}

/// certMode=secret as the chart runs it (issue 17, item 2): the admission server reads only;
/// the controller creates the Secret and publishes its CA. The admission server, started
/// first, serves nothing until the CA of the Secret's certificate is in the caBundle, then
/// serves exactly that certificate; a configuration re-applied without the caBundle gets it
/// back from the controller at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_mode_publishes_the_ca_bundle_and_serves_the_secret_certificate() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use ldap_elector_tests::workloads::webhook::{grant_secret_roles, unpublished_configuration, SIDECAR_IMAGE};
    use rustls_pki_types::pem::PemObject;
    const TLS_SECRET: &str = "ldap-elector-webhook-tls";
    logs();
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let accounts = webhook_identities(&bed).await?;
    grant_secret_roles(&admin, TLS_SECRET).await?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    configs.create(&PostParams::default(), &unpublished_configuration()?).await?;

    let component = |component: &str, listen: u16, health: u16| -> anyhow::Result<_> {
        Args::try_parse_from([
            "ldap-elector-webhook".to_string(),
            format!("--component={component}"),
            format!("--listen=127.0.0.1:{listen}"),
            format!("--health-listen=127.0.0.1:{health}"),
            format!("--namespace={WEBHOOK_NS}"),
            "--reconcile=false".into(),
            format!("--sidecar-image={SIDECAR_IMAGE}"),
        ])?
        .into_settings()
        .map_err(anyhow::Error::msg)
    };
    let shutdown = CancellationToken::new();
    let run = |settings, client| {
        tokio::spawn(ldap_elector_webhook::app::run(settings, client, shutdown.clone(), Duration::ZERO))
    };
    let (port, health_port, controller_health) = (free_port()?, free_port()?, free_port()?);
    // The admission server alone: no Secret yet, and it may not create one.
    let admission = run(component("admission", port, health_port)?, accounts.admission.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ready(health_port).await.is_err(), "the admission server is ready without a certificate");
    let secrets = Api::<Secret>::namespaced(admin.clone(), WEBHOOK_NS);
    assert!(secrets.get_opt(TLS_SECRET).await?.is_none(), "the admission server wrote the Secret");

    let controller = run(component("controller", free_port()?, controller_health)?, accounts.controller.clone());
    wait_ready("the controller", controller_health, T).await?;
    wait_ready("the admission server, once the CA is published,", health_port, T).await?;

    let secret = Api::<Secret>::namespaced(admin.clone(), WEBHOOK_NS).get(TLS_SECRET).await?;
    let data = secret.data.unwrap_or_default();
    let key = |k: &str| data.get(k).map(|b| b.0.clone()).with_context(|| format!("Secret lacks {k}"));
    let (ca, crt) = (key("ca.crt")?, key("tls.crt")?);
    let published = configs.get(WEBHOOK_CONFIG).await?.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .clone()
        .context("caBundle not published")?
        .0;
    let published_ders: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(&published).collect::<Result<_, _>>()?;
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        assert!(published_ders.contains(&der?), "caBundle lacks a CA of the Secret");
    }
    let served = presented_certificate(port, &published, &format!("{WEBHOOK_SA}.{WEBHOOK_NS}.svc"))
        .await
        .map_err(anyhow::Error::msg)?;
    let stored = rustls_pki_types::CertificateDer::pem_slice_iter(&crt).next().context("tls.crt is empty")??;
    assert_eq!(served, stored, "the webhook serves the Secret's certificate");

    // Something re-applies the configuration without caBundle (a `helm rollback` to the
    // revision rendered before it existed): the webhook sees the change and publishes it
    // again at once (its periodic re-publish alone would take up to a minute).
    let mut config = configs.get(WEBHOOK_CONFIG).await?;
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = None;
    }
    configs.replace(WEBHOOK_CONFIG, &PostParams::default(), &config).await?;
    wait_for("the caBundle re-published after it was dropped", Duration::from_secs(20), || async {
        let config = configs.get(WEBHOOK_CONFIG).await.map_err(|e| e.to_string())?;
        let bundle = config.webhooks.unwrap_or_default()[0].client_config.ca_bundle.clone();
        bundle.filter(|b| b.0 == published).map(|_| ()).ok_or_else(|| "not yet".to_string())
    })
    .await?;

    shutdown.cancel();
    for task in [admission, controller] {
        tokio::time::timeout(Duration::from_secs(30), task).await.context("webhook stops on shutdown")???;
    }
    Ok(())
}

/// The write-Service window, deterministically: without a reconciler to add the leader
/// selector, pods of an opted-in StatefulSet whose write Service selects every pod are
/// refused (the controller reports why); once the selector is there they are admitted.
/// A write Service created after the StatefulSet gets the selector at its own admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_wait_until_their_write_service_selects_the_leader() -> anyhow::Result<()> {
    logs();
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let webhook = Webhook::start_with(&bed, &["--reconcile=false"]).await?;
    let ns = "window";
    fixtures::namespace(&admin, ns, None).await?;
    webhook.register(&bed, ns, "Fail").await?;
    // What the reconciler would create; here it does not run.
    create_identity(&admin, ns, "ldap", 2).await?;

    let services: Api<Service> = Api::namespaced(admin.clone(), ns);
    services.create(&PostParams::default(), &fixtures::service("ldap-primary", json!({"app": "ldap"}))?).await?;
    let annotations =
        json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: "ldap-primary, ldap-rw"});
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), ns);
    sets.create(&PostParams::default(), &fixtures::statefulset("ldap", 2, annotations)?).await?;

    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    wait_for("FailedCreate naming the write Service without the leader selector", T, || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let refused = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("FailedCreate")
                && e.note.as_deref().is_some_and(|n| n.contains("ldap-primary") && n.contains("does not select"))
        });
        refused.then_some(()).ok_or_else(|| format!("{:?}", list.items.iter().map(|e| &e.note).collect::<Vec<_>>()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    assert!(
        pods.list(&ListParams::default()).await?.items.is_empty(),
        "a pod was admitted while the Service selects all"
    );

    // The consumer's own way without a reconciler: add the selector. Pods follow.
    let leader_selector = json!({"spec": {"selector": {contract::LABEL_ROLE: contract::ROLE_LEADER}}});
    services.patch("ldap-primary", &PatchParams::default(), &Patch::Merge(&leader_selector)).await?;
    wait_for("both pods admitted, injected", T, || async {
        let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let injected = list.items.iter().filter(|p| injection_problems(p, "ldap").is_empty()).count();
        (injected == 2).then_some(()).ok_or_else(|| format!("{injected} of 2 pods injected"))
    })
    .await?;

    // Created after the StatefulSet: the selector (and our mark) come with admission.
    let rw = services.create(&PostParams::default(), &fixtures::service("ldap-rw", json!({"app": "ldap"}))?).await?;
    let selector = rw.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.get(contract::LABEL_ROLE).map(String::as_str), Some(contract::ROLE_LEADER), "{selector:?}");
    assert_eq!(selector.get("app").map(String::as_str), Some("ldap"));
    assert_eq!(
        rw.metadata.labels.unwrap_or_default().get(contract::LABEL_STATEFULSET).map(String::as_str),
        Some("ldap")
    );
    Ok(())
}

/// `ldap_elector_webhook_reconciling` of the replica with health port `port` (None: not yet).
async fn reconciling(port: u16) -> Option<u8> {
    let body = http_get(port, "/metrics").await.ok()?;
    let line = body.lines().find(|l| l.starts_with(&format!("{} ", contract::metric::WEBHOOK_RECONCILING)))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Exactly one webhook replica reconciles at a time (issue 17, item 2): before, both
/// replicas wrote the same objects on every opt-in and one logged `reconcile failed …
/// Conflict`. The replicas compete for the Lease `<webhook-config>-reconciler` in their
/// namespace; here first against a holder that is not a webhook (the test renews it), then
/// against each other: a replica stopping gracefully gives the Lease back and the other one
/// takes over and reconciles what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_replica_reconciles_at_a_time_and_another_takes_over_when_it_stops() -> anyhow::Result<()> {
    logs();
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let accounts = webhook_identities(&bed).await?;
    let ns = "elected";
    fixtures::namespace(&admin, ns, None).await?;
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), ns);
    let roles: Api<Role> = Api::namespaced(admin.clone(), ns);
    let opted_in = json!({contract::ANNOTATION_INJECT: "true"});

    // Someone else holds the reconciler Lease and renews it.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), WEBHOOK_NS);
    let lease_name = leadership::lease_name(WEBHOOK_CONFIG);
    let held = |holder: &str| -> anyhow::Result<Lease> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": lease_name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": k8s_openapi::jiff::Timestamp::now()},
        }))?)
    };
    leases.create(&PostParams::default(), &held("someone-else")?).await?;
    let renewing = CancellationToken::new();
    let renewer = tokio::spawn({
        let (leases, stop, lease_name) = (leases.clone(), renewing.clone(), lease_name.clone());
        async move {
            while !stop.is_cancelled() {
                if let Ok(mut lease) = leases.get(&lease_name).await {
                    if let Some(spec) = lease.spec.as_mut() {
                        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                            k8s_openapi::jiff::Timestamp::now(),
                        ));
                    }
                    let _ = leases.replace(&lease_name, &PostParams::default(), &lease).await;
                }
                tokio::time::sleep(leadership::RETRY_PERIOD).await;
            }
        }
    });
    let replica = |id: &'static str| {
        let (bed, accounts) = (&bed, accounts.clone());
        async move {
            let flags = [format!("--namespace={WEBHOOK_NS}"), format!("--identity={id}")];
            Webhook::start_as(bed, &accounts, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await
        }
    };
    let mut replicas = vec![("replica-a", replica("replica-a").await?), ("replica-b", replica("replica-b").await?)];

    // Neither reconciles while another holds the Lease: an opted-in StatefulSet gets no Role.
    let first = sets.create(&PostParams::default(), &fixtures::statefulset("first", 2, opted_in.clone())?).await?;
    for (id, w) in &replicas {
        let port = w.controller_port()?;
        wait_for(&format!("{id} reporting that it does not reconcile"), T, || async {
            (reconciling(port).await == Some(0)).then_some(()).ok_or("not yet".to_string())
        })
        .await?;
    }
    // A reconciling replica writes the Role within about a second (debounce 0.5 s, below);
    // give these five.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let role = contract::identity_name("first");
    assert!(roles.get_opt(&role).await?.is_none(), "a replica reconciled while another held the Lease");

    // The holder stops renewing: after a lease duration one replica takes the Lease, and
    // reconciles what it only watched before.
    renewing.cancel();
    renewer.await?;
    let holder = wait_for("a replica to hold the reconciler Lease", T, || async {
        let lease = leases.get(&lease_name).await.map_err(|e| e.to_string())?;
        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        replicas.iter().any(|(id, _)| *id == holder).then_some(holder.clone()).ok_or(holder)
    })
    .await?;
    wait_for("the Role of the StatefulSet opted in before", T, || async {
        generated::<Role>(&admin, ns, &role, &first).await.map(drop)
    })
    .await?;
    let mut gauges = Vec::new();
    for (id, w) in &replicas {
        gauges.push((*id, reconciling(w.controller_port()?).await));
    }
    let reconcilers: Vec<&str> = gauges.iter().filter(|(_, g)| *g == Some(1)).map(|(id, _)| *id).collect();
    assert_eq!(reconcilers, [holder.as_str()], "exactly the holder reconciles: {gauges:?}");

    // The holder stops gracefully: it gives the Lease back, the other takes over.
    let i = replicas.iter().position(|(id, _)| *id == holder).context("the holder is a replica")?;
    let (_, mut stopped) = replicas.remove(i);
    stopped.stop().await?;
    let (other, survivor) = &replicas[0];
    wait_for(&format!("{other} to hold the reconciler Lease"), T, || async {
        let lease = leases.get(&lease_name).await.map_err(|e| e.to_string())?;
        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        (holder == *other).then_some(()).ok_or(holder)
    })
    .await?;
    assert_eq!(reconciling(survivor.controller_port()?).await, Some(1));
    let second = sets.create(&PostParams::default(), &fixtures::statefulset("second", 2, opted_in)?).await?;
    wait_for("the Role of a StatefulSet opted in after the hand-over", T, || async {
        generated::<Role>(&admin, ns, &contract::identity_name("second"), &second).await.map(drop)
    })
    .await?;
    Ok(())
}

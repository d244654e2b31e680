//! The attack suite (issue 17): what a tenant can do to ldap-elector, tried on the real bed.
//!
//! The attacker is a **tenant**: the user [`TENANT_USER`], bound to the built-in ClusterRole
//! `edit` in one namespace and to nothing else (the bed runs the ClusterRole aggregation
//! controller, so `edit` holds what it holds on a real cluster). The product is installed as
//! a cluster admin installs it: the webhook (injection + reconciler) and the chart's
//! admission policies.
//!
//! Every attack first shows that the tenant CAN do the harmless neighbour action (annotate
//! the pod, replace an image of a pod without an elector, mint a token without a pod binding,
//! ...), so that a refusal means what it claims, and every refusal is checked for the message
//! that says why.
//!
//! | attack (issue 17 item) | refused by |
//! |---|---|
//! | 2: a stolen webhook token rewrites its webhook configuration (URL, selectors, failurePolicy) | policy `<fullname>-webhook-configuration`: caBundle only |
//! | 3: an opted-in StatefulSet with 100,000 replicas topples the webhook | `contract::MAX_REPLICAS`: pods refused, Event on the StatefulSet, webhook keeps admitting |
//! | 4: one pod floods `/mutate` with connections and HTTP/2 streams | webhook server: per-peer connection cap (extra ones closed at once), 8 streams, bodies bounded in size and time |
//! | 4: a few dozen ~1 MiB StatefulSets (no opt-in) fill the webhook's memory through its cache | webhook: the shared store keeps a pruned StatefulSet (`watches::prune`), lists in pages of 2; memory stays under the chart's limit, also on a restart |
//! | 1: replace the sidecar's image (other code gets the pod-bound elector token) | policy `<fullname>-pod-spec` |
//! | 1: replace slapd's image (slapd outside the fence) | policy `<fullname>-pod-spec` |
//! | 1: add an ephemeral container (reads the token, enters slapd) | RBAC (`edit` lacks it); with the right granted on top, policy `<fullname>-pod-spec` |
//! | 1: mint a token for the elector's account bound to an LDAP pod | policy `<fullname>-pod-bound-token` |
//! | 1: name the elector's account in the template (slapd keeps a pod-bound token of it) | webhook: the elector's account is handled like `default`, no consumer container keeps its token |
//! | 7: project a token of one's own in the template of a pod run as the elector's account | webhook: refused, the StatefulSet's `FailedCreate` Event says why |
//! | 7: set the Lease's `switchover-to` or `allow-diverged` (move the leader, promote a diverged standby) | policy `<fullname>-lease-overrides` |
//! | 7: add a CA of one's own to the webhook Secret's `ca.crt` (the API server would trust it for admission) | webhook: publishes only the CA that issued its serving certificate |
//! | 7: a stolen webhook token creates other Secrets in the release namespace (`create` cannot be limited by name) | policy `<fullname>-webhook-secret` |
//! | 7: create a pod carrying the injection marker (a stand-in for a standby, running as the elector's account) | webhook: refuses every pod arriving marked; policy `<fullname>-pod-marker`: a marked pod the webhook did not review |
//! | 5: a webhook outage blocks pods in namespaces that never opted in (and a tenant opts its namespace in) | default `webhookConfiguration.namespaceOptInLabel` (only namespaces an admin labelled) + policy `<fullname>-opt-in`; RBAC (`edit` cannot label namespaces) |
//! | 5: a webhook outage blocks pods of StatefulSets that never opted in | `webhookConfiguration.podOptInLabel` + policy `<fullname>-opt-in` |
//! | 6: `leader-service` names another team's Service | reconciler: only Services selecting exactly its pods, Event `LeaderServiceRefused` |
//! | 6: a StatefulSet named after another team's Lease takes it over | reconciler: never applies over an object it did not create, Event `ObjectNotOurs` |
//! | 6: relabel a write Service's `ldap-elector.dev/statefulset` mark | policy `<fullname>-leader-service` |

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ldap_elector_certs::store::SECRET_KEY_CA;
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::{free_port, request_token, TENANT_USER, WEBHOOK_CLIENT_CA};
use ldap_elector_tests::workloads::webhook::{
    grant_secret_roles, http_status, unpublished_configuration, wait_ready, webhook_identities, Webhook,
    WebhookProcess, CONTROLLER_SA, SIDECAR_IMAGE, WEBHOOK_CONFIG, WEBHOOK_NS, WEBHOOK_SA,
};
use ldap_elector_tests::workloads::{fixtures, policies};
use ldap_elector_tests::{wait_for, Bed};
use ldap_elector_webhook::args::Args;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(90);
/// The tenant's namespace.
const NS: &str = "tenant";
/// The tenant's own, well-behaved LDAP StatefulSet.
const STS: &str = "ldap";
const ATTACKER_IMAGE: &str = "registry.invalid/attacker:1";

// ---- The tenant ----

/// Namespace [`NS`] with [`TENANT_USER`] bound to `edit` there; returns the tenant's client
/// once the aggregated `edit` role lets it patch pods and mint tokens.
async fn tenant(bed: &Bed) -> anyhow::Result<Client> {
    let admin = bed.admin_client()?;
    fixtures::namespace(&admin, NS, None).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenant-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT_USER}],
    }))?;
    Api::<RoleBinding>::namespaced(admin, NS).create(&PostParams::default(), &binding).await?;
    let tenant = bed.tenant_client()?;
    for (verb, resource, subresource) in
        [("patch", "pods", ""), ("create", "serviceaccounts", "token"), ("create", "statefulsets", "")]
    {
        wait_for(&format!("the tenant's edit role to allow {verb} {resource}/{subresource}"), T, || async {
            can_i(&tenant, verb, resource, subresource).await?.then_some(()).ok_or("not yet".to_string())
        })
        .await?;
    }
    // And nothing outside its namespace.
    let review = access_review("patch", "pods", "", "default");
    let answer = Api::<SelfSubjectAccessReview>::all(tenant.clone()).create(&PostParams::default(), &review).await?;
    anyhow::ensure!(!answer.status.is_some_and(|s| s.allowed), "the tenant must hold no rights outside {NS}");
    Ok(tenant)
}

/// Grants the tenant a Role `name` with `rules` in [`NS`], on top of `edit`.
async fn grant_tenant(admin: &Client, name: &str, rules: Value) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let role: Role = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))?;
    Api::<Role>::namespaced(admin.clone(), NS).create(&pp, &role).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT_USER}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), NS).create(&pp, &binding).await?;
    Ok(())
}

fn access_review(verb: &str, resource: &str, subresource: &str, namespace: &str) -> SelfSubjectAccessReview {
    let group = match resource {
        "statefulsets" => "apps",
        "leases" => "coordination.k8s.io",
        _ => "",
    };
    serde_json::from_value(json!({"spec": {"resourceAttributes": {
        "namespace": namespace, "verb": verb, "group": group, "resource": resource, "subresource": subresource,
    }}}))
    .unwrap_or_default()
}

/// Whether RBAC lets `client` do `verb` on `resource/subresource` in [`NS`].
async fn can_i(client: &Client, verb: &str, resource: &str, subresource: &str) -> Result<bool, String> {
    let review = access_review(verb, resource, subresource, NS);
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

// ---- What the tenant sees ----

/// Asserts a 403 from `policy` whose message contains `needle`; returns the message.
fn refused<T>(result: Result<T, kube::Error>, what: &str, policy: &str, needle: &str) -> String {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(policy) && e.message.contains(needle) => {
            println!("refused as expected ({what}): {}", e.message);
            e.message.clone()
        }
        Err(e) => panic!("{what}: expected 403 from {policy} mentioning {needle:?}, got: {e}"),
        Ok(_) => {
            panic!("ATTACK SUCCEEDED: {what}: expected 403 from {policy} mentioning {needle:?}, but it was admitted")
        }
    }
}

/// Asserts that the pod webhook denied the request (the API server answers a webhook's denial
/// without a code with 400) with a message containing `needle`.
fn refused_by_webhook<T>(result: Result<T, kube::Error>, what: &str, needle: &str) {
    let webhook = "admission webhook \"pods.ldap-elector.dev\" denied the request";
    match result {
        Err(kube::Error::Api(e)) if e.code == 400 && e.message.contains(webhook) && e.message.contains(needle) => {
            println!("refused as expected ({what}): {}", e.message);
        }
        Err(e) => panic!("{what}: expected a denial by the pod webhook mentioning {needle:?}, got: {e}"),
        Ok(_) => panic!("ATTACK SUCCEEDED: {what}: expected a denial by the pod webhook, but it was admitted"),
    }
}

/// Waits until `policy` refuses the dry-run `probe` (policies act a moment after creation).
async fn wait_policy_active<T, F, Fut>(policy: &str, probe: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    wait_for(&format!("policy {policy} to act"), T, || async {
        match probe().await {
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(policy) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("admitted (policy not active yet)".to_string()),
        }
    })
    .await
}

/// Whether `error` is a 403 of the admission policy `policy`.
fn refused_by(error: &anyhow::Error, policy: &str) -> bool {
    error
        .chain()
        .filter_map(|c| c.downcast_ref::<kube::Error>())
        .any(|e| matches!(e, kube::Error::Api(a) if a.code == 403 && a.message.contains(policy)))
}

/// Waits for an Event about `regarding` with `reason` whose note contains `needle`; its note.
async fn wait_event(admin: &Client, regarding: &str, reason: &str, needle: &str) -> anyhow::Result<String> {
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    wait_for(&format!("a {reason} Event on {regarding} mentioning {needle:?}"), T, || async {
        let list = events.list(&Default::default()).await.map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                    && e.reason.as_deref() == Some(reason)
                    && e.note.as_deref().is_some_and(|n| n.contains(needle))
            })
            .and_then(|e| e.note)
            .ok_or("not yet".to_string())
    })
    .await
}

/// A bed with the product installed as a cluster admin installs it (the chart's policies,
/// the webhook covering [`NS`] with `failurePolicy: Fail`) and the tenant; (tenant, admin).
async fn installed(bed: &Bed) -> anyhow::Result<(Client, Client, Webhook)> {
    let tenant = tenant(bed).await?;
    policies::install(bed).await?;
    let webhook = Webhook::start(bed).await?;
    webhook.register(bed, NS, "Fail").await?;
    Ok((tenant, bed.admin_client()?, webhook))
}

/// The tenant's opted-in StatefulSet `STS` of two, once both pods are created and injected.
async fn opted_in_statefulset(tenant: &Client, admin: &Client) -> anyhow::Result<(StatefulSet, Vec<Pod>)> {
    let set = Api::<StatefulSet>::namespaced(tenant.clone(), NS)
        .create(&PostParams::default(), &fixtures::statefulset(STS, 2, opted_in())?)
        .await?;
    let injected = wait_injected(&Api::namespaced(admin.clone(), NS), STS, 2).await?;
    Ok((set, injected))
}

/// Pods `<sts>-0..replicas` exist and carry the injection marker.
async fn wait_injected(pods: &Api<Pod>, sts: &str, replicas: u32) -> anyhow::Result<Vec<Pod>> {
    let names: Vec<String> = (0..replicas).map(|i| contract::pod_name(sts, i)).collect();
    wait_for(&format!("pods of {sts} created and injected"), T, || async {
        let mut out = Vec::new();
        for name in &names {
            let pod = pods.get_opt(name).await.map_err(|e| e.to_string())?.ok_or(format!("{name} missing"))?;
            let status = pod.metadata.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_STATUS));
            if status.map(String::as_str) != Some(contract::STATUS_INJECTED) {
                return Err(format!("{name} not injected"));
            }
            out.push(pod);
        }
        Ok(out)
    })
    .await
}

/// The JSON-patch path of container `name`'s image (`containers` or `initContainers`).
fn image_path(pod: &Pod, name: &str) -> anyhow::Result<String> {
    let spec = pod.spec.as_ref().ok_or_else(|| anyhow::anyhow!("pod without spec"))?;
    let lists = [("containers", Some(&spec.containers)), ("initContainers", spec.init_containers.as_ref())];
    for (list, containers) in lists {
        if let Some(i) = containers.into_iter().flatten().position(|c| c.name == name) {
            return Ok(format!("/spec/{list}/{i}/image"));
        }
    }
    anyhow::bail!("pod has no container {name}")
}

fn replace_image(path: &str) -> anyhow::Result<Patch<Value>> {
    Ok(Patch::Json(serde_json::from_value(json!([{"op": "replace", "path": path, "value": ATTACKER_IMAGE}]))?))
}

fn debug_container(target: &str) -> Patch<Value> {
    Patch::Strategic(json!({"spec": {"ephemeralContainers": [{
        "name": "debugger", "image": ATTACKER_IMAGE, "targetContainerName": target,
    }]}}))
}

fn opted_in() -> Value {
    json!({contract::ANNOTATION_INJECT: "true"})
}

// ---- Item 3: one StatefulSet must not stop admission cluster-wide ----

/// `replicas: 2147483647` made every webhook replica abort on a per-replica allocation, and
/// with `failurePolicy: Fail` no covered StatefulSet pod could be created. Tested with
/// 100,000 (above `contract::MAX_REPLICAS`, harmless to the controller-manager, which also
/// allocates per replica: never 2^31 on a bed), OrderedReady and a nodeSelector no node
/// matches, so at most one pod would ever exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_with_a_huge_replica_count_gets_no_pods_and_the_webhook_keeps_admitting() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let tenant = tenant(&bed).await?;
    let admin = bed.admin_client()?;
    let webhook = Webhook::start(&bed).await?;
    webhook.register(&bed, NS, "Fail").await?;

    // Neighbour: the tenant opts a StatefulSet in, and its pods are injected.
    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    sets.create(&PostParams::default(), &fixtures::statefulset(STS, 2, opted_in())?).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    wait_injected(&pods, STS, 2).await?;

    // Attack: the same with 100,000 replicas.
    let huge = "huge";
    let mut set = fixtures::statefulset(huge, 100_000, opted_in())?;
    let spec = set.spec.as_mut().ok_or_else(|| anyhow::anyhow!("fixture without spec"))?;
    spec.pod_management_policy = Some("OrderedReady".into());
    if let Some(template) = spec.template.spec.as_mut() {
        template.node_selector =
            Some([("ldap-elector.dev/attack-test".to_string(), "no-such-node".to_string())].into());
    }
    sets.create(&PostParams::default(), &set).await?;

    // The reconciler refuses it with an Event naming the limit, ...
    let limit = format!("at most {}", contract::MAX_REPLICAS);
    let refusal = wait_event(&admin, huge, contract::EVENT_TOO_MANY_REPLICAS, &limit).await?;
    println!("TooManyReplicas: {refusal}");
    // ... the admission refuses its pods (the StatefulSet controller reports why), ...
    let failed = wait_event(&admin, huge, "FailedCreate", &limit).await?;
    println!("FailedCreate: {failed}");
    assert!(pods.get_opt(&contract::pod_name(huge, 0)).await?.is_none(), "a pod of {huge} was admitted");
    let roles: Api<Role> = Api::namespaced(admin.clone(), NS);
    assert!(roles.get_opt(&contract::identity_name(huge)).await?.is_none(), "a Role was sized by 100,000 replicas");

    // ... and the webhook stays up: ready, and it still injects the neighbour's new pods.
    assert_eq!(http_status(webhook.health_port, "/readyz").await.map_err(anyhow::Error::msg)?, 200);
    let replaced = contract::pod_name(STS, 1);
    let old_uid = pods.get(&replaced).await?.metadata.uid;
    pods.delete(&replaced, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    wait_for("the neighbour's pod re-created and injected", T, || async {
        let pod = pods.get_opt(&replaced).await.map_err(|e| e.to_string())?.ok_or("not yet".to_string())?;
        let injected = pod.metadata.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_STATUS)).is_some();
        (pod.metadata.uid != old_uid && injected).then_some(()).ok_or("not yet".to_string())
    })
    .await?;

    Api::<StatefulSet>::namespaced(admin, NS).delete(huge, &DeleteParams::default()).await?;
    drop(webhook);
    Ok(())
}

// ---- Item 4: one pod must not take admission's connections ----

/// `/mutate` has no client authentication and any pod may connect. One pod (here: loopback
/// address 127.0.0.2; the API server connects from 127.0.0.1) opens 100 HTTP/2 connections
/// and fills each with streams whose bodies never finish. The webhook keeps only
/// `DEFAULT_MAX_CONNECTIONS_PER_PEER` of them (the rest are closed at once, before TLS),
/// and the tenant's own opted-in StatefulSet still gets its pods injected meanwhile.
/// Before the cap the webhook took 256 of them and queued the API server behind the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_pod_leaves_admission_answering() -> anyhow::Result<()> {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    use ldap_elector_webhook::server::DEFAULT_MAX_CONNECTIONS_PER_PEER;

    let bed = Bed::start().await?;
    let tenant = tenant(&bed).await?;
    let admin = bed.admin_client()?;
    let webhook = Webhook::start(&bed).await?;
    webhook.register(&bed, NS, "Fail").await?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(webhook.ca_pem.as_bytes())?)?;
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], webhook.port));
    let flood = 100;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..flood {
        let connector = connector.clone();
        opening.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))?;
            let tcp = socket.connect(server).await?;
            let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let tls = connector.connect(name, tcp).await?;
            let io = hyper_util::rt::TokioIo::new(tls);
            let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok::<_, std::io::Error>(sender)
        });
    }
    // Bounded: a refused connection fails its handshake at once, an accepted one completes.
    let mut held = Vec::new();
    let opened = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(done) = opening.join_next().await {
            if let Ok(Ok(sender)) = done {
                held.push(sender);
            }
        }
    })
    .await;
    assert!(opened.is_ok(), "the webhook neither served nor closed some of the flood's connections");
    println!("flood: {} of {flood} connections from one peer kept", held.len());
    assert!(
        !held.is_empty() && held.len() <= DEFAULT_MAX_CONNECTIONS_PER_PEER,
        "{} of {flood} connections from one peer kept; the cap is {DEFAULT_MAX_CONNECTIONS_PER_PEER}",
        held.len()
    );
    // Every stream the server allows, each with a body that never finishes.
    let chunk = hyper::body::Bytes::from(vec![b'x'; 64 * 1024]);
    let mut streams = Vec::new();
    for sender in &held {
        for _ in 0..8 {
            let frames =
                futures::stream::iter([Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))])
                    .chain(futures::stream::pending());
            let body = BodyExt::boxed(http_body_util::StreamBody::new(frames));
            let req = http::Request::post(format!("https://127.0.0.1:{}/mutate", webhook.port)).body(body)?;
            let mut sender = sender.clone();
            streams.push(tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status()) }));
        }
    }

    // Neighbour, under the flood: the tenant's opted-in StatefulSet gets its pods injected.
    let started = std::time::Instant::now();
    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    sets.create(&PostParams::default(), &fixtures::statefulset(STS, 2, opted_in())?).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    wait_injected(&pods, STS, 2).await?;
    let open = streams.iter().filter(|s| !s.is_finished()).count();
    println!("injected under the flood after {:?}, {open} of its streams still open", started.elapsed());

    for stream in streams {
        stream.abort();
    }
    drop(held);
    drop(webhook);
    Ok(())
}

/// What a TLS client without the API server's client certificate gets from `/mutate` at
/// `port`, trusting `ca_pem`: the response's first line, or the error that ended it.
async fn answer_without_a_client_certificate(port: u16, ca_pem: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    roots.add(ca).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let request = "POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
                   Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    tls.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    match read {
        Err(_) => Err("no answer within 10 s".into()),
        Ok(Err(e)) if answer.is_empty() => Err(format!("read: {e}")),
        Ok(_) => Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string()),
    }
}

/// `/mutate` had no client authentication: any pod that reaches the admission port completes
/// TLS and has its bodies read and handled (here: an empty review gets an HTTP answer). With
/// `--client-ca-file` (chart: `clientAuth.caBundle`), the CA of the API server's client
/// certificate for webhooks, such a client fails the handshake and sends nothing that is read,
/// while the API server's reviews still arrive: the tenant's StatefulSet is injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_authentication_a_pod_gets_no_tls_session_with_the_webhook_and_the_api_server_does(
) -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let tenant = tenant(&bed).await?;
    let admin = bed.admin_client()?;
    let accounts = webhook_identities(&bed).await?;
    // Without client authentication (the chart's default), any client gets an answer.
    let mut open = Webhook::start_as(&bed, &accounts, &[]).await?;
    let answer = answer_without_a_client_certificate(open.port, &open.ca_pem).await.map_err(anyhow::Error::msg)?;
    assert!(answer.starts_with("HTTP/1.1 4"), "an empty review from a pod was answered: {answer:?}");
    println!("without client authentication a pod is answered: {answer}");
    open.stop().await?;

    let client_ca = format!("--client-ca-file={}", bed.dir.join(WEBHOOK_CLIENT_CA).display());
    let mut webhook = Webhook::start_as(&bed, &accounts, &[&client_ca]).await?;
    webhook.register(&bed, NS, "Fail").await?;
    // Neighbour: the port is reachable (TCP), as from any pod.
    tokio::net::TcpStream::connect(("127.0.0.1", webhook.port)).await?;
    match answer_without_a_client_certificate(webhook.port, &webhook.ca_pem).await {
        Err(e) => println!("refused as expected (no client certificate): {e}"),
        Ok(answer) => panic!("ATTACK SUCCEEDED: a client without a certificate was answered: {answer:?}"),
    }
    // The API server presents its client certificate: the tenant's pods are injected.
    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    sets.create(&PostParams::default(), &fixtures::statefulset(STS, 2, opted_in())?).await?;
    wait_injected(&Api::<Pod>::namespaced(admin, NS), STS, 2).await?;
    webhook.stop().await?;
    Ok(())
}

// ---- Item 4: a tenant's objects must not fill the webhook's memory ----

/// The tenant's StatefulSets of the cache attack.
const BIG_STATEFULSETS: usize = 48;
/// Of each, ten values of this size: eight environment values in its template, an annotation
/// on it and one on its template (~1 MiB, under etcd's 1.5 MiB request limit).
const BIG_VALUE: usize = 100 * 1024;

/// A StatefulSet of ~1 MiB that does not opt in, with no replicas (no pods, nothing for
/// the controller-manager to do).
fn big_statefulset(name: &str) -> anyhow::Result<StatefulSet> {
    let filler = |n: usize| "x".repeat(n);
    let mut set = fixtures::statefulset(name, 0, json!({"tenant.example/notes": filler(BIG_VALUE)}))?;
    let template = &mut set.spec.as_mut().ok_or_else(|| anyhow::anyhow!("fixture without spec"))?.template;
    if let Some(meta) = template.metadata.as_mut() {
        meta.annotations = Some([("tenant.example/notes".to_string(), filler(BIG_VALUE))].into());
    }
    let container = template.spec.as_mut().and_then(|s| s.containers.first_mut());
    let container = container.ok_or_else(|| anyhow::anyhow!("fixture without container"))?;
    container.env = Some(serde_json::from_value(json!((0..8)
        .map(|i| json!({"name": format!("FILL{i}"), "value": filler(BIG_VALUE)}))
        .collect::<Vec<_>>()))?);
    Ok(set)
}

/// `resources.limits.memory` of the webhook in the chart's values.yaml, in KiB.
fn chart_memory_limit_kib() -> anyhow::Result<u64> {
    let values = include_str!("../../charts/ldap-elector/values.yaml");
    // The top-level `resources:` block, then its `limits:`, then `memory:`.
    let mut lines = values.lines().skip_while(|l| *l != "resources:").skip(1);
    let mut block = lines.by_ref().take_while(|l| l.starts_with(' ') || l.is_empty() || l.starts_with('#'));
    let limit = block
        .by_ref()
        .skip_while(|l| l.trim() != "limits:")
        .find_map(|l| l.trim().strip_prefix("memory:").map(str::trim))
        .ok_or_else(|| anyhow::anyhow!("values.yaml: no resources.limits.memory"))?;
    let (number, unit) = limit.split_at(limit.find(|c: char| !c.is_ascii_digit()).unwrap_or(limit.len()));
    let kib = match unit {
        "Mi" => 1024,
        "Gi" => 1024 * 1024,
        other => anyhow::bail!("values.yaml: memory limit {limit}: unit {other:?} not understood"),
    };
    Ok(number.parse::<u64>()? * kib)
}

/// Waits until the reconciler made `STS`'s Role: the shared watch forwarded `STS`, created
/// after the tenant's big StatefulSets, so it has put all of them into its store (a watch
/// delivers in resourceVersion order, a list in name order, `bulk-*` before `ldap`).
async fn wait_role(admin: &Client) -> anyhow::Result<()> {
    let roles: Api<Role> = Api::namespaced(admin.clone(), NS);
    wait_for("the reconciler to make the Role of the opted-in StatefulSet", T, || async {
        roles
            .get_opt(&contract::identity_name(STS))
            .await
            .map_err(|e| e.to_string())?
            .map(drop)
            .ok_or_else(|| "not yet".to_string())
    })
    .await
}

/// Every StatefulSet of the cluster reached the webhook's shared store whole, so a tenant
/// (no opt-in needed) creating a few dozen ~1 MiB StatefulSets grew the webhook by what it
/// stored, towards the chart's memory limit (an OOM kill stops admission; with
/// `failurePolicy: Fail` no covered pod is created). The store now keeps a pruned copy: the
/// webhook, a process of its own here, grows by less than half of what the tenant stored,
/// stays under the limit, and a restarted one, which lists them all, does too. Admission
/// keeps answering: the tenant's opted-in StatefulSet created afterwards gets its pods injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_big_statefulsets_stay_out_of_the_webhooks_memory_and_it_keeps_admitting() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let tenant = tenant(&bed).await?;
    let admin = bed.admin_client()?;
    let limit_kib = chart_memory_limit_kib()?;
    let kubeconfig = WebhookProcess::kubeconfig(&bed).await?;
    let webhook = WebhookProcess::start(&bed, &kubeconfig, "webhook-first").await?;
    webhook.register(&bed, NS, "Fail").await?;
    let before = webhook.memory()?;
    println!("webhook pid {}: before the attack {before:?}; chart limit {limit_kib} KiB", webhook.pid());

    // Attack: StatefulSets of ~1 MiB, not opted in.
    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    let mut stored_kib = 0;
    for i in 0..BIG_STATEFULSETS {
        let set = big_statefulset(&format!("bulk-{i:02}"))?;
        stored_kib += serde_json::to_vec(&set)?.len() as u64 / 1024;
        sets.create(&PostParams::default(), &set).await?;
    }
    println!("the tenant stored {BIG_STATEFULSETS} StatefulSets, {stored_kib} KiB");

    // Neighbour, afterwards: the tenant's opted-in StatefulSet gets its pods injected, and
    // its Role says the store has taken in every big one.
    opted_in_statefulset(&tenant, &admin).await?;
    wait_role(&admin).await?;
    let after = webhook.memory()?;
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    println!("webhook after the attack: {after:?}, grown by {grown} KiB");
    assert!(
        after.peak_kib < limit_kib,
        "webhook peaked at {} KiB, above the chart's limit {limit_kib} KiB",
        after.peak_kib
    );
    assert!(
        grown < stored_kib / 2,
        "webhook grew by {grown} KiB for the tenant's {stored_kib} KiB of StatefulSets: it keeps them"
    );

    // A restart (rollout, eviction, OOM kill) lists them all at once. Its Role deleted, the
    // opted-in StatefulSet shows when the new webhook's list has passed the big ones.
    drop(webhook);
    Api::<Role>::namespaced(admin.clone(), NS).delete(&contract::identity_name(STS), &DeleteParams::default()).await?;
    let restarted = WebhookProcess::start(&bed, &kubeconfig, "webhook-restarted").await?;
    restarted.register(&bed, NS, "Fail").await?;
    wait_role(&admin).await?;
    let listed = restarted.memory()?;
    println!("restarted webhook pid {} after listing them: {listed:?}", restarted.pid());
    assert!(
        listed.peak_kib < limit_kib,
        "restarted webhook peaked at {} KiB listing the tenant's StatefulSets, above the chart's limit {limit_kib} KiB",
        listed.peak_kib
    );
    assert!(
        listed.rss_kib.saturating_sub(before.rss_kib) < stored_kib / 2,
        "restarted webhook holds {} KiB (the first one started at {} KiB) after listing {stored_kib} KiB: it keeps them",
        listed.rss_kib,
        before.rss_kib
    );

    // And it still admits: a replaced pod of the opted-in StatefulSet is injected.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let replaced = contract::pod_name(STS, 1);
    let old_uid = pods.get(&replaced).await?.metadata.uid;
    pods.delete(&replaced, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    wait_for("the opted-in pod re-created and injected by the restarted webhook", T, || async {
        let pod = pods.get_opt(&replaced).await.map_err(|e| e.to_string())?.ok_or("not yet".to_string())?;
        let injected = pod.metadata.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_STATUS)).is_some();
        (pod.metadata.uid != old_uid && injected).then_some(()).ok_or("not yet".to_string())
    })
    .await?;
    println!("restarted webhook after admitting: {:?}", restarted.memory()?);
    Ok(())
}

// ---- Item 1: the leader-label protection must not be bypassed through the pod ----

/// With `patch pods` a tenant could replace the code that holds the pod-bound elector token
/// (which passes the role policy as "the pod's own elector"), run slapd outside the fence,
/// attach a debug container, or mint such a token itself. None of it works on an injected
/// pod; the same requests on a pod without an elector still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_replace_code_or_mint_the_elector_token_of_an_injected_pod() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let (tenant, admin, webhook) = installed(&bed).await?;
    let (_, injected) = opted_in_statefulset(&tenant, &admin).await?;
    let as_admin: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let (first, second) = (contract::pod_name(STS, 0), contract::pod_name(STS, 1));
    // A pod of the tenant's without an elector: the neighbour of every attack.
    let plain = "plain";
    let pods: Api<Pod> = Api::namespaced(tenant.clone(), NS);
    let plain_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": plain},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))?;
    pods.create(&PostParams::default(), &plain_pod).await?;

    let pp = PatchParams::default();
    let dry = PatchParams { dry_run: true, ..Default::default() };
    let sidecar = image_path(&injected[1], contract::SIDECAR_CONTAINER)?;
    let replace_sidecar = replace_image(&sidecar)?;
    wait_policy_active(policies::POD_SPEC_POLICY, || pods.patch(&second, &dry, &replace_sidecar)).await?;

    // Neighbour: the tenant may patch the injected pod's metadata.
    pods.patch(&second, &pp, &Patch::Merge(json!({"metadata": {"annotations": {"team": "ldap"}}}))).await?;

    // Attack: the sidecar's image.
    refused(
        pods.patch(&second, &pp, &replace_sidecar).await,
        "replace the ldap-elector sidecar's image",
        policies::POD_SPEC_POLICY,
        &format!("may not replace images of pod {NS}/{second} ({}={ATTACKER_IMAGE})", contract::SIDECAR_CONTAINER),
    );
    // Attack: slapd's image, on the other pod.
    refused(
        pods.patch(&first, &pp, &replace_image(&image_path(&injected[0], "ldap")?)?).await,
        "replace slapd's image",
        policies::POD_SPEC_POLICY,
        "slapd outside the fence",
    );
    // Neighbour: the same patch on a pod without an elector.
    pods.patch(plain, &pp, &replace_image("/spec/containers/0/image")?).await?;

    // Attack: an ephemeral container next to the sidecar. `edit` does not grant
    // `pods/ephemeralcontainers`; clusters that allow `kubectl debug` grant it on top, so the
    // tenant gets it here (and nothing else) to show the policy holds without RBAC's help.
    let debug = can_i(&tenant, "patch", "pods", "ephemeralcontainers").await.map_err(anyhow::Error::msg)?;
    assert!(!debug, "the built-in edit role grants pods/ephemeralcontainers: RBAC changed, review this attack");
    let rules = json!([{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch"]}]);
    grant_tenant(&admin, "debug-pods", rules).await?;
    wait_for("the tenant's debug right", T, || async {
        can_i(&tenant, "patch", "pods", "ephemeralcontainers").await?.then_some(()).ok_or("not yet".to_string())
    })
    .await?;
    refused(
        pods.patch_subresource("ephemeralcontainers", &second, &pp, &debug_container(contract::SIDECAR_CONTAINER))
            .await,
        "add an ephemeral container to an injected pod",
        policies::POD_SPEC_POLICY,
        &format!("may not add an ephemeral container to pod {NS}/{second}"),
    );
    // Neighbour: `kubectl debug` of a pod without an elector.
    pods.patch_subresource("ephemeralcontainers", plain, &pp, &debug_container("app")).await?;

    // Attack: a token of the elector's account bound to the standby-to-be, which would pass
    // the role policy as that pod's own elector (the reproducer labelled both pods
    // leader with it).
    let account = contract::identity_name(STS);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    wait_for("the reconciler to create the elector account", T, || async {
        accounts.get_opt(&account).await.map_err(|e| e.to_string())?.map(drop).ok_or("not yet".to_string())
    })
    .await?;
    // Neighbour: a token of that account without a pod binding (the role policy refuses it
    // for role changes; label_protection.rs shows that).
    request_token(&tenant, NS, &account, None).await?;
    // The policy acts on every pod-bound token a non-node requests: wait until it refuses one
    // of the `default` account bound to the plain pod (policies load asynchronously in the
    // apiserver; CI once saw this one act later than the pod-spec policy waited for above).
    let plain_uid = pods.get(plain).await?.metadata.uid.unwrap_or_default();
    wait_for(&format!("policy {} to act", policies::POD_BOUND_TOKEN_POLICY), T, || async {
        match request_token(&tenant, NS, "default", Some((plain, &plain_uid))).await {
            Ok(_) => Err("admitted (policy not active yet)".to_string()),
            Err(e) if refused_by(&e, policies::POD_BOUND_TOKEN_POLICY) => Ok(()),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await?;
    let uid = injected[1].metadata.uid.clone().unwrap_or_default();
    let minted = request_token(&tenant, NS, &account, Some((&second, &uid))).await;
    let error = match minted {
        Ok(_) => panic!("ATTACK SUCCEEDED: the tenant minted a token of {account} bound to pod {second}"),
        Err(e) => e.chain().find_map(|c| c.downcast_ref::<kube::Error>()).map(|e| e.to_string()).unwrap_or_default(),
    };
    assert!(
        error.contains(policies::POD_BOUND_TOKEN_POLICY)
            && error.contains("only the kubelet requests pod-bound tokens"),
        "minting a pod-bound elector token: expected a refusal by {}, got: {error}",
        policies::POD_BOUND_TOKEN_POLICY
    );
    println!("refused as expected (mint a pod-bound elector token): {error}");

    // Nothing changed on the injected pods.
    for (pod, before) in [(&first, &injected[0]), (&second, &injected[1])] {
        let now = as_admin.get(pod).await?;
        let images = |p: &Pod| {
            let spec = p.spec.clone().unwrap_or_default();
            let all = spec.containers.into_iter().chain(spec.init_containers.unwrap_or_default());
            all.map(|c| (c.name, c.image)).collect::<Vec<_>>()
        };
        assert_eq!(images(&now), images(before), "{pod}'s images changed");
        assert!(now.spec.and_then(|s| s.ephemeral_containers).unwrap_or_default().is_empty(), "{pod} got a debugger");
    }
    drop(webhook);
    Ok(())
}

// ---- Items 1 and 7: the elector's token is only in the sidecar ----

/// A service-account token volume of the template's own (audience `vault`, as a secrets
/// agent uses one), mounted into slapd.
const TEMPLATE_TOKEN_VOLUME: &str = "vault-token";

/// `set` with its pods running as `account` (`automountServiceAccountToken: true`, so the
/// ServiceAccount plugin mounts that account's token into slapd even where the account says
/// otherwise) and, with `projected`, [`TEMPLATE_TOKEN_VOLUME`] mounted into slapd.
fn with_tokens(set: StatefulSet, account: Option<&str>, projected: bool) -> anyhow::Result<StatefulSet> {
    let mut set = serde_json::to_value(set)?;
    let spec = &mut set["spec"]["template"]["spec"];
    if let Some(account) = account {
        spec["serviceAccountName"] = json!(account);
        spec["automountServiceAccountToken"] = json!(true);
    }
    if projected {
        spec["volumes"] = json!([{"name": TEMPLATE_TOKEN_VOLUME, "projected": {"sources": [
            {"serviceAccountToken": {"audience": "vault", "path": "token", "expirationSeconds": 600}},
        ]}}]);
        spec["containers"][0]["volumeMounts"] =
            json!([{"name": TEMPLATE_TOKEN_VOLUME, "mountPath": "/var/run/secrets/vault", "readOnly": true}]);
    }
    Ok(serde_json::from_value(set)?)
}

/// (container, account) for every container of `pod` that mounts a service-account token
/// (a projected volume with a `serviceAccountToken` source: the ServiceAccount plugin's, the
/// webhook's, the template's own); the kubelet projects it for the pod's account.
fn token_holders(pod: &Pod) -> Vec<(String, String)> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let projects_token = |v: &&k8s_openapi::api::core::v1::Volume| {
        v.projected.iter().flat_map(|p| p.sources.iter().flatten()).any(|s| s.service_account_token.is_some())
    };
    let tokens: Vec<&str> = spec.volumes.iter().flatten().filter(projects_token).map(|v| v.name.as_str()).collect();
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
    containers
        .filter(|c| c.volume_mounts.iter().flatten().any(|m| tokens.contains(&m.name.as_str())))
        .map(|c| (c.name.clone(), account.clone()))
        .collect()
}

/// A pod-bound token of the elector's account passes the role policy as the pod's own
/// elector. Naming that account in the template (`<sts>-ldap-elector`, which the reconciler
/// creates) kept the ServiceAccount plugin's token in slapd, as for an account of the
/// consumer's own; and a token volume the template projects itself carries the account the
/// webhook switches the pod to. Either way slapd held the elector's identity (and `edit`
/// may exec into slapd). Now the elector's account is handled like `default` (no consumer
/// container keeps a token of it), and a template-projected token where the pod runs as the
/// elector's account is refused, the StatefulSet's Event says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_container_but_the_sidecar_holds_a_token_of_the_elector_account() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let (tenant, admin, webhook) = installed(&bed).await?;
    let pp = PostParams::default();
    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    let as_admin: Api<Pod> = Api::namespaced(admin.clone(), NS);

    // Neighbour: a StatefulSet running as an account of the tenant's own, with a token volume
    // of its own: injected, and slapd keeps both tokens of that account (the documented
    // trade-off of a custom account: the consumer chose to share it with the elector).
    let own_account = "ldap-app";
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": own_account}}))?;
    Api::<ServiceAccount>::namespaced(tenant.clone(), NS).create(&pp, &account).await?;
    sets.create(&pp, &with_tokens(fixtures::statefulset(STS, 1, opted_in())?, Some(own_account), true)?).await?;
    let neighbour = &wait_injected(&as_admin, STS, 1).await?[0];
    let holders = token_holders(neighbour);
    for container in ["ldap", contract::SIDECAR_CONTAINER] {
        assert!(holders.contains(&(container.into(), own_account.into())), "{container}: {holders:?}");
    }

    // Attack (a): the template names the elector's own account.
    let rogue = "rogue";
    let elector = contract::identity_name(rogue);
    sets.create(&pp, &with_tokens(fixtures::statefulset(rogue, 1, opted_in())?, Some(&elector), false)?).await?;
    let pod = &wait_injected(&as_admin, rogue, 1).await?[0];
    let holders = token_holders(pod);
    if let Some((container, account)) = holders.iter().find(|(c, _)| c != contract::SIDECAR_CONTAINER) {
        // What the kubelet would project into that container: a token bound to the pod.
        let name = contract::pod_name(rogue, 0);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let token = request_token(&admin, NS, account, Some((&name, &uid))).await?;
        let leader = Patch::Merge(json!({"metadata": {"labels": {contract::LABEL_ROLE: contract::ROLE_LEADER}}}));
        let as_container = Api::<Pod>::namespaced(bed.client_with_token(&token)?, NS);
        // Until the reconciler's Role reaches the account (RBAC refuses before the policy).
        let labelled = wait_for("the elector Role to reach that token", T, || async {
            match as_container.patch(&name, &PatchParams::default(), &leader).await {
                Ok(_) => Ok("admitted".to_string()),
                Err(kube::Error::Api(e)) if e.message.contains("cannot patch") => Err(e.message),
                Err(e) => Ok(e.to_string()),
            }
        })
        .await;
        panic!(
            "ATTACK SUCCEEDED: container {container} of {name} holds a token of {account}, the elector's account \
             (labelling its pod leader with it: {})",
            labelled.unwrap_or_else(|e| e.to_string())
        );
    }
    assert_eq!(holders, vec![(contract::SIDECAR_CONTAINER.to_string(), elector.clone())]);

    // Attack (b): a token volume of the template's own in a pod the webhook runs as the
    // elector's account (the template names none, i.e. `default`).
    let projected = "projected";
    sets.create(&pp, &with_tokens(fixtures::statefulset(projected, 1, opted_in())?, None, true)?).await?;
    let needle = format!("volume \"{TEMPLATE_TOKEN_VOLUME}\" projects a service-account token");
    let failed = wait_event(&admin, projected, "FailedCreate", &needle).await?;
    println!("refused as expected (a template-projected token in a pod of the elector's account): {failed}");
    assert!(failed.contains(&contract::identity_name(projected)), "the message names the account: {failed}");
    assert!(as_admin.get_opt(&contract::pod_name(projected, 0)).await?.is_none(), "a pod of {projected} was admitted");
    drop(webhook);
    Ok(())
}

// ---- Item 5: the blast radius of a webhook outage ----

/// With `failurePolicy: Fail` every StatefulSet pod the webhook covered depended on it, opted
/// in or not. With the chart's `webhookConfiguration.podOptInLabel` only pods labelled
/// `ldap-elector.dev/inject: "true"` reach it, and the policy `<fullname>-opt-in` refuses an
/// opted-in StatefulSet without that label (its pods would start without the elector). Then a
/// webhook outage (scaled to 0) blocks only the pods of opted-in StatefulSets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_outage_blocks_no_pod_of_a_statefulset_that_did_not_opt_in() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let tenant = tenant(&bed).await?;
    let admin = bed.admin_client()?;
    let scoped = ["--set", "webhookConfiguration.podOptInLabel=true"];
    policies::install_with(&bed, &["templates/opt-in-guard.yaml", "templates/pod-protection.yaml"], &scoped).await?;
    let scope = policies::pod_webhook_scope(&bed, &scoped).await?;
    assert_eq!(scope.objects["matchLabels"][contract::LABEL_INJECT], "true", "{scope:?}");
    let mut webhook = Webhook::start(&bed).await?;
    webhook.register_scoped(&bed, "Fail", scope).await?;
    // With the scope narrowed, a StatefulSet pod without the label never reaches the webhook:
    // the policy `<fullname>-pod-marker` refuses it if it carries the injection marker (item 7).
    let unreviewed: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": contract::pod_name("stray", 0),
            "labels": {contract::LABEL_STATEFULSET_POD_NAME: contract::pod_name("stray", 0)},
            "annotations": {contract::ANNOTATION_STATUS: contract::STATUS_INJECTED},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "stray", "uid": "0", "controller": true}],
        },
        "spec": {"containers": [{"name": "ldap", "image": ATTACKER_IMAGE}]},
    }))?;
    let as_tenant: Api<Pod> = Api::namespaced(tenant.clone(), NS);
    let dry_pod = PostParams { dry_run: true, ..Default::default() };
    wait_policy_active(policies::POD_MARKER_POLICY, || as_tenant.create(&dry_pod, &unreviewed)).await?;

    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    let labelled = |name: &str| -> anyhow::Result<StatefulSet> {
        let mut set = fixtures::statefulset(name, 2, opted_in())?;
        if let Some(spec) = set.spec.as_mut() {
            let labels =
                spec.template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
            labels.insert(contract::LABEL_INJECT.into(), "true".into());
        }
        Ok(set)
    };
    // Neighbour: an opted-in StatefulSet with the label is injected (its marked pods pass
    // the marker policy: the webhook reviewed them).
    sets.create(&PostParams::default(), &labelled(STS)?).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    wait_injected(&pods, STS, 2).await?;
    // One without the label would be missed by the webhook: refused, saying why.
    let dry = PostParams { dry_run: true, ..Default::default() };
    let unlabelled = fixtures::statefulset("forgot", 2, opted_in())?;
    wait_policy_active(policies::OPT_IN_POLICY, || sets.create(&dry, &unlabelled)).await?;
    refused(
        sets.create(&PostParams::default(), &unlabelled).await,
        "opt a StatefulSet in without the pod-template label",
        policies::OPT_IN_POLICY,
        &format!("lacks the label {}: \"true\"", contract::LABEL_INJECT),
    );

    // The outage: an opted-in StatefulSet gets no pods, one that did not opt in gets them.
    outage_spares_what_the_webhook_does_not_see(&mut webhook, &admin, &sets, &sets, &labelled("late")?).await?;
    Ok(())
}

/// By default (the chart's `webhookConfiguration.namespaceOptInLabel`) the webhook serves only
/// namespaces a cluster admin labelled `ldap-elector.dev/enabled: "true"`, like sidecar
/// injectors: a webhook outage blocks no pod anywhere else, a tenant cannot opt a namespace in
/// (namespaces are cluster-scoped), and an opted-in StatefulSet elsewhere is refused by the
/// policy `<fullname>-opt-in`, saying which label is missing (its pods would start without the
/// elector). Before, the default scope was every namespace but the excluded ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_webhook_outage_blocks_pods_only_in_namespaces_an_admin_opted_in() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let tenant = tenant(&bed).await?;
    let admin = bed.admin_client()?;
    policies::install_with(&bed, &["templates/opt-in-guard.yaml"], &[]).await?;
    let scope = policies::pod_webhook_scope(&bed, &[]).await?;
    assert_eq!(scope.namespaces["matchLabels"][contract::LABEL_NAMESPACE_ENABLED], "true", "{scope:?}");
    let mut webhook = Webhook::start(&bed).await?;
    webhook.register_scoped(&bed, "Fail", scope).await?;

    // The tenant's namespace was opted in by the admin (`fixtures::namespace`); the tenant can
    // read it but not label any namespace, its own or another.
    let namespaces: Api<Namespace> = Api::all(tenant.clone());
    namespaces.get(NS).await?;
    let other = "elsewhere";
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": other}}))?)
        .await?;
    let opt_in = Patch::Merge(json!({"metadata": {"labels": {contract::LABEL_NAMESPACE_ENABLED: "true"}}}));
    match namespaces.patch(other, &PatchParams::default(), &opt_in).await {
        Err(kube::Error::Api(e)) if e.code == 403 => println!("refused as expected (label a namespace): {}", e.message),
        other => panic!("ATTACK SUCCEEDED or failed otherwise: the tenant labelled a namespace: {other:?}"),
    }

    // Neighbour: an opted-in StatefulSet in the opted-in namespace is injected.
    let (_, _) = opted_in_statefulset(&tenant, &admin).await?;
    // One in a namespace outside the scope would be missed by the webhook: refused, saying why.
    let elsewhere: Api<StatefulSet> = Api::namespaced(admin.clone(), other);
    let dry = PostParams { dry_run: true, ..Default::default() };
    let missed = fixtures::statefulset(STS, 2, opted_in())?;
    wait_policy_active(policies::OPT_IN_POLICY, || elsewhere.create(&dry, &missed)).await?;
    refused(
        elsewhere.create(&PostParams::default(), &missed).await,
        "opt a StatefulSet in where the webhook does not look",
        policies::OPT_IN_POLICY,
        &format!("lacks the labels {}=true", contract::LABEL_NAMESPACE_ENABLED),
    );

    // The outage: an opted-in StatefulSet gets no pods, one in a namespace nobody opted in gets them.
    let late = fixtures::statefulset("late", 2, opted_in())?;
    let tenant_sets = Api::namespaced(tenant.clone(), NS);
    outage_spares_what_the_webhook_does_not_see(&mut webhook, &admin, &elsewhere, &tenant_sets, &late).await?;
    Ok(())
}

/// The outage of item 5: the webhook stopped (its configuration stays, failurePolicy Fail).
/// A StatefulSet that did not opt in, created through `unseen` (where the webhook does not
/// look), still gets its pods, while `opted_in`, created through `tenant` (in [`NS`]), gets
/// none: no slapd starts without its elector.
async fn outage_spares_what_the_webhook_does_not_see(
    webhook: &mut Webhook,
    admin: &Client,
    unseen: &Api<StatefulSet>,
    tenant: &Api<StatefulSet>,
    opted_in: &StatefulSet,
) -> anyhow::Result<()> {
    webhook.stop().await?;
    assert!(http_status(webhook.health_port, "/readyz").await.is_err(), "the webhook still answers");
    unseen.create(&PostParams::default(), &fixtures::statefulset("other", 2, json!({}))?).await?;
    let pods_unseen: Api<Pod> = Api::namespaced(admin.clone(), unseen.namespace().unwrap_or(NS));
    wait_for("the pods of a StatefulSet the webhook does not see", T, || async {
        let mut missing = Vec::new();
        for name in [contract::pod_name("other", 0), contract::pod_name("other", 1)] {
            if pods_unseen.get_opt(&name).await.map_err(|e| e.to_string())?.is_none() {
                missing.push(name);
            }
        }
        missing.is_empty().then_some(()).ok_or(format!("missing {missing:?}"))
    })
    .await?;
    let late = opted_in.metadata.name.clone().unwrap_or_default();
    tenant.create(&PostParams::default(), opted_in).await?;
    wait_event(admin, &late, "FailedCreate", "pods.ldap-elector.dev").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    assert!(pods.get_opt(&contract::pod_name(&late, 0)).await?.is_none(), "an opted-in pod started uninjected");
    Ok(())
}

// ---- Item 6: the webhook as a confused deputy in the namespace ----

/// The reconciler acts with the webhook's rights, wider than the tenant's: it must not
/// narrow another team's Service to the tenant's leader because an annotation names it,
/// take over an object named like one it generates (and delete it on opt-out), or follow a
/// write Service's mark that a tenant relabelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_cannot_steer_or_take_over_what_another_team_owns() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let (tenant, admin, webhook) = installed(&bed).await?;

    // Another team's objects in the namespace: a Service and a Lease named as ours would be
    // for a StatefulSet `payroll`.
    let other = "payroll";
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    services.create(&PostParams::default(), &fixtures::service(other, json!({"app": other}))?).await?;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": contract::lease_name(other)}}))?;
    leases.create(&PostParams::default(), &lease).await?;

    // Neighbour: the tenant's own write Service gets the leader selector and our mark.
    let primary = "ldap-primary";
    let as_tenant: Api<Service> = Api::namespaced(tenant.clone(), NS);
    as_tenant.create(&PostParams::default(), &fixtures::service(primary, json!({"app": STS}))?).await?;
    let annotations = json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: format!("{primary}, {other}")});
    let sets: Api<StatefulSet> = Api::namespaced(tenant.clone(), NS);
    sets.create(&PostParams::default(), &fixtures::statefulset(STS, 2, annotations)?).await?;
    wait_for("the tenant's write Service to select the leader", T, || async {
        let svc = services.get(primary).await.map_err(|e| e.to_string())?;
        let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
        let mark = svc.metadata.labels.unwrap_or_default().get(contract::LABEL_STATEFULSET).cloned();
        (selector.get(contract::LABEL_ROLE).map(String::as_str) == Some(contract::ROLE_LEADER)
            && mark.as_deref() == Some(STS))
        .then_some(())
        .ok_or(format!("selector {selector:?}, mark {mark:?}"))
    })
    .await?;

    // Attack: the annotation names the other team's Service. Left alone, saying why; the
    // tenant's pods do not wait for it.
    let needle = format!("Service {other} left alone: not a write Service");
    let note = wait_event(&admin, STS, contract::EVENT_LEADER_SERVICE_REFUSED, &needle).await?;
    println!("refused as expected (steer another team's Service): {note}");
    let selector = services.get(other).await?.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector, [("app".to_string(), other.to_string())].into(), "the other team's Service was changed");
    wait_injected(&Api::namespaced(admin.clone(), NS), STS, 2).await?;

    // Attack: a StatefulSet named so that its Lease is the other team's. Nothing is taken
    // over (not even a Role granting that Lease), and deleting the StatefulSet leaves it.
    sets.create(&PostParams::default(), &fixtures::statefulset(other, 1, opted_in())?).await?;
    let needle = format!("Lease {NS}/{}", contract::lease_name(other));
    let note = wait_event(&admin, other, contract::EVENT_OBJECT_NOT_OURS, &needle).await?;
    println!("refused as expected (take over another team's Lease): {note}");
    let roles: Api<Role> = Api::namespaced(admin.clone(), NS);
    assert!(roles.get_opt(&contract::identity_name(other)).await?.is_none(), "a Role was granted on their Lease");
    let theirs = leases.get(&contract::lease_name(other)).await?;
    assert!(theirs.metadata.owner_references.is_none() && theirs.metadata.labels.is_none(), "{:?}", theirs.metadata);
    sets.delete(other, &DeleteParams::default()).await?;

    // Attack: relabel the write Service's mark, so that another StatefulSet's reconciler
    // "restores" it (removes its leader selector). Neighbour: other metadata changes work.
    let pp = PatchParams::default();
    as_tenant.patch(primary, &pp, &Patch::Merge(json!({"metadata": {"annotations": {"team": "ldap"}}}))).await?;
    for mark in [json!(other), Value::Null] {
        refused(
            as_tenant
                .patch(
                    primary,
                    &pp,
                    &Patch::Merge(json!({"metadata": {"labels": {contract::LABEL_STATEFULSET: mark}}})),
                )
                .await,
            "relabel the write Service's mark",
            policies::LEADER_SERVICE_POLICY,
            &format!("may not set, change or remove the label {}", contract::LABEL_STATEFULSET),
        );
    }
    assert!(leases.get_opt(&contract::lease_name(other)).await?.is_some(), "the other team's Lease was deleted");
    drop(webhook);
    Ok(())
}

// ---- Item 2: a stolen webhook token ----

/// The admission server is what every pod of the cluster can reach over the network; it ran
/// under the account that also held the reconciler's write rights (patch any pod, create
/// Roles and RoleBindings, update Leases, its webhook configuration, Secrets). Now it runs
/// apart from the controller, under an account that may only read: with its token an
/// attacker reads what admission reads and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_admission_server_token_writes_nothing() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let webhook = Webhook::start(&bed).await?;
    fixtures::namespace(&admin, NS, Some("restricted")).await?;
    webhook.register(&bed, NS, "Fail").await?;
    let pp = PostParams::default();
    Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .create(&pp, &fixtures::statefulset(STS, 0, json!({contract::ANNOTATION_INJECT: "true"}))?)
        .await?;
    Api::<Service>::namespaced(admin.clone(), NS)
        .create(&pp, &fixtures::service("ldap-primary", json!({"app": STS}))?)
        .await?;
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": contract::lease_name(STS)}}))?;
    let leases = Api::<Lease>::namespaced(admin.clone(), NS);
    if leases.get_opt(&contract::lease_name(STS)).await?.is_none() {
        leases.create(&pp, &lease).await?;
    }

    let stolen = bed.service_account_client(WEBHOOK_NS, WEBHOOK_SA).await?;
    // Neighbour: what the token is for, reading StatefulSets and Services.
    Api::<StatefulSet>::namespaced(stolen.clone(), NS).get(STS).await?;
    Api::<Service>::namespaced(stolen.clone(), NS).get("ldap-primary").await?;

    let user = format!("User \"system:serviceaccount:{WEBHOOK_NS}:{WEBHOOK_SA}\"");
    let label = Patch::Merge(json!({"metadata": {"labels": {contract::LABEL_ROLE: contract::ROLE_LEADER}}}));
    let selector = Patch::Merge(json!({"spec": {"selector": {"app": "attacker"}}}));
    let patch = PatchParams::default();
    refused(
        Api::<Pod>::namespaced(stolen.clone(), NS).patch("ldap-1", &patch, &label).await,
        "label a pod leader",
        &user,
        "cannot patch resource \"pods\"",
    );
    refused(
        Api::<Service>::namespaced(stolen.clone(), NS).patch("ldap-primary", &patch, &selector).await,
        "point a write Service at its own pods",
        &user,
        "cannot patch resource \"services\"",
    );
    let holder = Patch::Merge(json!({"spec": {"holderIdentity": "attacker"}}));
    refused(
        Api::<Lease>::namespaced(stolen.clone(), NS).patch(&contract::lease_name(STS), &patch, &holder).await,
        "take the elector Lease",
        &user,
        "cannot patch resource \"leases\"",
    );
    let role: Role = serde_json::from_value(json!({"metadata": {"name": "grab"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]}))?;
    refused(
        Api::<Role>::namespaced(stolen.clone(), NS).create(&pp, &role).await,
        "grant rights in a namespace",
        &user,
        "cannot create resource \"roles\"",
    );
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "planted"}}))?;
    refused(
        Api::<Secret>::namespaced(stolen.clone(), WEBHOOK_NS).create(&pp, &secret).await,
        "plant a Secret in the release namespace",
        &user,
        "cannot create resource \"secrets\"",
    );
    let configs = Api::<MutatingWebhookConfiguration>::all(stolen);
    let redirect: Edit = |w| w.client_config.url = Some("https://198.51.100.7/mutate".into());
    let config = edited(&Api::<MutatingWebhookConfiguration>::all(admin).get(WEBHOOK_CONFIG).await?, redirect);
    refused(
        configs.replace(WEBHOOK_CONFIG, &pp, &config).await,
        "redirect the webhook",
        &user,
        "cannot update resource \"mutatingwebhookconfigurations\"",
    );
    drop(webhook);
    Ok(())
}

/// The webhook's controller may `update` its MutatingWebhookConfiguration (to publish the
/// caBundle); `resourceNames` limits the object, not the fields. With its token an attacker
/// could point the webhook elsewhere or drop its selectors. The policy
/// `<fullname>-webhook-configuration` lets that account change only the caBundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_webhook_token_changes_only_the_ca_bundle_of_its_configuration() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let webhook = Webhook::start(&bed).await?;
    webhook.register(&bed, NS, "Fail").await?;
    policies::install_with(&bed, &["templates/webhook-configuration-guard.yaml"], &[]).await?;
    let stolen = bed.service_account_client(WEBHOOK_NS, CONTROLLER_SA).await?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(stolen);
    let redirect: Edit = |w| w.client_config.url = Some("https://198.51.100.7/mutate".into());
    let dry = PostParams { dry_run: true, ..Default::default() };
    let probe = edited(&configs.get(WEBHOOK_CONFIG).await?, redirect);
    wait_policy_active(policies::WEBHOOK_CONFIGURATION_POLICY, || configs.replace(WEBHOOK_CONFIG, &dry, &probe))
        .await?;

    // Neighbour: what the right is for, a new caBundle.
    let rotate: Edit = |w| w.client_config.ca_bundle = Some(k8s_openapi::ByteString(b"rotated".to_vec()));
    let rotated = edited(&configs.get(WEBHOOK_CONFIG).await?, rotate);
    configs.replace(WEBHOOK_CONFIG, &PostParams::default(), &rotated).await?;

    // Attacks: redirect it, drop its selectors, let it fail open.
    let current = configs.get(WEBHOOK_CONFIG).await?;
    let drop_selector: Edit = |w| w.namespace_selector = None;
    let fail_open: Edit = |w| w.failure_policy = Some("Ignore".into());
    for (what, edit) in
        [("redirect it", redirect), ("drop its namespace selector", drop_selector), ("let it fail open", fail_open)]
    {
        refused(
            configs.replace(WEBHOOK_CONFIG, &PostParams::default(), &edited(&current, edit)).await,
            what,
            policies::WEBHOOK_CONFIGURATION_POLICY,
            "may change only clientConfig.caBundle",
        );
    }
    drop(webhook);
    Ok(())
}

/// A change to every webhook of a configuration.
type Edit = fn(&mut MutatingWebhook);

fn edited(config: &MutatingWebhookConfiguration, edit: Edit) -> MutatingWebhookConfiguration {
    let mut config = config.clone();
    config.webhooks.iter_mut().flatten().for_each(edit);
    config
}

// ---- Item 7: hardening ----

/// The injection marker `ldap-elector.dev/status: injected` is what the label protection
/// trusts as "this pod runs the webhook's elector". A tenant who may create pods started a
/// pod carrying it, running as the elector's account: the webhook skipped a marked pod as
/// "already injected" (with a container named like our sidecar, running the tenant's code),
/// and never saw a pod without a StatefulSet owner at all. Either pod's own pod-bound token
/// (minted by the kubelet) then passes the role policy as "the pod's own elector" and labels
/// it leader. Now the webhook refuses every pod that arrives marked, and the policy
/// `<fullname>-pod-marker` every marked pod the webhook does not review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_create_a_pod_carrying_the_injection_marker() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let (tenant, admin, webhook) = installed(&bed).await?;
    let (set, _) = opted_in_statefulset(&tenant, &admin).await?;
    let account = contract::identity_name(STS);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    wait_for("the reconciler to create the elector account", T, || async {
        accounts.get_opt(&account).await.map_err(|e| e.to_string())?.map(drop).ok_or("not yet".to_string())
    })
    .await?;

    let pods: Api<Pod> = Api::namespaced(tenant.clone(), NS);
    let (pp, dry) = (PostParams::default(), PostParams { dry_run: true, ..Default::default() });
    let marker = json!({contract::ANNOTATION_STATUS: contract::STATUS_INJECTED});

    // A stand-in for a standby: a pod of the StatefulSet (owner, pod-name label) whose
    // container posing as the elector runs the tenant's code.
    let stand_in = contract::pod_name(STS, 2);
    let owned = |annotations: Value| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {
                "name": stand_in, "labels": {"app": STS, contract::LABEL_STATEFULSET_POD_NAME: stand_in},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": STS,
                                     "uid": set.metadata.uid.clone().unwrap_or_default(), "controller": true}],
            },
            "spec": {
                "serviceAccountName": account,
                "initContainers": [{"name": contract::SIDECAR_CONTAINER, "image": ATTACKER_IMAGE, "restartPolicy": "Always"}],
                "containers": [{"name": "ldap", "image": ATTACKER_IMAGE}],
            },
        }))?)
    };
    // Neighbour: without the marker (and without a container of our name) the tenant may
    // create it, and the webhook injects our elector (dry run: the StatefulSet controller
    // would delete a pod beyond its replicas).
    let mut unmarked = owned(json!({}))?;
    if let Some(spec) = unmarked.spec.as_mut() {
        spec.init_containers = None;
    }
    let admitted = pods.create(&dry, &unmarked).await?;
    let inits = admitted.spec.and_then(|s| s.init_containers).unwrap_or_default();
    let sidecar = inits.iter().find(|c| c.name == contract::SIDECAR_CONTAINER).and_then(|c| c.image.clone());
    assert_eq!(sidecar.as_deref(), Some(SIDECAR_IMAGE), "the unmarked pod was not injected: {inits:?}");
    // Attack: marked, with the tenant's code as "the elector".
    refused_by_webhook(
        pods.create(&pp, &owned(marker.clone())?).await,
        "create a StatefulSet pod carrying the injection marker, the tenant's code posing as the elector",
        "only the ldap-elector webhook sets",
    );

    // A pod of the tenant's own, running as the elector's account, selected by the write
    // Service's labels; no StatefulSet owner, so the pod webhook never sees it.
    let impostor = |annotations: Value| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "impostor", "labels": {"app": STS}, "annotations": annotations},
            "spec": {"serviceAccountName": account, "containers": [{"name": "ldap", "image": ATTACKER_IMAGE}]},
        }))?)
    };
    let marked_impostor = impostor(marker)?;
    wait_policy_active(policies::POD_MARKER_POLICY, || pods.create(&dry, &marked_impostor)).await?;
    // Neighbour: the same pod without the marker is created (the role policy refuses its
    // token any role change: it runs no injected elector).
    pods.create(&pp, &impostor(json!({}))?).await?;
    pods.delete("impostor", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    wait_for("the unmarked impostor gone", T, || async {
        pods.get_opt("impostor").await.map_err(|e| e.to_string())?.map_or(Ok(()), |_| Err("not yet".to_string()))
    })
    .await?;
    // Attack: with the marker.
    refused(
        pods.create(&pp, &marked_impostor).await,
        "create a pod carrying the injection marker without a StatefulSet owner",
        policies::POD_MARKER_POLICY,
        "carrying the annotation ldap-elector.dev/status=injected: only the ldap-elector webhook sets it",
    );
    assert!(pods.get_opt(&stand_in).await?.is_none(), "the stand-in exists");
    drop(webhook);
    Ok(())
}

/// The Lease annotations `switchover-to` (the leader hands over to the named pod) and
/// `allow-diverged` (a standby whose data differs may be promoted, losing writes) steer the
/// election past its own checks; `edit` holds `update leases`, and RBAC cannot say which
/// fields of a Lease that may touch. The policy `<fullname>-lease-overrides` leaves them to
/// cluster admins (`ldap-elector switchover` runs as one); an elector (pod-bound token) may
/// only clear a switchover request, as the leader does when it hands over or refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_request_a_switchover_or_allow_a_diverged_standby() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let (tenant, admin, webhook) = installed(&bed).await?;
    let (_, injected) = opted_in_statefulset(&tenant, &admin).await?;
    let name = contract::lease_name(STS);
    let as_admin: Api<Lease> = Api::namespaced(admin.clone(), NS);
    wait_for("the reconciler to create the Lease", T, || async {
        as_admin.get_opt(&name).await.map_err(|e| e.to_string())?.map(drop).ok_or("not yet".to_string())
    })
    .await?;
    assert!(can_i(&tenant, "update", "leases", "").await.map_err(anyhow::Error::msg)?, "edit lacks update leases");

    let leases: Api<Lease> = Api::namespaced(tenant.clone(), NS);
    let (pp, dry) = (PatchParams::default(), PatchParams { dry_run: true, ..Default::default() });
    let annotate = |key: &str, value: Value| Patch::Merge(json!({"metadata": {"annotations": {key: value}}}));
    let target = contract::pod_name(STS, 1);
    let request = annotate(contract::LEASE_ANNOTATION_SWITCHOVER_TO, json!(target));
    wait_policy_active(policies::LEASE_OVERRIDES_POLICY, || leases.patch(&name, &dry, &request)).await?;

    // Neighbour: the tenant may annotate the Lease otherwise.
    leases.patch(&name, &pp, &annotate("team", json!("ldap"))).await?;
    // Attack: request a switchover, allow a diverged standby.
    refused(
        leases.patch(&name, &pp, &request).await,
        "request a switchover on the Lease",
        policies::LEASE_OVERRIDES_POLICY,
        &format!("may not set or change the annotation {}", contract::LEASE_ANNOTATION_SWITCHOVER_TO),
    );
    refused(
        leases.patch(&name, &pp, &annotate(contract::LEASE_ANNOTATION_ALLOW_DIVERGED, json!(target))).await,
        "allow a diverged standby on the Lease",
        policies::LEASE_OVERRIDES_POLICY,
        &format!("may not set, change or remove the annotation {}", contract::LEASE_ANNOTATION_ALLOW_DIVERGED),
    );
    // Attack: a Lease created with the request (e.g. after deleting the real one).
    let lease = |annotations: Value| -> anyhow::Result<Lease> {
        Ok(serde_json::from_value(json!({"metadata": {"name": "spare-leader", "annotations": annotations}}))?)
    };
    leases.create(&PostParams { dry_run: true, ..Default::default() }, &lease(json!({"team": "ldap"}))?).await?;
    refused(
        leases.create(&PostParams::default(), &lease(json!({contract::LEASE_ANNOTATION_SWITCHOVER_TO: target}))?).await,
        "create a Lease carrying a switchover request",
        policies::LEASE_OVERRIDES_POLICY,
        contract::LEASE_ANNOTATION_SWITCHOVER_TO,
    );

    // An admin requests a switchover (what `ldap-elector switchover` writes), and may allow.
    as_admin.patch(&name, &pp, &request).await?;
    as_admin.patch(&name, &pp, &annotate(contract::LEASE_ANNOTATION_ALLOW_DIVERGED, json!(target))).await?;
    // The tenant may not clear it either (that is the leader's or an admin's to do) ...
    refused(
        leases.patch(&name, &pp, &annotate(contract::LEASE_ANNOTATION_SWITCHOVER_TO, Value::Null)).await,
        "cancel the admin's switchover request",
        policies::LEASE_OVERRIDES_POLICY,
        &format!("({target} -> <none>)"),
    );
    // ... but an elector, with the kubelet's pod-bound token of its account, clears it (as the
    // leader does on handing over or refusing); it may neither set it nor touch allow-diverged.
    let account = contract::identity_name(STS);
    let (leader, uid) = (contract::pod_name(STS, 0), injected[0].metadata.uid.clone().unwrap_or_default());
    let token = request_token(&admin, NS, &account, Some((&leader, &uid))).await?;
    // The elector's Role grants `update` (no `patch`): it replaces the Lease it read.
    let as_elector: Api<Lease> = Api::namespaced(bed.client_with_token(&token)?, NS);
    let elector_sets = |key: &'static str, value: Option<String>| {
        let as_elector = as_elector.clone();
        let name = name.clone();
        async move {
            let mut lease = as_elector.get(&name).await?;
            let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
            match value {
                Some(value) => annotations.insert(key.to_string(), value),
                None => annotations.remove(key),
            };
            as_elector.replace(&name, &PostParams::default(), &lease).await
        }
    };
    refused(
        elector_sets(contract::LEASE_ANNOTATION_ALLOW_DIVERGED, None).await,
        "an elector removes allow-diverged",
        policies::LEASE_OVERRIDES_POLICY,
        contract::LEASE_ANNOTATION_ALLOW_DIVERGED,
    );
    elector_sets(contract::LEASE_ANNOTATION_SWITCHOVER_TO, None).await?;
    refused(
        elector_sets(contract::LEASE_ANNOTATION_SWITCHOVER_TO, Some(target.clone())).await,
        "an elector requests a switchover",
        policies::LEASE_OVERRIDES_POLICY,
        contract::LEASE_ANNOTATION_SWITCHOVER_TO,
    );
    let annotations = as_admin.get(&name).await?.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get(contract::LEASE_ANNOTATION_SWITCHOVER_TO), None, "{annotations:?}");
    assert_eq!(annotations.get(contract::LEASE_ANNOTATION_ALLOW_DIVERGED), Some(&target), "{annotations:?}");
    drop(webhook);
    Ok(())
}

/// The webhook's TLS Secret (certMode=secret) in [`WEBHOOK_NS`].
const TLS_SECRET: &str = "ldap-elector-webhook-tls";

/// The webhook in certMode=secret as `client` (the controller's account: `--component=all`
/// writes the Secret and the caBundle), the reconciler off, with `health_port`; returns once
/// ready, with the token that stops it.
async fn secret_mode_webhook(client: &Client, health_port: u16) -> anyhow::Result<CancellationToken> {
    let settings = Args::try_parse_from([
        "ldap-elector-webhook".to_string(),
        format!("--listen=127.0.0.1:{}", free_port()?),
        format!("--health-listen=127.0.0.1:{health_port}"),
        format!("--namespace={WEBHOOK_NS}"),
        "--reconcile=false".into(),
        format!("--sidecar-image={SIDECAR_IMAGE}"),
    ])?
    .into_settings()
    .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(ldap_elector_webhook::app::run(settings, client.clone(), shutdown.clone(), Duration::ZERO));
    wait_ready("webhook", health_port, T).await?;
    Ok(shutdown)
}

/// The certificates of the published caBundle of [`WEBHOOK_CONFIG`].
async fn published_cas(configs: &Api<MutatingWebhookConfiguration>) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let config = configs.get(WEBHOOK_CONFIG).await?;
    let bundle = config.webhooks.unwrap_or_default().first().and_then(|w| w.client_config.ca_bundle.clone());
    let bundle = bundle.ok_or_else(|| anyhow::anyhow!("no caBundle published"))?;
    Ok(CertificateDer::pem_slice_iter(&bundle.0).collect::<Result<_, _>>()?)
}

/// In certMode=secret the webhook published every CA of its Secret's `ca.crt` into the
/// caBundle: whoever may update Secrets in the release namespace (`edit` there) added a CA
/// of their own, and at the webhook's next start the API server trusted certificates of
/// that CA for the admission of every covered pod. Now only the CA that issued the serving
/// certificate is published. (Whoever may write that Secret can still replace certificate,
/// key and CA together: the release namespace is guarded like kube-system, docs/security.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_added_to_the_webhook_secret_is_not_published_into_the_ca_bundle() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let account = webhook_identities(&bed).await?.controller;
    let pp = PostParams::default();
    grant_secret_roles(&admin, TLS_SECRET).await?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    configs.create(&pp, &unpublished_configuration()?).await?;
    let health_port = free_port()?;
    let running = secret_mode_webhook(&account, health_port).await?;
    let issuer = published_cas(&configs).await?;
    assert_eq!(issuer.len(), 1, "one CA published at first");

    // The attacker: `edit` in the release namespace (e.g. its operators' CI), nothing else.
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "operator-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT_USER}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), WEBHOOK_NS).create(&pp, &binding).await?;
    let secrets: Api<Secret> = Api::namespaced(bed.tenant_client()?, WEBHOOK_NS);
    let edited = wait_for("the operator's edit role to allow updating the Secret", T, || async {
        let mut secret = secrets.get(TLS_SECRET).await.map_err(|e| e.to_string())?;
        // Neighbour: an annotation (the right the attack uses).
        secret.metadata.annotations.get_or_insert_with(Default::default).insert("team".into(), "ops".into());
        secrets.replace(TLS_SECRET, &pp, &secret).await.map_err(|e| e.to_string())
    })
    .await?;
    // Attack: a CA of one's own appended to ca.crt, published at the webhook's next start.
    let foreign = ldap_elector_certs::generate_ca("attacker-ca", Duration::from_secs(24 * 3600))?.cert_pem();
    let mut secret = edited;
    let data = secret.data.get_or_insert_with(Default::default);
    let trust = data.get(SECRET_KEY_CA).map(|b| b.0.clone()).unwrap_or_default();
    data.insert(SECRET_KEY_CA.into(), ByteString([trust, foreign.clone().into_bytes()].concat()));
    secrets.replace(TLS_SECRET, &pp, &secret).await?;
    running.cancel();
    wait_for("the webhook stopped", T, || async {
        http_status(health_port, "/readyz").await.map_or(Ok(()), |s| Err(format!("status {s}")))
    })
    .await?;
    let restarted = secret_mode_webhook(&account, health_port).await?;

    let foreign = CertificateDer::pem_slice_iter(foreign.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let published = published_cas(&configs).await?;
    assert!(!published.contains(&foreign[0]), "ATTACK SUCCEEDED: the caBundle trusts the attacker's CA");
    assert_eq!(published, issuer, "the caBundle holds the issuer of the serving certificate, nothing else");
    println!("refused as expected (a CA added to ca.crt): the caBundle holds only the serving certificate's issuer");
    restarted.cancel();
    Ok(())
}

/// The webhook's controller may `create` Secrets in the release namespace (its serving
/// certificate's, certMode=secret); RBAC cannot limit `create` by name. With a stolen token
/// an attacker planted other Secrets there, e.g. a `kubernetes.io/service-account-token`
/// Secret, which the token controller fills with a never-expiring token of a service account
/// of the namespace. The policy `<fullname>-webhook-secret` lets that account create only its
/// certificate's Secret, of type `kubernetes.io/tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_webhook_token_creates_no_secret_but_its_serving_certificate() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admin = bed.admin_client()?;
    let stolen = webhook_identities(&bed).await?.controller;
    let pp = PostParams::default();
    grant_secret_roles(&admin, TLS_SECRET).await?;
    policies::install_with(&bed, &["templates/webhook-configuration-guard.yaml"], &[]).await?;

    let secrets: Api<Secret> = Api::namespaced(stolen, WEBHOOK_NS);
    let dry = PostParams { dry_run: true, ..Default::default() };
    let secret = |name: &str, type_: &str, annotations: Value| -> anyhow::Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations}, "type": type_,
            "data": if type_ == "kubernetes.io/tls" { json!({"tls.crt": "", "tls.key": ""}) } else { json!({}) },
        }))?)
    };
    let planted = secret("planted", "Opaque", json!({}))?;
    wait_policy_active(policies::WEBHOOK_SECRET_POLICY, || secrets.create(&dry, &planted)).await?;

    // Neighbour: what the right is for, its serving certificate's Secret (dry run).
    secrets.create(&dry, &secret(TLS_SECRET, "kubernetes.io/tls", json!({}))?).await?;
    // Attacks: another Secret; a never-expiring token of its own account, under the
    // certificate's name and under another.
    let token = json!({"kubernetes.io/service-account.name": CONTROLLER_SA});
    for (what, attempt) in [
        ("plant a Secret in the release namespace", planted.clone()),
        (
            "create a service-account token Secret under the certificate's name",
            secret(TLS_SECRET, "kubernetes.io/service-account-token", token.clone())?,
        ),
        ("create a service-account token Secret", secret("forever", "kubernetes.io/service-account-token", token)?),
    ] {
        refused(
            secrets.create(&pp, &attempt).await,
            what,
            policies::WEBHOOK_SECRET_POLICY,
            &format!("may create only the Secret {WEBHOOK_NS}/{TLS_SECRET} of type kubernetes.io/tls"),
        );
    }
    Ok(())
}

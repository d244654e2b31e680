//! The bed with a real node (`BedOptions::real_node`): containerd + runc, CNI bridge, the real
//! kubelet, kube-proxy (iptables) and kube-scheduler. There is ONE real node per machine: beds
//! with one serialise on a machine-wide lock, so these tests wait for each other (and for any
//! `make bed NODE=real`) instead of sharing host state. docs/real-node.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::PostParams;
use kube::Api;
use ldap_elector_tests::bed::BedOptions;
use ldap_elector_tests::node::{cleanup, host::HostState};
use ldap_elector_tests::workloads::fixtures;
use ldap_elector_tests::{wait_for, Bed};
use serde_json::json;

const T: Duration = Duration::from_secs(120);
const NS: &str = "real";
/// The container's port and the Service's: not 80, which something outside the VM answers
/// for any address.
const CONTAINER_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 8081;
/// A static httpd from the host (Debian's busybox-static), mounted into the pause image's
/// container: the test needs no image with a server in it.
const BUSYBOX: &str = "/bin/busybox";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_on_the_real_node_a_cluster_ip_reaches_it_and_nothing_is_left_after_drop() -> anyhow::Result<()> {
    let started = Instant::now();
    let bed = Bed::start_with(BedOptions { real_node: true, ..Default::default() }).await?;
    let node = bed.real_node.as_ref().ok_or_else(|| anyhow::anyhow!("no real node"))?;
    let (layout, pause) = (node.layout().clone(), node.images.pause.clone());
    // The host as the node found it, recorded while it held the machine lock (a capture
    // before the bed would see another real-node bed of this machine still running).
    let host_before = HostState::parse(&std::fs::read_to_string(layout.path(cleanup::HOST_STATE_FILE))?);
    eprintln!("bed with a real node up in {:.1}s; {:?}", started.elapsed().as_secs_f64(), node.timings);

    let client = bed.admin_client()?;
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = nodes.get(node.name()).await?.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(ready.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "node Ready: {ready:?}");

    fixtures::namespace(&client, NS, None).await?;
    let body = format!("real node {}", ldap_elector_tests::bed::random_hex(8)?);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "www"}, "data": {"index.html": body}}))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod_created = Instant::now();
    pods.create(&PostParams::default(), &serde_json::from_value(web_pod(&pause))?).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let service = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": SERVICE_PORT, "targetPort": CONTAINER_PORT}]},
            }))?,
        )
        .await?;

    let pod_ip = wait_for("the pod is Running and Ready", T, || async {
        let pod = pods.get("web").await.map_err(|e| e.to_string())?;
        let status = pod.status.unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        match (status.phase.as_deref(), ready, status.pod_ip) {
            (Some("Running"), true, Some(ip)) => Ok(ip),
            (phase, _, _) => {
                let seen: Vec<String> = conditions
                    .iter()
                    .map(|c| format!("{}={} {}", c.type_, c.status, c.message.clone().unwrap_or_default()))
                    .collect();
                Err(format!("phase {phase:?}, conditions {seen:?}, containers {:?}", status.container_statuses))
            }
        }
    })
    .await?;
    let pod_running = pod_created.elapsed();
    assert!(pod_ip.starts_with("198.51.100."), "pod IP from the CNI range, got {pod_ip}");

    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(cluster_ip.starts_with("198.18.0."), "ClusterIP from the service range, got {cluster_ip}");
    let address: SocketAddr = format!("{cluster_ip}:{SERVICE_PORT}").parse()?;
    let answer = wait_for("the Service's ClusterIP answers with the ConfigMap's body", T, || async {
        let got = tokio::task::spawn_blocking(move || http_get(address)).await.map_err(|e| e.to_string())?;
        match got {
            Ok(text) if text.contains(&body) => Ok(text),
            Ok(text) => Err(format!("other answer: {text:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");

    let pod_pids = cleanup::pod_pids();
    assert!(!pod_pids.is_empty(), "the pod's processes run in the kubepods cgroups");
    let teardown = Instant::now();
    drop(bed);
    let teardown = teardown.elapsed();
    eprintln!(
        "pod Running+Ready {:.1}s after create; teardown {:.1}s",
        pod_running.as_secs_f64(),
        teardown.as_secs_f64()
    );

    assert_eq!(cleanup::leftovers(&layout), Vec::<String>::new(), "nothing of the node is left");
    let alive: Vec<i32> = pod_pids.into_iter().filter(|p| cleanup::is_alive(*p)).collect();
    let stat = |p: &i32| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
    assert!(alive.is_empty(), "container processes still alive: {:?}", alive.iter().map(stat).collect::<Vec<_>>());
    assert_eq!(HostState::capture(), host_before, "sysctls restored, host dirs the node created removed");
    Ok(())
}

fn web_pod(image: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "httpd",
                "image": image,
                "imagePullPolicy": "Never",
                "command": [BUSYBOX, "httpd", "-f", "-p", CONTAINER_PORT.to_string(), "-h", "/www"],
                "ports": [{"containerPort": CONTAINER_PORT}],
                "readinessProbe": {"httpGet": {"path": "/index.html", "port": CONTAINER_PORT}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "busybox", "mountPath": BUSYBOX, "readOnly": true},
                    {"name": "www", "mountPath": "/www", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "busybox", "hostPath": {"path": BUSYBOX, "type": "File"}},
                {"name": "www", "configMap": {"name": "www"}},
            ],
        },
    })
}

/// One HTTP/1.0 GET of `/` from the host; the whole response.
fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

//! One real-node run of the consumer with every observer attached: the bed with a real node,
//! the chart, the consumer, the label/endpoint observer (`measure::observer`), the
//! writability prober (`measure::writability`) and a client writing through the write
//! Service's ClusterIP. [`Scenario::finish`] checks the invariants of issue 14: never two
//! writable slapd servers, no acknowledged write lost, never two ready endpoints.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use ldap_elector_contract::{GUARD_CONTAINER, LABEL_ROLE, ROLE_LEADER, SIDECAR_CONTAINER};

use super::{install_chart, pod_name, Consumer, NAMESPACE, WRITE_SERVICE};
use crate::bed::BedOptions;
use crate::ldap::writer::{Attempt, Limits, Outcome, Writer};
use crate::measure::observer::Observer;
use crate::measure::writability::{self, Probe, Prober};
use crate::node::consumer::manifests::{CONTAINER_PORT, SLAPD_CONTAINER, STATEFULSET};
use crate::node::RealNode;
use crate::Bed;

/// The Lease duration the consumer is annotated with (the elector's default).
pub const LEASE: Duration = Duration::from_secs(8);
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(90);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's pace through the ClusterIP.
const WRITE_PACE: Duration = Duration::from_millis(20);
/// The client's connect timeout, as an HA client sets it (libldap's `NETWORK_TIMEOUT 1`): a
/// connect that hangs is given up and retried. On the real node one hung in 4 of 15 slapd kills,
/// right after the write Service got its endpoint back: 3 s, then "no route to host", while the
/// host's neighbour table showed a ClusterIP FAILED on the Service CIDR's dummy device, i.e. a SYN
/// kube-proxy's rules did not rewrite, whose conntrack entry then kept its retransmissions from
/// the new DNAT (our reading: the no-endpoint REJECT and the DNAT live in different tables; not
/// confirmed in kube-proxy's source).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Scenario {
    pub consumer: Consumer,
    pub observer: Observer,
    pub prober: Prober,
    pub writer: Writer,
    pub epoch: Instant,
    /// How long set-up took (bed, chart, consumer, first leader).
    pub setup: Duration,
    // Last: dropped after everything that talks to it.
    pub bed: Bed,
}

impl Scenario {
    /// Starts everything and waits for one leader and a first acknowledged write; the client
    /// writes for at most the writer's default bound (a test's).
    pub async fn start() -> anyhow::Result<Scenario> {
        Scenario::start_writing_for(Limits::default().max_time).await
    }

    /// [`Scenario::start`] with a client that writes for up to `write_for` (a bench's rounds).
    pub async fn start_writing_for(write_for: Duration) -> anyhow::Result<Scenario> {
        let epoch = Instant::now();
        let bed = Bed::start_with(BedOptions { real_node: true, ..Default::default() }).await?;
        let images = bed.real_node.as_ref().context("no real node")?.images.clone();
        install_chart(&bed, &images).await?;
        let client = bed.admin_client()?;
        let mut observer = Observer::start(client.clone(), NAMESPACE, &format!("app={STATEFULSET}"));
        observer.watch_service(client.clone(), NAMESPACE, WRITE_SERVICE);
        let consumer = Consumer::install(&bed, &images, &LEASE.as_secs().to_string()).await?;
        let prober = Prober::start(client, NAMESPACE, [pod_name(0), pod_name(1)], CONTAINER_PORT, epoch);
        observer.wait_for_single_leader(FIRST_LEADER_TIMEOUT).await?;
        let limits =
            Limits { pace: WRITE_PACE, connect_timeout: CONNECT_TIMEOUT, max_time: write_for, max_attempts: 2_000_000 };
        let writer = Writer::start_with(consumer.write_url(), limits);
        writer
            .wait_ack_after(Instant::now(), FIRST_LEADER_TIMEOUT)
            .await
            .context("a first write through the ClusterIP")?;
        let setup = epoch.elapsed();
        Ok(Scenario { consumer, observer, prober, writer, epoch, setup, bed })
    }

    pub fn node(&self) -> &RealNode {
        self.bed.real_node.as_ref().expect("a scenario always runs on a real node")
    }

    /// The ordinal and pod of the current leader (the pod labelled leader).
    pub async fn leader(&self) -> anyhow::Result<(usize, Pod)> {
        for ordinal in 0..2 {
            let pod = self.consumer.pods().get(&pod_name(ordinal)).await?;
            if pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ROLE)).map(String::as_str) == Some(ROLE_LEADER) {
                return Ok((ordinal, pod));
            }
        }
        anyhow::bail!("no pod labelled leader; timeline:\n{}", self.observer.timeline())
    }

    /// Copies the containers' logs (current and previous) into the bed directory, which
    /// `LDAP_ELECTOR_KEEP_BED=1` keeps (the node's own log directory goes with the node).
    pub fn save_container_logs(&self) {
        self.save_container_logs_in("container-logs");
    }

    /// [`Scenario::save_container_logs`] into the bed directory's `name` (a bench keeps each
    /// round's, since deleting a pod takes its logs along).
    pub fn save_container_logs_in(&self, name: &str) {
        let dir = self.bed.dir.join(name);
        let _ = std::fs::create_dir_all(&dir);
        for ordinal in 0..2 {
            for container in [SIDECAR_CONTAINER, GUARD_CONTAINER, SLAPD_CONTAINER] {
                for previous in [false, true] {
                    let pod = pod_name(ordinal);
                    let mut kubectl = self.bed.kubectl();
                    kubectl.args(["logs", "-n", NAMESPACE, &pod, "-c", container, "--timestamps"]);
                    if previous {
                        kubectl.arg("--previous");
                    }
                    if let Ok(out) = kubectl.output() {
                        let suffix = if previous { ".previous" } else { "" };
                        let _ = std::fs::write(dir.join(format!("{pod}-{container}{suffix}.log")), out.stdout);
                    }
                }
            }
        }
    }

    /// Pauses the client and waits until both servers hold every write acknowledged so far
    /// (bounded); on a miss it says how many each server lacks, when the first and last
    /// missing ones were acknowledged and both servers' contextCSN. For a bench between
    /// rounds: a loss is then found in the round that caused it, with its logs.
    pub async fn audit_acknowledged(&self) -> anyhow::Result<usize> {
        let _paused = self.writer.pause().await;
        let acked = self.writer.acked();
        let uids: Vec<String> = acked.iter().map(|a| a.uid.clone()).collect();
        let urls = self.consumer.pod_urls().await?;
        let waited = crate::wait_for("both servers to hold every acknowledged write", CONVERGE_TIMEOUT, || async {
            let mut missing = Vec::new();
            for url in &urls {
                let present = writability::uids(url).await.map_err(|e| e.to_string())?;
                missing.push(writability::missing(&uids, &present).len());
            }
            if missing.iter().all(|n| *n == 0) {
                Ok(())
            } else {
                Err(format!("missing on each server: {missing:?}"))
            }
        })
        .await;
        let Err(e) = waited else { return Ok(uids.len()) };
        let mut report = Vec::new();
        for (ordinal, url) in urls.iter().enumerate() {
            let present = writability::uids(url).await.unwrap_or_default();
            let missing = writability::missing(&uids, &present);
            let when = |uid: Option<&String>| {
                uid.and_then(|u| acked.iter().find(|a| &a.uid == u)).map(|a| self.at(a.end)).unwrap_or_default()
            };
            let csn = writability::context_csn(url).await.unwrap_or_else(|e| vec![e.to_string()]);
            report.push(format!(
                "{}: {} of {} acknowledged writes missing (acknowledged {} .. {}); contextCSN {csn:?}",
                pod_name(ordinal),
                missing.len(),
                uids.len(),
                when(missing.first()),
                when(missing.last()),
            ));
        }
        self.save_container_logs();
        anyhow::bail!("{e:#}\n{}\ntimeline:\n{}", report.join("\n"), self.observer.timeline())
    }

    /// Seconds since the epoch, for messages.
    pub fn at(&self, t: Instant) -> String {
        format!("+{:.3}s", t.saturating_duration_since(self.epoch).as_secs_f64())
    }

    /// Stops the client and the prober, waits for both servers to converge, and checks every
    /// invariant. The verdict holds what was seen; [`Verdict::assert_safe`] fails with it.
    pub async fn finish(self) -> anyhow::Result<Verdict> {
        self.save_container_logs();
        let attempts = self.writer.stop().await;
        let probes = self.prober.stop().await;
        self.consumer.wait_ready(Duration::from_secs(90)).await?;
        let leader = self.observer.wait_for_single_leader(Duration::from_secs(60)).await?;
        let urls = self.consumer.pod_urls().await?;
        let unacknowledged: BTreeSet<String> =
            attempts.iter().filter(|a| a.outcome != Outcome::Acked).map(|a| a.uid.clone()).collect();
        writability::wait_converged(&urls, &unacknowledged, CONVERGE_TIMEOUT).await?;
        let leader_ordinal = if leader == pod_name(0) { 0 } else { 1 };
        let on_leader = writability::uids(&urls[leader_ordinal]).await?;
        let acked: Vec<String> =
            attempts.iter().filter(|a| a.outcome == Outcome::Acked).map(|a| a.uid.clone()).collect();
        let lost = writability::missing(&acked, &on_leader);
        let endpoints = writability::endpoint_violations(&self.observer.endpoint_history())
            .into_iter()
            .map(|(at, ready)| format!("{} ready: {ready:?}", fmt_at(self.epoch, at)))
            .collect();
        let unexplained = writability::unexplained(&probes);
        Ok(Verdict {
            overlaps: writability::overlap_report(&probes),
            unexplained,
            lost,
            endpoints,
            timeline: format!(
                "(its +0 is {} of the probe times)\n{}",
                fmt_at(self.epoch, self.observer.started()),
                self.observer.timeline()
            ),
            probes,
            attempts,
            acked: acked.len(),
        })
    }
}

fn fmt_at(epoch: Instant, t: Instant) -> String {
    format!("+{:.3}s", t.saturating_duration_since(epoch).as_secs_f64())
}

/// What a scenario saw.
pub struct Verdict {
    /// [`writability::overlap_report`]: empty when never two servers were writable.
    pub overlaps: String,
    /// Probes whose answer says nothing about writability (see [`writability::unexplained`]).
    pub unexplained: Vec<Probe>,
    /// Acknowledged writes missing on the leader after convergence.
    pub lost: Vec<String>,
    /// Moments with more than one ready endpoint in the write Service.
    pub endpoints: Vec<String>,
    /// The observer's label and endpoint timeline.
    pub timeline: String,
    pub probes: Vec<Probe>,
    pub attempts: Vec<Attempt>,
    pub acked: usize,
}

impl Verdict {
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.overlaps.is_empty() {
            v.push(format!("two writable slapd servers:\n{}", self.overlaps));
        }
        if !self.unexplained.is_empty() {
            let first: Vec<&Probe> = self.unexplained.iter().take(5).collect();
            v.push(format!("{} probes with an unexplained answer, first: {first:?}", self.unexplained.len()));
        }
        if !self.lost.is_empty() {
            v.push(format!("{} acknowledged writes lost: {:?}", self.lost.len(), self.lost));
        }
        if !self.endpoints.is_empty() {
            v.push(format!("more than one ready endpoint: {:?}", self.endpoints));
        }
        v
    }

    /// Panics with every violation and the timeline, if there is any.
    pub fn assert_safe(&self) {
        let violations = self.violations();
        assert!(violations.is_empty(), "{}\ntimeline (labels, endpoints):\n{}", violations.join("\n"), self.timeline);
    }
}

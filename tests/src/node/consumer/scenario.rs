//! One real-node run of a consumer with every observer attached: the bed with a real node,
//! the chart, the consumer (a [`Fixture`]: this module's own, or Nubus' shape), the
//! label/endpoint observer (`measure::observer`), the writability prober
//! (`measure::writability`) and a client writing through the write Service's ClusterIP.
//! [`Scenario::finish`] checks the invariants of issue 14: never two writable slapd servers,
//! no acknowledged write lost, never two ready endpoints.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Patch, PatchParams};
use kube::Api;
use ldap3::{Scope, SearchEntry};
use ldap_elector_contract::{
    lease_name, GUARD_CONTAINER, LABEL_ROLE, LEASE_ANNOTATION_SWITCHOVER_REFUSED, LEASE_ANNOTATION_SWITCHOVER_TO,
    ROLE_LEADER, SIDECAR_CONTAINER,
};

use super::faults;
use super::{install_chart, Consumer, Target};
use crate::bed::BedOptions;
use crate::ldap::conn::Conn;
use crate::ldap::slapd::{ADMIN_DN, ADMIN_PASSWORD, PEOPLE};
use crate::ldap::writer::{Attempt, Limits, Outcome, Writer};
use crate::measure::observer::Observer;
use crate::measure::writability::{self, Probe, Prober};
use crate::node::images::Images;
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
/// How long a test waits for the service to come back after a fault.
pub const RECOVERY: Duration = Duration::from_secs(60);

/// A consumer the scenario measures: what to watch, and how to install it.
pub trait Fixture {
    fn target(&self) -> Target;
    /// Installs the consumer on `bed` (the chart is installed, the observer already watches)
    /// and returns once both pods are Ready and opted in: the prober starts then.
    fn install(&self, bed: &Bed, images: &Images) -> impl std::future::Future<Output = anyhow::Result<Consumer>>;
}

/// This module's consumer (`manifests`), opted in from its creation.
pub struct Plain;

impl Fixture for Plain {
    fn target(&self) -> Target {
        super::manifests::target()
    }

    async fn install(&self, bed: &Bed, images: &Images) -> anyhow::Result<Consumer> {
        Consumer::install(bed, images, &LEASE.as_secs().to_string()).await
    }
}

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
    /// Starts everything with this module's consumer ([`Plain`]) and waits for one leader
    /// and a first acknowledged write.
    pub async fn start() -> anyhow::Result<Scenario> {
        Scenario::start_with(&Plain).await
    }

    /// Starts everything with `fixture`'s consumer and waits for one leader and a first
    /// acknowledged write; the client writes for at most the writer's default bound (a test's).
    pub async fn start_with(fixture: &impl Fixture) -> anyhow::Result<Scenario> {
        Scenario::start_writing_for(fixture, Limits::default().max_time).await
    }

    /// [`Scenario::start_with`] with a client that writes for up to `write_for` (a bench's
    /// rounds). The observer watches from before the install, the prober and the client start
    /// once the fixture returns.
    pub async fn start_writing_for(fixture: &impl Fixture, write_for: Duration) -> anyhow::Result<Scenario> {
        let epoch = Instant::now();
        let bed = Bed::start_with(BedOptions { real_node: true, ..Default::default() }).await?;
        let images = bed.real_node.as_ref().context("no real node")?.images.clone();
        install_chart(&bed, &images).await?;
        let client = bed.admin_client()?;
        let target = fixture.target();
        let mut observer = Observer::start(client.clone(), &target.namespace, &target.pod_selector);
        observer.watch_service(client.clone(), &target.namespace, &target.write_service);
        let consumer = fixture.install(&bed, &images).await?;
        let pods = [target.pod_name(0), target.pod_name(1)];
        let prober = Prober::start(client, &target.namespace, pods, target.container_port, epoch);
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
            let pod = self.consumer.pods().get(&self.consumer.pod_name(ordinal)).await?;
            if pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ROLE)).map(String::as_str) == Some(ROLE_LEADER) {
                return Ok((ordinal, pod));
            }
        }
        anyhow::bail!("no pod labelled leader; timeline:\n{}", self.observer.timeline())
    }

    /// The status of `container` (regular or native sidecar) in pod `ordinal`.
    pub async fn container_status(&self, ordinal: usize, container: &str) -> anyhow::Result<Option<ContainerStatus>> {
        let pod = self.consumer.pods().get(&self.consumer.pod_name(ordinal)).await?;
        let status = pod.status.unwrap_or_default();
        Ok(status
            .container_statuses
            .into_iter()
            .flatten()
            .chain(status.init_container_statuses.into_iter().flatten())
            .find(|c| c.name == container))
    }

    /// Restart count of `container` in pod `ordinal`.
    pub async fn restarts(&self, ordinal: usize, container: &str) -> anyhow::Result<i32> {
        Ok(self.container_status(ordinal, container).await?.map_or(0, |c| c.restart_count))
    }

    /// Waits (up to [`RECOVERY`]) until `container` of pod `ordinal` has restarted more than
    /// `before` times.
    pub async fn wait_restarted(&self, what: &str, ordinal: usize, container: &str, before: i32) -> anyhow::Result<()> {
        crate::wait_for(what, RECOVERY, || async {
            match self.restarts(ordinal, container).await {
                Ok(n) if n > before => Ok(()),
                other => Err(format!("restarts {other:?}")),
            }
        })
        .await
    }

    /// kill -9 of the slapd of pod `ordinal` from the host, then waits until the kubelet
    /// restarted it; returns the instant of the kill.
    pub async fn kill_slapd_until_restarted(&self, ordinal: usize) -> anyhow::Result<Instant> {
        let slapd = self.consumer.target.slapd_container.clone();
        let pod = self.consumer.pods().get(&self.consumer.pod_name(ordinal)).await?;
        let before = self.restarts(ordinal, &slapd).await?;
        let pid = faults::container_pid(self.node(), &pod, &slapd)?;
        let killed_at = faults::sigkill(pid)?;
        eprintln!("{} kill -9 of slapd (pid {pid}) in {}", self.at(killed_at), self.consumer.pod_name(ordinal));
        self.wait_restarted("the kubelet to restart slapd", ordinal, &slapd, before).await?;
        Ok(killed_at)
    }

    /// kill -9 of the leader's slapd from the host: the kubelet restarts it and the client's
    /// writes through the ClusterIP are acknowledged again.
    pub async fn kill_the_leaders_slapd(&self) -> anyhow::Result<()> {
        let (leader, _) = self.leader().await?;
        let killed_at = self.kill_slapd_until_restarted(leader).await?;
        let back = self.writer.wait_ack_after(killed_at, RECOVERY).await?;
        eprintln!("writes through the ClusterIP again after {:.3}s", (back.end - killed_at).as_secs_f64());
        Ok(())
    }

    /// A graceful switchover to the standby, asked on the Lease as an operator does
    /// (`switchover-to`); returns once the standby is labelled leader and a write after it was
    /// acknowledged. The old leader's pod stays up. A refused request (the leader wrote
    /// `switchover-refused`: e.g. the target's published contextCSN still behind under the
    /// client's writes) is asked again, as an operator would, until [`RECOVERY`]; the error
    /// then names the last refusal.
    pub async fn switch_over(&self) -> anyhow::Result<()> {
        let (leader, _) = self.leader().await?;
        let (from, to) = (self.consumer.pod_name(leader), self.consumer.pod_name(1 - leader));
        let target = &self.consumer.target;
        let leases: Api<Lease> = Api::namespaced(self.bed.admin_client()?, &target.namespace);
        let lease = lease_name(&target.statefulset);
        let asked = Instant::now();
        let annotation = |l: &Lease, key: &str| l.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned();
        let mut refusal = None;
        while asked.elapsed() < RECOVERY {
            let patch = serde_json::json!({"metadata": {"annotations": {
                LEASE_ANNOTATION_SWITCHOVER_TO: to, LEASE_ANNOTATION_SWITCHOVER_REFUSED: null}}});
            leases.patch(&lease, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            // Until the leader acts on it: the standby leads, or the request is refused.
            let answered = crate::wait_for("the leader to act on the switchover", RECOVERY, || async {
                if self.observer.leaders().contains(&to) {
                    return Ok(None);
                }
                let l = leases.get(&lease).await.map_err(|e| e.to_string())?;
                match annotation(&l, LEASE_ANNOTATION_SWITCHOVER_REFUSED) {
                    Some(r) if annotation(&l, LEASE_ANNOTATION_SWITCHOVER_TO).is_none() => Ok(Some(r)),
                    _ => Err("pending".to_string()),
                }
            })
            .await?;
            match answered {
                None => break,
                Some(r) => {
                    eprintln!("{} switchover to {to} refused: {r}; asking again", self.at(Instant::now()));
                    refusal = Some(r);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        let (new_leader, at) = self
            .observer
            .wait_for_new_leader("the switchover", Some(&from), asked, RECOVERY)
            .await
            .with_context(|| format!("last refusal: {refusal:?}"))?;
        eprintln!("{} {new_leader} leader after the switchover", self.at(at));
        self.writer.wait_ack_after(at, RECOVERY).await?;
        Ok(())
    }

    /// Freezes every process of the leader's pod (its cgroup, from the host) for longer than
    /// the Lease, thaws it, and waits for another pod labelled leader.
    pub async fn freeze_the_leader_past_the_lease(&self) -> anyhow::Result<()> {
        let (leader, pod) = self.leader().await?;
        let name = self.consumer.pod_name(leader);
        let cgroup = faults::pod_freezer(pod.metadata.uid.as_deref().unwrap_or_default())?;
        let frozen_at = Instant::now();
        faults::set_frozen(&cgroup, true)?;
        eprintln!("{} froze {name} ({})", self.at(frozen_at), cgroup.display());
        tokio::time::sleep(LEASE + Duration::from_secs(5)).await;
        let thawed = faults::set_frozen(&cgroup, false);
        eprintln!("{} thawed", self.at(Instant::now()));
        thawed?;
        let (new_leader, at) = self
            .observer
            .wait_for_new_leader("a new leader after the freeze", Some(&name), frozen_at, RECOVERY)
            .await?;
        eprintln!("{} {new_leader} labelled leader", self.at(at));
        Ok(())
    }

    /// kill -9 of the leader's elector (its container's PID 1, from the host), then
    /// [`Scenario::elector_death_is_covered`].
    pub async fn kill_the_leaders_elector(&self) -> anyhow::Result<()> {
        let (leader, pod) = self.leader().await?;
        let before = self.restarts(leader, SIDECAR_CONTAINER).await?;
        let pid = faults::container_pid(self.node(), &pod, SIDECAR_CONTAINER)?;
        let killed_at = faults::sigkill(pid)?;
        let name = self.consumer.pod_name(leader);
        eprintln!("{} kill -9 of the elector's PID 1 ({pid}) in {name}", self.at(killed_at));
        self.elector_death_is_covered(leader, killed_at, before).await
    }

    /// After the leader's elector died at `killed_at` (its container had restarted `before`
    /// times): its slapd refuses writes, the writer's writes are acknowledged again, the killed
    /// container runs again and one leader is labelled.
    pub async fn elector_death_is_covered(&self, leader: usize, killed_at: Instant, before: i32) -> anyhow::Result<()> {
        let refused = crate::wait_for("the old leader's slapd to refuse writes", RECOVERY, || async {
            self.prober.first_after(leader, killed_at, |a| a != writability::Answer::Writable).ok_or("still writable")
        })
        .await?;
        let since_kill = refused.sent.saturating_sub(killed_at.saturating_duration_since(self.epoch));
        eprintln!("  old leader's slapd answered {:?} {:.3}s after the kill", refused.answer, since_kill.as_secs_f64());
        self.writer.wait_ack_after(killed_at, RECOVERY).await?;
        self.wait_restarted("the killed elector to run again", leader, SIDECAR_CONTAINER, before).await?;
        self.observer.wait_for_single_leader(RECOVERY).await?;
        Ok(())
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
        let target = &self.consumer.target;
        for ordinal in 0..2 {
            for container in [SIDECAR_CONTAINER, GUARD_CONTAINER, target.slapd_container.as_str()] {
                for previous in [false, true] {
                    let pod = target.pod_name(ordinal);
                    let mut kubectl = self.bed.kubectl();
                    kubectl.args(["logs", "-n", &target.namespace, &pod, "-c", container, "--timestamps"]);
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
                self.consumer.pod_name(ordinal),
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
        let leader_ordinal = if leader == self.consumer.pod_name(0) { 0 } else { 1 };
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

/// The server ID (from the entryCSN) of the server that accepted each of `count` adds
/// (`route000`, ...), each over a new connection to `url`: kube-proxy picks an endpoint per
/// connection, so through the write Service they must all name the leader.
pub async fn accepting_servers(url: &str, count: usize) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for i in 0..count {
        let mut conn = Conn::open(url).await?;
        conn.ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
        let uid = format!("route{i:03}");
        conn.add_person(&uid).await?.success()?;
        let (entries, _) = conn
            .ldap
            .search(&format!("uid={uid},{PEOPLE}"), Scope::Base, "(objectClass=*)", vec!["entryCSN"])
            .await?
            .success()?;
        let csn = entries
            .into_iter()
            .next()
            .and_then(|e| SearchEntry::construct(e).attrs.remove("entryCSN"))
            .and_then(|v| v.into_iter().next())
            .ok_or_else(|| anyhow::anyhow!("{uid} has no entryCSN"))?;
        // 20260101000000.000000Z#000000#001#000000: the third field is the server ID (hex).
        let sid = csn.split('#').nth(2).and_then(|s| u32::from_str_radix(s, 16).ok());
        ids.push(sid.ok_or_else(|| anyhow::anyhow!("bad entryCSN {csn}"))?);
    }
    Ok(ids)
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

//! The election loop: feeds the pure `decide` core with the Lease (from a watch, never by
//! polling), health, shutdown and the boot-time clock, and carries out its actions.
//!
//! Order of a term, for each leader:
//! 1. CAS-acquire the Lease (term N = leaseTransitions), counting from when it was *sent*;
//! 2. demote every other pod still labelled leader (role=standby, term=N);
//! 3. label itself leader with a patch that tests its own term annotation;
//! 4. only then run the role-change hook with `leader` (e.g. make slapd writable).
//!
//! Stepping down is the reverse: hook `standby` first (local and fast), label standby,
//! and on release clear the Lease's holder so a standby takes over at once.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use ldap_elector_contract::backoff::{Backoff, QUICK_WATCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::args::Config;
use crate::clock::Moment;
use crate::election::decide::FENCE_BUDGET;
use crate::election::decide::{decide, Action, Leading, Me, Observed};
use crate::election::labels::PodLabeler;
use crate::election::lease::{self, LeaseClient, LeaseError};
use crate::observe::probe::Heartbeat;
use crate::slapd::fence::{FenceKeeper, WantedFence};
use crate::slapd::health::RunCheck as _;
use crate::slapd::watchdog::{Changes, Watchdog};
use ldap_elector_contract::{ROLE_LEADER, ROLE_STANDBY};

mod handover;
mod office;
mod old_leader;

/// Longest time the loop sleeps without re-deciding (health and deadlines are re-read).
const TICK: Duration = Duration::from_secs(1);
/// How often a stepped-down elector looks whether its unconfirmed fence is confirmed now.
const UNFENCED_POLL: Duration = Duration::from_millis(100);
/// How often a standby at most has its fence written again while its slapd replicates
/// changes ([`FenceKeeper::unblock_replication`]).
const UNBLOCK_EVERY: Duration = Duration::from_secs(1);
/// Backoff bounds after a failed API call.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM: stood down (and released if leading).
    Terminated,
}

/// What the elector learns from the rest of the process.
pub struct Inputs {
    /// The health verdict.
    pub healthy: watch::Receiver<bool>,
    /// The local slapd's contextCSN values (empty without an LDAP check).
    pub csn: watch::Receiver<Vec<String>>,
    /// Turns true when the pod is being deleted: hand over, keep running until SIGTERM.
    pub deleting: watch::Receiver<bool>,
    /// Asks the health monitor for a check now (while waiting to catch up).
    pub recheck: std::sync::Arc<tokio::sync::Notify>,
    /// The leader's divergence auditor (`None`: audits off).
    pub divergence: Option<crate::divergence::auditor::Link>,
}

pub struct Elector {
    cfg: Config,
    lease: LeaseClient,
    labels: PodLabeler,
    /// Pods of the StatefulSet (switchover checks of the target).
    pods: Api<Pod>,
    fence: FenceKeeper,
    _fence_stop: tokio_util::sync::DropGuard,
    watchdog: Option<Watchdog>,
    heartbeat: Heartbeat,
    /// The local contextCSN as last seen (published by the leader on each write).
    my_csn: Vec<String>,
    /// The local contextCSN when the standby fence was last written again, and when it may
    /// be next (`keep_replication_unblocked`).
    unblocked_at_csn: Vec<String>,
    next_unblock: Moment,
    waiting_to_catch_up: bool,
    /// The expired holder whose slapd is being read (catch-up after an expiry).
    old_leader: Option<old_leader::OldLeaderReader>,
    /// The previous holder and window of an acquisition that would not be fully verified.
    uncovered: Option<(String, crate::election::catch_up::Uncovered)>,
    /// Latest Lease object seen (the base of every CAS write) and its observation.
    current: Option<Lease>,
    observed: Option<Observed>,
    leading: Option<Leading>,
    /// The newest term known to be used, from a Lease seen before it was recreated or a pod's
    /// term annotation: the next acquisition takes a term above it (`lease::acquired`).
    term_floor: i32,
    /// The contextCSN published in a Lease seen before it was recreated: a recreated Lease
    /// publishes nothing, yet the old leader acknowledged writes up to it, so a follower
    /// still catches up with it before it promotes (issue 15, simulation seed 2569529416047876973).
    csn_floor: Vec<String>,
    /// The uid of the Lease never held for which this pod's term was read into `term_floor`.
    term_read_for: Option<String>,
    /// Leader label and hook done for the current term.
    in_office: bool,
    /// Taking office, while not yet in office (see `office.rs`).
    office: Option<office::Office>,
    /// A term this elector stepped down from without a confirmed fence: until slapd confirms
    /// `olcReadOnly: TRUE` (or is known dead) the Lease is neither released nor handed over
    /// (it expires on the followers' clocks), the watchdog stays armed, and a stopping
    /// elector does not exit.
    unfenced_term: Option<i32>,
    stopping: bool,
    failures: u32,
    retry_at: Option<Moment>,
    /// Metrics and Events (docs/metrics.md): one hook per transition.
    ops: crate::observe::metrics::Telemetry,
    divergence: Option<crate::divergence::auditor::Link>,
    /// Whether this elector has handed over (for `/handover`, the preStop hook's wait), and
    /// whether it led in this run (then "handed over" needs another holder).
    handed_over: Option<watch::Sender<bool>>,
    led: bool,
    /// `/readyz`'s verdict, judged every round of the loop (`readiness.rs`).
    ready: Option<(crate::observe::probe::Ready, crate::election::readiness::Readiness)>,
}

impl Elector {
    pub fn new(cfg: Config, client: Client, heartbeat: Heartbeat, watchdog: Option<Watchdog>) -> Self {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
        let pods = Api::namespaced(client.clone(), &cfg.namespace);
        let labels = PodLabeler::new(client, &cfg.namespace, &cfg.statefulset, &cfg.identity, cfg.api_timeout);
        let fence_stop = CancellationToken::new();
        Elector {
            lease: LeaseClient::new(leases, &cfg.lease_name),
            labels,
            pods,
            fence: FenceKeeper::start(cfg.fence(), fence_stop.clone()),
            _fence_stop: fence_stop.drop_guard(),
            watchdog,
            heartbeat,
            my_csn: Vec::new(),
            unblocked_at_csn: Vec::new(),
            next_unblock: Moment::ZERO,
            waiting_to_catch_up: false,
            old_leader: None,
            uncovered: None,
            cfg,
            current: None,
            observed: None,
            leading: None,
            term_floor: 0,
            term_read_for: None,
            csn_floor: Vec::new(),
            in_office: false,
            office: None,
            unfenced_term: None,
            stopping: false,
            failures: 0,
            retry_at: None,
            ops: crate::observe::metrics::Telemetry::disabled(),
            divergence: None,
            handed_over: None,
            led: false,
            ready: None,
        }
    }

    /// Reports transitions to `ops` (metrics, Events) instead of counting them unseen.
    pub fn with_telemetry(mut self, ops: crate::observe::metrics::Telemetry) -> Self {
        self.ops = ops;
        self
    }

    /// Publishes whether this elector has handed over: not in office, no unconfirmed fence,
    /// and the Lease held by another pod (after our release, the standby took it: it had
    /// replicated our final contextCSN) or, if we never led, by anyone but us.
    pub fn with_handover(mut self, handed_over: watch::Sender<bool>) -> Self {
        self.handed_over = Some(handed_over);
        self
    }

    /// Publishes the pod's readiness (`/readyz`): leading, or holding what the leader published.
    pub fn with_readiness(mut self, ready: crate::observe::probe::Ready) -> Self {
        self.ready = Some((ready, Default::default()));
        self
    }

    fn publish_readiness(&mut self, now: Moment) {
        let published = self.published();
        let Some((ready, readiness)) = self.ready.as_mut() else { return };
        ready.set(readiness.update(self.leading.is_some(), &self.my_csn, &published, now));
    }

    /// [`crate::election::readiness::Readiness::seeded`] (without readiness: as before).
    fn seeded(&self) -> bool {
        self.ready.as_ref().is_none_or(|(_, r)| r.seeded())
    }

    fn publish_handover(&self) {
        let Some(tx) = &self.handed_over else { return };
        let holder = self.observed.as_ref().and_then(|o| o.holder());
        let done = self.leading.is_none()
            && self.unfenced_term.is_none()
            && holder != Some(self.cfg.identity.as_str())
            && (holder.is_some() || !self.led);
        tx.send_if_modified(|v| std::mem::replace(v, done) != done);
    }

    /// Runs until `terminate` (SIGTERM).
    pub async fn run(mut self, inputs: Inputs, terminate: CancellationToken) -> Exit {
        let Inputs { mut healthy, mut csn, mut deleting, recheck, divergence } = inputs;
        self.divergence = divergence;
        let tasks = CancellationToken::new();
        let _stop_tasks = tasks.clone().drop_guard();
        let (lease_tx, mut lease_rx) = watch::channel(None);
        tokio::spawn(watch_lease(self.lease.api().clone(), self.cfg.lease_name.clone(), lease_tx, tasks.clone()));

        // On start a pod is standby: fence locally, then make sure the label says so.
        if !self.fence.set(WantedFence::Standby, FENCE_BUDGET).await {
            tracing::warn!(pod = %self.cfg.identity, "slapd not fenced yet at start (the fence keeps retrying)");
        }
        // The term this pod carries is the floor of this elector's terms: it outlives the
        // process, the Lease may not (a restarted elector that finds a recreated Lease must
        // still know that terms, and writes, came before it; `catch_up::previous`).
        match self.labels.label_self_standby(0).await {
            Ok(carried) => self.term_floor = carried,
            Err(e) => {
                tracing::warn!(error = %e, "could not label this pod standby at start (will be corrected on the next term)")
            }
        }
        self.reread().await;
        tracing::info!(
            namespace = %self.cfg.namespace, statefulset = %self.cfg.statefulset, pod = %self.cfg.identity,
            lease = %self.cfg.lease_name, timing = ?self.cfg.timing, "elector started"
        );

        loop {
            self.heartbeat.beat();
            self.publish_handover();
            if terminate.is_cancelled() {
                self.stopping = true;
            }
            let now = Moment::now();
            // borrow_and_update marks the values seen, so `changed()` below waits for news.
            self.my_csn.clone_from(&csn.borrow_and_update());
            let healthy_now = *healthy.borrow_and_update();
            self.publish_readiness(now);
            self.keep_replication_unblocked(now);
            // Issue 15 item 2: lead only while the guard would fence slapd on our death; a
            // lost guard is a fence we cannot trust: step down without releasing.
            let mut guard_changes = self.watchdog.as_ref().map_or_else(Changes::never, Watchdog::changes);
            let guarded = self.watchdog.as_ref().is_none_or(Watchdog::trusted);
            if !guarded && self.leading.is_some() {
                tracing::error!(pod = %self.cfg.identity, "lost the fence guard while leading: stepping down, keeping the Lease until it expires");
                self.step_down("GuardLost").await;
                continue;
            }
            let eligible =
                healthy_now && guarded && (self.leading.is_some() || self.caught_up_or_graced(now, &recheck));
            let me = Me {
                identity: &self.cfg.identity,
                uid: self.cfg.pod_uid.as_deref(),
                eligible,
                stopping: self.stopping || *deleting.borrow_and_update(),
                leading: self.leading,
            };
            let mut action = decide(self.observed.as_ref(), &me, now, &self.cfg.timing);
            if matches!(action, Action::Acquire | Action::Renew) {
                if let Some(t) = self.retry_at.filter(|t| now < *t) {
                    action = Action::Wait(Some(t));
                }
            }
            let retry_due = self.retry_at.is_none_or(|t| now >= t);
            let request =
                crate::election::switchover::step(&action, self.in_office, me.stopping, self.current.as_ref());
            if let (crate::election::switchover::Step::Consider(target), true) = (request, retry_due) {
                self.consider_switchover(&target).await;
                continue;
            }
            match action {
                Action::Acquire => self.acquire().await,
                Action::Renew => self.renew(now).await,
                Action::Demote(reason) => {
                    self.step_down(&format!("{reason:?}")).await;
                }
                Action::Release(reason) => {
                    if self.step_down(&format!("{reason:?}")).await {
                        self.release().await;
                    }
                }
                Action::Wait(until) => {
                    self.settle_unfenced_term().await;
                    // A stopping elector outlives an unconfirmed fence: in a container its exit
                    // would take the fence keeper and the watchdog with it.
                    if terminate.is_cancelled() && self.leading.is_none() && self.unfenced_term.is_none() {
                        tracing::info!(pod = %self.cfg.identity, "stood down; exiting");
                        if let Some(w) = self.watchdog.take() {
                            w.stop().await;
                        }
                        return Exit::Terminated;
                    }
                    if self.leading.is_some() && !self.in_office && retry_due {
                        self.advance_office().await;
                    }
                    if self.current.is_none() && retry_due {
                        self.reread().await; // not readable yet (absent, forbidden, API down)
                        continue;
                    }
                    let mut wake = until.map_or(TICK, |t| t.since(now).min(TICK));
                    if self.unfenced_term.is_some() {
                        wake = wake.min(UNFENCED_POLL);
                    }
                    if self.office.is_some() {
                        wake = wake.min(office::OFFICE_POLL);
                    }
                    if self.old_leader.is_some() && self.waiting_to_catch_up {
                        wake = wake.min(UNFENCED_POLL);
                    }
                    tokio::select! {
                        Ok(()) = lease_rx.changed() => {
                            if let Some(seen) = lease_rx.borrow_and_update().clone() {
                                self.on_lease(seen);
                            }
                        }
                        Ok(()) = healthy.changed() => {}
                        Ok(()) = csn.changed() => {}
                        Ok(()) = deleting.changed() => {}
                        _ = guard_changes.changed() => {}
                        _ = terminate.cancelled(), if !self.stopping => {}
                        _ = tokio::time::sleep(wake) => {}
                    }
                }
            }
        }
    }

    /// While a standby's slapd replicates changes (its contextCSN moves), has its fence
    /// written again at most every [`UNBLOCK_EVERY`], so that the unfence of a hand-over to it
    /// does not wait for the syncrepl `timeout=` ([`FenceKeeper::unblock_replication`]).
    fn keep_replication_unblocked(&mut self, now: Moment) {
        if self.leading.is_some() || now < self.next_unblock || self.my_csn == self.unblocked_at_csn {
            return;
        }
        self.fence.unblock_replication();
        self.unblocked_at_csn.clone_from(&self.my_csn);
        self.next_unblock = now + UNBLOCK_EVERY;
    }

    /// Catch-up gating for a follower (`catch_up::gate`): caught up with the leader's
    /// published contextCSN and, after an expiry, with its slapd's current one, or the Lease
    /// free for longer than the grace. While waiting, ask for fresh checks.
    /// The contextCSN a follower must hold: the leader's in the Lease, and whatever a Lease
    /// seen before a recreation published (`csn_floor`).
    fn published(&self) -> Vec<String> {
        let current = self.current.as_ref().map(lease::published_csn).unwrap_or_default();
        current.into_iter().chain(self.csn_floor.iter().cloned()).collect()
    }

    fn caught_up_or_graced(&mut self, now: Moment, recheck: &tokio::sync::Notify) -> bool {
        let published = self.published();
        let ok = self.catch_up_gate(now, &published).may_promote();
        let free = self.observed.as_ref().is_some_and(|o| crate::election::decide::free_since(o, now).is_some());
        if !ok && free {
            recheck.notify_one();
        }
        // Said once per wait.
        if !ok && free && !self.waiting_to_catch_up {
            if self.seeded() {
                tracing::warn!(pod = %self.cfg.identity, mine = ?self.my_csn, leader = ?published,
                    grace = ?self.cfg.catch_up_grace, "the Lease is free but this slapd is behind the leader: waiting to catch up");
            } else {
                tracing::error!(pod = %self.cfg.identity, mine = ?self.my_csn, leader = ?published,
                    "the Lease is free but this slapd never held what the leader published (still seeding): it takes \
                     over only once it has, whatever --catch-up-grace; if that copy is lost for good, see \
                     docs/operations.md#no-complete-copy-left");
            }
        }
        self.waiting_to_catch_up = !ok && free;
        ok
    }

    /// A version of the Lease from the watch: kept if newer than the one known.
    fn on_lease(&mut self, seen: Lease) {
        if lease::adopts(&seen, self.current.as_ref(), false) {
            self.accept_lease(seen);
        }
    }

    /// The Lease as the API server answered a read or a write: authoritative even with a lower
    /// resourceVersion (etcd restored from a backup), or every CAS write would fail forever.
    fn accept_lease(&mut self, seen: Lease) {
        if lease::adopts(&seen, self.current.as_ref(), true) {
            let recreated = self.current.as_ref().is_some_and(|p| p.metadata.uid != seen.metadata.uid);
            if let Some(before) = self.observed.as_ref().filter(|_| recreated) {
                // Recreated: its terms restart at 0, the pods keep the old ones; its published
                // contextCSN is gone, the writes it stood for are not.
                self.term_floor = self.term_floor.max(before.transitions);
                self.csn_floor = self.published();
            }
            self.ops.lease_seen(&seen);
            let previous = self.current.as_ref().zip(self.observed.as_ref());
            let next = lease::observe_after(previous, &seen, Moment::now());
            crate::divergence::auditor::log_own_mark(&self.cfg.identity, self.observed.as_ref(), &next);
            self.observed = Some(next);
            self.current = Some(seen);
        }
    }

    async fn reread(&mut self) {
        match self.lease.get(self.cfg.api_timeout).await {
            Ok(l) => {
                self.accept_lease(l);
                self.succeeded();
            }
            Err(LeaseError::NotFound(_)) => match self.lease.create_empty(self.cfg.api_timeout).await {
                Ok(l) => self.accept_lease(l),
                Err(e) => self.failed("the Lease does not exist and cannot be created", &e),
            },
            Err(e) => self.failed("reading the Lease", &e),
        }
    }

    async fn acquire(&mut self) {
        let Some(base) = self.current.clone() else { return self.reread().await };
        // A Lease never held is new, or was recreated unseen by this elector: before taking
        // it, learn from this pod's term annotation whether terms, and writes, came before it
        // (then `catch_up::previous` asks every peer first). Decided again with what it says.
        let never_held = base.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0) == 0;
        if never_held && self.term_read_for != base.metadata.uid {
            match self.labels.own_term().await {
                Ok(carried) => {
                    self.term_floor = self.term_floor.max(carried);
                    self.term_read_for.clone_from(&base.metadata.uid);
                    self.succeeded();
                }
                Err(e) => self.failed("reading this pod's term before taking a Lease never held", &e),
            }
            return;
        }
        let sent = Moment::now();
        let mut next = lease::with_context_csn(
            lease::acquired(
                &base,
                &self.cfg.identity,
                self.cfg.pod_uid.as_deref(),
                self.cfg.timing.lease_duration,
                self.term_floor,
            ),
            &self.my_csn,
        );
        // The status of the new term: which window, if any, this acquisition leaves uncovered.
        let uncovered = self.uncovered.take();
        let term = lease::observe(&next, sent).transitions;
        let note = uncovered.as_ref().map(|(previous, u)| old_leader::uncovered_annotation(term, previous, u));
        lease::set_annotation(&mut next, ldap_elector_contract::LEASE_ANNOTATION_UNCOVERED, note);
        match self.lease.write(&next, self.cfg.api_timeout).await {
            Ok(won) => {
                let term = lease::observe(&won, sent).transitions;
                tracing::info!(pod = %self.cfg.identity, term, previous = ?self.observed.as_ref().and_then(|o| o.holder.clone()), "acquired the Lease");
                self.leading = Some(Leading { term, renewed_at: sent });
                self.led = true;
                self.in_office = false;
                self.abandon_office().await;
                self.unfenced_term = None; // the new term's fence is the keeper's again
                self.ops.acquired(sent);
                self.record_uncovered(term, uncovered);
                self.feed_watchdog(sent).await;
                self.accept_lease(won);
                self.succeeded();
            }
            Err(LeaseError::Conflict) => self.reread().await,
            Err(e) => self.failed("acquiring the Lease", &e),
        }
    }

    async fn renew(&mut self, now: Moment) {
        let (Some(base), Some(leading)) = (self.current.clone(), self.leading) else { return };
        let deadline = leading.renewed_at + self.cfg.timing.renew_deadline;
        let timeout = self.cfg.api_timeout.min(deadline.since(now));
        let sent = Moment::now();
        let mut next = lease::with_context_csn(lease::renewed(&base), &self.my_csn);
        if let Some(link) = self.divergence.as_mut() {
            next = link.apply(next, leading.term);
        }
        match self.lease.write(&next, timeout).await {
            Ok(renewed) => {
                if let Some(l) = self.leading.as_mut() {
                    l.renewed_at = sent;
                }
                self.fence.extend(sent + self.cfg.timing.renew_deadline);
                self.ops.renewed(sent);
                if let Some(link) = self.divergence.as_mut() {
                    link.written();
                }
                self.feed_watchdog(sent).await;
                self.accept_lease(renewed);
                self.succeeded();
            }
            // Someone else wrote the Lease: read it; `decide` demotes us if it is not ours.
            Err(LeaseError::Conflict) => self.reread().await,
            Err(e) => self.failed("renewing the Lease", &e),
        }
    }

    /// Stop leading: fence locally first, then label standby (best effort). True when the
    /// fence is confirmed; only then may the caller release or hand over the Lease.
    async fn step_down(&mut self, reason: &str) -> bool {
        let Some(leading) = self.leading.take() else { return self.unfenced_term.is_none() };
        self.in_office = false;
        self.abandon_office().await;
        if let Some(link) = &self.divergence {
            link.office.send_replace(None);
        }
        let fenced = self.fence.set(WantedFence::Standby, FENCE_BUDGET).await;
        self.ops.stepped_down(leading.term, reason, fenced);
        if fenced {
            if let Some(w) = self.watchdog.as_mut() {
                w.disarm().await;
            }
        } else {
            // Keep the Lease (it expires on the followers' clocks) and the watchdog armed.
            tracing::error!(pod = %self.cfg.identity, term = leading.term,
                "slapd not confirmed fenced within the budget: keeping the Lease until it expires (the fence keeps retrying)");
            self.unfenced_term = Some(leading.term);
        }
        tracing::warn!(pod = %self.cfg.identity, term = leading.term, reason, fenced, role = ROLE_STANDBY, "stepped down");
        if let Err(e) = self.labels.label_self_standby(leading.term).await {
            tracing::info!(error = %e, "could not label this pod standby (the next leader demotes it before labelling itself)");
        }
        fenced
    }

    /// After a step-down without a confirmed fence: once slapd confirms it, disarm the
    /// watchdog and release the Lease if it is still ours.
    async fn settle_unfenced_term(&mut self) {
        let Some(term) = self.unfenced_term else { return };
        if !self.fence.is_fenced() {
            return;
        }
        tracing::info!(pod = %self.cfg.identity, term, "slapd fence confirmed after stepping down");
        self.unfenced_term = None;
        if let Some(w) = self.watchdog.as_mut() {
            w.disarm().await;
        }
        // Not leading (taking office clears the unfenced term): hand over what is still ours.
        self.release().await;
    }

    /// Clear the holder so a standby takes over at once (CAS; skipped if not ours). The
    /// slapd is fenced by now, so its contextCSN is final: publish it, and the standby
    /// takes over as soon as it has replicated everything.
    async fn release(&mut self) {
        if let Ok(last) = self.cfg.health_check.check_detailed(self.cfg.api_timeout).await {
            if !last.is_empty() {
                self.my_csn = last;
            }
        }
        for _ in 0..2 {
            let Some(base) = self.current.clone() else { return };
            if lease::observe(&base, Moment::now()).holder.as_deref() != Some(self.cfg.identity.as_str()) {
                return;
            }
            let next = lease::with_context_csn(lease::released(&base), &self.my_csn);
            match self.lease.write(&next, self.cfg.api_timeout).await {
                Ok(released) => {
                    tracing::info!(pod = %self.cfg.identity, "released the Lease");
                    self.ops.released();
                    self.accept_lease(released);
                    return;
                }
                Err(LeaseError::Conflict) => self.reread().await,
                Err(e) => return self.failed("releasing the Lease (followers take over after expiry)", &e),
            }
        }
    }

    /// The watchdog fences slapd at this term's deadline unless fed again.
    async fn feed_watchdog(&mut self, renewed_at: Moment) {
        let deadline = renewed_at + self.cfg.timing.renew_deadline;
        if let Some(w) = self.watchdog.as_mut() {
            w.arm(deadline).await;
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.failures = self.failures.saturating_add(1);
        let backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX).delay(self.failures);
        self.retry_at = Some(Moment::now() + backoff);
        tracing::warn!(pod = %self.cfg.identity, failures = self.failures, retry_in = ?backoff, error = %error, "{what} failed");
    }
}

/// Calls `on` with every version of the object `name` (a watch restricted to that name, so
/// `resourceNames` RBAC applies), restarting with backoff after errors, until `on` returns
/// false or `cancel`. Nobody polls: followers learn of renewals and releases from here.
async fn watch_named<K>(api: Api<K>, name: String, mut on: impl FnMut(K) -> bool, cancel: CancellationToken)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).backoff(QUICK_WATCH.delays()).boxed();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                if !on(object) {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(object = %name, error = %e, "watch error (restarting with backoff)"),
            None => return,
        }
    }
}

/// Publishes the latest version of the Lease (older unread versions are superseded).
async fn watch_lease(api: Api<Lease>, name: String, tx: watch::Sender<Option<Lease>>, cancel: CancellationToken) {
    watch_named(api, name, |lease| tx.send(Some(lease)).is_ok(), cancel).await
}

/// Sets `deleting` once this pod has a deletionTimestamp.
pub async fn watch_own_pod(api: Api<Pod>, name: String, deleting: watch::Sender<bool>, cancel: CancellationToken) {
    let pod = name.clone();
    let on_pod = move |p: Pod| {
        if p.metadata.deletion_timestamp.is_some() && !*deleting.borrow() {
            tracing::info!(pod = %pod, "pod is being deleted: handing over");
            let _ = deleting.send(true);
        }
        true
    };
    watch_named(api, name, on_pod, cancel).await
}

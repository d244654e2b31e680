//! Candidates: the runtime contract's state of each elector incarnation and its node.

use ldap_elector::slapd::fence::WantedFence;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Acquire,
    Renew,
    Release,
    /// Clear a switchover request and record the refusal.
    Refuse,
    Get,
}

#[derive(Clone, Debug)]
pub(crate) enum Busy {
    Idle,
    Call {
        req_id: u64,
        what: Call,
        sent_at: Moment,
    },
    /// Fencing slapd; then maybe send the release (PUT against that resourceVersion).
    Fencing {
        release: Option<(u64, LeaseSpec)>,
    },
}

/// Something delivered to a candidate's process.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    Reply {
        req_id: u64,
        reply: Reply,
    },
    Watch {
        gen: u64,
        rec: LeaseRecord,
    },
    Timeout {
        req_id: u64,
    },
    Wake {
        gen: u64,
    },
    Tick,
    FenceDone,
    /// The fence budget passed and slapd has not confirmed `olcReadOnly: TRUE` (item 1).
    FenceTimedOut,
    /// slapd applied a fence that the elector had stopped waiting for.
    FenceConfirmed,
    OfficeRetry,
    GuardLost,
    KeeperRound,
    /// The keeper's read-back answered; `role` is what it decided before the read.
    KeeperVerified {
        role: &'static str,
    },
    Reconnect,
    HealthChanged,
    Sigterm,
}

impl Msg {
    pub(crate) fn is_network(&self) -> bool {
        matches!(self, Msg::Reply { .. } | Msg::Watch { .. } | Msg::KeeperVerified { .. })
    }
}

pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) clock: ClockSpec,
    // The process.
    /// Incarnation: messages for an earlier one are dropped.
    pub(crate) inc: u32,
    pub(crate) down: bool,
    pub(crate) paused: bool,
    /// Messages that arrived while paused.
    pub(crate) deferred: Vec<Msg>,
    pub(crate) restart_pending: bool,
    // The pod's environment.
    pub(crate) unhealthy: u32,
    pub(crate) partitioned: u32,
    // The runtime's state.
    pub(crate) stopping: bool,
    pub(crate) obs: Option<(Observed, u64)>,
    /// The Lease object behind `obs` (for `lease::adopts` / `observe_after`).
    pub(crate) known: Option<Lease>,
    pub(crate) leading: Option<Leading>,
    /// The newest term known to be used (the runtime's `term_floor`): acquisitions go above it.
    pub(crate) term_floor: i32,
    /// The uid of the Lease never held for which the pod's term was read (`term_read_for`).
    pub(crate) term_read_for: Option<String>,
    /// The contextCSN a Lease seen before its recreation published (the runtime's `csn_floor`).
    pub(crate) csn_floor: Vec<String>,
    /// Taking office found a pod with this newer term: release at the next step.
    pub(crate) newer_term: Option<i32>,
    pub(crate) busy: Busy,
    pub(crate) wake_gen: u64,
    pub(crate) watch_gen: u64,
    pub(crate) watch_ok: bool,
    pub(crate) relist: Option<u64>,
    // slapd.
    /// slapd accepts writes (set on a successful acquire/renew, cleared when a fence completes).
    pub(crate) writable: bool,
    /// When the watchdog fences slapd (local clock), fed on every successful acquire/renew.
    pub(crate) watchdog_at: Moment,
    /// The elector was paused since it last fed the watchdog: only the watchdog bounds slapd's
    /// writable time now (the elector's own loop did not run on time).
    pub(crate) paused_since_feed: bool,
    /// slapd left writable by a crashed elector: writable until the watchdog fences it.
    pub(crate) orphan_until: Option<Moment>,
    /// slapd holds `olcReadOnly` changes until this real time (a fence stall, item 1).
    pub(crate) stall_until: Nanos,
    /// Stepped down without a confirmed fence: keep the Lease, do not exit (item 1).
    pub(crate) unfenced: bool,
    /// The watchdog's state (the real `Warden`); with the guard it outlives the elector.
    pub(crate) guard: Warden,
    /// Per server ID: the newest write this slapd holds (real time; 0: none).
    pub(crate) holds: Vec<Nanos>,
    /// The contextCSN its health check read last.
    pub(crate) my_csn: Vec<String>,
    /// Replication into this slapd is cut.
    pub(crate) rep_cut: u32,
    /// A promotion now would be recorded as uncovered (`catch_up::Gate::PromoteUncovered`).
    pub(crate) uncovered: bool,
    /// Taking office: the label step in flight.
    pub(crate) office: Option<office::Run>,
    /// Labelled leader for the current term (slapd is unfenced only then).
    pub(crate) in_office: bool,
    /// The next label write on its own pod arrives this late (FaultKind::LateLabelWrite).
    pub(crate) late_label: Option<Duration>,
    /// slapd is stopped (pod deletion).
    pub(crate) slapd_down: bool,
    /// The guard's connection is down (restarting): not eligible.
    pub(crate) guard_down: u32,
    /// What the elector asked its fence keeper for.
    pub(crate) wanted: WantedFence,
}

impl Candidate {
    pub(crate) fn new(i: usize, clock: ClockSpec, n: usize) -> Self {
        Candidate {
            id: format!("ldap-server-{i}"),
            clock,
            inc: 0,
            down: false,
            paused: false,
            deferred: Vec::new(),
            restart_pending: false,
            unhealthy: 0,
            partitioned: 0,
            stopping: false,
            obs: None,
            known: None,
            leading: None,
            term_floor: 0,
            term_read_for: None,
            csn_floor: Vec::new(),
            newer_term: None,
            busy: Busy::Idle,
            wake_gen: 0,
            watch_gen: 0,
            watch_ok: false,
            relist: None,
            writable: false,
            watchdog_at: Moment::ZERO,
            paused_since_feed: false,
            orphan_until: None,
            stall_until: 0,
            unfenced: false,
            guard: Warden::fail_closed(),
            wanted: WantedFence::Standby,
            guard_down: 0,
            holds: vec![0; n],
            my_csn: Vec::new(),
            rep_cut: 0,
            slapd_down: false,
            uncovered: false,
            office: None,
            in_office: false,
            late_label: None,
        }
    }

    pub(crate) fn counts_as_leader(&self, real: Nanos) -> bool {
        let local = self.clock.local(real);
        let orphan = self.orphan_until.is_some_and(|t| local < t);
        let frozen = self.paused || self.down || self.paused_since_feed;
        !self.slapd_down && (orphan || (self.writable && (!frozen || local < self.watchdog_at)))
    }

    /// Leading by the runtime's own account (for liveness).
    pub(crate) fn runtime_leads(&self) -> bool {
        !self.down && !self.paused && self.writable && self.leading.is_some()
    }

    pub(crate) fn describe(&self, real: Nanos) -> String {
        let local = self.clock.local(real);
        format!(
            "{} drift={:+.4} local={:?} down={} paused={} writable={} leading={:?} watchdog_in={:?} orphan={:?} obs={:?} busy={:?}",
            self.id,
            self.clock.drift,
            local.since(Moment::ZERO),
            self.down,
            self.paused,
            self.writable,
            self.leading.map(|l| (l.term, local.since(l.renewed_at))),
            self.watchdog_at.since(local),
            self.orphan_until.map(|t| t.since(local)),
            self.obs.as_ref().map(|(o, rv)| (o.holder.clone(), o.transitions, rv, local.since(o.seen_change_at))),
            self.busy,
        )
    }
}

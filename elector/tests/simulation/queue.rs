//! The event queue and the run's statistics.

use super::*;

#[derive(Clone, Debug)]
pub(crate) enum Ev {
    AtServer {
        from: usize,
        inc: u32,
        req_id: u64,
        req: Req,
    },
    To {
        cand: usize,
        inc: u32,
        msg: Msg,
    },
    Fault(Fault),
    Resume(usize),
    Restart(usize),
    Healthy(usize),
    Heal(usize),
    /// slapd applies a fence the elector stopped waiting for.
    SlapdFenced(usize),
    /// slapd applies the fence a starting elector asked for.
    StartFenced(usize),
    /// The restarted guard's fence applies.
    GuardFenced(usize),
    /// The elector is connected to its guard again.
    GuardBack(usize),
    /// Clients write (every `WRITE_EVERY`).
    Write,
    Replicated {
        to: usize,
        origin: usize,
        stamp: Nanos,
    },
    RepHealed(usize),
    SlapdStop(usize),
    HandoverPoll {
        cand: usize,
        since: Nanos,
    },
}

pub(crate) struct Queued {
    pub(crate) at: Nanos,
    pub(crate) seq: u64,
    pub(crate) ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed: `BinaryHeap` pops the earliest (then first scheduled) event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) events: u64,
    pub(crate) acquired: u64,
    /// Acquisitions of a Lease another candidate held (expiry takeovers).
    pub(crate) takeovers: u64,
    pub(crate) renewed: u64,
    pub(crate) conflicts: u64,
    pub(crate) demoted_deadline: u64,
    pub(crate) demoted_lost: u64,
    pub(crate) released: u64,
    pub(crate) paused_leaders: u64,
    pub(crate) watchdog_fences: u64,
    pub(crate) orphans: u64,
    pub(crate) writes_acked: u64,
    pub(crate) promotions_checked: u64,
    pub(crate) promotions_uncovered: u64,
    /// Step-downs whose fence slapd did not confirm within the budget (item 1).
    pub(crate) unconfirmed_fences: u64,
    /// Container kills of a leader whose guard fenced on EOF (item 2).
    pub(crate) guard_fences: u64,
    /// Offices that took more than one attempt (items 6, 7).
    pub(crate) office_retries: u64,
    pub(crate) handovers: u64,
    /// Guard restarts under a running elector (fail-closed).
    pub(crate) guard_restarts: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.acquired += o.acquired;
        self.takeovers += o.takeovers;
        self.renewed += o.renewed;
        self.conflicts += o.conflicts;
        self.demoted_deadline += o.demoted_deadline;
        self.demoted_lost += o.demoted_lost;
        self.released += o.released;
        self.paused_leaders += o.paused_leaders;
        self.watchdog_fences += o.watchdog_fences;
        self.orphans += o.orphans;
        self.writes_acked += o.writes_acked;
        self.promotions_checked += o.promotions_checked;
        self.promotions_uncovered += o.promotions_uncovered;
        self.unconfirmed_fences += o.unconfirmed_fences;
        self.guard_fences += o.guard_fences;
        self.office_retries += o.office_retries;
        self.handovers += o.handovers;
        self.guard_restarts += o.guard_restarts;
    }
}

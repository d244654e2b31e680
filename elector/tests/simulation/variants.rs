//! The runtime's policies where issue 15 changed runtime code (not a pure core): each is an
//! explicit, named variant, `current()` is what `elector/src` does today and `OLD` the
//! behaviour before the fix of that item. Where the fix lives in a pure core, the variant
//! picks which rule the model calls (the real function, or the old rule written out).

/// Item 1: when may a stepping-down leader release (or hand over) the Lease?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReleaseAfter {
    /// Old: after the fence budget, whether or not slapd confirmed `olcReadOnly: TRUE`.
    FenceBudget,
    /// Current: only once the fence is confirmed; else demote, keep the Lease (it expires on
    /// the followers' clocks) and the watchdog armed, and do not exit.
    ConfirmedFence,
}

/// Item 2: where the watchdog runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watchdog {
    /// Old: a child of the elector, in its container: a container kill takes it along, and
    /// slapd stays writable until the restarted elector fences it at start.
    SameContainer,
    /// Current: the fence guard in a container of its own (`watchdog::Warden`), which fences
    /// on the connection's EOF.
    Guard,
}

/// Item 3: when the fence keeper decides the role it repairs slapd to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeeperRole {
    /// Old: at the top of its round, before it waits on slapd's answer.
    BeforeVerify,
    /// Current: `WantedFence::role` asked again after the await, right before an unfence.
    AfterEveryAwait,
}

/// Item 4: what a standby's contextCSN is judged against after an expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// Old: `decide::may_promote` against the contextCSN published at the last renew.
    Published,
    /// Current: `catch_up::gate` with the old leader's current contextCSN when reachable.
    OldLeadersCurrent,
}

/// Item 5: how a graceful pod deletion orders slapd's stop and the hand-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deletion {
    /// Old: slapd gets SIGTERM at once, in parallel with the elector's hand-over.
    InParallel,
    /// Current: slapd's injected preStop waits for the hand-over (`/handover`).
    PreStopHandover,
}

/// Item 6: which other pods taking office rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Demote {
    /// Old: only pods labelled leader.
    LeaderLabelled,
    /// Current: `labels::needs_demotion` (every pod whose term is older, too).
    NeedsDemotion,
}

/// Item 7: whether the loop renews while taking office.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Office {
    /// Old: the label writes run inline; no renew until they are done.
    Inline,
    /// Current: in a task; the loop keeps renewing.
    Concurrent,
}

/// Item 8: how the loop takes a Lease version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Adopt {
    /// Old: newer resourceVersion only (also for answers), and a Lease without holder is free.
    NewerOnly,
    /// Current: `lease::adopts` and `lease::observe_after`.
    AdoptsObserveAfter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Variants {
    pub(crate) release: ReleaseAfter,
    pub(crate) watchdog: Watchdog,
    pub(crate) keeper: KeeperRole,
    pub(crate) catch_up: CatchUp,
    pub(crate) deletion: Deletion,
    pub(crate) demote: Demote,
    pub(crate) office: Office,
    pub(crate) adopt: Adopt,
}

impl Variants {
    /// Each item's old variant, alone (the rest current).
    pub(crate) fn old_ones() -> [(&'static str, Variants); 8] {
        let c = Variants::current();
        [
            ("1 release after the fence budget", Variants { release: ReleaseAfter::FenceBudget, ..c }),
            ("2 watchdog in the same container", Variants { watchdog: Watchdog::SameContainer, ..c }),
            ("3 keeper decides before its read-back", Variants { keeper: KeeperRole::BeforeVerify, ..c }),
            ("4 catch-up against the published contextCSN", Variants { catch_up: CatchUp::Published, ..c }),
            ("5 slapd stops in parallel with the hand-over", Variants { deletion: Deletion::InParallel, ..c }),
            ("6 only leader-labelled pods demoted", Variants { demote: Demote::LeaderLabelled, ..c }),
            ("7 label writes inline", Variants { office: Office::Inline, ..c }),
            ("8 newer versions only, empty Lease free", Variants { adopt: Adopt::NewerOnly, ..c }),
        ]
    }

    /// What the elector does today.
    pub(crate) const fn current() -> Self {
        Variants {
            release: ReleaseAfter::ConfirmedFence,
            watchdog: Watchdog::Guard,
            keeper: KeeperRole::AfterEveryAwait,
            catch_up: CatchUp::OldLeadersCurrent,
            deletion: Deletion::PreStopHandover,
            demote: Demote::NeedsDemotion,
            office: Office::Concurrent,
            adopt: Adopt::AdoptsObserveAfter,
        }
    }
}

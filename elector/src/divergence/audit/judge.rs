//! The judgement of one differing entry over rounds: in flight, lagging, or divergence.

use super::*;

/// An entry as one server holds it, for the entry-level comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub dn: String,
    pub csn: Option<String>,
    pub content: u128,
    pub meta: u128,
}

impl From<EntryDigest> for EntryState {
    fn from(d: EntryDigest) -> Self {
        EntryState { dn: String::from_utf8_lossy(&d.dn).into_owned(), csn: d.csn, content: d.content, meta: d.meta }
    }
}

impl EntryState {
    fn same(&self, other: &EntryState) -> bool {
        self.content == other.content && self.meta == other.meta
    }
}

/// Both servers' view of one entry (`None`: the server does not hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub a: Option<EntryState>,
    pub b: Option<EntryState>,
}

fn same(x: &Option<EntryState>, y: &Option<EntryState>) -> bool {
    match (x, y) {
        (None, None) => true,
        (Some(x), Some(y)) => x.same(y),
        _ => false,
    }
}

impl Observation {
    pub fn agrees(&self) -> bool {
        same(&self.a, &self.b)
    }

    fn unchanged_since(&self, earlier: &Observation) -> bool {
        same(&self.a, &earlier.a) && same(&self.b, &earlier.b)
    }
}

/// Each server's contextCSN just before and just after a round's reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundCtx {
    pub a_before: ContextCsn,
    pub a_after: ContextCsn,
    pub b_before: ContextCsn,
    pub b_after: ContextCsn,
}

/// How one re-read of a differing entry turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The servers agree now: the difference was a change in flight.
    Agrees,
    /// The entry changed on a server since the previous round.
    Moving,
    /// Unchanged, but a server had not yet processed all the other had at the previous
    /// round (replication still on its way).
    Lagging,
    /// Unchanged although each server had processed everything the other had: one step
    /// towards confirming divergence.
    Holds,
}

/// Judges the current round against the previous one (pure: the heart of "retry, do not
/// report, what is in flight").
pub fn judge(prev: &Observation, prev_ctx: &RoundCtx, cur: &Observation, cur_ctx: &RoundCtx) -> Judgement {
    if cur.agrees() {
        Judgement::Agrees
    } else if !cur.unchanged_since(prev) {
        Judgement::Moving
    } else if cur_ctx.a_before.covers(&prev_ctx.b_after) && cur_ctx.b_before.covers(&prev_ctx.a_after) {
        Judgement::Holds
    } else {
        Judgement::Lagging
    }
}

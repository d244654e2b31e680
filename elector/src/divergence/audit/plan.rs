//! Which differing buckets to read next: batches of small ones, splits of big ones.

use super::*;

/// What to do with the next differing buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Read these buckets' entries in one search (at most `leaf_max` entries planned).
    Leaf(Vec<Prefix>),
    /// Too big for one read: digest its sub-buckets first.
    Split(Prefix),
}

/// Takes the next step off the front of `queue`: a bucket over `leaf_max` entries is
/// split (while it can be), otherwise buckets are batched up to `leaf_max` entries and
/// [`MAX_RANGES_PER_SEARCH`] ranges.
pub fn next_plan(queue: &mut VecDeque<BucketDiff>, leaf_max: usize) -> Option<Plan> {
    let first = queue.pop_front()?;
    if first.size() > leaf_max && first.prefix.bits() + SPLIT_BITS <= 128 {
        return Some(Plan::Split(first.prefix));
    }
    let mut batch = vec![first.prefix];
    let mut planned = first.size();
    while let Some(next) = queue.front() {
        if batch.len() >= MAX_RANGES_PER_SEARCH || planned + next.size() > leaf_max {
            break;
        }
        planned += next.size();
        batch.push(next.prefix);
        queue.pop_front();
    }
    Some(Plan::Leaf(batch))
}

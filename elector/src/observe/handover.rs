//! `/handover` on the probe port: the target of the `preStop` hook the webhook gives slapd's
//! containers (issue 15, item 5). On graceful deletion the kubelet runs the main containers'
//! preStop hooks before it sends them SIGTERM, and stops native sidecars last; so slapd keeps
//! serving (fenced, replicating) until this pod's elector has handed over, instead of racing
//! the fence and the final contextCSN read against its own shutdown.
//!
//! The endpoint is harmless to anyone who can reach the port: it only WAITS, bounded, and
//! triggers nothing (the elector starts the hand-over itself when its pod watch sees the
//! deletionTimestamp). When the pod is not being deleted it answers after [`NOTICE`] at most
//! (the kubelet may call the hook a moment before the elector's watch sees the deletion), and
//! only a few callers wait at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::observe::http::Response;

/// How long to wait for the elector to see its pod's deletion before answering "not being
/// deleted".
pub const NOTICE: Duration = Duration::from_secs(2);
/// The longest a hand-over is waited for: well inside the default 30 s grace period, so
/// slapd keeps at least half of it for its own shutdown. A leader that cannot hand over in
/// time (stalled slapd, no caught-up standby) does not get better by waiting longer.
pub const WAIT: Duration = Duration::from_secs(15);
/// Callers waiting at once; more are answered at once (the kubelet calls once per container).
const MAX_WAITERS: usize = 4;

const TEXT: &str = "text/plain";

/// What the hand-over waits on: the pod's deletion as the elector saw it, and whether the
/// elector has handed over (published by the election loop).
#[derive(Clone)]
pub struct Gate {
    deleting: watch::Receiver<bool>,
    handed_over: watch::Receiver<bool>,
    waiters: Arc<Semaphore>,
}

impl Gate {
    pub fn new(deleting: watch::Receiver<bool>, handed_over: watch::Receiver<bool>) -> Gate {
        Gate { deleting, handed_over, waiters: Arc::new(Semaphore::new(MAX_WAITERS)) }
    }

    /// The answer to `GET /handover`.
    pub async fn wait(&self) -> Response {
        self.wait_within(NOTICE, WAIT).await
    }

    async fn wait_within(&self, notice: Duration, bound: Duration) -> Response {
        let Ok(_permit) = self.waiters.clone().try_acquire_owned() else {
            return ("503 Service Unavailable", TEXT, "too many callers waiting\n".into());
        };
        let mut deleting = self.deleting.clone();
        if !matches!(tokio::time::timeout(notice, deleting.wait_for(|d| *d)).await, Ok(Ok(_))) {
            return ("200 OK", TEXT, "this pod is not being deleted\n".into());
        }
        let mut done = self.handed_over.clone();
        let handed_over = matches!(tokio::time::timeout(bound, done.wait_for(|h| *h)).await, Ok(Ok(_)));
        if handed_over {
            ("200 OK", TEXT, "handed over\n".into())
        } else {
            ("503 Service Unavailable", TEXT, format!("not handed over within {bound:?}; stopping anyway\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_hand_over_waits_only_for_a_pod_being_deleted_and_only_as_long_as_bounded() {
        let (deleting_tx, deleting) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let gate = Gate::new(deleting, done);

        // Not being deleted: answered after the notice, nothing waited for.
        let (status, _, body) = gate.wait_within(SHORT, LONG).await;
        assert_eq!((status, body.as_str()), ("200 OK", "this pod is not being deleted\n"));

        // Being deleted, not handed over yet: bounded.
        deleting_tx.send_replace(true);
        assert_eq!(gate.wait_within(SHORT, SHORT).await.0, "503 Service Unavailable");

        // Returns as soon as the elector has handed over.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_within(SHORT, LONG).await }
        });
        tokio::time::sleep(SHORT).await;
        assert!(!waiting.is_finished());
        done_tx.send_replace(true);
        let (status, _, body) = waiting.await.unwrap();
        assert_eq!((status, body.as_str()), ("200 OK", "handed over\n"));
    }

    #[tokio::test]
    async fn only_a_few_callers_wait_at_once() {
        let (_deleting_tx, deleting) = watch::channel(true);
        let (_done_tx, done) = watch::channel(false);
        let gate = Gate::new(deleting, done);
        let waiting: Vec<_> = (0..MAX_WAITERS)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.wait_within(SHORT, LONG).await })
            })
            .collect();
        tokio::time::sleep(SHORT).await;
        let (status, _, body) = gate.wait_within(SHORT, LONG).await;
        assert_eq!((status, body.as_str()), ("503 Service Unavailable", "too many callers waiting\n"));
        waiting.iter().for_each(|w| w.abort());
    }
}

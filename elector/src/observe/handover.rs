//! `/handover` on the probe port: the target of the `preStop` hook the webhook gives slapd's
//! containers (issue 15, item 5). On graceful deletion the kubelet runs the main containers'
//! preStop hooks before it sends them SIGTERM, and stops native sidecars last; so slapd keeps
//! serving (fenced, replicating) until this pod's elector has handed over, instead of racing
//! the fence and the final contextCSN read against its own shutdown.
//!
//! The endpoint is harmless to anyone who can reach the port: it only WAITS, bounded, and
//! triggers nothing (the elector starts the hand-over itself when its pod watch sees the
//! deletionTimestamp), then for [`DRAIN`]. When the pod is not being deleted it answers after [`NOTICE`] at most
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
/// After the hand-over, how long slapd keeps serving (fenced: writes answered 53 at once)
/// before the hook returns and the kubelet stops it: long enough for the EndpointSlice
/// controller and kube-proxy (1 s minimum sync by default) to take this pod out of the write
/// Service. Without it the pod's address vanished while kube-proxy still sent new
/// connections there, and they hung until the client's connect timeout (5 s on the real node,
/// `make bench-node`), instead of a quick refusal and a retry that reaches the new leader.
pub const DRAIN: Duration = Duration::from_secs(2);
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
        self.wait_within(NOTICE, WAIT, DRAIN).await
    }

    async fn wait_within(&self, notice: Duration, bound: Duration, drain: Duration) -> Response {
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
            tokio::time::sleep(drain).await;
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
        let (status, _, body) = gate.wait_within(SHORT, LONG, Duration::ZERO).await;
        assert_eq!((status, body.as_str()), ("200 OK", "this pod is not being deleted\n"));

        // Being deleted, not handed over yet: bounded.
        deleting_tx.send_replace(true);
        assert_eq!(gate.wait_within(SHORT, SHORT, Duration::ZERO).await.0, "503 Service Unavailable");

        // Returns as soon as the elector has handed over.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_within(SHORT, LONG, Duration::ZERO).await }
        });
        tokio::time::sleep(SHORT).await;
        assert!(!waiting.is_finished());
        done_tx.send_replace(true);
        let (status, _, body) = waiting.await.unwrap();
        assert_eq!((status, body.as_str()), ("200 OK", "handed over\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_hand_over_slapd_keeps_serving_for_the_drain() {
        let (_deleting_tx, deleting) = watch::channel(true);
        let (_done_tx, done) = watch::channel(true);
        let gate = Gate::new(deleting, done);
        let started = tokio::time::Instant::now();
        let (status, _, _) = gate.wait().await;
        assert_eq!(status, "200 OK");
        assert_eq!(started.elapsed(), DRAIN, "answered after the drain, not before");
        assert!(NOTICE + WAIT + DRAIN < Duration::from_secs(30), "within the default grace period");
    }

    #[tokio::test]
    async fn only_a_few_callers_wait_at_once() {
        let (_deleting_tx, deleting) = watch::channel(true);
        let (_done_tx, done) = watch::channel(false);
        let gate = Gate::new(deleting, done);
        let waiting: Vec<_> = (0..MAX_WAITERS)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.wait_within(SHORT, LONG, Duration::ZERO).await })
            })
            .collect();
        tokio::time::sleep(SHORT).await;
        let (status, _, body) = gate.wait_within(SHORT, LONG, Duration::ZERO).await;
        assert_eq!((status, body.as_str()), ("503 Service Unavailable", "too many callers waiting\n"));
        waiting.iter().for_each(|w| w.abort());
    }
}

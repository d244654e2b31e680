//! Plain-HTTP liveness and readiness for the kubelet. Readiness never means "this pod
//! leads" (a native sidecar's readiness gates the pod's, and a caught-up standby stays
//! Ready): it means the pod could take over without losing writes
//! ([`readiness`](crate::election::readiness)). Liveness fails when the election loop stops
//! making progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Moment;
use crate::observe::handover::Gate;
use ldap_elector_contract::{PROBE_PATH_HANDOVER, PROBE_PATH_LIVE, PROBE_PATH_READY};

/// The loop's last sign of life, in milliseconds on the boot-time clock.
#[derive(Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(Moment::now().since(Moment::ZERO).as_millis() as u64, Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.0.load(Ordering::Relaxed));
        Moment::now().since(Moment::ZERO + last)
    }
}

/// The election loop's readiness verdict for `/readyz`: `None` when Ready, else why not.
/// Not Ready until the loop has judged it once.
#[derive(Clone)]
pub struct Ready(Arc<std::sync::Mutex<Option<String>>>);

impl Default for Ready {
    fn default() -> Self {
        Ready(Arc::new(std::sync::Mutex::new(Some("the election loop has not started\n".into()))))
    }
}

impl Ready {
    pub fn set(&self, not_ready: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = not_ready;
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves the probes, and `/handover` (the preStop hook's wait) when `handover` is given,
/// until `cancel`. `stale_after`: how old the heartbeat may get.
pub async fn serve(
    listener: TcpListener,
    heartbeat: Heartbeat,
    ready: Ready,
    stale_after: Duration,
    handover: Option<Gate>,
    cancel: CancellationToken,
) {
    let respond = move |path: String| {
        let (heartbeat, ready, handover) = (heartbeat.clone(), ready.clone(), handover.clone());
        async move {
            match handover {
                Some(gate) if path == PROBE_PATH_HANDOVER => gate.wait().await,
                _ => {
                    let (status, body) = respond(&path, heartbeat.age(), stale_after, ready.get());
                    (status, "text/plain", body)
                }
            }
        }
    };
    crate::observe::http::serve_async(listener, respond, cancel).await
}

fn respond(path: &str, age: Duration, stale_after: Duration, not_ready: Option<String>) -> (&'static str, String) {
    match (path, not_ready) {
        (PROBE_PATH_LIVE, _) if age <= stale_after => ("200 OK", "ok\n".into()),
        (PROBE_PATH_LIVE, _) => ("503 Service Unavailable", format!("election loop stalled for {age:?}\n")),
        (PROBE_PATH_READY, None) => ("200 OK", "ok\n".into()),
        (PROBE_PATH_READY, Some(why)) => ("503 Service Unavailable", why),
        _ => ("404 Not Found", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_heartbeat_and_readiness_the_loops_verdict() {
        let s = Duration::from_secs(10);
        assert_eq!(respond("/livez", Duration::from_secs(1), s, None).0, "200 OK");
        assert_eq!(respond("/livez", Duration::from_secs(11), s, None).0, "503 Service Unavailable");
        assert_eq!(respond("/livez", Duration::from_secs(1), s, Some("behind".into())).0, "200 OK");
        assert_eq!(respond("/readyz", Duration::from_secs(11), s, None).0, "200 OK");
        assert_eq!(
            respond("/readyz", Duration::ZERO, s, Some("behind\n".into())),
            ("503 Service Unavailable", "behind\n".into())
        );
        assert_eq!(respond("/other", Duration::ZERO, s, None).0, "404 Not Found");
        assert!(Ready::default().get().is_some(), "not Ready before the loop judged it");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hb = Heartbeat::default();
        hb.beat();
        let cancel = CancellationToken::new();
        // A pod being deleted whose elector has handed over.
        let gate = Gate::new(tokio::sync::watch::channel(true).1, tokio::sync::watch::channel(true).1);
        let ready = Ready::default();
        tokio::spawn(serve(listener, hb, ready.clone(), Duration::from_secs(10), Some(gate), cancel.clone()));
        let get = |path: &'static str| crate::observe::http::get(addr, path);
        let live = get("/livez").await;
        assert!(live.starts_with("HTTP/1.1 200 OK"), "{live}");
        let starting = get(PROBE_PATH_READY).await;
        assert!(starting.starts_with("HTTP/1.1 503") && starting.ends_with("has not started\n"), "{starting}");
        ready.set(None);
        let ready = get(PROBE_PATH_READY).await;
        assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
        let handover = get(PROBE_PATH_HANDOVER).await;
        assert!(handover.starts_with("HTTP/1.1 200 OK") && handover.ends_with("handed over\n"), "{handover}");
        cancel.cancel();
    }
}

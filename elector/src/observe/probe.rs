//! Plain-HTTP liveness and readiness for the kubelet. Readiness means "the elector runs",
//! never "this pod leads": a native sidecar's readiness gates the pod's, and the standby
//! must stay Ready. Liveness fails when the election loop stops making progress.

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

/// Serves the probes, and `/handover` (the preStop hook's wait) when `handover` is given,
/// until `cancel`. `stale_after`: how old the heartbeat may get.
pub async fn serve(
    listener: TcpListener,
    heartbeat: Heartbeat,
    stale_after: Duration,
    handover: Option<Gate>,
    cancel: CancellationToken,
) {
    let respond = move |path: String| {
        let (heartbeat, handover) = (heartbeat.clone(), handover.clone());
        async move {
            match handover {
                Some(gate) if path == PROBE_PATH_HANDOVER => gate.wait().await,
                _ => {
                    let (status, body) = respond(&path, heartbeat.age(), stale_after);
                    (status, "text/plain", body)
                }
            }
        }
    };
    crate::observe::http::serve_async(listener, respond, cancel).await
}

fn respond(path: &str, age: Duration, stale_after: Duration) -> (&'static str, String) {
    match path {
        PROBE_PATH_LIVE if age <= stale_after => ("200 OK", "ok\n".into()),
        PROBE_PATH_LIVE => ("503 Service Unavailable", format!("election loop stalled for {age:?}\n")),
        PROBE_PATH_READY => ("200 OK", "ok\n".into()),
        _ => ("404 Not Found", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_heartbeat_and_readiness_does_not_depend_on_role() {
        let s = Duration::from_secs(10);
        assert_eq!(respond("/livez", Duration::from_secs(1), s).0, "200 OK");
        assert_eq!(respond("/livez", Duration::from_secs(11), s).0, "503 Service Unavailable");
        assert_eq!(respond("/readyz", Duration::from_secs(11), s).0, "200 OK");
        assert_eq!(respond("/other", Duration::ZERO, s).0, "404 Not Found");
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
        tokio::spawn(serve(listener, hb, Duration::from_secs(10), Some(gate), cancel.clone()));
        let get = |path: &'static str| crate::observe::http::get(addr, path);
        let live = get("/livez").await;
        assert!(live.starts_with("HTTP/1.1 200 OK"), "{live}");
        let handover = get(PROBE_PATH_HANDOVER).await;
        assert!(handover.starts_with("HTTP/1.1 200 OK") && handover.ends_with("handed over\n"), "{handover}");
        cancel.cancel();
    }
}

//! Plain-HTTP liveness and readiness for the kubelet. Readiness means "the elector runs",
//! never "this pod leads": a native sidecar's readiness gates the pod's, and the standby
//! must stay Ready. Liveness fails when the election loop stops making progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Moment;
use ldap_elector_contract::prometheus;
use ldap_elector_contract::{PROBE_PATH_LIVE, PROBE_PATH_READY};

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

/// Serves the probes until `cancel`. `stale_after`: how old the heartbeat may get.
pub async fn serve(listener: TcpListener, heartbeat: Heartbeat, stale_after: Duration, cancel: CancellationToken) {
    let respond = move |path: &str| {
        let (status, body) = respond(path, heartbeat.age(), stale_after);
        (status, "text/plain", body)
    };
    serve_plain(listener, respond, cancel).await
}

/// Serves `GET /metrics` (the output of `gather`) on plain HTTP/1.1 until `cancel`; any
/// other path is 404.
pub async fn serve_metrics<F>(listener: TcpListener, gather: F, cancel: CancellationToken)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let respond = move |path: &str| {
        if path == prometheus::METRICS_PATH {
            ("200 OK", prometheus::CONTENT_TYPE, gather())
        } else {
            ("404 Not Found", "text/plain", "not found\n".to_string())
        }
    };
    serve_plain(listener, respond, cancel).await
}

/// A minimal plain-HTTP/1.1 server for the probes and `/metrics`: one request per
/// connection, bounded reads and writes; `respond(path)` gives status, content type, body.
pub async fn serve_plain<F>(listener: TcpListener, respond: F, cancel: CancellationToken)
where
    F: Fn(&str) -> (&'static str, &'static str, String) + Clone + Send + Sync + 'static,
{
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "plain HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let target = request.split_whitespace().nth(1).unwrap_or("");
            let (status, content_type, body) = respond(target.split('?').next().unwrap_or(""));
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(response.as_bytes())).await;
        });
    }
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
        tokio::spawn(serve(listener, hb, Duration::from_secs(10), cancel.clone()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn serves_metrics_over_tcp_and_404_elsewhere() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_metrics(listener, || "m 1\n".to_string(), cancel.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.contains("version=0.0.4") && ok.ends_with("m 1\n"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
    }
}

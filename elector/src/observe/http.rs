//! A minimal plain-HTTP/1.1 server for the kubelet's probes and Prometheus' `/metrics`:
//! one request per connection, bounded reads and writes (the webhook, which speaks TLS and
//! HTTP/2, has its own hyper servers).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use ldap_elector_contract::prometheus;

/// Status line, content type and body of a response.
pub type Response = (&'static str, &'static str, String);

/// The server: for the probes and `/metrics`: one request per
/// connection, bounded reads and writes; `respond(path)` gives status, content type, body.
pub async fn serve<F>(listener: TcpListener, respond: F, cancel: CancellationToken)
where
    F: Fn(&str) -> Response + Clone + Send + Sync + 'static,
{
    let respond = move |path: String| std::future::ready(respond(&path));
    serve_async(listener, respond, cancel).await
}

/// [`serve`] with a responder that may wait (e.g. `/handover`); it bounds its own wait.
pub async fn serve_async<F, Fut>(listener: TcpListener, respond: F, cancel: CancellationToken)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
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
            let (status, content_type, body) = respond(target.split('?').next().unwrap_or("").to_string()).await;
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(response.as_bytes())).await;
        });
    }
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
    serve(listener, respond, cancel).await
}

/// `GET path` on `addr`, the whole answer (tests of the servers built on this one).
#[cfg(test)]
pub(crate) async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_over_tcp_and_404_elsewhere() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_metrics(listener, || "m 1\n".to_string(), cancel.clone()));
        let get = |path: &'static str| get(addr, path);
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.contains("version=0.0.4") && ok.ends_with("m 1\n"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
    }
}

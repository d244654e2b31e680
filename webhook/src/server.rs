//! A generic HTTPS server that knows nothing of admission, and a tiny plain-HTTP health
//! server. Handlers see a fully read, size-limited body; every stage of a connection
//! (handshake, headers, body, lifetime, drain) is bounded in time.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::tls::ALPN_H2;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// HTTP/2 ping interval: detects peers that vanished without closing the connection.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// Handles one request whose body has been read completely. Errors are the handler's to
/// turn into responses, so the server never has to guess a status code.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Bytes>> + Send,
{
    fn call(&self, req: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send {
        self(req)
    }
}

/// Resource bounds for one server. The defaults suit an admission webhook, whose caller
/// (the API server) gives up after at most 30 s.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time for a client to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP/1 only: time to receive a request's headers, also the idle keep-alive limit.
    pub header_read_timeout: Duration,
    /// Time to receive a request body once its headers arrived; exceeded → 408.
    pub request_timeout: Duration,
    /// Largest accepted request body; larger → 413.
    pub max_body_bytes: usize,
    /// Open connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections from one peer IP address.
    pub max_connections_per_peer: usize,
    /// A connection with no request in flight for this long is closed (HTTP/1 and HTTP/2).
    pub idle_timeout: Duration,
    /// HTTP/2 streams (concurrent requests) per connection.
    pub max_streams_per_connection: u32,
    /// After this a connection is closed gracefully, so clients reconnect (and see a
    /// rotated certificate) and no peer holds a slot forever.
    pub max_connection_age: Duration,
    /// On shutdown (or at max age), how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            max_connections: 256,
            max_connections_per_peer: 256,
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 32,
            max_connection_age: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), ServerError> {
        let zero_duration = [
            ("handshake_timeout", self.handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
            ("max_connection_age", self.max_connection_age),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        if let Some((name, _)) = zero_duration {
            return Err(ServerError::InvalidLimits(format!("{name} must be > 0")));
        }
        if self.max_connections == 0 || self.max_streams_per_connection == 0 {
            return Err(ServerError::InvalidLimits(
                "max_connections and max_streams_per_connection must be ≥ 1".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid server limits: {0}")]
    InvalidLimits(String),
}

/// Serve HTTPS (HTTP/2 or HTTP/1.1, chosen by ALPN) on `listener` until `shutdown` fires,
/// then stop accepting and let in-flight requests finish for up to `limits.drain_timeout`.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: H,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    serve(listener, Some(TlsAcceptor::from(tls)), handler, limits, shutdown).await
}

/// Serve plain HTTP/1.1 health probes: `/livez` is 200 while the process serves,
/// `/readyz` is 200 when `ready()` says so and 503 otherwise; `/metrics` is what
/// `metrics()` renders (Prometheus text format); anything else is 404.
pub async fn serve_health<R, M>(
    listener: TcpListener,
    ready: R,
    metrics: M,
    shutdown: CancellationToken,
) -> Result<(), ServerError>
where
    R: Fn() -> bool + Send + Sync + 'static,
    M: Fn() -> String + Send + Sync + 'static,
{
    let handler = move |req: Request<Bytes>| {
        let response = match req.uri().path() {
            "/livez" => text(StatusCode::OK, "ok"),
            "/readyz" if ready() => text(StatusCode::OK, "ok"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
            ldap_elector_contract::prometheus::METRICS_PATH => {
                let mut r = text(StatusCode::OK, metrics());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ldap_elector_contract::prometheus::CONTENT_TYPE),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        };
        std::future::ready(response)
    };
    let limits = Limits {
        max_body_bytes: 4096,
        max_connections: 32,
        drain_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    serve(listener, None, handler, limits, shutdown).await
}

/// The two protocol stacks. The protocol is fixed per connection from ALPN instead of
/// sniffing the first bytes: sniffing has no timeout, so a silent client would hold a
/// connection slot, whereas HTTP/1's header timeout closes it.
struct Protocols {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .keep_alive_interval(H2_KEEPALIVE);
        Self { h1: builder.clone().http1_only(), h2: builder.http2_only() }
    }
}

async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    limits.validate()?;
    let local = listener.local_addr().ok();
    let server = Arc::new(Server { protocols: Protocols::new(&limits), handler, limits, shutdown });
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = server.shutdown.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done),
            accepted = listener.accept(), if conns.len() < server.limits.max_connections => {
                match accepted {
                    Ok((tcp, peer)) => {
                        conns.spawn(connection(tcp, peer, tls.clone(), server.clone()));
                    }
                    Err(error) => {
                        warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        }
    }

    // Closing the listener refuses new clients (e.g. the API server retries the other
    // replica) while the connection tasks finish what they have started.
    drop(listener);
    info!(?local, open = conns.len(), "server shutting down, draining connections");
    let drain = async {
        while let Some(done) = conns.join_next().await {
            log_join(done);
        }
    };
    if tokio::time::timeout(server.limits.drain_timeout, drain).await.is_err() {
        warn!(?local, aborted = conns.len(), "drain timeout, closing remaining connections");
        conns.shutdown().await;
    }
    Ok(())
}

/// What every connection task shares.
struct Server<H> {
    protocols: Protocols,
    handler: H,
    limits: Limits,
    shutdown: CancellationToken,
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            warn!(%error, "connection task panicked");
        }
    }
}

async fn connection<H: Handler>(tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, server: Arc<Server<H>>) {
    // Requests and responses are small; do not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = tls else {
        return drive(&server.protocols.h1, TokioIo::new(tcp), peer, &server).await;
    };
    let handshake = tokio::time::timeout(server.limits.handshake_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        _ = server.shutdown.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            // Scanners, probes and clients outside the profile land here: debug, not warn.
            Ok(Err(error)) => {
                debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let protocol =
        if stream.get_ref().1.alpn_protocol() == Some(ALPN_H2) { &server.protocols.h2 } else { &server.protocols.h1 };
    drive(protocol, TokioIo::new(stream), peer, &server).await;
}

/// Serve HTTP on one connection until the client leaves, or shutdown / max age ask it to
/// wind down, in which case in-flight requests get `drain_timeout` to finish.
async fn drive<I, H>(protocol: &auto::Builder<TokioExecutor>, io: I, peer: SocketAddr, server: &Arc<Server<H>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let service_server = server.clone();
    let service = service_fn(move |req| {
        let server = service_server.clone();
        async move {
            let response = respond(&server.handler, &server.limits, req).await;
            Ok::<_, Infallible>(response.map(Full::new))
        }
    });
    let conn = protocol.serve_connection(io, service);
    tokio::pin!(conn);
    let wind_down = async {
        tokio::select! {
            _ = server.shutdown.cancelled() => {}
            _ = tokio::time::sleep(server.limits.max_connection_age) => {}
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = wind_down => {
            // HTTP/1 closes after the current response; HTTP/2 sends GOAWAY and serves
            // the streams already open. A client that never finishes is cut off.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(server.limits.drain_timeout, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}

/// Read the body within the limits, then hand the request to the handler.
async fn respond<H, B>(handler: &H, limits: &Limits, req: Request<B>) -> Response<Bytes>
where
    H: Handler,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let max = limits.max_body_bytes;
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {max} bytes"));
    // A declared Content-Length over the limit is refused before reading anything.
    if body.size_hint().lower() > max as u64 {
        return too_large();
    }
    let read = tokio::time::timeout(limits.request_timeout, Limited::new(body, max).collect());
    let body = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(error)) => {
            debug!(%error, "reading a request body failed");
            return text(StatusCode::BAD_REQUEST, "could not read the request body");
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {} ms", limits.request_timeout.as_millis()),
            )
        }
    };
    handler.call(Request::from_parts(parts, body)).await
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::TestCert;
    use crate::tls::{server_config, TlsProfile, ALPN_HTTP11};
    use rustls::pki_types::ServerName;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::task::JoinHandle;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    const WAIT: Duration = Duration::from_secs(10);

    /// Echoes what the server saw: protocol version, path and body length.
    async fn echo(req: Request<Bytes>) -> Response<Bytes> {
        let seen = format!("{:?} {} {}", req.version(), req.uri().path(), req.body().len());
        Response::new(seen.into())
    }

    struct TestServer {
        addr: SocketAddr,
        cert: TestCert,
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), ServerError>>,
    }

    async fn start<H: Handler>(handler: H, limits: Limits) -> TestServer {
        let cert = TestCert::generate();
        let config = Arc::new(server_config(TlsProfile::Bsi, cert.resolver()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_tls(listener, config, handler, limits, shutdown.clone()));
        TestServer { addr, cert, shutdown, task }
    }

    impl TestServer {
        async fn connect(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            TlsConnector::from(self.cert.default_client(&[alpn])).connect(name, tcp).await.unwrap()
        }

        async fn stop(self) {
            self.shutdown.cancel();
            let result = tokio::time::timeout(WAIT, self.task).await;
            result.expect("server stops").unwrap().unwrap();
        }
    }

    type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

    async fn h1_client<T>(io: T) -> Sender1
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    fn post(uri: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        Request::post(uri).header(header::HOST, "localhost").body(Full::new(body.into())).unwrap()
    }

    async fn read(response: Response<hyper::body::Incoming>) -> (StatusCode, String) {
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn http1_request_over_tls_reaches_handler() {
        let server = start(echo, Limits::default()).await;
        let mut client = h1_client(server.connect(ALPN_HTTP11).await).await;
        let response = client.send_request(post("/mutate", "abc")).await.unwrap();
        assert_eq!(read(response).await, (StatusCode::OK, "HTTP/1.1 /mutate 3".into()));
        server.stop().await;
    }

    #[tokio::test]
    async fn http2_request_over_tls_reaches_handler() {
        let server = start(echo, Limits::default()).await;
        let tls = server.connect(ALPN_H2).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        let (mut client, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let response = client.send_request(post("https://localhost/mutate", "abcd")).await.unwrap();
        assert_eq!(read(response).await, (StatusCode::OK, "HTTP/2.0 /mutate 4".into()));
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_body_gets_413_without_reaching_handler() {
        let limits = Limits { max_body_bytes: 1024, ..Limits::default() };
        let server = start(echo, limits).await;
        let mut client = h1_client(server.connect(ALPN_HTTP11).await).await;
        let response = client.send_request(post("/mutate", vec![b'x'; 2048])).await.unwrap();
        let (status, text) = read(response).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("1024 bytes"), "{text}");
        server.stop().await;
    }

    #[tokio::test]
    async fn body_limit_holds_without_content_length() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        // Two frames and no size hint, as a chunked HTTP/1 or HTTP/2 body arrives.
        let frames = futures::stream::iter(
            [&b"0123456"[..], &b"789abc"[..]].map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(c)))),
        );
        let req = Request::new(http_body_util::StreamBody::new(frames));
        let response = respond(&echo, &limits, req).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn body_that_never_arrives_gets_408() {
        let limits = Limits { request_timeout: Duration::from_millis(50), ..Limits::default() };
        let stalled = futures::stream::pending::<Result<hyper::body::Frame<Bytes>, Infallible>>();
        let req = Request::new(http_body_util::StreamBody::new(stalled));
        let response = respond(&echo, &limits, req).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    }

    /// Wraps `handler` so each call is reported on the returned channel as it starts.
    fn reporting<H: Handler>(handler: H) -> (impl Handler, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let handler = Arc::new(handler);
        let wrapped = move |req: Request<Bytes>| {
            let _ = tx.send(());
            let handler = handler.clone();
            async move { handler.call(req).await }
        };
        (wrapped, rx)
    }

    #[tokio::test]
    async fn shutdown_drains_in_flight_request_and_refuses_new_clients() {
        let slow = |req: Request<Bytes>| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            echo(req).await
        };
        let (slow, mut started) = reporting(slow);
        let server = start(slow, Limits::default()).await;
        let mut client = h1_client(server.connect(ALPN_HTTP11).await).await;
        let in_flight = tokio::spawn(client.send_request(post("/slow", "x")));
        tokio::time::timeout(WAIT, started.recv()).await.unwrap();

        let addr = server.addr;
        server.stop().await;

        let response = in_flight.await.unwrap().unwrap();
        assert_eq!(read(response).await, (StatusCode::OK, "HTTP/1.1 /slow 1".into()));
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn drain_timeout_bounds_shutdown_when_a_request_hangs() {
        let (hang, mut started) = reporting(|_req: Request<Bytes>| std::future::pending());
        let limits = Limits { drain_timeout: Duration::from_millis(100), ..Limits::default() };
        let server = start(hang, limits).await;
        let mut client = h1_client(server.connect(ALPN_HTTP11).await).await;
        let in_flight = tokio::spawn(client.send_request(post("/hang", "")));
        tokio::time::timeout(WAIT, started.recv()).await.unwrap();
        server.stop().await;
        assert!(in_flight.await.unwrap().is_err(), "hung request is cut off");
    }

    #[tokio::test]
    async fn failed_handshake_does_not_stop_the_server() {
        let server = start(echo, Limits::default()).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf).await;
        let mut client = h1_client(server.connect(ALPN_HTTP11).await).await;
        let response = client.send_request(post("/ok", "")).await.unwrap();
        assert_eq!(read(response).await.0, StatusCode::OK);
        server.stop().await;
    }

    type Sender2 = hyper::client::conn::http2::SendRequest<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

    /// An HTTP/2 client on `io`, and the connection task: it ends when the server closes.
    async fn h2_client<T>(io: T) -> (Sender2, JoinHandle<()>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
        (
            sender,
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    }

    /// Sends `len` bytes as one request over HTTP/2 as curl does: the whole declared body,
    /// whatever the server answers meanwhile. Returns the status and whether the upload
    /// completed or the server reset the stream (curl then reports no status at all).
    async fn h2_upload(server: &TestServer, len: usize, declare: bool) -> (StatusCode, Result<(), String>) {
        let (client, conn) = h2::client::handshake(server.connect(ALPN_H2).await).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let mut req = Request::post("https://localhost/mutate");
        if declare {
            req = req.header(header::CONTENT_LENGTH, len);
        }
        let (response, mut body) = client.send_request(req.body(()).unwrap(), false).unwrap();
        let upload = tokio::spawn(async move {
            let mut left = len;
            while left > 0 {
                body.reserve_capacity(left.min(64 * 1024));
                let Some(granted) = std::future::poll_fn(|cx| body.poll_capacity(cx)).await else {
                    return Err("the server closed the stream".to_string());
                };
                let n = granted.map_err(|e| e.to_string())?.min(left);
                left -= n;
                body.send_data(Bytes::from(vec![b'x'; n]), left == 0).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        let status = tokio::time::timeout(WAIT, response).await.unwrap().expect("a response").status();
        let uploaded = tokio::time::timeout(WAIT, upload).await.unwrap().unwrap();
        (status, uploaded)
    }

    #[tokio::test]
    async fn oversized_http2_body_gets_413_not_a_reset() {
        let server = start(echo, Limits::default()).await;
        let max = Limits::default().max_body_bytes;
        for declare in [true, false] {
            let (status, uploaded) = h2_upload(&server, 2 * max, declare).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "declared length: {declare}");
            assert!(uploaded.is_ok(), "declared length {declare}: stream reset during the upload: {uploaded:?}");
        }
        server.stop().await;
    }

    /// Time from now until `closed` finishes, failing beyond `bound`.
    async fn closed_within<F: Future>(closed: F, bound: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        tokio::time::timeout(bound, closed).await.unwrap_or_else(|_| panic!("connection still open after {bound:?}"));
        start.elapsed()
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let idle = Duration::from_millis(500);
        let slack = Duration::from_secs(2);
        let server = start(echo, Limits { idle_timeout: idle, ..Limits::default() }).await;

        // HTTP/2 after one request: the server closes it (GOAWAY), no ping keeps it open.
        let (mut client, conn) = h2_client(server.connect(ALPN_H2).await).await;
        let small = Full::new(Bytes::from_static(b"x")).boxed();
        let response = client.send_request(Request::post("https://localhost/a").body(small).unwrap()).await.unwrap();
        assert_eq!(read(response).await.0, StatusCode::OK);
        let took = closed_within(conn, idle + slack).await;
        assert!(took >= idle / 2, "closed after {took:?}, before the idle timeout {idle:?}");

        // HTTP/2 that never sends a request.
        let (_client, conn) = h2_client(server.connect(ALPN_H2).await).await;
        closed_within(conn, idle + slack).await;

        // HTTP/1.1 kept alive after a response.
        let mut tls = server.connect(ALPN_HTTP11).await;
        tokio::io::AsyncWriteExt::write_all(
            &mut tls,
            b"POST /b HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let took = closed_within(tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut buf), idle + slack).await;
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "{buf:?}");
        assert!(took >= idle / 2, "closed after {took:?}, before the idle timeout {idle:?}");
        server.stop().await;
    }

    /// A TCP connection to `server` from the loopback address `source` (127.0.0.0/8 is all local).
    async fn tcp_from(server: SocketAddr, source: [u8; 4]) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(server).await.unwrap()
    }

    async fn tls_from(server: &TestServer, source: [u8; 4]) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = tcp_from(server.addr, source).await;
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(server.cert.default_client(&[ALPN_HTTP11])).connect(name, tcp).await
    }

    async fn served_from(server: &TestServer, source: [u8; 4]) -> bool {
        let Ok(tls) = tls_from(server, source).await else { return false };
        let mut client = h1_client(tls).await;
        matches!(client.send_request(post("/ok", "")).await, Ok(r) if r.status() == StatusCode::OK)
    }

    #[tokio::test]
    async fn connections_over_the_per_peer_or_total_cap_are_closed_at_once_while_others_are_served() {
        let limits = Limits { max_connections: 3, max_connections_per_peer: 2, ..Limits::default() };
        let server = start(echo, limits).await;
        let (a, b, c) = ([127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]);
        let held_a = [tls_from(&server, a).await.unwrap(), tls_from(&server, a).await.unwrap()];
        // A's third connection is closed before any handshake, at once (not queued in the backlog).
        let refused = tokio::time::timeout(Duration::from_secs(2), tls_from(&server, a)).await;
        assert!(matches!(refused, Ok(Err(_))), "third connection of one peer: {refused:?}");
        // Another peer is served; with it the total cap is reached, so a third peer is refused.
        let held_b = tls_from(&server, b).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(2), tls_from(&server, c)).await;
        assert!(matches!(refused, Ok(Err(_))), "connection over the total cap: {refused:?}");
        drop(held_b);
        // Slots come back when connections close (the server notices the close asynchronously).
        let deadline = tokio::time::Instant::now() + WAIT;
        while !served_from(&server, b).await {
            assert!(tokio::time::Instant::now() < deadline, "peer B not served after its connection closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held_a);
        server.stop().await;
    }

    #[test]
    fn zero_limits_are_rejected_at_start() {
        let limits = Limits { max_connections: 0, ..Limits::default() };
        assert!(limits.validate().is_err());
        let limits = Limits { request_timeout: Duration::ZERO, ..Limits::default() };
        assert!(limits.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }

    #[tokio::test]
    async fn plain_health_endpoints_answer() {
        let ready = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let flag = ready.clone();
        let task = tokio::spawn(serve_health(
            listener,
            move || flag.load(Ordering::Relaxed),
            || "m 1\n".to_string(),
            shutdown.clone(),
        ));

        let mut client = h1_client(TcpStream::connect(addr).await.unwrap()).await;
        let mut get = async |path: &str| {
            let req = Request::get(path).header(header::HOST, "localhost").body(Full::new(Bytes::new())).unwrap();
            read(client.send_request(req).await.unwrap()).await.0
        };
        assert_eq!(get("/livez").await, StatusCode::OK);
        assert_eq!(get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await, StatusCode::OK);
        assert_eq!(get("/metrics").await, StatusCode::OK);
        assert_eq!(get("/other").await, StatusCode::NOT_FOUND);

        shutdown.cancel();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    }
}

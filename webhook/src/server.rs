//! A generic HTTPS server that knows nothing of admission, and a tiny plain-HTTP health
//! server. Handlers see a fully read, size-limited body; every stage of a connection
//! (handshake, headers, body, lifetime, drain) is bounded in time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::tls::ALPN_H2;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// HTTP/2 ping interval: detects peers that vanished without closing the connection.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// A refused body is still read (and discarded) up to this many bytes before the 413 is
/// sent: an HTTP/2 client that uploads the whole body before it reads the answer (curl)
/// otherwise sees the stream reset (RST_STREAM after an early answer) and no status. Costs
/// bandwidth and at most `request_timeout`, no memory; a larger declared body is cut at once.
const MAX_DRAIN_BYTES: u64 = 4 * 1024 * 1024;

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

/// Default of [`Limits::max_connections`] (flag `--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default of [`Limits::max_connections_per_peer`] (flag `--max-connections-per-peer`): with
/// 8 streams each, 64 concurrent reviews per API server replica.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 8;

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
    /// Request bodies read or handled at once, over all connections: bounds their memory
    /// (this × `max_body_bytes`) whatever the number of peers. A request waits for a turn
    /// (at most `request_timeout`, then 503).
    pub max_bodies_in_flight: usize,
    /// Open connections overall; a connection over it is closed at once (not left in the
    /// listen backlog, where the API server's connections would queue behind a flood).
    pub max_connections: usize,
    /// Open connections from one IP address; over it, closed at once. Keeps one pod from
    /// taking every slot while the API server (another address) is still served.
    pub max_connections_per_peer: usize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY;
    /// pings alone do not keep it open), so idle clients do not hold slots.
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
            // 32 MiB of the chart's 128 MiB limit; far more than the API server sends at once.
            max_bodies_in_flight: 32,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            idle_timeout: Duration::from_secs(30),
            max_streams_per_connection: 8,
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
            ("idle_timeout", self.idle_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        if let Some((name, _)) = zero_duration {
            return Err(ServerError::InvalidLimits(format!("{name} must be > 0")));
        }
        if self.max_connections == 0
            || self.max_connections_per_peer == 0
            || self.max_streams_per_connection == 0
            || self.max_bodies_in_flight == 0
        {
            return Err(ServerError::InvalidLimits(
                "max_connections, max_connections_per_peer, max_streams_per_connection and max_bodies_in_flight must be ≥ 1"
                    .into(),
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
    let bodies = Semaphore::new(limits.max_bodies_in_flight);
    let server = Arc::new(Server { protocols: Protocols::new(&limits), handler, limits, bodies, shutdown });
    let slots = Slots::new(server.limits.max_connections, server.limits.max_connections_per_peer);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = server.shutdown.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done),
            accepted = listener.accept() => {
                match accepted {
                    Ok((tcp, peer)) => match slots.try_acquire(peer.ip()) {
                        Ok(slot) => {
                            conns.spawn(connection(tcp, peer, tls.clone(), server.clone(), slot));
                        }
                        // Dropping the socket closes it before any TLS work. debug, not
                        // warn: a flood would otherwise flood the log too.
                        Err(full) => debug!(%peer, %full, "connection refused"),
                    },
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
    /// Turns for [`Limits::max_bodies_in_flight`].
    bodies: Semaphore,
    shutdown: CancellationToken,
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            warn!(%error, "connection task panicked");
        }
    }
}

async fn connection<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    server: Arc<Server<H>>,
    _slot: Slot,
) {
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
    let (in_flight, mut watch_in_flight) = watch::channel(0usize);
    let service = service_fn(move |req| {
        let server = service_server.clone();
        let _busy = Busy::start(&in_flight);
        async move {
            let _busy = _busy;
            let response = respond(&server.handler, &server.limits, &server.bodies, req).await;
            Ok::<_, Infallible>(response.map(Full::new))
        }
    });
    let conn = protocol.serve_connection(io, service);
    tokio::pin!(conn);
    let wind_down = async {
        tokio::select! {
            _ = server.shutdown.cancelled() => {}
            _ = tokio::time::sleep(server.limits.max_connection_age) => {}
            _ = idle(&mut watch_in_flight, server.limits.idle_timeout) => debug!(%peer, "closing an idle connection"),
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

/// Counts a request as in flight on its connection while alive.
struct Busy(watch::Sender<usize>);

impl Busy {
    fn start(in_flight: &watch::Sender<usize>) -> Self {
        in_flight.send_modify(|n| *n += 1);
        Self(in_flight.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Completes once no request has been in flight for `timeout`; every start or end of a
/// request restarts the clock.
async fn idle(in_flight: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        if *in_flight.borrow_and_update() > 0 {
            if in_flight.changed().await.is_err() {
                return std::future::pending().await;
            }
        } else if tokio::time::timeout(timeout, in_flight.changed()).await.is_err() {
            return;
        }
    }
}

/// Open connections overall and per peer address; a [`Slot`] is held for a connection's life.
struct Slots {
    max_total: usize,
    max_per_peer: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SlotsFull {
    #[error("{0} connections open, the most allowed")]
    Total(usize),
    #[error("{0} connections open from this address, the most allowed per peer")]
    Peer(usize),
}

impl Slots {
    fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_peer, open: Mutex::default() })
    }

    fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, SlotsFull> {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d: one peer either way.
        let peer = peer.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(SlotsFull::Total(open.total));
        }
        let mine = open.per_peer.entry(peer).or_default();
        if *mine >= self.max_per_peer {
            return Err(SlotsFull::Peer(*mine));
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot { slots: self.clone(), peer })
    }
}

/// One open connection's place in [`Slots`], given back on drop.
struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Read the body within the limits, then hand the request to the handler; one of `bodies`'
/// turns is held throughout (the body lives until the handler is done with it).
async fn respond<H, B>(handler: &H, limits: &Limits, bodies: &Semaphore, req: Request<B>) -> Response<Bytes>
where
    H: Handler,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(Ok(_turn)) = tokio::time::timeout(limits.request_timeout, bodies.acquire()).await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight; retry");
    };
    let (parts, body) = req.into_parts();
    let max = limits.max_body_bytes;
    let mut body = std::pin::pin!(body);
    let read = tokio::time::timeout(limits.request_timeout, read_limited(body.as_mut(), max));
    let body = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::TooLarge)) => {
            // Read the rest (bounded) so the client sees the 413 and not a reset.
            let _ = tokio::time::timeout(limits.request_timeout, drain(body.as_mut())).await;
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {max} bytes"));
        }
        Ok(Err(ReadError::Failed(error))) => {
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

enum ReadError {
    TooLarge,
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// The body's data, or `TooLarge` as soon as it declares or sends more than `max` bytes
/// (nothing beyond `max` is kept).
async fn read_limited<B>(mut body: std::pin::Pin<&mut B>, max: usize) -> Result<Bytes, ReadError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > max as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut data = Vec::new();
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        if let Ok(mut chunk) = frame.into_data() {
            if data.len() + chunk.remaining() > max {
                return Err(ReadError::TooLarge);
            }
            while chunk.has_remaining() {
                let piece = chunk.chunk();
                let n = piece.len();
                data.extend_from_slice(piece);
                chunk.advance(n);
            }
        }
    }
    Ok(data.into())
}

/// Reads and discards the rest of a refused body, unless it is (or turns out) larger than
/// [`MAX_DRAIN_BYTES`].
async fn drain<B: Body>(mut body: std::pin::Pin<&mut B>) {
    if body.size_hint().lower() > MAX_DRAIN_BYTES {
        return;
    }
    let mut drained = 0u64;
    while let Some(Ok(frame)) = body.as_mut().frame().await {
        if let Ok(chunk) = frame.into_data() {
            drained += chunk.remaining() as u64;
            if drained > MAX_DRAIN_BYTES {
                return;
            }
        }
    }
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
        let config = Arc::new(server_config(TlsProfile::Bsi, cert.resolver(), None).unwrap());
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
        let response = respond(&echo, &limits, &Semaphore::new(1), req).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_request_waits_for_a_turn_among_the_bodies_in_flight_and_gets_503_without_one() {
        let limits = Limits { request_timeout: Duration::from_millis(200), ..Limits::default() };
        let bodies = Semaphore::new(1);
        let request = || Request::new(Full::new(Bytes::from_static(b"{}")));
        let taken = bodies.acquire().await.unwrap();
        let response = respond(&echo, &limits, &bodies, request()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A turn freed while the request waits is taken.
        let (response, ()) = tokio::join!(respond(&echo, &limits, &bodies, request()), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(taken);
        });
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn body_that_never_arrives_gets_408() {
        let limits = Limits { request_timeout: Duration::from_millis(50), ..Limits::default() };
        let stalled = futures::stream::pending::<Result<hyper::body::Frame<Bytes>, Infallible>>();
        let req = Request::new(http_body_util::StreamBody::new(stalled));
        let response = respond(&echo, &limits, &Semaphore::new(1), req).await;
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

    #[tokio::test]
    async fn a_client_that_never_completes_the_tls_handshake_is_closed_after_the_handshake_timeout() {
        let handshake = Duration::from_millis(300);
        let server = start(echo, Limits { handshake_timeout: handshake, ..Limits::default() }).await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = Vec::new();
        let took = closed_within(
            tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut buf),
            handshake + Duration::from_secs(2),
        )
        .await;
        assert!(took >= handshake / 2, "closed after {took:?}, before the handshake timeout {handshake:?}");
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
    fn connection_slots_cap_each_peer_and_the_total_and_come_back_on_drop() {
        let slots = Slots::new(3, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = slots.try_acquire(a).unwrap();
        // The same IPv4 peer seen through a dual-stack listener counts as the same peer.
        let _a2 = slots.try_acquire("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(slots.try_acquire(a).err(), Some(SlotsFull::Peer(2)));
        let b1 = slots.try_acquire(b).unwrap();
        assert_eq!(slots.try_acquire(c).err(), Some(SlotsFull::Total(3)));
        drop(b1);
        let _c1 = slots.try_acquire(c).unwrap();
        drop(a1);
        let _a3 = slots.try_acquire(a).unwrap();
        let open = slots.open.lock().unwrap();
        assert_eq!((open.total, open.per_peer.len()), (3, 2), "b's entry is gone with its last connection");
    }

    #[tokio::test]
    async fn http2_clients_are_told_few_concurrent_streams() {
        let server = start(echo, Limits::default()).await;
        let (client, mut conn) = h2::client::handshake(server.connect(ALPN_H2).await).await.unwrap();
        // The server's SETTINGS have arrived once a first exchange is done.
        let exchange = async {
            let mut client = client.ready().await.unwrap();
            let (response, _) =
                client.send_request(Request::get("https://localhost/").body(()).unwrap(), true).unwrap();
            response.await.unwrap()
        };
        tokio::select! {
            _ = tokio::time::timeout(WAIT, exchange) => {}
            closed = &mut conn => panic!("connection closed: {closed:?}"),
        }
        assert_eq!(conn.max_concurrent_send_streams(), 8);
        drop(conn);
        server.stop().await;
    }

    #[test]
    fn zero_limits_are_rejected_at_start() {
        let limits = Limits { max_connections: 0, ..Limits::default() };
        assert!(limits.validate().is_err());
        let limits = Limits { max_bodies_in_flight: 0, ..Limits::default() };
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

//! A loopback TCP proxy that can be cut, slowed or black-holed in one direction: the
//! network between one elector and the API server, under the test's control. TLS passes
//! through untouched (the API server's certificate names 127.0.0.1). [`via_proxies`] puts
//! a pod's sidecar behind the proxy of its ordinal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close every connection and refuse new ones (a partition the client notices).
    Cut,
    /// Drop client→server bytes silently (requests vanish; the client waits).
    BlackholeUp,
    /// Drop server→client bytes silently (responses vanish; writes still land).
    BlackholeDown,
    /// Delay every chunk by this much in both directions.
    Slow(Duration),
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    upstream: watch::Sender<Option<String>>,
    /// Cancelled (and replaced) on `Cut` to drop established connections.
    connections: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`127.0.0.1:port`).
    pub async fn start(upstream: String) -> anyhow::Result<Proxy> {
        let proxy = Proxy::start_unbound().await?;
        proxy.set_upstream(upstream);
        Ok(proxy)
    }

    /// Listens before the upstream is known (connections are refused until
    /// [`Proxy::set_upstream`]): clients can be configured with the port first.
    pub async fn start_unbound() -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (upstream, upstream_rx) = watch::channel(None);
        let connections = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream_rx, mode_rx, connections.clone(), stop.clone()));
        Ok(Proxy { port, mode, upstream, connections, stop })
    }

    pub fn set_upstream(&self, upstream: String) {
        self.upstream.send_replace(Some(upstream));
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        if mode == Mode::Cut {
            let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            conns.cancel();
            *conns = CancellationToken::new();
        }
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

/// The runner environment entry that tells the [`via_proxies`] wrapper which proxy a pod's
/// process uses (the test kubelet expands `{ordinal}`).
pub const ORDINAL_ENV: (&str, &str) = ("PROXY_ORDINAL", "{ordinal}");

/// Writes `<dir>/via-proxy.sh`: a wrapper for the test kubelet's runner that points the
/// process of pod ordinal `i` at `proxies[i]` — it rewrites the `server:` of the kubeconfig
/// the kubelet wrote (other ordinals talk to the API server directly) — then execs
/// `program` with the container's args. Works for any program reading `KUBECONFIG`.
pub fn via_proxies(dir: &Path, proxies: &[Proxy], program: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let cases: String = proxies.iter().enumerate().map(|(i, p)| format!("  {i}) port={} ;;\n", p.port)).collect();
    let var = ORDINAL_ENV.0;
    let script = format!(
        "#!/bin/sh\nset -e\ncase \"${var}\" in\n{cases}  *) port= ;;\nesac\n\
         if [ -n \"$port\" ]; then\n  sed \"s#server: .*#server: https://127.0.0.1:$port#\" \"$KUBECONFIG\" > \"$KUBECONFIG.proxied\"\n\
           export KUBECONFIG=\"$KUBECONFIG.proxied\"\nfi\nexec '{}' \"$@\"\n",
        program.display()
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("via-proxy.sh");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: watch::Receiver<Option<String>>,
    mode: watch::Receiver<Mode>,
    connections: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        let target = upstream.borrow().clone();
        let Some(upstream) = target.filter(|_| *mode.borrow() != Mode::Cut) else {
            drop(client); // refused: closed at once
            continue;
        };
        let conn = connections.lock().unwrap_or_else(|p| p.into_inner()).child_token();
        let mode = mode.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = conn.cancelled() => {}
                _ = pump(client_read, server_write, mode.clone(), Mode::BlackholeUp) => {}
                _ = pump(server_read, client_write, mode, Mode::BlackholeDown) => {}
            }
        });
    }
}

/// Copies `from` → `to`, dropping bytes while the mode is `drop_in`, delaying them in `Slow`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    drop_in: Mode,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *mode.borrow();
        match current {
            m if m == drop_in => continue,
            Mode::Slow(delay) => tokio::time::sleep(delay).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, s.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(buf.to_vec())
    }

    #[tokio::test]
    async fn passes_cuts_and_blackholes() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut s, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));

        proxy.set(Mode::BlackholeUp);
        assert_eq!(round_trip(&mut s, Duration::from_millis(200)).await, None, "requests vanish");
        proxy.set(Mode::Pass);

        proxy.set(Mode::Cut);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "an established connection is closed");
        let mut fresh = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut fresh, Duration::from_millis(500)).await, None, "new connections are refused");

        proxy.set(Mode::Pass);
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut again, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));
    }
}

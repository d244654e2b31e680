//! An emulated pod network for the bed, opt-in (`BedOptions::pod_network`), so that the API
//! server can reach pods as a real one does: admission webhooks behind a Service (the Helm
//! chart's), and `kubectl get --raw /api/v1/namespaces/N/pods/P:PORT/proxy/...`.
//!
//! How: the bed has no kube-proxy and no routes, and the API refuses loopback addresses as
//! endpoints, so pods keep their TEST-NET-1 IPs (`192.0.2.N`) in the API. The API server is
//! started with `--enable-aggregator-routing=true` (it resolves a webhook's Service to a ready
//! endpoint from the EndpointSlices, i.e. `192.0.2.N:<targetPort>`) and an
//! EgressSelectorConfiguration that sends all `cluster` traffic (service webhooks, pod proxy)
//! through an HTTP CONNECT proxy on a Unix socket, as Konnectivity does on clusters whose
//! control plane cannot route to pods. This proxy maps `192.0.2.N:PORT` to
//! `127.B.C.N:PORT`, the pod's own loopback address (all of 127/8 is local on Linux; B.C is
//! random per bed so beds do not collide). The test kubelet gives each pod's processes that
//! address instead of `0.0.0.0` (its emulated network namespace), so two pods can listen on
//! the same port. Nothing else is ever connected to: other targets get `403`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The pod IP range the test kubelet hands out (TEST-NET-1).
pub const POD_NET: [u8; 3] = [192, 0, 2];
/// Longest CONNECT request head accepted.
const MAX_HEAD: usize = 8 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The running proxy; dropping it stops accepting.
pub struct PodNetwork {
    /// `127.B.C.0/24`: pod `192.0.2.N` listens on `127.B.C.N`.
    pub prefix: [u8; 2],
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl PodNetwork {
    /// Listens on `socket` (must run inside a tokio runtime).
    pub fn start(socket: &Path) -> anyhow::Result<PodNetwork> {
        let mut random = [0u8; 2];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        }
        // 127.0.0.0/24 stays untouched (127.0.0.1 is everyone's); avoid .0 and .255 octets.
        let prefix = [random[0] % 254 + 1, random[1] % 254 + 1];
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(async move {
                            if let Err(e) = tunnel(conn, prefix).await {
                                tracing::debug!(error = %e, "pod network: CONNECT failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pod network: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(PodNetwork { prefix, socket: socket.to_path_buf(), task })
    }

    /// The EgressSelectorConfiguration that routes the API server's `cluster` traffic here.
    pub fn egress_config(&self) -> String {
        format!(
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n\
             - name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: {}\n",
            self.socket.display()
        )
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The local address of pod IP `pod_ip` (`192.0.2.N` -> `127.B.C.N`); `None` for any other.
pub fn local_ip(prefix: [u8; 2], pod_ip: &str) -> Option<Ipv4Addr> {
    let ip: Ipv4Addr = pod_ip.parse().ok()?;
    let [a, b, c, n] = ip.octets();
    ([a, b, c] == POD_NET && n != 0 && n != 255).then(|| Ipv4Addr::new(127, prefix[0], prefix[1], n))
}

/// Target `host:port` of a CONNECT request head.
fn connect_target(head: &str) -> Option<(&str, u16)> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "CONNECT" {
        return None;
    }
    let (host, port) = parts.next()?.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

async fn tunnel(mut conn: UnixStream, prefix: [u8; 2]) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(head.len() < MAX_HEAD, "CONNECT head too long");
        let n = tokio::time::timeout(CONNECT_TIMEOUT, conn.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed before the CONNECT head ended");
        head.extend_from_slice(&buf[..n]);
    }
    // The client waits for our answer before it speaks TLS: nothing follows the head.
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = connect_target(&head).and_then(|(host, port)| Some((local_ip(prefix, host)?, port)));
    let Some((ip, port)) = target else {
        conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await?;
        anyhow::bail!("refused: {}", head.lines().next().unwrap_or_default());
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await?;
            anyhow::bail!("{ip}:{port}: {e}");
        }
        Err(_) => {
            conn.write_all(b"HTTP/1.1 504 Gateway Timeout\r\n\r\n").await?;
            anyhow::bail!("{ip}:{port}: connect timed out");
        }
    };
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    let mut upstream = upstream;
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_net_pod_ips_map_to_the_pods_loopback_address() {
        assert_eq!(local_ip([7, 9], "192.0.2.4"), Some(Ipv4Addr::new(127, 7, 9, 4)));
        assert_eq!(local_ip([7, 9], "192.0.3.4"), None);
        assert_eq!(local_ip([7, 9], "198.19.0.1"), None); // the bed's kubernetes Service IP
        assert_eq!(local_ip([7, 9], "192.0.2.0"), None);
        assert_eq!(local_ip([7, 9], "kubernetes.default.svc"), None);
    }

    #[test]
    fn connect_heads_are_parsed_strictly() {
        assert_eq!(connect_target("CONNECT 192.0.2.3:8443 HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("192.0.2.3", 8443)));
        assert_eq!(connect_target("GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(connect_target("CONNECT 192.0.2.3 HTTP/1.1\r\n\r\n"), None);
    }
}

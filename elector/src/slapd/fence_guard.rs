//! The fence guard: the watchdog in a container of its own (`ldap-elector guard`, injected as
//! the native sidecar [`contract::GUARD_CONTAINER`]), so that it outlives the elector's
//! container. A runtime that kills the elector's container (kill -9 of its PID 1, an OOM
//! kill, an abort) kills every process in it, a child watchdog included; the guard is in
//! another container and sees the elector's connection close instead.
//!
//! The guard listens on a Unix socket in a volume only the two containers share and speaks
//! the watchdog's line protocol (`arm <ms>`, `disarm`; see [`watchdog`](super::watchdog)).
//! It fences slapd over ldapi, retrying until the fence is read back, when
//! - the armed deadline passes (the elector is paused, hung or starved);
//! - the connection in charge closes (the elector died in any way: the kernel closes its
//!   socket), or the guard is told to stop while armed;
//! - it starts (fail closed): until an elector arms it, e.g. after the guard restarted
//!   under a leader, whose own fence it cannot vouch for;
//! - slapd (re)starts while no elector is connected (its container dead or crash-looping):
//!   slapd comes back with whatever `olcReadOnly` it had on disk.
//!
//! One connection is in charge: a new one replaces (and closes) the old one. The guard
//! never writes to the connection: the elector learns of the guard's death by reading EOF.
//! It holds no API credentials and needs none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::clock::Moment;
use crate::slapd::fence::Fencing;
use crate::slapd::watchdog::{encode, parse, Command, Warden};
use ldap_elector_contract::ROLE_STANDBY;

/// How often the elector's end tries to reach a guard that is not (yet) listening.
const RECONNECT: Duration = Duration::from_millis(200);
/// A line to the guard that does not go out within this is a lost guard.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot listen on the guard socket {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
}

/// The guard's main loop, until `stop` (SIGTERM): fences slapd on the occasions listed in
/// the module docs. On `stop` while armed it fences once more before returning.
pub async fn serve(fence: impl Fencing, path: &Path, stop: CancellationToken) -> Result<(), GuardError> {
    // The socket's volume outlives a guard restart: a stale socket file would block bind().
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|source| GuardError::Listen { path: path.to_path_buf(), source })?;
    tracing::info!(socket = %path.display(), "fence guard listening; fencing slapd until an elector arms it");
    let mut warden = Warden::fail_closed();
    let mut conn: Option<tokio::io::Lines<BufReader<UnixStream>>> = None;
    let mut failures = 0u32;
    // slapd (re)starts from its on-disk config, possibly writable; without an elector in
    // charge nobody else fences it (a permit is kept, so no start is missed).
    let started = tokio::sync::Notify::new();
    let on_start = || started.notify_one();
    let watch = fence.watch_starts(&on_start);
    tokio::pin!(watch);
    loop {
        if warden.must_fence() {
            let fenced = fence.apply(ROLE_STANDBY, &|| true).await;
            warden.fenced(fenced);
            failures = if fenced { 0 } else { failures + 1 };
            match (fenced, failures) {
                (true, _) => tracing::info!("guard: slapd fence confirmed"),
                (false, 1) => {
                    tracing::warn!("guard: slapd did not confirm the fence (not up yet, or stalled); retrying")
                }
                (false, n) if n.is_multiple_of(50) => {
                    tracing::warn!(attempts = n, "guard: slapd still does not confirm the fence")
                }
                _ => {}
            }
        }
        let nap = warden.nap(Moment::now());
        tokio::select! {
            _ = stop.cancelled() => {
                if warden.is_armed() {
                    tracing::warn!("guard: stopping while armed; fencing slapd first");
                    fence.apply(ROLE_STANDBY, &|| true).await;
                }
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if conn.is_some() {
                        tracing::warn!("guard: a new elector connection replaces the one in charge");
                    } else {
                        tracing::info!("guard: elector connected");
                    }
                    conn = Some(BufReader::new(stream).lines());
                }
                Err(e) => tracing::warn!(error = %e, "guard: accept failed"),
            },
            line = next_line(&mut conn) => match line {
                Ok(Some(line)) => match parse(&line) {
                    Some(command) => {
                        warden.command(command);
                        // The deadline just moved a renew deadline ahead: time to ready the
                        // fence, so that at the deadline (or a thaw) it is one request.
                        if warden.is_armed() {
                            fence.prepare().await;
                        }
                    }
                    None => tracing::warn!(line, "guard: ignoring an unknown command"),
                },
                Ok(None) | Err(_) => {
                    conn = None;
                    if warden.lost() {
                        tracing::error!("guard: the elector's connection closed while armed; fencing slapd");
                    } else {
                        tracing::info!("guard: the elector's connection closed (not armed); keeping slapd fenced");
                    }
                }
            },
            () = &mut watch => {}
            _ = started.notified() => {
                if conn.is_none() {
                    warden.lost();
                    tracing::warn!("guard: slapd (re)started with no elector in charge; fencing it");
                }
            }
            _ = tokio::time::sleep(nap) => {
                if warden.tick(Moment::now()) {
                    tracing::error!("guard: the elector did not renew before its deadline; fencing slapd");
                }
            }
        }
    }
}

/// The next line of the connection in charge; pending forever without one.
async fn next_line(conn: &mut Option<tokio::io::Lines<BufReader<UnixStream>>>) -> std::io::Result<Option<String>> {
    match conn {
        Some(lines) => lines.next_line().await,
        None => std::future::pending().await,
    }
}

/// The elector's end: a connection to the guard, re-established whenever it is lost. Each
/// connection has a number; a lost or replaced connection means the guard may have
/// restarted (and fenced slapd at start) or may no longer fence on the elector's death.
pub struct Link {
    state: watch::Receiver<Option<u64>>,
    writer: Arc<Mutex<Option<Slot>>>,
    /// The connection the last `arm` went out on; `None` when disarmed.
    armed_on: Option<u64>,
    _stop: tokio_util::sync::DropGuard,
}

/// The connection in use: its number, its sending half, and a token that drops it (a send
/// failed: the connection task then reconnects).
struct Slot {
    id: u64,
    write: OwnedWriteHalf,
    broken: CancellationToken,
}

impl Link {
    /// Starts connecting to the guard at `path` (and reconnecting when lost).
    pub fn connect(path: PathBuf) -> Link {
        let (state_tx, state) = watch::channel(None);
        let writer = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        tokio::spawn(keep_connected(path, state_tx, writer.clone(), stop.clone()));
        Link { state, writer, armed_on: None, _stop: stop.drop_guard() }
    }

    /// Sends `command` on the current connection; a failed send drops it (the guard is
    /// then treated as lost until a new connection is made).
    pub async fn send(&mut self, command: Command) {
        let mut writer = self.writer.lock().await;
        // Connection numbers start at 1: an arm sent on none is never trusted.
        let sent_on = writer.as_ref().map_or(0, |slot| slot.id);
        self.armed_on = matches!(command, Command::Arm(_)).then_some(sent_on);
        let Some(slot) = writer.as_mut() else {
            tracing::error!("cannot reach the fence guard (not connected)");
            return;
        };
        let line = encode(command);
        let error = match tokio::time::timeout(SEND_TIMEOUT, slot.write.write_all(line.as_bytes())).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out (the guard may be stopped)".to_string(),
        };
        tracing::error!(error, "cannot feed the fence guard; dropping the connection");
        slot.broken.cancel();
        *writer = None;
        if self.armed_on.is_some() {
            self.armed_on = Some(0); // an arm that did not go out is never trusted
        }
    }

    /// Whether the guard would fence slapd on this elector's death now: connected, and if
    /// armed, still on the connection the arm went out on.
    pub fn trusted(&self) -> bool {
        let current = *self.state.borrow();
        match self.armed_on {
            Some(id) => current == Some(id),
            None => current.is_some(),
        }
    }

    /// Changes of the connection (to wake the election loop).
    pub fn changes(&self) -> watch::Receiver<Option<u64>> {
        self.state.clone()
    }

    /// Closes the connection (disarm first: the guard then fences once more, harmlessly,
    /// and stays for the next elector).
    pub async fn close(self) {
        if let Some(mut slot) = self.writer.lock().await.take() {
            let _ = slot.write.shutdown().await;
        }
    }
}

async fn keep_connected(
    path: PathBuf,
    state: watch::Sender<Option<u64>>,
    writer: Arc<Mutex<Option<Slot>>>,
    stop: CancellationToken,
) {
    let mut id = 0u64;
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::warn!(socket = %path.display(), error = %e, attempts = failures,
                        "cannot reach the fence guard; not eligible to lead until it answers");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECONNECT) => continue,
                }
            }
        };
        failures = 0;
        id += 1;
        let (mut read, write) = stream.into_split();
        let broken = stop.child_token();
        *writer.lock().await = Some(Slot { id, write, broken: broken.clone() });
        state.send_replace(Some(id));
        tracing::info!(connection = id, "connected to the fence guard");
        // The guard never writes: EOF (or an error) means it closed the connection, died,
        // or replaced it with a newer one.
        let mut buf = [0u8; 64];
        tokio::select! {
            _ = broken.cancelled() => {}
            _ = async { while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
        }
        let lost = !stop.is_cancelled();
        let mut w = writer.lock().await;
        if w.as_ref().is_some_and(|slot| slot.id == id) {
            *w = None;
        }
        drop(w);
        state.send_replace(None);
        if lost {
            tracing::error!(connection = id, "lost the fence guard");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts fences; slapd confirms every one.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl Fencing for Counting {
        async fn apply(&self, role: &'static str, _still: &(dyn Fn() -> bool + Sync)) -> bool {
            assert_eq!(role, ROLE_STANDBY, "the guard only ever fences");
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
        async fn verify(&self, _role: &'static str) -> Option<bool> {
            Some(true)
        }
        async fn repair(&self, _role: &'static str, _still: &(dyn Fn() -> bool + Sync)) -> bool {
            true
        }
    }

    impl Counting {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }

        /// Waits (up to 2 s) until more than `than` fences were set.
        async fn more_than(&self, than: usize) -> Result<usize, String> {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < deadline {
                if self.count() > than {
                    return Ok(self.count());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(format!("still {} fences after 2 s", self.count()))
        }
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A guard serving `fence` on a socket in a fresh directory named after `test`: the
    /// directory, the socket, the guard's stop and its task.
    fn spawn_guard<F: Fencing + Clone>(
        test: &str,
        fence: &F,
    ) -> (PathBuf, PathBuf, CancellationToken, tokio::task::JoinHandle<Result<(), GuardError>>) {
        let dir = std::env::temp_dir().join(format!("{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(ldap_elector_contract::GUARD_SOCKET_NAME);
        let stop = CancellationToken::new();
        let guard = tokio::spawn({
            let (fence, path, stop) = (fence.clone(), path.clone(), stop.clone());
            async move { serve(fence, &path, stop).await }
        });
        (dir, path, stop, guard)
    }

    /// Counts fences and preparations, and reports a slapd start each time `starts` is notified.
    #[derive(Clone, Default)]
    struct Recording {
        fences: Counting,
        prepared: Counting,
        starts: Arc<tokio::sync::Notify>,
    }

    impl Fencing for Recording {
        async fn apply(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.fences.apply(role, still).await
        }
        async fn verify(&self, role: &'static str) -> Option<bool> {
            self.fences.verify(role).await
        }
        async fn repair(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.fences.repair(role, still).await
        }
        async fn prepare(&self) {
            self.prepared.0.fetch_add(1, Ordering::SeqCst);
        }
        async fn watch_starts(&self, started: &(dyn Fn() + Sync)) {
            loop {
                self.starts.notified().await;
                started();
            }
        }
    }

    /// A slapd that restarts (writable, from its on-disk config) while no elector is
    /// connected — the elector's container is dead or in CrashLoopBackOff — is fenced again
    /// by the guard (before: its fence counted "not running" as confirmed and it never
    /// looked again). With an elector connected, the elector's keeper handles restarts.
    #[tokio::test]
    async fn without_an_elector_the_guard_fences_every_slapd_start() {
        let fence = Recording::default();
        let (dir, path, stop, guard) = spawn_guard("guard-restart-test", &fence);
        let at_start = fence.fences.more_than(0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        fence.starts.notify_one();
        fence.fences.more_than(at_start).await.unwrap();

        // An elector in charge (standby, disarmed): a start is its keeper's business.
        let link = Link::connect(path.clone());
        until("the connection", || link.trusted()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let connected = fence.fences.count();
        fence.starts.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fence.fences.count(), connected, "no fence from the guard while an elector is in charge");

        stop.cancel();
        guard.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An armed guard readies its fence (a frozen pod's thaw is a race its fence must win,
    /// docs/design.md); a guard nobody armed has no deadline to ready it for.
    #[tokio::test]
    async fn the_guard_prepares_its_fence_when_armed_and_not_before() {
        let fence = Recording::default();
        let (dir, path, stop, guard) = spawn_guard("guard-prepare-test", &fence);
        let mut link = Link::connect(path.clone());
        until("the connection", || link.trusted()).await;
        link.send(Command::Disarm).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fence.prepared.count(), 0, "nothing to prepare while disarmed");
        link.send(Command::Arm(Moment::now() + Duration::from_secs(60))).await;
        fence.prepared.more_than(0).await.unwrap();

        stop.cancel();
        guard.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_guard_fences_at_start_on_a_closed_armed_connection_and_one_connection_is_in_charge() {
        let dir = std::env::temp_dir().join(format!("guard-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(ldap_elector_contract::GUARD_SOCKET_NAME);
        std::fs::write(&path, b"stale").unwrap(); // a socket left by an earlier guard
        let fence = Counting::default();
        let stop = CancellationToken::new();
        let guard = tokio::spawn({
            let (fence, path, stop) = (fence.clone(), path.clone(), stop.clone());
            async move { serve(fence, &path, stop).await }
        });

        // Fail closed: fenced before any elector said anything.
        fence.more_than(0).await.unwrap();
        let mut first = Link::connect(path.clone());
        until("the first connection", || first.trusted()).await;
        first.send(Command::Arm(Moment::now() + Duration::from_secs(60))).await;
        assert!(first.trusted());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let settled = fence.count();

        // The elector dies (its connection closes) while armed: fenced at once.
        drop(first);
        let after_death = fence.more_than(settled).await.unwrap();

        // A new connection replaces the one in charge; the replaced elector sees it lost.
        let mut second = Link::connect(path.clone());
        until("the second connection", || second.trusted()).await;
        second.send(Command::Arm(Moment::now() + Duration::from_secs(60))).await;
        let third = Link::connect(path.clone());
        until("the replaced connection to be lost", || !second.trusted()).await;
        drop(second); // or it reconnects and replaces the third in turn
        until("the third connection", || third.trusted()).await;
        // The replaced connection's close is not the elector's death: nothing more fenced
        // than the closes of the connection in charge.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fence.count(), after_death, "a replaced connection's close does not fence");

        // A passed deadline fences too.
        let mut third = third;
        third.send(Command::Arm(Moment::now() + Duration::from_millis(100))).await;
        fence.more_than(after_death).await.unwrap();

        stop.cancel();
        guard.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The watchdog: something outside the elector's process that the elector must keep
//! feeding. slapd keeps serving clients while the elector is paused, hung or starved; if
//! the leader's renew deadline passes without a new `arm`, or the elector disappears (its
//! end of the pipe or socket closes: crash, kill -9), the watchdog fences slapd itself.
//!
//! Two forms share the protocol and the [`Warden`] core:
//! - the fence guard ([`fence_guard`](super::fence_guard)), a container of its own that the
//!   elector reaches over a Unix socket: what the webhook injects, since it outlives the
//!   elector's container;
//! - a child process (`ldap-elector watchdog`) fed on its stdin, for an elector run without
//!   a guard (a bare process, e.g. the process bed's uninjected pairs). A runtime that kills
//!   the elector's container kills this child with it.
//!
//! Protocol, one line each: `arm <ms>` (fence at `<ms>` on the boot-time clock unless armed
//! again), `disarm` (the elector fenced itself; nothing to do).
//! Limit: a freezer on the watchdog too (e.g. `docker pause` of its container) stops it;
//! SIGSTOP of the elector, a hung loop, or an exited elector do not. Both keep their fence
//! ready while armed ([`Fencing::prepare`]), so that at a thaw it is one request.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use tokio::sync::watch;

use crate::clock::Moment;
use crate::slapd::fence::{Fence, Fencing};
use crate::slapd::fence_guard::Link;
use ldap_elector_contract::ROLE_STANDBY;

/// The longest the watchdog sleeps before looking at the boot-time clock again (a
/// tokio sleep does not count system suspend).
const RECHECK: Duration = Duration::from_millis(100);

/// What a line on stdin asks for (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Arm(Moment),
    Disarm,
}

pub fn parse(line: &str) -> Option<Command> {
    let mut words = line.split_whitespace();
    match (words.next()?, words.next(), words.next()) {
        ("arm", Some(ms), None) => Some(Command::Arm(Moment::ZERO + Duration::from_millis(ms.parse().ok()?))),
        ("disarm", None, None) => Some(Command::Disarm),
        _ => None,
    }
}

pub(crate) fn encode(command: Command) -> String {
    match command {
        Command::Arm(at) => format!("arm {}\n", at.since(Moment::ZERO).as_millis()),
        Command::Disarm => "disarm\n".to_string(),
    }
}

/// How often the watchdog retries a fence that slapd did not confirm (stalled or restarting).
const RETRY: Duration = Duration::from_millis(200);

/// When a watchdog must fence (pure): the armed deadline, and whether a fence is owed and
/// not yet confirmed. A fence it has to set is retried until slapd confirms it, or until
/// the elector arms or disarms again (it is in charge then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warden {
    deadline: Option<Moment>,
    must_fence: bool,
}

impl Warden {
    /// Nothing owed until the elector arms it (the child watchdog, which starts with it).
    pub fn idle() -> Self {
        Warden { deadline: None, must_fence: false }
    }

    /// Fences until an elector arms it (the guard: it may start under a writable slapd).
    pub fn fail_closed() -> Self {
        Warden { deadline: None, must_fence: true }
    }

    pub fn command(&mut self, command: Command) {
        (self.deadline, self.must_fence) = match command {
            Command::Arm(at) => (Some(at), false),
            Command::Disarm => (None, false),
        };
    }

    /// The elector is gone: fence in any case (for a standby it is a no-op). True if it
    /// was armed (a leader vanished).
    pub fn lost(&mut self) -> bool {
        self.must_fence = true;
        self.deadline.take().is_some()
    }

    /// True when the armed deadline has just passed (a fence is owed from now on).
    pub fn tick(&mut self, now: Moment) -> bool {
        let passed = self.deadline.is_some_and(|d| now >= d);
        if passed {
            (self.deadline, self.must_fence) = (None, true);
        }
        passed
    }

    pub fn must_fence(&self) -> bool {
        self.must_fence
    }

    pub fn is_armed(&self) -> bool {
        self.deadline.is_some()
    }

    /// The outcome of a fence attempt.
    pub fn fenced(&mut self, confirmed: bool) {
        if confirmed {
            self.must_fence = false;
        }
    }

    /// How long to sleep before looking again.
    pub fn nap(&self, now: Moment) -> Duration {
        if self.must_fence {
            RETRY
        } else {
            self.deadline.map_or(Duration::from_secs(3600), |d| d.since(now).min(RECHECK))
        }
    }
}

/// The child watchdog's main loop: returns once slapd is confirmed fenced after the pipe
/// closed.
pub async fn serve(fence: Fence) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut warden = Warden::idle();
    let mut gone = false;
    loop {
        if warden.must_fence() {
            warden.fenced(fence.apply(ROLE_STANDBY).await);
            if warden.must_fence() {
                tracing::warn!("watchdog: slapd did not confirm the fence; retrying");
            }
        }
        if gone && !warden.must_fence() {
            return;
        }
        tokio::select! {
            line = lines.next_line(), if !gone => match line {
                Ok(Some(line)) => match parse(&line) {
                    Some(command) => {
                        warden.command(command);
                        if warden.is_armed() {
                            fence.prepare().await; // as the guard does
                        }
                    }
                    None => tracing::warn!(line, "watchdog: ignoring an unknown command"),
                },
                Ok(None) | Err(_) => {
                    gone = true;
                    if warden.lost() {
                        tracing::warn!("watchdog: the elector is gone while leading; fencing slapd");
                    } else {
                        tracing::info!("watchdog: the elector exited as standby; keeping slapd fenced");
                    }
                }
            },
            _ = tokio::time::sleep(warden.nap(Moment::now())) => {
                if warden.tick(Moment::now()) {
                    tracing::error!("watchdog: the elector did not renew before its deadline; fencing slapd");
                }
            }
        }
    }
}

/// The elector's end: the fence guard's socket, or the child process and its pipe.
pub struct Watchdog(Transport);

enum Transport {
    Guard(Link),
    Child { child: tokio::process::Child, stdin: Option<tokio::process::ChildStdin> },
}

impl Watchdog {
    /// Connects to the fence guard listening at `socket` (reconnecting whenever lost).
    pub fn guard(socket: std::path::PathBuf) -> Watchdog {
        Watchdog(Transport::Guard(Link::connect(socket)))
    }

    /// Starts `program args… watchdog` (normally this very binary with its own flags).
    pub fn spawn(program: &std::path::Path, args: &[String]) -> std::io::Result<Watchdog> {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .arg("watchdog")
            .stdin(Stdio::piped())
            .kill_on_drop(false) // on our death it must outlive us long enough to fence
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Watchdog(Transport::Child { child, stdin }))
    }

    async fn send(&mut self, command: Command) {
        match &mut self.0 {
            Transport::Guard(link) => link.send(command).await,
            Transport::Child { stdin, .. } => {
                let Some(pipe) = stdin.as_mut() else { return };
                if let Err(e) = pipe.write_all(encode(command).as_bytes()).await {
                    tracing::error!(error = %e, "cannot feed the watchdog (it may have died)");
                    *stdin = None;
                }
            }
        }
    }

    /// Fence at `deadline` unless armed again before.
    pub async fn arm(&mut self, deadline: Moment) {
        self.send(Command::Arm(deadline)).await
    }

    pub async fn disarm(&mut self) {
        self.send(Command::Disarm).await
    }

    /// Whether the watchdog would fence slapd on this elector's death now. Always for the
    /// child (it is ours); for the guard: connected, and if armed, on the same connection
    /// (a lost or new connection may be a restarted guard, which fenced slapd at start).
    pub fn trusted(&self) -> bool {
        match &self.0 {
            Transport::Guard(link) => link.trusted(),
            Transport::Child { .. } => true,
        }
    }

    /// What wakes the election loop when [`Watchdog::trusted`] may have changed.
    pub fn changes(&self) -> Changes {
        match &self.0 {
            Transport::Guard(link) => {
                let mut rx = link.changes();
                rx.borrow_and_update(); // only what changes from now on
                Changes(Some(rx))
            }
            Transport::Child { .. } => Changes(None),
        }
    }

    /// Orderly stop: disarm and close the pipe or socket (the watchdog fences once more,
    /// harmlessly; the child exits and is reaped, the guard stays for the next elector).
    pub async fn stop(mut self) {
        self.disarm().await;
        match self.0 {
            Transport::Guard(link) => link.close().await,
            Transport::Child { mut child, stdin } => {
                drop(stdin);
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
        }
    }
}

/// Wakes the election loop on a change of the guard's connection; never for the child.
pub struct Changes(Option<watch::Receiver<Option<u64>>>);

impl Changes {
    /// For no watchdog at all.
    pub fn never() -> Changes {
        Changes(None)
    }

    pub async fn changed(&mut self) {
        let ok = match &mut self.0 {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !ok {
            std::future::pending::<()>().await;
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warden_fences_on_a_passed_deadline_a_lost_elector_and_at_a_fail_closed_start() {
        let t0 = Moment::ZERO + Duration::from_secs(100);
        let mut w = Warden::idle();
        assert!(!w.must_fence());
        w.command(Command::Arm(t0));
        assert!(w.is_armed() && !w.tick(Moment::ZERO + Duration::from_secs(99)) && !w.must_fence());
        assert!(w.tick(t0) && w.must_fence() && !w.is_armed());
        assert_eq!(w.nap(t0), RETRY);
        w.fenced(false);
        assert!(w.must_fence(), "retried until confirmed");
        w.fenced(true);
        assert!(!w.must_fence());

        w.command(Command::Arm(t0));
        assert!(w.lost(), "lost while armed");
        assert!(w.must_fence());
        w.command(Command::Disarm);
        assert!(!w.must_fence(), "the elector is in charge again");
        assert!(!w.lost() && w.must_fence(), "lost while disarmed: fenced anyway, harmlessly");

        let mut g = Warden::fail_closed();
        assert!(g.must_fence() && !g.is_armed());
        g.command(Command::Arm(t0));
        assert!(!g.must_fence(), "an arming elector is in charge");
    }

    #[test]
    fn commands_round_trip() {
        let at = Moment::ZERO + Duration::from_millis(123_456);
        assert_eq!(parse(&encode(Command::Arm(at))), Some(Command::Arm(at)));
        assert_eq!(parse(&encode(Command::Disarm)), Some(Command::Disarm));
        assert_eq!(parse("arm"), None);
        assert_eq!(parse("arm x"), None);
        assert_eq!(parse("arm 1 2"), None);
        assert_eq!(parse("fence"), None);
    }
}

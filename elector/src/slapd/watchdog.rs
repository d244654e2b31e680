//! The watchdog: a separate process (`ldap-elector watchdog`) that the elector must keep
//! feeding. slapd keeps serving clients while the elector is paused, hung or starved; if
//! the leader's renew deadline passes without a new `arm`, or the elector disappears (its
//! end of the pipe closes: crash, kill -9), the watchdog fences slapd itself.
//!
//! Protocol, one line each on the watchdog's stdin: `arm <ms>` (fence at `<ms>` on the
//! boot-time clock unless armed again), `disarm` (the elector fenced itself; nothing to do).
//! Limit: a freezer on the whole container (e.g. `docker pause`) stops the watchdog too;
//! SIGSTOP of the elector, a hung loop, or an exited elector do not.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::clock::Moment;
use crate::slapd::fence::Fence;
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

fn encode(command: Command) -> String {
    match command {
        Command::Arm(at) => format!("arm {}\n", at.since(Moment::ZERO).as_millis()),
        Command::Disarm => "disarm\n".to_string(),
    }
}

/// How often the watchdog retries a fence that slapd did not confirm (stalled or restarting).
const RETRY: Duration = Duration::from_millis(200);

/// The watchdog process's main loop: returns once slapd is confirmed fenced after the pipe
/// closed. A fence it has to set (deadline passed, or the elector gone) is retried until
/// slapd confirms it, or until the elector arms or disarms again (it is in charge then).
pub async fn serve(fence: Fence) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut deadline: Option<Moment> = None;
    let mut must_fence = false;
    let mut gone = false;
    loop {
        if gone && !must_fence {
            return;
        }
        let nap = if must_fence {
            RETRY
        } else {
            deadline.map_or(Duration::from_secs(3600), |d| d.since(Moment::now()).min(RECHECK))
        };
        tokio::select! {
            line = lines.next_line(), if !gone => match line {
                Ok(Some(line)) => match parse(&line) {
                    Some(Command::Arm(at)) => (deadline, must_fence) = (Some(at), false),
                    Some(Command::Disarm) => (deadline, must_fence) = (None, false),
                    None => tracing::warn!(line, "watchdog: ignoring an unknown command"),
                },
                Ok(None) | Err(_) => {
                    // Fence in any case: a leader that vanished must not leave slapd writable,
                    // and for a standby it is a no-op.
                    if deadline.is_some() {
                        tracing::warn!("watchdog: the elector is gone while leading; fencing slapd");
                    } else {
                        tracing::info!("watchdog: the elector exited as standby; keeping slapd fenced");
                    }
                    (gone, deadline) = (true, None);
                    must_fence = !fence.apply(ROLE_STANDBY).await;
                }
            },
            _ = tokio::time::sleep(nap) => {
                if deadline.is_some_and(|d| Moment::now() >= d) {
                    tracing::error!("watchdog: the elector did not renew before its deadline; fencing slapd");
                    (deadline, must_fence) = (None, true);
                }
                if must_fence {
                    must_fence = !fence.apply(ROLE_STANDBY).await;
                    if must_fence {
                        tracing::warn!("watchdog: slapd did not confirm the fence; retrying");
                    }
                }
            }
        }
    }
}

/// The elector's end: the child process and the pipe that feeds it.
pub struct Watchdog {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Watchdog {
    /// Starts `program args… watchdog` (normally this very binary with its own flags).
    pub fn spawn(program: &std::path::Path, args: &[String]) -> std::io::Result<Watchdog> {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .arg("watchdog")
            .stdin(Stdio::piped())
            .kill_on_drop(false) // on our death it must outlive us long enough to fence
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    async fn send(&mut self, command: Command) {
        let Some(stdin) = self.stdin.as_mut() else { return };
        if let Err(e) = stdin.write_all(encode(command).as_bytes()).await {
            tracing::error!(error = %e, "cannot feed the watchdog (it may have died)");
            self.stdin = None;
        }
    }

    /// Fence at `deadline` unless armed again before.
    pub async fn arm(&mut self, deadline: Moment) {
        self.send(Command::Arm(deadline)).await
    }

    pub async fn disarm(&mut self) {
        self.send(Command::Disarm).await
    }

    /// Orderly stop: disarm, close the pipe (the watchdog fences once more, harmlessly, and
    /// exits), and reap it.
    pub async fn stop(mut self) {
        self.disarm().await;
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

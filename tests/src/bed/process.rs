//! Child processes that cannot outlive the test: each is spawned from its own thread,
//! which then waits on it, with `PR_SET_PDEATHSIG` = SIGKILL. If the test process dies
//! (panic, Ctrl-C, kill -9) the kernel kills the children; on `Drop` we kill them.
//! Short tools run to completion with [`run`] (or [`output`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::Context;

/// Signals the tests send to processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// A running (or exited) child process with its output in a log file.
pub struct Child {
    name: String,
    pid: u32,
    exit: Arc<Mutex<Option<ExitStatus>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Child {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
        let out = File::options().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let exit = Arc::new(Mutex::new(None));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let exit_slot = exit.clone();
        let thread_name = name.to_string();
        // The spawning thread must live as long as the child: PDEATHSIG fires when the
        // thread that forked exits, so that thread is the one that waits.
        std::thread::Builder::new().name(format!("child-{thread_name}")).spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                    return;
                }
            };
            let _ = pid_tx.send(Ok(child.id()));
            let status = child.wait();
            if let Ok(status) = status {
                *exit_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
            }
            let _ = done_tx.send(true);
        })?;
        let pid = pid_rx.recv()?.map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Child { name: name.to_string(), pid, exit, done })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the process has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Becomes `true` when the process has exited.
    pub fn exited(&self) -> tokio::sync::watch::Receiver<bool> {
        self.done.clone()
    }

    pub fn is_running(&self) -> bool {
        !*self.done.borrow()
    }

    /// Sends `signal` unless the process has already been reaped (so a recycled pid is
    /// never hit).
    pub fn signal(&self, signal: Signal) {
        if self.is_running() {
            // SAFETY: plain syscall on a pid we own and have not reaped yet.
            unsafe { libc::kill(self.pid as libc::pid_t, signal.raw()) };
        }
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> Option<ExitStatus> {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
        self.exit_status()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, grace: std::time::Duration) -> Option<ExitStatus> {
        self.signal(Signal::Cont);
        self.signal(Signal::Term);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            self.signal(Signal::Kill);
        }
        self.wait().await
    }

    /// Blocking kill for `Drop` paths: SIGKILL and wait until reaped (bounded).
    pub fn kill_now(&self) {
        self.signal(Signal::Kill);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Runs `cmd` to completion (feeding it `stdin`, if any) and returns its output, whatever
/// its exit status. For short tools (helm, kubectl, slapadd), not for servers.
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    if let Some(input) = stdin {
        child.stdin.take().context("no stdin")?.write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

/// [`output`], failing with the command, its status, stdout and stderr unless it exits 0.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    let out = output(cmd, stdin)?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

//! Write fencing of the local slapd: the built-in fence toggles `olcReadOnly` of the data
//! database over ldapi (SASL EXTERNAL, cn=config) — client writes then fail with 53 even on
//! connections kube-proxy keeps open, while syncrepl still applies replicated changes —
//! and the generic role-change hook runs a command with the new role. Either or both.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Moment;
use crate::slapd::database::FencedDatabase;
use crate::slapd::hook::RoleHook;
use crate::slapd::ldap;
use ldap_elector_contract::{ROLE_LEADER, ROLE_STANDBY};

/// The built-in fence: which slapd and which database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapFence {
    pub ldapi_url: String,
    pub database: FencedDatabase,
}

pub struct Fence {
    ldap: Option<LdapFence>,
    hook: RoleHook,
    timeout: Duration,
    /// The built-in fence made ready by [`Fencing::prepare`] (the guard's, while armed).
    ready: tokio::sync::Mutex<Option<ldap::ReadyFence>>,
}

/// How long [`Fencing::prepare`] may take: it runs in the guard's loop, right after an arm
/// moved the deadline a renew deadline ahead; over ldapi it takes a few milliseconds.
const PREPARE_TIMEOUT: Duration = Duration::from_millis(200);

impl Fence {
    pub fn new(ldap: Option<LdapFence>, hook_command: Option<String>, timeout: Duration) -> Self {
        Fence { ldap, hook: RoleHook::new(hook_command, timeout), timeout, ready: Default::default() }
    }

    /// Whether anything is configured (otherwise the elector only labels).
    pub fn is_configured(&self) -> bool {
        self.ldap.is_some() || self.hook.is_configured()
    }

    /// Makes the local slapd writable (`leader`) or read-only (anything else); true when
    /// every configured step succeeded. A timed-out `olcReadOnly` change stays queued in
    /// slapd and applies later (see `ldap::set_read_only`).
    pub async fn apply(&self, role: &str) -> bool {
        self.apply_while(role, &|| true).await
    }

    /// [`Fence::apply`], asking `still` immediately before each step that would make slapd
    /// writable; a `false` stops there (the wish expired while the keeper waited).
    async fn apply_while(&self, role: &str, still: &(dyn Fn() -> bool + Sync)) -> bool {
        let ldap = self.apply_ldap(role, still).await;
        if role == ROLE_LEADER {
            // Writable only once the built-in fence is lifted and the wish still stands.
            return ldap && still() && self.hook.run(role).await;
        }
        // Fencing runs every configured step, whatever the others did.
        self.hook.run(role).await & ldap
    }

    /// The built-in fence only; true when slapd confirmed the state by reading it back, or
    /// when slapd is not running (nothing accepts writes then; the keeper re-applies the fence
    /// when it answers again).
    async fn apply_ldap(&self, role: &str, still: &(dyn Fn() -> bool + Sync)) -> bool {
        let Some(f) = &self.ldap else { return true };
        let read_only = role != ROLE_LEADER;
        let started = std::time::Instant::now();
        let ready = if read_only { self.ready.lock().await.take() } else { None };
        if let Some(ready) = ready {
            match ready.fence(self.timeout).await {
                Ok(()) => {
                    let millis = started.elapsed().as_millis() as u64;
                    tracing::info!(role, read_only, millis, "slapd fence set (prepared session)");
                    return true;
                }
                Err(e) => tracing::warn!(role, error = %e, "the prepared fence failed; fencing in a new session"),
            }
        }
        let proceed = || read_only || still();
        match ldap::set_read_only_if(&f.ldapi_url, &f.database, read_only, self.timeout, &proceed).await {
            Ok(()) => {
                tracing::info!(role, read_only, millis = started.elapsed().as_millis() as u64, "slapd fence set");
                true
            }
            Err(e @ ldap::LdapError::NotRunning { .. }) if read_only => {
                tracing::info!(role, error = %e, "slapd is not running: nothing accepts writes");
                true
            }
            Err(e @ ldap::LdapError::Withdrawn { .. }) => {
                tracing::warn!(role, error = %e, "the leader's deadline passed before slapd answered: staying fenced");
                false
            }
            Err(e) => {
                tracing::error!(role, read_only, error = %e, "could not set the slapd fence");
                false
            }
        }
    }

    /// Whether the built-in fence is in the state `role` needs (`None`: cannot tell, or no
    /// built-in fence). Catches a slapd that restarted with an old `olcReadOnly`.
    async fn verify_ldap(&self, role: &str) -> Option<bool> {
        let f = self.ldap.as_ref()?;
        let read_only = ldap::is_read_only(&f.ldapi_url, &f.database, self.timeout).await.ok()?;
        Some(read_only == (role != ROLE_LEADER))
    }
}

/// What the fence keeper needs from a fence: the real one ([`Fence`]) or a test's.
pub trait Fencing: Send + Sync + 'static {
    /// Puts slapd into `role`'s state (all configured steps); `still` is asked immediately
    /// before every step that makes slapd writable. True when confirmed.
    fn apply(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> impl Future<Output = bool> + Send;
    /// Whether slapd is in `role`'s state (`None`: cannot tell).
    fn verify(&self, role: &'static str) -> impl Future<Output = Option<bool>> + Send;
    /// Puts slapd back into `role`'s state after it drifted (the built-in fence only).
    fn repair(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> impl Future<Output = bool> + Send;
    /// Makes a later fence (`apply` of a standby role) as short as it can be: the guard calls
    /// it when armed, so that at its deadline the first request to slapd is the change itself.
    /// Default: nothing to prepare.
    fn prepare(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
    /// Runs for as long as the keeper, calling `started` each time slapd (re)starts and
    /// accepts connections (the first time included). Default: never (nothing to watch).
    fn watch_starts(&self, started: &(dyn Fn() + Sync)) -> impl Future<Output = ()> + Send {
        let _ = started;
        std::future::pending()
    }
}

impl Fencing for Fence {
    async fn apply(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
        self.apply_while(role, still).await
    }
    async fn verify(&self, role: &'static str) -> Option<bool> {
        self.verify_ldap(role).await
    }
    async fn repair(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
        self.apply_ldap(role, still).await
    }
    async fn prepare(&self) {
        let Some(f) = &self.ldap else { return };
        let mut ready = self.ready.lock().await;
        if ready.as_mut().is_some_and(ldap::ReadyFence::is_open) {
            return;
        }
        *ready = match ldap::ReadyFence::open(&f.ldapi_url, &f.database, PREPARE_TIMEOUT).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(error = %e, "could not prepare the fence (the fence opens its own session)");
                None
            }
        };
    }
    async fn watch_starts(&self, started: &(dyn Fn() + Sync)) {
        match &self.ldap {
            Some(f) => ldap::watch_ldapi(&f.ldapi_url, started).await,
            None => std::future::pending().await,
        }
    }
}

/// The fence state the elector wants: writable only until the leader's renew deadline,
/// so a keeper that resumes after a pause never re-opens writes for a stale term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WantedFence {
    Standby,
    Leader { until: Moment },
}

impl WantedFence {
    pub fn role(self, now: Moment) -> &'static str {
        match self {
            WantedFence::Leader { until } if now < until => ROLE_LEADER,
            _ => ROLE_STANDBY,
        }
    }
}

/// How often the keeper re-reads slapd's fence state, and retries a failed change. A
/// (re)start of slapd is not left to the verify: [`Fencing::watch_starts`] reports it.
const VERIFY_EVERY: Duration = Duration::from_secs(1);
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Keeps the fence where the elector wants it, in its own task: applies changes, retries
/// failures (slapd down or restarting), sets it again as soon as slapd (re)starts (it
/// comes back with whatever `olcReadOnly` it had on disk), re-applies when it drifted, and
/// writes a standby's fence again when asked ([`FenceKeeper::unblock_replication`]).
pub struct FenceKeeper {
    desired: watch::Sender<WantedFence>,
    applied: watch::Receiver<Option<&'static str>>,
    rewrite: std::sync::Arc<tokio::sync::Notify>,
}

impl FenceKeeper {
    pub fn start(fence: impl Fencing, cancel: CancellationToken) -> FenceKeeper {
        let (desired, mut want) = watch::channel(WantedFence::Standby);
        let (applied_tx, applied) = watch::channel(None);
        let wish = want.clone();
        let rewrite = std::sync::Arc::new(tokio::sync::Notify::new());
        let rewrite_asked = rewrite.clone();
        tokio::spawn(async move {
            // Asked again after every await, immediately before slapd is made writable: the
            // wish may have changed, or its deadline passed, while the keeper waited on slapd.
            let still = |role: &str| role != ROLE_LEADER || wish.borrow().role(Moment::now()) == ROLE_LEADER;
            // A (re)started slapd comes up with its on-disk olcReadOnly, often writable: it
            // is set at once, not at the next verify (issue 15/16). A permit is kept when a
            // start is reported while the keeper is busy.
            let started = tokio::sync::Notify::new();
            let on_start = || started.notify_one();
            let watch_starts = fence.watch_starts(&on_start);
            let keep = async {
                let mut applied_role: Option<&'static str> = None;
                let (mut restarted, mut rewrite) = (false, false);
                loop {
                    let desired = *want.borrow_and_update();
                    let role = desired.role(Moment::now());
                    let ok = if applied_role != Some(role) {
                        fence.apply(role, &|| still(role)).await
                    } else if std::mem::take(&mut restarted) {
                        tracing::info!(role, "slapd (re)started: setting its fence at once");
                        fence.repair(role, &|| still(role)).await
                    } else if std::mem::take(&mut rewrite) && role == ROLE_STANDBY {
                        tracing::debug!(
                            "writing the standby fence again (slapd's syncrepl consumer leaves its blocking read)"
                        );
                        fence.repair(role, &|| still(role)).await
                    } else {
                        match fence.verify(role).await {
                            Some(false) if still(role) => {
                                tracing::warn!(role, "slapd's fence drifted (restarted?): setting it again");
                                fence.repair(role, &|| still(role)).await
                            }
                            // The wish changed while verifying: the next round applies the new one.
                            Some(false) => false,
                            _ => true,
                        }
                    };
                    applied_role = ok.then_some(role);
                    applied_tx.send_replace(applied_role);
                    let mut nap = if ok { VERIFY_EVERY } else { RETRY_EVERY };
                    if let WantedFence::Leader { until } = desired {
                        nap = nap.min(until.since(Moment::now()));
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = want.changed() => {}
                        _ = started.notified() => {
                            // Not confirmed until set: the new slapd accepts writes meanwhile.
                            applied_tx.send_replace(None);
                            restarted = true;
                        }
                        _ = rewrite_asked.notified() => rewrite = true,
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
            };
            tokio::select! {
                _ = keep => {}
                _ = watch_starts => {}
            }
        });
        FenceKeeper { desired, applied, rewrite }
    }

    /// Asks the keeper to write a standby's fence again (nothing while leading). slapd 2.5 keeps
    /// a syncrepl consumer that began its refresh under a steady stream of changes in a read
    /// that waits up to the syncrepl `timeout=` for the next one, and every cn=config change
    /// waits for that read; a change made while changes arrive ends it at the next one, for the
    /// rest of the consumer's session. Otherwise the unfence that makes this standby the writer
    /// would wait for the timeout after the old leader's last write (docs/openldap.md).
    pub fn unblock_replication(&self) {
        self.rewrite.notify_one();
    }

    /// Whether slapd is confirmed fenced (the last standby change was read back, or slapd is
    /// not running) and the elector still wants it so.
    pub fn is_fenced(&self) -> bool {
        *self.applied.borrow() == Some(ROLE_STANDBY) && *self.desired.borrow() == WantedFence::Standby
    }

    /// Asks for `desired` and waits (at most `wait`) until it is in place; true if it is.
    pub async fn set(&self, desired: WantedFence, wait: Duration) -> bool {
        self.desired.send_replace(desired);
        let role = desired.role(Moment::now());
        let mut applied = self.applied.clone();
        applied.mark_changed();
        let reached = tokio::time::timeout(wait, async {
            loop {
                if *applied.borrow_and_update() == Some(role) && *self.desired.borrow() == desired {
                    return true;
                }
                if applied.changed().await.is_err() {
                    return false;
                }
            }
        });
        reached.await.unwrap_or(false)
    }

    /// Asks for `desired` without waiting; [`FenceKeeper::is_unfenced`] tells when a leader
    /// wish is in place (the election loop keeps renewing meanwhile).
    pub fn request(&self, desired: WantedFence) {
        self.desired.send_replace(desired);
    }

    /// Whether slapd is confirmed writable (every configured step of `leader` succeeded) and
    /// the elector still wants it so.
    pub fn is_unfenced(&self) -> bool {
        *self.applied.borrow() == Some(ROLE_LEADER) && matches!(*self.desired.borrow(), WantedFence::Leader { .. })
    }

    /// Moves the leader's deadline (after a renew) without waiting.
    pub fn extend(&self, until: Moment) {
        self.desired.send_if_modified(|d| match d {
            WantedFence::Leader { until: old } => {
                *old = until;
                true
            }
            WantedFence::Standby => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_wish_expires_at_its_deadline() {
        let t = Moment::ZERO + Duration::from_secs(10);
        let d = WantedFence::Leader { until: t };
        assert_eq!(d.role(Moment::ZERO + Duration::from_secs(9)), ROLE_LEADER);
        assert_eq!(d.role(t), ROLE_STANDBY);
        assert_eq!(WantedFence::Standby.role(Moment::ZERO), ROLE_STANDBY);
    }

    /// A fence whose verify blocks until the test lets it answer "read-only" (the watchdog
    /// fenced slapd meanwhile); it records when slapd would have been made writable.
    #[derive(Clone, Default)]
    struct StalledVerify {
        verifying: std::sync::Arc<tokio::sync::Notify>,
        answer: std::sync::Arc<tokio::sync::Notify>,
        writable_at: std::sync::Arc<std::sync::Mutex<Vec<Moment>>>,
        fenced_at: std::sync::Arc<std::sync::Mutex<Vec<Moment>>>,
    }

    impl StalledVerify {
        fn record(&self, role: &str, still: &(dyn Fn() -> bool + Sync)) -> bool {
            let log = if role == ROLE_LEADER { &self.writable_at } else { &self.fenced_at };
            if role != ROLE_LEADER || still() {
                log.lock().unwrap().push(Moment::now());
            }
            true
        }
    }

    impl Fencing for StalledVerify {
        async fn apply(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.record(role, still)
        }
        async fn verify(&self, _role: &'static str) -> Option<bool> {
            self.verifying.notify_one();
            self.answer.notified().await;
            Some(false)
        }
        async fn repair(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.record(role, still)
        }
    }

    /// Issue 15, item 3: slapd stalls (SIGSTOP) inside the keeper's verify, the leader's
    /// deadline passes (the watchdog fences, a standby takes over); when slapd answers, the
    /// keeper must fence, never make slapd writable again for the expired term.
    #[tokio::test]
    async fn a_verify_that_outlasts_the_deadline_never_unfences() {
        let fence = StalledVerify::default();
        let cancel = CancellationToken::new();
        let keeper = FenceKeeper::start(fence.clone(), cancel.clone());
        let until = Moment::now() + Duration::from_millis(1500);
        assert!(keeper.set(WantedFence::Leader { until }, Duration::from_secs(1)).await);
        // The first verify comes after VERIFY_EVERY (1 s), before the deadline.
        tokio::time::timeout(Duration::from_secs(5), fence.verifying.notified()).await.expect("the keeper verifies");
        while Moment::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fence.answer.notify_one();
        let fenced_after_deadline = || fence.fenced_at.lock().unwrap().iter().any(|t| *t >= until);
        let bound = Moment::now() + Duration::from_secs(5);
        while !fenced_after_deadline() && Moment::now() < bound {
            tokio::time::sleep(Duration::from_millis(10)).await;
            fence.answer.notify_one(); // later verifies (if any) answer at once
        }
        let writable = fence.writable_at.lock().unwrap().clone();
        assert!(
            writable.iter().all(|t| *t < until),
            "slapd made writable after the deadline: {writable:?}, deadline {until:?}"
        );
        assert!(fenced_after_deadline(), "the keeper fences once the deadline has passed");
        cancel.cancel();
    }

    /// A slapd that is not running at first, then starts (and restarts) with a writable
    /// on-disk config; `watch_starts` reports each start at once, as the ldapi watch does.
    #[derive(Clone)]
    struct LateSlapd {
        running: std::sync::Arc<watch::Sender<bool>>,
        read_only: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl LateSlapd {
        fn new() -> Self {
            LateSlapd { running: std::sync::Arc::new(watch::channel(false).0), read_only: Default::default() }
        }
        fn set(&self, role: &str) -> bool {
            if *self.running.borrow() {
                self.read_only.store(role != ROLE_LEADER, std::sync::atomic::Ordering::SeqCst);
            }
            true // a slapd that is not running accepts no writes: fenced
        }
        fn is_read_only(&self) -> bool {
            self.read_only.load(std::sync::atomic::Ordering::SeqCst)
        }
        /// slapd starts from its on-disk config (no olcReadOnly: writable).
        fn start(&self) -> std::time::Instant {
            self.read_only.store(false, std::sync::atomic::Ordering::SeqCst);
            self.running.send_replace(true);
            std::time::Instant::now()
        }
        fn stop(&self) {
            self.running.send_replace(false);
        }
        /// How long slapd stays writable after `start`ed at `since` (capped at 3 s).
        async fn writable_for(&self, since: std::time::Instant) -> Duration {
            while !self.is_read_only() && since.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            since.elapsed()
        }
    }

    impl Fencing for LateSlapd {
        async fn apply(&self, role: &'static str, _still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.set(role)
        }
        async fn verify(&self, role: &'static str) -> Option<bool> {
            let running = *self.running.borrow();
            running.then(|| self.is_read_only() == (role != ROLE_LEADER))
        }
        async fn repair(&self, role: &'static str, _still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.set(role)
        }
        async fn watch_starts(&self, started: &(dyn Fn() + Sync)) {
            let mut running = self.running.subscribe();
            loop {
                let _ = running.wait_for(|r| *r).await;
                started();
                let _ = running.wait_for(|r| !*r).await;
            }
        }
    }

    /// Issue 15/16 (seen on the real node): a standby's slapd that starts, or restarts,
    /// after the keeper counted it fenced ("not running") came up writable from its on-disk
    /// config and stayed so until the next verify, up to VERIFY_EVERY (1 s) later. The
    /// keeper must fence it as soon as it accepts connections.
    #[tokio::test]
    async fn a_slapd_that_starts_late_is_fenced_at_once() {
        let slapd = LateSlapd::new();
        let cancel = CancellationToken::new();
        let keeper = FenceKeeper::start(slapd.clone(), cancel.clone());
        assert!(keeper.set(WantedFence::Standby, Duration::from_secs(1)).await, "not running counts as fenced");
        for round in ["start", "restart"] {
            tokio::time::sleep(Duration::from_millis(150)).await; // the keeper is between verifies
            let window = slapd.writable_for(slapd.start()).await;
            assert!(slapd.is_read_only(), "{round}: never fenced");
            assert!(window < Duration::from_millis(100), "{round}: slapd writable for {window:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            slapd.stop();
        }
        cancel.cancel();
    }

    /// A slapd that counts the fence writes it gets, by role.
    #[derive(Clone, Default)]
    struct CountingSlapd {
        writes: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    }

    impl CountingSlapd {
        fn writes(&self) -> Vec<&'static str> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl Fencing for CountingSlapd {
        async fn apply(&self, role: &'static str, _still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.writes.lock().unwrap().push(role);
            true
        }
        async fn verify(&self, _role: &'static str) -> Option<bool> {
            Some(true)
        }
        async fn repair(&self, role: &'static str, still: &(dyn Fn() -> bool + Sync)) -> bool {
            self.apply(role, still).await
        }
    }

    /// The unfence of a hand-over must not wait for slapd's syncrepl consumer: a standby's
    /// fence is written again when asked (a verify only reads), a leader's never.
    #[tokio::test]
    async fn asked_to_unblock_replication_a_standby_writes_its_fence_again_and_a_leader_does_not() {
        let slapd = CountingSlapd::default();
        let cancel = CancellationToken::new();
        let keeper = FenceKeeper::start(slapd.clone(), cancel.clone());
        assert!(keeper.set(WantedFence::Standby, Duration::from_secs(1)).await);
        for _ in 0..2 {
            let before = slapd.writes().len();
            keeper.unblock_replication();
            let wrote_again = async {
                while slapd.writes().len() == before {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_millis(500), wrote_again).await.expect("written again, not only read");
        }
        assert_eq!(slapd.writes(), [ROLE_STANDBY; 3]);

        let leader = WantedFence::Leader { until: Moment::now() + Duration::from_secs(60) };
        assert!(keeper.set(leader, Duration::from_secs(1)).await);
        keeper.unblock_replication();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(slapd.writes(), [ROLE_STANDBY, ROLE_STANDBY, ROLE_STANDBY, ROLE_LEADER], "a leader's fence stays");
        cancel.cancel();
    }

    #[tokio::test]
    async fn the_keeper_applies_and_retries_with_a_hook() {
        let dir = std::env::temp_dir().join(format!("keeper-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (out, flag) = (dir.join("role"), dir.join("allow"));
        let script = dir.join("hook.sh");
        // The hook fails until `allow` exists: the keeper must retry.
        std::fs::write(
            &script,
            format!("#!/bin/sh\n[ -e {} ] || exit 1\necho \"$1\" > {}\n", flag.display(), out.display()),
        )
        .unwrap();
        let fence = Fence::new(None, Some(format!("sh {}", script.display())), Duration::from_secs(5));
        let cancel = CancellationToken::new();
        let keeper = FenceKeeper::start(fence, cancel.clone());
        let leader = WantedFence::Leader { until: Moment::now() + Duration::from_secs(60) };
        assert!(!keeper.set(leader, Duration::from_millis(300)).await, "the hook fails");
        std::fs::write(&flag, "").unwrap();
        assert!(keeper.set(leader, Duration::from_secs(5)).await, "retried until it worked");
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "leader");
        assert!(keeper.set(WantedFence::Standby, Duration::from_secs(5)).await);
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "standby");
        cancel.cancel();
        std::fs::remove_dir_all(dir).unwrap();
    }
}

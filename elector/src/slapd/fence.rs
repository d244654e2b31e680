//! Write fencing of the local slapd: the built-in fence toggles `olcReadOnly` of the data
//! database over ldapi (SASL EXTERNAL, cn=config) — client writes then fail with 53 even on
//! connections kube-proxy keeps open, while syncrepl still applies replicated changes —
//! and the generic role-change hook runs a command with the new role. Either or both.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Moment;
use crate::slapd::hook::RoleHook;
use crate::slapd::ldap;
use ldap_elector_contract::{ROLE_LEADER, ROLE_STANDBY};

/// The built-in fence: which slapd and which database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapFence {
    pub ldapi_url: String,
    pub database_dn: String,
}

pub struct Fence {
    ldap: Option<LdapFence>,
    hook: RoleHook,
    timeout: Duration,
}

impl Fence {
    pub fn new(ldap: Option<LdapFence>, hook_command: Option<String>, timeout: Duration) -> Self {
        Fence { ldap, hook: RoleHook::new(hook_command, timeout), timeout }
    }

    /// Whether anything is configured (otherwise the elector only labels).
    pub fn is_configured(&self) -> bool {
        self.ldap.is_some() || self.hook.is_configured()
    }

    /// Makes the local slapd writable (`leader`) or read-only (anything else); true when
    /// every configured step succeeded. A timed-out `olcReadOnly` change stays queued in
    /// slapd and applies later (see `ldap::set_read_only`).
    pub async fn apply(&self, role: &str) -> bool {
        let mut ok = true;
        if let Some(f) = &self.ldap {
            let read_only = role != ROLE_LEADER;
            let started = std::time::Instant::now();
            match ldap::set_read_only(&f.ldapi_url, &f.database_dn, read_only, self.timeout).await {
                Ok(()) => {
                    tracing::info!(role, read_only, millis = started.elapsed().as_millis() as u64, "slapd fence set")
                }
                Err(e) => {
                    tracing::error!(role, read_only, error = %e, "could not set the slapd fence");
                    ok = false;
                }
            }
        }
        ok & self.hook.run(role).await
    }
}

impl Fence {
    /// The built-in fence only: makes slapd writable or read-only; true on success.
    async fn apply_ldap(&self, read_only: bool) -> bool {
        let Some(f) = &self.ldap else { return true };
        match ldap::set_read_only(&f.ldapi_url, &f.database_dn, read_only, self.timeout).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(read_only, error = %e, "could not set the slapd fence (retrying)");
                false
            }
        }
    }

    /// Whether the built-in fence is in the state `role` needs (`None`: cannot tell, or no
    /// built-in fence). Catches a slapd that restarted with an old `olcReadOnly`.
    async fn verify_ldap(&self, role: &str) -> Option<bool> {
        let f = self.ldap.as_ref()?;
        let read_only = ldap::is_read_only(&f.ldapi_url, &f.database_dn, self.timeout).await.ok()?;
        Some(read_only == (role != ROLE_LEADER))
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

/// How often the keeper re-reads slapd's fence state, and retries a failed change.
const VERIFY_EVERY: Duration = Duration::from_secs(1);
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Keeps the fence where the elector wants it, in its own task: applies changes, retries
/// failures (slapd down or restarting), and re-applies when slapd drifted (a restarted
/// slapd comes back with whatever `olcReadOnly` it had on disk).
pub struct FenceKeeper {
    desired: watch::Sender<WantedFence>,
    applied: watch::Receiver<Option<&'static str>>,
}

impl FenceKeeper {
    pub fn start(fence: Fence, cancel: CancellationToken) -> FenceKeeper {
        let (desired, mut want) = watch::channel(WantedFence::Standby);
        let (applied_tx, applied) = watch::channel(None);
        tokio::spawn(async move {
            let mut applied_role: Option<&'static str> = None;
            loop {
                let desired = *want.borrow_and_update();
                let role = desired.role(Moment::now());
                let ok = if applied_role != Some(role) {
                    fence.apply(role).await
                } else {
                    match fence.verify_ldap(role).await {
                        Some(false) => {
                            tracing::warn!(role, "slapd's fence drifted (restarted?): setting it again");
                            fence.apply_ldap(role != ROLE_LEADER).await
                        }
                        _ => true,
                    }
                };
                // Re-read: the wish may have changed while we worked.
                applied_role = ok.then_some(role);
                applied_tx.send_replace(applied_role);
                let mut nap = if ok { VERIFY_EVERY } else { RETRY_EVERY };
                if let WantedFence::Leader { until } = desired {
                    nap = nap.min(until.since(Moment::now()));
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = want.changed() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            }
        });
        FenceKeeper { desired, applied }
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

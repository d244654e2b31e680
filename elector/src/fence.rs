//! Write fencing of the local slapd: the built-in fence toggles `olcReadOnly` of the data
//! database over ldapi (SASL EXTERNAL, cn=config) — client writes then fail with 53 even on
//! connections kube-proxy keeps open, while syncrepl still applies replicated changes —
//! and the generic role-change hook runs a command with the new role. Either or both.

use std::time::Duration;

use crate::contract::ROLE_LEADER;
use crate::hook::RoleHook;
use crate::ldap;

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

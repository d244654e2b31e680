//! Health gating: a pluggable check of the local slapd, run on an interval. The pod is
//! healthy after one success and unhealthy after N consecutive failures; it starts
//! unhealthy, so nothing is acquired before the first check passed.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ldap::{Credentials, LdapCheck};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// Always healthy (no check configured).
    None,
    /// A TCP connect to this address succeeds.
    Tcp(String),
    /// This command exits 0 (program and arguments, split on whitespace).
    Exec(Vec<String>),
    /// Connect, bind, read the rootDSE and the suffix's contextCSN:
    /// `ldap://HOST:PORT?base=SUFFIX` or `ldapi://%2Fpath%2Fsock?base=SUFFIX`.
    Ldap(LdapCheck),
}

impl HealthCheck {
    /// Parses a check; an LDAP check takes its bind credentials from
    /// `ELECTOR_LDAP_BIND_DN` / `ELECTOR_LDAP_BIND_PASSWORD_FILE` (see [`HealthCheck::parse_with`]).
    pub fn parse(s: &str) -> Result<HealthCheck, String> {
        HealthCheck::parse_with(s, &Credentials::from_env())
    }

    /// Parses a check; an LDAP check binds with `creds` (simple bind with a DN, else SASL
    /// EXTERNAL over ldapi or anonymously over ldap).
    pub fn parse_with(s: &str, creds: &Credentials) -> Result<HealthCheck, String> {
        let s = s.trim();
        if s.starts_with("ldap://") || s.starts_with("ldapi://") {
            Ok(HealthCheck::Ldap(LdapCheck::parse(s)?.with_credentials(creds)?))
        } else if s.is_empty() || s == "none" {
            Ok(HealthCheck::None)
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                Ok(HealthCheck::Tcp(addr.to_string()))
            } else {
                Err(format!("{s:?}: expected tcp://HOST:PORT"))
            }
        } else if let Some(cmd) = s.strip_prefix("exec:") {
            let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
            if argv.is_empty() {
                Err("exec: needs a command".into())
            } else {
                Ok(HealthCheck::Exec(argv))
            }
        } else {
            Err(format!(
                "{s:?}: expected none, tcp://HOST:PORT, exec:COMMAND, ldap://HOST:PORT?base=SUFFIX or \
                 ldapi://%2Fpath%2Fsock?base=SUFFIX"
            ))
        }
    }

    /// Replaces the bind credentials of an LDAP check (e.g. from flags); other checks are
    /// returned unchanged.
    pub fn with_ldap_credentials(self, creds: &Credentials) -> Result<HealthCheck, String> {
        match self {
            HealthCheck::Ldap(check) => Ok(HealthCheck::Ldap(check.with_credentials(creds)?)),
            other => Ok(other),
        }
    }

    /// One check, bounded by `timeout`. `Err` says what failed.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        self.check_detailed(timeout).await.map(drop)
    }

    /// One check, bounded by `timeout`; on success the LDAP check also returns the
    /// contextCSN values of the data database, one per server ID, sorted (empty for the
    /// other checks, or when the suffix carries none yet).
    pub async fn check_detailed(&self, timeout: Duration) -> Result<Vec<String>, String> {
        let run = async {
            match self {
                HealthCheck::None => Ok(Vec::new()),
                HealthCheck::Ldap(check) => {
                    check.probe(timeout).await.map(|status| status.context_csn).map_err(|e| format!("ldap {e}"))
                }
                HealthCheck::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map(|_| Vec::new())
                    .map_err(|e| format!("tcp {addr}: {e}")),
                HealthCheck::Exec(argv) => {
                    let status = tokio::process::Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status()
                        .await
                        .map_err(|e| format!("exec {}: {e}", argv[0]))?;
                    if status.success() {
                        Ok(Vec::new())
                    } else {
                        Err(format!("exec {}: {status}", argv[0]))
                    }
                }
            }
        };
        tokio::time::timeout(timeout, run).await.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }
}

/// Counts consecutive results into a verdict (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    failures: u32,
}

impl Verdict {
    pub const fn initial() -> Self {
        Verdict { healthy: false, failures: 0 }
    }

    pub fn record(self, ok: bool, threshold: u32) -> Self {
        if ok {
            Verdict { healthy: true, failures: 0 }
        } else {
            let failures = self.failures.saturating_add(1);
            Verdict { healthy: self.healthy && failures < threshold, failures }
        }
    }
}

/// Runs `check` every `interval` and publishes the verdict until `cancel`.
pub async fn monitor(
    check: HealthCheck,
    interval: Duration,
    threshold: u32,
    tx: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    monitor_with_csn(check, interval, threshold, tx, None, &tokio::sync::Notify::new(), None, cancel).await
}

/// As [`monitor`], and publishes the contextCSN values of every passing check into `csn`
/// (the last seen values stay while checks fail). `recheck` asks for a check before the
/// next tick (at most every `RECHECK_MIN`), e.g. while a standby waits to catch up.
/// `tally`: counts each check's result (`pass`/`fail`) for the metrics.
#[allow(clippy::too_many_arguments)]
pub async fn monitor_with_csn(
    check: HealthCheck,
    interval: Duration,
    threshold: u32,
    tx: watch::Sender<bool>,
    csn: Option<watch::Sender<Vec<String>>>,
    recheck: &tokio::sync::Notify,
    tally: Option<std::sync::Arc<crate::metrics::LabeledCounter>>,
    cancel: CancellationToken,
) {
    const RECHECK_MIN: Duration = Duration::from_millis(50);
    let mut verdict = Verdict::initial();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            _ = recheck.notified() => tokio::time::sleep(RECHECK_MIN).await,
        }
        let result = check.check_detailed(interval.max(Duration::from_millis(500))).await;
        if let (Some(csn), Ok(seen)) = (&csn, &result) {
            csn.send_if_modified(|c| {
                let changed = !seen.is_empty() && c != seen;
                if changed {
                    c.clone_from(seen);
                }
                changed
            });
        }
        let result = result.map(drop);
        if let Some(t) = &tally {
            t.inc(if result.is_ok() { "pass" } else { "fail" });
        }
        let next = verdict.record(result.is_ok(), threshold);
        if next.healthy != verdict.healthy {
            match &result {
                Ok(()) => tracing::info!(healthy = true, "health check passes"),
                Err(e) => {
                    tracing::warn!(healthy = false, reason = %e, "health check failed {threshold} times in a row")
                }
            }
        } else if let Err(e) = &result {
            tracing::debug!(reason = %e, "health check failed");
        }
        verdict = next;
        tx.send_if_modified(|h| std::mem::replace(h, verdict.healthy) != verdict.healthy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_checks() {
        assert_eq!(HealthCheck::parse("none"), Ok(HealthCheck::None));
        assert_eq!(HealthCheck::parse("tcp://127.0.0.1:389"), Ok(HealthCheck::Tcp("127.0.0.1:389".into())));
        assert_eq!(HealthCheck::parse("exec:true --x"), Ok(HealthCheck::Exec(vec!["true".into(), "--x".into()])));
        assert!(HealthCheck::parse("tcp://nohost").is_err());
        assert!(HealthCheck::parse("http://x").is_err());
        assert!(HealthCheck::parse("exec:").is_err());
        let ldap = HealthCheck::parse_with("ldap://127.0.0.1:389?base=dc=example,dc=org", &Credentials::default());
        assert!(matches!(&ldap, Ok(HealthCheck::Ldap(c)) if c.base == "dc=example,dc=org"), "{ldap:?}");
        let ldapi = HealthCheck::parse_with("ldapi://%2Frun%2Fldapi?base=dc=x", &Credentials::default());
        assert!(matches!(&ldapi, Ok(HealthCheck::Ldap(c)) if c.bind == crate::ldap::Bind::SaslExternal), "{ldapi:?}");
        let dn_only = Credentials { bind_dn: Some("cn=admin,dc=x".into()), password_file: None };
        assert!(HealthCheck::parse_with("ldap://h:389?base=dc=x", &dn_only).is_err());
        assert!(HealthCheck::parse_with("ldap://h:389", &Credentials::default()).is_err());
    }

    #[test]
    fn starts_unhealthy_becomes_healthy_on_success_and_unhealthy_after_n_failures() {
        let v = Verdict::initial();
        assert!(!v.healthy);
        let v = v.record(true, 3);
        assert!(v.healthy);
        let v = v.record(false, 3).record(false, 3);
        assert!(v.healthy, "two failures of three tolerated");
        let v = v.record(false, 3);
        assert!(!v.healthy);
        assert!(v.record(true, 3).healthy);
        assert!(!Verdict::initial().record(false, 1).healthy);
    }

    #[tokio::test]
    async fn checks_really_check() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(HealthCheck::Tcp(addr).check(Duration::from_secs(1)).await, Ok(()));
        drop(listener);
        // Port 1 (tcpmux) is never handed out as an ephemeral port, so unlike the port just
        // released, no parallel test can be listening there.
        assert!(HealthCheck::Tcp("127.0.0.1:1".into()).check(Duration::from_secs(1)).await.is_err());
        assert_eq!(HealthCheck::Exec(vec!["true".into()]).check(Duration::from_secs(1)).await, Ok(()));
        assert!(HealthCheck::Exec(vec!["false".into()]).check(Duration::from_secs(1)).await.is_err());
        assert!(HealthCheck::Exec(vec!["sleep".into(), "5".into()]).check(Duration::from_millis(100)).await.is_err());
    }
}

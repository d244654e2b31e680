//! Health gating: a pluggable check of the local slapd, run on an interval. The pod is
//! healthy after one success and unhealthy after N consecutive failures; it starts
//! unhealthy, so nothing is acquired before the first check passed.

use std::time::Duration;

use std::sync::Arc;

use ldap_elector_contract::prometheus::LabeledCounter;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub use ldap_elector_contract::check::HealthCheck;

use crate::slapd::ldap::Probe;

/// Running a [`HealthCheck`] (its syntax is part of the contract).
pub trait RunCheck {
    /// One check, bounded by `timeout`. `Err` says what failed.
    fn check(&self, timeout: Duration) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// One check, bounded by `timeout`; on success the LDAP check also returns the
    /// contextCSN values of the data database, one per server ID, sorted (empty for the
    /// other checks, or when the suffix carries none yet).
    fn check_detailed(
        &self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<String>, String>> + Send;
}

impl RunCheck for HealthCheck {
    /// One check, bounded by `timeout`. `Err` says what failed.
    async fn check(&self, timeout: Duration) -> Result<(), String> {
        self.check_detailed(timeout).await.map(drop)
    }

    /// One check, bounded by `timeout`; on success the LDAP check also returns the
    /// contextCSN values of the data database, one per server ID, sorted (empty for the
    /// other checks, or when the suffix carries none yet).
    async fn check_detailed(&self, timeout: Duration) -> Result<Vec<String>, String> {
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

/// The health monitor: runs `check` every `interval` and publishes the verdict.
pub struct Monitor {
    pub check: HealthCheck,
    pub interval: Duration,
    /// Consecutive failures that make a healthy pod unhealthy.
    pub threshold: u32,
    /// Receives the verdict.
    pub healthy: watch::Sender<bool>,
    /// Receives the contextCSN values of every passing check (the last seen values stay
    /// while checks fail).
    pub csn: Option<watch::Sender<Vec<String>>>,
    /// Asks for a check before the next tick (at most every `RECHECK_MIN`), e.g. while a
    /// standby waits to catch up.
    pub recheck: Arc<Notify>,
    /// Counts each check's result (`pass`/`fail`) for the metrics.
    pub tally: Option<Arc<LabeledCounter>>,
}

impl Monitor {
    /// Checks until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let Monitor { check, interval, threshold, healthy: tx, csn, recheck, tally } = self;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

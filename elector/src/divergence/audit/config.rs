//! What an audit compares and within which limits.

use super::*;

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub a: LdapCheck,
    pub b: LdapCheck,
    /// Width of the first-level buckets (8, 12, 16 or 20 bits of the entryUUID).
    pub bucket_bits: u32,
    /// Most entries (per server) read into memory at once.
    pub leaf_max: usize,
    pub page_size: i32,
    pub policy: AttrPolicy,
    /// Re-read rounds after the first read of a differing entry.
    pub settle_rounds: u32,
    /// Back-off before the first re-read; doubles per round up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Timeout of each LDAP operation (and of each page of a search).
    pub op_timeout: Duration,
    /// Deadline of the whole audit.
    pub timeout: Duration,
    /// Confirmed differences listed (the rest are counted; the audit stops descending).
    pub max_report: usize,
}

impl AuditConfig {
    /// The defaults with the two servers: `ldap://…?base=SUFFIX` / `ldapi://…?base=SUFFIX`,
    /// both bound with `creds` (simple bind with a DN; else SASL EXTERNAL over ldapi,
    /// anonymous over ldap).
    pub fn new(a: &str, b: &str, creds: &Credentials) -> Result<AuditConfig, String> {
        let parse = |label: &str, s: &str| {
            LdapCheck::parse(s).and_then(|c| c.with_credentials(creds)).map_err(|e| format!("server {label}: {e}"))
        };
        let (a, b) = (parse("A", a)?, parse("B", b)?);
        if !a.base.eq_ignore_ascii_case(&b.base) {
            return Err(format!(
                "the servers must be audited under the same suffix, got {:?} and {:?}",
                a.base, b.base
            ));
        }
        Ok(AuditConfig {
            a,
            b,
            bucket_bits: 16,
            leaf_max: 5000,
            page_size: 1000,
            policy: AttrPolicy::default(),
            settle_rounds: 6,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1600),
            op_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(300),
            max_report: 1000,
        })
    }

    /// Both servers with the transport settings (StartTLS, the CA, the cleartext opt-in);
    /// `Err` when TLS lacks a CA or the cleartext rule refuses a server's simple bind.
    pub fn with_tls(mut self, tls: &Tls) -> Result<AuditConfig, String> {
        self.a = self.a.with_tls(tls).map_err(|e| format!("server A: {e}"))?;
        self.b = self.b.with_tls(tls).map_err(|e| format!("server B: {e}"))?;
        Ok(self)
    }

    pub fn validate(&self) -> Result<(), String> {
        if ![8, 12, 16, 20].contains(&self.bucket_bits) {
            return Err(format!("bucket bits must be 8, 12, 16 or 20, got {}", self.bucket_bits));
        }
        if !(100..=1_000_000).contains(&self.leaf_max) {
            return Err(format!("leaf max must be 100..=1000000 entries, got {}", self.leaf_max));
        }
        if !(1..=100_000).contains(&self.page_size) {
            return Err(format!("page size must be 1..=100000, got {}", self.page_size));
        }
        if self.settle_rounds < CONFIRMATIONS || self.settle_rounds > 50 {
            return Err(format!("settle rounds must be {CONFIRMATIONS}..=50, got {}", self.settle_rounds));
        }
        if self.max_report == 0 {
            return Err("max report must be at least 1".into());
        }
        Ok(())
    }

    pub(super) fn backoff(&self, round: u32) -> Duration {
        Backoff::new(self.backoff, self.backoff_max).delay(round.saturating_sub(1))
    }
}

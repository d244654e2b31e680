//! A write Service that selects no ready pod: during a failover that is expected (the old
//! leader has dropped its label, the new one has not set it yet); for longer it is an outage
//! nobody would notice but `ldap-elector status` (issue 16: a placeholder selector kept
//! beside ours). [`EmptyServices`] (pure) tells which, the reconciler says so as an Event,
//! and [`family`] reports them as a metric.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ldap_elector_contract as contract;
use ldap_elector_contract::metric;
use ldap_elector_contract::prometheus::{Family, Kind, Sample};

/// The elector's own default lease duration (`ELECTOR_LEASE_DURATION`).
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(8);
/// Never shorter than this: a new leader may take a catch-up grace before labelling itself.
const MIN_GRACE: Duration = Duration::from_secs(30);

/// How long a write Service may select no ready pod before it is reported: three lease
/// durations (the old leader's lease runs out, the new one acquires and labels itself), at
/// least [`MIN_GRACE`].
pub fn failover_grace(annotations: Option<&BTreeMap<String, String>>) -> Duration {
    let lease = annotations
        .and_then(|a| a.get(contract::ANNOTATION_LEASE_DURATION))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LEASE_DURATION);
    lease.saturating_mul(3).max(MIN_GRACE)
}

/// What an observation of one write Service means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It selects a ready pod.
    Serving,
    /// Empty for less than the grace: re-check after the returned time.
    Waiting(Duration),
    /// Empty for longer than the grace (for this long): say so.
    Overdue(Duration),
}

/// Since when each write Service (namespace, name) has selected no ready pod.
#[derive(Debug, Default)]
pub struct EmptyServices {
    since: BTreeMap<(String, String), Instant>,
}

impl EmptyServices {
    pub fn observe(&mut self, key: (String, String), serving: bool, now: Instant, grace: Duration) -> Verdict {
        if serving {
            self.since.remove(&key);
            return Verdict::Serving;
        }
        let since = *self.since.entry(key).or_insert(now);
        let empty_for = now.saturating_duration_since(since);
        match grace.checked_sub(empty_for) {
            Some(left) if !left.is_zero() => Verdict::Waiting(left),
            _ => Verdict::Overdue(empty_for),
        }
    }

    /// Forget Services no longer watched (opted out, or no longer named).
    pub fn forget(&mut self, key: &(String, String)) {
        self.since.remove(key);
    }
}

/// The overdue write Services of this process, for [`family`].
static OVERDUE: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Record whether the write Service `key` is overdue now.
pub fn set_overdue(key: &(String, String), overdue: bool) {
    let mut set = OVERDUE.lock().unwrap_or_else(PoisonError::into_inner);
    if overdue {
        set.insert(key.clone());
    } else {
        set.remove(key);
    }
}

/// [`metric::WEBHOOK_LEADER_SERVICE_EMPTY`]: 1 for each overdue write Service.
pub fn family() -> Family {
    let mut family = Family::new(
        metric::WEBHOOK_LEADER_SERVICE_EMPTY,
        "Write Services that have selected no ready pod for longer than a failover (1 each).",
        Kind::Gauge,
    );
    let set = OVERDUE.lock().unwrap_or_else(PoisonError::into_inner);
    family.samples = set
        .iter()
        .map(|(ns, svc)| Sample {
            suffix: "",
            labels: vec![("namespace", ns.clone()), ("service", svc.clone())],
            value: 1.0,
        })
        .collect();
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_write_service_is_overdue_only_after_the_grace_and_serving_resets_it() {
        let mut empty = EmptyServices::default();
        let key = ("dir".to_string(), "ldap-primary".to_string());
        let (t0, grace) = (Instant::now(), Duration::from_secs(30));
        assert_eq!(empty.observe(key.clone(), false, t0, grace), Verdict::Waiting(grace));
        let later = t0 + Duration::from_secs(20);
        assert_eq!(empty.observe(key.clone(), false, later, grace), Verdict::Waiting(Duration::from_secs(10)));
        let overdue = t0 + Duration::from_secs(31);
        assert_eq!(empty.observe(key.clone(), false, overdue, grace), Verdict::Overdue(Duration::from_secs(31)));
        assert_eq!(empty.observe(key.clone(), true, overdue, grace), Verdict::Serving);
        assert_eq!(empty.observe(key, false, overdue, grace), Verdict::Waiting(grace), "a new outage starts anew");
    }

    #[test]
    fn grace_is_three_lease_durations_but_at_least_the_minimum() {
        assert_eq!(failover_grace(None), MIN_GRACE);
        let annotations = BTreeMap::from([(contract::ANNOTATION_LEASE_DURATION.to_string(), "15".to_string())]);
        assert_eq!(failover_grace(Some(&annotations)), Duration::from_secs(45));
    }

    #[test]
    fn overdue_services_are_a_gauge_per_service() {
        let key = ("ns-metric-test".to_string(), "rw".to_string());
        set_overdue(&key, true);
        let rendered = ldap_elector_contract::prometheus::render(&[family()]);
        assert!(rendered.contains(&format!(
            "{}{{namespace=\"ns-metric-test\",service=\"rw\"}} 1",
            metric::WEBHOOK_LEADER_SERVICE_EMPTY
        )));
        set_overdue(&key, false);
        assert!(!ldap_elector_contract::prometheus::render(&[family()]).contains("ns-metric-test"));
    }
}

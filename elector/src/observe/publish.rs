//! Publishing this pod's health and contextCSN as pod annotations ([`ANNOTATION_HEALTH`],
//! [`ANNOTATION_CONTEXT_CSN`]) for `ldap-elector status` and switchover checks.
//!
//! A task of its own, off the election loop: it follows the same health and contextCSN
//! channels as the loop (its own receivers, so neither marks the other's news as seen) and
//! writes a JSON merge patch of just these two annotations, only when they changed. A health
//! change goes out at once; a contextCSN that moves under write load at most once per
//! [`MIN_INTERVAL`]. The merge patch touches neither the role label nor the term annotation;
//! it does change the pod's resourceVersion, which guards the very first label write of a pod
//! (`labels::role_patch` before a term exists) — that write then fails as "fenced" and is
//! retried with a fresh read, as after any concurrent write.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Moment;
use ldap_elector_contract::{ANNOTATION_CONTEXT_CSN, ANNOTATION_HEALTH, HEALTH_HEALTHY};

/// At most one contextCSN-only patch per this interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(3);
/// Timeout of each patch; a failed one is retried after this too.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// What this pod should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub health: String,
    pub csn: String,
}

impl Published {
    /// The annotation values for a health verdict and the contextCSN values.
    pub fn new(healthy: bool, csn: &[String]) -> Self {
        let health = if healthy {
            HEALTH_HEALTHY.to_string()
        } else {
            "unhealthy: the health check of the local slapd fails (see the elector log)".to_string()
        };
        Published { health, csn: csn.join(" ") }
    }

    /// The merge patch that sets these annotations (an empty contextCSN removes it).
    pub fn patch(&self) -> serde_json::Value {
        let csn = if self.csn.is_empty() { serde_json::Value::Null } else { self.csn.clone().into() };
        serde_json::json!({"metadata": {"annotations": {ANNOTATION_HEALTH: self.health, ANNOTATION_CONTEXT_CSN: csn}}})
    }

    /// What a pod's annotations show now.
    pub fn of(annotations: Option<&BTreeMap<String, String>>) -> Option<Self> {
        let a = annotations?;
        Some(Published {
            health: a.get(ANNOTATION_HEALTH)?.clone(),
            csn: a.get(ANNOTATION_CONTEXT_CSN).cloned().unwrap_or_default(),
        })
    }
}

/// The publisher's next step (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Up to date: wait for news.
    Idle,
    /// Patch now.
    Patch,
    /// Changed, but rate-limited: patch at this moment (or on a health change before).
    At(Moment),
}

/// Whether to patch now: never when nothing changed, at once when the health changed (or
/// nothing was published yet), otherwise not before `last_patch + MIN_INTERVAL`.
pub fn plan(desired: &Published, published: Option<&Published>, last_patch: Option<Moment>, now: Moment) -> Plan {
    match published {
        Some(p) if p == desired => Plan::Idle,
        Some(p) if p.health == desired.health => match last_patch.map(|t| t + MIN_INTERVAL) {
            Some(due) if now < due => Plan::At(due),
            _ => Plan::Patch,
        },
        _ => Plan::Patch,
    }
}

/// Keeps this pod's annotations current until `cancel`.
pub async fn run(
    pods: Api<Pod>,
    pod: String,
    mut healthy: watch::Receiver<bool>,
    mut csn: watch::Receiver<Vec<String>>,
    cancel: CancellationToken,
) {
    // What the pod shows; unknown until read (a restarted elector may find its old values).
    let mut published = match tokio::time::timeout(API_TIMEOUT, pods.get_opt(&pod)).await {
        Ok(Ok(Some(p))) => Published::of(p.metadata.annotations.as_ref()),
        _ => None,
    };
    let mut last_patch: Option<Moment> = None;
    let mut failures = 0u32;
    loop {
        let desired = Published::new(*healthy.borrow_and_update(), &csn.borrow_and_update());
        let now = Moment::now();
        let wake = match plan(&desired, published.as_ref(), last_patch, now) {
            Plan::Idle => None,
            Plan::At(t) => Some(t.since(now)),
            Plan::Patch => {
                last_patch = Some(now);
                let patch = Patch::Merge(desired.patch());
                match tokio::time::timeout(API_TIMEOUT, pods.patch(&pod, &PatchParams::default(), &patch)).await {
                    Ok(Ok(_)) => {
                        failures = 0;
                        tracing::debug!(pod = %pod, health = %desired.health, context_csn = %desired.csn, "published health and contextCSN");
                        published = Some(desired);
                        None
                    }
                    result => {
                        failures = failures.saturating_add(1);
                        let error = match result {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("timed out after {API_TIMEOUT:?}"),
                        };
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(pod = %pod, failures, error = %error, "publishing health and contextCSN on the pod failed (retrying)");
                        }
                        published = None; // unknown now: the next attempt is not rate-limited away
                        Some(MIN_INTERVAL)
                    }
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            Ok(()) = healthy.changed() => {}
            Ok(()) = csn.changed() => {}
            _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Moment {
        Moment::ZERO + Duration::from_secs_f64(secs)
    }

    #[test]
    fn values_and_patch() {
        let p = Published::new(true, &["a#0#001#0".into(), "b#0#002#0".into()]);
        assert_eq!(p.health, HEALTH_HEALTHY);
        assert_eq!(p.patch()["metadata"]["annotations"][ANNOTATION_CONTEXT_CSN], "a#0#001#0 b#0#002#0");
        let sick = Published::new(false, &[]);
        assert!(sick.health.starts_with("unhealthy: "));
        assert!(sick.patch()["metadata"]["annotations"][ANNOTATION_CONTEXT_CSN].is_null());
        let mut a = BTreeMap::new();
        assert_eq!(Published::of(Some(&a)), None);
        a.insert(ANNOTATION_HEALTH.to_string(), HEALTH_HEALTHY.to_string());
        assert_eq!(Published::of(Some(&a)), Some(Published { health: HEALTH_HEALTHY.into(), csn: String::new() }));
    }

    #[test]
    fn only_changes_are_patched() {
        let d = Published::new(true, &["x".into()]);
        assert_eq!(plan(&d, Some(&d.clone()), Some(at(0.0)), at(100.0)), Plan::Idle);
        assert_eq!(plan(&d, None, None, at(0.0)), Plan::Patch);
    }

    #[test]
    fn a_flapping_csn_costs_at_most_one_patch_per_interval() {
        let old = Published::new(true, &["1".into()]);
        let new = Published::new(true, &["2".into()]);
        assert_eq!(plan(&new, Some(&old), Some(at(10.0)), at(11.0)), Plan::At(at(10.0) + MIN_INTERVAL));
        assert_eq!(plan(&new, Some(&old), Some(at(10.0)), at(10.0) + MIN_INTERVAL), Plan::Patch);
        assert_eq!(plan(&new, Some(&old), None, at(0.0)), Plan::Patch);
    }

    #[test]
    fn a_health_change_goes_out_at_once() {
        let old = Published::new(true, &["1".into()]);
        let sick = Published::new(false, &["1".into()]);
        assert_eq!(plan(&sick, Some(&old), Some(at(10.0)), at(10.1)), Plan::Patch);
    }
}

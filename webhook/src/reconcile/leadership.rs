//! Exactly one webhook replica reconciles at a time (issue 17, item 2). The replicas compete
//! for a Lease in the webhook's namespace, [`lease_name`]; only its holder reconciles. Before,
//! both replicas wrote the same objects on every opt-in and one of them logged `reconcile
//! failed … Conflict` each time.
//!
//! The election is deliberately simpler than the elector's (`elector/src/election`): nothing
//! here guards data. Every write of the reconciler is a server-side apply or a CAS update,
//! so two replicas that briefly both believe they lead (a partition, a paused process) only
//! repeat each other's writes. What matters is that in the steady state one replica writes,
//! that a dead holder is replaced within a lease duration, and that a replica stopping
//! gracefully hands over at once (it clears the holder).
//!
//! Expiry is judged on the local clock: a holder counts as gone once this replica has seen
//! the Lease unchanged (same resourceVersion) for [`LEASE_DURATION`]. A holder counts
//! itself as leading for [`RENEW_DEADLINE`] after it SENT its last successful write.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::args::ReconcilerLease;

/// How long a holder that stopped renewing keeps the Lease (as seen by the others).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long after its last successful renew a holder still reconciles.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the holder renews and the others look.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Bound of one Lease request.
const API_TIMEOUT: Duration = Duration::from_secs(3);

/// The Lease the replicas of webhook configuration `webhook_config` compete for.
pub fn lease_name(webhook_config: &str) -> String {
    format!("{webhook_config}-reconciler")
}

/// What a replica does with the Lease it read.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// It holds the Lease: write it again (renew).
    Renew,
    /// Nobody holds it, or the holder has not renewed for a lease duration: take it.
    Acquire,
    /// Another replica holds it.
    Wait,
}

/// The pure decision: `holder` of the Lease as read, `me`, and how long this replica has
/// seen the Lease unchanged.
pub fn step(holder: Option<&str>, me: &str, unchanged_for: Duration) -> Step {
    match holder.filter(|h| !h.is_empty()) {
        Some(h) if h == me => Step::Renew,
        None => Step::Acquire,
        Some(_) if unchanged_for >= LEASE_DURATION => Step::Acquire,
        Some(_) => Step::Wait,
    }
}

/// `lease` (or a new one) written by `me`: held now; a new holder counts a transition.
fn held_by(lease: Option<&Lease>, name: &str, namespace: &str, me: &str) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let mut next = lease.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
        spec: None,
    });
    let spec = next.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(me) {
        spec.holder_identity = Some(me.into());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.lease_duration_seconds = Some(i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(now);
    next
}

/// Whether this replica reconciles now; follows the Lease until shutdown.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// When the last successful write of the Lease was sent, while this replica holds it;
    /// `None`: a reconciler alone, without a Lease.
    renewed: Option<watch::Receiver<Option<Instant>>>,
}

impl Leadership {
    /// A reconciler that always leads, without a Lease (`run_reconciler`: tests, tools).
    pub fn alone() -> Self {
        Leadership { renewed: None }
    }

    /// Competes for `lease` until `shutdown`, then gives it back; the task ends after that.
    pub fn start(client: Client, lease: &ReconcilerLease, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, renewed) = watch::channel(None);
        let api: Api<Lease> = Api::namespaced(client, &lease.namespace);
        let ReconcilerLease { namespace, name, identity: me } = lease.clone();
        let task = tokio::spawn(async move {
            info!(lease = %name, identity = %me, "competing for the reconciler Lease");
            let mut seen: Option<(String, Instant)> = None;
            loop {
                let sent = Instant::now();
                match tokio::time::timeout(API_TIMEOUT, compete(&api, &name, &namespace, &me, &mut seen)).await {
                    Ok(Ok(true)) => {
                        if tx.borrow().is_none() {
                            info!(lease = %name, identity = %me, "took the reconciler Lease: reconciling");
                        }
                        tx.send_replace(Some(sent));
                    }
                    Ok(Ok(false)) => drop_leadership(&tx, &name, "another replica holds the reconciler Lease"),
                    Ok(Err(e)) => debug!(lease = %name, error = %e, "reconciler Lease request failed"),
                    Err(_) => debug!(lease = %name, "reconciler Lease request timed out"),
                }
                if tx.borrow().is_some_and(|t| t.elapsed() >= RENEW_DEADLINE) {
                    drop_leadership(&tx, &name, "could not renew the reconciler Lease in time");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(RETRY_PERIOD) => {}
                }
            }
            if tx.send_replace(None).is_some() {
                release(&api, &name, &me).await;
            }
        });
        (Leadership { renewed: Some(renewed) }, task)
    }

    /// Whether this replica may reconcile now.
    pub fn leading(&self) -> bool {
        self.renewed.as_ref().is_none_or(|r| r.borrow().is_some_and(|t| t.elapsed() < RENEW_DEADLINE))
    }

    /// Resolves each time this replica starts leading (for a full resync then); never for a
    /// reconciler alone.
    pub async fn gained(&mut self) {
        let Some(renewed) = self.renewed.as_mut() else { return std::future::pending().await };
        loop {
            let was = renewed.borrow_and_update().is_some();
            if renewed.changed().await.is_err() {
                return std::future::pending().await;
            }
            if !was && renewed.borrow().is_some() {
                return;
            }
        }
    }
}

fn drop_leadership(tx: &watch::Sender<Option<Instant>>, lease: &str, why: &str) {
    if tx.send_replace(None).is_some() {
        warn!(lease, "{why}: no longer reconciling");
    }
}

/// One round: read the Lease, decide, write if needed. `Ok(true)`: held after a write that
/// was sent now.
async fn compete(
    api: &Api<Lease>,
    name: &str,
    namespace: &str,
    me: &str,
    seen: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(name).await? else {
        api.create(&PostParams::default(), &held_by(None, name, namespace, me)).await?;
        return Ok(true);
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let since = match seen.take() {
        Some((v, since)) if v == version => since,
        _ => Instant::now(),
    };
    *seen = Some((version, since));
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
    match step(holder, me, since.elapsed()) {
        Step::Wait => Ok(false),
        Step::Renew | Step::Acquire => {
            // CAS on the resourceVersion read: a conflict means someone else wrote first.
            match api.replace(name, &PostParams::default(), &held_by(Some(&lease), name, namespace, me)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Clears the holder if it is still `me`, so another replica takes over at once.
async fn release(api: &Api<Lease>, name: &str, me: &str) {
    let cleared = async {
        let mut lease = api.get(name).await?;
        let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(me)) else {
            return Ok::<_, kube::Error>(());
        };
        spec.holder_identity = None;
        api.replace(name, &PostParams::default(), &lease).await.map(drop)
    };
    match tokio::time::timeout(API_TIMEOUT, cleared).await {
        Ok(Ok(())) => info!(lease = name, "gave the reconciler Lease back"),
        Ok(Err(e)) => warn!(lease = name, error = %e, "could not give the reconciler Lease back (it expires)"),
        Err(_) => warn!(lease = name, "giving the reconciler Lease back timed out (it expires)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_renews_a_free_lease_is_taken_and_a_live_holder_is_left_alone() {
        assert_eq!(step(Some("a"), "a", Duration::ZERO), Step::Renew);
        assert_eq!(step(None, "a", Duration::ZERO), Step::Acquire);
        assert_eq!(step(Some(""), "a", Duration::ZERO), Step::Acquire);
        assert_eq!(step(Some("b"), "a", LEASE_DURATION - Duration::from_millis(1)), Step::Wait);
        assert_eq!(step(Some("b"), "a", LEASE_DURATION), Step::Acquire);
    }

    #[test]
    fn a_new_holder_counts_a_transition_a_renew_does_not() {
        let taken = held_by(None, "r", "ns", "a");
        let spec = taken.spec.clone().unwrap();
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some("a"), Some(1)));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let renewed = held_by(Some(&taken), "r", "ns", "a").spec.unwrap();
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, spec.acquire_time);
        let taken_over = held_by(Some(&taken), "r", "ns", "b").spec.unwrap();
        assert_eq!((taken_over.holder_identity.as_deref(), taken_over.lease_transitions), (Some("b"), Some(2)));
    }

    #[test]
    fn the_deadline_ends_leadership_before_the_others_may_take_over() {
        // A holder stops reconciling before anyone else may acquire (they wait a lease
        // duration from the last change they saw, which is no earlier than our send).
        const { assert!(RENEW_DEADLINE.as_secs() + RETRY_PERIOD.as_secs() < LEASE_DURATION.as_secs()) };
    }

    #[test]
    fn leadership_counts_from_the_send_and_ends_at_the_deadline() {
        let (tx, renewed) = watch::channel(None);
        let leadership = Leadership { renewed: Some(renewed) };
        assert!(!leadership.leading());
        tx.send_replace(Some(Instant::now()));
        assert!(leadership.leading());
        tx.send_replace(Instant::now().checked_sub(RENEW_DEADLINE));
        assert!(!leadership.leading());
        assert!(Leadership::alone().leading());
    }
}

//! The leader's side of a manual switchover (I/O; the decisions are the pure
//! `switchover::{step, verdict, handed_over, refused}`). A child module of `run`, so the
//! election loop only gains one call.

use super::*;
use crate::election::switchover::{self, Refusal};

impl Elector {
    /// A request for `target` is pending and this leader is in office, renewing in time: check
    /// the target again with the CLI's rule and hand over or refuse.
    pub(super) async fn consider_switchover(&mut self, target: &str) {
        let (Some(base), Some(leading)) = (self.current.clone(), self.leading) else { return };
        // Bounded so that the check ends before the next renew is due (`step` runs it just
        // after a renew); a slow API postpones the request, never the renew.
        let budget = (leading.renewed_at + self.cfg.timing.renew_period).since(Moment::now()).min(self.cfg.api_timeout);
        let member = ldap_elector_contract::split_pod_name(target).is_some_and(|(set, _)| set == self.cfg.statefulset);
        let pod = if member {
            match tokio::time::timeout(budget, self.pods.get_opt(target)).await {
                Ok(Ok(pod)) => pod,
                // Beyond the Role's resourceNames (an ordinal past the replica count): no such pod of ours.
                Ok(Err(kube::Error::Api(e))) if e.code == 403 => None,
                Ok(Err(e)) => return self.failed("reading the switchover target's pod", &e),
                Err(_) => return self.failed("reading the switchover target's pod", &"timed out"),
            }
        } else {
            None
        };
        let facts = switchover::target_facts(target, pod.as_ref(), &base, &self.cfg.statefulset);
        let me = switchover::Leader { holder: Some(self.cfg.identity.clone()), csn: self.my_csn.clone() };
        match switchover::verdict(&facts, &me, &self.cfg.statefulset) {
            Ok(()) => self.hand_over(target, pod.and_then(|p| p.metadata.uid)).await,
            Err(refusal) => {
                let budget = (leading.renewed_at + self.cfg.timing.renew_period).since(Moment::now());
                self.refuse_switchover(&base, target, &refusal, budget.min(self.cfg.api_timeout)).await
            }
        }
    }

    /// Graceful handover with the fencing of a release: demote and fence first, then give the
    /// Lease to `target` in the same term (CAS); the target acquires it at once (term + 1).
    async fn hand_over(&mut self, target: &str, target_uid: Option<String>) {
        let Some(term) = self.leading.map(|l| l.term) else { return };
        tracing::info!(pod = %self.cfg.identity, term, target, "switchover: stepping down to hand over");
        if !self.step_down("Switchover").await {
            // The Lease is kept until slapd confirms the fence (then released) or it expires.
            tracing::error!(pod = %self.cfg.identity, target, "switchover: slapd not confirmed fenced; not handing over");
            return;
        }
        // Fenced now: the contextCSN is final; the target takes over once it holds it.
        if let Ok(last) = self.cfg.health_check.check_detailed(self.cfg.api_timeout).await {
            if !last.is_empty() {
                self.my_csn = last;
            }
        }
        for _ in 0..2 {
            let Some(base) = self.current.clone() else { return };
            let seen = lease::observe(&base, Moment::now());
            let still_ours = seen.holder.as_deref() == Some(self.cfg.identity.as_str()) && seen.transitions == term;
            if !still_ours || switchover::requested(&base) != Some(target) {
                // Taken, or the request was withdrawn meanwhile: the election goes on as usual
                // (a Lease still naming this pod is re-acquired in a new term).
                tracing::warn!(pod = %self.cfg.identity, target, "switchover: the Lease or the request changed while stepping down; not handing over");
                return;
            }
            let next = switchover::handed_over(&base, target, target_uid.as_deref(), &self.my_csn);
            match self.lease.write(&next, self.cfg.api_timeout).await {
                Ok(written) => {
                    tracing::info!(pod = %self.cfg.identity, term, target, reason = "Switchover", "handed the Lease over");
                    self.accept_lease(written);
                    self.succeeded();
                    return;
                }
                Err(LeaseError::Conflict) => self.reread().await,
                Err(e) => return self.failed("handing the Lease over (it expires if the write did not land)", &e),
            }
        }
    }

    /// Clears the request and records why (CAS; a conflict re-reads and decides again).
    async fn refuse_switchover(&mut self, base: &Lease, target: &str, refusal: &Refusal, timeout: Duration) {
        tracing::warn!(pod = %self.cfg.identity, target, reason = %refusal, "switchover refused");
        match self.lease.write(&switchover::refused(base, target, refusal), timeout).await {
            Ok(written) => {
                self.accept_lease(written);
                self.succeeded();
            }
            Err(LeaseError::Conflict) => self.reread().await,
            Err(e) => self.failed("recording the switchover refusal", &e),
        }
    }
}

//! Manual switchover as the leader carries it out: the real `switchover::step` says when to
//! look at a request, the real `switchover::verdict` judges the target; a hand-over fences
//! first and then writes the Lease to the target (released only after a confirmed fence,
//! like a release: item 1). The request is written by an operator (FaultKind::Switchover).

use ldap_elector::election::switchover::{requested, step, verdict, Leader, Step, Target as Facts};
use ldap_elector_contract::HEALTH_HEALTHY;

use super::*;

/// The StatefulSet of the pods `ldap-server-<i>`.
const STATEFULSET: &str = "ldap-server";

impl Sim {
    /// The switchover request in the Lease as `c` last saw it (kept by its writes).
    pub(crate) fn request_seen(&self, c: usize) -> Option<String> {
        self.cands[c].known.as_ref().and_then(requested).map(String::from)
    }

    /// In a leader's steady state: hand over or refuse a pending request. True if it acted.
    pub(crate) fn consider_switchover(&mut self, c: usize, action: &Action) -> bool {
        let cand = &self.cands[c];
        let Step::Consider(target) = step(action, cand.in_office, cand.stopping, cand.known.as_ref()) else {
            return false;
        };
        let Some((o, rv)) = cand.obs.clone() else { return false };
        let t = self.index_of(&target);
        let facts = Facts {
            name: target.clone(),
            member: t.is_some(),
            exists: t.is_some(),
            ready: t.is_some_and(|t| !self.cands[t].down),
            health: t.map(|t| if self.cands[t].unhealthy == 0 { HEALTH_HEALTHY } else { "unhealthy" }.to_string()),
            csn: t.map(|t| self.cands[t].my_csn.clone()).unwrap_or_default(),
            diverged: None,
            allow_diverged: false,
        };
        let leader = Leader { holder: Some(cand.id.clone()), csn: cand.my_csn.clone() };
        let (id, my_csn) = (cand.id.clone(), cand.my_csn.clone());
        let lease_duration = o.lease_duration;
        match verdict(&facts, &leader, STATEFULSET) {
            Ok(()) => {
                self.stats.handovers += 1;
                self.log(Some(c), format_args!("switchover to {target}: stepping down to hand over"));
                self.stand_down(c);
                let spec = LeaseSpec {
                    holder: Some(target),
                    transitions: o.transitions,
                    lease_duration,
                    csn: Vec::new(), // read after the fence
                    switchover_to: None,
                };
                self.fence(c, Some((rv, spec)));
            }
            Err(refusal) => {
                self.log(Some(c), format_args!("switchover refused: {refusal}"));
                let spec = LeaseSpec {
                    holder: Some(id),
                    transitions: o.transitions,
                    lease_duration,
                    csn: my_csn,
                    switchover_to: None,
                };
                let timeout = self.leader_timeout(c);
                self.call(c, Call::Refuse, Req::Write { expected_rv: rv, spec }, timeout);
            }
        }
        true
    }

    /// FaultKind::Switchover: an operator asks for `target` (a CAS write of the annotation).
    pub(crate) fn request_switchover(&mut self, target: usize) {
        let id = self.cands[target].id.clone();
        let mut next = self.server.lease.clone();
        next.switchover_to = Some(id);
        next.rv = self.server.issued + REVISION_STEP;
        self.server.issued = next.rv;
        self.log(None, format_args!("switchover requested: {next:?}"));
        self.server.lease = next.clone();
        self.notify(&next);
    }
}

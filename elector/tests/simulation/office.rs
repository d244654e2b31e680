//! Taking office (items 6 and 7): after an acquisition the new leader demotes the other pods
//! and labels itself leader with the real `labels::role_patch` (a JSON patch that tests the
//! term annotation as read, applied by the model's API server with `json_patch`), choosing
//! the pods to rewrite by the real `labels::needs_demotion` (current) or by the leader label
//! only (old). Only then is slapd made writable. The label writes run beside the renewals
//! (current) or inline, holding the loop up (old). A deposed leader's write can land late.

use k8s_openapi::api::core::v1::Pod;
use ldap_elector::election::labels::{needs_demotion, role_of, role_patch, term_of};
use ldap_elector_contract::{ROLE_LEADER, ROLE_STANDBY};

use super::*;

/// Back-off before taking office again after a failed step.
const OFFICE_RETRY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    ReadOther(usize),
    PatchOther(usize),
    ReadSelf,
    PatchSelf,
}

#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub(crate) term: i32,
    pub(crate) step: Step,
    pub(crate) pending: u64,
}

/// A pod of the StatefulSet as the API server first has it.
pub(crate) fn new_pod(name: &str) -> Pod {
    let doc = serde_json::json!({"metadata": {"name": name, "resourceVersion": "1"}});
    serde_json::from_value(doc).expect("a pod")
}

impl Sim {
    /// Whether taking office rewrites `pod` (item 6's variant).
    fn rewrites(&self, pod: &Pod, term: i32) -> bool {
        match self.sc.variants.demote {
            Demote::LeaderLabelled => role_of(pod) == Some(ROLE_LEADER),
            Demote::NeedsDemotion => needs_demotion(pod, term),
        }
    }

    /// Whether the loop waits for the office (item 7's variant).
    pub(crate) fn office_blocks(&self, c: usize) -> bool {
        self.sc.variants.office == Office::Inline && self.cands[c].office.is_some()
    }

    pub(crate) fn start_office(&mut self, c: usize) {
        let Some(leading) = self.cands[c].leading else { return };
        if self.cands[c].in_office {
            return;
        }
        self.office_send(c, leading.term, self.next_step(c, None));
    }

    fn next_step(&self, c: usize, after: Option<usize>) -> Step {
        let from = after.map_or(0, |p| p + 1);
        (from..self.cands.len()).find(|&p| p != c).map_or(Step::ReadSelf, Step::ReadOther)
    }

    fn office_send(&mut self, c: usize, term: i32, step: Step) {
        let req = match step {
            Step::ReadOther(p) => Req::PodRead { pod: p },
            Step::ReadSelf => Req::PodRead { pod: c },
            Step::PatchOther(_) | Step::PatchSelf => unreachable!("patches are sent with their pod"),
        };
        self.office_request(c, term, step, req);
    }

    fn office_request(&mut self, c: usize, term: i32, step: Step, req: Req) {
        let pending = self.next_req;
        self.next_req += 1;
        self.cands[c].office = Some(Run { term, step, pending });
        let timeout = self.leader_timeout(c);
        self.send(c, pending, req, timeout);
    }

    /// The office's request `req_id` was answered (`None`: timed out).
    pub(crate) fn office_reply(&mut self, c: usize, reply: Option<Reply>) {
        let Some(run) = self.cands[c].office.take() else { return };
        let leading = self.cands[c].leading;
        if leading.map(|l| l.term) != Some(run.term) {
            return self.step(c);
        }
        match (run.step, reply) {
            (Step::ReadOther(_) | Step::ReadSelf, Some(Reply::Pod(pod)))
                if term_of(&pod).is_some_and(|t| t > run.term) =>
            {
                // The runtime's loop handles it between its calls: at the next idle step.
                self.cands[c].newer_term = term_of(&pod);
                self.step(c);
            }
            (Step::ReadOther(p), Some(Reply::Pod(pod))) => {
                if self.rewrites(&pod, run.term) {
                    let patch = role_patch(&pod, ROLE_STANDBY, run.term);
                    self.office_request(c, run.term, Step::PatchOther(p), Req::PodPatch { pod: p, patch });
                } else {
                    self.office_send(c, run.term, self.next_step(c, Some(p)));
                }
            }
            (Step::PatchOther(p), Some(Reply::Patched)) => self.office_send(c, run.term, self.next_step(c, Some(p))),
            (Step::ReadSelf, Some(Reply::Pod(pod))) => {
                if role_of(&pod) == Some(ROLE_LEADER) && term_of(&pod) == Some(run.term) {
                    return self.take_office(c);
                }
                let patch = role_patch(&pod, ROLE_LEADER, run.term);
                self.office_request(c, run.term, Step::PatchSelf, Req::PodPatch { pod: c, patch });
            }
            (Step::PatchSelf, Some(Reply::Patched)) => self.take_office(c),
            (step, reply) => {
                self.stats.office_retries += 1;
                self.log(Some(c), format_args!("office: {step:?} failed ({reply:?}); retrying"));
                self.after_local(c, OFFICE_RETRY, Msg::OfficeRetry);
                self.step(c);
            }
        }
    }

    /// A pod carries a newer term (the Lease was recreated): like the runtime's
    /// `LabelError::NewerTerm`, remember it, step down and release (after the fence).
    pub(crate) fn newer_term(&mut self, c: usize, newer: i32) {
        self.log(Some(c), format_args!("office: a pod carries term {newer}, newer than ours: releasing"));
        self.cands[c].term_floor = self.cands[c].term_floor.max(newer);
        if self.cands[c].leading.is_none() {
            return self.step(c);
        }
        self.stats.released += 1;
        self.stand_down(c);
        let Some((o, rv)) = self.cands[c].obs.clone() else { return self.step(c) };
        let spec = LeaseSpec {
            holder: None,
            transitions: o.transitions,
            lease_duration: o.lease_duration,
            csn: Vec::new(),
            switchover_to: self.request_seen(c),
        };
        self.fence(c, Some((rv, spec)));
    }

    /// Labelled: the fence keeper lifts the fence, unless the renew deadline passed.
    fn take_office(&mut self, c: usize) {
        let Some(leading) = self.cands[c].leading else { return };
        let deadline = leading.renewed_at + self.sc.timing.renew_deadline;
        self.cands[c].in_office = true;
        self.log(Some(c), format_args!("took office, term {}", leading.term));
        if self.local(c) < deadline {
            let became = !self.cands[c].writable;
            self.unfence(c, leading.renewed_at);
            if became {
                self.check_no_lost_writes(c);
            }
        }
        self.step(c);
    }

    /// slapd writable until the renew deadline; the watchdog armed (runtime contract item 4).
    pub(crate) fn unfence(&mut self, c: usize, renewed_at: Moment) {
        let deadline = renewed_at + self.sc.timing.renew_deadline;
        let cand = &mut self.cands[c];
        cand.writable = true;
        cand.watchdog_at = deadline + FENCE_BUDGET;
        cand.guard.command(Command::Arm(deadline));
        cand.wanted = ldap_elector::slapd::fence::WantedFence::Leader { until: deadline };
        cand.paused_since_feed = false;
    }

    /// The API server's side of a pod request.
    pub(crate) fn pod_request(&mut self, req: Req) -> Reply {
        match req {
            Req::PodRead { pod } => Reply::Pod(Box::new(self.server.pods[pod].clone())),
            Req::PodPatch { pod, patch } => {
                let mut doc = serde_json::to_value(&self.server.pods[pod]).expect("a pod serializes");
                if json_patch::patch(&mut doc, &patch).is_err() {
                    return Reply::Invalid; // 422: a `test` failed
                }
                doc["metadata"]["resourceVersion"] = serde_json::json!(self.server.issued.to_string());
                self.server.issued += REVISION_STEP;
                self.server.pods[pod] = serde_json::from_value(doc).expect("a patched pod");
                let p = &self.server.pods[pod];
                let text = format!("pod {pod}: {:?}, term {:?}", role_of(p), term_of(p));
                self.log(None, text);
                Reply::Patched
            }
            _ => unreachable!("not a pod request"),
        }
    }
}

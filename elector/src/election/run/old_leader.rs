//! The runtime side of catch-up gating after an expiry (issue 15, item 4; the decision is
//! the pure `catch_up::gate`): while a follower could take over from a holder whose Lease
//! expired, a task reads that holder's slapd's current contextCSN over the `--audit-peers`
//! URL and bind, every `READ_EVERY`, until the Lease changes. When the previous leader is
//! unknown (a recreated Lease), it reads every other member's slapd. A child module of `run`.

use super::*;
use crate::election::catch_up::{self, Gate, OldLeader, Policy, Previous, Uncovered};
use crate::slapd::ldap::Probe as _;

/// How often the old leader's slapd is asked, and the timeout of one read.
const READ_EVERY: Duration = Duration::from_millis(250);
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The reader of one expired holder's slapd, for one term; dropping it stops the task.
pub(super) struct OldLeaderReader {
    holder: String,
    term: i32,
    state: watch::Receiver<OldLeader>,
    _stop: tokio_util::sync::DropGuard,
}

impl Elector {
    /// The catch-up verdict of this (healthy, following) pod now; remembers an uncovered
    /// promotion for the acquire that follows.
    pub(super) fn catch_up_gate(&mut self, now: Moment, published: &[String]) -> Gate {
        let (identity, uid) = (self.cfg.identity.clone(), self.cfg.pod_uid.clone());
        let me = Me { identity: &identity, uid: uid.as_deref(), eligible: true, stopping: false, leading: None };
        let observed = self.observed.clone(); // `previous` borrows from it while the reader changes
        let previous = catch_up::previous(observed.as_ref(), &me, self.term_floor, now);
        let old = self.old_leader_state(previous);
        let grace = catch_up::grace_for(self.cfg.catch_up_grace, self.seeded());
        let policy = Policy { grace, verify: self.cfg.catch_up_verify, timing: self.cfg.timing };
        let gate = catch_up::gate(&self.my_csn, published, observed.as_ref(), previous, &old, now, &policy);
        self.uncovered = match gate {
            Gate::PromoteUncovered(u) => previous.map(|p| (p.name().to_string(), u)),
            _ => None,
        };
        gate
    }

    /// The slapd servers that may hold the previous leader's writes: its own, or, when it is
    /// unknown, every other member's (of the Mirror-Mode pair: the ordinals below two, or
    /// below this pod's own + 1; `labels::member_count` without an API read).
    fn previous_servers(&self, previous: Previous<'_>) -> Vec<String> {
        match previous {
            Previous::Expired(holder) => vec![holder.to_string()],
            Previous::Unknown => {
                let own = ldap_elector_contract::split_pod_name(&self.cfg.identity).map(|(_, o)| o);
                let (members, _) = crate::election::labels::member_count(0, own);
                (0..members)
                    .map(|i| ldap_elector_contract::pod_name(&self.cfg.statefulset, i))
                    .filter(|name| *name != self.cfg.identity)
                    .collect()
            }
        }
    }

    /// What is known of the previous leader's slapd (starting or replacing the reader as
    /// needed); for an unknown one, of every other member's.
    fn old_leader_state(&mut self, previous: Option<Previous<'_>>) -> OldLeader {
        let Some(previous) = previous else {
            self.old_leader = None;
            return OldLeader::NoAnswer;
        };
        let holder = previous.name().to_string();
        let term = self.observed.as_ref().map_or(0, |o| o.transitions);
        if let Some(r) = self.old_leader.as_ref().filter(|r| r.holder == holder && r.term == term) {
            return r.state.borrow().clone();
        }
        self.old_leader = None;
        let Some(settings) = &self.cfg.audit else { return OldLeader::NotConfigured };
        let checks: Result<Vec<_>, String> = self
            .previous_servers(previous)
            .iter()
            .map(|pod| {
                let url = settings.peers.url(pod).ok_or_else(|| format!("no peer URL names {pod}"))?;
                crate::divergence::auditor::peer_check(&url, &settings.local.base, &settings.creds, &settings.tls)
            })
            .collect();
        let checks = match checks {
            Ok(checks) => checks,
            Err(e) => {
                tracing::warn!(pod = %self.cfg.identity, holder, error = %e, "cannot reach the old leader's slapd: catch-up judged against its published contextCSN");
                return OldLeader::NotConfigured;
            }
        };
        let (tx, state) = watch::channel(OldLeader::NoAnswer);
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        let who = holder.clone();
        tokio::spawn(async move {
            // Each server's last answer; once it answered, its contextCSN stays the target
            // (it only grows). Known when every one answered.
            let mut answers: Vec<Option<Vec<String>>> = vec![None; checks.len()];
            loop {
                for (check, answer) in checks.iter().zip(answers.iter_mut()) {
                    match check.probe(READ_TIMEOUT).await {
                        Ok(status) => *answer = Some(status.context_csn),
                        Err(e) => tracing::debug!(holder = %who, error = %e, "the old leader's slapd does not answer"),
                    }
                }
                if answers.iter().all(Option::is_some) {
                    let next = OldLeader::Current(answers.iter().flatten().flatten().cloned().collect());
                    tx.send_if_modified(|s| std::mem::replace(s, next.clone()) != next);
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(READ_EVERY) => {}
                }
            }
        });
        tracing::info!(pod = %self.cfg.identity, holder, term, "the Lease is free without a release: reading the previous leader's current contextCSN");
        self.old_leader = Some(OldLeaderReader { holder, term, state, _stop: stop.drop_guard() });
        OldLeader::NoAnswer
    }

    /// After an acquisition: records a promotion that left a window uncovered.
    pub(super) fn record_uncovered(&mut self, term: i32, uncovered: Option<(String, Uncovered)>) {
        self.old_leader = None;
        if let Some((previous, u)) = uncovered {
            tracing::warn!(pod = %self.cfg.identity, term, previous, reason = u.reason.label(), seconds = u.seconds,
                "took over without holding the old leader's current contextCSN: the uncovered window is recorded");
            self.ops.promoted_uncovered(term, &previous, &u);
        }
    }
}

/// The Lease annotation recording an uncovered promotion into `term` (`seconds` is null
/// when the contextCSNs could not be compared).
pub(super) fn uncovered_annotation(term: i32, previous: &str, u: &Uncovered) -> String {
    let seconds = if u.seconds.is_finite() {
        serde_json::json!((u.seconds * 1000.0).round() / 1000.0)
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({"term": term, "previous": previous, "reason": u.reason.label(), "seconds": seconds}).to_string()
}

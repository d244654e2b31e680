//! Taking office (steps 2–4 of a term) off the election loop's critical path: the label
//! writes run in a task and the fence is asked for without waiting, so renewals go on while
//! a slow API server, a stalled label patch or a slow role-change hook hold the new leader
//! up (issue 15, item 7: before, up to five serial calls of 1–1.5 s ran inside the renew
//! deadline and no renew was sent meanwhile). A child module of `run`.

use super::*;
use crate::election::labels::LabelError;
use tokio::task::JoinHandle;

/// How often the loop looks at a pending office step.
pub(super) const OFFICE_POLL: Duration = Duration::from_millis(50);

/// Where taking office in `term` stands.
pub(super) enum Office {
    /// Demoting the other pods and labelling this one leader.
    Labelling { term: i32, task: JoinHandle<Result<Vec<String>, LabelError>> },
    /// Labelled; the fence keeper lifts the write fence (and runs the hook) since `since`.
    Unfencing { term: i32, since: Moment, demoted: Vec<String> },
}

impl Elector {
    /// One step of taking office, never waiting on the API or on slapd.
    pub(super) async fn advance_office(&mut self) {
        let Some(leading) = self.leading else { return self.abandon_office().await };
        let deadline = leading.renewed_at + self.cfg.timing.renew_deadline;
        match self.office.take() {
            Some(Office::Labelling { term, task }) if term == leading.term && !task.is_finished() => {
                self.office = Some(Office::Labelling { term, task });
            }
            Some(Office::Labelling { term, task }) if term == leading.term => match task.await {
                Ok(Ok(demoted)) => {
                    // Writable only until the deadline of the latest renew (`renew` extends it).
                    self.fence.request(WantedFence::Leader { until: deadline });
                    self.office = Some(Office::Unfencing { term, since: Moment::now(), demoted });
                }
                Ok(Err(LabelError::NewerTerm { pod, term: newer })) => {
                    // The terms restarted (a recreated Lease): this term can never label the
                    // pods. Still fenced; give the Lease back and take it again above `newer`.
                    tracing::warn!(pod = %self.cfg.identity, term, newer, newer_on = %pod,
                        "a pod carries a newer term than ours (the Lease was recreated): releasing to take a term above it");
                    self.term_floor = self.term_floor.max(newer);
                    if self.step_down("NewerTerm").await {
                        self.release().await;
                    }
                }
                Ok(Err(e)) => self.failed("labelling the pods for the new term", &e),
                Err(e) => self.failed("labelling the pods for the new term", &e),
            },
            Some(Office::Unfencing { term, since, demoted }) if term == leading.term => {
                if self.fence.is_unfenced() {
                    self.ops.took_office(term, true);
                    self.in_office = true;
                    if let Some(link) = &self.divergence {
                        link.office.send_replace(Some(term));
                    }
                    self.succeeded();
                    tracing::info!(pod = %self.cfg.identity, term, demoted = ?demoted, role = ROLE_LEADER, "took office: labelled leader");
                } else if Moment::now().since(since) >= self.cfg.timing.renew_deadline {
                    // As long as before, when the lift had the whole renew deadline.
                    self.ops.took_office(term, false);
                    tracing::error!(pod = %self.cfg.identity, term, "could not lift the write fence; stepping down");
                    if self.step_down("HookFailed").await {
                        self.release().await;
                    }
                } else {
                    self.office = Some(Office::Unfencing { term, since, demoted });
                }
            }
            stale => {
                if let Some(Office::Labelling { task, .. }) = stale {
                    task.abort();
                }
                let labels = self.labels.clone();
                let term = leading.term;
                let task = tokio::spawn(async move {
                    let demoted = labels.demote_others(term).await?;
                    labels.label_self(ROLE_LEADER, term).await?;
                    Ok(demoted)
                });
                self.office = Some(Office::Labelling { term, task });
            }
        }
    }

    /// Forgets a pending office step (stepping down, or a new term): a label task still
    /// running is stopped before the caller writes its own labels.
    pub(super) async fn abandon_office(&mut self) {
        if let Some(Office::Labelling { task, .. }) = self.office.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

//! What the on-call engineer sees of the election: the elector's Prometheus metrics and its
//! Kubernetes Events. The election loop calls one [`Telemetry`] hook per transition; each hook
//! updates atomics and queues Events, never waits. Pure parts (reason wording, contextCSN
//! time and lag, the divergence mark) are unit-tested here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;

use crate::clock::Moment;
use ldap_elector_contract::events::{EventSink, Notice, Severity};
use ldap_elector_contract::prometheus::{self as metrics, Counter, Family, Gauge, Histogram, Kind, LabeledCounter};
use ldap_elector_contract::{event_reason, metric, LEASE_ANNOTATION_DIVERGED};

/// Transition reasons (the `reason` label of `ldap_elector_transitions_total`).
pub const TRANSITION_REASONS: &[&str] = &[
    "acquired",
    "renew_deadline_passed",
    "lease_lost",
    "released_stopping",
    "released_unhealthy",
    "fence_failed",
    "guard_lost",
];

/// Why a promotion left a window uncovered (the `reason` label of
/// `ldap_elector_uncovered_promotions_total`; `catch_up::UncoveredReason::label`).
pub const UNCOVERED_REASONS: &[&str] = &["not_configured", "unreachable", "behind"];

/// The elector's metrics. Cheap to update from any task.
#[derive(Debug)]
pub struct ElectorMetrics {
    pub is_leader: Gauge,
    pub term: Gauge,
    pub transitions: LabeledCounter,
    pub renew_latency: Histogram,
    /// Boot-time milliseconds of the last successful renew (or acquire) while leading; 0: none.
    last_renew_ms: AtomicU64,
    leading: AtomicBool,
    pub health_checks: Arc<LabeledCounter>,
    /// The contextCSN values the leader last published in the Lease.
    published_csn: Mutex<Vec<String>>,
    pub divergence_marked: Gauge,
    pub config_warnings: Gauge,
    pub events_dropped: Arc<Counter>,
    pub uncovered_promotions: LabeledCounter,
    pub uncovered_window: Gauge,
}

impl Default for ElectorMetrics {
    fn default() -> Self {
        ElectorMetrics {
            is_leader: Gauge::default(),
            term: Gauge::default(),
            transitions: LabeledCounter::with_values("reason", TRANSITION_REASONS),
            renew_latency: Histogram::new(metrics::LATENCY_BUCKETS),
            last_renew_ms: AtomicU64::new(0),
            leading: AtomicBool::new(false),
            health_checks: Arc::new(LabeledCounter::with_values("result", &["pass", "fail"])),
            published_csn: Mutex::new(Vec::new()),
            divergence_marked: Gauge::default(),
            config_warnings: Gauge::default(),
            events_dropped: Arc::default(),
            uncovered_promotions: LabeledCounter::with_values("reason", UNCOVERED_REASONS),
            uncovered_window: Gauge::default(),
        }
    }
}

impl ElectorMetrics {
    /// Every family, the time-dependent ones computed for `now` and this slapd's contextCSN `mine`.
    pub fn gather(&self, now: Moment, mine: &[String]) -> Vec<Family> {
        let mut out = vec![
            Family::single(
                metric::IS_LEADER,
                "1 while this pod is the labelled leader, else 0.",
                Kind::Gauge,
                self.is_leader.get(),
            ),
            Family::single(
                metric::TERM,
                "The Lease's term (leaseTransitions) as last seen.",
                Kind::Gauge,
                self.term.get(),
            ),
            self.transitions.family(metric::TRANSITIONS_TOTAL, "Role changes of this elector by reason."),
            self.renew_latency
                .family(metric::RENEW_LATENCY_SECONDS, "Latency of successful Lease acquire and renew writes."),
        ];
        let mut age = Family::new(
            metric::LAST_RENEW_AGE_SECONDS,
            "Seconds since the last successful renew, while this pod holds the Lease.",
            Kind::Gauge,
        );
        let last = self.last_renew_ms.load(Ordering::Relaxed);
        if self.leading.load(Ordering::Relaxed) && last > 0 {
            let since = now.since(Moment::from_origin(Duration::from_millis(last)));
            age.samples.push(metrics::Sample { suffix: "", labels: Vec::new(), value: since.as_secs_f64() });
        }
        out.push(age);
        out.push(self.health_checks.family(metric::HEALTH_CHECKS_TOTAL, "Health checks of the local slapd by result."));
        let mut lag = Family::new(
            metric::CONTEXT_CSN_LAG_SECONDS,
            "How far this slapd's contextCSN is behind the one the leader published (0 when caught up).",
            Kind::Gauge,
        );
        let published = self.published_csn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(v) = csn_lag_seconds(mine, &published) {
            lag.samples.push(metrics::Sample { suffix: "", labels: Vec::new(), value: v });
        }
        out.push(lag);
        out.push(Family::single(
            metric::DIVERGENCE_MARKED,
            "1 while the Lease lists this pod as diverged from the leader.",
            Kind::Gauge,
            self.divergence_marked.get(),
        ));
        out.push(Family::single(
            metric::CONFIG_WARNINGS,
            "Warnings of the slapd configuration guard at start-up.",
            Kind::Gauge,
            self.config_warnings.get(),
        ));
        out.push(Family::single(
            metric::EVENTS_DROPPED_TOTAL,
            "Kubernetes Events not written (queue full or API error).",
            Kind::Counter,
            self.events_dropped.get() as f64,
        ));
        out.push(self.uncovered_promotions.family(
            metric::UNCOVERED_PROMOTIONS_TOTAL,
            "Promotions after an expiry that could not verify the old leader's current contextCSN, by reason.",
        ));
        out.push(Family::single(
            metric::UNCOVERED_WINDOW_SECONDS,
            "Seconds of the old leader's writes this pod may lack since its last such promotion (0: none).",
            Kind::Gauge,
            self.uncovered_window.get(),
        ));
        out
    }

    pub fn render(&self, mine: &[String]) -> String {
        metrics::render(&self.gather(Moment::now(), mine))
    }
}

/// The label value and a human explanation of a step-down `reason` (the `Debug` name of a
/// `decide::DemoteReason`/`ReleaseReason`, `HookFailed`, or `GuardLost`); unknown reasons are kept
/// readable (snake_case label, the name as text) so new reasons need no change here.
pub fn describe_step_down(reason: &str, renew_deadline: Duration) -> (String, String, Severity) {
    let (label, text, severity) = match reason {
        "RenewDeadlinePassed" => (
            "renew_deadline_passed",
            format!(
                "could not renew the Lease within the renew deadline ({}s): the API server was unreachable or slow, or this elector was paused",
                renew_deadline.as_secs_f64()
            ),
            Severity::Warning,
        ),
        "LeaseLost" => (
            "lease_lost",
            "the Lease shows another holder or a newer term (another pod took over, or the Lease was edited)".into(),
            Severity::Warning,
        ),
        "Stopping" => (
            "released_stopping",
            "the pod is stopping (SIGTERM or deletion): handing over to a standby".into(),
            Severity::Normal,
        ),
        "Unhealthy" => ("released_unhealthy", "the local slapd failed its health check".into(), Severity::Warning),
        "NewerTerm" => (
            "newer_term",
            "a pod carries a newer term than this one (the Lease was recreated and its terms restarted): released to take a term above it".into(),
            Severity::Normal,
        ),
        "HookFailed" => (
            "fence_failed",
            "could not make slapd writable (the write fence or role-change hook failed)".into(),
            Severity::Warning,
        ),
        // Issue 15 item 2: the guard is what fences slapd if this elector dies; without it
        // leading is unsafe, and the Lease is kept (not released) until it expires.
        "GuardLost" => (
            "guard_lost",
            format!(
                "lost the fence guard (the {} container exited or its socket closed): nothing would fence slapd if this elector died, so it leads no more and keeps the Lease until it expires",
                ldap_elector_contract::GUARD_CONTAINER
            ),
            Severity::Warning,
        ),
        other => return (snake_case(other), format!("reason: {other}"), Severity::Normal),
    };
    (label.to_string(), text, severity)
}

fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// How many seconds `mine` is behind `leader`, per server ID, the worst one: 0 when caught
/// up, +Inf when it cannot be told (a server ID the leader has is missing here, or a CSN does
/// not parse), `None` when either side has nothing to compare (no LDAP health check, or
/// nothing published yet).
pub fn csn_lag_seconds(mine: &[String], leader: &[String]) -> Option<f64> {
    if mine.is_empty() || leader.is_empty() {
        return None;
    }
    Some(ldap_elector_contract::csn::lag(mine, leader).map_or(f64::INFINITY, |lag| lag.as_secs_f64()))
}

/// The summary of `pod`'s divergence mark in the Lease, if it is marked (unreadable marks
/// count as no mark here; `decide` treats them as blocking and `status` warns about them).
pub fn own_mark(lease: &Lease, pod: &str) -> Option<String> {
    let value = crate::election::lease::annotation(lease, LEASE_ANNOTATION_DIVERGED)?;
    let marks = crate::divergence::policy::parse_marks(value).ok()?;
    marks.get(pod).map(|m| if m.summary.is_empty() { "no summary".to_string() } else { m.summary.clone() })
}

/// The election loop's hooks: metrics and Events for each transition. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<ElectorMetrics>,
    events: EventSink,
    identity: String,
    renew_deadline: Duration,
    fence_configured: bool,
    /// The last holder other than this pod (for the BecameLeader note).
    previous_holder: Arc<Mutex<Option<String>>>,
}

impl Telemetry {
    pub fn new(
        metrics: Arc<ElectorMetrics>,
        events: EventSink,
        identity: &str,
        renew_deadline: Duration,
        fence_configured: bool,
    ) -> Self {
        Telemetry {
            metrics,
            events,
            identity: identity.to_string(),
            renew_deadline,
            fence_configured,
            previous_holder: Arc::default(),
        }
    }

    /// Counts but writes no Events (tests, or before the client exists).
    pub fn disabled() -> Self {
        Telemetry::new(Arc::default(), EventSink::disabled(), "", Duration::from_secs(5), false)
    }

    /// Every Lease version the loop adopts.
    pub fn lease_seen(&self, lease: &Lease) {
        let spec = lease.spec.as_ref();
        if let Some(holder) = spec.and_then(|s| s.holder_identity.as_ref()).filter(|h| !h.is_empty()) {
            if *holder != self.identity {
                *self.previous_holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(holder.clone());
            }
        }
        self.metrics.term.set(spec.and_then(|s| s.lease_transitions).unwrap_or(0) as f64);
        *self.metrics.published_csn.lock().unwrap_or_else(|e| e.into_inner()) =
            crate::election::lease::published_csn(lease);
        let was_marked = self.metrics.divergence_marked.get() > 0.0;
        let mark = own_mark(lease, &self.identity);
        self.metrics.divergence_marked.set(if mark.is_some() { 1.0 } else { 0.0 });
        match (was_marked, mark) {
            (false, Some(summary)) => self.emit(
                Severity::Warning,
                event_reason::MARKED_DIVERGED,
                "Audit",
                format!("the leader's audit found this pod's slapd diverged ({summary}); it is not promoted until reseeded (docs/divergence.md)"),
            ),
            (true, None) => self.emit(
                Severity::Normal,
                event_reason::DIVERGENCE_CLEARED,
                "Audit",
                "the divergence mark was cleared; this pod may be promoted again".into(),
            ),
            _ => {}
        }
    }

    /// The configuration guard's result: the codes of the dangerous or doubtful slapd settings
    /// (an Event on every reading that has any, so that it does not expire while they last).
    pub fn config_checked(&self, codes: &[&str]) {
        self.metrics.config_warnings.set(codes.len() as f64);
        if !codes.is_empty() {
            self.emit(
                Severity::Warning,
                event_reason::DANGEROUS_SLAPD_CONFIG,
                "CheckConfig",
                format!(
                    "dangerous or doubtful slapd settings: {}; see this sidecar's log and docs/divergence.md",
                    codes.join(", ")
                ),
            );
        }
    }

    /// A successful acquire (the start of term `term`), written at `sent`.
    pub fn acquired(&self, sent: Moment) {
        self.metrics.transitions.inc("acquired");
        self.metrics.leading.store(true, Ordering::Relaxed);
        self.renewed(sent);
    }

    /// A successful renew (or acquire) sent at `sent`, answered now.
    pub fn renewed(&self, sent: Moment) {
        self.metrics.renew_latency.observe_duration(Moment::now().since(sent));
        let ms = sent.since(Moment::ZERO).as_millis().max(1) as u64;
        self.metrics.last_renew_ms.store(ms, Ordering::Relaxed);
    }

    /// Took office for `term` (labelled leader); `unfenced`: slapd made writable.
    pub fn took_office(&self, term: i32, unfenced: bool) {
        if !unfenced {
            self.emit(
                Severity::Warning,
                event_reason::FENCE_FAILED,
                "Unfence",
                format!("could not make slapd writable for term {term} within the renew deadline; releasing the Lease"),
            );
            return;
        }
        self.metrics.is_leader.set(1.0);
        let previous = self.previous_holder.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let before = previous.map_or_else(String::new, |p| format!(" (previous holder {p})"));
        self.emit(
            Severity::Normal,
            event_reason::BECAME_LEADER,
            "Acquire",
            format!("became leader for term {term}{before}: holds the Lease, labelled leader, takes writes"),
        );
        if self.fence_configured {
            self.emit(
                Severity::Normal,
                event_reason::UNFENCED,
                "Unfence",
                format!("slapd made writable for term {term}"),
            );
        }
    }

    /// Stepped down from `term` for `reason` (see [`describe_step_down`]); `fenced`: slapd
    /// was made read-only within the budget.
    pub fn stepped_down(&self, term: i32, reason: &str, fenced: bool) {
        let (label, text, severity) = describe_step_down(reason, self.renew_deadline);
        self.metrics.is_leader.set(0.0);
        self.metrics.leading.store(false, Ordering::Relaxed);
        self.metrics.transitions.inc(&label);
        self.emit(severity, event_reason::STEPPED_DOWN, "Demote", format!("stepped down from term {term}: {text}"));
        if !self.fence_configured {
            return;
        }
        if fenced {
            self.emit(
                Severity::Normal,
                event_reason::FENCED,
                "Fence",
                "slapd fenced read-only (olcReadOnly / hook)".into(),
            );
        } else {
            self.emit(
                Severity::Warning,
                event_reason::FENCE_FAILED,
                "Fence",
                "could not fence slapd read-only within the budget; the fence keeps retrying and the watchdog fences at the renew deadline".into(),
            );
        }
    }

    /// Took over in `term` after `previous`'s Lease expired without verifying its current
    /// contextCSN: up to `u.seconds` of its acknowledged writes may be missing here.
    pub fn promoted_uncovered(&self, term: i32, previous: &str, u: &crate::election::catch_up::Uncovered) {
        use crate::election::catch_up::UncoveredReason;
        self.metrics.uncovered_promotions.inc(u.reason.label());
        self.metrics.uncovered_window.set(u.seconds);
        let why = match u.reason {
            UncoveredReason::NotConfigured => "no peer URLs are configured (--audit-peers), so its slapd was not asked",
            UncoveredReason::Unreachable => "its slapd did not answer within --catch-up-verify",
            UncoveredReason::Behind => "this slapd was still behind it when --catch-up-grace ran out",
        };
        let (after, amount) = if previous == crate::election::catch_up::UNKNOWN_PREVIOUS {
            ("on a Lease recreated after earlier terms (the last leader is unknown)".to_string(), "its".to_string())
        } else {
            (format!("after {previous}'s Lease expired"), format!("up to {:.1} s of its", u.seconds))
        };
        self.emit(
            Severity::Warning,
            event_reason::PROMOTED_UNCOVERED,
            "Acquire",
            format!(
                "took over term {term} {after} without holding its current contextCSN: {why}; \
                 {amount} acknowledged writes may be missing until it returns (docs/operations.md)"
            ),
        );
    }

    /// Released the Lease, so a standby can take over at once.
    pub fn released(&self) {
        self.emit(
            Severity::Normal,
            event_reason::RELEASED_LEASE,
            "Release",
            "released the Lease so a standby takes over at once".into(),
        );
    }

    fn emit(&self, severity: Severity, reason: &'static str, action: &'static str, note: String) {
        self.events.emit(Notice { severity, reason, action, note });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csn(time: &str, sid: u8) -> String {
        format!("{time}.000000Z#000000#{sid:03x}#000000")
    }

    #[test]
    fn lag_is_the_worst_server_id_and_never_negative() {
        let leader = vec![csn("20261125100010", 1), csn("20261125100000", 2)];
        assert_eq!(csn_lag_seconds(&leader, &leader), Some(0.0));
        assert_eq!(csn_lag_seconds(&[csn("20261125100000", 1), csn("20261125100000", 2)], &leader), Some(10.0));
        assert_eq!(csn_lag_seconds(&[csn("20261125100020", 1), csn("20261125100000", 2)], &leader), Some(0.0), "ahead");
        assert_eq!(csn_lag_seconds(&[csn("20261125100010", 1)], &leader), Some(f64::INFINITY), "sid 2 missing");
        assert_eq!(csn_lag_seconds(&[], &leader), None);
        assert_eq!(csn_lag_seconds(&leader, &[]), None);
    }

    #[test]
    fn step_down_reasons_read_like_sentences_and_unknown_ones_stay_readable() {
        let d = Duration::from_secs(5);
        let (label, text, sev) = describe_step_down("RenewDeadlinePassed", d);
        assert_eq!((label.as_str(), sev), ("renew_deadline_passed", Severity::Warning));
        assert!(text.contains("renew deadline (5s)"), "{text}");
        assert_eq!(describe_step_down("Stopping", d).0, "released_stopping");
        assert_eq!(describe_step_down("Unhealthy", d).0, "released_unhealthy");
        assert_eq!(describe_step_down("LeaseLost", d).0, "lease_lost");
        assert_eq!(describe_step_down("HookFailed", d).0, "fence_failed");
        assert_eq!(describe_step_down("SwitchoverRequested", d).0, "switchover_requested");
        for r in ["RenewDeadlinePassed", "LeaseLost", "Stopping", "Unhealthy", "HookFailed", "GuardLost"] {
            assert!(TRANSITION_REASONS.contains(&describe_step_down(r, d).0.as_str()), "{r}");
        }
    }

    /// Issue 15 item 2: losing the fence guard is its own reason, a Warning that names the
    /// guard container and says the Lease is kept (not the generic "reason: GuardLost").
    #[test]
    fn a_lost_guard_is_a_warning_of_its_own() {
        let (label, text, sev) = describe_step_down("GuardLost", Duration::from_secs(5));
        assert_eq!((label.as_str(), sev), ("guard_lost", Severity::Warning));
        assert!(text.contains(ldap_elector_contract::GUARD_CONTAINER), "{text}");
        assert!(text.contains("keeps the Lease until it expires"), "{text}");
        let (sink, mut notices) = EventSink::capture();
        let ops = Telemetry::new(Arc::default(), sink, "ldap-0", Duration::from_secs(5), true);
        ops.stepped_down(7, "GuardLost", true);
        let event = notices.try_recv().expect("a StepDown Event");
        assert_eq!((event.reason, event.severity), (event_reason::STEPPED_DOWN, Severity::Warning));
        assert!(event.note.starts_with("stepped down from term 7: lost the fence guard"), "{}", event.note);
        assert_eq!(ops.metrics.transitions.get("guard_lost"), 1);
    }

    #[test]
    fn the_divergence_mark_moves_the_gauge_and_is_reported_once_each_way() {
        let (sink, mut notices) = EventSink::capture();
        let ops = Telemetry::new(Arc::default(), sink, "ldap-1", Duration::from_secs(5), true);
        let mut lease = Lease::default();
        assert_eq!(own_mark(&lease, "ldap-1"), None);
        ops.lease_seen(&lease);
        assert!(notices.try_recv().is_err(), "no mark, no Event");
        lease.metadata.annotations = Some(
            [(
                LEASE_ANNOTATION_DIVERGED.to_string(),
                r#"{"ldap-1":{"since":"x","summary":"2 entries differ"}}"#.to_string(),
            )]
            .into(),
        );
        assert_eq!(own_mark(&lease, "ldap-0"), None);
        ops.lease_seen(&lease);
        ops.lease_seen(&lease);
        let marked = notices.try_recv().expect("an Event for the new mark");
        assert_eq!(marked.reason, event_reason::MARKED_DIVERGED);
        assert!(marked.note.contains("2 entries differ"), "{}", marked.note);
        assert!(notices.try_recv().is_err(), "a mark still there is not reported again");
        assert_eq!(ops.metrics.divergence_marked.get(), 1.0);
        lease.metadata.annotations = None;
        ops.lease_seen(&lease);
        assert_eq!(notices.try_recv().expect("an Event for the cleared mark").reason, event_reason::DIVERGENCE_CLEARED);
        assert_eq!(ops.metrics.divergence_marked.get(), 0.0);
        ops.config_checked(&[]);
        assert!(notices.try_recv().is_err());
        ops.config_checked(&["session-log-on-mirror-mode", "syncrepl-timeout"]);
        let notice = notices.try_recv().expect("config warning");
        assert_eq!(notice.reason, event_reason::DANGEROUS_SLAPD_CONFIG);
        assert!(notice.note.contains("session-log-on-mirror-mode, syncrepl-timeout"), "{}", notice.note);
        assert_eq!(ops.metrics.config_warnings.get(), 2.0);
    }

    #[test]
    fn hooks_move_the_gauges_and_counters() {
        let ops = Telemetry::disabled();
        let t0 = Moment::now();
        ops.acquired(t0);
        ops.took_office(4, true);
        ops.renewed(Moment::now());
        let text = ops.metrics.render(&[]);
        assert!(text.contains("\nldap_elector_is_leader 1\n"), "{text}");
        assert!(text.contains("ldap_elector_transitions_total{reason=\"acquired\"} 1\n"), "{text}");
        assert!(text.contains("ldap_elector_lease_renew_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("\nldap_elector_last_renew_age_seconds "), "{text}");
        ops.stepped_down(4, "LeaseLost", true);
        let text = ops.metrics.render(&[]);
        assert!(text.contains("\nldap_elector_is_leader 0\n"), "{text}");
        assert!(text.contains("ldap_elector_transitions_total{reason=\"lease_lost\"} 1\n"), "{text}");
        assert!(!text.contains("\nldap_elector_last_renew_age_seconds "), "only while leading: {text}");
        // Every family the contract lists is rendered, and nothing else.
        let names: Vec<&str> = ops.metrics.gather(Moment::now(), &[]).iter().map(|f| f.name).collect();
        assert_eq!(names, metric::ELECTOR);
    }
}

//! A non-blocking sink of Kubernetes Events (events.k8s.io/v1). Each notice is written on
//! every [`Subject`] of the sink: the elector writes on its pod AND its StatefulSet, so
//! `kubectl describe` of either tells the story.
//!
//! The caller (the election loop) never waits for an Event: [`EventSink::emit`] is a
//! `try_send` into a bounded queue (dropped and counted when full); one task writes them,
//! each call with a timeout. A pure [`Limiter`] lets the same reason through at most once per
//! window per subject and counts what it held back into the next Event's note. Events are
//! only ever created (never read or patched), so `create` is the only verb a writer needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::prometheus::Counter;

/// Same reason, same object: at most once per this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Events waiting to be written; more are dropped (and counted).
const QUEUE: usize = 64;
/// Timeout of each Event write (and of the reference lookups).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

/// One Event, written on the pod and on the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub severity: Severity,
    /// PascalCase, from `contract::event_reason`.
    pub reason: &'static str,
    /// What the elector did (PascalCase), e.g. `Acquire`, `Demote`, `Fence`.
    pub action: &'static str,
    /// A sentence for a human; the StatefulSet's copy is prefixed with the pod name.
    pub note: String,
}

/// An object the Events are about, in the sink's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// `v1`, `apps/v1`, …
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Put before each note on this subject (e.g. the pod's name on its StatefulSet).
    pub note_prefix: Option<String>,
}

impl Subject {
    pub fn new(api_version: &str, kind: &str, name: &str) -> Subject {
        Subject { api_version: api_version.into(), kind: kind.into(), name: name.into(), note_prefix: None }
    }

    /// Notes on this subject start with `prefix: `.
    pub fn with_note_prefix(mut self, prefix: &str) -> Subject {
        self.note_prefix = Some(prefix.to_string());
        self
    }
}

/// Lets a (subject index, reason) through at most once per window; counts the ones held back.
#[derive(Debug, Default)]
pub struct Limiter {
    window: Duration,
    /// Last admitted time and how many were held back since.
    seen: HashMap<(usize, &'static str), (Instant, u32)>,
}

impl Limiter {
    pub fn new(window: Duration) -> Self {
        Limiter { window, seen: HashMap::new() }
    }

    /// `Some(held_back)` if this Event may be written now (with how many of its kind were
    /// held back since the last one), `None` if it is held back.
    pub fn admit(&mut self, subject: usize, reason: &'static str, now: Instant) -> Option<u32> {
        match self.seen.get_mut(&(subject, reason)) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.window => {
                *held = held.saturating_add(1);
                None
            }
            Some((last, held)) => {
                let earlier = std::mem::take(held);
                *last = now;
                Some(earlier)
            }
            None => {
                self.seen.insert((subject, reason), (now, 0));
                Some(0)
            }
        }
    }
}

/// The note as written: with the count of held-back repeats, cut to the API's 1 kB limit.
pub fn note_with_repeats(note: &str, held_back: u32) -> String {
    let mut n = if held_back > 0 {
        format!("{note} ({held_back} similar event(s) in the last {}s not recorded)", RATE_WINDOW.as_secs())
    } else {
        note.to_string()
    };
    if n.len() > 1000 {
        let mut cut = 1000;
        while !n.is_char_boundary(cut) {
            cut -= 1;
        }
        n.truncate(cut);
    }
    n
}

/// The caller's handle: never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Notice>>,
    dropped: Arc<Counter>,
}

impl EventSink {
    /// A sink that writes nothing (tests, or Events switched off).
    pub fn disabled() -> Self {
        EventSink { tx: None, dropped: Arc::default() }
    }

    /// A sink whose notices a test reads from the receiver.
    pub fn capture() -> (Self, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (EventSink { tx: Some(tx), dropped: Arc::default() }, rx)
    }

    /// Starts the writer task: Events by `reporter` (`reportingController`) and `instance`
    /// (`reportingInstance`) on each of `subjects` in `namespace`. The writer ends when every
    /// sink is dropped and the queue is written ([`Drained::wait`]), or at `cancel`.
    pub fn start(
        client: Client,
        namespace: &str,
        reporter: &str,
        instance: &str,
        subjects: Vec<Subject>,
        dropped: Arc<Counter>,
        cancel: CancellationToken,
    ) -> (Self, Drained) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            client,
            namespace: namespace.to_string(),
            reporter: reporter.to_string(),
            instance: instance.to_string(),
            refs: subjects.iter().map(|s| reference(s, namespace, None)).collect(),
            resolved: vec![false; subjects.len()],
            subjects,
            limiter: Limiter::new(RATE_WINDOW),
            dropped: dropped.clone(),
        };
        let task = tokio::spawn(writer.run(rx, cancel));
        (EventSink { tx: Some(tx), dropped }, Drained(task))
    }

    /// Queues `notice`; drops it (counted) when the queue is full.
    pub fn emit(&self, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(notice).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer task, to wait for at shutdown so the last Events (stepped down, released)
/// are written before the process exits.
pub struct Drained(tokio::task::JoinHandle<()>);

impl Drained {
    /// Waits at most `budget` for the queued Events (drop every [`EventSink`] first).
    pub async fn wait(self, budget: Duration) {
        if tokio::time::timeout(budget, self.0).await.is_err() {
            tracing::debug!("Events still queued at exit were not written");
        }
    }
}

struct Writer {
    client: Client,
    namespace: String,
    reporter: String,
    instance: String,
    subjects: Vec<Subject>,
    /// The subjects' references, with UIDs once read (looked up until then; the API also
    /// accepts them without).
    refs: Vec<ObjectReference>,
    resolved: Vec<bool>,
    limiter: Limiter,
    dropped: Arc<Counter>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Notice>, cancel: CancellationToken) {
        loop {
            let notice = tokio::select! {
                _ = cancel.cancelled() => return,
                n = rx.recv() => match n { Some(n) => n, None => return },
            };
            self.resolve().await;
            for (index, subject) in self.subjects.iter().enumerate() {
                let Some(held_back) = self.limiter.admit(index, notice.reason, Instant::now()) else { continue };
                let note = match &subject.note_prefix {
                    None => note_with_repeats(&notice.note, held_back),
                    Some(prefix) => note_with_repeats(&format!("{prefix}: {}", notice.note), held_back),
                };
                let event = self.event(&notice, note, self.refs[index].clone());
                let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
                match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &event)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        self.dropped.inc();
                        tracing::debug!(reason = notice.reason, error = %e, "could not write an Event");
                    }
                    Err(_) => {
                        self.dropped.inc();
                        tracing::debug!(reason = notice.reason, "writing an Event timed out");
                    }
                }
            }
        }
    }

    /// Reads the UIDs of the subjects not read yet (each once it succeeds).
    async fn resolve(&mut self) {
        for (index, subject) in self.subjects.iter().enumerate() {
            if self.resolved[index] {
                continue;
            }
            let (group, version) = subject.api_version.rsplit_once('/').unwrap_or(("", &subject.api_version));
            let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &subject.kind));
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
            let found = tokio::time::timeout(WRITE_TIMEOUT, api.get(&subject.name)).await.ok().and_then(Result::ok);
            if let Some(uid) = found.and_then(|o| o.metadata.uid) {
                self.refs[index] = reference(subject, &self.namespace, Some(uid));
                self.resolved[index] = true;
            }
        }
    }

    fn event(&self, notice: &Notice, note: String, regarding: ObjectReference) -> Event {
        let now = k8s_openapi::jiff::Timestamp::now();
        Event {
            metadata: ObjectMeta {
                // Unique per write: the object name and the time in nanoseconds, as kubectl's
                // recorders do.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.instance),
                    now.as_nanosecond()
                )),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(notice.action.to_string()),
            reason: Some(notice.reason.to_string()),
            note: Some(note),
            type_: Some(notice.severity.as_str().to_string()),
            regarding: Some(regarding),
            reporting_controller: Some(self.reporter.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

fn reference(subject: &Subject, namespace: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some(subject.api_version.clone()),
        kind: Some(subject.kind.clone()),
        namespace: Some(namespace.to_string()),
        name: Some(subject.name.clone()),
        uid,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Instant {
        // One origin for the whole test (tests run in parallel threads, but each calls this
        // with the same process-wide origin).
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_secs(s)
    }

    #[test]
    fn the_same_reason_passes_once_per_window_and_counts_the_rest() {
        let mut l = Limiter::new(Duration::from_secs(10));
        assert_eq!(l.admit(0, "SteppedDown", at(0)), Some(0));
        assert_eq!(l.admit(0, "SteppedDown", at(3)), None);
        assert_eq!(l.admit(0, "SteppedDown", at(9)), None);
        // Other reasons and the other object are limited separately.
        assert_eq!(l.admit(0, "BecameLeader", at(9)), Some(0));
        assert_eq!(l.admit(1, "SteppedDown", at(9)), Some(0));
        assert_eq!(l.admit(0, "SteppedDown", at(10)), Some(2), "two held back");
        assert_eq!(l.admit(0, "SteppedDown", at(21)), Some(0));
    }

    #[test]
    fn notes_say_how_many_were_held_back_and_fit_the_api_limit() {
        assert_eq!(note_with_repeats("x", 0), "x");
        assert_eq!(note_with_repeats("x", 2), "x (2 similar event(s) in the last 10s not recorded)");
        assert_eq!(note_with_repeats(&"é".repeat(800), 0).len(), 1000);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, _rx) = mpsc::channel(1);
        let sink = EventSink { tx: Some(tx), dropped: Arc::default() };
        let n = Notice { severity: Severity::Normal, reason: "R", action: "A", note: "n".into() };
        sink.emit(n.clone());
        sink.emit(n.clone());
        sink.emit(n);
        assert_eq!(sink.dropped.get(), 2);
        EventSink::disabled().emit(Notice { severity: Severity::Warning, reason: "R", action: "A", note: "n".into() });
    }
}

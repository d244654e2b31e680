//! An independent observer: its own watch on the pods of a StatefulSet records every role
//! label change in one timeline (a watch delivers changes in etcd order, so the timeline is
//! a linearisation) and flags any moment with two pods labelled leader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use ldap_elector::contract::{LABEL_ROLE, ROLE_LEADER};

#[derive(Clone, Debug)]
pub struct Entry {
    pub at: Instant,
    pub pod: String,
    pub role: Option<String>,
    pub leaders: Vec<String>,
}

#[derive(Default)]
struct State {
    roles: BTreeMap<String, Option<String>>,
    timeline: Vec<Entry>,
    violations: Vec<Entry>,
}

pub struct Observer {
    state: Arc<Mutex<State>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Watches pods matching `selector` in `namespace`.
    pub fn start(client: Client, namespace: &str, selector: &str) -> Observer {
        let state = Arc::new(Mutex::new(State::default()));
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(selector);
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).backoff(ldap_elector::run::QuickBackoff::default()).boxed();
            while let Some(event) = events.next().await {
                let (pod, role) = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let role = p.labels().get(LABEL_ROLE).cloned();
                        (p.name_any(), role)
                    }
                    Ok(watcher::Event::Delete(p)) => (p.name_any(), None),
                    _ => continue,
                };
                let mut st = s.lock().unwrap_or_else(|p| p.into_inner());
                if st.roles.get(&pod) == Some(&role) {
                    continue;
                }
                st.roles.insert(pod.clone(), role.clone());
                let leaders: Vec<String> = st
                    .roles
                    .iter()
                    .filter(|(_, r)| r.as_deref() == Some(ROLE_LEADER))
                    .map(|(p, _)| p.clone())
                    .collect();
                let entry = Entry { at: Instant::now(), pod, role, leaders };
                if entry.leaders.len() > 1 {
                    st.violations.push(entry.clone());
                }
                st.timeline.push(entry);
            }
        });
        Observer { state, started: Instant::now(), task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pods labelled leader right now, as last observed.
    pub fn leaders(&self) -> Vec<String> {
        self.lock().timeline.last().map(|e| e.leaders.clone()).unwrap_or_default()
    }

    /// When `pod` was last seen becoming leader, if ever, after `since`.
    pub fn became_leader_after(&self, pod: &str, since: Instant) -> Option<Instant> {
        self.lock()
            .timeline
            .iter()
            .find(|e| e.at >= since && e.pod == pod && e.role.as_deref() == Some(ROLE_LEADER))
            .map(|e| e.at)
    }

    /// The first leader label seen after `since` on a pod other than `old` (if any).
    pub fn new_leader_after(&self, old: Option<&str>, since: Instant) -> Option<(String, Instant)> {
        self.lock()
            .timeline
            .iter()
            .find(|e| e.at >= since && Some(e.pod.as_str()) != old && e.role.as_deref() == Some(ROLE_LEADER))
            .map(|e| (e.pod.clone(), e.at))
    }

    /// The timeline, one line per change, for failure messages.
    pub fn timeline(&self) -> String {
        self.timeline_from(0).join("\n")
    }

    /// Timeline lines from entry `index` on (for printing a timeline as it grows).
    pub fn timeline_from(&self, index: usize) -> Vec<String> {
        self.lock()
            .timeline
            .iter()
            .skip(index)
            .map(|e| {
                format!(
                    "+{:>8.3}s {} -> {:?} (leaders: {:?})",
                    (e.at - self.started).as_secs_f64(),
                    e.pod,
                    e.role,
                    e.leaders
                )
            })
            .collect()
    }

    /// Fails with the timeline if two pods were ever labelled leader at once.
    pub fn assert_never_two_leaders(&self) {
        let violations = self.lock().violations.clone();
        assert!(violations.is_empty(), "two leaders observed: {violations:?}\ntimeline:\n{}", self.timeline());
    }

    /// Waits until exactly one pod is leader and returns it.
    pub async fn wait_for_single_leader(&self, timeout: Duration) -> anyhow::Result<String> {
        crate::wait_for("exactly one leader label", timeout, || async {
            match self.leaders().as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!("leaders now: {other:?}\ntimeline:\n{}", self.timeline())),
            }
        })
        .await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

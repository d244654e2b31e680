//! An independent observer: its own watches on the pods of a StatefulSet (and, optionally,
//! the EndpointSlices of the write Service) record every role label change and every change
//! of ready endpoints in one timeline, and flag any moment with two pods labelled leader or
//! two ready endpoints. One watch delivers its changes in etcd order, so each timeline of
//! one kind is a linearisation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use ldap_elector_contract::{LABEL_ROLE, ROLE_LEADER};

/// The pseudo pod name of endpoint entries in the timeline.
const ENDPOINTS: &str = "(write Service endpoints)";

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
    /// Ready endpoints (pod names) per EndpointSlice.
    ready: BTreeMap<String, BTreeSet<String>>,
    timeline: Vec<Entry>,
    violations: Vec<Entry>,
}

pub struct Observer {
    state: Arc<Mutex<State>>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Applies watcher events to a map keyed by name. A re-list (after a watch broke) is a
/// consistent snapshot: it is applied as one step when it is complete, never item by item
/// (that would show a mix of old and new states that never existed), and names it no
/// longer shows are dropped. Calls `changed` for each changed name, after the whole step.
async fn follow<K, V>(
    api: Api<K>,
    config: watcher::Config,
    state: Arc<Mutex<State>>,
    value: impl Fn(&K) -> V + Send + 'static,
    map: impl Fn(&mut State) -> &mut BTreeMap<String, V> + Send + 'static,
    changed: impl Fn(&mut State, &str) + Send + 'static,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    V: PartialEq + Send + 'static,
{
    let mut events = watcher(api, config).backoff(ldap_elector_contract::backoff::QUICK_WATCH.delays()).boxed();
    let mut relist: Option<BTreeMap<String, V>> = None;
    while let Some(event) = events.next().await {
        let updates: Vec<(String, Option<V>)> = match event {
            Ok(watcher::Event::Init) => {
                relist = Some(BTreeMap::new());
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                relist.get_or_insert_with(BTreeMap::new).insert(o.name_any(), value(&o));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let mut snapshot = relist.take().unwrap_or_default();
                let st = &mut *state.lock().unwrap_or_else(|p| p.into_inner());
                let mut names: BTreeSet<String> = map(st).keys().cloned().collect();
                names.extend(snapshot.keys().cloned());
                names.into_iter().map(|n| (n.clone(), snapshot.remove(&n))).collect()
            }
            Ok(watcher::Event::Apply(o)) => vec![(o.name_any(), Some(value(&o)))],
            Ok(watcher::Event::Delete(o)) => vec![(o.name_any(), None)],
            Err(_) => continue,
        };
        let st = &mut *state.lock().unwrap_or_else(|p| p.into_inner());
        let mut touched = Vec::new();
        for (name, v) in updates {
            let m = map(st);
            let differs = match &v {
                Some(v) => m.get(&name) != Some(v),
                None => m.contains_key(&name),
            };
            if differs {
                match v {
                    Some(v) => m.insert(name.clone(), v),
                    None => m.remove(&name),
                };
                touched.push(name);
            }
        }
        for name in touched {
            changed(st, &name);
        }
    }
}

impl Observer {
    /// Watches pods matching `selector` in `namespace`.
    pub fn start(client: Client, namespace: &str, selector: &str) -> Observer {
        let state = Arc::new(Mutex::new(State::default()));
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let task = tokio::spawn(follow(
            api,
            watcher::Config::default().labels(selector),
            state.clone(),
            |p: &Pod| p.labels().get(LABEL_ROLE).cloned(),
            |st: &mut State| &mut st.roles,
            |st: &mut State, pod: &str| {
                let role = st.roles.get(pod).cloned().flatten();
                let leaders: Vec<String> = st
                    .roles
                    .iter()
                    .filter(|(_, r)| r.as_deref() == Some(ROLE_LEADER))
                    .map(|(p, _)| p.clone())
                    .collect();
                let entry = Entry { at: Instant::now(), pod: pod.to_string(), role, leaders };
                if entry.leaders.len() > 1 {
                    st.violations.push(entry.clone());
                }
                st.timeline.push(entry);
            },
        ));
        Observer { state, started: Instant::now(), tasks: vec![task] }
    }

    /// Also watches the ready endpoints of `service` (never more than one may be ready).
    pub fn watch_service(&mut self, client: Client, namespace: &str, service: &str) {
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        self.tasks.push(tokio::spawn(follow(
            api,
            config,
            self.state.clone(),
            |slice: &EndpointSlice| {
                slice
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                    .map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_default())
                    .collect::<BTreeSet<String>>()
            },
            |st: &mut State| &mut st.ready,
            |st: &mut State, _slice: &str| {
                let ready: Vec<String> = st.ready.values().flatten().cloned().collect();
                let entry = Entry { at: Instant::now(), pod: ENDPOINTS.into(), role: None, leaders: ready };
                if entry.leaders.len() > 1 {
                    st.violations.push(entry.clone());
                }
                st.timeline.push(entry);
            },
        )));
    }

    /// The zero of [`Observer::timeline`]'s times.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Every observed change of the write Service's ready endpoints (pod names), in order.
    pub fn endpoint_history(&self) -> Vec<(Instant, Vec<String>)> {
        self.lock().timeline.iter().filter(|e| e.pod == ENDPOINTS).map(|e| (e.at, e.leaders.clone())).collect()
    }

    /// The ready endpoints of the watched Service, as last observed.
    pub fn ready_endpoints(&self) -> Vec<String> {
        self.lock().ready.values().flatten().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pods labelled leader right now, as last observed.
    pub fn leaders(&self) -> Vec<String> {
        let st = self.lock();
        st.roles.iter().filter(|(_, r)| r.as_deref() == Some(ROLE_LEADER)).map(|(p, _)| p.clone()).collect()
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

    /// Waits up to `timeout` for [`Observer::new_leader_after`]`(old, since)`: the pod that
    /// took over after a fault at `since`, and when its label was seen. On timeout, fails
    /// with `what` and the timeline.
    pub async fn wait_for_new_leader(
        &self,
        what: &str,
        old: Option<&str>,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<(String, Instant)> {
        crate::wait_for(what, timeout, || async { self.new_leader_after(old, since).ok_or_else(|| self.timeline()) })
            .await
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

    /// Fails with the timeline if two pods were ever labelled leader at once, or two
    /// endpoints of the write Service were ready at once.
    pub fn assert_never_two_leaders(&self) {
        let violations = self.lock().violations.clone();
        assert!(
            violations.is_empty(),
            "two leaders (or ready endpoints) observed: {violations:?}\ntimeline:\n{}",
            self.timeline()
        );
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
        for task in &self.tasks {
            task.abort();
        }
    }
}

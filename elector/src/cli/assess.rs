//! `ldap-elector status` (pure part): a [`Snapshot`] of the objects (gathered by `cli.rs`) is
//! assessed into a [`Status`] — leader, term, ages, each pod's role, health, contextCSN and lag,
//! the write Services' endpoints — and every inconsistency becomes a warning. Rendered as a
//! table or as JSON (the `Status` itself).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::cli::uncovered::{self, UncoveredWindow};
use crate::election::labels::{role_of, term_of};
use crate::election::switchover::{self, DivergedMark};
use ldap_elector_contract::csn::{self, caught_up};
use ldap_elector_contract::{self as contract, ANNOTATION_CONTEXT_CSN, ANNOTATION_HEALTH, HEALTH_HEALTHY, ROLE_LEADER};

/// Everything `status` reads, at one moment (wall clock: the operator's, advisory only).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub namespace: String,
    pub statefulset: String,
    /// `None`: the StatefulSet does not exist.
    pub replicas: Option<i32>,
    pub leader_services: Vec<String>,
    pub lease_name: String,
    /// `None`: the Lease does not exist.
    pub lease: Option<Lease>,
    /// The pods of the StatefulSet (by name).
    pub pods: Vec<Pod>,
    /// Per write Service, its EndpointSlices.
    pub endpoint_slices: BTreeMap<String, Vec<EndpointSlice>>,
    /// The namespace's `DangerousSlapdConfig` Events (the electors' configuration guard), or
    /// why they could not be read.
    pub config_events: Result<Vec<Event>, String>,
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub namespace: String,
    pub statefulset: String,
    pub lease: String,
    /// The Lease's holder (also when expired: see `expired`).
    pub leader: Option<String>,
    /// The fencing term (`leaseTransitions`).
    pub term: Option<i32>,
    pub lease_duration_seconds: Option<i32>,
    /// Since the holder acquired the Lease (or it was handed to it).
    pub lease_age_seconds: Option<f64>,
    /// Since the last renew.
    pub renew_age_seconds: Option<f64>,
    /// Held, but not renewed within its duration (on the operator's clock).
    pub expired: bool,
    /// The contextCSN the leader publishes in the Lease.
    pub leader_context_csn: Vec<String>,
    pub switchover_pending: Option<String>,
    pub switchover_refused: Option<String>,
    /// The last promotion after an expiry that could not verify the old leader's writes.
    pub uncovered: Option<UncoveredWindow>,
    pub pods: Vec<PodStatus>,
    pub services: Vec<ServiceStatus>,
    /// Every inconsistency, one sentence each; non-empty makes the exit status 1.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodStatus {
    pub name: String,
    pub role: Option<String>,
    pub term: Option<i32>,
    pub ready: bool,
    pub health: Option<String>,
    pub context_csn: Vec<String>,
    /// How far its contextCSN trails the leader's (CSN time); `None` when unknown.
    pub lag_seconds: Option<f64>,
    pub caught_up: Option<bool>,
    pub diverged: Option<DivergedMark>,
    pub allow_diverged: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub pod: Option<String>,
    pub addresses: Vec<String>,
    pub ready: bool,
}

fn age(now: Timestamp, then: Option<Timestamp>) -> Option<Duration> {
    let then = then?;
    let micros = now.as_microsecond().saturating_sub(then.as_microsecond()).max(0);
    Some(Duration::from_micros(micros as u64))
}

/// Whether the pod's elector container runs and has passed its startup probe (`None`: the
/// kubelet reported no status for it yet). Not its readiness: a running elector whose slapd
/// is still catching up is not Ready (`readiness.rs`), yet its publications are current.
pub fn elector_running(pod: &Pod) -> Option<bool> {
    let status = pod.status.as_ref()?;
    let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    containers
        .into_iter()
        .find(|c| c.name == contract::SIDECAR_CONTAINER)
        .map(|c| c.started != Some(false) && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// Whether `event` is about this very pod (its UID: not an earlier pod of the same name).
fn regards(event: &Event, pod: &Pod) -> bool {
    let about = &event.involved_object;
    about.kind.as_deref() == Some("Pod") && about.uid.is_some() && about.uid == pod.metadata.uid
}

fn event_time(event: &Event) -> Option<Timestamp> {
    let series = event.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0);
    series.or(event.event_time.as_ref().map(|t| t.0)).or(event.last_timestamp.as_ref().map(|t| t.0))
}

/// The assessment (pure).
pub fn assess(s: &Snapshot) -> Status {
    let mut warnings = Vec::new();
    if s.replicas.is_none() {
        warnings.push(format!("StatefulSet {}/{} not found", s.namespace, s.statefulset));
    }
    let spec = s.lease.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let duration = spec.lease_duration_seconds;
    let renew_age = age(s.now, spec.renew_time.as_ref().map(|t| t.0));
    let lease_age = age(s.now, spec.acquire_time.as_ref().map(|t| t.0));
    let expired = holder.is_some()
        && match (renew_age, duration) {
            (Some(a), Some(d)) => a > Duration::from_secs(d.max(0) as u64),
            _ => true,
        };
    let (marks, allowed) = match &s.lease {
        Some(l) => {
            let marks = switchover::diverged_marks(l).unwrap_or_else(|e| {
                warnings.push(e);
                BTreeMap::new()
            });
            (marks, switchover::allowed_diverged(l))
        }
        None => (BTreeMap::new(), Vec::new()),
    };
    let leader_csn = s.lease.as_ref().map(crate::election::lease::published_csn).unwrap_or_default();
    let uncovered = s.lease.as_ref().and_then(|l| uncovered::assess(l, &mut warnings));
    match (&s.lease, &holder) {
        (None, _) => warnings.push(format!("Lease {} not found (the webhook's reconciler creates it)", s.lease_name)),
        (Some(_), None) => warnings.push("no leader: the Lease has no holder".into()),
        (Some(_), Some(h)) if expired => warnings.push(format!(
            "the Lease held by {h} has expired (renewed {} ago, duration {}s): the leader is not renewing",
            secs(renew_age),
            duration.unwrap_or(0)
        )),
        _ => {}
    }

    let config_events = match &s.config_events {
        Ok(events) => events.as_slice(),
        Err(e) => {
            warnings.push(format!("cannot read Events (slapd configuration findings not shown): {e}"));
            &[]
        }
    };
    let mut pods: Vec<&Pod> = s.pods.iter().collect();
    pods.sort_by_key(|p| contract::split_pod_name(p.metadata.name.as_deref().unwrap_or_default()).map(|(_, o)| o));
    let mut labelled = Vec::new();
    let pod_status: Vec<PodStatus> = pods
        .iter()
        .map(|pod| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let a = pod.metadata.annotations.as_ref();
            let role = role_of(pod).map(String::from);
            let ready = switchover::pod_ready(pod);
            // A dead elector's publications are stale: its health and contextCSN read as unknown.
            let elector_down = elector_running(pod) == Some(false);
            let health = a.and_then(|a| a.get(ANNOTATION_HEALTH)).filter(|_| !elector_down).cloned();
            let csn = csn::split_annotation(a.and_then(|a| a.get(ANNOTATION_CONTEXT_CSN)).map(String::as_str));
            let is_holder = holder.as_deref() == Some(name.as_str());
            let (lag, up) = if is_holder || leader_csn.is_empty() || elector_down {
                (None, None)
            } else {
                (csn::lag(&csn, &leader_csn).map(|d| d.as_secs_f64()), Some(caught_up(&csn, &leader_csn)))
            };
            if role.as_deref() == Some(ROLE_LEADER) {
                labelled.push(name.clone());
                if !is_holder {
                    warnings.push(format!(
                        "{name} is labelled leader but the Lease is held by {}",
                        holder.as_deref().unwrap_or("nobody")
                    ));
                }
            }
            if !ready {
                warnings.push(format!("{name} is not Ready (its published health may be stale)"));
            }
            match health.as_deref() {
                None if elector_down => warnings.push(format!(
                    "{name}'s elector is not running: its published health and contextCSN are stale (unknown)"
                )),
                None => warnings.push(format!("{name} has not published its health (is its elector running?)")),
                Some(HEALTH_HEALTHY) => {}
                Some(other) => warnings.push(format!("{name} is {other}")),
            }
            // Fresh only: the elector repeats the Event at every check while the finding lasts.
            let fresh =
                |e: &&Event| age(s.now, event_time(e)).is_some_and(|a| a <= 2 * crate::slapd::config_guard::RECHECK);
            let found = config_events.iter().filter(|e| regards(e, pod)).filter(fresh).max_by_key(|e| event_time(e));
            if let Some(note) = found {
                warnings.push(format!(
                    "{name}: {} (Event {}, the elector checks every {} min)",
                    note.message.as_deref().unwrap_or("dangerous slapd settings"),
                    contract::event_reason::DANGEROUS_SLAPD_CONFIG,
                    crate::slapd::config_guard::RECHECK.as_secs() / 60
                ));
            }
            let diverged = marks.get(&name).cloned();
            let allow = allowed.contains(&name);
            if let Some(d) = &diverged {
                let what = if is_holder { "the leader" } else { "standby" };
                let override_note = if allow { " (promotion allowed by override)" } else { "" };
                warnings
                    .push(format!("{what} {name} is marked diverged since {}: {}{override_note}", d.since, d.summary));
            }
            PodStatus {
                name,
                role,
                term: term_of(pod),
                ready,
                health,
                context_csn: csn,
                lag_seconds: lag,
                caught_up: up,
                diverged,
                allow_diverged: allow,
            }
        })
        .collect();
    if labelled.len() > 1 {
        warnings.push(format!("{} pods are labelled leader: {}", labelled.len(), labelled.join(", ")));
    }
    if let Some(h) = &holder {
        if !labelled.contains(h) {
            if pod_status.iter().any(|p| &p.name == h) {
                warnings.push(format!("the Lease holder {h} is not labelled leader (yet)"));
            } else {
                warnings.push(format!("the Lease holder {h} is not a pod of the StatefulSet"));
            }
        }
    }

    let live_leader = holder.as_deref().filter(|_| !expired);
    let mut services = Vec::new();
    for name in &s.leader_services {
        let slices = s.endpoint_slices.get(name).map(Vec::as_slice).unwrap_or_default();
        let endpoints: Vec<Endpoint> = slices
            .iter()
            .flat_map(|slice| slice.endpoints.iter())
            .map(|e| Endpoint {
                pod: e.target_ref.as_ref().and_then(|r| r.name.clone()),
                addresses: e.addresses.clone(),
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect();
        let ready: BTreeSet<&str> =
            endpoints.iter().filter(|e| e.ready).map(|e| e.pod.as_deref().unwrap_or("?")).collect();
        let want: BTreeSet<&str> = live_leader.into_iter().collect();
        if ready != want {
            warnings.push(format!(
                "write Service {name} routes to {:?}, expected exactly the leader {:?}",
                ready.iter().collect::<Vec<_>>(),
                want.iter().collect::<Vec<_>>()
            ));
        }
        services.push(ServiceStatus { name: name.clone(), endpoints });
    }
    if s.replicas.is_some() && s.leader_services.is_empty() {
        warnings.push(format!("the StatefulSet names no write Service ({})", contract::ANNOTATION_LEADER_SERVICE));
    }
    let lease = s.lease.as_ref();
    Status {
        namespace: s.namespace.clone(),
        statefulset: s.statefulset.clone(),
        lease: s.lease_name.clone(),
        leader: holder,
        term: lease.map(|_| spec.lease_transitions.unwrap_or(0)),
        lease_duration_seconds: duration,
        lease_age_seconds: lease_age.map(|d| d.as_secs_f64()),
        renew_age_seconds: renew_age.map(|d| d.as_secs_f64()),
        expired,
        leader_context_csn: leader_csn,
        switchover_pending: lease.and_then(switchover::requested).map(String::from),
        switchover_refused: lease.and_then(switchover::refusal).map(String::from),
        uncovered,
        pods: pod_status,
        services,
        warnings,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// The human table.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "StatefulSet {}/{}, Lease {}", st.namespace, st.statefulset, st.lease);
    let _ = writeln!(
        out,
        "leader: {}  term: {}  held for: {}  renewed: {} ago (duration {}s){}",
        or_dash(st.leader.as_deref()),
        st.term.map_or("-".into(), |t| t.to_string()),
        secs(st.lease_age_seconds.map(Duration::from_secs_f64)),
        secs(st.renew_age_seconds.map(Duration::from_secs_f64)),
        st.lease_duration_seconds.unwrap_or(0),
        if st.expired { "  EXPIRED" } else { "" }
    );
    let _ = writeln!(
        out,
        "leader contextCSN: {}",
        if st.leader_context_csn.is_empty() { "-".into() } else { st.leader_context_csn.join(" ") }
    );
    if let Some(t) = &st.switchover_pending {
        let _ = writeln!(out, "switchover: pending to {t}");
    }
    if let Some(r) = &st.switchover_refused {
        let _ = writeln!(out, "switchover: last request refused: {r}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<5} {:<6} {:<10} {:<10} {:<9} CONTEXT-CSN",
        "POD", "ROLE", "TERM", "READY", "HEALTH", "LAG", "DIVERGED"
    );
    for p in &st.pods {
        let health = match p.health.as_deref() {
            Some(HEALTH_HEALTHY) => HEALTH_HEALTHY,
            Some(_) => "unhealthy",
            None => "unknown",
        };
        let lag = match (p.lag_seconds, p.caught_up) {
            (_, None) => "-".to_string(),
            (Some(l), Some(up)) => format!("{l:.1}s{}", if up { "" } else { "!" }),
            (None, Some(_)) => "unknown".to_string(),
        };
        let diverged = match (&p.diverged, p.allow_diverged) {
            (None, _) => "-",
            (Some(_), false) => "yes",
            (Some(_), true) => "allowed",
        };
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<5} {:<6} {:<10} {:<10} {:<9} {}",
            p.name,
            or_dash(p.role.as_deref()),
            p.term.map_or("-".into(), |t| t.to_string()),
            if p.ready { "yes" } else { "no" },
            health,
            lag,
            diverged,
            if p.context_csn.is_empty() { "-".into() } else { p.context_csn.join(" ") }
        );
    }
    for s in &st.services {
        let eps: Vec<String> = s
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} {}{}",
                    or_dash(e.pod.as_deref()),
                    e.addresses.join(","),
                    if e.ready { "" } else { " (not ready)" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\nwrite Service {}: {}",
            s.name,
            if eps.is_empty() { "no endpoints".into() } else { eps.join("; ") }
        );
    }
    if !st.warnings.is_empty() {
        let _ = writeln!(out);
    }
    for w in &st.warnings {
        let _ = writeln!(out, "WARN {w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap_elector_contract::{
        LABEL_ROLE, LEASE_ANNOTATION_CONTEXT_CSN, LEASE_ANNOTATION_DIVERGED, LEASE_ANNOTATION_SWITCHOVER_TO,
    };
    use serde_json::{json, Value};

    const NOW: &str = "2026-11-26T10:00:10Z";
    const CSN: &str = "20261126100000.000000Z#000000#001#000000";
    const CSN_OLD: &str = "20261126095950.000000Z#000000#001#000000";

    fn pod(name: &str, role: &str, health: Option<&str>, csn: &str, ready: bool) -> Pod {
        let mut annotations = json!({"ldap-elector.dev/term": "3", ANNOTATION_CONTEXT_CSN: csn});
        if let Some(h) = health {
            annotations[ANNOTATION_HEALTH] = h.into();
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {LABEL_ROLE: role}, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str, annotations: Value) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "ldap-leader", "annotations": annotations},
            "spec": {"holderIdentity": holder, "leaseTransitions": 3, "leaseDurationSeconds": 8,
                     "acquireTime": "2026-11-26T09:59:00.000000Z", "renewTime": renewed},
        }))
        .unwrap()
    }

    fn slice(pods: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|(p, ready)| json!({"addresses": ["192.0.2.1"], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": p}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": endpoints}))
            .unwrap()
    }

    /// Issue 15, item 8: an elector that was killed and not restarted left `healthy` and its
    /// contextCSN on its pod; status must read them as unknown and exit non-zero.
    #[test]
    fn a_dead_electors_publications_read_as_unknown() {
        let sidecar = |running: bool| {
            let state = if running {
                json!({"running": {"startedAt": NOW}})
            } else {
                json!({"terminated": {"exitCode": 137, "reason": "Error"}})
            };
            json!([{"name": contract::SIDECAR_CONTAINER, "image": "x", "imageID": "", "ready": running,
                    "restartCount": 1, "state": state}])
        };
        let mut s = healthy();
        let i = s.pods.iter().position(|p| p.metadata.name.as_deref() == Some("ldap-1")).unwrap();
        let mut standby = serde_json::to_value(&s.pods[i]).unwrap();
        standby["status"]["initContainerStatuses"] = sidecar(false);
        s.pods[i] = serde_json::from_value(standby.clone()).unwrap();
        assert_eq!(elector_running(&s.pods[i]), Some(false));
        let status = assess(&s);
        let p = status.pods.iter().find(|p| p.name == "ldap-1").unwrap();
        assert_eq!((p.health.as_deref(), p.caught_up, p.lag_seconds), (None, None, None), "{p:?}");
        assert!(warns(&s, "ldap-1's elector is not running"), "{:?}", status.warnings);
        // Running and started but not Ready (its slapd still catching up): its publications
        // are current.
        standby["status"]["initContainerStatuses"] = sidecar(true);
        standby["status"]["initContainerStatuses"][0]["ready"] = json!(false);
        standby["status"]["initContainerStatuses"][0]["started"] = json!(true);
        assert_eq!(elector_running(&serde_json::from_value(standby.clone()).unwrap()), Some(true));
        // Running again: its publications count.
        standby["status"]["initContainerStatuses"] = sidecar(true);
        s.pods[i] = serde_json::from_value(standby).unwrap();
        let status = assess(&s);
        let p = status.pods.iter().find(|p| p.name == "ldap-1").unwrap();
        assert_eq!((p.health.as_deref(), p.caught_up), (Some(HEALTH_HEALTHY), Some(true)), "{p:?}");
        assert!(status.warnings.is_empty(), "{:?}", status.warnings);
    }

    /// A healthy pair: ldap-0 leads, ldap-1 is a caught-up standby, the Service routes to ldap-0.
    fn healthy() -> Snapshot {
        Snapshot {
            namespace: "ns".into(),
            statefulset: "ldap".into(),
            replicas: Some(2),
            leader_services: vec!["ldap-primary".into()],
            lease_name: "ldap-leader".into(),
            lease: Some(lease(
                Some("ldap-0"),
                "2026-11-26T10:00:08.000000Z",
                json!({LEASE_ANNOTATION_CONTEXT_CSN: CSN}),
            )),
            pods: vec![
                pod("ldap-1", "standby", Some("healthy"), CSN, true),
                pod("ldap-0", "leader", Some("healthy"), CSN, true),
            ],
            endpoint_slices: [("ldap-primary".to_string(), vec![slice(&[("ldap-0", true), ("ldap-1", false)])])].into(),
            config_events: Ok(Vec::new()),
            now: NOW.parse().unwrap(),
        }
    }

    fn warns(s: &Snapshot, needle: &str) -> bool {
        assess(s).warnings.iter().any(|w| w.contains(needle))
    }

    #[test]
    fn a_healthy_pair_has_no_warnings_and_all_the_facts() {
        let st = assess(&healthy());
        assert!(st.warnings.is_empty(), "{:?}", st.warnings);
        assert_eq!((st.leader.as_deref(), st.term, st.expired), (Some("ldap-0"), Some(3), false));
        assert_eq!(st.renew_age_seconds, Some(2.0));
        assert_eq!(st.lease_age_seconds, Some(70.0));
        assert_eq!(st.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["ldap-0", "ldap-1"]);
        assert_eq!((st.pods[1].lag_seconds, st.pods[1].caught_up), (Some(0.0), Some(true)));
        assert_eq!(st.pods[0].caught_up, None, "the leader has no lag");
        assert_eq!(st.services[0].endpoints.len(), 2);
        let table = render(&st);
        assert!(table.contains("leader: ldap-0  term: 3") && !table.contains("WARN"), "{table}");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["pods"][1]["role"], "standby");
    }

    /// The configuration guard's Event (issue 16: the session log Nubus ships with) warns for
    /// the pod it is about, while fresh; an Event of an earlier pod of that name does not.
    #[test]
    fn a_fresh_dangerous_slapd_config_event_of_the_pod_warns() {
        let event = |uid: &str, at: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": "e", "namespace": "ns"},
                "involvedObject": {"kind": "Pod", "name": "ldap-1", "uid": uid},
                "reason": contract::event_reason::DANGEROUS_SLAPD_CONFIG,
                "message": "dangerous or doubtful slapd settings: session-log-on-mirror-mode; see this sidecar's log",
                "eventTime": at,
            }))
            .unwrap()
        };
        let mut s = healthy();
        s.config_events = Ok(vec![event("uid-ldap-1", "2026-11-26T09:55:00.000000Z")]);
        let st = assess(&s);
        assert_eq!(st.warnings.len(), 1, "{:?}", st.warnings);
        assert!(st.warnings[0].starts_with("ldap-1: dangerous or doubtful slapd settings: session-log-on-mirror-mode"));
        s.config_events = Ok(vec![event("uid-of-an-earlier-ldap-1", "2026-11-26T09:55:00.000000Z")]);
        assert!(assess(&s).warnings.is_empty(), "another pod's Event");
        s.config_events = Ok(vec![event("uid-ldap-1", "2026-11-26T09:00:00.000000Z")]);
        assert!(assess(&s).warnings.is_empty(), "not repeated for an hour: fixed since");
        s.config_events = Err("forbidden".into());
        assert!(warns(&s, "cannot read Events (slapd configuration findings not shown): forbidden"));
    }

    #[test]
    fn a_lagging_standby_shows_its_lag() {
        let mut s = healthy();
        s.pods[0] = pod("ldap-1", "standby", Some("healthy"), CSN_OLD, true);
        let st = assess(&s);
        assert_eq!((st.pods[1].lag_seconds, st.pods[1].caught_up), (Some(10.0), Some(false)));
        assert!(render(&st).contains("10.0s!"));
    }

    #[test]
    fn leader_label_without_the_lease_warns() {
        let mut s = healthy();
        s.pods[0] = pod("ldap-1", "leader", Some("healthy"), CSN, true);
        assert!(warns(&s, "ldap-1 is labelled leader but the Lease is held by ldap-0"));
        assert!(warns(&s, "2 pods are labelled leader"));
        s.lease = Some(lease(None, "2026-11-26T10:00:08.000000Z", json!({})));
        assert!(warns(&s, "held by nobody"));
        assert!(warns(&s, "no leader"));
    }

    #[test]
    fn a_holder_without_the_label_warns() {
        let mut s = healthy();
        s.pods[1] = pod("ldap-0", "standby", Some("healthy"), CSN, true);
        assert!(warns(&s, "holder ldap-0 is not labelled leader"));
    }

    #[test]
    fn an_expired_lease_warns_and_the_service_should_be_empty() {
        let mut s = healthy();
        s.lease = Some(lease(Some("ldap-0"), "2026-11-26T09:59:59.000000Z", json!({})));
        let st = assess(&s);
        assert!(st.expired);
        assert!(st.warnings.iter().any(|w| w.contains("has expired")), "{:?}", st.warnings);
        assert!(st.warnings.iter().any(|w| w.contains("write Service ldap-primary routes to")), "{:?}", st.warnings);
    }

    #[test]
    fn a_missing_lease_or_statefulset_warns() {
        let mut s = healthy();
        s.lease = None;
        s.replicas = None;
        assert!(warns(&s, "Lease ldap-leader not found"));
        assert!(warns(&s, "StatefulSet ns/ldap not found"));
    }

    #[test]
    fn the_write_service_must_route_exactly_to_the_leader() {
        let mut s = healthy();
        s.endpoint_slices.insert("ldap-primary".into(), vec![slice(&[("ldap-0", true), ("ldap-1", true)])]);
        assert!(warns(&s, "routes to [\"ldap-0\", \"ldap-1\"]"));
        s.endpoint_slices.insert("ldap-primary".into(), vec![]);
        assert!(warns(&s, "routes to []"));
        s.endpoint_slices.insert("ldap-primary".into(), vec![slice(&[("ldap-1", true)])]);
        assert!(warns(&s, "expected exactly the leader [\"ldap-0\"]"));
        s.leader_services.clear();
        assert!(warns(&s, "names no write Service"));
    }

    #[test]
    fn unhealthy_unknown_and_unready_pods_warn() {
        let mut s = healthy();
        s.pods[0] = pod("ldap-1", "standby", Some("unhealthy: down"), CSN, false);
        assert!(warns(&s, "ldap-1 is unhealthy: down"));
        assert!(warns(&s, "ldap-1 is not Ready"));
        s.pods[0] = pod("ldap-1", "standby", None, CSN, true);
        assert!(warns(&s, "ldap-1 has not published its health"));
        assert!(render(&assess(&s)).contains("unknown"));
    }

    #[test]
    fn a_diverged_standby_warns_with_its_override() {
        let mut s = healthy();
        let marks = r#"{"ldap-1": {"since": "2026-11-26T09:00:00Z", "summary": "2 entries differ"}}"#;
        s.lease = Some(lease(Some("ldap-0"), "2026-11-26T10:00:08.000000Z", json!({LEASE_ANNOTATION_DIVERGED: marks})));
        let st = assess(&s);
        assert!(st
            .warnings
            .iter()
            .any(|w| w.contains("standby ldap-1 is marked diverged since 2026-11-26T09:00:00Z: 2 entries differ")));
        assert_eq!(st.pods[1].diverged.as_ref().map(|d| d.summary.as_str()), Some("2 entries differ"));
        s.lease = Some(lease(
            Some("ldap-0"),
            "2026-11-26T10:00:08.000000Z",
            json!({LEASE_ANNOTATION_DIVERGED: marks, contract::LEASE_ANNOTATION_ALLOW_DIVERGED: "ldap-1"}),
        ));
        assert!(warns(&s, "(promotion allowed by override)"));
        assert!(render(&assess(&s)).contains("allowed"));
        s.lease =
            Some(lease(Some("ldap-0"), "2026-11-26T10:00:08.000000Z", json!({LEASE_ANNOTATION_DIVERGED: "nonsense"})));
        assert!(warns(&s, "is not a JSON object"));
    }

    #[test]
    fn an_uncovered_take_over_warns() {
        let mut s = healthy();
        let note = r#"{"term": 3, "previous": "ldap-1", "reason": "unreachable", "seconds": 6.05}"#;
        s.lease = Some(lease(
            Some("ldap-0"),
            "2026-11-26T10:00:08.000000Z",
            json!({contract::LEASE_ANNOTATION_UNCOVERED: note}),
        ));
        assert_eq!(assess(&s).uncovered.map(|u| u.term), Some(3));
        assert!(warns(&s, "the leader ldap-0 took over term 3 after ldap-1's Lease expired"));
    }

    #[test]
    fn a_pending_switchover_is_shown() {
        let mut s = healthy();
        s.lease = Some(lease(
            Some("ldap-0"),
            "2026-11-26T10:00:08.000000Z",
            json!({LEASE_ANNOTATION_SWITCHOVER_TO: "ldap-1", contract::LEASE_ANNOTATION_SWITCHOVER_REFUSED: "ldap-1: old"}),
        ));
        let st = assess(&s);
        assert_eq!(st.switchover_pending.as_deref(), Some("ldap-1"));
        assert!(render(&st).contains("switchover: pending to ldap-1"));
        assert!(st.warnings.is_empty(), "{:?}", st.warnings);
    }
}

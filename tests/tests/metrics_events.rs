//! Metrics and Events on the real bed: two electors injected by the in-process webhook,
//! each serving `/metrics`; a graceful handover shows in both electors' metrics and as
//! Events on the pods and the StatefulSet; the webhook's `/metrics` counts the reviews.

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;
use ldap_elector_contract::{self as contract, event_reason, metric};
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::electors::{Pair, PairOptions};
use ldap_elector_tests::workloads::webhook::http_get;

const ELECT: Duration = Duration::from_secs(60);

/// The value of the sample `series` (name with labels, exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The port an elector's `/metrics` bound to (it was asked for port 0), from its log.
async fn metrics_port(pair: &Pair, pod: &str) -> anyhow::Result<u16> {
    wait_for(&format!("{pod} to log its metrics address"), Duration::from_secs(30), || async {
        let log = strip_ansi(&pair.log(pod));
        log.lines()
            .filter(|l| l.contains("serving Prometheus metrics"))
            .filter_map(|l| l.split("metrics_addr=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.rsplit_once(':')?.1.parse::<u16>().ok())
            .next_back()
            .ok_or_else(|| log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
    })
    .await
}

/// `text` without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn scrape(port: u16) -> Result<String, String> {
    http_get(port, "/metrics").await
}

/// Events of `reason` about `kind`/`name`, their notes.
fn notes(events: &[Event], reason: &str, kind: &str, name: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| e.note.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_events_follow_a_graceful_handover() -> anyhow::Result<()> {
    let runner_env = vec![
        ("ELECTOR_PROBE_ADDR".to_string(), "off".to_string()),
        (contract::ENV_METRICS_ADDR.to_string(), "127.0.0.1:0".to_string()),
        ("ELECTOR_LOG_FORMAT".to_string(), "text".to_string()),
        ("ELECTOR_LOG".to_string(), "info,ldap_elector=debug".to_string()),
    ];
    let options = PairOptions { webhook: true, runner_env: Some(runner_env), ..Default::default() };
    let pair = Pair::start_with(2, &[], options).await?;
    let old = pair.leader(ELECT).await?;
    let survivor = if old == pair.pod(0) { pair.pod(1) } else { pair.pod(0) };
    let (old_port, survivor_port) = (metrics_port(&pair, &old).await?, metrics_port(&pair, &survivor).await?);
    let leader_series = metric::IS_LEADER;
    let acquired = format!("{}{{reason=\"acquired\"}}", metric::TRANSITIONS_TOTAL);

    // Exactly one elector reports leading: the labelled one.
    let survivor_before = wait_for("is_leader 1 on the leader and 0 on the standby", ELECT, || async {
        let (a, b) = (scrape(old_port).await?, scrape(survivor_port).await?);
        match (sample(&a, leader_series), sample(&b, leader_series)) {
            (Some(1.0), Some(0.0)) => Ok(b),
            seen => Err(format!("{old}/{survivor} is_leader: {seen:?}\n{a}")),
        }
    })
    .await?;
    let leader_text = scrape(old_port).await.map_err(anyhow::Error::msg)?;
    assert_eq!(sample(&leader_text, &acquired), Some(1.0), "{leader_text}");
    assert!(sample(&leader_text, metric::TERM).is_some_and(|t| t >= 1.0), "{leader_text}");
    assert!(sample(&leader_text, metric::LAST_RENEW_AGE_SECONDS).is_some(), "{leader_text}");
    let renews = format!("{}_count", metric::RENEW_LATENCY_SECONDS);
    assert!(sample(&leader_text, &renews).is_some_and(|n| n >= 1.0), "{leader_text}");
    assert_eq!(sample(&survivor_before, metric::LAST_RENEW_AGE_SECONDS), None, "standby: {survivor_before}");
    let passes = format!("{}{{result=\"pass\"}}", metric::HEALTH_CHECKS_TOTAL);
    assert!(sample(&survivor_before, &passes).is_some_and(|n| n >= 1.0), "{survivor_before}");
    let sum = sample(&leader_text, &format!("{}_sum", metric::RENEW_LATENCY_SECONDS)).unwrap_or(0.0);
    let count = sample(&leader_text, &renews).unwrap_or(1.0);
    println!(
        "leader {old}: {count} Lease writes, mean latency {:.1} ms; /metrics {} bytes",
        sum / count * 1000.0,
        leader_text.len()
    );
    let acquired_before = sample(&survivor_before, &acquired).unwrap_or(0.0);

    // The webhook counted the two pod reviews it injected.
    let webhook = pair.webhook.as_ref().ok_or_else(|| anyhow::anyhow!("started with the webhook"))?;
    let injected = format!("{}{{kind=\"Pod\",outcome=\"injected\"}}", metric::WEBHOOK_REVIEWS_TOTAL);
    let webhook_text = scrape(webhook.health_port).await.map_err(anyhow::Error::msg)?;
    assert!(sample(&webhook_text, &injected).is_some_and(|n| n >= 2.0), "{webhook_text}");
    assert!(
        sample(&webhook_text, metric::WEBHOOK_CERT_EXPIRY_TIMESTAMP_SECONDS).is_some_and(|t| t > 1.7e9),
        "{webhook_text}"
    );

    // Graceful stop of the leader: the survivor reports leading, one more acquisition.
    let fault = Instant::now();
    assert!(pair.signal(&old, Signal::Term));
    let (new, _) = pair.wait_for_new_leader(&old, fault, Duration::from_secs(30)).await?;
    assert_eq!(new, survivor);
    wait_for("the survivor's is_leader 1 and its acquisitions up by one", ELECT, || async {
        let text = scrape(survivor_port).await?;
        match (sample(&text, leader_series), sample(&text, &acquired)) {
            (Some(1.0), Some(n)) if n == acquired_before + 1.0 => Ok(()),
            seen => Err(format!("{seen:?}\n{text}")),
        }
    })
    .await?;

    // Events on both pods and on the StatefulSet, in words.
    let events: Api<Event> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let set = pair.statefulset.clone();
    wait_for("role-change Events on the pods and the StatefulSet", Duration::from_secs(30), || async {
        let all = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        let checks = [
            (
                "BecameLeader on the old leader",
                notes(&all, event_reason::BECAME_LEADER, "Pod", &old),
                "became leader for term",
            ),
            ("SteppedDown on the old leader", notes(&all, event_reason::STEPPED_DOWN, "Pod", &old), "pod is stopping"),
            (
                "ReleasedLease on the old leader",
                notes(&all, event_reason::RELEASED_LEASE, "Pod", &old),
                "released the Lease",
            ),
            (
                "BecameLeader on the survivor",
                notes(&all, event_reason::BECAME_LEADER, "Pod", &survivor),
                "became leader",
            ),
            (
                "SteppedDown on the StatefulSet",
                notes(&all, event_reason::STEPPED_DOWN, "StatefulSet", &set),
                old.as_str(),
            ),
            (
                "BecameLeader on the StatefulSet",
                notes(&all, event_reason::BECAME_LEADER, "StatefulSet", &set),
                survivor.as_str(),
            ),
        ];
        for (what, found, fragment) in checks {
            if !found.iter().any(|n| n.contains(fragment)) {
                let seen: Vec<_> = all
                    .iter()
                    .map(|e| (e.reason.clone(), e.regarding.as_ref().and_then(|r| r.name.clone()), e.note.clone()))
                    .collect();
                return Err(format!("no {what} containing {fragment:?}; events: {seen:#?}"));
            }
        }
        Ok(())
    })
    .await?;
    pair.observer.assert_never_two_leaders();
    Ok(())
}

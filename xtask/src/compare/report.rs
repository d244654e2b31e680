//! The Markdown report of `make compare`: one column per implementation, the webhook's
//! figures, and the machine and versions they were taken with.

use std::fmt::Write as _;
use std::time::Duration;

use ldap_elector_tests::measure::{self, Machine};

use super::{Outcome, WebhookFigures, OURS, PARTITION_SETTLE, WEBHOOK_CONNS, WEBHOOK_RATE};

pub(super) fn markdown(
    outcomes: &[Outcome],
    webhook: Option<&WebhookFigures>,
    machine: &Machine,
    runs: usize,
    window: Duration,
    client_go: &str,
    date: &str,
) -> String {
    let mut s = String::new();
    let w = window.as_secs();
    let _ = writeln!(s, "# Leader election: ldap-elector vs client-go ({date})\n");
    let _ = writeln!(
        s,
        "Machine: {machine}. Control plane: the real test bed (kube-apiserver v1.35.4, etcd v3.6.16 on loopback), \
         a fresh bed per implementation, same run. client-go: `k8s.io/client-go` {client_go} \
         (`tests/peers/client-go-elector`). Timing: lease duration / renew deadline / renew (retry) period. \
         Latencies are p50 / p99 / max over {runs} runs each (with fewer than 100 runs p99 is a high rank, \
         at 20 runs the maximum), from the fault to the new leader label seen by an independent watch. \
         Steady state: one {w} s window after 10 s of settling; CPU in that window; RSS at its end.\n"
    );
    let _ = write!(s, "| metric |");
    for o in outcomes {
        let _ = write!(s, " {} ({}) |", o.name, o.timing);
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(outcomes.len()));
    let mut row = |name: String, cell: &dyn Fn(&Outcome) -> String| {
        let _ = write!(s, "| {name} |");
        for o in outcomes {
            let _ = write!(s, " {} |", cell(o));
        }
        let _ = writeln!(s);
    };
    row(format!("graceful handover, SIGTERM → new leader (n={runs})"), &|o| measure::summary(&o.graceful));
    row(format!("crash failover, kill -9 → new leader (n={runs})"), &|o| measure::summary(&o.crash));
    row(format!("time to leader, 2 candidates started at once (n={runs})"), &|o| measure::summary(&o.start2));
    row(format!("time to leader, 5 candidates started at once (n={runs})"), &|o| measure::summary(&o.start5));
    row(format!("failover on API partition, leader's API connection cut → new leader (n={runs})"), &|o| {
        measure::summary(&o.partition.samples)
    });
    row("partition runs after which the old leader kept its label (healed only by a restart)".into(), &|o| {
        format!("{} of {}", o.partition.stale, o.partition.samples.len())
    });
    row("moments with 2 leader labels: graceful / crash / start-ups / partition".into(), &|o| {
        format!("{} / {} / {} / {}", o.dual[0], o.dual[1], o.dual[2], o.dual[3])
    });
    row(format!("leader API requests/min ({w} s)"), &|o| format!("{:.1}", o.steady.leader.requests_per_minute));
    row(format!("follower API requests/min ({w} s)"), &|o| format!("{:.1}", o.steady.follower.requests_per_minute));
    row("leader RSS (MiB)".into(), &|o| o.steady.leader.rss_mib());
    row("follower RSS (MiB)".into(), &|o| o.steady.follower.rss_mib());
    row("leader CPU (ms per min)".into(), &|o| o.steady.leader.cpu_ms_per_minute(window));
    row("follower CPU (ms per min)".into(), &|o| o.steady.follower.cpu_ms_per_minute(window));
    if let Some(w) = webhook {
        // Only ldap-elector has a webhook.
        let cell = |text: String| move |o: &Outcome| if o.name == OURS { text.clone() } else { "– (none)".into() };
        let st = &w.steady;
        row(
            format!(
                "admission webhook at {WEBHOOK_RATE:.0} reviews/s for {:.0} s, one core: p50 / p99 / max (failed)",
                st.secs
            ),
            &cell(format!(
                "{} / {} / {} ({}; {:.0} reviews/s done)",
                webhook_ms(st.p50),
                webhook_ms(st.p99),
                webhook_ms(st.max),
                st.failed,
                st.reviews_per_s
            )),
        );
        let sat = &w.saturation;
        row(
            format!(
                "admission webhook saturation, {WEBHOOK_CONNS} connections closed loop, {:.0} s: reviews/s (p99, failed)",
                sat.secs
            ),
            &cell(format!("{:.0} ({}, {})", sat.reviews_per_s, webhook_ms(sat.p99), sat.failed)),
        );
    }
    let _ =
        writeln!(s, "\nAPI requests by verb in the {w} s window (audit log; a watch counts once, when it starts):\n");
    for o in outcomes {
        let _ = writeln!(
            s,
            "- {}: leader {}; follower {}",
            o.name,
            none_if_empty(o.steady.leader.verbs()),
            none_if_empty(o.steady.follower.verbs())
        );
    }
    let _ = writeln!(
        s,
        "\nPartition: each sidecar reaches the API server through its own loopback proxy (on a second fresh bed); \
         the leader's proxy closes its connections and refuses new ones until another pod is labelled leader, \
         then passes traffic again. If the old leader still carries the label {} s later, its sidecar is \
         restarted so the next run starts from one leader label.",
        PARTITION_SETTLE.as_secs()
    );
    if let Some(w) = webhook {
        let _ = writeln!(
            s,
            "\nWebhook: the release `ldap-elector-webhook` {}, everything else {}; {WEBHOOK_CONNS} keep-alive HTTP/1.1 \
             connections posting the `fresh-pod` AdmissionReview of an opted-in StatefulSet, every answer checked; \
             latency client-side from when a review was due (`make webhook-bench` has the full breakdown). \
             Saturation: {:.0} reviews/s, p99 {} ({} failed); at {WEBHOOK_RATE:.0}/s: {:.0} reviews/s done, \
             p50 / p99 / max {} / {} / {} ({} failed).",
            if w.pinned { "pinned to one core with `taskset`" } else { "NOT pinned (`taskset` missing)" },
            if w.pinned_away { "on the other core(s)" } else { "sharing its core" },
            w.saturation.reviews_per_s,
            webhook_ms(w.saturation.p99),
            w.saturation.failed,
            w.steady.reviews_per_s,
            webhook_ms(w.steady.p50),
            webhook_ms(w.steady.p99),
            webhook_ms(w.steady.max),
            w.steady.failed,
        );
        let errors: Vec<&String> = w.saturation.errors.iter().chain(&w.steady.errors).collect();
        if !errors.is_empty() {
            let _ = writeln!(s, "\nWebhook errors (first): {errors:?}");
        }
    }
    s
}

fn webhook_ms(ms: f64) -> String {
    format!("{ms:.2} ms")
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

//! docs/getting-started.md, executed: the test starts the bed exactly as `make bed` does (the
//! `testbed` binary), takes the two `export` lines it prints as a newcomer would paste them,
//! and runs every `sh` block of the page marked `<!-- e2e: NAME -->`, in order, in ONE
//! `bash -euo pipefail` (so variables carry over as in one shell). A failing command fails
//! the test with its block's output. Then it checks what the page promises: the chart's
//! webhook (called through its Service) injects the sidecar, status shows exactly one leader,
//! the switchover moves leadership to the other pod, and `ldap_elector_is_leader` follows.

use ldap_elector_tests::repo_root;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use ldap_elector_contract::metric;
use serde_json::Value;

/// How long the bed may take to print its export lines (it may build the binaries first).
const BED_UP: Duration = Duration::from_secs(900);
/// Bound on the whole walk-through (every wait inside is bounded by the page itself).
const WALK: Duration = Duration::from_secs(900);
/// The webhook's counter of injected pod reviews, as rendered.
const INJECTED: &str = "ldap_elector_webhook_reviews_total{kind=\"Pod\",outcome=\"injected\"} ";
const PODS: [&str; 2] = ["ldap-server-0", "ldap-server-1"];
/// The marked blocks the page must keep (in this order), so the checks below stay meaningful.
const EXPECTED_BLOCKS: [&str; 12] = [
    "check",
    "install",
    "opt-in",
    "leader",
    "status",
    "status-json",
    "metrics-before",
    "webhook-metrics",
    "switchover",
    "status-after",
    "metrics-after",
    "uninstall",
];

/// The `sh` blocks preceded by a `<!-- e2e: NAME -->` line: (NAME, body).
fn marked_blocks(markdown: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("<!-- e2e:").and_then(|r| r.strip_suffix("-->")) else {
            continue;
        };
        let fence = lines.next().context("a marker at the end of the page")?;
        anyhow::ensure!(fence.trim() == "```sh", "marker {name:?} must be followed by a ```sh block, got {fence:?}");
        let mut body = String::new();
        loop {
            let l = lines.next().with_context(|| format!("block {name:?} is not closed"))?;
            if l.trim() == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        blocks.push((name.trim().to_string(), body));
    }
    Ok(blocks)
}

/// The bed of `make bed`, stopped with SIGTERM (it then tears everything down) on drop.
struct TestBed {
    child: std::process::Child,
    exports: Vec<String>,
}

impl TestBed {
    fn start() -> anyhow::Result<TestBed> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the testbed binary")?;
        let stdout = child.stdout.take().context("testbed stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("bed | {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut bed = TestBed { child, exports: Vec::new() };
        let deadline = std::time::Instant::now() + BED_UP;
        while bed.exports.len() < 2 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).context("the bed did not print its two export lines")?;
            if line.starts_with("export KUBECONFIG=") || line.starts_with("export PATH=") {
                bed.exports.push(line);
            }
        }
        Ok(bed)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID; no memory is touched.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..300 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output of each block of the walk-through, by name, split at the markers the script echoes.
fn split_outputs(output: &str) -> BTreeMap<String, String> {
    let mut outputs = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("@@e2e-block ") {
            current = Some(name.to_string());
            outputs.insert(name.to_string(), String::new());
        } else if let Some(text) = current.as_ref().and_then(|n| outputs.get_mut(n)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    outputs
}

/// `pod: ldap_elector_is_leader V` lines of a metrics block.
fn is_leader(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| {
            let (pod, rest) = l.split_once(": ")?;
            let value = rest.strip_prefix("ldap_elector_is_leader ")?;
            Some((pod.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The leader and term of a `status -o json` block, after checking it is consistent.
fn status(output: &str, block: &str) -> anyhow::Result<(String, u64)> {
    let json: Value = serde_json::from_str(output).with_context(|| format!("{block}: not JSON:\n{output}"))?;
    let leader = json["leader"].as_str().with_context(|| format!("{block}: no leader: {json:#}"))?.to_string();
    let term = json["term"].as_u64().with_context(|| format!("{block}: no term: {json:#}"))?;
    let labelled: Vec<&str> = json["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["role"] == "leader")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(labelled, [leader.as_str()], "{block}: exactly the Lease holder is labelled leader: {json:#}");
    let endpoints = ldap_elector_tests::workloads::status::routed_pods(&json);
    assert_eq!(endpoints, [leader.as_str()], "{block}: the write Service routes to the leader only: {json:#}");
    assert_eq!(json["warnings"], serde_json::json!([]), "{block}: {json:#}");
    Ok((leader, term))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_following_getting_started_installs_opts_in_switches_over_and_sees_the_metrics() -> anyhow::Result<()>
{
    let page = std::fs::read_to_string(repo_root().join("docs/getting-started.md"))?;
    let blocks = marked_blocks(&page)?;
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, EXPECTED_BLOCKS, "the marked blocks of docs/getting-started.md");
    // The page starts the bed with `make bed`, which runs the binary this test runs.
    assert!(page.contains("```sh\nmake bed\n```"), "the page starts the bed with `make bed`");
    let makefile = std::fs::read_to_string(repo_root().join("Makefile"))?;
    assert!(makefile.contains("--bin testbed"), "`make bed` runs the testbed binary");

    let bed = TestBed::start()?;
    let work = std::env::temp_dir().join(format!("ldap-elector-getting-started-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // The walk-through as one shell session: the pasted exports, then each block.
    let mut script = String::from("set -euo pipefail\nexec 2>&1\n");
    for export in &bed.exports {
        script.push_str(export);
        script.push('\n');
    }
    for (name, body) in &blocks {
        script.push_str(&format!("echo '@@e2e-block {name}'\n{body}"));
    }
    let script_path = work.join("walk-through.sh");
    std::fs::write(&script_path, &script)?;
    let run = tokio::process::Command::new("bash")
        .arg(&script_path)
        .current_dir(repo_root())
        // Helm's state in a throwaway directory instead of the user's (~/.config/helm).
        .env("HELM_CACHE_HOME", work.join("helm/cache"))
        .env("HELM_CONFIG_HOME", work.join("helm/config"))
        .env("HELM_DATA_HOME", work.join("helm/data"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WALK, run).await.context("the walk-through did not finish")??;
    let _ = std::fs::remove_dir_all(&work);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    let outputs = split_outputs(&text);
    if !out.status.success() {
        let last = blocks.iter().rev().find(|(n, _)| outputs.contains_key(n));
        let (name, body) = last.map(|(n, b)| (n.as_str(), b.as_str())).unwrap_or(("(before the first block)", ""));
        anyhow::bail!(
            "docs/getting-started.md: block {name:?} failed ({}):\n{body}\noutput:\n{}",
            out.status,
            outputs.get(name).map(String::as_str).unwrap_or(&text)
        );
    }
    let block = |name: &str| outputs.get(name).cloned().unwrap_or_default();

    // Injected by the chart's webhook, one leader.
    assert!(block("leader").contains("ldap-elector injected"), "{}", block("leader"));
    let (leader, term) = status(&block("status-json"), "status-json")?;
    assert!(PODS.contains(&leader.as_str()), "{leader}");
    let standby = PODS.iter().find(|p| **p != leader).map(|p| p.to_string()).unwrap_or_default();
    let before = is_leader(&block("metrics-before"));
    assert_eq!(before.get(&leader).map(String::as_str), Some("1"), "{}", block("metrics-before"));
    assert_eq!(before.get(&standby).map(String::as_str), Some("0"), "{}", block("metrics-before"));
    // Summed over the webhook replicas (`<pod>: <series> <value>` lines).
    let injected: f64 = block("webhook-metrics")
        .lines()
        .filter_map(|l| l.split_once(": ")?.1.strip_prefix(INJECTED)?.trim().parse::<f64>().ok())
        .sum();
    assert!(injected >= 2.0, "both pods injected: {}", block("webhook-metrics"));
    // Both replicas answer through the pod proxy (each reports its certificate's expiry).
    let webhook_metrics = block("webhook-metrics");
    let expiry: std::collections::BTreeSet<&str> = webhook_metrics
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(_, m)| m.starts_with(metric::WEBHOOK_CERT_EXPIRY_TIMESTAMP_SECONDS))
        .map(|(pod, _)| pod)
        .collect();
    assert_eq!(expiry.len(), 2, "both webhook replicas: {}", block("webhook-metrics"));

    // The switchover moved leadership to the other pod, in a later term; the metrics follow.
    assert!(block("switchover").contains(&format!("{standby} leads")), "{}", block("switchover"));
    let (new_leader, new_term) = status(&block("status-after"), "status-after")?;
    assert_eq!(new_leader, standby, "{}", block("status-after"));
    assert!(new_term > term, "term {term} -> {new_term}");
    let after = is_leader(&block("metrics-after"));
    assert_eq!(after.get(&standby).map(String::as_str), Some("1"), "{}", block("metrics-after"));
    assert_eq!(after.get(&leader).map(String::as_str), Some("0"), "{}", block("metrics-after"));
    assert!(block("metrics-after").contains("BecameLeader"), "{}", block("metrics-after"));

    // Uninstalled: nothing of the release is left.
    assert!(block("uninstall").contains("No resources found"), "{}", block("uninstall"));
    drop(bed);
    Ok(())
}

#[test]
fn marked_blocks_are_extracted_in_order_and_bad_markers_are_refused() -> anyhow::Result<()> {
    let page =
        "text\n<!-- e2e: a -->\n```sh\necho 1\necho 2\n```\n```sh\nnot marked\n```\n<!-- e2e: b -->\n```sh\nx\n```\n";
    let blocks = marked_blocks(page)?;
    assert_eq!(blocks, [("a".to_string(), "echo 1\necho 2\n".to_string()), ("b".to_string(), "x\n".to_string())]);
    assert!(marked_blocks("<!-- e2e: a -->\n```yaml\nx\n```\n").is_err());
    assert!(marked_blocks("<!-- e2e: a -->\n```sh\nx\n").is_err());
    let outputs = split_outputs("noise\n@@e2e-block a\n1\n@@e2e-block b\n2\n3\n");
    assert_eq!(outputs.get("a").map(String::as_str), Some("1\n"));
    assert_eq!(outputs.get("b").map(String::as_str), Some("2\n3\n"));
    Ok(())
}

//! Issue 9: Mirror Mode can silently diverge. With the syncprov session log, a node that
//! was down while its peer made changes ending with a delete applies the delete, advances
//! its cookie and ignores the older missed changes; both nodes then show the same
//! contextCSN (OPENLDAP-NOTES.md). Here, on the real slapd pair:
//! - the divergence is reproduced (so the audit has a real target), and without the
//!   session log the same scenario converges;
//! - `ldap-elector audit` names the entries the returning node missed, says "in sync" on a
//!   converged pair, and never says "diverged" while a writer keeps changing the leader;
//! - the configuration guard flags the session log on the Mirror-Mode database.
//!
//! Run with `--nocapture` to see the audit reports.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::Mod;
use ldap_elector::divergence::audit::{self, AuditConfig, DiffKind, Report, Verdict};
use ldap_elector::slapd::config_guard;
use ldap_elector::slapd::ldap::Credentials;
use ldap_elector_tests::ldap::divergence::{self, description, dn, Outcome, CATCH_UP};
use ldap_elector_tests::ldap::slapd::{MirrorPair, PairOptions, ADMIN_DN, ADMIN_PASSWORD, PEOPLE, SUFFIX};
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::build::elector_binary;

const OP: Duration = Duration::from_secs(5);
/// Fresh scenarios tried before concluding that this slapd no longer diverges: the notes
/// saw the loss "in most runs", not all.
const ATTEMPTS: u32 = 3;

/// The slapd under test, as `slapd -VV` names it.
fn slapd_version() -> String {
    let out = std::process::Command::new("/usr/sbin/slapd").arg("-VV").output();
    let text = out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    text.ok()
        .and_then(|t| t.lines().find(|l| l.contains("slapd")).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "slapd (version unknown)".into())
}

/// The pair's two nodes as audit servers A (node 1) and B (node 2), bound as the rootDN.
fn audit_config(pair: &MirrorPair) -> anyhow::Result<AuditConfig> {
    let password_file = pair.dir.join("audit.password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n"))?;
    let creds = Credentials { bind_dn: Some(ADMIN_DN.into()), password_file: Some(password_file) };
    let url = |i: u32| format!("{}?base={SUFFIX}", pair.node(i).ldap_url());
    let mut config = AuditConfig::new(&url(1), &url(2), &creds).map_err(anyhow::Error::msg)?;
    config.timeout = Duration::from_secs(60);
    config.op_timeout = Duration::from_secs(10);
    Ok(config)
}

/// `ldap-elector audit` as a process: (exit code, stdout).
async fn audit_cli(pair: &MirrorPair, extra: &[&str]) -> anyhow::Result<(i32, String)> {
    let config = audit_config(pair)?;
    let password_file = pair.dir.join("audit.password");
    let mut cmd = tokio::process::Command::new(elector_binary(false));
    cmd.arg("audit")
        .args(["--server-a", &format!("{}?base={SUFFIX}", config.a.url)])
        .args(["--server-b", &format!("{}?base={SUFFIX}", config.b.url)])
        .args(["--bind-dn", ADMIN_DN])
        .arg("--bind-password-file")
        .arg(&password_file)
        .args(["--timeout", "60s"])
        .args(extra)
        .env("ELECTOR_LOG_FORMAT", "text")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        println!("audit stderr: {stderr}");
    }
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The scenario of the notes (see `ldap_elector_tests::ldap::divergence`): returns what node 2
/// then holds; node 1 holds all three changes whatever happened to node 2.
async fn stop_change_restart(pair: &MirrorPair, tag: &str) -> anyhow::Result<Outcome> {
    divergence::prepare(pair, tag).await?;
    let outcome = divergence::change_and_restart(pair, tag).await?;
    let (added, deleted) = (format!("{tag}-added"), format!("{tag}-deleted"));
    assert!(description(pair, 1, &added).await?.is_some() && description(pair, 1, &deleted).await?.is_none());
    Ok(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_log_divergence_is_reproduced_and_the_audit_names_the_missed_entries() -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default().session_log(100)).await?;
    // The configuration guard names the cause before anything is lost.
    for node in [1, 2] {
        let findings = config_guard::check(&pair.node(node).ldapi_url(), OP).await.map_err(anyhow::Error::msg)?;
        println!("node {node}: {findings:?}");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].code, "session-log-on-mirror-mode");
        assert_eq!(findings[0].severity, config_guard::Severity::Danger);
        assert_eq!(findings[0].entry, "olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config");
    }
    let mut diverged = None;
    let mut seen = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let tag = format!("run{attempt}");
        let outcome = stop_change_restart(&pair, &tag).await?;
        println!("attempt {attempt}: {outcome:?}");
        if outcome.lost_add || outcome.lost_modify {
            diverged = Some((tag, outcome));
            break;
        }
        seen.push(outcome);
    }
    let Some((tag, outcome)) = diverged else {
        panic!(
            "{} did NOT diverge in {ATTEMPTS} attempts: with olcSpSessionLog the returning node caught up the add and \
             the modify that preceded the missed delete ({seen:?}). OPENLDAP-NOTES.md (slapd 2.5.13) expects them to \
             be lost with both contextCSNs equal. If this slapd fixed the bug, update the notes and docs/divergence.md \
             and give the audit e2e another divergence to find.",
            slapd_version()
        );
    };
    // The signature of the bug: the nodes differ for good while their contextCSNs agree.
    assert_eq!(outcome.context_csn.0, outcome.context_csn.1);

    let report = audit::audit(&audit_config(&pair)?).await?;
    print!("{}", report.render());
    assert_eq!(report.verdict, Verdict::Diverged, "{}", report.render());
    assert!(report.context_csn_equal);
    let mut expected = Vec::new();
    if outcome.lost_add {
        expected.push((DiffKind::MissingOnB, dn(&format!("{tag}-added"))));
    }
    if outcome.lost_modify {
        expected.push((DiffKind::Differs, dn(&format!("{tag}-modified"))));
    }
    let mut found: Vec<(DiffKind, String)> = report.differences.iter().map(|d| (d.kind, d.dn.clone())).collect();
    found.sort_by(|x, y| x.1.cmp(&y.1));
    expected.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(found, expected, "{}", report.render());
    assert!(report.unsettled.is_empty());
    if let Some(modified) = report.differences.iter().find(|d| d.kind == DiffKind::Differs) {
        // Node 1 holds the newer change.
        assert!(modified.entry_csn_a > modified.entry_csn_b, "{modified:?}");
        assert!(!modified.metadata_only);
    }

    // The same through the command line, for scripts.
    let (code, stdout) = audit_cli(&pair, &["-o", "json"]).await?;
    let json: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(json["verdict"], "diverged");
    let dns: Vec<&str> =
        json["differences"].as_array().into_iter().flatten().filter_map(|d| d["dn"].as_str()).collect();
    assert!(expected.iter().all(|(_, d)| dns.contains(&d.as_str())), "{stdout}");
    let (code, human) = audit_cli(&pair, &[]).await?;
    assert_eq!(code, 1);
    assert!(human.contains("DIVERGED") && human.contains("same contextCSN"), "{human}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_session_log_the_returning_node_catches_up_and_the_audit_says_in_sync() -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default()).await?;
    let findings = config_guard::check(&pair.node(1).ldapi_url(), OP).await.map_err(anyhow::Error::msg)?;
    assert_eq!(findings, vec![], "the rig's default configuration is the safe one");
    // The default fence database holds the data; a fence on another one is a danger (issue 16).
    let dbs = config_guard::read(&pair.node(1).ldapi_url(), OP).await.map_err(anyhow::Error::msg)?;
    use ldap_elector::slapd::database::FencedDatabase;
    let target =
        |db: &str| config_guard::FenceTarget { database: FencedDatabase::Entry(db.into()), suffix: SUFFIX.into() };
    let default = ldap_elector_contract::DEFAULT_FENCE_DATABASE;
    assert_eq!(config_guard::fence_target_finding(&dbs, &target(default)), None, "{dbs:?}");
    let by_suffix =
        config_guard::FenceTarget { database: FencedDatabase::Suffix(SUFFIX.into()), suffix: SUFFIX.into() };
    assert_eq!(config_guard::fence_target_finding(&dbs, &by_suffix), None, "{dbs:?}");
    for elsewhere in ["olcDatabase={0}config,cn=config", "olcDatabase={7}mdb,cn=config"] {
        let finding = config_guard::fence_target_finding(&dbs, &target(elsewhere));
        let danger = Some(("fence-not-on-the-data-database", config_guard::Severity::Danger));
        assert_eq!(finding.map(|f| (f.code, f.severity)), danger, "{elsewhere}: {dbs:?}");
    }
    let outcome = stop_change_restart(&pair, "plain").await?;
    assert!(
        !outcome.lost_add && !outcome.lost_modify,
        "{}: without the session log the returning node must catch up every missed change: {outcome:?}",
        slapd_version()
    );
    let (uids, _) = pair.wait_converged(CATCH_UP).await?;
    assert_eq!(uids, ["plain-added", "plain-modified"]);

    let report = audit::audit(&audit_config(&pair)?).await?;
    print!("{}", report.render());
    assert_eq!(report.verdict, Verdict::InSync, "{}", report.render());
    assert!(report.differences.is_empty() && report.unsettled.is_empty());
    assert_eq!((report.a.entries, report.b.entries), (4, 4), "suffix, ou=people and two people");

    let (code, human) = audit_cli(&pair, &[]).await?;
    assert_eq!(code, 0, "{human}");
    assert!(human.contains("verdict: in sync"), "{human}");

    // SASL EXTERNAL over ldapi on one side reads the same entries.
    let mut config = audit_config(&pair)?;
    config.a = ldap_elector::slapd::ldap::LdapCheck::parse(&format!("{}?base={SUFFIX}", pair.node(1).ldapi_url()))
        .map_err(anyhow::Error::msg)?;
    let report = audit::audit(&config).await?;
    assert_eq!(report.verdict, Verdict::InSync, "{}", report.render());

    // A server that is gone is an error, not a verdict.
    pair.node(2).kill9().await;
    let err = audit::audit(&audit_config(&pair)?).await.unwrap_err();
    assert!(err.to_string().contains("server B") && err.to_string().contains("connect"), "{err}");
    let (code, _) = audit_cli(&pair, &[]).await?;
    assert_eq!(code, 4);
    Ok(())
}

/// Seed entries of the load test, preloaded offline into both nodes.
const SEEDS: u64 = 5000;

/// A writer on node 1 (the leader): adds entries and modifies random seed entries until
/// `stop`; node 2 replicates. Counts acknowledged writes.
async fn write_until(
    pair: Arc<MirrorPair>,
    id: u64,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut conn = pair.node(1).admin().await?;
    // Bounded even if `stop` never comes.
    for i in 1..=500_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if i % 3 == 0 {
            conn.add_person(&format!("load-{id}-{i}")).await?.success()?;
        } else {
            let target = dn(&format!("seed-{}", (i * 7919 + id * 104_729) % SEEDS));
            let value = format!("v{id}-{i}");
            let mods = vec![Mod::Replace("description", HashSet::from([value.as_str()]))];
            conn.ldap.with_timeout(OP).modify(&target, mods).await?.success()?;
        }
        writes.fetch_add(1, Ordering::Relaxed);
        // A busy directory, not a flood: faster than this, replication on a shared 2-core
        // machine falls seconds behind and the audit rightly says "unsettled (lagging)".
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_never_reports_divergence_while_a_writer_keeps_changing_the_leader() -> anyhow::Result<()> {
    // Enough entries that a pass takes a while, so writes land during it.
    let ldif = std::env::temp_dir().join(format!("divergence-seeds-{}.ldif", std::process::id()));
    let mut text = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
    );
    for i in 0..SEEDS {
        text.push_str(&format!(
            "dn: {}\nobjectClass: inetOrgPerson\nuid: seed-{i}\ncn: seed {i}\nsn: seed\n\n",
            dn(&format!("seed-{i}"))
        ));
    }
    std::fs::write(&ldif, text)?;
    let pair = MirrorPair::start(PairOptions::default().preload(ldif.clone()).db_max_size(256 << 20)).await;
    let _ = std::fs::remove_file(&ldif);
    let pair = Arc::new(pair?);

    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writers: Vec<_> =
        (0..2).map(|id| tokio::spawn(write_until(pair.clone(), id, stop.clone(), writes.clone()))).collect();
    wait_for("the writers to get going", Duration::from_secs(10), || async {
        if writes.load(Ordering::Relaxed) >= 20 {
            Ok(())
        } else {
            Err("fewer than 20 writes")
        }
    })
    .await?;

    let config = audit_config(&pair)?;
    let mut reports: Vec<Report> = Vec::new();
    let started = Instant::now();
    let before = writes.load(Ordering::Relaxed);
    // At least 10 audits, and on until one has caught a write between reading A and B (the
    // case the retries exist for; it does not happen in every audit), 30 at the most.
    let caught = |reports: &[Report]| reports.iter().any(|r| r.stats.candidates > 0);
    for run in 1..=30 {
        if run > 10 && caught(&reports) {
            break;
        }
        let report = audit::audit(&config).await?;
        let st = &report.stats;
        println!(
            "audit {run}: {:?}; {} entries on A; {} buckets differed, {} entries differed at first sight, {} rounds; {} ms",
            report.verdict, report.a.entries, st.differing_buckets, st.candidates, st.rounds, st.elapsed_ms
        );
        if report.verdict != Verdict::InSync {
            print!("{}", report.render());
        }
        reports.push(report);
    }
    let during = writes.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let candidates: u64 = reports.iter().map(|r| r.stats.candidates).sum();
    println!(
        "{during} writes on node 1 during the {} audits ({:?}); {candidates} entries differed at first sight in all",
        reports.len(),
        started.elapsed()
    );

    // The audits must have raced real writes, or this proves nothing.
    assert!(during >= 100, "only {during} writes during the audits");
    assert!(reports.iter().any(|r| r.stats.differing_buckets > 0), "no audit ever saw a write land during its pass");
    // Whether a write lands between reading A and B is a race that a loaded machine can lose
    // 30 times in a row; the retry judgement itself is unit-tested
    // (audit.rs::judgement_retries_what_is_in_flight_and_holds_only_what_both_servers_passed).
    if candidates == 0 {
        println!("note: no audit caught a write between reading A and B this time; the retry path was not exercised");
    }
    for r in &reports {
        assert_ne!(r.verdict, Verdict::Diverged, "false divergence under load:\n{}", r.render());
    }
    let in_sync = reports.iter().filter(|r| r.verdict == Verdict::InSync).count();
    assert_eq!(in_sync, reports.len(), "every audit under load should settle to in sync");

    // Quiet again: in sync.
    pair.wait_converged(CATCH_UP).await?;
    let report = audit::audit(&config).await?;
    assert_eq!(report.verdict, Verdict::InSync, "{}", report.render());
    assert_eq!(report.a.entries, report.b.entries);
    Ok(())
}

//! A real OpenLDAP Mirror-Mode pair (two Debian slapd 2.5 processes on loopback, no
//! Kubernetes): replication both ways, the elector's LDAP health check, and the
//! `olcReadOnly` write fence of the elector library.

use std::time::{Duration, Instant};

use ldap_elector::slapd::database::FencedDatabase;
use ldap_elector::slapd::fence::{Fence, Fencing as _, LdapFence};
use ldap_elector::slapd::health::HealthCheck;
use ldap_elector::slapd::health::RunCheck as _;
use ldap_elector::slapd::ldap::Probe as _;
use ldap_elector::slapd::ldap::{self, Credentials};
use ldap_elector_contract::ROLE_STANDBY;
use ldap_elector_tests::bed::process::Signal;
use ldap_elector_tests::ldap::conn::Conn;
use ldap_elector_tests::ldap::slapd::{MirrorPair, PairOptions, ADMIN_DN, ADMIN_PASSWORD, DATA_DB, SUFFIX};
use ldap_elector_tests::wait_for;

const REPLICATE: Duration = Duration::from_secs(15);
const CHECK: Duration = Duration::from_secs(2);

/// The rig's data database, named outright.
fn data() -> FencedDatabase {
    FencedDatabase::Entry(DATA_DB.into())
}

/// The same database, found by its suffix (what the webhook injects).
fn by_suffix() -> FencedDatabase {
    FencedDatabase::Suffix(SUFFIX.into())
}

/// Waits until node `i` lists `uid` (polling over one open connection).
async fn wait_visible(pair: &MirrorPair, i: u32, uid: &str, present: bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let conn = tokio::sync::Mutex::new(pair.node(i).admin().await?);
    let what = format!("uid={uid} {} on node {i}", if present { "present" } else { "absent" });
    wait_for(&what, REPLICATE, || async {
        let uids = conn.lock().await.uids().await?;
        if uids.iter().any(|u| u == uid) == present {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{uids:?}"))
        }
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_replicates_both_ways_and_a_restarted_node_catches_up() -> anyhow::Result<()> {
    let started = Instant::now();
    let pair = MirrorPair::start(PairOptions::default()).await?;
    println!("pair up and base entries replicated in {:?}", started.elapsed());

    pair.add_entry(1, "alice").await?;
    println!("1 -> 2 replication: {:?}", wait_visible(&pair, 2, "alice", true).await?);
    pair.add_entry(2, "bob").await?;
    println!("2 -> 1 replication: {:?}", wait_visible(&pair, 1, "bob", true).await?);
    let (uids, csn) = pair.wait_converged(REPLICATE).await?;
    assert_eq!(uids, ["alice", "bob"]);
    // Both servers wrote, so the suffix carries one contextCSN per server ID.
    assert_eq!(csn.len(), 2, "{csn:?}");
    assert!(csn[0].contains("#001#") && csn[1].contains("#002#"), "{csn:?}");

    // Node 2 misses an add and a delete while down; on restart it catches up by itself.
    pair.node(2).kill9().await;
    assert!(!pair.node(2).is_running());
    pair.add_entry(1, "carol").await?;
    pair.delete_entry(1, "alice").await?;
    let restarted = Instant::now();
    pair.node(2).start().await?;
    let (uids, _) = pair.wait_converged(REPLICATE).await?;
    println!("node 2 restarted and caught up in {:?}", restarted.elapsed());
    assert_eq!(uids, ["bob", "carol"]);

    // A graceful stop and start on the same directory and port works as well.
    pair.node(1).stop().await;
    pair.add_entry(2, "dave").await?;
    pair.node(1).start().await?;
    let (uids, _) = pair.wait_converged(REPLICATE).await?;
    assert_eq!(uids, ["bob", "carol", "dave"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ldap_health_check_passes_on_a_running_node_and_fails_after_kill_9() -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default()).await?;
    let password_file = pair.dir.join("admin.password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n"))?;
    let admin = Credentials { bind_dn: Some(ADMIN_DN.into()), password_file: Some(password_file.clone()) };
    let node = pair.node(1);
    let over_tcp =
        HealthCheck::parse_with(&format!("{}?base={SUFFIX}", node.ldap_url()), &admin).map_err(anyhow::Error::msg)?;
    let over_ldapi = HealthCheck::parse_with(&format!("{}?base={SUFFIX}", node.ldapi_url()), &Credentials::default())
        .map_err(anyhow::Error::msg)?;

    let mut csns = pair.context_csn(1).await?;
    csns.sort();
    assert!(!csns.is_empty());
    let t = Instant::now();
    assert_eq!(over_tcp.check_detailed(CHECK).await, Ok(csns.clone()));
    println!("ldap:// check (simple bind) took {:?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(over_ldapi.check_detailed(CHECK).await, Ok(csns.clone()));
    println!("ldapi:// check (SASL EXTERNAL) took {:?}", t.elapsed());

    // The CSN it reports follows writes.
    pair.add_entry(2, "erin").await?;
    wait_for("the check to report a newer contextCSN", REPLICATE, || async {
        match over_tcp.check_detailed(CHECK).await {
            Ok(seen) if seen.iter().max() > csns.iter().max() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // Wrong credentials and a suffix the server does not hold fail, naming the step.
    let wrong_file = pair.dir.join("wrong.password");
    std::fs::write(&wrong_file, "not-the-password")?;
    let wrong = Credentials { password_file: Some(wrong_file), ..admin.clone() };
    let err = HealthCheck::parse_with(&format!("{}?base={SUFFIX}", node.ldap_url()), &wrong)
        .map_err(anyhow::Error::msg)?
        .check(CHECK)
        .await
        .unwrap_err();
    assert!(err.contains("bind") && err.contains("rc=49"), "{err}");
    let probe = ldap::LdapCheck::parse(&format!("{}?base={SUFFIX}", node.ldap_url()))
        .and_then(|c| c.with_credentials(&wrong))
        .map_err(anyhow::Error::msg)?
        .probe(CHECK)
        .await
        .unwrap_err();
    assert!(matches!(probe, ldap::LdapError::Failed { step: ldap::Step::Bind, .. }), "{probe}");
    assert_eq!(probe.result_code(), Some(49), "invalidCredentials");
    let err = HealthCheck::parse_with(&format!("{}?base=dc=nowhere", node.ldap_url()), &admin)
        .map_err(anyhow::Error::msg)?
        .check(CHECK)
        .await
        .unwrap_err();
    assert!(err.contains("contextCSN") && err.contains("rc=32"), "{err}");

    // A read-only node is still healthy (health is liveness, not role).
    ldap::set_read_only(&node.ldapi_url(), &data(), true, CHECK).await?;
    assert!(over_tcp.check(CHECK).await.is_ok());
    ldap::set_read_only(&node.ldapi_url(), &data(), false, CHECK).await?;

    node.kill9().await;
    let t = Instant::now();
    let err = over_tcp.check(CHECK).await.unwrap_err();
    println!("check after kill -9 failed in {:?}: {err}", t.elapsed());
    assert!(err.contains("connect"), "{err}");
    let err = over_ldapi.check(CHECK).await.unwrap_err();
    assert!(err.contains("connect"), "{err}");
    // The peer is unaffected.
    let peer = HealthCheck::parse_with(&format!("{}?base={SUFFIX}", pair.node(2).ldap_url()), &admin)
        .map_err(anyhow::Error::msg)?;
    assert!(peer.check(CHECK).await.is_ok());

    node.start().await?;
    wait_for("the check to pass again after restart", REPLICATE, || over_tcp.check(CHECK)).await?;
    wait_for("the ldapi check to pass again after restart", REPLICATE, || over_ldapi.check(CHECK)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_fence_refuses_writes_on_open_connections_while_replication_still_applies() -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default()).await?;
    let node = pair.node(1);
    let ldapi = node.ldapi_url();
    // A client connection opened BEFORE the fence (as kube-proxy would keep it).
    let mut client = node.admin().await?;
    assert_eq!(client.add_person("before").await?.rc, 0);
    assert!(!ldap::is_read_only(&ldapi, &data(), CHECK).await?);

    let t = Instant::now();
    ldap::set_read_only(&ldapi, &by_suffix(), true, CHECK).await?;
    let fence = t.elapsed();
    let refused = client.add_person("refused").await?;
    println!("fence: set_read_only(true) took {fence:?}; next write on the open connection: {refused}");
    assert_eq!(refused.rc, 53, "unwillingToPerform expected, got {refused}");
    assert_eq!(client.delete_person("before").await?.rc, 53);
    assert_eq!(node.admin().await?.add_person("refused-new-conn").await?.rc, 53);
    // The library and an independent cn=config read agree.
    assert!(ldap::is_read_only(&ldapi, &data(), CHECK).await?);
    assert!(pair.read_only(1).await?);

    // A change on the peer still replicates INTO the read-only node.
    pair.add_entry(2, "from-peer").await?;
    println!("2 -> read-only 1 replication: {:?}", wait_visible(&pair, 1, "from-peer", true).await?);

    let t = Instant::now();
    ldap::set_read_only(&ldapi, &by_suffix(), false, CHECK).await?;
    let unfence = t.elapsed();
    let accepted = client.add_person("after").await?;
    println!("unfence: set_read_only(false) took {unfence:?}; next write: {accepted}");
    assert_eq!(accepted.rc, 0, "{accepted}");
    assert!(!ldap::is_read_only(&ldapi, &data(), CHECK).await?);
    assert!(!pair.read_only(1).await?);

    // is_read_only reads the truth, whoever set it.
    pair.set_read_only(1, true).await?;
    assert!(ldap::is_read_only(&ldapi, &data(), CHECK).await?);
    pair.set_read_only(1, false).await?;
    assert!(!ldap::is_read_only(&ldapi, &data(), CHECK).await?);

    // The fence only takes ldapi, names a missing database, and fails clearly on a dead socket.
    assert!(ldap::set_read_only(&node.ldap_url(), &data(), true, CHECK).await.is_err());
    let missing = FencedDatabase::Entry("olcDatabase={9}mdb,cn=config".into());
    let err = ldap::set_read_only(&ldapi, &missing, true, CHECK).await.unwrap_err();
    assert_eq!(err.result_code(), Some(32), "noSuchObject: {err}");
    // By suffix: cn=config is searched for it; none is an error that lists the databases.
    let err = ldap::set_read_only(&ldapi, &FencedDatabase::Suffix("dc=nowhere".into()), true, CHECK).await.unwrap_err();
    let listed = format!("{DATA_DB} ({SUFFIX})");
    assert!(
        err.to_string().contains("no database of slapd has the suffix dc=nowhere") && err.to_string().contains(&listed),
        "{err}"
    );
    assert!(!ldap::is_read_only(&ldapi, &by_suffix(), CHECK).await?, "nothing was fenced");
    let (uids, _) = pair.wait_converged(REPLICATE).await?;
    assert_eq!(uids, ["after", "before", "from-peer"]);
    node.kill9().await;
    let err = ldap::is_read_only(&ldapi, &data(), CHECK).await.unwrap_err();
    assert!(matches!(err, ldap::LdapError::NotRunning { .. }), "{err}");
    Ok(())
}

/// `ldap-elector start-fenced` (the init container before slapd's): a slapd whose
/// configuration says writable is restarted writable (the control), and after the offline
/// fence of its slapd.d it starts read-only, with no checksum complaint from back-ldif, and
/// the elector's fence still works on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slapd_fenced_offline_starts_read_only_and_its_elector_can_unfence_it() -> anyhow::Result<()> {
    use ldap_elector::slapd::start_fenced::{start_fenced, Outcome};
    let pair = MirrorPair::start(PairOptions::default()).await?;
    let node = pair.node(2);
    let config = node.dir().join("config");
    node.stop().await;
    node.start().await?;
    assert_eq!(node.admin().await?.add_person("writable-at-start").await?.rc, 0, "control: unfenced on disk");

    node.stop().await;
    // Found by its suffix in the files slapadd wrote.
    let outcome = start_fenced(&config, &by_suffix())?;
    assert!(matches!(outcome, Outcome::Fenced(_)), "{outcome:?}");
    assert!(matches!(start_fenced(&config, &data())?, Outcome::AlreadyFenced(_)));
    node.start().await?;
    let refused = node.admin().await?.add_person("at-start").await?;
    assert_eq!(refused.rc, 53, "read-only from its first operation: {refused}");
    assert!(ldap::is_read_only(&node.ldapi_url(), &data(), CHECK).await?);
    let log = node.log();
    assert!(!log.contains("checksum error"), "back-ldif accepted the file:\n{log}");

    ldap::set_read_only(&node.ldapi_url(), &data(), false, CHECK).await?;
    assert_eq!(node.admin().await?.add_person("after-unfence").await?.rc, 0);
    // Replication goes on both ways: a slapd that started fenced provides and consumes as before.
    println!("2 -> 1 after a fenced start: {:?}", wait_visible(&pair, 1, "after-unfence", true).await?);
    pair.add_entry(1, "from-peer-after").await?;
    println!("1 -> 2 after a fenced start: {:?}", wait_visible(&pair, 2, "from-peer-after", true).await?);

    // A wrong database is an error that names the ones there; no slapd.d is nothing to do.
    node.stop().await;
    let err =
        start_fenced(&config, &FencedDatabase::Entry("olcDatabase={7}mdb,cn=config".into())).unwrap_err().to_string();
    assert!(err.contains("olcDatabase={1}mdb,cn=config"), "{err}");
    let empty = node.dir().join("no-slapd.d");
    std::fs::create_dir_all(&empty)?;
    assert_eq!(start_fenced(&empty, &by_suffix())?, Outcome::NoConfiguration);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_can_stall_up_to_the_syncrepl_timeout_after_the_peer_reconnects() -> anyhow::Result<()> {
    let opts = PairOptions::default();
    let sync_timeout = Duration::from_secs(u64::from(opts.sync_timeout));
    let pair = std::sync::Arc::new(MirrorPair::start(opts).await?);
    let ldapi = pair.node(1).ldapi_url();
    pair.node(2).kill9().await;
    pair.node(2).start().await?;
    let restarted = Instant::now();

    // Reads on node 1 meanwhile, to see whether they stall with the fence.
    let reads = tokio::spawn({
        let pair = pair.clone();
        async move {
            let mut conn = pair.node(1).admin().await?;
            let mut worst = Duration::ZERO;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while restarted.elapsed() < Duration::from_secs(3) + sync_timeout {
                tick.tick().await;
                let t = Instant::now();
                // A read stalled past the rig's operation timeout counts as that long.
                let _ = conn.uids().await;
                worst = worst.max(t.elapsed());
            }
            anyhow::Ok(worst)
        }
    });

    // Fence and unfence node 1 while its consumer reconnects and refreshes.
    let mut worst = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for round in 0..60 {
        if restarted.elapsed() > Duration::from_secs(3) {
            break;
        }
        tick.tick().await;
        let t = Instant::now();
        ldap::set_read_only(&ldapi, &data(), round % 2 == 0, sync_timeout + Duration::from_secs(3)).await?;
        worst = worst.max(t.elapsed());
    }
    let worst_read = reads.await??;
    println!(
        "after the peer restarted: slowest fence {worst:?}, slowest read on the same node {worst_read:?} \
         (syncrepl timeout {sync_timeout:?})"
    );
    assert!(worst <= sync_timeout + Duration::from_millis(1500), "fence took {worst:?}");

    // Once the consumer has been through one pause it polls, and fences are prompt again.
    let t = Instant::now();
    ldap::set_read_only(&ldapi, &by_suffix(), false, CHECK).await?;
    assert!(t.elapsed() < Duration::from_secs(1), "fence took {:?}", t.elapsed());
    assert!(!ldap::is_read_only(&ldapi, &data(), CHECK).await?);
    pair.wait_converged(REPLICATE).await?;
    Ok(())
}

/// A server re-created from nothing as the real node's consumer re-creates a deleted pod (its
/// state an emptyDir: a fresh data directory loaded with the same base entries by slapadd) and
/// started fenced by `ldap-elector start-fenced`: it refreshes everything from its peer, and after
/// it is unfenced its writes reach the peer and the peer's reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_recreated_from_nothing_and_started_fenced_replicates_both_ways() -> anyhow::Result<()> {
    use ldap_elector::slapd::start_fenced::start_fenced;
    use ldap_elector_tests::ldap::slapd::sbin;
    let base = std::env::temp_dir().join(format!("ldap-elector-base-{}.ldif", std::process::id()));
    std::fs::write(&base, ldap_elector_tests::node::consumer::manifests::base_ldif())?;
    let pair = MirrorPair::start(PairOptions::default().preload(base.clone())).await?;
    for i in 0..10 {
        pair.add_entry(1, &format!("a{i}")).await?;
        pair.add_entry(2, &format!("b{i}")).await?;
    }
    pair.wait_converged(REPLICATE).await?;
    let node = pair.node(1);
    node.stop().await;
    std::fs::remove_dir_all(node.data_dir())?;
    std::fs::create_dir_all(node.data_dir())?;
    let config = node.dir().join("config");
    let out = std::process::Command::new(sbin("slapadd"))
        .args(["-q", "-w", "-b", SUFFIX, "-F"])
        .arg(&config)
        .arg("-l")
        .arg(&base)
        .output()?;
    let _ = std::fs::remove_file(&base);
    anyhow::ensure!(out.status.success(), "slapadd: {}", String::from_utf8_lossy(&out.stderr));
    start_fenced(&config, &data())?;
    node.start().await?;
    for uid in ["a9", "b9"] {
        wait_visible(&pair, 1, uid, true).await?;
    }
    ldap::set_read_only(&node.ldapi_url(), &data(), false, CHECK).await?;
    pair.add_entry(1, "after-recreation-1").await?;
    println!("1 -> 2 after the re-creation: {:?}", wait_visible(&pair, 2, "after-recreation-1", true).await?);
    pair.add_entry(2, "after-recreation-2").await?;
    println!("2 -> 1 after the re-creation: {:?}", wait_visible(&pair, 1, "after-recreation-2", true).await?);
    Ok(())
}

/// The whole leader pod frozen past the Lease and thawed (docs/design.md): slapd, the guard
/// and every client resume at once, and slapd serves what reached it first. Emulated here
/// without a pod: slapd stopped (SIGSTOP), a client's connect and bind sent to it, then the
/// guard's fence (at its deadline), then slapd continued. The client's write follows its bind
/// answer, so it is refused only if the fence is already queued as one request: a fence that
/// opens its session then (bind, DN search, modify) lost this race in CI on the real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_fence_sent_to_a_stopped_slapd_lands_before_a_write_that_follows_an_earlier_bind(
) -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default()).await?;
    let node = pair.node(1);
    let fence = LdapFence { ldapi_url: node.ldapi_url(), database: by_suffix() };
    let fence = std::sync::Arc::new(Fence::new(Some(fence), None, CHECK));
    fence.prepare().await; // what the guard does when the leader arms it
    let url = node.ldap_url();
    assert!(node.signal(Signal::Stop), "slapd runs");
    let client = tokio::spawn(async move {
        let mut conn = Conn::open(&url).await?;
        conn.ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
        conn.add_person("after-the-thaw").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the client's bind is queued
    let fenced = tokio::spawn({
        let fence = fence.clone();
        async move { fence.apply(ROLE_STANDBY).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // and the fence behind it
    assert!(node.signal(Signal::Cont));
    let write = client.await??;
    assert!(fenced.await?, "the fence is confirmed");
    assert_eq!(write.rc, 53, "the write after the thaw must be refused, got {write}");
    assert!(ldap::is_read_only(&node.ldapi_url(), &data(), CHECK).await?);
    Ok(())
}

//! Issue 17, item 7: the elector's LDAP reads of another slapd (the divergence audit, the
//! old leader's contextCSN after an expiry, `reseed`) send the audit identity's password.
//! Over TLS (StartTLS or `ldaps://`) they verify the server's certificate against the CA
//! file given and its name against the URL's host; a simple bind over plain `ldap://` to a
//! host that is not local is refused before anything is sent, unless explicitly allowed.
//!
//! A real Mirror-Mode pair on loopback with TLS from a test CA (certificate for 127.0.0.1
//! only). Non-local addresses appear only as strings (192.0.2.10, TEST-NET-1): the refusal
//! happens before any connect, and the allowed attempt runs in an empty network namespace,
//! where nothing can leave.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ldap3::{Mod, Scope};
use ldap_elector::divergence::audit::{self, AuditConfig, Verdict};
use ldap_elector::divergence::auditor::peer_check;
use ldap_elector::slapd::ldap::{Credentials, Probe as _, Tls};
use ldap_elector_contract as contract;
use ldap_elector_tests::ldap::slapd::{MirrorPair, PairOptions, ADMIN_DN, ADMIN_PASSWORD, DATA_DB, SUFFIX};
use ldap_elector_tests::ldap::writer;
use ldap_elector_tests::wait_for;
use ldap_elector_tests::workloads::build::elector_binary;
use ldap_elector_tests::workloads::electors::{Pair, PairOptions as ElectorOptions};

/// The rootDN's password in a file, as the sidecar gets the bind Secret's.
fn admin_credentials(dir: &Path) -> anyhow::Result<Credentials> {
    let file = dir.join("admin.password");
    std::fs::write(&file, format!("{ADMIN_PASSWORD}\n"))?;
    Ok(Credentials { bind_dn: Some(ADMIN_DN.into()), password_file: Some(file) })
}

/// A CA that did not sign the pair's certificates.
fn other_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    let ca = ldap_elector_certs::generate_ca("some-other-ca", Duration::from_secs(3600))?;
    let file = dir.join("other-ca.crt");
    std::fs::write(&file, ca.cert_pem())?;
    Ok(file)
}

fn starttls(ca: &Path) -> Tls {
    Tls { starttls: true, ca_file: Some(ca.to_path_buf()), allow_cleartext_bind: false }
}

fn ldaps(ca: &Path) -> Tls {
    Tls { starttls: false, ca_file: Some(ca.to_path_buf()), allow_cleartext_bind: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reads_and_audits_over_tls_verify_the_ca_and_the_servers_name() -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default().tls()).await?;
    let ca = pair.ca_file().expect("a TLS pair has a CA").to_path_buf();
    let wrong = other_ca(&pair.dir)?;
    let creds = admin_credentials(&pair.dir)?;
    let node2 = pair.node(2);
    let (plain, ldaps_url) = (node2.ldap_url(), node2.ldaps_url().expect("an ldaps port"));
    let timeout = Duration::from_secs(5);

    // Node 2's data requires TLS from now on (ldapi counts as secure): a read that works
    // below went over TLS. The loopback bind over plain ldap:// passes our rule (local) and
    // is refused by slapd itself.
    let mut root = node2.root().await?;
    root.ldap
        .with_timeout(timeout)
        .modify(DATA_DB, vec![Mod::Add("olcSecurity", HashSet::from(["ssf=1"]))])
        .await?
        .success()?;
    let err = peer_check(&plain, SUFFIX, &creds, &Tls::default()).map_err(anyhow::Error::msg)?.probe(timeout).await;
    let err = err.expect_err("slapd refuses the data over plain ldap://").to_string();
    assert!(err.contains("confidentiality") || err.contains("rc=13"), "{err}");

    // The old leader's contextCSN as the elector reads it (peer_check + probe): over StartTLS
    // and ldaps with the right CA.
    for (url, tls) in [(&plain, starttls(&ca)), (&ldaps_url, ldaps(&ca))] {
        let check = peer_check(url, SUFFIX, &creds, &tls).map_err(anyhow::Error::msg)?;
        let status = check.probe(timeout).await.map_err(|e| anyhow::anyhow!("{url} over TLS: {e}"))?;
        assert!(!status.context_csn.is_empty(), "{url}: no contextCSN read");
        let mut over_ldapi = root.values_of(SUFFIX, Scope::Base, "(objectClass=*)", "contextCSN").await?;
        over_ldapi.sort();
        assert_eq!(status.context_csn, over_ldapi, "{url}");
    }

    // A CA that did not sign the certificate: refused at the handshake, before the bind.
    for (url, tls) in [(&plain, starttls(&wrong)), (&ldaps_url, ldaps(&wrong))] {
        let check = peer_check(url, SUFFIX, &creds, &tls).map_err(anyhow::Error::msg)?;
        let err = check.probe(timeout).await.expect_err("an unknown issuer must fail").to_string();
        assert!(err.contains("connect") && err.contains("UnknownIssuer"), "{url}: {err}");
    }

    // The certificate names 127.0.0.1 only: `localhost` is the same server, but not the name
    // it proves, so the client refuses it (hostname verification).
    let by_name = ldaps_url.replace("127.0.0.1", "localhost");
    let check = peer_check(&by_name, SUFFIX, &creds, &ldaps(&ca)).map_err(anyhow::Error::msg)?;
    let err = check.probe(timeout).await.expect_err("a name the certificate does not carry").to_string();
    assert!(err.contains("not valid for name \"localhost\""), "{by_name}: {err}");

    // The divergence audit as the leader runs it: its own slapd over ldapi, the standby's
    // over StartTLS (and then ldaps), both bound with the password.
    let a = format!("{}?base={SUFFIX}", pair.node(1).ldapi_url());
    for (b, tls) in [(&plain, starttls(&ca)), (&ldaps_url, ldaps(&ca))] {
        let mut cfg = AuditConfig::new(&a, &format!("{b}?base={SUFFIX}"), &creds)
            .and_then(|c| c.with_tls(&tls))
            .map_err(anyhow::Error::msg)?;
        cfg.timeout = Duration::from_secs(60);
        let report = audit::audit(&cfg).await.map_err(|e| anyhow::anyhow!("audit against {b}: {e}"))?;
        assert_eq!(report.verdict, Verdict::InSync, "{b}: {}", report.render());
        assert!(report.b.entries >= 2, "{b}: {}", report.render());
    }
    let mut cfg = AuditConfig::new(&a, &format!("{plain}?base={SUFFIX}"), &creds)
        .and_then(|c| c.with_tls(&starttls(&wrong)))
        .map_err(anyhow::Error::msg)?;
    cfg.timeout = Duration::from_secs(60);
    let err = audit::audit(&cfg).await.expect_err("the wrong CA fails the audit").to_string();
    assert!(err.contains("server B") && err.contains("UnknownIssuer"), "{err}");
    Ok(())
}

/// `ldap-elector audit` as an operator runs it: exit 0 in sync, 2 bad flags, 4 failed.
async fn audit_command(args: &[&str], in_empty_netns: bool) -> anyhow::Result<(i32, String)> {
    let elector = elector_binary(false);
    let mut cmd = if in_empty_netns {
        let mut c = tokio::process::Command::new("unshare");
        c.arg("--net").arg("--").arg(elector);
        c
    } else {
        tokio::process::Command::new(elector)
    };
    cmd.arg("audit")
        .args(args)
        .env("ELECTOR_LOG_FORMAT", "text")
        .env_remove(contract::ENV_LDAP_STARTTLS)
        .env_remove(contract::ENV_LDAP_CA_FILE)
        .env_remove(contract::ENV_ALLOW_CLEARTEXT_BIND)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_command_sends_a_password_only_over_tls_or_to_a_local_host_unless_allowed() -> anyhow::Result<()> {
    let pair = MirrorPair::start(PairOptions::default().tls()).await?;
    let ca = pair.ca_file().expect("a TLS pair has a CA").display().to_string();
    let wrong = other_ca(&pair.dir)?.display().to_string();
    let creds = admin_credentials(&pair.dir)?;
    let password_file = creds.password_file.as_ref().expect("a file").display().to_string();
    let a = format!("{}?base={SUFFIX}", pair.node(1).ldapi_url());
    let b = format!("{}?base={SUFFIX}", pair.node(2).ldap_url());
    let bind = ["--bind-dn", ADMIN_DN, "--bind-password-file", password_file.as_str()];
    let servers = |b: &str| ["--server-a".to_string(), a.clone(), "--server-b".to_string(), b.to_string()];
    let run = |b: String, extra: Vec<&'static str>, tls: Vec<String>, netns: bool| {
        let mut args: Vec<String> = servers(&b).to_vec();
        args.extend(bind.iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(tls);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            audit_command(&refs, netns).await
        }
    };

    // Loopback is local: the password may go over plain ldap:// to 127.0.0.1 (the same
    // pod's slapd in Kubernetes) without any flag.
    let (code, out) = run(b.clone(), vec![], vec![], false).await?;
    assert_eq!(code, 0, "plain ldap:// to loopback:\n{out}");

    // StartTLS with the pair's CA: in sync; with another CA: the audit fails (exit 4).
    let (code, out) = run(b.clone(), vec!["--ldap-starttls"], vec!["--ldap-ca-file".into(), ca.clone()], false).await?;
    assert_eq!(code, 0, "StartTLS with the right CA:\n{out}");
    let (code, out) = run(b.clone(), vec!["--ldap-starttls"], vec!["--ldap-ca-file".into(), wrong], false).await?;
    assert_eq!(code, 4, "StartTLS with another CA:\n{out}");
    assert!(out.contains("UnknownIssuer"), "{out}");
    // StartTLS without a CA is a bad flag, not a connection to anything.
    let (code, out) = run(b.clone(), vec!["--ldap-starttls"], vec![], false).await?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--ldap-ca-file"), "{out}");

    // A host that is not local (a documentation address, never connected to): refused as
    // a bad flag, before any connect, and the message says what to set.
    let remote = format!("ldap://192.0.2.10:{}?base={SUFFIX}", pair.node(2).port());
    let started = Instant::now();
    let (code, out) = run(remote.clone(), vec![], vec![], false).await?;
    assert_eq!(code, 2, "cleartext password to a non-local host:\n{out}");
    for needle in
        ["refusing a simple bind", "192.0.2.10", "--allow-cleartext-bind", "--ldap-starttls", "--ldap-ca-file"]
    {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "refused without waiting on a connection");

    // Explicitly allowed, the audit goes on to connect: in an empty network namespace (no
    // route anywhere) the connect fails at once, the proof that the rule let it pass.
    let (code, out) = run(remote, vec!["--allow-cleartext-bind"], vec![], true).await?;
    assert_eq!(code, 4, "allowed: the audit tries to connect:\n{out}");
    assert!(out.contains("connect") && !out.contains("refusing a simple bind"), "{out}");
    Ok(())
}

/// The running elector: the leader audits its standby over StartTLS with the password,
/// against servers that refuse the data over plain `ldap://` (`olcSecurity: ssf=1`; ldapi,
/// the fence's and health check's way in, counts as secure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_audits_its_standby_over_starttls() -> anyhow::Result<()> {
    let slapd = MirrorPair::start(PairOptions::default().tls()).await?;
    let ca = slapd.ca_file().expect("a TLS pair has a CA").display().to_string();
    let creds = admin_credentials(&slapd.dir)?;
    for i in 1..=2 {
        let mut root = slapd.node(i).root().await?;
        root.ldap
            .with_timeout(Duration::from_secs(5))
            .modify(DATA_DB, vec![Mod::Add("olcSecurity", HashSet::from(["ssf=1"]))])
            .await?
            .success()?;
    }
    let servers = (0..2u32)
        .map(|o| format!("{}={}?base={SUFFIX}", contract::pod_name("ldap-server", o), slapd.node(o + 1).ldap_url()))
        .collect::<Vec<_>>()
        .join(",");
    let mut env = writer::elector_env(&slapd)?;
    env.push((contract::ENV_AUDIT_PEERS.into(), servers));
    env.push((contract::ENV_AUDIT_INTERVAL.into(), "off".into()));
    env.push((contract::ENV_LDAP_BIND_DN.into(), ADMIN_DN.into()));
    let password_file = creds.password_file.as_ref().expect("a file").display().to_string();
    env.push((contract::ENV_LDAP_BIND_PASSWORD_FILE.into(), password_file));
    env.push((contract::ENV_LDAP_STARTTLS.into(), "true".into()));
    env.push((contract::ENV_LDAP_CA_FILE.into(), ca));
    let pair = Pair::start_with(2, &[], ElectorOptions { runner_env: Some(env), ..Default::default() }).await?;
    let leader = pair.leader(Duration::from_secs(90)).await?;
    // On taking office the leader audits the standby (reachable over StartTLS) at once.
    wait_for("the leader's audit of its standby", Duration::from_secs(60), || async {
        let log = pair.log(&leader);
        if log.contains("divergence audit: in sync") {
            Ok(())
        } else if log.contains("divergence audit inconclusive") || log.contains("DIVERGED") {
            Err(format!("not in sync:\n{log}"))
        } else {
            Err("no audit yet".to_string())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", pair.log(&leader)))?;
    assert!(!pair.log(&leader).contains("are OFF until this is fixed"), "{}", pair.log(&leader));
    Ok(())
}

//! `make audit-bench`: the cost of `ldap-elector audit` on a converged Mirror-Mode pair.
//!
//! - Generates `AUDIT_BENCH_ENTRIES` (default 100000) inetOrgPerson entries under
//!   `ou=people`, loads them offline with slapadd into node 1 and copies node 1's database
//!   to node 2 (slapcat | slapadd), so both start with identical entries, entryUUIDs
//!   (time-based, as slapd makes them: a bulk load crowds them into few buckets — the
//!   realistic worst case for the bucketing) and contextCSN.
//! - Runs the RELEASE `ldap-elector audit` (simple bind as the rootDN over ldap://)
//!   `AUDIT_BENCH_RUNS` times (default 3) and prints each run's wall time and the
//!   auditor's peak RSS (its VmHWM, polled from /proc every 10 ms), and the verdict.
//! - Then one more audit while a writer adds and modifies entries on node 1 every 5 ms:
//!   the cost of re-reading differing buckets and retrying the writes in flight.
//!
//! `AUDIT_BENCH_ARGS` adds flags to every audit (e.g. `--page-size 200 --bucket-bits 12`);
//! `AUDIT_BENCH_BINARY` audits with another build.
//!
//! Targets (issue 9): ≤ 10 s and ≤ 64 MiB for 100k entries. Exit 1 when a run misses them.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ldap3::Mod;
use ldap_elector_tests::ldap::slapd::{MirrorPair, PairOptions, ADMIN_DN, ADMIN_PASSWORD, PEOPLE, SUFFIX};
use ldap_elector_tests::measure::Machine;
use ldap_elector_tests::workloads::build::elector_binary;

const TARGET_WALL: Duration = Duration::from_secs(10);
const TARGET_RSS_MIB: f64 = 64.0;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The suffix, `ou=people` and `n` people (about 300 bytes of attributes each).
fn write_ldif(path: &Path, n: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "dn: {SUFFIX}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n"
    )?;
    writeln!(out, "dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n")?;
    for i in 0..n {
        writeln!(
            out,
            "dn: uid=user{i:06},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: user{i:06}\ncn: User {i}\nsn: Number{i}\n\
             givenName: User\nmail: user{i:06}@example.org\ntelephoneNumber: +1 555 {:04}\n\
             description: benchmark entry {i} of {n}, with some text to make it look like a real one\n",
            i % 10_000
        )?;
    }
    out.flush()?;
    Ok(())
}

struct Run {
    wall: Duration,
    peak_rss_kib: u64,
    exit: i32,
    verdict: String,
    stats: String,
}

/// One `ldap-elector audit -o json` process: wall time, its own peak RSS, verdict.
fn run_audit(binary: &Path, pair: &MirrorPair, password_file: &Path, out_file: &Path) -> anyhow::Result<Run> {
    let stdout = std::fs::File::create(out_file)?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("audit")
        .args(["--server-a", &format!("{}?base={SUFFIX}", pair.node(1).ldap_url())])
        .args(["--server-b", &format!("{}?base={SUFFIX}", pair.node(2).ldap_url())])
        .args(["--bind-dn", ADMIN_DN])
        .arg("--bind-password-file")
        .arg(password_file)
        .args(["-o", "json", "--timeout", "120s"])
        .args(std::env::var("AUDIT_BENCH_ARGS").unwrap_or_default().split_whitespace())
        .env("ELECTOR_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .context("starting ldap-elector audit")?;
    let pid = child.id();
    // The auditor's own high-water mark, VmHWM, polled until it exits (it only grows, so the
    // last sample is the peak up to 10 ms before exit). Not wait4's ru_maxrss: that also
    // counts this process's image, which the child shared between spawn and exec.
    let trace = std::env::var("AUDIT_BENCH_TRACE").is_ok_and(|v| v == "1");
    let sampler = std::thread::spawn(move || {
        let (mut peak, mut samples) = (0u64, Vec::new());
        let t0 = Instant::now();
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let kib = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            };
            // A zombie has no memory lines: the auditor is done.
            let Some(hwm) = kib("VmHWM:") else { break };
            peak = peak.max(hwm);
            if trace {
                samples.push(format!("{:.1}s {} kB", t0.elapsed().as_secs_f64(), kib("VmRSS:").unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (peak, samples)
    });
    let status = child.wait().context("waiting for the auditor")?;
    let wall = started.elapsed();
    let (peak_rss_kib, samples) = sampler.join().map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))?;
    if trace {
        println!("RSS every 10 ms: {}", samples.join(", "));
    }
    let exit = status.code().unwrap_or(-1);
    let text = std::fs::read_to_string(out_file)?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("audit output: {text}"))?;
    let st = &json["stats"];
    Ok(Run {
        wall,
        peak_rss_kib,
        exit,
        verdict: json["verdict"].as_str().unwrap_or("?").to_string(),
        stats: format!(
            "A {} / B {} entries, {} of {} buckets differed, {} differed at first sight, {} rounds, {} searches",
            json["a"]["entries"],
            json["b"]["entries"],
            st["differing_buckets"],
            st["buckets"],
            st["candidates"],
            st["rounds"],
            st["searches"]
        ),
    })
}

/// Adds and modifies entries on node 1 until `stop` (bounded).
async fn writer(pair: Arc<MirrorPair>, stop: Arc<AtomicBool>, writes: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut conn = pair.node(1).admin().await?;
    for i in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if i % 2 == 0 {
            conn.add_person(&format!("bench-load-{i}")).await?.success()?;
        } else {
            let dn = format!("uid=user{:06},{PEOPLE}", (i * 7919) % 1000);
            let value = format!("changed {i}");
            let mods = vec![Mod::Replace("description", HashSet::from([value.as_str()]))];
            conn.ldap.with_timeout(Duration::from_secs(5)).modify(&dn, mods).await?.success()?;
        }
        writes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
pub async fn run() -> anyhow::Result<()> {
    let entries = env_number("AUDIT_BENCH_ENTRIES", 100_000);
    let runs = env_number("AUDIT_BENCH_RUNS", 3).max(1);
    let binary = std::env::var_os("AUDIT_BENCH_BINARY").map(Into::into).unwrap_or_else(|| elector_binary(true));

    let scratch = std::env::temp_dir().join(format!("ldap-audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ldif = scratch.join("people.ldif");
    let t = Instant::now();
    write_ldif(&ldif, entries)?;
    let generated = t.elapsed();
    let t = Instant::now();
    let pair = Arc::new(MirrorPair::start(PairOptions::default().preload(ldif.clone()).db_max_size(4 << 30)).await?);
    let loaded = t.elapsed();
    let _ = std::fs::remove_file(&ldif);
    let password_file = pair.dir.join("bench.password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n"))?;
    let out_file = scratch.join("audit.json");

    let version = Command::new("/usr/sbin/slapd")
        .arg("-VV")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_default();
    let mut report = String::new();
    writeln!(report, "audit-bench: {entries} entries per server (+ suffix and ou=people), {}", Machine::detect())?;
    writeln!(report, "slapd: {version}")?;
    writeln!(report, "auditor: {} (release)", binary.display())?;
    writeln!(report, "setup: LDIF generated in {generated:.1?}, slapadd + slapcat|slapadd + start in {loaded:.1?}")?;
    let mut missed = false;
    let mut quiet = Vec::new();
    for run in 1..=runs {
        let b = binary.clone();
        let (p, pw, of) = (pair.clone(), password_file.clone(), out_file.clone());
        let r = tokio::task::spawn_blocking(move || run_audit(&b, &p, &pw, &of)).await??;
        let ok = r.wall <= TARGET_WALL && mib(r.peak_rss_kib) <= TARGET_RSS_MIB && r.exit == 0;
        missed |= !ok;
        writeln!(
            report,
            "quiet run {run}: wall {:.2} s, peak RSS {:.1} MiB, verdict {} (exit {}){}; {}",
            r.wall.as_secs_f64(),
            mib(r.peak_rss_kib),
            r.verdict,
            r.exit,
            if ok { "" } else { " MISSED" },
            r.stats
        )?;
        quiet.push(r);
    }

    // The same audit while a writer adds and modifies entries on node 1 (every 5 ms):
    // differing buckets are re-read and the writes in flight retried.
    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn(writer(pair.clone(), stop.clone(), writes.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = writes.load(Ordering::Relaxed);
    let (b, p, pw, of) = (binary.clone(), pair.clone(), password_file.clone(), out_file.clone());
    let r = tokio::task::spawn_blocking(move || run_audit(&b, &p, &pw, &of)).await??;
    let during = writes.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    load.await??;
    writeln!(
        report,
        "under load ({during} writes during the audit): wall {:.2} s, peak RSS {:.1} MiB, verdict {} (exit {}); {}",
        r.wall.as_secs_f64(),
        mib(r.peak_rss_kib),
        r.verdict,
        r.exit,
        r.stats
    )?;
    missed |= r.verdict == "diverged";

    let worst_wall = quiet.iter().map(|r| r.wall).max().unwrap_or_default();
    let worst_rss = quiet.iter().map(|r| r.peak_rss_kib).max().unwrap_or_default();
    writeln!(
        report,
        "worst quiet run: {:.2} s (target ≤ {} s), {:.1} MiB (target ≤ {TARGET_RSS_MIB} MiB): {}",
        worst_wall.as_secs_f64(),
        TARGET_WALL.as_secs(),
        mib(worst_rss),
        if missed { "MISSED" } else { "met" }
    )?;
    print!("{report}");
    drop(pair);
    let _ = std::fs::remove_dir_all(&scratch);
    if missed {
        std::process::exit(1);
    }
    Ok(())
}

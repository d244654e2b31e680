//! Configuration guard: reads the local slapd's replication settings from cn=config (over
//! ldapi, SASL EXTERNAL: the connection the fence already uses) and names the known
//! dangerous combinations, above all the syncprov session log on a Mirror-Mode database,
//! with which a node that was down can silently lose changes while contextCSN looks
//! converged (OPENLDAP-NOTES.md, docs/divergence.md).
//!
//! [`evaluate`] is pure; [`read`] and [`check`] are the edges.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope};
use ldap_elector_contract::backoff::Backoff;
use serde::Serialize;

use crate::divergence::audit::parse_entry;
use crate::slapd::database::{same_dn, FencedDatabase};

/// One database of cn=config with what the guard looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// `olcDatabase={1}mdb,cn=config`
    pub dn: String,
    pub suffix: Option<String>,
    /// `olcMirrorMode` (2.4) / `olcMultiProvider` (2.5 reads it back under this name) TRUE.
    pub mirror_mode: bool,
    pub syncrepl: Vec<String>,
    pub indexes: Vec<String>,
    pub syncprov: Option<Syncprov>,
    /// `olcAccessLogDB` of an accesslog overlay on this database (delta-syncrepl provider).
    pub accesslog_db: Option<String>,
}

/// The syncprov overlay of a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Syncprov {
    pub dn: String,
    pub session_log: Option<String>,
    pub checkpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    /// Data can be lost or diverge silently.
    Danger,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier, for alerts and docs.
    pub code: &'static str,
    /// The cn=config entry to change.
    pub entry: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} ({}): {}", self.severity, self.code, self.entry, self.message)
    }
}

/// The findings for a slapd's databases, most severe first.
///
/// An ACL can hide attributes silently, so a data database whose suffix is not even
/// visible is itself a finding: "nothing found" must not pass for "safe". olcSyncrepl
/// holds the replication credentials and may well be hidden; it is only used to soften the
/// session-log finding for delta-syncrepl, so hiding it errs on the severe side.
pub fn evaluate(dbs: &[DatabaseConfig]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let data_dbs = dbs.iter().filter(|d| !is_special(&d.dn));
    if data_dbs.clone().all(|d| d.suffix.is_none()) {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "config-unreadable",
            entry: "cn=config".into(),
            message: format!(
                "no data database with a readable olcSuffix among {} database entries: the replication settings \
                 could not be checked; grant the elector read access to olcSuffix, olcMultiProvider, olcMirrorMode, \
                 olcDbIndex and the overlay entries below the database (docs/divergence.md)",
                dbs.len()
            ),
        });
    }
    let accesslog_suffixes: Vec<&str> = dbs.iter().filter_map(|d| d.accesslog_db.as_deref()).collect();
    for db in dbs {
        let suffix = db.suffix.as_deref().unwrap_or("?");
        let delta = db.syncrepl.iter().any(|s| is_delta(s));
        if db.mirror_mode {
            match &db.syncprov {
                Some(sp) if sp.session_log.as_deref().is_some_and(|n| n.trim() != "0") => {
                    let (severity, how) = if delta {
                        (
                            Severity::Warning,
                            "this database uses delta-syncrepl, whose fallback to a full refresh goes through this \
                             session log (a combination not verified on the rig)",
                        )
                    } else {
                        (Severity::Danger, "this database replicates with plain syncrepl")
                    };
                    findings.push(Finding {
                        severity,
                        code: "session-log-on-mirror-mode",
                        entry: sp.dn.clone(),
                        message: format!(
                            "olcSpSessionLog {} on the Mirror-Mode database {suffix}: a node that was down while its \
                             peer made changes ending with a delete can silently lose the older ones, with equal \
                             contextCSN on both nodes; {how}. Remove olcSpSessionLog (or move to delta-syncrepl with \
                             olcSpCheckpoint on the accesslog database) and run `ldap-elector audit`",
                            sp.session_log.as_deref().unwrap_or_default()
                        ),
                    });
                }
                Some(_) => {}
                None => findings.push(Finding {
                    severity: Severity::Warning,
                    code: "mirror-mode-without-syncprov",
                    entry: db.dn.clone(),
                    message: format!(
                        "the Mirror-Mode database {suffix} has no syncprov overlay: its peer cannot replicate from it"
                    ),
                }),
            }
            if !has_eq_index(&db.indexes, "entryuuid") {
                findings.push(Finding {
                    severity: Severity::Info,
                    code: "no-entryuuid-index",
                    entry: db.dn.clone(),
                    message: format!(
                        "no equality index on entryUUID for {suffix}: syncrepl and the audit's re-reads scan the \
                         database (olcDbIndex: entryUUID eq)"
                    ),
                });
            }
        }
        for syncrepl in &db.syncrepl {
            if let Some(finding) = syncrepl_timeout_finding(db, syncrepl) {
                findings.push(finding);
            }
        }
        let is_accesslog =
            db.suffix.as_deref().is_some_and(|s| accesslog_suffixes.iter().any(|a| a.eq_ignore_ascii_case(s)));
        if is_accesslog {
            if let Some(sp) = db.syncprov.as_ref().filter(|sp| sp.checkpoint.is_none()) {
                findings.push(Finding {
                    severity: Severity::Info,
                    code: "accesslog-without-checkpoint",
                    entry: sp.dn.clone(),
                    message: format!(
                        "the accesslog database {suffix}'s syncprov has no olcSpCheckpoint: after a kill -9 the \
                         suffix entry's entryCSN can differ between the nodes for good (metadata only); set \
                         olcSpCheckpoint: 1 1"
                    ),
                });
            }
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// What the fence toggles and what clients write to: the database the elector fences
/// (`--fence-database`, or by `--fence-suffix`) and the suffix of its health check (the data
/// the clients write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceTarget {
    pub database: FencedDatabase,
    pub suffix: String,
}

/// Issue 16: a fence on another database than the one holding the data leaves the data
/// writable on every server (two writers), silently: slapd confirms `olcReadOnly` on the
/// database it was given. Nubus' data database is not `{1}mdb` (`cn=internal` is). A database
/// named outright whose suffix is not readable is not judged (`config-unreadable` covers that).
pub fn fence_target_finding(dbs: &[DatabaseConfig], target: &FenceTarget) -> Option<Finding> {
    let holding = dbs.iter().find(|d| d.suffix.as_deref().is_some_and(|s| same_dn(s, &target.suffix)));
    let fix =
        holding.map_or(String::new(), |d| format!("; set the annotation ldap-elector.dev/fence-database={}", d.dn));
    let message = match target.database.find(dbs.iter().map(|d| (d.dn.as_str(), d.suffix.as_deref()))) {
        Err(missing) => format!(
            "the fence toggles olcReadOnly on {}, but {missing}: no server can be fenced, the data of {} stays \
             writable{fix} (docs/reference.md)",
            target.database, target.suffix
        ),
        Ok(dn) if is_special(dn) => format!(
            "the fence toggles olcReadOnly on {dn}, which holds no client data: the data of {} stays writable on \
             every server{fix} (docs/reference.md)",
            target.suffix
        ),
        Ok(dn) => match dbs.iter().find(|d| d.dn == dn).and_then(|d| d.suffix.as_deref()) {
            Some(s) if !same_dn(s, &target.suffix) => format!(
                "the fence toggles olcReadOnly on {dn} ({s}), but clients write to {}: a fenced standby still takes \
                 writes there, two servers accept them{fix} (docs/reference.md)",
                target.suffix
            ),
            _ => return None,
        },
    };
    Some(Finding {
        severity: Severity::Danger,
        code: "fence-not-on-the-data-database",
        entry: target.database.to_string(),
        message,
    })
}

/// The syncrepl `timeout=` the fence budget relies on: a cn=config change (the fence) can wait
/// up to that many seconds for a consumer in its refresh read ([`super::ldap::set_read_only`]), so anything but
/// `1` (larger, `0`, missing: no bound) lets a fence outlast its 1 s budget, and a deposed
/// leader stay writable after a follower may take over.
fn syncrepl_timeout_finding(db: &DatabaseConfig, syncrepl: &str) -> Option<Finding> {
    let value = syncrepl.split_whitespace().find_map(|kv| {
        let (key, value) = kv.split_once('=')?;
        key.eq_ignore_ascii_case("timeout").then(|| value.trim_matches('"').to_string())
    });
    let max = crate::election::decide::FENCE_BUDGET.as_secs();
    if value.as_deref().and_then(|v| v.parse::<u64>().ok()).is_some_and(|t| (1..=max).contains(&t)) {
        return None;
    }
    let seen = value.map_or("no timeout=".to_string(), |v| format!("timeout={v}"));
    let rid = syncrepl.split_whitespace().find(|kv| kv.to_ascii_lowercase().starts_with("rid=")).unwrap_or("?");
    Some(Finding {
        severity: Severity::Danger,
        code: "syncrepl-timeout",
        entry: db.dn.clone(),
        message: format!(
            "olcSyncrepl {rid} of {} has {seen}: a fence (a cn=config change) can wait up to this timeout for a \
             syncrepl consumer, and the election's safety bound allows {max} s; set timeout={max} \
             (docs/openldap.md)",
            db.suffix.as_deref().unwrap_or(&db.dn)
        ),
    })
}

/// The frontend, config and monitor databases.
fn is_special(dn: &str) -> bool {
    let db = dn.split(',').next().unwrap_or_default().to_ascii_lowercase();
    ["frontend", "config", "monitor"].iter().any(|s| db.ends_with(&format!("}}{s}")))
}

fn is_delta(syncrepl: &str) -> bool {
    syncrepl.split_whitespace().any(|kv| kv.trim_matches('"').eq_ignore_ascii_case("syncdata=accesslog"))
}

/// Whether an `olcDbIndex` value indexes `attr` (lower case) for equality (`eq`, or no
/// index type, which means the default, `eq` unless changed).
fn has_eq_index(indexes: &[String], attr: &str) -> bool {
    indexes.iter().any(|v| {
        let mut parts = v.split_whitespace();
        let attrs = parts.next().unwrap_or_default();
        let kinds: Vec<&str> = parts.flat_map(|p| p.split(',')).collect();
        attrs.split(',').any(|a| a.trim().eq_ignore_ascii_case(attr))
            && (kinds.is_empty() || kinds.iter().any(|k| k.eq_ignore_ascii_case("eq")))
    })
}

/// Strips the `{n}` ordering prefix of cn=config values.
fn unordered(v: &str) -> &str {
    match v.strip_prefix('{').and_then(|r| r.split_once('}')) {
        Some((_, rest)) => rest,
        None => v,
    }
}

/// Builds the database list from cn=config entries (DN, attributes with values).
pub fn from_entries(entries: Vec<(String, HashMap<String, Vec<String>>)>) -> Vec<DatabaseConfig> {
    let get = |attrs: &HashMap<String, Vec<String>>, name: &str| -> Vec<String> {
        attrs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).flat_map(|(_, v)| v.iter().cloned()).collect()
    };
    let truthy = |vals: Vec<String>| vals.iter().any(|v| v.eq_ignore_ascii_case("TRUE"));
    let mut dbs: Vec<DatabaseConfig> = Vec::new();
    let mut overlays = Vec::new();
    for (dn, attrs) in entries {
        if !get(&attrs, "olcOverlay").is_empty() {
            overlays.push((dn, attrs));
        } else if !get(&attrs, "olcDatabase").is_empty() {
            dbs.push(DatabaseConfig {
                suffix: get(&attrs, "olcSuffix").into_iter().next(),
                mirror_mode: truthy(get(&attrs, "olcMirrorMode")) || truthy(get(&attrs, "olcMultiProvider")),
                syncrepl: get(&attrs, "olcSyncrepl").iter().map(|s| unordered(s).to_string()).collect(),
                indexes: get(&attrs, "olcDbIndex"),
                dn,
                ..DatabaseConfig::default()
            });
        }
    }
    for (dn, attrs) in overlays {
        let parent = dn.split_once(',').map(|(_, p)| p).unwrap_or_default();
        let Some(db) = dbs.iter_mut().find(|d| d.dn.eq_ignore_ascii_case(parent)) else { continue };
        let kind = get(&attrs, "olcOverlay").into_iter().next().unwrap_or_default();
        match unordered(&kind).to_ascii_lowercase().as_str() {
            "syncprov" => {
                db.syncprov = Some(Syncprov {
                    dn: dn.clone(),
                    session_log: get(&attrs, "olcSpSessionLog").into_iter().next(),
                    checkpoint: get(&attrs, "olcSpCheckpoint").into_iter().next(),
                })
            }
            "accesslog" => db.accesslog_db = get(&attrs, "olcAccessLogDB").into_iter().next(),
            _ => {}
        }
    }
    dbs
}

/// Reads the databases and their overlays from cn=config over `ldapi_url` (SASL
/// EXTERNAL, the root of cn=config), all within `timeout`.
pub async fn read(ldapi_url: &str, timeout: Duration) -> Result<Vec<DatabaseConfig>, String> {
    if !ldapi_url.starts_with("ldapi://") {
        return Err(format!("{ldapi_url:?}: cn=config is read over ldapi:// only"));
    }
    let work = async {
        let settings = LdapConnSettings::new().set_conn_timeout(timeout);
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(settings, ldapi_url).await.map_err(|e| format!("connect: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.drive().await;
        });
        let result = async {
            ldap.sasl_external_bind().await.and_then(|r| r.success()).map_err(|e| format!("bind: {e}"))?;
            let attrs = vec![
                "olcDatabase",
                "olcSuffix",
                "olcMirrorMode",
                "olcMultiProvider",
                "olcSyncrepl",
                "olcDbIndex",
                "olcOverlay",
                "olcSpSessionLog",
                "olcSpCheckpoint",
                "olcAccessLogDB",
            ];
            let filter = "(|(objectClass=olcDatabaseConfig)(objectClass=olcOverlayConfig))";
            let (entries, _) = ldap
                .search("cn=config", Scope::Subtree, filter, attrs)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("search cn=config: {e}"))?;
            let _ = ldap.unbind().await;
            Ok::<_, String>(entries)
        }
        .await;
        driver.abort();
        let entries = result?
            .into_iter()
            .filter_map(|e| parse_entry(e.0))
            .map(|e| {
                let attrs = e
                    .attrs
                    .into_iter()
                    .map(|(k, v)| {
                        let values = v.into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect();
                        (String::from_utf8_lossy(&k).into_owned(), values)
                    })
                    .collect();
                (String::from_utf8_lossy(&e.dn).into_owned(), attrs)
            })
            .collect();
        Ok::<_, String>(from_entries(entries))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(|e| format!("{ldapi_url}: {e}")),
        Err(_) => Err(format!("{ldapi_url}: no answer within {timeout:?}")),
    }
}

/// [`read`] then [`evaluate`].
pub async fn check(ldapi_url: &str, timeout: Duration) -> Result<Vec<Finding>, String> {
    read(ldapi_url, timeout).await.map(|dbs| evaluate(&dbs))
}

/// [`check`], and whether the fence hits the data (`target`, when the suffix is known).
async fn check_with(ldapi_url: &str, target: Option<&FenceTarget>, timeout: Duration) -> Result<Vec<Finding>, String> {
    let dbs = read(ldapi_url, timeout).await?;
    let mut findings: Vec<Finding> = target.and_then(|t| fence_target_finding(&dbs, t)).into_iter().collect();
    findings.extend(evaluate(&dbs));
    Ok(findings)
}

/// How often the elector checks slapd's configuration again after a first reading: a
/// change made at runtime is seen, and a danger's Event stays fresh (Events expire, by
/// default after an hour) for `ldap-elector status`.
pub const RECHECK: Duration = Duration::from_secs(600);

/// The codes of the findings that are warnings or dangers (what the Event and metric report).
fn alarming(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().filter(|f| !matches!(f.severity, Severity::Info)).map(|f| f.code).collect()
}

/// For the elector: reads cn=config once slapd answers (it may start after the sidecar;
/// bounded retries with back-off), logs every finding, dangers as errors, and hands the
/// alarming codes to `report`; then again every [`RECHECK`] until cancelled.
pub async fn watch_findings(
    ldapi_url: String,
    target: Option<FenceTarget>,
    cancel: tokio_util::sync::CancellationToken,
    report: impl Fn(Vec<&'static str>),
) {
    loop {
        if let Some(findings) = log_findings(&ldapi_url, target.as_ref(), &cancel).await {
            report(alarming(&findings));
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// One reading (with retries while slapd does not answer), logged; `None`: cn=config was not
/// read.
async fn log_findings(
    ldapi_url: &str,
    target: Option<&FenceTarget>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Vec<Finding>> {
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    for attempt in 0..20 {
        match check_with(ldapi_url, target, Duration::from_secs(5)).await {
            Ok(findings) => {
                for f in &findings {
                    match f.severity {
                        Severity::Danger => {
                            tracing::error!(code = f.code, entry = %f.entry, "slapd configuration: {}", f.message)
                        }
                        Severity::Warning => {
                            tracing::warn!(code = f.code, entry = %f.entry, "slapd configuration: {}", f.message)
                        }
                        Severity::Info => {
                            tracing::info!(code = f.code, entry = %f.entry, "slapd configuration: {}", f.message)
                        }
                    }
                }
                return Some(findings);
            }
            Err(e) => tracing::debug!(error = %e, "configuration guard: cannot read cn=config yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
    }
    tracing::warn!(url = %ldapi_url, "configuration guard: could not read cn=config; replication settings not checked");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> (String, HashMap<String, Vec<String>>) {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in attrs {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
        (dn.to_string(), map)
    }

    const DB: &str = "olcDatabase={1}mdb,cn=config";
    const SP: &str = "olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config";

    /// The rig's data database (2.5 reads olcMirrorMode back as olcMultiProvider).
    fn mirror(session_log: Option<&str>, syncrepl: &str) -> Vec<(String, HashMap<String, Vec<String>>)> {
        let mut sp = vec![("olcOverlay", "{0}syncprov"), ("olcSpCheckpoint", "10 1")];
        if let Some(n) = session_log {
            sp.push(("olcSpSessionLog", n));
        }
        vec![
            entry("olcDatabase={0}config,cn=config", &[("olcDatabase", "{0}config")]),
            entry(
                DB,
                &[
                    ("olcDatabase", "{1}mdb"),
                    ("olcSuffix", "dc=example,dc=org"),
                    ("olcMultiProvider", "TRUE"),
                    ("olcSyncrepl", syncrepl),
                    ("olcDbIndex", "objectClass eq"),
                    ("olcDbIndex", "entryCSN,entryUUID eq"),
                ],
            ),
            entry(SP, &sp),
        ]
    }

    const PLAIN: &str =
        "{0}rid=002 provider=ldap://peer:389 searchbase=\"dc=example,dc=org\" type=refreshAndPersist timeout=1";
    const DELTA: &str = "{0}rid=002 provider=ldap://peer:389 syncdata=accesslog logbase=\"cn=accesslog\" timeout=1";

    #[test]
    fn the_safe_rig_configuration_has_no_findings() {
        let dbs = from_entries(mirror(None, PLAIN));
        assert_eq!(dbs.len(), 2);
        assert!(dbs[1].mirror_mode && dbs[1].syncprov.is_some());
        assert_eq!(evaluate(&dbs), vec![]);
    }

    #[test]
    fn a_session_log_on_a_mirror_mode_database_is_a_danger() {
        let findings = evaluate(&from_entries(mirror(Some("100"), PLAIN)));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!((f.severity, f.code, f.entry.as_str()), (Severity::Danger, "session-log-on-mirror-mode", SP));
        assert!(f.message.contains("olcSpSessionLog 100") && f.message.contains("dc=example,dc=org"), "{f}");
        // Under delta-syncrepl: a warning; a session log of 0 is none at all.
        assert_eq!(evaluate(&from_entries(mirror(Some("100"), DELTA)))[0].severity, Severity::Warning);
        assert_eq!(evaluate(&from_entries(mirror(Some("0"), PLAIN))), vec![]);
    }

    #[test]
    fn a_session_log_without_mirror_mode_is_not_flagged() {
        let mut entries = mirror(Some("100"), PLAIN);
        entries[1].1.remove("olcMultiProvider");
        assert_eq!(evaluate(&from_entries(entries)), vec![]);
    }

    #[test]
    fn incomplete_mirror_mode_and_missing_indexes_are_named() {
        let mut entries = mirror(None, PLAIN);
        entries.pop();
        entries[1].1.insert("olcDbIndex".into(), vec!["objectClass eq".into(), "entryUUID pres".into()]);
        let codes: Vec<&str> = evaluate(&from_entries(entries)).iter().map(|f| f.code).collect();
        assert_eq!(codes, ["mirror-mode-without-syncprov", "no-entryuuid-index"]);
        assert!(has_eq_index(&["entryUUID".into()], "entryuuid"));
        assert!(has_eq_index(&["entryCSN,entryUUID pres,eq".into()], "entryuuid"));
        assert!(!has_eq_index(&["entryCSN eq".into()], "entryuuid"));
    }

    #[test]
    fn hidden_settings_are_a_finding_not_a_pass() {
        // What the fence-only ACL of docs/openldap.md lets the sidecar see.
        let entries = vec![
            entry("olcDatabase={-1}frontend,cn=config", &[("olcDatabase", "{-1}frontend")]),
            entry("olcDatabase={0}config,cn=config", &[("olcDatabase", "{0}config")]),
            entry(DB, &[("olcDatabase", "{1}mdb")]),
            entry("olcDatabase={2}monitor,cn=config", &[("olcDatabase", "{2}monitor")]),
        ];
        let findings = evaluate(&from_entries(entries));
        assert_eq!(findings.iter().map(|f| f.code).collect::<Vec<_>>(), ["config-unreadable"]);
        assert_eq!(findings[0].severity, Severity::Warning);
        assert!(evaluate(&[]).iter().any(|f| f.code == "config-unreadable"));
    }

    #[test]
    fn an_accesslog_database_without_a_checkpoint_is_noted() {
        let mut entries = mirror(None, DELTA);
        entries.push(entry(
            "olcOverlay={1}accesslog,olcDatabase={1}mdb,cn=config",
            &[("olcOverlay", "{1}accesslog"), ("olcAccessLogDB", "cn=accesslog")],
        ));
        entries
            .push(entry("olcDatabase={2}mdb,cn=config", &[("olcDatabase", "{2}mdb"), ("olcSuffix", "cn=accesslog")]));
        entries.push(entry(
            "olcOverlay={0}syncprov,olcDatabase={2}mdb,cn=config",
            &[("olcOverlay", "{0}syncprov"), ("olcSpNoPresent", "TRUE")],
        ));
        let findings = evaluate(&from_entries(entries.clone()));
        assert_eq!(findings.iter().map(|f| f.code).collect::<Vec<_>>(), ["accesslog-without-checkpoint"]);
        let last = entries.len() - 1;
        entries[last].1.insert("olcSpCheckpoint".into(), vec!["1 1".into()]);
        assert_eq!(evaluate(&from_entries(entries)), vec![]);
    }

    /// Issue 15, item 8: the fence budget (and so the safety bound) assumes a cn=config
    /// change stalls behind a reconnected consumer for at most 1 s, its syncrepl `timeout=`.
    #[test]
    fn a_syncrepl_timeout_above_the_fence_budget_or_missing_is_a_danger() {
        let with = |timeout: &str| {
            format!("{{0}}rid=002 provider=ldap://peer:389 type=refreshAndPersist {timeout} network-timeout=1")
        };
        for safe in ["timeout=1", "TIMEOUT=\"1\""] {
            assert_eq!(evaluate(&from_entries(mirror(None, &with(safe)))), vec![], "{safe}");
        }
        for (unsafe_, shown) in
            [("timeout=3", "timeout=3"), ("", "no timeout="), ("timeout=x", "timeout=x"), ("timeout=0", "timeout=0")]
        {
            let findings = evaluate(&from_entries(mirror(None, &with(unsafe_))));
            assert_eq!(findings.len(), 1, "{unsafe_}: {findings:?}");
            let f = &findings[0];
            assert_eq!((f.severity, f.code, f.entry.as_str()), (Severity::Danger, "syncrepl-timeout", DB), "{unsafe_}");
            assert!(f.message.contains(shown) && f.message.contains("rid=002"), "{f}");
        }
        // network-timeout= is another setting: it does not stand in for timeout=.
        let only_network = "{0}rid=002 provider=ldap://peer:389 network-timeout=1";
        assert_eq!(evaluate(&from_entries(mirror(None, only_network))).len(), 1);
    }

    #[tokio::test]
    async fn only_ldapi_is_read_and_a_dead_socket_fails_fast() {
        assert!(read("ldap://127.0.0.1:389", Duration::from_secs(1)).await.unwrap_err().contains("ldapi"));
        let err = read("ldapi://%2Fnonexistent%2Fsock", Duration::from_secs(2)).await.unwrap_err();
        assert!(err.contains("connect"), "{err}");
    }

    /// Issue 16: Nubus' data database is `{2}mdb`; `{1}mdb` is cn=internal. The default fence
    /// would confirm olcReadOnly on cn=internal and leave the data writable everywhere.
    #[test]
    fn a_fence_on_another_database_than_the_data_is_a_danger() {
        let dbs = from_entries(vec![
            entry("olcDatabase={1}mdb,cn=config", &[("olcDatabase", "{1}mdb"), ("olcSuffix", "cn=internal")]),
            entry("olcDatabase={2}mdb,cn=config", &[("olcDatabase", "{2}mdb"), ("olcSuffix", "dc=example,dc=org")]),
            entry("olcDatabase={3}mdb,cn=config", &[("olcDatabase", "{3}mdb"), ("olcSuffix", "cn=translog")]),
        ]);
        let suffix = "dc=example, dc=org";
        let target = |db: &str| FenceTarget { database: FencedDatabase::Entry(db.into()), suffix: suffix.into() };
        let wrong = fence_target_finding(&dbs, &target("olcDatabase={1}mdb,cn=config")).expect("a finding");
        assert_eq!((wrong.severity, wrong.code), (Severity::Danger, "fence-not-on-the-data-database"));
        assert!(wrong.message.contains("(cn=internal)"), "{wrong}");
        assert!(wrong.message.contains("fence-database=olcDatabase={2}mdb,cn=config"), "{wrong}");
        let special = [entry("olcDatabase={0}config,cn=config", &[("olcDatabase", "{0}config")])];
        let config = fence_target_finding(&from_entries(special.to_vec()), &target("olcDatabase={0}config,cn=config"));
        assert!(config.expect("a finding").message.contains("holds no client data"));
        let missing = fence_target_finding(&dbs, &target("olcDatabase={9}mdb,cn=config")).expect("a finding");
        assert!(missing.message.contains("slapd has no database olcDatabase={9}mdb,cn=config"), "{missing}");
        assert_eq!(fence_target_finding(&dbs, &target("olcDatabase={2}MDB, cn=config")), None);
        // Suffixes hidden by an ACL: not judged here.
        let hidden = from_entries(vec![entry(DB, &[("olcDatabase", "{1}mdb")])]);
        assert_eq!(fence_target_finding(&hidden, &target(DB)), None);
        // By suffix (what the webhook injects): the data database, whatever its number.
        let by_suffix = |s: &str| FenceTarget { database: FencedDatabase::Suffix(s.into()), suffix: suffix.into() };
        assert_eq!(fence_target_finding(&dbs, &by_suffix("dc=example,dc=org")), None);
        let nowhere = fence_target_finding(&hidden, &by_suffix(suffix)).expect("a finding");
        assert!(nowhere.message.contains("no database of slapd has the suffix dc=example, dc=org"), "{nowhere}");
        let internal = fence_target_finding(&dbs, &by_suffix("cn=internal")).expect("a finding");
        assert!(internal.message.contains("olcDatabase={1}mdb,cn=config (cn=internal)"), "{internal}");
    }
}

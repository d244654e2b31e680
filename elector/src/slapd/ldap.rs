//! The LDAP edges of the elector: a health check of the local slapd (connect, bind, read
//! the rootDSE and the data database's `contextCSN`) and the built-in write fence
//! (`olcReadOnly` on the data database, set and read over ldapi with SASL EXTERNAL).
//!
//! Every step runs under one deadline, and an error names the step that failed. The check
//! talks to slapd in the same pod over `ldapi://` (or loopback); the same code reads other
//! pods' slapd for the audits and the catch-up, over `ldap://` with StartTLS or `ldaps://`
//! when configured ([`crate::slapd::tls`]), and never sends a password in cleartext to
//! another host unless explicitly allowed.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use tokio::time::Instant;

use crate::slapd::database::FencedDatabase;

/// The syntax of the checks lives in the contract (the webhook validates annotations with it).
pub use ldap_elector_contract::check::{Bind, Credentials, LdapCheck, Tls};

/// What a passing check saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The suffix entry's `contextCSN` values (one per server ID that wrote), sorted.
    pub context_csn: Vec<String>,
}

/// The step of an LDAP exchange that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    ReadPassword,
    Bind,
    RootDse,
    ContextCsn,
    ReadConfig,
    WriteConfig,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::ReadPassword => "read bind password file",
            Step::Bind => "bind",
            Step::RootDse => "read rootDSE",
            Step::ContextCsn => "read contextCSN",
            Step::ReadConfig => "read cn=config",
            Step::WriteConfig => "modify cn=config",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LdapError {
    #[error("{url}: {step}: no answer before the deadline ({timeout:?} for the whole exchange)")]
    Timeout { url: String, step: Step, timeout: Duration },
    #[error("{url}: {step}: {message}")]
    Failed { url: String, step: Step, message: String, code: Option<u32> },
    #[error("{0}")]
    BadUrl(String),
    /// Nothing listens on the socket (connection refused, or no socket): slapd is not running.
    #[error("{url}: connect: slapd is not running ({message})")]
    NotRunning { url: String, message: String },
    /// The caller withdrew the change before it was sent (see [`set_read_only`]).
    #[error("{url}: change withdrawn before it was sent")]
    Withdrawn { url: String },
}

impl LdapError {
    /// The LDAP result code, when the server answered with an error result.
    pub fn result_code(&self) -> Option<u32> {
        match self {
            LdapError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// The I/O of an LDAP check (its syntax, [`LdapCheck`], is part of the contract).
pub trait Probe {
    /// One check: connect, bind, read the rootDSE, read the suffix's `contextCSN`; all
    /// within `timeout`.
    fn probe(&self, timeout: Duration) -> impl std::future::Future<Output = Result<Status, LdapError>> + Send;
}

impl Probe for LdapCheck {
    /// One check: connect, bind, read the rootDSE, read the suffix's `contextCSN`; all
    /// within `timeout`.
    async fn probe(&self, timeout: Duration) -> Result<Status, LdapError> {
        let deadline = Deadline { at: Instant::now() + timeout, timeout };
        let mut session = Session::open_check(self, deadline).await?;
        session.bind(&self.bind, deadline).await?;
        let url = &self.url;
        let dse = deadline
            .step(url, Step::RootDse, async {
                let (entries, _) =
                    session.ldap.search("", Scope::Base, "(objectClass=*)", vec!["namingContexts"]).await?.success()?;
                Ok(entries.len())
            })
            .await?;
        if dse != 1 {
            return Err(failed(url, Step::RootDse, format!("expected one entry, got {dse}")));
        }
        let context_csn = deadline
            .step(url, Step::ContextCsn, async {
                let (entries, _) = session
                    .ldap
                    .search(&self.base, Scope::Base, "(objectClass=*)", vec!["contextCSN"])
                    .await?
                    .success()?;
                Ok(entries)
            })
            .await?
            .into_iter()
            .flat_map(|e| attribute(SearchEntry::construct(e), "contextCSN"))
            .collect::<Vec<_>>();
        session.close().await;
        let mut context_csn = context_csn;
        context_csn.sort();
        Ok(Status { context_csn })
    }
}

/// Sets `olcReadOnly` of `database` (found in cn=config first when named by its suffix) over
/// `ldapi_url` with SASL EXTERNAL, and reads it back in the same session: `Ok` only when
/// slapd confirms the state. Takes effect at once, also on open client connections
/// (their writes get `53 unwillingToPerform`); replication into the database still applies.
///
/// Latency: usually a few milliseconds, but slapd pauses all its threads for a cn=config
/// change, and a syncrepl consumer holds that pause off until a message arrives or its
/// syncrepl `timeout=` passes when it is in its refresh read: from the start of its session
/// for as long as changes keep arriving less than that timeout apart (2.5.13, observed and in
/// the source: `do_syncrep2` takes its read timeout once, when the refresh begins; a pause
/// ends that read at the next change). Budget that timeout; on `Timeout` the change is still
/// queued in slapd and will apply later, so read back with [`is_read_only`] before trusting
/// either state.
pub async fn set_read_only(
    ldapi_url: &str,
    database: &FencedDatabase,
    read_only: bool,
    timeout: Duration,
) -> Result<(), LdapError> {
    set_read_only_if(ldapi_url, database, read_only, timeout, &|| true).await
}

/// [`set_read_only`], asking `proceed` immediately before the modify is sent (after connect
/// and bind, which may wait on a stopped slapd): a `false` aborts with
/// [`LdapError::Withdrawn`]. The fence keeper uses it so that a wish to become writable that
/// expired while this call waited never reaches slapd.
pub async fn set_read_only_if(
    ldapi_url: &str,
    database: &FencedDatabase,
    read_only: bool,
    timeout: Duration,
    proceed: &(dyn Fn() -> bool + Sync),
) -> Result<(), LdapError> {
    let deadline = Deadline { at: Instant::now() + timeout, timeout };
    let mut session = Session::open_ldapi(ldapi_url, deadline).await?;
    let database_dn = match session.database_dn(database, deadline).await {
        Ok(dn) => dn,
        Err(e) => {
            session.close().await;
            return Err(e);
        }
    };
    let database_dn = database_dn.as_str();
    if !proceed() {
        session.close().await;
        return Err(LdapError::Withdrawn { url: ldapi_url.to_string() });
    }
    let confirmed = session.write_read_only(database_dn, read_only, deadline).await;
    session.close().await;
    confirmed
}

/// A fence made ready in advance: an ldapi session bound with SASL EXTERNAL and the fenced
/// database's cn=config DN found, so that fencing is the modify alone. The guard holds one
/// while armed: after a thaw (the whole pod frozen past the Lease) slapd serves requests in
/// the order they reach it, and a fence of four requests in a row (connect and bind, the DN
/// search, the modify) lost that race to a client's bind and write (docs/design.md).
pub struct ReadyFence {
    session: Session,
    database_dn: String,
}

impl ReadyFence {
    pub async fn open(ldapi_url: &str, database: &FencedDatabase, timeout: Duration) -> Result<ReadyFence, LdapError> {
        let deadline = Deadline { at: Instant::now() + timeout, timeout };
        let mut session = Session::open_ldapi(ldapi_url, deadline).await?;
        let database_dn = session.database_dn(database, deadline).await?;
        Ok(ReadyFence { session, database_dn })
    }

    /// Whether the session may still carry a fence (slapd has not closed it).
    pub fn is_open(&mut self) -> bool {
        !self.session.ldap.is_closed()
    }

    /// Sets `olcReadOnly: TRUE` and reads it back, in this session.
    pub async fn fence(self, timeout: Duration) -> Result<(), LdapError> {
        let deadline = Deadline { at: Instant::now() + timeout, timeout };
        let ReadyFence { mut session, database_dn } = self;
        let confirmed = session.write_read_only(&database_dn, true, deadline).await;
        session.close().await;
        confirmed
    }
}

/// Reads `olcReadOnly` of `database` from cn=config (absent = writable). cn=monitor is
/// not used: its `readOnly` does not follow `olcReadOnly` (slapd 2.5).
pub async fn is_read_only(ldapi_url: &str, database: &FencedDatabase, timeout: Duration) -> Result<bool, LdapError> {
    let deadline = Deadline { at: Instant::now() + timeout, timeout };
    let mut session = Session::open_ldapi(ldapi_url, deadline).await?;
    let read_only = match session.database_dn(database, deadline).await {
        Ok(dn) => session.read_only(&dn, deadline).await,
        Err(e) => Err(e),
    };
    session.close().await;
    read_only
}

/// How often [`watch_ldapi`] tries to connect while slapd is not running: a refused connect
/// costs microseconds, and a slapd that starts is seen within this.
pub const START_POLL: Duration = Duration::from_millis(25);

/// Runs until dropped, calling `started` each time slapd begins to accept connections on
/// `ldapi_url` (the first time included). While slapd runs it holds one idle connection
/// open (no bind, no operation): its end means slapd went away, and the fast poll resumes.
/// A slapd that closes idle connections (`olcIdleTimeout`) only causes one more `started`.
pub async fn watch_ldapi(ldapi_url: &str, started: &(dyn Fn() + Sync)) {
    let mut down_logged = false;
    loop {
        let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(1));
        match LdapConnAsync::with_settings(settings, ldapi_url).await {
            Ok((conn, ldap)) => {
                tracing::debug!(url = ldapi_url, "slapd accepts connections");
                started();
                down_logged = false;
                // `drive` returns at the socket's end; `ldap` must live until then.
                let ended = conn.drive().await;
                drop(ldap);
                tracing::info!(url = ldapi_url, ?ended, "slapd closed the watch connection (stopped?)");
            }
            Err(e) => {
                if !down_logged {
                    tracing::debug!(url = ldapi_url, error = %e, "slapd not accepting connections; polling");
                    down_logged = true;
                }
                tokio::time::sleep(START_POLL).await;
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    async fn step<T>(
        self,
        url: &str,
        step: Step,
        work: impl std::future::Future<Output = Result<T, ldap3::LdapError>>,
    ) -> Result<T, LdapError> {
        match tokio::time::timeout_at(self.at, work).await {
            Err(_) => Err(LdapError::Timeout { url: url.to_string(), step, timeout: self.timeout }),
            Ok(Err(ldap3::LdapError::Io { source }))
                if step == Step::Connect
                    && matches!(
                        source.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
            {
                Err(LdapError::NotRunning { url: url.to_string(), message: source.to_string() })
            }
            Ok(Err(e)) => {
                let code = match &e {
                    ldap3::LdapError::LdapResult { result } => Some(result.rc),
                    _ => None,
                };
                Err(LdapError::Failed { url: url.to_string(), step, message: e.to_string(), code })
            }
            Ok(Ok(v)) => Ok(v),
        }
    }
}

fn failed(url: &str, step: Step, message: String) -> LdapError {
    LdapError::Failed { url: url.to_string(), step, message, code: None }
}

/// A connection with its driver task; dropping it aborts the driver (and closes the socket).
struct Session {
    url: String,
    ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(url: &str, deadline: Deadline) -> Result<Session, LdapError> {
        let settings = LdapConnSettings::new().set_conn_timeout(deadline.timeout);
        Session::open_with(url, settings, deadline).await
    }

    /// Opens the check's server with its transport (StartTLS, ldaps with its CA). A simple
    /// bind the cleartext rule refuses fails here, before anything is sent.
    async fn open_check(check: &LdapCheck, deadline: Deadline) -> Result<Session, LdapError> {
        if matches!(check.bind, Bind::Simple { .. }) {
            crate::slapd::tls::refuse_cleartext_bind(check).map_err(|m| failed(&check.url, Step::Bind, m))?;
        }
        let settings =
            crate::slapd::tls::settings(check, deadline.timeout).map_err(|m| failed(&check.url, Step::Connect, m))?;
        Session::open_with(&check.url, settings, deadline).await
    }

    async fn open_with(url: &str, settings: LdapConnSettings, deadline: Deadline) -> Result<Session, LdapError> {
        let (conn, ldap) = deadline.step(url, Step::Connect, LdapConnAsync::with_settings(settings, url)).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        Ok(Session { url: url.to_string(), ldap, driver })
    }

    /// Opens `ldapi_url` and binds with SASL EXTERNAL.
    async fn open_ldapi(ldapi_url: &str, deadline: Deadline) -> Result<Session, LdapError> {
        if !ldapi_url.starts_with("ldapi://") {
            return Err(LdapError::BadUrl(format!("{ldapi_url:?}: cn=config is reached over ldapi:// only")));
        }
        let mut session = Session::open(ldapi_url, deadline).await?;
        session.bind(&Bind::SaslExternal, deadline).await?;
        Ok(session)
    }

    /// The cn=config entry of `database`: named, or the one database with its suffix (read
    /// on every call: slapd numbers its databases in the order of its configuration).
    async fn database_dn(&mut self, database: &FencedDatabase, deadline: Deadline) -> Result<String, LdapError> {
        if let FencedDatabase::Entry(dn) = database {
            return Ok(dn.clone());
        }
        let url = self.url.clone();
        // Every database with a suffix, compared here (the error then lists them); the
        // rights this needs are in docs/openldap.md's ACL.
        let entries = deadline
            .step(&url, Step::ReadConfig, async {
                let (entries, _) = self
                    .ldap
                    .search("cn=config", Scope::OneLevel, "(olcSuffix=*)", vec!["olcSuffix"])
                    .await?
                    .success()?;
                Ok(entries)
            })
            .await?;
        let found: Vec<(String, Option<String>)> = entries
            .into_iter()
            .map(SearchEntry::construct)
            .map(|e| (e.dn.clone(), attribute(e, "olcSuffix").into_iter().next()))
            .collect();
        let pairs = found.iter().map(|(dn, s)| (dn.as_str(), s.as_deref()));
        database.find(pairs).map(str::to_string).map_err(|m| failed(&url, Step::ReadConfig, m))
    }

    /// Sets `olcReadOnly` of `database_dn` and reads it back: `Ok` only when slapd confirms.
    async fn write_read_only(
        &mut self,
        database_dn: &str,
        read_only: bool,
        deadline: Deadline,
    ) -> Result<(), LdapError> {
        let url = self.url.clone();
        let value = if read_only { "TRUE" } else { "FALSE" };
        deadline
            .step(&url, Step::WriteConfig, async {
                self.ldap
                    .modify(database_dn, vec![Mod::Replace("olcReadOnly", HashSet::from([value]))])
                    .await?
                    .success()?;
                Ok(())
            })
            .await?;
        match self.read_only(database_dn, deadline).await? {
            now if now == read_only => Ok(()),
            now => Err(failed(&url, Step::ReadConfig, format!("olcReadOnly reads {now} after setting {read_only}"))),
        }
    }

    /// `olcReadOnly` of `database_dn` from cn=config (absent = writable).
    async fn read_only(&mut self, database_dn: &str, deadline: Deadline) -> Result<bool, LdapError> {
        let url = self.url.clone();
        let entries = deadline
            .step(&url, Step::ReadConfig, async {
                let (entries, _) = self
                    .ldap
                    .search(database_dn, Scope::Base, "(objectClass=*)", vec!["olcReadOnly"])
                    .await?
                    .success()?;
                Ok(entries)
            })
            .await?;
        let values: Vec<String> =
            entries.into_iter().flat_map(|e| attribute(SearchEntry::construct(e), "olcReadOnly")).collect();
        match values.as_slice() {
            [] => Ok(false),
            [v] if v.eq_ignore_ascii_case("TRUE") => Ok(true),
            [v] if v.eq_ignore_ascii_case("FALSE") => Ok(false),
            other => Err(failed(&url, Step::ReadConfig, format!("unexpected olcReadOnly {other:?}"))),
        }
    }

    async fn bind(&mut self, bind: &Bind, deadline: Deadline) -> Result<(), LdapError> {
        let url = self.url.clone();
        match bind {
            Bind::Anonymous => Ok(()),
            Bind::SaslExternal => {
                deadline
                    .step(&url, Step::Bind, async { self.ldap.sasl_external_bind().await?.success().map(drop) })
                    .await
            }
            Bind::Simple { dn, password_file } => {
                let password = read_password(password_file).await.map_err(|m| failed(&url, Step::ReadPassword, m))?;
                deadline
                    .step(&url, Step::Bind, async { self.ldap.simple_bind(dn, &password).await?.success().map(drop) })
                    .await
            }
        }
    }

    /// Unbinds (best effort, briefly) and stops the driver.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ldap.unbind()).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The secret in `file` without its trailing newline; an empty one is refused.
pub(crate) async fn read_password(file: &Path) -> Result<String, String> {
    let raw = tokio::fs::read_to_string(file).await.map_err(|e| format!("{}: {e}", file.display()))?;
    let password = raw.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        // An empty password would make the simple bind an unauthenticated one.
        return Err(format!("{}: empty password", file.display()));
    }
    Ok(password)
}

/// The values of `name` (matched case-insensitively, as LDAP attribute names are).
fn attribute(entry: SearchEntry, name: &str) -> Vec<String> {
    entry.attrs.into_iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).flat_map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_fails_at_connect_and_a_silent_one_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = LdapCheck::parse(&format!("ldap://127.0.0.1:{port}?base=dc=x")).unwrap();
        // Accepts (backlog) but never answers: the rootDSE read hits the deadline.
        let err = check.probe(Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, LdapError::Timeout { step: Step::RootDse, .. }), "{err}");
        drop(listener);
        // Refused at connect, or no socket: nothing listens (the fence counts slapd as down).
        let err = check.probe(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, LdapError::NotRunning { .. }), "{err}");
        let missing = LdapCheck::parse("ldapi://%2Fnonexistent%2Fsock?base=dc=x").unwrap();
        let err = missing.probe(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, LdapError::NotRunning { .. }), "{err}");
    }

    /// The watch sees a slapd start within the fast poll and its stop (the held connection
    /// ends) at once, so that a restart is seen within the poll as well.
    #[tokio::test]
    async fn the_watch_sees_slapd_start_and_restart_quickly() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("ldapi-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ldapi");
        let url = format!("ldapi://{}", socket.display().to_string().replace('/', "%2F"));
        let starts = AtomicUsize::new(0);
        let within = |n: usize, bound: Duration| {
            let starts = &starts;
            async move {
                let t0 = std::time::Instant::now();
                while starts.load(Ordering::SeqCst) < n && t0.elapsed() < Duration::from_secs(3) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                assert_eq!(starts.load(Ordering::SeqCst), n);
                assert!(t0.elapsed() < bound, "start {n} seen after {:?}", t0.elapsed());
            }
        };
        let scenario = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(starts.load(Ordering::SeqCst), 0, "nothing listens yet");
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            within(1, START_POLL * 4).await;
            let (held, _) = listener.accept().await.unwrap();
            // slapd stops: its sockets close; a stale socket file stays behind.
            drop((held, listener));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(starts.load(Ordering::SeqCst), 1, "a stopped slapd is no start");
            std::fs::remove_file(&socket).unwrap();
            let _listener = tokio::net::UnixListener::bind(&socket).unwrap();
            within(2, START_POLL * 4).await;
        };
        let started = || {
            starts.fetch_add(1, Ordering::SeqCst);
        };
        tokio::select! {
            _ = watch_ldapi(&url, &started) => unreachable!("the watch runs until dropped"),
            _ = scenario => {}
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Command line and environment. Every flag has an environment fallback (the webhook
//! injects the environment); defaults are the safe ones; validation happens at start-up.

pub use ldap_elector_contract::duration::{parse_duration, parse_optional_duration};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::election::decide::Timing;
use crate::slapd::database::FencedDatabase;
use crate::slapd::fence::{Fence, LdapFence};
use crate::slapd::health::HealthCheck;
use crate::slapd::ldap::{Credentials, Tls};
use ldap_elector_contract as contract;

/// Output of the operator commands and the audit: a human-readable text or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// Log lines as JSON (for log collectors) or plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Parser)]
#[command(
    name = "ldap-elector",
    version,
    about = "Lease-based leader election sidecar for an OpenLDAP Mirror-Mode pair"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the elector (the default when no subcommand is given).
    Run,
    /// Internal: the watchdog process the elector starts and feeds (see `watchdog.rs`).
    #[command(hide = true)]
    Watchdog,
    /// The fence guard (the injected container `ldap-elector-guard`): listens on
    /// --guard-socket for the elector and fences slapd over --fence-ldapi when the elector's
    /// connection closes, its deadline passes, and at start until an elector arms it.
    Guard,
    /// Before slapd starts (the injected init container `ldap-elector-start-fenced`): set
    /// `olcReadOnly: TRUE` on the fenced database in slapd's slapd.d directory, so that slapd
    /// starts fenced. Exit 0 fenced (or no slapd.d there yet), 2 failed.
    StartFenced(StartFencedArgs),
    /// Compare the two servers of the pair entry by entry (entryUUID, entryCSN, attribute
    /// digests) and report divergence. Exit 0 in sync, 1 diverged, 3 unsettled, 4 failed.
    Audit(Box<AuditArgs>),
    /// Show the pair: leader, term, Lease ages, each pod's role, health, contextCSN and lag,
    /// the write Services' endpoints, and a WARN line per inconsistency. Exit 0 consistent,
    /// 1 warnings, 2 bad flags, 4 API error.
    Status(crate::cli::operator::StatusArgs),
    /// Ask the leader to hand over to a healthy, caught-up standby, and wait for it.
    /// Exit 0 done, 1 refused, 3 no outcome within --wait, 2 bad flags, 4 API error.
    Switchover(crate::cli::operator::SwitchoverArgs),
    /// Repair a diverged standby from the leader: refuses when the target holds the Lease;
    /// with --data-dir empties its (stopped) slapd's data directory; waits until an audit
    /// against the leader is clean; then clears the target's divergence mark in the Lease.
    /// Exit 0 done, 1 not clean in time, 2 bad flags, 4 failed, 5 refused.
    Reseed(Box<ReseedArgs>),
}

/// Flags of `ldap-elector start-fenced` (see `slapd/start_fenced.rs`).
#[derive(Debug, Clone, Args)]
pub struct StartFencedArgs {
    /// slapd's configuration directory (its `-F`).
    #[arg(long, env = contract::ENV_SLAPD_CONFIG_DIR)]
    pub config_dir: std::path::PathBuf,
    #[command(flatten)]
    pub database: FencedDatabaseArgs,
}

/// Which database the built-in fence toggles (see `slapd/database.rs`).
#[derive(Debug, Clone, Args)]
pub struct FencedDatabaseArgs {
    /// The cn=config entry of the data database the fence toggles; wins over --fence-suffix.
    /// Neither given: `olcDatabase={1}mdb,cn=config`.
    #[arg(long, env = contract::ENV_FENCE_DATABASE)]
    pub fence_database: Option<String>,
    /// The suffix of the data database the fence toggles, found by its `olcSuffix` where the
    /// fence acts (the webhook sets the StatefulSet's ldap-suffix).
    #[arg(long, env = contract::ENV_FENCE_SUFFIX)]
    pub fence_suffix: Option<String>,
}

impl FencedDatabaseArgs {
    pub fn database(&self) -> FencedDatabase {
        FencedDatabase::from_flags(self.fence_database.clone(), self.fence_suffix.clone())
    }
}

/// Transport security of the LDAP connections to other slapd servers (docs/divergence.md,
/// "TLS"): shared by the elector, `audit` and `reseed`.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Upgrade `ldap://` connections with StartTLS before the bind, verifying the server's
    /// certificate against --ldap-ca-file and its name against the URL's host.
    /// (`ldaps://` URLs are TLS without it; `ldapi://` never uses TLS.)
    #[arg(long, env = contract::ENV_LDAP_STARTTLS, action = clap::ArgAction::SetTrue)]
    pub ldap_starttls: bool,
    /// PEM file with the CA certificate(s) of the slapd servers: the only ones trusted for
    /// `ldaps://` and StartTLS (read on every connection).
    #[arg(long, env = contract::ENV_LDAP_CA_FILE)]
    pub ldap_ca_file: Option<std::path::PathBuf>,
    /// Allow a simple bind (a password) over plain `ldap://` to a host that is not local
    /// (not loopback). Without it such a bind is refused before anything is sent.
    #[arg(long, env = contract::ENV_ALLOW_CLEARTEXT_BIND, action = clap::ArgAction::SetTrue)]
    pub allow_cleartext_bind: bool,
}

impl TlsArgs {
    pub fn tls(&self) -> Tls {
        Tls {
            starttls: self.ldap_starttls,
            ca_file: self.ldap_ca_file.clone().filter(|p| !p.as_os_str().is_empty()),
            allow_cleartext_bind: self.allow_cleartext_bind,
        }
    }
}

/// Flags of `ldap-elector reseed` (see `reseed.rs` and docs/divergence.md).
#[derive(Debug, Clone, Args)]
pub struct ReseedArgs {
    /// The diverged standby pod to reseed.
    #[arg(long)]
    pub pod: String,
    /// Namespace of the pods and the Lease (kubeconfig or in-cluster credentials that may
    /// get and update the Lease).
    #[arg(long, env = contract::ENV_POD_NAMESPACE)]
    pub namespace: String,
    /// The Lease; default `<statefulset of --pod>-leader`.
    #[arg(long, env = contract::ENV_LEASE_NAME)]
    pub lease_name: Option<String>,
    /// Each pod's slapd, as the elector's --audit-peers: a URL template with `{pod}` or
    /// `POD=URL` pairs; each URL with `?base=SUFFIX`.
    #[arg(long, env = contract::ENV_AUDIT_PEERS)]
    pub servers: String,
    /// Bind DN for the audits on both servers (simple bind; see docs/openldap.md).
    #[arg(long, env = ldap_elector_contract::ENV_LDAP_BIND_DN)]
    pub bind_dn: Option<String>,
    #[arg(long, env = ldap_elector_contract::ENV_LDAP_BIND_PASSWORD_FILE)]
    pub bind_password_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The target's data directory (its slapd must be stopped): moved aside and replaced by
    /// an empty one. Without it, empty the database yourself first (docs/divergence.md).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// How long to wait for a clean audit after emptying.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Timeout of each LDAP operation.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub op_timeout: Duration,
}

impl ReseedArgs {
    pub fn into_plan(self) -> Result<crate::divergence::reseed::Plan, String> {
        let lease_name = match self.lease_name.filter(|s| !s.trim().is_empty()) {
            Some(l) => l,
            None => contract::split_pod_name(&self.pod)
                .map(|(set, _)| contract::lease_name(set))
                .ok_or_else(|| format!("cannot derive the StatefulSet from pod {:?}; set --lease-name", self.pod))?,
        };
        let servers = crate::divergence::policy::PeerUrls::parse(&self.servers)?;
        let target = servers.url(&self.pod).ok_or_else(|| format!("--servers names no URL for {}", self.pod))?;
        let creds = Credentials {
            bind_dn: self.bind_dn.filter(|s| !s.trim().is_empty()),
            password_file: self.bind_password_file,
        };
        let tls = self.tls.tls();
        crate::slapd::ldap::LdapCheck::parse(&target)?.with_credentials(&creds)?.with_tls(&tls)?;
        Ok(crate::divergence::reseed::Plan {
            namespace: self.namespace,
            lease_name,
            target: self.pod,
            servers,
            creds,
            tls,
            data_dir: self.data_dir,
            timeout: self.timeout,
            op_timeout: self.op_timeout,
        })
    }
}

/// Flags of `ldap-elector audit` (see `audit.rs` and docs/divergence.md).
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Server A: `ldap://HOST:PORT?base=SUFFIX` or `ldapi://%2Fpath%2Fsock?base=SUFFIX`.
    #[arg(long, env = ldap_elector_contract::ENV_AUDIT_SERVER_A)]
    pub server_a: String,
    /// Server B, under the same suffix.
    #[arg(long, env = ldap_elector_contract::ENV_AUDIT_SERVER_B)]
    pub server_b: String,
    /// Bind DN on both servers (simple bind); without it SASL EXTERNAL over ldapi and
    /// anonymous over ldap. It needs read access to every entry and unlimited size limits.
    #[arg(long, env = ldap_elector_contract::ENV_AUDIT_BIND_DN)]
    pub bind_dn: Option<String>,
    /// File with the bind DN's password.
    #[arg(long, env = ldap_elector_contract::ENV_AUDIT_BIND_PASSWORD_FILE)]
    pub bind_password_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Deadline of the whole audit.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Timeout of each LDAP operation (and of each page of a search).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// First-level buckets: 2^N by the leading entryUUID bits (8, 12, 16 or 20).
    #[arg(long, default_value_t = 16)]
    pub bucket_bits: u32,
    /// Re-reads of a differing entry before it is reported as unsettled (a difference
    /// must hold over 2 of them to count as divergence).
    #[arg(long, default_value_t = 6)]
    pub settle_rounds: u32,
    /// Most entries per server held in memory at once when reading differing buckets.
    #[arg(long, default_value_t = 5000)]
    pub leaf_max: usize,
    /// Page size of the paged searches.
    #[arg(long, default_value_t = 1000)]
    pub page_size: i32,
    /// More attributes to request and compare (comma list), e.g. replicated
    /// operational attributes of overlays.
    #[arg(long, value_delimiter = ',')]
    pub extra_attrs: Vec<String>,
    /// Attributes left out of the comparison (comma list), for data that legitimately
    /// differs per server. contextCSN is never compared.
    #[arg(long, value_delimiter = ',')]
    pub ignore_attrs: Vec<String>,
    /// Confirmed differences listed; beyond, they are counted and the audit stops descending.
    #[arg(long, default_value_t = 1000)]
    pub max_report: usize,
}

impl AuditArgs {
    pub fn into_config(self) -> Result<crate::divergence::audit::AuditConfig, String> {
        let creds = Credentials {
            bind_dn: self.bind_dn.filter(|s| !s.trim().is_empty()),
            password_file: self.bind_password_file,
        };
        let mut config = crate::divergence::audit::AuditConfig::new(&self.server_a, &self.server_b, &creds)?
            .with_tls(&self.tls.tls())?;
        config.timeout = self.timeout;
        config.op_timeout = self.op_timeout;
        config.bucket_bits = self.bucket_bits;
        config.settle_rounds = self.settle_rounds;
        config.leaf_max = self.leaf_max;
        config.page_size = self.page_size;
        config.policy = crate::divergence::audit::AttrPolicy::new(&self.extra_attrs, &self.ignore_attrs);
        config.max_report = self.max_report;
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This pod's name: the candidate identity written into the Lease.
    #[arg(long, env = contract::ENV_POD_NAME)]
    pub pod_name: Option<String>,
    /// This pod's UID (recorded on the Lease: a pod recreated under the same name is
    /// another pod and waits for the Lease to expire).
    #[arg(long, env = contract::ENV_POD_UID)]
    pub pod_uid: Option<String>,
    /// This pod's namespace (also the Lease's).
    #[arg(long, env = contract::ENV_POD_NAMESPACE)]
    pub namespace: Option<String>,
    /// The StatefulSet whose pods compete; derived from the pod name when absent.
    #[arg(long, env = contract::ENV_STATEFULSET)]
    pub statefulset: Option<String>,
    /// The Lease to compete for; default `<statefulset>-leader`.
    #[arg(long, env = contract::ENV_LEASE_NAME)]
    pub lease_name: Option<String>,
    /// How long followers wait after the last renew they saw before taking over
    /// (whole seconds; e.g. `8` or `8s`).
    #[arg(long, env = contract::ENV_LEASE_DURATION, default_value = "8s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews.
    #[arg(long, env = contract::ENV_RENEW_PERIOD, default_value = "2s", value_parser = parse_duration)]
    pub renew_period: Duration,
    /// How long after its last successful renew the leader demotes itself; must leave
    /// room before the lease duration (validated).
    #[arg(long, env = contract::ENV_RENEW_DEADLINE, default_value = "5s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// Health check of the local slapd: `none`, `tcp://HOST:PORT` or `exec:COMMAND ARGS…`.
    /// An unhealthy pod never acquires; a leader failing it demotes and releases.
    #[arg(long, env = contract::ENV_HEALTH_CHECK, default_value = "none", value_parser = HealthCheck::parse)]
    pub health_check: HealthCheck,
    /// Interval between health checks.
    #[arg(long, env = contract::ENV_HEALTH_INTERVAL, default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Consecutive failed checks before the pod counts as unhealthy.
    #[arg(long, env = contract::ENV_HEALTH_FAILURES, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_failures: u32,
    /// Command run on every role change with the new role (`leader` or `standby`) as its
    /// last argument, e.g. to fence slapd; a failing hook on `standby` is logged, a
    /// failing hook on `leader` keeps the pod from taking writes (it releases).
    #[arg(long, env = contract::ENV_ON_ROLE_CHANGE)]
    pub on_role_change: Option<String>,
    /// Built-in write fence: the ldapi URL of the local slapd (e.g.
    /// `ldapi://%2Frun%2Fslapd%2Fldapi`); standby sets `olcReadOnly: TRUE` on the data
    /// database over SASL EXTERNAL, the leader sets FALSE after it holds Lease and label.
    #[arg(long, env = contract::ENV_FENCE_LDAPI)]
    pub fence_ldapi: Option<String>,
    #[command(flatten)]
    pub fenced_database: FencedDatabaseArgs,
    /// Availability over consistency: a standby whose contextCSN is behind the leader's
    /// published one takes over anyway once the Lease has been free this long (`off`:
    /// never — the pair then stays without a writer until the old leader returns).
    #[arg(long, env = contract::ENV_CATCH_UP_GRACE, default_value = "30s")]
    pub catch_up_grace: String,
    /// After the leader's Lease expired, how long a standby waits for the old leader's slapd
    /// (reached over --audit-peers) to answer with its current contextCSN before it takes
    /// over without it, recording the uncovered window (docs/operations.md).
    #[arg(long, env = contract::ENV_CATCH_UP_VERIFY, default_value = "3s", value_parser = parse_duration)]
    pub catch_up_verify: Duration,
    /// Bind DN of the LDAP health check (simple bind); without it SASL EXTERNAL over ldapi.
    #[arg(long, env = ldap_elector_contract::ENV_LDAP_BIND_DN)]
    pub ldap_bind_dn: Option<String>,
    /// File with the password of the bind DN (read on every check, so it can rotate).
    #[arg(long, env = ldap_elector_contract::ENV_LDAP_BIND_PASSWORD_FILE)]
    pub ldap_bind_password_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Start the watchdog process that fences slapd when this elector stops renewing
    /// (paused, hung, killed). On by default when a fence is configured.
    #[arg(long, env = contract::ENV_WATCHDOG, default_value_t = true, action = clap::ArgAction::Set)]
    pub watchdog: bool,
    /// The fence guard's Unix socket (docs/design.md, "Write fencing"): the elector connects
    /// there instead of starting a watchdog process, and `guard` listens there.
    #[arg(long, env = contract::ENV_GUARD_SOCKET)]
    pub guard_socket: Option<std::path::PathBuf>,
    /// Divergence audits by the leader (docs/divergence.md): how to reach each standby's
    /// slapd, a URL template with `{pod}` (`ldap://{pod}.ldap-server:389`) or `POD=URL`
    /// pairs; the local side is the LDAP health check's server. Binds with the
    /// `--ldap-bind-dn` credentials. Unset: no audits.
    #[arg(long, env = contract::ENV_AUDIT_PEERS)]
    pub audit_peers: Option<String>,
    /// Interval of routine audits (`0`/`off`: only on taking office, rejoins and retries).
    #[arg(long, env = contract::ENV_AUDIT_INTERVAL, default_value = "600s")]
    pub audit_interval: String,
    /// Address of the plain-HTTP /livez and /readyz endpoints (`off` to disable).
    #[arg(long, env = contract::ENV_PROBE_ADDR, default_value = "0.0.0.0:8086")]
    pub probe_addr: String,
    /// Address of the plain-HTTP Prometheus `/metrics` endpoint, e.g. `0.0.0.0:9090`
    /// (`off`, the default: no endpoint). See docs/metrics.md.
    #[arg(long, env = contract::ENV_METRICS_ADDR, default_value = "off")]
    pub metrics_addr: String,
    /// Log format.
    #[arg(long, env = contract::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Everything the elector needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub identity: String,
    /// This pod's UID (`None`: unknown; a Lease held under this name is never taken for ours).
    pub pod_uid: Option<String>,
    pub namespace: String,
    pub statefulset: String,
    pub lease_name: String,
    pub timing: Timing,
    /// Timeout of every API call: shorter than the renew period so a hung call cannot
    /// eat the leader's whole renew deadline.
    pub api_timeout: Duration,
    pub health_check: HealthCheck,
    pub health_interval: Duration,
    pub health_failures: u32,
    pub on_role_change: Option<String>,
    pub fence_ldapi: Option<LdapFence>,
    pub catch_up_grace: Option<Duration>,
    /// How long to wait for the old leader's current contextCSN after an expiry.
    pub catch_up_verify: Duration,
    pub watchdog: bool,
    /// The fence guard's socket (`None`: a child watchdog, if `watchdog`).
    pub guard_socket: Option<std::path::PathBuf>,
    pub probe_addr: Option<String>,
    pub metrics_addr: Option<String>,
    /// The leader's divergence audits (`None`: off).
    pub audit: Option<crate::divergence::auditor::Settings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing {0}: set the flag or the environment variable (the webhook injects it)")]
    Missing(&'static str),
    #[error("cannot derive the StatefulSet from pod name {0:?}; set --statefulset")]
    NoStatefulSet(String),
    #[error("pod {pod:?} is not a member of StatefulSet {statefulset:?}")]
    NotAMember { pod: String, statefulset: String },
    #[error(transparent)]
    Timing(#[from] crate::election::decide::TimingError),
    #[error("health check: {0}")]
    HealthCheck(String),
    #[error("--catch-up-grace: {0} (or `off`)")]
    CatchUpGrace(String),
    #[error("--fence-ldapi must be an ldapi:// URL, got {0:?}")]
    FenceUrl(String),
    #[error("divergence audit: {0}")]
    Audit(String),
    #[error(
        "--ldap-starttls ({}) needs --ldap-ca-file ({}): the CA that signed the servers' certificates",
        contract::ENV_LDAP_STARTTLS,
        contract::ENV_LDAP_CA_FILE
    )]
    StartTlsWithoutCa,
    #[error("the guard needs --fence-ldapi (ELECTOR_FENCE_LDAPI) and --guard-socket (ELECTOR_GUARD_SOCKET)")]
    GuardUnconfigured,
}

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let fence_ldapi = fence(self.fence_ldapi, &self.fenced_database)?;
        let identity = self.pod_name.filter(|s| !s.is_empty()).ok_or(ConfigError::Missing("pod name (POD_NAME)"))?;
        let namespace =
            self.namespace.filter(|s| !s.is_empty()).ok_or(ConfigError::Missing("namespace (POD_NAMESPACE)"))?;
        let statefulset = match self.statefulset.filter(|s| !s.is_empty()) {
            Some(s) => s,
            None => contract::split_pod_name(&identity)
                .map(|(set, _)| set.to_string())
                .ok_or_else(|| ConfigError::NoStatefulSet(identity.clone()))?,
        };
        if contract::split_pod_name(&identity).map(|(set, _)| set) != Some(statefulset.as_str()) {
            return Err(ConfigError::NotAMember { pod: identity, statefulset });
        }
        let timing = Timing {
            lease_duration: self.lease_duration,
            renew_period: self.renew_period,
            renew_deadline: self.renew_deadline,
        };
        timing.validate()?;
        let creds = Credentials {
            bind_dn: self.ldap_bind_dn.filter(|s| !s.is_empty()),
            password_file: self.ldap_bind_password_file,
        };
        let tls = self.tls.tls();
        if tls.starttls && tls.ca_file.is_none() {
            return Err(ConfigError::StartTlsWithoutCa);
        }
        let health_check = self
            .health_check
            .with_ldap_credentials(&creds)
            .and_then(|c| c.with_ldap_tls(&tls))
            .map_err(ConfigError::HealthCheck)?;
        let audit = match self.audit_peers.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(peers) => {
                let HealthCheck::Ldap(local) = &health_check else {
                    return Err(ConfigError::Audit(
                        "--audit-peers needs an LDAP health check (ldap:// or ldapi://…?base=SUFFIX): it names the local server and the suffix".into(),
                    ));
                };
                let interval = match self.audit_interval.trim() {
                    "0" | "off" => None,
                    other => {
                        Some(parse_duration(other).map_err(|e| ConfigError::Audit(format!("--audit-interval: {e}")))?)
                    }
                };
                let peers = crate::divergence::policy::PeerUrls::parse(&peers).map_err(ConfigError::Audit)?;
                Some(crate::divergence::auditor::Settings {
                    identity: identity.clone(),
                    statefulset: statefulset.clone(),
                    local: local.clone(),
                    peers,
                    creds: creds.clone(),
                    tls: tls.clone(),
                    cadence: crate::divergence::policy::Cadence { interval, ..Default::default() },
                    op_timeout: Duration::from_secs(30),
                    timeout: Duration::from_secs(300),
                })
            }
        };
        Ok(Config {
            pod_uid: self.pod_uid.filter(|u| !u.trim().is_empty()),
            lease_name: self.lease_name.filter(|s| !s.is_empty()).unwrap_or_else(|| contract::lease_name(&statefulset)),
            identity,
            namespace,
            statefulset,
            api_timeout: timing.renew_period.mul_f64(0.75),
            timing,
            health_check,
            health_interval: self.health_interval,
            health_failures: self.health_failures,
            on_role_change: self.on_role_change.filter(|s| !s.trim().is_empty()),
            fence_ldapi,
            catch_up_grace: parse_optional_duration(&self.catch_up_grace).map_err(ConfigError::CatchUpGrace)?,
            catch_up_verify: self.catch_up_verify,
            watchdog: self.watchdog,
            guard_socket: self.guard_socket.filter(|p| !p.as_os_str().is_empty()),
            probe_addr: Some(self.probe_addr).filter(|a| a != "off"),
            metrics_addr: Some(self.metrics_addr).filter(|a| !a.trim().is_empty() && a != "off"),
            audit,
        })
    }

    /// The guard's fence (ldapi only: the role-change hook is the elector's) and socket.
    pub fn into_guard_config(self) -> Result<(Fence, std::path::PathBuf), ConfigError> {
        let ldap = fence(self.fence_ldapi, &self.fenced_database)?;
        let socket = self.guard_socket.filter(|p| !p.as_os_str().is_empty());
        match (ldap, socket) {
            (Some(ldap), Some(socket)) => {
                Ok((Fence::new(Some(ldap), None, crate::election::decide::FENCE_BUDGET), socket))
            }
            _ => Err(ConfigError::GuardUnconfigured),
        }
    }
}

/// The built-in fence's settings (`None` without an ldapi URL).
fn fence(url: Option<String>, database: &FencedDatabaseArgs) -> Result<Option<LdapFence>, ConfigError> {
    match url.filter(|s| !s.trim().is_empty()) {
        Some(url) if url.starts_with("ldapi://") => {
            Ok(Some(LdapFence { ldapi_url: url, database: database.database() }))
        }
        Some(url) => Err(ConfigError::FenceUrl(url)),
        None => Ok(None),
    }
}

impl Config {
    /// The write fence this configuration describes; its steps are bounded by `FENCE_BUDGET`.
    pub fn fence(&self) -> Fence {
        Fence::new(self.fence_ldapi.clone(), self.on_role_change.clone(), crate::election::decide::FENCE_BUDGET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["ldap-elector", "--pod-name", "ldap-1", "--namespace", "ns", "--probe-addr", "off"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.run.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_derive_names_from_the_pod() {
        let c = args(&[]).unwrap();
        assert_eq!(c.statefulset, "ldap");
        assert_eq!(c.lease_name, "ldap-leader");
        assert_eq!(c.timing, Timing::default());
        assert!(c.api_timeout < c.timing.renew_period);
        assert_eq!(c.probe_addr, None);
        assert_eq!(c.catch_up_grace, Some(Duration::from_secs(30)));
        assert_eq!(c.fence_ldapi, None);
        assert!(c.watchdog);
    }

    #[test]
    fn fence_and_grace_options() {
        let c = args(&["--fence-ldapi", "ldapi://%2Frun%2Fldapi", "--catch-up-grace", "off"]).unwrap();
        assert_eq!(c.catch_up_grace, None);
        assert_eq!(c.fence_ldapi.unwrap().database, FencedDatabase::Entry("olcDatabase={1}mdb,cn=config".into()));
        assert!(args(&["--fence-ldapi", "ldap://127.0.0.1"]).unwrap_err().contains("ldapi://"));
        let by_suffix = args(&["--fence-ldapi", "ldapi://%2Frun%2Fldapi", "--fence-suffix", "dc=x"]).unwrap();
        assert_eq!(by_suffix.fence_ldapi.unwrap().database, FencedDatabase::Suffix("dc=x".into()));
    }

    #[test]
    fn audit_options_need_an_ldap_health_check_and_parse_the_interval() {
        assert!(args(&[]).unwrap().audit.is_none());
        let err = args(&["--audit-peers", "ldap://{pod}.ldap:389"]).unwrap_err();
        assert!(err.contains("LDAP health check"), "{err}");
        let check = ["--health-check", "ldapi://%2Frun%2Fldapi?base=dc=x"];
        let c = args(&[&check[..], &["--audit-peers", "ldap://{pod}.ldap:389"]].concat()).unwrap();
        let audit = c.audit.unwrap();
        assert_eq!(audit.cadence.interval, Some(Duration::from_secs(600)));
        assert_eq!(audit.audit_config("ldap://ldap-0.ldap:389").unwrap().b.base, "dc=x");
        let c = args(&[&check[..], &["--audit-peers", "ldap-0=ldap://a:1", "--audit-interval", "0"]].concat()).unwrap();
        assert_eq!(c.audit.unwrap().cadence.interval, None);
        assert!(args(&[&check[..], &["--audit-peers", "nonsense"]].concat()).is_err());
    }

    #[test]
    fn tls_flags_reach_the_health_check_and_the_audits_and_cleartext_to_peers_is_refused() {
        let dir = std::env::temp_dir().join(format!("elector-args-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let pw = pw.to_str().unwrap();
        let base = [
            "--health-check",
            "ldapi://%2Frun%2Fldapi?base=dc=x",
            "--ldap-bind-dn",
            "cn=auditor,dc=x",
            "--ldap-bind-password-file",
            pw,
            "--audit-peers",
            "ldap://{pod}.ldap:389",
        ];
        // The local check (ldapi) is fine; the peer over plain ldap:// is refused: the elector
        // runs, says so once, and neither audits nor reads that standby.
        let c = args(&base).unwrap();
        let audit = c.audit.unwrap();
        let refused = audit.refused_peers();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "ldap-0");
        assert!(refused[0].1.contains("--allow-cleartext-bind"), "{}", refused[0].1);
        assert!(audit.audit_config("ldap://ldap-0.ldap:389").unwrap_err().contains("cleartext"));
        // Explicitly allowed.
        let c = args(&[&base[..], &["--allow-cleartext-bind"]].concat()).unwrap();
        assert!(c.audit.unwrap().refused_peers().is_empty());
        // StartTLS needs the CA; with it the peers are read over TLS.
        let err = args(&[&base[..], &["--ldap-starttls"]].concat()).unwrap_err();
        assert!(err.contains("--ldap-ca-file"), "{err}");
        let c = args(&[&base[..], &["--ldap-starttls", "--ldap-ca-file", "/ca.crt"]].concat()).unwrap();
        let audit = c.audit.unwrap();
        assert!(audit.refused_peers().is_empty());
        let cfg = audit.audit_config("ldap://ldap-0.ldap:389").unwrap();
        assert_eq!(cfg.b.transport(), ldap_elector_contract::check::Transport::StartTls);
        assert_eq!(cfg.a.transport(), ldap_elector_contract::check::Transport::Ldapi);
        // A health check that would send the password to another host is refused at start.
        let remote = ["--health-check", "ldap://ldap-0.ldap:389?base=dc=x", "--ldap-bind-dn", "cn=a,dc=x"];
        let err = args(&[&remote[..], &["--ldap-bind-password-file", pw]].concat()).unwrap_err();
        assert!(err.contains("health check") && err.contains("cleartext"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unsafe_timings_are_rejected_with_the_reason() {
        let err = args(&["--renew-deadline", "7s"]).unwrap_err();
        assert!(err.contains("renew deadline") && err.contains("unsafe"), "{err}");
    }

    #[test]
    fn a_pod_outside_the_statefulset_is_rejected() {
        let err = args(&["--statefulset", "other"]).unwrap_err();
        assert!(err.contains("not a member"), "{err}");
    }

    #[test]
    fn the_audit_subcommand_needs_no_pod_and_validates_its_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["ldap-elector", "audit", "--server-a", "ldap://a:389?base=dc=x"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
                Some(Command::Audit(a)) => a.into_config(),
                other => Err(format!("{other:?}")),
            }
        };
        let c = parse(&["--server-b", "ldap://b:389?base=dc=x", "-o", "json", "--ignore-attrs", "a,b"]).unwrap();
        assert_eq!((c.bucket_bits, c.settle_rounds), (16, 6));
        assert!(c.policy.ignore.contains(b"a".as_slice()) && c.policy.ignore.contains(b"b".as_slice()));
        assert!(parse(&["--server-b", "ldap://b:389?base=dc=y"]).is_err());
        assert!(parse(&["--server-b", "ldap://b:389?base=dc=x", "--bucket-bits", "7"]).is_err());
        assert!(
            parse(&["--server-b", "ldap://b:389?base=dc=x", "--bind-dn", "cn=a"]).is_err(),
            "needs a password file"
        );
    }

    #[test]
    fn the_audit_and_reseed_subcommands_refuse_a_cleartext_password_to_another_host() {
        let audit = |extra: &[&str]| {
            let mut argv = vec!["ldap-elector", "audit", "--server-a", "ldapi://%2Frun%2Fldapi?base=dc=x"];
            argv.extend_from_slice(&["--server-b", "ldap://192.0.2.10:389?base=dc=x", "--bind-dn", "cn=a,dc=x"]);
            argv.extend_from_slice(&["--bind-password-file", "/pw"]);
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
                Some(Command::Audit(a)) => a.into_config(),
                other => Err(format!("{other:?}")),
            }
        };
        let err = audit(&[]).unwrap_err();
        assert!(err.contains("server B") && err.contains("--allow-cleartext-bind"), "{err}");
        assert!(audit(&["--allow-cleartext-bind"]).is_ok());
        let c = audit(&["--ldap-starttls", "--ldap-ca-file", "/ca.crt"]).unwrap();
        assert_eq!(c.b.tls.ca_file.as_deref(), Some(std::path::Path::new("/ca.crt")));
        let reseed = |extra: &[&str]| {
            let mut argv = vec!["ldap-elector", "reseed", "--namespace", "ns", "--pod", "ldap-1"];
            argv.extend_from_slice(&["--servers", "ldap://{pod}.ldap:389?base=dc=x", "--bind-dn", "cn=a,dc=x"]);
            argv.extend_from_slice(&["--bind-password-file", "/pw"]);
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
                Some(Command::Reseed(a)) => a.into_plan(),
                other => Err(format!("{other:?}")),
            }
        };
        assert!(reseed(&[]).unwrap_err().contains("cleartext"));
        assert!(reseed(&["--allow-cleartext-bind"]).unwrap().tls.allow_cleartext_bind);
    }

    #[test]
    fn the_operator_commands_need_no_pod_and_parse_their_flags() {
        let cli = Cli::try_parse_from(["ldap-elector", "status", "--statefulset", "ldap", "-o", "json"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Status(a)) if a.statefulset == "ldap" && a.output == Output::Json && a.namespace.is_none())
        );
        let cli =
            Cli::try_parse_from(["ldap-elector", "switchover", "--statefulset", "ldap", "--to", "ldap-1", "-n", "ns"])
                .unwrap();
        assert!(
            matches!(cli.command, Some(Command::Switchover(a)) if a.to == "ldap-1" && a.wait == Duration::from_secs(60))
        );
        let cli =
            Cli::try_parse_from(["ldap-elector", "switchover", "--statefulset", "l", "--to", "l-1", "--wait", "0"])
                .unwrap();
        assert!(matches!(cli.command, Some(Command::Switchover(a)) if a.wait.is_zero()));
        assert!(Cli::try_parse_from(["ldap-elector", "switchover", "--statefulset", "l"]).is_err(), "--to is required");
        assert!(Cli::try_parse_from(["ldap-elector", "status", "--statefulset", "l", "-o", "yaml"]).is_err());
    }

    #[test]
    fn the_reseed_subcommand_derives_the_lease_and_needs_the_target_url() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["ldap-elector", "reseed", "--namespace", "ns", "--pod", "ldap-1"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
                Some(Command::Reseed(a)) => a.into_plan(),
                other => Err(format!("{other:?}")),
            }
        };
        let p = parse(&["--servers", "ldap://{pod}.ldap:389?base=dc=x"]).unwrap();
        assert_eq!((p.lease_name.as_str(), p.target.as_str()), ("ldap-leader", "ldap-1"));
        assert!(parse(&["--servers", "ldap-0=ldap://a:1?base=dc=x"]).unwrap_err().contains("ldap-1"));
        assert!(parse(&["--servers", "ldap://{pod}.ldap:389"]).unwrap_err().contains("base"));
    }
}

//! A real OpenLDAP Mirror-Mode pair on loopback: two `slapd` processes (Debian 2.5), each
//! with its own directory, cn=config (loaded with `slapadd -n0`), an `ldap://` port and an
//! `ldapi://` socket, replicating to each other with plain syncrepl (refreshAndPersist).
//! The suffix entry and `ou=people` are added on node 1 only; replication brings them to
//! node 2. Nodes can be killed, stopped and started again on the same directory and port.
//!
//! Defaults follow OPENLDAP-NOTES.md: NO syncprov session log (with one, a node that was
//! down can silently miss changes while contextCSN looks converged); the session log is
//! an option so that divergence can be reproduced. The processes die with the test (see
//! `process::Child`); `LDAP_ELECTOR_KEEP_BED=1` keeps the directory (configs, logs).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use ldap3::{Mod, Scope};
use ldap_elector_contract::check::percent_encode;

use crate::bed::process::{Child, Signal};
use crate::bed::{free_port, random_hex};
use crate::ldap::conn::{root_dse, Conn};
use crate::wait::wait_for;

mod config;
mod tls;

pub use config::{config_ldif, peercred, render, sbin, NodeConfig};
use config::{configure, preload};
use tls::tls_files;
pub use tls::TlsFiles;

pub const SUFFIX: &str = "dc=example,dc=org";
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "secret";
/// The data database in cn=config (the one `olcReadOnly` fences).
pub const DATA_DB: &str = "olcDatabase={1}mdb,cn=config";
/// Timeout of every single LDAP operation of the rig.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a (re)started slapd may take to answer a rootDSE search.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace between SIGTERM and SIGKILL in `stop`.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How the pair is configured.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// `olcSpSessionLog` on both nodes' syncprov; `None` (the default) is the safe setting.
    pub session_log: Option<u32>,
    /// `olcSpCheckpoint` (operations, minutes).
    pub checkpoint: (u32, u32),
    /// syncrepl `timeout=` and `network-timeout=` (seconds). It also bounds how long a
    /// cn=config change (the `olcReadOnly` fence) can stall after a consumer reconnects.
    /// Default 1, the fence budget (the configuration guard flags anything else).
    pub sync_timeout: u32,
    /// slapd's `-d` level (`0` = quiet; e.g. `sync` or `stats` to see replication in the
    /// logs). Default from `LDAP_ELECTOR_SLAPD_DEBUG`.
    pub debug: String,
    /// An LDIF (the suffix entry, `ou=people` and anything else) loaded offline into both
    /// databases before the first start, instead of adding the base entries over LDAP.
    pub preload: Option<PathBuf>,
    /// `olcDbMaxSize` of the data database in bytes (`None`: slapd's default, 10 MiB,
    /// which a few thousand entries under write load fill: "index generation failed").
    pub db_max_size: Option<u64>,
    /// TLS on both nodes: StartTLS on the `ldap://` port and an `ldaps://` port
    /// ([`SlapdNode::ldaps_url`]), with a certificate for `127.0.0.1` only (IP SAN, no DNS
    /// name) from a test CA ([`MirrorPair::ca_file`]). Replication stays plain.
    pub tls: bool,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            session_log: None,
            checkpoint: (10, 1),
            sync_timeout: 1,
            debug: std::env::var("LDAP_ELECTOR_SLAPD_DEBUG").ok().filter(|d| !d.is_empty()).unwrap_or("0".into()),
            preload: None,
            db_max_size: None,
            tls: false,
        }
    }
}

impl PairOptions {
    /// Turns the syncprov session log on (reproduces the divergence of the notes).
    pub fn session_log(mut self, size: u32) -> Self {
        self.session_log = Some(size);
        self
    }

    pub fn checkpoint(mut self, ops: u32, minutes: u32) -> Self {
        self.checkpoint = (ops, minutes);
        self
    }

    pub fn sync_timeout(mut self, seconds: u32) -> Self {
        self.sync_timeout = seconds;
        self
    }

    pub fn debug(mut self, level: &str) -> Self {
        self.debug = level.to_string();
        self
    }

    /// Sets `olcDbMaxSize` (a sparse map: the size is only an upper bound).
    pub fn db_max_size(mut self, bytes: u64) -> Self {
        self.db_max_size = Some(bytes);
        self
    }

    /// TLS on both nodes (see [`PairOptions::tls`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Loads `ldif` into both nodes offline (see [`PairOptions::preload`]).
    pub fn preload(mut self, ldif: PathBuf) -> Self {
        self.preload = Some(ldif);
        self
    }
}

/// One slapd of the pair.
pub struct SlapdNode {
    id: u32,
    dir: PathBuf,
    port: u16,
    /// The `ldaps://` port, with [`PairOptions::tls`].
    ldaps_port: Option<u16>,
    debug: String,
    child: Mutex<Option<Child>>,
}

impl SlapdNode {
    /// The server ID (1 or 2).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mdb directory of the data database.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT`, with [`PairOptions::tls`].
    pub fn ldaps_url(&self) -> Option<String> {
        self.ldaps_port.map(|p| format!("ldaps://127.0.0.1:{p}"))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("ldapi")
    }

    /// `ldapi://%2F…` of this node's socket.
    pub fn ldapi_url(&self) -> String {
        format!("ldapi://{}", percent_encode(&self.socket().display().to_string()))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("slapd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(Child::is_running)
    }

    /// Starts slapd on this node's directory and port (again) and waits until it answers a
    /// rootDSE search.
    pub async fn start(&self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("slapd {} is already running", self.id);
        }
        // A socket left behind by kill -9 would make the ldapi listener fail.
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(sbin("slapd"));
        let ldaps = self.ldaps_url().map(|u| format!(" {u}/")).unwrap_or_default();
        cmd.arg("-h")
            .arg(format!("{}/ {}/{ldaps}", self.ldap_url(), self.ldapi_url()))
            .arg("-F")
            .arg(self.dir.join("config"))
            .arg("-d")
            .arg(&self.debug);
        let child = Child::spawn(&format!("slapd-{}", self.id), cmd, &self.log_path())?;
        let mut exited = child.exited();
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let url = self.ldap_url();
        let what = format!("slapd {} to answer a rootDSE search", self.id);
        let ready = wait_for(&what, READY_TIMEOUT, || {
            let url = url.clone();
            async move { root_dse(&url).await }
        });
        tokio::select! {
            r = ready => r,
            _ = exited.wait_for(|done| *done) => {
                bail!("slapd {} exited while starting; log:\n{}", self.id, tail(&self.log(), 30))
            }
        }
    }

    /// Sends `signal` to this node's slapd (SIGSTOP stalls it, SIGCONT resumes it); false when
    /// it is not running.
    pub fn signal(&self, signal: Signal) -> bool {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.as_ref().filter(|c| c.is_running()).map(|c| c.signal(signal)).is_some()
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&self) {
        if let Some(child) = self.take_child() {
            child.signal(Signal::Kill);
            child.wait().await;
        }
    }

    /// SIGTERM (graceful shutdown), SIGKILL after a grace period.
    pub async fn stop(&self) {
        if let Some(child) = self.take_child() {
            child.stop(STOP_GRACE).await;
        }
    }

    fn take_child(&self) -> Option<Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// `Ok` when this node's syncrepl consumer has a connection to its provider (from
    /// cn=monitor: `olmSRConnection` is empty while it is retrying).
    pub async fn consumer_connected(&self) -> anyhow::Result<()> {
        let mut root = self.root().await?;
        let connections = root
            .values_of(
                "cn=Databases,cn=Monitor",
                Scope::Subtree,
                "(objectClass=olmSyncReplInstance)",
                "olmSRConnection",
            )
            .await?;
        match connections.as_slice() {
            [c] if !c.is_empty() => Ok(()),
            other => bail!("consumer of node {} not connected: olmSRConnection {other:?}", self.id),
        }
    }

    /// Rewrites `olcReadOnly` with its current value (a cn=config change that changes
    /// nothing), waiting up to `patience` for slapd to apply it.
    pub async fn touch_config(&self, patience: Duration) -> anyhow::Result<()> {
        let mut root = self.root().await?;
        let value = if root.read_only().await? { "TRUE" } else { "FALSE" };
        root.ldap
            .with_timeout(patience)
            .modify(DATA_DB, vec![Mod::Replace("olcReadOnly", HashSet::from([value]))])
            .await?
            .success()?;
        Ok(())
    }

    /// A connection bound as the rootDN over `ldap://` (stays open until dropped).
    pub async fn admin(&self) -> anyhow::Result<Conn> {
        let mut conn = Conn::open(&self.ldap_url()).await?;
        conn.ldap.with_timeout(OP_TIMEOUT).simple_bind(ADMIN_DN, ADMIN_PASSWORD).await?.success()?;
        Ok(conn)
    }

    /// A connection over `ldapi://` bound with SASL EXTERNAL (root of cn=config).
    pub async fn root(&self) -> anyhow::Result<Conn> {
        let mut conn = Conn::open(&self.ldapi_url()).await?;
        conn.ldap.with_timeout(OP_TIMEOUT).sasl_external_bind().await?.success()?;
        Ok(conn)
    }
}

/// The two nodes; dropping the pair kills both and removes the directory.
pub struct MirrorPair {
    pub dir: PathBuf,
    nodes: [SlapdNode; 2],
    sync_timeout: u32,
    keep: bool,
    /// The test CA's certificate, with [`PairOptions::tls`].
    ca_file: Option<PathBuf>,
}

impl MirrorPair {
    /// Configures and starts both nodes, loads the suffix entry and `ou=people` on node 1
    /// and waits until node 2 has them too.
    pub async fn start(opts: PairOptions) -> anyhow::Result<MirrorPair> {
        let dir = fresh_dir()?;
        let mut ports = [free_port()?, free_port()?];
        while ports[1] == ports[0] {
            ports[1] = free_port()?;
        }
        let tls = if opts.tls { Some(tls_files(&dir.join("tls"))?) } else { None };
        let mut ldaps_ports = [None, None];
        if tls.is_some() {
            for i in 0..2 {
                let mut p = free_port()?;
                while ports.contains(&p) || ldaps_ports.contains(&Some(p)) {
                    p = free_port()?;
                }
                ldaps_ports[i] = Some(p);
            }
        }
        let node = |id: u32| -> anyhow::Result<SlapdNode> {
            let node_dir = dir.join(format!("n{id}"));
            let node = SlapdNode {
                id,
                port: ports[id as usize - 1],
                ldaps_port: ldaps_ports[id as usize - 1],
                dir: node_dir,
                debug: opts.debug.clone(),
                child: Mutex::new(None),
            };
            let peer = ports[2 - id as usize];
            configure(&node, peer, &opts, tls.as_ref())?;
            Ok(node)
        };
        let pair = MirrorPair {
            nodes: [node(1)?, node(2)?],
            sync_timeout: opts.sync_timeout,
            keep: keep(),
            ca_file: tls.as_ref().map(|t| t.ca.clone()),
            dir,
        };
        if let Some(ldif) = &opts.preload {
            preload(&pair, ldif)?;
        }
        let (a, b) = tokio::join!(pair.nodes[0].start(), pair.nodes[1].start());
        a?;
        b?;
        if opts.preload.is_some() {
            pair.wait_converged(Duration::from_secs(30)).await.context("the preloaded pair to agree")?;
            pair.settle().await?;
            return Ok(pair);
        }
        let mut admin = pair.nodes[0].admin().await?;
        let base = vec![
            ("objectClass", HashSet::from(["top", "dcObject", "organization"])),
            ("dc", HashSet::from(["example"])),
            ("o", HashSet::from(["Example"])),
        ];
        admin.ldap.with_timeout(OP_TIMEOUT).add(SUFFIX, base).await?.success().context("adding the suffix entry")?;
        let people = vec![("objectClass", HashSet::from(["organizationalUnit"])), ("ou", HashSet::from(["people"]))];
        admin.ldap.with_timeout(OP_TIMEOUT).add(PEOPLE, people).await?.success().context("adding ou=people")?;
        pair.wait_converged(Duration::from_secs(30)).await.context("the base entries replicating to node 2")?;
        pair.settle().await?;
        Ok(pair)
    }

    /// Waits until both consumers are connected to their providers, then makes one no-op
    /// cn=config change on each node, so that later config changes (the fence) are not
    /// stalled by a consumer still in its first refresh.
    ///
    /// Why: slapd pauses its whole thread pool for every cn=config change, and a syncrepl
    /// consumer that (re)connected blocks in its refresh read until a message arrives or
    /// the syncrepl `timeout=` passes; the change (and every other operation on that
    /// server) waits that long. After one such pause the consumer polls without blocking
    /// until it reconnects again. Call this again after restarting a node if a test needs
    /// prompt fences; tests of the stall itself must not.
    pub async fn settle(&self) -> anyhow::Result<()> {
        let limit = Duration::from_secs(u64::from(self.sync_timeout) * 2 + 10);
        for node in &self.nodes {
            wait_for(&format!("the consumer of node {} to connect", node.id), limit, || node.consumer_connected())
                .await?;
        }
        // The change may wait for the consumer's read to time out (see above).
        let patience = Duration::from_secs(u64::from(self.sync_timeout) + 5);
        let (a, b) = tokio::join!(self.nodes[0].touch_config(patience), self.nodes[1].touch_config(patience));
        a?;
        b?;
        Ok(())
    }

    /// The test CA that signed both nodes' certificate, with [`PairOptions::tls`].
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Node `i` (1 or 2, as its server ID).
    pub fn node(&self, i: u32) -> &SlapdNode {
        assert!(i == 1 || i == 2, "a mirror pair has nodes 1 and 2, not {i}");
        &self.nodes[i as usize - 1]
    }

    /// Adds `uid=<uid>` on node `i` as the rootDN (fails unless the server accepts it).
    pub async fn add_entry(&self, i: u32, uid: &str) -> anyhow::Result<()> {
        let result = self.node(i).admin().await?.add_person(uid).await?;
        result.success().with_context(|| format!("adding uid={uid} on node {i}"))?;
        Ok(())
    }

    /// Deletes `uid=<uid>` on node `i` as the rootDN.
    pub async fn delete_entry(&self, i: u32, uid: &str) -> anyhow::Result<()> {
        let result = self.node(i).admin().await?.delete_person(uid).await?;
        result.success().with_context(|| format!("deleting uid={uid} on node {i}"))?;
        Ok(())
    }

    /// The uids under `ou=people` on node `i`, sorted.
    pub async fn search_uids(&self, i: u32) -> anyhow::Result<Vec<String>> {
        self.node(i).admin().await?.uids().await
    }

    /// The suffix's contextCSN values on node `i`, sorted.
    pub async fn context_csn(&self, i: u32) -> anyhow::Result<Vec<String>> {
        self.node(i).admin().await?.context_csn().await
    }

    /// Sets `olcReadOnly` of node `i`'s data database over ldapi (SASL EXTERNAL).
    pub async fn set_read_only(&self, i: u32, read_only: bool) -> anyhow::Result<()> {
        self.node(i).root().await?.set_read_only(read_only).await
    }

    /// `olcReadOnly` of node `i`'s data database, read from cn=config.
    pub async fn read_only(&self, i: u32) -> anyhow::Result<bool> {
        self.node(i).root().await?.read_only().await
    }

    /// Waits until both nodes hold the same uids under `ou=people` and the same contextCSN
    /// values; returns them.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (uids, csn, _) = self.wait_converged_tolerating(timeout, &Default::default()).await?;
        Ok((uids, csn))
    }

    /// [`MirrorPair::wait_converged`], except that uids in `unacknowledged` may be on one
    /// node only: a write in flight when a slapd was killed can be committed there and never
    /// replicate, while the contextCSNs still converge (a divergence only an entry-level
    /// audit sees; docs/divergence.md). Returns node 1's uids, the contextCSN and those
    /// one-sided uids.
    pub async fn wait_converged_tolerating(
        &self,
        timeout: Duration,
        unacknowledged: &std::collections::HashSet<String>,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<String>)> {
        wait_for("both nodes to hold the same entries and contextCSN", timeout, || async {
            let (u1, u2) = (self.search_uids(1).await?, self.search_uids(2).await?);
            let (c1, c2) = (self.context_csn(1).await?, self.context_csn(2).await?);
            let one_sided: Vec<String> =
                u1.iter().filter(|u| !u2.contains(u)).chain(u2.iter().filter(|u| !u1.contains(u))).cloned().collect();
            if one_sided.iter().all(|u| unacknowledged.contains(u)) && c1 == c2 && !c1.is_empty() {
                Ok((u1, c1, one_sided))
            } else {
                Err(anyhow::anyhow!("node 1: {u1:?} {c1:?}; node 2: {u2:?} {c2:?}"))
            }
        })
        .await
    }
}

impl Drop for MirrorPair {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(child) = node.take_child() {
                child.kill_now();
            }
        }
        if self.keep {
            eprintln!("slapd pair kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn keep() -> bool {
    std::env::var("LDAP_ELECTOR_KEEP_BED").is_ok_and(|v| v == "1")
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("LDAP_ELECTOR_BED_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ldap-slapd-{}-{}", std::process::id(), random_hex(4)?));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

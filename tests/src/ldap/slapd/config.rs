//! The cn=config of a Mirror-Mode node (loaded offline with `slapadd -n0`) and the offline
//! preload of a converged pair.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::{MirrorPair, PairOptions, SlapdNode, ADMIN_DN, ADMIN_PASSWORD, DATA_DB, SUFFIX};
use crate::bed::process::run;

/// Writes node's cn=config LDIF and loads it with `slapadd -n0`.
pub(super) fn configure(
    node: &SlapdNode,
    peer_port: u16,
    opts: &PairOptions,
    tls: Option<&super::TlsFiles>,
) -> anyhow::Result<()> {
    let config_dir = node.dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(node.data_dir())?;
    let socket = node.socket().display().to_string();
    // sun_path is 108 bytes on Linux.
    if socket.len() > 100 {
        bail!("ldapi socket path too long ({socket}); set LDAP_ELECTOR_BED_DIR to a shorter directory");
    }
    let mut ldif = config_ldif(node.id, &node.data_dir(), peer_port, opts);
    if let Some(tls) = tls {
        let server_id = format!("olcServerID: {}\n", node.id);
        let with_tls = format!(
            "{server_id}olcTLSCACertificateFile: {}\nolcTLSCertificateFile: {}\nolcTLSCertificateKeyFile: {}\n",
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        );
        ldif = ldif.replacen(&server_id, &with_tls, 1);
    }
    let ldif_path = node.dir.join("config.ldif");
    std::fs::write(&ldif_path, ldif)?;
    run(Command::new(sbin("slapadd")).arg("-n0").arg("-F").arg(&config_dir).arg("-l").arg(&ldif_path), None)
        .with_context(|| format!("slapadd -n0 for node {} (install slapd: hack/install-deps.sh)", node.id))?;
    Ok(())
}

/// Loads `ldif` into node 1 with `slapadd -q -w` (entryUUIDs, entryCSNs with server ID 1,
/// contextCSN), then copies node 1's database to node 2 with slapcat | slapadd, so both
/// start with identical entries and contextCSN (a converged pair, without replication).
pub(super) fn preload(pair: &MirrorPair, ldif: &Path) -> anyhow::Result<()> {
    let step = |what: &str, cmd: &mut Command| run(cmd, None).map(drop).with_context(|| what.to_string());
    let [n1, n2] = &pair.nodes;
    let copy = pair.dir.join("preload-copy.ldif");
    step(
        "slapadd into node 1",
        Command::new(sbin("slapadd"))
            .args(["-q", "-w", "-S", "1", "-b", SUFFIX, "-F"])
            .arg(n1.dir.join("config"))
            .arg("-l")
            .arg(ldif),
    )?;
    step(
        "slapcat of node 1",
        Command::new(sbin("slapcat")).args(["-b", SUFFIX, "-F"]).arg(n1.dir.join("config")).arg("-l").arg(&copy),
    )?;
    step(
        "slapadd into node 2",
        Command::new(sbin("slapadd")).args(["-q", "-b", SUFFIX, "-F"]).arg(n2.dir.join("config")).arg("-l").arg(&copy),
    )?;
    let _ = std::fs::remove_file(&copy);
    Ok(())
}

/// The cn=config of node `id` (1 or 2) replicating from the peer on `peer_port`.
pub fn config_ldif(id: u32, data_dir: &Path, peer_port: u16, opts: &PairOptions) -> String {
    // Root of cn=config: whoever runs the tests, over ldapi (peer credentials).
    // SAFETY: plain getters without side effects.
    let root = unsafe { (libc::getuid(), libc::getgid()) };
    let node = NodeConfig { provider: format!("ldap://127.0.0.1:{peer_port}"), root, sidecar: None };
    render(id, data_dir, &node, opts)
}

/// What differs between the loopback pair and slapd in a container: where the peer is, who
/// administers cn=config over ldapi, and whether the elector sidecar gets its ACL.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// syncrepl `provider=` URL of the peer.
    pub provider: String,
    /// (uid, gid) of the rootDN of cn=config over ldapi (the process running slapd's tools).
    pub root: (u32, u32),
    /// (uid, gid) of the elector sidecar: adds the ACL of docs/openldap.md ("Let the sidecar
    /// fence and read, nothing else").
    pub sidecar: Option<(u32, u32)>,
}

/// peer-credential identity of a process over ldapi (SASL EXTERNAL).
pub fn peercred((uid, gid): (u32, u32)) -> String {
    format!("gidNumber={gid}+uidNumber={uid},cn=peercred,cn=external,cn=auth")
}

/// The cn=config of node `id` (1 or 2) with the same safe Mirror-Mode settings as the
/// loopback pair ([`config_ldif`]).
pub fn render(id: u32, data_dir: &Path, node: &NodeConfig, opts: &PairOptions) -> String {
    let peercred = peercred(node.root);
    let provider = &node.provider;
    // The rules of docs/openldap.md, as attributes of the two entries instead of a modify.
    let (config_access, data_access) = match node.sidecar {
        None => (String::new(), String::new()),
        Some(sidecar) => {
            let who = self::peercred(sidecar);
            (
                format!(
                    "olcAccess: {{0}}to dn.exact=\"{DATA_DB}\" attrs=olcReadOnly\n  by dn.exact=\"{who}\" write\n  by * break\n\
                     olcAccess: {{1}}to dn.exact=\"{DATA_DB}\" attrs=entry,objectClass\n  by dn.exact=\"{who}\" read\n  by * break\n\
                     olcAccess: {{2}}to dn.base=\"cn=config\" attrs=entry\n  by dn.exact=\"{who}\" search\n  by * break\n\
                     olcAccess: {{3}}to dn.regex=\"^olcDatabase=[^,]+,cn=config$\" attrs=entry,olcSuffix\n  by dn.exact=\"{who}\" read\n  by * break\n"
                ),
                format!(
                    "olcAccess: {{0}}to dn.base=\"{SUFFIX}\" attrs=entry,objectClass,contextCSN\n  by dn.exact=\"{who}\" read\n  by * break\n"
                ),
            )
        }
    };
    let peer_id = 3 - id;
    let (cp_ops, cp_min) = opts.checkpoint;
    let timeout = opts.sync_timeout;
    let session_log = opts.session_log.map(|n| format!("olcSpSessionLog: {n}\n")).unwrap_or_default();
    let max_size = opts.db_max_size.map(|n| format!("olcDbMaxSize: {n}\n")).unwrap_or_default();
    let schema: String = ["core", "cosine", "nis", "inetorgperson"]
        .iter()
        .map(|s| format!("include: file:///etc/ldap/schema/{s}.ldif\n\n"))
        .collect();
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcServerID: {id}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: {{0}}back_mdb
olcModuleLoad: {{1}}syncprov

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schema}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: {peercred}
{config_access}
dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {data}
olcSuffix: {SUFFIX}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PASSWORD}
olcDbIndex: objectClass eq
olcDbIndex: entryCSN,entryUUID eq
{max_size}{data_access}olcSyncrepl: {{0}}rid=00{peer_id} provider={provider} bindmethod=simple
  binddn=\"{ADMIN_DN}\" credentials={ADMIN_PASSWORD} searchbase=\"{SUFFIX}\"
  type=refreshAndPersist retry=\"1 +\" timeout={timeout} network-timeout={timeout} keepalive=30:3:5
olcMirrorMode: TRUE

dn: olcOverlay={{0}}syncprov,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {{0}}syncprov
olcSpCheckpoint: {cp_ops} {cp_min}
{session_log}
dn: olcDatabase={{2}}monitor,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{2}}monitor
olcAccess: {{0}}to * by dn.exact=\"{peercred}\" read by * none
",
        data = data_dir.display(),
    )
}

/// `/usr/sbin/<name>` (not on a normal user's PATH), else from PATH.
pub fn sbin(name: &str) -> PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        path
    } else {
        PathBuf::from(name)
    }
}

//! slapd starts fenced: `ldap-elector start-fenced`, the init container
//! [`ldap_elector_contract::START_FENCED_CONTAINER`] the webhook puts last before slapd's container, sets
//! `olcReadOnly: TRUE` on the fenced database in slapd's on-disk configuration (the slapd.d
//! directory of `slapd -F`). A fresh pod's slapd (its configuration just written by the
//! consumer's init containers, read-write) would otherwise take writes from its first
//! instant until the elector's fence reaches it: with the other pod leading, two writable
//! servers (the real node showed one such write 25 ms after the start).
//!
//! slapd.d is back-ldif's store: one LDIF file per entry, headed by a comment line and a
//! `# CRC32 <hex>` line over the rest of the file. slapd is not running (this runs before
//! its container), so the file is rewritten in place: written beside it and renamed over it.
//! The elector unfences when it leads; slapd persists that in the same file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::slapd::database::FencedDatabase;

/// back-ldif's first line of every file.
const HEADER: &str = "# AUTO-GENERATED FILE - DO NOT EDIT!! Use ldapmodify.";
const CRC_PREFIX: &str = "# CRC32 ";
const READ_ONLY: &str = "olcReadOnly";
/// Where slapd.d keeps cn=config's children, and the file of cn=config itself.
const CONFIG_RDN: &str = "cn=config";

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `olcReadOnly: TRUE` written to this file.
    Fenced(PathBuf),
    /// The file said `olcReadOnly: TRUE` already.
    AlreadyFenced(PathBuf),
    /// No slapd.d in the directory yet (slapd creates it at its first start, e.g. from a
    /// `slapd.conf`): nothing on disk to fence; the elector's fence applies once it runs.
    NoConfiguration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartFencedError {
    #[error(
        "the fenced database {0:?} is not an entry directly below cn=config (e.g. \"olcDatabase={{1}}mdb,cn=config\")"
    )]
    NotAConfigEntry(String),
    #[error("{path}: no such file, but {dir} holds a slapd.d configuration: the fenced database {dn:?} does not exist (databases there: {found})")]
    NoSuchDatabase { path: PathBuf, dir: PathBuf, dn: String, found: String },
    #[error("{dir} holds a slapd.d configuration, but {message}")]
    NoDatabaseOfSuffix { dir: PathBuf, message: String },
    #[error("{path}: not a back-ldif entry file of {dn:?}: {reason}")]
    NotAnEntry { path: PathBuf, dn: String, reason: &'static str },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Sets `olcReadOnly: TRUE` on `database` in the slapd.d directory `config_dir`.
pub fn start_fenced(config_dir: &Path, database: &FencedDatabase) -> Result<Outcome, StartFencedError> {
    if let FencedDatabase::Entry(dn) = database {
        config_child(dn).ok_or_else(|| StartFencedError::NotAConfigEntry(dn.clone()))?;
    }
    if !config_dir.join(format!("{CONFIG_RDN}.ldif")).exists() {
        return Ok(Outcome::NoConfiguration);
    }
    let children = config_dir.join(CONFIG_RDN);
    let present = databases(&children);
    let database_dn = match database {
        FencedDatabase::Entry(dn) => dn.clone(),
        FencedDatabase::Suffix(_) => database
            .find(present.iter().map(|(dn, suffix)| (dn.as_str(), suffix.as_deref())))
            .map_err(|message| StartFencedError::NoDatabaseOfSuffix { dir: config_dir.to_path_buf(), message })?
            .to_string(),
    };
    let rdn = config_child(&database_dn).ok_or_else(|| StartFencedError::NotAConfigEntry(database_dn.clone()))?;
    let path = entry_file(&children, rdn).ok_or_else(|| StartFencedError::NoSuchDatabase {
        path: children.join(format!("{rdn}.ldif")),
        dir: config_dir.to_path_buf(),
        dn: database_dn.clone(),
        found: present.iter().map(|(dn, _)| dn.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let io = |source| StartFencedError::Io { path: path.clone(), source };
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let not_entry = |reason| StartFencedError::NotAnEntry { path: path.clone(), dn: database_dn.clone(), reason };
    match fenced_entry(&text, rdn).map_err(not_entry)? {
        None => Ok(Outcome::AlreadyFenced(path)),
        Some(fenced) => {
            replace_file(&path, fenced.as_bytes()).map_err(io)?;
            Ok(Outcome::Fenced(path))
        }
    }
}

/// The RDN of a DN directly below cn=config (`olcDatabase={1}mdb,cn=config` →
/// `olcDatabase={1}mdb`).
fn config_child(dn: &str) -> Option<&str> {
    let (rdn, parent) = dn.trim().split_once(',')?;
    let parent = parent.trim();
    (parent.eq_ignore_ascii_case(CONFIG_RDN) && !rdn.is_empty() && !rdn.contains(['/', '\0'])).then_some(rdn.trim())
}

/// The file of `rdn` in `children`: exact, else the one whose name differs only in case
/// (attribute names and `{1}mdb` are case-insensitive in a DN, file names are not).
fn entry_file(children: &Path, rdn: &str) -> Option<PathBuf> {
    let exact = children.join(format!("{rdn}.ldif"));
    if exact.is_file() {
        return Some(exact);
    }
    let wanted = format!("{rdn}.ldif");
    std::fs::read_dir(children)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_str().is_some_and(|n| n.eq_ignore_ascii_case(&wanted)))
        .map(|e| e.path())
}

/// The database entries present, with their suffix (sorted by DN).
fn databases(children: &Path) -> Vec<(String, Option<String>)> {
    let mut found: Vec<(String, Option<String>)> = std::fs::read_dir(children)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let rdn = e.file_name().to_str()?.strip_suffix(".ldif")?.to_string();
            rdn.to_ascii_lowercase().starts_with("olcdatabase=").then_some(())?;
            let suffix = std::fs::read_to_string(e.path()).ok().and_then(|text| suffix_of(&text));
            Some((format!("{rdn},{CONFIG_RDN}"), suffix))
        })
        .collect();
    found.sort();
    found
}

/// The `olcSuffix` of a back-ldif entry file (folded lines joined; a base64 value is not
/// read: name such a database with `--fence-database`).
fn suffix_of(text: &str) -> Option<String> {
    let unfolded = text.replace("\n ", "");
    unfolded.lines().find_map(|line| {
        let (attr, value) = line.split_once(':')?;
        (attr.eq_ignore_ascii_case("olcSuffix") && !value.starts_with(':')).then(|| value.trim().to_string())
    })
}

/// The back-ldif file `text` of the entry `rdn` with `olcReadOnly: TRUE` and its checksum
/// recomputed; `None` when it is read-only already.
pub fn fenced_entry(text: &str, rdn: &str) -> Result<Option<String>, &'static str> {
    // The body follows the comment lines; the checksum covers exactly the body.
    let mut body = text;
    while body.starts_with('#') {
        body = body.split_once('\n').map_or("", |(_, rest)| rest);
    }
    let dn_line = body.lines().next().ok_or("the file is empty")?;
    let dn = dn_line.strip_prefix("dn:").ok_or("its first line after the comments is not a dn")?;
    if !dn.trim().eq_ignore_ascii_case(rdn) {
        return Err("its dn names another entry");
    }
    let mut lines: Vec<&str> = Vec::new();
    let mut replaced = false;
    let mut in_read_only = false;
    for line in body.lines() {
        // A value folded over several lines continues with a leading space.
        if in_read_only && line.starts_with(' ') {
            continue;
        }
        in_read_only = attribute(line).is_some_and(|a| a.eq_ignore_ascii_case(READ_ONLY));
        if in_read_only {
            if line.split_once(':').is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("TRUE")) {
                return Ok(None);
            }
            if !replaced {
                lines.push(FENCED_LINE);
                replaced = true;
            }
            continue;
        }
        lines.push(line);
    }
    if !replaced {
        // Where slapd keeps its own attributes: before the operational ones.
        let at = lines.iter().position(|l| attribute(l).is_some_and(is_operational)).unwrap_or(lines.len());
        lines.insert(at, FENCED_LINE);
    }
    let mut body = lines.join("\n");
    body.push('\n');
    Ok(Some(format!("{HEADER}\n{CRC_PREFIX}{:08x}\n{body}", crc32(body.as_bytes()))))
}

const FENCED_LINE: &str = "olcReadOnly: TRUE";

/// The attribute a (non-continuation) LDIF line starts, if any.
fn attribute(line: &str) -> Option<&str> {
    if line.starts_with([' ', '#']) {
        return None;
    }
    line.split_once(':').map(|(a, _)| a)
}

fn is_operational(attribute: &str) -> bool {
    [
        "structuralObjectClass",
        "entryUUID",
        "creatorsName",
        "createTimestamp",
        "entryCSN",
        "modifiersName",
        "modifyTimestamp",
    ]
    .iter()
    .any(|o| o.eq_ignore_ascii_case(attribute))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`), which back-ldif checks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Writes `content` beside `path` (same mode) and renames it over `path`, durably.
fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    // Not `*.ldif`: back-ldif reads only those, so a crash leaves no second entry behind.
    let tmp = path.with_extension("ldif.start-fenced");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MDB: &str = "# AUTO-GENERATED FILE - DO NOT EDIT!! Use ldapmodify.
# CRC32 4dadd131
dn: olcDatabase={1}mdb
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcDbDirectory: /tmp/crc/data
olcSuffix: dc=example,dc=org
olcRootDN: cn=admin,dc=example,dc=org
structuralObjectClass: olcMdbConfig
entryUUID: fb1f80c6-85cc-1041-802e-058a4ee99eba
creatorsName: cn=config
createTimestamp: 20261206142759Z
entryCSN: 20261206142759.416100Z#000000#000#000000
modifiersName: cn=config
modifyTimestamp: 20261206142759Z
";

    fn checksum_holds(file: &str) -> bool {
        let (_, rest) = file.split_once('\n').unwrap();
        let (crc_line, body) = rest.split_once('\n').unwrap();
        crc_line == format!("{CRC_PREFIX}{:08x}", crc32(body.as_bytes()))
    }

    #[test]
    fn the_checksum_is_back_ldifs() {
        // A file slapadd wrote (slapd 2.5): its own checksum is reproduced.
        assert!(checksum_holds(MDB));
    }

    #[test]
    fn a_writable_database_gets_read_only_before_its_operational_attributes() {
        let out = fenced_entry(MDB, "olcDatabase={1}mdb").unwrap().unwrap();
        assert!(checksum_holds(&out), "{out}");
        assert!(
            out.contains("olcRootDN: cn=admin,dc=example,dc=org\nolcReadOnly: TRUE\nstructuralObjectClass:"),
            "{out}"
        );
        assert_eq!(fenced_entry(&out, "olcDatabase={1}mdb").unwrap(), None, "fenced twice is a no-op");
    }

    #[test]
    fn an_explicit_false_is_replaced_and_a_true_is_left_alone() {
        let unfenced = MDB.replace("olcRootDN:", "olcReadOnly: FALSE\nolcRootDN:");
        let out = fenced_entry(&unfenced, "olcDatabase={1}MDB").unwrap().unwrap();
        assert!(!out.contains("FALSE") && out.matches("olcReadOnly: TRUE").count() == 1, "{out}");
        assert!(checksum_holds(&out));
        let fenced = MDB.replace("olcRootDN:", "olcreadonly: true\nolcRootDN:");
        assert_eq!(fenced_entry(&fenced, "olcDatabase={1}mdb").unwrap(), None);
    }

    #[test]
    fn another_entrys_file_is_refused() {
        assert!(fenced_entry(MDB, "olcDatabase={2}mdb").is_err());
        assert!(fenced_entry("", "olcDatabase={1}mdb").is_err());
        assert!(fenced_entry("# x\nobjectClass: top\n", "olcDatabase={1}mdb").is_err());
    }

    #[test]
    fn a_suffix_finds_its_database_file_and_a_missing_one_lists_what_is_there() {
        let dir = std::env::temp_dir().join(format!("start-fenced-suffix-{}", std::process::id()));
        let children = dir.join(CONFIG_RDN);
        std::fs::create_dir_all(&children).unwrap();
        std::fs::write(dir.join("cn=config.ldif"), "dn: cn=config\n").unwrap();
        let internal = MDB.replace("olcSuffix: dc=example,dc=org", "olcSuffix: cn=internal");
        let data =
            MDB.replace("{1}mdb", "{2}mdb").replace("olcSuffix: dc=example,dc=org", "olcSuffix: dc=example,\n dc=org");
        std::fs::write(children.join("olcDatabase={1}mdb.ldif"), internal).unwrap();
        std::fs::write(children.join("olcDatabase={2}mdb.ldif"), &data).unwrap();
        let outcome = start_fenced(&dir, &FencedDatabase::Suffix("DC=example, dc=org".into())).unwrap();
        assert_eq!(outcome, Outcome::Fenced(children.join("olcDatabase={2}mdb.ldif")));
        let untouched = std::fs::read_to_string(children.join("olcDatabase={1}mdb.ldif")).unwrap();
        assert!(!untouched.contains("olcReadOnly"), "{untouched}");
        let err = start_fenced(&dir, &FencedDatabase::Suffix("dc=elsewhere".into())).unwrap_err().to_string();
        assert!(err.contains("no database of slapd has the suffix dc=elsewhere"), "{err}");
        assert!(err.contains("olcDatabase={1}mdb,cn=config (cn=internal)"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_direct_children_of_cn_config_are_fenced() {
        assert_eq!(config_child("olcDatabase={1}mdb,cn=config"), Some("olcDatabase={1}mdb"));
        assert_eq!(config_child(" olcDatabase={2}mdb, CN=Config "), Some("olcDatabase={2}mdb"));
        assert_eq!(config_child("olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config"), None);
        assert_eq!(config_child("olcDatabase={1}mdb"), None);
        assert_eq!(config_child("../x,cn=config"), None);
    }
}

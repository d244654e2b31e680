//! The OpenLDAP image: a minimal Debian root file system (mmdebstrap, essential variant) with
//! slapd and ldap-utils and nothing started: the StatefulSet's command runs slapd. The rootfs
//! tar is cached, keyed by the recipe and the candidate package versions (`apt-cache policy`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::layer::{Kind, Tree};
use super::oci::{ImageSpec, RunConfig, DEFAULT_PATH};
use super::{cmd, ImageError, REPOSITORY_PREFIX};

pub const NAME: &str = "ldap-elector-openldap";
const SUITE: &str = "bookworm";
const PACKAGES: [&str; 2] = ["slapd", "ldap-utils"];
/// The account the slapd package creates (its uid/gid are whatever adduser picks).
pub const RUN_USER: &str = "openldap";
const TOOL: &str = "mmdebstrap";
/// Hex digits of the recipe+versions hash in the cached rootfs name.
const KEY_LEN: usize = 16;

/// No database or config from the package: the tests and the chart bring their own.
const PRESEED_HOOK: &str = r#"echo "slapd slapd/no_configuration boolean true" | chroot "$1" debconf-set-selections"#;
/// dpkg leaves these out of the packages installed after the essential set.
const DPKG_FILTERS: [&str; 6] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// The mmdebstrap arguments before the output path. No mirror: mmdebstrap's default for a
/// stable suite includes its -updates and -security archives.
fn mmdebstrap_args() -> Vec<String> {
    let mut args =
        vec!["--variant=essential".to_owned(), format!("--include={}", PACKAGES.join(",")), "--format=tar".to_owned()];
    args.extend(DPKG_FILTERS.iter().map(|f| format!("--dpkgopt={f}")));
    args.push(format!("--essential-hook={PRESEED_HOOK}"));
    args.push(SUITE.to_owned());
    args
}

/// Directories whose contents the image leaves out: man pages, info, locales, lintian
/// overrides, logs, and `/dev` (the runtime mounts its own).
const DROPPED_TREES: [&str; 6] =
    ["usr/share/man/", "usr/share/info/", "usr/share/locale/", "usr/share/lintian/", "var/log/", "dev/"];
/// Files that differ from build to build and matter to no one at run time.
const DROPPED_FILES: [&str; 1] = ["var/cache/ldconfig/aux-cache"];
/// Backups of dpkg and debconf databases (`status-old`, `config.dat-old`) live here.
const BACKUP_DIRS: [&str; 2] = ["var/lib/dpkg/", "var/cache/debconf/"];
const DOC_DIR: &str = "usr/share/doc/";

/// Whether a rootfs path goes into the image: documentation only as the packages' copyright
/// files (the essential packages are unpacked before dpkg's path filters apply, so the filter
/// is repeated here), nothing below `DROPPED_TREES`, no `DROPPED_FILES`, no `*-old` backups.
pub fn keep(path: &str) -> bool {
    if let Some(doc) = path.strip_prefix(DOC_DIR) {
        return match doc.split_once('/') {
            None => true, // a package's doc directory
            Some((_, rest)) => rest == "copyright",
        };
    }
    let backup = BACKUP_DIRS.iter().any(|d| path.starts_with(d)) && path.ends_with("-old");
    !(backup || DROPPED_TREES.iter().any(|d| path.starts_with(d)) || DROPPED_FILES.contains(&path))
}

/// Candidate versions from `apt-cache policy` output.
pub fn candidates(policy: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut package = None;
    for line in policy.lines() {
        if !line.starts_with(' ') {
            package = line.strip_suffix(':').map(str::to_owned);
        } else if let (Some(p), Some(v)) = (&package, line.trim().strip_prefix("Candidate: ")) {
            if v != "(none)" {
                out.insert(p.clone(), v.to_owned());
            }
        }
    }
    out
}

/// The cache key: recipe and package versions.
fn cache_key(args: &[String], versions: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for arg in args {
        hasher.update(arg.as_bytes());
        hasher.update(b"\n");
    }
    for (package, version) in versions {
        hasher.update(format!("{package}={version}\n").as_bytes());
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..KEY_LEN].to_owned()
}

/// uid and gid of `user` in an /etc/passwd text.
pub fn user_ids(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, ..] if *name == user => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// The installed version of `package` from a dpkg status text.
pub fn installed_version(status: &str, package: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name).map(str::trim));
        (field("Package:") == Some(package)).then(|| field("Version:").map(str::to_owned)).flatten()
    })
}

/// `1:2.5.13+dfsg-5` → `2.5.13` (tags allow no `+` or `:`).
pub fn upstream_version(version: &str) -> String {
    let without_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    without_epoch.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect()
}

/// Where the rootfs of the current recipe and package versions is (or will be) cached.
pub fn rootfs_path(store: &Path) -> Result<PathBuf, ImageError> {
    let policy = cmd::output(Command::new("apt-cache").arg("policy").args(PACKAGES))?;
    let versions = candidates(&String::from_utf8_lossy(&policy.stdout));
    if let Some(missing) = PACKAGES.iter().find(|p| !versions.contains_key(**p)) {
        return Err(ImageError::NoCandidate(missing.to_string()));
    }
    Ok(store.join(format!("{NAME}-rootfs-{}.tar", cache_key(&mmdebstrap_args(), &versions))))
}

/// Runs mmdebstrap into `path` unless it exists.
fn ensure_rootfs(path: &Path) -> Result<(), ImageError> {
    if path.is_file() {
        return Ok(());
    }
    if !cmd::on_path(TOOL) {
        return Err(ImageError::MissingTool { tool: TOOL, package: TOOL });
    }
    tracing::info!(path = %path.display(), "building the OpenLDAP rootfs (mmdebstrap)");
    let partial = path.with_extension(format!("tar.{}.partial", std::process::id()));
    let built = cmd::output(Command::new(TOOL).args(mmdebstrap_args()).arg(&partial).env("SOURCE_DATE_EPOCH", "0"));
    if let Err(e) = built {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).map_err(|e| ImageError::io(path, e))
}

/// What the image needs besides its layer.
#[derive(Debug, Clone)]
pub struct OpenLdap {
    pub spec: ImageSpec,
    pub tree: Tree,
    pub uid: u32,
    pub gid: u32,
}

fn text(tree: &Tree, path: &str) -> Result<String, ImageError> {
    match tree.get(path).map(|e| &e.kind) {
        Some(Kind::File(data)) => Ok(String::from_utf8_lossy(data).into_owned()),
        _ => Err(ImageError::RootfsLacks(path.to_owned())),
    }
}

/// Builds the rootfs at `path` (from `rootfs_path`) if missing and reads it into the layer.
pub fn image(path: &Path) -> Result<OpenLdap, ImageError> {
    ensure_rootfs(path)?;
    let file = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let tree = Tree::from_tar(std::io::BufReader::new(file), keep)?;
    let (uid, gid) = user_ids(&text(&tree, "etc/passwd")?, RUN_USER)
        .ok_or_else(|| ImageError::RootfsLacks(format!("user {RUN_USER} in etc/passwd")))?;
    let slapd = installed_version(&text(&tree, "var/lib/dpkg/status")?, PACKAGES[0])
        .ok_or_else(|| ImageError::RootfsLacks("slapd in var/lib/dpkg/status".into()))?;
    let labels = BTreeMap::from([
        ("org.opencontainers.image.title", NAME.to_owned()),
        (
            "org.opencontainers.image.description",
            format!("OpenLDAP slapd and ldap-utils from Debian {SUITE} (no configuration)"),
        ),
        ("org.opencontainers.image.version", slapd.clone()),
    ])
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let spec = ImageSpec {
        repository: format!("{REPOSITORY_PREFIX}{NAME}"),
        version: upstream_version(&slapd),
        config: RunConfig {
            env: vec![DEFAULT_PATH.into()],
            working_dir: Some("/".into()),
            labels,
            ..RunConfig::default()
        },
    };
    Ok(OpenLdap { spec, tree, uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copyright_files_of_the_docs_and_no_logs_devices_or_backups_are_kept() {
        for path in
            ["usr/share/doc/slapd", "usr/share/doc/slapd/copyright", "usr/sbin/slapd", "var/log", "dev", "etc/passwd-"]
        {
            assert!(keep(path), "{path}");
        }
        for path in [
            "usr/share/doc/base-files/FAQ",
            "usr/share/doc/adduser/examples/x/copyright",
            "usr/share/man/man8/slapd.8.gz",
            "usr/share/locale/de/LC_MESSAGES/x.mo",
            "var/log/dpkg.log",
            "dev/null",
            "var/cache/ldconfig/aux-cache",
            "var/lib/dpkg/status-old",
            "var/cache/debconf/config.dat-old",
        ] {
            assert!(!keep(path), "{path}");
        }
    }

    #[test]
    fn candidate_versions_come_from_apt_cache_policy() {
        let policy = "slapd:\n  Installed: (none)\n  Candidate: 2.5.13+dfsg-5\n  Version table:\n     2.5.13+dfsg-5 500\n        500 http://mirror bookworm/main amd64 Packages\nldap-utils:\n  Installed: (none)\n  Candidate: (none)\n";
        let versions = candidates(policy);
        assert_eq!(versions.get("slapd").map(String::as_str), Some("2.5.13+dfsg-5"));
        assert!(!versions.contains_key("ldap-utils"));
    }

    #[test]
    fn the_key_follows_versions_and_recipe() {
        let args = mmdebstrap_args();
        let v1 = BTreeMap::from([("slapd".to_owned(), "2.5.13+dfsg-5".to_owned())]);
        let v2 = BTreeMap::from([("slapd".to_owned(), "2.5.13+dfsg-5+deb12u1".to_owned())]);
        assert_eq!(cache_key(&args, &v1), cache_key(&args, &v1));
        assert_ne!(cache_key(&args, &v1), cache_key(&args, &v2));
        assert_ne!(cache_key(&args, &v1), cache_key(&args[1..], &v1));
    }

    #[test]
    fn passwd_status_and_versions_are_read() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nopenldap:x:100:101:OpenLDAP Server Account,,,:/var/lib/ldap:/bin/false\n";
        assert_eq!(user_ids(passwd, "openldap"), Some((100, 101)));
        assert_eq!(user_ids(passwd, "nobody"), None);
        let status = "Package: libldap-2.5-0\nVersion: 2.5.13+dfsg-4\n\nPackage: slapd\nStatus: install ok installed\nVersion: 2.5.13+dfsg-5\n";
        assert_eq!(installed_version(status, "slapd").as_deref(), Some("2.5.13+dfsg-5"));
        assert_eq!(upstream_version("2.5.13+dfsg-5"), "2.5.13");
        assert_eq!(upstream_version("1:2.6.7-1"), "2.6.7");
    }
}

//! Container images for the real node, built without Docker or a registry: reproducible OCI
//! archives (`oci`, `layer`) of the pause process (`pause`), the two shipped binaries
//! (`binaries`, as their Dockerfiles build them, kept by a key of their sources:
//! `source_key`) and an OpenLDAP rootfs from Debian packages (`openldap`), cached under
//! `~/.cache/ldap-elector` and imported with `ctr`. docs/images.md describes the images and
//! the cache.
pub mod binaries;
mod cmd;
pub mod ctr;
pub mod layer;
pub mod oci;
pub mod openldap;
pub mod pause;
mod source_key;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every reference is `localhost/<name>:<tag>`: a registry-less domain CRI never rewrites to
/// docker.io, so `imagePullPolicy: Never`/`IfNotPresent` find the imported image.
pub const REPOSITORY_PREFIX: &str = "localhost/";
/// The containerd namespace of the CRI plugin (the kubelet's images).
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Pull policy the chart gets: the images exist only in the node's containerd.
pub const PULL_POLICY: &str = "Never";
/// `LDAP_ELECTOR_CACHE` overrides `~/.cache/ldap-elector` (as in hack/build-testbed.sh).
pub const CACHE_ENV: &str = "LDAP_ELECTOR_CACHE";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{tool} not found on PATH: install the Debian package {package} (hack/install-deps.sh)")]
    MissingTool { tool: &'static str, package: &'static str },
    #[error("apt-cache knows no candidate for {0}: run apt-get update")]
    NoCandidate(String),
    #[error("cargo metadata lists no workspace package {0}")]
    NotInWorkspace(String),
    #[error("the OpenLDAP rootfs lacks {0}")]
    RootfsLacks(String),
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
}

impl ImageError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }
}

/// Where to import: a containerd socket and a namespace.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    pub containerd_socket: PathBuf,
    pub namespace: String,
}

impl ImportTarget {
    /// The CRI namespace `k8s.io` of the containerd at `containerd_socket`.
    pub fn k8s(containerd_socket: impl Into<PathBuf>) -> Self {
        Self { containerd_socket: containerd_socket.into(), namespace: K8S_NAMESPACE.to_owned() }
    }
}

/// Fully qualified references (`localhost/<name>:<version>-<12 hex of the manifest digest>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// containerd's `sandbox_image`.
    pub pause: String,
    pub elector: String,
    pub webhook: String,
    pub openldap: String,
    /// uid/gid of `openldap` in the OpenLDAP image (slapd `-u`/`-g`, fsGroup).
    pub openldap_uid: u32,
    pub openldap_gid: u32,
}

/// `localhost/ldap-elector:0.1.0-abc` → (`localhost/ldap-elector`, `0.1.0-abc`).
pub fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, ""),
    }
}

impl Images {
    /// `--set` arguments for `helm install` of charts/ldap-elector: the webhook and sidecar
    /// images and pull policy `Never`; nothing else of the chart changes.
    pub fn helm_set_args(&self) -> Vec<String> {
        let (webhook_repo, webhook_tag) = split_reference(&self.webhook);
        let (elector_repo, elector_tag) = split_reference(&self.elector);
        [
            ("image.repository", webhook_repo),
            ("image.tag", webhook_tag),
            ("image.pullPolicy", PULL_POLICY),
            ("sidecar.image.repository", elector_repo),
            ("sidecar.image.tag", elector_tag),
            ("sidecar.image.pullPolicy", PULL_POLICY),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["--set".to_owned(), format!("{key}={value}")])
        .collect()
    }
}

/// One image archive in the cache.
#[derive(Debug, Clone)]
pub struct Archive {
    pub reference: String,
    pub path: PathBuf,
    /// Wall time spent building it in this call (cargo, mmdebstrap, layer and archive).
    pub took: Duration,
}

/// Built images: references and their archives.
#[derive(Debug, Clone)]
pub struct Built {
    pub images: Images,
    pub archives: Vec<Archive>,
}

impl Built {
    /// Imports each archive whose reference the namespace lacks (a reference names its
    /// content, so a present one is the same image). Blocking.
    pub fn import(&self, target: &ImportTarget) -> Result<(), ImageError> {
        let present = ctr::list(target)?;
        for archive in &self.archives {
            if !present.contains(&archive.reference) {
                let started = Instant::now();
                ctr::import(target, &archive.path)?;
                tracing::info!(reference = %archive.reference, took = ?started.elapsed(), "imported");
            }
        }
        Ok(())
    }
}

/// `$LDAP_ELECTOR_CACHE` or `~/.cache/ldap-elector`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("ldap-elector")
}

/// The repository checkout these tests were built from.
fn repo_root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_owned()
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a concurrent reader
/// never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&partial, bytes).map_err(|e| ImageError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| ImageError::io(path, e))
}

/// Writes the image's archive unless the cache holds it already (same name = same digest).
fn save(store: &Path, spec: &oci::ImageSpec, tree: &layer::Tree, started: Instant) -> Result<Archive, ImageError> {
    let built = oci::build(spec, &tree.to_tar()?)?;
    let name = spec.repository.rsplit('/').next().unwrap_or(&spec.repository);
    let path = store.join(format!("{name}-{}.tar", built.tag));
    if !path.is_file() {
        write_atomically(&path, &built.bytes)?;
    }
    let archive = Archive { reference: built.reference, path, took: started.elapsed() };
    tracing::info!(reference = %archive.reference, took = ?archive.took, "image ready");
    Ok(archive)
}

/// The code that turns a rootfs into an archive: a memo from other code is not used.
const OPENLDAP_RECIPE: [&str; 4] =
    [include_str!("mod.rs"), include_str!("openldap.rs"), include_str!("layer.rs"), include_str!("oci.rs")];

/// What the OpenLDAP archive of one rootfs is, so a warm build skips reading and hashing the
/// 128 MB rootfs again (the archive name holds its digest, the rootfs name its inputs).
#[derive(serde::Serialize, serde::Deserialize)]
struct OpenLdapMemo {
    reference: String,
    archive: PathBuf,
    uid: u32,
    gid: u32,
}

fn openldap_image(store: &Path, started: Instant) -> Result<(Archive, u32, u32), ImageError> {
    let rootfs = openldap::rootfs_path(store)?;
    let recipe = oci::sha256_digest(OPENLDAP_RECIPE.concat().as_bytes());
    let memo_path = rootfs.with_extension(format!("{}.json", &oci::digest_hex(&recipe)[..oci::TAG_HASH_LEN]));
    let memo: Option<OpenLdapMemo> =
        std::fs::read(&memo_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(memo) = memo.filter(|m| m.archive.is_file() && rootfs.is_file()) {
        let archive = Archive { reference: memo.reference, path: memo.archive, took: started.elapsed() };
        return Ok((archive, memo.uid, memo.gid));
    }
    let ldap = openldap::image(&rootfs)?;
    let archive = save(store, &ldap.spec, &ldap.tree, started)?;
    let memo = OpenLdapMemo {
        reference: archive.reference.clone(),
        archive: archive.path.clone(),
        uid: ldap.uid,
        gid: ldap.gid,
    };
    write_atomically(&memo_path, &serde_json::to_vec(&memo).map_err(oci::OciError::from)?)?;
    Ok((archive, ldap.uid, ldap.gid))
}

/// The musl target directory of this checkout. One per checkout: cargo judges freshness by
/// modification times and names a workspace member's artifacts by its path relative to the
/// workspace, so a directory shared by two checkouts (a worktree, a CI clone) takes an
/// artifact built from the other one's newer files as fresh, and an image would ship a
/// binary of other sources.
fn musl_target_dir(cache: &Path, repo: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf()).hash(&mut hasher);
    cache.join(format!("musl-target-{:016x}", hasher.finish()))
}

/// How long an unused musl target directory of another checkout, or an unused kept binary, is
/// kept (a CI that clones to a new path each run would otherwise leave ~0.8 GiB per run, and
/// each commit that changes the sources ~17 MB of binaries).
const UNUSED_KEPT: Duration = Duration::from_secs(3 * 24 * 3600);

/// Whether something last used at `used` has been unused for longer than [`UNUSED_KEPT`].
fn unused_too_long(used: std::time::SystemTime, now: std::time::SystemTime) -> bool {
    now.duration_since(used).is_ok_and(|age| age > UNUSED_KEPT)
}
/// Touched on every use of a musl target directory.
const LAST_USED: &str = ".last-used";

/// When `dir` (of this checkout) does not exist yet, it starts as a copy of the most recently
/// used directory of another checkout without the workspace members' artifacts (`cargo clean
/// -p`): the registry crates, most of a cold build (~10 min on 2 cores), are reused; nothing
/// built from the other checkout's sources is (see [`musl_target_dir`]). Without one: cold.
fn seed_musl_target_dir(cache: &Path, dir: &Path, repo: &Path) -> Result<(), ImageError> {
    if dir.exists() {
        return Ok(());
    }
    let Some(seed) = musl_target_dirs(cache).into_iter().filter(|(d, _)| d != dir).max_by_key(|(_, used)| *used) else {
        return Ok(());
    };
    let tmp = dir.with_extension(format!("seeding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    cmd::status(std::process::Command::new("cp").args(["-a", "--reflink=auto"]).arg(&seed.0).arg(&tmp))?;
    binaries::clean_workspace_members(repo, &tmp)?;
    // Another build of this checkout may have won the race: keep its directory.
    if std::fs::rename(&tmp, dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// The musl target directories in `cache`, with when each was last used.
fn musl_target_dirs(cache: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let entries = std::fs::read_dir(cache).into_iter().flatten().flatten();
    entries
        .filter(|e| e.file_name().to_string_lossy().starts_with("musl-target-") && e.path().extension().is_none())
        .filter_map(|e| {
            let used = std::fs::metadata(e.path().join(LAST_USED)).or_else(|_| e.metadata()).ok()?.modified().ok()?;
            Some((e.path(), used))
        })
        .collect()
}

/// Marks `dir` used now and removes the directories of other checkouts unused for
/// [`UNUSED_KEPT`].
fn mark_used_and_prune(cache: &Path, dir: &Path) -> Result<(), ImageError> {
    let marker = dir.join(LAST_USED);
    std::fs::write(&marker, b"").map_err(|e| ImageError::io(&marker, e))?;
    let now = std::time::SystemTime::now();
    for (other, used) in musl_target_dirs(cache) {
        if other != dir && unused_too_long(used, now) {
            let _ = std::fs::remove_dir_all(&other);
        }
    }
    Ok(())
}

/// Where built binaries are kept by [`source_key::key`]: `<name>-<key>`.
const KEPT_BINARIES: &str = "binaries";

/// Removes kept binaries unused for [`UNUSED_KEPT`].
fn prune_kept_binaries(dir: &Path) {
    let now = std::time::SystemTime::now();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.metadata().and_then(|m| m.modified()).is_ok_and(|used| unused_too_long(used, now)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The binary built from the sources `key` names: the kept copy when there is one (a checkout
/// of the same sources built it before), else a build in this checkout's musl target directory
/// (seeded from another checkout's registry crates), then kept.
fn kept_binary(
    root: &Path,
    repo: &Path,
    target_dir: &Path,
    binary: &binaries::Binary,
    key: &str,
) -> Result<Vec<u8>, ImageError> {
    let kept_dir = root.join(KEPT_BINARIES);
    let kept = kept_dir.join(format!("{}-{key}", binary.name));
    if let Ok(data) = std::fs::read(&kept) {
        // Marks it used for the pruning below.
        let _ = std::fs::File::options()
            .append(true)
            .open(&kept)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        tracing::info!(binary = binary.name, key, "kept binary of the same sources, no build");
        return Ok(data);
    }
    seed_musl_target_dir(root, target_dir, repo)?;
    let path = binaries::build(repo, target_dir, binary)?;
    mark_used_and_prune(root, target_dir)?;
    let data = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
    std::fs::create_dir_all(&kept_dir).map_err(|e| ImageError::io(&kept_dir, e))?;
    write_atomically(&kept, &data)?;
    Ok(data)
}

/// Builds what is missing, without touching containerd: a musl binary is built (cargo decides
/// what is stale) only when none is kept for the key of its sources, the OpenLDAP rootfs is
/// cached by package versions, archives are written only when their digest is new. Blocking
/// (minutes when cold): call it through `spawn_blocking`.
pub fn build() -> Result<Built, ImageError> {
    let root = cache_root();
    let store = root.join("images");
    std::fs::create_dir_all(&store).map_err(|e| ImageError::io(&store, e))?;
    let version = env!("CARGO_PKG_VERSION");

    let started = Instant::now();
    let (spec, tree) = pause::image(&store.join("pause-build"))?;
    let pause = save(&store, &spec, &tree, started)?;

    let repo = repo_root();
    let target_dir = musl_target_dir(&root, &repo);
    let metadata = binaries::workspace_metadata(&repo, &target_dir)?;
    let facts = binaries::build_facts(&repo)?;
    let mut shipped = Vec::new();
    for binary in [binaries::ELECTOR, binaries::WEBHOOK] {
        let started = Instant::now();
        let dirs = source_key::package_dirs(&metadata, binary.package)?;
        let key = source_key::key(&repo, &dirs, &[&facts, binary.name])?;
        let data = kept_binary(&root, &repo, &target_dir, &binary, &key)?;
        let (spec, tree) = binaries::image(&binary, version, data)?;
        shipped.push(save(&store, &spec, &tree, started)?);
    }
    prune_kept_binaries(&root.join(KEPT_BINARIES));

    let started = Instant::now();
    let (openldap, openldap_uid, openldap_gid) = openldap_image(&store, started)?;

    let [elector, webhook] = [&shipped[0], &shipped[1]].map(|a| a.reference.clone());
    let images = Images {
        pause: pause.reference.clone(),
        elector,
        webhook,
        openldap: openldap.reference.clone(),
        openldap_uid,
        openldap_gid,
    };
    let mut archives = vec![pause];
    archives.extend(shipped);
    archives.push(openldap);
    Ok(Built { images, archives })
}

/// [`build`] once per process: a test binary's sources do not change while it runs, and even
/// a warm build reads the package versions and hashes the sources (~3 s per real node).
pub fn build_once() -> Result<Built, ImageError> {
    static BUILT: std::sync::Mutex<Option<Built>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(built) = built.as_ref() {
        return Ok(built.clone());
    }
    let fresh = build()?;
    *built = Some(fresh.clone());
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_values_point_at_the_local_images_and_never_pull() {
        let images = Images {
            pause: "localhost/ldap-elector-pause:1.0-aaaaaaaaaaaa".into(),
            elector: "localhost/ldap-elector:0.1.0-bbbbbbbbbbbb".into(),
            webhook: "localhost/ldap-elector-webhook:0.1.0-cccccccccccc".into(),
            openldap: "localhost/ldap-elector-openldap:2.5.13-dddddddddddd".into(),
            openldap_uid: 100,
            openldap_gid: 101,
        };
        let args = images.helm_set_args();
        let values: Vec<&str> = args.iter().skip(1).step_by(2).map(String::as_str).collect();
        assert!(args.iter().step_by(2).all(|a| a == "--set"));
        assert_eq!(
            values,
            [
                "image.repository=localhost/ldap-elector-webhook",
                "image.tag=0.1.0-cccccccccccc",
                "image.pullPolicy=Never",
                "sidecar.image.repository=localhost/ldap-elector",
                "sidecar.image.tag=0.1.0-bbbbbbbbbbbb",
                "sidecar.image.pullPolicy=Never",
            ]
        );
    }

    #[test]
    fn references_split_at_the_tag_not_at_a_port() {
        assert_eq!(split_reference("localhost/a:1.0-x"), ("localhost/a", "1.0-x"));
        assert_eq!(split_reference("host:5000/a"), ("host:5000/a", ""));
    }
}

//! An OCI image written as an OCI archive (a tar of an OCI image layout) for
//! `ctr images import`: one uncompressed layer, a config, a manifest, and `index.json` naming
//! the image. Pure: the same layer and config give byte-identical output.
use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The name `ctr images import` gives the image (containerd's own annotation).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI tag annotation of an index entry.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const OS: &str = "linux";
pub const ARCHITECTURE: &str = "amd64";
/// The PATH a Docker `FROM scratch` image gets.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Hex digits of the manifest digest in a tag.
pub const TAG_HASH_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image name {0:?} is not a repository name (lowercase, digits, '.', '_', '-', '/')")]
    BadName(String),
    #[error("tag {0:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")]
    BadTag(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("archive i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The run-time part of the image config (Docker's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What to build: `repository` like `localhost/ldap-elector`; the tag is
/// `<version>-<first 12 hex of the manifest digest>`, so other content is another reference.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub repository: String,
    pub version: String,
    pub config: RunConfig,
}

/// A finished archive in memory.
#[derive(Debug, Clone)]
pub struct OciArchive {
    /// `repository:tag`
    pub reference: String,
    pub tag: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    pub bytes: Vec<u8>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created_by: String,
}

#[derive(Serialize)]
struct Config<'a> {
    architecture: &'static str,
    os: &'static str,
    config: &'a RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// `sha256:<hex>`
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The hex part of `sha256:<hex>`.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn descriptor(media_type: &'static str, blob: &[u8]) -> Descriptor {
    Descriptor {
        media_type,
        digest: sha256_digest(blob),
        size: blob.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

fn check_repository(name: &str) -> Result<(), OciError> {
    let ok = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(OciError::BadName(name.to_owned()))
    }
}

fn check_tag(tag: &str) -> Result<(), OciError> {
    let mut bytes = tag.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if first_ok && rest_ok && tag.len() <= 128 {
        Ok(())
    } else {
        Err(OciError::BadTag(tag.to_owned()))
    }
}

/// Builds the archive for one image from its layer tar.
pub fn build(spec: &ImageSpec, layer_tar: &[u8]) -> Result<OciArchive, OciError> {
    check_repository(&spec.repository)?;
    let layer = descriptor(MEDIA_LAYER, layer_tar);
    let config = serde_json::to_vec(&Config {
        architecture: ARCHITECTURE,
        os: OS,
        config: &spec.config,
        rootfs: RootFs {
            kind: "layers",
            // Uncompressed: the diff id is the layer digest.
            diff_ids: vec![layer.digest.clone()],
        },
        history: vec![History { created_by: "ldap-elector-tests node::images (reproducible OCI writer)".into() }],
    })?;
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        config: descriptor(MEDIA_CONFIG, &config),
        layers: vec![layer],
    })?;
    let manifest_digest = sha256_digest(&manifest);
    let hash = &digest_hex(&manifest_digest)[..TAG_HASH_LEN];
    let tag = format!("{}-{hash}", spec.version);
    check_tag(&tag)?;
    let reference = format!("{}:{tag}", spec.repository);

    let mut entry = descriptor(MEDIA_MANIFEST, &manifest);
    entry.platform = Some(Platform { architecture: ARCHITECTURE, os: OS });
    entry.annotations =
        BTreeMap::from([(ANNOTATION_CONTAINERD_NAME, reference.clone()), (ANNOTATION_REF_NAME, tag.clone())]);
    let index = serde_json::to_vec(&Index { schema_version: 2, media_type: MEDIA_INDEX, manifests: vec![entry] })?;

    let blobs = [layer_tar, config.as_slice(), manifest.as_slice()];
    let bytes = archive(&index, &blobs)?;
    Ok(OciArchive { reference, tag, manifest_digest, bytes })
}

/// The OCI layout as a tar: `oci-layout`, `index.json`, `blobs/sha256/<hex>` (sorted).
fn archive(index: &[u8], blobs: &[&[u8]]) -> Result<Vec<u8>, OciError> {
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
    files.insert("oci-layout".into(), layout);
    files.insert("index.json".into(), index);
    for blob in blobs {
        let digest = sha256_digest(blob);
        files.insert(format!("blobs/sha256/{}", digest_hex(&digest)), blob);
    }
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = fixed_header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut header, dir, std::io::empty())?;
    }
    for (path, data) in files {
        let mut header = fixed_header(tar::EntryType::Regular, 0o644, data.len() as u64);
        builder.append_data(&mut header, path, data)?;
    }
    Ok(builder.into_inner()?)
}

fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn spec() -> ImageSpec {
        ImageSpec {
            repository: "localhost/ldap-elector".into(),
            version: "0.1.0".into(),
            config: RunConfig {
                user: Some("65532:65532".into()),
                entrypoint: vec!["/ldap-elector".into()],
                env: vec![DEFAULT_PATH.into()],
                labels: BTreeMap::from([("org.opencontainers.image.title".into(), "ldap-elector".into())]),
                ..RunConfig::default()
            },
        }
    }

    fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for entry in tar::Archive::new(archive).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
        out
    }

    fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        files.get(&path).map(Vec::as_slice).unwrap_or_default()
    }

    #[test]
    fn same_input_gives_byte_identical_archives() {
        let a = build(&spec(), b"layer").unwrap();
        let b = build(&spec(), b"layer").unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.reference, b.reference);
        let other = build(&spec(), b"other layer").unwrap();
        assert_ne!(a.reference, other.reference, "other content, other tag");
    }

    #[test]
    fn digests_match_the_blobs_and_the_index_names_the_image() {
        let layer = b"layer bytes".as_slice();
        let built = build(&spec(), layer).unwrap();
        let files = files(&built.bytes);
        assert_eq!(files.get("oci-layout").map(Vec::as_slice), Some(br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice()));
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let entry = &index["manifests"][0];
        let manifest_digest = entry["digest"].as_str().unwrap();
        assert_eq!(manifest_digest, built.manifest_digest);
        assert_eq!(entry["annotations"][ANNOTATION_CONTAINERD_NAME], built.reference.as_str());
        assert_eq!(entry["annotations"][ANNOTATION_REF_NAME], built.tag.as_str());
        assert_eq!(entry["platform"]["architecture"], ARCHITECTURE);

        let manifest_blob = blob(&files, manifest_digest);
        assert_eq!(sha256_digest(manifest_blob), manifest_digest);
        assert_eq!(entry["size"], manifest_blob.len());
        let hash = manifest_digest.trim_start_matches("sha256:");
        assert_eq!(built.tag, format!("0.1.0-{}", &hash[..TAG_HASH_LEN]));

        let manifest: serde_json::Value = serde_json::from_slice(manifest_blob).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config_blob = blob(&files, config_digest);
        assert_eq!(sha256_digest(config_blob), config_digest);
        assert_eq!(manifest["config"]["size"], config_blob.len());
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(blob(&files, layer_digest), layer);
        assert_eq!(sha256_digest(layer), layer_digest);

        let config: serde_json::Value = serde_json::from_slice(config_blob).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/ldap-elector");
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.title"], "ldap-elector");
        assert!(config["config"].get("Cmd").is_none());
    }

    #[test]
    fn names_and_tags_are_checked() {
        let mut bad = spec();
        bad.repository = "localhost/LDAP".into();
        assert!(matches!(build(&bad, b""), Err(OciError::BadName(_))));
        let mut bad = spec();
        bad.version = "2.5.13+dfsg".into();
        assert!(matches!(build(&bad, b""), Err(OciError::BadTag(_))));
    }
}

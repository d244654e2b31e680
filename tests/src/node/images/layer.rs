//! One reproducible image layer: an uncompressed tar of entries sorted by name, mtime 0,
//! owners and modes as given, no user/group names. The same entries give the same bytes.
use std::collections::BTreeMap;
use std::io::{self, Read};

/// What a layer path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One path of a layer; `path` is relative to the image root (no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Self { path: path.to_owned(), mode, uid: 0, gid: 0, kind: Kind::File(data) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer path {0:?} is empty, absolute after normalisation or climbs out with '..'")]
    BadPath(String),
    #[error("hard link {link:?} points to {target:?}, which is no earlier regular file")]
    DanglingHardLink { link: String, target: String },
    #[error("unsupported tar entry type {kind:?} at {path:?}")]
    Unsupported { path: String, kind: tar::EntryType },
    #[error("tar i/o: {0}")]
    Io(#[from] io::Error),
}

/// The entries of one layer, kept sorted by normalised path (a parent sorts before its
/// children because it is their prefix).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// `./usr/bin/` and `/usr/bin` both become `usr/bin`; `..` is refused.
fn normalise(path: &str) -> Result<String, LayerError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(LayerError::BadPath(path.to_owned()));
    }
    Ok(parts.join("/"))
}

impl Tree {
    /// Adds (or replaces) an entry.
    pub fn insert(&mut self, mut entry: Entry) -> Result<(), LayerError> {
        entry.path = normalise(&entry.path)?;
        self.entries.insert(entry.path.clone(), entry);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalise(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Keeps only the entries whose normalised path satisfies `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|path, _| keep(path));
    }

    /// Reads a root file system tar (e.g. mmdebstrap's output). Hard links become copies (a
    /// sorted layer could otherwise list a link before its target); device nodes and FIFOs are
    /// dropped: the runtime provides `/dev`.
    pub fn from_tar(reader: impl Read) -> Result<Self, LayerError> {
        let mut tree = Tree::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            if matches!(path.as_str(), "" | "." | "./" | "/") {
                continue; // the root itself: the runtime creates it
            }
            let header = entry.header();
            let (mode, uid, gid) = (header.mode()?, header.uid()?, header.gid()?);
            let owner = |n: u64| u32::try_from(n).map_err(|_| LayerError::BadPath(path.clone()));
            let (uid, gid) = (owner(uid)?, owner(gid)?);
            let kind = match header.entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data)?;
                    Kind::File(data)
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name()?.unwrap_or_default();
                    Kind::Symlink(target.to_string_lossy().into_owned())
                }
                tar::EntryType::Link => {
                    let target = entry.link_name()?.unwrap_or_default();
                    let target = target.to_string_lossy().into_owned();
                    match tree.get(&target).map(|e| &e.kind) {
                        Some(Kind::File(data)) => Kind::File(data.clone()),
                        _ => return Err(LayerError::DanglingHardLink { link: path, target }),
                    }
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => continue,
                other => return Err(LayerError::Unsupported { path, kind: other }),
            };
            tree.insert(Entry { path, mode, uid, gid, kind })?;
        }
        Ok(tree)
    }

    /// The layer tar: GNU headers (long names as GNU extensions), sorted, mtime 0.
    pub fn to_tar(&self) -> Result<Vec<u8>, LayerError> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in self.entries.values() {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            header.set_uid(u64::from(entry.uid));
            header.set_gid(u64::from(entry.gid));
            header.set_mtime(0);
            match &entry.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{}/", entry.path), io::empty())?;
                }
                Kind::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, &entry.path, data.as_slice())?;
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, &entry.path, target)?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut tree = Tree::default();
        let long = format!("usr/{}/file", "d".repeat(120));
        for entry in [
            Entry::file("/zeta", 0o755, b"z".to_vec()),
            Entry { path: "./usr/".into(), mode: 0o755, uid: 0, gid: 0, kind: Kind::Dir },
            Entry { path: long, mode: 0o600, uid: 100, gid: 101, kind: Kind::File(b"long".to_vec()) },
            Entry { path: "usr/link".into(), mode: 0o777, uid: 0, gid: 0, kind: Kind::Symlink("/zeta".into()) },
            Entry::file("alpha", 0o644, b"a".to_vec()),
        ] {
            tree.insert(entry).unwrap();
        }
        tree
    }

    #[test]
    fn same_entries_give_identical_bytes_whatever_the_insertion_order() {
        let forward = sample().to_tar().unwrap();
        let mut reversed = Tree::default();
        let mut entries: Vec<Entry> = sample().entries.into_values().collect();
        entries.reverse();
        for entry in entries {
            reversed.insert(entry).unwrap();
        }
        assert_eq!(forward, reversed.to_tar().unwrap());
    }

    #[test]
    fn tar_is_sorted_with_mtime_zero_and_given_owners() {
        let bytes = sample().to_tar().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.ends_with("/file") {
                assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (100, 101));
                assert_eq!(header.mode().unwrap(), 0o600);
            }
            seen.push(path.trim_end_matches('/').to_owned());
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        assert_eq!(seen.len(), 5);
        assert!(seen[0] == "alpha" && seen[1] == "usr", "{seen:?}");
    }

    #[test]
    fn reading_a_rootfs_copies_hard_links_and_drops_devices() {
        let header = |kind, size| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(size);
            h
        };
        let mut builder = tar::Builder::new(Vec::new());
        let mut file = header(tar::EntryType::Regular, 4);
        builder.append_data(&mut file, "./usr/bin/perl", &b"perl"[..]).unwrap();
        let mut link = header(tar::EntryType::Link, 0);
        builder.append_link(&mut link, "./usr/bin/perl5", "./usr/bin/perl").unwrap();
        let mut dev = header(tar::EntryType::Char, 0);
        builder.append_data(&mut dev, "./dev/null", io::empty()).unwrap();
        let bytes = builder.into_inner().unwrap();

        let tree = Tree::from_tar(bytes.as_slice()).unwrap();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.get("usr/bin/perl5").map(|e| &e.kind), Some(&Kind::File(b"perl".to_vec())));
        assert!(tree.get("dev/null").is_none());
    }

    #[test]
    fn climbing_paths_are_refused() {
        let mut tree = Tree::default();
        assert!(tree.insert(Entry::file("../etc/passwd", 0o644, vec![])).is_err());
        assert!(tree.insert(Entry::file("/", 0o644, vec![])).is_err());
    }
}

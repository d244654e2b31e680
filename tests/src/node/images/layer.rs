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
    /// Another name of a regular file; the target sorts first (see `Tree::from_tar`).
    HardLink(String),
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
    #[error("hard link {link:?} points to {target:?}, which is no (earlier) regular file")]
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

    /// Reads a root file system tar (e.g. mmdebstrap's output), keeping the paths (normalised)
    /// for which `keep` holds. Device nodes and FIFOs are dropped: the runtime provides `/dev`.
    pub fn from_tar(reader: impl Read, keep: impl Fn(&str) -> bool) -> Result<Self, LayerError> {
        let mut tree = Tree::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            if matches!(path.as_str(), "" | "." | "./" | "/") {
                continue; // the root itself: the runtime creates it
            }
            let path = normalise(&path)?;
            if !keep(&path) {
                continue;
            }
            let header = entry.header();
            let (mode, uid, gid) = (header.mode()?, header.uid()?, header.gid()?);
            let owner = |n: u64| u32::try_from(n).map_err(|_| LayerError::BadPath(path.clone()));
            let (uid, gid) = (owner(uid)?, owner(gid)?);
            let link_name = |entry: &tar::Entry<_>| -> Result<String, LayerError> {
                Ok(entry.link_name()?.unwrap_or_default().to_string_lossy().into_owned())
            };
            let kind = match header.entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data)?;
                    Kind::File(data)
                }
                tar::EntryType::Symlink => Kind::Symlink(link_name(&entry)?),
                tar::EntryType::Link => Kind::HardLink(normalise(&link_name(&entry)?)?),
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => continue,
                other => return Err(LayerError::Unsupported { path, kind: other }),
            };
            tree.insert(Entry { path, mode, uid, gid, kind })?;
        }
        tree.order_hard_links()?;
        Ok(tree)
    }

    /// The regular file a hard link (chain) names.
    fn link_root(&self, link: &str, target: &str) -> Result<String, LayerError> {
        let dangling = || LayerError::DanglingHardLink { link: link.to_owned(), target: target.to_owned() };
        let mut current = target.to_owned();
        // A chain longer than the tree is a cycle.
        for _ in 0..=self.entries.len() {
            match self.entries.get(&current).map(|e| &e.kind) {
                Some(Kind::File(_)) => return Ok(current),
                Some(Kind::HardLink(next)) => current = next.clone(),
                _ => return Err(dangling()),
            }
        }
        Err(dangling())
    }

    /// Makes the first name (in sort order) of each hard-linked file hold the data and the
    /// others link to it, so a sorted tar never lists a link before its target.
    fn order_hard_links(&mut self) -> Result<(), LayerError> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, entry) in &self.entries {
            if let Kind::HardLink(target) = &entry.kind {
                groups.entry(self.link_root(path, target)?).or_default().push(path.clone());
            }
        }
        for (file, mut names) in groups {
            let Some(data) = self.entries.remove(&file) else { continue };
            names.push(file);
            names.sort();
            let holder = names[0].clone();
            for name in names.iter().skip(1) {
                let kind = Kind::HardLink(holder.clone());
                let link = Entry { path: name.clone(), mode: data.mode, uid: data.uid, gid: data.gid, kind };
                self.entries.insert(name.clone(), link);
            }
            self.entries.insert(holder.clone(), Entry { path: holder, ..data });
        }
        Ok(())
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
                Kind::HardLink(target) => {
                    let earlier_file = *target < entry.path
                        && matches!(self.entries.get(target).map(|e| &e.kind), Some(Kind::File(_)));
                    if !earlier_file {
                        return Err(LayerError::DanglingHardLink { link: entry.path.clone(), target: target.clone() });
                    }
                    header.set_entry_type(tar::EntryType::Link);
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
    fn reading_a_rootfs_orders_hard_links_and_drops_devices_and_unkept_paths() {
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
        builder.append_data(&mut header(tar::EntryType::Regular, 5), "./usr/sbin/slapd", &b"slapd"[..]).unwrap();
        // A link that sorts before its target, and one that sorts after.
        builder.append_link(&mut header(tar::EntryType::Link, 0), "./usr/sbin/slapadd", "./usr/sbin/slapd").unwrap();
        builder.append_link(&mut header(tar::EntryType::Link, 0), "./usr/sbin/slaptest", "./usr/sbin/slapd").unwrap();
        builder.append_data(&mut header(tar::EntryType::Char, 0), "./dev/null", io::empty()).unwrap();
        builder.append_data(&mut header(tar::EntryType::Regular, 3), "./usr/share/doc/x/FAQ", &b"faq"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();

        let tree = Tree::from_tar(bytes.as_slice(), |p| !p.starts_with("usr/share/doc/")).unwrap();
        assert_eq!(tree.len(), 3);
        let kind = |p: &str| tree.get(p).map(|e| e.kind.clone());
        assert_eq!(kind("usr/sbin/slapadd"), Some(Kind::File(b"slapd".to_vec())));
        assert_eq!(kind("usr/sbin/slapd"), Some(Kind::HardLink("usr/sbin/slapadd".into())));
        assert_eq!(kind("usr/sbin/slaptest"), Some(Kind::HardLink("usr/sbin/slapadd".into())));

        // Written sorted, each link after its target; reading it back gives the same tree.
        let layer = tree.to_tar().unwrap();
        let again = Tree::from_tar(layer.as_slice(), |_| true).unwrap();
        assert_eq!(again.entries, tree.entries);
        assert_eq!(again.to_tar().unwrap(), layer);
    }

    #[test]
    fn a_link_to_a_missing_or_later_file_is_refused() {
        let mut tree = Tree::default();
        let link =
            |target: &str| Entry { path: "b".into(), mode: 0o644, uid: 0, gid: 0, kind: Kind::HardLink(target.into()) };
        tree.insert(link("a")).unwrap();
        assert!(matches!(tree.to_tar(), Err(LayerError::DanglingHardLink { .. })));
        tree.insert(Entry::file("c", 0o644, b"c".to_vec())).unwrap();
        tree.insert(link("c")).unwrap();
        assert!(matches!(tree.to_tar(), Err(LayerError::DanglingHardLink { .. })));
    }

    #[test]
    fn climbing_paths_are_refused() {
        let mut tree = Tree::default();
        assert!(tree.insert(Entry::file("../etc/passwd", 0o644, vec![])).is_err());
        assert!(tree.insert(Entry::file("/", 0o644, vec![])).is_err());
    }
}

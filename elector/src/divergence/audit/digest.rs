//! Entries as read, their order-independent digests, and the buckets those fold into.

use super::*;

/// One search result entry as raw bytes (attribute names as the server sent them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub dn: Vec<u8>,
    pub attrs: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
}

/// Takes a SearchResultEntry apart without panicking on malformed input (ldap3's
/// `SearchEntry::construct` panics on it): `None` when the shape is wrong.
pub fn parse_entry(tag: StructureTag) -> Option<RawEntry> {
    let mut parts = tag.match_id(4)?.expect_constructed()?.into_iter();
    let dn = parts.next()?.expect_primitive()?;
    let mut attrs = Vec::new();
    for attr in parts.next()?.expect_constructed()? {
        let mut attr = attr.expect_constructed()?.into_iter();
        let name = attr.next()?.expect_primitive()?;
        let values = attr
            .next()?
            .expect_constructed()?
            .into_iter()
            .map(StructureTag::expect_primitive)
            .collect::<Option<_>>()?;
        attrs.push((name, values));
    }
    Some(RawEntry { dn, attrs })
}

/// Which attributes the audit requests and which it leaves out of the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPolicy {
    /// Attribute list of every search (`*` plus the replicated operational attributes).
    pub request: Vec<String>,
    /// Lower-case names left out of the digests.
    pub ignore: HashSet<Vec<u8>>,
}

impl Default for AttrPolicy {
    fn default() -> Self {
        AttrPolicy::new(&[], &[])
    }
}

impl AttrPolicy {
    /// `extra`: more attributes to request (e.g. replicated ppolicy state);
    /// `ignore`: attributes that legitimately differ between the servers.
    pub fn new(extra: &[String], ignore: &[String]) -> AttrPolicy {
        let mut request: Vec<String> = std::iter::once("*").chain(OPERATIONAL).map(String::from).collect();
        for e in extra.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if !request.iter().any(|r| r.eq_ignore_ascii_case(e)) {
                request.push(e.to_string());
            }
        }
        let ignore = ignore
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .chain(ALWAYS_IGNORED)
            .map(|s| s.to_ascii_lowercase().into_bytes())
            .collect();
        AttrPolicy { request, ignore }
    }
}

/// What the audit keeps of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDigest {
    pub uuid: Option<Uuid>,
    pub dn: Vec<u8>,
    pub csn: Option<String>,
    /// DN and every compared attribute except the last-change metadata.
    pub content: u128,
    /// entryCSN, modifyTimestamp, modifiersName.
    pub meta: u128,
}

/// Digests an entry: attribute names are compared case-insensitively, attributes and
/// values as sets (sorted first), everything length-prefixed so no two entries encode alike.
pub fn digest_entry(mut entry: RawEntry, policy: &AttrPolicy) -> EntryDigest {
    for (name, values) in &mut entry.attrs {
        name.make_ascii_lowercase();
        values.sort_unstable();
    }
    entry.attrs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let first = |name: &[u8]| entry.attrs.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.first());
    let uuid = first(b"entryuuid").and_then(|v| parse_uuid(v));
    let csn = first(b"entrycsn").map(|v| String::from_utf8_lossy(v).into_owned());
    let mut content = ring::digest::Context::new(&ring::digest::SHA256);
    let mut meta = ring::digest::Context::new(&ring::digest::SHA256);
    put(&mut content, &entry.dn);
    for (name, values) in &entry.attrs {
        if policy.ignore.contains(name) {
            continue;
        }
        let ctx = if META.iter().any(|m| m.as_bytes() == name.as_slice()) { &mut meta } else { &mut content };
        put(ctx, name);
        ctx.update(&(values.len() as u32).to_be_bytes());
        for v in values {
            put(ctx, v);
        }
    }
    EntryDigest { uuid, dn: entry.dn, csn, content: truncate(content), meta: truncate(meta) }
}

fn put(ctx: &mut ring::digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u32).to_be_bytes());
    ctx.update(bytes);
}

fn truncate(ctx: ring::digest::Context) -> u128 {
    let digest = ctx.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// The order-independent fold of a bucket's entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub content: u128,
    pub meta: u128,
    pub count: u32,
}

impl Bucket {
    pub fn add(&mut self, d: &EntryDigest) {
        self.content = self.content.wrapping_add(d.content);
        self.meta = self.meta.wrapping_add(d.meta);
        self.count = self.count.saturating_add(1);
    }
}

/// The `2^width` buckets under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    pub prefix: Prefix,
    pub width: u32,
    pub buckets: Vec<Bucket>,
}

impl Buckets {
    pub fn new(prefix: Prefix, width: u32) -> Buckets {
        Buckets { prefix, width, buckets: vec![Bucket::default(); 1 << width] }
    }

    /// Folds an entry in; `false` (and nothing folded) when it has no UUID under the prefix.
    pub fn add(&mut self, d: &EntryDigest) -> bool {
        match d.uuid {
            Some(u) if self.prefix.contains(u) => {
                let i = self.prefix.index_of(u, self.width);
                self.buckets[i].add(d);
                true
            }
            _ => false,
        }
    }
}

/// A bucket whose digests differ, with each side's entry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketDiff {
    pub prefix: Prefix,
    pub count_a: u32,
    pub count_b: u32,
}

impl BucketDiff {
    pub fn size(&self) -> usize {
        self.count_a.max(self.count_b) as usize
    }
}

/// The buckets that differ between two passes over the same prefix and width.
pub fn differing(a: &Buckets, b: &Buckets) -> Vec<BucketDiff> {
    a.buckets
        .iter()
        .zip(&b.buckets)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| BucketDiff {
            prefix: a.prefix.child(i as u128, a.width),
            count_a: x.count,
            count_b: y.count,
        })
        .collect()
}

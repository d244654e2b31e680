//! entryUUIDs as numbers, the bucket prefixes over them, and the LDAP filters that select
//! a range or a list of them.

/// An entryUUID as a number: its text form sorts like the number, and so does
/// slapd's UUIDOrderingMatch (memcmp of the 16 bytes).
pub type Uuid = u128;

/// Parses `8-4-4-4-12` hex (either case).
pub fn parse_uuid(s: &[u8]) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &c) in s.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = (c as char).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

pub fn format_uuid(u: Uuid) -> String {
    let h = format!("{u:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The first `len` bits of an entryUUID: a bucket, and the range of UUIDs in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The prefix bits, left-aligned; the bits after `len` are zero.
    bits: u128,
    len: u32,
}

impl Prefix {
    pub const ROOT: Prefix = Prefix { bits: 0, len: 0 };

    /// How many leading bits the prefix fixes.
    pub fn bits(&self) -> u32 {
        self.len
    }

    pub fn is_root(&self) -> bool {
        self.len == 0
    }

    /// The `index`-th of the `2^width` sub-buckets (`len + width <= 128`).
    pub fn child(&self, index: u128, width: u32) -> Prefix {
        let shift = 128 - self.len - width;
        Prefix { bits: self.bits | index.checked_shl(shift).unwrap_or(0), len: self.len + width }
    }

    /// Which of the `2^width` sub-buckets `uuid` falls in.
    pub fn index_of(&self, uuid: Uuid, width: u32) -> usize {
        let below = uuid.checked_shl(self.len).unwrap_or(0);
        below.checked_shr(128 - width).unwrap_or(0) as usize
    }

    pub fn contains(&self, uuid: Uuid) -> bool {
        uuid >= self.lo() && uuid <= self.hi()
    }

    fn lo(&self) -> Uuid {
        self.bits
    }

    fn hi(&self) -> Uuid {
        self.bits | u128::MAX.checked_shr(self.len).unwrap_or(0)
    }

    /// The search filter selecting this bucket's entries.
    pub fn filter(&self) -> String {
        if self.is_root() {
            "(objectClass=*)".to_string()
        } else {
            format!("(&(entryUUID>={})(entryUUID<={}))", format_uuid(self.lo()), format_uuid(self.hi()))
        }
    }

    /// Hex label (`9c96`, or `9c96/14` when not a whole number of hex digits).
    pub fn label(&self) -> String {
        if self.is_root() {
            return "*".to_string();
        }
        let digits = self.len.div_ceil(4) as usize;
        let hex = &format!("{:032x}", self.bits)[..digits];
        if self.len.is_multiple_of(4) {
            hex.to_string()
        } else {
            format!("{hex}/{}", self.len)
        }
    }
}

/// OR of the buckets' filters.
pub fn ranges_filter(prefixes: &[Prefix]) -> String {
    match prefixes {
        [one] => one.filter(),
        many => format!("(|{})", many.iter().map(Prefix::filter).collect::<String>()),
    }
}

/// OR of entryUUID equality filters.
pub fn uuids_filter(uuids: &[Uuid]) -> String {
    match uuids {
        [one] => format!("(entryUUID={})", format_uuid(*one)),
        many => format!("(|{})", many.iter().map(|u| format!("(entryUUID={})", format_uuid(*u))).collect::<String>()),
    }
}

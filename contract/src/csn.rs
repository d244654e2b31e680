//! The one contextCSN type. A CSN (change sequence number) is slapd's stamp of a change:
//! `20261125183700.123456Z#000000#001#000000` (UTC time to the microsecond, change count,
//! server ID, modifier number; the last three in hex). A contextCSN is the newest CSN per
//! server ID a server has applied. The elector publishes and compares them as text (pod and
//! Lease annotations, the audit's report); every comparison parses them here.
//!
//! Safety: whatever does not parse fails closed. An unreadable or sid-less CSN of the side
//! being waited for is never covered, so it can never make a standby look caught up.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::Offset;
use jiff::Timestamp;

/// Digits of the fraction of a second slapd writes (microseconds). More would be truncated
/// and could reorder two CSNs, so such a CSN does not parse.
const MAX_FRACTION_DIGITS: usize = 6;
/// Hex digits of the count, server ID and modifier fields in slapd's format.
const MAX_FIELD_DIGITS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CSN (`YYYYmmddHHMMSS[.ffffff]Z#count#sid#mod`): {text:?}: {reason}")]
pub struct CsnError {
    pub text: String,
    pub reason: &'static str,
}

/// One parsed CSN. Orders by time, then count, server ID and modifier, as slapd does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Csn {
    pub time: Timestamp,
    pub count: u32,
    pub sid: u16,
    pub modifier: u32,
}

impl Csn {
    /// How far `self` trails `newer` (zero when it does not).
    pub fn lag_behind(&self, newer: &Csn) -> Duration {
        let micros = newer.time.as_microsecond().saturating_sub(self.time.as_microsecond());
        Duration::from_micros(micros.max(0).unsigned_abs())
    }
}

impl FromStr for Csn {
    type Err = CsnError;

    fn from_str(text: &str) -> Result<Csn, CsnError> {
        let err = |reason| CsnError { text: text.to_string(), reason };
        let mut fields = text.trim().split('#');
        let stamp = fields.next().unwrap_or_default();
        let (count, sid, modifier) = match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(c), Some(s), Some(m), None) => (c, s, m),
            _ => return Err(err("want four `#`-separated fields")),
        };
        let hex = |field: &str, what| {
            if field.is_empty() || field.len() > MAX_FIELD_DIGITS {
                return Err(err(what));
            }
            u32::from_str_radix(field, 16).map_err(|_| err(what))
        };
        Ok(Csn {
            time: parse_time(stamp).ok_or_else(|| err("bad timestamp"))?,
            count: hex(count, "bad change count")?,
            sid: u16::try_from(hex(sid, "bad server ID")?).map_err(|_| err("bad server ID"))?,
            modifier: hex(modifier, "bad modifier")?,
        })
    }
}

/// `YYYYmmddHHMMSS[.f{1,6}]Z` as a UTC instant; `None` for anything else.
fn parse_time(stamp: &str) -> Option<Timestamp> {
    let stamp = stamp.strip_suffix('Z')?;
    let (whole, fraction) = stamp.split_once('.').unwrap_or((stamp, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() != 14 || !digits(whole) || fraction.len() > MAX_FRACTION_DIGITS || !digits(fraction) {
        return None;
    }
    if stamp.contains('.') && fraction.is_empty() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| whole.get(r).and_then(|s| s.parse::<i8>().ok());
    let year = whole.get(0..4)?.parse::<i16>().ok()?;
    // A leap second (60) is read as 59, as jiff's own RFC 3339 parser does.
    let second = num(12..14)?.min(59);
    let micros: i32 = if fraction.is_empty() { 0 } else { format!("{fraction:0<6}").parse().ok()? };
    let civil = DateTime::new(year, num(4..6)?, num(6..8)?, num(8..10)?, num(10..12)?, second, micros * 1000).ok()?;
    Offset::UTC.to_timestamp(civil).ok()
}

impl fmt::Display for Csn {
    /// slapd's own form: six fraction digits, `count#sid#mod` as 6, 3 and 6 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let civil = Offset::UTC.to_datetime(self.time);
        write!(
            f,
            "{:04}{:02}{:02}{:02}{:02}{:02}.{:06}Z#{:06x}#{:03x}#{:06x}",
            civil.year(),
            civil.month(),
            civil.day(),
            civil.hour(),
            civil.minute(),
            civil.second(),
            civil.subsec_nanosecond() / 1000,
            self.count,
            self.sid,
            self.modifier
        )
    }
}

/// A server's contextCSN: the newest CSN per server ID, and the values that did not parse
/// (kept so that comparisons against them fail closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextCsn {
    newest: BTreeMap<u16, Csn>,
    unreadable: Vec<String>,
}

impl ContextCsn {
    /// From `contextCSN` values (or an annotation's space-separated list, split by the
    /// caller). Blank values are skipped; others that do not parse are kept as unreadable.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> ContextCsn {
        let mut out = ContextCsn::default();
        for value in values.iter().map(|v| v.as_ref().trim()).filter(|v| !v.is_empty()) {
            match value.parse::<Csn>() {
                Ok(csn) => {
                    let slot = out.newest.entry(csn.sid).or_insert(csn);
                    *slot = (*slot).max(csn);
                }
                Err(_) => out.unreadable.push(value.to_string()),
            }
        }
        out
    }

    /// Whether this server has applied every change `earlier` had: per server ID, a CSN at
    /// least as new. Never when `earlier` holds a value that does not parse.
    pub fn covers(&self, earlier: &ContextCsn) -> bool {
        earlier.unreadable.is_empty()
            && earlier.newest.iter().all(|(sid, theirs)| self.newest.get(sid).is_some_and(|mine| mine >= theirs))
    }

    /// How far this server trails `leader` by CSN time: the largest shortfall over the
    /// leader's server IDs (zero when it covers them). `None` (unknown, treat as unbounded)
    /// when a server ID of the leader is missing here or a leader value does not parse.
    pub fn lag(&self, leader: &ContextCsn) -> Option<Duration> {
        if !leader.unreadable.is_empty() {
            return None;
        }
        leader
            .newest
            .iter()
            .try_fold(Duration::ZERO, |worst, (sid, theirs)| Some(worst.max(self.newest.get(sid)?.lag_behind(theirs))))
    }

    /// The newest CSN of all server IDs.
    pub fn newest(&self) -> Option<&Csn> {
        self.newest.values().max()
    }

    /// Server IDs with a CSN.
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty() && self.unreadable.is_empty()
    }

    /// The values in slapd's form, by server ID, then the unreadable ones as they came.
    pub fn values(&self) -> Vec<String> {
        self.newest.values().map(Csn::to_string).chain(self.unreadable.iter().cloned()).collect()
    }
}

/// A standby is caught up when it covers every server ID of the contextCSN the leader
/// published (nothing published: nothing to wait for).
pub fn caught_up<S: AsRef<str>>(mine: &[S], leaders: &[S]) -> bool {
    ContextCsn::parse(mine).covers(&ContextCsn::parse(leaders))
}

/// How far `mine` trails `leaders` (see [`ContextCsn::lag`]).
pub fn lag<S: AsRef<str>>(mine: &[S], leaders: &[S]) -> Option<Duration> {
    ContextCsn::parse(mine).lag(&ContextCsn::parse(leaders))
}

/// The space-separated CSN list of a pod or Lease annotation.
pub fn split_annotation(value: Option<&str>) -> Vec<String> {
    value.map(|v| v.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csn(time: &str, sid: u16) -> String {
        format!("{time}.000000Z#000000#{sid:03x}#000000")
    }

    fn micros(text: &str) -> Option<i64> {
        text.parse::<Csn>().ok().map(|c| c.time.as_microsecond())
    }

    #[test]
    fn times_parse_to_unix_instants() {
        assert_eq!(micros("19700101000000.000000Z#000000#000#000000"), Some(0));
        assert_eq!(micros("19700101000001.000002Z#000000#001#000000"), Some(1_000_002));
        assert_eq!(micros("20261125100000.000000Z#000000#001#000000"), Some(1_795_600_800_000_000));
        assert_eq!(micros("20000229235959.500000Z#000000#001#000000"), Some(951_868_799_500_000));
        assert_eq!(micros("20000301000000Z#0#1#0"), Some(951_868_800_000_000), "no fraction, short fields");
        assert_eq!(micros("20261125100000.5Z#0#1#0"), Some(1_795_600_800_500_000), "short fraction");
    }

    #[test]
    fn malformed_csns_do_not_parse() {
        for bad in [
            "garbage",
            "",
            "2026112510000.000000Z#0#1#0",
            "20261325100000.000000Z#0#1#0",
            "20261325000000.0Z#0#1#0",
            "20260230100000.000000Z#0#1#0",
            "20261125100000.000000#0#1#0",
            "20261125100000.Z#0#1#0",
            "20261125100000.1234567Z#0#1#0",
            "20261125100000.000000Z#000000#001",
            "20261125100000.000000Z#000000##000000",
            "20261125100000.000000Z#000000#xyz#000000",
            "20261125100000.000000Z#000000#001#000000#0",
        ] {
            assert!(bad.parse::<Csn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn csns_order_by_time_then_count_and_print_in_slapd_form() {
        let a: Csn = "20261125100000.000001Z#000000#001#000000".parse().unwrap();
        let b: Csn = "20261125100000.000001Z#000001#001#000000".parse().unwrap();
        let c: Csn = "20261125100000.00001Z#000000#001#000000".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "20261125100000.000001Z#000000#001#000000");
        assert_eq!(
            "20000301000000Z#0#1#0".parse::<Csn>().unwrap().to_string(),
            "20000301000000.000000Z#000000#001#000000"
        );
        assert_eq!("20261125100000.000000Z#000000#00A#000000".parse::<Csn>().unwrap().sid, 10);
    }

    #[test]
    fn caught_up_compares_per_server_id() {
        let leader = vec![csn("20261125100000", 1), csn("20261125100500", 2)];
        assert!(caught_up(&leader, &leader));
        assert!(caught_up(&[csn("20261125100000", 1), csn("20261125100600", 2)], &leader));
        assert!(!caught_up(&[csn("20261125100000", 1), csn("20261125100400", 2)], &leader));
        assert!(!caught_up(&[csn("20261125100000", 1)], &leader), "no CSN for server 2");
        // A newer CSN of another server does not make up for a missing one.
        assert!(!caught_up(&[csn("20261125110000", 1)], &[csn("20261125100000", 2)]));
        assert!(caught_up::<String>(&[], &[]), "nothing published: nothing to wait for");
    }

    #[test]
    fn an_unreadable_leader_csn_is_never_caught_up_with() {
        let mine = vec![csn("20991231235959", 1)];
        // The old decide::caught_up skipped a sid-less leader CSN and said "caught up".
        for leader in ["20261125100000.000000Z", "garbage", "20261125100000.000000Z#000000#001"] {
            assert!(!caught_up(&mine, &[leader.to_string()]), "{leader:?}");
            assert_eq!(ContextCsn::parse(&mine).lag(&ContextCsn::parse(&[leader])), None, "{leader:?}");
        }
        // An unreadable value of my own counts for nothing, and nothing more.
        assert!(!caught_up(&["garbage".to_string()], &[csn("20261125100000", 1)]));
        assert!(caught_up(&[csn("20261125100000", 1), "garbage".into()], &[csn("20261125100000", 1)]));
    }

    #[test]
    fn context_csn_keeps_the_newest_per_server_and_covers_per_server() {
        let old = ContextCsn::parse(&["20250101000000.000000Z#000000#001#000000"]);
        let new = ContextCsn::parse(&[
            "20250101000001.000000Z#000000#001#000000",
            "20240101000000.000000Z#000000#002#000000",
            "20240101000000.000000Z#000000#001#000000",
            " ",
            "garbage",
        ]);
        assert_eq!(new.len(), 2);
        assert_eq!(new.newest().map(Csn::to_string).as_deref(), Some("20250101000001.000000Z#000000#001#000000"));
        assert!(new.covers(&old) && !old.covers(&new));
        assert!(new.covers(&ContextCsn::default()));
        let sid3 = ContextCsn::parse(&["20200101000000.000000Z#000000#003#000000"]);
        assert!(!new.covers(&sid3));
        assert_eq!(ContextCsn::parse(&["x", ""]).values(), vec!["x".to_string()]);
    }

    #[test]
    fn lag_is_the_worst_shortfall_per_server_id() {
        let p = |v: &[&str]| ContextCsn::parse(v);
        let a = "20261125183700.000000Z#000000#001#000000";
        let a_later = "20261125183730.000000Z#000000#001#000000";
        let b = "20261125183000.000000Z#000000#002#000000";
        assert_eq!(p(&[a]).lag(&p(&[a_later])), Some(Duration::from_secs(30)));
        assert_eq!(p(&[a_later]).lag(&p(&[a])), Some(Duration::ZERO));
        assert_eq!(p(&[a]).lag(&p(&[a, b])), None, "server ID 002 missing");
        assert_eq!(p(&[]).lag(&p(&[])), Some(Duration::ZERO));
    }

    #[test]
    fn annotations_split_on_whitespace() {
        assert_eq!(split_annotation(Some(" a  b ")), vec!["a", "b"]);
        assert!(split_annotation(None).is_empty());
    }
}

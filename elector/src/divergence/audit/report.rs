//! The audit's findings: differences, the verdict, and the report for humans and scripts.

use super::*;

/// The kind of a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Only server B holds the entry.
    MissingOnA,
    /// Only server A holds the entry.
    MissingOnB,
    /// Both hold it, with different contents or last-change metadata.
    Differs,
}

/// One entry that differs between the servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: DiffKind,
    /// The DN (A's when both hold the entry).
    pub dn: String,
    /// B's DN when it differs from A's (a missed rename).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dn_b: Option<String>,
    pub entry_uuid: String,
    pub entry_csn_a: Option<String>,
    pub entry_csn_b: Option<String>,
    /// Both hold the entry with equal attributes: only entryCSN/modifyTimestamp/modifiersName differ.
    pub metadata_only: bool,
    /// For unsettled entries: why the audit could not decide (`moving`, `lagging`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Difference {
    pub(super) fn new(uuid: Uuid, obs: &Observation, reason: Option<&str>) -> Difference {
        let (kind, dn, dn_b) = match (&obs.a, &obs.b) {
            (None, Some(b)) => (DiffKind::MissingOnA, b.dn.clone(), None),
            (Some(a), None) => (DiffKind::MissingOnB, a.dn.clone(), None),
            (Some(a), Some(b)) => {
                (DiffKind::Differs, a.dn.clone(), Some(b.dn.clone()).filter(|d| !d.eq_ignore_ascii_case(&a.dn)))
            }
            // Both absent agrees; never tracked.
            (None, None) => (DiffKind::Differs, String::new(), None),
        };
        let metadata_only = matches!((&obs.a, &obs.b), (Some(a), Some(b)) if a.content == b.content);
        Difference {
            kind,
            dn,
            dn_b,
            entry_uuid: format_uuid(uuid),
            entry_csn_a: obs.a.as_ref().and_then(|s| s.csn.clone()),
            entry_csn_b: obs.b.as_ref().and_then(|s| s.csn.clone()),
            metadata_only,
            reason: reason.map(String::from),
        }
    }

    pub(super) fn describe(&self) -> String {
        let csn = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".into());
        match self.kind {
            DiffKind::MissingOnA => {
                format!("missing on A  {}  (B holds it, entryCSN {})", self.dn, csn(&self.entry_csn_b))
            }
            DiffKind::MissingOnB => {
                format!("missing on B  {}  (A holds it, entryCSN {})", self.dn, csn(&self.entry_csn_a))
            }
            DiffKind::Differs => {
                let mut s = format!(
                    "differs       {}  entryCSN A {} vs B {}",
                    self.dn,
                    csn(&self.entry_csn_a),
                    csn(&self.entry_csn_b)
                );
                if let Some(dn_b) = &self.dn_b {
                    let _ = write!(s, "; B names it {dn_b}");
                }
                if self.metadata_only {
                    s.push_str(" (attributes equal)");
                }
                s
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every entry agrees (differences in flight were retried until they resolved).
    InSync,
    /// At least one entry differs for good.
    Diverged,
    /// No confirmed divergence, but some entries kept changing or replication lagged
    /// until the retries ran out (or differences were left unexamined): audit again.
    Unsettled,
}

impl Verdict {
    pub fn decide(confirmed: usize, unsettled: usize, unexamined: usize) -> Verdict {
        if confirmed > 0 {
            Verdict::Diverged
        } else if unsettled > 0 || unexamined > 0 {
            Verdict::Unsettled
        } else {
            Verdict::InSync
        }
    }

    /// Exit status of `ldap-elector audit`: 0 in sync, 1 diverged, 3 unsettled (2 is a
    /// usage error, 4 an audit that could not finish).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::InSync => 0,
            Verdict::Diverged => 1,
            Verdict::Unsettled => 3,
        }
    }
}

/// One server's side of the report.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    pub url: String,
    /// Entries seen by the first pass.
    pub entries: u64,
    pub context_csn: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Buckets of the first pass.
    pub buckets: usize,
    /// Buckets of the first pass whose digests differed.
    pub differing_buckets: usize,
    /// Buckets that were too big for one read and were split by a digest pass.
    pub split_buckets: usize,
    /// Entries re-read in differing buckets (both servers).
    pub entries_reread: u64,
    /// Entries that differed at first sight (before the retries).
    pub candidates: u64,
    /// Searches issued (both servers).
    pub searches: u64,
    /// Re-read rounds, summed over the batches.
    pub rounds: u32,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub base: String,
    pub a: SideReport,
    pub b: SideReport,
    /// Equal contextCSN values prove nothing (see the notes); shown because a divergence
    /// with equal values is the signature of the session-log bug.
    pub context_csn_equal: bool,
    /// Confirmed differences (at most `max_report`).
    pub differences: Vec<Difference>,
    /// Confirmed differences beyond `max_report`, counted but not listed.
    pub differences_not_listed: u64,
    /// Differences that did not settle within the retries.
    pub unsettled: Vec<Difference>,
    /// Differing buckets left unexamined (after `max_report` confirmed differences).
    pub unexamined_buckets: u64,
    pub notes: Vec<String>,
    pub stats: Stats,
}

impl Report {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "audit of {}", self.base);
        for (label, side) in [("A", &self.a), ("B", &self.b)] {
            let _ = writeln!(
                s,
                "  {label} {}: {} entries, contextCSN {}",
                side.url,
                side.entries,
                if side.context_csn.is_empty() { "-".into() } else { side.context_csn.join(" ") }
            );
        }
        let confirmed = self.differences.len() as u64 + self.differences_not_listed;
        match self.verdict {
            Verdict::InSync => {
                let _ = writeln!(s, "verdict: in sync");
            }
            Verdict::Diverged => {
                let _ = writeln!(
                    s,
                    "verdict: DIVERGED: {confirmed} {}{}",
                    if confirmed == 1 { "entry differs" } else { "entries differ" },
                    if self.context_csn_equal { " although both servers show the same contextCSN" } else { "" }
                );
            }
            Verdict::Unsettled => {
                let _ = writeln!(
                    s,
                    "verdict: unsettled: no divergence confirmed, but {} entr{} kept changing or lagging{}; audit again",
                    self.unsettled.len(),
                    if self.unsettled.len() == 1 { "y" } else { "ies" },
                    if self.unexamined_buckets > 0 {
                        format!(" and {} differing buckets were not examined", self.unexamined_buckets)
                    } else {
                        String::new()
                    }
                );
            }
        }
        for d in &self.differences {
            let _ = writeln!(s, "  {}", d.describe());
        }
        if self.differences_not_listed > 0 {
            let _ = writeln!(s, "  … and {} more (raise --max-report to list them)", self.differences_not_listed);
        }
        for d in &self.unsettled {
            let _ = writeln!(s, "  unsettled ({}): {}", d.reason.as_deref().unwrap_or("?"), d.describe());
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let st = &self.stats;
        let _ = writeln!(
            s,
            "{} buckets, {} differed ({} split); {} entries re-read, {} differed at first sight; {} rounds, {} searches; {:.2} s",
            st.buckets,
            st.differing_buckets,
            st.split_buckets,
            st.entries_reread,
            st.candidates,
            st.rounds,
            st.searches,
            st.elapsed_ms as f64 / 1000.0
        );
        s
    }
}

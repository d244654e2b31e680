//! `ldap-elector status` (pure part): the Lease's uncovered-window record. A leader that took
//! over after an expiry without verifying the old leader's current contextCSN writes
//! `{term, previous, reason, seconds}` into [`LEASE_ANNOTATION_UNCOVERED`] with its
//! acquisition (issue 15, item 4; docs/operations.md): up to `seconds` of the old leader's
//! acknowledged writes may be missing on it. `status` shows it as a warning.

use k8s_openapi::api::coordination::v1::Lease;
use serde::{Deserialize, Serialize};

use ldap_elector_contract::LEASE_ANNOTATION_UNCOVERED;

/// The last promotion that left a window uncovered, as recorded on the Lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UncoveredWindow {
    /// The term that promotion started.
    pub term: i32,
    /// The holder whose Lease had expired.
    pub previous: String,
    /// `not_configured`, `unreachable` or `behind` (`catch_up::UncoveredReason::label`).
    pub reason: String,
    /// How many seconds of `previous`'s writes may be missing (`None`: not comparable).
    pub seconds: Option<f64>,
}

/// The record on `lease`, if any; `Err` (a warning) when it does not parse.
pub fn uncovered_window(lease: &Lease) -> Option<Result<UncoveredWindow, String>> {
    let value = crate::election::lease::annotation(lease, LEASE_ANNOTATION_UNCOVERED)?;
    Some(
        serde_json::from_str(value)
            .map_err(|e| format!("the Lease annotation {LEASE_ANNOTATION_UNCOVERED} is unreadable ({e}): {value:?}")),
    )
}

/// The record on `lease`, with its warning (or the warning that it does not parse) pushed
/// onto `warnings`.
pub fn assess(lease: &Lease, warnings: &mut Vec<String>) -> Option<UncoveredWindow> {
    match uncovered_window(lease)? {
        Ok(w) => {
            let spec = lease.spec.as_ref();
            let term = spec.map_or(0, |s| s.lease_transitions.unwrap_or(0));
            let holder = spec.and_then(|s| s.holder_identity.as_deref()).filter(|h| !h.is_empty());
            warnings.push(uncovered_warning(&w, Some(term), holder));
            Some(w)
        }
        Err(e) => {
            warnings.push(e);
            None
        }
    }
}

/// The warning for a record `w`, given the Lease's current `term` and `holder`.
pub fn uncovered_warning(w: &UncoveredWindow, term: Option<i32>, holder: Option<&str>) -> String {
    let amount = match w.seconds {
        Some(s) => format!("up to {s:.1} s of its acknowledged writes"),
        None => "an unknown amount of its acknowledged writes (the contextCSNs were not comparable)".into(),
    };
    let who = match (term == Some(w.term), holder) {
        (true, Some(h)) => format!("the leader {h} took over term {}", w.term),
        (true, None) => format!("term {} was taken over", w.term),
        (false, _) => format!("term {} (not the current one) was taken over", w.term),
    };
    if w.previous == crate::election::catch_up::UNKNOWN_PREVIOUS {
        return format!(
            "{who} on a Lease recreated after earlier terms without verifying every other member's current contextCSN ({}): acknowledged writes of the earlier leader may be missing until its server returns; compare with `ldap-elector audit` (docs/operations.md)",
            w.reason
        );
    }
    format!(
        "{who} after {}'s Lease expired without verifying its current contextCSN ({}): {amount} may be missing until {} returns; compare with `ldap-elector audit` (docs/operations.md)",
        w.previous, w.reason, w.previous
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use serde_json::json;

    fn lease(annotation: Option<&str>) -> Lease {
        let mut l = Lease::default();
        if let Some(v) = annotation {
            l.metadata.annotations = Some([(LEASE_ANNOTATION_UNCOVERED.to_string(), v.to_string())].into());
        }
        l
    }

    fn window(seconds: Option<f64>) -> UncoveredWindow {
        UncoveredWindow { term: 7, previous: "ldap-0".into(), reason: "unreachable".into(), seconds }
    }

    #[test]
    fn the_record_is_read_as_the_elector_writes_it() {
        assert_eq!(uncovered_window(&lease(None)), None);
        let written = json!({"term": 7, "previous": "ldap-0", "reason": "unreachable", "seconds": 6.05}).to_string();
        assert_eq!(uncovered_window(&lease(Some(&written))), Some(Ok(window(Some(6.05)))));
        let null = json!({"term": 7, "previous": "ldap-0", "reason": "unreachable", "seconds": null}).to_string();
        assert_eq!(uncovered_window(&lease(Some(&null))), Some(Ok(window(None))));
        let bad = uncovered_window(&lease(Some("{\"term\": \"x\"}"))).unwrap().unwrap_err();
        assert!(bad.contains("is unreadable"), "{bad}");
    }

    #[test]
    fn a_record_is_one_warning_and_no_record_none() {
        let mut warnings = Vec::new();
        assert_eq!(assess(&lease(None), &mut warnings), None);
        assert!(warnings.is_empty());
        let written = json!({"term": 7, "previous": "ldap-0", "reason": "behind", "seconds": 2.5}).to_string();
        let mut held = lease(Some(&written));
        held.spec = Some(LeaseSpec {
            holder_identity: Some("ldap-1".into()),
            lease_transitions: Some(7),
            ..LeaseSpec::default()
        });
        let w = assess(&held, &mut warnings).expect("the record");
        assert_eq!((w.reason.as_str(), w.seconds), ("behind", Some(2.5)));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("the leader ldap-1 took over term 7"), "{warnings:?}");
        assert_eq!(assess(&lease(Some("nonsense")), &mut warnings), None);
        assert!(warnings[1].contains("is unreadable"), "{warnings:?}");
    }

    #[test]
    fn the_warning_names_term_reason_and_seconds() {
        let w = uncovered_warning(&window(Some(6.05)), Some(7), Some("ldap-1"));
        assert!(w.starts_with("the leader ldap-1 took over term 7 after ldap-0's Lease expired"), "{w}");
        assert!(w.contains("(unreachable)") && w.contains("up to 6.0 s of its acknowledged writes"), "{w}");
        let unknown = uncovered_warning(&window(None), Some(7), Some("ldap-1"));
        assert!(unknown.contains("an unknown amount"), "{unknown}");
        let older = uncovered_warning(&window(Some(1.0)), Some(9), Some("ldap-1"));
        assert!(older.starts_with("term 7 (not the current one) was taken over"), "{older}");
        let released = uncovered_warning(&window(Some(1.0)), Some(7), None);
        assert!(released.starts_with("term 7 was taken over after ldap-0's Lease expired"), "{released}");
        let recreated =
            UncoveredWindow { previous: crate::election::catch_up::UNKNOWN_PREVIOUS.into(), ..window(None) };
        let recreated = uncovered_warning(&recreated, Some(7), Some("ldap-1"));
        assert!(recreated.contains("on a Lease recreated after earlier terms"), "{recreated}");
        assert!(recreated.contains("(unreachable)") && !recreated.contains("unknown's"), "{recreated}");
    }
}

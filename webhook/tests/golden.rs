//! Golden admission fixtures in `tests/fixtures/`:
//! - `<case>.review.json`: the AdmissionReview the apiserver sends (defaulted pod, with the
//!   ServiceAccount plugin's `kube-api-access-*` token already added),
//! - `<case>.owner.json`: the StatefulSet the owner lookup returns, or `null`,
//! - `<case>.patch.json`: the JSON patch we answer, decoded; `[]` when none.
//!
//! Regenerate deliberately, then read the diff:
//! `UPDATE_GOLDEN=1 cargo test -p ldap-elector-webhook --test golden`

use std::convert::Infallible;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionResponse;
use ldap_elector::contract;
use ldap_elector_webhook::admission::{review, ReviewError};
use ldap_elector_webhook::inject::{inject, Decision, InjectConfig, SkipReason};
use serde_json::Value;

enum Expect {
    Patched,
    Unchanged,
    Denied(&'static str),
}

fn cfg() -> InjectConfig {
    InjectConfig::new("registry.example/ldap-elector:0.1.0")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn read_json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the admission handler on a case with a lookup that only answers for the right
/// namespace/name, and returns the response with the decoded patch.
fn admit(case: &str) -> (AdmissionResponse, Value) {
    let body = std::fs::read(fixture(&format!("{case}.review.json"))).expect("review fixture");
    let owner: Option<StatefulSet> = serde_json::from_value(read_json(&format!("{case}.owner.json"))).expect("owner");
    let lookup = |ns: &str, name: &str| {
        let hit =
            |s: &StatefulSet| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name);
        Ok::<_, Infallible>(owner.clone().filter(hit))
    };
    let out = review(&body, lookup, &cfg()).expect("fixture is a valid review");
    let response = out.response.expect("review has a response");
    let patch = match &response.patch {
        Some(bytes) => serde_json::from_slice(bytes).expect("patch is JSON"),
        None => Value::Array(vec![]),
    };
    (response, patch)
}

fn check(case: &str, expect: Expect) {
    let (response, patch) = admit(case);
    let request = read_json(&format!("{case}.review.json"))["request"].clone();
    assert_eq!(Value::from(response.uid.clone()), request["uid"], "uid must be echoed");

    match expect {
        Expect::Patched => assert!(response.allowed && response.patch.is_some(), "{case}: expected a patch"),
        Expect::Unchanged => assert!(response.allowed && response.patch.is_none(), "{case}: expected no patch"),
        Expect::Denied(fragment) => {
            assert!(!response.allowed, "{case}: expected a denial");
            let msg = &response.result.message;
            assert!(msg.contains(fragment), "{case}: message {msg:?} lacks {fragment:?}");
        }
    }

    let expected_file = fixture(&format!("{case}.patch.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&patch).expect("serialise") + "\n";
        std::fs::write(&expected_file, text).expect("write golden");
    }
    assert_eq!(patch, read_json(&format!("{case}.patch.json")), "{case}: patch differs from the golden file");

    if response.patch.is_some() {
        // The patch applies to the object the apiserver sent, and our output is a fixed point.
        let mut pod = request["object"].clone();
        let ops: json_patch::Patch = serde_json::from_value(patch).expect("patch decodes");
        json_patch::patch(&mut pod, &ops).expect("patch applies");
        let pod: Pod = serde_json::from_value(pod).expect("patched pod decodes");
        let owner: Option<StatefulSet> = serde_json::from_value(read_json(&format!("{case}.owner.json"))).unwrap();
        let again = inject(&pod, owner.as_ref(), &cfg()).expect("second pass");
        assert_eq!(again, Decision::Skip(SkipReason::AlreadyInjected));
    }
}

macro_rules! golden {
    ($($test:ident: $case:literal => $expect:expr;)*) => {
        $(#[test] fn $test() { check($case, $expect) })*
        const CASES: &[&str] = &[$($case),*];
    };
}

golden! {
    fresh_pod_gets_sidecar_token_and_standby_label: "fresh-pod" => Expect::Patched;
    already_injected_pod_is_left_alone: "already-injected" => Expect::Unchanged;
    sidecar_goes_before_existing_init_containers: "existing-init-containers" => Expect::Patched;
    existing_pod_security_context_only_gains_seccomp: "existing-security-context" => Expect::Patched;
    custom_service_account_is_kept_but_automount_is_off: "custom-service-account" => Expect::Patched;
    pod_whose_statefulset_is_missing_is_allowed_unchanged: "missing-owner" => Expect::Unchanged;
    statefulset_not_opted_in_is_allowed_unchanged: "not-opted-in" => Expect::Unchanged;
    invalid_tuning_annotation_is_denied: "invalid-tuning" => Expect::Denied(contract::ANNOTATION_LEASE_DURATION);
    tuning_annotations_become_env_and_term_is_dropped: "tuning-annotations" => Expect::Patched;
    pod_created_as_leader_becomes_standby: "leader-label-at-creation" => Expect::Patched;
    services_pass_through: "service-passthrough" => Expect::Unchanged;
    pod_updates_pass_through: "pod-update-passthrough" => Expect::Unchanged;
}

#[test]
fn every_fixture_belongs_to_a_case() {
    for entry in std::fs::read_dir(fixture("")).expect("fixtures dir") {
        let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        let case = name.split('.').next().unwrap_or_default();
        assert!(CASES.contains(&case), "fixture {name} belongs to no case in golden.rs");
    }
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let never = |_: &str, _: &str| -> Result<Option<StatefulSet>, Infallible> { Ok(None) };
    let full = std::fs::read(fixture("fresh-pod.review.json")).expect("fixture");
    for body in [&b""[..], b"{", b"[]", b"null", &full[..full.len() / 2]] {
        assert!(matches!(review(body, never, &cfg()), Err(ReviewError::Malformed(_))));
    }
    let empty = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#;
    let err = review(empty, never, &cfg()).expect_err("no request");
    assert!(matches!(err, ReviewError::MissingRequest));
    assert!(!err.into_review().response.expect("response").allowed);
}

#[test]
fn failed_owner_lookup_denies_so_the_controller_retries() {
    let body = std::fs::read(fixture("fresh-pod.review.json")).expect("fixture");
    let out = review(&body, |_, _| Err::<Option<StatefulSet>, _>("cache not synced"), &cfg()).expect("review");
    let response = out.response.expect("response");
    assert!(!response.allowed);
    assert!(response.result.message.contains("cache not synced"), "{}", response.result.message);
}

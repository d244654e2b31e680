//! Golden admission fixtures in `tests/fixtures/`:
//! - `<case>.review.json`: the AdmissionReview the apiserver sends (defaulted pod, with the
//!   ServiceAccount plugin's `kube-api-access-*` token already added),
//! - `<case>.owner.json`: the StatefulSet of the fixture cluster (the pod's owner, or the one
//!   naming a Service in its leader-service annotation), or `null`,
//! - `<case>.services.json` (optional): the Services of the fixture cluster,
//! - `<case>.patch.json`: the JSON patch we answer, decoded; `[]` when none.
//!
//! Regenerate deliberately, then read the diff:
//! `UPDATE_GOLDEN=1 cargo test -p ldap-elector-webhook --test golden`

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use ldap_elector_contract as contract;
use ldap_elector_webhook::admission::{answer, decode, ReviewError};
use ldap_elector_webhook::cluster::FixedCluster;
use ldap_elector_webhook::inject::{inject, InjectConfig, InjectError};
use ldap_elector_webhook::watches::prune;
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

/// The cluster of a case: its owner (`null` for none) and, if the case has one,
/// `<case>.services.json` (a list of Services; none otherwise).
fn cluster(case: &str) -> FixedCluster {
    let owner: Option<StatefulSet> = serde_json::from_value(read_json(&format!("{case}.owner.json"))).expect("owner");
    let services = match fixture(&format!("{case}.services.json")).exists() {
        true => serde_json::from_value(read_json(&format!("{case}.services.json"))).expect("services"),
        false => Vec::new(),
    };
    FixedCluster { statefulsets: owner.into_iter().collect(), services }
}

/// What the handler does with a body: decode it and answer it against `cluster`, through
/// the production [`answer`]. `Err` only when the body is not a review at all.
fn review(body: &[u8], cluster: &FixedCluster) -> Result<AdmissionReview<DynamicObject>, ReviewError> {
    let request = decode(body)?;
    // A fixed cluster answers at once, so no runtime is needed.
    Ok(futures::executor::block_on(answer(&request, cluster, &cfg())).response.into_review())
}

/// Runs admission on `body` against the case's cluster; the response and the decoded patch.
fn admit(case: &str, body: &[u8]) -> (AdmissionResponse, Value) {
    let out = review(body, &cluster(case)).expect("fixture is a valid review");
    let response = out.response.expect("review has a response");
    let patch = match &response.patch {
        Some(bytes) => serde_json::from_slice(bytes).expect("patch is JSON"),
        None => Value::Array(vec![]),
    };
    (response, patch)
}

fn check(case: &str, expect: Expect) {
    let mut review_json = read_json(&format!("{case}.review.json"));
    let (response, patch) = admit(case, &serde_json::to_vec(&review_json).expect("serialise"));
    let request = review_json["request"].clone();
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
        // The patch applies to the object the apiserver sent, and our output is never injected
        // twice: reviewed again, the patched pod is refused as carrying the marker (the webhook,
        // registered with reinvocationPolicy Never, never reviews its own output, so a marked pod
        // at admission came from a client); a patched Service gets no second patch.
        let mut object = request["object"].clone();
        let ops: json_patch::Patch = serde_json::from_value(patch).expect("patch decodes");
        json_patch::patch(&mut object, &ops).expect("patch applies");
        if request["kind"]["kind"] == "Pod" {
            let pod: Pod = serde_json::from_value(object.clone()).expect("patched pod decodes");
            let owner = cluster(case).statefulsets.into_iter().next();
            let again = inject(&pod, owner.as_ref(), &cfg());
            assert!(matches!(again, Err(InjectError::MarkerFromClient)), "{case}: second pass: {again:?}");
        }
        review_json["request"]["object"] = object;
        let (again, _) = admit(case, &serde_json::to_vec(&review_json).expect("serialise"));
        if request["kind"]["kind"] == "Pod" {
            let refused = !again.allowed && again.result.message.contains(contract::ANNOTATION_STATUS);
            assert!(refused && again.patch.is_none(), "{case}: a second pass is not refused: {:?}", again.result);
        } else {
            assert!(again.allowed && again.patch.is_none(), "{case}: a second pass changes something");
        }
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
    pod_arriving_with_the_injection_marker_is_refused: "already-injected" => Expect::Denied("only the ldap-elector webhook sets");
    sidecar_goes_before_existing_init_containers: "existing-init-containers" => Expect::Patched;
    existing_pod_security_context_only_gains_seccomp: "existing-security-context" => Expect::Patched;
    custom_service_account_is_kept_but_automount_is_off: "custom-service-account" => Expect::Patched;
    elector_account_named_by_the_template_is_handled_like_default: "elector-account-named-by-template" => Expect::Patched;
    template_projected_token_of_the_elector_is_denied: "template-projected-token" => Expect::Denied("projects a service-account token");
    pod_whose_statefulset_is_missing_is_allowed_unchanged: "missing-owner" => Expect::Unchanged;
    statefulset_not_opted_in_is_allowed_unchanged: "not-opted-in" => Expect::Unchanged;
    invalid_tuning_annotation_is_denied: "invalid-tuning" => Expect::Denied(contract::ANNOTATION_LEASE_DURATION);
    tuning_annotations_become_env_and_term_is_dropped: "tuning-annotations" => Expect::Patched;
    pod_created_as_leader_becomes_standby: "leader-label-at-creation" => Expect::Patched;
    services_not_named_by_an_opted_in_statefulset_pass_through: "service-passthrough" => Expect::Unchanged;
    write_service_gets_the_leader_selector: "service-gets-leader-selector" => Expect::Patched;
    pod_waits_while_its_write_service_selects_every_pod: "pod-waits-for-write-service" => Expect::Denied("does not select");
    pod_is_injected_once_its_write_service_selects_the_leader: "pod-write-service-ready" => Expect::Patched;
    pod_updates_pass_through: "pod-update-passthrough" => Expect::Unchanged;
    openldap_socket_dir_is_shared_and_fence_and_health_check_injected: "openldap-integration" => Expect::Patched;
    audit_settings_and_the_bind_secret_reach_only_the_sidecar: "audit-bind-secret" => Expect::Patched;
    starttls_and_the_ldap_ca_reach_only_the_sidecar: "audit-tls" => Expect::Patched;
    socket_dir_slapd_already_mounts_is_shared_not_duplicated: "openldap-existing-mount" => Expect::Patched;
    metrics_port_annotation_adds_the_env_and_a_named_container_port: "metrics-port" => Expect::Patched;
    slapd_d_on_a_volume_is_fenced_by_the_last_init_container: "openldap-start-fenced" => Expect::Patched;
    socket_dir_without_suffix_or_health_check_is_denied:
        "openldap-missing-suffix" => Expect::Denied(contract::ANNOTATION_LDAP_SUFFIX);
}

/// The webhook's store holds pruned StatefulSets (`watches::prune`): every case is answered
/// the same from them as from the whole objects.
#[test]
fn every_case_is_answered_the_same_from_pruned_statefulsets() {
    for case in CASES {
        let body = serde_json::to_vec(&read_json(&format!("{case}.review.json"))).expect("serialise");
        let whole = cluster(case);
        let pruned = FixedCluster {
            statefulsets: whole.statefulsets.iter().cloned().map(prune).collect(),
            services: whole.services.clone(),
        };
        let answer = |cluster: &FixedCluster| {
            let response = review(&body, cluster).expect("fixture is a valid review").response.expect("response");
            (response.allowed, response.patch, response.result.message)
        };
        assert_eq!(answer(&pruned), answer(&whole), "{case}");
    }
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
    let full = std::fs::read(fixture("fresh-pod.review.json")).expect("fixture");
    for body in [&b""[..], b"{", b"[]", b"null", &full[..full.len() / 2]] {
        assert!(matches!(review(body, &FixedCluster::default()), Err(ReviewError::Malformed(_))));
    }
    let empty = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#;
    let err = review(empty, &FixedCluster::default()).expect_err("no request");
    assert!(matches!(err, ReviewError::MissingRequest));
    assert!(!err.into_review().response.expect("response").allowed);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// Fuzzing the review decoding and admission: arbitrary bytes are an error, never a panic.
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
        let _ = review(&body, &FixedCluster::default());
    }

    /// ... and so is every fixture review with one byte changed, against its own cluster
    /// (many of these still decode: a changed name, namespace, label or port).
    #[test]
    fn fixture_reviews_with_a_changed_byte_never_panic(
        case in proptest::sample::select(CASES),
        at in proptest::prelude::any::<proptest::sample::Index>(),
        byte in proptest::prelude::any::<u8>(),
    ) {
        let mut body = std::fs::read(fixture(&format!("{case}.review.json"))).expect("fixture");
        let i = at.index(body.len());
        body[i] = byte;
        let _ = review(&body, &cluster(case));
    }
}

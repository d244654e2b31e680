//! Test support of the injection modules: a pod as the API server shows it to webhooks, its
//! owner, and readers of the patched pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use ldap_elector_contract as contract;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::{inject, Decision, InjectConfig, InjectError};

pub(crate) fn cfg() -> InjectConfig {
    InjectConfig::new("example.invalid/ldap-elector:test")
}

pub(crate) fn owner(annotations: &[(&str, &str)]) -> StatefulSet {
    let mut a: BTreeMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    a.insert(contract::ANNOTATION_INJECT.into(), "true".into());
    serde_json::from_value(json!({
        "metadata": {"name": "ldap-server", "namespace": "ns", "uid": "sts-uid", "annotations": a},
        "spec": {"selector": {}, "template": {}}
    }))
    .unwrap()
}

/// A pod as the apiserver shows it to webhooks: defaulted, with the default token.
pub(crate) fn pod_json() -> Value {
    json!({
        "metadata": {
            "name": "ldap-server-0", "namespace": "ns",
            "labels": {"app": "ldap"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ldap-server",
                                 "uid": "sts-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
            "containers": [{"name": "slapd", "image": "slapd", "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/ldap"},
                {"name": "kube-api-access-abcde", "mountPath": contract::TOKEN_MOUNT_PATH, "readOnly": true}]}],
            "volumes": [{"name": "data", "emptyDir": {}},
                        {"name": "kube-api-access-abcde", "projected": {"sources": []}}]
        }
    })
}

pub(crate) fn apply(pod: &Value, decision: &Decision) -> Value {
    let Decision::Patch(patch) = decision else { panic!("expected a patch, got {decision:?}") };
    let mut out = pod.clone();
    json_patch::patch(&mut out, patch).unwrap_or_else(|e| panic!("patch does not apply: {e}\n{patch}"));
    out
}

pub(crate) fn decide(pod: &Value, sts: Option<&StatefulSet>) -> Result<Decision, InjectError> {
    inject(&serde_json::from_value(pod.clone()).unwrap(), sts, &cfg())
}

/// Whether a second pass on our own output refuses it as carrying the marker (the webhook
/// never reviews its own output, so only a client can bring a marked pod): never injected twice.
pub(crate) fn refused_as_marked(pod: &Value, sts: Option<&StatefulSet>) -> bool {
    matches!(decide(pod, sts), Err(InjectError::MarkerFromClient))
}

/// The OpenLDAP integration's annotations on an opted-in owner.
pub(crate) fn ldap_owner(extra: &[(&str, &str)]) -> StatefulSet {
    let mut a = vec![
        (contract::ANNOTATION_LDAPI_SOCKET_DIR, "/run/slapd"),
        (contract::ANNOTATION_LDAP_SUFFIX, "dc=example,dc=org"),
    ];
    a.extend_from_slice(extra);
    owner(&a)
}

pub(crate) fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    let spec = &pod["spec"];
    let all = spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten();
    all.into_iter().find(|c| c["name"] == json!(name)).unwrap_or_else(|| panic!("no container {name}"))
}

pub(crate) fn mounts_at<'a>(pod: &'a Value, name: &str, path: &str) -> Vec<&'a Value> {
    let mounts = container(pod, name)["volumeMounts"].as_array().into_iter().flatten();
    mounts.filter(|m| m["mountPath"] == json!(path)).collect()
}

pub(crate) fn env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    let env = container(pod, contract::SIDECAR_CONTAINER)["env"].as_array()?;
    env.iter().find(|e| e["name"] == json!(name))?["value"].as_str()
}
pub(crate) fn arb_map(keys: &'static [&'static str]) -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    proptest::option::of(proptest::collection::btree_map(
        proptest::sample::select(keys).prop_map(String::from),
        "[a-z0-9]{0,4}",
        0..4,
    ))
}

/// (container count, mount picks) with volume names drawn from a pool that contains
/// several default-token volumes.
pub(crate) fn arb_pod() -> impl Strategy<Value = Value> {
    const VOLUMES: &[&str] = &["data", "kube-api-access-x1", "config", "kube-api-access-zz9"];
    const LABELS: &[&str] = &["app", "ldap-elector.dev/role", "a~b/c"];
    const ANNOTATIONS: &[&str] = &["x/y", "ldap-elector.dev/term", "ldap-elector.dev/status"];
    let mounts = proptest::collection::vec(proptest::sample::select(VOLUMES), 0..4);
    (
        proptest::collection::vec(mounts.clone(), 0..4),
        proptest::option::of(proptest::collection::vec(mounts, 0..3)),
        proptest::option::of(proptest::sample::subsequence(VOLUMES, 0..=VOLUMES.len())),
        arb_map(LABELS),
        arb_map(ANNOTATIONS),
        proptest::option::of(proptest::sample::select(&["", "default", "custom", "ldap-server-ldap-elector"][..])),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(containers, inits, volumes, labels, annotations, sa, automount, sc)| {
            let list = |prefix: &str, v: &[Vec<&str>]| -> Vec<Value> {
                v.iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let mounts: Vec<Value> =
                            m.iter().map(|n| json!({"name": n, "mountPath": format!("/m/{n}")})).collect();
                        json!({"name": format!("{prefix}{i}"), "volumeMounts": mounts})
                    })
                    .collect()
            };
            let mut pod = pod_json();
            pod["metadata"]["labels"] = json!(labels);
            pod["metadata"]["annotations"] = json!(annotations);
            let spec = &mut pod["spec"];
            spec["containers"] = json!(list("c", &containers));
            if let Some(inits) = inits {
                spec["initContainers"] = json!(list("i", &inits));
            }
            match volumes {
                Some(v) => {
                    spec["volumes"] = json!(v.iter().map(|n| json!({"name": n, "emptyDir": {}})).collect::<Vec<_>>())
                }
                None => drop(spec.as_object_mut().unwrap().remove("volumes")),
            }
            match sa {
                Some(sa) => spec["serviceAccountName"] = json!(sa),
                None => drop(spec.as_object_mut().unwrap().remove("serviceAccountName")),
            }
            if let Some(a) = automount {
                spec["automountServiceAccountToken"] = json!(a);
            }
            match sc {
                Some(true) => spec["securityContext"] = json!({"runAsUser": 1000}),
                Some(false) => {}
                None => drop(spec.as_object_mut().unwrap().remove("securityContext")),
            }
            pod
        })
}

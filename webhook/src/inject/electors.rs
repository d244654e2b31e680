//! Never two electors: a pod may already run an elector of its own (Univention Nubus' proof
//! of concept, container `leader-elector`, holds its own Lease and patches the write
//! Service's selector to its pod name). Ours beside it would fight it over the Service.
//!
//! The webhook does not guess what a container does (not by image, not by command): it
//! knows a container is an elector only by name, from the StatefulSet's
//! [`contract::ANNOTATION_REPLACE_CONTAINERS`] (the consumer's word: remove these) or from
//! the webhook's [`InjectConfig::elector_containers`] (the cluster admin's word: containers
//! of this name are electors). A named container that the StatefulSet does not ask to
//! replace is refused with a message naming it and both ways out; asked to replace, it is
//! removed from the pod (the template stays the consumer's, so an opt-out brings it back).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use ldap_elector_contract as contract;

use super::patch::{ptr, PatchOps};
use super::{InjectConfig, InjectError};

/// The containers the StatefulSet asks to replace (trimmed, de-duplicated, in order).
fn replace_list(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    let value = annotations.and_then(|a| a.get(contract::ANNOTATION_REPLACE_CONTAINERS));
    let mut names: Vec<String> = value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    names.dedup();
    names
}

/// Indices (into `spec.containers`, of the incoming pod, highest first) of the elector
/// containers to remove; refuses a pod that would keep one, or an annotation that names a
/// container that must stay.
/// `ldap_containers`: the containers that run slapd (never removed).
pub(super) fn elector_removals(
    annotations: Option<&BTreeMap<String, String>>,
    spec: &PodSpec,
    cfg: &InjectConfig,
    ldap_containers: &[String],
) -> Result<Vec<usize>, InjectError> {
    let replace = replace_list(annotations);
    let refuse = |container: &str, reason: &str| InjectError::CannotReplace {
        container: container.to_string(),
        reason: reason.to_string(),
    };
    for name in &replace {
        if contract::INJECTED_CONTAINERS.contains(&name.as_str()) {
            return Err(refuse(name, "that is ldap-elector's own container"));
        }
        if ldap_containers.contains(name) || spec.containers.first().is_some_and(|c| &c.name == name) {
            return Err(refuse(name, "it runs slapd"));
        }
        if spec.init_containers.iter().flatten().any(|c| &c.name == name) {
            return Err(refuse(name, "it is an init container; remove it from the pod template"));
        }
    }
    let inits = spec.init_containers.iter().flatten().map(|c| &c.name);
    if let Some(name) = inits
        .chain(spec.containers.iter().map(|c| &c.name))
        .find(|n| cfg.elector_containers.contains(n) && !replace.contains(n))
    {
        return Err(InjectError::ForeignElector { container: name.clone() });
    }
    let mut removals: Vec<usize> =
        spec.containers.iter().enumerate().filter(|(_, c)| replace.contains(&c.name)).map(|(i, _)| i).collect();
    if removals.len() == spec.containers.len() && !removals.is_empty() {
        return Err(refuse(&replace.join(","), "the pod would keep no container"));
    }
    removals.reverse();
    Ok(removals)
}

/// Removes the containers at `removals` (incoming indices, highest first). Runs last: no
/// other operation of the patch inserts into `spec.containers`, and the edits of the
/// remaining containers address them by their incoming index.
pub(super) fn remove_containers(ops: &mut PatchOps, removals: &[usize]) {
    for index in removals {
        ops.remove(ptr(&["spec", "containers"]).with_trailing_token(*index));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Decision, InjectError};
    use k8s_openapi::api::core::v1::Pod;
    use ldap_elector_contract as contract;
    use serde_json::{json, Value};

    /// A pod with Nubus' proof-of-concept elector beside slapd.
    fn with_elector() -> Value {
        let mut pod = pod_json();
        let containers = pod["spec"]["containers"].as_array_mut().unwrap();
        containers.push(json!({"name": "leader-elector", "image": "poc", "volumeMounts": [
            {"name": "kube-api-access-abcde", "mountPath": contract::TOKEN_MOUNT_PATH, "readOnly": true}]}));
        containers.push(json!({"name": "tools", "image": "tools"}));
        pod
    }

    #[test]
    fn a_pod_with_an_elector_of_its_own_is_refused_naming_it_and_both_ways_out() {
        let err = decide(&with_elector(), Some(&owner(&[]))).unwrap_err();
        assert!(matches!(err, InjectError::ForeignElector { .. }));
        let text = err.to_string();
        for needle in [
            "\"leader-elector\"",
            "two electors",
            &format!("{}=leader-elector", contract::ANNOTATION_REPLACE_CONTAINERS),
            "remove it from the pod template",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }

    #[test]
    fn an_elector_named_for_replacement_is_removed_and_the_others_stay() {
        let sts = owner(&[(contract::ANNOTATION_REPLACE_CONTAINERS, " leader-elector , absent")]);
        let out = apply(&with_elector(), &decide(&with_elector(), Some(&sts)).unwrap());
        let pod: Pod = serde_json::from_value(out.clone()).unwrap();
        let spec = pod.spec.unwrap();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["slapd", "tools"]);
        assert_eq!(spec.init_containers.unwrap()[0].name, contract::SIDECAR_CONTAINER);
        assert!(refused_as_marked(&out, Some(&sts)));
        // Without the elector in the pod (the consumer dropped it), the annotation is harmless.
        assert!(matches!(decide(&pod_json(), Some(&sts)).unwrap(), Decision::Patch(_)));
    }

    #[test]
    fn slapd_our_own_containers_and_init_containers_are_never_replaced() {
        for name in ["slapd", contract::SIDECAR_CONTAINER, contract::GUARD_CONTAINER] {
            let sts = owner(&[(contract::ANNOTATION_REPLACE_CONTAINERS, name)]);
            let err = decide(&with_elector(), Some(&sts)).unwrap_err();
            assert!(matches!(err, InjectError::CannotReplace { .. }), "{name}: {err}");
        }
        let mut pod = with_elector();
        pod["spec"]["initContainers"] = json!([{"name": "leader-elector", "image": "poc"}]);
        let sts = owner(&[(contract::ANNOTATION_REPLACE_CONTAINERS, "leader-elector")]);
        let err = decide(&pod, Some(&sts)).unwrap_err().to_string();
        assert!(err.contains("init container"), "{err}");
    }
}

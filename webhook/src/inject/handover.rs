//! The hand-over hook of the OpenLDAP integration (issue 15, item 5): slapd's main
//! containers get a `preStop` httpGet to the elector's `/handover`, which the kubelet runs
//! before it stops them and which returns once the elector has handed over (bounded; see the
//! elector's `observe/handover.rs`). A hook of the consumer's own is kept, never overwritten,
//! and reported in [`contract::ANNOTATION_HANDOVER_HOOK`] (docs/openldap.md).

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Lifecycle, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ldap_elector_contract as contract;

use super::patch::{ptr, PatchOps};
use super::InjectError;

/// The hooks to add, resolved against the incoming pod.
#[derive(Debug)]
pub(super) struct HandoverPlan {
    /// slapd's main containers that get the hook: (index, has a `lifecycle`).
    pre_stops: Vec<(usize, bool)>,
    /// slapd containers left with their own `preStop` hook.
    own: Vec<String>,
}

/// The plan for the slapd containers `containers` (list, index, container): only main
/// containers take the hook (init containers take no preStop).
pub(super) fn handover_plan(containers: &[(&'static str, usize, &Container)]) -> HandoverPlan {
    let mut plan = HandoverPlan { pre_stops: Vec::new(), own: Vec::new() };
    for (_, index, c) in containers.iter().filter(|(list, ..)| *list == "containers") {
        match c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            None => plan.pre_stops.push((*index, c.lifecycle.is_some())),
            Some(hook) if is_handover_hook(hook) => {}
            Some(_) => plan.own.push(c.name.clone()),
        }
    }
    plan
}

impl HandoverPlan {
    /// Adds the hooks, on the elector's probe port `probe_port`.
    pub(super) fn apply(&self, ops: &mut PatchOps, probe_port: u16) -> Result<(), InjectError> {
        for (index, has_lifecycle) in &self.pre_stops {
            let mut path = ptr(&["spec", "containers"]);
            path.push_back(*index);
            path.push_back("lifecycle");
            let hook = handover_hook(probe_port);
            if *has_lifecycle {
                path.push_back("preStop");
                ops.set(path, hook, false)?;
            } else {
                ops.set(path, Lifecycle { pre_stop: Some(hook), ..Default::default() }, false)?;
            }
        }
        Ok(())
    }

    /// The value of [`contract::ANNOTATION_HANDOVER_HOOK`]: `None` unless slapd containers
    /// kept their own hook.
    pub(super) fn note(&self, probe_port: u16) -> Option<String> {
        (!self.own.is_empty()).then(|| {
            format!(
                "not set: container(s) {} have their own preStop hook; have it call GET http://localhost:{probe_port}{} \
                 first, or slapd may stop before the elector has handed over (docs/openldap.md)",
                self.own.join(", "),
                contract::PROBE_PATH_HANDOVER
            )
        })
    }
}

/// `GET /handover` on the elector's probe port.
fn handover_hook(probe_port: u16) -> LifecycleHandler {
    LifecycleHandler {
        http_get: Some(HTTPGetAction {
            path: Some(contract::PROBE_PATH_HANDOVER.to_string()),
            port: IntOrString::Int(i32::from(probe_port)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ours already (a template copied from an injected pod): any port, our path.
fn is_handover_hook(hook: &LifecycleHandler) -> bool {
    hook.http_get.as_ref().is_some_and(|h| h.path.as_deref() == Some(contract::PROBE_PATH_HANDOVER))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use ldap_elector_contract as contract;
    use serde_json::{json, Value};

    #[test]
    fn slapd_containers_get_the_hand_over_pre_stop_hook_and_their_own_hooks_are_kept_and_reported() {
        let hook = json!({"httpGet": {"path": contract::PROBE_PATH_HANDOVER, "port": contract::DEFAULT_PROBE_PORT}});
        let note = |out: &Value| out["metadata"]["annotations"].get(contract::ANNOTATION_HANDOVER_HOOK).cloned();
        let pod = pod_json();
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        assert_eq!(container(&out, "slapd")["lifecycle"], json!({"preStop": hook}));
        assert_eq!(note(&out), None);

        // A lifecycle without preStop keeps its postStart and gains the hook; an init
        // container named as slapd gets no hook (init containers take none); a container
        // with its own preStop keeps it, and the pod says so.
        let mut pod = pod_json();
        let post_start = json!({"exec": {"command": ["true"]}});
        let theirs = json!({"exec": {"command": ["slapd-drain"]}});
        pod["spec"]["containers"][0]["lifecycle"] = json!({"postStart": post_start});
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "replica", "image": "x", "lifecycle": {"preStop": theirs}}));
        pod["spec"]["initContainers"] = json!([{"name": "load-config", "image": "x"}]);
        let sts = ldap_owner(&[(contract::ANNOTATION_LDAP_CONTAINER, "slapd,replica,load-config")]);
        let out = apply(&pod, &decide(&pod, Some(&sts)).unwrap());
        assert_eq!(container(&out, "slapd")["lifecycle"], json!({"postStart": post_start, "preStop": hook}));
        assert_eq!(container(&out, "replica")["lifecycle"], json!({"preStop": theirs}), "never overwritten");
        assert_eq!(container(&out, "load-config").get("lifecycle"), None);
        let note = note(&out).expect("the kept hook is reported");
        assert!(note.as_str().unwrap().contains("replica") && note.as_str().unwrap().contains("/handover"), "{note}");
        assert_eq!(out["metadata"]["annotations"][contract::ANNOTATION_STATUS], json!(contract::STATUS_INJECTED));

        // Our own hook (a template copied from an injected pod) is left as it is, unreported.
        let mut pod = pod_json();
        pod["spec"]["containers"][0]["lifecycle"] = json!({"preStop": hook});
        let out = apply(&pod, &decide(&pod, Some(&ldap_owner(&[]))).unwrap());
        assert_eq!(container(&out, "slapd")["lifecycle"], json!({"preStop": hook}));
        assert_eq!(out["metadata"]["annotations"].get(contract::ANNOTATION_HANDOVER_HOOK), None);
    }
}

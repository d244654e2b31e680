//! Fenced pod labelling. Every role label write is a JSON patch that first *tests* the
//! pod's term annotation (or, before the first term, its resourceVersion) as read, then
//! sets the role and the new term. A delayed write from a deposed leader therefore fails
//! instead of relabelling a pod that a newer term has already touched.

use std::time::Duration;

use json_patch::{AddOperation, Patch, PatchOperation, TestOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PatchParams;
use kube::{Api, ResourceExt};
use serde_json::Value;

use ldap_elector_contract::{self as contract, ANNOTATION_TERM, LABEL_ROLE, ROLE_LEADER, ROLE_STANDBY};

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("pod {0} changed since it was read (fenced by a newer term or a concurrent write)")]
    Fenced(String),
    /// A member pod carries a newer term than the one taking office: the Lease was deleted
    /// and created again, and its terms restarted at 1 (the pods remember the old ones).
    #[error("pod {pod} carries term {term}, newer than this one (the Lease was recreated and its terms restarted)")]
    NewerTerm { pod: String, term: i32 },
    #[error("API call timed out after {0:?}")]
    Timeout(Duration),
    #[error("API error on pod {pod}: {source}")]
    Api {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// The role label of a pod, if any.
pub fn role_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(LABEL_ROLE).map(String::as_str)
}

/// The fencing term recorded on a pod, if any.
pub fn term_of(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(ANNOTATION_TERM)?.parse().ok()
}

/// Whether taking office in `term` must rewrite another member `pod`: one still labelled
/// leader, and one whose term is older — a deposed leader's late label write tests the term
/// it read, so only moving every pod's term to the new one makes such a write fail.
pub fn needs_demotion(pod: &Pod, term: i32) -> bool {
    role_of(pod) == Some(ROLE_LEADER) || term_of(pod).is_none_or(|t| t < term)
}

/// The compare-and-set patch that gives `pod` `role` under `term` (pure).
pub fn role_patch(pod: &Pod, role: &str, term: i32) -> Patch {
    let meta = &pod.metadata;
    let current_term = meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_TERM));
    let guard = match current_term {
        Some(value) => test(&["metadata", "annotations", ANNOTATION_TERM], Value::String(value.clone())),
        None => {
            test(&["metadata", "resourceVersion"], Value::String(meta.resource_version.clone().unwrap_or_default()))
        }
    };
    let mut ops = vec![guard];
    ops.push(set_in_map(meta.annotations.is_some(), "annotations", ANNOTATION_TERM, &term.to_string()));
    ops.push(set_in_map(meta.labels.is_some(), "labels", LABEL_ROLE, role));
    Patch(ops)
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn test(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Test(TestOperation { path: pointer(tokens), value })
}

/// `add` sets a member (creating or replacing it); a missing map is added whole.
fn set_in_map(map_exists: bool, map: &str, key: &str, value: &str) -> PatchOperation {
    if map_exists {
        PatchOperation::Add(AddOperation { path: pointer(&["metadata", map, key]), value: Value::String(value.into()) })
    } else {
        PatchOperation::Add(AddOperation {
            path: pointer(&["metadata", map]),
            value: serde_json::json!({ key: value }),
        })
    }
}

/// How many ordinals taking office checks: below the larger of the StatefulSet's `replicas`
/// and this pod's `own` ordinal + 1, at least 2 (a Mirror-Mode pair), and never more than
/// [`contract::MAX_REPLICAS`] (issue 17, item 3: a tenant may write `replicas: 2147483647`).
/// Above the cap the webhook admits no pod of the StatefulSet and the Role names no pod
/// beyond it, so no ordinal beyond it can be a leader this elector could demote; the excess
/// is returned to be logged, not sized by.
pub fn member_count(replicas: i64, own: Option<u32>) -> (u32, Option<contract::ReplicasOutOfRange>) {
    let wanted = replicas.max(own.map_or(0, |o| i64::from(o) + 1)).max(2);
    match contract::bounded_replicas(wanted) {
        Ok(count) => (count, None),
        Err(e) => (contract::MAX_REPLICAS, Some(e)),
    }
}

/// Reads and labels the pods of one StatefulSet; every call bounded by a timeout.
#[derive(Clone)]
pub struct PodLabeler {
    pods: Api<Pod>,
    statefulsets: Api<StatefulSet>,
    statefulset: String,
    identity: String,
    timeout: Duration,
}

impl PodLabeler {
    pub fn new(client: kube::Client, namespace: &str, statefulset: &str, identity: &str, timeout: Duration) -> Self {
        PodLabeler {
            pods: Api::namespaced(client.clone(), namespace),
            statefulsets: Api::namespaced(client, namespace),
            statefulset: statefulset.to_string(),
            identity: identity.to_string(),
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        pod: &str,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T, LabelError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(LabelError::Timeout(self.timeout)),
            Ok(Ok(v)) => Ok(v),
            // A failed `test` op answers 422; a conflict 409: both mean "stale view".
            Ok(Err(kube::Error::Api(e))) if e.code == 409 || e.code == 422 => Err(LabelError::Fenced(pod.into())),
            Ok(Err(source)) => Err(LabelError::Api { pod: pod.into(), source }),
        }
    }

    async fn get(&self, pod: &str) -> Result<Option<Pod>, LabelError> {
        self.bounded(pod, self.pods.get_opt(pod)).await
    }

    async fn set_role(&self, pod: &Pod, role: &str, term: i32) -> Result<(), LabelError> {
        let name = pod.name_any();
        let patch = kube::api::Patch::Json::<()>(role_patch(pod, role, term));
        self.bounded(&name, self.pods.patch(&name, &PatchParams::default(), &patch)).await.map(drop)
    }

    /// The names of the StatefulSet's pods (see [`member_count`]).
    async fn member_names(&self) -> Vec<String> {
        let own = contract::split_pod_name(&self.identity).map(|(_, o)| o);
        let replicas = match self.bounded(&self.statefulset, self.statefulsets.get(&self.statefulset)).await {
            Ok(set) => set.spec.and_then(|s| s.replicas).unwrap_or(1),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the StatefulSet; checking the first two ordinals");
                0
            }
        };
        let (count, refused) = member_count(i64::from(replicas), own);
        if let Some(e) = refused {
            tracing::warn!(statefulset = %self.statefulset, own = ?own, "{e}; checking only the first {count} ordinals");
        }
        (0..count).map(|i| contract::pod_name(&self.statefulset, i)).collect()
    }

    /// Step 1 of taking office in `term`: every other pod becomes standby under `term` (see
    /// [`needs_demotion`]); returns those that were labelled leader. Any failure aborts (we
    /// must not label ourselves then).
    pub async fn demote_others(&self, term: i32) -> Result<Vec<String>, LabelError> {
        let mut others = Vec::new();
        for name in self.member_names().await {
            if name == self.identity {
                continue;
            }
            match self.get(&name).await {
                Ok(Some(pod)) => others.push(pod),
                Ok(None) => continue,
                // Beyond the Role's resourceNames: not a pod of ours that could be leader.
                Err(LabelError::Api { source: kube::Error::Api(e), .. }) if e.code == 403 => continue,
                Err(e) => return Err(e),
            }
        }
        // Never move a pod's term backwards: a newer one means the terms restarted.
        if let Some((pod, newer)) = others.iter().find_map(|p| term_of(p).filter(|t| *t > term).map(|t| (p, t))) {
            return Err(LabelError::NewerTerm { pod: pod.name_any(), term: newer });
        }
        let mut demoted = Vec::new();
        for pod in others.iter().filter(|p| needs_demotion(p, term)) {
            self.set_role(pod, ROLE_STANDBY, term).await?;
            if role_of(pod) == Some(ROLE_LEADER) {
                demoted.push(pod.name_any());
            }
        }
        Ok(demoted)
    }

    /// Step 2: label this pod `role` under `term`, fenced by what we read.
    pub async fn label_self(&self, role: &str, term: i32) -> Result<(), LabelError> {
        let pod = self.own_pod().await?;
        if role_of(&pod) == Some(role) && term_of(&pod) == Some(term) {
            return Ok(());
        }
        if let Some(newer) = term_of(&pod).filter(|t| *t > term) {
            return Err(LabelError::NewerTerm { pod: self.identity.clone(), term: newer });
        }
        self.set_role(&pod, role, term).await
    }

    async fn own_pod(&self) -> Result<Pod, LabelError> {
        self.get(&self.identity).await?.ok_or_else(|| LabelError::Fenced(self.identity.clone()))
    }

    /// The term this pod carries (0 when none).
    pub async fn own_term(&self) -> Result<i32, LabelError> {
        Ok(term_of(&self.own_pod().await?).unwrap_or(0))
    }

    /// Marks this pod standby (best effort; keeps the term it has if it is newer). Returns the
    /// term it carried: a term that was used, whatever the Lease says now.
    pub async fn label_self_standby(&self, term: i32) -> Result<i32, LabelError> {
        let pod = self.own_pod().await?;
        let carried = term_of(&pod).unwrap_or(0);
        if role_of(&pod) != Some(ROLE_STANDBY) {
            self.set_role(&pod, ROLE_STANDBY, term.max(carried)).await?;
        }
        Ok(carried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Option<Value>, annotations: Option<Value>) -> Pod {
        let mut meta = json!({"name": "ldap-0", "resourceVersion": "42"});
        if let Some(l) = labels {
            meta["labels"] = l;
        }
        if let Some(a) = annotations {
            meta["annotations"] = a;
        }
        serde_json::from_value(json!({"metadata": meta})).unwrap()
    }

    fn apply(p: &Pod, patch: &Patch) -> Result<Value, json_patch::PatchError> {
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, patch)?;
        Ok(doc)
    }

    #[test]
    fn patch_tests_the_term_read_and_sets_role_and_new_term() {
        let p = pod(Some(json!({"app": "ldap", LABEL_ROLE: "standby"})), Some(json!({ANNOTATION_TERM: "3"})));
        let patch = role_patch(&p, ROLE_LEADER, 4);
        let text = serde_json::to_string(&patch).unwrap();
        assert!(
            text.contains(r#""op":"test","path":"/metadata/annotations/ldap-elector.dev~1term","value":"3""#),
            "{text}"
        );
        let doc = apply(&p, &patch).unwrap();
        assert_eq!(doc["metadata"]["labels"][LABEL_ROLE], "leader");
        assert_eq!(doc["metadata"]["labels"]["app"], "ldap");
        assert_eq!(doc["metadata"]["annotations"][ANNOTATION_TERM], "4");
    }

    #[test]
    fn a_delayed_write_from_a_deposed_term_fails() {
        let read_by_old_leader = pod(Some(json!({LABEL_ROLE: "leader"})), Some(json!({ANNOTATION_TERM: "3"})));
        let stale = role_patch(&read_by_old_leader, ROLE_LEADER, 3);
        // Meanwhile term 4 demoted the pod.
        let now = pod(Some(json!({LABEL_ROLE: "standby"})), Some(json!({ANNOTATION_TERM: "4"})));
        assert!(apply(&now, &stale).is_err());
    }

    /// Issue 15, item 6: a deposed leader read its pod (standby, term 3) to take office in
    /// term 4, and its label write is delayed past the next term's demotion.
    #[test]
    fn a_late_leader_write_of_an_old_term_fails_after_the_next_term_took_office() {
        let read_by_old_leader = pod(Some(json!({LABEL_ROLE: "standby"})), Some(json!({ANNOTATION_TERM: "3"})));
        let late = role_patch(&read_by_old_leader, ROLE_LEADER, 4);
        assert!(needs_demotion(&read_by_old_leader, 5), "term 5 must move the standby's term too");
        let demoted = apply(&read_by_old_leader, &role_patch(&read_by_old_leader, ROLE_STANDBY, 5)).unwrap();
        let demoted: Pod = serde_json::from_value(demoted).unwrap();
        assert!(apply(&demoted, &late).is_err(), "the late write of term 4 must fail");
        assert!(!needs_demotion(&demoted, 5), "a pod already in the new term needs nothing");
        let leader = pod(Some(json!({LABEL_ROLE: "leader"})), Some(json!({ANNOTATION_TERM: "5"})));
        assert!(needs_demotion(&leader, 5), "a leader label is always removed");
        assert!(needs_demotion(&pod(None, None), 1), "a pod without a term gets one");
    }

    #[test]
    fn without_a_term_the_patch_is_guarded_by_resource_version_and_creates_maps() {
        let p = pod(None, None);
        let patch = role_patch(&p, ROLE_STANDBY, 1);
        let doc = apply(&p, &patch).unwrap();
        assert_eq!(doc["metadata"]["labels"][LABEL_ROLE], "standby");
        assert_eq!(doc["metadata"]["annotations"][ANNOTATION_TERM], "1");
        let mut changed = p.clone();
        changed.metadata.resource_version = Some("43".into());
        assert!(apply(&changed, &patch).is_err());
    }

    #[test]
    fn the_members_are_the_replicas_or_the_own_ordinal_at_least_a_pair() {
        assert_eq!(member_count(3, Some(0)), (3, None));
        assert_eq!(member_count(1, Some(4)), (5, None), "a pod beyond the count (scaling down) still counts");
        assert_eq!(member_count(0, None), (2, None));
        assert_eq!(member_count(-1, Some(0)), (2, None));
        let max = contract::MAX_REPLICAS;
        assert_eq!(member_count(i64::from(max), Some(max - 1)), (max, None));
    }

    /// Issue 17, item 3: the list is never sized by a count a tenant wrote.
    #[test]
    fn a_replica_count_of_two_to_the_31_is_capped_and_reported() {
        let max = contract::MAX_REPLICAS;
        for (replicas, own) in [(1_i64 << 31, Some(0)), (i64::from(i32::MAX), Some(1)), (2, Some(u32::MAX))] {
            let (count, refused) = member_count(replicas, own);
            assert_eq!(count, max, "{replicas}/{own:?}");
            let e = refused.expect("the excess is reported");
            assert!(e.replicas > i64::from(max), "{e:?}");
            assert!(e.to_string().contains(&format!("at most {max}")), "{e}");
        }
        assert_eq!(member_count(i64::from(max) + 1, Some(0)).1.map(|e| e.replicas), Some(i64::from(max) + 1));
    }

    #[test]
    fn reads_role_and_term() {
        let p = pod(Some(json!({LABEL_ROLE: "leader"})), Some(json!({ANNOTATION_TERM: "7"})));
        assert_eq!((role_of(&p), term_of(&p)), (Some("leader"), Some(7)));
        assert_eq!((role_of(&pod(None, None)), term_of(&pod(None, None))), (None, None));
    }
}

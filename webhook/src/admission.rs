//! The admission handler: AdmissionReview bytes in, AdmissionReview out. Pure apart from
//! one log line per review; the owner lookup is passed in, so the HTTP layer can back it
//! by a reflector cache (sync, via [`review`]) or an API GET (async: [`decode`], await
//! the owner named by [`owner_to_look_up`], then [`respond`]).

use std::fmt::Display;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

use crate::inject::{self, Decision, InjectConfig};

/// A body that is not an AdmissionReview with a request. There is no request uid to
/// answer to, so the HTTP layer should reply 400 (or send [`ReviewError::into_review`]).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("malformed AdmissionReview: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("AdmissionReview carries no request")]
    MissingRequest,
}

impl ReviewError {
    /// An `invalid` review (allowed: false, no uid) for callers that answer 200 anyway.
    pub fn into_review(self) -> AdmissionReview<DynamicObject> {
        AdmissionResponse::invalid(self).into_review()
    }
}

/// Decodes the HTTP body. Size limits are the HTTP layer's job.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    review.try_into().map_err(|_| ReviewError::MissingRequest)
}

/// `(namespace, statefulset)` to look up: only for Pod CREATE with a StatefulSet controller.
pub fn owner_to_look_up(req: &AdmissionRequest<DynamicObject>) -> Option<(String, String)> {
    if !is_pod_create(req) {
        return None;
    }
    let meta = &req.object.as_ref()?.metadata;
    let name = inject::owner_statefulset_name(meta)?;
    let namespace = req.namespace.as_ref().or(meta.namespace.as_ref())?;
    Some((namespace.clone(), name.to_string()))
}

/// The response to `req`, given the owner lookup's outcome (`Ok(None)`: not found or not
/// looked up). Everything but a Pod CREATE is allowed unchanged. A failed lookup or an
/// injection error denies: the StatefulSet controller retries pod creation, whereas a pod
/// admitted without its elector would run slapd unfenced.
pub fn respond<E: Display>(
    req: &AdmissionRequest<DynamicObject>,
    owner: Result<Option<StatefulSet>, E>,
    cfg: &InjectConfig,
) -> AdmissionResponse {
    let allow = AdmissionResponse::from(req);
    if !is_pod_create(req) {
        tracing::debug!(uid = %req.uid, kind = %req.kind.kind, op = ?req.operation, "passed through");
        return allow;
    }
    let namespace = req.namespace.as_deref().unwrap_or_default();
    let pod = match req.object.clone().map(DynamicObject::try_parse::<Pod>) {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => return deny(req, namespace, "", format!("cannot decode the Pod: {e}")),
        None => return deny(req, namespace, "", "the CREATE request carries no Pod".to_string()),
    };
    let pod_name = pod.metadata.name.as_deref().unwrap_or(&req.name);
    let statefulset = inject::owner_statefulset_name(&pod.metadata).unwrap_or_default();
    let owner = match owner {
        Ok(owner) => owner,
        Err(e) => {
            let msg = format!("cannot look up StatefulSet {namespace}/{statefulset}: {e}; retry");
            return deny(req, namespace, pod_name, msg);
        }
    };
    match inject::inject(&pod, owner.as_ref(), cfg) {
        Ok(Decision::Skip(reason)) => {
            tracing::info!(namespace, pod = pod_name, statefulset, reason = reason.as_str(), "not injected");
            allow
        }
        Ok(Decision::Patch(patch)) => {
            let ops = patch.0.len();
            match allow.with_patch(patch) {
                Ok(res) => {
                    tracing::info!(namespace, pod = pod_name, statefulset, ops, "injected");
                    res
                }
                Err(e) => deny(req, namespace, pod_name, e.to_string()),
            }
        }
        Err(e) => deny(req, namespace, pod_name, e.to_string()),
    }
}

/// Decode, look up the owner synchronously, respond. `Err` only when the body is not a
/// review at all (see [`ReviewError`]).
pub fn review<E: Display>(
    body: &[u8],
    lookup_owner: impl FnOnce(&str, &str) -> Result<Option<StatefulSet>, E>,
    cfg: &InjectConfig,
) -> Result<AdmissionReview<DynamicObject>, ReviewError> {
    let req = decode(body)?;
    let owner = match owner_to_look_up(&req) {
        Some((namespace, name)) => lookup_owner(&namespace, &name),
        None => Ok(None),
    };
    Ok(respond(&req, owner, cfg).into_review())
}

fn is_pod_create(req: &AdmissionRequest<DynamicObject>) -> bool {
    req.kind.group.is_empty()
        && req.kind.kind == "Pod"
        && req.operation == Operation::Create
        && req.sub_resource.as_deref().unwrap_or_default().is_empty()
}

fn deny(req: &AdmissionRequest<DynamicObject>, namespace: &str, pod: &str, msg: String) -> AdmissionResponse {
    tracing::warn!(namespace, pod, error = %msg, "denied");
    AdmissionResponse::from(req).deny(format!("ldap-elector: {msg}"))
}

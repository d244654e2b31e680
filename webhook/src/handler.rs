//! Wires admission into the generic server: `POST /mutate` → decode → owner lookup
//! (cache, then live GET) → [`admission::respond`] → JSON. A body that is no
//! AdmissionReview gets `400` with a text body saying so; everything else gets `200` and
//! an AdmissionReview (a failed owner lookup is a *denial*, so the controller retries).
//!
//! One structured log line per review, with the fields an on-call engineer filters by:
//! `namespace`, `pod`, `generate_name`, `statefulset`, `outcome`
//! (`injected`/`skipped`/`denied`/`passed`), `reason`, `duration_ms`. `admission.rs` logs
//! its own per-decision lines too; `main` filters those to errors by default so there is
//! one line per review (set `WEBHOOK_LOG=ldap_elector_webhook::admission=debug` to see them).

use std::future::Future;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Bytes;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;

use crate::admission;
use crate::inject::{self, Decision, InjectConfig};
use crate::owners::{OwnerError, Owners};
use crate::server::Handler;

/// The admission endpoint; the MutatingWebhookConfiguration's `clientConfig` path.
pub const MUTATE_PATH: &str = "/mutate";

/// The `/mutate` handler over an owner lookup.
pub struct AdmissionHandler<O> {
    cfg: InjectConfig,
    owners: O,
}

impl<O: Owners> AdmissionHandler<O> {
    pub fn new(cfg: InjectConfig, owners: O) -> Self {
        Self { cfg, owners }
    }

    async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        if req.uri().path() != MUTATE_PATH {
            return text(StatusCode::NOT_FOUND, format!("not found: the admission endpoint is POST {MUTATE_PATH}"));
        }
        if req.method() != Method::POST {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("{MUTATE_PATH} only accepts POST"));
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let started = Instant::now();
        let request = match admission::decode(req.body()) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%error, bytes = req.body().len(), duration_ms = ms(started), outcome = "malformed", "admission review");
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{error}; expected an admission.k8s.io/v1 AdmissionReview carrying a request"),
                );
            }
        };
        let owner = match admission::owner_to_look_up(&request) {
            Some((namespace, name)) => {
                self.owners.get(&namespace, &name, owner_uid(&request, &name).as_deref()).await.map_err(LookupError)
            }
            None => Ok(None),
        };
        let kept_owner = owner.as_ref().ok().cloned().flatten();
        let response = admission::respond(&request, owner, &self.cfg);
        log_review(&request, &response, kept_owner.as_ref(), &self.cfg, started);
        match serde_json::to_vec(&response.into_review()) {
            Ok(body) => {
                let mut out = Response::new(Bytes::from(body));
                out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                out
            }
            Err(error) => {
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot serialise the AdmissionReview: {error}"))
            }
        }
    }
}

impl<O: Owners> Handler for AdmissionHandler<O> {
    fn call(&self, req: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send {
        self.handle(req)
    }
}

/// The lookup error as the denial message shows it.
#[derive(Debug)]
struct LookupError(OwnerError);

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// UID of the pod's controlling StatefulSet `name`, so a stale cache entry of a deleted and
/// recreated StatefulSet is not mistaken for the owner.
fn owner_uid(request: &AdmissionRequest<DynamicObject>, name: &str) -> Option<String> {
    let refs = request.object.as_ref()?.metadata.owner_references.as_ref()?;
    refs.iter().find(|r| r.controller == Some(true) && r.kind == "StatefulSet" && r.name == name).map(|r| r.uid.clone())
}

fn log_review(
    request: &AdmissionRequest<DynamicObject>,
    response: &AdmissionResponse,
    owner: Option<&StatefulSet>,
    cfg: &InjectConfig,
    started: Instant,
) {
    let meta = request.object.as_ref().map(|o| &o.metadata);
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let pod = meta.and_then(|m| m.name.as_deref()).unwrap_or(&request.name);
    let generate_name = meta.and_then(|m| m.generate_name.as_deref()).unwrap_or_default();
    let statefulset = meta.and_then(inject::owner_statefulset_name).unwrap_or_default();
    let is_pod_create = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.as_deref().unwrap_or_default().is_empty();
    let (outcome, reason) = if !response.allowed {
        ("denied", response.result.message.clone())
    } else if response.patch.is_some() {
        ("injected", String::new())
    } else if is_pod_create {
        ("skipped", skip_reason(request, owner, cfg))
    } else {
        ("passed", format!("{} {:?} is not a Pod CREATE", request.kind.kind, request.operation))
    };
    let duration_ms = ms(started);
    let (uid, operation, dry_run) = (&request.uid, &request.operation, request.dry_run);
    if outcome == "denied" {
        tracing::warn!(
            uid,
            namespace,
            pod,
            generate_name,
            statefulset,
            ?operation,
            dry_run,
            outcome,
            reason,
            duration_ms,
            "admission review"
        );
    } else {
        tracing::info!(
            uid,
            namespace,
            pod,
            generate_name,
            statefulset,
            ?operation,
            dry_run,
            outcome,
            reason,
            duration_ms,
            "admission review"
        );
    }
}

/// Why an allowed Pod CREATE got no patch (inject is pure and cheap to ask again).
fn skip_reason(request: &AdmissionRequest<DynamicObject>, owner: Option<&StatefulSet>, cfg: &InjectConfig) -> String {
    let pod = request.object.clone().map(DynamicObject::try_parse::<Pod>);
    match pod.map(|p| p.map(|p| inject::inject(&p, owner, cfg))) {
        Some(Ok(Ok(Decision::Skip(reason)))) => reason.as_str().to_string(),
        _ => String::new(),
    }
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const REVIEW: &[u8] = include_bytes!("../tests/fixtures/fresh-pod.review.json");
    const OWNER: &[u8] = include_bytes!("../tests/fixtures/fresh-pod.owner.json");

    /// Answers from a fixed result and records what it was asked.
    struct Fake {
        answer: fn() -> Result<Option<StatefulSet>, OwnerError>,
        asked: Mutex<Vec<(String, String, Option<String>)>>,
    }

    impl Owners for Fake {
        async fn get(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<Option<StatefulSet>, OwnerError> {
            self.asked.lock().unwrap().push((ns.into(), name.into(), uid.map(String::from)));
            (self.answer)()
        }
    }

    fn handler(answer: fn() -> Result<Option<StatefulSet>, OwnerError>) -> AdmissionHandler<Fake> {
        let cfg = InjectConfig::new("registry.example/ldap-elector:0.1.0");
        AdmissionHandler::new(cfg, Fake { answer, asked: Mutex::new(Vec::new()) })
    }

    fn owner() -> Result<Option<StatefulSet>, OwnerError> {
        Ok(Some(serde_json::from_slice(OWNER).unwrap()))
    }

    fn post(path: &str, body: &[u8]) -> Request<Bytes> {
        Request::post(path).body(Bytes::copy_from_slice(body)).unwrap()
    }

    fn review_of(response: &Response<Bytes>) -> AdmissionResponse {
        assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_slice(response.body()).unwrap();
        review.response.unwrap()
    }

    #[tokio::test]
    async fn opted_in_pod_gets_a_patch_and_the_owner_uid_is_checked() {
        let h = handler(owner);
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(response.allowed && response.patch.is_some());
        assert_eq!(response.uid, "7d3e5b90-0000-4000-8000-000000000001");
        let asked = h.owners.asked.lock().unwrap().clone();
        let uid = Some("5f0c6a1e-1111-4c1e-9a55-0d6c0e1b0001".to_string());
        assert_eq!(asked, vec![("ldap".to_string(), "ldap-server".to_string(), uid)]);
    }

    #[tokio::test]
    async fn malformed_review_gets_400_with_a_clear_text() {
        let h = handler(owner);
        for body in [&b"{"[..], b"[]", br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#] {
            let response = h.handle(post(MUTATE_PATH, body)).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let text = String::from_utf8_lossy(response.body()).into_owned();
            assert!(text.contains("AdmissionReview"), "{text}");
        }
        assert!(h.owners.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn wrong_path_or_method_is_refused() {
        let h = handler(owner);
        assert_eq!(h.handle(post("/validate", REVIEW)).await.status(), StatusCode::NOT_FOUND);
        let get = Request::get(MUTATE_PATH).body(Bytes::new()).unwrap();
        let response = h.handle(get).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }

    #[tokio::test]
    async fn owner_lookup_error_denies_so_the_controller_retries() {
        let h = handler(|| Err(OwnerError::Timeout(crate::owners::LIVE_GET_TIMEOUT)));
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(!response.allowed);
        assert!(response.result.message.contains("retry"), "{}", response.result.message);
    }

    #[tokio::test]
    async fn missing_owner_is_allowed_unchanged() {
        let h = handler(|| Ok(None));
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(response.allowed && response.patch.is_none());
    }
}

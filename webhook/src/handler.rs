//! Wires admission into the generic server: `POST /mutate` → decode → [`admission::answer`]
//! (which reads the cluster through [`Cluster`]) → JSON. A body that is no AdmissionReview
//! gets `400` with a text body saying so; everything else gets `200` and an AdmissionReview
//! (a failed lookup is a *denial*, so the controller retries).
//!
//! One structured log line per review, with the fields an on-call engineer filters by:
//! `namespace`, `name`, `kind`, `statefulset`, `outcome` (`injected`/`skipped`/
//! `selector-added`/`passed`/`denied`), `reason`, `duration_ms`; denials at `warn`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Bytes;
use kube::core::admission::AdmissionRequest;
use kube::core::DynamicObject;

use crate::admission::{self, Answer, Outcome};
use crate::cluster::Cluster;
use crate::inject::InjectConfig;
use crate::metrics::{WebhookMetrics, KIND_UNKNOWN, OUTCOME_MALFORMED};
use crate::server::Handler;

/// The admission endpoint; the MutatingWebhookConfiguration's `clientConfig` path.
pub const MUTATE_PATH: &str = "/mutate";

/// The `/mutate` handler over the cluster lookups.
pub struct AdmissionHandler<C> {
    cfg: InjectConfig,
    cluster: C,
    metrics: Arc<WebhookMetrics>,
}

impl<C: Cluster> AdmissionHandler<C> {
    pub fn new(cfg: InjectConfig, cluster: C) -> Self {
        Self { cfg, cluster, metrics: Arc::default() }
    }

    /// Counts reviews into `metrics` (served on the health port).
    pub fn with_metrics(mut self, metrics: Arc<WebhookMetrics>) -> Self {
        self.metrics = metrics;
        self
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
                tracing::warn!(%error, bytes = req.body().len(), duration_ms = ms(started), outcome = OUTCOME_MALFORMED, "admission review");
                self.metrics.review(KIND_UNKNOWN, OUTCOME_MALFORMED, started.elapsed());
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{error}; expected an admission.k8s.io/v1 AdmissionReview carrying a request"),
                );
            }
        };
        let answer = admission::answer(&request, &self.cluster, &self.cfg).await;
        log_review(&request, &answer, started);
        self.metrics.review(&request.kind.kind, answer.outcome.as_str(), started.elapsed());
        match serde_json::to_vec(&answer.response.into_review()) {
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

impl<C: Cluster> Handler for AdmissionHandler<C> {
    fn call(&self, req: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send {
        self.handle(req)
    }
}

fn log_review(request: &AdmissionRequest<DynamicObject>, answer: &Answer, started: Instant) {
    let meta = request.object.as_ref().map(|o| &o.metadata);
    let namespace = request.namespace.as_deref().unwrap_or_default();
    // A pod being created has only a generateName at this point, if no name.
    let name = meta.and_then(|m| m.name.as_deref().or(m.generate_name.as_deref())).unwrap_or(&request.name);
    let (uid, kind, operation, dry_run) = (&request.uid, &request.kind.kind, &request.operation, request.dry_run);
    let (statefulset, outcome, reason) = (&answer.statefulset, answer.outcome.as_str(), &answer.reason);
    let duration_ms = ms(started);
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                uid,
                namespace,
                name,
                kind,
                ?operation,
                dry_run,
                statefulset,
                outcome,
                reason,
                duration_ms,
                "admission review"
            )
        };
    }
    if answer.outcome == Outcome::Denied {
        line!(warn)
    } else {
        line!(info)
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
    use crate::cluster::{LookupError, LIVE_GET_TIMEOUT};
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    use kube::core::admission::AdmissionResponse;
    use ldap_elector_contract as contract;
    use serde_json::json;
    use std::sync::Mutex;

    const REVIEW: &[u8] = include_bytes!("../tests/fixtures/fresh-pod.review.json");
    const OWNER: &[u8] = include_bytes!("../tests/fixtures/fresh-pod.owner.json");
    const SERVICE_REVIEW: &[u8] = include_bytes!("../tests/fixtures/service-passthrough.review.json");
    /// The write Service named by the owner fixture's leader-service annotation.
    const PRIMARY: &str = "ldap-server-primary";
    /// The label the owner fixture selects and labels its pods by (`ldap-server`).
    const OWNER_LABEL: &str = "app.kubernetes.io/name";

    /// Answers from fixed results and records what it was asked.
    struct Fake {
        owner: fn() -> Result<Option<StatefulSet>, LookupError>,
        services: fn() -> Result<Vec<Service>, LookupError>,
        asked: Mutex<Vec<String>>,
    }

    impl Cluster for Fake {
        async fn statefulset(
            &self,
            ns: &str,
            name: &str,
            uid: Option<&str>,
        ) -> Result<Option<StatefulSet>, LookupError> {
            self.asked.lock().unwrap().push(format!("statefulset {ns}/{name} uid {uid:?}"));
            (self.owner)()
        }

        fn statefulsets(&self, ns: &str) -> Vec<StatefulSet> {
            self.asked.lock().unwrap().push(format!("statefulsets {ns}"));
            (self.owner)().ok().flatten().into_iter().collect()
        }

        async fn services(&self, ns: &str, sts: &str, names: &[String]) -> Result<Vec<Service>, LookupError> {
            self.asked.lock().unwrap().push(format!("services {ns}/{names:?} of {sts}"));
            (self.services)()
        }
    }

    fn handler(
        owner: fn() -> Result<Option<StatefulSet>, LookupError>,
        services: fn() -> Result<Vec<Service>, LookupError>,
    ) -> AdmissionHandler<Fake> {
        let cfg = InjectConfig::new("registry.example/ldap-elector:0.1.0");
        AdmissionHandler::new(cfg, Fake { owner, services, asked: Mutex::new(Vec::new()) })
    }

    fn owner() -> Result<Option<StatefulSet>, LookupError> {
        Ok(Some(serde_json::from_slice(OWNER).unwrap()))
    }

    fn service(selector: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": PRIMARY, "namespace": "ldap"}, "spec": {"selector": selector}}),
        )
        .unwrap()
    }

    fn selecting_leader() -> Result<Vec<Service>, LookupError> {
        Ok(vec![service(json!({OWNER_LABEL: "ldap-server", contract::LABEL_ROLE: contract::ROLE_LEADER}))])
    }

    fn selecting_all() -> Result<Vec<Service>, LookupError> {
        Ok(vec![service(json!({OWNER_LABEL: "ldap-server"}))])
    }

    fn no_services() -> Result<Vec<Service>, LookupError> {
        Ok(vec![])
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
    async fn opted_in_pod_gets_a_patch_once_its_write_service_selects_the_leader() {
        let h = handler(owner, selecting_leader);
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(response.allowed && response.patch.is_some());
        assert_eq!(response.uid, "7d3e5b90-0000-4000-8000-000000000001");
        let asked = h.cluster.asked.lock().unwrap().clone();
        let uid = "5f0c6a1e-1111-4c1e-9a55-0d6c0e1b0001";
        let expected = [
            format!("statefulset ldap/ldap-server uid Some(\"{uid}\")"),
            format!("services ldap/[\"{PRIMARY}\"] of ldap-server"),
        ];
        assert_eq!(asked, expected);
    }

    #[tokio::test]
    async fn a_missing_write_service_does_not_hold_pods_back() {
        // It gets the selector at its own admission.
        let response = review_of(&handler(owner, no_services).handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(response.allowed && response.patch.is_some());
    }

    #[tokio::test]
    async fn pods_wait_while_the_write_service_selects_every_pod() {
        let response = review_of(&handler(owner, selecting_all).handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(!response.allowed);
        let msg = &response.result.message;
        assert!(msg.contains(PRIMARY) && msg.contains(contract::LABEL_ROLE) && msg.contains("retry"), "{msg}");

        let failing = || Err(LookupError::Timeout(LIVE_GET_TIMEOUT));
        let response = review_of(&handler(owner, failing).handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(!response.allowed, "unknown Service state: refuse, the controller retries");
    }

    #[tokio::test]
    async fn a_write_service_gets_the_leader_selector_at_admission() {
        let h = handler(owner, no_services);
        let response = review_of(&h.handle(post(MUTATE_PATH, SERVICE_REVIEW)).await);
        assert!(response.allowed);
        let patch: json_patch::Patch = serde_json::from_slice(response.patch.as_deref().expect("a patch")).unwrap();
        let mut object = admission::decode(SERVICE_REVIEW).unwrap().object.map(serde_json::to_value).unwrap().unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
        assert_eq!(object["spec"]["selector"][contract::LABEL_ROLE], json!(contract::ROLE_LEADER));
        assert_eq!(object["metadata"]["labels"][contract::LABEL_STATEFULSET], json!("ldap-server"));

        // A Service no opted-in StatefulSet names passes unchanged.
        let response = review_of(&handler(|| Ok(None), no_services).handle(post(MUTATE_PATH, SERVICE_REVIEW)).await);
        assert!(response.allowed && response.patch.is_none());
    }

    #[tokio::test]
    async fn malformed_review_gets_400_with_a_clear_text() {
        let h = handler(owner, no_services);
        for body in [&b"{"[..], b"[]", br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#] {
            let response = h.handle(post(MUTATE_PATH, body)).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let text = String::from_utf8_lossy(response.body()).into_owned();
            assert!(text.contains("AdmissionReview"), "{text}");
        }
        assert!(h.cluster.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn wrong_path_or_method_is_refused() {
        let h = handler(owner, no_services);
        assert_eq!(h.handle(post("/validate", REVIEW)).await.status(), StatusCode::NOT_FOUND);
        let get = Request::get(MUTATE_PATH).body(Bytes::new()).unwrap();
        let response = h.handle(get).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }

    #[tokio::test]
    async fn owner_lookup_error_denies_so_the_controller_retries() {
        let h = handler(|| Err(LookupError::Timeout(LIVE_GET_TIMEOUT)), no_services);
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(!response.allowed);
        assert!(response.result.message.contains("retry"), "{}", response.result.message);
    }

    #[tokio::test]
    async fn pods_of_an_opted_in_statefulset_above_the_replica_maximum_are_refused_saying_why() {
        fn huge() -> Result<Option<StatefulSet>, LookupError> {
            let mut sts: StatefulSet = serde_json::from_slice(OWNER).unwrap();
            sts.spec.as_mut().unwrap().replicas = Some(i32::MAX);
            Ok(Some(sts))
        }
        let h = handler(huge, selecting_leader);
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(!response.allowed);
        let msg = &response.result.message;
        assert!(
            msg.contains("2147483647 replicas") && msg.contains(&format!("at most {}", contract::MAX_REPLICAS)),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn missing_owner_is_allowed_unchanged() {
        let h = handler(|| Ok(None), no_services);
        let response = review_of(&h.handle(post(MUTATE_PATH, REVIEW)).await);
        assert!(response.allowed && response.patch.is_none());
    }
}

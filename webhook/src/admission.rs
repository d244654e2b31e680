//! Admission: a decoded AdmissionRequest in, an [`Answer`] (the AdmissionResponse plus what
//! the one log line per review says) out. What it reads from the cluster comes through
//! [`Cluster`]; the decisions themselves are the pure functions [`pod_answer`],
//! [`gate_answer`] and [`service_answer`].
//!
//! - Pod CREATE owned by an opted-in StatefulSet: the sidecar is injected
//!   ([`inject::inject`]), unless the StatefulSet's write Services do not select the leader
//!   yet: then the pod is refused (see [`crate::leader_service`]) and the StatefulSet
//!   controller retries it. A failed lookup or an injection error also refuses: a pod
//!   admitted without its elector would run slapd unfenced. So does a replica count above
//!   [`contract::MAX_REPLICAS`] (issue 17, item 3).
//! - Service CREATE/UPDATE named by an opted-in StatefulSet's leader-service annotation:
//!   the leader selector is added, so a Service created or replaced after its StatefulSet
//!   (e.g. `kubectl apply` of a manifest without it) never selects every pod.
//! - Everything else is allowed unchanged.

use std::fmt::Display;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use ldap_elector_contract as contract;

use crate::cluster::Cluster;
use crate::inject::{self, Decision, InjectConfig};
use crate::leader_service;

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

/// What happened to a review, for its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A pod got the sidecar.
    Injected,
    /// A pod CREATE allowed unchanged (not opted in, owner missing, ...).
    Skipped,
    /// A Service got the leader selector.
    SelectorAdded,
    /// Not ours to look at (other kinds and operations), allowed unchanged.
    Passed,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::SelectorAdded => "selector-added",
            Self::Passed => "passed",
            Self::Denied => "denied",
        }
    }
}

/// The response to one review and what its log line says.
#[derive(Clone, Debug)]
pub struct Answer {
    pub response: AdmissionResponse,
    pub outcome: Outcome,
    /// Why (a skip, a denial, a pass-through); empty when the outcome says it all.
    pub reason: String,
    /// The StatefulSet concerned ('' if none).
    pub statefulset: String,
}

impl Answer {
    fn allow(req: &AdmissionRequest<DynamicObject>, outcome: Outcome, reason: String, statefulset: &str) -> Self {
        Self { response: AdmissionResponse::from(req), outcome, reason, statefulset: statefulset.to_string() }
    }

    fn deny(req: &AdmissionRequest<DynamicObject>, reason: String, statefulset: &str) -> Self {
        Self {
            response: AdmissionResponse::from(req).deny(format!("ldap-elector: {reason}")),
            outcome: Outcome::Denied,
            reason,
            statefulset: statefulset.to_string(),
        }
    }

    fn patched(
        req: &AdmissionRequest<DynamicObject>,
        outcome: Outcome,
        patch: json_patch::Patch,
        statefulset: &str,
    ) -> Self {
        match AdmissionResponse::from(req).with_patch(patch) {
            Ok(response) => Self { response, outcome, reason: String::new(), statefulset: statefulset.to_string() },
            Err(e) => Self::deny(req, format!("cannot serialise the patch: {e}"), statefulset),
        }
    }
}

/// The write Services a pod's admission waits for (see [`gate_answer`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub namespace: String,
    pub statefulset: String,
    pub services: Vec<String>,
    /// The StatefulSet itself: only Services that select its pods are waited for.
    pub owner: StatefulSet,
}

/// Answers `req`, reading what it needs from `cluster`.
pub async fn answer(req: &AdmissionRequest<DynamicObject>, cluster: &impl Cluster, cfg: &InjectConfig) -> Answer {
    match subject(req) {
        Subject::PodCreate => {
            let owner = match owner_to_look_up(req) {
                Some((namespace, name, uid)) => cluster.statefulset(&namespace, &name, uid.as_deref()).await,
                None => Ok(None),
            };
            match pod_answer(req, owner, cfg) {
                (answer, None) => answer,
                (answer, Some(gate)) => {
                    let services = cluster.services(&gate.namespace, &gate.statefulset, &gate.services).await;
                    gate_answer(req, answer, &gate, services)
                }
            }
        }
        Subject::ServiceWrite => service_answer(req, &cluster.statefulsets(namespace(req))),
        Subject::Other => passed(req),
    }
}

/// The answer to a Pod CREATE given its owner lookup (`Ok(None)`: not found or not
/// looked up), and the write Services to check before it stands, if any.
pub fn pod_answer<E: Display>(
    req: &AdmissionRequest<DynamicObject>,
    owner: Result<Option<StatefulSet>, E>,
    cfg: &InjectConfig,
) -> (Answer, Option<Gate>) {
    let pod = match req.object.clone().map(DynamicObject::try_parse::<Pod>) {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => return (Answer::deny(req, format!("cannot decode the Pod: {e}"), ""), None),
        None => return (Answer::deny(req, "the CREATE request carries no Pod".into(), ""), None),
    };
    let statefulset = inject::owner_statefulset_name(&pod.metadata).unwrap_or_default();
    let owner = match owner {
        Ok(owner) => owner,
        Err(e) => {
            let reason = format!("cannot look up StatefulSet {}/{statefulset}: {e}; retry", namespace(req));
            return (Answer::deny(req, reason, statefulset), None);
        }
    };
    if let Some(refused) = owner.as_ref().and_then(replicas_refused) {
        let reason = format!("StatefulSet {}/{statefulset}: {refused}", namespace(req));
        return (Answer::deny(req, reason, statefulset), None);
    }
    match inject::inject(&pod, owner.as_ref(), cfg) {
        Ok(Decision::Skip(reason)) => (Answer::allow(req, Outcome::Skipped, reason.as_str().into(), statefulset), None),
        Ok(Decision::Patch(patch)) => {
            let answer = Answer::patched(req, Outcome::Injected, patch, statefulset);
            let services = contract::leader_services(owner.as_ref().and_then(|o| o.metadata.annotations.as_ref()));
            let gate = owner.filter(|_| answer.outcome == Outcome::Injected && !services.is_empty()).map(|owner| {
                Gate { namespace: namespace(req).to_string(), statefulset: statefulset.to_string(), services, owner }
            });
            (answer, gate)
        }
        Err(e) => (Answer::deny(req, e.to_string(), statefulset), None),
    }
}

/// An opted-in StatefulSet above [`contract::MAX_REPLICAS`]: its pods are refused, since
/// the reconciler gives their electors no rights for it (see `reconcile::elector_replicas`).
fn replicas_refused(owner: &StatefulSet) -> Option<contract::ReplicasOutOfRange> {
    contract::is_opted_in(owner.metadata.annotations.as_ref())
        .then(|| crate::reconcile::elector_replicas(owner).err())
        .flatten()
}

/// `injected` stands only once every existing write Service of the gate selects the
/// leader; otherwise the pod is refused (the StatefulSet controller retries it).
pub fn gate_answer<E: Display>(
    req: &AdmissionRequest<DynamicObject>,
    injected: Answer,
    gate: &Gate,
    services: Result<Vec<Service>, E>,
) -> Answer {
    let (ns, sts) = (&gate.namespace, gate.statefulset.as_str());
    let services = match services {
        Ok(services) => services,
        Err(e) => return Answer::deny(req, format!("cannot read the write Services of {ns}/{sts}: {e}; retry"), sts),
    };
    let waiting = leader_service::not_selecting_leader(&services, &gate.owner);
    if waiting.is_empty() {
        return injected;
    }
    let reason = format!(
        "Service {ns}/{} does not select {}={} yet, so it would route writes to every pod of StatefulSet {sts}; \
         the ldap-elector reconciler adds that selector (without the reconciler, add it yourself); retry",
        waiting.join(", "),
        contract::LABEL_ROLE,
        contract::ROLE_LEADER,
    );
    Answer::deny(req, reason, sts)
}

/// The answer to a Service CREATE/UPDATE given the StatefulSets of its namespace.
pub fn service_answer(req: &AdmissionRequest<DynamicObject>, statefulsets: &[StatefulSet]) -> Answer {
    let svc = match req.object.clone().map(DynamicObject::try_parse::<Service>) {
        Some(Ok(svc)) => svc,
        // Not ours to block: the API server validates Services.
        _ => return passed(req),
    };
    let name = svc.metadata.name.as_deref().unwrap_or(&req.name);
    let Some(owner) = leader_service::statefulset_naming(name, statefulsets) else {
        return Answer::allow(req, Outcome::Passed, "not a write Service of an opted-in StatefulSet".into(), "");
    };
    let sts = owner.metadata.name.as_deref().unwrap_or_default();
    match leader_service::admission_patch(&svc, owner) {
        Some(patch) => Answer::patched(req, Outcome::SelectorAdded, patch, sts),
        None => Answer::allow(req, Outcome::Passed, "selects the leader already, or is not ours to change".into(), sts),
    }
}

enum Subject {
    PodCreate,
    ServiceWrite,
    Other,
}

fn subject(req: &AdmissionRequest<DynamicObject>) -> Subject {
    let main_resource = req.sub_resource.as_deref().unwrap_or_default().is_empty();
    match (req.kind.group.as_str(), req.kind.kind.as_str(), &req.operation) {
        ("", "Pod", Operation::Create) if main_resource => Subject::PodCreate,
        ("", "Service", Operation::Create | Operation::Update) if main_resource => Subject::ServiceWrite,
        _ => Subject::Other,
    }
}

fn passed(req: &AdmissionRequest<DynamicObject>) -> Answer {
    let reason = format!("{} {:?} is not ours to change", req.kind.kind, req.operation);
    Answer::allow(req, Outcome::Passed, reason, "")
}

fn namespace(req: &AdmissionRequest<DynamicObject>) -> &str {
    let object_namespace = req.object.as_ref().and_then(|o| o.metadata.namespace.as_deref());
    req.namespace.as_deref().or(object_namespace).unwrap_or_default()
}

/// `(namespace, statefulset, uid)` of a Pod CREATE's controlling StatefulSet. The UID lets
/// the lookup tell a deleted and recreated StatefulSet's stale cache entry from the owner.
fn owner_to_look_up(req: &AdmissionRequest<DynamicObject>) -> Option<(String, String, Option<String>)> {
    let meta = &req.object.as_ref()?.metadata;
    let name = inject::owner_statefulset_name(meta)?;
    let uid = meta.owner_references.as_ref()?.iter().find(|r| r.controller == Some(true) && r.name == name);
    Some((namespace(req).to_string(), name.to_string(), uid.map(|r| r.uid.clone())))
}

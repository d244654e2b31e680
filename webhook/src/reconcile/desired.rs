//! The pure core of the reconciler: the objects an opted-in StatefulSet needs
//! ([`desired`]), and its egress NetworkPolicy ([`ldap_network_policy`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use ldap_elector_contract as contract;

use super::ReconcileError;
use crate::inject;

/// Kubernetes' per-namespace account; never bound to the elector Role.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The objects an opted-in StatefulSet needs, ready for server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredObjects {
    pub namespace: String,
    pub statefulset: String,
    /// `Some` only when the electors run as our generated account.
    pub service_account: Option<ServiceAccount>,
    /// The account the RoleBinding binds (generated or the consumer's own).
    pub service_account_name: String,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// Metadata only: the spec belongs to the electors.
    pub lease: Lease,
    pub leader_services: Vec<String>,
    /// With [`contract::ANNOTATION_NETWORK_POLICY`]: see [`ldap_network_policy`].
    pub network_policy: Option<NetworkPolicy>,
}

/// The pod names the elector Role must cover: the larger of the wanted and the existing
/// replica count, so that pods of a scale-down keep their rights while they terminate
/// (a leader must still be able to remove its own label on SIGTERM). Above
/// [`contract::MAX_REPLICAS`] it is refused, so no memory is ever sized by the count.
pub fn elector_replicas(sts: &StatefulSet) -> Result<u32, contract::ReplicasOutOfRange> {
    let wanted = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let existing = sts.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    contract::bounded_replicas(i64::from(wanted.max(existing).max(0)))
}

/// `None` when the StatefulSet is not opted in (then everything we made should go).
///
/// `accounts_in_use`: the ServiceAccounts that pods of the StatefulSet running an elector
/// use now. They stay bound (and our generated one stays) until those pods are replaced,
/// so switching the template's account mid-life does not cut a running leader off the
/// API (it could neither renew nor remove its own label). `default` is never bound.
pub fn desired(
    sts: &StatefulSet,
    accounts_in_use: &BTreeSet<String>,
    egress: &Egress,
) -> Result<Option<DesiredObjects>, ReconcileError> {
    if !contract::is_opted_in(sts.metadata.annotations.as_ref()) {
        return Ok(None);
    }
    // First, before anything is sized by it.
    let replicas = elector_replicas(sts)?;
    let name = sts.metadata.name.clone().ok_or(ReconcileError::Incomplete("name"))?;
    let namespace = sts.metadata.namespace.clone().ok_or(ReconcileError::Incomplete("namespace"))?;
    let uid = sts.metadata.uid.clone().ok_or(ReconcileError::Incomplete("uid"))?;
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: name.clone(),
        uid,
        controller: Some(true),
        // Blocking the owner's deletion would need `update` on statefulsets/finalizers.
        block_owner_deletion: None,
    };
    let meta = |object: String| ObjectMeta {
        name: Some(object),
        namespace: Some(namespace.clone()),
        labels: Some(our_labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let identity = contract::identity_name(&name);
    let template_spec = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let account = inject::elector_service_account(&name, template_spec);
    let mut bound: BTreeSet<String> =
        accounts_in_use.iter().filter(|a| !a.is_empty() && *a != DEFAULT_SERVICE_ACCOUNT).cloned().collect();
    bound.insert(account.clone());
    let service_account = bound.contains(&identity).then(|| ServiceAccount {
        metadata: meta(identity.clone()),
        // The token reaches the elector only through the projected volume the webhook adds.
        automount_service_account_token: Some(false),
        ..Default::default()
    });
    let role = Role { metadata: meta(identity.clone()), rules: Some(contract::elector_role_rules(&name, replicas)) };
    let role_binding = RoleBinding {
        metadata: meta(identity.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: identity.clone(),
        },
        subjects: Some(
            bound
                .iter()
                .map(|a| Subject {
                    kind: "ServiceAccount".into(),
                    name: a.clone(),
                    namespace: Some(namespace.clone()),
                    api_group: None,
                })
                .collect(),
        ),
    };
    let lease = Lease { metadata: meta(contract::lease_name(&name)), spec: None };
    let wants_policy = sts.metadata.annotations.as_ref().and_then(|a| a.get(contract::ANNOTATION_NETWORK_POLICY));
    let network_policy = wants_policy
        .is_some_and(|v| v == "true")
        .then(|| ldap_network_policy(sts, replicas, egress, meta(identity.clone())));
    Ok(Some(DesiredObjects {
        leader_services: contract::leader_services(sts.metadata.annotations.as_ref()),
        namespace: namespace.clone(),
        statefulset: name,
        service_account,
        service_account_name: account,
        role,
        role_binding,
        lease,
        network_policy,
    }))
}

/// Egress NetworkPolicy for the pods of `sts` (BSI APP.4.4.A7): the elector needs the API
/// server and reaches its slapd over ldapi (no network); slapd needs its Mirror-Mode peer
/// (the StatefulSet's own pods, on the ports the template declares; all ports if it declares
/// none) and DNS for the peer's name. The API server is allowed by port only, since its
/// address differs per cluster (narrow it with a policy of your own). Ingress is left to
/// the consumer: LDAP clients are theirs to list.
///
/// The pods are the StatefulSet's selector AND their names `<sts>-0..replicas`: a selector
/// alone may match other teams' pods with the same labels, whose egress the policy would then
/// cut (issue 17, item 6).
pub fn ldap_network_policy(sts: &StatefulSet, replicas: u32, egress: &Egress, metadata: ObjectMeta) -> NetworkPolicy {
    let spec = sts.spec.as_ref();
    let mut pods = spec.map(|s| s.selector.clone()).unwrap_or_default();
    let names =
        (0..replicas.clamp(1, contract::MAX_REPLICAS)).map(|i| contract::pod_name(&sts.name_any(), i)).collect();
    pods.match_expressions.get_or_insert_with(Vec::new).push(LabelSelectorRequirement {
        key: contract::LABEL_STATEFULSET_POD_NAME.into(),
        operator: "In".into(),
        values: Some(names),
    });
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut peer_ports: Vec<NetworkPolicyPort> = spec
        .and_then(|s| s.template.spec.as_ref())
        .map(|t| t.containers.iter().flat_map(|c| c.ports.iter().flatten()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(p.container_port)),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
            ..Default::default()
        })
        .collect();
    peer_ports.dedup();
    let dns = ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.into()),
        ..Default::default()
    });
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods.clone()),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(vec![
                NetworkPolicyEgressRule { ports: Some(vec![tcp(443), tcp(6443)]), to: egress.api_server_peers() },
                NetworkPolicyEgressRule {
                    ports: (!peer_ports.is_empty()).then_some(peer_ports),
                    to: Some(vec![NetworkPolicyPeer { pod_selector: Some(pods), ..Default::default() }]),
                },
                NetworkPolicyEgressRule { ports: Some(dns.to_vec()), to: None },
            ]),
            ingress: None,
        }),
    }
}

/// Where the generated LDAP NetworkPolicy lets the electors go, as the cluster admin knows it
/// (`--api-server-cidrs`): the same for every StatefulSet, so a tenant cannot widen it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    /// The API server's addresses (after kube-proxy's translation of the `kubernetes`
    /// Service, which is what most CNIs judge egress by); empty: any address on 443/6443.
    pub api_server_cidrs: Vec<String>,
}

impl Egress {
    fn api_server_peers(&self) -> Option<Vec<NetworkPolicyPeer>> {
        (!self.api_server_cidrs.is_empty()).then(|| {
            let block = |cidr: &String| IPBlock { cidr: cidr.clone(), except: None };
            self.api_server_cidrs
                .iter()
                .map(|cidr| NetworkPolicyPeer { ip_block: Some(block(cidr)), ..Default::default() })
                .collect()
        })
    }
}

pub(super) fn our_labels(statefulset: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (contract::LABEL_MANAGED_BY.to_string(), contract::MANAGED_BY.to_string()),
        (contract::LABEL_STATEFULSET.to_string(), statefulset.to_string()),
    ])
}

/// Label selector of the objects we generated for `statefulset`.
pub(super) fn ours_selector(statefulset: &str) -> String {
    format!("{}={},{}={statefulset}", contract::LABEL_MANAGED_BY, contract::MANAGED_BY, contract::LABEL_STATEFULSET)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn sts(
        annotations: Value,
        replicas: i32,
        status_replicas: Option<i32>,
        service_account: Option<&str>,
    ) -> StatefulSet {
        let mut v = json!({
            "metadata": {"name": "ldap", "namespace": "dir", "uid": "u-1", "annotations": annotations},
            "spec": {"replicas": replicas, "serviceName": "ldap", "selector": {"matchLabels": {"app": "ldap"}},
                     "template": {"metadata": {"labels": {"app": "ldap"}}, "spec": {"containers": [{"name": "ldap"}]}}},
        });
        if let Some(sa) = service_account {
            v["spec"]["template"]["spec"]["serviceAccountName"] = json!(sa);
        }
        if let Some(r) = status_replicas {
            v["status"] = json!({"replicas": r});
        }
        serde_json::from_value(v).unwrap()
    }

    /// `desired` with no pod running an elector yet.
    pub(crate) fn desired_now(s: &StatefulSet) -> Result<Option<DesiredObjects>, ReconcileError> {
        desired(s, &BTreeSet::new(), &Egress::default())
    }

    pub(crate) fn opted_in() -> Value {
        json!({contract::ANNOTATION_INJECT: "true", contract::ANNOTATION_LEADER_SERVICE: "ldap-primary, ldap-rw"})
    }

    #[test]
    fn not_opted_in_wants_nothing() {
        assert_eq!(desired_now(&sts(json!({}), 2, None, None)).unwrap(), None);
        assert_eq!(desired_now(&sts(json!({contract::ANNOTATION_INJECT: "false"}), 2, None, None)).unwrap(), None);
    }

    #[test]
    fn opted_in_statefulset_gets_identity_role_binding_and_lease_owned_and_labelled() {
        let want = desired_now(&sts(opted_in(), 2, None, None)).unwrap().unwrap();
        let identity = contract::identity_name("ldap");
        assert_eq!(want.service_account_name, identity);
        let sa = want.service_account.as_ref().expect("generated account");
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert_eq!(want.role.rules, Some(contract::elector_role_rules("ldap", 2)));
        assert_eq!(want.role_binding.role_ref.name, identity);
        let subjects = want.role_binding.subjects.clone().unwrap();
        assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("ServiceAccount", identity.as_str()));
        assert_eq!(subjects[0].namespace.as_deref(), Some("dir"));
        assert_eq!(want.lease.metadata.name, Some(contract::lease_name("ldap")));
        assert_eq!(want.lease.spec, None, "the Lease spec belongs to the electors");
        assert_eq!(want.leader_services, vec!["ldap-primary", "ldap-rw"]);
        for meta in [&sa.metadata, &want.role.metadata, &want.role_binding.metadata, &want.lease.metadata] {
            assert_eq!(meta.namespace.as_deref(), Some("dir"));
            assert_eq!(meta.labels.as_ref(), Some(&our_labels("ldap")));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("StatefulSet", "ldap", "u-1"));
            assert_eq!(owner.controller, Some(true));
        }
    }

    #[test]
    fn custom_service_account_is_bound_but_not_created_and_default_is_never_bound() {
        let want = desired_now(&sts(opted_in(), 2, None, Some("ldap-custom"))).unwrap().unwrap();
        assert!(want.service_account.is_none());
        assert_eq!(want.role_binding.subjects.unwrap()[0].name, "ldap-custom");
        let want = desired_now(&sts(opted_in(), 2, None, Some("default"))).unwrap().unwrap();
        assert_eq!(want.role_binding.subjects.unwrap()[0].name, contract::identity_name("ldap"));
        assert!(want.service_account.is_some());
    }

    #[test]
    fn accounts_of_running_electors_stay_bound_until_their_pods_are_replaced() {
        let identity = contract::identity_name("ldap");
        let in_use = BTreeSet::from([identity.clone(), "default".to_string(), String::new()]);
        let want =
            desired(&sts(opted_in(), 2, None, Some("ldap-custom")), &in_use, &Egress::default()).unwrap().unwrap();
        let bound: Vec<String> = want.role_binding.subjects.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(bound, vec!["ldap-custom".to_string(), identity.clone()], "default is never bound");
        assert!(want.service_account.is_some(), "the generated account stays while pods use it");
        assert_eq!(want.service_account_name, "ldap-custom");
    }

    #[test]
    fn role_follows_scale_up_at_once_and_scale_down_once_pods_are_gone() {
        let rules = |r, s| desired_now(&sts(opted_in(), r, s, None)).unwrap().unwrap().role.rules;
        assert_eq!(rules(3, Some(2)), Some(contract::elector_role_rules("ldap", 3)));
        assert_eq!(rules(2, Some(3)), Some(contract::elector_role_rules("ldap", 3)), "terminating pod keeps rights");
        assert_eq!(rules(2, Some(2)), Some(contract::elector_role_rules("ldap", 2)));
        assert_eq!(rules(0, Some(0)), Some(contract::elector_role_rules("ldap", 0)));
    }

    #[test]
    fn a_replica_count_above_the_maximum_is_refused_before_anything_is_sized_by_it() {
        let max = contract::MAX_REPLICAS as i32;
        assert!(desired_now(&sts(opted_in(), max, None, None)).is_ok());
        for (replicas, status) in [(i32::MAX, None), (max + 1, None), (2, Some(i32::MAX))] {
            match desired_now(&sts(opted_in(), replicas, status, None)) {
                Err(ReconcileError::TooManyReplicas(e)) => {
                    assert_eq!(e.replicas, i64::from(replicas.max(status.unwrap_or(0))))
                }
                other => panic!("{replicas}/{status:?}: expected TooManyReplicas, got {other:?}"),
            }
        }
        // Not opted in: not ours, whatever the count.
        assert_eq!(desired_now(&sts(json!({}), i32::MAX, None, None)).unwrap(), None);
    }

    #[test]
    fn incomplete_statefulset_is_an_error_not_a_panic() {
        let mut s = sts(opted_in(), 2, None, None);
        s.metadata.uid = None;
        assert!(matches!(desired_now(&s), Err(ReconcileError::Incomplete("uid"))));
    }

    #[test]
    fn network_policy_only_on_request_and_allows_api_server_dns_and_the_peer_pods() {
        assert!(desired_now(&sts(opted_in(), 2, None, None)).unwrap().unwrap().network_policy.is_none());
        let mut annotations = opted_in();
        annotations[contract::ANNOTATION_NETWORK_POLICY] = json!("true");
        let mut s = sts(annotations, 2, None, None);
        let template = s.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        template.containers[0].ports =
            Some(serde_json::from_value(json!([{"containerPort": 389}, {"containerPort": 636}])).unwrap());
        let policy = desired_now(&s).unwrap().unwrap().network_policy.expect("requested");
        assert_eq!(policy.metadata.name.as_deref(), Some(contract::identity_name("ldap").as_str()));
        let value = serde_json::to_value(&policy.spec).unwrap();
        // Exactly the StatefulSet's pods: its selector and their names.
        let pods = json!({"matchLabels": {"app": "ldap"}, "matchExpressions": [
            {"key": contract::LABEL_STATEFULSET_POD_NAME, "operator": "In", "values": ["ldap-0", "ldap-1"]}]});
        assert_eq!(value["podSelector"], pods);
        assert_eq!(value["policyTypes"], json!(["Egress"]), "ingress (the LDAP clients) stays the consumer's");
        let rules = value["egress"].as_array().unwrap();
        let ports =
            |i: usize| rules[i]["ports"].as_array().unwrap().iter().map(|p| p["port"].clone()).collect::<Vec<_>>();
        assert_eq!(ports(0), vec![json!(443), json!(6443)], "the API server");
        assert_eq!(ports(1), vec![json!(389), json!(636)], "the Mirror-Mode peer");
        assert_eq!(rules[1]["to"], json!([{"podSelector": pods}]));
        assert_eq!(ports(2), vec![json!(53), json!(53)], "DNS, UDP and TCP");
        assert_eq!(rules[0].get("to"), None, "without --api-server-cidrs: any address");

        // With the API server's addresses the admin gave, 443/6443 go only there.
        let egress = Egress { api_server_cidrs: vec!["198.51.100.10/32".into(), "2001:db8::1/128".into()] };
        let policy = desired(&s, &BTreeSet::new(), &egress).unwrap().unwrap().network_policy.expect("requested");
        let value = serde_json::to_value(&policy.spec).unwrap();
        assert_eq!(
            value["egress"][0]["to"],
            json!([{"ipBlock": {"cidr": "198.51.100.10/32"}}, {"ipBlock": {"cidr": "2001:db8::1/128"}}])
        );
    }
}

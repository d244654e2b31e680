//! The webhook's own RBAC as code: what the e2e tests grant. The chart's ClusterRoles and
//! Roles (`charts/ldap-elector/templates/clusterrole.yaml` and `role.yaml`) are the source
//! and say why each rule is there; `tests/tests/chart.rs` renders them and keeps them equal.
//!
//! Two accounts (issue 17, item 2): the network-facing admission server
//! ([`crate::args::Component::Admission`]) only reads; the controller
//! ([`crate::args::Component::Controller`]: reconciler and serving certificate) holds every
//! write right, and no port but health is open on it. With `--reconcile=false` the chart
//! keeps only the controller's certificate rules.
//!
//! No `escalate` or `bind`: the controller holds every permission it grants in an elector
//! Role (the test `controller_holds_every_permission_it_grants` checks it); why, and its
//! price, is told in the chart's ClusterRole.

use k8s_openapi::api::rbac::v1::PolicyRule;

fn rule(groups: &[&str], resources: &[&str], names: Option<&[&str]>, verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        resource_names: names.map(strings),
        verbs: strings(verbs),
        non_resource_urls: None,
    }
}

/// The admission server's ClusterRole (certMode=secret): it reads StatefulSets and write
/// Services, and its own webhook configuration to see that the CA of the certificate it is
/// about to serve was published. `webhook_config` is `--webhook-config`.
pub fn admission_cluster_role_rules(webhook_config: &str) -> Vec<PolicyRule> {
    vec![
        rule(&["apps"], &["statefulsets"], None, &["get", "list", "watch"]),
        rule(&[""], &["services"], None, &["get", "list", "watch"]),
        rule(&["admissionregistration.k8s.io"], &["mutatingwebhookconfigurations"], Some(&[webhook_config]), &["get"]),
    ]
}

/// The admission server's Role in its namespace (certMode=secret): read its serving
/// certificate's Secret `secret` (`--cert-secret`), nothing else.
pub fn admission_namespace_role_rules(secret: &str) -> Vec<PolicyRule> {
    vec![rule(&[""], &["secrets"], Some(&[secret]), &["get"])]
}

/// The controller's ClusterRole; `webhook_config` is `--webhook-config`.
pub fn controller_cluster_role_rules(webhook_config: &str) -> Vec<PolicyRule> {
    vec![
        rule(&["apps"], &["statefulsets"], None, &["get", "list", "watch"]),
        rule(&[""], &["pods"], None, &["get", "list", "watch", "patch"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            None,
            &["get", "list", "watch", "create", "update", "patch", "delete"],
        ),
        rule(&[""], &["serviceaccounts"], None, &["list", "watch", "create", "patch", "delete"]),
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            None,
            &["list", "watch", "create", "patch", "delete"],
        ),
        rule(&[""], &["services"], None, &["get", "list", "watch", "patch"]),
        rule(&["networking.k8s.io"], &["networkpolicies"], None, &["list", "create", "patch", "delete"]),
        rule(&["events.k8s.io"], &["events"], None, &["create", "patch"]),
        rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations"],
            Some(&[webhook_config]),
            &["get", "list", "watch", "update"],
        ),
    ]
}

/// The controller's Role in its namespace (certMode=secret): create and rotate the serving
/// certificate's Secret `secret` (`--cert-secret`).
pub fn controller_namespace_role_rules(secret: &str) -> Vec<PolicyRule> {
    vec![rule(&[""], &["secrets"], Some(&[secret]), &["get", "update"]), rule(&[""], &["secrets"], None, &["create"])]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap_elector_contract as contract;

    #[test]
    fn no_wildcard_escalate_or_bind() {
        let all = [
            admission_cluster_role_rules("ldap-elector"),
            admission_namespace_role_rules("ldap-elector-webhook-tls"),
            controller_cluster_role_rules("ldap-elector"),
            controller_namespace_role_rules("ldap-elector-webhook-tls"),
        ]
        .concat();
        assert!(all.iter().all(|r| !r.verbs.iter().any(|v| v == "*" || v == "escalate" || v == "bind")));
    }

    /// The network-facing admission server cannot write anything.
    #[test]
    fn admission_only_reads() {
        let all = [admission_cluster_role_rules("ldap-elector"), admission_namespace_role_rules("tls")].concat();
        for rule in all {
            assert!(rule.verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())), "{rule:?}");
        }
    }

    /// The RBAC escalation check: the controller must hold every permission of every Role
    /// it creates (it has no `escalate`/`bind`).
    #[test]
    fn controller_holds_every_permission_it_grants() {
        let held = controller_cluster_role_rules("x");
        for granted in contract::elector_role_rules("ldap", 3) {
            for group in granted.api_groups.iter().flatten() {
                for resource in granted.resources.iter().flatten() {
                    for verb in &granted.verbs {
                        let covered = held.iter().any(|h| {
                            h.resource_names.is_none()
                                && h.api_groups.iter().flatten().any(|g| g == group)
                                && h.resources.iter().flatten().any(|r| r == resource)
                                && h.verbs.iter().any(|v| v == verb)
                        });
                        assert!(covered, "the controller lacks {verb} on {group}/{resource}");
                    }
                }
            }
        }
    }
}

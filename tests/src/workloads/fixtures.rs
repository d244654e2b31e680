//! Small builders for the objects e2e tests create.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::api::PostParams;
use kube::{Api, Client};
use ldap_elector_contract as contract;
use serde_json::json;

/// Creates namespace `name`, optionally enforcing a Pod Security level, opted in to the
/// webhook as a cluster admin does it ([`contract::LABEL_NAMESPACE_ENABLED`]).
pub async fn namespace(client: &Client, name: &str, enforce: Option<&str>) -> anyhow::Result<Namespace> {
    let mut labels = serde_json::Map::new();
    labels.insert(contract::LABEL_NAMESPACE_ENABLED.into(), "true".into());
    if let Some(level) = enforce {
        labels.insert("pod-security.kubernetes.io/enforce".into(), level.into());
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Ok(Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?)
}

/// Creates Role `name` with `rules` in `ns` and binds it to ServiceAccount `sa_ns/name`, as
/// `client` (the admin, or an identity whose rights are under test).
pub async fn service_account_role(
    client: &Client,
    ns: &str,
    name: &str,
    sa_ns: &str,
    rules: Vec<PolicyRule>,
) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let role =
        Role { metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() }, rules: Some(rules) };
    Api::<Role>::namespaced(client.clone(), ns).create(&pp, &role).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": sa_ns}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns).create(&pp, &binding).await?;
    Ok(())
}

/// A StatefulSet whose pods pass Pod Security `restricted`; one `ldap` container.
pub fn statefulset(name: &str, replicas: i32, annotations: serde_json::Value) -> anyhow::Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "ldap",
                        "image": "registry.invalid/openldap:2.5",
                        "ports": [{"name": "ldap", "containerPort": 389}],
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }))?)
}

/// A ClusterIP Service selecting `selector` on port 389.
pub fn service(name: &str, selector: serde_json::Value) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "ldap", "port": 389, "targetPort": 389}]},
    }))?)
}

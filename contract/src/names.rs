//! The public contract shared by the elector, the webhook and the tests: every
//! annotation, label, environment variable and derived object name lives here, once.
//! Changing a value here is a breaking change for users (see DESIGN.md, "Contract").

/// Prefix of every annotation and label we own.
pub const DOMAIN: &str = "ldap-elector.dev";

// ---- StatefulSet annotations (set by the consumer) ----

/// Opt-in: `"true"` on a StatefulSet makes the webhook inject its pods.
pub const ANNOTATION_INJECT: &str = "ldap-elector.dev/inject";
/// The same key as a pod-template label (`"true"`): with the chart's
/// `webhookConfiguration.podOptInLabel` only pods carrying it reach the pod webhook, so a
/// webhook outage blocks no pod of a StatefulSet that did not opt in (issue 17, item 5).
pub const LABEL_INJECT: &str = ANNOTATION_INJECT;
/// `"true"` on a Namespace: by default (the chart's `webhookConfiguration.namespaceOptInLabel`)
/// the webhook serves only namespaces carrying it, so a webhook outage blocks pods only where a
/// cluster admin opted in, and tenants, who cannot label namespaces, cannot widen the scope
/// (issue 17, item 5).
pub const LABEL_NAMESPACE_ENABLED: &str = "ldap-elector.dev/enabled";
/// Comma-separated names of Services that must route only to the leader.
pub const ANNOTATION_LEADER_SERVICE: &str = "ldap-elector.dev/leader-service";
/// Optional: `"true"` makes the reconciler generate an egress NetworkPolicy for the LDAP pods
/// (API server, DNS, and the StatefulSet's own pods on their declared ports; BSI APP.4.4.A7).
pub const ANNOTATION_NETWORK_POLICY: &str = "ldap-elector.dev/network-policy";
/// Optional tuning, copied into the sidecar's environment (seconds, e.g. `"8"`).
pub const ANNOTATION_LEASE_DURATION: &str = "ldap-elector.dev/lease-duration";
pub const ANNOTATION_RENEW_PERIOD: &str = "ldap-elector.dev/renew-period";
pub const ANNOTATION_RENEW_DEADLINE: &str = "ldap-elector.dev/renew-deadline";
/// Optional health check of the sidecar, e.g. `tcp://127.0.0.1:389`.
pub const ANNOTATION_HEALTH_CHECK: &str = "ldap-elector.dev/health-check";
/// Comma list of containers of the pod that are an elector of their own (e.g. a proof of
/// concept's `leader-elector`): the webhook removes them from the pods it injects, so two
/// electors never fight over the write Service.
pub const ANNOTATION_REPLACE_CONTAINERS: &str = "ldap-elector.dev/replace-containers";
/// Whose API token the consumer's own containers keep: [`TOKEN_MODE_KEEP`] (default) or
/// [`TOKEN_MODE_STRICT`].
pub const ANNOTATION_TOKEN_MODE: &str = "ldap-elector.dev/token-mode";
/// The consumer's containers keep the token the pod's own (custom) ServiceAccount gave them.
pub const TOKEN_MODE_KEEP: &str = "keep";
/// Only the elector holds a token: the consumer's containers get none.
pub const TOKEN_MODE_STRICT: &str = "strict";
/// The container name of Univention Nubus' proof-of-concept elector; the webhook's default
/// list of container names that are electors of their own.
pub const KNOWN_ELECTOR_CONTAINER: &str = "leader-elector";

// ---- Pod label and annotations (set by webhook and elector) ----

/// Pod label: `leader` on exactly the Lease holder, `standby` on the others.
pub const LABEL_ROLE: &str = "ldap-elector.dev/role";
pub const ROLE_LEADER: &str = "leader";
pub const ROLE_STANDBY: &str = "standby";
/// Pod annotation holding the fencing term (the Lease's `leaseTransitions`) of the
/// last label write; every elector label write tests it.
pub const ANNOTATION_TERM: &str = "ldap-elector.dev/term";
/// Pod annotation marking a pod as injected. Set only by the webhook's patch; the label
/// protection trusts it, so a pod that arrives carrying it is refused, never passed (a pod is
/// never injected twice).
pub const ANNOTATION_STATUS: &str = "ldap-elector.dev/status";
pub const STATUS_INJECTED: &str = "injected";
/// Pod annotation the webhook sets when it did NOT give a slapd container the hand-over
/// `preStop` hook ([`PROBE_PATH_HANDOVER`]) because the container has its own: says which
/// and what to do (docs/openldap.md). Absent when every slapd container got it.
pub const ANNOTATION_HANDOVER_HOOK: &str = "ldap-elector.dev/handover-hook";

/// Pod annotations each elector publishes about ITS OWN pod (status CLI, switchover checks):
/// the local slapd's health (`healthy`, or `unhealthy: <reason>`) and its contextCSN
/// (space-separated CSNs, one per server ID).
pub const ANNOTATION_HEALTH: &str = "ldap-elector.dev/health";
pub const HEALTH_HEALTHY: &str = "healthy";
pub const ANNOTATION_CONTEXT_CSN: &str = "ldap-elector.dev/context-csn";

// ---- Lease annotations ----

/// The leader's contextCSN, published on each renew for catch-up gating.
pub const LEASE_ANNOTATION_CONTEXT_CSN: &str = "ldap-elector.dev/context-csn";
/// Set by an operator (or `ldap-elector switchover`): the pod the leader should hand over to.
pub const LEASE_ANNOTATION_SWITCHOVER_TO: &str = "ldap-elector.dev/switchover-to";
/// Set by the leader when it refuses a switchover request (and clears the request):
/// `<target>: <reason>`. Cleared by the next request and by a successful handover.
pub const LEASE_ANNOTATION_SWITCHOVER_REFUSED: &str = "ldap-elector.dev/switchover-refused";
/// Set by the leader after an audit found a standby diverged: JSON object mapping pod name to
/// `{ "since": RFC 3339, "summary": text }`. A pod listed here is not eligible for promotion.
pub const LEASE_ANNOTATION_DIVERGED: &str = "ldap-elector.dev/diverged";
/// Set by an operator: comma-separated pod names that may be promoted although listed as diverged.
pub const LEASE_ANNOTATION_ALLOW_DIVERGED: &str = "ldap-elector.dev/allow-diverged";
/// Written with the holder: the holder pod's UID. A pod recreated under the same name is
/// another pod and waits for the Lease to expire (its predecessor may still be writable).
pub const LEASE_ANNOTATION_HOLDER_UID: &str = "ldap-elector.dev/holder-uid";
/// Written with an acquisition after an expiry that could not verify the old leader's
/// current contextCSN: JSON `{term, previous, reason, seconds}` (docs/operations.md).
pub const LEASE_ANNOTATION_UNCOVERED: &str = "ldap-elector.dev/uncovered-window";

// ---- Sidecar environment ----

pub const ENV_POD_NAME: &str = "POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const ENV_POD_UID: &str = "POD_UID";
pub const ENV_STATEFULSET: &str = "ELECTOR_STATEFULSET";
pub const ENV_LEASE_NAME: &str = "ELECTOR_LEASE_NAME";
pub const ENV_LEASE_DURATION: &str = "ELECTOR_LEASE_DURATION";
pub const ENV_RENEW_PERIOD: &str = "ELECTOR_RENEW_PERIOD";
pub const ENV_RENEW_DEADLINE: &str = "ELECTOR_RENEW_DEADLINE";
pub const ENV_HEALTH_CHECK: &str = "ELECTOR_HEALTH_CHECK";
pub const ENV_HEALTH_INTERVAL: &str = "ELECTOR_HEALTH_INTERVAL";
pub const ENV_HEALTH_FAILURES: &str = "ELECTOR_HEALTH_FAILURES";
pub const ENV_PROBE_ADDR: &str = "ELECTOR_PROBE_ADDR";
pub const ENV_KUBECONFIG: &str = "KUBECONFIG";
pub const ENV_ON_ROLE_CHANGE: &str = "ELECTOR_ON_ROLE_CHANGE";
pub const ENV_FENCE_LDAPI: &str = "ELECTOR_FENCE_LDAPI";
pub const ENV_FENCE_DATABASE: &str = "ELECTOR_FENCE_DATABASE";
/// The suffix whose database the fence toggles, found by `olcSuffix` (the webhook sets it to
/// [`ANNOTATION_LDAP_SUFFIX`]); [`ENV_FENCE_DATABASE`] wins when both are set.
pub const ENV_FENCE_SUFFIX: &str = "ELECTOR_FENCE_SUFFIX";
/// The cn=config entry the fence toggles when neither [`ENV_FENCE_DATABASE`] nor
/// [`ENV_FENCE_SUFFIX`] is set.
pub const DEFAULT_FENCE_DATABASE: &str = "olcDatabase={1}mdb,cn=config";
/// slapd's slapd.d directory (its `-F`), for [`START_FENCED_COMMAND`].
pub const ENV_SLAPD_CONFIG_DIR: &str = "ELECTOR_SLAPD_CONFIG_DIR";
pub const ENV_CATCH_UP_GRACE: &str = "ELECTOR_CATCH_UP_GRACE";
pub const ENV_CATCH_UP_VERIFY: &str = "ELECTOR_CATCH_UP_VERIFY";
pub const ENV_WATCHDOG: &str = "ELECTOR_WATCHDOG";
/// The fence guard's Unix socket: where the guard listens and the elector connects
/// (the webhook sets it on both; unset in the elector: a child watchdog process instead).
pub const ENV_GUARD_SOCKET: &str = "ELECTOR_GUARD_SOCKET";
pub const ENV_LOG_FORMAT: &str = "ELECTOR_LOG_FORMAT";
/// The elector's `tracing` filter (`EnvFilter` syntax, e.g. `info,ldap_elector=debug`).
pub const ENV_LOG: &str = "ELECTOR_LOG";
/// Bind DN of the health check (simple bind); without it the check binds with SASL
/// EXTERNAL over ldapi, or not at all (anonymous) over ldap.
pub const ENV_LDAP_BIND_DN: &str = "ELECTOR_LDAP_BIND_DN";
/// File holding the password of the bind DN (read on every check, so rotation works).
pub const ENV_LDAP_BIND_PASSWORD_FILE: &str = "ELECTOR_LDAP_BIND_PASSWORD_FILE";
/// `true`: upgrade every `ldap://` connection of the elector's LDAP reads (health check,
/// audits, the old leader's contextCSN, `reseed`) with StartTLS before the bind, verifying
/// the server's certificate against [`ENV_LDAP_CA_FILE`] and its name against the URL's
/// host. `ldaps://` URLs are TLS without it; `ldapi://` never uses TLS.
pub const ENV_LDAP_STARTTLS: &str = "ELECTOR_LDAP_STARTTLS";
/// PEM file with the CA certificate(s) that sign the slapd servers' certificates; required
/// for `ldaps://` and StartTLS (only these CAs are trusted; read on every connection).
pub const ENV_LDAP_CA_FILE: &str = "ELECTOR_LDAP_CA_FILE";
/// `true`: allow a simple bind (a password) over plain `ldap://` to a host that is not
/// local (not loopback); without it such a bind is refused before anything is sent.
pub const ENV_ALLOW_CLEARTEXT_BIND: &str = "ELECTOR_ALLOW_CLEARTEXT_BIND";
/// Bind DN of the one-off `audit` command on both servers (simple bind); without it SASL
/// EXTERNAL over ldapi and anonymous over ldap.
pub const ENV_AUDIT_BIND_DN: &str = "ELECTOR_AUDIT_BIND_DN";
/// File with the password of the audit's bind DN.
pub const ENV_AUDIT_BIND_PASSWORD_FILE: &str = "ELECTOR_AUDIT_BIND_PASSWORD_FILE";
/// The two servers the one-off `audit` command compares.
pub const ENV_AUDIT_SERVER_A: &str = "ELECTOR_AUDIT_SERVER_A";
pub const ENV_AUDIT_SERVER_B: &str = "ELECTOR_AUDIT_SERVER_B";
/// Where the leader reaches each standby's slapd for the divergence audit: a URL template
/// with `{pod}` (e.g. `ldap://{pod}.ldap-server:389`, the headless Service) or `POD=URL`
/// pairs separated by commas. Unset: the elector does not audit.
pub const ENV_AUDIT_PEERS: &str = "ELECTOR_AUDIT_PEERS";
/// Interval of the leader's routine divergence audits (`0` or `off`: only on taking
/// office, on a standby's rejoin and retries).
pub const ENV_AUDIT_INTERVAL: &str = "ELECTOR_AUDIT_INTERVAL";

/// Name of the sidecar container the webhook injects.
pub const SIDECAR_CONTAINER: &str = "ldap-elector";
/// Volume carrying the sidecar's projected service-account token.
pub const TOKEN_VOLUME: &str = "ldap-elector-token";
/// Where the projected token is mounted in the sidecar (the in-cluster default path,
/// so kube's in-cluster config finds it).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime requested for the projected token (the kubelet refreshes it at 80 %).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The fence guard the webhook injects with the OpenLDAP integration: a second native
/// sidecar (same image, [`GUARD_COMMAND`]) with no API token that fences slapd over ldapi
/// when the elector's connection closes or its deadline passes (docs/design.md, "Write
/// fencing"). In its own container, so that it outlives the elector's.
pub const GUARD_CONTAINER: &str = "ldap-elector-guard";
/// The subcommand that runs the guard (`ldap-elector guard`).
pub const GUARD_COMMAND: &str = "guard";
/// The init container the webhook puts last before slapd's container when slapd runs from a
/// slapd.d directory (`-F`): sets `olcReadOnly: TRUE` there, so that slapd starts fenced
/// (same image, [`START_FENCED_COMMAND`]).
pub const START_FENCED_CONTAINER: &str = "ldap-elector-start-fenced";
/// The subcommand of [`START_FENCED_CONTAINER`] (`ldap-elector start-fenced`).
pub const START_FENCED_COMMAND: &str = "start-fenced";
/// Every container the webhook injects: no pod template may use these names, no
/// `replace-containers` may remove them, and none of them ever holds a consumer's token.
pub const INJECTED_CONTAINERS: [&str; 3] = [SIDECAR_CONTAINER, GUARD_CONTAINER, START_FENCED_CONTAINER];
/// The in-memory volume shared by the elector and the guard only, holding the guard's socket.
pub const RUN_VOLUME: &str = "ldap-elector-run";
/// Where both containers mount [`RUN_VOLUME`] (not `/run/ldap-elector`: with `/var/run`
/// a symlink to `/run`, the audit's bind secret under `/var/run/ldap-elector` would nest in it).
pub const RUN_DIR: &str = "/run/ldap-elector-guard";
/// The guard's socket in [`RUN_DIR`].
pub const GUARD_SOCKET_NAME: &str = "guard.sock";

/// Label on every object the reconciler creates, so it can find and clean them up.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "ldap-elector";
/// Label naming the StatefulSet a generated object belongs to.
pub const LABEL_STATEFULSET: &str = "ldap-elector.dev/statefulset";
/// Kubernetes' label with a StatefulSet pod's own name (set by the StatefulSet controller):
/// with the pod names it selects exactly the StatefulSet's pods, whatever labels others share.
pub const LABEL_STATEFULSET_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// Annotation on a write Service whose selector pinned a pod name
/// ([`LABEL_STATEFULSET_POD_NAME`], e.g. a placeholder another elector was to fill in): the
/// replaced selector entries as a JSON object, put back on opt-out.
pub const ANNOTATION_REPLACED_SELECTOR: &str = "ldap-elector.dev/replaced-selector";
/// Annotation on a write Service whose `publishNotReadyAddresses` the reconciler turned on:
/// the value it replaced (`false`), put back on opt-out.
pub const ANNOTATION_REPLACED_PUBLISH_NOT_READY: &str = "ldap-elector.dev/replaced-publish-not-ready-addresses";

/// The Lease the pods of `statefulset` compete for.
pub fn lease_name(statefulset: &str) -> String {
    format!("{statefulset}-leader")
}

/// The ServiceAccount, Role and RoleBinding of the electors of `statefulset`.
pub fn identity_name(statefulset: &str) -> String {
    format!("{statefulset}-ldap-elector")
}

/// The name of pod `ordinal` of `statefulset`.
pub fn pod_name(statefulset: &str, ordinal: u32) -> String {
    format!("{statefulset}-{ordinal}")
}

/// The StatefulSet and ordinal of a StatefulSet pod name (`ldap-server-1` → (`ldap-server`, 1)).
pub fn split_pod_name(pod: &str) -> Option<(&str, u32)> {
    let (set, ordinal) = pod.rsplit_once('-')?;
    if set.is_empty() || ordinal.is_empty() || (ordinal.len() > 1 && ordinal.starts_with('0')) {
        return None;
    }
    Some((set, ordinal.parse().ok()?))
}

/// Whether an annotation or label key is in our [`DOMAIN`] (`ldap-elector.dev/...`): every
/// StatefulSet annotation the webhook reads is, so its cache keeps no other.
pub fn is_our_key(key: &str) -> bool {
    key.strip_prefix(DOMAIN).is_some_and(|rest| rest.starts_with('/'))
}

/// Whether a StatefulSet's annotations opt it in.
pub fn is_opted_in(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations.and_then(|a| a.get(ANNOTATION_INJECT)).is_some_and(|v| v == "true")
}

/// The Services named by the leader-service annotation, trimmed, empties dropped.
pub fn leader_services(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Vec<String> {
    annotations
        .and_then(|a| a.get(ANNOTATION_LEADER_SERVICE))
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

/// The largest replica count of an opted-in StatefulSet ldap-elector works for (issue 17,
/// item 3). Mirror Mode is a pair; the rest is room for scaling and read replicas. The
/// elector Role names every pod and a takeover demotes every ordinal, so the work per
/// StatefulSet grows with the count: above this the webhook refuses its pods and the
/// reconciler leaves its objects alone, each with a message naming the limit, instead of
/// sizing memory by a number any tenant may write (`replicas: 2147483647`).
pub const MAX_REPLICAS: u32 = 32;

/// A replica count above [`MAX_REPLICAS`] (or negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{replicas} replicas is outside what ldap-elector supports (0 to {MAX_REPLICAS}); scale the StatefulSet to at most {MAX_REPLICAS}")]
pub struct ReplicasOutOfRange {
    pub replicas: i64,
}

/// Reason of the webhook's Event on a StatefulSet above [`MAX_REPLICAS`].
pub const EVENT_TOO_MANY_REPLICAS: &str = "TooManyReplicas";
/// Reason of the webhook's Event on a StatefulSet when an object it would generate (Lease,
/// ServiceAccount, Role, ...) exists and was not created by ldap-elector: never taken over.
pub const EVENT_OBJECT_NOT_OURS: &str = "ObjectNotOurs";
/// Reason of the webhook's Event on a StatefulSet when a Service its leader-service
/// annotation names is left alone (no selector, another StatefulSet's, not selecting
/// exactly its pods, ...).
pub const EVENT_LEADER_SERVICE_REFUSED: &str = "LeaderServiceRefused";
/// Reason of the webhook's Event on a StatefulSet when one of its write Services has
/// selected no pod for longer than a failover takes.
pub const EVENT_LEADER_SERVICE_EMPTY: &str = "LeaderServiceEmpty";

/// `replicas` as a count of pods, if it is within `0..=MAX_REPLICAS`.
pub fn bounded_replicas(replicas: i64) -> Result<u32, ReplicasOutOfRange> {
    u32::try_from(replicas).ok().filter(|r| *r <= MAX_REPLICAS).ok_or(ReplicasOutOfRange { replicas })
}

/// The least-privilege rules of an elector's Role: its one Lease, its own StatefulSet
/// (read-only, to learn the replica count) and the pods `0..replicas` of that StatefulSet;
/// nothing else (no Secrets, no other Lease, no create or delete). List and
/// watch are only usable with a `metadata.name` field selector under `resourceNames`,
/// which is exactly how the elector watches. `replicas` is capped at [`MAX_REPLICAS`]
/// (callers refuse larger counts with [`bounded_replicas`] first; the cap only keeps
/// this function's memory bounded whatever it is given).
pub fn elector_role_rules(statefulset: &str, replicas: u32) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pods = (0..replicas.clamp(1, MAX_REPLICAS)).map(|i| pod_name(statefulset, i)).collect();
    vec![
        PolicyRule {
            api_groups: Some(strings(&["coordination.k8s.io"])),
            resources: Some(strings(&["leases"])),
            resource_names: Some(vec![lease_name(statefulset)]),
            verbs: strings(&["get", "list", "watch", "update"]),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(strings(&["apps"])),
            resources: Some(strings(&["statefulsets"])),
            resource_names: Some(vec![statefulset.to_string()]),
            verbs: strings(&["get"]),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(strings(&[""])),
            resources: Some(strings(&["pods"])),
            resource_names: Some(pods),
            verbs: strings(&["get", "list", "watch", "patch"]),
            ..Default::default()
        },
        // Role changes and fencing as Events on its pod and StatefulSet (docs/metrics.md).
        // `create` cannot be narrowed by name; the elector never reads, patches or deletes
        // Events (its rate limiter counts repeats into the next Event's note instead).
        PolicyRule {
            api_groups: Some(strings(&["events.k8s.io"])),
            resources: Some(strings(&["events"])),
            verbs: strings(&["create"]),
            ..Default::default()
        },
    ]
}

// ---- Sidecar probes (served by the elector, wired into the pod by the webhook) ----

/// Liveness endpoint of the elector's probe server: the process and its main loop make
/// progress. A failure restarts the sidecar (the watchdog has fenced slapd by then).
pub const PROBE_PATH_LIVE: &str = "/livez";
/// Readiness endpoint. A native sidecar's readiness counts towards the POD's readiness,
/// so this must mean "the elector runs", never "this pod is the leader": a healthy
/// standby must stay Ready (the old design's bug).
pub const PROBE_PATH_READY: &str = "/readyz";
/// Hand-over endpoint of the probe server, the target of the `preStop` hook the webhook
/// gives slapd's containers: it only waits (bounded) until this pod's elector no longer
/// holds office, its slapd fence is confirmed and its final contextCSN is published; when
/// the pod is not being deleted it answers at once. It triggers nothing.
pub const PROBE_PATH_HANDOVER: &str = "/handover";
/// Default port of the probe server; the webhook sets `ELECTOR_PROBE_ADDR=0.0.0.0:<port>`.
pub const DEFAULT_PROBE_PORT: u16 = 8086;

// ---- OpenLDAP integration (StatefulSet annotations, read by the webhook; docs/openldap.md) ----

/// Opt-in to the OpenLDAP integration: the absolute directory in which slapd creates its
/// ldapi socket [`LDAPI_SOCKET_NAME`] (e.g. `/run/slapd`, slapd listening on
/// `ldapi://%2Frun%2Fslapd%2Fldapi/`). The webhook shares the directory between slapd and
/// the sidecar (the in-memory `emptyDir` [`LDAPI_VOLUME`], or the volume slapd already
/// mounts there) and points the elector's fence ([`ENV_FENCE_LDAPI`]) and health check
/// ([`ENV_HEALTH_CHECK`]) at the socket.
pub const ANNOTATION_LDAPI_SOCKET_DIR: &str = "ldap-elector.dev/ldapi-socket-dir";
/// Comma-separated names of the containers that run slapd and get the socket directory
/// (default: the pod's first container).
pub const ANNOTATION_LDAP_CONTAINER: &str = "ldap-elector.dev/ldap-container";
/// The data database's suffix (its `olcSuffix`, e.g. `dc=example,dc=org`), whose contextCSN
/// the injected health check reads for catch-up gating. Required with
/// [`ANNOTATION_LDAPI_SOCKET_DIR`] unless [`ANNOTATION_HEALTH_CHECK`] sets the check itself.
pub const ANNOTATION_LDAP_SUFFIX: &str = "ldap-elector.dev/ldap-suffix";
/// The cn=config entry of the data database whose `olcReadOnly` the fence toggles
/// ([`ENV_FENCE_DATABASE`]); absent = the database of [`ANNOTATION_LDAP_SUFFIX`]
/// ([`ENV_FENCE_SUFFIX`]), or without a suffix the elector's default `olcDatabase={1}mdb,cn=config`.
pub const ANNOTATION_FENCE_DATABASE: &str = "ldap-elector.dev/fence-database";
/// Optional: the leader's divergence audits (docs/divergence.md). Each pod's slapd as the
/// leader reaches it: a URL template with `{pod}` (`ldap://{pod}.ldap:389?base=dc=example,dc=org`)
/// or `POD=URL` pairs; copied into [`ENV_AUDIT_PEERS`].
pub const ANNOTATION_AUDIT_PEERS: &str = "ldap-elector.dev/audit-peers";
/// Optional: routine audit interval (e.g. `"600s"`, `"off"`), copied into [`ENV_AUDIT_INTERVAL`].
pub const ANNOTATION_AUDIT_INTERVAL: &str = "ldap-elector.dev/audit-interval";
/// Optional: a Secret in the StatefulSet's namespace with keys [`BIND_SECRET_KEY_DN`] and
/// [`BIND_SECRET_KEY_PASSWORD`]: the simple-bind identity of the elector's LDAP reads (health
/// check, audits). Only the sidecar gets it: the DN as env, the password as a file.
pub const ANNOTATION_LDAP_BIND_SECRET: &str = "ldap-elector.dev/ldap-bind-secret";
pub const BIND_SECRET_KEY_DN: &str = "bindDN";
pub const BIND_SECRET_KEY_PASSWORD: &str = "password";
/// The volume (only the password key) and where the sidecar mounts it.
pub const BIND_SECRET_VOLUME: &str = "ldap-elector-bind";
pub const BIND_SECRET_MOUNT_PATH: &str = "/var/run/ldap-elector/bind";

/// Optional, `"true"`: the elector's `ldap://` reads use StartTLS ([`ENV_LDAP_STARTTLS`]);
/// needs [`ANNOTATION_LDAP_CA_CONFIGMAP`].
pub const ANNOTATION_LDAP_STARTTLS: &str = "ldap-elector.dev/ldap-starttls";
/// Optional: a ConfigMap in the StatefulSet's namespace whose key [`LDAP_CA_CONFIGMAP_KEY`]
/// holds the CA certificate(s) of the slapd servers (for `ldaps://` and StartTLS); mounted
/// into the sidecar only, its path set as [`ENV_LDAP_CA_FILE`].
pub const ANNOTATION_LDAP_CA_CONFIGMAP: &str = "ldap-elector.dev/ldap-ca-configmap";
pub const LDAP_CA_CONFIGMAP_KEY: &str = "ca.crt";
/// The CA ConfigMap's volume and where the sidecar mounts it.
pub const LDAP_CA_VOLUME: &str = "ldap-elector-ldap-ca";
pub const LDAP_CA_MOUNT_PATH: &str = "/var/run/ldap-elector/ldap-ca";
/// Optional, `"true"`: the explicit opt-in to simple binds over plain `ldap://` to other
/// pods ([`ENV_ALLOW_CLEARTEXT_BIND`]): the bind Secret's password then crosses the pod
/// network in cleartext.
pub const ANNOTATION_ALLOW_CLEARTEXT_BIND: &str = "ldap-elector.dev/allow-cleartext-bind";

/// File name of slapd's ldapi socket in the socket directory (slapd's own default name).
pub const LDAPI_SOCKET_NAME: &str = "ldapi";
/// The in-memory `emptyDir` the webhook adds for the socket directory when slapd does not
/// already mount a volume there.
pub const LDAPI_VOLUME: &str = "ldap-elector-ldapi";

// ---- Operations: metrics and Events (docs/metrics.md) ----

/// Elector flag env: address of the plain-HTTP `/metrics` endpoint (off when unset or `off`).
pub const ENV_METRICS_ADDR: &str = "ELECTOR_METRICS_ADDR";
/// Optional StatefulSet annotation: the port of the elector's `/metrics` endpoint. The webhook
/// then sets [`ENV_METRICS_ADDR`] to `0.0.0.0:<port>` and adds a containerPort [`METRICS_PORT_NAME`].
pub const ANNOTATION_METRICS_PORT: &str = "ldap-elector.dev/metrics-port";
/// Name of the sidecar's metrics containerPort (for PodMonitors and scrape configs).
pub const METRICS_PORT_NAME: &str = "metrics";
/// `reportingController` of the Events the elector writes.
pub const EVENT_REPORTER: &str = "ldap-elector.dev/elector";

/// Prometheus metric names (a public contract: alerts and dashboards use them).
pub mod metric {
    pub const IS_LEADER: &str = "ldap_elector_is_leader";
    pub const TERM: &str = "ldap_elector_term";
    pub const TRANSITIONS_TOTAL: &str = "ldap_elector_transitions_total";
    pub const RENEW_LATENCY_SECONDS: &str = "ldap_elector_lease_renew_latency_seconds";
    pub const LAST_RENEW_AGE_SECONDS: &str = "ldap_elector_last_renew_age_seconds";
    pub const HEALTH_CHECKS_TOTAL: &str = "ldap_elector_health_checks_total";
    pub const CONTEXT_CSN_LAG_SECONDS: &str = "ldap_elector_context_csn_lag_seconds";
    pub const DIVERGENCE_MARKED: &str = "ldap_elector_divergence_marked";
    pub const CONFIG_WARNINGS: &str = "ldap_elector_config_warnings";
    pub const EVENTS_DROPPED_TOTAL: &str = "ldap_elector_events_dropped_total";
    /// Promotions after an expiry that could not verify the old leader's current contextCSN.
    pub const UNCOVERED_PROMOTIONS_TOTAL: &str = "ldap_elector_uncovered_promotions_total";
    /// The uncovered window of this pod's last such promotion (seconds).
    pub const UNCOVERED_WINDOW_SECONDS: &str = "ldap_elector_uncovered_window_seconds";
    /// Every elector metric family.
    pub const ELECTOR: &[&str] = &[
        IS_LEADER,
        TERM,
        TRANSITIONS_TOTAL,
        RENEW_LATENCY_SECONDS,
        LAST_RENEW_AGE_SECONDS,
        HEALTH_CHECKS_TOTAL,
        CONTEXT_CSN_LAG_SECONDS,
        DIVERGENCE_MARKED,
        CONFIG_WARNINGS,
        EVENTS_DROPPED_TOTAL,
        UNCOVERED_PROMOTIONS_TOTAL,
        UNCOVERED_WINDOW_SECONDS,
    ];

    pub const WEBHOOK_REVIEWS_TOTAL: &str = "ldap_elector_webhook_reviews_total";
    pub const WEBHOOK_REVIEW_LATENCY_SECONDS: &str = "ldap_elector_webhook_review_latency_seconds";
    pub const WEBHOOK_CERT_EXPIRY_TIMESTAMP_SECONDS: &str = "ldap_elector_webhook_certificate_expiry_timestamp_seconds";
    /// Write Services that have selected no pod for longer than a failover (1 each).
    pub const WEBHOOK_LEADER_SERVICE_EMPTY: &str = "ldap_elector_webhook_leader_service_empty";
    /// 1 on the webhook replica that holds the reconciler Lease (and reconciles), else 0.
    pub const WEBHOOK_RECONCILING: &str = "ldap_elector_webhook_reconciling";
    /// Every webhook metric family.
    pub const WEBHOOK: &[&str] = &[
        WEBHOOK_REVIEWS_TOTAL,
        WEBHOOK_REVIEW_LATENCY_SECONDS,
        WEBHOOK_CERT_EXPIRY_TIMESTAMP_SECONDS,
        WEBHOOK_LEADER_SERVICE_EMPTY,
        WEBHOOK_RECONCILING,
    ];
}

/// Reasons of the Kubernetes Events the elector writes on its pod and StatefulSet.
pub mod event_reason {
    pub const BECAME_LEADER: &str = "BecameLeader";
    pub const STEPPED_DOWN: &str = "SteppedDown";
    pub const RELEASED_LEASE: &str = "ReleasedLease";
    pub const FENCED: &str = "FencedReadOnly";
    pub const UNFENCED: &str = "Unfenced";
    pub const FENCE_FAILED: &str = "FenceFailed";
    /// This pod's slapd was found diverged by the leader's audit: it is not promoted.
    pub const MARKED_DIVERGED: &str = "MarkedDiverged";
    pub const DIVERGENCE_CLEARED: &str = "DivergenceCleared";
    /// The configuration guard found a dangerous slapd setting (docs/divergence.md).
    pub const DANGEROUS_SLAPD_CONFIG: &str = "DangerousSlapdConfig";
    /// Took over after an expiry without verifying the old leader's current contextCSN.
    pub const PROMOTED_UNCOVERED: &str = "PromotedUncovered";
    pub const ALL: &[&str] = &[
        BECAME_LEADER,
        STEPPED_DOWN,
        RELEASED_LEASE,
        FENCED,
        UNFENCED,
        FENCE_FAILED,
        MARKED_DIVERGED,
        DIVERGENCE_CLEARED,
        DANGEROUS_SLAPD_CONFIG,
        PROMOTED_UNCOVERED,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_round_trip() {
        assert_eq!(split_pod_name(&pod_name("ldap-server", 1)), Some(("ldap-server", 1)));
        assert_eq!(split_pod_name("a-b-12"), Some(("a-b", 12)));
        assert_eq!(split_pod_name("nodash"), None);
        assert_eq!(split_pod_name("x-"), None);
        assert_eq!(split_pod_name("x-01"), None);
        assert_eq!(split_pod_name("x-y"), None);
    }

    #[test]
    fn our_keys_are_exactly_those_of_our_domain() {
        for key in [ANNOTATION_INJECT, ANNOTATION_LEADER_SERVICE, ANNOTATION_LDAP_SUFFIX, ANNOTATION_METRICS_PORT] {
            assert!(is_our_key(key), "{key}");
        }
        for key in ["ldap-elector.dev", "ldap-elector.devil/inject", "x.ldap-elector.dev/inject", "inject", ""] {
            assert!(!is_our_key(key), "{key}");
        }
    }

    #[test]
    fn opt_in_requires_exact_true() {
        let mut a = std::collections::BTreeMap::new();
        assert!(!is_opted_in(Some(&a)));
        a.insert(ANNOTATION_INJECT.into(), "yes".into());
        assert!(!is_opted_in(Some(&a)));
        a.insert(ANNOTATION_INJECT.into(), "true".into());
        assert!(is_opted_in(Some(&a)));
        assert!(!is_opted_in(None));
    }

    #[test]
    fn leader_services_are_trimmed_and_skip_empties() {
        let mut a = std::collections::BTreeMap::new();
        a.insert(ANNOTATION_LEADER_SERVICE.into(), " a-primary, ,b ".into());
        assert_eq!(leader_services(Some(&a)), vec!["a-primary", "b"]);
        assert!(leader_services(None).is_empty());
    }

    #[test]
    fn replica_counts_beyond_the_maximum_are_refused_and_never_sized_by() {
        assert_eq!(bounded_replicas(0), Ok(0));
        assert_eq!(bounded_replicas(i64::from(MAX_REPLICAS)), Ok(MAX_REPLICAS));
        for huge in [i64::from(MAX_REPLICAS) + 1, 1 << 31, i64::from(i32::MAX), -1] {
            let refused = bounded_replicas(huge).unwrap_err();
            assert!(refused.to_string().contains(&format!("at most {MAX_REPLICAS}")), "{refused}");
        }
        // Whatever a caller passes, the Role lists at most MAX_REPLICAS pods.
        let rules = elector_role_rules("ldap", 1 << 31);
        let pods = rules.iter().find(|r| r.resources.as_deref() == Some(&["pods".to_string()][..])).unwrap();
        assert_eq!(pods.resource_names.as_ref().map(Vec::len), Some(MAX_REPLICAS as usize));
    }

    #[test]
    fn role_is_scoped_by_resource_names() {
        let rules = elector_role_rules("ldap", 2);
        let (events, named): (Vec<_>, Vec<_>) =
            rules.iter().partition(|r| r.resources.as_deref() == Some(&["events".to_string()][..]));
        for rule in &named {
            assert!(rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()));
            assert!(!rule.verbs.iter().any(|v| v == "*" || v == "delete" || v == "create"));
        }
        // Events: create only (cannot be narrowed by name), never read, patched or deleted.
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].verbs, vec!["create".to_string()]);
        assert_eq!(events[0].api_groups.as_deref(), Some(&["events.k8s.io".to_string()][..]));
        assert_eq!(rules[2].resource_names.as_deref(), Some(&["ldap-0".to_string(), "ldap-1".to_string()][..]));
    }
}

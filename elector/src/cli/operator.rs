//! The operator's commands (I/O edges): `ldap-elector status` gathers a
//! [`assess::Snapshot`] and prints the pure assessment; `ldap-elector switchover` checks the
//! target with the pure [`switchover::verdict`], writes the request into the Lease (CAS) and
//! follows the handover. Both use the operator's kubeconfig (`KUBECONFIG`, or the in-cluster
//! account). Exit codes: see [`exit`] and docs/operations.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::cli::args::parse_duration;
use crate::cli::args::Output;
use crate::cli::assess::{self, Snapshot};
use crate::election::labels::role_of;
use crate::election::switchover;
use ldap_elector_contract::{self as contract, ROLE_LEADER};

/// Exit codes of `status` and `switchover`.
pub mod exit {
    /// status: consistent; switchover: the target leads.
    pub const OK: u8 = 0;
    /// status: warnings; switchover: refused (by the CLI's check or by the leader).
    pub const WARNINGS_OR_REFUSED: u8 = 1;
    /// Bad flags or no usable kubeconfig.
    pub const USAGE: u8 = 2;
    /// switchover: no outcome within `--wait` (the request may still be pending).
    pub const TIMED_OUT: u8 = 3;
    /// The API could not be read or written.
    pub const API: u8 = 4;
}

/// Bound of each API call of the commands.
const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The StatefulSet of the pair.
    #[arg(long)]
    pub statefulset: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Output: `human` (a table) or `json`.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct SwitchoverArgs {
    /// The StatefulSet of the pair.
    #[arg(long)]
    pub statefulset: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The pod that should lead.
    #[arg(long)]
    pub to: String,
    /// How long to wait for the target to lead (`0` or `0s`: write the request and exit).
    #[arg(long, default_value = "60s", value_parser = parse_wait)]
    pub wait: Duration,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    if matches!(s.trim(), "0" | "0s") {
        Ok(Duration::ZERO)
    } else {
        parse_duration(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot configure the Kubernetes client (KUBECONFIG?): {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}: timed out after {API_TIMEOUT:?}")]
    Timeout(String),
    #[error("{0}")]
    Missing(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(_) => exit::USAGE,
            _ => exit::API,
        }
    }
}

async fn call<T>(
    what: impl Into<String>,
    fut: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, CliError> {
    let what = what.into();
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Err(_) => Err(CliError::Timeout(what)),
        Ok(r) => r.map_err(|source| CliError::Api { what, source }),
    }
}

async fn client_and_namespace(namespace: Option<&str>) -> Result<(Client, String), CliError> {
    let client = Client::try_default().await.map_err(CliError::Client)?;
    let ns = namespace.map(String::from).unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, ns))
}

/// Reads everything `status` shows.
pub async fn gather(client: &Client, namespace: &str, statefulset: &str) -> Result<Snapshot, CliError> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let set = call(format!("reading StatefulSet {namespace}/{statefulset}"), sets.get_opt(statefulset)).await?;
    let lease_name = contract::lease_name(statefulset);
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lease = call(format!("reading Lease {namespace}/{lease_name}"), leases.get_opt(&lease_name)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let all = call(format!("listing the pods of {namespace}"), pods.list(&ListParams::default())).await?;
    let pods: Vec<Pod> = all
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.name.as_deref().and_then(contract::split_pod_name).is_some_and(|(set, _)| set == statefulset)
        })
        .collect();
    let leader_services = contract::leader_services(set.as_ref().and_then(|s| s.metadata.annotations.as_ref()));
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let mut endpoint_slices = BTreeMap::new();
    for service in &leader_services {
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
        let list = call(format!("listing the EndpointSlices of Service {service}"), slices.list(&lp)).await?;
        endpoint_slices.insert(service.clone(), list.items);
    }
    // Not fatal: an operator without `list events` still sees everything else.
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let dangerous = ListParams::default().fields(&format!("reason={}", contract::event_reason::DANGEROUS_SLAPD_CONFIG));
    let config_events = events.list(&dangerous).await.map(|l| l.items).map_err(|e| e.to_string());
    Ok(Snapshot {
        namespace: namespace.to_string(),
        statefulset: statefulset.to_string(),
        replicas: set.map(|s| s.spec.and_then(|s| s.replicas).unwrap_or(1)),
        leader_services,
        lease_name,
        lease,
        pods,
        endpoint_slices,
        config_events,
        now: Timestamp::now(),
    })
}

/// `ldap-elector status`.
pub async fn status(args: StatusArgs) -> u8 {
    let result = async {
        let (client, ns) = client_and_namespace(args.namespace.as_deref()).await?;
        gather(&client, &ns, &args.statefulset).await
    }
    .await;
    let snapshot = match result {
        Ok(s) => s,
        Err(e) => {
            if args.output == Output::Json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            eprintln!("ldap-elector status: {e}");
            return e.exit_code();
        }
    };
    let st = assess::assess(&snapshot);
    if args.output == Output::Json {
        match serde_json::to_string_pretty(&st) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ldap-elector status: cannot encode the status: {e}");
                return exit::API;
            }
        }
    } else {
        print!("{}", assess::render(&st));
    }
    if st.warnings.is_empty() {
        exit::OK
    } else {
        exit::WARNINGS_OR_REFUSED
    }
}

fn renew_age(lease: &Lease) -> Option<Duration> {
    let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0;
    let micros = Timestamp::now().as_microsecond().saturating_sub(renewed.as_microsecond()).max(0);
    Some(Duration::from_micros(micros as u64))
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone().filter(|h| !h.is_empty())
}

fn term(lease: &Lease) -> i32 {
    lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0)
}

/// `ldap-elector switchover`.
pub async fn switchover(args: SwitchoverArgs) -> u8 {
    match run_switchover(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ldap-elector switchover: {e}");
            e.exit_code()
        }
    }
}

async fn run_switchover(args: &SwitchoverArgs) -> Result<u8, CliError> {
    let (client, ns) = client_and_namespace(args.namespace.as_deref()).await?;
    let lease_name = contract::lease_name(&args.statefulset);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let target = args.to.as_str();
    // Check and write, re-checking after a conflict (the Lease is renewed every few seconds).
    let mut attempts = 0;
    let (written, old_leader) = loop {
        attempts += 1;
        let lease =
            call(format!("reading Lease {ns}/{lease_name}"), leases.get_opt(&lease_name)).await?.ok_or_else(|| {
                CliError::Missing(format!("Lease {ns}/{lease_name} does not exist (is the StatefulSet opted in?)"))
            })?;
        let pod = call(format!("reading pod {ns}/{target}"), pods.get_opt(target)).await?;
        let facts = switchover::target_facts(target, pod.as_ref(), &lease, &args.statefulset);
        let leader = switchover::leader_facts(&lease, renew_age(&lease));
        if let Err(refusal) = switchover::verdict(&facts, &leader, &args.statefulset) {
            println!("refused: {refusal}");
            return Ok(exit::WARNINGS_OR_REFUSED);
        }
        if let Some(pending) = switchover::requested(&lease).filter(|p| *p != target) {
            println!("replacing the pending request for {pending}");
        }
        match tokio::time::timeout(
            API_TIMEOUT,
            leases.replace(&lease_name, &PostParams::default(), &switchover::requesting(&lease, target)),
        )
        .await
        {
            Err(_) => return Err(CliError::Timeout(format!("writing the request into Lease {ns}/{lease_name}"))),
            Ok(Ok(written)) => break (written, leader.holder.unwrap_or_default()),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 && attempts < 5 => continue,
            Ok(Err(source)) => {
                return Err(CliError::Api { what: format!("writing the request into Lease {ns}/{lease_name}"), source })
            }
        }
    };
    println!(
        "requested switchover {old_leader} -> {target} (term {}); the leader checks it again and hands over",
        term(&written)
    );
    if args.wait.is_zero() {
        return Ok(exit::OK);
    }
    let started = Instant::now();
    let mut handed = false;
    let mut last = String::new();
    while started.elapsed() < args.wait {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lease = match call("reading the Lease", leases.get_opt(&lease_name)).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                last = "the Lease is gone".into();
                continue;
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let holder = holder(&lease);
        if switchover::requested(&lease).is_none() {
            if let Some(reason) = switchover::refusal(&lease) {
                println!("refused by the leader {old_leader}: {reason}");
                return Ok(exit::WARNINGS_OR_REFUSED);
            }
        }
        if holder.as_deref() == Some(target) && !handed && term(&lease) == term(&written) {
            handed = true;
            println!(
                "{old_leader} stepped down and handed the Lease to {target} ({:.1}s)",
                started.elapsed().as_secs_f64()
            );
        }
        if holder.as_deref() == Some(target) && term(&lease) > term(&written) {
            let labelled = call("reading the target pod", pods.get_opt(target))
                .await
                .ok()
                .flatten()
                .is_some_and(|p| role_of(&p) == Some(ROLE_LEADER));
            if labelled {
                println!("{target} leads (term {}) after {:.1}s", term(&lease), started.elapsed().as_secs_f64());
                return Ok(exit::OK);
            }
            last = format!("{target} holds the Lease (term {}) but is not labelled leader yet", term(&lease));
        } else {
            last = format!(
                "holder {} term {}, request {}",
                holder.as_deref().unwrap_or("none"),
                term(&lease),
                switchover::requested(&lease).unwrap_or("cleared")
            );
        }
    }
    println!(
        "no outcome within {:?}; last seen: {last}. The request may still be pending: `ldap-elector status` shows it; \
         remove the Lease annotation {} to cancel it.",
        args.wait,
        contract::LEASE_ANNOTATION_SWITCHOVER_TO
    );
    Ok(exit::TIMED_OUT)
}

//! Command line and environment of `ldap-elector-webhook`. Every flag has an environment
//! fallback, defaults are the safe ones, and [`Args::into_settings`] validates everything
//! at start-up so a bad value fails the process with one clear line instead of failing
//! every pod creation later.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use ldap_elector_contract as contract;

use crate::inject::InjectConfig;
use crate::reconcile::Egress;
use crate::server::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_PEER};
use crate::tls::TlsProfile;

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// Generate and rotate the certificate in a Secret of the webhook's namespace and keep
    /// the `caBundle` of the MutatingWebhookConfiguration in sync (no cert-manager needed).
    #[default]
    Secret,
    /// Serve PEM files (e.g. a cert-manager Secret mounted as a volume), reloaded by
    /// polling; the `caBundle` is someone else's job (e.g. cert-manager's CA injector).
    Files,
}

/// What this process runs (issue 17, item 2: the network-facing part holds no write right).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// Admission server and controller in one process, under one account holding the rights
    /// of both (development and tests; the chart runs the two apart).
    #[default]
    All,
    /// The TLS admission server alone (the chart's `<fullname>-webhook`): it reads, never
    /// writes; in secret mode it serves the Secret's certificate once its CA is published.
    Admission,
    /// The controller alone (the chart's `<fullname>-controller`): the reconciler and, in
    /// secret mode, the serving certificate's Secret and the `caBundle`. Serves health only.
    Controller,
}

impl Component {
    /// Whether it serves `/mutate` (and needs a serving certificate).
    pub fn serves_admission(self) -> bool {
        self != Component::Controller
    }

    /// Whether it writes: reconciles, and in secret mode creates the certificate.
    pub fn controls(self) -> bool {
        self != Component::Admission
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable lines (development).
    Text,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ldap-elector-webhook",
    version,
    about = "Mutating admission webhook that injects the ldap-elector sidecar into opted-in StatefulSet pods, \
             and the reconciler that creates their RBAC, Lease and leader Service selector"
)]
pub struct Args {
    /// What this process runs: `admission`, `controller`, or `all` of it.
    #[arg(long, env = "WEBHOOK_COMPONENT", value_enum, default_value_t = Component::All)]
    pub component: Component,
    /// HTTPS address of the admission endpoint (`POST /mutate`).
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address of `/livez` and `/readyz` (keep it cluster-internal).
    #[arg(long, env = "WEBHOOK_HEALTH_LISTEN", default_value = "0.0.0.0:8080")]
    pub health_listen: SocketAddr,
    /// TLS profile: `bsi` (TR-02102-2: AES-GCM, P-256/P-384, EMS) or `rustls-default`.
    #[arg(long, env = "WEBHOOK_TLS_PROFILE", value_enum, default_value_t = TlsProfile::Bsi)]
    pub tls_profile: TlsProfile,
    /// Where the serving certificate comes from.
    #[arg(long, env = "WEBHOOK_CERT_MODE", value_enum, default_value_t = CertMode::Secret)]
    pub cert_mode: CertMode,
    /// The webhook's own namespace (downward API); holds the certificate Secret.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The Service the API server calls; its DNS names go into the certificate.
    #[arg(long, env = "WEBHOOK_SERVICE_NAME", default_value = "ldap-elector-webhook")]
    pub service_name: String,
    /// Secret mode: the `kubernetes.io/tls` Secret holding certificate, key and CA list.
    #[arg(long, env = "WEBHOOK_CERT_SECRET", default_value = "ldap-elector-webhook-tls")]
    pub cert_secret: String,
    /// Files mode: PEM certificate chain (polled for changes).
    #[arg(long, env = "WEBHOOK_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Files mode: PEM private key (polled for changes).
    #[arg(long, env = "WEBHOOK_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Require every admission client to present a certificate issued by a CA of this PEM
    /// file: the API server's client certificate for webhooks (its AdmissionConfiguration
    /// kubeconfig). Polled; unset, any client that reaches the port may send reviews. Not
    /// used by the controller.
    #[arg(long, env = "WEBHOOK_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Secret mode: an IP address SAN for the generated certificate (repeatable), for tests
    /// registering `https://127.0.0.1:<port>`. Not supported yet (the Secret store issues
    /// DNS SANs only), so it is refused at start rather than silently ignored.
    #[arg(long = "extra-ip-san", env = "WEBHOOK_EXTRA_IP_SAN", value_delimiter = ',')]
    pub extra_ip_san: Vec<IpAddr>,
    /// Secret mode: the MutatingWebhookConfiguration whose `caBundle` is kept in sync.
    #[arg(long, env = "WEBHOOK_CONFIGURATION", default_value = "ldap-elector")]
    pub webhook_config: String,
    /// The elector image to inject; pin a digest in production (`repo@sha256:…`).
    #[arg(long, env = "ELECTOR_IMAGE")]
    pub sidecar_image: String,
    /// imagePullPolicy of the injected sidecar.
    #[arg(
        long,
        env = "ELECTOR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub sidecar_image_pull_policy: String,
    /// Names of containers that are electors of their own (comma-separated): an opted-in pod
    /// with one is refused unless its StatefulSet asks to replace it
    /// (`ldap-elector.dev/replace-containers`). Never two electors in one pod.
    #[arg(long, env = "WEBHOOK_ELECTOR_CONTAINERS", value_delimiter = ',', default_value = contract::KNOWN_ELECTOR_CONTAINER)]
    pub elector_containers: Vec<String>,
    /// Run the reconciler (per-StatefulSet ServiceAccount, Role, RoleBinding, Lease and
    /// leader Service selector); `--component=admission` never does.
    #[arg(
        long,
        env = "WEBHOOK_RECONCILE",
        default_value_t = true,
        action = ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub reconcile: bool,
    /// The API server's addresses (CIDRs, comma-separated) the LDAP NetworkPolicy
    /// (`ldap-elector.dev/network-policy`) lets the electors reach on 443/6443. Empty: any
    /// address. Give the addresses kube-proxy translates the `kubernetes` Service to.
    #[arg(long, env = "WEBHOOK_API_SERVER_CIDRS", value_delimiter = ',')]
    pub api_server_cidrs: Vec<String>,
    /// This replica's name in the reconciler Lease (downward API: the pod name). Default:
    /// the host name and the process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Open admission connections at most; one over it is closed at once.
    #[arg(long, env = "WEBHOOK_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Open admission connections from one IP address at most; one over it is closed at once.
    /// Raise it when every API server reaches the webhook through one address (a proxy,
    /// konnectivity, SNAT): the API server then is a single peer.
    #[arg(long, env = "WEBHOOK_MAX_CONNECTIONS_PER_PEER", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_PEER)]
    pub max_connections_per_peer: usize,
    /// Log format.
    #[arg(long, env = "WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// The certificate source, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    Secret(SecretCert),
    Files { cert: PathBuf, key: PathBuf },
}

/// Secret mode: where the bundle lives and whose `caBundle` to keep in sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCert {
    pub namespace: String,
    pub secret: String,
    /// The Service's DNS names, the serving certificate's SANs.
    pub dns_names: Vec<String>,
    pub webhook_config: String,
}

/// Everything the webhook needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub component: Component,
    pub listen: SocketAddr,
    pub health_listen: SocketAddr,
    pub tls_profile: TlsProfile,
    /// `None` only for the controller in files mode: it serves and manages no certificate.
    pub cert: Option<CertSource>,
    /// The CAs whose client certificates admission accepts (`None`: no client authentication).
    pub client_ca_file: Option<PathBuf>,
    pub inject: InjectConfig,
    /// Whether the reconciler runs (never with `--component=admission`).
    pub reconcile: bool,
    /// Where the generated LDAP NetworkPolicies let the electors go.
    pub egress: Egress,
    /// Where the replicas elect the one that reconciles: with `--namespace` (the chart sets
    /// it); without, a reconciler runs alone.
    pub reconciler_lease: Option<ReconcilerLease>,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
}

/// The reconciler Lease `namespace/name`, competed for as `identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcilerLease {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

impl Args {
    /// Validates the flags; the error is one line saying which flag to fix.
    pub fn into_settings(self) -> Result<Settings, String> {
        let mut inject = InjectConfig::new(self.sidecar_image.trim());
        inject.image_pull_policy = self.sidecar_image_pull_policy;
        inject.elector_containers = trimmed(&self.elector_containers);
        if let Some(bad) = inject.elector_containers.iter().find(|n| !is_dns_label_like(n)) {
            return Err(format!("--elector-containers: {bad:?} is not a container name"));
        }
        inject.validate().map_err(|e| format!("--sidecar-image/--sidecar-image-pull-policy: {e}"))?;
        let serves = self.component.serves_admission();
        if (serves && self.listen.port() == 0) || self.health_listen.port() == 0 {
            return Err("--listen and --health-listen need a non-zero port".into());
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err("--max-connections and --max-connections-per-peer must be at least 1".into());
        }
        if serves && self.listen == self.health_listen {
            return Err(format!("--listen and --health-listen must differ (both {})", self.listen));
        }
        let reconcile = self.reconcile && self.component.controls();
        if self.component == Component::Controller && self.cert_mode == CertMode::Files {
            if !reconcile {
                return Err(
                    "--component=controller with --cert-mode=files and --reconcile=false has nothing to do".into()
                );
            }
            if self.cert_file.is_some() || self.key_file.is_some() {
                return Err("--cert-file/--key-file: --component=controller serves no certificate".into());
            }
        }
        let api_server_cidrs = trimmed(&self.api_server_cidrs);
        if let Some(bad) = api_server_cidrs.iter().find(|c| !is_cidr(c)) {
            return Err(format!("--api-server-cidrs: {bad:?} is not an address block like 198.51.100.10/32"));
        }
        let namespace = self.namespace.filter(|n| !n.trim().is_empty());
        let reconciler_lease = namespace.clone().filter(|_| reconcile).map(|namespace| ReconcilerLease {
            namespace,
            name: crate::reconcile::leadership::lease_name(&self.webhook_config),
            identity: self.identity.filter(|i| !i.trim().is_empty()).unwrap_or_else(default_identity),
        });
        let cert = match self.cert_mode {
            CertMode::Secret => {
                let namespace = namespace.ok_or(
                    "--cert-mode=secret needs --namespace (POD_NAMESPACE, from the downward API) for the Secret",
                )?;
                for (flag, value) in [
                    ("--service-name", &self.service_name),
                    ("--cert-secret", &self.cert_secret),
                    ("--webhook-config", &self.webhook_config),
                ] {
                    if !is_dns_label_like(value) {
                        return Err(format!("{flag} {value:?} is not a valid Kubernetes object name"));
                    }
                }
                if self.cert_file.is_some() || self.key_file.is_some() {
                    return Err("--cert-file/--key-file only apply to --cert-mode=files".into());
                }
                if !self.extra_ip_san.is_empty() {
                    // ldap_elector_certs::ensure_secret issues and checks DNS SANs only;
                    // an IP SAN needs an `ip_addrs` parameter there first.
                    return Err("--extra-ip-san is not supported yet: the Secret store issues DNS SANs only; \
                                use --cert-mode=files with a certificate carrying the IP SAN"
                        .into());
                }
                let dns_names = ldap_elector_certs::webhook_dns_names(&self.service_name, &namespace);
                Some(CertSource::Secret(SecretCert {
                    namespace,
                    secret: self.cert_secret,
                    dns_names,
                    webhook_config: self.webhook_config,
                }))
            }
            CertMode::Files if !serves => None,
            CertMode::Files => match (self.cert_file, self.key_file) {
                (Some(cert), Some(key)) => {
                    if !self.extra_ip_san.is_empty() {
                        return Err("--extra-ip-san applies to --cert-mode=secret; in files mode the \
                                    certificate file decides its SANs"
                            .into());
                    }
                    Some(CertSource::Files { cert, key })
                }
                _ => return Err("--cert-mode=files needs both --cert-file and --key-file".into()),
            },
        };
        Ok(Settings {
            component: self.component,
            listen: self.listen,
            health_listen: self.health_listen,
            tls_profile: self.tls_profile,
            cert,
            client_ca_file: self.client_ca_file,
            inject,
            reconcile,
            egress: Egress { api_server_cidrs },
            reconciler_lease,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
        })
    }
}

/// Host name and process id: unique among the replicas of a Deployment (each pod has its
/// own host name) and among webhooks sharing a host (tests).
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// The entries of a comma-separated flag, trimmed, without empty ones.
fn trimmed(values: &[String]) -> Vec<String> {
    values.iter().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

/// `address/prefix` with a prefix no longer than the address, as NetworkPolicy's `ipBlock`.
fn is_cidr(cidr: &str) -> bool {
    let Some((address, prefix)) = cidr.split_once('/') else { return false };
    let (Ok(address), Ok(prefix)) = (address.parse::<IpAddr>(), prefix.parse::<u8>()) else { return false };
    prefix <= if address.is_ipv4() { 32 } else { 128 }
}

/// RFC 1123 subdomain, as Kubernetes names most objects.
fn is_dns_label_like(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ldap-elector-webhook").chain(args.iter().copied()))
    }

    fn settings(args: &[&str]) -> Result<Settings, String> {
        parse(args).map_err(|e| e.to_string())?.into_settings()
    }

    #[test]
    fn defaults_are_secret_mode_bsi_and_reconcile_on() {
        let s = settings(&["--sidecar-image=r/e:1", "--namespace=sys"]).unwrap();
        assert_eq!(s.tls_profile, TlsProfile::Bsi);
        assert!(s.reconcile);
        assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.health_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.inject.image_pull_policy, "IfNotPresent");
        assert_eq!(s.component, Component::All);
        let Some(CertSource::Secret(SecretCert { namespace, secret, dns_names, webhook_config })) = s.cert else {
            panic!()
        };
        assert_eq!(
            (namespace.as_str(), secret.as_str(), webhook_config.as_str()),
            ("sys", "ldap-elector-webhook-tls", "ldap-elector")
        );
        assert!(dns_names.contains(&"ldap-elector-webhook.sys.svc".to_string()));
    }

    #[test]
    fn connection_caps_default_to_the_servers_and_zero_is_refused() {
        let base = ["--sidecar-image=r/e:1", "--namespace=sys"];
        let caps = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            settings(&args).map(|s| (s.max_connections, s.max_connections_per_peer))
        };
        assert_eq!(caps(&[]), Ok((DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_PEER)));
        assert_eq!(caps(&["--max-connections=500", "--max-connections-per-peer=64"]), Ok((500, 64)));
        assert!(caps(&["--max-connections-per-peer=0"]).unwrap_err().contains("--max-connections-per-peer"));
        assert!(caps(&["--max-connections=-1"]).is_err());
    }

    #[test]
    fn elector_containers_default_to_nubus_and_can_be_listed_or_cleared() {
        let base = ["--sidecar-image=r/e:1", "--namespace=sys"];
        let names = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            settings(&args).map(|s| s.inject.elector_containers)
        };
        assert_eq!(names(&[]), Ok(vec![contract::KNOWN_ELECTOR_CONTAINER.to_string()]));
        assert_eq!(names(&["--elector-containers=a, b"]), Ok(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(names(&["--elector-containers="]), Ok(vec![]));
        assert!(names(&["--elector-containers=Bad_Name"]).unwrap_err().contains("--elector-containers"));
    }

    #[test]
    fn sidecar_image_is_required() {
        assert!(parse(&["--namespace=sys"]).is_err());
        assert!(settings(&["--sidecar-image=  ", "--namespace=sys"]).unwrap_err().contains("--sidecar-image"));
    }

    #[test]
    fn secret_mode_needs_a_namespace() {
        let err = settings(&["--sidecar-image=r/e:1"]).unwrap_err();
        assert!(err.contains("POD_NAMESPACE"), "{err}");
    }

    #[test]
    fn files_mode_needs_both_files() {
        let err = settings(&["--sidecar-image=r/e:1", "--cert-mode=files", "--cert-file=/c"]).unwrap_err();
        assert!(err.contains("--key-file"), "{err}");
        let s = settings(&["--sidecar-image=r/e:1", "--cert-mode=files", "--cert-file=/c", "--key-file=/k"]).unwrap();
        assert_eq!(s.cert, Some(CertSource::Files { cert: "/c".into(), key: "/k".into() }));
    }

    #[test]
    fn api_server_cidrs_narrow_the_ldap_network_policy_and_bad_ones_are_refused() {
        let base = ["--sidecar-image=r/e:1", "--namespace=sys"];
        let cidrs = |v: &str| settings(&[base[0], base[1], v]).map(|s| s.egress.api_server_cidrs);
        assert_eq!(settings(&base).unwrap().egress, Egress::default());
        assert_eq!(
            cidrs("--api-server-cidrs=198.51.100.10/32, 2001:db8::/64"),
            Ok(vec!["198.51.100.10/32".to_string(), "2001:db8::/64".to_string()])
        );
        for bad in ["198.51.100.10", "198.51.100.10/33", "2001:db8::/129", "api.example/32"] {
            assert!(cidrs(&format!("--api-server-cidrs={bad}")).unwrap_err().contains("--api-server-cidrs"), "{bad}");
        }
    }

    #[test]
    fn the_admission_server_never_reconciles_and_the_controller_serves_no_certificate() {
        let admission = settings(&["--sidecar-image=r/e:1", "--namespace=sys", "--component=admission"]).unwrap();
        assert!(!admission.reconcile && admission.reconciler_lease.is_none());
        assert!(matches!(admission.cert, Some(CertSource::Secret(_))), "reads the Secret's certificate");

        let controller = ["--sidecar-image=r/e:1", "--namespace=sys", "--component=controller"];
        let secret_mode = settings(&controller).unwrap();
        assert!(secret_mode.reconcile && secret_mode.reconciler_lease.is_some());
        assert!(matches!(secret_mode.cert, Some(CertSource::Secret(_))), "creates the Secret, publishes its CA");
        // `--listen` is not used by the controller: it may even equal the health address.
        let same = [&controller[..], &["--listen=0.0.0.0:8080"]].concat();
        assert!(settings(&same).is_ok());

        let files = [&controller[..], &["--cert-mode=files"]].concat();
        assert_eq!(settings(&files).unwrap().cert, None, "cert-manager's or the admin's certificate");
        let with_files = [&files[..], &["--cert-file=/c", "--key-file=/k"]].concat();
        assert!(settings(&with_files).unwrap_err().contains("serves no certificate"));
        // Like `--listen`, the admission server's client CAs are not the controller's concern.
        let client_auth = [&controller[..], &["--client-ca-file=/ca.crt"]].concat();
        assert!(settings(&client_auth).is_ok());
        let idle = [&files[..], &["--reconcile=false"]].concat();
        assert!(settings(&idle).unwrap_err().contains("nothing to do"));
        assert!(parse(&["--sidecar-image=r/e:1", "--component=reconciler"]).is_err());
    }

    #[test]
    fn the_replicas_elect_the_reconciler_in_their_namespace_when_they_know_it() {
        let lease = |args: &[&str]| settings(args).unwrap().reconciler_lease;
        let elected = lease(&["--sidecar-image=r/e:1", "--namespace=sys", "--identity=web-0"]).unwrap();
        assert_eq!(
            elected,
            ReconcilerLease {
                namespace: "sys".into(),
                name: "ldap-elector-reconciler".into(),
                identity: "web-0".into()
            }
        );
        let unnamed = lease(&["--sidecar-image=r/e:1", "--namespace=sys", "--webhook-config=w"]).unwrap();
        assert_eq!(unnamed.name, "w-reconciler");
        assert!(unnamed.identity.ends_with(&format!("-{}", std::process::id())), "{unnamed:?}");
        assert_eq!(lease(&["--sidecar-image=r/e:1", "--namespace=sys", "--reconcile=false"]), None);
        let files = ["--sidecar-image=r/e:1", "--cert-mode=files", "--cert-file=/c", "--key-file=/k"];
        assert_eq!(lease(&files), None, "without a namespace the reconciler runs alone");
    }

    #[test]
    fn reconcile_can_be_switched_off_and_bad_values_are_refused() {
        let base = ["--sidecar-image=r/e:1", "--namespace=sys"];
        let off = |v: &str| settings(&[base[0], base[1], v]).map(|s| s.reconcile);
        assert_eq!(off("--reconcile=false"), Ok(false));
        assert_eq!(off("--reconcile=true"), Ok(true));
        assert!(off("--reconcile=maybe").is_err());
        assert!(settings(&[base[0], base[1], "--tls-profile=x25519"]).is_err());
        assert!(settings(&[base[0], base[1], "--sidecar-image-pull-policy=Sometimes"]).is_err());
        assert!(settings(&[base[0], base[1], "--listen=0.0.0.0:8080"]).unwrap_err().contains("differ"));
        assert!(settings(&[base[0], base[1], "--cert-secret=Bad_Name"]).unwrap_err().contains("--cert-secret"));
        assert!(settings(&[base[0], base[1], "--extra-ip-san=127.0.0.1"]).unwrap_err().contains("--extra-ip-san"));
        assert!(settings(&[base[0], base[1], "--extra-ip-san=not-an-ip"]).is_err());
    }

    #[test]
    fn every_flag_has_an_env_fallback() {
        use clap::CommandFactory;
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{id} has no environment fallback");
        }
    }
}

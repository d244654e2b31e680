//! The real node's configuration files and addresses, rendered from a [`Layout`] by pure
//! functions (no I/O): containerd, CNI, kubelet, kube-proxy, and the API server flags.
//! docs/real-node.md says why each setting is there.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The node's own address, on an interface of its own (TEST-NET-3): the kubelet serves
/// on it, the API server listens and advertises on it, and pods reach it through their gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Pod addresses (TEST-NET-2): the CNI bridge's host-local range.
pub const POD_CIDR: &str = "198.51.100.0/24";
/// Service ClusterIPs (benchmark range).
pub const SERVICE_CIDR: &str = "198.18.0.0/24";
/// The `kubernetes` Service's ClusterIP: the first address of [`SERVICE_CIDR`].
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The port-less bridge that holds [`NODE_IP`] and swallows unrouted Service traffic.
pub const NODE_LINK: &str = "ldapbed-node0";
/// The CNI bridge (pods' gateway).
pub const BRIDGE: &str = "ldapbed-br0";
/// The CNI network name (also the prefix of its cache files under /var/lib/cni).
pub const CNI_NETWORK: &str = "ldap-elector-bed";
/// The node's name in the API.
pub const NODE_NAME: &str = "real-node";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where Debian's containernetworking-plugins install the CNI binaries.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Debian's runc.
pub const RUNC: &str = "/usr/sbin/runc";
/// Users of the node components in the bed's token file: the names the default RBAC
/// bindings (system:node-proxier, system:kube-scheduler) and the Node authorizer expect.
pub const KUBELET_USER: &str = "system:node:real-node";
pub const KUBELET_GROUP: &str = "system:nodes";
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The API server's client certificate name towards kubelets (bound to system:kubelet-api-admin).
pub const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// Where everything of the node lives: `machine` is fixed per machine (so that a crashed
/// run's state is found at the next start), `logs` is the bed's directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub machine: PathBuf,
    pub logs: PathBuf,
}

impl Layout {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.machine.join(rel)
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.path("containerd/containerd.sock")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.path("containerd/config.toml")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.path("cni/net.d")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.path("kubelet")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.path("pod-logs")
    }
    pub fn pki(&self, name: &str) -> PathBuf {
        self.path(&format!("pki/{name}"))
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// containerd 1.6 (config version 2): its own root, state, sockets and plugin dirs; runc with
/// cgroupfs; `sandbox_image` (the imported pause image); the OOM score restriction without which runc fails here; CNI from our dirs.
pub fn containerd_toml(l: &Layout, sandbox_image: &str) -> String {
    let root = s(&l.path("containerd/root"));
    let state = s(&l.path("containerd/state"));
    let sock = s(&l.containerd_socket());
    let opt = s(&l.path("containerd/opt"));
    let runc_root = s(&l.path("containerd/runc"));
    let cni_conf = s(&l.cni_conf_dir());
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  Root = "{runc_root}"
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"#
    )
}

/// The CNI network: a bridge with host-local addresses from [`POD_CIDR`] (state in our own
/// dir); no masquerade (nothing leaves the machine). containerd adds `loopback` itself.
pub fn cni_conflist(l: &Layout) -> String {
    let ipam_dir = s(&l.path("cni/ipam"));
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            }
        }]
    })
    .to_string()
}

/// The KubeletConfiguration: cgroup v1 allowed, cgroupfs driver, serving on the node IP with a
/// certificate from the node CA, webhook authn/authz plus x509 client certs, no evictions or
/// image GC (a test VM's disk is not a signal), container logs rotated only past 200 MiB (a
/// kept bed's logs of a debug run, e.g. slapd's `-d sync`, stay whole), volumes measured every
/// 10 s (not 1 min: the kubelet's storage limits act on it), everything under our dirs.
pub fn kubelet_yaml(l: &Layout, port: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{sock}
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzPort: 0
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
podCIDR: {POD_CIDR}
failSwapOn: false
staticPodPath: ""
podLogsDir: {logs}
containerLogMaxSize: 200Mi
volumeStatsAggPeriod: 10s
volumePluginDir: {plugins}
serializeImagePulls: false
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
shutdownGracePeriod: 0s
"#,
        sock = s(&l.containerd_socket()),
        cert = s(&l.pki("kubelet.crt")),
        key = s(&l.pki("kubelet.key")),
        ca = s(&l.pki("node-ca.crt")),
        logs = s(&l.pod_logs()),
        plugins = s(&l.path("kubelet-volume-plugins")),
    )
}

/// kube-proxy's own default `minSyncPeriod`: after each sync of its rules it waits this long
/// before the next (1.35 has no burst), so the second of two endpoint changes a few hundred
/// milliseconds apart is programmed about a second after the first. (A `0s` in the file is
/// not "no wait": kube-proxy reads a zero as unset and applies this default.)
pub const KUBE_PROXY_MIN_SYNC: Duration = Duration::from_secs(1);

/// A bench's other cluster setting: kube-proxy's `minSyncPeriod` in milliseconds (default
/// [`KUBE_PROXY_MIN_SYNC`], kube-proxy's own). docs/real-node.md, "Settings".
pub const KUBE_PROXY_MIN_SYNC_ENV: &str = "LDAP_ELECTOR_KUBE_PROXY_MIN_SYNC_MS";

/// A bench's other cluster setting: kube-proxy's backend, `iptables` (default, what most
/// clusters run) or `nftables`. docs/real-node.md, "Settings".
pub const KUBE_PROXY_MODE_ENV: &str = "LDAP_ELECTOR_KUBE_PROXY_MODE";

/// kube-proxy's backend. They differ in how a sync is applied: iptables mode writes its
/// rules with one `iptables-restore` that commits the `filter` table and then the `nat`
/// table, two separate commits; nftables mode replaces its one table in one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Iptables,
    Nftables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// The kube-proxy settings a node runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    pub mode: ProxyMode,
    /// `minSyncPeriod`: a whole number of milliseconds ≥ 1 (kube-proxy reads 0 as unset).
    pub min_sync: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings { mode: ProxyMode::Iptables, min_sync: KUBE_PROXY_MIN_SYNC }
    }
}

impl ProxySettings {
    /// From [`KUBE_PROXY_MODE_ENV`] and [`KUBE_PROXY_MIN_SYNC_ENV`]'s values, where set.
    pub fn parse(mode: Option<&str>, min_sync: Option<&str>) -> anyhow::Result<ProxySettings> {
        let mut settings = ProxySettings::default();
        if let Some(mode) = mode {
            settings.mode = match mode.trim() {
                "iptables" => ProxyMode::Iptables,
                "nftables" => ProxyMode::Nftables,
                _ => anyhow::bail!("{KUBE_PROXY_MODE_ENV}={mode:?}: expected iptables or nftables"),
            };
        }
        if let Some(value) = min_sync {
            settings.min_sync = match value.trim().parse::<u64>() {
                Ok(ms) if ms >= 1 => Duration::from_millis(ms),
                _ => anyhow::bail!("{KUBE_PROXY_MIN_SYNC_ENV}={value:?}: expected whole milliseconds ≥ 1 (e.g. 100)"),
            };
        }
        Ok(settings)
    }

    /// From this process's environment.
    pub fn from_env() -> anyhow::Result<ProxySettings> {
        let var = |name| std::env::var(name).ok();
        ProxySettings::parse(var(KUBE_PROXY_MODE_ENV).as_deref(), var(KUBE_PROXY_MIN_SYNC_ENV).as_deref())
    }
}

/// kube-proxy in `settings.mode`: NodePorts only on the node IP, no localhost NodePorts (that
/// would set route_localnet), conntrack sysctls left alone, health/metrics only on the node IP
/// (empty means the defaults, which listen on all addresses); both backends' sections carry
/// the same sync periods (the other one is ignored).
pub fn kube_proxy_yaml(kubeconfig: &Path, settings: ProxySettings) -> String {
    let min_sync_ms = settings.min_sync.as_millis().max(1);
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: {mode}
clusterCIDR: {POD_CIDR}
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: {NODE_IP}:10256
metricsBindAddress: {NODE_IP}:10249
nodePortAddresses: ["{NODE_IP}/32"]
clientConnection:
  kubeconfig: {kubeconfig}
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 10s
  minSyncPeriod: {min_sync_ms}ms
nftables:
  masqueradeAll: false
  syncPeriod: 10s
  minSyncPeriod: {min_sync_ms}ms
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        mode = settings.mode.as_str(),
        kubeconfig = s(kubeconfig),
    )
}

/// Lines for the API server's token file: the kubelet, kube-proxy and scheduler identities.
pub fn token_lines(kubelet: &str, proxy: &str, scheduler: &str) -> String {
    format!(
        "{kubelet},{KUBELET_USER},real-node-kubelet,{KUBELET_GROUP}\n\
         {proxy},{KUBE_PROXY_USER},real-node-kube-proxy\n\
         {scheduler},{SCHEDULER_USER},real-node-scheduler\n"
    )
}

/// The API server flags of a bed with a real node: it listens and advertises on the node IP
/// (pods reach it through the `kubernetes` Service, whose endpoint the lease reconciler keeps),
/// Services from [`SERVICE_CIDR`], and it talks to the kubelet on its InternalIP with a client
/// certificate, verifying the kubelet's serving certificate against the node CA.
pub fn apiserver_flags(l: &Layout) -> Vec<(&'static str, String)> {
    vec![
        ("--bind-address", NODE_IP.to_string()),
        ("--advertise-address", NODE_IP.to_string()),
        ("--endpoint-reconciler-type", "lease".into()),
        ("--service-cluster-ip-range", SERVICE_CIDR.into()),
        ("--kubelet-preferred-address-types", "InternalIP".into()),
        ("--kubelet-client-certificate", s(&l.pki("apiserver-kubelet-client.crt"))),
        ("--kubelet-client-key", s(&l.pki("apiserver-kubelet-client.key"))),
        ("--kubelet-certificate-authority", s(&l.pki("node-ca.crt"))),
    ]
}

/// Sets `--name=value` in `args`, replacing an existing value of that flag.
pub fn set_flag(args: &mut Vec<String>, name: &str, value: &str) {
    let prefix = format!("{name}=");
    let flag = format!("{name}={value}");
    match args.iter_mut().find(|a| a.starts_with(&prefix)) {
        Some(existing) => *existing = flag,
        None => args.push(flag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout { machine: PathBuf::from("/m"), logs: PathBuf::from("/l") }
    }

    #[test]
    fn set_flag_replaces_or_appends() {
        let mut args = vec!["--bind-address=127.0.0.1".to_string(), "--v=1".to_string()];
        set_flag(&mut args, "--bind-address", "203.0.113.10");
        set_flag(&mut args, "--advertise", "x");
        assert_eq!(args, ["--bind-address=203.0.113.10", "--v=1", "--advertise=x"]);
    }

    #[test]
    fn containerd_config_keeps_everything_under_the_machine_dir() {
        let toml = containerd_toml(&layout(), "localhost/pause:1");
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("SystemdCgroup = false"));
        assert!(toml.contains("sandbox_image = \"localhost/pause:1\""));
        for line in toml.lines().filter(|l| l.contains("= \"/")) {
            let path = line.split('"').nth(1).unwrap_or_default();
            assert!(path.starts_with("/m/") || path == CNI_BIN_DIR || path == RUNC, "{line}");
        }
    }

    #[test]
    fn kube_proxy_gets_the_mode_and_minimum_sync_period_it_is_given_never_a_zero_it_would_read_as_unset() {
        let yaml = |mode, min_sync| kube_proxy_yaml(Path::new("/k"), ProxySettings { mode, min_sync });
        let default = kube_proxy_yaml(Path::new("/k"), ProxySettings::default());
        assert!(default.contains("mode: iptables\n") && default.matches("minSyncPeriod: 1000ms").count() == 2);
        let nft = yaml(ProxyMode::Nftables, Duration::from_millis(100));
        assert!(nft.contains("mode: nftables\n") && nft.matches("minSyncPeriod: 100ms").count() == 2);
        assert!(yaml(ProxyMode::Iptables, Duration::ZERO).contains("minSyncPeriod: 1ms"));

        assert_eq!(ProxySettings::parse(None, None).ok(), Some(ProxySettings::default()));
        let parsed = ProxySettings::parse(Some("nftables"), Some("100")).ok();
        assert_eq!(parsed, Some(ProxySettings { mode: ProxyMode::Nftables, min_sync: Duration::from_millis(100) }));
        for bad in ["0", "1s", "-5", ""] {
            assert!(ProxySettings::parse(None, Some(bad)).is_err(), "{bad}");
        }
        assert!(ProxySettings::parse(Some("ipvs"), None).is_err());
    }

    #[test]
    fn addresses_stay_in_documentation_and_benchmark_ranges() {
        let allowed = |ip: Ipv4Addr| {
            let o = ip.octets();
            matches!(o, [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]) || (o[0] == 198 && (o[1] & 0xfe) == 18)
        };
        assert!(allowed(NODE_IP) && allowed(KUBERNETES_SERVICE_IP));
        for cidr in [POD_CIDR, SERVICE_CIDR] {
            let ip: Ipv4Addr = cidr.split('/').next().unwrap_or_default().parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
            assert!(allowed(ip), "{cidr}");
        }
    }

    #[test]
    fn cni_network_is_a_bridge_with_host_local_state_in_our_dir() {
        let v: serde_json::Value = serde_json::from_str(&cni_conflist(&layout())).unwrap_or_default();
        assert_eq!(v["plugins"][0]["bridge"], BRIDGE);
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/m/cni/ipam");
        assert_eq!(v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
    }

    #[test]
    fn kubelet_config_allows_cgroup_v1_with_cgroupfs() {
        let y = kubelet_yaml(&layout(), 10250);
        assert!(y.contains("failCgroupV1: false") && y.contains("cgroupDriver: cgroupfs"));
        assert!(y.contains("containerRuntimeEndpoint: unix:///m/containerd/containerd.sock"));
        assert!(y.contains(&format!("address: {NODE_IP}")));
    }
}

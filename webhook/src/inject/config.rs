//! The webhook's sidecar settings (from its flags), validated once at start-up.

use ldap_elector_contract as contract;

/// The apiserver refuses projected tokens shorter-lived than this.
const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// Sidecar settings from the webhook's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Elector image; pin a digest in production (`repo@sha256:...`).
    pub image: String,
    pub image_pull_policy: String,
    pub resources: SidecarResources,
    /// Fixed non-root UID/GID of the elector (distroless `nonroot` is 65532).
    pub uid: i64,
    pub gid: i64,
    /// Port of the elector's probe server (`ELECTOR_PROBE_ADDR`).
    pub probe_port: u16,
    /// Audience of the projected token; `None` = the apiserver's own audience.
    pub token_audience: Option<String>,
    pub token_expiration_seconds: i64,
    /// Names of containers that are electors of their own: an opted-in pod with one of them
    /// is refused unless the StatefulSet names it in
    /// [`contract::ANNOTATION_REPLACE_CONTAINERS`] (never two electors).
    pub elector_containers: Vec<String>,
}

/// Requests and limits of the sidecar, as Kubernetes quantities. Small: the elector idles
/// between renewals. CPU throttling delays renewals, so keep the CPU limit well above
/// the request. Ephemeral storage is a request only: a limit on an injected container would cap
/// the consumer's whole pod, its data included (`template::resources`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    pub ephemeral_storage_request: String,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "100m".into(),
            memory_limit: "64Mi".into(),
            ephemeral_storage_request: "16Mi".into(),
        }
    }
}

impl InjectConfig {
    /// Safe defaults for everything but the image, which has no sane default.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: SidecarResources::default(),
            uid: 65532,
            gid: 65532,
            probe_port: contract::DEFAULT_PROBE_PORT,
            token_audience: None,
            token_expiration_seconds: contract::TOKEN_EXPIRATION_SECONDS,
            elector_containers: vec![contract::KNOWN_ELECTOR_CONTAINER.into()],
        }
    }

    /// Start-up validation, so a bad flag fails the webhook instead of every pod.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        let r = &self.resources;
        if self.image.trim().is_empty() {
            return fail("the sidecar image must not be empty".into());
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return fail(format!("imagePullPolicy {:?} is not Always, IfNotPresent or Never", self.image_pull_policy));
        }
        if self.uid <= 0 || self.gid <= 0 {
            return fail(format!("sidecar uid/gid must be non-zero (got {}/{})", self.uid, self.gid));
        }
        if self.probe_port == 0 {
            return fail("the probe port must not be 0".into());
        }
        if self.token_expiration_seconds < MIN_TOKEN_EXPIRATION_SECONDS {
            return fail(format!(
                "token expiration {}s is below the apiserver minimum of {MIN_TOKEN_EXPIRATION_SECONDS}s",
                self.token_expiration_seconds
            ));
        }
        let quantities =
            [&r.cpu_request, &r.memory_request, &r.cpu_limit, &r.memory_limit, &r.ephemeral_storage_request];
        if quantities.iter().any(|q| q.trim().is_empty()) {
            return fail("sidecar requests and limits must all be set".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid webhook configuration: {0}")]
pub struct ConfigError(String);

#[cfg(test)]
mod tests {
    use crate::inject::testing::cfg;

    #[test]
    fn config_defaults_are_valid() {
        assert_eq!(cfg().validate(), Ok(()));
        let mut bad = cfg();
        bad.uid = 0;
        assert!(bad.validate().is_err());
    }
}

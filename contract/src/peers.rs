//! Where the leader reaches each pod's slapd for the divergence audit
//! (`ELECTOR_AUDIT_PEERS`, the `audit-peers` annotation).

use std::collections::BTreeMap;

/// How the elector (and `reseed`) reach each pod's slapd for the audit: a template with
/// `{pod}` (`ldap://{pod}.ldap-server:389?base=dc=example,dc=org`, the headless Service's
/// DNS names) or explicit `pod=URL` pairs separated by commas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerUrls {
    Template(String),
    Explicit(BTreeMap<String, String>),
}

impl PeerUrls {
    pub fn parse(s: &str) -> Result<PeerUrls, String> {
        let s = s.trim();
        if s.contains("{pod}") {
            return Ok(PeerUrls::Template(s.to_string()));
        }
        // Commas also occur in the URLs' `base=` DNs: a new pair starts only at `POD=scheme://`.
        let starts_pair = |part: &str| {
            part.split_once('=').is_some_and(|(pod, url)| {
                !pod.is_empty()
                    && pod.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    && (url.starts_with("ldap://") || url.starts_with("ldaps://") || url.starts_with("ldapi://"))
            })
        };
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<String> = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if starts_pair(part) {
                let (pod, url) = part.split_once('=').unwrap_or_default();
                map.insert(pod.to_string(), url.to_string());
                last = Some(pod.to_string());
            } else if let Some(url) = last.as_ref().and_then(|pod| map.get_mut(pod)) {
                url.push(',');
                url.push_str(part);
            } else {
                return Err(format!("{part:?}: expected POD=URL (or one URL template with {{pod}})"));
            }
        }
        if map.is_empty() {
            return Err("no servers given: a URL template with {pod} or POD=URL pairs".into());
        }
        Ok(PeerUrls::Explicit(map))
    }

    /// The URL of `pod`'s slapd.
    pub fn url(&self, pod: &str) -> Option<String> {
        match self {
            PeerUrls::Template(t) => Some(t.replace("{pod}", pod)),
            PeerUrls::Explicit(map) => map.get(pod).cloned(),
        }
    }
}

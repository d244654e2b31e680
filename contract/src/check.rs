//! The syntax of the elector's health checks (`ELECTOR_HEALTH_CHECK`): `none`,
//! `tcp://HOST:PORT`, `exec:COMMAND`, and the LDAP check URL `ldap://HOST:PORT?base=SUFFIX`,
//! `ldaps://HOST:PORT?base=SUFFIX` or `ldapi://%2Fpath%2Fsock?base=SUFFIX` with its bind and
//! transport security ([`Tls`], and the rule [`LdapCheck::cleartext_bind_refused`]: no
//! password over plain `ldap://` to a host that is not local). Pure: the elector runs the
//! checks; the webhook validates the values it injects with the same parser.

use std::path::PathBuf;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::names::{
    ENV_ALLOW_CLEARTEXT_BIND, ENV_LDAP_BIND_DN, ENV_LDAP_BIND_PASSWORD_FILE, ENV_LDAP_CA_FILE, ENV_LDAP_STARTTLS,
};

/// What RFC 3986 leaves unescaped: ASCII alphanumerics and `-._~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// A DN in a check URL's `base=`: the unreserved bytes and `=` `,`.
const DN: &AsciiSet = &UNRESERVED.remove(b'=').remove(b',');

/// How the check authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// No bind (anonymous); the default over `ldap://` without a bind DN.
    Anonymous,
    /// Simple bind; the password is read from the file on every check.
    Simple { dn: String, password_file: PathBuf },
    /// SASL EXTERNAL (peer credentials); the default over `ldapi://` without a bind DN.
    SaslExternal,
}

/// Credentials from flags or the environment, applied to a parsed check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub bind_dn: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Credentials {
    /// From `ELECTOR_LDAP_BIND_DN` and `ELECTOR_LDAP_BIND_PASSWORD_FILE` (empty = unset).
    pub fn from_env() -> Credentials {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Credentials {
            bind_dn: var(ENV_LDAP_BIND_DN),
            password_file: var(ENV_LDAP_BIND_PASSWORD_FILE).map(PathBuf::from),
        }
    }
}

/// Transport security of the elector's LDAP connections over TCP, from flags or the
/// environment (`--ldap-starttls`, `--ldap-ca-file`, `--allow-cleartext-bind`). `ldapi://`
/// is a local socket and never uses TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Upgrade `ldap://` connections with StartTLS before the bind (`ldaps://` is TLS anyway).
    pub starttls: bool,
    /// PEM file with the CA certificate(s) trusted for the servers' certificates (only
    /// these; no system roots). Required whenever TLS is used.
    pub ca_file: Option<PathBuf>,
    /// Explicit opt-in: a simple bind over plain `ldap://` to a host that is not local.
    pub allow_cleartext_bind: bool,
}

/// How one LDAP connection is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ldapi://`: a Unix socket in the pod (local by construction).
    Ldapi,
    /// `ldap://` without TLS: everything, a password too, crosses the network in cleartext.
    Plain,
    /// `ldap://` upgraded with StartTLS before the bind.
    StartTls,
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::StartTls | Transport::Ldaps)
    }
}

/// Whether `host` (as written in a URL, IPv6 without brackets) is this machine: `localhost`
/// or a loopback address. Only literal names count: a name that resolves to loopback is
/// not trusted to keep doing so.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => false,
    }
}

/// An LDAP health check: `ldap://HOST:PORT?base=SUFFIX`, `ldaps://HOST:PORT?base=SUFFIX` or
/// `ldapi://%2Fpath%2Fsock?base=SUFFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapCheck {
    /// The connection URL without the query (`ldap://127.0.0.1:389`, `ldapi://%2Frun%2Fslapd%2Fldapi`).
    pub url: String,
    /// Suffix of the data database, whose `contextCSN` is read.
    pub base: String,
    pub bind: Bind,
    /// StartTLS, the CA and the cleartext opt-in (none until [`LdapCheck::with_tls`]).
    pub tls: Tls,
}

impl LdapCheck {
    /// Parses the URL; the bind is SASL EXTERNAL over ldapi and anonymous over ldap until
    /// credentials are applied with [`LdapCheck::with_credentials`].
    pub fn parse(s: &str) -> Result<LdapCheck, String> {
        const EXPECTED: &str = "expected ldap://HOST:PORT?base=SUFFIX, ldaps://HOST:PORT?base=SUFFIX or \
                                ldapi://%2Fpath%2Fto%2Fsocket?base=SUFFIX";
        let s = s.trim();
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("ldap://") {
            ("ldap", rest)
        } else if let Some(rest) = s.strip_prefix("ldaps://") {
            ("ldaps", rest)
        } else if let Some(rest) = s.strip_prefix("ldapi://") {
            ("ldapi", rest)
        } else {
            return Err(format!("{s:?}: {EXPECTED}"));
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if scheme != "ldapi" {
            let valid = authority
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(format!("{s:?}: {EXPECTED} (host and port are required)"));
            }
        } else {
            let path = percent_decode(authority).map_err(|e| format!("{s:?}: {e}"))?;
            if !path.starts_with('/') || authority.contains('/') || path.contains(':') {
                return Err(format!("{s:?}: {EXPECTED} (the socket path is absolute and percent-encoded, %2F for /)"));
            }
        }
        let mut base = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "base" => base = Some(percent_decode(value).map_err(|e| format!("{s:?}: {e}"))?),
                other => return Err(format!("{s:?}: unknown parameter {other:?} (only base=SUFFIX)")),
            }
        }
        let base = base.map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).ok_or_else(|| {
            format!("{s:?}: base=SUFFIX is required (the data database's suffix, e.g. dc=example,dc=org)")
        })?;
        let bind = if scheme == "ldapi" { Bind::SaslExternal } else { Bind::Anonymous };
        Ok(LdapCheck { url: format!("{scheme}://{authority}"), base, bind, tls: Tls::default() })
    }

    /// How this check's connection is carried, given its URL and [`Tls`].
    pub fn transport(&self) -> Transport {
        if self.url.starts_with("ldapi://") {
            Transport::Ldapi
        } else if self.url.starts_with("ldaps://") {
            Transport::Ldaps
        } else if self.tls.starttls {
            Transport::StartTls
        } else {
            Transport::Plain
        }
    }

    /// The host of a TCP URL as written (IPv6 without brackets); `None` for ldapi.
    pub fn host(&self) -> Option<&str> {
        let authority = self.url.strip_prefix("ldap://").or_else(|| self.url.strip_prefix("ldaps://"))?;
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        Some(host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host))
    }

    /// Applies the transport settings: TLS (`ldaps://`, or StartTLS over `ldap://`) needs
    /// a CA file; then the cleartext rule ([`LdapCheck::cleartext_bind_refused`]) must
    /// pass. Apply the credentials first.
    pub fn with_tls(mut self, tls: &Tls) -> Result<LdapCheck, String> {
        self.tls = tls.clone();
        if self.transport().is_tls() && self.tls.ca_file.is_none() {
            return Err(format!(
                "{}: TLS needs the CA that signed the server's certificate: set --ldap-ca-file ({ENV_LDAP_CA_FILE})",
                self.url
            ));
        }
        match self.cleartext_bind_refused() {
            Some(refusal) => Err(refusal),
            None => Ok(self),
        }
    }

    /// The rule: a simple bind sends the password, so over plain `ldap://` it goes only to
    /// a local host (loopback: the same pod's slapd), unless explicitly allowed. `Some`
    /// says why it is refused and what to set. Anonymous binds send no secret; SASL
    /// EXTERNAL over ldapi, TLS and `ldaps://` are unaffected.
    pub fn cleartext_bind_refused(&self) -> Option<String> {
        let Bind::Simple { dn, .. } = &self.bind else { return None };
        if self.transport() != Transport::Plain || self.tls.allow_cleartext_bind {
            return None;
        }
        let host = self.host().unwrap_or_default();
        if is_local_host(host) {
            return None;
        }
        Some(format!(
            "{}: refusing a simple bind as {dn:?} over plain ldap:// to the non-local host {host:?}: the password \
             would cross the network in cleartext. Use ldaps://, or StartTLS ({ENV_LDAP_STARTTLS}=true, \
             --ldap-starttls), with the servers' CA ({ENV_LDAP_CA_FILE}, --ldap-ca-file); or accept cleartext \
             explicitly with {ENV_ALLOW_CLEARTEXT_BIND}=true (--allow-cleartext-bind)",
            self.url
        ))
    }

    /// Applies a bind DN and password file: a DN makes the bind simple and needs the file.
    pub fn with_credentials(mut self, creds: &Credentials) -> Result<LdapCheck, String> {
        match (&creds.bind_dn, &creds.password_file) {
            (Some(dn), Some(file)) => {
                self.bind = Bind::Simple { dn: dn.trim().to_string(), password_file: file.clone() }
            }
            (Some(_), None) => {
                return Err(format!(
                    "a bind DN ({ENV_LDAP_BIND_DN}) needs a password file ({ENV_LDAP_BIND_PASSWORD_FILE})"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "a password file ({ENV_LDAP_BIND_PASSWORD_FILE}) needs a bind DN ({ENV_LDAP_BIND_DN})"
                ))
            }
            (None, None) => {}
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// Always healthy (no check configured).
    None,
    /// A TCP connect to this address succeeds.
    Tcp(String),
    /// This command exits 0 (program and arguments, split on whitespace).
    Exec(Vec<String>),
    /// Connect, bind, read the rootDSE and the suffix's contextCSN:
    /// `ldap://HOST:PORT?base=SUFFIX` or `ldapi://%2Fpath%2Fsock?base=SUFFIX`.
    Ldap(LdapCheck),
}

impl HealthCheck {
    /// Parses a check; an LDAP check takes its bind credentials from
    /// `ELECTOR_LDAP_BIND_DN` / `ELECTOR_LDAP_BIND_PASSWORD_FILE` (see [`HealthCheck::parse_with`]).
    pub fn parse(s: &str) -> Result<HealthCheck, String> {
        HealthCheck::parse_with(s, &Credentials::from_env())
    }

    /// Parses a check; an LDAP check binds with `creds` (simple bind with a DN, else SASL
    /// EXTERNAL over ldapi or anonymously over ldap).
    pub fn parse_with(s: &str, creds: &Credentials) -> Result<HealthCheck, String> {
        let s = s.trim();
        if s.starts_with("ldap://") || s.starts_with("ldaps://") || s.starts_with("ldapi://") {
            Ok(HealthCheck::Ldap(LdapCheck::parse(s)?.with_credentials(creds)?))
        } else if s.is_empty() || s == "none" {
            Ok(HealthCheck::None)
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                Ok(HealthCheck::Tcp(addr.to_string()))
            } else {
                Err(format!("{s:?}: expected tcp://HOST:PORT"))
            }
        } else if let Some(cmd) = s.strip_prefix("exec:") {
            let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
            if argv.is_empty() {
                Err("exec: needs a command".into())
            } else {
                Ok(HealthCheck::Exec(argv))
            }
        } else {
            Err(format!(
                "{s:?}: expected none, tcp://HOST:PORT, exec:COMMAND, ldap://HOST:PORT?base=SUFFIX, \
                 ldaps://HOST:PORT?base=SUFFIX or ldapi://%2Fpath%2Fsock?base=SUFFIX"
            ))
        }
    }

    /// Applies the transport settings to an LDAP check ([`LdapCheck::with_tls`]); other
    /// checks are returned unchanged.
    pub fn with_ldap_tls(self, tls: &Tls) -> Result<HealthCheck, String> {
        match self {
            HealthCheck::Ldap(check) => Ok(HealthCheck::Ldap(check.with_tls(tls)?)),
            other => Ok(other),
        }
    }

    /// Replaces the bind credentials of an LDAP check (e.g. from flags); other checks are
    /// returned unchanged.
    pub fn with_ldap_credentials(self, creds: &Credentials) -> Result<HealthCheck, String> {
        match self {
            HealthCheck::Ldap(check) => Ok(HealthCheck::Ldap(check.with_credentials(creds)?)),
            other => Ok(other),
        }
    }
}

/// `%XX` for every byte but the unreserved ones (`/` → `%2F`).
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The `ldapi://` URL of the socket at `path` (`/run/slapd/ldapi` → `ldapi://%2Frun%2Fslapd%2Fldapi`).
pub fn ldapi_url(path: &str) -> String {
    format!("ldapi://{}", percent_encode(path))
}

/// An LDAP check URL: `url` with the data database's suffix as `base` (`=` and `,` stay
/// readable; everything else outside the unreserved set is escaped).
pub fn with_base(url: &str, suffix: &str) -> String {
    format!("{url}?base={}", utf8_percent_encode(suffix, DN))
}

/// `%XX` decoding; rejects malformed escapes and non-UTF-8 results.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).ok_or_else(|| format!("truncated %-escape at {i}"))?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("bad %-escape %{}", String::from_utf8_lossy(hex)));
        }
    }
    percent_decode_str(s).decode_utf8().map(String::from).map_err(|_| "%-escapes do not decode to UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_ldapi_urls_with_the_base() {
        assert_eq!(
            LdapCheck::parse("ldap://127.0.0.1:389?base=dc=example,dc=org"),
            Ok(LdapCheck {
                url: "ldap://127.0.0.1:389".into(),
                base: "dc=example,dc=org".into(),
                bind: Bind::Anonymous,
                tls: Tls::default()
            })
        );
        assert_eq!(
            LdapCheck::parse("ldapi://%2Frun%2Fslapd%2Fldapi/?base=dc%3Dexample%2Cdc%3Dorg"),
            Ok(LdapCheck {
                url: "ldapi://%2Frun%2Fslapd%2Fldapi".into(),
                base: "dc=example,dc=org".into(),
                bind: Bind::SaslExternal,
                tls: Tls::default()
            })
        );
        assert_eq!(LdapCheck::parse("ldap://[::1]:3890?base=o=x").map(|c| c.url), Ok("ldap://[::1]:3890".into()));
    }

    #[test]
    fn rejects_urls_without_host_port_socket_or_base() {
        for bad in [
            "ldap://127.0.0.1?base=dc=x",
            "ldap://:389?base=dc=x",
            "ldap://h:0?base=dc=x",
            "ldap://h:389",
            "ldap://h:389?base=",
            "ldap://h:389?base=dc=x&scope=sub",
            "ldapi://?base=dc=x",
            "ldapi:///run/ldapi?base=dc=x",
            "ldapi://relative?base=dc=x",
            "ldapi://%2Frun%2?base=dc=x",
            "ldaps://h?base=dc=x",
            "tcp://h:389",
        ] {
            assert!(LdapCheck::parse(bad).is_err(), "{bad} should be rejected");
        }
        let err = LdapCheck::parse("ldap://h:389").unwrap_err();
        assert!(err.contains("base=SUFFIX is required"), "{err}");
    }

    #[test]
    fn credentials_make_the_bind_simple_and_must_come_in_pairs() {
        let check = LdapCheck::parse("ldapi://%2Fs?base=dc=x").unwrap();
        let creds = Credentials { bind_dn: Some("cn=admin,dc=x".into()), password_file: Some("/pw".into()) };
        assert_eq!(
            check.clone().with_credentials(&creds).map(|c| c.bind),
            Ok(Bind::Simple { dn: "cn=admin,dc=x".into(), password_file: "/pw".into() })
        );
        assert_eq!(check.clone().with_credentials(&Credentials::default()).map(|c| c.bind), Ok(Bind::SaslExternal));
        let dn_only = Credentials { password_file: None, ..creds.clone() };
        assert!(check.clone().with_credentials(&dn_only).is_err());
        let file_only = Credentials { bind_dn: None, ..creds };
        assert!(check.with_credentials(&file_only).is_err());
    }

    fn simple(url: &str) -> LdapCheck {
        let creds = Credentials { bind_dn: Some("cn=auditor,dc=x".into()), password_file: Some("/pw".into()) };
        LdapCheck::parse(&format!("{url}?base=dc=x")).unwrap().with_credentials(&creds).unwrap()
    }

    #[test]
    fn only_loopback_and_localhost_are_local() {
        for local in ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST.", "::ffff:127.0.0.1"] {
            assert!(is_local_host(local), "{local}");
        }
        for remote in [
            "ldap-0.ldap-server",
            "ldap-0.ldap-server.ns.svc.cluster.local",
            "192.0.2.10",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "2001:db8::1",
            "localhost.example.org",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_local_host(remote), "{remote}");
        }
        assert_eq!(simple("ldap://[::1]:389").host(), Some("::1"));
        assert_eq!(simple("ldaps://ldap-0.ldap:636").host(), Some("ldap-0.ldap"));
        assert_eq!(simple("ldapi://%2Frun%2Fldapi").host(), None);
    }

    #[test]
    fn a_password_over_plain_ldap_to_a_non_local_host_is_refused_unless_allowed() {
        let none = Tls::default();
        let err = simple("ldap://ldap-1.ldap-server:389").with_tls(&none).unwrap_err();
        for needle in [
            "refusing a simple bind",
            "ldap-1.ldap-server",
            "cleartext",
            ENV_LDAP_STARTTLS,
            ENV_LDAP_CA_FILE,
            ENV_ALLOW_CLEARTEXT_BIND,
            "--allow-cleartext-bind",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert!(simple("ldap://192.0.2.10:389").with_tls(&none).is_err());
        // Explicitly allowed.
        let allow = Tls { allow_cleartext_bind: true, ..Tls::default() };
        assert_eq!(simple("ldap://ldap-1.ldap-server:389").with_tls(&allow).unwrap().transport(), Transport::Plain);
        // Local: loopback and ldapi (SASL EXTERNAL or a simple bind over the socket).
        for local in ["ldap://127.0.0.1:389", "ldap://[::1]:389", "ldap://localhost:389", "ldapi://%2Frun%2Fldapi"] {
            assert!(simple(local).with_tls(&none).is_ok(), "{local}");
        }
        let external = LdapCheck::parse("ldapi://%2Frun%2Fldapi?base=dc=x").unwrap();
        assert_eq!(
            external.with_tls(&none).map(|c| (c.transport(), c.bind)),
            Ok((Transport::Ldapi, Bind::SaslExternal))
        );
        // No password, nothing to protect: anonymous reads are not refused.
        let anonymous = LdapCheck::parse("ldap://ldap-1.ldap-server:389?base=dc=x").unwrap();
        assert_eq!(anonymous.cleartext_bind_refused(), None);
        // Protected by TLS: StartTLS or ldaps, each with the CA.
        let tls = Tls { starttls: true, ca_file: Some("/ca.crt".into()), allow_cleartext_bind: false };
        let c = simple("ldap://ldap-1.ldap-server:389").with_tls(&tls).unwrap();
        assert_eq!(c.transport(), Transport::StartTls);
        let ldaps = Tls { starttls: false, ..tls.clone() };
        assert_eq!(simple("ldaps://ldap-1.ldap-server:636").with_tls(&ldaps).unwrap().transport(), Transport::Ldaps);
        // StartTLS never applies to the socket.
        assert_eq!(simple("ldapi://%2Frun%2Fldapi").with_tls(&tls).unwrap().transport(), Transport::Ldapi);
    }

    #[test]
    fn tls_without_a_ca_file_is_refused_with_what_to_set() {
        let starttls = Tls { starttls: true, ..Tls::default() };
        let err = simple("ldap://ldap-1.ldap:389").with_tls(&starttls).unwrap_err();
        assert!(err.contains("--ldap-ca-file") && err.contains(ENV_LDAP_CA_FILE), "{err}");
        let anonymous_ldaps = LdapCheck::parse("ldaps://ldap-1.ldap:636?base=dc=x").unwrap();
        assert!(anonymous_ldaps.with_tls(&Tls::default()).is_err(), "ldaps needs the CA too");
        // ldapi needs none, whatever is set.
        assert!(simple("ldapi://%2Frun%2Fldapi").with_tls(&starttls).is_ok());
    }

    #[test]
    fn ldaps_urls_parse_with_host_and_port() {
        let c = LdapCheck::parse("ldaps://ldap-0.ldap:636?base=dc=x").unwrap();
        assert_eq!(
            (c.url.as_str(), c.bind.clone(), c.transport()),
            ("ldaps://ldap-0.ldap:636", Bind::Anonymous, Transport::Ldaps)
        );
        assert!(matches!(
            HealthCheck::parse_with("ldaps://h:636?base=dc=x", &Credentials::default()),
            Ok(HealthCheck::Ldap(_))
        ));
        assert!(LdapCheck::parse("ldaps://:636?base=dc=x").is_err());
    }

    #[test]
    fn parses_the_supported_checks() {
        assert_eq!(HealthCheck::parse("none"), Ok(HealthCheck::None));
        assert_eq!(HealthCheck::parse("tcp://127.0.0.1:389"), Ok(HealthCheck::Tcp("127.0.0.1:389".into())));
        assert_eq!(HealthCheck::parse("exec:true --x"), Ok(HealthCheck::Exec(vec!["true".into(), "--x".into()])));
        assert!(HealthCheck::parse("tcp://nohost").is_err());
        assert!(HealthCheck::parse("http://x").is_err());
        assert!(HealthCheck::parse("exec:").is_err());
        let ldap = HealthCheck::parse_with("ldap://127.0.0.1:389?base=dc=example,dc=org", &Credentials::default());
        assert!(matches!(&ldap, Ok(HealthCheck::Ldap(c)) if c.base == "dc=example,dc=org"), "{ldap:?}");
        let ldapi = HealthCheck::parse_with("ldapi://%2Frun%2Fldapi?base=dc=x", &Credentials::default());
        assert!(matches!(&ldapi, Ok(HealthCheck::Ldap(c)) if c.bind == Bind::SaslExternal), "{ldapi:?}");
        let dn_only = Credentials { bind_dn: Some("cn=admin,dc=x".into()), password_file: None };
        assert!(HealthCheck::parse_with("ldap://h:389?base=dc=x", &dn_only).is_err());
        assert!(HealthCheck::parse_with("ldap://h:389", &Credentials::default()).is_err());
    }

    #[test]
    fn percent_encoding_keeps_unreserved_bytes_and_round_trips() {
        assert_eq!(ldapi_url("/run/slapd/ldapi"), "ldapi://%2Frun%2Fslapd%2Fldapi");
        assert_eq!(with_base("ldap://h:1", "dc=ex ample,dc=org"), "ldap://h:1?base=dc=ex%20ample,dc=org");
        assert_eq!(percent_encode("a-b._~ü="), "a-b._~%C3%BC%3D");
        let check = LdapCheck::parse(&with_base(&ldapi_url("/run/s p"), "o=a&b,c=d")).unwrap();
        assert_eq!((check.url.as_str(), check.base.as_str()), ("ldapi://%2Frun%2Fs%20p", "o=a&b,c=d"));
        assert_eq!(percent_decode("%2Frun%2fx%C3%BC"), Ok("/run/xü".into()));
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%FF").is_err(), "not UTF-8");
    }
}

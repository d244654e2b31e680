//! Which slapd database the built-in fence toggles: a cn=config entry named outright, or the
//! database that holds the clients' suffix, looked up where the fence acts (cn=config over
//! ldapi, or slapd.d on disk before slapd starts). By suffix is what the webhook injects: a
//! database's number (`{1}mdb`) depends on the consumer's configuration — Nubus' `{1}mdb` is
//! `cn=internal` — while the suffix is what its clients write to.

use std::fmt;

use ldap_elector_contract as contract;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FencedDatabase {
    /// This cn=config entry (`--fence-database`, e.g. `olcDatabase={2}mdb,cn=config`).
    Entry(String),
    /// The one database whose `olcSuffix` is this DN (`--fence-suffix`).
    Suffix(String),
}

impl FencedDatabase {
    /// From the flags: an entry named outright wins, then the suffix, then the default entry.
    pub fn from_flags(entry: Option<String>, suffix: Option<String>) -> Self {
        let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        match (given(entry), given(suffix)) {
            (Some(dn), _) => FencedDatabase::Entry(dn),
            (None, Some(suffix)) => FencedDatabase::Suffix(suffix),
            (None, None) => FencedDatabase::Entry(contract::DEFAULT_FENCE_DATABASE.to_string()),
        }
    }

    /// The entry among `(entry DN, olcSuffix)` pairs this names: by DN, or the only
    /// database with the suffix. `Err` says what was found instead.
    pub fn find<'a>(&self, databases: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<&'a str, String> {
        let databases: Vec<_> = databases.into_iter().collect();
        let matching: Vec<&str> = databases
            .iter()
            .filter(|(dn, suffix)| match self {
                FencedDatabase::Entry(wanted) => same_dn(dn, wanted),
                FencedDatabase::Suffix(wanted) => suffix.is_some_and(|s| same_dn(s, wanted)),
            })
            .map(|(dn, _)| *dn)
            .collect();
        match matching.as_slice() {
            [one] => Ok(one),
            [] => {
                let found: Vec<String> = databases
                    .iter()
                    .map(|(dn, suffix)| suffix.map_or(dn.to_string(), |s| format!("{dn} ({s})")))
                    .collect();
                let missing = match self {
                    FencedDatabase::Entry(dn) => format!("slapd has no database {dn}"),
                    FencedDatabase::Suffix(suffix) => format!("no database of slapd has the suffix {suffix}"),
                };
                Err(format!("{missing}; its databases: {}", found.join(", ")))
            }
            several => Err(format!("several databases are {self}: {}", several.join(", "))),
        }
    }
}

impl fmt::Display for FencedDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FencedDatabase::Entry(dn) => write!(f, "{dn}"),
            FencedDatabase::Suffix(suffix) => write!(f, "the database of suffix {suffix}"),
        }
    }
}

/// DNs compared as slapd would for the simple DNs of configurations: case and the spaces
/// around the commas do not count.
pub fn same_dn(a: &str, b: &str) -> bool {
    let norm = |d: &str| d.split(',').map(str::trim).collect::<Vec<_>>().join(",").to_ascii_lowercase();
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUBUS: [(&str, Option<&str>); 4] = [
        ("olcDatabase={0}config,cn=config", Some("cn=config")),
        ("olcDatabase={1}mdb,cn=config", Some("cn=internal")),
        ("olcDatabase={2}mdb,cn=config", Some("dc=example,dc=org")),
        ("olcDatabase={3}mdb,cn=config", Some("cn=translog")),
    ];

    #[test]
    fn a_suffix_finds_its_database_whatever_its_number() {
        let data = FencedDatabase::Suffix("DC=Example, dc=org".into());
        assert_eq!(data.find(NUBUS), Ok("olcDatabase={2}mdb,cn=config"));
        let entry = FencedDatabase::Entry("olcDatabase={3}MDB, cn=config".into());
        assert_eq!(entry.find(NUBUS), Ok("olcDatabase={3}mdb,cn=config"));
    }

    #[test]
    fn a_missing_or_ambiguous_database_is_an_error_that_lists_what_is_there() {
        let err = FencedDatabase::Suffix("dc=elsewhere".into()).find(NUBUS).unwrap_err();
        assert!(
            err.contains("the suffix dc=elsewhere") && err.contains("olcDatabase={2}mdb,cn=config (dc=example,dc=org)")
        );
        let twice = [("olcDatabase={1}mdb,cn=config", Some("dc=x")), ("olcDatabase={2}mdb,cn=config", Some("dc=x"))];
        let err = FencedDatabase::Suffix("dc=x".into()).find(twice).unwrap_err();
        assert!(err.starts_with("several databases"), "{err}");
    }

    #[test]
    fn an_entry_wins_over_the_suffix_and_the_default_is_the_first_database() {
        let both = FencedDatabase::from_flags(Some(" olcDatabase={2}mdb,cn=config ".into()), Some("dc=x".into()));
        assert_eq!(both, FencedDatabase::Entry("olcDatabase={2}mdb,cn=config".into()));
        assert_eq!(
            FencedDatabase::from_flags(Some("".into()), Some("dc=x".into())),
            FencedDatabase::Suffix("dc=x".into())
        );
        let default = FencedDatabase::Entry(contract::DEFAULT_FENCE_DATABASE.into());
        assert_eq!(FencedDatabase::from_flags(None, Some(" ".into())), default);
    }
}

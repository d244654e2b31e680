//! An LDAP connection to a slapd of the rig, with the few operations the tests use, each
//! bounded by the rig's operation timeout.

use std::collections::HashSet;

use anyhow::{bail, Context};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Mod, Scope, SearchEntry};

use crate::ldap::slapd::{DATA_DB, OP_TIMEOUT, PEOPLE, SUFFIX};

/// An open LDAP connection of the rig; dropping it closes the connection.
pub struct Conn {
    pub ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    pub async fn open(url: &str) -> anyhow::Result<Conn> {
        Conn::open_within(url, OP_TIMEOUT).await
    }

    /// [`Conn::open`] with a connect timeout of `timeout`.
    pub async fn open_within(url: &str, timeout: std::time::Duration) -> anyhow::Result<Conn> {
        let settings = LdapConnSettings::new().set_conn_timeout(timeout);
        let (conn, ldap) = tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, url))
            .await
            .with_context(|| format!("connecting to {url}"))?
            .with_context(|| format!("connecting to {url}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.drive().await;
        });
        Ok(Conn { ldap, driver })
    }

    /// Adds `uid=<uid>,ou=people,…` (an inetOrgPerson) and returns the server's result,
    /// whatever its code (a refused write is data for the fence tests).
    pub async fn add_person(&mut self, uid: &str) -> anyhow::Result<LdapResult> {
        let dn = format!("uid={uid},{PEOPLE}");
        let attrs = vec![
            ("objectClass", HashSet::from(["inetOrgPerson"])),
            ("uid", HashSet::from([uid])),
            ("cn", HashSet::from([uid])),
            ("sn", HashSet::from([uid])),
        ];
        Ok(self.ldap.with_timeout(OP_TIMEOUT).add(&dn, attrs).await?)
    }

    /// Deletes `uid=<uid>,ou=people,…` and returns the server's result.
    pub async fn delete_person(&mut self, uid: &str) -> anyhow::Result<LdapResult> {
        Ok(self.ldap.with_timeout(OP_TIMEOUT).delete(&format!("uid={uid},{PEOPLE}")).await?)
    }

    /// The values of `attribute` in the entries that `filter` finds from `base` within
    /// `scope`, sorted.
    pub async fn values_of(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attribute: &str,
    ) -> anyhow::Result<Vec<String>> {
        let (entries, _) =
            self.ldap.with_timeout(OP_TIMEOUT).search(base, scope, filter, vec![attribute]).await?.success()?;
        let mut found: Vec<String> =
            entries.into_iter().flat_map(|e| values(SearchEntry::construct(e), attribute)).collect();
        found.sort();
        Ok(found)
    }

    /// The uids under `ou=people`, sorted.
    pub async fn uids(&mut self) -> anyhow::Result<Vec<String>> {
        self.values_of(PEOPLE, Scope::OneLevel, "(uid=*)", "uid").await
    }

    /// The suffix entry's contextCSN values, sorted.
    pub async fn context_csn(&mut self) -> anyhow::Result<Vec<String>> {
        self.values_of(SUFFIX, Scope::Base, "(objectClass=*)", "contextCSN").await
    }

    /// Sets `olcReadOnly` of the data database (needs a `root` connection).
    pub async fn set_read_only(&mut self, read_only: bool) -> anyhow::Result<()> {
        let value = if read_only { "TRUE" } else { "FALSE" };
        self.ldap
            .with_timeout(OP_TIMEOUT)
            .modify(DATA_DB, vec![Mod::Replace("olcReadOnly", HashSet::from([value]))])
            .await?
            .success()?;
        Ok(())
    }

    /// `olcReadOnly` of the data database as cn=config holds it (needs a `root` connection).
    pub async fn read_only(&mut self) -> anyhow::Result<bool> {
        let values = self.values_of(DATA_DB, Scope::Base, "(objectClass=*)", "olcReadOnly").await?;
        Ok(values.iter().any(|v| v.eq_ignore_ascii_case("TRUE")))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Answers a rootDSE search (anonymous).
pub(crate) async fn root_dse(url: &str) -> anyhow::Result<()> {
    let mut conn = Conn::open(url).await?;
    let (entries, _) =
        conn.ldap.with_timeout(OP_TIMEOUT).search("", Scope::Base, "(objectClass=*)", vec!["+"]).await?.success()?;
    if entries.len() != 1 {
        bail!("rootDSE search returned {} entries", entries.len());
    }
    Ok(())
}

fn values(entry: SearchEntry, name: &str) -> Vec<String> {
    entry.attrs.into_iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).flat_map(|(_, v)| v).collect()
}

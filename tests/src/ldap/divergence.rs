//! The divergence scenario of OPENLDAP-NOTES.md on a real Mirror-Mode pair, shared by the
//! reproducer (`tests/divergence.rs`) and the reseed e2e (`tests/reseed.rs`): node 2 is
//! down while node 1 adds an entry, modifies another and deletes a third; with the syncprov
//! session log, node 2 comes back, applies the delete and may miss the rest for good.

use std::collections::HashSet;
use std::time::Duration;

use ldap3::{Mod, Scope, SearchEntry};

use crate::ldap::slapd::{MirrorPair, PEOPLE};
use crate::wait_for;

/// How long the returning node gets to apply the missed delete.
pub const CATCH_UP: Duration = Duration::from_secs(30);
const OP: Duration = Duration::from_secs(5);

pub fn dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

/// Sets `description` of `uid` on `node`.
pub async fn set_description(pair: &MirrorPair, node: u32, uid: &str, description: &str) -> anyhow::Result<()> {
    let mut conn = pair.node(node).admin().await?;
    let mods = vec![Mod::Replace("description", HashSet::from([description]))];
    conn.ldap.with_timeout(OP).modify(&dn(uid), mods).await?.success()?;
    Ok(())
}

/// `description` of `uid` on `node` (`None` when the entry is absent).
pub async fn description(pair: &MirrorPair, node: u32, uid: &str) -> anyhow::Result<Option<Vec<String>>> {
    let mut conn = pair.node(node).admin().await?;
    let ldap3::SearchResult(entries, res) =
        conn.ldap.with_timeout(OP).search(&dn(uid), Scope::Base, "(objectClass=*)", vec!["description"]).await?;
    if res.rc == 32 {
        return Ok(None);
    }
    res.success()?;
    Ok(entries.into_iter().next().map(|e| SearchEntry::construct(e).attrs.remove("description").unwrap_or_default()))
}

/// What node 2 holds after the scenario, compared with node 1.
#[derive(Debug)]
pub struct Outcome {
    /// Node 2 lacks the entry added while it was down.
    pub lost_add: bool,
    /// Node 2 still has the old value of the entry modified while it was down.
    pub lost_modify: bool,
    /// Both nodes' contextCSN once node 2 applied the delete (equal by then).
    pub context_csn: (Vec<String>, Vec<String>),
}

impl Outcome {
    pub fn diverged(&self) -> bool {
        self.lost_add || self.lost_modify
    }
}

/// Both nodes up: node 1 creates the entries the scenario `tag` modifies and deletes, both
/// converge, then node 2 stops.
pub async fn prepare(pair: &MirrorPair, tag: &str) -> anyhow::Result<()> {
    pair.add_entry(1, &format!("{tag}-modified")).await?;
    pair.add_entry(1, &format!("{tag}-deleted")).await?;
    set_description(pair, 1, &format!("{tag}-modified"), "before").await?;
    pair.wait_converged(CATCH_UP).await?;
    pair.node(2).stop().await;
    Ok(())
}

/// With node 2 down (after [`prepare`]): node 1 adds, modifies and deletes; node 2 starts
/// again and (bounded) applies the delete while both contextCSNs become equal. Returns what
/// node 2 then holds.
pub async fn change_and_restart(pair: &MirrorPair, tag: &str) -> anyhow::Result<Outcome> {
    let (added, modified, deleted) = (format!("{tag}-added"), format!("{tag}-modified"), format!("{tag}-deleted"));
    pair.add_entry(1, &added).await?;
    set_description(pair, 1, &modified, "after").await?;
    pair.delete_entry(1, &deleted).await?;
    pair.node(2).start().await?;

    // The returning node has caught up as far as it ever will once it applied the delete
    // and its contextCSN equals its peer's (whether or not it lost anything).
    let context_csn = wait_for("node 2 to apply the missed delete and match node 1's contextCSN", CATCH_UP, || async {
        let gone = description(pair, 2, &deleted).await?.is_none();
        let (c1, c2) = (pair.context_csn(1).await?, pair.context_csn(2).await?);
        if gone && c1 == c2 {
            Ok((c1, c2))
        } else {
            Err(anyhow::anyhow!("deleted entry gone on node 2: {gone}; contextCSN node 1 {c1:?}, node 2 {c2:?}"))
        }
    })
    .await?;
    // Give replication every chance to deliver the rest (a bounded poll, not a sleep):
    // either node 2 gets both changes or the loss is for good.
    let after = ["after".to_string()];
    let caught_up = wait_for("node 2 to hold the add and the modify", Duration::from_secs(5), || async {
        let (a, m) = (description(pair, 2, &added).await?, description(pair, 2, &modified).await?);
        if a.is_some() && m.as_deref() == Some(&after[..]) {
            Ok(())
        } else {
            Err(anyhow::anyhow!("node 2: {added}: {a:?}, {modified}: description {m:?}"))
        }
    })
    .await;
    if let Err(e) = &caught_up {
        println!("{tag}: {e}");
    }
    let lost_add = description(pair, 2, &added).await?.is_none();
    let lost_modify = description(pair, 2, &modified).await?.as_deref() != Some(&after[..]);
    Ok(Outcome { lost_add, lost_modify, context_csn })
}

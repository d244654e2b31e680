//! The OpenLDAP integration end to end, configured ONLY by the webhook: a StatefulSet
//! annotated for injection and with `ldap-elector.dev/ldapi-socket-dir` +
//! `ldap-elector.dev/ldap-suffix`, the real webhook (in-process, registered by URL) and a
//! real OpenLDAP Mirror-Mode pair.
//!
//! What it proves: the admitted pods carry the shared in-memory socket volume, mounted
//! read-write in the slapd container and read-only in the sidecar, and the sidecar's fence
//! and ldapi health check point at the socket in it; the electors, run with exactly that
//! environment (the runner adds only log settings and turns the probe server off, since two
//! local electors cannot both listen on the injected port), fence the standby's real slapd
//! read-only over ldapi, leave the leader's writable, publish the contextCSN their health
//! check read, elect one leader, and swap the fences on a graceful handover.
//!
//! How the pod's socket directory reaches the local machine: see `ldap_elector_tests::ldap::rig`.
//! A sidecar without the mount would keep `/run/slapd/ldapi`, find no slapd, and never
//! become healthy.
//!
//! The electors here run as the test's user, which the rig's cn=config makes root; the
//! slapd side a consumer configures for the sidecar's uid/gid 65532 — the ACL block of
//! docs/openldap.md — is checked separately: loaded into a real cn=config, `slapacl`
//! (slapd's own ACL engine) must grant that identity the fence and the health check and
//! nothing else it asks about.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use ldap_elector_contract as contract;
use ldap_elector_tests::bed::process::{self, Signal};
use ldap_elector_tests::bed::random_hex;
use ldap_elector_tests::ldap::rig::{ordinal, LdapRig, NAMESPACE, SOCKET_DIR, STATEFULSET};
use ldap_elector_tests::ldap::slapd::{self, sbin, SUFFIX};
use ldap_elector_tests::wait_for;

/// The app container of `fixtures::statefulset`, the default slapd container.
const LDAP_CONTAINER: &str = "ldap";
const SOCKET_URL: &str = "ldapi://%2Frun%2Fslapd%2Fldapi";
/// syncrepl `timeout=` of the pair: bounds a cn=config change after a reconnect (the fence).
const SYNC_TIMEOUT: u32 = 1;
const ADMIT: Duration = Duration::from_secs(60);
const ELECT: Duration = Duration::from_secs(90);
/// Fences follow the roles within a few health checks and fence retries.
const FENCE: Duration = Duration::from_secs(30);
const HANDOVER: Duration = Duration::from_secs(40);

fn pod_name(ordinal: u32) -> String {
    contract::pod_name(STATEFULSET, ordinal)
}

fn find<'a>(containers: impl IntoIterator<Item = &'a Container>, name: &str) -> anyhow::Result<&'a Container> {
    containers.into_iter().find(|c| c.name == name).with_context(|| format!("no container {name}"))
}

/// The OpenLDAP integration in a pod as the apiserver stored it.
fn check_injected(pod: &Pod) -> anyhow::Result<()> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == contract::LDAPI_VOLUME)
        .with_context(|| format!("{name} has no volume {}", contract::LDAPI_VOLUME))?;
    let empty_dir = volume.empty_dir.as_ref().with_context(|| format!("{name}: socket volume is not an emptyDir"))?;
    anyhow::ensure!(empty_dir.medium.as_deref() == Some("Memory"), "{name}: socket volume {empty_dir:?}");
    anyhow::ensure!(empty_dir.size_limit.is_some(), "{name}: socket volume without sizeLimit");

    let mount_of = |c: &Container| {
        let mounts = c.volume_mounts.iter().flatten();
        mounts.into_iter().find(|m| m.name == contract::LDAPI_VOLUME && m.mount_path == SOCKET_DIR).cloned()
    };
    let ldap = find(&spec.containers, LDAP_CONTAINER)?;
    let mount = mount_of(ldap).with_context(|| format!("{name}: slapd does not mount {SOCKET_DIR}"))?;
    anyhow::ensure!(mount.read_only != Some(true), "{name}: slapd mounts the socket directory read-only");
    let sidecar = find(spec.init_containers.iter().flatten(), contract::SIDECAR_CONTAINER)?;
    let mount = mount_of(sidecar).with_context(|| format!("{name}: the sidecar does not mount {SOCKET_DIR}"))?;
    anyhow::ensure!(mount.read_only == Some(true), "{name}: the sidecar's socket mount is writable");

    let env = |c: &Container, key: &str| c.env.iter().flatten().find(|e| e.name == key).and_then(|e| e.value.clone());
    let expected = [
        (contract::ENV_FENCE_LDAPI, SOCKET_URL.to_string()),
        (contract::ENV_HEALTH_CHECK, format!("{SOCKET_URL}?base={SUFFIX}")),
    ];
    for (key, value) in expected {
        let got = env(sidecar, key);
        anyhow::ensure!(got.as_deref() == Some(value.as_str()), "{name}: sidecar {key}={got:?}, expected {value:?}");
        anyhow::ensure!(env(ldap, key).is_none(), "{name}: slapd's container got {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_openldap_settings_fence_the_standby_and_elect_one_leader() -> anyhow::Result<()> {
    let rig = LdapRig::start(SYNC_TIMEOUT).await?;
    let pods = Api::<Pod>::namespaced(rig.client.clone(), NAMESPACE);
    for o in 0..2 {
        let name = pod_name(o);
        let pod = wait_for(&format!("{name} to be admitted"), ADMIT, || pods.get(&name)).await?;
        check_injected(&pod)?;
    }

    let leader = rig.observer.wait_for_single_leader(ELECT).await.with_context(|| rig.logs())?;
    let standby = pod_name(1 - ordinal(&leader).min(1));
    rig.wait_fences(&leader, &standby, FENCE).await?;
    // What a client bypassing the write Service sees: the standby refuses, the leader takes it.
    let refused = rig.node(&standby).admin().await?.add_person("direct-to-standby").await?;
    anyhow::ensure!(refused.rc == 53, "a write on the standby's slapd answered {refused:?}, expected 53");
    rig.slapd.add_entry(ordinal(&leader) + 1, "direct-to-leader").await?;

    // The leader publishes the contextCSN its ldapi health check read from the suffix.
    let leases = Api::<Lease>::namespaced(rig.client.clone(), NAMESPACE);
    let lease = contract::lease_name(STATEFULSET);
    wait_for("the Lease to carry the leader's contextCSN", FENCE, || async {
        let on_slapd = rig.node(&leader).admin().await.map_err(|e| e.to_string())?.context_csn().await;
        let on_slapd = on_slapd.map_err(|e| e.to_string())?.join(" ");
        let got = leases.get(&lease).await.map_err(|e| e.to_string())?;
        let published = got.metadata.annotations.unwrap_or_default().remove(contract::LEASE_ANNOTATION_CONTEXT_CSN);
        match published {
            Some(csn) if csn == on_slapd && !csn.is_empty() => Ok(()),
            other => Err(format!("published {other:?}, {leader}'s slapd holds {on_slapd:?}")),
        }
    })
    .await
    .with_context(|| rig.logs())?;

    // Graceful handover: the old leader fences its slapd, the standby takes over and lifts its own.
    let at = Instant::now();
    anyhow::ensure!(
        rig.kubelet.signal(NAMESPACE, &leader, contract::SIDECAR_CONTAINER, Signal::Term),
        "no elector runs in {leader}"
    );
    let (new, _) = rig
        .observer
        .wait_for_new_leader(&format!("a new leader after stopping {leader}'s elector"), Some(&leader), at, HANDOVER)
        .await
        .with_context(|| rig.logs())?;
    anyhow::ensure!(new == standby, "{new} became leader, expected {standby}");
    rig.wait_fences(&standby, &leader, FENCE).await?;

    rig.observer.assert_never_two_leaders();
    Ok(())
}

/// The sidecar's SASL EXTERNAL identity over ldapi (uid/gid 65532, `InjectConfig::new`).
const SIDECAR_PEER: &str = "gidNumber=65532+uidNumber=65532,cn=peercred,cn=external,cn=auth";

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = process::run(cmd, None).context("install slapd: hack/install-deps.sh")?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn documented_acl_gives_the_sidecar_the_fence_and_the_health_check_and_nothing_else() -> anyhow::Result<()> {
    let base = std::env::var_os("LDAP_ELECTOR_BED_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ldap-acl-{}-{}", std::process::id(), random_hex(4)?));
    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::create_dir_all(dir.join("data"))?;
    let result = (|| -> anyhow::Result<()> {
        // The rig's cn=config for a Mirror-Mode node (offline: the peer port is never dialled).
        let ldif = slapd::config_ldif(1, &dir.join("data"), 1, &slapd::PairOptions::default());
        std::fs::write(dir.join("config.ldif"), ldif)?;
        run(Command::new(sbin("slapadd")).arg("-n0").arg("-F").arg(&config).arg("-l").arg(dir.join("config.ldif")))?;
        std::fs::write(dir.join("acl.ldif"), ldap_elector_tests::doc_block("docs/openldap.md", "acl")?)?;
        run(Command::new(sbin("slapmodify")).arg("-n0").arg("-F").arg(&config).arg("-l").arg(dir.join("acl.ldif")))?;

        let expectations = [
            // The fence: set olcReadOnly, read it back.
            (slapd::DATA_DB, "olcReadOnly/write", true),
            (slapd::DATA_DB, "olcReadOnly/read", true),
            (slapd::DATA_DB, "entry/read", true),
            // Finding the data database by its suffix: a one-level search below cn=config.
            ("cn=config", "entry/search", true),
            (slapd::DATA_DB, "olcSuffix/read", true),
            ("olcDatabase={0}config,cn=config", "entry/read", true),
            // The health check: the suffix's contextCSN.
            (SUFFIX, "entry/read", true),
            (SUFFIX, "contextCSN/read", true),
            // Nothing else of cn=config or the data.
            (slapd::DATA_DB, "olcSuffix/write", false),
            (slapd::DATA_DB, "olcRootPW/read", false),
            (slapd::DATA_DB, "olcAccess/write", false),
            ("olcDatabase={0}config,cn=config", "olcRootDN/write", false),
            ("cn=config", "olcServerID/write", false),
            ("cn=config", "entry/read", false),
            ("cn=schema,cn=config", "entry/read", false),
            ("cn=module{0},cn=config", "entry/read", false),
            ("olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config", "entry/read", false),
            (SUFFIX, "o/read", false),
            (slapd::PEOPLE, "entry/read", false),
        ];
        let mut wrong = Vec::new();
        for (dn, access, allowed) in expectations {
            let answer = run(Command::new(sbin("slapacl")).arg("-u").arg("-F").arg(&config).args([
                "-D",
                SIDECAR_PEER,
                "-b",
                dn,
                access,
            ]))?;
            let granted = answer.contains(": ALLOWED");
            anyhow::ensure!(granted || answer.contains(": DENIED"), "slapacl said: {answer}");
            if granted != allowed {
                wrong.push(format!("{dn} {access}: {}", answer.trim()));
            }
        }
        anyhow::ensure!(
            wrong.is_empty(),
            "the documented ACL grants the sidecar the wrong rights:\n{}",
            wrong.join("\n")
        );
        Ok(())
    })();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {} for inspection", dir.display());
    }
    result
}

//! The Lease as the runtime takes it (item 8): the real `lease::adopts` and
//! `lease::observe_after` on the Lease objects the model's API server hands out, a Lease
//! deleted and recreated, and an etcd restored from a backup (resourceVersion goes back).

use k8s_openapi::api::coordination::v1::LeaseSpec as K8sLeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ldap_elector::election::lease;
use ldap_elector_contract::{
    LEASE_ANNOTATION_CONTEXT_CSN, LEASE_ANNOTATION_HOLDER_UID, LEASE_ANNOTATION_SWITCHOVER_TO,
};

use super::*;

/// The Lease object of a record (one pod per name in the model: its UID is its name).
pub(crate) fn object(rec: &LeaseRecord) -> Lease {
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(h) = &rec.holder {
        annotations.insert(LEASE_ANNOTATION_HOLDER_UID.to_string(), h.clone());
    }
    if !rec.csn.is_empty() {
        annotations.insert(LEASE_ANNOTATION_CONTEXT_CSN.to_string(), rec.csn.join(" "));
    }
    if let Some(t) = &rec.switchover_to {
        annotations.insert(LEASE_ANNOTATION_SWITCHOVER_TO.to_string(), t.clone());
    }
    let annotations = Some(annotations);
    Lease {
        metadata: ObjectMeta {
            name: Some("ldap-server".into()),
            uid: Some(format!("lease-{}", rec.uid)),
            resource_version: Some(rec.rv.to_string()),
            annotations,
            ..ObjectMeta::default()
        },
        spec: Some(K8sLeaseSpec {
            holder_identity: rec.holder.clone(),
            lease_duration_seconds: Some(rec.lease_duration.as_secs() as i32),
            lease_transitions: Some(rec.transitions),
            ..K8sLeaseSpec::default()
        }),
    }
}

impl Sim {
    /// Runtime contract item 2: take a version of the Lease (`answered`: a GET or a CAS
    /// answer of the API server; else a watch event).
    pub(crate) fn observe(&mut self, c: usize, rec: &LeaseRecord, answered: bool) {
        let now = self.local(c);
        let seen = object(rec);
        let adopt = self.sc.variants.adopt;
        let cand = &mut self.cands[c];
        let next = match adopt {
            Adopt::AdoptsObserveAfter => {
                if !lease::adopts(&seen, cand.known.as_ref(), answered) {
                    return;
                }
                let previous = cand.known.as_ref().zip(cand.obs.as_ref().map(|(o, _)| o));
                // Recreated: the runtime's `accept_lease` keeps the old term as the floor.
                if let Some((known, before)) = previous.filter(|(known, _)| known.metadata.uid != seen.metadata.uid) {
                    cand.term_floor = cand.term_floor.max(before.transitions);
                    let floor = lease::published_csn(known).into_iter().chain(cand.csn_floor.iter().cloned()).collect();
                    cand.csn_floor = floor;
                }
                lease::observe_after(previous, &seen, now)
            }
            Adopt::NewerOnly => {
                if cand.obs.as_ref().is_some_and(|(_, rv)| *rv >= rec.rv) {
                    return;
                }
                // The old `decide` took every Lease without a holder at once; today's waits a
                // lease duration on one never held (no term). Shown to it as released, the
                // real `decide` acts as the old one did.
                let mut old = lease::observe(&seen, now);
                if old.holder().is_none() {
                    old.transitions = old.transitions.max(1);
                }
                old
            }
        };
        cand.obs = Some((next, rec.rv));
        cand.known = Some(seen);
    }

    /// FaultKind::LeaseRecreated: deleted and created empty (a new uid; etcd's revision goes on).
    pub(crate) fn recreate_lease(&mut self) {
        let old = &self.server.lease;
        let new = LeaseRecord {
            holder: None,
            transitions: 0,
            lease_duration: old.lease_duration,
            rv: self.server.issued + REVISION_STEP,
            uid: old.uid + 1,
            csn: Vec::new(),
            switchover_to: None,
        };
        self.server.issued = new.rv;
        self.log(None, format_args!("Lease deleted and recreated: {new:?}"));
        self.server.lease = new.clone();
        self.notify(&new);
    }

    /// FaultKind::EtcdRestored: a backup of moments ago (same content, a lower revision; no
    /// revision is handed out twice, see `Server::issued`); every watch breaks (its
    /// resourceVersion is gone) and is re-listed.
    pub(crate) fn restore_etcd(&mut self) {
        // The highest version below the current one never handed out (writes use multiples
        // of the step, earlier restores the numbers in between).
        let mut rv = self.server.lease.rv - 1;
        while rv > 1 && (rv.is_multiple_of(REVISION_STEP) || self.server.restored.contains(&rv)) {
            rv -= 1;
        }
        self.server.restored.insert(rv);
        self.server.lease.rv = rv;
        self.log(None, format_args!("etcd restored: Lease resourceVersion back to {rv}"));
        for c in 0..self.cands.len() {
            if !self.cands[c].down && self.server.watches[c].is_some() {
                self.break_watch(c, RECONNECT_BACKOFF);
            }
        }
    }
}

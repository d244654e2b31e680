//! The API server: one Lease, compare-and-swap on resourceVersion, watches.

use k8s_openapi::api::core::v1::Pod;

use super::*;

/// See `Server::issued`.
pub(crate) const REVISION_STEP: u64 = 10;

#[derive(Clone, Debug)]
pub(crate) struct LeaseRecord {
    pub(crate) holder: Option<String>,
    pub(crate) transitions: i32,
    pub(crate) lease_duration: Duration,
    pub(crate) rv: u64,
    /// The object's uid: a deleted and recreated Lease gets another.
    pub(crate) uid: u32,
    /// The holder's published contextCSN (annotation).
    pub(crate) csn: Vec<String>,
    /// A pending switchover request (annotation).
    pub(crate) switchover_to: Option<String>,
}

/// The object a client PUTs (the observed object with its changes).
#[derive(Clone, Debug)]
pub(crate) struct LeaseSpec {
    pub(crate) holder: Option<String>,
    pub(crate) transitions: i32,
    pub(crate) lease_duration: Duration,
    pub(crate) csn: Vec<String>,
    pub(crate) switchover_to: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) enum Req {
    /// GET; `relist_gen` also (re)starts the watch of that generation from this read.
    Read { relist_gen: Option<u64> },
    /// PUT with `metadata.resourceVersion = expected_rv`.
    Write { expected_rv: u64, spec: LeaseSpec },
    /// GET of a member pod (taking office).
    PodRead { pod: usize },
    /// JSON patch of a member pod (its `test` ops make it fail on a stale view).
    PodPatch { pod: usize, patch: json_patch::Patch },
}

#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Ok(LeaseRecord),
    Conflict,
    Pod(Box<Pod>),
    Patched,
    /// 422: a `test` op of the patch failed.
    Invalid,
}

pub(crate) struct Server {
    pub(crate) lease: LeaseRecord,
    /// Per candidate: the watch stream (incarnation, generation) currently open.
    pub(crate) watches: Vec<Option<(u32, u64)>>,
    /// Per candidate: the last delivery time on its stream (streams are FIFO).
    pub(crate) stream_floor: Vec<Nanos>,
    /// The highest resourceVersion handed out. Versions are sparse (etcd's revision is global:
    /// `REVISION_STEP` apart), so a restored etcd can go back to one never handed out: a
    /// stale CAS of a reused number would pass (an ABA hazard of Kubernetes itself).
    pub(crate) issued: u64,
    /// The versions restores went back to.
    pub(crate) restored: std::collections::BTreeSet<u64>,
    /// The StatefulSet's pods (labels and term annotations).
    pub(crate) pods: Vec<Pod>,
}

impl Sim {
    pub(crate) fn at_server(&mut self, from: usize, inc: u32, req_id: u64, req: Req) {
        let lose_reply = self.now < self.fault_end && self.rng.chance(self.sc.loss);
        let (min, max) = (nanos(self.sc.min_latency), nanos(self.sc.max_latency));
        let back = self.now + min + self.rng.up_to(max.saturating_sub(min));
        let reply = match req {
            Req::Read { relist_gen } => {
                if let Some(gen) = relist_gen {
                    // The stream exists only if the client still waits for it (else its
                    // connection is closed) and the list reply reaches it.
                    let cand = &self.cands[from];
                    if !lose_reply && cand.inc == inc && cand.watch_gen == gen {
                        self.server.watches[from] = Some((inc, gen));
                        self.server.stream_floor[from] = self.server.stream_floor[from].max(back);
                    }
                }
                Reply::Ok(self.server.lease.clone())
            }
            pod @ (Req::PodRead { .. } | Req::PodPatch { .. }) => self.pod_request(pod),
            Req::Write { expected_rv, spec } => {
                if expected_rv != self.server.lease.rv {
                    Reply::Conflict
                } else {
                    let uid = self.server.lease.uid;
                    let old = std::mem::replace(
                        &mut self.server.lease,
                        LeaseRecord {
                            holder: spec.holder,
                            transitions: spec.transitions,
                            lease_duration: spec.lease_duration,
                            rv: self.server.issued + REVISION_STEP,
                            uid,
                            csn: spec.csn,
                            switchover_to: spec.switchover_to,
                        },
                    );
                    let new = self.server.lease.clone();
                    self.server.issued = new.rv;
                    if old.holder.is_some() && new.holder.is_some() && old.holder != new.holder {
                        self.stats.takeovers += 1;
                    }
                    if new.transitions > old.transitions {
                        // Recorded with the write (the uncovered-window annotation), answered or not.
                        self.waive_at_acquisition(from);
                    }
                    self.log(None, format_args!("commit #{req_id} from c{from}: {new:?}"));
                    self.notify(&new);
                    Reply::Ok(new)
                }
            }
        };
        if lose_reply {
            self.log(None, format_args!("reply to #{req_id} lost"));
        } else {
            self.push(back, Ev::To { cand: from, inc, msg: Msg::Reply { req_id, reply } });
        }
    }

    pub(crate) fn notify(&mut self, rec: &LeaseRecord) {
        for c in 0..self.cands.len() {
            if let Some((inc, gen)) = self.server.watches[c] {
                let at = (self.now + self.rng.up_to(nanos(self.sc.max_watch_delay))).max(self.server.stream_floor[c]);
                self.server.stream_floor[c] = at;
                self.push(at, Ev::To { cand: c, inc, msg: Msg::Watch { gen, rec: rec.clone() } });
            }
        }
    }
}

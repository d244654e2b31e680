//! The fault model: pauses, crashes, partitions, stops, restarts.

use super::*;

impl Sim {
    pub(crate) fn start(&mut self, c: usize) {
        // The runtime reads its own pod at start (`label_self_standby`): the term it carries
        // is the floor of its terms (instantaneous here; nothing when the API is out of reach).
        if self.cands[c].partitioned == 0 {
            let carried = ldap_elector::election::labels::term_of(&self.server.pods[c]).unwrap_or(0);
            self.cands[c].term_floor = self.cands[c].term_floor.max(carried);
        }
        let fenced = self.start_fence(c);
        self.to(c, fenced, Msg::Reconnect);
        self.after_local(c, TICK, Msg::Tick);
        self.after_local(c, VERIFY_EVERY, Msg::KeeperRound);
    }

    pub(crate) fn fault(&mut self, f: Fault) {
        let n = self.cands.len();
        let c = match f.target {
            Target::Cand(i) => i % n,
            Target::Leader => match (0..n).find(|&c| self.cands[c].counts_as_leader(self.now)) {
                Some(c) => c,
                None => self.rng.up_to(n as u64 - 1) as usize,
            },
        };
        let end = (self.now + nanos(f.length)).min(self.fault_end).max(self.now);
        self.log(Some(c), format_args!("FAULT {:?} for {:.3}s", f.kind, secs(end - self.now)));
        let cand = &mut self.cands[c];
        match f.kind {
            FaultKind::Pause => {
                if !cand.down && !cand.paused {
                    cand.paused = true;
                    cand.paused_since_feed = true;
                    if cand.counts_as_leader(self.now) {
                        self.stats.paused_leaders += 1;
                    }
                    self.push(end, Ev::Resume(c));
                }
            }
            FaultKind::Crash | FaultKind::ContainerKill => {
                if !cand.down {
                    if f.kind == FaultKind::Crash {
                        self.crash(c);
                    } else {
                        self.container_kill(c);
                    }
                    if !self.cands[c].restart_pending {
                        self.cands[c].restart_pending = true;
                        self.push(end, Ev::Restart(c));
                    }
                }
            }
            FaultKind::Stop => {
                if !cand.down && !cand.restart_pending {
                    cand.restart_pending = true;
                    self.to(c, self.now, Msg::Sigterm);
                    self.slapd_stop_after_sigterm(c);
                    self.push(end, Ev::Restart(c));
                }
            }
            FaultKind::Unhealthy => {
                cand.unhealthy += 1;
                self.to(c, self.now, Msg::HealthChanged);
                self.push(end, Ev::Healthy(c));
            }
            FaultKind::WatchReset => {
                if !cand.down {
                    let d = Duration::from_nanos(end - self.now);
                    self.break_watch(c, d);
                }
            }
            FaultKind::Partition => {
                cand.partitioned += 1;
                self.push(end, Ev::Heal(c));
            }
            FaultKind::FenceStall => self.stall(c, end),
            FaultKind::LateLabelWrite => cand.late_label = Some(f.length),
            FaultKind::ReplicationCut => {
                cand.rep_cut += 1;
                self.push(end, Ev::RepHealed(c));
            }
            FaultKind::LeaseRecreated => self.recreate_lease(),
            FaultKind::EtcdRestored => self.restore_etcd(),
            FaultKind::Switchover => self.request_switchover(c),
            FaultKind::GuardKill => self.guard_kill(c, end),
        }
    }

    pub(crate) fn resume(&mut self, c: usize) {
        let now = self.local(c);
        let cand = &mut self.cands[c];
        if !cand.paused {
            return;
        }
        cand.paused = false;
        if cand.writable && now >= cand.watchdog_at {
            cand.writable = false;
            self.stats.watchdog_fences += 1;
            self.log(Some(c), "resumed; the watchdog had fenced slapd");
        } else {
            self.log(Some(c), "resumed");
        }
        let (network, timers): (Vec<Msg>, Vec<Msg>) =
            std::mem::take(&mut self.cands[c].deferred).into_iter().partition(Msg::is_network);
        let inc = self.cands[c].inc;
        for msg in network.into_iter().chain(timers) {
            if self.cands[c].inc != inc || self.cands[c].down {
                break;
            }
            self.deliver(c, msg);
        }
    }

    pub(crate) fn crash(&mut self, c: usize) {
        let now = self.local(c);
        let cand = &mut self.cands[c];
        if cand.down {
            return;
        }
        if cand.writable && now < cand.watchdog_at {
            cand.orphan_until = Some(cand.orphan_until.map_or(cand.watchdog_at, |o| o.max(cand.watchdog_at)));
            self.stats.orphans += 1;
        }
        self.kill(c);
    }

    /// Graceful exit after SIGTERM.
    pub(crate) fn exit(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        if cand.writable && cand.stall_until > self.now {
            // The old release: exits with its fence still queued in slapd.
            cand.orphan_until = Some(cand.clock.local(cand.stall_until));
        } else if cand.writable {
            self.failure = Some(format!("{} exited while slapd is writable", cand.id));
        }
        self.log(Some(c), "exited");
        self.kill(c);
        if self.sc.variants.deletion == Deletion::PreStopHandover {
            self.push(self.now, Ev::HandoverPoll { cand: c, since: self.now });
        }
    }

    pub(crate) fn kill(&mut self, c: usize) {
        let cand = &mut self.cands[c];
        cand.down = true;
        cand.paused = false;
        cand.deferred.clear();
        cand.inc += 1;
        cand.stopping = false;
        cand.obs = None;
        cand.known = None;
        cand.leading = None;
        cand.term_floor = 0; // process memory
        cand.term_read_for = None;
        cand.csn_floor.clear();
        cand.newer_term = None;
        cand.busy = Busy::Idle;
        cand.watch_ok = false;
        cand.relist = None;
        cand.watch_gen += 1;
        cand.writable = false;
        cand.paused_since_feed = false;
        cand.unfenced = false;
        cand.office = None;
        cand.in_office = false;
        cand.wanted = ldap_elector::slapd::fence::WantedFence::Standby;
        if self.sc.variants.watchdog == Watchdog::SameContainer {
            cand.guard = Warden::idle(); // a child of the next elector
        }
        self.server.watches[c] = None;
    }

    pub(crate) fn restart(&mut self, c: usize) {
        if !self.cands[c].down {
            self.log(Some(c), "grace period over: killed");
            self.crash(c);
        }
        self.log(Some(c), "restarted");
        let cand = &mut self.cands[c];
        cand.down = false;
        cand.restart_pending = false;
        cand.slapd_down = false;
        self.catch_up_all();
        self.start(c);
    }
}

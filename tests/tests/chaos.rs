//! Randomised chaos against the safety invariants, on the real bed. Each sequence applies
//! one fault drawn from a seeded generator — kill -9 / SIGSTOP+SIGCONT / SIGTERM of an
//! elector, API server down, a cut, slowed or one-way black-holed network between one
//! elector and the API server (a loopback proxy), deletion of the leader pod, scaling
//! 2→1→2 — then heals it and requires one leader again (the Lease holder) within a bound.
//! An independent observer watches pods and the write Service's EndpointSlices the whole
//! time and fails the run if two pods are ever labelled leader or two endpoints are ready.
//!
//! `CHAOS_SEQUENCES` (default 20) and `CHAOS_SEED` (default: from the clock) control a run;
//! a failure prints the seed, the sequence and the observer's timeline. The long run:
//! `CHAOS_SEQUENCES=200 cargo test -p ldap-elector-tests --test chaos -- --nocapture`.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use ldap_elector::contract;
use ldap_elector_tests::electors::{elector_binary, Pair, PairOptions};
use ldap_elector_tests::process::Signal;
use ldap_elector_tests::proxy::{Mode, Proxy};
use ldap_elector_tests::{fixtures, wait_for};
use serde_json::json;

/// After healing, a leader (the Lease holder) must be back within this bound: the lease
/// duration (8 s) plus a renew period, plus generous slack for a loaded 2-core machine.
/// A liveness check, not a benchmark (`make bench` measures).
const LEADER_AGAIN: Duration = Duration::from_secs(45);
const PRIMARY: &str = "ldap-server-primary";

/// SplitMix64: a tiny seeded generator, so a run is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillElector { leader: bool },
    PauseElector { leader: bool, for_: Duration },
    TermElector { leader: bool },
    ApiServerDown { for_: Duration },
    Network { leader: bool, mode: Mode, for_: Duration },
    DeleteLeaderPod,
    ScaleDownUp,
}

fn draw(rng: &mut Rng) -> Fault {
    let leader = rng.below(10) < 7; // mostly the leader: that is where the danger is
    match rng.below(9) {
        0 => Fault::KillElector { leader },
        1 => Fault::PauseElector { leader, for_: rng.millis(1_000, 12_000) },
        2 => Fault::TermElector { leader },
        3 => Fault::ApiServerDown { for_: rng.millis(1_000, 12_000) },
        4 => Fault::Network { leader, mode: Mode::Cut, for_: rng.millis(1_000, 12_000) },
        5 => Fault::Network { leader, mode: Mode::BlackholeUp, for_: rng.millis(1_000, 12_000) },
        6 => Fault::Network { leader, mode: Mode::BlackholeDown, for_: rng.millis(1_000, 12_000) },
        7 => Fault::Network { leader, mode: Mode::Slow(rng.millis(100, 3_000)), for_: rng.millis(2_000, 8_000) },
        _ => {
            if rng.below(2) == 0 {
                Fault::DeleteLeaderPod
            } else {
                Fault::ScaleDownUp
            }
        }
    }
}

/// A wrapper that points each pod's elector at the proxy of its ordinal (by rewriting the
/// kubeconfig the test kubelet wrote), then runs the real elector.
fn wrapper(dir: &std::path::Path, proxies: &[Proxy]) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let cases: String = proxies.iter().enumerate().map(|(i, p)| format!("  {i}) port={} ;;\n", p.port)).collect();
    let script = format!(
        "#!/bin/sh\nset -e\ncase \"$CHAOS_ORDINAL\" in\n{cases}  *) port= ;;\nesac\n\
         if [ -n \"$port\" ]; then\n  sed \"s#server: .*#server: https://127.0.0.1:$port#\" \"$KUBECONFIG\" > \"$KUBECONFIG.chaos\"\n\
           export KUBECONFIG=\"$KUBECONFIG.chaos\"\nfi\nexec {} \"$@\"\n",
        elector_binary(false).display()
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("elector-via-proxy.sh");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

struct Chaos {
    pair: Pair,
    proxies: Vec<Proxy>,
    /// Pods whose elector process a fault ended (kill -9, SIGTERM): restarted when healing,
    /// as a kubelet restarts a container. New pods are started by the test kubelet itself.
    ended: std::sync::Mutex<Vec<String>>,
}

impl Chaos {
    async fn leader(&self) -> anyhow::Result<String> {
        self.pair.leader(LEADER_AGAIN).await
    }

    async fn pick(&self, leader: bool) -> anyhow::Result<String> {
        let l = self.leader().await?;
        Ok(if leader {
            l
        } else if l == self.pair.pod(0) {
            self.pair.pod(1)
        } else {
            self.pair.pod(0)
        })
    }

    fn ordinal(pod: &str) -> usize {
        contract::split_pod_name(pod).map_or(0, |(_, o)| o as usize)
    }

    fn running(&self, pod: &str) -> bool {
        self.pair.kubelet.pid(&self.pair.namespace, pod, contract::SIDECAR_CONTAINER).is_some()
    }

    /// Restarts the electors a fault ended, once their process is gone (a kubelet
    /// restarting a container).
    async fn heal_processes(&self) -> anyhow::Result<()> {
        let ended: Vec<String> = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for pod in ended {
            if !self.running(&pod) {
                self.pair.kubelet.restart(&self.pair.namespace, &pod, contract::SIDECAR_CONTAINER).await?;
                self.ended.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != pod);
            }
        }
        Ok(())
    }

    fn end(&self, pod: &str, signal: Signal) {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).push(pod.to_string());
        self.pair.signal(pod, signal);
    }

    async fn apply(&self, fault: Fault) -> anyhow::Result<()> {
        let p = &self.pair;
        match fault {
            Fault::KillElector { leader } => self.end(&self.pick(leader).await?, Signal::Kill),
            Fault::TermElector { leader } => self.end(&self.pick(leader).await?, Signal::Term),
            Fault::PauseElector { leader, for_ } => {
                let pod = self.pick(leader).await?;
                p.signal(&pod, Signal::Stop);
                pause(for_).await;
                p.signal(&pod, Signal::Cont);
            }
            Fault::ApiServerDown { for_ } => {
                p.bed.kill_apiserver();
                pause(for_).await;
                p.bed.start_apiserver().await?;
            }
            Fault::Network { leader, mode, for_ } => {
                let proxy = &self.proxies[Self::ordinal(&self.pick(leader).await?)];
                proxy.set(mode);
                pause(for_).await;
                proxy.set(Mode::Pass);
            }
            Fault::DeleteLeaderPod => {
                let pods: Api<Pod> = Api::namespaced(p.client.clone(), &p.namespace);
                pods.delete(&self.leader().await?, &DeleteParams::default()).await?;
            }
            Fault::ScaleDownUp => {
                p.scale(1).await?;
                let pods: Api<Pod> = Api::namespaced(p.client.clone(), &p.namespace);
                let gone = p.pod(1);
                wait_for("the scaled-away pod to go", Duration::from_secs(60), || async {
                    match pods.get_opt(&gone).await {
                        Ok(None) => Ok(()),
                        other => Err(format!("{:?}", other.map(|p| p.map(|p| p.metadata.deletion_timestamp)))),
                    }
                })
                .await?;
                p.scale(2).await?;
            }
        }
        Ok(())
    }

    /// After healing: one leader label, on the Lease holder, and both pods running.
    async fn wait_healed(&self) -> anyhow::Result<Duration> {
        let healed = Instant::now();
        let leases: Api<Lease> = Api::namespaced(self.pair.client.clone(), &self.pair.namespace);
        let lease = contract::lease_name(&self.pair.statefulset);
        wait_for("one leader (the Lease holder) after healing", LEADER_AGAIN, || async {
            self.heal_processes().await.map_err(|e| e.to_string())?;
            let holder = leases.get(&lease).await.map_err(|e| e.to_string())?.spec.and_then(|s| s.holder_identity);
            let labels = self.pair.observer.leaders();
            let running: Vec<bool> = (0..2).map(|i| self.running(&self.pair.pod(i))).collect();
            match (labels.as_slice(), &holder) {
                ([one], Some(h)) if one == h && running.iter().all(|r| *r) => Ok(()),
                _ => Err(format!("labels {labels:?}, holder {holder:?}, running {running:?}")),
            }
        })
        .await?;
        Ok(healed.elapsed())
    }
}

/// Waits `d` (a fault's duration: the point is that time passes, nothing is awaited).
async fn pause(d: Duration) {
    tokio::time::sleep(d).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_never_produce_two_leaders_and_a_leader_always_returns() -> anyhow::Result<()> {
    let sequences: usize = std::env::var("CHAOS_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("chaos: seed {seed}, {sequences} sequences (CHAOS_SEED={seed} reproduces the fault sequence)");
    let mut rng = Rng(seed);

    let proxies = vec![Proxy::start_unbound().await?, Proxy::start_unbound().await?];
    let dir = std::env::temp_dir().join(format!("ldap-elector-chaos-{}", std::process::id()));
    let program = wrapper(&dir, &proxies)?;
    let env = vec![
        ("ELECTOR_PROBE_ADDR".to_string(), "off".to_string()),
        ("ELECTOR_LOG_FORMAT".to_string(), "text".to_string()),
        ("CHAOS_ORDINAL".to_string(), "{ordinal}".to_string()),
    ];
    // Pods start simultaneously (Parallel pod management): the first fault of every run.
    let mut pair =
        Pair::start_with(2, &[], PairOptions { program: Some(program), runner_env: Some(env), ..Default::default() })
            .await?;
    let upstream = pair.bed.api_url.trim_start_matches("https://").to_string();
    for proxy in &proxies {
        proxy.set_upstream(upstream.clone());
    }
    let services: Api<Service> = Api::namespaced(pair.client.clone(), &pair.namespace);
    let selector = json!({"app": pair.statefulset, contract::LABEL_ROLE: contract::ROLE_LEADER});
    services.create(&PostParams::default(), &fixtures::service(PRIMARY, selector)?).await?;
    let (client, namespace) = (pair.client.clone(), pair.namespace.clone());
    pair.observer.watch_service(client, &namespace, PRIMARY);
    let chaos = Chaos { pair, proxies, ended: Default::default() };
    chaos.wait_healed().await?;

    let mut recoveries = Vec::new();
    for n in 0..sequences {
        let fault = draw(&mut rng);
        let started = Instant::now();
        let outcome = async {
            chaos.apply(fault).await?;
            chaos.wait_healed().await
        }
        .await;
        match outcome {
            Ok(recovered) => {
                println!(
                    "#{n:>3} {fault:?}: leader again {recovered:.1?} after healing ({:.1?} in all)",
                    started.elapsed()
                );
                recoveries.push(recovered);
            }
            Err(e) => panic!(
                "chaos seed {seed}, sequence #{n} {fault:?} failed: {e:#}\ntimeline:\n{}",
                chaos.pair.observer.timeline()
            ),
        }
        let violations =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chaos.pair.observer.assert_never_two_leaders()));
        if let Err(panic) = violations {
            eprintln!("chaos seed {seed}: invariant violated in sequence #{n} {fault:?}");
            std::panic::resume_unwind(panic);
        }
    }
    recoveries.sort();
    println!(
        "chaos: {sequences} sequences, 0 invariant violations; leader again after healing: median {:.1?}, max {:.1?}",
        recoveries.get(recoveries.len() / 2).copied().unwrap_or_default(),
        recoveries.last().copied().unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

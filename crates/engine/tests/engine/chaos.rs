//! Chaos: two backends where 30 % of provider calls (launch, observe, terminate) fail at random
//! (a fixed seed), runs that sometimes vanish, 50 LoRAs, an engine stepped on a `ManualClock`
//! until every LoRA has ended. Every LoRA ends `completed` or `failed` with a reason, none is
//! trained twice, no instance is left on either backend, and every breaker transition the engine
//! made is in the transitions table (`chaos_check.rs`). `chaos_real.rs` does the same on the
//! real Replicate and Docker backends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use loraforge_domain::{LoraId, TrainingStatus};
use loraforge_engine::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Termination, TrainingBackend,
};

use crate::chaos_check::{all_ended, check_ended};
use crate::helpers::*;

/// xorshift64*: a small deterministic generator, so the test needs no crate and replays exactly.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// provider id → (LoRA, attempt, alive).
    instances: HashMap<String, (LoraId, u32, bool)>,
    /// Instances that vanished (the provider lost them): observed ended, still to terminate.
    vanished: HashSet<String>,
    calls: u64,
    failed_calls: u64,
}

/// A provider whose API fails 30 % of calls.
#[derive(Debug)]
struct Chaotic {
    name: String,
    rng: Arc<Mutex<Rng>>,
    state: Mutex<State>,
}

impl Chaotic {
    fn new(name: &str, rng: Arc<Mutex<Rng>>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            rng,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this call fails (30 %).
    fn fails(&self) -> bool {
        let fail = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chance(30);
        let mut s = self.state();
        s.calls += 1;
        s.failed_calls += u64::from(fail);
        fail
    }

    fn live(&self) -> Vec<(String, LoraId)> {
        self.state()
            .instances
            .iter()
            .filter(|(_, (_, _, alive))| *alive)
            .map(|(id, (lora, _, _))| (id.clone(), *lora))
            .collect()
    }

    /// The provider loses the instance of `lora` (it stops without a word from its worker).
    fn lose(&self, provider_id: &str) {
        self.state().vanished.insert(provider_id.to_owned());
    }
}

#[async_trait]
impl TrainingBackend for Chaotic {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_runs(&self) -> usize {
        6
    }

    fn scope(&self) -> Scope {
        Scope::Shared
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        if self.fails() {
            return Err(BackendError::Transient(format!("{}: 503", self.name)));
        }
        let mut s = self.state();
        s.next += 1;
        let id = format!("{}-{}", self.name, s.next);
        s.instances
            .insert(id.clone(), (launch.lora_id, launch.attempt, true));
        Ok(Launched {
            provider_id: id,
            gpu_type: None,
            price_per_hour: None,
        })
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        if self.fails() {
            return Err(BackendError::Transient(format!("{}: 502", self.name)));
        }
        let s = self.state();
        Ok(instances
            .iter()
            .map(|i| match s.instances.get(&i.provider_id) {
                Some((_, _, true)) if s.vanished.contains(&i.provider_id) => Observed::Ended {
                    outcome: "vanished",
                    reason: Some("the provider lost the instance".into()),
                    gone: false,
                },
                Some((_, _, true)) => Observed::Running,
                _ => Observed::Ended {
                    outcome: "vanished",
                    reason: None,
                    gone: true,
                },
            })
            .collect())
    }

    async fn terminate(&self, instance: &Instance, _: Ending) -> Result<Termination, BackendError> {
        if self.fails() {
            return Err(BackendError::Transient(format!("{}: timeout", self.name)));
        }
        if let Some(i) = self.state().instances.get_mut(&instance.provider_id) {
            i.2 = false;
        }
        Ok(Termination {
            gone: true,
            billed_millis: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_loras_across_two_failing_backends_all_end_and_nothing_is_left() {
    let db = Db::sqlite().await;
    let rng = Arc::new(Mutex::new(Rng(0x5EED_1234_ABCD_0001)));
    let a = Chaotic::new("runpod", rng.clone());
    let b = Chaotic::new("replicate", rng.clone());
    let mut s = settings("e1");
    s.max_active_per_user = 100;
    s.terminate_retry_delays = vec![Duration::from_secs(2)];
    let engine = db.engine(
        vec![
            a.clone() as Arc<dyn TrainingBackend>,
            b.clone() as Arc<dyn TrainingBackend>,
        ],
        s,
    );
    let mut loras = Vec::new();
    for i in 0..50 {
        let u = db.user().await;
        loras.push(db.lora(u, &format!("Chaos {i}"), i).await);
    }
    let started = std::time::Instant::now();
    let mut reported: Vec<_> = Vec::new();
    let mut trained: HashMap<LoraId, u32> = HashMap::new();
    let mut age: HashMap<String, u32> = HashMap::new();
    let mut ticks = 0;
    loop {
        let report = engine.tick().await.expect("tick");
        reported.extend(report.breaker_transitions.clone());
        ticks += 1;
        // Workers: a run that has been up a few ticks trains (or its instance is lost, 10 %).
        for o in db.open().await {
            if o.run.outcome.is_some() || !o.current || o.job_status != TrainingStatus::Training {
                continue;
            }
            let n = age.entry(o.run.provider_id.clone()).or_default();
            *n += 1;
            if *n < 3 {
                continue;
            }
            let backend = if o.run.backend == "runpod" { &a } else { &b };
            let lose = rng.lock().unwrap_or_else(|e| e.into_inner()).chance(10);
            if lose {
                backend.lose(&o.run.provider_id);
            } else if *n == 3 {
                db.report_trained(o.run.lora_id).await;
                *trained.entry(o.run.lora_id).or_default() += 1;
            }
        }
        db.advance(Duration::from_secs(30));
        let done = all_ended(&db, &loras).await;
        if done && a.live().is_empty() && b.live().is_empty() {
            break;
        }
        assert!(
            ticks < 3000,
            "not done after {ticks} ticks (25 h on the clock): stuck LoRAs"
        );
    }
    let ended = check_ended(&db, &loras, reported).await;
    assert!(trained.values().all(|n| *n == 1));
    assert!(a.live().is_empty() && b.live().is_empty(), "instances left");
    let calls = a.state().calls + b.state().calls;
    let failed_calls = a.state().failed_calls + b.state().failed_calls;
    println!(
        "chaos: {} completed, {} failed, {ticks} ticks, {} transitions, {calls} provider calls ({failed_calls} failed), {:?}",
        ended.completed,
        ended.failed,
        ended.transitions,
        started.elapsed()
    );
    assert!(
        ended.completed >= 40,
        "most LoRAs complete: {}",
        ended.completed
    );
}

//! The `runpod-serverless` backend: one job on a RunPod Serverless queue endpoint per training
//! attempt. The endpoint runs the worker image with its RunPod handler
//! (`docker/runpod_handler.py`), which runs the same `loraforge worker` as a pod does, with
//! `LORAFORGE_SERVER`, `LORAFORGE_LORA_ID` and `LORAFORGE_WORKER_TOKEN` taken from the job's
//! input (`{"server", "lora_id", "token", "env"}`; a sample batch attempt adds
//! `LORAFORGE_SAMPLE_BATCH` to `env`); the worker calls back to the control plane's public URL
//! over the worker protocol.
//!
//! - Launch: one `POST /run`. RunPod has no idempotency key, so a `/run` is never repeated once
//!   it may have reached RunPod (the client refuses); a failure whose effect is unknown is
//!   `Transient` and the engine launches again. A job left behind by such a lost answer runs a
//!   worker whose token names an attempt that no longer holds the job's claim: the control
//!   plane refuses it, the worker exits at once, and RunPod bills seconds.
//! - Observe: one `GET /status` per job, a few at once. A job that ended (COMPLETED, FAILED,
//!   TIMED_OUT, CANCELLED) is reported `Ended` but not yet gone, so that the engine calls
//!   [`TrainingBackend::terminate`], which reads the job's `executionTime` for the bill; a job
//!   RunPod no longer knows (404: its TTL or the 30-minute result retention ran out) is gone.
//! - Terminate: a job still queued or running is cancelled (`POST /cancel`); when its worker
//!   ended the run itself ([`Ending::Finished`]) the job is first given `finish_grace` to
//!   complete on its own. Gone once RunPod reports the job terminal or no longer knows it;
//!   billed by `executionTime` × the endpoint's per-second price when RunPod reports it (the
//!   engine bills `price_per_hour` × billed time, so the price is handed over per hour).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use loraforge_domain::{MicroUsd, outcome};
use loraforge_engine::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Termination, TrainingBackend,
};

use crate::pods::backend_error;
use crate::{JobState, JobStatus, Policy, RunpodError, ServerlessClient};

/// RunPod's upper bound on `executionTimeout` and `ttl`.
const MAX_POLICY: Duration = Duration::from_secs(7 * 86_400);
/// `/status` calls in flight at once during one observe.
const STATUS_CONCURRENCY: usize = 8;

/// How serverless jobs are submitted and billed.
#[derive(Debug, Clone)]
pub struct ServerlessBackendSettings {
    /// The backend's name in the database. Default "runpod-serverless".
    pub name: String,
    /// Jobs at once across every replica. Default 10.
    pub max_jobs: usize,
    /// What the endpoint costs per second of execution (its GPU's flex price); `None` records
    /// no cost.
    pub price_per_second: Option<MicroUsd>,
    /// The job's `executionTimeout`: RunPod stops the handler after this. Default 2 h 10 min
    /// (the default job timeout plus 10 minutes: the engine's own timeout acts first).
    pub execution_timeout: Duration,
    /// How long a job may wait in the queue; its `ttl` is this plus the execution timeout (at
    /// most 7 days). Default 24 h.
    pub queue_ttl: Duration,
    /// Extra environment for every job (e.g. `HF_TOKEN`), sent as the input's `env`.
    pub env: Vec<(String, String)>,
    /// How often the engine polls the jobs. Default 10 s.
    pub observe_every: Duration,
    /// After its worker reported the run's end, how long a job may take to complete on its own
    /// before it is cancelled. Default 60 s.
    pub finish_grace: Duration,
}

impl Default for ServerlessBackendSettings {
    fn default() -> Self {
        Self {
            name: "runpod-serverless".to_owned(),
            max_jobs: 10,
            price_per_second: None,
            execution_timeout: Duration::from_secs(2 * 3600 + 600),
            queue_ttl: Duration::from_secs(24 * 3600),
            env: Vec::new(),
            observe_every: Duration::from_secs(10),
            finish_grace: Duration::from_secs(60),
        }
    }
}

impl ServerlessBackendSettings {
    /// The job policy these settings give, within RunPod's bounds (5 s to 7 days, 10 s to 7
    /// days).
    pub fn policy(&self) -> Policy {
        let execution = self
            .execution_timeout
            .clamp(Duration::from_secs(5), MAX_POLICY);
        let ttl = execution
            .saturating_add(self.queue_ttl)
            .clamp(Duration::from_secs(10), MAX_POLICY);
        Policy {
            execution_timeout_ms: execution.as_millis() as u64,
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    /// The per-second price as the engine takes it: per hour.
    pub fn price_per_hour(&self) -> Option<MicroUsd> {
        self.price_per_second
            .map(|p| MicroUsd(p.0.saturating_mul(3600)))
    }
}

#[derive(Debug)]
pub struct ServerlessBackend {
    client: ServerlessClient,
    settings: ServerlessBackendSettings,
    /// Jobs whose worker ended its run but which had not completed yet: since when.
    finishing: Mutex<HashMap<String, Instant>>,
}

impl ServerlessBackend {
    pub fn new(client: ServerlessClient, settings: ServerlessBackendSettings) -> Self {
        Self {
            client,
            settings,
            finishing: Mutex::new(HashMap::new()),
        }
    }

    /// The job's input. Holds the worker token: never logged. The handler sets
    /// `LORAFORGE_SERVER`, `LORAFORGE_LORA_ID` and `LORAFORGE_WORKER_TOKEN` from the input's own
    /// fields and passes `env` through, so the rest of the worker's environment (a sample
    /// batch's `LORAFORGE_SAMPLE_BATCH`) travels in `env`, after the configured extras: the
    /// worker's own variables win. Any deployed handler image passes it on unchanged.
    fn input(&self, launch: &Launch) -> Value {
        const OWN_FIELDS: [&str; 3] = [
            "LORAFORGE_SERVER",
            "LORAFORGE_LORA_ID",
            "LORAFORGE_WORKER_TOKEN",
        ];
        let worker = launch
            .worker_env()
            .into_iter()
            .filter(|(k, _)| !OWN_FIELDS.contains(&k.as_str()));
        let env: Map<String, Value> = self
            .settings
            .env
            .iter()
            .cloned()
            .chain(worker)
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        json!({
            "server": launch.server,
            "lora_id": launch.lora_id.to_string(),
            "token": launch.token,
            "env": env,
        })
    }

    /// Whether a finishing job is still within its grace (starting the clock on first sight).
    fn within_grace(&self, id: &str) -> bool {
        let mut finishing = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        let since = *finishing.entry(id.to_owned()).or_insert_with(Instant::now);
        since.elapsed() < self.settings.finish_grace
    }

    fn forget(&self, id: &str) {
        self.finishing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// What a job's status says of its run.
pub fn observed(job: Option<&JobStatus>) -> Observed {
    let Some(job) = job else {
        return Observed::Ended {
            outcome: "vanished",
            reason: Some("RunPod no longer knows the serverless job".to_owned()),
            gone: true,
        };
    };
    // Ended jobs are not gone yet: terminate reads their billed execution time.
    let ended = |outcome: &'static str, reason: Option<String>| Observed::Ended {
        outcome,
        reason,
        gone: false,
    };
    match &job.state {
        JobState::InQueue | JobState::InProgress | JobState::Other(_) => Observed::Running,
        JobState::Completed => {
            let (outcome, reason) = completed_outcome(job.output.as_ref());
            ended(outcome, reason)
        }
        JobState::Failed => ended(
            "vanished",
            Some(format!(
                "the serverless job failed: {}",
                error_message(job.error.as_deref())
            )),
        ),
        JobState::TimedOut => ended(
            "vanished",
            Some(format!(
                "the serverless job timed out: {}",
                error_message(job.error.as_deref())
            )),
        ),
        JobState::Cancelled => ended(
            "vanished",
            Some("the serverless job was cancelled".to_owned()),
        ),
    }
}

/// The handler's output, `{"exit_code": N, "outcome": <the worker's last stdout line> | null}`:
/// the line's code when it is a known one, else the generic outcome of the exit status.
fn completed_outcome(output: Option<&Value>) -> (&'static str, Option<String>) {
    let Some(output) = output else {
        return (
            "vanished",
            Some("the serverless job completed without an output".to_owned()),
        );
    };
    let exit_code = output
        .get("exit_code")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    if exit_code.is_none() {
        // The handler refused the input (`{"error": …}`) or the output is not the handler's.
        let reason = match output.get("error").and_then(Value::as_str) {
            Some(e) => format!("the serverless handler did not run the worker: {e}"),
            None => "the serverless job's output has no exit_code".to_owned(),
        };
        return ("vanished", Some(reason));
    }
    let line = output.get("outcome").filter(|v| v.is_object());
    let reason = line
        .and_then(|l| l.get("reason"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let known = line
        .and_then(|l| l.get("code"))
        .and_then(Value::as_str)
        .and_then(outcome::spec);
    let code = known.unwrap_or_else(|| outcome::from_exit(exit_code)).code;
    (code, reason)
}

/// RunPod's `error`: a JSON-encoded object with an `error_message` when the handler raised.
fn error_message(error: Option<&str>) -> String {
    let Some(error) = error else {
        return "no error given".to_owned();
    };
    serde_json::from_str::<Value>(error)
        .ok()
        .and_then(|v| {
            v.get("error_message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| error.to_owned())
}

#[async_trait]
impl TrainingBackend for ServerlessBackend {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn max_runs(&self) -> usize {
        self.settings.max_jobs
    }

    fn scope(&self) -> Scope {
        Scope::Shared
    }

    /// The handler runs the same `loraforge worker` as a pod, with the job's `env`: a sample
    /// batch's `LORAFORGE_SAMPLE_BATCH` makes it render (see `ServerlessBackend::input`).
    /// RunPod lists no serverless jobs by name, so the orphan sweep does not reach them (as for
    /// training jobs); RunPod's own `executionTimeout` bounds a job left behind.
    fn runs_samples(&self) -> bool {
        true
    }

    fn observe_every(&self) -> Duration {
        self.settings.observe_every
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        // Not repeated on an unknown result (see the module's documentation).
        let job = self
            .client
            .run(self.input(launch), self.settings.policy())
            .await
            .map_err(|e| match e {
                RunpodError::NotFound => BackendError::Permanent(
                    "RunPod has no such serverless endpoint; check LORAFORGE_RUNPOD_ENDPOINT_ID"
                        .to_owned(),
                ),
                e => backend_error("submitting a serverless job", e),
            })?;
        tracing::info!(job = %job.id, lora = %launch.lora_id, attempt = launch.attempt, "serverless job submitted");
        // The endpoint fixes the GPU; RunPod does not say which worker took the job.
        Ok(Launched {
            provider_id: job.id,
            gpu_type: None,
            price_per_hour: self.settings.price_per_hour(),
        })
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        // The futures are made first: a closure inside the stream trips `async_trait`'s `Send`.
        let calls: Vec<_> = instances
            .iter()
            .map(|i| self.client.status(&i.provider_id))
            .collect();
        let statuses: Vec<_> = futures::stream::iter(calls)
            .buffered(STATUS_CONCURRENCY)
            .collect()
            .await;
        statuses
            .into_iter()
            .map(|s| {
                s.map(|job| observed(job.as_ref()))
                    .map_err(|e| backend_error("reading a serverless job", e))
            })
            .collect()
    }

    async fn terminate(
        &self,
        instance: &Instance,
        ending: Ending,
    ) -> Result<Termination, BackendError> {
        let id = &instance.provider_id;
        let mut job = self
            .client
            .status(id)
            .await
            .map_err(|e| backend_error("reading a serverless job", e))?;
        if let Some(status) = &job
            && !status.state.is_terminal()
        {
            if ending == Ending::Finished && self.within_grace(id) {
                // Its worker is exiting; the job completes by itself.
                return Ok(Termination {
                    gone: false,
                    billed_millis: None,
                });
            }
            self.client
                .cancel(id)
                .await
                .map_err(|e| backend_error("cancelling a serverless job", e))?;
            tracing::info!(job = %id, lora = %instance.lora_id, "serverless job cancelled");
            job = self
                .client
                .status(id)
                .await
                .map_err(|e| backend_error("reading a serverless job", e))?;
        }
        let gone = job.as_ref().is_none_or(|j| j.state.is_terminal());
        if gone {
            self.forget(id);
        }
        Ok(Termination {
            gone,
            billed_millis: job.and_then(|j| j.execution_time_ms).filter(|_| gone),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, output: Option<Value>, error: Option<&str>) -> JobStatus {
        JobStatus {
            id: "j".into(),
            state,
            execution_time_ms: Some(1500),
            delay_time_ms: Some(10),
            output,
            error: error.map(str::to_owned),
        }
    }

    fn ended(o: Observed) -> (&'static str, Option<String>, bool) {
        match o {
            Observed::Ended {
                outcome,
                reason,
                gone,
            } => (outcome, reason, gone),
            Observed::Running => panic!("running"),
        }
    }

    #[test]
    fn states_map_to_observations() {
        for state in [
            JobState::InQueue,
            JobState::InProgress,
            JobState::Other("RUNNING".into()),
        ] {
            assert_eq!(observed(Some(&job(state, None, None))), Observed::Running);
        }
        assert_eq!(ended(observed(None)).0, "vanished");
        assert!(ended(observed(None)).2, "an unknown job is gone");

        let trained = job(
            JobState::Completed,
            Some(json!({"exit_code": 0, "outcome": null})),
            None,
        );
        assert_eq!(ended(observed(Some(&trained))), ("trained", None, false));

        let line = json!({"event": "error", "code": "upload_failed", "reason": "uploading failed", "exit_code": 11});
        let failed = job(
            JobState::Completed,
            Some(json!({"exit_code": 11, "outcome": line})),
            None,
        );
        assert_eq!(
            ended(observed(Some(&failed))),
            ("upload_failed", Some("uploading failed".into()), false)
        );

        // An unknown code: the exit status decides.
        let line = json!({"event": "error", "code": "from_the_future", "reason": "new"});
        let newer = job(
            JobState::Completed,
            Some(json!({"exit_code": 3, "outcome": line})),
            None,
        );
        assert_eq!(ended(observed(Some(&newer))).0, "non_finite_loss");
        let odd = job(
            JobState::Completed,
            Some(json!({"exit_code": 77, "outcome": null})),
            None,
        );
        assert_eq!(ended(observed(Some(&odd))).0, "internal");

        let refused = job(
            JobState::Completed,
            Some(json!({"error": "invalid input: x"})),
            None,
        );
        let (code, reason, _) = ended(observed(Some(&refused)));
        assert_eq!(code, "vanished");
        assert!(reason.unwrap().contains("invalid input: x"));

        let raised = r#"{"error_type":"RuntimeError","error_message":"worker died"}"#;
        let (code, reason, gone) =
            ended(observed(Some(&job(JobState::Failed, None, Some(raised)))));
        assert_eq!((code, gone), ("vanished", false));
        assert!(reason.unwrap().ends_with("worker died"));
        assert_eq!(
            ended(observed(Some(&job(
                JobState::TimedOut,
                None,
                Some("too long")
            ))))
            .0,
            "vanished"
        );
        assert_eq!(
            ended(observed(Some(&job(JobState::Cancelled, None, None)))).0,
            "vanished"
        );
    }

    #[test]
    fn prices_and_policies() {
        let mut s = ServerlessBackendSettings {
            price_per_second: Some(MicroUsd::parse_dollars("0.00031").unwrap()),
            ..ServerlessBackendSettings::default()
        };
        let per_hour = s.price_per_hour().unwrap();
        assert_eq!(per_hour, MicroUsd(1_116_000));
        // 1.5 s of execution at 0.00031 $/s, billed through the per-hour price.
        assert_eq!(per_hour.per_hour_for_millis(1500), MicroUsd(465));
        assert_eq!(
            per_hour.per_hour_for_millis(1500),
            MicroUsd(310).per_second_for_millis(1500)
        );

        assert_eq!(
            s.policy(),
            Policy {
                execution_timeout_ms: 7_800_000,
                ttl_ms: 7_800_000 + 86_400_000
            }
        );
        s.execution_timeout = Duration::from_secs(1);
        s.queue_ttl = Duration::from_secs(30 * 86_400);
        assert_eq!(
            s.policy(),
            Policy {
                execution_timeout_ms: 5_000,
                ttl_ms: 7 * 86_400_000
            }
        );
    }
}

//! The `runpod-serverless` backend against the contract fake, whose endpoint workers really run
//! the image program with the job's input as the worker's environment.

mod common;

use std::time::Duration;

use common::{KEY, eventually, serverless};
use loraforge_domain::{LoraId, MicroUsd};
use loraforge_engine::{BackendError, Ending, Instance, Launch, Observed, Scope, TrainingBackend};
use loraforge_fakes::{CallOp, EndpointSpec, FakeConfig, FakeJobState, FakeRunpod, ImageSpec};
use loraforge_runpod::{ServerlessBackend, ServerlessBackendSettings};

const ENDPOINT: &str = "ep-trainer";

/// Works `$WORK` seconds, then ends as the worker does: exit 0 and nothing on stdout, or (with
/// `FAIL` set) its error line and exit 11. Writes what it was given to its log.
fn worker_image() -> ImageSpec {
    ImageSpec::shell(
        r#"echo "lora=$LORAFORGE_LORA_ID server=$LORAFORGE_SERVER token=$LORAFORGE_WORKER_TOKEN extra=$HF_TOKEN sample=$LORAFORGE_SAMPLE_BATCH" >&2
sleep "${WORK:-0.3}" & wait $!
if [ -n "$FAIL" ]; then
  echo '{"event":"error","code":"upload_failed","reason":"the bucket said no","exit_code":11}'
  exit 11
fi
exit 0"#,
    )
}

async fn start() -> FakeRunpod {
    FakeRunpod::start(
        FakeConfig::new(KEY).with_endpoint(EndpointSpec::new(ENDPOINT, worker_image())),
    )
    .await
}

fn backend(runpod: &FakeRunpod, env: &[(&str, &str)]) -> ServerlessBackend {
    let settings = ServerlessBackendSettings {
        price_per_second: Some(MicroUsd::parse_dollars("0.00031").unwrap()),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        finish_grace: Duration::from_millis(300),
        ..ServerlessBackendSettings::default()
    };
    ServerlessBackend::new(
        serverless(&runpod.serverless_base_url(), ENDPOINT, KEY),
        settings,
    )
}

fn launch() -> Launch {
    let lora_id = LoraId::new();
    Launch {
        lora_id,
        attempt: 1,
        instance_name: format!("loraforge-{lora_id}-1"),
        server: "http://control.test".to_owned(),
        token: "worker-token-secret".to_owned(),
        retry: false,
        task: loraforge_engine::Task::Train,
    }
}

fn instance(launch: &Launch, provider_id: &str) -> Instance {
    Instance {
        provider_id: provider_id.to_owned(),
        instance_name: launch.instance_name.clone(),
        lora_id: launch.lora_id,
        attempt: launch.attempt,
    }
}

async fn observe_until_ended(b: &ServerlessBackend, i: &Instance) -> Observed {
    eventually(Duration::from_secs(10), "the job to end", || async {
        let seen = b
            .observe(std::slice::from_ref(i))
            .await
            .unwrap()
            .pop()
            .unwrap();
        matches!(seen, Observed::Ended { .. }).then_some(seen)
    })
    .await
}

#[tokio::test]
async fn a_job_runs_completes_and_is_billed_by_its_execution_time() {
    let runpod = start().await;
    let b = backend(&runpod, &[("HF_TOKEN", "hf-secret"), ("WORK", "0.5")]);
    assert_eq!(
        (b.name(), b.scope(), b.max_runs()),
        ("runpod-serverless", Scope::Shared, 10)
    );
    assert_eq!(b.observe_every(), Duration::from_secs(10));

    let l = launch();
    let launched = b.launch(&l).await.unwrap();
    assert_eq!(launched.gpu_type, None);
    assert_eq!(launched.price_per_hour, Some(MicroUsd(1_116_000)));
    let i = instance(&l, &launched.provider_id);
    assert_eq!(
        b.observe(std::slice::from_ref(&i)).await.unwrap(),
        vec![Observed::Running]
    );

    // The job's input is the worker's environment, plus the extra variables.
    let job = runpod.job(&launched.provider_id).unwrap();
    assert_eq!(job.input["lora_id"], l.lora_id.to_string());
    assert_eq!(job.input["server"], "http://control.test");
    assert_eq!(job.input["token"], "worker-token-secret");
    assert_eq!(job.input["env"]["HF_TOKEN"], "hf-secret");

    let seen = observe_until_ended(&b, &i).await;
    assert_eq!(
        seen,
        Observed::Ended {
            outcome: "trained",
            reason: None,
            gone: false
        }
    );
    let log = std::fs::read_to_string(&job.log_path).unwrap();
    assert!(
        log.contains(&format!(
            "lora={} server=http://control.test token=worker-token-secret extra=hf-secret",
            l.lora_id
        )),
        "{log}"
    );

    // The worker ended the run: nothing to cancel, gone, billed by executionTime.
    let t = b.terminate(&i, Ending::Finished).await.unwrap();
    let job = runpod.job(&launched.provider_id).unwrap();
    assert_eq!(job.state, FakeJobState::Completed);
    assert!(t.gone);
    assert_eq!(t.billed_millis, job.execution_time_ms);
    assert!(t.billed_millis.unwrap() >= 500, "{t:?}");
    assert!(
        !runpod
            .calls()
            .iter()
            .any(|c| matches!(c.op, CallOp::Cancel { .. })),
        "{:?}",
        runpod.calls()
    );
    assert_eq!(runpod.live_processes(), 0);
}

/// A sample batch's attempt: the batch travels in the job's `env` (which the handler passes on)
/// after the configured extras, so the worker runs in sample mode; the token travels once.
#[tokio::test]
async fn a_sample_batch_attempt_names_its_batch_in_the_job_env() {
    let runpod = start().await;
    let b = backend(
        &runpod,
        &[
            ("HF_TOKEN", "hf-secret"),
            ("LORAFORGE_SAMPLE_BATCH", "not-this"),
        ],
    );
    assert!(b.runs_samples());
    let batch = loraforge_domain::SampleBatchId::new();
    let mut l = launch();
    l.task = loraforge_engine::Task::Sample { batch };
    let launched = b.launch(&l).await.unwrap();
    let job = runpod.job(&launched.provider_id).unwrap();
    let env = job.input["env"].as_object().unwrap();
    assert_eq!(
        env["LORAFORGE_SAMPLE_BATCH"],
        batch.to_string(),
        "the worker's own wins"
    );
    assert_eq!(env["HF_TOKEN"], "hf-secret");
    for own in [
        "LORAFORGE_SERVER",
        "LORAFORGE_LORA_ID",
        "LORAFORGE_WORKER_TOKEN",
    ] {
        assert!(!env.contains_key(own), "{own} has its own field");
    }
    let i = instance(&l, &launched.provider_id);
    observe_until_ended(&b, &i).await;
    let log = std::fs::read_to_string(&job.log_path).unwrap();
    assert!(log.contains(&format!("sample={batch}")), "{log}");
    assert!(b.terminate(&i, Ending::Finished).await.unwrap().gone);

    // A training attempt names no batch.
    let t = backend(&runpod, &[]).launch(&launch()).await.unwrap();
    let job = runpod.job(&t.provider_id).unwrap();
    assert!(
        job.input["env"].get("LORAFORGE_SAMPLE_BATCH").is_none(),
        "{:?}",
        job.input
    );
}

#[tokio::test]
async fn the_worker_s_error_line_is_the_outcome() {
    let runpod = start().await;
    let b = backend(&runpod, &[("FAIL", "1"), ("WORK", "0")]);
    let l = launch();
    let launched = b.launch(&l).await.unwrap();
    let seen = observe_until_ended(&b, &instance(&l, &launched.provider_id)).await;
    assert_eq!(
        seen,
        Observed::Ended {
            outcome: "upload_failed",
            reason: Some("the bucket said no".into()),
            gone: false
        }
    );
}

#[tokio::test]
async fn stop_cancels_a_running_job_and_kills_its_worker() {
    let runpod = start().await;
    let b = backend(&runpod, &[("WORK", "30")]);
    let l = launch();
    let launched = b.launch(&l).await.unwrap();
    let i = instance(&l, &launched.provider_id);
    eventually(Duration::from_secs(5), "the worker to start", || async {
        runpod
            .job(&launched.provider_id)
            .filter(|j| j.process_alive)
            .map(drop)
    })
    .await;
    let t = b.terminate(&i, Ending::Stop).await.unwrap();
    assert!(t.gone, "{t:?}");
    assert!(t.billed_millis.is_some(), "{t:?}");
    assert_eq!(
        runpod.job(&launched.provider_id).unwrap().state,
        FakeJobState::Cancelled
    );
    eventually(Duration::from_secs(5), "the worker to die", || async {
        (runpod.live_processes() == 0).then_some(())
    })
    .await;
    // Idempotent, and the cancelled job reads as ended.
    assert!(b.terminate(&i, Ending::Stop).await.unwrap().gone);
    let seen = b
        .observe(std::slice::from_ref(&i))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        matches!(
            seen,
            Observed::Ended {
                outcome: "vanished",
                gone: false,
                ..
            }
        ),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_finished_run_s_job_gets_a_grace_then_is_cancelled() {
    let runpod = start().await;
    let b = backend(&runpod, &[("WORK", "30")]);
    let l = launch();
    let launched = b.launch(&l).await.unwrap();
    let i = instance(&l, &launched.provider_id);
    // Within the grace the job is left to complete on its own.
    let t = b.terminate(&i, Ending::Finished).await.unwrap();
    assert!(!t.gone, "{t:?}");
    assert_eq!(
        runpod.job(&launched.provider_id).unwrap().state,
        FakeJobState::InProgress
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = b.terminate(&i, Ending::Finished).await.unwrap();
    assert!(t.gone, "{t:?}");
    assert_eq!(
        runpod.job(&launched.provider_id).unwrap().state,
        FakeJobState::Cancelled
    );
}

#[tokio::test]
async fn an_unknown_job_is_gone() {
    let runpod = start().await;
    let b = backend(&runpod, &[]);
    let l = launch();
    let i = instance(&l, "no-such-job");
    let seen = b.observe(std::slice::from_ref(&i)).await.unwrap();
    assert!(
        matches!(
            seen[..],
            [Observed::Ended {
                outcome: "vanished",
                gone: true,
                ..
            }]
        ),
        "{seen:?}"
    );
    let t = b.terminate(&i, Ending::Stop).await.unwrap();
    assert!(t.gone);
    assert_eq!(t.billed_millis, None);
}

#[tokio::test]
async fn errors_say_what_to_check_and_never_show_the_token() {
    let runpod = start().await;
    let l = launch();

    let bad_key = ServerlessBackend::new(
        serverless(&runpod.serverless_base_url(), ENDPOINT, "rpa_wrong"),
        ServerlessBackendSettings::default(),
    );
    let e = bad_key.launch(&l).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Permanent(m) if m.contains("LORAFORGE_RUNPOD_API_KEY")),
        "{e:?}"
    );

    let no_endpoint = ServerlessBackend::new(
        serverless(&runpod.serverless_base_url(), "ep-missing", KEY),
        ServerlessBackendSettings::default(),
    );
    let e = no_endpoint.launch(&l).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Permanent(m) if m.contains("LORAFORGE_RUNPOD_ENDPOINT_ID")),
        "{e:?}"
    );

    // A 429 on /run: not repeated, and worth trying later.
    let b = backend(&runpod, &[]);
    runpod.inject_status(1, 429, None);
    let e = b.launch(&l).await.unwrap_err();
    assert!(matches!(e, BackendError::Transient(_)), "{e:?}");
    assert!(runpod.jobs().is_empty());
    // 5xx beyond the retries while reading: transient too.
    runpod.inject_status(10, 503, None);
    let e = b.observe(&[instance(&l, "x")]).await.unwrap_err();
    assert!(matches!(e, BackendError::Transient(_)), "{e:?}");
    runpod.inject_status(0, 503, None);

    for e in [format!("{:?}", launch()), format!("{b:?}")] {
        assert!(
            !e.contains("worker-token-secret") && !e.contains(KEY),
            "{e}"
        );
    }
}

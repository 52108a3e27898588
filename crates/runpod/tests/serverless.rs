//! The Serverless client against the contract fake, whose workers really run the image program
//! the way our RunPod handler runs `loraforge worker`.

mod common;

use std::time::Duration;

use common::{KEY, eventually, process_running, serverless};
use loraforge_fakes::{EndpointSpec, FakeConfig, FakeRunpod, ImageSpec};
use loraforge_runpod::{JobState, JobStatus, Policy, RunpodError, ServerlessClient};
use serde_json::{Value, json};

const ENDPOINT: &str = "ep-trainer";

/// Prints a line, works 300 ms, then prints its outcome as JSON built from its environment.
fn worker_image() -> ImageSpec {
    ImageSpec::shell(
        r#"echo "starting $LORAFORGE_LORA_ID"
case "$MODE" in
  sleep) sleep 30 & wait $! ;;
  *) sleep 0.3 ;;
esac
printf '{"event":"done","lora":"%s","server":"%s","token":"%s","extra":"%s","image":"%s"}\n' \
  "$LORAFORGE_LORA_ID" "$LORAFORGE_SERVER" "$LORAFORGE_WORKER_TOKEN" "$EXTRA" "$IMAGE_VAR"
exit 4"#,
    )
    .with_env("IMAGE_VAR", "img")
}

async fn start(max_workers: usize) -> FakeRunpod {
    let mut endpoint = EndpointSpec::new(ENDPOINT, worker_image());
    endpoint.max_workers = max_workers;
    FakeRunpod::start(FakeConfig::new(KEY).with_endpoint(endpoint)).await
}

fn input(lora: &str, mode: &str) -> Value {
    json!({"server": "http://control.test", "lora_id": lora, "token": "tok-1", "env": {"EXTRA": "x", "MODE": mode}})
}

const POLICY: Policy = Policy {
    execution_timeout_ms: 60_000,
    ttl_ms: 3_600_000,
};

async fn wait_for(
    client: &ServerlessClient,
    id: &str,
    what: &str,
    done: fn(&JobState) -> bool,
) -> JobStatus {
    eventually(Duration::from_secs(4), what, || {
        let client = client.clone();
        let id = id.to_owned();
        async move { client.status(&id).await.unwrap().filter(|s| done(&s.state)) }
    })
    .await
}

#[tokio::test]
async fn a_job_queues_runs_and_completes_with_its_outcome() {
    let fake = start(1).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);

    let first = client.run(input("lora-1", "quick"), POLICY).await.unwrap();
    assert_eq!(first.status, JobState::InQueue);
    let second = client.run(input("lora-2", "quick"), POLICY).await.unwrap();
    assert_ne!(first.id, second.id);

    let running = wait_for(&client, &first.id, "IN_PROGRESS", |s| {
        *s == JobState::InProgress
    })
    .await;
    assert_eq!(running.output, None);
    assert_eq!(
        client.status(&second.id).await.unwrap().unwrap().state,
        JobState::InQueue,
        "one worker only"
    );
    let health = client.health().await.unwrap();
    assert_eq!(
        (
            health.jobs.in_progress,
            health.jobs.in_queue,
            health.workers.running,
            health.workers.idle
        ),
        (1, 1, 1, 0)
    );

    let done = wait_for(&client, &first.id, "COMPLETED", JobState::is_terminal).await;
    assert_eq!(done.state, JobState::Completed);
    let output = done.output.clone().expect("output");
    assert_eq!(output["exit_code"], 4);
    assert_eq!(
        output["outcome"],
        json!({"event": "done", "lora": "lora-1", "server": "http://control.test", "token": "tok-1", "extra": "x", "image": "img"})
    );
    assert!(done.execution_time_ms.unwrap() >= 250, "{done:?}");
    assert!(done.delay_time_ms.is_some());

    let second = wait_for(
        &client,
        &second.id,
        "second COMPLETED",
        JobState::is_terminal,
    )
    .await;
    assert_eq!(second.state, JobState::Completed);
    assert!(
        second.delay_time_ms.unwrap() >= 250,
        "it waited for the only worker: {second:?}"
    );
    assert_eq!(client.health().await.unwrap().jobs.completed, 2);
    let log = std::fs::read_to_string(fake.job(&first.id).unwrap().log_path).unwrap();
    assert!(log.contains("starting lora-1"), "{log}");
}

#[tokio::test]
async fn cancel_kills_the_worker_and_is_idempotent() {
    let fake = start(2).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);
    let job = client.run(input("lora-c", "sleep"), POLICY).await.unwrap();
    wait_for(&client, &job.id, "IN_PROGRESS", |s| {
        *s == JobState::InProgress
    })
    .await;
    let pid = fake.job(&job.id).unwrap().pid.expect("a worker process");
    assert!(process_running(pid));

    client.cancel(&job.id).await.unwrap();
    assert_eq!(
        client.status(&job.id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    eventually(Duration::from_secs(3), "worker gone", || {
        let gone = fake.live_processes() == 0;
        async move { gone.then_some(()) }
    })
    .await;
    assert!(!process_running(pid));
    assert_eq!(
        client.status(&job.id).await.unwrap().unwrap().state,
        JobState::Cancelled,
        "stays cancelled"
    );
    client.cancel(&job.id).await.unwrap();
    client.cancel("no-such-job").await.unwrap();
}

#[tokio::test]
async fn an_unknown_job_is_none() {
    let fake = start(1).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);
    assert_eq!(
        client
            .status("7b1c6f0e-0000-4000-8000-000000000000")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_dead_worker_fails_the_job_with_a_json_error() {
    let fake = start(1).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);
    let job = client.run(input("lora-k", "sleep"), POLICY).await.unwrap();
    wait_for(&client, &job.id, "IN_PROGRESS", |s| {
        *s == JobState::InProgress
    })
    .await;
    assert!(fake.kill_job(&job.id));
    let failed = client.status(&job.id).await.unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    let error: Value =
        serde_json::from_str(failed.error.as_deref().unwrap()).expect("a JSON-encoded error");
    assert!(
        error["error_message"]
            .as_str()
            .unwrap()
            .contains("worker died"),
        "{error}"
    );
    assert!(error.get("error_type").is_some());
}

#[tokio::test]
async fn the_execution_timeout_kills_the_worker() {
    let fake = start(1).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);
    let policy = Policy {
        execution_timeout_ms: 300,
        ttl_ms: 60_000,
    };
    let job = client.run(input("lora-t", "sleep"), policy).await.unwrap();
    let timed_out = wait_for(&client, &job.id, "TIMED_OUT", JobState::is_terminal).await;
    assert_eq!(timed_out.state, JobState::TimedOut);
    assert!(timed_out.execution_time_ms.unwrap() >= 300);
    eventually(Duration::from_secs(3), "worker gone", || {
        let gone = fake.live_processes() == 0;
        async move { gone.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn an_input_without_server_lora_and_token_fails() {
    let fake = start(1).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);
    let job = client.run(json!({"lora_id": "x"}), POLICY).await.unwrap();
    let failed = wait_for(&client, &job.id, "FAILED", JobState::is_terminal).await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.error.unwrap().contains("input.server"));
    assert_eq!(fake.live_processes(), 0);
}

#[tokio::test]
async fn bad_keys_and_unknown_endpoints() {
    let fake = start(1).await;
    let wrong = "rpa_wrong_serverless_key";
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, wrong);
    let error = client.run(input("l", "quick"), POLICY).await.unwrap_err();
    assert!(matches!(error, RunpodError::Unauthorized), "{error:?}");
    assert!(matches!(
        client.health().await.unwrap_err(),
        RunpodError::Unauthorized
    ));
    assert!(!format!("{error} {error:?} {client:?}").contains(wrong));
    assert!(fake.jobs().is_empty());

    let other = serverless(&fake.serverless_base_url(), "no-such-endpoint", KEY);
    assert!(
        other
            .run(input("l", "quick"), POLICY)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn run_is_not_repeated_after_a_429_or_a_500_but_reads_are() {
    let fake = start(4).await;
    let client = serverless(&fake.serverless_base_url(), ENDPOINT, KEY);
    fake.inject_status(1, 429, None);
    let error = client.run(input("l", "quick"), POLICY).await.unwrap_err();
    assert!(
        matches!(error, RunpodError::RateLimited { .. }),
        "{error:?}"
    );
    client.run(input("l", "quick"), POLICY).await.unwrap();
    assert_eq!(fake.jobs().len(), 1);

    fake.inject_status(1, 503, None);
    let error = client.run(input("l", "quick"), POLICY).await.unwrap_err();
    assert!(
        matches!(error, RunpodError::Http { status: 503, .. }),
        "{error:?}"
    );
    assert_eq!(fake.jobs().len(), 1);

    fake.inject_status(2, 500, None);
    client
        .health()
        .await
        .expect("reads are retried through 5xx");
}

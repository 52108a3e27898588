//! Training on RunPod, end to end through the real binary: `loraforge serve` with
//! `LORAFORGE_BACKENDS=runpod` (pods) or `runpod-serverless` against the contract fake of RunPod,
//! whose pods and serverless workers run this build's `loraforge worker` with the worker image's
//! environment and the trainer on the tiny SDXL-shaped model (CPU).
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`, which `scripts/test.sh` runs first).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use common::service::{
    Service, USER, assert_sample_pngs, free_port, pod_logs, uuid_like, worker_image,
};

/// The contract fake of RunPod with the worker image: its pods run this build's `loraforge
/// worker` with the image's environment (as `docker/worker.Dockerfile` sets it), logs in
/// `<dir>/pods`. No 3090 is available; A40s are, at $0.79/h.
async fn fake_runpod(dir: &Path) -> loraforge_fakes::FakeRunpod {
    loraforge_fakes::FakeRunpod::start(runpod_config(dir)).await
}

/// [`fake_runpod`]'s configuration.
fn runpod_config(dir: &Path) -> loraforge_fakes::FakeConfig {
    use loraforge_fakes::FakeConfig;
    let mut config = FakeConfig::new("rp-test-key")
        .with_gpu("NVIDIA GeForce RTX 3090", 0, "0.44")
        .with_gpu("NVIDIA A40", 2, "0.79")
        .with_image("ghcr.io/acme/loraforge-worker:test", runpod_image(dir));
    config.logs_dir = Some(dir.join("pods"));
    config
}

/// The worker image as RunPod runs it: `loraforge worker`, this build's.
fn runpod_image(dir: &Path) -> loraforge_fakes::ImageSpec {
    worker_image(
        loraforge_fakes::ImageSpec::program(env!("CARGO_BIN_EXE_loraforge"), ["worker"]),
        &dir.join("image-data"),
    )
}

/// `serve` training on the fake's pods (extra settings after the RunPod ones).
fn runpod_service(
    dir: &Path,
    runpod: &loraforge_fakes::FakeRunpod,
    extra: &[(&str, &str)],
) -> Service {
    let graphql = runpod.graphql_url().to_string();
    let mut env = vec![
        ("LORAFORGE_BACKENDS", "runpod"),
        ("LORAFORGE_RUNPOD_API_KEY", "rp-test-key"),
        ("LORAFORGE_RUNPOD_GRAPHQL_URL", graphql.as_str()),
        (
            "LORAFORGE_RUNPOD_IMAGE",
            "ghcr.io/acme/loraforge-worker:test",
        ),
        (
            "LORAFORGE_RUNPOD_GPU_TYPES",
            "NVIDIA GeForce RTX 3090,NVIDIA A40",
        ),
        ("LORAFORGE_RUNPOD_OBSERVE_SECS", "1"),
        ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
    ];
    env.extend_from_slice(extra);
    Service::start(dir, &env)
}

/// The RunPod pods backend, end to end: `serve` with `LORAFORGE_BACKENDS=runpod` against the
/// contract fake of RunPod's GraphQL API, whose pod really runs `loraforge worker` exactly as the
/// worker image does (its command, only the image's and the pod's environment); the worker calls
/// back over the protocol, the LoRA completes, the pod is terminated and its cost recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_on_a_runpod_pod() {
    use loraforge_fakes::FakePodStatus;
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    let svc = runpod_service(dir.path(), &runpod, &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on a pod", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );

    // The 3090 had no capacity: the A40 took it. The pod carried the worker's environment.
    let pods = runpod.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(pod.name, format!("loraforge-{id}-1"));
    assert_eq!(pod.gpu_type, "NVIDIA A40");
    for key in [
        "LORAFORGE_SERVER",
        "LORAFORGE_LORA_ID",
        "LORAFORGE_WORKER_TOKEN",
    ] {
        assert!(
            pod.env.iter().any(|(k, _)| k == key),
            "{key} missing from {:?}",
            pod.env.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
    }
    assert!(
        pod.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_LORA_ID" && *v == id)
    );
    // No instance is left, and the attempt's record says where it ran and what it cost.
    let started = Instant::now();
    loop {
        let (_, details) = svc.details(&token, &id).await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() {
            assert_eq!(
                (attempt["backend"].as_str(), attempt["gpu_type"].as_str()),
                (Some("runpod"), Some("NVIDIA A40")),
                "{details}"
            );
            assert_eq!(attempt["outcome"], "trained");
            assert!(
                attempt["cost"]["micro_usd"].as_i64().unwrap() > 0,
                "{details}"
            );
            assert_eq!(details["training_cost"], attempt["cost"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pod's end was not recorded: {details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod = runpod.pods().pop().unwrap();
    assert_eq!(pod.status, FakePodStatus::Terminated, "{pod:?}");
    no_process_left(&runpod).await;
}

/// A pod's host dies mid-training (the pod vanishes without a word from its worker): the job is
/// requeued, a new pod resumes from the checkpoint the first one uploaded to the blob store, and
/// the LoRA completes; both pods are gone, each attempt on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_dies_mid_training_is_replaced_and_the_next_resumes_from_the_stored_checkpoint()
{
    use loraforge_fakes::{FakePodStatus, KillPod};
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    let svc = runpod_service(
        dir.path(),
        &runpod,
        &[("LORAFORGE_CHECKPOINT_EVERY_STEPS", "10")],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq survives a host", 60).await;
    let stored = svc
        .data
        .join("blobs/training-checkpoints")
        .join(USER)
        .join(&id)
        .join("attempt-1.pt");
    svc.wait(
        &token,
        &id,
        "a stored checkpoint",
        Duration::from_secs(240),
        |_| stored.exists(),
    )
    .await;
    let first = runpod.pods().pop().unwrap();
    assert!(runpod.kill_pod(&first.id, KillPod::Removed), "{first:?}");

    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let pods = runpod.pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let second_log = std::fs::read_to_string(&pods[1].log_path).unwrap();
    assert!(
        second_log.contains("resuming from step-"),
        "the second pod trained from scratch:\n{second_log}"
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["vanished", "trained"], "{details}");
    // Nothing is left running, and the job's checkpoints are gone with it.
    let started = Instant::now();
    while runpod
        .pods()
        .iter()
        .any(|p| p.status == FakePodStatus::Running)
        || stored.parent().unwrap().exists()
            && std::fs::read_dir(stored.parent().unwrap())
                .unwrap()
                .next()
                .is_some()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
}

/// No GPU of any configured type: the LoRA waits `queued` with a message saying why (not
/// `failed`), and trains once one is free; cancelling a training LoRA ends its pod within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gpu_the_lora_waits_and_a_cancel_ends_its_pod_within_30_s() {
    use loraforge_fakes::FakePodStatus;
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    runpod.set_capacity("NVIDIA A40", 0);
    let svc = runpod_service(dir.path(), &runpod, &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq waits", 5000).await;
    let waiting = svc
        .wait(
            &token,
            &id,
            "a message about the GPU",
            Duration::from_secs(60),
            |s| s["status_message"].is_string(),
        )
        .await;
    assert_eq!(waiting["training_status"], "queued", "{waiting}");
    let message = waiting["status_message"].as_str().unwrap();
    assert!(
        message.contains("waiting for a GPU") && message.contains("NVIDIA A40"),
        "{message}"
    );
    assert!(waiting["error"].is_null(), "{waiting}");
    assert!(runpod.pods().is_empty());

    // A GPU frees up: the backend is asked again after its cool-down, and the LoRA trains.
    runpod.set_capacity("NVIDIA A40", 1);
    svc.training_past(
        &token,
        &id,
        1,
        "training on a pod",
        Duration::from_secs(240),
    )
    .await;
    let asked = Instant::now();
    let (code, body) = svc.cancel(&token, &id).await;
    assert_eq!(code, 200, "{body}");
    loop {
        let pod = runpod.pods().pop().unwrap();
        if pod.status == FakePodStatus::Terminated && runpod.live_processes() == 0 {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the pod still runs 30 s after the cancel: {pod:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cancel → pod terminated in {:.2} s",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(
        svc.status(&token, &id).await["training_status"],
        "cancelled"
    );
}

/// `serve` killed with -9 while a pod trains, restarted on the same address: the pod's worker
/// carries on (or a new pod resumes), the LoRA completes, and no instance is left unaccounted
/// for; an orphan pod of this service found at start is terminated by the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_serve_every_pod_is_accounted_for() {
    use loraforge_fakes::FakePodStatus;
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    // A pod of this service that no run owns (left by a crash before its run was recorded).
    let orphan_name = format!("loraforge-{}-1", uuid_like());
    let deploy = serde_json::json!({
        "query": "mutation Deploy($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id } }",
        "variables": {"input": {"name": orphan_name, "imageName": "idle", "gpuTypeId": "NVIDIA A40", "gpuCount": 1, "cloudType": "ALL"}}
    });
    let resp = reqwest::Client::new()
        .post(runpod.graphql_url().as_str())
        .bearer_auth("rp-test-key")
        .json(&deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let public = format!("http://127.0.0.1:{port}");
    let mut svc = runpod_service(
        dir.path(),
        &runpod,
        &[
            ("LORAFORGE_CHECKPOINT_EVERY_STEPS", "10"),
            ("LORAFORGE_PUBLIC_URL", &public),
        ],
    );
    svc.bind = bind;
    svc.kill_9();
    svc.restart();
    let started = Instant::now();
    while runpod
        .pods()
        .iter()
        .any(|p| p.name == orphan_name && p.status != FakePodStatus::Terminated)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the orphan was not swept: {:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq outlives serve", 80).await;
    svc.training_past(
        &token,
        &id,
        5,
        "training to be under way",
        Duration::from_secs(240),
    )
    .await;
    svc.kill_9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    svc.restart();
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let started = Instant::now();
    loop {
        let (_, details) = svc.details(&token, &id).await;
        let attempts = details["attempts"].as_array().unwrap().clone();
        let pods = runpod.pods();
        let ours: Vec<_> = pods.iter().filter(|p| p.name != orphan_name).collect();
        if attempts.iter().all(|a| a["cost"].is_object())
            && ours.iter().all(|p| p.status == FakePodStatus::Terminated)
        {
            // One pod per attempt, each ended and paid for.
            assert_eq!(ours.len(), attempts.len(), "{pods:?}\n{details}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{pods:?}\n{details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
}

/// The RunPod Serverless backend, end to end: `serve` with `LORAFORGE_BACKENDS=runpod-serverless`
/// against the contract fake's queue endpoint, whose worker runs `loraforge worker` with the
/// job's input as its environment (as `docker/runpod_handler.py` does) and only the image's own
/// variables besides; the LoRA completes, the job ends COMPLETED on its own and the attempt is
/// billed by RunPod's `executionTime` at the per-second price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_on_a_runpod_serverless_endpoint() {
    use loraforge_fakes::{EndpointSpec, FakeConfig, FakeJobState, ImageSpec};
    let dir = tempfile::tempdir().unwrap();
    let image_data = dir.path().join("image-data");
    let image = worker_image(
        ImageSpec::program(env!("CARGO_BIN_EXE_loraforge"), ["worker"]),
        &image_data,
    );
    let mut config =
        FakeConfig::new("rp-test-key").with_endpoint(EndpointSpec::new("ep-loraforge", image));
    config.logs_dir = Some(dir.path().join("jobs"));
    let runpod = loraforge_fakes::FakeRunpod::start(config).await;
    let base_url = runpod.serverless_base_url();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "runpod-serverless"),
            ("LORAFORGE_RUNPOD_API_KEY", "rp-test-key"),
            ("LORAFORGE_RUNPOD_SERVERLESS_URL", &base_url),
            ("LORAFORGE_RUNPOD_ENDPOINT_ID", "ep-loraforge"),
            ("LORAFORGE_RUNPOD_SERVERLESS_PRICE_PER_SECOND", "0.00031"),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on serverless", 10).await;
    let done = svc.finished(&token, &id).await;
    let job_logs = || {
        let mut all = String::new();
        for entry in std::fs::read_dir(dir.path().join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        all
    };
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- jobs ---\n{}",
        svc.logs(),
        job_logs()
    );

    // One job, whose input carried the worker's environment.
    let jobs = runpod.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].input["lora_id"], id.as_str());
    assert!(
        jobs[0].input["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("http://127.0.0.1:")),
        "{:?}",
        jobs[0].input
    );
    assert!(
        jobs[0].input["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // The attempt's record says where it ran and what it cost: executionTime × the price.
    let started = Instant::now();
    loop {
        let (_, details) = svc.details(&token, &id).await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() {
            assert_eq!(
                attempt["backend"].as_str(),
                Some("runpod-serverless"),
                "{details}"
            );
            assert_eq!(attempt["outcome"], "trained");
            let job = runpod.jobs().pop().unwrap();
            assert_eq!(job.state, FakeJobState::Completed, "{job:?}");
            let billed = job.execution_time_ms.expect("an execution time");
            let expected = (310 * billed as i64 + 500) / 1000;
            assert_eq!(
                attempt["cost"]["micro_usd"].as_i64(),
                Some(expected),
                "{details} {job:?}"
            );
            assert!(expected > 0);
            assert_eq!(details["training_cost"], attempt["cost"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the job's end was not recorded: {details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
    // The token never reaches the service's log.
    let token_sent = runpod.jobs()[0].input["token"].as_str().unwrap().to_owned();
    assert!(!svc.logs().contains(&token_sent));
}

/// Sample batches on RunPod, end to end: a LoRA trained on a pod (one step of the tiny model),
/// then `POST …/samples` renders on a pod of its own (`loraforge-sample-<batch>-1`, the batch in
/// its environment) whose `loraforge worker` runs in sample mode; the batch reads completed with
/// signed links to PNGs that decode, and the pod is terminated. Then `serve`, restarted on RunPod
/// Serverless, renders a second batch in a serverless job (the batch in the job's `env`, as the
/// handler passes it on), which ends on its own; no process of either is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_render_on_a_runpod_pod_and_on_runpod_serverless() {
    use loraforge_fakes::{EndpointSpec, FakeJobState, FakePodStatus};
    let dir = tempfile::tempdir().unwrap();
    let config = runpod_config(dir.path())
        .with_endpoint(EndpointSpec::new("ep-loraforge", runpod_image(dir.path())));
    let runpod = loraforge_fakes::FakeRunpod::start(config).await;
    let mut svc = runpod_service(dir.path(), &runpod, &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq sampled on a pod", 1).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let body = json!({"prompts": [{"prompt": "a photo of zxq", "seed": 5}], "width": 64, "height": 64, "steps": 1});

    let batch = svc
        .render_samples(&token, &id, body.clone(), Duration::from_secs(240))
        .await;
    assert_eq!(
        batch["status"],
        "completed",
        "{batch}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    assert_eq!(batch["attempts"], 1);
    assert_sample_pngs(&batch, 64).await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while runpod
        .pods()
        .iter()
        .any(|p| p.status != FakePodStatus::Terminated)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a pod was left: {:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods = runpod.pods();
    assert_eq!(pods.len(), 2, "one to train, one to sample: {pods:?}");
    let pod = pods
        .iter()
        .find(|p| p.name == format!("loraforge-sample-{batch_id}-1"))
        .unwrap_or_else(|| panic!("no sample pod: {pods:?}"));
    assert!(
        pod.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_SAMPLE_BATCH" && *v == batch_id),
        "{:?}",
        pod.env.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    no_process_left(&runpod).await;

    // The same on RunPod Serverless.
    svc.kill_9();
    svc.env.retain(|(k, _)| k != "LORAFORGE_BACKENDS");
    let base_url = runpod.serverless_base_url();
    for (k, v) in [
        ("LORAFORGE_BACKENDS", "runpod-serverless"),
        ("LORAFORGE_RUNPOD_SERVERLESS_URL", base_url.as_str()),
        ("LORAFORGE_RUNPOD_ENDPOINT_ID", "ep-loraforge"),
    ] {
        svc.env.push((k.into(), v.into()));
    }
    svc.restart();
    let token = svc.token(USER);
    let batch = svc
        .render_samples(&token, &id, body, Duration::from_secs(240))
        .await;
    assert_eq!(
        batch["status"],
        "completed",
        "{batch}\n{}\n--- jobs ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    assert_sample_pngs(&batch, 64).await;
    let jobs = runpod.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        jobs[0].input["env"]["LORAFORGE_SAMPLE_BATCH"], batch["id"],
        "{:?}",
        jobs[0].input["env"]
    );
    let started = Instant::now();
    while runpod.jobs()[0].state != FakeJobState::Completed {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            runpod.jobs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
}

/// Waits for every process the fake provider started to be gone: a terminated pod's worker gets
/// SIGTERM, then SIGKILL after the fake's 5 s grace.
async fn no_process_left(runpod: &loraforge_fakes::FakeRunpod) {
    let started = Instant::now();
    while runpod.live_processes() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "processes left: {:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Training on Replicate, end to end through the real binary: `loraforge serve` with
//! `LORAFORGE_BACKENDS=replicate` against the contract fake of Replicate, whose trainings run our
//! Cog model's CLI (`cog/train.py`) with the trainer on the tiny SDXL-shaped model (CPU).
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`, which `scripts/test.sh` runs first).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::service::{Service, USER, repo_root};
use common::trainer_python;

/// `cog/train.py` as fake-replicate runs it, with the trainer venv and one torch thread; run
/// through `sh` with `prelude` first when given (it may edit `{spec}`).
fn cog_command(dir: &Path, prelude: Option<&str>) -> loraforge_fakes::TrainingCommand {
    use loraforge_fakes::TrainingCommand;
    let python = trainer_python().display().to_string();
    let mut command = match prelude {
        None => TrainingCommand::cog(trainer_python(), repo_root()),
        Some(prelude) => {
            let mut c = TrainingCommand::shell(format!(
                "{prelude} && exec '{python}' cog/train.py --dataset-url '{{dataset_url}}' \
                 --spec '{{spec}}' --output '{{output}}'"
            ));
            c.cwd = Some(repo_root());
            c
        }
    };
    for (k, v) in [
        ("LORAFORGE_TRAINER_PYTHON", python.as_str()),
        ("LORAFORGE_TORCH_THREADS", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("HF_HUB_OFFLINE", "1"),
    ] {
        command = command.with_env(k, v);
    }
    command.with_env("HOME", dir.display().to_string())
}

/// fake-replicate running `command`, and `serve` with `LORAFORGE_BACKENDS=replicate` on it.
async fn replicate_service(
    dir: &Path,
    command: loraforge_fakes::TrainingCommand,
) -> (loraforge_fakes::FakeReplicate, Service) {
    replicate_service_with(dir, command, &[]).await
}

/// [`replicate_service`] with `extra` settings after the defaults (which they override). The
/// fake model declares exactly our Cog model's inputs (`cog/train.py`'s `train()`), and `serve`
/// has the account's webhook secret, so trainings ask for signed webhooks.
async fn replicate_service_with(
    dir: &Path,
    command: loraforge_fakes::TrainingCommand,
    extra: &[(&str, &str)],
) -> (loraforge_fakes::FakeReplicate, Service) {
    use loraforge_fakes::{FakeReplicate, ReplicateConfig};
    use loraforge_replicate::INSTANCE_TAG;
    let mut config = ReplicateConfig::new("r8-test", command)
        .with_model("acme/loras")
        .with_declared_inputs(&["dataset_url", "spec", INSTANCE_TAG]);
    config.work_dir = Some(dir.join("replicate"));
    let replicate = FakeReplicate::start(config).await;
    let base_url = replicate.base_url();
    let mut env = vec![
        ("LORAFORGE_BACKENDS", "replicate"),
        ("LORAFORGE_REPLICATE_API_TOKEN", "r8-test"),
        ("LORAFORGE_REPLICATE_API_URL", &base_url),
        (
            "LORAFORGE_REPLICATE_MODEL",
            "acme/loraforge-trainer:0a1b2c3d",
        ),
        ("LORAFORGE_REPLICATE_DESTINATION", "acme/loras"),
        ("LORAFORGE_REPLICATE_PRICE_PER_SECOND", "0.0014"),
        ("LORAFORGE_REPLICATE_OBSERVE_SECS", "1"),
        (
            "LORAFORGE_REPLICATE_WEBHOOK_SECRET",
            ReplicateConfig::DEFAULT_SECRET,
        ),
        ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
    ];
    env.extend_from_slice(extra);
    let svc = Service::start(dir, &env);
    (replicate, svc)
}

/// Each training's logs and stderr, for failure messages.
fn replicate_logs(replicate: &loraforge_fakes::FakeReplicate, dir: &Path) -> String {
    let mut all = String::new();
    for t in replicate.trainings() {
        all.push_str(&format!("{}\n", t["logs"].as_str().unwrap_or("")));
        let id = t["id"].as_str().unwrap_or("");
        let path = dir.join("replicate").join(id).join("stderr.log");
        all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    all
}

/// The Replicate backend, end to end: `serve` with `LORAFORGE_BACKENDS=replicate` against the
/// contract fake, whose trainings run our Cog model's CLI (`cog/train.py`, which downloads the
/// job's dataset zip from the service and runs the trainer as the worker does). The control plane
/// plays the worker's part: it relays progress, downloads the tar, uploads the files and posts
/// the result; the LoRA completes with its files and the attempt is billed by `predict_time` at
/// the per-second price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_through_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on replicate", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- trainings ---\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    // The LoRA's files are there: the downloads of the completed LoRA answer.
    let (_, details) = svc.details(&token, &id).await;
    let trainings = replicate.trainings();
    assert_eq!(trainings.len(), 1, "{trainings:?}");
    let training = &trainings[0];
    assert_eq!(training["status"], "succeeded", "{training}");
    assert_eq!(training["destination"], "acme/loras");
    assert_eq!(
        training["input"]["loraforge_instance"].as_str(),
        Some(format!("loraforge-{id}-1").as_str())
    );
    assert!(
        training["webhook"]
            .as_str()
            .is_some_and(|w| w.ends_with("/api/v1/webhooks/replicate")),
        "{training}"
    );
    for key in ["download_url", "kohya_download_url"] {
        let url = details[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {details}"));
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{key}");
        assert!(
            response.bytes().await.unwrap().len() > 1000,
            "{key} is a LoRA file"
        );
    }
    // The attempt's record: where it ran, what it cost (predict_time × the price).
    let started = Instant::now();
    loop {
        let (_, details) = svc.details(&token, &id).await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() {
            assert_eq!(attempt["backend"].as_str(), Some("replicate"), "{details}");
            assert_eq!(attempt["outcome"], "trained");
            let seconds = replicate.trainings()[0]["metrics"]["predict_time"]
                .as_f64()
                .expect("a predict_time");
            let millis = (seconds * 1000.0).round() as i64;
            // 0.0014 $/s = 1400 µ$/s, billed through the per-hour price as the engine does.
            let expected = (1400 * 3600 * millis + 1_800_000) / 3_600_000;
            assert_eq!(
                attempt["cost"]["micro_usd"].as_i64(),
                Some(expected),
                "{details}"
            );
            assert!(expected > 0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the run's end was not recorded: {details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(replicate.live_processes(), 0);
}

/// A training that fails on Replicate (the trainer's loss turns NaN at step 3): the trainer's
/// own error line in the training's logs becomes the attempt's outcome, and the LoRA fails with
/// the same reason as on a worker; the training is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_that_fails_on_replicate_fails_the_lora_with_the_trainers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let python = trainer_python().display().to_string();
    let prelude = format!(
        "'{python}' -c 'import json,sys; p=sys.argv[1]; s=json.load(open(p)); \
         s[\"debug_fail_at_step\"]=3; json.dump(s, open(p, \"w\"))' '{{spec}}'"
    );
    let (replicate, svc) =
        replicate_service(dir.path(), cog_command(dir.path(), Some(&prelude))).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Diverges on replicate", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "failed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    assert_eq!(
        done["error"], "training diverged: non-finite loss at step 3",
        "{done}"
    );
    let trainings = replicate.trainings();
    assert_eq!(trainings.len(), 1, "not run again: {trainings:?}");
    assert_eq!(trainings[0]["status"], "failed");
    assert_eq!(replicate.live_processes(), 0);
}

/// A LoRA cancelled while it trains on Replicate: progress is relayed from the training's logs
/// while it runs, and the cancel cancels the training (its process killed) within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_lora_cancels_its_replicate_training() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Cancelled on replicate", 5000).await;
    svc.training_past(
        &token,
        &id,
        1,
        "training steps relayed from Replicate",
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(replicate.live_processes(), 1);
    let asked = Instant::now();
    let (code, body) = svc.cancel(&token, &id).await;
    assert_eq!(code, 200, "{body}");
    while replicate.live_processes() > 0 {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "still training after 30 s: {:?}",
            replicate.trainings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trainings = replicate.trainings();
    assert_eq!(trainings[0]["status"], "canceled", "{trainings:?}");
    assert!(replicate.counts().1 >= 1, "a cancel was sent");
    let s = svc.status(&token, &id).await;
    assert_eq!(s["training_status"], "cancelled");
}

/// `serve` killed with SIGKILL while its LoRA trains on Replicate: the training goes on there,
/// and the restarted service (its tokens gone with the process) issues the attempt's token
/// again, picks the training up, relays its progress and brings its files home. Nothing is
/// created twice and no attempt is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_training_outlives_a_kill_9_of_serve_and_the_restart_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, mut svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Survivor on replicate", 60).await;
    svc.training_past(
        &token,
        &id,
        3,
        "training relayed from Replicate",
        Duration::from_secs(180),
    )
    .await;
    // The public URL (the dataset link, the webhook) stays the same across the restart.
    svc.bind = svc.url.trim_start_matches("http://").to_owned();
    svc.kill_9();
    assert_eq!(replicate.live_processes(), 1, "the training goes on");
    svc.restart();
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["trained"], "one run trained the LoRA: {details}");
    assert_eq!(replicate.trainings().len(), 1, "nothing created twice");
}

/// A training that Replicate fails without a word from the trainer (its host died): the
/// attempt ends `provider_failed`, which is not the job's fault, and the job runs again on a new
/// training and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_host_failure_runs_the_job_again_and_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Host dies on replicate", 30).await;
    svc.training_past(
        &token,
        &id,
        1,
        "training relayed from Replicate",
        Duration::from_secs(180),
    )
    .await;
    let first = replicate.trainings()[0]["id"].as_str().unwrap().to_owned();
    assert!(replicate.fail_training(&first, "the GPU host died"));
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["provider_failed", "trained"], "{details}");
    let trainings = replicate.trainings();
    assert_eq!(trainings.len(), 2, "{trainings:?}");
    assert_eq!(trainings[0]["status"], "failed");
    assert_eq!(trainings[1]["status"], "succeeded");
    assert_eq!(replicate.live_processes(), 0);
}

/// With the webhook secret set, Replicate's signed webhooks drive the run: polled only every
/// 10 minutes here, the LoRA still completes within a minute or two, because each delivery (the
/// fake signs them as Replicate does) makes the engine read the training at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_make_the_engine_look_at_once_despite_a_long_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service_with(
        dir.path(),
        cog_command(dir.path(), None),
        &[("LORAFORGE_REPLICATE_OBSERVE_SECS", "600")],
    )
    .await;
    let token = svc.token(USER);
    let created = Instant::now();
    let id = svc.create(&token, "Zxq by webhook", 5).await;
    let done = svc.finished(&token, &id).await;
    let took = created.elapsed();
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    // The engine looked at the training when launching it; after that, only the webhooks made it
    // look before the 600 s poll.
    assert!(took < Duration::from_secs(300), "took {took:?}");
    let deliveries = replicate.deliveries();
    let events: Vec<(&str, Option<u16>)> = deliveries
        .iter()
        .map(|d| (d.event.as_str(), d.answered))
        .collect();
    assert!(
        events.contains(&("start", Some(200))) && events.contains(&("completed", Some(200))),
        "the fake's signed deliveries were taken: {events:?}"
    );
    let logs = svc.logs();
    assert!(
        logs.matches("Replicate webhook").count() >= 2,
        "both deliveries reached the route:\n{logs}"
    );
    // The training's own record: it asked for exactly those events.
    let training = &replicate.trainings()[0];
    assert_eq!(
        training["webhook_events_filter"],
        serde_json::json!(["start", "completed"])
    );
}

/// Without the webhook secret the route refuses every delivery, so trainings are created
/// without a `webhook` (polling alone follows them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_webhook_secret_trainings_ask_for_no_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service_with(
        dir.path(),
        cog_command(dir.path(), None),
        &[("LORAFORGE_REPLICATE_WEBHOOK_SECRET", "")],
    )
    .await;
    let token = svc.token(USER);
    let id = svc.create(&token, "No hooks", 5000).await;
    let started = Instant::now();
    while replicate.trainings().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no training was created:\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let training = &replicate.trainings()[0];
    assert!(training["webhook"].is_null(), "{training}");
    let (code, body) = svc.cancel(&token, &id).await;
    assert_eq!(code, 200, "{body}");
    assert!(replicate.deliveries().is_empty());
}

/// Provider → provider fallback, end to end: `LORAFORGE_BACKENDS=runpod,replicate` with RunPod
/// hard down (every call 503) and Replicate training for real. The first LoRA's launch on RunPod
/// fails, which opens RunPod's breaker (one failure opens it here), and the LoRA goes to
/// Replicate at once; the second, created while the breaker is open, goes straight to Replicate
/// without a call to RunPod. Both complete; the run records say why; the admin view shows the
/// open breaker and its transition; RunPod saw no launch after its breaker opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_runpod_hard_down_loras_fall_back_to_replicate_and_the_breaker_spares_runpod() {
    use loraforge_fakes::{FakeConfig, FakeRunpod};
    let dir = tempfile::tempdir().unwrap();
    let runpod =
        FakeRunpod::start(FakeConfig::new("rp-test-key").with_gpu("NVIDIA A40", 2, "0.79")).await;
    runpod.inject_status(u32::MAX, 503, None);
    let graphql = runpod.graphql_url();
    let (replicate, svc) = replicate_service_with(
        dir.path(),
        cog_command(dir.path(), None),
        &[
            ("LORAFORGE_BACKENDS", "runpod,replicate"),
            ("LORAFORGE_RUNPOD_API_KEY", "rp-test-key"),
            ("LORAFORGE_RUNPOD_GRAPHQL_URL", &graphql),
            (
                "LORAFORGE_RUNPOD_IMAGE",
                "ghcr.io/acme/loraforge-worker:test",
            ),
            ("LORAFORGE_RUNPOD_GPU_TYPES", "NVIDIA A40"),
            ("LORAFORGE_BREAKER_FAILURES", "1"),
        ],
    )
    .await;
    let token = svc.token(USER);
    let admin = svc.admin_token(USER);
    let first = svc.create(&token, "Falls back", 5).await;
    svc.wait(
        &token,
        &first,
        "the first LoRA to train on Replicate",
        Duration::from_secs(120),
        |s| s["training_status"] == "training" && !replicate.trainings().is_empty(),
    )
    .await;
    let second_created = chrono::Utc::now();
    let second = svc.create(&token, "Skips runpod", 5).await;
    for id in [&first, &second] {
        let done = svc.finished(&token, id).await;
        assert_eq!(
            done["training_status"],
            "completed",
            "{done}\n{}\n{}",
            svc.logs(),
            replicate_logs(&replicate, dir.path())
        );
    }

    // Why each run went where it did.
    let (_, details) = svc.details(&token, &first).await;
    let attempts = details["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "the failed start used no attempt: {details}"
    );
    assert_eq!(attempts[0]["backend"], "replicate");
    let reason = attempts[0]["route_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("replicate; fallback after runpod: "),
        "{details}"
    );
    let (_, details) = svc.details(&token, &second).await;
    let reason = details["attempts"][0]["route_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("fallback after runpod: circuit breaker open"),
        "{details}"
    );

    // The admin view: RunPod's breaker is open, with the transition that opened it.
    let (code, view) = svc
        .call(&admin, reqwest::Method::GET, "/api/v1/admin/backends", None)
        .await;
    assert_eq!(code, 200, "{view}");
    let backends = view["backends"].as_array().unwrap();
    assert_eq!(backends[0]["name"], "runpod");
    assert_eq!(backends[0]["breaker_state"], "open", "{view}");
    let transitions = backends[0]["transitions"].as_array().unwrap();
    assert_eq!(transitions.len(), 1, "{view}");
    assert_eq!(
        (&transitions[0]["from"], &transitions[0]["to"]),
        (&"closed".into(), &"open".into())
    );
    assert!(
        transitions[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("503")),
        "{view}"
    );
    assert_eq!(backends[1]["name"], "replicate");
    assert_eq!(backends[1]["breaker_state"], "closed");

    // What RunPod saw: one launch, refused, the one that opened the breaker; none for the LoRA
    // created while it was open.
    let requests = runpod.requests();
    let deploys: Vec<_> = requests
        .iter()
        .filter(|r| r.operation == "podFindAndDeployOnDemand")
        .collect();
    assert_eq!(deploys.len(), 1, "{requests:?}");
    assert_eq!(deploys[0].status, 503);
    assert!(
        deploys[0].at < second_created,
        "{requests:?}; second LoRA at {second_created}"
    );
    assert!(runpod.pods().is_empty() && runpod.calls().is_empty());
    assert_eq!(replicate.trainings().len(), 2);
    assert_eq!(replicate.live_processes(), 0);
}

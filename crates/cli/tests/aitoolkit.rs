//! Training through ai-toolkit, end to end: `loraforge serve` with `LORAFORGE_BACKENDS=aitoolkit`
//! against the contract fake of ai-toolkit's web UI (`loraforge_fakes::aitoolkit`, auth on),
//! whose jobs run our trainer on the tiny SDXL-shaped model (CPU). The backend plays the
//! worker's part: dataset and job at ai-toolkit, progress relayed, the final kohya file
//! converted and delivered, everything at ai-toolkit deleted at the end.
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use loraforge_fakes::aitoolkit::{FakeAiToolkit, ToolkitConfig, ToolkitTrainer};
use serde_json::Value;

use common::service::{Service, USER, trainer_env};
use common::trainer_python;

const TOKEN: &str = "aitk-test-token";

async fn fake_aitoolkit(dir: &Path) -> FakeAiToolkit {
    let mut config = ToolkitConfig::new(dir.join("aitoolkit"));
    config.auth = Some(TOKEN.to_owned());
    config.tick = Duration::from_millis(50);
    config.trainer = Some(ToolkitTrainer {
        program: trainer_python(),
        args: vec!["-m".into(), "loraforge_trainer".into()],
        env: trainer_env(),
    });
    FakeAiToolkit::start(config, 0)
        .await
        .expect("fake ai-toolkit")
}

/// `loraforge serve` training on ai-toolkit.
fn aitoolkit_service(dir: &Path, aitoolkit: &FakeAiToolkit) -> Service {
    let url = aitoolkit.url();
    Service::start(
        dir,
        &[
            ("LORAFORGE_BACKENDS", "aitoolkit"),
            ("LORAFORGE_AITOOLKIT_URL", url.as_str()),
            ("LORAFORGE_AITOOLKIT_TOKEN", TOKEN),
            ("LORAFORGE_AITOOLKIT_OBSERVE_SECS", "1"),
            ("LORAFORGE_AITOOLKIT_PRICE_PER_HOUR", "0.69"),
            // Step saves next to the final file: the backend must take the final one.
            ("LORAFORGE_CHECKPOINT_EVERY_STEPS", "2"),
            (
                "LORAFORGE_LOG",
                "info,sqlx=warn,tower_http=warn,loraforge_aitoolkit=debug",
            ),
        ],
    )
}

/// Waits until the LoRA ends; on a time-out the message shows ai-toolkit's jobs too.
async fn finished(svc: &Service, token: &str, id: &str, fake: &FakeAiToolkit) -> Value {
    svc.finished_explained(token, id, || {
        format!("\n--- ai-toolkit jobs ---\n{:?}", fake.jobs())
    })
    .await
}

/// Waits until ai-toolkit holds neither a job nor a dataset (the backend cleaned up).
async fn cleaned_up(svc: &Service, fake: &FakeAiToolkit) {
    let started = Instant::now();
    while !(fake.jobs().is_empty() && fake.datasets().is_empty() && fake.live_processes() == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ai-toolkit still holds jobs {:?} / datasets {:?}\n{}",
            fake.jobs(),
            fake.datasets(),
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_model_trains_end_to_end_through_ai_toolkit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let svc = aitoolkit_service(dir.path(), &fake);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on ai-toolkit", 4).await;
    let done = finished(&svc, &token, &id, &fake).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    cleaned_up(&svc, &fake).await;

    // The backend started the stopped GPU queue itself; it sent its token on every API call.
    assert!(fake.queue_running("0"));
    let calls = fake.calls();
    assert!(
        calls.iter().any(|c| c.path == "/api/queue/0/start"),
        "{calls:?}"
    );
    assert!(calls.iter().all(|c| c.status != 401), "{calls:?}");
    for route in [
        "/api/datasets/create",
        "/api/datasets/upload",
        "/api/jobs",
        "/api/datasets/delete",
    ] {
        assert!(
            calls.iter().any(|c| c.path == route),
            "{route} never called: {calls:?}"
        );
    }

    // ai-toolkit listed step saves too (`_000000002`); the final file is the one downloaded.
    let downloads: Vec<&str> = calls
        .iter()
        .filter(|c| c.path.starts_with("/api/files/") && c.path.ends_with(".safetensors"))
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert!(
        downloads[0].ends_with(&format!("loraforge-{id}-1.safetensors")),
        "{downloads:?}"
    );
    let step_saves = fake.step_saves_seen();
    assert!(step_saves > 0, "the fake wrote no step saves");

    // The run is on record with its backend and outcome; the published file is our diffusers
    // form (converted from ai-toolkit's kohya file) and passes the LoRA check.
    let details = svc.get(&token, &format!("/api/v1/lora-models/{id}")).await;
    let attempt = &details["attempts"][0];
    assert_eq!(attempt["backend"], "aitoolkit", "{details}");
    assert_eq!(attempt["outcome"], "trained", "{details}");
    let url = details["download_url"]
        .as_str()
        .or_else(|| details["lora_file_url"].as_str())
        .map(str::to_owned);
    let url = url.unwrap_or_else(|| panic!("no download link in {details}"));
    let url = if url.starts_with("http") {
        url
    } else {
        format!("{}{url}", svc.url)
    };
    let bytes = svc
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let rules = loraforge_checks::LoraRules {
        min_bytes: 0,
        ..Default::default()
    };
    let report = loraforge_checks::inspect_lora(&bytes, &rules)
        .expect("the published LoRA passes the check");
    assert_eq!(report.format, loraforge_checks::LoraFormat::Diffusers);
    assert_eq!((report.rank, report.alpha), (4, Some(8.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_toolkit_error_fails_the_lora_with_the_reason_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    fake.fail_next_jobs(
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
    );
    let svc = aitoolkit_service(dir.path(), &fake);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq runs out of memory", 4).await;
    let done = finished(&svc, &token, &id, &fake).await;
    assert_eq!(done["training_status"], "failed", "{done}\n{}", svc.logs());
    let details = svc.get(&token, &format!("/api/v1/lora-models/{id}")).await;
    assert_eq!(
        details["attempts"][0]["outcome"], "out_of_memory",
        "{details}"
    );
    assert!(
        details.to_string().contains("CUDA out of memory"),
        "{details}"
    );
    cleaned_up(&svc, &fake).await;
}

/// Waits until ai-toolkit's job for `lora` runs past its first step; returns its id.
async fn training(fake: &FakeAiToolkit, lora: &str, attempt: u32, svc: &Service) -> String {
    let name = format!("loraforge-{lora}-{attempt}");
    let started = Instant::now();
    loop {
        if let Some(job) = fake
            .jobs()
            .into_iter()
            .find(|j| j.name == name && j.status == "running" && j.step >= 1)
        {
            return job.id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} never trained: {:?}\n{}",
            fake.jobs(),
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_training_stops_the_ai_toolkit_job_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let svc = aitoolkit_service(dir.path(), &fake);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq cancelled", 400).await;
    training(&fake, &id, 1, &svc).await;
    assert_eq!(svc.cancel(&token, &id).await.0, 200);
    let done = finished(&svc, &token, &id, &fake).await;
    assert_eq!(done["training_status"], "cancelled", "{done}");
    cleaned_up(&svc, &fake).await;
    // The job's folder goes once its trainer has exited.
    let output = dir.path().join("aitoolkit/output");
    let started = Instant::now();
    while output.read_dir().unwrap().next().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job's folder is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_outside_loraforge_is_a_provider_failure_and_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let svc = aitoolkit_service(dir.path(), &fake);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq stopped by hand", 40).await;
    let job = training(&fake, &id, 1, &svc).await;
    // Someone presses Stop in ai-toolkit's UI.
    let stopped = reqwest::Client::new()
        .get(format!("{}/api/jobs/{job}/stop", fake.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status().as_u16(), 200);
    let done = finished(&svc, &token, &id, &fake).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    assert_eq!(
        svc.outcomes(&token, &id).await.0,
        vec!["provider_failed", "trained"]
    );
    cleaned_up(&svc, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_serve_the_restarted_service_brings_the_ai_toolkit_run_home() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let mut svc = aitoolkit_service(dir.path(), &fake);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq survives a crash", 60).await;
    training(&fake, &id, 1, &svc).await;
    svc.kill_9();
    // ai-toolkit trains on without us; the restarted service acts for the attempt with a token
    // issued again, relays progress and delivers the result.
    svc.restart();
    let done = finished(&svc, &token, &id, &fake).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    assert_eq!(
        svc.outcomes(&token, &id).await.0,
        vec!["trained"],
        "{}",
        svc.logs()
    );
    cleaned_up(&svc, &fake).await;
}

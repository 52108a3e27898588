//! Training end to end, through the real binary: `loraforge serve` with its job engine, the
//! local backend running `loraforge worker` per job, the Python trainer on a tiny random
//! SDXL-shaped pipeline built at test time (CPU), local storage and SQLite. Each test starts
//! its own service on a free port with its own data dir.
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`, which `scripts/test.sh` runs first); set
//! LORAFORGE_TEST_TRAINER_PYTHON to use another interpreter with the locked packages.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::service::{BASE_ENV, Service, USER, repo_root, tiny_model};
use common::{loraforge, noise_png, strip_ansi, trainer_python};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_and_loads_in_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let created = Instant::now();
    let id = svc.create(&token, "Zxq the tester", 10).await;
    let done = svc.finished(&token, &id).await;
    let lifecycle = created.elapsed();
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    assert_eq!(
        (done["stage"].as_str(), done["progress"].as_u64()),
        (Some("done"), Some(100)),
        "{done}"
    );

    // Every stage and the steps were on the event stream.
    let events = svc.events(&token, &id).await;
    let stages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["data"]["stage"].as_str())
        .collect();
    for stage in ["loading_model", "training", "validating", "done"] {
        assert!(
            stages.contains(&stage),
            "stage {stage} missing from {stages:?}"
        );
    }
    let statuses: Vec<&str> = events
        .iter()
        .filter_map(|e| e["data"]["to"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["queued", "training", "validating", "completed"],
        "{events:?}"
    );

    // The file, through its signed URL.
    let (code, details) = svc.details(&token, &id).await;
    assert_eq!(code, 200);
    assert_eq!(details["validation"]["passed"], true, "{details}");
    assert_eq!(
        details["validation"]["image_urls"].as_array().map(Vec::len),
        Some(3),
        "{details}"
    );
    let fetch = async |url: &Value| {
        let resp = reqwest::get(url.as_str().expect("a URL")).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap()
    };
    let model = fetch(&details["download_url"]).await;
    let kohya = fetch(&details["kohya_download_url"]).await;
    assert_eq!(details["file_size"].as_u64(), Some(model.len() as u64));
    let png = fetch(&details["validation"]["image_urls"][0]).await;
    assert!(png.starts_with(b"\x89PNG"), "a validation image is a PNG");
    let files = dir.path().join("downloaded");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("model.safetensors"), &model).unwrap();
    std::fs::write(files.join("model.kohya.safetensors"), &kohya).unwrap();

    // `loraforge inspect` accepts it: diffusers keys, rank 4, alpha 8.
    let out = loraforge(dir.path())
        .args(["inspect", "--json"])
        .arg(files.join("model.safetensors"))
        .env("LORAFORGE_LORA_MIN_BYTES", "1000")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["report"]["rank"], 4, "{report}");
    assert_eq!(report["report"]["alpha"], 8.0, "{report}");

    // diffusers loads it and generates; the kohya file gives the same UNet output.
    let out = std::process::Command::new(trainer_python())
        .arg(repo_root().join("crates/cli/tests/fixtures/check_lora.py"))
        .arg(tiny_model())
        .arg(files.join("model.safetensors"))
        .arg(files.join("model.kohya.safetensors"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\": true"), "{stdout}");

    // Nothing left behind: no worker, and the job's scratch folder is gone.
    let left = svc.children_left_after(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
    let jobs = svc.data.join("jobs").join(&id);
    assert!(
        !jobs.join("out").exists(),
        "the worker's scratch space is removed"
    );
    eprintln!(
        "lifecycle (create → completed) took {:.2} s",
        lifecycle.as_secs_f64()
    );
}

/// The scaled-out path: the same service on a real Postgres server and S3 (moto_server on
/// loopback). The worker downloads the images and uploads its files through S3's own presigned
/// links; the service reads its state from Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_on_postgres_and_s3() {
    use loraforge_storage::test_support::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};
    let db = loraforge_db::test_support::TestDatabase::create().await;
    let s3 = S3Server::shared();
    let bucket = s3.create_bucket();
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("s3://{bucket}/loraforge");
    let endpoint = s3.endpoint.to_string();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_DATABASE_URL", db.url()),
            ("LORAFORGE_STORAGE_URL", &storage),
            ("LORAFORGE_S3_ENDPOINT", &endpoint),
            ("LORAFORGE_S3_REGION", REGION),
            ("LORAFORGE_S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("LORAFORGE_S3_SECRET_ACCESS_KEY", SECRET_KEY),
            ("LORAFORGE_S3_ALLOW_HTTP", "true"),
            ("LORAFORGE_S3_PATH_STYLE", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq in the cloud", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );

    // Every file is in the bucket, under the PRD's keys, and reached through presigned links.
    let (_, details) = svc.details(&token, &id).await;
    let in_bucket = format!("{endpoint}{bucket}/loraforge/");
    for (url, key) in [
        (
            &details["download_url"],
            format!("lora-models/{USER}/{id}/model.safetensors"),
        ),
        (
            &details["kohya_download_url"],
            format!("lora-models/{USER}/{id}/model.kohya.safetensors"),
        ),
        (
            &details["validation"]["image_urls"][2],
            format!("lora-validation-images/{USER}/{id}/validation/2.png"),
        ),
    ] {
        let url = url
            .as_str()
            .unwrap_or_else(|| panic!("no link for {key}: {details}"));
        assert!(
            url.starts_with(&format!("{in_bucket}{key}?")) && url.contains("X-Amz-Signature="),
            "{url}"
        );
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp.bytes().await.unwrap();
        if key.ends_with("model.safetensors") {
            assert_eq!(details["file_size"].as_u64(), Some(body.len() as u64));
        }
    }
    // The service ran on Postgres, not on a SQLite file beside it.
    let log = strip_ansi(&std::fs::read_to_string(&svc.log).unwrap());
    assert!(log.contains("database=postgres://"), "{log}");
    assert!(!svc.data.join("loraforge.db").exists());
    let left = svc.children_left_after(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_training_ends_within_30_s_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Cancelled", 5000).await;
    svc.training_past(&token, &id, 1, "training steps", Duration::from_secs(180))
        .await;
    assert!(!svc.children_alive().is_empty(), "a worker runs");
    let asked = Instant::now();
    let (code, body) = svc.cancel(&token, &id).await;
    assert_eq!(code, 200, "{body}");
    while !svc.children_alive().is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "still running after 30 s: {:?}",
            svc.children_alive()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cancel → no process left in {:.2} s",
        asked.elapsed().as_secs_f64()
    );
    let s = svc.status(&token, &id).await;
    assert_eq!(s["training_status"], "cancelled");
    // The job's folder (checkpoints and all) is released once the run is gone.
    let folder = svc.data.join("jobs").join(&id);
    let started = Instant::now();
    while folder.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!folder.exists(), "{} is left behind", folder.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dreambooth_lora_generates_its_class_images_once_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let params = json!({"type": "dreambooth", "class_prompt": "a photo of a person",
        "num_class_images": 2, "prior_loss_weight": 0.5});
    let first = svc
        .create_with(&token, "Dreambooth one", 3, params.clone())
        .await;
    let done = svc.finished(&token, &first).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    let stages: Vec<String> = svc
        .events(&token, &first)
        .await
        .iter()
        .filter_map(|e| e["data"]["stage"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stages.iter().any(|s| s == "generating_class_images"),
        "{stages:?}"
    );
    // The set lives in the host's cache, outside the job's folder, and outlives the job.
    let cache = svc.data.join("cache/class-images");
    let sets: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", cache.display(), svc.logs()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let manifest = sets[0].join("manifest.json");
    let made = std::fs::metadata(&manifest).unwrap().modified().unwrap();

    // A second job with the same class set reuses it.
    let second = svc.create_with(&token, "Dreambooth two", 3, params).await;
    let done = svc.finished(&token, &second).await;
    assert_eq!(done["training_status"], "completed", "{done}");
    let stages: Vec<String> = svc
        .events(&token, &second)
        .await
        .iter()
        .filter_map(|e| e["data"]["stage"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !stages.iter().any(|s| s == "generating_class_images"),
        "{stages:?}"
    );
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        made
    );
    let left = svc.children_left_after(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_loss_fails_the_lora_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[("LORAFORGE_WORKER_DEBUG_FAIL_AT_STEP", "3")]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Diverges", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(done["training_status"], "failed", "{done}");
    assert_eq!(
        done["error"], "training diverged: non-finite loss at step 3",
        "{done}"
    );
    // Not retried, and it does not count toward the monthly limit.
    let (_, limits) = svc
        .call(&token, reqwest::Method::GET, "/api/v1/me/limits", None)
        .await;
    assert_eq!(limits["used"], 0, "{limits}");
    let left = svc.children_left_after(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_keeps_the_files_and_the_retry_uploads_them_without_training_again() {
    let dir = tempfile::tempdir().unwrap();
    // The first attempt's model upload fails 4 times (1 + 3 retries): the worker gives up and
    // keeps the files; the engine requeues; the second attempt uploads what was kept.
    let svc = Service::start(dir.path(), &[("LORAFORGE_DEBUG_FAIL_UPLOADS", "4")]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Flaky storage", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    let events = svc.events(&token, &id).await;
    let requeue = events
        .iter()
        .find(|e| e["data"]["event"] == "requeue")
        .expect("a requeue");
    let why = requeue["data"]["error"].as_str().unwrap();
    assert!(
        why.contains("could not be uploaded") && why.contains("kept"),
        "{why}"
    );
    // Trained once: the second attempt went straight to uploading.
    let starts = events
        .iter()
        .filter(|e| e["data"]["event"] == "start")
        .count();
    assert_eq!(starts, 2, "{events:?}");
    let stages: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "progress")
        .filter_map(|e| e["data"]["stage"].as_str())
        .collect();
    let entered_training = stages
        .windows(2)
        .filter(|w| w[1] == "training" && w[0] != "training")
        .count()
        + usize::from(stages.first() == Some(&"training"));
    assert_eq!(entered_training, 1, "training ran once: {stages:?}");
    let (_, details) = svc.details(&token, &id).await;
    let model = reqwest::get(details["download_url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(details["file_size"].as_u64(), Some(model.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_service_mid_training_then_a_restart_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Survivor", 80).await;
    svc.training_past(
        &token,
        &id,
        5,
        "training to be under way",
        Duration::from_secs(180),
    )
    .await;
    // The worker keeps the address it was given: the restarted service takes the same one.
    svc.bind = svc.url.trim_start_matches("http://").to_owned();
    svc.kill_9();
    // The worker is not the service's to lose: it keeps training (its own process group,
    // talking to the service over HTTP and riding out the minutes it is down), and the
    // restarted service adopts its run. No attempt is spent and nothing is trained twice.
    assert!(
        !svc.children_alive().is_empty(),
        "the worker outlives a crash of the service"
    );
    svc.restart();
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    let events = svc.events(&token, &id).await;
    assert!(
        events.iter().all(|e| e["data"]["event"] != "requeue"),
        "the run was adopted, not requeued: {events:?}\n{}",
        svc.logs()
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["trained"], "one run trained the LoRA: {details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_follow_runs_to_completion_and_prints_the_download_link() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let images = dir.path().join("photos");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3 {
        std::fs::write(images.join(format!("p{i}.png")), noise_png(96, 96, 10 + i)).unwrap();
    }
    std::fs::write(images.join("p0.txt"), "a photo of zxq smiling").unwrap();
    let model = tiny_model().display().to_string();
    let mut cmd = loraforge(dir.path());
    cmd.args(["train"])
        .arg(&images)
        .args([
            "--name",
            "Followed",
            "--trigger",
            "zxq",
            "--base-model",
            &model,
            "--steps",
            "10",
            "--resolution",
            "64",
            "--follow",
        ])
        .args(["--server", &svc.url])
        .env("LORAFORGE_TOKEN", &token)
        // The client checks the images with the same rules as this service.
        .envs(BASE_ENV.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}\n{}",
        out.status,
        svc.logs()
    );
    assert!(stdout.contains("completed"), "{stdout}");
    let link = stdout
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http")))
        .expect("a link");
    let link = link.trim_matches(|c: char| c == '<' || c == '>');
    let file = reqwest::get(link).await.unwrap();
    assert_eq!(file.status(), 200, "{link}");
    assert!(file.bytes().await.unwrap().len() > 1000);
}

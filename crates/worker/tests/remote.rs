//! `loraforge_worker::remote` against the fake control plane: the worker's part played for a
//! provider that runs the trainer itself (its job, images, progress, failure and delivery).

mod common;

use std::sync::atomic::Ordering;

use common::*;
use loraforge_worker::remote::{RemoteAttempt, RemoteError, RemoteProgress};
use serde_json::Value;

fn attempt(plane: &Plane) -> RemoteAttempt {
    RemoteAttempt::new(&plane.base, LORA_ID, TOKEN).unwrap()
}

#[tokio::test]
async fn the_job_and_its_images_come_as_a_worker_gets_them() {
    let plane = Plane::start().await;
    plane.set_job(2, images(), 7.0, 100);
    plane.edit_job(|job| job["dataset_zip"] = Value::from("http://zip.example/d.zip"));
    plane.state.fail_gets.store(1, Ordering::SeqCst);
    let remote = attempt(&plane);

    let job = remote.job().await.unwrap();
    assert_eq!(job.attempt, 2);
    assert_eq!(job.trainer_spec, trainer_spec());
    assert_eq!(job.heartbeat_interval.as_secs(), 7);
    assert_eq!(job.dataset_zip.as_deref(), Some("http://zip.example/d.zip"));
    assert_eq!(job.images.len(), 3);
    assert_eq!(
        plane.state.job_gets.load(Ordering::SeqCst),
        2,
        "a 503 is retried"
    );

    let dir = tempfile::tempdir().unwrap();
    let paths = remote
        .download_images(&job, &dir.path().join("images"))
        .await
        .unwrap();
    for (img, path) in images().iter().zip(&paths) {
        assert_eq!(std::fs::read(path).unwrap(), img.bytes);
        let stem = img.file_name.split('.').next().unwrap();
        let caption = std::fs::read_to_string(dir.path().join(format!("images/{stem}.txt")));
        assert_eq!(caption.unwrap(), img.caption);
    }
}

#[tokio::test]
async fn a_refused_token_is_permanent_and_a_moved_on_job_says_so() {
    let plane = Plane::start().await;
    let wrong = RemoteAttempt::new(&plane.base, LORA_ID, "not-the-token").unwrap();
    assert!(matches!(wrong.job().await, Err(RemoteError::Permanent(_))));

    let remote = attempt(&plane);
    *plane.state.progress_409_after.lock().unwrap() = Some(1);
    let p = RemoteProgress {
        stage: Some("training".into()),
        step: Some(3),
        total: Some(10),
        loss: Some(f64::NAN),
        eta_s: Some(2.0),
    };
    assert!(remote.progress(1, &p).await.unwrap());
    assert!(
        !remote.progress(1, &p).await.unwrap(),
        "409: the job moved on"
    );
    let posted = plane.progress();
    assert_eq!(posted[0]["step"], 3);
    assert_eq!(posted[0]["stage"], "training");
    assert!(posted[0].get("loss").is_none(), "a NaN loss is not sent");
}

#[tokio::test]
async fn a_failure_is_reported_with_its_code() {
    let plane = Plane::start().await;
    attempt(&plane)
        .fail(1, "provider_failed", "the GPU fell off the bus", false)
        .await
        .unwrap();
    let failures = plane.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["code"], "provider_failed");
    assert_eq!(failures[0]["reason"], "the GPU fell off the bus");
    assert_eq!(failures[0]["attempt"], 1);
}

#[tokio::test]
async fn delivered_outputs_are_uploaded_and_the_result_posted() {
    let plane = Plane::start().await;
    plane.state.fail_puts.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    std::fs::create_dir_all(out.join("train/validation")).unwrap();
    std::fs::write(out.join("train/model.safetensors"), seq(1)).unwrap();
    std::fs::write(out.join("train/model.kohya.safetensors"), seq(2)).unwrap();
    std::fs::write(out.join("train/validation/0.png"), validation_png(0)).unwrap();
    let events = concat!(
        "cog: starting\n",
        r#"{"event":"progress","step":10,"total":10,"loss":0.1,"eta_s":0}"#,
        "\n",
        r#"{"event":"validation","scores":[0.31]}"#,
        "\n",
        r#"{"event":"done","train_seconds":3.25,"resumed_from":0}"#,
        "\n"
    );

    attempt(&plane).deliver(out, events, 9.5).await.unwrap();

    assert_eq!(plane.file(MODEL_KEY).unwrap(), seq(1));
    assert_eq!(plane.file(KOHYA_KEY).unwrap(), seq(2));
    assert_eq!(plane.file(&validation_key(0)).unwrap(), validation_png(0));
    let results = plane.results();
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["train_seconds"], 3.25);
    assert_eq!(r["trainer_seconds"], 9.5);
    assert_eq!(r["model"]["sha256"], sha256(&seq(1)));
    assert_eq!(r["kohya"]["bytes"], seq(2).len());
    assert_eq!(r["validation"]["images"], 1);
    assert_eq!(r["validation"]["scores"][0], 0.31);
}

#[tokio::test]
async fn outputs_without_their_files_or_done_line_are_refused_before_any_upload() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    std::fs::create_dir_all(out.join("train")).unwrap();
    std::fs::write(out.join("train/model.safetensors"), seq(1)).unwrap();
    let done = r#"{"event":"done","train_seconds":1}"#;
    let err = attempt(&plane).deliver(out, done, 1.0).await.unwrap_err();
    assert!(
        matches!(&err, RemoteError::Permanent(m) if m.contains("model.kohya.safetensors")),
        "{err}"
    );

    std::fs::write(out.join("train/model.kohya.safetensors"), seq(2)).unwrap();
    let err = attempt(&plane)
        .deliver(out, "no json here", 1.0)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RemoteError::Permanent(m) if m.contains("done line")),
        "{err}"
    );
    assert_eq!(plane.state.puts.load(Ordering::SeqCst), 0);
    assert!(plane.results().is_empty());
}

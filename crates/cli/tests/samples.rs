//! Sample batches end to end through the real binary: a LoRA trained on the tiny SDXL-shaped
//! model by the local backend, then `POST …/samples` rendered by `loraforge worker` in sample
//! mode (the trainer's `sample` command) and stored; the PNGs come back through their signed
//! links and decode. Then, with the sampler made to fail, a batch is retried 3 times (10 s, 40 s
//! apart by the real clock) and fails with the reason, and no worker or trainer is left.
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`), as `training.rs` does.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::service::{Service, USER};

async fn wait_batch(
    svc: &Service,
    token: &str,
    path: &str,
    done: &[&str],
    limit: Duration,
) -> Value {
    let started = Instant::now();
    loop {
        let b = svc.get(token, path).await;
        if b["status"].as_str().is_some_and(|s| done.contains(&s)) {
            return b;
        }
        assert!(
            started.elapsed() < limit,
            "batch still {} after {limit:?}: {b}\n{}",
            b["status"],
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_render_with_the_trained_lora_and_failures_are_retried_then_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq sampled", 6).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );

    let (code, batch) = svc
        .call(
            &token,
            reqwest::Method::POST,
            &format!("/api/v1/lora-models/{id}/samples"),
            Some(json!({
                "prompts": [
                    {"prompt": "a photo of zxq", "seed": 5, "scale": 1.0},
                    {"prompt": "zxq in a park", "seed": 6, "scale": 0.0, "negative_prompt": "blurry"}
                ],
                "width": 64, "height": 64, "steps": 2
            })),
        )
        .await;
    assert_eq!(code, 202, "{batch}");
    let path = format!(
        "/api/v1/lora-models/{id}/samples/{}",
        batch["id"].as_str().unwrap()
    );
    let rendered = wait_batch(
        &svc,
        &token,
        &path,
        &["completed", "failed"],
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        rendered["status"],
        "completed",
        "{rendered}\n{}",
        svc.logs()
    );
    assert_eq!(rendered["attempts"], 1);
    for im in rendered["images"].as_array().unwrap() {
        let resp = reqwest::get(im["url"].as_str().expect("a signed link"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = resp.bytes().await.unwrap();
        let img = image::load_from_memory(&bytes).expect("a PNG that decodes");
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    assert!(
        svc.children_left_after(Duration::from_secs(10))
            .await
            .is_empty(),
        "a worker outlived its batch"
    );

    // The sampler fails every time: 3 attempts, then failed with the trainer's reason.
    // The first service must be gone, or its engine (without the variable) takes the retries.
    svc.kill_9();
    svc.env
        .push(("LORAFORGE_WORKER_DEBUG_FAIL_SAMPLES".into(), "1".into()));
    svc.restart();
    let token = svc.token(USER);
    let (code, batch) = svc
        .call(
            &token,
            reqwest::Method::POST,
            &format!("/api/v1/lora-models/{id}/samples"),
            Some(json!({"prompts": [{"prompt": "zxq"}], "width": 64, "height": 64, "steps": 1})),
        )
        .await;
    assert_eq!(code, 202, "{batch}");
    let path = format!(
        "/api/v1/lora-models/{id}/samples/{}",
        batch["id"].as_str().unwrap()
    );
    let failed = wait_batch(
        &svc,
        &token,
        &path,
        &["failed", "completed"],
        Duration::from_secs(420),
    )
    .await;
    assert_eq!(failed["status"], "failed", "{failed}\n{}", svc.logs());
    assert_eq!(failed["attempts"], 3, "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("sample_failed"), "{failed}");
    assert!(error.contains("debug"), "{failed}");
    assert!(failed["images"][0]["url"].is_null());
    assert!(
        svc.children_left_after(Duration::from_secs(15))
            .await
            .is_empty(),
        "a worker outlived its batch"
    );
}

//! Sample batches over HTTP: validation codes, 404/409/429, listing a page at a time with signed
//! links once completed, and the worker's sample routes (token audience, attempt checks,
//! heartbeats, uploads checked before a batch completes, failures retried then failed) on SQLite
//! and Postgres.

use std::time::Duration;

use serde_json::{Value, json};

use loraforge_db::EventDetail;
use loraforge_domain::{Clock, LoraId, SampleBatchId, StatusEvent};

use crate::helpers::*;

/// A LoRA of `user` taken to `completed`, as the engine would.
async fn completed_lora(app: &TestApp, user: &User) -> LoraId {
    let ds = app.dataset(user).await;
    let id: LoraId = app.create_ok(user, "Sampled", &ds).await.parse().unwrap();
    let now = app.clock.now();
    app.repo
        .apply_event(id, StatusEvent::Enqueue, EventDetail::default(), now)
        .await
        .unwrap();
    let job = app
        .repo
        .claim_next_job("e1", 9, now + chrono::Duration::minutes(5), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.lora.id, id);
    app.publish(id, 1000, now).await;
    id
}

fn body(n: usize) -> Value {
    json!({
        "prompts": (0..n).map(|i| json!({"prompt": format!("zxq at the beach {i}"), "seed": 7 + i, "scale": 0.8}))
            .collect::<Vec<_>>(),
        "width": 64, "height": 64, "steps": 2
    })
}

async fn request(app: &TestApp, user: &User, lora: LoraId, b: &Value) -> reqwest::Response {
    app.post_json(user, &format!("/api/v1/lora-models/{lora}/samples"), b)
        .await
}

async fn create_ok(app: &TestApp, user: &User, lora: LoraId, b: &Value) -> Value {
    let resp = request(app, user, lora, b).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

async fn validation_and_conflicts(app: TestApp) {
    let user = app.user();
    let lora = completed_lora(&app, &user).await;
    for (b, code) in [
        (json!({"prompts": []}), "invalid_prompt_count"),
        (body(5), "invalid_prompt_count"),
        (json!({"prompts": [{"prompt": "  "}]}), "invalid_prompt"),
        (
            json!({"prompts": [{"prompt": "x", "scale": 2.5}]}),
            "invalid_scale",
        ),
        (
            json!({"prompts": [{"prompt": "x", "seed": 9007199254740992_u64}]}),
            "invalid_seed",
        ),
        (
            json!({"prompts": [{"prompt": "x"}], "width": 100}),
            "invalid_size",
        ),
        (
            json!({"prompts": [{"prompt": "x"}], "height": 4096}),
            "invalid_size",
        ),
        (
            json!({"prompts": [{"prompt": "x"}], "steps": 0}),
            "invalid_steps",
        ),
        (
            json!({"prompts": [{"prompt": "x"}], "colour": "red"}),
            "invalid_request",
        ),
        (json!({"prompts": "x"}), "invalid_request"),
        (json!([1]), "invalid_request"),
    ] {
        let e = error_of(request(&app, &user, lora, &b).await, 400).await;
        assert_eq!(e["code"], code, "{b} → {e}");
    }
    let bad_json = app
        .http
        .post(app.url(&format!("/api/v1/lora-models/{lora}/samples")))
        .bearer_auth(&user.token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(bad_json, 400).await["code"], "invalid_json");

    let e = error_of(request(&app, &user, LoraId::new(), &body(1)).await, 404).await;
    assert_eq!(e["code"], "not_found");
    // A LoRA still pending has no file to sample.
    let ds = app.dataset(&user).await;
    let pending = app.create_ok(&user, "Pending", &ds).await;
    let e = error_of(
        request(&app, &user, pending.parse().unwrap(), &body(1)).await,
        409,
    )
    .await;
    assert_eq!(e["code"], "not_completed");
    assert!(e["message"].as_str().unwrap().contains("pending"), "{e}");
    // Nothing was stored by the refusals.
    assert!(
        app.repo
            .sample_batches_of(lora, None, 10, 0)
            .await
            .unwrap()
            .batches
            .is_empty()
    );
    // No token: 401.
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/lora-models/{lora}/samples")))
        .json(&body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

async fn create_list_get_and_the_open_limit(app: TestApp) {
    let user = app.user();
    let lora = completed_lora(&app, &user).await;
    let woke = app.engine_wake.notified();
    let a = create_ok(&app, &user, lora, &body(2)).await;
    tokio::time::timeout(Duration::from_secs(5), woke)
        .await
        .expect("the engine is woken");
    assert_eq!(a["status"], "queued");
    assert_eq!(a["attempts"], 0);
    assert_eq!(a["lora_id"], lora.to_string());
    assert_eq!(a["images"].as_array().unwrap().len(), 2);
    assert_eq!(a["images"][1]["seed"], 8);
    assert_eq!(a["images"][1]["scale"], 0.8);
    assert_eq!(a["images"][1]["width"], 64);
    assert!(
        a["images"][0]["url"].is_null(),
        "no links before completion"
    );

    // Defaults: seeds derived from the batch, scale 1, 1024², 30 steps.
    let b = create_ok(
        &app,
        &user,
        lora,
        &json!({"prompts": [{"prompt": "zxq"}, {"prompt": "zxq 2"}]}),
    )
    .await;
    assert_eq!(b["steps"], 30);
    assert_eq!(b["images"][0]["scale"], 1.0);
    assert_eq!(b["images"][0]["width"], 1024);
    assert_ne!(b["images"][0]["seed"], b["images"][1]["seed"]);

    let e = error_of(request(&app, &user, lora, &body(1)).await, 429).await;
    assert_eq!(e["code"], "too_many_sample_batches");
    // Another user may sample the same public LoRA, and sees only their own batches.
    let other = app.user();
    let c = create_ok(&app, &other, lora, &body(1)).await;

    let list: Value = app
        .get(&user, &format!("/api/v1/lora-models/{lora}/samples"))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![b["id"].as_str().unwrap(), a["id"].as_str().unwrap()]
    );
    let admin = app.user_with(None, true);
    let all: Value = app
        .get(&admin, &format!("/api/v1/lora-models/{lora}/samples"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["batches"].as_array().unwrap().len(), 3);

    let one = app
        .get(
            &user,
            &format!(
                "/api/v1/lora-models/{lora}/samples/{}",
                a["id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["id"], a["id"]);
    let theirs = app
        .get(
            &user,
            &format!(
                "/api/v1/lora-models/{lora}/samples/{}",
                c["id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(error_of(theirs, 404).await["code"], "not_found");
    let nope = app
        .get(
            &user,
            &format!("/api/v1/lora-models/{lora}/samples/not-an-id"),
        )
        .await;
    assert_eq!(nope.status(), 404);
}

async fn worker_get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn worker_post(app: &TestApp, token: &str, path: &str, b: &Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .json(b)
        .send()
        .await
        .unwrap()
}

/// Claims the batch's next attempt as the engine would; returns the attempt's token.
async fn claim(app: &TestApp, batch: SampleBatchId, attempts_seen: u32) -> String {
    let now = app.clock.now();
    assert!(
        app.repo
            .claim_sample_batch(batch, attempts_seen, now)
            .await
            .unwrap()
    );
    app.jwt
        .issue_sample_worker(batch, attempts_seen + 1, Duration::from_secs(3600), now)
        .unwrap()
}

async fn the_worker_renders_uploads_and_reports(app: TestApp) {
    let user = app.user();
    let lora = completed_lora(&app, &user).await;
    let a = create_ok(&app, &user, lora, &body(2)).await;
    let batch: SampleBatchId = a["id"].as_str().unwrap().parse().unwrap();
    let path = format!("/api/v1/worker/samples/{batch}");

    // A queued batch has no attempt to serve.
    let early = app
        .jwt
        .issue_sample_worker(batch, 1, Duration::from_secs(3600), app.clock.now())
        .unwrap();
    assert_eq!(
        error_of(worker_get(&app, &early, &path).await, 409).await["code"],
        "job_not_active"
    );
    let token = claim(&app, batch, 0).await;
    // User tokens and training tokens are refused here.
    assert_eq!(worker_get(&app, &user.token, &path).await.status(), 401);
    let job_token = app
        .jwt
        .issue_worker(lora, 1, "e1", Duration::from_secs(3600), app.clock.now())
        .unwrap();
    assert_eq!(worker_get(&app, &job_token, &path).await.status(), 401);
    // A sample token on a training route is refused too.
    let resp = worker_get(&app, &token, &format!("/api/v1/worker/jobs/{lora}")).await;
    assert_eq!(resp.status(), 401);
    // Another batch's path.
    let resp = worker_get(
        &app,
        &token,
        &format!("/api/v1/worker/samples/{}", SampleBatchId::new()),
    )
    .await;
    assert_eq!(resp.status(), 403);

    let job: Value = {
        let resp = worker_get(&app, &token, &path).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    };
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["batch_id"], batch.to_string());
    assert_eq!(job["heartbeat_interval_s"], 10.0);
    // The fetch is the worker's first word.
    let heard = app
        .repo
        .sample_batch(batch)
        .await
        .unwrap()
        .unwrap()
        .heard_at;
    assert_eq!(heard, Some(app.clock.now()));
    // Heartbeats: the token's attempt only.
    app.clock.advance(chrono::Duration::seconds(10));
    let beat = worker_post(
        &app,
        &token,
        &format!("{path}/heartbeat"),
        &json!({"attempt": 1}),
    )
    .await;
    assert_eq!(beat.status(), 200);
    assert_eq!(
        beat.json::<Value>().await.unwrap(),
        json!({"recorded": true, "status": "rendering"})
    );
    let heard = app
        .repo
        .sample_batch(batch)
        .await
        .unwrap()
        .unwrap()
        .heard_at;
    assert_eq!(heard, Some(app.clock.now()));
    for bad in [
        json!({"attempt": 2}),
        json!({}),
        json!({"attempt": 1, "extra": true}),
    ] {
        let resp = worker_post(&app, &token, &format!("{path}/heartbeat"), &bad).await;
        assert_eq!(
            error_of(resp, 400).await["code"],
            "invalid_request",
            "{bad}"
        );
    }
    let resp = worker_post(
        &app,
        &user.token,
        &format!("{path}/heartbeat"),
        &json!({"attempt": 1}),
    )
    .await;
    assert_eq!(resp.status(), 401, "a user token is no worker's");
    assert_eq!(job["images"].as_array().unwrap().len(), 2);
    assert_eq!(job["images"][0]["steps"], 2);
    assert_eq!(job["images"][0]["guidance_scale"], 7.0);
    assert_eq!(job["images"][1]["seed"], 8);
    assert!(job["base_model"].as_str().unwrap().len() > 3);
    assert!(
        job["lora_url"]
            .as_str()
            .unwrap()
            .contains("model.safetensors")
    );
    let uploads = job["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 2);
    assert!(
        uploads[1]["key"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{batch}/1.png"))
    );

    // A result before the images are stored is refused; the batch stays rendering.
    let result =
        json!({"attempt": 1, "images": [{"index": 0, "key": uploads[0]["key"], "bytes": 10}]});
    let e = error_of(
        worker_post(&app, &token, &format!("{path}/result"), &result).await,
        422,
    )
    .await;
    assert_eq!(e["code"], "missing_upload");
    let wrong = json!({"attempt": 2, "images": []});
    assert_eq!(
        worker_post(&app, &token, &format!("{path}/result"), &wrong)
            .await
            .status(),
        400
    );

    let png = noise_png(64, 64, 3);
    for u in uploads {
        let resp = app
            .http
            .put(u["url"].as_str().unwrap())
            .body(png.clone())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let resp = worker_post(&app, &token, &format!("{path}/result"), &result).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer, json!({"recorded": true, "status": "completed"}));
    // A repeated report, or a late heartbeat, finds the attempt over.
    let again = worker_post(&app, &token, &format!("{path}/result"), &result).await;
    assert_eq!(error_of(again, 409).await["code"], "job_not_active");
    let late = worker_post(
        &app,
        &token,
        &format!("{path}/heartbeat"),
        &json!({"attempt": 1}),
    )
    .await;
    assert_eq!(error_of(late, 409).await["code"], "job_not_active");

    let done: Value = app
        .get(
            &user,
            &format!("/api/v1/lora-models/{lora}/samples/{batch}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "completed");
    assert!(done["urls_expire_at"].is_string());
    for im in done["images"].as_array().unwrap() {
        let got = app
            .http
            .get(im["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.bytes().await.unwrap().to_vec(), png);
    }
}

async fn failures_are_retried_then_fail(app: TestApp) {
    let user = app.user();
    let lora = completed_lora(&app, &user).await;
    let a = create_ok(&app, &user, lora, &body(1)).await;
    let batch: SampleBatchId = a["id"].as_str().unwrap().parse().unwrap();
    let path = format!("/api/v1/worker/samples/{batch}/failure");
    let bad = json!({"attempt": 1, "code": "Not A Code"});
    let token = claim(&app, batch, 0).await;
    assert_eq!(worker_post(&app, &token, &path, &bad).await.status(), 400);

    let fail = |attempt: u32| json!({"attempt": attempt, "code": "sample_failed", "reason": "render failed"});
    let resp = worker_post(&app, &token, &path, &fail(1)).await;
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"recorded": true, "status": "queued"})
    );
    let b: Value = app
        .get(
            &user,
            &format!("/api/v1/lora-models/{lora}/samples/{batch}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["status"], "queued");
    assert_eq!(b["error"], "sample_failed: render failed");
    let next: chrono::DateTime<chrono::Utc> =
        b["next_attempt_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, app.clock.now() + chrono::Duration::seconds(10));

    // Attempt 2 fails with bad input: no third try.
    app.clock.advance(chrono::Duration::seconds(10));
    let token = claim(&app, batch, 1).await;
    let resp = worker_post(
        &app,
        &token,
        &path,
        &json!({"attempt": 2, "code": "bad_lora", "reason": "cannot load the LoRA file"}),
    )
    .await;
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "failed");
    let b: Value = app
        .get(
            &user,
            &format!("/api/v1/lora-models/{lora}/samples/{batch}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["status"], "failed");
    assert_eq!(b["attempts"], 2);
    assert!(b["finished_at"].is_string());
    assert!(b["images"][0]["url"].is_null());
    // A failed batch frees the slot.
    create_ok(&app, &user, lora, &body(1)).await;
}

async fn listings_page_like_the_library(app: TestApp) {
    let user = app.user();
    let lora = completed_lora(&app, &user).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let b = create_ok(&app, &user, lora, &body(1)).await;
        let id: SampleBatchId = b["id"].as_str().unwrap().parse().unwrap();
        // Each finishes, so the open limit does not stop the next.
        let now = app.clock.now();
        assert!(app.repo.claim_sample_batch(id, 0, now).await.unwrap());
        assert!(app.repo.complete_sample_batch(id, 1, now).await.unwrap());
        app.clock.advance(chrono::Duration::seconds(1));
        ids.push(id.to_string());
    }
    ids.reverse();
    let list = |query: &'static str| {
        let app = &app;
        let user = &user;
        async move {
            app.get(user, &format!("/api/v1/lora-models/{lora}/samples{query}"))
                .await
        }
    };
    let page = |v: &Value| -> Vec<String> {
        v["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Value = list("").await.json().await.unwrap();
    assert_eq!(page(&all), ids, "newest first");
    assert_eq!(
        (
            all["total"].as_u64(),
            all["limit"].as_u64(),
            all["offset"].as_u64()
        ),
        (Some(5), Some(50), Some(0))
    );
    let second: Value = list("?limit=2&offset=2").await.json().await.unwrap();
    assert_eq!(page(&second), ids[2..4].to_vec());
    assert_eq!(
        (
            second["total"].as_u64(),
            second["limit"].as_u64(),
            second["offset"].as_u64()
        ),
        (Some(5), Some(2), Some(2))
    );
    let past: Value = list("?limit=100&offset=5").await.json().await.unwrap();
    assert!(page(&past).is_empty());
    assert_eq!(past["total"], 5);
    for bad in ["?limit=0", "?limit=101", "?limit=x", "?offset=-1"] {
        let e = error_of(list(bad).await, 400).await;
        assert_eq!(e["code"], "invalid_query", "{bad}: {e}");
    }
    let e = error_of(list("?limit=101").await, 400).await;
    assert!(e["message"].as_str().unwrap().contains("1 to 100"), "{e}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::helpers::spawn_app().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(
                        crate::helpers::spawn_app_with(crate::helpers::Engine::Postgres, |_| {}).await,
                    )
                    .await
                }
            )*
        }
    };
}

on_both!(
    validation_and_conflicts,
    create_list_get_and_the_open_limit,
    the_worker_renders_uploads_and_reports,
    failures_are_retried_then_fail,
    listings_page_like_the_library,
);

//! The worker protocol (`docs/worker-protocol.md`) and what follows training: a job claimed and
//! its run recorded as the engine would, then driven through `/api/v1/worker/jobs/{id}` with a
//! per-attempt token: uploads through the signed links, the result or a failure (recorded on the
//! run), then the job engine's after-training steps (the file check, the validation rule) and the
//! admin review.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use loraforge_db::NewRun;
use loraforge_domain::{Clock, LoraId, RunId, StatusEvent};
use loraforge_engine::{
    AfterTraining, BackendError, Ending, Engine as JobEngine, EngineSettings, Instance, Launch,
    Launched, Observed, Scope, Termination, TrainingBackend, ValidationRules,
};

use crate::helpers::*;

const ENGINE: &str = "engine-test";

/// Where the tests' runs "run": instances that are always up and end when asked. It only lets
/// the engine's after-training steps run here; backends are tested in the engine's crate.
#[derive(Debug)]
struct Elsewhere;

#[async_trait::async_trait]
impl TrainingBackend for Elsewhere {
    fn name(&self) -> &str {
        "elsewhere"
    }
    fn max_runs(&self) -> usize {
        0
    }
    fn scope(&self) -> Scope {
        Scope::Shared
    }
    async fn launch(&self, _: &Launch) -> Result<Launched, BackendError> {
        Err(BackendError::Permanent("the tests launch nothing".into()))
    }
    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        Ok(instances.iter().map(|_| Observed::Running).collect())
    }
    async fn terminate(&self, _: &Instance, _: Ending) -> Result<Termination, BackendError> {
        Ok(Termination {
            gone: true,
            billed_millis: None,
        })
    }
}

/// The job engine over the app's database and storage, with its validation settings.
fn engine(app: &TestApp) -> JobEngine {
    let v = &app.settings.validation;
    let after = AfterTraining::new(
        app.store.clone(),
        app.settings.lora_rules.clone(),
        ValidationRules {
            similarity_threshold: v.similarity_threshold,
            auto_approve: v.auto_approve,
        },
    );
    let settings = EngineSettings {
        worker_id: ENGINE.into(),
        ..EngineSettings::default()
    };
    JobEngine::new(
        app.repo.clone(),
        app.clock.clone(),
        vec![Arc::new(Elsewhere)],
        settings,
        after,
    )
}

/// One tick of the engine: the reported outcomes are acted on.
async fn settle(app: &TestApp) {
    let report = engine(app).tick().await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
}

async fn status_of(app: &TestApp, user: &User, id: &str) -> Value {
    app.get(user, &format!("/api/v1/lora-models/{id}/status"))
        .await
        .json()
        .await
        .unwrap()
}

/// A LoRA of `user` in `training`, claimed by [`ENGINE`]; returns its id and the worker token.
pub(crate) async fn training_job(app: &TestApp, user: &User, name: &str) -> (String, String) {
    let params = json!({"steps": 10, "resolution": 64, "trigger_words": ["zxq"]});
    training_job_with(app, user, name, params).await
}

async fn training_job_with(
    app: &TestApp,
    user: &User,
    name: &str,
    params: Value,
) -> (String, String) {
    let ds = app.dataset(user).await;
    let body = json!({"name": name, "dataset_id": ds, "params": params});
    let resp = app.post_json(user, "/api/v1/lora-models", &body).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["lora_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lora: LoraId = id.parse().unwrap();
    let now = app.clock.now();
    app.repo
        .apply_event(lora, StatusEvent::Enqueue, Default::default(), now)
        .await
        .unwrap();
    let claimed = app
        .repo
        .claim_next_job(ENGINE, 2, now + chrono::Duration::minutes(2), now)
        .await
        .unwrap();
    assert_eq!(claimed.map(|c| c.lora.id), Some(lora));
    let run = NewRun {
        id: RunId::new(),
        lora_id: lora,
        attempt: 1,
        backend: "elsewhere".into(),
        route_reason: Some("elsewhere: first in order".into()),
        engine: ENGINE.into(),
        instance_name: format!("loraforge-{lora}-1"),
        provider_id: "instance-1".into(),
        gpu_type: None,
        price_per_hour: None,
        created_at: now,
        started_at: now,
    };
    app.repo.insert_run(&run).await.unwrap();
    let token = app
        .jwt
        .issue_worker(lora, 1, ENGINE, Duration::from_secs(3600), now)
        .unwrap();
    (id, token)
}

async fn worker_get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn worker_post(app: &TestApp, token: &str, path: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn job(app: &TestApp, id: &str, token: &str) -> Value {
    let resp = worker_get(app, token, &format!("/api/v1/worker/jobs/{id}")).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// A small, valid diffusers-format LoRA file (2 modules, rank 4, alpha in the adapter metadata).
fn lora_file() -> Vec<u8> {
    let modules = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_k",
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for m in modules {
        for (part, shape) in [("lora_A", [4, 64]), ("lora_B", [64, 4])] {
            let start = data.len();
            for i in 0..shape[0] * shape[1] {
                data.extend_from_slice(&((i % 7) as f32 * 0.01).to_le_bytes());
            }
            header.insert(
                format!("unet.{m}.{part}.weight"),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
    }
    let adapter =
        json!({"unet.r": 4, "unet.lora_alpha": 8, "unet.target_modules": ["to_q", "to_k"]})
            .to_string();
    header.insert(
        "__metadata__".into(),
        json!({"lora_adapter_metadata": adapter, "format": "pt"}),
    );
    let mut text = Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

async fn put(app: &TestApp, url: &Value, body: Vec<u8>) -> u16 {
    app.http
        .put(url.as_str().unwrap())
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Uploads the model, the kohya file and `images` validation images; returns the model's size.
async fn upload_outputs(app: &TestApp, job: &Value, images: usize) -> usize {
    let model = lora_file();
    let len = model.len();
    assert_eq!(
        put(app, &job["uploads"]["model"]["url"], model.clone()).await,
        201
    );
    assert_eq!(put(app, &job["uploads"]["kohya"]["url"], model).await, 201);
    for i in 0..images {
        assert_eq!(
            put(
                app,
                &job["uploads"]["validation"][i]["url"],
                noise_png(64, 64, i as u64)
            )
            .await,
            201
        );
    }
    len
}

fn result_body(model_len: usize, images: usize, scores: Value) -> Value {
    json!({"attempt": 1, "train_seconds": 4.0, "trainer_seconds": 12.5,
           "model": {"bytes": model_len}, "kohya": {"bytes": model_len},
           "validation": {"images": images, "scores": scores}})
}

fn with_small_loras(s: &mut loraforge_server::ServerSettings) {
    s.lora_rules.min_bytes = 100;
}

#[tokio::test]
async fn a_dreambooth_job_hands_the_trainer_its_prior_preservation() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let params = json!({"steps": 10, "resolution": 64, "trigger_words": ["zxq"],
        "type": "dreambooth", "class_prompt": "a photo of a person", "num_class_images": 4});
    let (id, token) = training_job_with(&app, &user, "DreamBooth job", params).await;
    let spec = &job(&app, &id, &token).await["trainer_spec"];
    assert_eq!(spec["type"], "dreambooth");
    assert_eq!(spec["class_prompt"], "a photo of a person");
    assert_eq!(spec["num_class_images"], 4);
    assert_eq!(spec["prior_loss_weight"], 1.0);
    // and a plain LoRA's spec carries none of it
    let (id, token) = training_job(&app, &user, "Plain job").await;
    let spec = &job(&app, &id, &token).await["trainer_spec"];
    for field in ["class_prompt", "num_class_images", "prior_loss_weight"] {
        assert!(spec.get(field).is_none(), "{field} in {spec}");
    }
}

#[tokio::test]
async fn a_worker_gets_its_job_with_signed_links_and_reports_progress() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Worker job").await;
    let job = job(&app, &id, &token).await;
    assert_eq!(
        (job["lora_id"].as_str(), job["attempt"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    let spec = &job["trainer_spec"];
    assert_eq!(
        (
            spec["job_id"].as_str(),
            spec["steps"].as_u64(),
            spec["type"].as_str()
        ),
        (Some(id.as_str()), Some(10), Some("lora"))
    );
    assert_eq!(spec["validation"], json!({"enabled": true, "scorer": null}));
    let images = job["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(img["file_name"], format!("{i:02}.png"));
        assert!(
            img["caption"].as_str().unwrap().starts_with("zxq"),
            "the trigger word leads: {img}"
        );
        let bytes = reqwest::get(img["url"].as_str().unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            bytes.len() as u64,
            img["bytes"].as_u64().unwrap(),
            "the signed link gives the image"
        );
    }
    let user_id = user.id.to_string();
    assert_eq!(
        job["uploads"]["model"]["key"],
        format!("lora-models/{user_id}/{id}/model.safetensors")
    );
    assert_eq!(
        job["uploads"]["validation"][2]["key"],
        format!("lora-validation-images/{user_id}/{id}/validation/2.png")
    );
    assert_eq!(job["heartbeat_interval_s"], 10);

    let progress = json!({"attempt": 1, "stage": "training", "step": 5, "total": 10, "loss": 0.1, "eta_s": 3.2});
    let resp = worker_post(
        &app,
        &token,
        &format!("/api/v1/worker/jobs/{id}/progress"),
        &progress,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"continue": true})
    );
    let status: Value = app
        .get(&user, &format!("/api/v1/lora-models/{id}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (status["stage"].as_str(), status["progress"].as_u64()),
        (Some("training"), Some(50))
    );
    assert_eq!(status["estimated_remaining"], 4);
    // A bare heartbeat changes nothing visible and extends the lease.
    app.clock.advance(chrono::Duration::seconds(100));
    let resp = worker_post(
        &app,
        &token,
        &format!("/api/v1/worker/jobs/{id}/progress"),
        &json!({"attempt": 1}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let claim = app
        .repo
        .job_claim(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        claim.lease_until,
        Some(app.clock.now() + chrono::Duration::seconds(120))
    );
    let bad = json!({"attempt": 1, "stage": "Training!"});
    let err = error_of(
        worker_post(
            &app,
            &token,
            &format!("/api/v1/worker/jobs/{id}/progress"),
            &bad,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_request");
}

#[tokio::test]
async fn worker_and_user_tokens_do_not_cross_and_a_stopped_job_says_so() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Tokens").await;
    let (other, other_token) = training_job(&app, &user, "Other").await;
    let path = format!("/api/v1/worker/jobs/{id}");
    assert_eq!(
        error_of(worker_get(&app, &user.token, &path).await, 401).await["code"],
        "invalid_token"
    );
    assert_eq!(
        error_of(worker_get(&app, &token, "/api/v1/lora-models").await, 401).await["code"],
        "invalid_audience"
    );
    assert_eq!(
        error_of(worker_get(&app, &other_token, &path).await, 403).await["code"],
        "forbidden"
    );
    assert_eq!(
        error_of(
            worker_get(&app, &token, &format!("/api/v1/worker/jobs/{other}")).await,
            403
        )
        .await["code"],
        "forbidden"
    );
    let wrong_attempt = json!({"attempt": 2});
    let err = error_of(
        worker_post(&app, &token, &format!("{path}/progress"), &wrong_attempt).await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_request");
    // A token of another attempt or engine does not hold the job.
    let stale = app
        .jwt
        .issue_worker(
            id.parse().unwrap(),
            1,
            "engine-gone",
            Duration::from_secs(60),
            app.clock.now(),
        )
        .unwrap();
    assert_eq!(
        error_of(worker_get(&app, &stale, &path).await, 409).await["code"],
        "job_not_active"
    );

    let resp = app
        .post_json(
            &user,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let err = error_of(
        worker_post(
            &app,
            &token,
            &format!("{path}/progress"),
            &json!({"attempt": 1}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(
        (err["code"].as_str(), err["training_status"].as_str()),
        (Some("job_not_active"), Some("cancelled"))
    );
    app.clock.advance(chrono::Duration::seconds(3600 + 31));
    assert_eq!(
        error_of(
            worker_get(&app, &other_token, &format!("/api/v1/worker/jobs/{other}")).await,
            401
        )
        .await["code"],
        "token_expired"
    );
}

#[tokio::test]
async fn two_of_three_scores_complete_the_lora_with_its_files() {
    completes_with_its_files(Engine::Sqlite).await;
}

#[tokio::test]
async fn two_of_three_scores_complete_the_lora_with_its_files_on_postgres() {
    completes_with_its_files(Engine::Postgres).await;
}

async fn completes_with_its_files(engine: Engine) {
    let app = spawn_app_with(engine, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Passes").await;
    let job = job(&app, &id, &token).await;
    let len = upload_outputs(&app, &job, 3).await;
    let body = result_body(len, 3, json!([0.91, 0.7, 0.2]));
    let resp = worker_post(
        &app,
        &token,
        &format!("/api/v1/worker/jobs/{id}/result"),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    // Recorded on the run; the engine acts on it.
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"recorded": true, "status": "training", "error": null})
    );
    settle(&app).await;
    let details: Value = app
        .get(&user, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["training_status"], "completed");
    assert_eq!(details["validation"]["passed"], true);
    assert_eq!(details["file_size"].as_u64(), Some(len as u64));
    let model = reqwest::get(details["download_url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(model.as_ref(), lora_file().as_slice());
    assert!(
        details["kohya_download_url"]
            .as_str()
            .unwrap()
            .contains("model.kohya.safetensors")
    );
    assert_eq!(
        details["validation"]["image_urls"].as_array().map(Vec::len),
        Some(3)
    );
    // The worker's scores are kept with the threshold the rule used, one per image.
    let judged: Vec<(Value, Value)> = details["validation"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["score"].clone(), i["passed"].clone()))
        .collect();
    assert_eq!(
        judged,
        [
            (json!(0.91), json!(true)),
            (json!(0.7), json!(true)),
            (json!(0.2), json!(false))
        ],
        "{details}"
    );
    assert_eq!(details["validation"]["threshold"], 0.7);
    // Past their 30 days the sweep deletes the images: then no links, rather than dead ones.
    std::fs::remove_dir_all(
        app.blob_root
            .join(format!("lora-validation-images/{}/{id}", user.id)),
    )
    .unwrap();
    let details: Value = app
        .get(&user, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["validation"]["image_urls"], json!([]), "{details}");
    assert_eq!(details["validation"]["passed"], true);
    // The same result again is answered the same; the worker may have retried.
    let again: Value = worker_post(
        &app,
        &token,
        &format!("/api/v1/worker/jobs/{id}/result"),
        &body,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (again["recorded"].as_bool(), again["status"].as_str()),
        (Some(false), Some("completed"))
    );
    let run = app
        .repo
        .runs_of(id.parse().unwrap())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(run.result.unwrap()["trainer_seconds"], 12.5);
    assert!(run.instance_gone_at.is_some(), "its instance was ended");
    let events: Vec<Value> = {
        let lora: LoraId = id.parse().unwrap();
        app.repo
            .events_after(lora, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.data)
            .collect()
    };
    let moves: Vec<&str> = events.iter().filter_map(|d| d["to"].as_str()).collect();
    assert_eq!(moves, ["queued", "training", "validating", "completed"]);
}

#[tokio::test]
async fn low_scores_or_missing_images_fail_the_lora_and_it_does_not_count() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Low scores").await;
    let len = upload_outputs(&app, &job(&app, &id, &token).await, 3).await;
    let body = result_body(len, 3, json!([0.69, 0.9, 0.1]));
    assert_eq!(
        worker_post(
            &app,
            &token,
            &format!("/api/v1/worker/jobs/{id}/result"),
            &body
        )
        .await
        .status(),
        200
    );
    let (id2, token2) = training_job(&app, &user, "Two images").await;
    let len = upload_outputs(&app, &job(&app, &id2, &token2).await, 2).await;
    let body = result_body(len, 2, json!([0.9, 0.9]));
    assert_eq!(
        worker_post(
            &app,
            &token2,
            &format!("/api/v1/worker/jobs/{id2}/result"),
            &body
        )
        .await
        .status(),
        200
    );
    settle(&app).await;
    let answer = status_of(&app, &user, &id).await;
    assert_eq!(answer["training_status"], "failed");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Quality validation failed: 1 of 3"),
        "{answer}"
    );
    let answer = status_of(&app, &user, &id2).await;
    assert_eq!(
        answer["error"],
        "Quality validation failed: only 2 of 3 validation images were generated"
    );

    let limits: Value = app
        .get(&user, "/api/v1/me/limits")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(limits["used"], 0, "failed LoRAs do not count: {limits}");
    let details: Value = app
        .get(&user, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            details["validation"]["passed"].as_bool(),
            details["download_url"].as_str()
        ),
        (Some(false), None)
    );
}

#[tokio::test]
async fn without_a_scorer_an_admin_approves_or_rejects() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let admin = app.user_with(None, true);
    let mut ids = Vec::new();
    for name in ["Approve me", "Reject me"] {
        let (id, token) = training_job(&app, &user, name).await;
        let len = upload_outputs(&app, &job(&app, &id, &token).await, 3).await;
        let resp = worker_post(
            &app,
            &token,
            &format!("/api/v1/worker/jobs/{id}/result"),
            &result_body(len, 3, Value::Null),
        )
        .await;
        assert_eq!(resp.status(), 200);
        ids.push(id);
    }
    settle(&app).await;
    for id in &ids {
        let status = status_of(&app, &user, id).await;
        assert_eq!(
            (status["training_status"].as_str(), status["stage"].as_str()),
            (Some("validating"), Some("awaiting_review"))
        );
    }
    let review = |id: &str| format!("/api/v1/admin/lora-models/{id}/review");
    let err = error_of(
        app.post_json(&user, &review(&ids[0]), &json!({"decision": "approve"}))
            .await,
        403,
    )
    .await;
    assert_eq!(err["code"], "forbidden");
    let err = error_of(
        app.post_json(&admin, &review(&ids[0]), &json!({"decision": "maybe"}))
            .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "invalid_json");

    let resp = app
        .post_json(&admin, &review(&ids[0]), &json!({"decision": "approve"}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["training_status"],
        "completed"
    );
    let resp = app
        .post_json(
            &admin,
            &review(&ids[1]),
            &json!({"decision": "reject", "reason": "the face does not match"}),
        )
        .await;
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["training_status"], "failed");
    assert_eq!(
        status["error"],
        "Quality validation failed: rejected in review: the face does not match"
    );
    let err = error_of(
        app.post_json(&admin, &review(&ids[0]), &json!({"decision": "reject"}))
            .await,
        409,
    )
    .await;
    assert_eq!(
        (err["code"].as_str(), err["training_status"].as_str()),
        (Some("not_in_review"), Some("completed"))
    );
    let details: Value = app
        .get(&user, &format!("/api/v1/lora-models/{}", ids[0]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["validation"]["passed"], true);
}

#[tokio::test]
async fn auto_approval_completes_without_a_review() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        with_small_loras(s);
        s.validation.auto_approve = true;
    })
    .await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Auto").await;
    let len = upload_outputs(&app, &job(&app, &id, &token).await, 3).await;
    let resp = worker_post(
        &app,
        &token,
        &format!("/api/v1/worker/jobs/{id}/result"),
        &result_body(len, 3, Value::Null),
    )
    .await;
    assert_eq!(resp.status(), 200);
    settle(&app).await;
    assert_eq!(
        status_of(&app, &user, &id).await["training_status"],
        "completed"
    );
}

#[tokio::test]
async fn a_result_without_its_uploads_is_run_again_and_a_bad_file_fails_the_lora() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Nothing uploaded").await;
    let result = format!("/api/v1/worker/jobs/{id}/result");
    assert_eq!(
        worker_post(&app, &token, &result, &result_body(5000, 3, Value::Null))
            .await
            .status(),
        200
    );
    settle(&app).await;
    let status = status_of(&app, &user, &id).await;
    assert_eq!(status["training_status"], "queued", "{status}");
    let lora: LoraId = id.parse().unwrap();
    let requeue = app
        .repo
        .events_after(lora, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.data["event"] == "requeue")
        .unwrap();
    let why = requeue.data["error"].as_str().unwrap();
    assert!(
        why.starts_with("the trained files are missing from storage: ")
            && why.contains("model.safetensors is not stored"),
        "{why}"
    );
    let resp = app
        .post_json(
            &user,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), 200);

    // Not a safetensors file: the file check fails the LoRA, with its reason.
    let (id, token) = training_job(&app, &user, "Bad file").await;
    let job = job(&app, &id, &token).await;
    let garbage = noise_png(64, 64, 9);
    assert_eq!(
        put(&app, &job["uploads"]["model"]["url"], garbage.clone()).await,
        201
    );
    for i in 0..3 {
        assert_eq!(
            put(
                &app,
                &job["uploads"]["validation"][i]["url"],
                noise_png(64, 64, i as u64)
            )
            .await,
            201
        );
    }
    let body = json!({"attempt": 1, "model": {"bytes": garbage.len()}, "validation": {"images": 3, "scores": null}});
    assert_eq!(
        worker_post(
            &app,
            &token,
            &format!("/api/v1/worker/jobs/{id}/result"),
            &body
        )
        .await
        .status(),
        200
    );
    settle(&app).await;
    let status = status_of(&app, &user, &id).await;
    assert_eq!(status["training_status"], "failed");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .starts_with("the trained file failed its check"),
        "{status}"
    );
}

#[tokio::test]
async fn a_failure_the_worker_reports_is_recorded_once_and_decided_by_its_code() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Diverges").await;
    let path = format!("/api/v1/worker/jobs/{id}/failure");
    for bad in [
        json!({"attempt": 1, "code": "Not A Code"}),
        json!({"attempt": 1, "code": "trained"}),
        json!({"attempt": 2, "code": "stopped"}),
        json!({"code": "stopped"}),
    ] {
        let err = error_of(worker_post(&app, &token, &path, &bad).await, 400).await;
        assert!(
            ["invalid_request", "invalid_json"].contains(&err["code"].as_str().unwrap()),
            "{bad}: {err}"
        );
    }
    let body = json!({"attempt": 1, "code": "non_finite_loss", "reason": "non-finite loss at step 3\u{7}", "retryable": false});
    let answer: Value = worker_post(&app, &token, &path, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["recorded"], true);
    let again: Value = worker_post(
        &app,
        &token,
        &path,
        &json!({"attempt": 1, "code": "stopped"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(again["recorded"], false, "the first report wins");
    settle(&app).await;
    let status = status_of(&app, &user, &id).await;
    assert_eq!(
        (status["training_status"].as_str(), status["error"].as_str()),
        (
            Some("failed"),
            Some("training diverged: non-finite loss at step 3")
        )
    );
    // The owner sees the attempt, its outcome and its cost.
    let details: Value = app
        .get(&user, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let attempts = details["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0]["attempt"].as_u64(),
            attempts[0]["backend"].as_str(),
            attempts[0]["outcome"].as_str()
        ),
        (Some(1), Some("elsewhere"), Some("non_finite_loss"))
    );
    assert_eq!(
        attempts[0]["message"],
        "training diverged: non-finite loss at step 3"
    );
    assert_eq!(
        attempts[0]["route_reason"], "elsewhere: first in order",
        "why the router chose the backend is shown with the attempt"
    );
    assert_eq!(
        attempts[0]["cost"],
        json!({"micro_usd": 0, "display": "$0"})
    );
    assert_eq!(details["training_cost"]["micro_usd"], 0);
    let stranger = app.user();
    let seen: Value = app
        .get(&stranger, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["attempts"], json!([]), "attempts are the owner's");

    // A report before the engine recorded the run is asked to come again.
    let ds = app.dataset(&user).await;
    let resp = app
        .post_json(
            &user,
            "/api/v1/lora-models",
            &json!({"name": "Early", "dataset_id": ds, "params": {"steps": 10, "resolution": 64}}),
        )
        .await;
    let early = resp.json::<Value>().await.unwrap()["lora_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lora: LoraId = early.parse().unwrap();
    let now = app.clock.now();
    app.repo
        .apply_event(lora, StatusEvent::Enqueue, Default::default(), now)
        .await
        .unwrap();
    app.repo
        .claim_next_job("engine-2", 2, now + chrono::Duration::minutes(2), now)
        .await
        .unwrap()
        .unwrap();
    let early_token = app
        .jwt
        .issue_worker(lora, 1, "engine-2", Duration::from_secs(3600), now)
        .unwrap();
    let err = error_of(
        worker_post(
            &app,
            &early_token,
            &format!("/api/v1/worker/jobs/{early}/failure"),
            &json!({"attempt": 1, "code": "io_error"}),
        )
        .await,
        503,
    )
    .await;
    assert_eq!(err["code"], "run_not_recorded");
}

#[tokio::test]
async fn upload_links_write_only_what_they_name() {
    let app = spawn_app_with(Engine::Sqlite, with_small_loras).await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "Links").await;
    let job = job(&app, &id, &token).await;
    // A download link is not an upload link.
    let read = job["images"][0]["url"].as_str().unwrap();
    let resp = app.http.put(read).body("x").send().await.unwrap();
    assert_eq!(error_of(resp, 403).await["code"], "invalid_signature");
    let upload = job["uploads"]["model"]["url"].as_str().unwrap();
    let bare = upload.split('?').next().unwrap();
    assert_eq!(
        error_of(app.http.put(bare).body("x").send().await.unwrap(), 403).await["code"],
        "invalid_signature"
    );
    let moved = upload.replace("model.safetensors", "other.safetensors");
    assert_eq!(
        error_of(app.http.put(moved).body("x").send().await.unwrap(), 403).await["code"],
        "invalid_signature"
    );
    app.clock.advance(chrono::Duration::seconds(4 * 3600));
    assert_eq!(
        error_of(app.http.put(upload).body("x").send().await.unwrap(), 403).await["code"],
        "link_expired"
    );
}

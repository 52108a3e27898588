//! `POST /api/v1/generation/resolve` and `GET /api/v1/lora-models/{id}/usage`: the generator's
//! hand-off on both databases (PRD 2 Scenarios 7 and 8).

use chrono::Duration as Span;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use loraforge_db::{EventDetail, UseRecord};
use loraforge_domain::{Clock, LoraId, StatusEvent, TrainingStatus};
use loraforge_server::usage_writer::UsageWriter;

use crate::helpers::{Engine, TestApp, User, error_of, spawn_app_with};

const RESOLVE: &str = "/api/v1/generation/resolve";
const TRAINING_NOTICE: &str = "LoRA training in progress. Video will use reference images. You can regenerate with LoRA once training completes.";

async fn app(engine: Engine) -> TestApp {
    spawn_app_with(engine, |s| {
        s.limits.monthly_loras = 100;
        s.limits.creates_per_minute = 100;
    })
    .await
}

/// Creates a LoRA for `character` through the API (one minute after the previous, so creation
/// order is clock order) and returns its id.
async fn create(app: &TestApp, user: &User, dataset: &str, name: &str, character: &str) -> LoraId {
    app.clock.advance(Span::minutes(1));
    let resp = app
        .post_json(
            user,
            "/api/v1/lora-models",
            &json!({"name": name, "dataset_id": dataset, "character_id": character,
                    "triggered_by_job_id": format!("job-{character}"),
                    "params": {"trigger_words": ["zxq"]}}),
        )
        .await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    resp.json::<Value>().await.unwrap()["lora_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Moves a pending LoRA to `training` as the engine would.
async fn start(app: &TestApp, id: LoraId) {
    let now = app.clock.now();
    app.repo
        .apply_event(id, StatusEvent::Enqueue, EventDetail::default(), now)
        .await
        .unwrap();
    let claimed = app
        .repo
        .claim_next_job("engine-1", 99, now + Span::hours(8), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.lora.id, id);
}

/// Trains and publishes a LoRA whose model file holds `bytes`.
async fn completed(app: &TestApp, id: LoraId, bytes: &[u8]) {
    start(app, id).await;
    let key = format!("lora-models/u/{id}/model.safetensors");
    app.store
        .put(&key, bytes::Bytes::copy_from_slice(bytes))
        .await
        .unwrap();
    app.publish(id, bytes.len() as u64, app.clock.now()).await;
}

async fn resolve(app: &TestApp, user: &User, body: &Value) -> Value {
    let resp = app.post_json(user, RESOLVE, body).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

async fn usage_count(app: &TestApp, id: LoraId) -> u64 {
    app.repo.get_lora(id).await.unwrap().unwrap().usage_count
}

async fn resolve_story(engine: Engine) {
    let app = app(engine).await;
    let owner = app.user();
    let generator = app.user();
    let dataset = app.dataset(&owner).await;
    let old = create(&app, &owner, &dataset, "Hero v1", "hero").await;
    completed(&app, old, b"old weights").await;
    let new = create(&app, &owner, &dataset, "Hero v2", "hero").await;
    completed(&app, new, b"new weights, newest completed").await;
    // Newer but not completed: the character's newest *completed* LoRA is still `new`.
    let newer = create(&app, &owner, &dataset, "Hero v3", "hero").await;
    start(&app, newer).await;
    let failed = create(&app, &owner, &dataset, "Broken", "villain").await;
    app.repo
        .apply_event(
            failed,
            StatusEvent::Fail,
            EventDetail::because("trainer crashed"),
            app.clock.now(),
        )
        .await
        .unwrap();
    let unknown = LoraId::new();
    let refs = json!(["https://img.example/a.png", "https://img.example/b.png"]);

    let body = json!({"generation_id": "gen-1", "characters": [
        {"character_id": "hero", "reference_images": refs},
        {"character_id": "sidekick", "lora_id": newer.to_string(), "reference_images": refs},
        {"character_id": "villain", "lora_id": failed.to_string()},
        {"character_id": "ghost", "lora_id": unknown.to_string(), "reference_images": refs},
        {"character_id": "nobody"},
        {"character_id": " Ｈｅｒｏ ", "lora_id": old.to_string()},
    ]});
    let got = resolve(&app, &generator, &body).await;
    assert_eq!(got["generation_id"], "gen-1");
    let c = got["characters"].as_array().unwrap();
    assert_eq!(c.len(), 6, "{got}");

    // 1. By character only: its newest completed LoRA, with a link that serves the file.
    assert_eq!(c[0]["mode"], "lora", "{got}");
    assert_eq!(c[0]["character_id"], "hero");
    assert_eq!(c[0]["lora_id"], new.to_string());
    assert_eq!(c[0]["name"], "Hero v2");
    assert_eq!(c[0]["trigger_words"], json!(["zxq"]));
    assert_eq!(c[0]["recommended_scale"], 1.0);
    assert_eq!(c[0]["format"], "diffusers");
    assert_eq!(c[0]["file_size"], 29);
    assert_eq!(c[0]["creator"]["id"], owner.id.to_string());
    assert!(c[0]["download_url_expires_at"].is_string());
    assert!(c[0].get("kohya_download_url").is_none());
    let sha = hex::encode(Sha256::digest(b"new weights, newest completed"));
    assert_eq!(c[0]["sha256"], sha);
    let file = app
        .http
        .get(c[0]["download_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    let bytes = file.bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    // The hash was recorded once, for the next resolve.
    let stored = app.repo.get_lora(new).await.unwrap().unwrap();
    assert_eq!(stored.sha256.as_deref(), Some(sha.as_str()));

    // 2. Named and still training: PRD 1's notice, progress, the images back.
    assert_eq!(c[1]["mode"], "reference_images");
    assert_eq!(c[1]["reason"], "training");
    assert_eq!(c[1]["notice"], TRAINING_NOTICE);
    assert_eq!(c[1]["lora_id"], newer.to_string());
    assert_eq!(c[1]["training_status"], "training");
    assert_eq!(c[1]["progress"], 0);
    assert_eq!(c[1]["reference_images"], refs);
    // 3. Failed.
    assert_eq!(c[2]["reason"], "failed");
    assert_eq!(c[2]["notice"], Value::Null);
    assert_eq!(c[2]["training_status"], "failed");
    assert_eq!(c[2]["reference_images"], json!([]));
    // 4. Unknown id: given back as sent.
    assert_eq!(c[3]["reason"], "not_found");
    assert_eq!(c[3]["lora_id"], unknown.to_string());
    assert_eq!(c[3]["training_status"], Value::Null);
    assert_eq!(c[3]["reference_images"], refs);
    // 5. Nothing for the character.
    assert_eq!(c[4]["mode"], "reference_images");
    assert_eq!(c[4]["reason"], "no_lora");
    assert_eq!(c[4]["lora_id"], Value::Null);
    // 6. Named explicitly (an older LoRA); the id is cleaned like the intake's.
    assert_eq!(c[5]["mode"], "lora");
    assert_eq!(c[5]["character_id"], "Hero");
    assert_eq!(c[5]["lora_id"], old.to_string());
    assert_eq!(c[5]["sha256"], hex::encode(Sha256::digest(b"old weights")));

    // Usage: each LoRA handed out counts once per generation, retries included.
    assert_eq!(usage_count(&app, new).await, 1);
    assert_eq!(usage_count(&app, old).await, 1);
    assert_eq!(usage_count(&app, newer).await, 0);
    resolve(&app, &generator, &body).await;
    assert_eq!(usage_count(&app, new).await, 1, "a retry counted again");
    let again = json!({"generation_id": "gen-2", "characters": [{"character_id": "hero"}]});
    resolve(&app, &generator, &again).await;
    assert_eq!(usage_count(&app, new).await, 2);
    assert_eq!(usage_count(&app, old).await, 1);

    // Per day, zero-filled: two uses today, one more tomorrow.
    app.clock.advance(Span::days(1));
    let third = json!({"generation_id": "gen-3", "characters": [{"character_id": "hero"}]});
    resolve(&app, &generator, &third).await;
    let resp = app
        .get(&owner, &format!("/api/v1/lora-models/{new}/usage?days=7"))
        .await;
    assert_eq!(resp.status(), 200);
    let usage: Value = resp.json().await.unwrap();
    let days = usage["by_day"].as_array().unwrap();
    assert_eq!(days.len(), 7, "{usage}");
    let today = app.clock.now().date_naive();
    assert_eq!(days[6]["day"], today.to_string());
    assert_eq!(days[6]["uses"], 1);
    assert_eq!(days[5]["day"], (today - Span::days(1)).to_string());
    assert_eq!(days[5]["uses"], 2);
    assert!(days[..5].iter().all(|d| d["uses"] == 0), "{usage}");
    assert_eq!(usage["total"], 3);
    assert_eq!(usage["usage_count"], 3);
    let default = app
        .get(&owner, &format!("/api/v1/lora-models/{new}/usage"))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(default["days"], 30);
    assert_eq!(default["by_day"].as_array().unwrap().len(), 30);
    let e = error_of(
        app.get(&generator, &format!("/api/v1/lora-models/{new}/usage"))
            .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "not_owner");
    let admin = app.user_with(None, true);
    let resp = app
        .get(&admin, &format!("/api/v1/lora-models/{new}/usage?days=1"))
        .await;
    assert_eq!(resp.status(), 200);
    let e = error_of(
        app.get(&owner, &format!("/api/v1/lora-models/{new}/usage?days=0"))
            .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_query");

    // The character and the job are shown and filterable.
    let details: Value = app
        .get(&generator, &format!("/api/v1/lora-models/{new}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["character_id"], "hero");
    assert_eq!(details["triggered_by_job_id"], "job-hero");
    let list: Value = app
        .get(
            &generator,
            "/api/v1/lora-models?character_id=hero&sort=popular",
        )
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(list["total"], 3, "{list}");
    assert_eq!(ids[0], new.to_string(), "popular first: {list}");
    assert_eq!(list["items"][0]["character_id"], "hero");
    let list: Value = app
        .get(
            &generator,
            "/api/v1/lora-models?triggered_by_job_id=job-villain&status=failed",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["id"], failed.to_string());
    let list: Value = app
        .get(
            &generator,
            "/api/v1/lora-models?character_id=hero&search=v1",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["id"], old.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_hands_out_ready_loras_and_falls_back_otherwise_sqlite() {
    resolve_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_hands_out_ready_loras_and_falls_back_otherwise_postgres() {
    resolve_story(Engine::Postgres).await;
}

/// Scenario 8: the file is deleted. First resolve: fallback `file_missing`, an alert, the LoRA
/// still completed; 10 minutes later by the clock: the LoRA is failed.
async fn file_missing_story(engine: Engine) {
    let app = app(engine).await;
    let owner = app.user();
    let dataset = app.dataset(&owner).await;
    let id = create(&app, &owner, &dataset, "Vanishing", "hero").await;
    completed(&app, id, b"weights").await;
    let key = format!("lora-models/u/{id}/model.safetensors");
    app.store.delete(&key).await.unwrap();
    let body = json!({"generation_id": "gen-1", "characters": [
        {"character_id": "hero", "reference_images": ["https://img.example/a.png"]}]});

    let got = resolve(&app, &owner, &body).await;
    let c = &got["characters"][0];
    assert_eq!(c["mode"], "reference_images", "{got}");
    assert_eq!(c["reason"], "file_missing");
    assert_eq!(c["lora_id"], id.to_string());
    assert_eq!(c["training_status"], "completed");
    assert_eq!(c["reference_images"], json!(["https://img.example/a.png"]));
    let alerts = app.repo.alerts(10).await.unwrap();
    let raised: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == "lora_file_missing" && a.subject == id.to_string())
        .collect();
    assert_eq!(raised.len(), 1, "{alerts:?}");
    assert_eq!(usage_count(&app, id).await, 0, "a missing file is no use");

    // Five minutes later: still only one miss window, still completed, the alert not repeated.
    app.clock.advance(Span::minutes(5));
    resolve(&app, &owner, &body).await;
    let lora = app.repo.get_lora(id).await.unwrap().unwrap();
    assert_eq!(lora.status, TrainingStatus::Completed);
    let alerts = app.repo.alerts(10).await.unwrap();
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.kind == "lora_file_missing")
            .count(),
        1
    );

    // Ten minutes after the first miss: gone for good.
    app.clock.advance(Span::minutes(5));
    let got = resolve(&app, &owner, &body).await;
    assert_eq!(got["characters"][0]["reason"], "file_missing", "{got}");
    assert_eq!(got["characters"][0]["training_status"], "failed");
    let lora = app.repo.get_lora(id).await.unwrap().unwrap();
    assert_eq!(lora.status, TrainingStatus::Failed);
    assert_eq!(lora.error.as_deref(), Some("its file is gone from storage"));
    // Failed now: the character has no completed LoRA left.
    let got = resolve(&app, &owner, &body).await;
    assert_eq!(got["characters"][0]["reason"], "no_lora", "{got}");
    let named = json!({"generation_id": "gen-2", "characters": [
        {"character_id": "hero", "lora_id": id.to_string()}]});
    let got = resolve(&app, &owner, &named).await;
    assert_eq!(got["characters"][0]["reason"], "failed", "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_falls_back_alerts_and_fails_the_lora_after_ten_minutes_sqlite() {
    file_missing_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_falls_back_alerts_and_fails_the_lora_after_ten_minutes_postgres() {
    file_missing_story(Engine::Postgres).await;
}

/// A file found again after a miss forgets the miss: no failure 10 minutes after the first one.
async fn file_back_story(engine: Engine) {
    let app = app(engine).await;
    let owner = app.user();
    let dataset = app.dataset(&owner).await;
    let id = create(&app, &owner, &dataset, "Flaky", "hero").await;
    completed(&app, id, b"weights").await;
    let key = format!("lora-models/u/{id}/model.safetensors");
    app.store.delete(&key).await.unwrap();
    let body = json!({"generation_id": "g", "characters": [{"character_id": "hero"}]});
    let got = resolve(&app, &owner, &body).await;
    assert_eq!(got["characters"][0]["reason"], "file_missing");
    app.store
        .put(&key, bytes::Bytes::from_static(b"weights"))
        .await
        .unwrap();
    let got = resolve(&app, &owner, &body).await;
    assert_eq!(got["characters"][0]["mode"], "lora", "{got}");
    app.store.delete(&key).await.unwrap();
    app.clock.advance(Span::minutes(11));
    let got = resolve(&app, &owner, &body).await;
    assert_eq!(got["characters"][0]["reason"], "file_missing");
    let lora = app.repo.get_lora(id).await.unwrap().unwrap();
    assert_eq!(lora.status, TrainingStatus::Completed, "one new miss only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_found_again_forgets_the_miss_sqlite() {
    file_back_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_found_again_forgets_the_miss_postgres() {
    file_back_story(Engine::Postgres).await;
}

/// Concurrent retries of one generation count once; another generation counts again.
async fn concurrent_story(engine: Engine) {
    let app = app(engine).await;
    let owner = app.user();
    let dataset = app.dataset(&owner).await;
    let a = create(&app, &owner, &dataset, "A", "a").await;
    completed(&app, a, b"aaa").await;
    let b = create(&app, &owner, &dataset, "B", "b").await;
    completed(&app, b, b"bbb").await;
    // Hash once up front so the concurrent resolves race only on the uses.
    let warm = json!({"generation_id": "warm", "characters": [{"character_id": "a"}, {"character_id": "b"}]});
    resolve(&app, &owner, &warm).await;
    for round in 0..3 {
        let body = json!({"generation_id": format!("retry-{round}"), "characters": [
            {"character_id": "a"}, {"character_id": "b"}, {"character_id": "a"}]});
        let answers = futures::future::join_all((0..8).map(|_| resolve(&app, &owner, &body))).await;
        for got in &answers {
            assert_eq!(got["characters"][0]["mode"], "lora", "{got}");
            assert_eq!(got["characters"][2]["lora_id"], a.to_string());
        }
        assert_eq!(usage_count(&app, a).await, 2 + round, "round {round}");
        assert_eq!(usage_count(&app, b).await, 2 + round, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_count_once_sqlite() {
    concurrent_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_count_once_postgres() {
    concurrent_story(Engine::Postgres).await;
}

#[tokio::test]
async fn malformed_requests_are_400_with_codes() {
    let app = app(Engine::Sqlite).await;
    let user = app.user();
    let long_url = format!("https://img.example/{}", "a".repeat(2048));
    let fifty_one: Vec<Value> = (0..51)
        .map(|i| json!({"character_id": format!("c{i}")}))
        .collect();
    let many_refs: Vec<String> = (0..51)
        .map(|i| format!("https://img.example/{i}.png"))
        .collect();
    let cases = [
        (json!([]), "invalid_json"),
        (
            json!({"characters": [{"character_id": "a"}]}),
            "invalid_json",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": "a"}], "x": 1}),
            "invalid_json",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": 5}]}),
            "invalid_json",
        ),
        (
            json!({"generation_id": "g", "characters": [{"lora_id": "x"}]}),
            "invalid_json",
        ),
        (
            json!({"generation_id": "  ", "characters": [{"character_id": "a"}]}),
            "invalid_generation_id",
        ),
        (
            json!({"generation_id": "g", "characters": []}),
            "invalid_request",
        ),
        (
            json!({"generation_id": "g", "characters": fifty_one}),
            "invalid_request",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": ""}]}),
            "invalid_character_id",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": "a\u{0}b"}]}),
            "invalid_character_id",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": "x".repeat(256)}]}),
            "invalid_character_id",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": "a", "reference_images": many_refs}]}),
            "invalid_request",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": "a", "reference_images": [long_url]}]}),
            "invalid_request",
        ),
        (
            json!({"generation_id": "g", "characters": [{"character_id": "a", "reference_images": [""]}]}),
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let e = error_of(app.post_json(&user, RESOLVE, &body).await, 400).await;
        assert_eq!(e["code"], code, "{body}: {e}");
    }
    let resp = app
        .http
        .post(app.url(RESOLVE))
        .bearer_auth(&user.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Without a token: 401.
    let resp = app
        .http
        .post(app.url(RESOLVE))
        .json(&json!({"generation_id": "g", "characters": [{"character_id": "a"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A lora_id that is no UUID names no LoRA: a fallback, not a failed generation.
    let got = resolve(
        &app,
        &user,
        &json!({"generation_id": "g", "characters": [{"character_id": "a", "lora_id": "nope"}]}),
    )
    .await;
    assert_eq!(got["characters"][0]["reason"], "not_found");
    assert_eq!(got["characters"][0]["lora_id"], "nope");
    // Create bodies check the new fields too.
    let dataset = app.dataset(&user).await;
    let e = error_of(
        app.post_json(
            &user,
            "/api/v1/lora-models",
            &json!({"name": "n", "dataset_id": dataset, "character_id": "x".repeat(256)}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_request");
    assert_eq!(e["field"], "character_id");
    let e = error_of(
        app.post_json(
            &user,
            "/api/v1/lora-models",
            &json!({"name": "n", "dataset_id": dataset, "triggered_by_job_id": 7}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_request");
}

/// The usage writer's group commit (`server::usage_writer`): resolves in flight share
/// transactions, each (generation, LoRA) still counts once, a caller that goes away still has
/// its uses recorded, a locked database delays the bookkeeping but not the answer, and a failing
/// batch costs only its bad record.
async fn usage_writer_story(engine: Engine) {
    let app = app(engine).await;
    let owner = app.user();
    let dataset = app.dataset(&owner).await;
    let mut loras = Vec::new();
    for name in ["Writer A", "Writer B", "Writer C"] {
        loras.push(create(&app, &owner, &dataset, name, "cast").await);
    }
    let writer = UsageWriter::new(app.repo.clone());
    let rec = |g: &str, loras: &[LoraId]| UseRecord {
        generation_id: g.to_owned(),
        loras: loras.to_vec(),
        user: owner.id,
        at: app.clock.now(),
    };
    // 32 generations at once, and 8 retries of some of them among them.
    let calls = (0..40).map(|i| {
        let writer = writer.clone();
        let r = rec(&format!("g{}", i % 32), &loras);
        tokio::spawn(async move { writer.record(r).await })
    });
    let mut counted = 0;
    for r in futures::future::join_all(calls).await {
        counted += r.unwrap().expect("recorded").len();
    }
    assert_eq!(counted, 32 * 3, "each (generation, LoRA) once");
    for l in &loras {
        assert_eq!(usage_count(&app, *l).await, 32);
    }
    let batches = writer.batches();
    assert!(
        batches < 20,
        "40 resolves in flight were written in {batches} transactions"
    );
    // Alone, a resolve is its own batch.
    let before = writer.batches();
    let alone = writer.record(rec("alone", &loras[..1])).await.unwrap();
    assert_eq!(alone, vec![loras[0]]);
    assert_eq!(writer.batches(), before + 1);

    // Polled once (its record queued, the flusher started), then dropped — almost always
    // before its answer, on a busy machine maybe after —: recorded either way.
    let mut gone = Box::pin(writer.record(rec("gone", &loras[1..2])));
    let _ = futures::poll!(gone.as_mut());
    drop(gone);
    for _ in 0..500 {
        if usage_count(&app, loras[1]).await == 33 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(usage_count(&app, loras[1]).await, 33);
    assert!(
        writer
            .record(rec("gone", &loras[1..2]))
            .await
            .unwrap()
            .is_empty(),
        "its retry counts nothing"
    );

    // A database that keeps the writer waiting (another connection holds the lock the write
    // needs) delays the bookkeeping, not the resolve: the caller is answered after the writer's
    // wait, and the use is written once the lock goes.
    let slow = UsageWriter::with_wait(app.repo.clone(), std::time::Duration::from_millis(300));
    let lock = WriteLock::hold(&app, loras[0]).await;
    let err = slow
        .record(rec("while-locked", &loras[..1]))
        .await
        .expect_err("the lock is held until released below");
    assert!(err.contains("still being written"), "{err}");
    assert_eq!(usage_count(&app, loras[0]).await, 33, "not yet written");
    lock.release().await;
    for _ in 0..500 {
        if usage_count(&app, loras[0]).await == 34 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        usage_count(&app, loras[0]).await,
        34,
        "written after the lock"
    );

    // A LoRA that does not exist fails its own record only.
    let calls = [
        rec("good", &loras[2..]),
        rec("bad", &[LoraId::new()]),
        rec("good-too", &loras[2..]),
    ]
    .map(|r| {
        let writer = writer.clone();
        tokio::spawn(async move { writer.record(r).await })
    });
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers[0], Ok(vec![loras[2]]));
    assert!(answers[1].is_err(), "{:?}", answers[1]);
    assert_eq!(answers[2], Ok(vec![loras[2]]));
    assert_eq!(usage_count(&app, loras[2]).await, 34);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_writer_groups_concurrent_resolves_sqlite() {
    usage_writer_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_writer_groups_concurrent_resolves_postgres() {
    usage_writer_story(Engine::Postgres).await;
}

/// Another connection holding what a use transaction needs: SQLite's write lock, or the LoRA's
/// row lock on Postgres.
enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriteLock {
    async fn hold(app: &TestApp, lora: LoraId) -> Self {
        use sqlx::Connection;
        if app.db_url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            WriteLock::Sqlite(conn)
        } else {
            let mut conn = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("SELECT id FROM lora_models WHERE id = $1 FOR UPDATE")
                .bind(lora.as_uuid())
                .execute(&mut conn)
                .await
                .unwrap();
            WriteLock::Postgres(conn)
        }
    }

    async fn release(self) {
        match self {
            WriteLock::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            WriteLock::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}

//! Quotes (`POST /api/v1/quotes`, `?dry_run=true`) and credits (`/me/credits`, admin grants, the
//! 402 of a create, settlement by the reconciler).

use serde_json::{Value, json};

use loraforge_db::{EventDetail, LoraQuery, NewRun, TrainedFiles};
use loraforge_domain::{Clock, LoraId, MicroUsd, RunId, StatusEvent};
use loraforge_server::credits::reconcile_credits;

use crate::helpers::*;

/// Credits on or off, `local` priced at $3.60 an hour (so 1 s = $0.001), `runpod` unpriced.
fn priced(credits: bool) -> impl FnOnce(&mut loraforge_server::ServerSettings) {
    move |s| {
        s.limits.creates_per_minute = 0;
        s.credits.enabled = credits;
        s.credits
            .prices_per_hour
            .insert("local".into(), MicroUsd(3_600_000));
    }
}

async fn credits_of(app: &TestApp, u: &User) -> Value {
    let resp = app.get(u, "/api/v1/me/credits").await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn grant(app: &TestApp, admin: &User, user: &User, usd: &str) -> reqwest::Response {
    app.post_json(
        admin,
        &format!("/api/v1/admin/users/{}/credits", user.id),
        &json!({"amount_usd": usd, "reason": "welcome credits"}),
    )
    .await
}

#[tokio::test]
async fn quotes_fall_back_per_backend_and_dry_run_creates_nothing() {
    let app = spawn_app_with(Engine::Sqlite, priced(false)).await;
    let u = app.user();
    let resp = app
        .post_json(
            &u,
            "/api/v1/quotes",
            &json!({"params": {"steps": 1000, "resolution": 512}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["currency"], "USD");
    let quotes = body["quotes"].as_array().unwrap();
    assert_eq!(
        quotes
            .iter()
            .map(|q| q["backend"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["runpod", "local"],
        "router order"
    );
    // 300 s overhead + 1000 steps × 0.35 s at ≤512 px.
    for q in quotes {
        assert_eq!(q["method"], "fallback");
        assert_eq!(q["based_on_runs"], 0);
        assert_eq!(q["expected_seconds"], 650);
    }
    assert!(quotes[0]["expected_cost_micros"].is_null());
    assert!(
        quotes[0]["cost_unknown_reason"]
            .as_str()
            .unwrap()
            .contains("runpod")
    );
    assert_eq!(quotes[1]["expected_cost_micros"], 650_000);
    assert_eq!(quotes[1]["expected_cost_usd"], "0.650000");

    // Bad params are refused as a create refuses them; unknown fields too.
    let e = error_of(
        app.post_json(&u, "/api/v1/quotes", &json!({"params": {"steps": "many"}}))
            .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_params");
    let e = error_of(
        app.post_json(&u, "/api/v1/quotes", &json!({"colour": 1}))
            .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_request");

    // A dry run of a full create body answers the same quotes and stores nothing.
    let ds = app.dataset(&u).await;
    let resp = app
        .post_json(
            &u,
            "/api/v1/lora-models?dry_run=true",
            &json!({"name": "Dry", "dataset_id": ds, "params": {"steps": 1000, "resolution": 512}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let dry: Value = resp.json().await.unwrap();
    assert_eq!(dry, body);
    let page = app
        .repo
        .list_loras(&LoraQuery {
            creator: Some(u.id),
            limit: 10,
            ..LoraQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 0, "a dry run created a LoRA");
    // The name is still free.
    app.create_ok(&u, "Dry", &ds).await;
}

#[tokio::test]
async fn without_credits_a_create_is_402_with_balance_and_price() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let app = spawn_app_with(engine, priced(true)).await;
        let u = app.user();
        let ds = app.dataset(&u).await;
        let resp = app.create_lora(&u, "Broke", &ds).await;
        let e = error_of(resp, 402).await;
        assert_eq!(e["code"], "insufficient_credits");
        // Default params: 1500 steps at 1024 px → 300 + 1500 s at $3.60/h on `local`.
        assert_eq!(e["price_micros"], 1_800_000);
        assert_eq!(e["price_usd"], "1.800000");
        assert_eq!(e["balance_micros"], 0);
        assert_eq!(e["available_micros"], 0);
        assert!(e["message"].as_str().unwrap().contains("1.800000"));

        let admin = app.user_with(None, true);
        assert_eq!(grant(&app, &admin, &u, "2.00").await.status(), 201);
        let id = app.create_ok(&u, "Funded", &ds).await;
        let c = credits_of(&app, &u).await;
        assert_eq!(
            (
                &c["balance_micros"],
                &c["reserved_micros"],
                &c["available_micros"]
            ),
            (&json!(2_000_000), &json!(1_800_000), &json!(200_000))
        );
        assert_eq!(c["enabled"], true);
        assert_eq!(c["history"][0]["kind"], "reserve");
        assert_eq!(c["history"][0]["lora_id"], id.as_str());
        assert_eq!(c["history"][1]["kind"], "grant");
        let e = error_of(app.create_lora(&u, "One too many", &ds).await, 402).await;
        assert_eq!(e["available_micros"], 200_000);

        // Cancelling refunds the reservation at once.
        let resp = app
            .post_json(&u, &format!("/api/v1/lora-models/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(resp.status(), 200);
        let c = credits_of(&app, &u).await;
        assert_eq!(
            (&c["reserved_micros"], &c["available_micros"]),
            (&json!(0), &json!(2_000_000))
        );
        assert_eq!(c["history"][0]["kind"], "refund");
        // The reconciler finds nothing left to do.
        let r = reconcile_credits(app.repo.as_ref(), app.clock.now())
            .await
            .unwrap();
        assert_eq!((r.charged, r.refunded), (0, 0));
    }
}

#[tokio::test]
async fn admins_grant_and_adjust_with_a_reason() {
    let app = spawn_app_with(Engine::Sqlite, priced(true)).await;
    let u = app.user();
    let admin = app.user_with(None, true);
    let e = error_of(grant(&app, &u, &u, "100").await, 403).await;
    assert_eq!(e["code"], "forbidden");
    let no_reason = app
        .post_json(
            &admin,
            &format!("/api/v1/admin/users/{}/credits", u.id),
            &json!({"amount_usd": "5"}),
        )
        .await;
    assert_eq!(error_of(no_reason, 422).await["code"], "reason_required");
    for bad in ["0", "ten", "1e400", ""] {
        let e = error_of(grant(&app, &admin, &u, bad).await, 400).await;
        assert_eq!(e["code"], "invalid_amount", "{bad}");
    }
    let resp = grant(&app, &admin, &u, "10.50").await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["entry"]["kind"], "grant");
    assert_eq!(body["entry"]["amount_micros"], 10_500_000);
    assert_eq!(body["balance_micros"], 10_500_000);
    let resp = grant(&app, &admin, &u, "-0.50").await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["entry"]["kind"], "adjust");
    assert_eq!(body["entry"]["amount_usd"], "-0.500000");
    assert_eq!(body["available_micros"], 10_000_000);
    let c = credits_of(&app, &u).await;
    assert_eq!(c["balance_usd"], "10.000000");
    assert_eq!(c["history"].as_array().unwrap().len(), 2);
    assert_eq!(c["history"][0]["reason"], "welcome credits");
    // Paged, newest first.
    let page: Value = app
        .get(&u, "/api/v1/me/credits?limit=1&offset=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["history"][0]["kind"], "grant");
    assert_eq!(page["history"].as_array().unwrap().len(), 1);
    // Another user's credits are their own.
    let v = app.user();
    assert_eq!(credits_of(&app, &v).await["balance_micros"], 0);
}

/// Drives a created LoRA through one trained run on `backend` that cost `cost`, as the engine
/// would, and confirms its instance gone.
async fn train(app: &TestApp, id: &str, backend: &str, cost: i64) {
    let id: LoraId = id.parse().unwrap();
    let now = app.clock.now();
    let repo = app.repo.as_ref();
    repo.apply_event(id, StatusEvent::Enqueue, EventDetail::default(), now)
        .await
        .unwrap();
    let job = repo
        .claim_next_job("engine-1", 99, now + chrono::Duration::hours(1), now)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(job.lora.id, id);
    let run = repo
        .insert_run(&NewRun {
            id: RunId::new(),
            lora_id: id,
            attempt: job.attempt,
            backend: backend.into(),
            route_reason: None,
            engine: "engine-1".into(),
            instance_name: format!("loraforge-{id}-1"),
            provider_id: format!("pod-{id}"),
            gpu_type: Some("NVIDIA L4".into()),
            price_per_hour: Some(MicroUsd(1_000_000)),
            created_at: now,
            started_at: now,
        })
        .await
        .unwrap();
    let ended = now + chrono::Duration::seconds(900);
    repo.record_run_outcome(run.id, "trained", None, None, ended)
        .await
        .unwrap();
    // Its model file's key is recorded as a publish records it (the file itself is not stored).
    let files = TrainedFiles {
        storage_key: format!("lora-models/u/{id}/model.safetensors"),
        file_size: 7,
        sha256: None,
        validation_image_keys: vec![],
    };
    let validating = EventDetail {
        outputs: Some(files),
        ..EventDetail::default()
    };
    repo.apply_event(id, StatusEvent::BeginValidation, validating, ended)
        .await
        .unwrap();
    repo.apply_event(id, StatusEvent::Complete, EventDetail::default(), ended)
        .await
        .unwrap();
    repo.record_instance_gone(run.id, MicroUsd(cost), ended)
        .await
        .unwrap();
}

/// LoRAs of `u` counted toward this month's limit.
async fn monthly_used(app: &TestApp, u: &User) -> u64 {
    let limits: Value = app.get(u, "/api/v1/me/limits").await.json().await.unwrap();
    limits["used"].as_u64().unwrap()
}

/// A user granted $10 whose LoRA `name` reserved its quote and trained on `runpod` for $0.25.
async fn trained_with_credits(engine: Engine, name: &str) -> (TestApp, User, String) {
    let app = spawn_app_with(engine, priced(true)).await;
    let u = app.user();
    let admin = app.user_with(None, true);
    assert_eq!(grant(&app, &admin, &u, "10").await.status(), 201);
    let ds = app.dataset(&u).await;
    let id = app.create_ok(&u, name, &ds).await;
    train(&app, &id, "runpod", 250_000).await;
    (app, u, id)
}

#[tokio::test]
async fn a_completed_lora_is_charged_its_actual_cost_once_and_teaches_the_quotes() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let (app, u, _) = trained_with_credits(engine, "Trained").await;
        // A crash left the reservation unsettled; the reconciler runs twice.
        let first = reconcile_credits(app.repo.as_ref(), app.clock.now())
            .await
            .unwrap();
        assert_eq!(
            (first.charged, first.refunded, first.deducted),
            (1, 0, MicroUsd(250_000))
        );
        let second = reconcile_credits(app.repo.as_ref(), app.clock.now())
            .await
            .unwrap();
        assert_eq!((second.charged, second.refunded), (0, 0));
        let c = credits_of(&app, &u).await;
        assert_eq!(
            (
                &c["balance_micros"],
                &c["reserved_micros"],
                &c["available_micros"]
            ),
            (&json!(9_750_000), &json!(0), &json!(9_750_000))
        );
        let kinds: Vec<&str> = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == "deduct").count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == "release").count(), 1);

        // The run is history now: 900 s for the default 1500 steps at 1024 px on runpod.
        let q: Value = app
            .post_json(&u, "/api/v1/quotes", &json!({"params": {"steps": 3000}}))
            .await
            .json()
            .await
            .unwrap();
        let runpod = &q["quotes"][0];
        assert_eq!(runpod["backend"], "runpod");
        assert_eq!(runpod["method"], "history");
        assert_eq!(runpod["based_on_runs"], 1);
        assert_eq!(runpod["expected_seconds"], 1800);
        assert_eq!(runpod["gpu_type"], "NVIDIA L4");
        // At the run's recorded $1/h.
        assert_eq!(runpod["expected_cost_micros"], 500_000);
        assert_eq!(q["quotes"][1]["method"], "fallback");
    }
}

/// PRD 4 Scenario 8 and the money: a completed, charged LoRA whose file is gone for good is
/// failed by the generator's resolve, and that resolve gives the charge back at once (a failed
/// LoRA costs nothing); the LoRA leaves the monthly count. Repeats and the reconciler add nothing.
#[tokio::test]
async fn a_lora_failed_for_a_lost_file_gets_its_charge_back_once() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let (app, u, id) = trained_with_credits(engine, "Lost").await;
        reconcile_credits(app.repo.as_ref(), app.clock.now())
            .await
            .unwrap();
        assert_eq!(credits_of(&app, &u).await["available_micros"], 9_750_000);
        assert_eq!(monthly_used(&app, &u).await, 1);

        // The file is not in the store: a first miss, then gone for good 10 minutes later.
        let body =
            json!({"generation_id": "g", "characters": [{"character_id": "c", "lora_id": id}]});
        for _ in 0..2 {
            let resp = app.post_json(&u, "/api/v1/generation/resolve", &body).await;
            let got: Value = resp.json().await.unwrap();
            assert_eq!(got["characters"][0]["reason"], "file_missing", "{got}");
            app.clock.advance(chrono::Duration::minutes(10));
        }
        let lora = app
            .repo
            .get_lora(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lora.status, loraforge_domain::TrainingStatus::Failed);

        // Given back by the resolve itself, before any reconciler round.
        let c = credits_of(&app, &u).await;
        assert_eq!(
            (
                &c["balance_micros"],
                &c["reserved_micros"],
                &c["available_micros"]
            ),
            (&json!(10_000_000), &json!(0), &json!(10_000_000))
        );
        assert_eq!(c["history"][0]["kind"], "reimburse");
        assert_eq!(c["history"][0]["amount_micros"], 250_000);
        assert_eq!(c["history"][0]["lora_id"], id.as_str());
        assert_eq!(
            monthly_used(&app, &u).await,
            0,
            "a failed LoRA does not count"
        );
        let r = reconcile_credits(app.repo.as_ref(), app.clock.now())
            .await
            .unwrap();
        assert_eq!((r.charged, r.refunded, r.reimbursed), (0, 0, 0));
        app.post_json(&u, "/api/v1/generation/resolve", &body).await;
        let c = credits_of(&app, &u).await;
        let reimbursed = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "reimburse")
            .count();
        assert_eq!(reimbursed, 1);
    }
}

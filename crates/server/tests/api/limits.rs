use std::sync::Arc;

use serde_json::{Value, json};

use loraforge_db::{EventDetail, FaultPoint};
use loraforge_domain::{Clock, LoraId, StatusEvent};

use crate::helpers::*;

fn generous(s: &mut loraforge_server::ServerSettings) {
    s.limits.creates_per_minute = 0;
}

#[tokio::test]
async fn the_sixth_lora_of_a_month_is_429_with_the_prd_message_and_reset_time() {
    let app = spawn_app_with(Engine::Sqlite, generous).await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    for i in 0..5 {
        app.create_ok(&u, &format!("l{i}"), &ds).await;
    }
    let resp = app.create_lora(&u, "l5", &ds).await;
    assert!(resp.headers().get("retry-after").is_some());
    let e = error_of(resp, 429).await;
    assert_eq!(e["code"], "monthly_limit_reached");
    assert_eq!(
        e["message"],
        "You've reached your monthly limit of 5 LoRAs. Limit resets on the first of each month."
    );
    assert_eq!(e["resets_at"], "2026-12-01T00:00:00+00:00");
    let limits: Value = app.get(&u, "/api/v1/me/limits").await.json().await.unwrap();
    assert_eq!(
        (
            limits["used"].as_u64(),
            limits["limit"].as_u64(),
            limits["remaining"].as_u64()
        ),
        (Some(5), Some(5), Some(0))
    );
    assert_eq!(limits["resets_at"], "2026-12-01T00:00:00Z");

    // Another user is unaffected.
    let v = app.user();
    let dv = app.dataset(&v).await;
    app.create_ok(&v, "l0", &dv).await;

    // On the first of the month the count starts again.
    app.clock.set("2026-12-01T00:00:00Z".parse().unwrap());
    app.create_ok(&u, "december", &ds).await;
    let limits: Value = app.get(&u, "/api/v1/me/limits").await.json().await.unwrap();
    assert_eq!(limits["used"], 1);
}

#[tokio::test]
async fn failed_and_cancelled_loras_do_not_count() {
    let app = spawn_app_with(Engine::Sqlite, generous).await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_ok(&u, &format!("l{i}"), &ds).await);
    }
    app.post_json(
        &u,
        &format!("/api/v1/lora-models/{}/cancel", ids[0]),
        &json!({}),
    )
    .await;
    let id1: LoraId = ids[1].parse().unwrap();
    let now = app.clock.now();
    app.repo
        .apply_event(id1, StatusEvent::Fail, EventDetail::because("boom"), now)
        .await
        .unwrap();
    app.create_ok(&u, "again-1", &ds).await;
    app.create_ok(&u, "again-2", &ds).await;
    assert_eq!(
        error_of(app.create_lora(&u, "again-3", &ds).await, 429).await["code"],
        "monthly_limit_reached"
    );
}

#[tokio::test]
async fn the_limit_check_fails_open() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        generous(s);
        s.limits.monthly_loras = 1;
    })
    .await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    app.create_ok(&u, "first", &ds).await;
    app.repo.faults().arm(FaultPoint::MonthlyCount);
    // The count fails, so the create is allowed (and logged) rather than blocked.
    app.create_ok(&u, "second", &ds).await;
    assert_eq!(
        error_of(app.create_lora(&u, "third", &ds).await, 429).await["code"],
        "monthly_limit_reached"
    );
}

async fn twenty_concurrent_creates_give_exactly_five(engine: Engine) {
    let app = Arc::new(spawn_app_with(engine, generous).await);
    let u = app.user();
    let ds = app.dataset(&u).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (app, u, ds) = (app.clone(), u.clone(), ds.clone());
        tasks.push(tokio::spawn(async move {
            app.create_lora(&u, &format!("race-{i}"), &ds)
                .await
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 15, "{codes:?}");
    let list: Value = app
        .get(&u, &format!("/api/v1/lora-models?creator={}", u.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_creates_give_exactly_five_on_sqlite() {
    twenty_concurrent_creates_give_exactly_five(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_creates_give_exactly_five_on_postgres() {
    twenty_concurrent_creates_give_exactly_five(Engine::Postgres).await;
}

#[tokio::test]
async fn creates_are_rate_limited_per_user_with_retry_after() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.limits.creates_per_minute = 3;
        s.limits.monthly_loras = 100;
    })
    .await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    for i in 0..3 {
        app.create_ok(&u, &format!("r{i}"), &ds).await;
    }
    let resp = app.create_lora(&u, "r3", &ds).await;
    assert_eq!(resp.headers()["retry-after"], "20");
    assert_eq!(error_of(resp, 429).await["code"], "rate_limited");
    // Another user has an allowance of their own.
    let other = app.user();
    let od = app.dataset(&other).await;
    app.create_ok(&other, "fine", &od).await;
    // Time heals.
    app.clock.advance(chrono::Duration::seconds(20));
    app.create_ok(&u, "r3", &ds).await;
}

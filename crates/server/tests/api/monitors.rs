//! The operator monitors (`monitors::run_monitors`) on both databases with a manual clock: each
//! fires once and not again within the cooldown; a job training past the grace is cancelled
//! through the status machine.

use std::time::Duration;

use chrono::Duration as Span;

use loraforge_db::EventDetail;
use loraforge_domain::breaker::{BreakerEvent, BreakerRules, BreakerState};
use loraforge_domain::{Clock, LoraId, MicroUsd, StatusEvent, TrainingStatus};
use loraforge_server::monitors::{MonitorSettings, run_monitors, run_monitors_leased};

use crate::helpers::*;

fn settings() -> MonitorSettings {
    MonitorSettings {
        failure_min_samples: 2,
        // 3 LoRAs by the 15th is above 1 a month prorated (0 by today).
        loras_per_month: 1,
        max_storage_cost: MicroUsd(1_000_000),
        // Longer than the story, so every alert is raised once.
        cooldown: Duration::from_secs(6 * 3600),
        ..MonitorSettings::default()
    }
}

async fn training(app: &TestApp, id: &str) -> LoraId {
    let id: LoraId = id.parse().unwrap();
    let now = app.clock.now();
    app.repo
        .apply_event(id, StatusEvent::Enqueue, EventDetail::default(), now)
        .await
        .unwrap();
    let claimed = app
        .repo
        .claim_next_job("engine-1", 9, now + Span::hours(8), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.lora.id, id);
    id
}

async fn monitors_story(engine: Engine) {
    let app = spawn_app_with(engine, |_| {}).await;
    let user = app.user();
    let dataset = app.dataset(&user).await;
    let long = app.create_ok(&user, "Long", &dataset).await;
    let f1 = app.create_ok(&user, "Fails one", &dataset).await;
    let f2 = app.create_ok(&user, "Fails two", &dataset).await;
    let long = training(&app, &long).await;
    for f in [f1, f2] {
        let id = training(&app, &f).await;
        app.repo
            .apply_event(
                id,
                StatusEvent::Fail,
                EventDetail::because("boom"),
                app.clock.now(),
            )
            .await
            .unwrap();
    }
    let settings = settings();

    // Nothing is long yet; the failure rate (2 of 2) and the growth fire.
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert!(r.errors.is_empty(), "{r:?}");
    let mut kinds = r.new_kinds();
    kinds.sort_unstable();
    assert_eq!(kinds, ["failure_rate", "lora_growth"], "{r:?}");

    // Past 2 h: the long job is alerted; the rest is within its cooldown (counted, not new).
    app.clock.advance(Span::seconds(2 * 3600 + 60));
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert_eq!(r.new_kinds(), ["training_too_long"], "{r:?}");
    assert!(
        r.raised
            .iter()
            .any(|(k, _, new)| k == "failure_rate" && !new)
    );
    // Again a minute later: nothing new.
    app.clock.advance(Span::seconds(60));
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert!(r.new_kinds().is_empty(), "{r:?}");

    // A breaker opens: alerted once.
    app.repo
        .step_breaker(
            "runpod",
            &BreakerEvent::Force {
                to: BreakerState::Open,
                reason: "test".into(),
                by: "admin".into(),
            },
            &BreakerRules::default(),
            app.clock.now(),
        )
        .await
        .unwrap();
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert_eq!(r.new_kinds(), ["breaker_opened"], "{r:?}");
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert!(r.new_kinds().is_empty(), "{r:?}");

    // Past 3 h: cancelled through the status machine.
    app.clock.advance(Span::seconds(3600));
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert_eq!(r.cancelled, vec![long.to_string()], "{r:?}");
    assert!(r.new_kinds().contains(&"training_cancelled"), "{r:?}");
    let lora = app.repo.get_lora(long).await.unwrap().unwrap();
    assert_eq!(lora.status, TrainingStatus::Cancelled);

    // Only one replica runs them.
    let held = run_monitors_leased(
        app.repo.as_ref(),
        &settings,
        "a",
        Duration::from_secs(3600),
        app.clock.now(),
    )
    .await;
    assert!(held.held);
    let other = run_monitors_leased(
        app.repo.as_ref(),
        &settings,
        "b",
        Duration::from_secs(3600),
        app.clock.now(),
    )
    .await;
    assert!(!other.held && other.raised.is_empty());

    let kinds: Vec<String> = app
        .repo
        .alerts(50)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    for k in [
        "failure_rate",
        "lora_growth",
        "training_too_long",
        "breaker_opened",
        "training_cancelled",
    ] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            1,
            "{k}: {kinds:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_fire_once_per_cooldown_sqlite() {
    monitors_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_fire_once_per_cooldown_postgres() {
    monitors_story(Engine::Postgres).await;
}

/// Takes a created LoRA through one run on the `runpod` backend, as the engine would: the run is
/// recorded; with `finish`, the LoRA completes with a 2.5 GB file and the run's instance is gone
/// at `cost`; without it, the run stays open and its instance refuses to end 3 times.
async fn one_run(app: &TestApp, id: &str, finish: Option<MicroUsd>) -> LoraId {
    use loraforge_db::NewRun;
    use loraforge_domain::RunId;

    let id = training(app, id).await;
    let now = app.clock.now();
    let repo = app.repo.as_ref();
    let run = repo
        .insert_run(&NewRun {
            id: RunId::new(),
            lora_id: id,
            attempt: 1,
            backend: "runpod".into(),
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
    let Some(cost) = finish else {
        for n in 1..=3 {
            let tries = repo
                .record_terminate_failure(run.id, "the provider answered 500", now)
                .await
                .unwrap();
            assert_eq!(tries, n);
        }
        return id;
    };
    repo.record_run_outcome(run.id, "trained", None, None, now)
        .await
        .unwrap();
    app.publish(id, 2_500_000_000, now).await;
    assert!(repo.record_instance_gone(run.id, cost, now).await.unwrap());
    id
}

/// The money and cleanup monitors: a month whose one completed LoRA cost $3 (above $2.50 on
/// average), 2.5 GB of stored files at the default $0.023/GB-month against a $0.01 limit, and a
/// run whose instance would not end after 3 tries: each alerted once, not again within the
/// cooldown, and again once it has passed.
async fn money_monitors_story(engine: Engine) {
    let app = spawn_app_with(engine, |_| {}).await;
    let user = app.user();
    let dataset = app.dataset(&user).await;
    let priced = app.create_ok(&user, "Priced", &dataset).await;
    one_run(&app, &priced, Some(MicroUsd::from_dollars(3))).await;
    let stuck = app.create_ok(&user, "Stuck", &dataset).await;
    one_run(&app, &stuck, None).await;
    let settings = MonitorSettings {
        max_storage_cost: MicroUsd(10_000),
        ..settings()
    };

    let money = ["cost_per_lora", "failed_cleanup", "storage_cost"];
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert!(r.errors.is_empty(), "{r:?}");
    let mut kinds: Vec<&str> = r
        .new_kinds()
        .into_iter()
        .filter(|k| money.contains(k))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, money, "{r:?}");

    // Within the cooldown: seen again (counted), not new.
    app.clock.advance(Span::seconds(600));
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    assert!(r.new_kinds().iter().all(|k| !money.contains(k)), "{r:?}");
    for k in money {
        assert!(
            r.raised.iter().any(|(kind, _, new)| kind == k && !new),
            "{k} not seen again: {r:?}"
        );
    }

    // Past the cooldown (6 h in `settings`): alerted anew.
    app.clock.advance(Span::seconds(6 * 3600));
    let r = run_monitors(app.repo.as_ref(), &settings, app.clock.now()).await;
    let mut kinds: Vec<&str> = r
        .new_kinds()
        .into_iter()
        .filter(|k| money.contains(k))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, money, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_and_cleanup_monitors_fire_once_per_cooldown_sqlite() {
    money_monitors_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_and_cleanup_monitors_fire_once_per_cooldown_postgres() {
    money_monitors_story(Engine::Postgres).await;
}

#[tokio::test]
async fn the_archival_review_lists_old_loras_and_records_approvals() {
    use loraforge_db::TrainedFiles;
    use serde_json::{Value, json};

    let app = spawn_app().await;
    let user = app.user();
    let admin = app.user_with(Some("ops@example.com".into()), true);
    let ds = app.dataset(&user).await;
    let old = app.create_ok(&user, "Old one", &ds).await;
    let old: LoraId = old.parse().unwrap();
    let now = app.clock.now();
    for (ev, detail) in [
        (StatusEvent::Enqueue, EventDetail::default()),
        (StatusEvent::Start, EventDetail::default()),
        (
            StatusEvent::BeginValidation,
            EventDetail {
                outputs: Some(TrainedFiles {
                    storage_key: format!("lora-models/{}/{old}/model.safetensors", user.id),
                    file_size: 2_000_000_000,
                    sha256: None,
                    validation_image_keys: vec![],
                }),
                ..EventDetail::default()
            },
        ),
        (StatusEvent::Complete, EventDetail::default()),
    ] {
        app.repo.apply_event(old, ev, detail, now).await.unwrap();
    }

    assert_eq!(
        app.get(&user, "/api/v1/admin/archival-review")
            .await
            .status(),
        403
    );
    // Not 6 months old yet.
    let r: Value = app
        .get(&admin, "/api/v1/admin/archival-review")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["candidates"], json!([]));
    assert!(r["basis"].as_str().unwrap().contains("not tracked"));

    app.clock.advance(Span::days(200));
    let r: Value = app
        .get(&admin, "/api/v1/admin/archival-review")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["candidates"][0]["lora_id"], old.to_string());
    assert_eq!(r["candidates"][0]["stored_bytes"], 2_000_000_000u64);
    // 2 GB at $0.023 per GB-month.
    assert_eq!(r["candidates"][0]["monthly_cost"]["micro_usd"], 46_000);
    assert!(r["candidates"][0]["approved_at"].is_null());
    assert_eq!(r["total_bytes"], 2_000_000_000u64);

    let r = app
        .post_json(
            &admin,
            "/api/v1/admin/archival-review",
            &json!({"lora_ids": [old.to_string(), LoraId::new().to_string(), "nope"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["approved"], json!([old.to_string()]));
    assert_eq!(body["unknown"].as_array().unwrap().len(), 2);
    let r: Value = app
        .get(&admin, "/api/v1/admin/archival-review")
        .await
        .json()
        .await
        .unwrap();
    assert!(r["candidates"][0]["approved_at"].is_string());
    // Nothing moved: the LoRA is still completed with its file.
    let lora = app.repo.get_lora(old).await.unwrap().unwrap();
    assert_eq!(lora.status, TrainingStatus::Completed);
    let e = error_of(
        app.post_json(&admin, "/api/v1/admin/archival-review", &json!({"ids": []}))
            .await,
        422,
    )
    .await;
    assert_eq!(e["code"], "invalid_archival_approval");
}

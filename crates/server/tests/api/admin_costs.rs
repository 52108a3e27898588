//! `GET`/`PUT /api/v1/admin/budget` and `GET /api/v1/admin/stats`: every amount is a sum of the
//! cost ledger; admins see and set the budget (stored, so every replica's engine reads it), and
//! the month's overview. The maintenance loop's storage accrual writes each LoRA's month once.

use serde_json::{Value, json};

use loraforge_db::EventDetail;
use loraforge_db::ledger::NewCostEntry;
use loraforge_domain::budget::{CostKind, month_key};
use loraforge_domain::{Clock, LoraId, MicroUsd, StatusEvent, UserId};
use loraforge_server::storage_accrual::accrue_storage;

use crate::helpers::*;

async fn put_budget(app: &TestApp, user: &User, body: &Value) -> reqwest::Response {
    app.http
        .put(app.url("/api/v1/admin/budget"))
        .bearer_auth(&user.token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A LoRA of `user` taken to `completed` with a 2.5 GB model file, as the engine would.
async fn completed_lora(app: &TestApp, user: &User) -> LoraId {
    let ds = app.dataset(user).await;
    let id: LoraId = app.create_ok(user, "Priced", &ds).await.parse().unwrap();
    let now = app.clock.now();
    let repo = &app.repo;
    repo.apply_event(id, StatusEvent::Enqueue, EventDetail::default(), now)
        .await
        .unwrap();
    let job = repo
        .claim_next_job("e1", 9, now + chrono::Duration::minutes(5), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.lora.id, id);
    app.publish(id, 2_500_000_000, now).await;
    id
}

fn gpu(lora: LoraId, user: UserId, backend: &str, dollars: i64, key: &str) -> NewCostEntry {
    NewCostEntry {
        lora_id: lora,
        user_id: user,
        backend: Some(backend.into()),
        kind: CostKind::Gpu,
        month: month_key(start_time()),
        amount: MicroUsd::from_dollars(dollars),
        run_id: None,
        idempotency_key: key.into(),
        created_at: start_time(),
    }
}

#[tokio::test]
async fn admins_see_and_set_the_budget_from_the_ledger() {
    let app = spawn_app().await;
    let user = app.user();
    let admin = app.user_with(Some("ops@example.com".into()), true);

    for path in ["/api/v1/admin/budget", "/api/v1/admin/stats"] {
        error_of(app.get(&user, path).await, 403).await;
    }
    error_of(
        put_budget(&app, &user, &json!({"monthly_budget_usd": "1"})).await,
        403,
    )
    .await;

    let r = app.get(&admin, "/api/v1/admin/budget").await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["month"], "2026-11");
    assert_eq!(b["budget"]["micro_usd"], 200_000_000);
    assert_eq!(b["budget"]["display"], "$200");
    assert_eq!(b["spent"]["micro_usd"], 0);
    assert_eq!(b["percent_used"], "0.00");
    assert_eq!(b["overridden"], false);
    assert_eq!(b["exhausted"], false);
    assert_eq!(b["alert_percent"], 75);
    assert_eq!(b["resets_at"], "2026-12-01T00:00:00Z");

    // $51 of GPU time this month: 25.5 % used.
    let lora = completed_lora(&app, &user).await;
    assert!(
        app.repo
            .insert_cost_entry(&gpu(lora, user.id, "runpod", 50, "gpu:a"))
            .await
            .unwrap()
    );
    assert!(
        app.repo
            .insert_cost_entry(&gpu(lora, user.id, "docker", 1, "gpu:b"))
            .await
            .unwrap()
    );
    let b: Value = app
        .get(&admin, "/api/v1/admin/budget")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["spent"]["micro_usd"], 51_000_000);
    assert_eq!(b["left"]["micro_usd"], 149_000_000);
    assert_eq!(b["percent_used"], "25.50");

    // An admin sets it as text or as a number; bad values are 422 with a stable code.
    let r = put_budget(&app, &admin, &json!({"monthly_budget_usd": "350.00"})).await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["budget"]["micro_usd"], 350_000_000);
    assert_eq!(b["overridden"], true);
    assert_eq!(
        app.repo.budget_override().await.unwrap(),
        Some(MicroUsd::from_dollars(350)),
        "stored for every replica"
    );
    let b: Value = put_budget(&app, &admin, &json!({"monthly_budget_usd": 40}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["budget"]["micro_usd"], 40_000_000);
    assert_eq!(b["exhausted"], true, "$51 of $40");
    assert_eq!(b["left"]["micro_usd"], 0);
    for bad in [
        json!({"monthly_budget_usd": "-1"}),
        json!({"monthly_budget_usd": "lots"}),
        json!({"monthly_budget_usd": true}),
        json!({"monthly_budget_usd": "99999999999"}),
        json!({}),
        json!({"monthly_budget_usd": "1", "extra": 1}),
    ] {
        let e = error_of(put_budget(&app, &admin, &bad).await, 422).await;
        assert_eq!(e["code"], "invalid_budget", "{bad}");
    }
    assert_eq!(
        app.repo.budget_override().await.unwrap(),
        Some(MicroUsd::from_dollars(40)),
        "a refused body changes nothing"
    );

    // Storage: the month of a 2.5 GB file at $0.023/GB is $0.0575, written once.
    let price = MicroUsd::parse_dollars("0.023").unwrap();
    let now = app.clock.now();
    let first = accrue_storage(&*app.repo, price, "2026-11", now)
        .await
        .unwrap();
    assert_eq!((first.charged, first.amount), (1, MicroUsd(57_500)));
    let again = accrue_storage(&*app.repo, price, "2026-11", now)
        .await
        .unwrap();
    assert_eq!(again.charged, 0, "idempotent by its key");

    // The overview.
    let r = app.get(&admin, "/api/v1/admin/stats").await;
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["month"], "2026-11");
    assert_eq!(s["spend"]["micro_usd"], 51_057_500);
    assert_eq!(
        s["spend_by_backend"],
        json!([
            {"name": null, "amount": {"micro_usd": 57_500, "display": "$0.0575"}},
            {"name": "docker", "amount": {"micro_usd": 1_000_000, "display": "$1"}},
            {"name": "runpod", "amount": {"micro_usd": 50_000_000, "display": "$50"}},
        ])
    );
    assert_eq!(
        s["spend_by_kind"],
        json!([
            {"name": "gpu", "amount": {"micro_usd": 51_000_000, "display": "$51"}},
            {"name": "storage", "amount": {"micro_usd": 57_500, "display": "$0.0575"}},
        ])
    );
    assert_eq!(s["budget"]["budget"]["micro_usd"], 40_000_000);
    assert_eq!(
        (s["completed"].clone(), s["failed"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(s["success_rate_percent"], "100.00");
    assert_eq!(
        s["loras_per_user"],
        json!([{"user_id": user.id.to_string(), "loras": 1}])
    );
    assert_eq!(s["total_uses"], 0);
    assert_eq!(s["most_used"], json!([]));
    assert_eq!(s["open_alerts"], 0);
}

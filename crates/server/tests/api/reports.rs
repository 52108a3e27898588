//! Content moderation end to end on both databases: reports, the admin queue, hiding (gone from
//! the library, search and every public page for others; still there for its owner, with the
//! reason), unhiding, dismissing, the `lora_reported` alert, and the errors. The library cache is
//! on (60 s) so a hide is seen to take effect for the very next listing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn names(app: &TestApp, u: &User, query: &str) -> Vec<String> {
    let resp = app.get(u, &format!("/api/v1/lora-models{query}")).await;
    assert_eq!(resp.status(), 200, "{query}");
    let body: Value = resp.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn report(app: &TestApp, u: &User, id: &str, body: Value) -> reqwest::Response {
    app.post_json(u, &format!("/api/v1/lora-models/{id}/reports"), &body)
        .await
}

async fn reported_alerts(app: &TestApp, subject: &str) -> usize {
    app.repo
        .alerts(100)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.kind == "lora_reported" && a.subject == subject)
        .count()
}

async fn moderation_story(engine: Engine) {
    let app = spawn_app_with(engine, |s| {
        s.library_cache_ttl = Duration::from_secs(60);
        s.limits.creates_per_minute = 0;
    })
    .await;
    let owner = app.user();
    let (r1, r2, r3, stranger) = (app.user(), app.user(), app.user(), app.user());
    let admin = app.user_with(Some("admin@example.com".into()), true);
    let ds = app.dataset(&owner).await;
    let shady = app.create_ok(&owner, "Shady Cat", &ds).await;
    // Distinct creation times, so "recent first" has one answer.
    app.clock.advance(chrono::Duration::seconds(1));
    let _nice = app.create_ok(&owner, "Nice Dog", &ds).await;
    assert_eq!(names(&app, &stranger, "").await, ["Nice Dog", "Shady Cat"]);
    assert_eq!(names(&app, &stranger, "?search=shady").await, ["Shady Cat"]);

    // Bad reports.
    let e = error_of(
        report(&app, &r1, &shady, json!({"reason": "nsfw"})).await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_reason");
    assert!(
        e["allowed"]
            .as_array()
            .unwrap()
            .contains(&json!("copyright"))
    );
    let e = error_of(
        report(&app, &r1, &shady, json!({"reason": "other"})).await,
        400,
    )
    .await;
    assert_eq!(e["code"], "details_required");
    let long = "x".repeat(1001);
    let e = error_of(
        report(
            &app,
            &r1,
            &shady,
            json!({"reason": "spam", "details": long}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_details");
    let e = error_of(report(&app, &r1, &shady, json!({"why": "spam"})).await, 400).await;
    assert_eq!(e["code"], "invalid_request");
    let e = error_of(
        report(&app, &owner, &shady, json!({"reason": "spam"})).await,
        400,
    )
    .await;
    assert_eq!(e["code"], "own_lora");
    let missing = loraforge_domain::LoraId::new().to_string();
    error_of(
        report(&app, &r1, &missing, json!({"reason": "spam"})).await,
        404,
    )
    .await;

    // Three reports; a second one by the same person while open is 409.
    let resp = report(
        &app,
        &r1,
        &shady,
        json!({"reason": "other", "details": "  uses my\r\nface  "}),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let first: Value = resp.json().await.unwrap();
    assert_eq!(first["reason"], "other");
    assert_eq!(first["details"], "uses my\nface", "details are cleaned");
    assert_eq!(first["status"], "open");
    let e = error_of(
        report(&app, &r1, &shady, json!({"reason": "spam"})).await,
        409,
    )
    .await;
    assert_eq!(e["code"], "already_reported");
    assert_eq!(e["report_id"], first["id"]);
    assert_eq!(
        report(&app, &r2, &shady, json!({"reason": "impersonation"}))
            .await
            .status(),
        201
    );
    assert_eq!(reported_alerts(&app, &shady).await, 0, "2 < 3 open reports");
    assert_eq!(
        report(
            &app,
            &r3,
            &shady,
            json!({"reason": "copyright", "details": "mine"})
        )
        .await
        .status(),
        201
    );
    assert_eq!(
        reported_alerts(&app, &shady).await,
        1,
        "the third raises the alert"
    );

    // The admin queue.
    let e = error_of(app.get(&r1, "/api/v1/admin/reports").await, 403).await;
    assert_eq!(e["code"], "forbidden");
    error_of(
        app.get(&admin, "/api/v1/admin/reports?status=closed").await,
        400,
    )
    .await;
    let queue: Value = app
        .get(&admin, "/api/v1/admin/reports")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["total"], 3);
    let item = &queue["items"][0];
    assert_eq!(item["report"]["id"], first["id"], "oldest first");
    assert_eq!(item["lora"]["name"], "Shady Cat");
    assert_eq!(item["lora"]["creator"]["id"], owner.id.to_string());
    assert_eq!(item["lora"]["open_reports"], 3);
    assert_eq!(item["lora"]["hidden"], Value::Null);

    // Hide: only admins; a reason is required.
    let hide = format!("/api/v1/admin/lora-models/{shady}/hide");
    let e = error_of(
        app.post_json(&r1, &hide, &json!({"reason": "x"})).await,
        403,
    )
    .await;
    assert_eq!(e["code"], "forbidden");
    let e = error_of(
        app.post_json(&admin, &hide, &json!({"reason": " "})).await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_reason");
    let resp = app
        .post_json(
            &admin,
            &hide,
            &json!({"reason": "Impersonates a real person"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let hidden: Value = resp.json().await.unwrap();
    assert_eq!(hidden["resolved_reports"], 3);
    assert_eq!(hidden["hidden"]["reason"], "Impersonates a real person");

    // Gone for others at once (the cache was warm), from listing, search and every page.
    assert_eq!(names(&app, &stranger, "").await, ["Nice Dog"]);
    assert!(names(&app, &stranger, "?search=shady").await.is_empty());
    assert_eq!(names(&app, &stranger, "?sort=popular").await, ["Nice Dog"]);
    assert_eq!(
        names(&app, &stranger, &format!("?creator={}", owner.id)).await,
        ["Nice Dog"],
        "another user naming the owner does not see it"
    );
    for path in ["", "/status", "/events"] {
        let e = error_of(
            app.get(&stranger, &format!("/api/v1/lora-models/{shady}{path}"))
                .await,
            404,
        )
        .await;
        assert_eq!(e["code"], "not_found", "{path}");
    }
    error_of(
        report(&app, &stranger, &shady, json!({"reason": "spam"})).await,
        404,
    )
    .await;
    let e = error_of(
        app.get(&stranger, "/api/v1/lora-models?include_hidden=true")
            .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "forbidden");

    // Its owner still sees it, with why; admins too.
    let mine: Value = app
        .get(&owner, &format!("/api/v1/lora-models?creator={}", owner.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["total"], 2);
    let listed = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "Shady Cat")
        .expect("the owner's listing has it");
    assert_eq!(listed["hidden"]["reason"], "Impersonates a real person");
    let page: Value = app
        .get(&owner, &format!("/api/v1/lora-models/{shady}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["hidden"]["reason"], "Impersonates a real person");
    assert_eq!(
        app.get(&owner, &format!("/api/v1/lora-models/{shady}/status"))
            .await
            .status(),
        200
    );
    assert_eq!(
        names(&app, &admin, "?include_hidden=true").await,
        ["Nice Dog", "Shady Cat"]
    );
    assert_eq!(
        app.get(&admin, &format!("/api/v1/lora-models/{shady}"))
            .await
            .status(),
        200
    );

    // Hiding again keeps the first hide; the reports are resolved `hidden`.
    let again: Value = app
        .post_json(&admin, &hide, &json!({"reason": "second thoughts"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["hidden"], hidden["hidden"]);
    assert_eq!(again["resolved_reports"], 0);
    let done: Value = app
        .get(&admin, "/api/v1/admin/reports?status=resolved")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["total"], 3);
    assert!(
        done["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["report"]["resolution"] == "hidden"
                && i["report"]["resolved_by"] == admin.id.to_string())
    );
    let open: Value = app
        .get(&admin, "/api/v1/admin/reports")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(open["total"], 0);

    // Unhide: back for everyone.
    let unhide = format!("/api/v1/admin/lora-models/{shady}/unhide");
    error_of(app.post_json(&r1, &unhide, &json!({})).await, 403).await;
    let resp = app.post_json(&admin, &unhide, &json!({})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["hidden"], Value::Null);
    assert_eq!(names(&app, &stranger, "").await, ["Nice Dog", "Shady Cat"]);
    assert_eq!(names(&app, &stranger, "?search=shady").await, ["Shady Cat"]);
    let page: Value = app
        .get(&stranger, &format!("/api/v1/lora-models/{shady}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(page.get("hidden").is_none(), "{page}");

    // Dismiss: r1 may report again now that the first report is resolved.
    let resp = report(&app, &r1, &shady, json!({"reason": "spam"})).await;
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let dismiss = format!("/api/v1/admin/reports/{id}/dismiss");
    error_of(app.post_json(&r2, &dismiss, &json!({})).await, 403).await;
    let dismissed: Value = app
        .post_json(&admin, &dismiss, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dismissed["resolution"], "dismissed");
    assert_eq!(dismissed["status"], "resolved");
    let twice: Value = app
        .post_json(&admin, &dismiss, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(twice, dismissed, "dismissing twice changes nothing");
    error_of(
        app.post_json(&admin, "/api/v1/admin/reports/987654/dismiss", &json!({}))
            .await,
        404,
    )
    .await;
    let e = error_of(
        app.post_json(&admin, "/api/v1/admin/reports/abc/dismiss", &json!({}))
            .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_path");
    assert_eq!(names(&app, &stranger, "").await, ["Nice Dog", "Shady Cat"]);
    error_of(
        app.post_json(
            &admin,
            &format!(
                "/api/v1/admin/lora-models/{}/hide",
                loraforge_domain::LoraId::new()
            ),
            &json!({"reason": "x"}),
        )
        .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn moderation_on_sqlite() {
    moderation_story(Engine::Sqlite).await;
}

#[tokio::test]
async fn moderation_on_postgres() {
    moderation_story(Engine::Postgres).await;
}

#[tokio::test]
async fn reports_are_rate_limited_per_user() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.moderation.reports_per_minute = 2;
        s.limits.creates_per_minute = 0;
    })
    .await;
    let owner = app.user();
    let ds = app.dataset(&owner).await;
    let ids = [
        app.create_ok(&owner, "One", &ds).await,
        app.create_ok(&owner, "Two", &ds).await,
        app.create_ok(&owner, "Three", &ds).await,
    ];
    let (busy, other) = (app.user(), app.user());
    for id in &ids[..2] {
        assert_eq!(
            report(&app, &busy, id, json!({"reason": "spam"}))
                .await
                .status(),
            201
        );
    }
    let resp = report(&app, &busy, &ids[2], json!({"reason": "spam"})).await;
    assert!(resp.headers().contains_key("retry-after"));
    let e = error_of(resp, 429).await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(
        report(&app, &other, &ids[2], json!({"reason": "spam"}))
            .await
            .status(),
        201,
        "each user has their own budget"
    );
    app.clock.advance(chrono::Duration::seconds(31));
    assert_eq!(
        report(&app, &busy, &ids[2], json!({"reason": "spam"}))
            .await
            .status(),
        201,
        "a token is back after 30 s"
    );
}

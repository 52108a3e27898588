use serde_json::{Value, json};

use loraforge_db::EventDetail;
use loraforge_domain::{Clock, LoraId, StatusEvent};

use crate::helpers::*;

async fn names(app: &TestApp, u: &User, query: &str) -> (Vec<String>, u64) {
    let resp = app.get(u, &format!("/api/v1/lora-models{query}")).await;
    assert_eq!(resp.status(), 200, "{query}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["total_exact"],
        Value::Bool(true),
        "a small library's totals are exact: {query}"
    );
    let names = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    (names, body["total"].as_u64().unwrap())
}

#[tokio::test]
async fn the_library_lists_every_users_loras_with_search_filters_sorts_and_pages() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.limits.creates_per_minute = 0;
        s.limits.monthly_loras = 100;
    })
    .await;
    let alice = app.user_with(Some("alice@example.com".into()), false);
    let bob = app.user_with(None, false);
    let (da, db) = (app.dataset(&alice).await, app.dataset(&bob).await);
    let mk = |u: &User, ds: &str, name: &str, desc: &str| {
        let body = json!({"name": name, "description": desc, "dataset_id": ds});
        let (app, u) = (&app, u.clone());
        async move {
            let r = app.post_json(&u, "/api/v1/lora-models", &body).await;
            assert_eq!(r.status(), 202);
            app.clock.advance(chrono::Duration::seconds(1));
            r.json::<Value>().await.unwrap()["lora_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let girl = mk(&alice, &da, "Cyberpunk Girl", "neon city runner").await;
    let knight = mk(&alice, &da, "Cat Knight", "a brave cat in armour").await;
    let _robot = mk(&bob, &db, "Retro Robot", "chrome, cyberpunk vibes").await;
    let _zebra = mk(&bob, &db, "zebra", "").await;

    let (all, total) = names(&app, &bob, "").await;
    assert_eq!(total, 4);
    assert_eq!(
        all,
        ["zebra", "Retro Robot", "Cat Knight", "Cyberpunk Girl"],
        "recent first by default"
    );

    let (found, total) = names(&app, &bob, "?search=CYBER").await;
    assert_eq!(total, 2);
    assert_eq!(
        found,
        ["Retro Robot", "Cyberpunk Girl"],
        "prefix, case-insensitive, name or description"
    );
    assert_eq!(names(&app, &bob, "?search=brave%20cat").await.1, 1);
    assert_eq!(names(&app, &bob, "?search=brave%20dog").await.1, 0);
    assert_eq!(
        names(&app, &bob, "?search=%22%20OR%201%3D1%20--").await.1,
        0,
        "hostile input is only text"
    );

    let (by_name, _) = names(&app, &bob, "?sort=name").await;
    assert_eq!(
        by_name,
        ["Cat Knight", "Cyberpunk Girl", "Retro Robot", "zebra"]
    );

    let (mine, total) = names(&app, &bob, &format!("?creator={}", alice.id)).await;
    assert_eq!((mine.len(), total), (2, 2));

    let (page, total) = names(&app, &bob, "?sort=name&limit=2&offset=1").await;
    assert_eq!(
        (page, total),
        (
            vec!["Cyberpunk Girl".to_owned(), "Retro Robot".to_owned()],
            4
        )
    );

    // Status filter.
    app.post_json(
        &alice,
        &format!("/api/v1/lora-models/{knight}/cancel"),
        &json!({}),
    )
    .await;
    let (cancelled, _) = names(&app, &bob, "?status=cancelled").await;
    assert_eq!(cancelled, ["Cat Knight"]);
    let now = app.clock.now();
    let gid: LoraId = girl.parse().unwrap();
    app.repo
        .apply_event(gid, StatusEvent::Fail, EventDetail::default(), now)
        .await
        .unwrap();
    assert_eq!(
        names(&app, &bob, "?status=failed").await.0,
        ["Cyberpunk Girl"]
    );

    // Creator display.
    let body: Value = app
        .get(&bob, "/api/v1/lora-models?sort=name&limit=1")
        .await
        .json()
        .await
        .unwrap();
    // E-mails are private by default: a masked default name, no address.
    assert_eq!(body["items"][0]["creator"]["display_name"], "a***@e***.com");
    assert_eq!(body["items"][0]["creator"]["email"], Value::Null);
    assert_eq!(body["items"][0]["creator"]["id"], alice.id.to_string());
    assert_eq!(body["limit"], 1);
    assert_eq!(body["offset"], 0);
    assert!(body["items"][0]["usage_count"].is_u64());
}

#[tokio::test]
async fn bad_list_queries_are_400_invalid_query() {
    let app = spawn_app().await;
    let u = app.user();
    for q in [
        "?limit=0",
        "?limit=101",
        "?limit=abc",
        "?sort=best",
        "?status=running",
        "?creator=bob",
        "?offset=-1",
    ] {
        let e = error_of(app.get(&u, &format!("/api/v1/lora-models{q}")).await, 400).await;
        assert_eq!(e["code"], "invalid_query", "{q}");
    }
    let body: Value = app
        .get(&u, "/api/v1/lora-models")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["limit"], 50);
}

#[tokio::test]
async fn cached_listings_follow_local_changes_at_once_and_other_replicas_within_the_ttl() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.library_cache_ttl = std::time::Duration::from_secs(1);
        s.limits.creates_per_minute = 0;
    })
    .await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let first = app.create_ok(&u, "first", &ds).await;
    assert_eq!(names(&app, &u, "?sort=name").await.0, ["first"]);
    // A change through this server shows immediately.
    app.create_ok(&u, "second", &ds).await;
    assert_eq!(names(&app, &u, "?sort=name").await.0, ["first", "second"]);
    // A change made elsewhere (straight into the database, as another replica would) shows
    // once the TTL has passed, not before.
    let id: LoraId = first.parse().unwrap();
    let now = app.clock.now();
    app.repo
        .apply_event(id, StatusEvent::Cancel, EventDetail::default(), now)
        .await
        .unwrap();
    let body: Value = app
        .get(&u, "/api/v1/lora-models?sort=name")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["items"][0]["training_status"], "pending",
        "served from the cache"
    );
    app.clock.advance(chrono::Duration::milliseconds(1000));
    let body: Value = app
        .get(&u, "/api/v1/lora-models?sort=name")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"][0]["training_status"], "cancelled");
}

#[tokio::test]
async fn the_library_index_shows_local_changes_at_once_and_other_replicas_within_its_lag() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let app = spawn_app_with(engine, |s| {
            s.library_index_lag = Some(std::time::Duration::from_secs(1));
            s.limits.creates_per_minute = 0;
        })
        .await;
        let index = app.state.library_index().expect("on by default");
        let u = app.user();
        let ds = app.dataset(&u).await;
        let first = app.create_ok(&u, "first", &ds).await;
        // The server loads the index in the background as it starts; listings answer from the
        // database until it is loaded.
        for _ in 0..200 {
            assert_eq!(names(&app, &u, "?sort=name").await.0, ["first"]);
            if index.len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert_eq!(index.len(), 1, "{engine:?}: the index loaded");
        // A change through this server shows at once.
        app.create_ok(&u, "second", &ds).await;
        assert_eq!(
            names(&app, &u, "?sort=name&search=s").await.0,
            ["second"],
            "{engine:?}"
        );
        // A change made elsewhere (straight into the database, as another replica would) shows
        // once the lag has passed, not before: until then the index answers as it stands.
        let id: LoraId = first.parse().unwrap();
        app.repo
            .apply_event(
                id,
                StatusEvent::Cancel,
                EventDetail::default(),
                app.clock.now(),
            )
            .await
            .unwrap();
        let status = |body: Value| body["items"][0]["training_status"].clone();
        let get = || async {
            app.get(&u, "/api/v1/lora-models?sort=name&search=fir")
                .await
                .json::<Value>()
                .await
                .unwrap()
        };
        assert_eq!(status(get().await), "pending", "{engine:?}: from the index");
        app.clock.advance(chrono::Duration::milliseconds(1000));
        assert_eq!(status(get().await), "cancelled", "{engine:?}");
        assert_eq!(index.len(), 2);
    }
}

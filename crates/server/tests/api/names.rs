//! `GET /api/v1/lora-names/check`: the as-you-type name check agrees with what the create does.

use serde_json::Value;

use crate::helpers::{Engine, error_of, spawn_app_with};

async fn check(app: &crate::helpers::TestApp, user: &crate::helpers::User, name: &str) -> Value {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("name", name)
        .finish();
    let resp = app
        .get(user, &format!("/api/v1/lora-names/check?{q}"))
        .await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn story(engine: Engine) {
    let app = spawn_app_with(engine, |_| {}).await;
    let me = app.user();
    let other = app.user();

    let fresh = check(&app, &me, "  Cyberpunk   Girl ").await;
    assert_eq!(fresh["name"], "Cyberpunk Girl", "{fresh}");
    assert_eq!(fresh["valid"], true);
    assert_eq!(fresh["yours"], false);
    assert_eq!(fresh["others"], 0);
    assert!(fresh.get("problem").is_none(), "{fresh}");

    // Another user's LoRA of that name: allowed, counted.
    let ds = app.dataset(&other).await;
    app.create_ok(&other, "Cyberpunk Girl", &ds).await;
    let theirs = check(&app, &me, "CYBERPUNK GIRL").await;
    assert_eq!(
        (theirs["yours"].clone(), theirs["others"].clone()),
        (false.into(), 1.into())
    );

    // Mine: the check says so, and the create agrees (409 duplicate_name).
    let ds = app.dataset(&me).await;
    app.create_ok(&me, "cyberpunk girl", &ds).await;
    let mine = check(&app, &me, "Ｃｙｂｅｒｐｕｎｋ Girl").await;
    assert_eq!(mine["yours"], true, "{mine}");
    assert_eq!(mine["others"], 1);
    let again = app.create_lora(&me, "Ｃｙｂｅｒｐｕｎｋ Girl", &ds).await;
    assert_eq!(error_of(again, 409).await["code"], "duplicate_name");

    // Invalid names carry the create's code and reason, and are not looked up.
    let empty = check(&app, &me, "   ").await;
    assert_eq!(empty["valid"], false);
    assert_eq!(empty["problem"]["code"], "invalid_name");
    assert_eq!(empty["problem"]["reason"], "empty");
    let long = check(&app, &me, &"x".repeat(256)).await;
    assert_eq!(long["problem"]["reason"], "too_long", "{long}");
    let huge = check(&app, &me, &"y".repeat(10_000)).await;
    assert_eq!(huge["problem"]["reason"], "too_long");
    assert!(huge["name"].as_str().unwrap().len() <= 300 * 4);
    let bidi = check(&app, &me, "evil\u{202e}name").await;
    assert_eq!(bidi["problem"]["reason"], "bidi_control", "{bidi}");

    // No name at all: 400 with a hint; no token: 401.
    let resp = app.get(&me, "/api/v1/lora-names/check").await;
    assert_eq!(error_of(resp, 400).await["code"], "invalid_query");
    let resp = app
        .http
        .get(app.url("/api/v1/lora-names/check?name=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn the_name_check_agrees_with_the_create_on_sqlite() {
    story(Engine::Sqlite).await;
}

#[tokio::test]
async fn the_name_check_agrees_with_the_create_on_postgres() {
    story(Engine::Postgres).await;
}

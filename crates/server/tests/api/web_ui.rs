//! The web UI's files (`routes/ui.rs`), its one-click local sign-in (`routes/auth_local.rs`), the
//! parameter ranges its form reads (`routes/params.rs`), and what its pages show: the admin's
//! review queue (`awaiting_review=true`) and a LoRA's validation images with their scores; and,
//! from the same asset table, `/ui/lora-selector.js` and `/ui/selector-demo.html`: served with
//! the content types browsers need for a module script, loadable from any origin, and the API's
//! CORS as configured (the browser test `crates/cli/tests/lora_selector.rs` runs the element
//! itself).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};

use loraforge_db::{EventDetail, TrainedFiles};
use loraforge_domain::keys::OutputKeys;
use loraforge_domain::validation::{AWAITING_REVIEW, ValidationScores};
use loraforge_domain::{Clock, LoraId, Progress, StatusEvent, UserId};
use loraforge_server::LocalSignIn;

use crate::helpers::{Engine, TestApp, User, error_of, noise_png, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_shell_and_its_files_are_served_with_etags_and_a_strict_policy() {
    let app = spawn_app().await;
    let index = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(index.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(index.headers()[CACHE_CONTROL], "no-cache");
    let csp = index.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    let etag = index.headers()[ETAG].clone();
    assert!(
        etag.to_str().unwrap().starts_with('"'),
        "a strong ETag: {etag:?}"
    );
    let body = index.text().await.unwrap();
    assert!(body.contains("/ui/app.js"), "{body}");

    // Unchanged: 304 with the same ETag and no body.
    let again = app
        .http
        .get(app.url("/"))
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[ETAG], etag);
    assert!(again.bytes().await.unwrap().is_empty());

    let js = app.http.get(app.url("/ui/app.js")).send().await.unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert_eq!(js.headers()[CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(js.headers().get(CONTENT_SECURITY_POLICY).is_none());
    assert_ne!(js.headers()[ETAG], etag, "each file its own ETag");

    for missing in ["/ui/nope.js", "/ui/..%2FCargo.toml", "/ui/"] {
        let r = app.http.get(app.url(missing)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{missing}: {v}");
    }
}

#[tokio::test]
async fn local_sign_in_is_offered_only_when_the_composition_root_allows_it() {
    // Off (a configured secret, or a non-loopback bind): not offered, and POST is a 404.
    let app = spawn_app().await;
    let v: Value = app
        .http
        .get(app.url("/api/v1/auth/local"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["available"], false);
    let r = app
        .http
        .post(app.url("/api/v1/auth/local"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "local_sign_in_unavailable");

    let admin = UserId(uuid::Uuid::from_u128(7));
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.ui.local_sign_in = Some(LocalSignIn {
            user: admin,
            email: "admin@localhost".into(),
            ttl: Duration::from_secs(3600),
        });
    })
    .await;
    let v: Value = app
        .http
        .get(app.url("/api/v1/auth/local"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["available"], true);
    // Another site's page in the same browser is a loopback peer too: refused.
    let r = app
        .http
        .post(app.url("/api/v1/auth/local"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A DNS name rebound to 127.0.0.1: not a loopback Host, not offered.
    let r = app
        .http
        .post(app.url("/api/v1/auth/local"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = app
        .http
        .post(app.url("/api/v1/auth/local"))
        .header("origin", app.base.clone())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["user_id"], admin.0.to_string());
    let token = v["token"].as_str().unwrap();
    // The token is an admin's and works on the API.
    let me: Value = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], admin.0.to_string(), "{me}");
    let backends = app
        .http
        .get(app.url("/api/v1/admin/backends"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(backends.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_parameter_ranges_are_the_servers_configured_ones() {
    let app = spawn_app().await;
    let user = app.user();
    let v: Value = app.get(&user, "/api/v1/params").await.json().await.unwrap();
    let field = |name: &str| {
        v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
            .clone()
    };
    // test_settings: min_steps 1, min_resolution 64.
    assert_eq!(field("steps")["min"], 1);
    assert_eq!(field("steps")["max"], 10_000);
    assert_eq!(field("resolution")["min"], 64);
    assert_eq!(field("resolution")["multiple_of"], 64);
    assert_eq!(field("rank")["kind"], "int");
    assert_eq!(field("learning_rate")["kind"], "float");
    assert_eq!(
        field("optimizer")["allowed"],
        serde_json::json!(["adamw", "adamw_8bit"])
    );
    assert_eq!(
        field("target_modules")["allowed"].as_array().unwrap().len(),
        17
    );
    assert_eq!(v["defaults"]["rank"], 8);
    assert_eq!(v["defaults"]["steps"], 1500);
    let anonymous = app
        .http
        .get(app.url("/api/v1/params"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_selector_script_is_a_module_any_origin_may_load() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(app.url("/ui/lora-selector.js"))
        .header("origin", "https://host.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h[CACHE_CONTROL], "public, max-age=300");
    let etag = h[ETAG].clone();
    let body = resp.text().await.unwrap();
    let committed = loraforge_server::routes::ui::asset("lora-selector.js").unwrap();
    assert_eq!(body.as_bytes(), committed.bytes, "the file as committed");
    assert!(body.contains("customElements.define('lora-selector'"));
    // Revalidated like every asset: 304 with the same ETag, still loadable from anywhere.
    let again = app
        .http
        .get(app.url("/ui/lora-selector.js"))
        .header("origin", "https://host.example")
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[ETAG], etag);
    assert_eq!(again.headers()["access-control-allow-origin"], "*");
    // The app's own files are not for other sites.
    let app_js = app
        .http
        .get(app.url("/ui/app.js"))
        .header("origin", "https://host.example")
        .send()
        .await
        .unwrap();
    assert!(
        app_js
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn the_demo_page_is_html_that_loads_the_script_from_its_own_origin() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(app.url("/ui/selector-demo.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    // Its own policy: the page's inline module script runs (the app's policy forbids it).
    assert!(csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let etag = resp.headers()[ETAG].clone();
    let body = resp.text().await.unwrap();
    assert!(body.contains("<lora-selector"));
    assert!(body.contains("import './lora-selector.js'"));
    let again = app
        .http
        .get(app.url("/ui/selector-demo.html"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

/// With `cors_origins` naming the host app, the host may both load the script and call the API
/// with a bearer token (the preflight the element's requests cause is answered).
#[tokio::test]
async fn a_configured_host_origin_may_load_the_script_and_call_the_api() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.cors_origins = vec!["https://host.example".into()]
    })
    .await;
    let resp = app
        .http
        .get(app.url("/ui/lora-selector.js"))
        .header("origin", "https://host.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://host.example"
    );
    let resp = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url("/api/v1/lora-models?status=completed"),
        )
        .header("origin", "https://host.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://host.example"
    );
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
}

/// Takes a new LoRA to `validating` as a publish does (its files recorded, `scores` with them).
async fn to_validating(
    app: &TestApp,
    id: LoraId,
    keys: Vec<String>,
    scores: Option<ValidationScores>,
) {
    let now = app.clock.now();
    for event in [StatusEvent::Enqueue, StatusEvent::Start] {
        app.repo
            .apply_event(id, event, EventDetail::default(), now)
            .await
            .unwrap();
    }
    let files = TrainedFiles {
        storage_key: format!("lora-models/u/{id}/model.safetensors"),
        file_size: 1234,
        validation_image_keys: keys,

        sha256: None,
    };
    app.repo
        .apply_event(
            id,
            StatusEvent::BeginValidation,
            EventDetail {
                outputs: Some(files),
                validation_scores: scores,
                ..EventDetail::default()
            },
            now,
        )
        .await
        .unwrap();
}

async fn list(app: &TestApp, user: &User, query: &str) -> Vec<String> {
    let resp = app.get(user, &format!("/api/v1/lora-models?{query}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn the_review_queue_lists_only_loras_waiting_for_a_person(engine: Engine) {
    let app = spawn_app_with(engine, |_| {}).await;
    let user = app.user();
    let admin = app.user_with(None, true);
    let ds = app.dataset(&user).await;
    let waits: LoraId = app
        .create_ok(&user, "Waits for a look", &ds)
        .await
        .parse()
        .unwrap();
    let checking: LoraId = app
        .create_ok(&user, "Still checking", &ds)
        .await
        .parse()
        .unwrap();
    app.create_ok(&user, "Only pending", &ds).await;
    to_validating(&app, waits, Vec::new(), None).await;
    // What the engine records when no scoring model or auto-approval decides (`Settle`'s review).
    app.repo
        .record_progress(
            waits,
            &Progress {
                stage: Some(AWAITING_REVIEW.into()),
                percent: 100,
                estimated_remaining: None,
            },
            app.clock.now(),
        )
        .await
        .unwrap();
    to_validating(&app, checking, Vec::new(), None).await;

    let queue = "awaiting_review=true&include_hidden=true&sort=recent";
    assert_eq!(list(&app, &admin, queue).await, ["Waits for a look"]);
    assert_eq!(
        list(&app, &admin, &format!("{queue}&search=look")).await,
        ["Waits for a look"]
    );
    let mut validating = list(&app, &admin, "status=validating").await;
    validating.sort();
    assert_eq!(validating, ["Still checking", "Waits for a look"]);

    // One still being checked cannot be decided yet; the reason says so.
    let review = |id: LoraId| format!("/api/v1/admin/lora-models/{id}/review");
    let err = error_of(
        app.post_json(&admin, &review(checking), &json!({"decision": "approve"}))
            .await,
        409,
    )
    .await;
    assert_eq!(
        (
            err["code"].as_str(),
            err["training_status"].as_str(),
            &err["stage"]
        ),
        (Some("not_in_review"), Some("validating"), &Value::Null),
        "{err}"
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("automatic checks have not finished"),
        "{err}"
    );
    let resp = app
        .post_json(&admin, &review(waits), &json!({"decision": "approve"}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(list(&app, &admin, queue).await.is_empty());
}

#[tokio::test]
async fn the_review_queue_lists_only_loras_waiting_for_a_person_on_sqlite() {
    the_review_queue_lists_only_loras_waiting_for_a_person(Engine::Sqlite).await;
}

#[tokio::test]
async fn the_review_queue_lists_only_loras_waiting_for_a_person_on_postgres() {
    the_review_queue_lists_only_loras_waiting_for_a_person(Engine::Postgres).await;
}

#[tokio::test]
async fn a_loras_details_give_each_validation_image_its_score_and_the_threshold() {
    let app = spawn_app().await;
    let user = app.user();
    let other = app.user();
    let ds = app.dataset(&user).await;
    let id: LoraId = app.create_ok(&user, "Scored", &ds).await.parse().unwrap();
    let keys = OutputKeys::of(user.id, id).validation;
    for (i, key) in keys.iter().enumerate() {
        app.store
            .put(key, noise_png(64, 64, i as u64).into())
            .await
            .unwrap();
    }
    // Judged at 0.72, a threshold the operator may change later: the page keeps this one.
    let scores = ValidationScores {
        scores: vec![0.91, 0.72, 0.2],
        threshold: 0.72,
    };
    to_validating(&app, id, keys.clone(), Some(scores)).await;
    app.repo
        .apply_event(
            id,
            StatusEvent::Complete,
            EventDetail {
                validation_passed: Some(true),
                ..EventDetail::default()
            },
            app.clock.now(),
        )
        .await
        .unwrap();

    // Everyone who may see the LoRA sees its validation.
    let v: Value = app
        .get(&other, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let v = &v["validation"];
    assert_eq!(
        (&v["passed"], &v["threshold"], &v["required_passing"]),
        (&json!(true), &json!(0.72), &json!(2)),
        "{v}"
    );
    let images = v["images"].as_array().unwrap();
    let judged: Vec<(u64, f64, bool)> = images
        .iter()
        .map(|i| {
            (
                i["index"].as_u64().unwrap(),
                i["score"].as_f64().unwrap(),
                i["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(judged, [(0, 0.91, true), (1, 0.72, true), (2, 0.2, false)]);
    // Each URL is a working signed link to that image, and `image_urls` lists the same ones.
    for (i, img) in images.iter().enumerate() {
        let url = img["url"].as_str().unwrap();
        assert_eq!(v["image_urls"][i], url, "{v}");
        let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
        assert_eq!(body.as_ref(), noise_png(64, 64, i as u64).as_slice());
    }

    // Past 30 days the sweep deletes an image: its score stays, its link goes.
    app.store.delete(&keys[1]).await.unwrap();
    let v: Value = app
        .get(&user, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let v = &v["validation"];
    assert_eq!(
        (&v["images"][1]["url"], &v["images"][1]["score"]),
        (&Value::Null, &json!(0.72)),
        "{v}"
    );
    assert_eq!(v["image_urls"].as_array().unwrap().len(), 2, "{v}");

    // Without a scoring model: images without scores, and no threshold.
    let plain: LoraId = app.create_ok(&user, "Unscored", &ds).await.parse().unwrap();
    to_validating(&app, plain, Vec::new(), None).await;
    let v: Value = app
        .get(&user, &format!("/api/v1/lora-models/{plain}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&v["validation"]["threshold"], &v["validation"]["images"]),
        (&Value::Null, &json!([])),
        "{v}"
    );
}

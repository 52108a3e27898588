use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn healthz_and_readyz_answer_without_auth() {
    let app = spawn_app().await;
    let h: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let resp = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["database"]["ok"], true);
    assert_eq!(r["storage"]["ok"], true);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/healthz")).send().await.unwrap();
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().to_string(), id);
    // A caller's own id is kept.
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn openapi_document_lists_every_route_and_docs_are_served() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    // What is served is the generated document, with this server's limits in it.
    let generated =
        serde_json::to_value(loraforge_server::openapi::document(&app.settings)).unwrap();
    assert_eq!(doc, generated);
    assert_eq!(
        doc["components"]["schemas"]["ParamsInput"]["properties"]["steps"]["minimum"],
        json!(app.settings.param_limits.min_steps)
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/worker/jobs/{id}",
        "/api/v1/worker/jobs/{id}/result",
        "/files/{key}",
        "/healthz",
        "/readyz",
        "/api/v1/datasets",
        "/api/v1/datasets/{id}",
        "/api/v1/lora-models",
        "/api/v1/lora-models/{id}",
        "/api/v1/lora-models/{id}/status",
        "/api/v1/lora-models/{id}/events",
        "/api/v1/lora-models/{id}/cancel",
        "/api/v1/me/limits",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["worker"].is_object());
    let html = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(html.status(), 200);
    assert!(
        html.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(error_of(resp, 404).await["code"], "not_found");
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_when_configured() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.cors_origins = vec!["https://app.example".into()]
    })
    .await;
    let resp = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/lora-models"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn oversized_json_bodies_are_refused() {
    let app = spawn_app().await;
    let u = app.user();
    let big = "x".repeat(300 * 1024);
    let resp = app
        .http
        .post(app.url("/api/v1/lora-models"))
        .bearer_auth(&u.token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"{big}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp, 413).await["code"], "payload_too_large");
}

/// An engine whose status the test sets.
#[derive(Debug, Default)]
struct FakeEngine(std::sync::Mutex<loraforge_server::state::EngineStatus>);

impl loraforge_server::state::EngineProbe for FakeEngine {
    fn status(&self) -> loraforge_server::state::EngineStatus {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn readyz_reports_a_dead_or_stuck_engine_and_one_that_cannot_train() {
    use loraforge_server::state::EngineStatus;
    let app = spawn_app().await;
    let probe = std::sync::Arc::new(FakeEngine::default());
    let state = loraforge_server::AppState::new(
        app.repo.clone(),
        app.store.clone(),
        app.clock.clone(),
        loraforge_server::JwtKeys::new(&secrecy::SecretSlice::from(SECRET.to_vec())),
        app.settings.clone(),
    )
    .with_engine_probe(probe.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        loraforge_server::Application::new(state, listener)
            .run_until_stopped(std::future::pending()),
    );
    let readyz = || async {
        let resp = app.http.get(format!("{base}/readyz")).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };
    let set = |s: EngineStatus| *probe.0.lock().unwrap() = s;
    let alive = EngineStatus {
        running: true,
        last_tick_age_secs: Some(1),
        stale_after_secs: 120,
        restarts: 0,
        cannot_train: None,
    };

    set(alive.clone());
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["engine"]["ok"], true);
    assert_eq!(body["engine"]["can_train"], true);

    // Cannot train: the API still serves (200), and says why LoRAs wait.
    set(EngineStatus {
        cannot_train: Some("local: the trainer's Python environment is not set up".into()),
        ..alive.clone()
    });
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["engine"]["can_train"], false);
    assert!(
        body["engine"]["reason"]
            .as_str()
            .unwrap()
            .contains("Python environment")
    );

    // Dead (between a panic and its restart) or stuck: not ready.
    for (dead, what) in [
        (
            EngineStatus {
                running: false,
                restarts: 1,
                ..alive.clone()
            },
            "not running",
        ),
        (
            EngineStatus {
                last_tick_age_secs: Some(121),
                ..alive.clone()
            },
            "last tick too old",
        ),
    ] {
        set(dead);
        let (status, body) = readyz().await;
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(body["status"], "not_ready", "{what}");
        assert_eq!(body["engine"]["ok"], false, "{what}");
    }
}

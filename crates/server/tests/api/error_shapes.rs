//! Every error the server sends has the one shape `{"error": {"code", "message"}}`, whoever
//! produced it: our handlers, axum's extractors and method routing, the body limit.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// The error object of a response, after checking its status and that it is JSON.
async fn json_error(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{status}: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let error = body["error"].clone();
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()
            && c.chars().all(|c| c.is_ascii_lowercase() || c == '_')),
        "{body}"
    );
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let app = spawn_app().await;
    let e = json_error(
        app.http
            .get(app.url("/no/such/route"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(e["code"], "not_found");

    let resp = app
        .http
        .delete(app.url("/api/v1/lora-models"))
        .send()
        .await
        .unwrap();
    let allow = resp.headers().get("allow").cloned();
    let e = json_error(resp, 405).await;
    assert_eq!(e["code"], "method_not_allowed");
    let allow = allow.expect("a 405 keeps its Allow header");
    assert!(allow.to_str().unwrap().contains("POST"));
}

#[tokio::test]
async fn path_and_query_parse_failures_answer_json() {
    let app = spawn_app().await;
    let user = app.user();
    // Not UTF-8 once percent-decoded: axum's Path extractor refuses it before our handler.
    let e = json_error(
        app.http.get(app.url("/files/%FF%FE")).send().await.unwrap(),
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_request");
    let e = json_error(
        app.http
            .put(app.url("/files/loras/%C3%28?expires=1&sig=x"))
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_request");
    let resp = app
        .http
        .get(app.url("/api/v1/lora-models/%FF"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert!(matches!(status, 400 | 404), "{status}");
    json_error(resp, status).await;
}

#[tokio::test]
async fn bodies_too_large_or_of_the_wrong_type_answer_json() {
    let app = spawn_app().await;
    let user = app.user();
    // A JSON body over max_json_bytes.
    let big = format!(
        r#"{{"name":"x","description":"{}"}}"#,
        "a".repeat(app.settings.max_json_bytes + 10)
    );
    let e = json_error(
        app.http
            .post(app.url("/api/v1/lora-models"))
            .bearer_auth(&user.token)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(e["code"], "payload_too_large");

    // A signed upload link's body over the file limit.
    let url = app
        .store
        .signed_put_url(
            "loras/x/model.safetensors",
            Duration::from_secs(600),
            loraforge_domain::Clock::now(app.clock.as_ref()),
        )
        .await
        .unwrap();
    let e = json_error(
        app.http
            .put(url.as_str())
            .body(vec![0u8; app.settings.max_file_upload_bytes() + 1])
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(e["code"], "payload_too_large");
}

#[tokio::test]
async fn an_expired_upload_link_speaks_of_uploads() {
    let app = spawn_app().await;
    let now = loraforge_domain::Clock::now(app.clock.as_ref());
    let url = app
        .store
        .signed_put_url("loras/x/model.safetensors", Duration::from_secs(60), now)
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::hours(1));
    let e = json_error(
        app.http.put(url.as_str()).body("x").send().await.unwrap(),
        403,
    )
    .await;
    assert_eq!(e["code"], "link_expired");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("upload link"), "{message}");
    assert!(!message.contains("download"), "{message}");
}

#[tokio::test]
async fn a_users_token_on_a_worker_route_is_told_which_token_it_needs() {
    let app = spawn_app().await;
    let user = app.user();
    let e = json_error(
        app.http
            .get(app.url(&format!("/api/v1/worker/jobs/{}", uuid::Uuid::now_v7())))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("worker's job token"), "{message}");
    assert!(!message.contains("not a valid JWT"), "{message}");
}

//! `/ui/lora-selector.js` and `/ui/selector-demo.html`: served from the binary with the content
//! types browsers need for a module script, loadable from any origin, and the API's CORS as
//! configured (the browser test `crates/cli/tests/lora_selector.rs` runs the element itself).

use crate::helpers::{Engine, spawn_app, spawn_app_with};

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
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        loraforge_server::routes::selector_asset::SELECTOR_JS,
        "the file as committed"
    );
    assert!(body.contains("customElements.define('lora-selector'"));
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
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("<lora-selector"));
    assert!(body.contains("import './lora-selector.js'"));
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

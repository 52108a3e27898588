//! `GET /ui/lora-selector.js` and `GET /ui/selector-demo.html`: the embeddable `<lora-selector>`
//! custom element (one dependency-free ES module) and a host page that shows it. Both are
//! compiled into the binary, so the script's path is stable for host apps and cannot drift from
//! the API it calls. Not API operations, so not in the OpenAPI document (see the exception in
//! `openapi.rs`'s route test).

use axum::http::header;
use axum::response::IntoResponse;

/// The element's source (`crates/server/web/lora-selector.js`).
pub const SELECTOR_JS: &str = include_str!("../../web/lora-selector.js");
/// The demo host page (`crates/server/web/selector-demo.html`).
pub const SELECTOR_DEMO_HTML: &str = include_str!("../../web/selector-demo.html");

/// Browsers refresh the script within this many seconds of a new release.
const MAX_AGE: &str = "public, max-age=300";

/// The element's script. Host apps load it cross-origin as a module script, which browsers fetch
/// in CORS mode; it is public and sent without credentials, so any origin may load it
/// (`Access-Control-Allow-Origin: *`) whatever `cors_origins` says. The API calls it makes
/// still need the host's origin in `cors_origins`.
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, MAX_AGE),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SELECTOR_JS,
    )
}

/// A host page using the element and printing its `change` events.
pub async fn demo() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, MAX_AGE),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; \
                 style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        SELECTOR_DEMO_HTML,
    )
}

//! The web UI and the embeddable `<lora-selector>`: static files built into the binary from
//! `crates/server/web/`, served at `/` (the app shell) and `/ui/{file}`. No build step: the files
//! are plain HTML, CSS and ES modules. Not API operations, so not in the OpenAPI document
//! ([`UI_ROUTES`]).
//!
//! Every file is one line of [`ASSETS`], with its [`Served`] policy for the headers that differ.
//! Each answer carries a strong `ETag` (the SHA-256 of the bytes, computed once per process), so
//! browsers revalidate and get `304 Not Modified` until the binary changes. The app's HTML
//! carries a strict Content-Security-Policy: scripts, styles and frames from this origin only;
//! images and requests also from `https:` (S3 presigned links) and the configured asset origins.
//! The selector's script (`/ui/lora-selector.js`, a stable path host apps load) may be loaded
//! from any origin; its demo host page has a policy of its own.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// One embedded file.
pub struct Asset {
    /// The name under `/ui/` (and under `crates/server/web/`).
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    pub served: Served,
}

/// How an asset is served, beyond its type, ETag and `X-Content-Type-Options: nosniff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A file of the app: `Cache-Control: no-cache` (revalidated each time, 304 until the
    /// binary changes); HTML gets the app's strict policy ([`content_security_policy`]).
    App,
    /// The `<lora-selector>` module host apps load from other origins. Browsers fetch module
    /// scripts in CORS mode; it is public and sent without credentials, so any origin may load
    /// it (`Access-Control-Allow-Origin: *`) whatever `cors_origins` says (the API calls it
    /// makes still need the host's origin there). Cached for [`EMBED_MAX_AGE`].
    Embeddable,
    /// The selector's demo host page: its inline module script and styles are allowed by its
    /// own policy ([`DEMO_POLICY`]); cached like the script it shows.
    Demo,
}

/// `Cache-Control` of the selector's script and demo: host apps see a new release within 5
/// minutes, then revalidate with the ETag.
const EMBED_MAX_AGE: &str = "public, max-age=300";

/// The demo host page's policy: same-origin everything, its own inline script and styles.
pub const DEMO_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// An [`Asset`] built from `crates/server/web/<path>`, served as an app file unless told.
macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        asset!($path, $content_type, Served::App)
    };
    ($path:literal, $content_type:expr, $served:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
            served: $served,
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of the UI; adding one is one line.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("signin.js", JS),
    asset!("library.js", JS),
    asset!("lora.js", JS),
    asset!("new.js", JS),
    asset!("admin.js", JS),
    asset!("icon.svg", SVG),
    asset!("lora-selector.js", JS, Served::Embeddable),
    asset!("selector-demo.html", HTML, Served::Demo),
];

/// The asset served at `/ui/{path}`.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The routes that are the UI rather than the API: served, but not in the OpenAPI document
/// (`openapi.rs`'s coverage test leaves exactly these out).
pub const UI_ROUTES: [&str; 2] = ["/", "/ui/{file}"];

/// Each asset's strong ETag, in the order of [`ASSETS`].
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
                .expect("hex is a valid header value")
        })
        .collect()
});

/// `GET /`: the app shell (pages are hash routes: `#/library`, `#/loras/{id}`, …).
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, &headers, 0)
}

/// `GET /ui/{file}`: one file of the UI; 404 `not_found` for any other name.
pub async fn file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let i = ASSETS
        .iter()
        .position(|a| a.path == name)
        .ok_or_else(|| ApiError::not_found("UI file"))?;
    Ok(serve(&state, &headers, i))
}

fn serve(state: &AppState, headers: &HeaderMap, i: usize) -> Response {
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let mut resp = if matches_etag(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.bytes,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let cache = match asset.served {
        Served::App => "no-cache",
        Served::Embeddable | Served::Demo => EMBED_MAX_AGE,
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if asset.served == Served::Embeddable {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    if asset.content_type == HTML {
        let csp = match asset.served {
            Served::Demo => Ok(HeaderValue::from_static(DEMO_POLICY)),
            Served::App | Served::Embeddable => {
                HeaderValue::from_str(&content_security_policy(&state.settings().ui.asset_origins))
            }
        };
        if let Ok(csp) = csp {
            h.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        // Pages show signed links: never hand them to another site in a Referer.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

/// `If-None-Match` lists this ETag (or `*`); weak comparison, as RFC 9110 asks for GET.
fn matches_etag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// The policy of the UI's HTML. `blob:` images are the previews of images picked for upload.
pub fn content_security_policy(asset_origins: &[String]) -> String {
    let extra: String = asset_origins
        .iter()
        .filter(|o| is_origin(o))
        .map(|o| format!(" {o}"))
        .collect();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; \
         img-src 'self' blob: data: https:{extra}; connect-src 'self' https:{extra}; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// `scheme://host[:port]` and nothing that could end the directive or add another.
fn is_origin(o: &str) -> bool {
    (o.starts_with("http://") || o.starts_with("https://"))
        && o.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_path_and_a_known_type() {
        let mut seen = std::collections::BTreeSet::new();
        for a in ASSETS {
            assert!(seen.insert(a.path), "{} listed twice", a.path);
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
            assert!(
                [HTML, JS, CSS, SVG].contains(&a.content_type),
                "{}: {}",
                a.path,
                a.content_type
            );
        }
        assert_eq!(ASSETS[0].path, "index.html", "the shell is served at /");
        assert_eq!(ASSETS[0].served, Served::App);
        let embeddable: Vec<_> = ASSETS
            .iter()
            .filter(|a| a.served == Served::Embeddable)
            .map(|a| a.path)
            .collect();
        assert_eq!(
            embeddable,
            ["lora-selector.js"],
            "only the selector is for other sites"
        );
    }

    #[test]
    fn the_policy_keeps_scripts_local_and_refuses_odd_origins() {
        let csp = content_security_policy(&[
            "http://127.0.0.1:9000".into(),
            "http://evil; script-src *".into(),
        ]);
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            csp.contains("img-src 'self' blob: data: https: http://127.0.0.1:9000;"),
            "{csp}"
        );
        assert!(!csp.contains("evil"), "{csp}");
    }

    #[test]
    fn if_none_match_is_compared_weakly_and_lists_are_split() {
        let etag = HeaderValue::from_static("\"abc\"");
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(matches_etag(&h, &etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(!matches_etag(&h, &etag));
    }
}

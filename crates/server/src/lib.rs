//! loraforge's HTTP API. It parses requests into domain types at the edge, calls the repository
//! and the blob store through their traits, and turns every error into one JSON shape in
//! [`error::ApiError`]. It owns no state of its own beyond per-process rate limits and the
//! wake-up channel of SSE streams; everything durable is in the database or the blob store.

pub mod auth;
pub mod create;
pub mod dataset_sweep;
pub mod downloads;
pub mod error;
pub mod http;
pub mod intake;
pub mod library_cache;
pub mod maintenance;
pub mod openapi;
pub mod quota;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod state;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use auth::{AuthUser, JwtKeys};
pub use error::ApiError;
pub use settings::{HttpSettings, ServerSettings};
pub use state::AppState;

use routes::{admin, datasets, events, files, health, lora_models, me, references, worker};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of the service, with its middleware.
pub fn api_router(state: AppState) -> Router {
    let settings = state.settings().clone();
    // Each body limit is enforced twice: on the declared length before anything is read, and
    // on the bytes as they are read (for bodies that declare none).
    let declared = |limit: usize| middleware::from_fn_with_state(limit, http::refuse_declared_over);
    let upload = Router::new()
        .route("/api/v1/datasets", post(datasets::upload))
        .layer(DefaultBodyLimit::max(settings.max_upload_bytes()))
        .layer(declared(settings.max_upload_bytes()));
    let file_upload = Router::new()
        .route("/files/{*key}", get(files::get_file).put(files::put_file))
        .layer(DefaultBodyLimit::max(settings.max_file_upload_bytes()))
        .layer(declared(settings.max_file_upload_bytes()));
    let api = Router::new()
        .route("/api/v1/datasets/from-urls", post(datasets::from_urls))
        .route("/api/v1/datasets/{id}", get(datasets::get))
        .route(
            "/api/v1/lora-models",
            get(lora_models::list).post(lora_models::create),
        )
        .route(
            "/api/v1/lora-models/from-references",
            post(references::from_references),
        )
        .route(
            "/api/v1/lora-models/{id}",
            get(lora_models::get).patch(lora_models::patch),
        )
        .route("/api/v1/lora-models/{id}/status", get(lora_models::status))
        .route("/api/v1/lora-models/{id}/events", get(events::events))
        .route("/api/v1/lora-models/{id}/cancel", post(lora_models::cancel))
        .route("/api/v1/me", get(me::me).patch(me::patch))
        .route("/api/v1/me/limits", get(me::limits))
        .route("/api/v1/admin/lora-models/{id}/review", post(admin::review))
        .route("/api/v1/worker/jobs/{id}", get(worker::job))
        .route("/api/v1/worker/jobs/{id}/progress", post(worker::progress))
        .route("/api/v1/worker/jobs/{id}/result", post(worker::result))
        .route("/api/v1/worker/jobs/{id}/failure", post(worker::failure))
        .route(
            "/api/v1/worker/jobs/{id}/checkpoint",
            post(worker::checkpoint),
        )
        .layer(DefaultBodyLimit::max(settings.max_json_bytes))
        .layer(declared(settings.max_json_bytes));
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(upload)
        .merge(file_upload)
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(not_found)
        .with_state(state);

    if let Some(cors) = cors_layer(&settings.cors_origins) {
        router = router.layer(cors);
    }
    router
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                // The path only: query strings may carry signatures.
                tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE]))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /docs for the API",
    )
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::RETRY_AFTER, REQUEST_ID]),
    )
}

/// A bound server, ready to run (zero2prod's shape: build, ask the port, run).
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    http: HttpSettings,
}

impl Application {
    /// Takes an already-bound listener so tests can bind port 0 without races.
    pub fn new(state: AppState, listener: tokio::net::TcpListener) -> Self {
        Self {
            listener,
            http: state.settings().http.clone(),
            router: api_router(state),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests. Connections are
    /// capped and timed out as [`HttpSettings`] say ([`http::serve`]).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        http::serve(self.listener, self.router, self.http, shutdown).await
    }
}

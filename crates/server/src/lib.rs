//! loraforge's HTTP API. It parses requests into domain types at the edge, calls the repository
//! and the blob store through their traits, and turns every error into one JSON shape in
//! [`error::ApiError`]. It owns no state of its own beyond per-process rate limits and the
//! wake-up channel of SSE streams; everything durable is in the database or the blob store.

pub mod alerts;
pub mod auth;
pub mod body;
pub mod client_webhooks;
pub mod create;
pub mod creator_mail;
pub mod credits;
pub mod dataset_sweep;
pub mod downloads;
pub mod error;
pub mod http;
pub mod intake;
pub mod library_cache;
pub mod library_index;
pub mod maintenance;
pub mod metrics;
pub mod metrics_collector;
pub mod monitors;
pub mod openapi;
pub mod quota;
pub mod quotes;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod state;
pub mod storage_accrual;
pub mod usage_writer;
pub mod views;
pub mod webhook;
pub mod zip;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware;
use axum::routing::{MethodFilter, on};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

pub use auth::{AuthUser, JwtKeys};
pub use error::ApiError;
pub use settings::{
    ClientWebhookSettings, HttpSettings, LocalSignIn, ModerationSettings, ServerSettings,
    UiSettings,
};
pub use state::AppState;

use routes::credits as credit_routes;
use routes::metrics as metrics_route;
use routes::quotes as quote_routes;
use routes::{
    admin, admin_alerts, admin_archival, admin_backends, admin_costs, auth_local, dataset_zip,
    datasets, events, files, health, lora_models, me, me_notifications, names, params, references,
    samples, ui, webhooks, worker, worker_samples,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route the service serves, as `(method, path)` in the OpenAPI document's spelling
/// (`{*key}` is `{key}`). The test in `openapi.rs` holds the document to it.
pub fn served_routes(settings: &ServerSettings) -> Vec<(Method, String)> {
    routes(settings).served
}

/// The routes, each registered once through [`RouteTable`] so the list of what is served
/// cannot differ from what the router serves.
fn routes(settings: &ServerSettings) -> RouteTable {
    let upload = RouteTable::default()
        .route(Method::POST, "/api/v1/datasets", datasets::upload)
        .body_limit(settings.max_upload_bytes());
    let files = RouteTable::default()
        .route(Method::GET, "/files/{*key}", files::get_file)
        .route(Method::PUT, "/files/{*key}", files::put_file)
        .body_limit(settings.max_file_upload_bytes());
    let api = RouteTable::default()
        .route(
            Method::POST,
            "/api/v1/datasets/from-urls",
            datasets::from_urls,
        )
        .route(Method::GET, "/api/v1/datasets/{id}", datasets::get)
        .route(Method::GET, "/api/v1/lora-models", lora_models::list)
        .route(Method::POST, "/api/v1/lora-models", lora_models::create)
        .route(
            Method::POST,
            "/api/v1/lora-models/from-references",
            references::from_references,
        )
        .route(Method::GET, "/api/v1/lora-models/{id}", lora_models::get)
        .route(
            Method::PATCH,
            "/api/v1/lora-models/{id}",
            lora_models::patch,
        )
        .route(
            Method::GET,
            "/api/v1/lora-models/{id}/status",
            lora_models::status,
        )
        .route(
            Method::GET,
            "/api/v1/lora-models/{id}/events",
            events::events,
        )
        .route(
            Method::POST,
            "/api/v1/lora-models/{id}/cancel",
            lora_models::cancel,
        )
        .route(Method::GET, "/api/v1/lora-names/check", names::check)
        .route(
            Method::GET,
            "/api/v1/lora-models/{id}/usage",
            routes::lora_usage::usage,
        )
        .route(
            Method::POST,
            "/api/v1/generation/resolve",
            routes::generation::resolve,
        )
        .route(
            Method::POST,
            "/api/v1/lora-models/{id}/reports",
            routes::reports::create,
        )
        .route(
            Method::GET,
            "/api/v1/admin/reports",
            routes::admin_reports::list,
        )
        .route(
            Method::POST,
            "/api/v1/admin/reports/{id}/dismiss",
            routes::admin_reports::dismiss,
        )
        .route(
            Method::POST,
            "/api/v1/admin/lora-models/{id}/hide",
            routes::admin_reports::hide,
        )
        .route(
            Method::POST,
            "/api/v1/admin/lora-models/{id}/unhide",
            routes::admin_reports::unhide,
        )
        .route(
            Method::POST,
            "/api/v1/lora-models/{id}/samples",
            samples::create,
        )
        .route(
            Method::GET,
            "/api/v1/lora-models/{id}/samples",
            samples::list,
        )
        .route(
            Method::GET,
            "/api/v1/lora-models/{id}/samples/{batch}",
            samples::get,
        )
        .route(
            Method::GET,
            "/api/v1/worker/samples/{id}",
            worker_samples::job,
        )
        .route(
            Method::POST,
            "/api/v1/worker/samples/{id}/result",
            worker_samples::result,
        )
        .route(
            Method::POST,
            "/api/v1/worker/samples/{id}/failure",
            worker_samples::failure,
        )
        .route(
            Method::POST,
            "/api/v1/worker/samples/{id}/heartbeat",
            worker_samples::heartbeat,
        )
        .route(Method::GET, "/api/v1/me", me::me)
        .route(Method::PATCH, "/api/v1/me", me::patch)
        .route(Method::GET, "/api/v1/me/limits", me::limits)
        .route(Method::GET, "/api/v1/params", params::params)
        .route(Method::GET, "/api/v1/auth/local", auth_local::availability)
        .route(Method::POST, "/api/v1/auth/local", auth_local::sign_in)
        .route(Method::GET, "/api/v1/me/credits", credit_routes::mine)
        .route(Method::POST, "/api/v1/quotes", quote_routes::create_quote)
        .route(
            Method::POST,
            "/api/v1/admin/users/{id}/credits",
            credit_routes::grant,
        )
        .route(
            Method::GET,
            "/api/v1/me/webhook-secret",
            routes::client_webhooks::secret,
        )
        .route(
            Method::POST,
            "/api/v1/me/webhook-secret/rotate",
            routes::client_webhooks::rotate,
        )
        .route(
            Method::GET,
            "/api/v1/lora-models/{id}/webhooks",
            routes::client_webhooks::deliveries,
        )
        .route(
            Method::GET,
            "/api/v1/me/notifications",
            me_notifications::get,
        )
        .route(
            Method::PUT,
            "/api/v1/me/notifications",
            me_notifications::put,
        )
        .route(
            Method::POST,
            "/api/v1/admin/lora-models/{id}/review",
            admin::review,
        )
        .route(Method::GET, "/api/v1/admin/backends", admin_backends::list)
        .route(
            Method::POST,
            "/api/v1/admin/backends/{name}/breaker",
            admin_backends::force,
        )
        .route(Method::GET, "/api/v1/admin/budget", admin_costs::get_budget)
        .route(Method::PUT, "/api/v1/admin/budget", admin_costs::put_budget)
        .route(Method::GET, "/api/v1/admin/stats", admin_costs::stats)
        .route(Method::GET, "/api/v1/admin/alerts", admin_alerts::list)
        .route(
            Method::GET,
            "/api/v1/admin/archival-review",
            admin_archival::review,
        )
        .route(
            Method::POST,
            "/api/v1/admin/archival-review",
            admin_archival::approve,
        )
        .route(
            Method::POST,
            "/api/v1/admin/alerts/{id}/ack",
            admin_alerts::ack,
        )
        .route(Method::GET, "/api/v1/worker/jobs/{id}", worker::job)
        .route(
            Method::POST,
            "/api/v1/worker/jobs/{id}/progress",
            worker::progress,
        )
        .route(
            Method::POST,
            "/api/v1/worker/jobs/{id}/result",
            worker::result,
        )
        .route(
            Method::POST,
            "/api/v1/worker/jobs/{id}/failure",
            worker::failure,
        )
        .route(
            Method::POST,
            "/api/v1/worker/jobs/{id}/checkpoint",
            worker::checkpoint,
        )
        .route(
            Method::GET,
            "/api/v1/worker/jobs/{id}/dataset.zip",
            dataset_zip::dataset_zip,
        )
        .body_limit(settings.max_json_bytes);
    let hooks = RouteTable::default()
        .route(
            Method::POST,
            "/api/v1/webhooks/replicate",
            webhooks::replicate,
        )
        .body_limit(webhooks::MAX_WEBHOOK_BYTES);
    // The web UI (not API routes: `ui::UI_ROUTES`, left out of the OpenAPI document).
    let web = RouteTable::default()
        .route(Method::GET, "/", ui::index)
        .route(Method::GET, "/ui/{file}", ui::file);
    RouteTable::default()
        .route(Method::GET, "/healthz", health::healthz)
        .route(Method::GET, "/readyz", health::readyz)
        .route(Method::GET, "/metrics", metrics_route::metrics)
        .merge(upload)
        .merge(files)
        .merge(api)
        .merge(hooks)
        .merge(web)
}

/// A router that keeps the list of what it serves: `route` registers the handler for exactly the
/// method and path it lists.
#[derive(Default)]
struct RouteTable {
    router: Router<AppState>,
    served: Vec<(Method, String)>,
}

impl RouteTable {
    fn route<H, T>(mut self, method: Method, path: &str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum can route");
        self.router = self.router.route(path, on(filter, handler));
        self.served.push((method, path.replace("{*", "{")));
        self
    }

    /// Each body limit is enforced twice: on the declared length before anything is read, and
    /// on the bytes as they are read (for bodies that declare none).
    fn body_limit(mut self, bytes: usize) -> Self {
        self.router =
            self.router
                .layer(DefaultBodyLimit::max(bytes))
                .layer(middleware::from_fn_with_state(
                    bytes,
                    http::refuse_declared_over,
                ));
        self
    }

    fn merge(mut self, other: RouteTable) -> Self {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }
}

/// Every route of the service, with its middleware.
pub fn api_router(state: AppState) -> Router {
    let settings = state.settings().clone();
    let mut router = routes(&settings)
        .router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::document(&settings)))
        .fallback(not_found)
        .with_state(state);

    if let Some(cors) = cors_layer(&settings.cors_origins) {
        router = router.layer(cors);
    }
    router
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::map_response(error::json_errors))
        // Outside the error rewriting and the panic catcher, so it sees the final status.
        .layer(axum::middleware::from_fn(metrics::record_http))
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
        if let Some(index) = state.library_index() {
            index.load(state.repo_handle());
        }
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

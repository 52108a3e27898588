//! Prometheus metrics: the recorder (installed once per process by the binary), the HTTP
//! middleware that counts and times every request by its route template, and the endpoint's
//! settings. The database's numbers are published by `metrics_collector`; other parts of the
//! service record through the `metrics` facade and appear here with no further wiring.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Requests served, by `method`, `route` (the matched template, `unmatched` for none) and `status`.
pub const HTTP_REQUESTS: &str = "loraforge_http_requests_total";
/// Seconds from a request's arrival to its response's head, by `method`, `route`, `status`.
pub const HTTP_DURATION: &str = "loraforge_http_request_duration_seconds";

/// Buckets of the request latency histogram, seconds.
pub const HTTP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What `GET /metrics` serves and who may read it.
#[derive(Clone)]
pub struct MetricsEndpoint {
    handle: PrometheusHandle,
    token: Option<SecretString>,
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

impl MetricsEndpoint {
    /// `token`: when set, a scrape must send `Authorization: Bearer <token>`.
    pub fn new(handle: PrometheusHandle, token: Option<SecretString>) -> Self {
        Self {
            handle,
            token: token.filter(|t| !t.expose_secret().is_empty()),
        }
    }

    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// Whether `authorization` (the header's value, if any) may scrape. Compared in constant
    /// time (on digests, so the length does not show either).
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let a = Sha256::digest(given.trim().as_bytes());
        let b = Sha256::digest(token.expose_secret().as_bytes());
        std::hint::black_box(
            a.iter()
                .zip(b.iter())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y)),
        ) == 0
    }
}

/// The recorder with this service's histogram buckets, not installed (tests install it locally).
pub fn build_recorder() -> PrometheusRecorder {
    builder().build_recorder()
}

/// Installs the recorder as the process's global one; call once, in the binary.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = builder().install_recorder()?;
    describe();
    Ok(handle)
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), &HTTP_BUCKETS)
        .expect("the buckets are not empty")
}

/// The help text of the service's own metrics.
pub fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency to the response head, by method, route template and status"
    );
    crate::metrics_collector::describe();
}

/// Middleware: counts and times every request. Labels are bounded: the route is the matched
/// template (never the raw path), the method one of the standard ones or `other`.
pub async fn record_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(token: Option<&str>) -> MetricsEndpoint {
        MetricsEndpoint::new(
            build_recorder().handle(),
            token.map(|t| SecretString::from(t.to_owned())),
        )
    }

    #[test]
    fn a_token_is_required_only_when_set() {
        assert!(endpoint(None).allows(None));
        assert!(
            endpoint(Some("")).allows(None),
            "an empty token is no token"
        );
        let e = endpoint(Some("s3cret"));
        assert!(e.allows(Some("Bearer s3cret")));
        assert!(!e.allows(None));
        assert!(!e.allows(Some("Bearer s3cre")));
        assert!(!e.allows(Some("Bearer s3cret2")));
        assert!(!e.allows(Some("Basic s3cret")));
        assert!(!format!("{e:?}").contains("s3cret"));
    }

    #[test]
    fn methods_are_a_bounded_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}

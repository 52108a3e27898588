//! The downloader against a real HTTP server on 127.0.0.1: retries, the size cap, redirects,
//! the cache, and the SSRF refusals (which must happen without the server seeing a request).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use loraforge_domain::ManualClock;
use loraforge_fetch::{FetchError, FetchSettings, Fetcher, HostPattern};

#[derive(Clone, Default)]
struct Hits {
    ok: Arc<AtomicUsize>,
    flaky: Arc<AtomicUsize>,
    down: Arc<AtomicUsize>,
    missing: Arc<AtomicUsize>,
    any: Arc<AtomicUsize>,
}

const BODY: &[u8] = b"\x89PNG\r\n\x1a\n pretend image body";

/// Starts the test server; returns its port and the hit counters.
async fn serve() -> (u16, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/ok.png",
            get(|State(h): State<Hits>| async move {
                h.ok.fetch_add(1, Ordering::SeqCst);
                BODY
            }),
        )
        // Fails twice with 503, then succeeds.
        .route(
            "/flaky.png",
            get(|State(h): State<Hits>| async move {
                if h.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    BODY.into_response()
                }
            }),
        )
        .route(
            "/down.png",
            get(|State(h): State<Hits>| async move {
                h.down.fetch_add(1, Ordering::SeqCst);
                StatusCode::BAD_GATEWAY
            }),
        )
        .route("/busy.png", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route(
            "/missing.png",
            get(|State(h): State<Hits>| async move {
                h.missing.fetch_add(1, Ordering::SeqCst);
                StatusCode::NOT_FOUND
            }),
        )
        // An endless body without a Content-Length: only the streaming cap can stop it.
        .route(
            "/endless.png",
            get(|| async {
                let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
                let stream = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
                Response::new(Body::from_stream(stream))
            }),
        )
        .route(
            "/declared-large.png",
            get(|| async {
                // Claims a huge length, sends a little and stalls: only the header can say "too large".
                let stream = futures::stream::once(async {
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"short"))
                })
                .chain(futures::stream::pending());
                (
                    [(header::CONTENT_LENGTH, "999999999")],
                    Body::from_stream(stream),
                )
            }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok.png")]) }),
        )
        .route(
            "/redirect-away",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://evil.example.net/x.png")],
                )
            }),
        )
        .route(
            "/redirect-metadata",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
                )
            }),
        )
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .fallback(|State(h): State<Hits>| async move {
            h.any.fetch_add(1, Ordering::SeqCst);
            StatusCode::NOT_FOUND
        })
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

use futures::StreamExt as _;

fn t0() -> DateTime<Utc> {
    "2026-05-01T10:00:00Z".parse().unwrap()
}

fn settings(hosts: &[&str], allow_private: bool) -> FetchSettings {
    FetchSettings {
        allowed_hosts: hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        allow_private_addresses: allow_private,
        backoff_base: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        ..FetchSettings::default()
    }
}

fn fetcher(s: FetchSettings) -> (Fetcher, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    (Fetcher::new(s, clock.clone()).unwrap(), clock)
}

#[tokio::test]
async fn downloads_and_retries_transient_failures_only() {
    let (port, hits) = serve().await;
    let (f, _) = fetcher(settings(&["127.0.0.1"], true));
    let base = format!("http://127.0.0.1:{port}");

    let got = f.fetch(&format!("{base}/ok.png"), 1024).await.unwrap();
    assert_eq!(got.bytes, BODY);
    assert!(!got.from_cache);

    let got = f.fetch(&format!("{base}/flaky.png"), 1024).await.unwrap();
    assert_eq!(got.bytes, BODY, "succeeds on the third attempt");
    assert_eq!(hits.flaky.load(Ordering::SeqCst), 3);

    let url = format!("{base}/down.png");
    let e = f.fetch(&url, 1024).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{url} could not be downloaded after 3 attempts: HTTP 502")
    );
    assert_eq!(hits.down.load(Ordering::SeqCst), 3);

    let e = f
        .fetch(&format!("{base}/busy.png"), 1024)
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("after 3 attempts: HTTP 429"), "{e}");

    let e = f
        .fetch(&format!("{base}/missing.png"), 1024)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        FetchError::Status {
            url: format!("{base}/missing.png"),
            status: 404
        }
    );
    assert_eq!(
        hits.missing.load(Ordering::SeqCst),
        1,
        "a 4xx is not retried"
    );
}

#[tokio::test]
async fn a_closed_port_is_retried_then_reported() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (f, _) = fetcher(settings(&["127.0.0.1"], true));
    let url = format!("http://127.0.0.1:{port}/a.png");
    let e = f.fetch(&url, 1024).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{url} could not be downloaded after 3 attempts: the host could not be reached")
    );
}

#[tokio::test]
async fn the_size_cap_holds_while_streaming() {
    let (port, _) = serve().await;
    let (f, _) = fetcher(settings(&["127.0.0.1"], true));
    let url = format!("http://127.0.0.1:{port}/endless.png");
    let e = tokio::time::timeout(Duration::from_secs(20), f.fetch(&url, 1024 * 1024))
        .await
        .expect("aborts, does not read forever")
        .unwrap_err();
    assert_eq!(e.code(), "too_large_file");
    assert!(
        e.to_string()
            .starts_with(&format!("{url} is larger than the 1 MB limit")),
        "{e}"
    );
    assert!(!e.is_retryable());

    let e = f
        .fetch(&format!("http://127.0.0.1:{port}/declared-large.png"), 1024)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "too_large_file", "{e:?}");
    // Exactly at the cap is fine.
    assert_eq!(
        f.fetch(
            &format!("http://127.0.0.1:{port}/ok.png"),
            BODY.len() as u64
        )
        .await
        .unwrap()
        .bytes,
        BODY
    );
}

#[tokio::test]
async fn redirects_are_followed_only_to_vetted_places_and_at_most_three_times() {
    let (port, hits) = serve().await;
    let (f, _) = fetcher(settings(&["127.0.0.1", "169.254.169.254"], true));
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        f.fetch(&format!("{base}/redirect"), 1024)
            .await
            .unwrap()
            .bytes,
        BODY
    );
    assert_eq!(hits.ok.load(Ordering::SeqCst), 1);

    let e = f
        .fetch(&format!("{base}/redirect-away"), 1024)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, FetchError::HostNotAllowed { host, .. } if host == "evil.example.net"),
        "{e:?}"
    );
    let e = f.fetch(&format!("{base}/loop"), 1024).await.unwrap_err();
    assert_eq!(e.code(), "bad_redirect");
    assert!(e.to_string().contains("redirects more than 3 times"), "{e}");

    // Without the private-address exception, a redirect to the metadata service is refused
    // before any connection (the first hop is loopback here, so start from a public-looking
    // allow-list entry pointing at it by literal instead).
    let (strict, _) = fetcher(settings(&["127.0.0.1", "169.254.169.254"], false));
    let e = strict
        .fetch("http://169.254.169.254/latest/meta-data/", 1024)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::ForbiddenAddress {
                reason: "the cloud metadata service",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn private_addresses_are_refused_by_literal_and_by_resolution() {
    let (port, hits) = serve().await;
    let hosts = [
        "127.0.0.1",
        "localhost",
        "::ffff:127.0.0.1",
        "[::ffff:7f00:1]",
        "10.0.0.1",
        "0.0.0.0",
        "[::1]",
    ];
    let (f, _) = fetcher(settings(&hosts, false));
    for url in [
        format!("http://127.0.0.1:{port}/ok.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok.png"),
        format!("http://[::1]:{port}/ok.png"),
        format!("http://0.0.0.0:{port}/ok.png"),
        format!("http://10.0.0.1:{port}/ok.png"),
        // A name: refused by the resolver, after resolution, before connecting.
        format!("http://localhost:{port}/ok.png"),
    ] {
        let e = f.fetch(&url, 1024).await.unwrap_err();
        assert_eq!(e.code(), "forbidden_address", "{url}: {e:?}");
        assert!(e.is_refused() && !e.is_retryable());
        assert!(e.to_string().starts_with(&url), "{e}");
    }
    assert_eq!(
        hits.ok.load(Ordering::SeqCst),
        0,
        "the server never saw a request"
    );

    // Decimal and hex spellings of loopback are parsed by the URL parser into 127.0.0.1.
    let (f, _) = fetcher(settings(&["127.0.0.1"], false));
    for url in [
        format!("http://2130706433:{port}/ok.png"),
        format!("http://0x7f.1:{port}/ok.png"),
    ] {
        assert_eq!(
            f.fetch(&url, 1024).await.unwrap_err().code(),
            "forbidden_address",
            "{url}"
        );
    }
    assert_eq!(hits.ok.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn only_http_urls_on_allowed_hosts_are_considered() {
    let (f, _) = fetcher(settings(&["*.example.com"], false));
    let e = f.fetch("file:///etc/passwd", 1024).await.unwrap_err();
    assert_eq!(e.code(), "unsupported_scheme");
    let e = f
        .fetch("ftp://img.example.com/a.png", 1024)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unsupported_scheme");
    let e = f
        .fetch("https://example.org/a.png", 1024)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "host_not_allowed");
    assert!(e.to_string().contains("image_url_allowed_hosts"), "{e}");
    let e = f
        .fetch("https://user:pw@img.example.com/a.png", 1024)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_url");
    assert_eq!(
        f.fetch("not a url", 1024).await.unwrap_err().code(),
        "invalid_url"
    );

    let (off, _) = fetcher(FetchSettings::default());
    let e = off
        .fetch("https://img.example.com/a.png", 1024)
        .await
        .unwrap_err();
    assert_eq!(e, FetchError::Disabled);
    assert!(e.to_string().contains("LORAFORGE_IMAGE_URL_ALLOWED_HOSTS"));
}

#[tokio::test]
async fn the_cache_serves_repeats_for_an_hour_by_the_clock() {
    let (port, hits) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (f, clock) = fetcher(FetchSettings {
        cache_dir: Some(dir.path().join("cache/downloads")),
        ..settings(&["127.0.0.1"], true)
    });
    let url = format!("http://127.0.0.1:{port}/ok.png");
    assert!(!f.fetch(&url, 1024).await.unwrap().from_cache);
    let again = f.fetch(&url, 1024).await.unwrap();
    assert!(again.from_cache);
    assert_eq!(again.bytes, BODY);
    assert_eq!(hits.ok.load(Ordering::SeqCst), 1);

    clock.advance(chrono::Duration::minutes(59));
    assert!(f.fetch(&url, 1024).await.unwrap().from_cache);
    clock.advance(chrono::Duration::minutes(2));
    assert!(
        !f.fetch(&url, 1024).await.unwrap().from_cache,
        "expired after the TTL"
    );
    assert_eq!(hits.ok.load(Ordering::SeqCst), 2);
    // A cached body is never served past a smaller cap.
    assert_eq!(f.fetch(&url, 4).await.unwrap_err().code(), "too_large_file");
    assert_eq!(hits.any.load(Ordering::SeqCst), 0);
}

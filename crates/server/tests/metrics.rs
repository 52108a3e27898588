//! `GET /metrics` against a real server: known traffic and known jobs, the scrape read by an
//! independent Prometheus text-format parser (`prometheus-parse`), the counts checked exactly.
//! Its own test binary: the recorder is process-wide, so no other test's requests are counted.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use prometheus_parse::{Sample, Scrape, Value};
use secrecy::SecretString;

use loraforge_db::{EventDetail, UseRecord};
use loraforge_domain::{Clock, LoraId, StatusEvent};
use loraforge_server::metrics::{self, MetricsEndpoint};
use loraforge_server::metrics_collector::Collector;
use loraforge_server::usage_writer::{self, UsageWriter};

use helpers::{Engine, TestApp, spawn_app, spawn_app_with_state};

async fn scrape(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// The scrape as text.
async fn text(app: &TestApp, token: Option<&str>) -> String {
    let resp = scrape(app, token).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text().await.unwrap()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the Prometheus text format")
}

async fn parsed(app: &TestApp, token: Option<&str>) -> Scrape {
    parse(&text(app, token).await)
}

/// The value of the one sample of `name` carrying every label of `labels`, read from the text
/// by hand: prometheus-parse 0.2.5 skips samples whose label values hold `}` (its label pattern
/// is `[^}]+`), and route templates such as `/api/v1/lora-models/{id}` do.
fn raw_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let prefix = format!("{name}{{");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with(&prefix)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect();
    assert_eq!(lines.len(), 1, "{name} {labels:?}: {lines:?}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!(
            "{name} {labels:?}: {other:?}; the scrape has {:?}",
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .map(|s| (&s.labels, &s.value))
                .collect::<Vec<_>>()
        ),
    }
}

/// The histogram's observation count (its `+Inf` bucket).
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Histogram(buckets)) => {
            buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("a +Inf bucket")
                .count
        }
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

async fn enqueue(app: &TestApp, id: &str) {
    let id: LoraId = id.parse().unwrap();
    app.repo
        .apply_event(
            id,
            StatusEvent::Enqueue,
            EventDetail::default(),
            app.clock.now(),
        )
        .await
        .unwrap();
}

async fn collect(app: &TestApp) {
    Collector::default()
        .collect(
            app.repo.as_ref(),
            &["runpod".to_owned(), "local".to_owned()],
            app.clock.now(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_test_did_and_the_token_guards_them() {
    let handle = metrics::install().expect("the only recorder of this test binary");
    let with = |token: Option<&str>| {
        let endpoint = MetricsEndpoint::new(
            handle.clone(),
            token.map(|t| SecretString::from(t.to_owned())),
        );
        move |state: loraforge_server::AppState| state.with_metrics(endpoint)
    };

    // --- traffic and jobs on SQLite --------------------------------------------------------
    let app = spawn_app_with_state(Engine::Sqlite, |_| {}, with(None)).await;
    let user = app.user();
    let dataset = app.dataset(&user).await;
    let first = app.create_ok(&user, "Metric One", &dataset).await;
    app.create_ok(&user, "Metric Two", &dataset).await;
    app.create_ok(&user, "Metric Three", &dataset).await;
    for _ in 0..5 {
        assert_eq!(
            app.http
                .get(app.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let missing = uuid::Uuid::new_v4();
    for _ in 0..3 {
        let resp = app
            .get(&user, &format!("/api/v1/lora-models/{missing}"))
            .await;
        assert_eq!(resp.status(), 404);
    }
    assert_eq!(
        app.http
            .get(app.url("/no/such/route"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Two resolves' uses, one after the other: two records, two transactions.
    let writer = UsageWriter::new(app.repo.clone());
    for generation in ["gen-1", "gen-2"] {
        let record = UseRecord {
            generation_id: generation.to_owned(),
            loras: vec![first.parse().unwrap()],
            user: user.id,
            at: app.clock.now(),
        };
        assert_eq!(writer.record(record).await.unwrap().len(), 1);
    }
    // One queued since the start, two pending; 90 s later the collector reads them.
    enqueue(&app, &first).await;
    app.clock.advance(chrono::Duration::seconds(90));
    collect(&app).await;

    let raw = text(&app, None).await;
    let s = parse(&raw);
    let req = |method: &str, route: &str, status: &str| {
        value(
            &s,
            metrics::HTTP_REQUESTS,
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(req("GET", "/healthz", "200"), 5.0);
    assert_eq!(
        raw_value(
            &raw,
            metrics::HTTP_REQUESTS,
            &[
                ("method", "GET"),
                ("route", "/api/v1/lora-models/{id}"),
                ("status", "404")
            ]
        ),
        3.0
    );
    assert_eq!(
        raw_value(
            &raw,
            &format!("{}_count", metrics::HTTP_DURATION),
            &[("route", "/api/v1/lora-models/{id}"), ("status", "404")]
        ),
        3.0
    );
    assert_eq!(req("GET", "unmatched", "404"), 1.0);
    assert_eq!(req("POST", "/api/v1/lora-models", "202"), 3.0);
    assert_eq!(req("POST", "/api/v1/datasets", "201"), 1.0);
    assert_eq!(
        observations(
            &s,
            metrics::HTTP_DURATION,
            &[("route", "/healthz"), ("status", "200")]
        ),
        5.0
    );
    // Routes are templates: no raw path (and so no id) is ever a label.
    assert!(
        !raw.contains(&missing.to_string()) && !raw.contains("/no/such/route"),
        "a raw path became a label"
    );
    assert_eq!(value(&s, usage_writer::RECORDS, &[]), 2.0);
    assert_eq!(value(&s, usage_writer::WRITES, &[]), 2.0);
    assert_eq!(value(&s, "loraforge_jobs", &[("status", "queued")]), 1.0);
    assert_eq!(value(&s, "loraforge_jobs", &[("status", "pending")]), 2.0);
    assert_eq!(value(&s, "loraforge_jobs", &[("status", "completed")]), 0.0);
    assert_eq!(value(&s, "loraforge_queue_depth", &[]), 1.0);
    assert_eq!(value(&s, "loraforge_queue_oldest_wait_seconds", &[]), 90.0);
    for backend in ["runpod", "local"] {
        assert_eq!(
            value(
                &s,
                "loraforge_breaker_state",
                &[("backend", backend), ("state", "closed")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "loraforge_breaker_state",
                &[("backend", backend), ("state", "open")]
            ),
            0.0
        );
    }
    // The scrape itself was counted after it was rendered: the next one shows it.
    let again = parsed(&app, None).await;
    assert_eq!(
        value(
            &again,
            metrics::HTTP_REQUESTS,
            &[("route", "/metrics"), ("status", "200")]
        ),
        1.0
    );

    // --- a token, when set, is required ------------------------------------------------------
    let guarded = spawn_app_with_state(Engine::Sqlite, |_| {}, with(Some("scrape-token"))).await;
    for token in [None, Some("wrong"), Some("scrape-token-")] {
        let body = helpers::error_of(scrape(&guarded, token).await, 401).await;
        assert_eq!(body["code"], "metrics_token_required", "{token:?}");
    }
    let ok = parsed(&guarded, Some("scrape-token")).await;
    assert_eq!(
        value(
            &ok,
            metrics::HTTP_REQUESTS,
            &[("route", "/metrics"), ("status", "401")]
        ),
        3.0
    );
    // A process without a recorder has no metrics to show.
    let off = spawn_app().await;
    let body = helpers::error_of(scrape(&off, None).await, 404).await;
    assert_eq!(body["code"], "metrics_off");

    // --- the collector on Postgres: the gauges follow the database read last ----------------
    let pg = spawn_app_with_state(Engine::Postgres, |_| {}, with(None)).await;
    let owner = pg.user();
    let ds = pg.dataset(&owner).await;
    let lora = pg.create_ok(&owner, "Postgres Metric", &ds).await;
    enqueue(&pg, &lora).await;
    pg.clock.advance(chrono::Duration::seconds(30));
    collect(&pg).await;
    let s = parsed(&pg, None).await;
    assert_eq!(value(&s, "loraforge_jobs", &[("status", "queued")]), 1.0);
    assert_eq!(value(&s, "loraforge_jobs", &[("status", "pending")]), 0.0);
    assert_eq!(value(&s, "loraforge_queue_oldest_wait_seconds", &[]), 30.0);
}

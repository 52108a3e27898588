//! Client webhooks end to end: a create with a `webhook`, the outbox and delivery steps run with
//! the test's clock against a loopback receiver, signatures checked by our verifier and by the
//! `standardwebhooks` package (test venv), retries with backoff, the filter, progress coalescing,
//! the per-LoRA log, and the SSRF guard at create.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use loraforge_db::EventDetail;
use loraforge_domain::{Clock, LoraId, Progress, StatusEvent};
use loraforge_server::client_webhooks::{deliver_webhooks, enqueue_webhooks};
use loraforge_server::webhook::{Delivery, WebhookKey, verify};
use loraforge_storage::test_support::test_venv;

use crate::helpers::{Engine, TestApp, User, error_of, spawn_app, spawn_app_with};

#[derive(Debug, Clone)]
struct Captured {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Captured>>>,
    /// Statuses to answer, in order; 200 once they run out.
    answers: Arc<Mutex<VecDeque<u16>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    r.got.lock().unwrap().push(Captured {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
    });
    let code = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).unwrap()
}

/// A loopback receiver; returns it and its URL.
async fn receiver(answers: &[u16]) -> (Receiver, String) {
    let r = Receiver::default();
    r.answers.lock().unwrap().extend(answers.iter().copied());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, format!("http://{addr}/hook"))
}

async fn open_app(engine: Engine) -> TestApp {
    let app = spawn_app_with(engine, |s| {
        s.client_webhooks.allow_private_addresses = true;
    })
    .await;
    // The standardwebhooks package checks timestamps against its own wall clock.
    app.clock.set(Utc::now());
    app
}

async fn create_with(app: &TestApp, user: &User, name: &str, extra: Value) -> reqwest::Response {
    let ds = app.dataset(user).await;
    let mut body = json!({"name": name, "dataset_id": ds});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.post_json(user, "/api/v1/lora-models", &body).await
}

async fn created(app: &TestApp, user: &User, name: &str, extra: Value) -> LoraId {
    let resp = create_with(app, user, name, extra).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    resp.json::<Value>().await.unwrap()["lora_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn apply(app: &TestApp, id: LoraId, events: &[StatusEvent]) {
    for ev in events {
        app.repo
            .apply_event(id, *ev, EventDetail::default(), app.clock.now())
            .await
            .unwrap();
    }
}

/// One round of both steps at the test's time.
async fn step(app: &TestApp) {
    let client = loraforge_fetch::vetted_client(true, Duration::from_secs(5)).unwrap();
    enqueue_webhooks(app.repo.as_ref(), app.clock.now())
        .await
        .unwrap();
    let r = deliver_webhooks(app.repo.as_ref(), &client, true, "test", app.clock.now()).await;
    assert!(r.error.is_none(), "{:?}", r.error);
}

async fn secret(app: &TestApp, user: &User) -> String {
    let resp = app.get(user, "/api/v1/me/webhook-secret").await;
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs the standardwebhooks verifier on a captured delivery; its output, or `Err` when refused.
async fn python_verify(secret: &str, c: &Captured) -> Result<String, String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/verify_webhook.py"
    );
    let mut child = tokio::process::Command::new(test_venv().join("bin/python"))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test venv's python (scripts/test-env.sh)");
    let input = json!({"secret": secret, "id": c.id, "timestamp": c.timestamp,
        "signature": c.signature, "body": c.body});
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

async fn deliveries_are_signed_retried_filtered_and_logged(engine: Engine) {
    let app = open_app(engine).await;
    let (rx, url) = receiver(&[500, 503]).await;
    let user = app.user();
    let id = created(
        &app,
        &user,
        "Hooked",
        json!({"webhook": url, "webhook_events_filter": ["start", "completed"]}),
    )
    .await;
    apply(&app, id, &[StatusEvent::Enqueue, StatusEvent::Start]).await;
    app.repo
        .record_progress(
            id,
            &Progress {
                stage: Some("training".into()),
                percent: 10,
                estimated_remaining: None,
            },
            app.clock.now(),
        )
        .await
        .unwrap();

    step(&app).await;
    assert_eq!(rx.got.lock().unwrap().len(), 1, "start, tried once");
    app.clock.advance(chrono::Duration::seconds(1));
    step(&app).await;
    assert_eq!(rx.got.lock().unwrap().len(), 1, "not due for 5 s");
    app.clock.advance(chrono::Duration::seconds(4));
    step(&app).await;
    assert_eq!(rx.got.lock().unwrap().len(), 2, "second try after 5 s");
    app.clock.advance(chrono::Duration::seconds(9));
    step(&app).await;
    assert_eq!(rx.got.lock().unwrap().len(), 2, "then 10 s");
    app.clock.advance(chrono::Duration::seconds(1));
    step(&app).await;
    assert_eq!(rx.got.lock().unwrap().len(), 3, "third try, answered 200");
    app.clock.advance(chrono::Duration::seconds(3600));
    step(&app).await;
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "delivered once: no more tries");
    assert!(
        got.iter().all(|c| c.id == got[0].id),
        "the same id on every try"
    );
    assert!(got[0].id.starts_with("msg_"));

    let key_text = secret(&app, &user).await;
    assert!(key_text.starts_with("whsec_"));
    let key = WebhookKey::parse(&key_text).unwrap();
    for c in &got {
        let sent: i64 = c.timestamp.parse().unwrap();
        let at = chrono::DateTime::from_timestamp(sent, 0).unwrap();
        let d = Delivery {
            id: Some(&c.id),
            timestamp: Some(&c.timestamp),
            signature: Some(&c.signature),
        };
        verify(&key, d, c.body.as_bytes(), at).expect("signed with the user's secret");
    }
    let body: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(body["event"], "start");
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["name"], "Hooked");
    assert_eq!(body["training_status"], "training");
    // An implementation that is not ours agrees, and refuses a tampered body.
    assert_eq!(python_verify(&key_text, &got[2]).await, Ok("start".into()));
    let mut tampered = got[2].clone();
    tampered.body = tampered.body.replace("Hooked", "Hacked");
    assert!(python_verify(&key_text, &tampered).await.is_err());

    // The filter: progress and validating are not delivered; completed is. (Back to the wall
    // clock, which the Python verifier holds timestamps to.)
    app.clock.set(Utc::now());
    apply(
        &app,
        id,
        &[StatusEvent::BeginValidation, StatusEvent::Complete],
    )
    .await;
    step(&app).await;
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    let done: Value = serde_json::from_str(&got[3].body).unwrap();
    assert_eq!(done["event"], "completed");
    assert_eq!(done["training_status"], "completed");
    assert_ne!(got[3].id, got[0].id);
    assert_eq!(
        python_verify(&key_text, &got[3]).await,
        Ok("completed".into())
    );

    // The log: the owner and admins see every attempt; others do not.
    let path = format!("/api/v1/lora-models/{id}/webhooks");
    let resp = app.get(&user, &path).await;
    assert_eq!(resp.status(), 200);
    let log: Value = resp.json().await.unwrap();
    assert_eq!(log["webhook"], url);
    assert_eq!(log["events"], json!(["start", "completed"]));
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["event"], "start");
    assert_eq!(items[0]["state"], "delivered");
    assert_eq!(items[0]["id"], got[0].id.as_str());
    let codes: Vec<_> = items[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 503, 200]);
    assert_eq!(
        items[0]["attempts"][0]["error"],
        "the receiver answered 500"
    );
    assert_eq!(items[1]["event"], "completed");
    assert_eq!(items[1]["state"], "delivered");
    let other = app.user();
    error_of(app.get(&other, &path).await, 403).await;
    let admin = app.user_with(None, true);
    assert_eq!(app.get(&admin, &path).await.status(), 200);
}

#[tokio::test]
async fn deliveries_are_signed_retried_filtered_and_logged_sqlite() {
    deliveries_are_signed_retried_filtered_and_logged(Engine::Sqlite).await;
}

#[tokio::test]
async fn deliveries_are_signed_retried_filtered_and_logged_postgres() {
    deliveries_are_signed_retried_filtered_and_logged(Engine::Postgres).await;
}

#[tokio::test]
async fn progress_is_coalesced_and_every_event_is_the_default() {
    let app = open_app(Engine::Sqlite).await;
    let (rx, url) = receiver(&[]).await;
    let user = app.user();
    let id = created(&app, &user, "Chatty", json!({ "webhook": url })).await;
    apply(&app, id, &[StatusEvent::Enqueue, StatusEvent::Start]).await;
    for (secs, percent) in [(0, 10), (1, 20), (2, 30), (6, 40)] {
        let at = app.clock.now() + chrono::Duration::seconds(secs);
        let p = Progress {
            stage: Some("training".into()),
            percent,
            estimated_remaining: None,
        };
        app.repo.record_progress(id, &p, at).await.unwrap();
    }
    app.clock.advance(chrono::Duration::seconds(7));
    step(&app).await;
    app.repo
        .apply_event(
            id,
            StatusEvent::Cancel,
            EventDetail::because("cancelled by its creator"),
            app.clock.now(),
        )
        .await
        .unwrap();
    step(&app).await;
    // One round sends its deliveries concurrently: order them by their events.
    let mut bodies: Vec<Value> = rx
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_str(&c.body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b["event_id"].as_i64().unwrap());
    let events: Vec<&str> = bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["start", "progress", "progress", "cancelled"]);
}

#[tokio::test]
async fn the_secret_is_stable_until_rotated() {
    let app = spawn_app().await;
    let user = app.user();
    let first = secret(&app, &user).await;
    assert_eq!(secret(&app, &user).await, first);
    let bytes = base64_len(&first);
    assert_eq!(bytes, 32);
    let resp = app
        .post_json(&user, "/api/v1/me/webhook-secret/rotate", &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    let rotated = resp.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, first);
    assert_eq!(secret(&app, &user).await, rotated);
    assert_ne!(secret(&app, &app.user()).await, rotated, "one per user");
}

fn base64_len(secret: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap()
        .len()
}

#[tokio::test]
async fn private_addresses_and_bad_webhooks_are_refused_at_create() {
    // The default guard: on.
    let app = spawn_app().await;
    let (_rx, url) = receiver(&[]).await;
    let user = app.user();
    for (extra, field) in [
        (json!({ "webhook": url }), "webhook"),
        (
            json!({"webhook": "http://169.254.169.254/latest/meta-data"}),
            "webhook",
        ),
        (json!({"webhook": "http://localhost:9/hook"}), "webhook"),
        (json!({"webhook": "http://[::1]:9/hook"}), "webhook"),
        (json!({"webhook": "ftp://hooks.example.com/x"}), "webhook"),
        (
            json!({"webhook": "https://user:pw@hooks.example.com/x"}),
            "webhook",
        ),
        (json!({"webhook": "not a url"}), "webhook"),
        (
            json!({"webhook": "https://93.184.216.34/x", "webhook_events_filter": ["logs"]}),
            "webhook_events_filter",
        ),
        (
            json!({"webhook": "https://93.184.216.34/x", "webhook_events_filter": []}),
            "webhook",
        ),
        (json!({"webhook_events_filter": ["start"]}), "webhook"),
    ] {
        let err = error_of(
            create_with(&app, &user, "Refused", extra.clone()).await,
            422,
        )
        .await;
        assert_eq!(err["code"], "invalid_webhook", "{extra}");
        assert_eq!(err["field"], field, "{extra}");
    }
    // Nothing was created by the refusals.
    let list: Value = app
        .get(&user, &format!("/api/v1/lora-models?creator={}", user.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 0);
    // A public literal address passes (nothing connects at create).
    let ok = create_with(
        &app,
        &user,
        "Public",
        json!({"webhook": "https://93.184.216.34/x", "webhook_events_filter": ["completed"]}),
    )
    .await;
    assert_eq!(ok.status(), 202);
    // Even if such a LoRA's webhook were stored, the delivery's client refuses loopback: a
    // receiver on loopback is never called with the guard on.
    let (rx, url) = receiver(&[]).await;
    let guarded = loraforge_fetch::vetted_client(false, Duration::from_secs(5)).unwrap();
    let host = url::Url::parse(&url).unwrap();
    assert!(loraforge_fetch::check_shape(&host, false).is_err());
    let named = url.replace("127.0.0.1", "localhost");
    assert!(
        guarded.post(&named).send().await.is_err(),
        "the resolver refuses localhost"
    );
    assert!(rx.got.lock().unwrap().is_empty());
}

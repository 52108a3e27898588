//! `POST /api/v1/webhooks/replicate`: Standard Webhooks signatures against the injected clock,
//! deliveries deduplicated by `webhook-id`, and a valid one makes the job engine observe the
//! Replicate backend at once (this replica's directly, the others' through the store's nudge).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use loraforge_domain::Clock;
use loraforge_server::state::EngineNudge;
use loraforge_server::webhook::WebhookKey;

use crate::helpers::*;

// The account secret of api-contracts.md §3's test vector.
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const PATH: &str = "/api/v1/webhooks/replicate";

async fn app_with_secret() -> TestApp {
    app_with_nudges(Arc::default()).await
}

/// The backends the server asked its engine to observe at once, in order.
#[derive(Debug, Default)]
struct Nudges(Mutex<Vec<String>>);

impl EngineNudge for Nudges {
    fn observe_soon(&self, backend: &str) {
        self.0.lock().unwrap().push(backend.to_owned());
    }
}

async fn app_with_nudges(nudges: Arc<Nudges>) -> TestApp {
    spawn_app_with_state(
        Engine::Sqlite,
        |s| {
            s.replicate_webhook_key = Some(WebhookKey::parse(SECRET).unwrap());
        },
        |state| state.with_engine_nudge(nudges),
    )
    .await
}

fn training(status: &str) -> Vec<u8> {
    json!({"id": "zz4ibbonubfz7carwiefibzgga", "status": status, "output": null, "logs": "", "error": null,
        "metrics": {}})
    .to_string()
    .into_bytes()
}

/// Posts `body` as Replicate would, signed at `timestamp` with `signature` (or the right one).
async fn deliver(
    app: &TestApp,
    id: &str,
    timestamp: i64,
    body: &[u8],
    signature: Option<&str>,
) -> reqwest::Response {
    let key = WebhookKey::parse(SECRET).unwrap();
    let signature = signature.map_or_else(|| key.sign(id, timestamp, body), str::to_owned);
    app.http
        .post(app.url(PATH))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Whether the server woke its engine since the last call (a stored permit is taken at once).
async fn woke(app: &TestApp) -> bool {
    tokio::time::timeout(Duration::from_millis(300), app.engine_wake.notified())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_valid_delivery_wakes_the_engine_once_and_repeats_do_nothing() {
    let app = app_with_secret().await;
    let now = app.clock.now().timestamp();
    let body = training("succeeded");
    let resp = deliver(&app, "msg_1", now, &body, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"received": true, "duplicate": false})
    );
    assert!(woke(&app).await, "a valid delivery wakes the engine");

    // The same delivery replayed, and a retry (same id, signed anew a minute later).
    let replay = deliver(&app, "msg_1", now, &body, None).await;
    app.clock.advance(chrono::Duration::minutes(1));
    let retry = deliver(&app, "msg_1", now + 60, &body, None).await;
    for resp in [replay, retry] {
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"received": true, "duplicate": true})
        );
    }
    assert!(!woke(&app).await, "repeats wake nothing");

    // Another delivery is news again.
    let resp = deliver(&app, "msg_2", now + 60, &training("failed"), None).await;
    assert_eq!(resp.status(), 200);
    assert!(woke(&app).await);
}

/// A delivery makes the engine observe the Replicate backend's runs now, not after its poll
/// interval; a duplicate does not.
#[tokio::test]
async fn a_valid_delivery_nudges_the_replicate_backend_once() {
    let nudges = Arc::new(Nudges::default());
    let app = app_with_nudges(nudges.clone()).await;
    let now = app.clock.now().timestamp();
    let body = training("succeeded");
    assert_eq!(deliver(&app, "msg_1", now, &body, None).await.status(), 200);
    assert_eq!(deliver(&app, "msg_1", now, &body, None).await.status(), 200);
    let bad = deliver(&app, "msg_2", now, &body, Some("v1,AAAA")).await;
    assert_eq!(bad.status(), 401);
    assert_eq!(*nudges.0.lock().unwrap(), ["replicate"]);
    assert!(
        woke(&app).await,
        "and the engine is woken for its next tick"
    );
    // Recorded for the other replicas' engines, at the server's clock.
    assert_eq!(
        app.repo.backend_nudges().await.unwrap(),
        [("replicate".to_owned(), app.clock.now())]
    );
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_are_refused() {
    let app = app_with_secret().await;
    let now = app.clock.now().timestamp();
    let body = training("succeeded");
    let key = WebhookKey::parse(SECRET).unwrap();

    // Signed for another body, or with another account's secret, or not v1, or not at all.
    let other_body = key.sign("msg_x", now, &training("failed"));
    let other_key = WebhookKey::parse("whsec_c2VjcmV0LWtleS1vZi1hbm90aGVyLWFjY291bnQ=")
        .unwrap()
        .sign("msg_x", now, &body);
    let not_v1 = key.sign("msg_x", now, &body).replace("v1,", "v2,");
    for sig in [other_body.as_str(), other_key.as_str(), not_v1.as_str(), ""] {
        let e = error_of(deliver(&app, "msg_x", now, &body, Some(sig)).await, 401).await;
        assert_eq!(e["code"], "invalid_signature", "{sig:?}: {e}");
    }
    let unsigned = app
        .http
        .post(app.url(PATH))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(unsigned, 401).await["code"], "invalid_signature");

    // Correctly signed, but more than 5 minutes old or ahead.
    for ts in [now - 301, now + 301] {
        let e = error_of(deliver(&app, "msg_old", ts, &body, None).await, 401).await;
        assert_eq!(e["code"], "stale_webhook", "{e}");
    }
    assert!(!woke(&app).await, "nothing refused wakes the engine");

    // A refused delivery is not remembered: the genuine one with that id still counts.
    let resp = deliver(&app, "msg_x", now, &body, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["duplicate"], false);
    assert!(woke(&app).await);

    // Signed, but not a Training object.
    let e = error_of(deliver(&app, "msg_y", now, b"[1,2]", None).await, 400).await;
    assert_eq!(e["code"], "invalid_json");
    // Larger than a webhook may be.
    let big = vec![b' '; 1024 * 1024 + 1];
    let resp = deliver(&app, "msg_z", now, &big, None).await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn without_a_secret_the_route_says_so() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let e = error_of(
        deliver(&app, "msg_1", now, &training("succeeded"), None).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "webhook_not_configured");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("LORAFORGE_REPLICATE_WEBHOOK_SECRET")
    );
    assert!(!woke(&app).await);
}

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use loraforge_domain::{Clock, LoraId, Progress, StatusEvent};

use crate::helpers::*;

/// One SSE frame: id, event kind, data.
type Frame = (String, String, Value);

/// Sends each SSE frame of `resp` on the returned channel as it arrives; the channel closes when
/// the server ends the stream.
fn frames(resp: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<Frame> {
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = String::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    }
                    if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().to_owned();
                    }
                    if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !ev.is_empty()
                    && tx
                        .send((id, ev, serde_json::from_str(&data).unwrap()))
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

/// The next frame, or None when the stream ended (a timeout trips the test).
async fn next_frame(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no frame and no end of the stream within 30 s")
}

/// Reads SSE frames until the server closes the stream (or a timeout trips the test).
async fn read_events(resp: reqwest::Response) -> Vec<Frame> {
    let mut rx = frames(resp);
    let mut out = Vec::new();
    while let Some(f) = next_frame(&mut rx).await {
        out.push(f);
    }
    out
}

#[tokio::test]
async fn the_event_stream_replays_history_follows_changes_and_ends_when_final() {
    // No polling within the test: whatever arrives after the replay was pushed by a change.
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.events_poll_interval = Duration::from_secs(3600);
    })
    .await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let id = app.create_ok(&u, "streamed", &ds).await;
    let lid: LoraId = id.parse().unwrap();
    let url = app.url(&format!("/api/v1/lora-models/{id}/events"));

    let resp = app
        .http
        .get(&url)
        .bearer_auth(&u.token)
        .send()
        .await
        .unwrap();
    let mut rx = frames(resp);
    // The replay: the stream is open and waiting once its history has arrived.
    let mut events = vec![next_frame(&mut rx).await.expect("the created event")];
    assert_eq!(events[0].1, "created");
    // Changes made while the stream is open arrive on it. These two are written past the API
    // (as another replica would), so they wake nobody…
    let now = app.clock.now();
    app.repo
        .apply_event(lid, StatusEvent::Enqueue, Default::default(), now)
        .await
        .unwrap();
    let progress = Progress {
        stage: Some("queued".into()),
        percent: 0,
        estimated_remaining: None,
    };
    app.repo.record_progress(lid, &progress, now).await.unwrap();
    // …until the cancel through the API pushes the news, and the stream reads all three.
    let resp = app
        .post_json(&u, &format!("/api/v1/lora-models/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);

    while let Some(f) = next_frame(&mut rx).await {
        events.push(f);
    }
    let kinds: Vec<_> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["created", "status", "progress", "status"]);
    assert_eq!(events[1].2["training_status"], "queued");
    assert_eq!(events[3].2["training_status"], "cancelled");
    assert_eq!(events[3].2["lora_id"], id);
    let ids: Vec<i64> = events.iter().map(|(i, _, _)| i.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Reconnecting with Last-Event-ID resumes after that event.
    let resp = app
        .http
        .get(&url)
        .bearer_auth(&u.token)
        .header("last-event-id", ids[1].to_string())
        .send()
        .await
        .unwrap();
    let rest = read_events(resp).await;
    assert_eq!(
        rest.iter().map(|(_, k, _)| k.as_str()).collect::<Vec<_>>(),
        ["progress", "status"]
    );

    // A bad Last-Event-ID is a clear 400.
    let resp = app
        .http
        .get(&url)
        .bearer_auth(&u.token)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp, 400).await["code"], "invalid_request");
}

#[tokio::test]
async fn hiding_a_lora_ends_the_streams_of_everyone_but_its_owner_and_admins() {
    // No polling: the hide itself must reach the open streams.
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.events_poll_interval = Duration::from_secs(3600);
    })
    .await;
    let owner = app.user();
    let other = app.user();
    let admin = app.user_with(None, true);
    let ds = app.dataset(&owner).await;
    let id = app.create_ok(&owner, "watched", &ds).await;
    let url = app.url(&format!("/api/v1/lora-models/{id}/events"));
    let open = |token: String| {
        let (http, url) = (app.http.clone(), url.clone());
        async move {
            let resp = http.get(&url).bearer_auth(token).send().await.unwrap();
            let mut rx = frames(resp);
            let first = next_frame(&mut rx).await.expect("the created event");
            assert_eq!(first.1, "created");
            rx
        }
    };
    let mut others = open(other.token.clone()).await;
    let mut owners = open(owner.token.clone()).await;
    let mut admins = open(admin.token.clone()).await;

    let resp = app
        .post_json(
            &admin,
            &format!("/api/v1/admin/lora-models/{id}/hide"),
            &json!({"reason": "impersonation"}),
        )
        .await;
    assert_eq!(resp.status(), 200);

    // Someone else's stream: one last `unavailable` event without an id, then the end.
    let (event_id, kind, data) = next_frame(&mut others).await.expect("unavailable");
    assert_eq!(kind, "unavailable");
    assert_eq!(event_id, "", "nothing to resume after");
    assert_eq!(data["lora_id"], id);
    assert_eq!(data["code"], "not_found");
    assert!(next_frame(&mut others).await.is_none(), "the stream ended");
    // Opening it again is a 404, as for every page of a hidden LoRA.
    let resp = app
        .http
        .get(&url)
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    error_of(resp, 404).await;

    // The owner's and the admin's streams go on: the owner's cancel reaches both.
    let resp = app
        .post_json(
            &owner,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    for rx in [&mut owners, &mut admins] {
        let mut kinds = Vec::new();
        while let Some((_, kind, data)) = next_frame(rx).await {
            if kind == "status" {
                assert_eq!(data["training_status"], "cancelled");
            }
            kinds.push(kind);
        }
        assert!(!kinds.contains(&"unavailable".to_owned()), "{kinds:?}");
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("status"),
            "{kinds:?}"
        );
    }
}

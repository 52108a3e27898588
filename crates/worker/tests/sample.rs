//! Sample mode against a fake control plane (the sample routes of `docs/worker-protocol.md` and
//! a `/files/…` store) and a fake sampler (`fixtures/fake_sampler.sh`): heartbeats go out while
//! the sampler renders and stop before the result, and a heartbeat answered 409 (the engine gave
//! the attempt up) stops the sampler and ends the attempt without a report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use loraforge_worker::{SampleConfig, TrainerCommand, run_sample};
use serde_json::{Value, json};

const BATCH: &str = "0193a1b2-batch";
const TOKEN: &str = "sample-token-5ecret";

#[derive(Default)]
struct Plane {
    /// Every call to a sample route, in order: (route, body).
    calls: Mutex<Vec<(String, Value)>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
    /// Heartbeats after the first N answer 409 `job_not_active`.
    heartbeat_409_after: Mutex<Option<usize>>,
    heartbeat_interval_s: f64,
}

impl Plane {
    fn calls(&self, route: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == route)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn refused(headers: &HeaderMap, id: &str) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    (auth != Some(&format!("Bearer {TOKEN}")) || id != BATCH).then(|| {
        (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"code": "forbidden", "message": "not this batch's token"}})),
        )
            .into_response()
    })
}

async fn job(
    State(p): State<Arc<(Plane, String)>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&headers, &id) {
        return r;
    }
    let (plane, base) = &*p;
    plane
        .calls
        .lock()
        .unwrap()
        .push(("job".into(), Value::Null));
    let image = json!({"prompt": "zxq", "negative_prompt": null, "seed": 1, "scale": 1.0, "steps": 2,
                       "width": 64, "height": 64, "guidance_scale": 7.0});
    Json(json!({
        "batch_id": BATCH, "lora_id": "0193a1b2-lora", "attempt": 1, "base_model": "/models/tiny",
        "lora_url": format!("{base}/files/lora.safetensors"), "lora_bytes": 6,
        "images": [image.clone(), image],
        "uploads": [
            {"index": 0, "key": "lora-samples/0.png", "url": format!("{base}/files/lora-samples/0.png")},
            {"index": 1, "key": "lora-samples/1.png", "url": format!("{base}/files/lora-samples/1.png")},
        ],
        "heartbeat_interval_s": plane.heartbeat_interval_s,
    }))
    .into_response()
}

async fn report(
    State(p): State<Arc<(Plane, String)>>,
    UrlPath((id, route)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = refused(&headers, &id) {
        return r;
    }
    let plane = &p.0;
    let mut calls = plane.calls.lock().unwrap();
    if route == "heartbeat" {
        let beats = calls.iter().filter(|(r, _)| r == "heartbeat").count();
        if plane
            .heartbeat_409_after
            .lock()
            .unwrap()
            .is_some_and(|n| beats >= n)
        {
            return (
                StatusCode::CONFLICT,
                Json(json!({"error": {"code": "job_not_active",
                    "message": "attempt 1 of this batch is no longer rendering (the batch is queued, attempt 1)"}})),
            )
                .into_response();
        }
    }
    calls.push((route, body));
    Json(json!({"recorded": true, "status": "rendering"})).into_response()
}

async fn get_file(
    State(p): State<Arc<(Plane, String)>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    match p.0.files.lock().unwrap().get(&key) {
        Some(b) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn put_file(
    State(p): State<Arc<(Plane, String)>>,
    UrlPath(key): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    p.0.files.lock().unwrap().insert(key, body.to_vec());
    StatusCode::OK
}

async fn start(plane: Plane) -> Arc<(Plane, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    plane
        .files
        .lock()
        .unwrap()
        .insert("lora.safetensors".into(), b"weight".to_vec());
    let state = Arc::new((plane, base));
    let app = Router::new()
        .route("/api/v1/worker/samples/{id}", get(job))
        .route("/api/v1/worker/samples/{id}/{route}", post(report))
        .route("/files/{*key}", get(get_file).put(put_file))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    state
}

fn config(base: &str, out: &Path, fake: &Path, tenths: u32) -> SampleConfig {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_sampler.sh");
    SampleConfig {
        server: base.parse().unwrap(),
        batch: BATCH.into(),
        token: TOKEN.into(),
        out: out.to_owned(),
        trainer: TrainerCommand {
            program: "/bin/sh".into(),
            args: vec![script.display().to_string()],
            env: vec![
                ("FAKE_DIR".into(), fake.display().to_string()),
                ("FAKE_TENTHS".into(), tenths.to_string()),
                ("FAKE_IMAGES".into(), "2".into()),
            ],
        },
        retry_delay: Duration::from_millis(10),
        debug_fail: false,
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X")
    })
}

#[tokio::test]
async fn heartbeats_go_out_while_the_sampler_renders_and_stop_before_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let plane = start(Plane {
        heartbeat_interval_s: 0.1,
        ..Plane::default()
    })
    .await;
    let mut stdout = Vec::new();
    let code = run_sample(
        config(&plane.1, &dir.path().join("job"), &fake, 12),
        &mut stdout,
    )
    .await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&stdout));
    let beats = plane.0.calls("heartbeat");
    assert!(
        beats.len() >= 5,
        "1.2 s of rendering at a 0.1 s heartbeat: {beats:?}"
    );
    assert!(
        beats.iter().all(|b| *b == json!({"attempt": 1})),
        "{beats:?}"
    );
    let calls: Vec<String> = plane
        .0
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(calls.first().map(String::as_str), Some("job"));
    assert_eq!(
        calls.last().map(String::as_str),
        Some("result"),
        "no heartbeat after the result: {calls:?}"
    );
    assert_eq!(plane.0.calls("result").len(), 1);
    assert!(plane.0.calls("failure").is_empty());
    let files = plane.0.files.lock().unwrap();
    assert!(files.contains_key("lora-samples/0.png") && files.contains_key("lora-samples/1.png"));
}

#[tokio::test]
async fn a_heartbeat_answered_409_stops_the_sampler_and_ends_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let plane = start(Plane {
        heartbeat_interval_s: 0.1,
        heartbeat_409_after: Mutex::new(Some(2)),
        ..Plane::default()
    })
    .await;
    let started = Instant::now();
    let mut stdout = Vec::new();
    // The sampler would render for 60 s.
    let code = run_sample(
        config(&plane.1, &dir.path().join("job"), &fake, 600),
        &mut stdout,
    )
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_ne!(code, 0);
    let line = String::from_utf8_lossy(&stdout);
    assert!(line.contains("\"job_not_active\""), "{line}");
    assert_eq!(plane.0.calls("heartbeat").len(), 2);
    assert!(
        plane.0.calls("result").is_empty() && plane.0.calls("failure").is_empty(),
        "an attempt that is over reports nothing"
    );
    let pid: i32 = std::fs::read_to_string(fake.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the sampler {pid} outlived its attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!fake.join("finished").exists());
}

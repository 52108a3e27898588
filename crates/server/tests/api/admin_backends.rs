//! `GET /api/v1/admin/backends` and `POST /api/v1/admin/backends/{name}/breaker`: admins see
//! every configured backend with its breaker and history, and force a breaker open or closed.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn admins_see_the_backends_and_force_their_breakers() {
    let app = spawn_app().await;
    let user = app.user();
    let admin = app.user_with(Some("ops@example.com".into()), true);

    let r = app.get(&user, "/api/v1/admin/backends").await;
    assert_eq!(r.status(), 403);
    let r = app
        .post_json(
            &user,
            "/api/v1/admin/backends/runpod/breaker",
            &json!({"state": "open"}),
        )
        .await;
    assert_eq!(r.status(), 403);

    let r = app.get(&admin, "/api/v1/admin/backends").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["failures_to_open"], 3);
    assert_eq!(body["window_secs"], 600);
    assert_eq!(body["open_secs"], 1800);
    let names: Vec<&str> = body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["runpod", "local"], "in the router's order");
    let runpod = &body["backends"][0];
    assert_eq!(runpod["breaker_state"], "closed");
    assert_eq!(runpod["position"], 1);
    assert_eq!(runpod["max_runs"], 4);
    assert_eq!(runpod["live_runs"], 0);
    assert_eq!(runpod["failures_in_window"], 0);
    assert!(runpod["next_probe_at"].is_null());
    assert_eq!(runpod["transitions"], json!([]));

    // Unknown backend: 404 with a stable code; a bad state: 422; not JSON: 400.
    let r = app
        .post_json(
            &admin,
            "/api/v1/admin/backends/nope/breaker",
            &json!({"state": "open"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "backend_not_found");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("runpod, local")
    );
    for bad in [
        json!({"state": "half_open"}),
        json!({"state": "ajar"}),
        json!({}),
        json!({"state": "open", "x": 1}),
    ] {
        let r = app
            .post_json(&admin, "/api/v1/admin/backends/runpod/breaker", &bad)
            .await;
        assert_eq!(r.status(), 422, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_breaker_request");
    }
    let r = app
        .http
        .post(app.url("/api/v1/admin/backends/runpod/breaker"))
        .bearer_auth(&admin.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Forced open: recorded with the admin, the next probe 30 min later.
    let r = app
        .post_json(
            &admin,
            "/api/v1/admin/backends/runpod/breaker",
            &json!({"state": "open", "reason": "RunPod maintenance"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["breaker_state"], "open");
    assert_eq!(b["next_probe_at"], "2026-11-15T12:30:00Z");
    assert_eq!(b["transitions"][0]["from"], "closed");
    assert_eq!(b["transitions"][0]["to"], "open");
    assert_eq!(b["transitions"][0]["reason"], "forced: RunPod maintenance");
    assert_eq!(b["transitions"][0]["forced_by"], admin.id.to_string());

    // Forcing the same state again changes nothing; closing is recorded too.
    let again = app
        .post_json(
            &admin,
            "/api/v1/admin/backends/runpod/breaker",
            &json!({"state": "open"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    let r = app
        .post_json(
            &admin,
            "/api/v1/admin/backends/runpod/breaker",
            &json!({"state": "closed", "reason": "back"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = app
        .get(&admin, "/api/v1/admin/backends")
        .await
        .json()
        .await
        .unwrap();
    let runpod = &body["backends"][0];
    assert_eq!(runpod["breaker_state"], "closed");
    let history: Vec<(&str, &str)> = runpod["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["from"].as_str().unwrap(), t["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        history,
        [("open", "closed"), ("closed", "open")],
        "newest first"
    );
    assert_eq!(
        body["backends"][1]["breaker_state"], "closed",
        "local untouched"
    );
}

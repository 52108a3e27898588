use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn create_returns_202_pending_and_the_lora_is_visible() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let resp = app
        .post_json(
            &u,
            "/api/v1/lora-models",
            &json!({"name": "  Cyberpunk Girl ", "description": "neon", "dataset_id": ds}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    assert!(body["message"].as_str().unwrap().contains("Cyberpunk Girl"));
    let id = body["lora_id"].as_str().unwrap();

    let d: Value = app
        .get(&u, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["name"], "Cyberpunk Girl");
    assert_eq!(d["description"], "neon");
    assert_eq!(d["training_status"], "pending");
    assert_eq!(d["creator"]["id"], u.id.to_string());
    assert_eq!(d["dataset"]["id"], ds);
    assert_eq!(d["dataset"]["image_count"], 3);
    assert_eq!(d["reference_images"].as_array().unwrap().len(), 3);
    assert_eq!(d["params"]["rank"], 8);
    assert_eq!(
        d["params"]["base_model"],
        "stabilityai/stable-diffusion-xl-base-1.0"
    );
    assert!(d["download_url"].is_null());

    let s: Value = app
        .get(&u, &format!("/api/v1/lora-models/{id}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["training_status"], "pending");
    assert_eq!(s["progress"], 0);

    // Others see the LoRA (public library) but not its reference images.
    let other = app.user();
    let d: Value = app
        .get(&other, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["name"], "Cyberpunk Girl");
    assert_eq!(d["reference_images"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn names_are_unique_per_user_only() {
    let app = spawn_app().await;
    let (a, b) = (app.user(), app.user());
    let (da, db) = (app.dataset(&a).await, app.dataset(&b).await);
    app.create_ok(&a, "Hero", &da).await;
    let e = error_of(app.create_lora(&a, " Hero ", &da).await, 409).await;
    assert_eq!(e["code"], "duplicate_name");
    assert!(e["message"].as_str().unwrap().contains("Hero"));
    app.create_ok(&b, "Hero", &db).await;
}

#[tokio::test]
async fn params_that_could_never_train_together_are_422() {
    let app = spawn_app_with(Engine::Sqlite, |s| s.limits.creates_per_minute = 0).await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let cases = [
        (json!({"type": "dreambooth"}), "class_prompt"),
        (json!({"class_prompt": "a photo of a dog"}), "class_prompt"),
        (
            json!({"type": "lora", "num_class_images": 10}),
            "num_class_images",
        ),
        (json!({"prior_loss_weight": 1.0}), "prior_loss_weight"),
    ];
    for (params, field) in cases {
        let body = json!({"name": "ok", "dataset_id": ds, "params": params});
        let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 422).await;
        assert_eq!(
            (e["code"].as_str(), e["field"].as_str()),
            (Some("incompatible_params"), Some(field)),
            "{params}"
        );
    }
    // out-of-range dreambooth values are plain invalid_params, like every other range
    for (params, field) in [
        (
            json!({"type": "dreambooth", "class_prompt": "a dog", "num_class_images": 0}),
            "num_class_images",
        ),
        (
            json!({"type": "dreambooth", "class_prompt": "a dog", "prior_loss_weight": 50}),
            "prior_loss_weight",
        ),
        (
            json!({"target_modules": ["to_q", "nonexistent"]}),
            "target_modules",
        ),
        (json!({"seed": u64::MAX}), "seed"),
    ] {
        let body = json!({"name": "ok", "dataset_id": ds, "params": params});
        let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 400).await;
        assert_eq!(
            (e["code"].as_str(), e["field"].as_str()),
            (Some("invalid_params"), Some(field)),
            "{params}"
        );
    }
    let body = json!({"name": "ok", "dataset_id": ds,
        "params": {"type": "dreambooth", "class_prompt": "a photo of a dog"}});
    let resp = app.post_json(&u, "/api/v1/lora-models", &body).await;
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn bad_names_params_and_bodies_are_400_with_stable_codes() {
    let app = spawn_app_with(Engine::Sqlite, |s| s.limits.creates_per_minute = 0).await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let cases = [
        (json!({"name": "", "dataset_id": ds}), "invalid_name", None),
        (
            json!({"name": "a\nb", "dataset_id": ds}),
            "invalid_name",
            None,
        ),
        (
            json!({"name": "x".repeat(256), "dataset_id": ds}),
            "invalid_name",
            None,
        ),
        (json!({"dataset_id": ds}), "invalid_name", None),
        (json!({"name": "ok"}), "invalid_request", None),
        (
            json!({"name": "ok", "dataset_id": ds, "params": {"steps": 20000}}),
            "invalid_params",
            Some("steps"),
        ),
        (
            json!({"name": "ok", "dataset_id": ds, "params": {"resolution": 500}}),
            "invalid_params",
            Some("resolution"),
        ),
        (
            json!({"name": "ok", "dataset_id": ds, "params": {"learning_rate": 1}}),
            "invalid_params",
            Some("learning_rate"),
        ),
        (
            json!({"name": "ok", "dataset_id": ds, "params": {"stepz": 10}}),
            "invalid_params",
            Some("stepz"),
        ),
        (
            json!({"name": "ok", "dataset_id": ds, "params": 5}),
            "invalid_params",
            None,
        ),
        (
            json!({"name": "ok", "dataset_id": ds, "colour": "red"}),
            "invalid_request",
            None,
        ),
        (json!(["not", "an", "object"]), "invalid_json", None),
    ];
    for (body, code, field) in cases {
        let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 400).await;
        assert_eq!(e["code"], code, "{body}");
        if let Some(f) = field {
            assert_eq!(e["field"], f, "{body}");
            assert!(e["message"].as_str().unwrap().starts_with(f), "{e}");
        }
    }
    let resp = app
        .http
        .post(app.url("/api/v1/lora-models"))
        .bearer_auth(&u.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp, 400).await["code"], "invalid_json");
    // Nothing was created by any of that.
    let list: Value = app
        .get(&u, "/api/v1/lora-models")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 0);
}

#[tokio::test]
async fn params_are_stored_with_defaults_filled_in_and_tiny_test_values_allowed() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let resp = app
        .post_json(&u, "/api/v1/lora-models", &json!({"name": "tiny", "dataset_id": ds,
            "params": {"steps": 10, "resolution": 64, "trigger_words": ["ohwx"], "base_model": "/models/tiny-sdxl"}}))
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["lora_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d: Value = app
        .get(&u, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["params"]["steps"], 10);
    assert_eq!(d["params"]["resolution"], 64);
    assert_eq!(d["params"]["alpha"], 32);
    assert_eq!(d["params"]["trigger_words"], json!(["ohwx"]));
    assert_eq!(d["params"]["base_model"], "/models/tiny-sdxl");
}

#[tokio::test]
async fn a_missing_or_foreign_dataset_is_404() {
    let app = spawn_app().await;
    let (a, b) = (app.user(), app.user());
    let theirs = app.dataset(&b).await;
    let e = error_of(app.create_lora(&a, "x", &theirs).await, 404).await;
    assert_eq!(e["code"], "dataset_not_found");
    let e = error_of(
        app.create_lora(&a, "x", &uuid::Uuid::now_v7().to_string())
            .await,
        404,
    )
    .await;
    assert_eq!(e["code"], "dataset_not_found");
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_first_result() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let send = |body: Value, key: &'static str| {
        app.http
            .post(app.url("/api/v1/lora-models"))
            .bearer_auth(&u.token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = json!({"name": "once", "dataset_id": ds});
    let first: Value = send(body.clone(), "k-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = send(body.clone(), "k-1").await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["lora_id"], first["lora_id"]);
    let list: Value = app
        .get(&u, "/api/v1/lora-models")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);

    // Same key, different request: refused, nothing created.
    let resp = send(json!({"name": "twice", "dataset_id": ds}), "k-1")
        .await
        .unwrap();
    assert_eq!(error_of(resp, 422).await["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn cancel_and_patch_are_for_the_owner_only() {
    let app = spawn_app().await;
    let (owner, other) = (app.user(), app.user());
    let ds = app.dataset(&owner).await;
    let id = app.create_ok(&owner, "mine", &ds).await;

    let e = error_of(
        app.post_json(
            &other,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "forbidden");
    let patch = |u: &User, body: Value| {
        app.http
            .patch(app.url(&format!("/api/v1/lora-models/{id}")))
            .bearer_auth(&u.token)
            .json(&body)
            .send()
    };
    let e = error_of(
        patch(&other, json!({"description": "hijacked"}))
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(e["code"], "forbidden");

    let resp = patch(&owner, json!({"description": "a better description"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["description"],
        "a better description"
    );
    let e = error_of(
        patch(&owner, json!({"name": "renamed"})).await.unwrap(),
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_request");

    let resp = app
        .post_json(
            &owner,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let s: Value = resp.json().await.unwrap();
    assert_eq!(s["training_status"], "cancelled");
    assert_eq!(s["error"], "cancelled by its creator");
    // A final LoRA cannot be cancelled again.
    let e = error_of(
        app.post_json(
            &owner,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(e["code"], "invalid_state");
    assert_eq!(e["training_status"], "cancelled");
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let app = spawn_app().await;
    let u = app.user();
    for path in [
        "/api/v1/lora-models/not-a-uuid",
        &format!("/api/v1/lora-models/{}", uuid::Uuid::now_v7()),
    ] {
        assert_eq!(
            error_of(app.get(&u, path).await, 404).await["code"],
            "not_found"
        );
    }
}

#[tokio::test]
async fn there_is_no_delete() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let id = app.create_ok(&u, "forever", &ds).await;
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/lora-models/{id}")))
        .bearer_auth(&u.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(
        app.get(&u, &format!("/api/v1/lora-models/{id}"))
            .await
            .status(),
        200
    );
}

//! `POST /api/v1/lora-models/from-references`: PRD 1's ReferenceImages, grouped by character.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::image_server::{ImageServer, loopback_intake};

fn refs(character_id: &str, name: Option<&str>, urls: &[String]) -> Vec<Value> {
    urls.iter()
        .map(|u| match name {
            Some(n) => json!({"character_id": character_id, "image_url": u, "character_name": n}),
            None => json!({"character_id": character_id, "image_url": u}),
        })
        .collect()
}

/// `n` distinct valid images on the server, named `{prefix}{i}.png`.
fn add_images(images: &ImageServer, prefix: &str, seed: u64, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            images.add(
                &format!("{prefix}{i}.png"),
                noise_png(512, 512, seed * 100 + i),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_character_with_enough_images_gets_one_dataset_and_one_lora() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();
    let alice = add_images(&images, "alice", 1, 3);
    let bob = add_images(&images, "bob", 2, 3);
    let carol = add_images(&images, "carol", 3, 1);
    // Interleaved on purpose: grouping is by character_id, not by position.
    let mut all = refs("char-alice", Some("Alice"), &alice[..2]);
    all.extend(refs("char-bob", None, &bob));
    all.extend(refs("char-carol", Some("Carol"), &carol));
    all.extend(refs("char-alice", None, &alice[2..]));
    let body = json!({"character_references": all, "description": "from the generator", "params": {"steps": 500}});

    let resp = app
        .post_json(&u, "/api/v1/lora-models/from-references", &body)
        .await;
    assert_eq!(resp.status(), 202);
    let got: Value = resp.json().await.unwrap();
    let loras = got["loras"].as_array().unwrap();
    let ids: Vec<&str> = loras
        .iter()
        .map(|l| l["character_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["char-alice", "char-bob"]);
    assert!(loras.iter().all(|l| l["status"] == "pending"));
    let warnings = got["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{got}");
    assert_eq!(warnings[0]["character_id"], "char-carol");
    assert_eq!(warnings[0]["code"], "too_few_images");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("has 1 reference image; at least 3 are needed"),
        "{got}"
    );
    assert_eq!(
        images.hits("/img/carol0.png"),
        0,
        "skipped characters are not downloaded"
    );

    let alice_lora: Value = app
        .get(
            &u,
            &format!(
                "/api/v1/lora-models/{}",
                loras[0]["lora_id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alice_lora["name"], "Alice");
    assert_eq!(alice_lora["description"], "from the generator");
    assert_eq!(alice_lora["params"]["steps"], 500);
    assert_eq!(alice_lora["dataset"]["id"], loras[0]["dataset_id"]);
    assert_eq!(alice_lora["dataset"]["image_count"], 3);
    let bob_lora: Value = app
        .get(
            &u,
            &format!(
                "/api/v1/lora-models/{}",
                loras[1]["lora_id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        bob_lora["name"], "char-bob",
        "the character id names a LoRA without a character_name"
    );
    let dataset: Value = app
        .get(
            &u,
            &format!(
                "/api/v1/datasets/{}",
                loras[1]["dataset_id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dataset["images"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_character_whose_images_fail_is_a_warning_and_the_others_go_ahead() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();
    let mut dave = add_images(&images, "dave", 4, 2);
    dave.push(images.add("dave-notes.png", b"not an image".repeat(1000)));
    let mut frank = add_images(&images, "frank", 5, 2);
    frank.push(images.url("/status/404/frank-missing.png"));
    let erin = add_images(&images, "erin", 6, 3);
    let mut all = refs("dave", None, &dave);
    all.extend(refs("frank", None, &frank));
    all.extend(refs("erin", Some("Erin"), &erin));

    let got: Value = app
        .post_json(
            &u,
            "/api/v1/lora-models/from-references",
            &json!({"character_references": all}),
        )
        .await
        .json()
        .await
        .unwrap();
    let loras = got["loras"].as_array().unwrap();
    assert_eq!(loras.len(), 1, "{got}");
    assert_eq!(loras[0]["character_id"], "erin");
    let w: Vec<(&str, &str, &str)> = got["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["character_id"].as_str().unwrap(),
                w["code"].as_str().unwrap(),
                w["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(w.len(), 2, "{got}");
    assert_eq!((w[0].0, w[0].1), ("dave", "invalid_dataset"));
    assert!(
        w[0].2
            .contains(&format!("{} is not a JPEG or PNG image", dave[2])),
        "{}",
        w[0].2
    );
    assert_eq!((w[1].0, w[1].1), ("frank", "download_failed"));
    assert!(
        w[1].2
            .contains(&format!("{} could not be downloaded: HTTP 404", frank[2])),
        "{}",
        w[1].2
    );
}

#[tokio::test]
async fn the_monthly_limit_and_idempotency_apply_per_character() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.url_intake = loopback_intake(None);
        s.limits.monthly_loras = 2;
        s.limits.creates_per_minute = 0;
    })
    .await;
    let u = app.user();
    let a = add_images(&images, "a", 7, 3);
    let b = add_images(&images, "b", 8, 3);
    let mut two = refs("a", None, &a);
    two.extend(refs("b", None, &b));
    let body = json!({"character_references": two});

    let send = |key: &'static str| {
        let req = app
            .http
            .post(app.url("/api/v1/lora-models/from-references"))
            .bearer_auth(&u.token)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first: Value = send("batch-1").await.json().await.unwrap();
    assert_eq!(first["loras"].as_array().unwrap().len(), 2, "{first}");
    // The same key again: the same LoRAs, nothing new counted against the limit.
    let replay: Value = send("batch-1").await.json().await.unwrap();
    let lora_ids = |v: &Value| {
        v["loras"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lora_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(lora_ids(&replay), lora_ids(&first));

    // At the limit, a new batch is refused before anything is downloaded.
    let c = add_images(&images, "c", 9, 3);
    let e = error_of(
        app.post_json(
            &u,
            "/api/v1/lora-models/from-references",
            &json!({"character_references": refs("c", None, &c)}),
        )
        .await,
        429,
    )
    .await;
    assert_eq!(e["code"], "monthly_limit_reached");
    assert_eq!(images.hits("/img/c0.png"), 0);
}

#[tokio::test]
async fn the_limit_reached_midway_leaves_a_warning_for_the_rest() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.url_intake = loopback_intake(None);
        s.limits.monthly_loras = 1;
    })
    .await;
    let u = app.user();
    let mut two = refs("x", None, &add_images(&images, "x", 10, 3));
    two.extend(refs("y", None, &add_images(&images, "y", 11, 3)));
    let got: Value = app
        .post_json(
            &u,
            "/api/v1/lora-models/from-references",
            &json!({"character_references": two}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["loras"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got["warnings"][0]["character_id"], "y");
    assert_eq!(got["warnings"][0]["code"], "monthly_limit_reached");
    assert!(
        got["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("was stored but the LoRA was not created"),
        "{got}"
    );
}

#[tokio::test]
async fn malformed_reference_payloads_are_400() {
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();
    for body in [
        json!({}),
        json!({"character_references": []}),
        json!({"character_references": [{"character_id": "", "image_url": "http://127.0.0.1/a.png"}]}),
        json!({"character_references": [{"character_id": "a"}]}),
        json!({"character_references": [{"character_id": "a", "image_url": "u"}], "extra": 1}),
    ] {
        let e = error_of(
            app.post_json(&u, "/api/v1/lora-models/from-references", &body)
                .await,
            400,
        )
        .await;
        assert!(
            e["code"] == "invalid_json" || e["code"] == "invalid_request",
            "{body}: {e}"
        );
    }
    let body = json!({"character_references": [{"character_id": "a", "image_url": "u"}], "params": {"rank": 100000}});
    assert_eq!(
        error_of(
            app.post_json(&u, "/api/v1/lora-models/from-references", &body)
                .await,
            400
        )
        .await["code"],
        "invalid_params"
    );
}

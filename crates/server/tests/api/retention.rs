//! Issue 9 items 4–6 through the API: the reference intake stores nothing for replays or at a
//! limit, daily dataset quotas, content-addressed images and the dataset sweep, and creators'
//! display names in place of their e-mails.

use serde_json::{Value, json};

use loraforge_domain::{Clock, DailyWindow, DatasetRetention};
use loraforge_server::dataset_sweep::{BLOB_CLAIM_GRACE, sweep_datasets};

use crate::helpers::*;
use crate::image_server::{ImageServer, loopback_intake};

fn files_in(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}

async fn datasets_today(app: &TestApp, u: &User) -> u32 {
    app.repo
        .dataset_usage(u.id, DailyWindow::containing(app.clock.now()))
        .await
        .unwrap()
        .datasets
}

fn refs(id: &str, urls: &[String]) -> Vec<Value> {
    urls.iter()
        .map(|u| json!({"character_id": id, "image_url": u}))
        .collect()
}

#[tokio::test]
async fn reference_replays_and_refusals_download_and_store_nothing() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.url_intake = loopback_intake(None);
        s.limits.monthly_loras = 1;
        s.limits.creates_per_minute = 0;
    })
    .await;
    let u = app.user();
    let a: Vec<String> = (0..3)
        .map(|i| images.add(&format!("a{i}.png"), noise_png(512, 512, 40 + i)))
        .collect();
    let body = json!({"character_references": refs("a", &a)});
    let send = |key: &'static str, body: Value| {
        let req = app
            .http
            .post(app.url("/api/v1/lora-models/from-references"))
            .bearer_auth(&u.token)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send("k", body.clone()).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let hits = images.total_hits();
    assert_eq!(datasets_today(&app, &u).await, 1);

    // At the limit now: 20 replays answer the first LoRA and download and store nothing.
    for _ in 0..20 {
        let replay = send("k", body.clone()).await;
        assert_eq!(replay.status(), 202);
        let replay: Value = replay.json().await.unwrap();
        assert_eq!(replay["loras"], first["loras"]);
    }
    // The same key with another body: 422, nothing downloaded or stored.
    let other = json!({"character_references": refs("a", &a), "description": "changed"});
    let e = error_of(send("k", other).await, 422).await;
    assert_eq!(e["code"], "idempotency_key_reused");
    // A new key at the limit: 429 before any download.
    let e = error_of(send("k2", body.clone()).await, 429).await;
    assert_eq!(e["code"], "monthly_limit_reached");
    assert_eq!(images.total_hits(), hits, "nothing was downloaded again");
    assert_eq!(
        datasets_today(&app, &u).await,
        1,
        "nothing was stored again"
    );
}

#[tokio::test]
async fn the_daily_dataset_quota_refuses_before_reading_and_resets_at_midnight() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.url_intake = loopback_intake(None);
        s.dataset_quota.datasets_per_day = 2;
    })
    .await;
    let u = app.user();
    app.dataset(&u).await;
    app.dataset(&u).await;
    let files = (0..3)
        .map(|i| (format!("p{i}.png"), noise_png(512, 512, 70 + i)))
        .collect();
    let e = error_of(app.upload(&u, files).await, 429).await;
    assert_eq!(e["code"], "dataset_quota_reached");
    assert_eq!(
        (e["quota"].as_str(), e["limit"].as_u64(), e["used"].as_u64()),
        (Some("datasets"), Some(2), Some(2))
    );
    let tomorrow = DailyWindow::containing(app.clock.now()).end;
    assert_eq!(
        e["resets_at"].as_str(),
        Some(tomorrow.to_rfc3339().as_str())
    );
    // The URL route refuses before downloading.
    let urls: Vec<String> = (0..3)
        .map(|i| images.add(&format!("q{i}.png"), noise_png(512, 512, 80 + i)))
        .collect();
    let e = error_of(
        app.post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
            .await,
        429,
    )
    .await;
    assert_eq!(e["code"], "dataset_quota_reached");
    assert_eq!(images.total_hits(), 0);
    let limits: Value = app.get(&u, "/api/v1/me/limits").await.json().await.unwrap();
    assert_eq!(limits["datasets"]["datasets_used"], 2);
    assert_eq!(limits["datasets"]["datasets_limit"], 2);

    // Another user is not affected; the next UTC day starts afresh.
    app.dataset(&app.user()).await;
    app.clock.set(tomorrow);
    app.dataset(&u).await;
}

#[tokio::test]
async fn the_byte_quota_counts_what_a_dataset_stores() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.dataset_quota.bytes_per_day = 3_000_000;
    })
    .await;
    let u = app.user();
    app.dataset(&u).await; // three 512×512 noise PNGs: ~790 KB each
    let files = (0..3)
        .map(|i| (format!("p{i}.png"), noise_png(512, 512, 90 + i)))
        .collect();
    let e = error_of(app.upload(&u, files).await, 429).await;
    assert_eq!(e["code"], "dataset_quota_reached");
    assert_eq!(e["quota"], "bytes");
    let used = e["used"].as_u64().unwrap();
    assert!((2_000_000..3_000_000).contains(&used), "{e}");
    assert_eq!(datasets_today(&app, &u).await, 1);
}

#[tokio::test]
async fn the_same_images_are_stored_once_and_swept_only_when_unreferenced() {
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let app = spawn_app_with(engine, |_| {}).await;
        let u = app.user();
        let unused = app.dataset(&u).await;
        let used = app.dataset(&u).await; // the same three images
        assert_ne!(unused, used);
        assert_eq!(files_in(&app.blob_root), 3, "same bytes, stored once");
        let extra = {
            let files = vec![
                ("x.png".to_owned(), noise_png(512, 512, 100)),
                ("b.png".to_owned(), noise_png(512, 512, 1)),
                ("c.png".to_owned(), noise_png(512, 512, 2)),
            ];
            let resp = app.upload(&u, files).await;
            assert_eq!(resp.status(), 201);
            resp.json::<Value>().await.unwrap()["dataset_id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(files_in(&app.blob_root), 4);
        app.create_ok(&u, "Keeps its images", &used).await;

        let retention = DatasetRetention::default();
        let sweep = |at| sweep_datasets(&*app.repo, &*app.store, retention, "test", at);
        let start = app.clock.now();
        let r = sweep(start + chrono::Duration::days(6)).await;
        assert!(r.swept && r.datasets_deleted.is_empty(), "{r:?}");

        let later = start + chrono::Duration::days(8);
        let r = sweep(later).await;
        assert!(r.errors.is_empty(), "{r:?}");
        let mut deleted: Vec<String> = r.datasets_deleted.iter().map(ToString::to_string).collect();
        deleted.sort();
        let mut expected = vec![unused.clone(), extra.clone()];
        expected.sort();
        assert_eq!(deleted, expected);
        // Only the image no remaining dataset holds is gone; the LoRA's dataset keeps all three.
        assert_eq!(r.blobs_deleted.len(), 1, "{r:?}");
        assert_eq!(files_in(&app.blob_root), 3);
        let u2 = app.get(&u, &format!("/api/v1/datasets/{used}")).await;
        assert_eq!(u2.status(), 200);
        let body: Value = u2.json().await.unwrap();
        for img in body["images"].as_array().unwrap() {
            let resp = app
                .http
                .get(img["url"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "a LoRA's image survived the sweep");
        }
        let gone = app.get(&u, &format!("/api/v1/datasets/{unused}")).await;
        assert_eq!(gone.status(), 404);
        // Nothing left to do; a second replica holding no lease does nothing.
        let again = sweep(later + chrono::Duration::from_std(BLOB_CLAIM_GRACE).unwrap()).await;
        assert!(
            again.datasets_deleted.is_empty() && again.blobs_deleted.is_empty(),
            "{again:?}"
        );
        let other = sweep_datasets(&*app.repo, &*app.store, retention, "other", later).await;
        assert!(!other.swept);
    }
}

async fn seen_by(app: &TestApp, user: &User, lora: &str) -> Value {
    let v: Value = app
        .get(user, &format!("/api/v1/lora-models/{lora}"))
        .await
        .json()
        .await
        .unwrap();
    v["creator"]["email"].clone()
}

#[tokio::test]
async fn creators_show_a_display_name_and_their_email_stays_private() {
    let app = spawn_app().await;
    let alice = app.user_with(Some("alice.secret@example.com".into()), false);
    let bob = app.user();
    let admin = app.user_with(Some("admin@example.com".into()), true);
    let ds = app.dataset(&alice).await;
    let lora = app.create_ok(&alice, "Moon Witch", &ds).await;

    let me: Value = app.get(&alice, "/api/v1/me").await.json().await.unwrap();
    assert_eq!(me["email"], "alice.secret@example.com");
    assert_eq!(me["display_name"], "a***@e***.com");
    assert_eq!(me["display_name_chosen"], false);

    let patch = |user: &User, body: Value| {
        let req = app
            .http
            .patch(app.url("/api/v1/me"))
            .bearer_auth(&user.token)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    for bad in [
        json!({"display_name": "  "}),
        json!({"display_name": "x".repeat(51)}),
        json!({"display_name": "bob@example.com"}),
        json!({"display_name": "a\u{0007}b"}),
    ] {
        let e = error_of(patch(&alice, bad).await, 400).await;
        assert_eq!(e["code"], "invalid_display_name");
    }
    let e = error_of(patch(&alice, json!({"nickname": "A"})).await, 400).await;
    assert_eq!(e["code"], "invalid_json");
    let me: Value = patch(&alice, json!({"display_name": "  Alice A. "}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            me["display_name"].as_str(),
            me["display_name_chosen"].as_bool()
        ),
        (Some("Alice A."), Some(true))
    );

    let list: Value = app
        .get(&bob, "/api/v1/lora-models?sort=name")
        .await
        .json()
        .await
        .unwrap();
    let creator = &list["items"][0]["creator"];
    assert_eq!(
        (creator["display_name"].as_str(), &creator["email"]),
        (Some("Alice A."), &Value::Null)
    );
    let text = app
        .get(&bob, "/api/v1/lora-models?search=moon")
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("secret"), "{text}");
    assert_eq!(seen_by(&app, &bob, &lora).await, Value::Null);
    assert_eq!(
        seen_by(&app, &alice, &lora).await,
        "alice.secret@example.com"
    );
    assert_eq!(
        seen_by(&app, &admin, &lora).await,
        "alice.secret@example.com"
    );

    // Back to the derived name.
    let me: Value = patch(&alice, json!({"display_name": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["display_name"], "a***@e***.com");

    // An operator may opt in to showing addresses.
    let open = spawn_app_with(Engine::Sqlite, |s| s.show_creator_emails = true).await;
    let carol = open.user_with(Some("carol@example.com".into()), false);
    let ds = open.dataset(&carol).await;
    open.create_ok(&carol, "Open Book", &ds).await;
    let list: Value = open
        .get(&open.user(), "/api/v1/lora-models")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["creator"]["email"], "carol@example.com");
    assert_eq!(list["items"][0]["creator"]["display_name"], "c***@e***.com");
}

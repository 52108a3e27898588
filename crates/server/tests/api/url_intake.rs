//! `POST /api/v1/datasets/from-urls` end to end, against an image server on loopback; and the
//! upright storage of rotated images, which every way in shares.

use std::io::Cursor;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::image_server::{ImageServer, loopback_intake};
use loraforge_fetch::{FetchSettings, HostPattern};

fn blob_count(root: &std::path::Path) -> usize {
    if !root.exists() {
        return 0;
    }
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { blob_count(&p) } else { 1 })
        .sum()
}

#[tokio::test]
async fn image_urls_become_a_dataset_exactly_like_an_upload() {
    let images = ImageServer::start().await;
    let urls: Vec<String> = (0..3)
        .map(|i| images.add(&format!("p{i}.png"), noise_png(512, 520, i)))
        .collect();
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();

    let body = json!({"images": [
        {"url": urls[0], "caption": "ohwx woman, red coat"},
        {"url": format!("{}?token=secret-token", urls[1])},
        {"url": urls[2]},
    ]});
    let resp = app.post_json(&u, "/api/v1/datasets/from-urls", &body).await;
    assert_eq!(resp.status(), 201);
    let got: Value = resp.json().await.unwrap();
    let imgs = got["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 3);
    assert_eq!(imgs[0]["file_name"], urls[0].as_str());
    assert_eq!(imgs[0]["caption"], "ohwx woman, red coat");
    assert_eq!(
        imgs[1]["file_name"],
        urls[1].as_str(),
        "stored names drop the query (tokens)"
    );
    assert_eq!(
        (
            imgs[2]["width"].as_u64(),
            imgs[2]["height"].as_u64(),
            imgs[2]["format"].as_str()
        ),
        (Some(512), Some(520), Some("png"))
    );
    assert_eq!(blob_count(&app.blob_root), 3);
    let id = got["dataset_id"].as_str().unwrap();
    let read: Value = app
        .get(&u, &format!("/api/v1/datasets/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["images"].as_array().unwrap().len(), 3);

    // The `urls` shorthand, and a LoRA from the dataset through the usual create.
    let resp = app
        .post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
        .await;
    assert_eq!(resp.status(), 201);
    let id2 = resp.json::<Value>().await.unwrap()["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.create_ok(&u, "From URLs", &id2).await;
}

#[tokio::test]
async fn flaky_hosts_are_retried_and_every_failure_names_its_url() {
    let images = ImageServer::start().await;
    for i in 0..3 {
        images.add(&format!("p{i}.png"), noise_png(512, 512, i));
    }
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();

    // Two 503s, then the image: the dataset is stored.
    let urls = vec![
        images.url("/flaky/p0.png"),
        images.url("/img/p1.png"),
        images.url("/img/p2.png"),
    ];
    let resp = app
        .post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
        .await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    assert_eq!(images.hits("/flaky/p0.png"), 3);

    let down = images.url("/status/503/x.png");
    let gone = images.url("/status/404/y.png");
    let ok = images.url("/img/p0.png");
    let e = error_of(
        app.post_json(
            &u,
            "/api/v1/datasets/from-urls",
            &json!({"urls": [ok, down, gone]}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(e["code"], "invalid_dataset");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "{down} could not be downloaded after 3 attempts: HTTP 503"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{gone} could not be downloaded: HTTP 404")),
        "{msg}"
    );
    assert_eq!(images.hits("/status/503/x.png"), 3);
    assert_eq!(images.hits("/status/404/y.png"), 1, "4xx is not retried");
    let per_url: Vec<(bool, &str)> = e["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["ok"].as_bool().unwrap(), i["url"].as_str().unwrap()))
        .collect();
    assert_eq!(
        per_url,
        vec![
            (true, ok.as_str()),
            (false, down.as_str()),
            (false, gone.as_str())
        ]
    );
    assert_eq!(e["images"][1]["errors"][0]["code"], "download_failed");
    assert_eq!(
        blob_count(&app.blob_root),
        3,
        "only the first dataset's images are stored"
    );

    // Downloaded but failing the checks: the same 422 shape, naming the URL.
    let text = images.add("notes.png", b"plain text, not an image".repeat(100));
    let e = error_of(
        app.post_json(
            &u,
            "/api/v1/datasets/from-urls",
            &json!({"urls": [images.url("/img/p1.png"), images.url("/img/p2.png"), text]}),
        )
        .await,
        422,
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains(&format!(
            "{} is not a JPEG or PNG image",
            images.url("/img/notes.png")
        )),
        "{e}"
    );
}

#[tokio::test]
async fn url_intake_is_off_until_hosts_are_allowed() {
    let app = spawn_app().await;
    let u = app.user();
    let e = error_of(
        app.post_json(
            &u,
            "/api/v1/datasets/from-urls",
            &json!({"urls": ["https://x.example.com/a.png"]}),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "url_intake_disabled");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("LORAFORGE_IMAGE_URL_ALLOWED_HOSTS"),
        "{e}"
    );
    let body = json!({"character_references": [{"character_id": "c", "image_url": "https://x.example.com/a.png"}]});
    let e = error_of(
        app.post_json(&u, "/api/v1/lora-models/from-references", &body)
            .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "url_intake_disabled");
}

#[tokio::test]
async fn loopback_and_private_addresses_are_refused_without_a_request() {
    let images = ImageServer::start().await;
    let url = images.add("p.png", noise_png(512, 512, 1));
    let port = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.url_intake = FetchSettings {
            allowed_hosts: ["127.0.0.1", "localhost", "169.254.169.254"]
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            ..FetchSettings::default()
        };
    })
    .await;
    let u = app.user();
    let urls = [
        url.clone(),
        format!("http://localhost:{port}/img/p.png"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "file:///etc/passwd".to_owned(),
        "https://not-allowed.example.org/a.png".to_owned(),
    ];
    let e = error_of(
        app.post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
            .await,
        422,
    )
    .await;
    let codes: Vec<&str> = e["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["errors"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "forbidden_address",
            "forbidden_address",
            "forbidden_address",
            "unsupported_scheme",
            "host_not_allowed"
        ]
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("the cloud metadata service"),
        "{e}"
    );
    assert_eq!(images.total_hits(), 0, "nothing reached the server");
}

#[tokio::test]
async fn downloads_are_cached_for_an_hour_by_the_app_clock() {
    let images = ImageServer::start().await;
    let urls: Vec<String> = (0..3)
        .map(|i| images.add(&format!("p{i}.png"), noise_png(512, 512, i)))
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.url_intake = loopback_intake(Some(cache.path().join("cache/downloads")))
    })
    .await;
    let u = app.user();
    for _ in 0..2 {
        let resp = app
            .post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
            .await;
        assert_eq!(resp.status(), 201);
    }
    assert_eq!(
        images.hits("/img/p0.png"),
        1,
        "the second dataset came from the cache"
    );
    app.clock.advance(chrono::Duration::minutes(61));
    assert_eq!(
        app.post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
            .await
            .status(),
        201
    );
    assert_eq!(
        images.hits("/img/p0.png"),
        2,
        "expired entries are downloaded again"
    );
}

#[tokio::test]
async fn malformed_requests_are_400_and_too_many_urls_are_refused_before_downloading() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();
    for body in [
        json!({}),
        json!({"urls": ["a"], "images": []}),
        json!({"urls": "a"}),
        json!({"images": [{"href": "x"}]}),
    ] {
        let e = error_of(
            app.post_json(&u, "/api/v1/datasets/from-urls", &body).await,
            400,
        )
        .await;
        assert!(
            e["code"] == "invalid_json" || e["code"] == "invalid_request",
            "{body}: {e}"
        );
    }
    let urls: Vec<String> = (0..21)
        .map(|i| images.url(&format!("/img/{i}.png")))
        .collect();
    let e = error_of(
        app.post_json(&u, "/api/v1/datasets/from-urls", &json!({"urls": urls}))
            .await,
        422,
    )
    .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("at most 20 images are allowed, 21 were sent"),
        "{e}"
    );
    assert_eq!(images.total_hits(), 0);
}

/// A JPEG of noise with an EXIF APP1 segment saying orientation `o`.
fn jpeg_with_orientation(w: u32, h: u32, o: u16) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(w) * 31 + u64::from(o));
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    });
    let mut jpeg = Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    // TIFF, little-endian, one IFD entry: Orientation (0x0112), SHORT, count 1, value o.
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&u32::from(o).to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[tokio::test]
async fn rotated_photos_are_stored_upright_with_upright_dimensions() {
    let images = ImageServer::start().await;
    let app = spawn_app_with(Engine::Sqlite, |s| s.url_intake = loopback_intake(None)).await;
    let u = app.user();
    let sideways = jpeg_with_orientation(640, 560, 6);
    let files = vec![
        ("phone.jpg".to_owned(), sideways.clone()),
        ("b.png".to_owned(), noise_png(512, 512, 2)),
        ("c.png".to_owned(), noise_png(512, 512, 3)),
    ];
    let resp = app.upload(&u, files).await;
    assert_eq!(resp.status(), 201);
    let got: Value = resp.json().await.unwrap();
    let phone = &got["images"][0];
    assert_eq!(
        (phone["width"].as_u64(), phone["height"].as_u64()),
        (Some(560), Some(640))
    );

    // The stored file itself is upright and carries no orientation.
    let id = got["dataset_id"].as_str().unwrap();
    let dataset = app
        .repo
        .get_dataset(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let stored = std::fs::read(app.blob_root.join(&dataset.images[0].storage_key)).unwrap();
    assert_ne!(stored, sideways);
    assert_eq!(phone["bytes"].as_u64(), Some(stored.len() as u64));
    let decoded = image::load_from_memory(&stored).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (560, 640));
    let report = loraforge_checks::check_image("stored.jpg", &stored, &Default::default());
    assert_eq!(report.orientation, 1);

    // The URL path shares it.
    let url = images.add("phone.jpg", sideways);
    let body = json!({"urls": [url, images.add("b.png", noise_png(512, 512, 2)), images.add("c.png", noise_png(512, 512, 3))]});
    let got: Value = app
        .post_json(&u, "/api/v1/datasets/from-urls", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            got["images"][0]["width"].as_u64(),
            got["images"][0]["height"].as_u64()
        ),
        (Some(560), Some(640)),
        "{got}"
    );
}

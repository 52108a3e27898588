use serde_json::Value;

use crate::helpers::*;

fn files_in(dir: &std::path::Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    walk(dir)
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk(&p) } else { 1 })
        .sum()
}

#[tokio::test]
async fn a_valid_upload_is_stored_and_readable_by_its_owner_only() {
    let app = spawn_app().await;
    let owner = app.user();
    let files: Vec<_> = (0..3)
        .map(|i| (format!("photo{i}.png"), noise_png(512, 600, i)))
        .collect();
    let sizes: Vec<usize> = files.iter().map(|(_, b)| b.len()).collect();
    let resp = app.upload(&owner, files).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let id = body["dataset_id"].as_str().unwrap();
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(images[1]["file_name"], "photo1.png");
    assert_eq!(images[1]["format"], "png");
    assert_eq!(
        (images[1]["width"].as_u64(), images[1]["height"].as_u64()),
        (Some(512), Some(600))
    );
    assert_eq!(images[1]["bytes"].as_u64().unwrap() as usize, sizes[1]);
    assert_eq!(files_in(&app.blob_root), 3);

    let got: Value = app
        .get(&owner, &format!("/api/v1/datasets/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["dataset_id"], id);
    assert_eq!(got["images"].as_array().unwrap().len(), 3);
    assert!(
        got["images"][0]["url"]
            .as_str()
            .unwrap()
            .contains("/files/dataset-images/sha256/")
    );

    let stranger = app.user();
    let e = error_of(
        app.get(&stranger, &format!("/api/v1/datasets/{id}")).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "not_found");
}

#[tokio::test]
async fn a_rejected_upload_lists_every_failing_image_and_stores_nothing() {
    let app = spawn_app().await;
    let u = app.user();
    let files = vec![
        ("photo1.png".to_owned(), noise_png(512, 512, 1)),
        ("photo2.png".to_owned(), noise_png(600, 600, 2)),
        ("photo3.png".to_owned(), noise_png(480, 640, 3)),
        (
            "notes.png".to_owned(),
            b"just some text, not an image at all".repeat(4000),
        ),
    ];
    let e = error_of(app.upload(&u, files).await, 422).await;
    assert_eq!(e["code"], "invalid_dataset");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("photo3.png is 480×640; images must be at least 512×512"),
        "{msg}"
    );
    assert!(msg.contains("notes.png"), "{msg}");
    let images = e["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    let failing: Vec<_> = images
        .iter()
        .filter(|i| i["ok"] == false)
        .map(|i| i["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["photo3.png", "notes.png"]);
    assert_eq!(
        files_in(&app.blob_root),
        0,
        "nothing may be stored for a rejected upload"
    );
}

#[tokio::test]
async fn too_few_images_is_rejected_with_how_many_to_add() {
    let app = spawn_app().await;
    let u = app.user();
    let files = vec![
        ("a.png".to_owned(), noise_png(512, 512, 1)),
        ("b.png".to_owned(), noise_png(512, 512, 2)),
    ];
    let e = error_of(app.upload(&u, files).await, 422).await;
    assert_eq!(e["code"], "invalid_dataset");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("add at least 1 more"),
        "{e}"
    );
}

#[tokio::test]
async fn captions_pair_with_images_by_stem() {
    let app = spawn_app().await;
    let u = app.user();
    let mut form = reqwest::multipart::Form::new();
    for i in 0..3 {
        form = form.part(
            "images",
            reqwest::multipart::Part::bytes(noise_png(512, 512, i)).file_name(format!("p{i}.png")),
        );
    }
    form = form.part(
        "images",
        reqwest::multipart::Part::bytes(b"ohwx woman, red coat".to_vec()).file_name("p1.txt"),
    );
    let resp = app
        .http
        .post(app.url("/api/v1/datasets"))
        .bearer_auth(&u.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["images"][1]["caption"], "ohwx woman, red coat");
    assert!(body["images"][0]["caption"].is_null());

    // A caption without its image is a clear 400.
    let mut form = reqwest::multipart::Form::new();
    for i in 0..3 {
        form = form.part(
            "images",
            reqwest::multipart::Part::bytes(noise_png(512, 512, i)).file_name(format!("p{i}.png")),
        );
    }
    form = form.part(
        "images",
        reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("other.txt"),
    );
    let resp = app
        .http
        .post(app.url("/api/v1/datasets"))
        .bearer_auth(&u.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp, 400).await["code"], "invalid_caption");
}

#[tokio::test]
async fn non_multipart_bodies_and_unknown_parts_are_400() {
    let app = spawn_app().await;
    let u = app.user();
    let resp = app
        .post_json(&u, "/api/v1/datasets", &serde_json::json!({}))
        .await;
    assert_eq!(error_of(resp, 400).await["code"], "invalid_multipart");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("a.png"),
    );
    let resp = app
        .http
        .post(app.url("/api/v1/datasets"))
        .bearer_auth(&u.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp, 400).await["code"], "invalid_multipart");
}

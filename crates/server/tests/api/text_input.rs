//! Issue 9 item 7 and 10 at the edge: every way text comes in is checked by the one rule
//! (`loraforge_domain::text`), with the same reasons; names are compared as people see them;
//! base models come from the operator's allow-list.

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::*;

async fn upload_form(app: &TestApp, user: &User, form: Form) -> reqwest::Response {
    app.http
        .post(app.url("/api/v1/datasets"))
        .bearer_auth(&user.token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Three valid images, the first named `first`, plus `extra` parts; file names are sent as
/// raw UTF-8, as curl and browsers send them.
fn images_form(first: &str, extra: Vec<(String, Vec<u8>)>) -> Form {
    let mut form = Form::new().percent_encode_noop();
    for i in 0..3u64 {
        let name = if i == 0 {
            first.to_owned()
        } else {
            format!("p{i}.png")
        };
        form = form.part(
            "images",
            Part::bytes(noise_png(512, 512, i)).file_name(name),
        );
    }
    for (name, bytes) in extra {
        form = form.part("images", Part::bytes(bytes).file_name(name));
    }
    form
}

#[tokio::test]
async fn names_with_hidden_or_reordering_characters_are_refused_with_where() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let cases = [
        ("abc\u{202e}txt.exe", "bidi_control", "U+202E", 4),
        ("Cyber\u{200b}punk", "invisible_character", "U+200B", 6),
        ("\u{feff}Hero", "invisible_character", "U+FEFF", 1),
        ("Soft\u{ad}ware", "invisible_character", "U+00AD", 5),
        ("two\nlines", "control_character", "U+000A", 4),
    ];
    for (name, reason, character, position) in cases {
        let e = error_of(app.create_lora(&u, name, &ds).await, 400).await;
        assert_eq!(e["code"], "invalid_name", "{name:?}: {e}");
        assert_eq!(e["reason"], reason, "{name:?}: {e}");
        assert_eq!(e["field"], "name");
        assert_eq!(e["character"], character, "{name:?}: {e}");
        assert_eq!(e["position"], position, "{name:?}: {e}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(character) && msg.contains(&format!("position {position}")),
            "{msg}"
        );
    }
    let e = error_of(app.create_lora(&u, "   ", &ds).await, 400).await;
    assert_eq!(
        (e["code"].as_str(), e["reason"].as_str()),
        (Some("invalid_name"), Some("empty"))
    );
    // Emoji sequences keep their joiners.
    let ok = app
        .create_lora(&u, "Family 👨\u{200d}👩\u{200d}👧", &ds)
        .await;
    assert_eq!(ok.status(), 202);
}

#[tokio::test]
async fn names_that_look_the_same_are_one_name_per_user() {
    let app = spawn_app().await;
    let (a, b) = (app.user(), app.user());
    let (da, db) = (app.dataset(&a).await, app.dataset(&b).await);
    let id = app.create_ok(&a, "Ｃｙｂｅｒｐｕｎｋ  Girl", &da).await;
    // Stored in its normal form.
    let got: Value = app
        .get(&a, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "Cyberpunk Girl");
    for same in [
        "cyberpunk girl",
        "CYBERPUNK GIRL",
        " Cyberpunk\u{3000}Girl ",
    ] {
        let e = error_of(app.create_lora(&a, same, &da).await, 409).await;
        assert_eq!(e["code"], "duplicate_name", "{same:?}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("\"Cyberpunk Girl\""),
            "{e}"
        );
    }
    app.create_ok(&b, "cyberpunk girl", &db).await;
}

#[tokio::test]
async fn descriptions_and_trigger_words_follow_the_same_rule() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let body = json!({"name": "A", "dataset_id": ds, "description": "nice\u{2066} one"});
    let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 400).await;
    assert_eq!(
        (e["code"].as_str(), e["reason"].as_str()),
        (Some("invalid_description"), Some("bidi_control"))
    );
    assert_eq!(e["position"], 5);
    let body =
        json!({"name": "A", "dataset_id": ds, "params": {"trigger_words": ["oh\u{200b}wx"]}});
    let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 400).await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("invalid_params"), Some("trigger_words"))
    );
    assert!(e["message"].as_str().unwrap().contains("U+200B"), "{e}");
    // Multi-line descriptions keep their lines; full-width trigger words become plain.
    let body = json!({"name": "B", "dataset_id": ds, "description": "line one\r\nline two",
        "params": {"trigger_words": ["ｏｈｗｘ"]}});
    let resp = app.post_json(&u, "/api/v1/lora-models", &body).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["lora_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got: Value = app
        .get(&u, &format!("/api/v1/lora-models/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["description"], "line one\nline two");
    assert_eq!(got["params"]["trigger_words"], json!(["ohwx"]));
}

#[tokio::test]
async fn captions_are_checked_alike_from_multipart_and_json() {
    let app = spawn_app().await;
    let u = app.user();
    // A control character in a caption file: refused, as JSON captions always were.
    let form = images_form(
        "p0.png",
        vec![("p0.txt".into(), b"ohwx\x01 smiling".to_vec())],
    );
    let e = error_of(upload_form(&app, &u, form).await, 400).await;
    assert_eq!(
        (e["code"].as_str(), e["reason"].as_str()),
        (Some("invalid_caption"), Some("control_character"))
    );
    assert_eq!(
        (e["character"].as_str(), e["position"].as_u64()),
        (Some("U+0001"), Some(5))
    );
    assert_eq!(e["file_name"], "p0.txt");
    let body = json!({"images": [{"url": "https://images.example.com/a.png", "caption": "ohwx\u{1} smiling"}]});
    let e = error_of(
        app.post_json(&u, "/api/v1/datasets/from-urls", &body).await,
        400,
    )
    .await;
    assert_eq!(
        (e["code"].as_str(), e["reason"].as_str()),
        (Some("invalid_caption"), Some("control_character"))
    );
    assert_eq!(e["position"], 5);
    let body =
        json!({"images": [{"url": "https://images.example.com/a.png", "caption": "a\u{200b}b"}]});
    let e = error_of(
        app.post_json(&u, "/api/v1/datasets/from-urls", &body).await,
        400,
    )
    .await;
    assert_eq!(e["reason"], "invisible_character");

    // A byte order mark opening a caption file is not text; full-width letters are normalised.
    let form = images_form(
        "p0.png",
        vec![(
            "p0.txt".into(),
            "\u{feff}ｏｈｗｘ, smiling\r\n".as_bytes().to_vec(),
        )],
    );
    let resp = upload_form(&app, &u, form).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["images"][0]["caption"], "ohwx, smiling");
}

#[tokio::test]
async fn file_names_are_refused_not_silently_changed() {
    let app = spawn_app().await;
    let u = app.user();
    for (name, reason) in [
        ("photo\u{202e}gnp.exe", "bidi_control"),
        ("pho\u{200b}to.png", "invisible_character"),
    ] {
        let e = error_of(upload_form(&app, &u, images_form(name, vec![])).await, 400).await;
        assert_eq!(
            (e["code"].as_str(), e["reason"].as_str()),
            (Some("invalid_file_name"), Some(reason)),
            "{e}"
        );
    }
    let resp = upload_form(&app, &u, images_form("ｐｈｏｔｏ.png", vec![])).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["images"][0]["file_name"], "photo.png");
}

#[tokio::test]
async fn base_models_off_the_allow_list_are_422_with_what_is_allowed() {
    let app = spawn_app().await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    for model in ["attacker/evil-sdxl", "../../etc", "/etc/models/x"] {
        let body = json!({"name": "A", "dataset_id": ds, "params": {"base_model": model}});
        let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 422).await;
        assert_eq!(e["code"], "base_model_not_allowed", "{model}");
        assert_eq!(e["field"], "base_model");
        assert_eq!(
            e["allowed"],
            json!(["stabilityai/stable-diffusion-xl-base-1.0", "/models/…"]),
            "{e}"
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("stabilityai/stable-diffusion-xl-base-1.0")
        );
    }
    for (i, model) in [
        "stabilityai/stable-diffusion-xl-base-1.0",
        "/models/tiny-sdxl",
    ]
    .iter()
    .enumerate()
    {
        let body =
            json!({"name": format!("ok {i}"), "dataset_id": ds, "params": {"base_model": model}});
        assert_eq!(
            app.post_json(&u, "/api/v1/lora-models", &body)
                .await
                .status(),
            202,
            "{model}"
        );
    }
    // The operator decides: another list, another answer.
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.param_limits.allowed_base_models = vec!["org/house-model".into()];
    })
    .await;
    let u = app.user();
    let ds = app.dataset(&u).await;
    let body = json!({"name": "A", "dataset_id": ds, "params": {"base_model": "stabilityai/stable-diffusion-xl-base-1.0"}});
    let e = error_of(app.post_json(&u, "/api/v1/lora-models", &body).await, 422).await;
    assert_eq!(e["allowed"], json!(["org/house-model", "/models/…"]));
    let body = json!({"name": "B", "dataset_id": ds, "params": {"base_model": "Org/House-Model"}});
    let resp = app.post_json(&u, "/api/v1/lora-models", &body).await;
    assert_eq!(resp.status(), 202);
}

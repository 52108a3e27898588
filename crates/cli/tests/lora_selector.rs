//! `<lora-selector>` (`crates/server/web/lora-selector.js`) in real headless Chromium against the
//! real binary: the demo page served at `/ui/selector-demo.html`, completed LoRAs seeded into the
//! service's database through the repository (as `loraforge bench-seed` does), and one LoRA of
//! the signed-in user really training on the tiny model so its status shows live progress.
//!
//! Set `LORAFORGE_SCREENSHOTS=1` to write the element's picture to
//! `docs/screenshots/lora-selector.png` (otherwise it goes to a temporary folder).

mod common;

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use common::browser::{Browser, Element};
use common::service::Service;
use loraforge_db::{ConnectOptions, LibraryRow};
use loraforge_domain::{
    Dataset, DatasetId, DatasetImage, ImageFormat, LoraId, LoraName, TrainingParams,
    TrainingStatus, UserId,
};

const USER: &str = "0b5c1f7e-2d4a-4c8e-9f1a-5e6d7c8b9a01";
const ARROW_DOWN: &str = "\u{E015}";
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";
const NOTICE: &str = "LoRA training in progress. Video will use reference images. You can regenerate with LoRA once training completes.";
const HELP: &str = "A new LoRA will be trained from character reference images. This adds ~30-60 minutes to generation time. Training costs are covered by the system. Maximum 5 LoRAs per month per user.";

/// Names of the seeded library: (name, owner index, usage count). "Cyberpunk Girl" twice, by
/// two creators, as the PRD's example of a duplicate told apart by its creator.
const LIBRARY: &[(&str, usize, u64)] = &[
    ("Cyberpunk Girl", 0, 900),
    ("Cyberpunk Girl", 1, 40),
    ("Watercolor Fox", 0, 500),
    ("Anime Knight", 2, 300),
    ("Zen Monk", 1, 250),
    ("Basil the Cat", 2, 120),
    ("Orbital Pilot", 0, 80),
    ("Desert Nomad", 1, 60),
    ("Marble Statue", 2, 30),
    ("Neon Samurai", 0, 20),
    ("Elf Archer", 1, 10),
    ("Harbor Pirate", 2, 5),
];
/// Fillers past the element's first page (20), so "Load more" has something to load.
const FILLERS: usize = 14;

/// Completed LoRAs of three other users, straight into the service's database (`url`).
async fn seed_library(url: &str) {
    let repo = loraforge_db::connect(url, &ConnectOptions::default())
        .await
        .expect("the service's database");
    let owners: Vec<(UserId, &str)> = [
        ("ada@example.com", 1u64),
        ("bob@example.org", 2),
        ("cleo@example.net", 3),
    ]
    .iter()
    .map(|(email, n)| (UserId(uuid::Uuid::from_u64_pair(0x5e1ec7, *n)), *email))
    .collect();
    let mut datasets = Vec::new();
    for (i, (owner, _)) in owners.iter().enumerate() {
        let dataset = Dataset {
            id: DatasetId(uuid::Uuid::from_u64_pair(0xda7a, i as u64)),
            user_id: *owner,
            images: vec![DatasetImage {
                index: 0,
                file_name: "seed.png".into(),
                format: ImageFormat::Png,
                width: 1024,
                height: 1024,
                bytes: 200_000,
                content_hash: format!("{i:032x}"),
                storage_key: format!("seed/{i}/0.png"),
                caption: None,
            }],
            created_at: Utc::now() - chrono::Duration::days(30),
        };
        repo.insert_dataset(&dataset).await.unwrap();
        datasets.push(dataset.id);
    }
    let fillers: Vec<(String, usize, u64)> = (0..FILLERS)
        .map(|i| (format!("Filler Character {i:02}"), i % 3, 1))
        .collect();
    let rows = LIBRARY
        .iter()
        .map(|(n, o, u)| ((*n).to_owned(), *o, *u))
        .chain(fillers)
        .enumerate()
        .map(|(i, (name, owner, usage))| LibraryRow {
            id: LoraId(uuid::Uuid::new_v4()),
            owner: owners[owner].0,
            owner_email: Some(owners[owner].1.to_owned()),
            name: LoraName::parse(&name).unwrap(),
            description: Some(format!("A seeded character, number {i}")),
            dataset_id: datasets[owner],
            params: TrainingParams::default(),
            status: TrainingStatus::Completed,
            usage_count: usage,
            created_at: Utc::now() - chrono::Duration::hours(i as i64 + 1),
        })
        .collect();
    repo.bulk_insert_library(rows).await.unwrap();
}

/// `document.querySelector('#selector').shadowRoot` in page scripts.
const ROOT: &str = "document.querySelector('#selector').shadowRoot";

async fn labels(browser: &Browser) -> Vec<String> {
    let v = browser
        .eval(
            &format!("return [...{ROOT}.querySelectorAll('[role=option] .label')].map(e => e.textContent);"),
            vec![],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Waits until the listbox shows exactly `want`, in order.
async fn wait_labels(browser: &Browser, want: &[String], what: &str) {
    let script = format!(
        "const got = [...{ROOT}.querySelectorAll('[role=option] .label')].map(e => e.textContent);\
         return JSON.stringify(got) === {};",
        serde_json::to_string(&serde_json::to_string(want).unwrap()).unwrap()
    );
    let ok = tokio::time::timeout(common::browser::WAIT, browser.wait_for(what, &script)).await;
    assert!(
        ok.is_ok(),
        "{what}: want {want:?}, shows {:?}",
        labels(browser).await
    );
}

/// The labels the element should show for a listing, from the API itself.
async fn api_labels(svc: &Service, token: &str, query: &str) -> (Vec<String>, Vec<String>) {
    let page = svc
        .get(
            token,
            &format!("/api/v1/lora-models?status=completed&limit=20&{query}"),
        )
        .await;
    let items = page["items"].as_array().unwrap();
    let labels = items
        .iter()
        .map(|i| {
            format!(
                "{} (by {})",
                i["name"].as_str().unwrap(),
                i["creator"]["display_name"].as_str().unwrap()
            )
        })
        .collect();
    let ids = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    (labels, ids)
}

async fn height(browser: &Browser) -> Value {
    browser
        .eval(
            "return document.querySelector('#selector').getBoundingClientRect().height;",
            vec![],
        )
        .await
}

async fn events(browser: &Browser) -> Vec<Value> {
    serde_json::from_value(browser.eval("return window.loraEvents;", vec![]).await).unwrap()
}

/// Waits until the last `change` event's detail is `want`.
async fn wait_event(browser: &Browser, want: Value) {
    let script = format!(
        "const e = window.loraEvents; if (e.length === 0) return false; \
         const last = e[e.length - 1]; \
         return JSON.stringify(last, Object.keys(last).sort()) === {};",
        serde_json::to_string(&want.to_string()).unwrap()
    );
    let ok = tokio::time::timeout(
        common::browser::WAIT + Duration::from_secs(1),
        browser.wait_for(&format!("the change event {want}"), &script),
    )
    .await;
    assert!(ok.is_ok(), "want {want}, got {:?}", events(browser).await);
}

/// Types `name` into the new-LoRA field (replacing what is there) and waits for the name check's
/// verdict (`data-state` of the message: taken, warn, ok, invalid, …).
async fn type_name(browser: &Browser, sel: &Element<'_>, name: &str) -> (String, String) {
    let input = sel.shadow_find("#name").await;
    input.clear().await;
    input.send_keys(name).await;
    browser
        .wait_for(
            &format!("the check of {name:?}"),
            &format!(
                "const m = {ROOT}.getElementById('name-msg');\
                 return {ROOT}.getElementById('name').value === {} && !['checking', 'empty'].includes(m.dataset.state);",
                serde_json::to_string(name).unwrap()
            ),
        )
        .await;
    let v = browser
        .eval(
            &format!("const m = {ROOT}.getElementById('name-msg'); return [m.dataset.state, m.textContent];"),
            vec![],
        )
        .await;
    (
        v[0].as_str().unwrap().to_owned(),
        v[1].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selector_picks_existing_new_and_none_and_shows_a_training_lora_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let url = format!("sqlite://{}", svc.data.join("loraforge.db").display());
    selector_story(&svc, &url, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selector_picks_existing_new_and_none_and_shows_a_training_lora_on_postgres() {
    let db = loraforge_db::test_support::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[("LORAFORGE_DATABASE_URL", db.url())]);
    selector_story(&svc, db.url(), false).await;
}

/// The whole story on one service; `picture`: take the element's picture for the docs.
async fn selector_story(svc: &Service, db_url: &str, picture: bool) {
    let token = svc.token(USER);
    // Started first: it takes the longest to reach its first step.
    let training = svc.create(&token, "Mira", 5000).await;
    seed_library(db_url).await;

    let browser = Browser::start(420, 1000).await;
    browser
        .goto(&format!("{}/ui/selector-demo.html", svc.url))
        .await;
    browser.find("#token").await.send_keys(&token).await;
    browser
        .find("#host button[type=submit]")
        .await
        .click()
        .await;
    let sel = browser.find("#selector").await;
    // The token lives in the element's memory only.
    let html = browser.eval("return document.documentElement.outerHTML + document.querySelector('#selector').shadowRoot.innerHTML;", vec![]).await;
    assert!(!html.as_str().unwrap().contains(&token));
    assert_eq!(sel.attribute("token").await, None);
    assert_eq!(sel.property("token").await, Value::Null);
    assert_eq!(sel.property("hasToken").await, json!(true));
    // The default is "No LoRA", set by the host's side: nothing emitted yet.
    assert_eq!(
        sel.shadow_find("input[value=none]")
            .await
            .property("checked")
            .await,
        json!(true)
    );
    assert!(events(&browser).await.is_empty());

    // Existing: the library, most used first, "Name (by creator)".
    sel.shadow_find("input[value=existing]").await.click().await;
    let (popular, _) = api_labels(svc, &token, "sort=popular").await;
    assert_eq!(popular.len(), 20);
    assert!(popular[0].starts_with("Cyberpunk Girl (by "), "{popular:?}");
    wait_labels(&browser, &popular, "the library by popularity").await;
    let msg = sel.shadow_find("#list-msg").await.text().await;
    assert_eq!(msg, format!("20 of {} LoRAs", LIBRARY.len() + FILLERS));
    // Not chosen yet: the form would refuse it.
    assert_eq!(
        browser
            .eval(
                "return document.querySelector('#selector').checkValidity();",
                vec![]
            )
            .await,
        json!(false)
    );
    let full_height = height(&browser).await;

    // Load more: the rest of the library is appended.
    sel.shadow_find("#more").await.click().await;
    browser
        .wait_for(
            "the second page",
            &format!(
                "return {ROOT}.querySelectorAll('[role=option]').length === {};",
                LIBRARY.len() + FILLERS
            ),
        )
        .await;

    // Search, then pick the second match with the keyboard.
    let search = sel.shadow_find("#search").await;
    search.send_keys("cyberpunk").await;
    let (found, ids) = api_labels(svc, &token, "sort=popular&search=cyberpunk").await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_ne!(
        found[0], found[1],
        "the two creators tell the duplicates apart"
    );
    wait_labels(&browser, &found, "the search results").await;
    // Space is reserved: fewer results do not change the element's height.
    assert_eq!(height(&browser).await, full_height);
    search.send_keys(ARROW_DOWN).await;
    search.send_keys(ARROW_DOWN).await;
    let active = browser
        .eval(
            &format!(
                "return {ROOT}.getElementById('search').getAttribute('aria-activedescendant');"
            ),
            vec![],
        )
        .await;
    assert_eq!(active, json!("opt-1"));
    search.send_keys(ENTER).await;
    wait_event(&browser, json!({"type": "existing", "loraId": ids[1]})).await;
    assert_eq!(events(&browser).await.len(), 1, "one pick, one event");
    assert_eq!(
        sel.shadow_find("#opt-1")
            .await
            .attribute("aria-selected")
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        sel.shadow_find("#picked").await.text().await,
        format!("Selected: {}", found[1])
    );
    assert_eq!(
        browser
            .eval(
                "return document.querySelector('#selector').checkValidity();",
                vec![]
            )
            .await,
        json!(true)
    );

    // Sort by name (search cleared with Escape).
    search.send_keys(ESCAPE).await;
    search.send_keys(ESCAPE).await;
    sel.shadow_find("#sort option[value=name]")
        .await
        .click()
        .await;
    let (by_name, _) = api_labels(svc, &token, "sort=name").await;
    let mut sorted = by_name.clone();
    sorted.sort_by_key(|l| l.to_lowercase());
    assert_eq!(by_name, sorted, "the API's name order");
    wait_labels(&browser, &by_name, "the library by name").await;

    // New: the help text, then a name of the user's own (blocked), one other users have
    // (a warning, allowed) and a fresh one.
    sel.shadow_find("input[value=new]").await.click().await;
    assert_eq!(sel.shadow_find("#name-help").await.text().await, HELP);
    let (state, text) = type_name(&browser, &sel, "Mira").await;
    assert_eq!(state, "taken", "{text}");
    assert!(text.contains("You already have a LoRA named"), "{text}");
    assert_eq!(
        browser
            .eval(
                "return document.querySelector('#selector').checkValidity();",
                vec![]
            )
            .await,
        json!(false)
    );
    let (state, text) = type_name(&browser, &sel, "Cyberpunk Girl").await;
    assert_eq!(state, "warn", "{text}");
    assert!(text.contains("2 other users have"), "{text}");
    wait_event(
        &browser,
        json!({"type": "new", "characterName": "Cyberpunk Girl"}),
    )
    .await;
    let (state, text) = type_name(&browser, &sel, "Brand New Hero").await;
    assert_eq!(state, "ok", "{text}");
    wait_event(
        &browser,
        json!({"type": "new", "characterName": "Brand New Hero"}),
    )
    .await;
    // The user's own name was never sent. (Names typed on the way to another may be: each
    // valid name is a valid choice, as each keystroke is for a native input.)
    let ev = events(&browser).await;
    assert!(!ev.iter().any(|e| e["characterName"] == "Mira"), "{ev:?}");

    // None.
    sel.shadow_find("input[value=none]").await.click().await;
    wait_event(&browser, json!({"type": "none"})).await;

    // The user's LoRA in training: badge, progress and the notice.
    svc.training_past(
        &token,
        &training,
        1,
        "training steps",
        Duration::from_secs(240),
    )
    .await;
    browser.find("#lora-id").await.send_keys(&training).await;
    browser
        .find("#host button[type=submit]")
        .await
        .click()
        .await;
    browser
        .wait_for(
            "the training badge",
            &format!("return {ROOT}.getElementById('st-badge').textContent === 'training';"),
        )
        .await;
    let bar = sel.shadow_find("#st-bar").await;
    let pct: u64 = bar
        .attribute("aria-valuenow")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&pct), "{pct}");
    let st_text = sel.shadow_find("#st-text").await.text().await;
    assert!(st_text.contains('%'), "{st_text}");
    assert_eq!(sel.shadow_find("#st-notice").await.text().await, NOTICE);

    // The picture for the docs: the library and the status together.
    sel.shadow_find("input[value=existing]").await.click().await;
    wait_labels(&browser, &by_name, "the library again").await;
    if picture {
        shoot(&browser).await;
    }

    let (code, body) = svc.cancel(&token, &training).await;
    assert_eq!(code, 200, "{body}");
    assert!(browser.console_errors().await.is_empty());
}

/// The element alone, cropped from the viewport.
async fn shoot(browser: &Browser) {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("page.png");
    browser.screenshot(&full).await;
    let r = browser
        .eval(
            "const r = document.querySelector('#selector').getBoundingClientRect();\
             return [r.x, r.y, r.width, r.height, window.devicePixelRatio];",
            vec![],
        )
        .await;
    let f = |i: usize| r[i].as_f64().unwrap();
    let img = image::open(&full).unwrap();
    let (x, y) = ((f(0) * f(4)) as u32, (f(1) * f(4)) as u32);
    let w = ((f(2) * f(4)) as u32).min(img.width() - x);
    let h = ((f(3) * f(4)) as u32).min(img.height() - y);
    assert!(w > 200 && h > 200, "{w}x{h}");
    let cropped = img.crop_imm(x, y, w, h);
    let out = if std::env::var_os("LORAFORGE_SCREENSHOTS").is_some() {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/screenshots/lora-selector.png")
    } else {
        dir.path().join("lora-selector.png")
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    cropped.save(&out).unwrap();
}

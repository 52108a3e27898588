//! The web UI in a real headless Chromium against the real binary: sign in (token and one
//! click), upload a dataset with a bad image and see why beside it, create a LoRA on the tiny
//! model and watch it train to `completed` without a reload, download it, find it by search,
//! reach it with the keyboard alone, a phone-sized viewport without sideways scrolling, and an
//! admin approving a LoRA waiting for review. Screenshots of the main pages go to
//! `docs/screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::browser::Browser;
use common::noise_png;
use common::service::{Service, USER, tiny_model};
use serde_json::json;

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
/// A LoRA on the tiny model trains in well under this on one CPU thread.
const TRAINING: Duration = Duration::from_secs(300);

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
}

/// Writes 3 good training images and one too small to train on; returns their paths.
fn images(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let good = (0..3)
        .map(|i| {
            let p = dir.join(format!("face{i}.png"));
            std::fs::write(&p, noise_png(96, 96, 10 + i)).unwrap();
            p
        })
        .collect();
    let bad = dir.join("tiny.png");
    // 40 px: under the 64 px minimum side the tests' service is configured with.
    std::fs::write(&bad, noise_png(40, 40, 99)).unwrap();
    (good, bad)
}

async fn no_page_errors(b: &Browser) {
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "the page raised errors: {errors:?}");
}

/// Fills the form of `#/new` for the tiny model and creates; returns the new LoRA's id.
async fn create_through_the_form(b: &Browser, svc: &Service, name: &str, dir: &Path) -> String {
    b.goto(&format!("{}/#/new", svc.url)).await;
    b.wait_text("#limits", "LoRAs this month").await;
    let (good, bad) = images(dir);
    let all: Vec<String> = good
        .iter()
        .chain([&bad])
        .map(|p| p.display().to_string())
        .collect();
    b.find("#images").await.send_keys(&all.join("\n")).await;
    b.wait_for(
        "4 previews",
        "return document.querySelectorAll('#previews li').length === 4;",
    )
    .await;
    b.find("#upload").await.click().await;
    // The server's reason for the bad image, beside that image.
    let problem = b
        .wait_text("li[data-file='tiny.png'] .problems", "64")
        .await
        .text()
        .await;
    assert!(problem.contains("40"), "{problem}");
    assert_eq!(
        b.eval(
            "return document.querySelector(\"li[data-file='face0.png'] .problems\").textContent;",
            vec![]
        )
        .await,
        json!(""),
        "good images carry no problem"
    );
    b.screenshot(&screenshots().join("new-lora.png")).await;
    b.find("li[data-file='tiny.png'] button")
        .await
        .click()
        .await;
    b.find("#upload").await.click().await;
    b.wait_text("#upload-ok", "Uploaded 3 images").await;

    b.find("#name").await.send_keys(name).await;
    b.find("#trigger").await.send_keys("zxq").await;
    b.find("#advanced summary").await.click().await;
    let set = |field: &'static str, value: String| async move {
        let input = b.find(&format!("#param-{field}")).await;
        input.clear().await;
        input.send_keys(&value).await;
    };
    set("base_model", tiny_model().display().to_string()).await;
    set("steps", "4".into()).await;
    set("resolution", "64".into()).await;
    set("rank", "4".into()).await;
    set("alpha", "8".into()).await;
    set("lr_warmup_steps", "0".into()).await;
    b.wait_for(
        "the create button",
        "return !document.querySelector('#create').disabled;",
    )
    .await;
    b.find("#create").await.click().await;
    let url = b
        .wait_for(
            "the LoRA's page",
            "return location.hash.startsWith('#/loras/') && location.hash;",
        )
        .await;
    url.as_str()
        .unwrap()
        .trim_start_matches("#/loras/")
        .to_owned()
}

/// Marks the page so a reload would show (the mark is gone), and records every status the
/// badge shows.
async fn watch_statuses(b: &Browser) {
    b.eval(
        "window.__noReload = true; window.__seen = [];
         const box = document.querySelector('#lora-status');
         const note = () => { const s = box.textContent; if (window.__seen.at(-1) !== s) window.__seen.push(s); };
         note(); new MutationObserver(note).observe(box, {childList: true, subtree: true, characterData: true});
         return true;",
        vec![],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_uploads_creates_watches_downloads_and_finds_a_lora() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let b = Browser::start(1000, 700).await;

    // One click on this computer: the service is on loopback with a generated secret.
    b.goto(&format!("{}/", svc.url)).await;
    b.find("#local-signin:not([hidden]) #signin-local")
        .await
        .click()
        .await;
    b.wait_text("#who", "(admin)").await;
    b.find("#signout").await.click().await;

    // A pasted token.
    b.find("#token").await.send_keys(&svc.token(USER)).await;
    b.screenshot(&screenshots().join("sign-in.png")).await;
    b.find("#signin-token").await.click().await;
    b.wait_text("h1", "Library").await;
    b.find("#summary").await;

    let name = "Zxq the web tester";
    let id = create_through_the_form(&b, &svc, name, dir.path()).await;
    b.wait_text("#lora-name", name).await;
    watch_statuses(&b).await;
    b.find_within("#lora-status [data-status='completed']", TRAINING)
        .await;
    let seen = b
        .eval(
            "return window.__noReload === true && window.__seen;",
            vec![],
        )
        .await;
    assert!(seen.is_array(), "the page was reloaded: {seen}");
    assert_eq!(
        seen.as_array().unwrap().last(),
        Some(&json!("completed")),
        "{seen}"
    );
    b.wait_text("#progress-text", "100%").await;
    b.find("#download-kohya").await;
    // A finished LoRA offers no cancel, and nothing empty shows as "null".
    let shown = b
        .eval(
            "return [getComputedStyle(document.querySelector('#cancel')).display, document.querySelector('main').innerText.includes('null')];",
            vec![],
        )
        .await;
    assert_eq!(shown, json!(["none", false]), "{shown}");
    b.screenshot(&screenshots().join("lora.png")).await;

    // The download link works: the same bytes as the stored file.
    let href = b.find("#download-diffusers").await.property("href").await;
    let bytes = reqwest::get(href.as_str().unwrap()).await.unwrap();
    assert_eq!(bytes.status(), 200);
    let bytes = bytes.bytes().await.unwrap();
    let (_, details) = svc.details(&svc.token(USER), &id).await;
    assert_eq!(
        Some(bytes.len() as u64),
        details["file_size"].as_u64(),
        "{details}"
    );

    // Found by search, as you type.
    b.goto(&format!("{}/#/library", svc.url)).await;
    b.find("#search").await.send_keys("web test").await;
    b.wait_text(
        &format!("li[data-id='{id}'] a.name"),
        "Zxq the web tester (by",
    )
    .await;
    b.wait_for("search timing", "return window.__lf.searchMs.length > 0;")
        .await;
    b.screenshot(&screenshots().join("library.png")).await;

    // Keyboard only: Tab from the top of the page to the LoRA's link, Enter opens it.
    b.goto(&format!("{}/#/library", svc.url)).await;
    b.find(&format!("li[data-id='{id}']")).await;
    b.eval(
        "document.activeElement?.blur(); document.body.focus(); return true;",
        vec![],
    )
    .await;
    let mut reached = false;
    for i in 0..30 {
        // Keys go to whatever has focus (the page itself before the first Tab).
        let target = if i == 0 { "body" } else { ":focus" };
        b.find(target).await.send_keys(TAB).await;
        let focused = b
            .eval("const a = document.activeElement; return a && a.closest('li') ? a.closest('li').dataset.id : (a ? a.id || a.tagName : null);", vec![])
            .await;
        if focused == json!(id) {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the LoRA's link");
    // The focused element is visibly outlined.
    let outline = b
        .eval(
            "return getComputedStyle(document.activeElement).outlineStyle;",
            vec![],
        )
        .await;
    assert_ne!(outline, json!("none"), "focus is visible");
    b.find(":focus").await.send_keys(ENTER).await;
    b.wait_text("#lora-name", name).await;

    // The name is checked as you type: this one is taken by you.
    b.goto(&format!("{}/#/new", svc.url)).await;
    b.find("#name").await.send_keys(name).await;
    b.wait_text("#name-check", "You already have a LoRA with this name")
        .await;

    // A phone: 375 px wide, nothing scrolls sideways on the main pages.
    b.set_viewport(375, 700).await;
    for page in ["#/library", &format!("#/loras/{id}"), "#/new", "#/mine"] {
        b.goto(&format!("{}/{page}", svc.url)).await;
        b.find("h1").await;
        b.find("main h1 + *").await;
        let over = b
            .eval(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await;
        assert!(
            over.as_i64().unwrap() <= 0,
            "{page} scrolls sideways by {over} px"
        );
    }
    b.goto(&format!("{}/#/library", svc.url)).await;
    b.find(&format!("li[data-id='{id}']")).await;
    b.screenshot(&screenshots().join("library-phone.png")).await;
    no_page_errors(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_approves_a_lora_waiting_for_review() {
    let dir = tempfile::tempdir().unwrap();
    // No scorer and no auto-approval: a trained LoRA waits in `validating` for an admin.
    let svc = Service::start(
        dir.path(),
        &[("LORAFORGE_VALIDATION_AUTO_APPROVE", "false")],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Needs a look", 4).await;
    svc.wait(&token, &id, "review", TRAINING, |s| {
        s["training_status"] == "validating" && s["stage"] == "awaiting_review"
    })
    .await;
    let b = Browser::start(1000, 700).await;
    b.goto(&format!("{}/", svc.url)).await;
    b.find("#signin-local").await.click().await;
    b.wait_text("#who", "(admin)").await;
    b.goto(&format!("{}/#/admin", svc.url)).await;
    let row = format!("#review li[data-id='{id}']");
    b.wait_text(&row, "Needs a look").await;
    b.find("#backends table").await;
    b.screenshot(&screenshots().join("admin.png")).await;
    b.find(&format!("{row} button.approve")).await.click().await;
    b.wait_text("#review-empty", "Nothing is waiting").await;
    let s = svc.status(&token, &id).await;
    assert_eq!(s["training_status"], "completed", "{s}");
    // The creator's page shows it approved.
    b.goto(&format!("{}/#/loras/{id}", svc.url)).await;
    b.find("#lora-status [data-status='completed']").await;
    no_page_errors(&b).await;
}

//! The web UI in a real headless Chromium against the real binary: sign in (token and one
//! click), pick and drop images (a bad one among them) and see the server's reason beside it,
//! create a LoRA on the tiny model and watch it train to `completed` without a reload, its
//! validation images with their scores (the tiny CLIP scorer), download it, render a sample
//! with "Try it", find it by search with the library's state kept in the URL (reload, back and
//! forward), reach it with the keyboard alone, a phone-sized viewport without sideways
//! scrolling; an admin approving a LoRA waiting for review, a person reporting it, and the admin
//! dismissing one report and hiding the LoRA for another. Screenshots of the main pages go to
//! `docs/screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::browser::Browser;
use common::service::{Service, USER, tiny_model, trainer_env};
use common::{noise_png, trainer_python};
use serde_json::{Value, json};

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
/// A LoRA on the tiny model trains in well under this on one CPU thread.
const TRAINING: Duration = Duration::from_secs(300);
/// A 64 px sample of 2 steps on the tiny model renders in well under this.
const RENDERING: Duration = Duration::from_secs(240);
/// Someone who reports a LoRA; another one.
const REPORTER: &str = "6f1d2c3b-4a59-4e8f-9b0a-1c2d3e4f5a6b";
const SECOND_REPORTER: &str = "7a2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d";

/// The tiny CLIP vision model (random weights) the trainer scores validation images with.
fn tiny_clip(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-clip");
    let run = std::process::Command::new(trainer_python())
        .args(["-m", "loraforge_trainer.testing", "tiny-clip-vision"])
        .arg(&out)
        .envs(trainer_env())
        .output()
        .expect("run python");
    assert!(
        run.status.success(),
        "building the tiny CLIP model failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

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
    // Two through the file picker, two dropped on the zone (the bad one among them).
    let picked: Vec<String> = good[..2].iter().map(|p| p.display().to_string()).collect();
    b.find("#images").await.send_keys(&picked.join("\n")).await;
    drop_files(b, "#drop", &[&good[2], &bad]).await;
    b.wait_for(
        "4 previews",
        "return document.querySelectorAll('#previews li img').length === 4;",
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

/// Drops `files` on `zone` as a person dragging them from their desktop would: WebDriver cannot
/// drag OS files, so the page builds a `DataTransfer` holding `File`s of their bytes and
/// dispatches dragenter, dragover and drop on the zone.
async fn drop_files(b: &Browser, zone: &str, files: &[&PathBuf]) {
    let files: Vec<Value> = files
        .iter()
        .map(|p| {
            json!({
                "name": p.file_name().unwrap().to_string_lossy(),
                "b64": base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()),
            })
        })
        .collect();
    let accepted = b
        .eval(
            "const [css, files] = arguments;
             const zone = document.querySelector(css);
             const dt = new DataTransfer();
             for (const f of files) {
               const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
               dt.items.add(new File([bytes], f.name, { type: 'image/png' }));
             }
             const fire = (type) => zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
             // A zone that takes a drop cancels dragenter and dragover (dispatchEvent → false).
             const accepted = !fire('dragenter') && !fire('dragover');
             fire('drop');
             return accepted;",
            vec![json!(zone), json!(files)],
        )
        .await;
    assert_eq!(accepted, json!(true), "the drop zone refused the drag");
}

/// Reloads the page and waits until the app has drawn `css` on the new page.
async fn reload(b: &Browser, css: &str) {
    b.eval(
        "window.__beforeReload = true; location.reload(); return true;",
        vec![],
    )
    .await;
    b.wait_for(
        "the reloaded page",
        &format!(
            "return !window.__beforeReload && !!document.querySelector({});",
            json!(css)
        ),
    )
    .await;
}

/// Signs out, then in with `token`, or with the one-click local sign-in (an admin) when `None`.
async fn sign_in(b: &Browser, svc: &Service, token: Option<&str>) {
    b.goto(&format!("{}/#/library", svc.url)).await;
    b.find("h1").await;
    b.eval(
        "if (!document.querySelector('#nav').hidden) document.querySelector('#signout').click(); return true;",
        vec![],
    )
    .await;
    match token {
        Some(t) => {
            b.find("#token").await.send_keys(t).await;
            b.find("#signin-token").await.click().await;
        }
        None => {
            b.find("#local-signin:not([hidden]) #signin-local")
                .await
                .click()
                .await;
        }
    }
    b.wait_text("h1", "Library").await;
}

/// The value of the form control `css`.
async fn value_of(b: &Browser, css: &str) -> Value {
    b.eval(
        "return document.querySelector(arguments[0]).value;",
        vec![json!(css)],
    )
    .await
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
    // The trainer scores validation images with a tiny random CLIP: the scores are real but
    // meaningless, so the threshold is 0 (a cosine of noise images' embeddings is above it).
    let clip = tiny_clip(dir.path());
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_VALIDATION_SCORER", &clip.display().to_string()),
            ("LORAFORGE_VALIDATION_SIMILARITY_THRESHOLD", "0"),
        ],
    );
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
    validation_shows_the_scores(&b, &svc, &id).await;
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

    // "Try it": a 64 px sample in 2 steps, rendered by the local backend, shows on the page.
    b.find("#sample-prompt")
        .await
        .send_keys("zxq in the rain")
        .await;
    for (field, value) in [("#sample-size", "64"), ("#sample-steps", "2")] {
        let input = b.find(field).await;
        input.clear().await;
        input.send_keys(value).await;
    }
    b.find("#sample-submit").await.click().await;
    b.wait_text("#sample-message", "Queued").await;
    b.find("#samples-open .batch").await;
    let sample = b.find_within("#sample-images img.thumb", RENDERING).await;
    assert_eq!(
        sample.attribute("alt").await.as_deref(),
        Some("zxq in the rain")
    );
    b.wait_for(
        "the sample image loaded",
        "const i = document.querySelector('#sample-images img'); return i.complete && i.naturalWidth === 64;",
    )
    .await;
    let batches = svc
        .get(
            &svc.token(USER),
            &format!("/api/v1/lora-models/{id}/samples"),
        )
        .await;
    assert_eq!(batches["batches"][0]["status"], "completed", "{batches}");
    b.eval(
        "document.querySelector('#validation').scrollIntoView(); return true;",
        vec![],
    )
    .await;
    b.screenshot(&screenshots().join("lora-validation.png"))
        .await;

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

    // The search, sort and status live in the URL: a reload shows the same list and controls,
    // back and forward step through the sort.
    b.find("#sort option[value='name']").await.click().await;
    let hash = b
        .wait_for(
            "the state in the URL",
            "return location.hash.includes('sort=name') && location.hash;",
        )
        .await;
    assert_eq!(hash, json!("#/library?q=web+test&sort=name"));
    let row = format!("li[data-id='{id}']");
    reload(&b, &row).await;
    assert_eq!(
        (value_of(&b, "#search").await, value_of(&b, "#sort").await),
        (json!("web test"), json!("name"))
    );
    assert_eq!(b.find_all("#loras li.lora-row").await.len(), 1);
    b.eval("history.back(); return true;", vec![]).await;
    b.wait_for(
        "the previous sort",
        "return location.hash === '#/library?q=web+test' && document.querySelector('#sort').value === 'popular';",
    )
    .await;
    assert_eq!(value_of(&b, "#search").await, json!("web test"));
    b.find(&row).await;
    b.eval("history.forward(); return true;", vec![]).await;
    b.wait_for(
        "the sort again",
        "return document.querySelector('#sort').value === 'name' && document.querySelector('#search').value === 'web test';",
    )
    .await;
    // A shared link with a status filter that leaves nothing: the controls say so too.
    b.goto(&format!("{}/#/library?q=web+test&status=failed", svc.url))
        .await;
    b.wait_text("#empty", "No LoRA matches").await;
    assert_eq!(value_of(&b, "#status").await, json!("failed"));

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
    b.wait_text("#validation-result", "Passed").await;

    reports_hide_and_dismiss(&b, &svc, &id).await;
    no_page_errors(&b).await;
}

/// Someone reports the LoRA on its page, someone else through the API; the admin dismisses the
/// second report and hides the LoRA for the first: it leaves the library for others, and its
/// owner sees it hidden, with the reason, in "My LoRAs" and on its page.
async fn reports_hide_and_dismiss(b: &Browser, svc: &Service, id: &str) {
    let reporter = svc.token(REPORTER);
    sign_in(b, svc, Some(&reporter)).await;
    b.goto(&format!("{}/#/loras/{id}", svc.url)).await;
    b.find("#report summary").await.click().await;
    b.find("#report-reason option[value='impersonation']")
        .await
        .click()
        .await;
    b.find("#report-details")
        .await
        .send_keys("it is my face")
        .await;
    b.find("#report button[type='submit']").await.click().await;
    b.wait_text("#report [role='status']", "Thank you").await;
    let (code, spam) = svc
        .call(
            &svc.token(SECOND_REPORTER),
            reqwest::Method::POST,
            &format!("/api/v1/lora-models/{id}/reports"),
            Some(json!({"reason": "spam"})),
        )
        .await;
    assert_eq!(code, 201, "{spam}");

    sign_in(b, svc, None).await;
    b.goto(&format!("{}/#/admin", svc.url)).await;
    b.wait_text("#reports h2", "Open reports (2)").await;
    let spam_row = format!("#reports li[data-report='{}']", spam["id"]);
    b.wait_text(&spam_row, "spam").await;
    b.find(&format!("{spam_row} button.dismiss"))
        .await
        .click()
        .await;
    b.wait_text(&spam_row, "Dismiss: done").await;
    let face_row = "#reports li:not([data-report='SPAM'])".replace("SPAM", &spam["id"].to_string());
    b.wait_text(&face_row, "it is my face").await;
    b.find(&format!("{face_row} button.hide"))
        .await
        .click()
        .await;
    b.wait_text(&face_row, "Hide: done").await;

    // Gone for everyone else: the library's search finds nothing, the page is a 404.
    sign_in(b, svc, Some(&reporter)).await;
    b.find("#search").await.send_keys("Needs a look").await;
    b.wait_text("#empty", "No LoRA matches").await;
    let (code, _) = svc.details(&reporter, id).await;
    assert_eq!(code, 404);
    // Its owner still has it, hidden, with why.
    sign_in(b, svc, Some(&svc.token(USER))).await;
    b.goto(&format!("{}/#/mine", svc.url)).await;
    b.wait_text(
        &format!("li[data-id='{id}'] .hidden-note"),
        "Hidden by an admin: Reported: impersonation",
    )
    .await;
    b.goto(&format!("{}/#/loras/{id}", svc.url)).await;
    b.wait_text("#hidden-note", "Reported: impersonation").await;
}

/// The LoRA's page shows each validation image with its score, pass or fail against the
/// threshold the rule used, as the details API gives them.
async fn validation_shows_the_scores(b: &Browser, svc: &Service, id: &str) {
    let (_, details) = svc.details(&svc.token(USER), id).await;
    let v = &details["validation"];
    assert_eq!(v["threshold"], 0.0, "{details}");
    let images = v["images"].as_array().expect("images");
    assert_eq!(images.len(), 3, "{details}");
    b.wait_text("#validation-rule", "similarity of 0.00 or more")
        .await;
    for img in images {
        let score = img["score"].as_f64().expect("a score per image");
        let passed = img["passed"].as_bool().unwrap();
        let li = format!("#validation-images li[data-index='{}']", img["index"]);
        let text = b.find(&format!("{li} figcaption")).await.text().await;
        let verdict = if passed { "passed" } else { "below" };
        assert!(
            text.contains(&format!("score {score:.2}")) && text.contains(verdict),
            "{li}: {text:?} for {img}"
        );
        assert_eq!(
            b.find(&li).await.attribute("data-passed").await,
            Some(passed.to_string())
        );
        b.find(&format!("{li} img.thumb")).await;
    }
}

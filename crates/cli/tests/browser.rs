//! The WebDriver harness itself (`common/browser.rs`) against a page it builds: typing,
//! clicking, waiting for text, a shadow root, script results and a screenshot.

mod common;

use common::browser::Browser;
use serde_json::json;

const PAGE: &str = r#"<!doctype html><title>t</title>
<input id="name" aria-label="Name"><button id="go">Go</button><p id="out"></p>
<x-box id="box"></x-box>
<script>
document.getElementById('go').addEventListener('click', () => {
  setTimeout(() => { document.getElementById('out').textContent = 'hello ' + document.getElementById('name').value; }, 200);
});
customElements.define('x-box', class extends HTMLElement {
  connectedCallback() { this.attachShadow({mode: 'open'}).innerHTML = '<span class="in">inside</span>'; }
});
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_types_clicks_waits_and_reads_shadow_roots() {
    let browser = Browser::start(800, 600).await;
    browser
        .goto(&format!("data:text/html;charset=utf-8,{}", urlencode(PAGE)))
        .await;
    browser.find("#name").await.send_keys("Ada").await;
    browser.find("#go").await.click().await;
    // The text arrives 200 ms after the click: the lookup waits for it.
    let out = browser.wait_text("#out", "hello Ada").await;
    assert_eq!(out.text().await, "hello Ada");
    assert_eq!(
        browser.find("#name").await.property("value").await,
        json!("Ada")
    );
    let inner = browser.find("#box").await.shadow_find(".in").await;
    assert_eq!(inner.text().await, "inside");
    assert_eq!(
        browser
            .eval("return arguments[0] + 1;", vec![json!(41)])
            .await,
        json!(42)
    );
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("page.png");
    browser.screenshot(&shot).await;
    let img = image::open(&shot).unwrap();
    assert_eq!((img.width(), img.height()), (800, 600));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! A real headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromium-driver`; `scripts/test.sh` installs them when missing). Our own small client over
//! reqwest: one chromedriver per [`Browser`], on a free loopback port, with a throwaway profile;
//! both end when the `Browser` is dropped.
//!
//! Every lookup waits (up to [`WAIT`]) for what it looks for, as a person would, so tests do not
//! sleep to "let the page load".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// How long a lookup waits for its element or text before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The key under which WebDriver names an element (W3C).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The key under which WebDriver names a shadow root (W3C).
const SHADOW_KEY: &str = "shadow-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// An element of the page (or of a shadow root) found by a CSS selector.
#[derive(Clone)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
    /// The selector it was found by, for messages.
    css: String,
}

/// `chromedriver`: `LORAFORGE_CHROMEDRIVER`, else the one on `PATH`.
fn chromedriver() -> PathBuf {
    std::env::var_os("LORAFORGE_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromedriver"))
}

/// The Chromium binary: `LORAFORGE_CHROMIUM`, else Debian's real binary behind its wrapper
/// script, else `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("LORAFORGE_CHROMIUM") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.exists() {
        return debian.to_owned();
    }
    PathBuf::from("/usr/bin/chromium")
}

impl Browser {
    /// A fresh headless Chromium with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install Debian's `chromium` and \
                     `chromium-driver` (scripts/test.sh does so when run as root), or set \
                     LORAFORGE_CHROMEDRIVER"
                )
            });
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["value"]["ready"].as_bool())
                    .unwrap_or(false),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not answer on {base} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                    "--proxy-server=direct://", "--proxy-bypass-list=*",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver: new session")
            .json()
            .await
            .unwrap();
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start Chromium: {resp}"))
            .to_owned();
        let browser = Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            _profile: profile,
        };
        browser.set_viewport(width, height).await;
        browser
    }

    /// Sizes the window so the page itself (the viewport) is `width`×`height`, as on a device
    /// of that size: the window's frame is measured and added.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        for _ in 0..3 {
            let inner = self
                .eval("return [window.innerWidth, window.innerHeight];", vec![])
                .await;
            let (iw, ih) = (inner[0].as_i64().unwrap(), inner[1].as_i64().unwrap());
            if (iw, ih) == (i64::from(width), i64::from(height)) {
                return;
            }
            let rect = self.cmd(reqwest::Method::GET, "/window/rect", None).await;
            let (ow, oh) = (
                rect["width"].as_i64().unwrap(),
                rect["height"].as_i64().unwrap(),
            );
            self.cmd(
                reqwest::Method::POST,
                "/window/rect",
                Some(json!({
                    "width": i64::from(width) + (ow - iw),
                    "height": i64::from(height) + (oh - ih),
                })),
            )
            .await;
        }
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    /// Like [`cmd`](Self::cmd) but an error is returned (for lookups that wait).
    async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let url = format!("{}{path}", self.session);
        let resp = self
            .http
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body: `return …;`, `arguments[i]`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Runs `script` whose last argument is a callback it calls with its result.
    pub async fn eval_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Waits until `script` (a function body) returns something truthy; returns it.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.eval(script, vec![]).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                started.elapsed() < WAIT,
                "waited {WAIT:?} for {what}; page: {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element<'_> {
        self.find_within(css, WAIT).await
    }

    /// The first element matching `css` within `wait`.
    pub async fn find_within(&self, css: &str, wait: Duration) -> Element<'_> {
        let started = Instant::now();
        loop {
            let r = self
                .try_cmd(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Ok(v) = &r
                && let Some(id) = v[ELEMENT_KEY].as_str()
            {
                return Element {
                    browser: self,
                    id: id.to_owned(),
                    css: css.to_owned(),
                };
            }
            assert!(
                started.elapsed() < wait,
                "no element matches `{css}` after {wait:?} on {} (the driver said {r:?})",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every element matching `css` now (no waiting).
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT_KEY].as_str())
            .map(|id| Element {
                browser: self,
                id: id.to_owned(),
                css: css.to_owned(),
            })
            .collect()
    }

    /// Waits until the first element matching `css` has text containing `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> Element<'_> {
        self.wait_text_within(css, text, WAIT).await
    }

    pub async fn wait_text_within(&self, css: &str, text: &str, wait: Duration) -> Element<'_> {
        let started = Instant::now();
        loop {
            let el = self.find_within(css, wait).await;
            // The element may be replaced while we read it; look again then.
            if let Ok(t) = el.try_text().await
                && t.contains(text)
            {
                return el;
            }
            if started.elapsed() >= wait {
                let now = el.try_text().await.unwrap_or_default();
                panic!("`{css}` never showed {text:?} within {wait:?}; it shows {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .expect("valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Messages the page wrote to the console with level `SEVERE` (errors), if the driver keeps
    /// them; tests assert a page raised none.
    pub async fn console_errors(&self) -> Vec<String> {
        let v = self
            .eval("return (window.__errors || []).slice();", vec![])
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; then the driver goes.
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = reqwest::Client::new()
                    .delete(url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
            });
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl<'b> Element<'b> {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    pub async fn click(&self) {
        self.browser
            .cmd(reqwest::Method::POST, &self.path("/click"), None)
            .await;
    }

    /// Types `text` into the element (for a file input: the absolute path of a file to pick).
    pub async fn send_keys(&self, text: &str) {
        self.browser
            .cmd(
                reqwest::Method::POST,
                &self.path("/value"),
                Some(json!({ "text": text })),
            )
            .await;
    }

    pub async fn clear(&self) {
        self.browser
            .cmd(reqwest::Method::POST, &self.path("/clear"), None)
            .await;
    }

    pub async fn text(&self) -> String {
        self.try_text()
            .await
            .unwrap_or_else(|e| panic!("text of `{}`: {e}", self.css))
    }

    async fn try_text(&self) -> Result<String, Value> {
        let url = format!("{}{}", self.browser.session, self.path("/text"));
        let resp = self
            .browser
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| json!(e.to_string()))?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if ok {
            Ok(v["value"].as_str().unwrap_or_default().to_owned())
        } else {
            Err(v["value"].clone())
        }
    }

    /// A DOM property (`value`, `checked`, …).
    pub async fn property(&self, name: &str) -> Value {
        self.browser
            .cmd(
                reqwest::Method::GET,
                &self.path(&format!("/property/{name}")),
                None,
            )
            .await
    }

    pub async fn attribute(&self, name: &str) -> Option<String> {
        self.browser
            .cmd(
                reqwest::Method::GET,
                &self.path(&format!("/attribute/{name}")),
                None,
            )
            .await
            .as_str()
            .map(str::to_owned)
    }

    /// This element as a script argument (`arguments[i]` is the DOM node).
    pub fn as_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// The first element matching `css` inside this element's shadow root, waiting for it.
    pub async fn shadow_find(&self, css: &str) -> Element<'b> {
        let root = self
            .browser
            .cmd(reqwest::Method::GET, &self.path("/shadow"), None)
            .await;
        let root = root[SHADOW_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("`{}` has no shadow root", self.css))
            .to_owned();
        let started = Instant::now();
        loop {
            let r = self
                .browser
                .try_cmd(
                    reqwest::Method::POST,
                    &format!("/shadow/{root}/element"),
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Ok(v) = r
                && let Some(id) = v[ELEMENT_KEY].as_str()
            {
                return Element {
                    browser: self.browser,
                    id: id.to_owned(),
                    css: format!("{} >>> {css}", self.css),
                };
            }
            assert!(
                started.elapsed() < WAIT,
                "no element matches `{css}` in the shadow root of `{}`",
                self.css
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

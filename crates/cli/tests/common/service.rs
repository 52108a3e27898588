//! The `loraforge serve` test harness shared by the end-to-end test binaries (`training`,
//! `runpod`, `docker`, `replicate`, `aitoolkit`): the service started on a free port with its own
//! data dir and the test settings, signed in to, LoRAs created and waited for, killed with -9 and
//! restarted, stopped when dropped; the tiny model and the worker image's environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use loraforge_fakes::ImageSpec;
use serde_json::{Value, json};

use super::{loraforge, noise_png, strip_ansi, trainer_python};

#[allow(unused_imports)] // each test binary uses some
pub use loraforge_fakes::trainer::{repo_root, tiny_model, trainer_env};

/// A running `loraforge serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Service {
    child: Option<Child>,
    /// `--bind`: port 0 unless a test needs the same address across restarts.
    pub bind: String,
    pub dir: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    pub url: String,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

pub const BASE_ENV: &[(&str, &str)] = &[
    ("LORAFORGE_MIN_STEPS", "1"),
    ("LORAFORGE_MIN_RESOLUTION", "64"),
    ("LORAFORGE_IMAGE_MIN_SIDE", "64"),
    ("LORAFORGE_IMAGE_MIN_BYTES", "1000"),
    ("LORAFORGE_LORA_MIN_BYTES", "1000"),
    ("LORAFORGE_VALIDATION_AUTO_APPROVE", "true"),
    ("LORAFORGE_ENGINE_POLL_MS", "200"),
    ("LORAFORGE_WORKER_RETRY_DELAY_MS", "50"),
    ("LORAFORGE_CREATES_PER_MINUTE", "0"),
    // Two tests train at once on a 2-core machine: one torch thread each, or their OpenMP pools
    // spin-wait on each other and a step takes ~5x longer (bench/concurrent_trainers.sh); CI once
    // failed two of these tests on their time limits so.
    ("LORAFORGE_TORCH_THREADS", "1"),
    ("OMP_NUM_THREADS", "1"),
    // The engine logs its workers' stderr (and so the trainer's) at debug.
    (
        "LORAFORGE_LOG",
        "info,sqlx=warn,tower_http=warn,loraforge_engine=debug",
    ),
    ("HF_HUB_OFFLINE", "1"),
];

impl Service {
    pub fn start(dir: &Path, extra: &[(&str, &str)]) -> Service {
        let data = dir.join("data");
        let mut env: Vec<(String, String)> = BASE_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push((
            "LORAFORGE_TRAINER_PYTHON".into(),
            trainer_python().display().to_string(),
        ));
        env.push((
            "LORAFORGE_LOCAL_MODEL_ROOTS".into(),
            tiny_model().parent().unwrap().display().to_string(),
        ));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut s = Service {
            child: None,
            bind: "127.0.0.1:0".to_owned(),
            dir: dir.to_owned(),
            data,
            log: dir.join("serve-0.log"),
            url: String::new(),
            env,
            http: reqwest::Client::new(),
        };
        s.restart();
        s
    }

    /// (Re)starts the process (on `bind`) with the same data dir; stop the running one first
    /// (`kill_9`), or two engines would share the database.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "the service is still running: stop it (kill_9) before restart"
        );
        let n = std::fs::read_dir(&self.dir).unwrap().filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("serve-"))
        });
        self.log = self.dir.join(format!("serve-{}.log", n.count()));
        let log = std::fs::File::create(&self.log).unwrap();
        let child = loraforge(&self.dir)
            .args(["serve", "--bind", &self.bind, "--data-dir"])
            .arg(&self.data)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start serve");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("loraforge listening")) {
                let line = strip_ansi(line);
                let addr = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .expect("addr=");
                let addr: String = addr
                    .chars()
                    .filter(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                self.url = format!("http://{addr}");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve did not start:\n{text}"
            );
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for i in 0..10 {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(format!("serve-{i}.log"))) {
                all.push_str(&format!("--- serve-{i}.log ---\n{t}"));
            }
        }
        all
    }

    pub fn token(&self, user: &str) -> String {
        self.token_with(user, &[])
    }

    /// An admin's token for `user`.
    pub fn admin_token(&self, user: &str) -> String {
        self.token_with(user, &["--admin"])
    }

    fn token_with(&self, user: &str, extra: &[&str]) -> String {
        let out = loraforge(&self.dir)
            .args(["token", "--user", user])
            .args(extra)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .expect("token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Uploads 3 noise images and creates a LoRA on the tiny model; returns its id.
    pub async fn create(&self, token: &str, name: &str, steps: u32) -> String {
        self.create_with(token, name, steps, json!({})).await
    }

    /// As [`Service::create`], with `extra` params added.
    pub async fn create_with(&self, token: &str, name: &str, steps: u32, extra: Value) -> String {
        let mut form = reqwest::multipart::Form::new();
        for i in 0..3 {
            let part = reqwest::multipart::Part::bytes(noise_png(96, 96, i + 1))
                .file_name(format!("img{i}.png"));
            form = form.part("images", part.mime_str("image/png").unwrap());
        }
        let resp = self
            .http
            .post(format!("{}/api/v1/datasets", self.url))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let dataset: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{dataset}");
        let mut body = json!({
            "name": name,
            "dataset_id": dataset["dataset_id"],
            "params": {
                "base_model": tiny_model().display().to_string(),
                "steps": steps,
                "resolution": 64,
                "rank": 4,
                "alpha": 8,
                "lr_warmup_steps": 0,
                "trigger_words": ["zxq"],
            }
        });
        for (k, v) in extra.as_object().expect("extra params are an object") {
            body["params"][k] = v.clone();
        }
        let (status, lora) = self
            .call(
                token,
                reqwest::Method::POST,
                "/api/v1/lora-models",
                Some(body),
            )
            .await;
        assert_eq!(status, 202, "{lora}");
        lora["lora_id"].as_str().expect("id").to_owned()
    }

    pub async fn status(&self, token: &str, id: &str) -> Value {
        let (code, v) = self
            .call(
                token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}/status"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Polls until `done(status)` holds; panics with the service's logs after `limit`.
    pub async fn wait(
        &self,
        token: &str,
        id: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_explained(token, id, what, limit, done, String::new)
            .await
    }

    /// As [`Service::wait`], with `explain()` (the state of a fake provider, say) after the logs.
    pub async fn wait_explained(
        &self,
        token: &str,
        id: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
        explain: impl Fn() -> String,
    ) -> Value {
        let started = Instant::now();
        loop {
            let s = self.status(token, id).await;
            if done(&s) {
                return s;
            }
            if started.elapsed() > limit {
                panic!(
                    "waited {limit:?} for {what}; last status {s}\n{}{}",
                    self.logs(),
                    explain()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the LoRA trains (stage `training`) at step `steps` or later.
    pub async fn training_past(
        &self,
        token: &str,
        id: &str,
        steps: u64,
        what: &str,
        limit: Duration,
    ) -> Value {
        self.wait(token, id, what, limit, |s| {
            s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= steps)
        })
        .await
    }

    /// Waits (5 min at most) until the LoRA is completed, failed or cancelled.
    pub async fn finished(&self, token: &str, id: &str) -> Value {
        self.finished_explained(token, id, String::new).await
    }

    /// As [`Service::finished`], with `explain()` after the logs should it time out.
    pub async fn finished_explained(
        &self,
        token: &str,
        id: &str,
        explain: impl Fn() -> String,
    ) -> Value {
        self.wait_explained(
            token,
            id,
            "the LoRA to finish",
            Duration::from_secs(300),
            |s| {
                matches!(
                    s["training_status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            },
            explain,
        )
        .await
    }

    /// GET `path`, which must answer 200; its JSON body.
    pub async fn get(&self, token: &str, path: &str) -> Value {
        let (code, v) = self.call(token, reqwest::Method::GET, path, None).await;
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    /// `POST /api/v1/lora-models/{lora}/samples` with `body` (which must be accepted), then waits
    /// up to `limit` for the batch to be completed or failed; the batch as it then reads.
    pub async fn render_samples(
        &self,
        token: &str,
        lora: &str,
        body: Value,
        limit: Duration,
    ) -> Value {
        let (code, batch) = self
            .call(
                token,
                reqwest::Method::POST,
                &format!("/api/v1/lora-models/{lora}/samples"),
                Some(body),
            )
            .await;
        assert_eq!(code, 202, "{batch}");
        let path = format!(
            "/api/v1/lora-models/{lora}/samples/{}",
            batch["id"].as_str().expect("a batch id")
        );
        let started = Instant::now();
        loop {
            let b = self.get(token, &path).await;
            if matches!(b["status"].as_str(), Some("completed" | "failed")) {
                return b;
            }
            assert!(
                started.elapsed() < limit,
                "batch still {} after {limit:?}: {b}\n{}",
                b["status"],
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET /api/v1/lora-models/{id}` (the LoRA's details, its attempts): status code and body.
    pub async fn details(&self, token: &str, id: &str) -> (u16, Value) {
        let path = format!("/api/v1/lora-models/{id}");
        self.call(token, reqwest::Method::GET, &path, None).await
    }

    /// `POST /api/v1/lora-models/{id}/cancel`: status code and body.
    pub async fn cancel(&self, token: &str, id: &str) -> (u16, Value) {
        let path = format!("/api/v1/lora-models/{id}/cancel");
        self.call(token, reqwest::Method::POST, &path, None).await
    }

    /// The outcome of each of the LoRA's runs, oldest first, and its details (owner's view).
    pub async fn outcomes(&self, token: &str, id: &str) -> (Vec<String>, Value) {
        let (_, details) = self.details(token, id).await;
        let outcomes = details["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap_or("").to_owned())
            .collect();
        (outcomes, details)
    }

    pub async fn events(&self, token: &str, id: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(format!("{}/api/v1/lora-models/{id}/events", self.url))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        // The stream stays open on a live LoRA; read what is there within a moment.
        let mut body = String::new();
        let mut stream = resp;
        while let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await
        {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    }

    /// Processes whose command line mentions this service's data dir (workers, trainers).
    pub fn children_alive(&self) -> Vec<String> {
        let needle = self.data.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
            else {
                continue;
            };
            if self
                .child
                .as_ref()
                .is_some_and(|c| c.id().to_string() == pid)
            {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // Zombies have an empty command line and are gone for every purpose here.
            if cmdline.contains(&needle) && !cmdline.contains(" serve ") {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
        found
    }

    /// What is still alive after `within`: a worker reports the LoRA's end before it exits,
    /// so a test that just saw "completed" gives it a moment to go.
    pub async fn children_left_after(&self, within: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let alive = self.children_alive();
            if alive.is_empty() || started.elapsed() >= within {
                return alive;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the service stops its runs (so no worker outlives the test).
            // SAFETY: kill(2) with a pid of our own child; no memory is touched.
            unsafe { libc_kill(child.id() as i32, 15) };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The user the tests act as.
pub const USER: &str = "2b5e1f0c-9a55-4c9a-8d3e-0f4c1a2b3c4d";

/// A free port on loopback, for a service that must keep its address across a restart (pods
/// call back to it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A random UUID-shaped id (the tests have no uuid dependency of their own).
pub fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (n >> 64) as u32 ^ 0x5eed,
        (n >> 48) as u16,
        (n >> 36) as u16 & 0xfff,
        (n >> 24) as u16 & 0xfff,
        n as u64 & 0xffff_ffff_ffff
    )
}

/// What every pod's (or container's) log in `<dir>/pods` says, for failure messages.
pub fn pod_logs(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        all.push_str(&format!(
            "--- {} ---\n",
            entry.file_name().to_string_lossy()
        ));
        all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    all
}

/// `image` with what the worker image sets (`docker/worker.Dockerfile`), pointed at this
/// machine's venv and at `data` for its data dir.
pub fn worker_image(image: ImageSpec, data: &Path) -> ImageSpec {
    image
        .with_env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .with_env(
            "LORAFORGE_TRAINER_PYTHON",
            trainer_python().display().to_string(),
        )
        .with_env("LORAFORGE_DATA_DIR", data.display().to_string())
        .with_env("LORAFORGE_WORKER_RETRY_DELAY_MS", "50")
        .with_env("LORAFORGE_TORCH_THREADS", "1")
        .with_env("OMP_NUM_THREADS", "1")
        .with_env("HF_HUB_OFFLINE", "1")
}

/// Downloads every image of a completed sample batch through its signed link; each must be a PNG
/// of `side`×`side` that decodes.
pub async fn assert_sample_pngs(batch: &Value, side: u32) {
    let images = batch["images"].as_array().expect("images");
    assert!(!images.is_empty(), "{batch}");
    for im in images {
        let resp = reqwest::get(im["url"].as_str().expect("a signed link"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{im}");
        let bytes = resp.bytes().await.unwrap();
        let img = image::load_from_memory(&bytes).expect("a PNG that decodes");
        assert_eq!((img.width(), img.height()), (side, side), "{im}");
    }
}

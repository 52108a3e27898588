//! Training end to end, through the real binary: `loraforge serve` with its job engine, the
//! local backend running `loraforge worker` per job, the Python trainer on a tiny random
//! SDXL-shaped pipeline built at test time (CPU), local storage and SQLite. Each test starts
//! its own service on a free port with its own data dir.
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`, which `scripts/test.sh` runs first); set
//! LORAFORGE_TEST_TRAINER_PYTHON to use another interpreter with the locked packages.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{loraforge, noise_png, strip_ansi, trainer_python};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The tiny SDXL-shaped pipeline, built once per test binary.
fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let model = dir.path().join("tiny-sdxl");
            let out = std::process::Command::new(trainer_python())
                .args(["-m", "loraforge_trainer.testing", "tiny-sdxl"])
                .arg(&model)
                .env("PYTHONPATH", repo_root().join("trainer"))
                .env("HF_HUB_OFFLINE", "1")
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "building the tiny model failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, model)
        })
        .1
}

/// A running `loraforge serve`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    child: Option<Child>,
    /// `--bind`: port 0 unless a test needs the same address across restarts.
    bind: String,
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    url: String,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

const BASE_ENV: &[(&str, &str)] = &[
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
    fn start(dir: &Path, extra: &[(&str, &str)]) -> Service {
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

    /// (Re)starts the process on a new port with the same data dir.
    fn restart(&mut self) {
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

    fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for i in 0..10 {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(format!("serve-{i}.log"))) {
                all.push_str(&format!("--- serve-{i}.log ---\n{t}"));
            }
        }
        all
    }

    fn token(&self, user: &str) -> String {
        let out = loraforge(&self.dir)
            .args(["token", "--user", user, "--data-dir"])
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

    async fn call(
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
    async fn create(&self, token: &str, name: &str, steps: u32) -> String {
        self.create_with(token, name, steps, json!({})).await
    }

    /// As [`Service::create`], with `extra` params added.
    async fn create_with(&self, token: &str, name: &str, steps: u32, extra: Value) -> String {
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

    async fn status(&self, token: &str, id: &str) -> Value {
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
    async fn wait(
        &self,
        token: &str,
        id: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let s = self.status(token, id).await;
            if done(&s) {
                return s;
            }
            if started.elapsed() > limit {
                panic!(
                    "waited {limit:?} for {what}; last status {s}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn finished(&self, token: &str, id: &str) -> Value {
        self.wait(
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
        )
        .await
    }

    /// The outcome of each of the LoRA's runs, oldest first, and its details (owner's view).
    async fn outcomes(&self, token: &str, id: &str) -> (Vec<String>, Value) {
        let (_, details) = self
            .call(
                token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}"),
                None,
            )
            .await;
        let outcomes = details["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap_or("").to_owned())
            .collect();
        (outcomes, details)
    }

    async fn events(&self, token: &str, id: &str) -> Vec<Value> {
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
    fn children_alive(&self) -> Vec<String> {
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

const USER: &str = "2b5e1f0c-9a55-4c9a-8d3e-0f4c1a2b3c4d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_and_loads_in_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let created = Instant::now();
    let id = svc.create(&token, "Zxq the tester", 10).await;
    let done = svc.finished(&token, &id).await;
    let lifecycle = created.elapsed();
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    assert_eq!(
        (done["stage"].as_str(), done["progress"].as_u64()),
        (Some("done"), Some(100)),
        "{done}"
    );

    // Every stage and the steps were on the event stream.
    let events = svc.events(&token, &id).await;
    let stages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["data"]["stage"].as_str())
        .collect();
    for stage in ["loading_model", "training", "validating", "done"] {
        assert!(
            stages.contains(&stage),
            "stage {stage} missing from {stages:?}"
        );
    }
    let statuses: Vec<&str> = events
        .iter()
        .filter_map(|e| e["data"]["to"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["queued", "training", "validating", "completed"],
        "{events:?}"
    );

    // The file, through its signed URL.
    let (code, details) = svc
        .call(
            &token,
            reqwest::Method::GET,
            &format!("/api/v1/lora-models/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(details["validation"]["passed"], true, "{details}");
    assert_eq!(
        details["validation"]["image_urls"].as_array().map(Vec::len),
        Some(3),
        "{details}"
    );
    let fetch = async |url: &Value| {
        let resp = reqwest::get(url.as_str().expect("a URL")).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap()
    };
    let model = fetch(&details["download_url"]).await;
    let kohya = fetch(&details["kohya_download_url"]).await;
    assert_eq!(details["file_size"].as_u64(), Some(model.len() as u64));
    let png = fetch(&details["validation"]["image_urls"][0]).await;
    assert!(png.starts_with(b"\x89PNG"), "a validation image is a PNG");
    let files = dir.path().join("downloaded");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("model.safetensors"), &model).unwrap();
    std::fs::write(files.join("model.kohya.safetensors"), &kohya).unwrap();

    // `loraforge inspect` accepts it: diffusers keys, rank 4, alpha 8.
    let out = loraforge(dir.path())
        .args(["inspect", "--json"])
        .arg(files.join("model.safetensors"))
        .env("LORAFORGE_LORA_MIN_BYTES", "1000")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["report"]["rank"], 4, "{report}");
    assert_eq!(report["report"]["alpha"], 8.0, "{report}");

    // diffusers loads it and generates; the kohya file gives the same UNet output.
    let out = std::process::Command::new(trainer_python())
        .arg(repo_root().join("crates/cli/tests/fixtures/check_lora.py"))
        .arg(tiny_model())
        .arg(files.join("model.safetensors"))
        .arg(files.join("model.kohya.safetensors"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\": true"), "{stdout}");

    // Nothing left behind: no worker, and the job's scratch folder is gone.
    assert!(
        svc.children_alive().is_empty(),
        "{:?}",
        svc.children_alive()
    );
    let jobs = svc.data.join("jobs").join(&id);
    assert!(
        !jobs.join("out").exists(),
        "the worker's scratch space is removed"
    );
    eprintln!(
        "lifecycle (create → completed) took {:.2} s",
        lifecycle.as_secs_f64()
    );
}

/// The scaled-out path: the same service on a real Postgres server and S3 (moto_server on
/// loopback). The worker downloads the images and uploads its files through S3's own presigned
/// links; the service reads its state from Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_on_postgres_and_s3() {
    use loraforge_storage::test_support::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};
    let db = loraforge_db::test_support::TestDatabase::create().await;
    let s3 = S3Server::shared();
    let bucket = s3.create_bucket();
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("s3://{bucket}/loraforge");
    let endpoint = s3.endpoint.to_string();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_DATABASE_URL", db.url()),
            ("LORAFORGE_STORAGE_URL", &storage),
            ("LORAFORGE_S3_ENDPOINT", &endpoint),
            ("LORAFORGE_S3_REGION", REGION),
            ("LORAFORGE_S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("LORAFORGE_S3_SECRET_ACCESS_KEY", SECRET_KEY),
            ("LORAFORGE_S3_ALLOW_HTTP", "true"),
            ("LORAFORGE_S3_PATH_STYLE", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq in the cloud", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );

    // Every file is in the bucket, under the PRD's keys, and reached through presigned links.
    let (_, details) = svc
        .call(
            &token,
            reqwest::Method::GET,
            &format!("/api/v1/lora-models/{id}"),
            None,
        )
        .await;
    let in_bucket = format!("{endpoint}{bucket}/loraforge/");
    for (url, key) in [
        (
            &details["download_url"],
            format!("lora-models/{USER}/{id}/model.safetensors"),
        ),
        (
            &details["kohya_download_url"],
            format!("lora-models/{USER}/{id}/model.kohya.safetensors"),
        ),
        (
            &details["validation"]["image_urls"][2],
            format!("lora-validation-images/{USER}/{id}/validation/2.png"),
        ),
    ] {
        let url = url
            .as_str()
            .unwrap_or_else(|| panic!("no link for {key}: {details}"));
        assert!(
            url.starts_with(&format!("{in_bucket}{key}?")) && url.contains("X-Amz-Signature="),
            "{url}"
        );
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp.bytes().await.unwrap();
        if key.ends_with("model.safetensors") {
            assert_eq!(details["file_size"].as_u64(), Some(body.len() as u64));
        }
    }
    // The service ran on Postgres, not on a SQLite file beside it.
    let log = strip_ansi(&std::fs::read_to_string(&svc.log).unwrap());
    assert!(log.contains("database=postgres://"), "{log}");
    assert!(!svc.data.join("loraforge.db").exists());
    assert!(
        svc.children_alive().is_empty(),
        "{:?}",
        svc.children_alive()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_training_ends_within_30_s_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Cancelled", 5000).await;
    svc.wait(
        &token,
        &id,
        "training steps",
        Duration::from_secs(180),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 1),
    )
    .await;
    assert!(!svc.children_alive().is_empty(), "a worker runs");
    let asked = Instant::now();
    let (code, body) = svc
        .call(
            &token,
            reqwest::Method::POST,
            &format!("/api/v1/lora-models/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    while !svc.children_alive().is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "still running after 30 s: {:?}",
            svc.children_alive()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cancel → no process left in {:.2} s",
        asked.elapsed().as_secs_f64()
    );
    let s = svc.status(&token, &id).await;
    assert_eq!(s["training_status"], "cancelled");
    // The job's folder (checkpoints and all) is released once the run is gone.
    let folder = svc.data.join("jobs").join(&id);
    let started = Instant::now();
    while folder.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!folder.exists(), "{} is left behind", folder.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dreambooth_lora_generates_its_class_images_once_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let params = json!({"type": "dreambooth", "class_prompt": "a photo of a person",
        "num_class_images": 2, "prior_loss_weight": 0.5});
    let first = svc
        .create_with(&token, "Dreambooth one", 3, params.clone())
        .await;
    let done = svc.finished(&token, &first).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    let stages: Vec<String> = svc
        .events(&token, &first)
        .await
        .iter()
        .filter_map(|e| e["data"]["stage"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stages.iter().any(|s| s == "generating_class_images"),
        "{stages:?}"
    );
    // The set lives in the host's cache, outside the job's folder, and outlives the job.
    let cache = svc.data.join("cache/class-images");
    let sets: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", cache.display(), svc.logs()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let manifest = sets[0].join("manifest.json");
    let made = std::fs::metadata(&manifest).unwrap().modified().unwrap();

    // A second job with the same class set reuses it.
    let second = svc.create_with(&token, "Dreambooth two", 3, params).await;
    let done = svc.finished(&token, &second).await;
    assert_eq!(done["training_status"], "completed", "{done}");
    let stages: Vec<String> = svc
        .events(&token, &second)
        .await
        .iter()
        .filter_map(|e| e["data"]["stage"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !stages.iter().any(|s| s == "generating_class_images"),
        "{stages:?}"
    );
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        made
    );
    assert!(svc.children_alive().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_loss_fails_the_lora_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[("LORAFORGE_WORKER_DEBUG_FAIL_AT_STEP", "3")]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Diverges", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(done["training_status"], "failed", "{done}");
    assert_eq!(
        done["error"], "training diverged: non-finite loss at step 3",
        "{done}"
    );
    // Not retried, and it does not count toward the monthly limit.
    let (_, limits) = svc
        .call(&token, reqwest::Method::GET, "/api/v1/me/limits", None)
        .await;
    assert_eq!(limits["used"], 0, "{limits}");
    assert!(svc.children_alive().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_keeps_the_files_and_the_retry_uploads_them_without_training_again() {
    let dir = tempfile::tempdir().unwrap();
    // The first attempt's model upload fails 4 times (1 + 3 retries): the worker gives up and
    // keeps the files; the engine requeues; the second attempt uploads what was kept.
    let svc = Service::start(dir.path(), &[("LORAFORGE_DEBUG_FAIL_UPLOADS", "4")]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Flaky storage", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    let events = svc.events(&token, &id).await;
    let requeue = events
        .iter()
        .find(|e| e["data"]["event"] == "requeue")
        .expect("a requeue");
    let why = requeue["data"]["error"].as_str().unwrap();
    assert!(
        why.contains("could not be uploaded") && why.contains("kept"),
        "{why}"
    );
    // Trained once: the second attempt went straight to uploading.
    let starts = events
        .iter()
        .filter(|e| e["data"]["event"] == "start")
        .count();
    assert_eq!(starts, 2, "{events:?}");
    let stages: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "progress")
        .filter_map(|e| e["data"]["stage"].as_str())
        .collect();
    let entered_training = stages
        .windows(2)
        .filter(|w| w[1] == "training" && w[0] != "training")
        .count()
        + usize::from(stages.first() == Some(&"training"));
    assert_eq!(entered_training, 1, "training ran once: {stages:?}");
    let (_, details) = svc
        .call(
            &token,
            reqwest::Method::GET,
            &format!("/api/v1/lora-models/{id}"),
            None,
        )
        .await;
    let model = reqwest::get(details["download_url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(details["file_size"].as_u64(), Some(model.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_service_mid_training_then_a_restart_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Survivor", 80).await;
    svc.wait(
        &token,
        &id,
        "training to be under way",
        Duration::from_secs(180),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 5),
    )
    .await;
    // The worker keeps the address it was given: the restarted service takes the same one.
    svc.bind = svc.url.trim_start_matches("http://").to_owned();
    svc.kill_9();
    // The worker is not the service's to lose: it keeps training (its own process group,
    // talking to the service over HTTP and riding out the minutes it is down), and the
    // restarted service adopts its run. No attempt is spent and nothing is trained twice.
    assert!(
        !svc.children_alive().is_empty(),
        "the worker outlives a crash of the service"
    );
    svc.restart();
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    let events = svc.events(&token, &id).await;
    assert!(
        events.iter().all(|e| e["data"]["event"] != "requeue"),
        "the run was adopted, not requeued: {events:?}\n{}",
        svc.logs()
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["trained"], "one run trained the LoRA: {details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_follow_runs_to_completion_and_prints_the_download_link() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), &[]);
    let token = svc.token(USER);
    let images = dir.path().join("photos");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3 {
        std::fs::write(images.join(format!("p{i}.png")), noise_png(96, 96, 10 + i)).unwrap();
    }
    std::fs::write(images.join("p0.txt"), "a photo of zxq smiling").unwrap();
    let model = tiny_model().display().to_string();
    let mut cmd = loraforge(dir.path());
    cmd.args(["train"])
        .arg(&images)
        .args([
            "--name",
            "Followed",
            "--trigger",
            "zxq",
            "--base-model",
            &model,
            "--steps",
            "10",
            "--resolution",
            "64",
            "--follow",
        ])
        .args(["--server", &svc.url])
        .env("LORAFORGE_TOKEN", &token)
        // The client checks the images with the same rules as this service.
        .envs(BASE_ENV.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}\n{}",
        out.status,
        svc.logs()
    );
    assert!(stdout.contains("completed"), "{stdout}");
    let link = stdout
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http")))
        .expect("a link");
    let link = link.trim_matches(|c: char| c == '<' || c == '>');
    let file = reqwest::get(link).await.unwrap();
    assert_eq!(file.status(), 200, "{link}");
    assert!(file.bytes().await.unwrap().len() > 1000);
}

/// The RunPod pods backend, end to end: `serve` with `LORAFORGE_BACKENDS=runpod` against the
/// contract fake of RunPod's GraphQL API, whose pod really runs `loraforge worker` exactly as the
/// worker image does (its command, only the image's and the pod's environment); the worker calls
/// back over the protocol, the LoRA completes, the pod is terminated and its cost recorded.
/// The contract fake of RunPod with the worker image: its pods run this build's `loraforge
/// worker` with the image's environment (as `docker/worker.Dockerfile` sets it), logs in
/// `<dir>/pods`. No 3090 is available; A40s are, at $0.79/h.
async fn fake_runpod(dir: &Path) -> loraforge_fakes::FakeRunpod {
    use loraforge_fakes::{FakeConfig, ImageSpec};
    let image_data = dir.join("image-data");
    // What the worker image sets (docker/worker.Dockerfile), pointed at this machine's venv.
    let image = ImageSpec::program(env!("CARGO_BIN_EXE_loraforge"), ["worker"])
        .with_env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .with_env(
            "LORAFORGE_TRAINER_PYTHON",
            trainer_python().display().to_string(),
        )
        .with_env("LORAFORGE_DATA_DIR", image_data.display().to_string())
        .with_env("LORAFORGE_WORKER_RETRY_DELAY_MS", "50")
        .with_env("LORAFORGE_TORCH_THREADS", "1")
        .with_env("OMP_NUM_THREADS", "1")
        .with_env("HF_HUB_OFFLINE", "1");
    let mut config = FakeConfig::new("rp-test-key")
        .with_gpu("NVIDIA GeForce RTX 3090", 0, "0.44")
        .with_gpu("NVIDIA A40", 2, "0.79")
        .with_image("ghcr.io/acme/loraforge-worker:test", image);
    config.logs_dir = Some(dir.join("pods"));
    loraforge_fakes::FakeRunpod::start(config).await
}

/// What every pod's log says, for failure messages.
fn pod_logs(dir: &Path) -> String {
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

/// `serve` training on the fake's pods (extra settings after the RunPod ones).
fn runpod_service(
    dir: &Path,
    runpod: &loraforge_fakes::FakeRunpod,
    extra: &[(&str, &str)],
) -> Service {
    let graphql = runpod.graphql_url().to_string();
    let mut env = vec![
        ("LORAFORGE_BACKENDS", "runpod"),
        ("LORAFORGE_RUNPOD_API_KEY", "rp-test-key"),
        ("LORAFORGE_RUNPOD_GRAPHQL_URL", graphql.as_str()),
        (
            "LORAFORGE_RUNPOD_IMAGE",
            "ghcr.io/acme/loraforge-worker:test",
        ),
        (
            "LORAFORGE_RUNPOD_GPU_TYPES",
            "NVIDIA GeForce RTX 3090,NVIDIA A40",
        ),
        ("LORAFORGE_RUNPOD_OBSERVE_SECS", "1"),
        ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
    ];
    env.extend_from_slice(extra);
    Service::start(dir, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_on_a_runpod_pod() {
    use loraforge_fakes::FakePodStatus;
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    let svc = runpod_service(dir.path(), &runpod, &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on a pod", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );

    // The 3090 had no capacity: the A40 took it. The pod carried the worker's environment.
    let pods = runpod.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(pod.name, format!("loraforge-{id}-1"));
    assert_eq!(pod.gpu_type, "NVIDIA A40");
    for key in [
        "LORAFORGE_SERVER",
        "LORAFORGE_LORA_ID",
        "LORAFORGE_WORKER_TOKEN",
    ] {
        assert!(
            pod.env.iter().any(|(k, _)| k == key),
            "{key} missing from {:?}",
            pod.env.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
    }
    assert!(
        pod.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_LORA_ID" && *v == id)
    );
    // No instance is left, and the attempt's record says where it ran and what it cost.
    let started = Instant::now();
    loop {
        let (_, details) = svc
            .call(
                &token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}"),
                None,
            )
            .await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() {
            assert_eq!(
                (attempt["backend"].as_str(), attempt["gpu_type"].as_str()),
                (Some("runpod"), Some("NVIDIA A40")),
                "{details}"
            );
            assert_eq!(attempt["outcome"], "trained");
            assert!(
                attempt["cost"]["micro_usd"].as_i64().unwrap() > 0,
                "{details}"
            );
            assert_eq!(details["training_cost"], attempt["cost"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pod's end was not recorded: {details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod = runpod.pods().pop().unwrap();
    assert_eq!(pod.status, FakePodStatus::Terminated, "{pod:?}");
    no_process_left(&runpod).await;
}

/// The Docker backend, end to end: `serve` with `LORAFORGE_BACKENDS=docker` against the fake
/// Docker Engine, which pulls the worker image and runs the container's `loraforge worker` as a
/// local process (this build's binary, with only the image's and the container's environment);
/// the LoRA completes, the container is removed and the attempt recorded as run on `docker`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_in_a_docker_container() {
    use loraforge_fakes::{DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};
    let dir = tempfile::tempdir().unwrap();
    let image_data = dir.path().join("image-data");
    let worker_image = ImageSpec::idle()
        .with_env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .with_env(
            "LORAFORGE_TRAINER_PYTHON",
            trainer_python().display().to_string(),
        )
        .with_env("LORAFORGE_DATA_DIR", image_data.display().to_string())
        .with_env("LORAFORGE_WORKER_RETRY_DELAY_MS", "50")
        .with_env("LORAFORGE_TORCH_THREADS", "1")
        .with_env("OMP_NUM_THREADS", "1")
        .with_env("HF_HUB_OFFLINE", "1");
    let image = "ghcr.io/acme/loraforge-worker:test";
    let mut config = FakeDockerConfig::default()
        .with_gpus(1)
        .with_registry_image(
            image,
            DockerImage::new(worker_image)
                .with_program("loraforge", env!("CARGO_BIN_EXE_loraforge")),
        );
    config.logs_dir = Some(dir.path().join("pods"));
    let docker = FakeDocker::start(config).await;
    let host = docker.host();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "docker"),
            ("LORAFORGE_DOCKER_HOST", host.as_str()),
            ("LORAFORGE_DOCKER_IMAGE", image),
            ("LORAFORGE_DOCKER_MEMORY_MB", "8192"),
            ("LORAFORGE_DOCKER_OBSERVE_SECS", "1"),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq in a container", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- containers ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let containers = docker.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let c = &containers[0];
    assert_eq!(c.name, format!("loraforge-{id}-1"));
    assert_eq!(c.labels["loraforge.lora"], id);
    assert_eq!(c.memory, Some(8192 * 1024 * 1024));
    assert_eq!(c.device_requests[0].count, Some(-1), "all GPUs");
    assert!(
        c.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_LORA_ID" && *v == id)
    );
    let started = Instant::now();
    loop {
        let (_, details) = svc
            .call(
                &token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}"),
                None,
            )
            .await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() && docker.containers()[0].removed {
            assert_eq!(
                (attempt["backend"].as_str(), attempt["gpu_type"].as_str()),
                (Some("docker"), Some("docker:all")),
                "{details}"
            );
            assert_eq!(attempt["outcome"], "trained");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the container's end was not recorded: {details}\n{:?}",
            docker.containers()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(docker.live_processes(), 0, "no worker left running");
}

/// A container of this service that no run owns (left by a `serve` that crashed before recording
/// its run) is found by its labels when `serve` starts and removed by the orphan sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_container_is_removed_when_serve_starts() {
    use loraforge_fakes::{DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sleeper = dir.path().join("sleeper");
    std::fs::write(&sleeper, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = "ghcr.io/acme/loraforge-worker:test";
    let docker = FakeDocker::start(
        FakeDockerConfig::default().with_gpus(1).with_image(
            image,
            DockerImage::new(ImageSpec::idle().with_env("PATH", "/usr/bin:/bin"))
                .with_program("loraforge", &sleeper),
        ),
    )
    .await;
    let orphan_name = format!("loraforge-{}-1", uuid_like());
    let crashed = loraforge_docker::DockerBackend::new(
        loraforge_docker::connect(&docker.host(), Duration::from_secs(10)).unwrap(),
        loraforge_docker::DockerSettings::new(image),
    );
    let orphan = {
        use loraforge_engine::TrainingBackend;
        crashed
            .launch(&loraforge_engine::Launch {
                lora_id: uuid_like().parse().unwrap(),
                attempt: 1,
                instance_name: orphan_name.clone(),
                server: "http://127.0.0.1:9".into(),
                token: "t".into(),
                retry: false,
            })
            .await
            .unwrap()
            .provider_id
    };
    let host = docker.host();
    let _svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "docker"),
            ("LORAFORGE_DOCKER_HOST", host.as_str()),
            ("LORAFORGE_DOCKER_IMAGE", image),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let started = Instant::now();
    while !docker.container(&orphan).unwrap().removed {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the orphan was not swept: {:?}",
            docker.containers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod's host dies mid-training (the pod vanishes without a word from its worker): the job is
/// requeued, a new pod resumes from the checkpoint the first one uploaded to the blob store, and
/// the LoRA completes; both pods are gone, each attempt on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_dies_mid_training_is_replaced_and_the_next_resumes_from_the_stored_checkpoint()
{
    use loraforge_fakes::{FakePodStatus, KillPod};
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    let svc = runpod_service(
        dir.path(),
        &runpod,
        &[("LORAFORGE_CHECKPOINT_EVERY_STEPS", "10")],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq survives a host", 60).await;
    let stored = svc
        .data
        .join("blobs/training-checkpoints")
        .join(USER)
        .join(&id)
        .join("attempt-1.pt");
    svc.wait(
        &token,
        &id,
        "a stored checkpoint",
        Duration::from_secs(240),
        |_| stored.exists(),
    )
    .await;
    let first = runpod.pods().pop().unwrap();
    assert!(runpod.kill_pod(&first.id, KillPod::Removed), "{first:?}");

    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let pods = runpod.pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let second_log = std::fs::read_to_string(&pods[1].log_path).unwrap();
    assert!(
        second_log.contains("resuming from step-"),
        "the second pod trained from scratch:\n{second_log}"
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["vanished", "trained"], "{details}");
    // Nothing is left running, and the job's checkpoints are gone with it.
    let started = Instant::now();
    while runpod
        .pods()
        .iter()
        .any(|p| p.status == FakePodStatus::Running)
        || stored.parent().unwrap().exists()
            && std::fs::read_dir(stored.parent().unwrap())
                .unwrap()
                .next()
                .is_some()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
}

/// No GPU of any configured type: the LoRA waits `queued` with a message saying why (not
/// `failed`), and trains once one is free; cancelling a training LoRA ends its pod within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gpu_the_lora_waits_and_a_cancel_ends_its_pod_within_30_s() {
    use loraforge_fakes::FakePodStatus;
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    runpod.set_capacity("NVIDIA A40", 0);
    let svc = runpod_service(dir.path(), &runpod, &[]);
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq waits", 5000).await;
    let waiting = svc
        .wait(
            &token,
            &id,
            "a message about the GPU",
            Duration::from_secs(60),
            |s| s["status_message"].is_string(),
        )
        .await;
    assert_eq!(waiting["training_status"], "queued", "{waiting}");
    let message = waiting["status_message"].as_str().unwrap();
    assert!(
        message.contains("waiting for a GPU") && message.contains("NVIDIA A40"),
        "{message}"
    );
    assert!(waiting["error"].is_null(), "{waiting}");
    assert!(runpod.pods().is_empty());

    // A GPU frees up: the backend is asked again after its cool-down, and the LoRA trains.
    runpod.set_capacity("NVIDIA A40", 1);
    svc.wait(
        &token,
        &id,
        "training on a pod",
        Duration::from_secs(240),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 1),
    )
    .await;
    let asked = Instant::now();
    let (code, body) = svc
        .call(
            &token,
            reqwest::Method::POST,
            &format!("/api/v1/lora-models/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    loop {
        let pod = runpod.pods().pop().unwrap();
        if pod.status == FakePodStatus::Terminated && runpod.live_processes() == 0 {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the pod still runs 30 s after the cancel: {pod:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cancel → pod terminated in {:.2} s",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(
        svc.status(&token, &id).await["training_status"],
        "cancelled"
    );
}

/// A free port on loopback, for a service that must keep its address across a restart (pods
/// call back to it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve` killed with -9 while a pod trains, restarted on the same address: the pod's worker
/// carries on (or a new pod resumes), the LoRA completes, and no instance is left unaccounted
/// for; an orphan pod of this service found at start is terminated by the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_serve_every_pod_is_accounted_for() {
    use loraforge_fakes::FakePodStatus;
    let dir = tempfile::tempdir().unwrap();
    let runpod = fake_runpod(dir.path()).await;
    // A pod of this service that no run owns (left by a crash before its run was recorded).
    let orphan_name = format!("loraforge-{}-1", uuid_like());
    let deploy = serde_json::json!({
        "query": "mutation Deploy($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id } }",
        "variables": {"input": {"name": orphan_name, "imageName": "idle", "gpuTypeId": "NVIDIA A40", "gpuCount": 1, "cloudType": "ALL"}}
    });
    let resp = reqwest::Client::new()
        .post(runpod.graphql_url().as_str())
        .bearer_auth("rp-test-key")
        .json(&deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let public = format!("http://127.0.0.1:{port}");
    let mut svc = runpod_service(
        dir.path(),
        &runpod,
        &[
            ("LORAFORGE_CHECKPOINT_EVERY_STEPS", "10"),
            ("LORAFORGE_PUBLIC_URL", &public),
        ],
    );
    svc.bind = bind;
    svc.kill_9();
    svc.restart();
    let started = Instant::now();
    while runpod
        .pods()
        .iter()
        .any(|p| p.name == orphan_name && p.status != FakePodStatus::Terminated)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the orphan was not swept: {:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq outlives serve", 80).await;
    svc.wait(
        &token,
        &id,
        "training to be under way",
        Duration::from_secs(240),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 5),
    )
    .await;
    svc.kill_9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    svc.restart();
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- pods ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let started = Instant::now();
    loop {
        let (_, details) = svc
            .call(
                &token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}"),
                None,
            )
            .await;
        let attempts = details["attempts"].as_array().unwrap().clone();
        let pods = runpod.pods();
        let ours: Vec<_> = pods.iter().filter(|p| p.name != orphan_name).collect();
        if attempts.iter().all(|a| a["cost"].is_object())
            && ours.iter().all(|p| p.status == FakePodStatus::Terminated)
        {
            // One pod per attempt, each ended and paid for.
            assert_eq!(ours.len(), attempts.len(), "{pods:?}\n{details}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{pods:?}\n{details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
}

/// A random UUID-shaped id (the tests have no uuid dependency of their own).
fn uuid_like() -> String {
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

/// The RunPod Serverless backend, end to end: `serve` with `LORAFORGE_BACKENDS=runpod-serverless`
/// against the contract fake's queue endpoint, whose worker runs `loraforge worker` with the
/// job's input as its environment (as `docker/runpod_handler.py` does) and only the image's own
/// variables besides; the LoRA completes, the job ends COMPLETED on its own and the attempt is
/// billed by RunPod's `executionTime` at the per-second price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_on_a_runpod_serverless_endpoint() {
    use loraforge_fakes::{EndpointSpec, FakeConfig, FakeJobState, ImageSpec};
    let dir = tempfile::tempdir().unwrap();
    let image_data = dir.path().join("image-data");
    // What the worker image sets (docker/worker.Dockerfile), pointed at this machine's venv.
    let image = ImageSpec::program(env!("CARGO_BIN_EXE_loraforge"), ["worker"])
        .with_env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .with_env(
            "LORAFORGE_TRAINER_PYTHON",
            trainer_python().display().to_string(),
        )
        .with_env("LORAFORGE_DATA_DIR", image_data.display().to_string())
        .with_env("LORAFORGE_WORKER_RETRY_DELAY_MS", "50")
        .with_env("LORAFORGE_TORCH_THREADS", "1")
        .with_env("OMP_NUM_THREADS", "1")
        .with_env("HF_HUB_OFFLINE", "1");
    let mut config =
        FakeConfig::new("rp-test-key").with_endpoint(EndpointSpec::new("ep-loraforge", image));
    config.logs_dir = Some(dir.path().join("jobs"));
    let runpod = loraforge_fakes::FakeRunpod::start(config).await;
    let base_url = runpod.serverless_base_url();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "runpod-serverless"),
            ("LORAFORGE_RUNPOD_API_KEY", "rp-test-key"),
            ("LORAFORGE_RUNPOD_SERVERLESS_URL", &base_url),
            ("LORAFORGE_RUNPOD_ENDPOINT_ID", "ep-loraforge"),
            ("LORAFORGE_RUNPOD_SERVERLESS_PRICE_PER_SECOND", "0.00031"),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on serverless", 10).await;
    let done = svc.finished(&token, &id).await;
    let job_logs = || {
        let mut all = String::new();
        for entry in std::fs::read_dir(dir.path().join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        all
    };
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- jobs ---\n{}",
        svc.logs(),
        job_logs()
    );

    // One job, whose input carried the worker's environment.
    let jobs = runpod.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].input["lora_id"], id.as_str());
    assert!(
        jobs[0].input["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("http://127.0.0.1:")),
        "{:?}",
        jobs[0].input
    );
    assert!(
        jobs[0].input["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // The attempt's record says where it ran and what it cost: executionTime × the price.
    let started = Instant::now();
    loop {
        let (_, details) = svc
            .call(
                &token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}"),
                None,
            )
            .await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() {
            assert_eq!(
                attempt["backend"].as_str(),
                Some("runpod-serverless"),
                "{details}"
            );
            assert_eq!(attempt["outcome"], "trained");
            let job = runpod.jobs().pop().unwrap();
            assert_eq!(job.state, FakeJobState::Completed, "{job:?}");
            let billed = job.execution_time_ms.expect("an execution time");
            let expected = (310 * billed as i64 + 500) / 1000;
            assert_eq!(
                attempt["cost"]["micro_usd"].as_i64(),
                Some(expected),
                "{details} {job:?}"
            );
            assert!(expected > 0);
            assert_eq!(details["training_cost"], attempt["cost"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the job's end was not recorded: {details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_process_left(&runpod).await;
    // The token never reaches the service's log.
    let token_sent = runpod.jobs()[0].input["token"].as_str().unwrap().to_owned();
    assert!(!svc.logs().contains(&token_sent));
}

/// Waits for every process the fake provider started to be gone: a terminated pod's worker gets
/// SIGTERM, then SIGKILL after the fake's 5 s grace.
async fn no_process_left(runpod: &loraforge_fakes::FakeRunpod) {
    let started = Instant::now();
    while runpod.live_processes() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "processes left: {:?}",
            runpod.pods()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Replicate backend, end to end: `serve` with `LORAFORGE_BACKENDS=replicate` against the
/// contract fake, whose trainings run our Cog model's CLI (`cog/train.py`, which downloads the
/// job's dataset zip from the service and runs the trainer as the worker does). The control plane
/// plays the worker's part: it relays progress, downloads the tar, uploads the files and posts
/// the result; the LoRA completes with its files and the attempt is billed by `predict_time` at
/// the per-second price.
/// `cog/train.py` as fake-replicate runs it, with the trainer venv and one torch thread; run
/// through `sh` with `prelude` first when given (it may edit `{spec}`).
fn cog_command(dir: &Path, prelude: Option<&str>) -> loraforge_fakes::TrainingCommand {
    use loraforge_fakes::TrainingCommand;
    let python = trainer_python().display().to_string();
    let mut command = match prelude {
        None => TrainingCommand::cog(trainer_python(), repo_root()),
        Some(prelude) => {
            let mut c = TrainingCommand::shell(format!(
                "{prelude} && exec '{python}' cog/train.py --dataset-url '{{dataset_url}}' \
                 --spec '{{spec}}' --output '{{output}}'"
            ));
            c.cwd = Some(repo_root());
            c
        }
    };
    for (k, v) in [
        ("LORAFORGE_TRAINER_PYTHON", python.as_str()),
        ("LORAFORGE_TORCH_THREADS", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("HF_HUB_OFFLINE", "1"),
    ] {
        command = command.with_env(k, v);
    }
    command.with_env("HOME", dir.display().to_string())
}

/// fake-replicate running `command`, and `serve` with `LORAFORGE_BACKENDS=replicate` on it.
async fn replicate_service(
    dir: &Path,
    command: loraforge_fakes::TrainingCommand,
) -> (loraforge_fakes::FakeReplicate, Service) {
    use loraforge_fakes::{FakeReplicate, ReplicateConfig};
    let mut config = ReplicateConfig::new("r8-test", command).with_model("acme/loras");
    config.work_dir = Some(dir.join("replicate"));
    let replicate = FakeReplicate::start(config).await;
    let base_url = replicate.base_url();
    let svc = Service::start(
        dir,
        &[
            ("LORAFORGE_BACKENDS", "replicate"),
            ("LORAFORGE_REPLICATE_API_TOKEN", "r8-test"),
            ("LORAFORGE_REPLICATE_API_URL", &base_url),
            (
                "LORAFORGE_REPLICATE_MODEL",
                "acme/loraforge-trainer:0a1b2c3d",
            ),
            ("LORAFORGE_REPLICATE_DESTINATION", "acme/loras"),
            ("LORAFORGE_REPLICATE_PRICE_PER_SECOND", "0.0014"),
            ("LORAFORGE_REPLICATE_OBSERVE_SECS", "1"),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    (replicate, svc)
}

/// Each training's logs and stderr, for failure messages.
fn replicate_logs(replicate: &loraforge_fakes::FakeReplicate, dir: &Path) -> String {
    let mut all = String::new();
    for t in replicate.trainings() {
        all.push_str(&format!("{}\n", t["logs"].as_str().unwrap_or("")));
        let id = t["id"].as_str().unwrap_or("");
        let path = dir.join("replicate").join(id).join("stderr.log");
        all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_through_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq on replicate", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- trainings ---\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    // The LoRA's files are there: the downloads of the completed LoRA answer.
    let (_, details) = svc
        .call(
            &token,
            reqwest::Method::GET,
            &format!("/api/v1/lora-models/{id}"),
            None,
        )
        .await;
    let trainings = replicate.trainings();
    assert_eq!(trainings.len(), 1, "{trainings:?}");
    let training = &trainings[0];
    assert_eq!(training["status"], "succeeded", "{training}");
    assert_eq!(training["destination"], "acme/loras");
    assert_eq!(
        training["input"]["loraforge_instance"].as_str(),
        Some(format!("loraforge-{id}-1").as_str())
    );
    assert!(
        training["webhook"]
            .as_str()
            .is_some_and(|w| w.ends_with("/api/v1/webhooks/replicate")),
        "{training}"
    );
    for key in ["download_url", "kohya_download_url"] {
        let url = details[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {details}"));
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{key}");
        assert!(
            response.bytes().await.unwrap().len() > 1000,
            "{key} is a LoRA file"
        );
    }
    // The attempt's record: where it ran, what it cost (predict_time × the price).
    let started = Instant::now();
    loop {
        let (_, details) = svc
            .call(
                &token,
                reqwest::Method::GET,
                &format!("/api/v1/lora-models/{id}"),
                None,
            )
            .await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() {
            assert_eq!(attempt["backend"].as_str(), Some("replicate"), "{details}");
            assert_eq!(attempt["outcome"], "trained");
            let seconds = replicate.trainings()[0]["metrics"]["predict_time"]
                .as_f64()
                .expect("a predict_time");
            let millis = (seconds * 1000.0).round() as i64;
            // 0.0014 $/s = 1400 µ$/s, billed through the per-hour price as the engine does.
            let expected = (1400 * 3600 * millis + 1_800_000) / 3_600_000;
            assert_eq!(
                attempt["cost"]["micro_usd"].as_i64(),
                Some(expected),
                "{details}"
            );
            assert!(expected > 0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the run's end was not recorded: {details}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(replicate.live_processes(), 0);
}

/// A training that fails on Replicate (the trainer's loss turns NaN at step 3): the trainer's
/// own error line in the training's logs becomes the attempt's outcome, and the LoRA fails with
/// the same reason as on a worker; the training is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_that_fails_on_replicate_fails_the_lora_with_the_trainers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let python = trainer_python().display().to_string();
    let prelude = format!(
        "'{python}' -c 'import json,sys; p=sys.argv[1]; s=json.load(open(p)); \
         s[\"debug_fail_at_step\"]=3; json.dump(s, open(p, \"w\"))' '{{spec}}'"
    );
    let (replicate, svc) =
        replicate_service(dir.path(), cog_command(dir.path(), Some(&prelude))).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Diverges on replicate", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "failed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    assert_eq!(
        done["error"], "training diverged: non-finite loss at step 3",
        "{done}"
    );
    let trainings = replicate.trainings();
    assert_eq!(trainings.len(), 1, "not run again: {trainings:?}");
    assert_eq!(trainings[0]["status"], "failed");
    assert_eq!(replicate.live_processes(), 0);
}

/// A LoRA cancelled while it trains on Replicate: progress is relayed from the training's logs
/// while it runs, and the cancel cancels the training (its process killed) within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_lora_cancels_its_replicate_training() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Cancelled on replicate", 5000).await;
    svc.wait(
        &token,
        &id,
        "training steps relayed from Replicate",
        Duration::from_secs(180),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 1),
    )
    .await;
    assert_eq!(replicate.live_processes(), 1);
    let asked = Instant::now();
    let (code, body) = svc
        .call(
            &token,
            reqwest::Method::POST,
            &format!("/api/v1/lora-models/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    while replicate.live_processes() > 0 {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "still training after 30 s: {:?}",
            replicate.trainings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trainings = replicate.trainings();
    assert_eq!(trainings[0]["status"], "canceled", "{trainings:?}");
    assert!(replicate.counts().1 >= 1, "a cancel was sent");
    let s = svc.status(&token, &id).await;
    assert_eq!(s["training_status"], "cancelled");
}

/// `serve` killed with SIGKILL while its LoRA trains on Replicate: the training goes on there,
/// and the restarted service (its tokens gone with the process) issues the attempt's token
/// again, picks the training up, relays its progress and brings its files home. Nothing is
/// created twice and no attempt is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_training_outlives_a_kill_9_of_serve_and_the_restart_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, mut svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Survivor on replicate", 60).await;
    svc.wait(
        &token,
        &id,
        "training relayed from Replicate",
        Duration::from_secs(180),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 3),
    )
    .await;
    // The public URL (the dataset link, the webhook) stays the same across the restart.
    svc.bind = svc.url.trim_start_matches("http://").to_owned();
    svc.kill_9();
    assert_eq!(replicate.live_processes(), 1, "the training goes on");
    svc.restart();
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["trained"], "one run trained the LoRA: {details}");
    assert_eq!(replicate.trainings().len(), 1, "nothing created twice");
}

/// A training that Replicate fails without a word from the trainer (its host died): the
/// attempt ends `provider_failed`, which is not the job's fault, and the job runs again on a new
/// training and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_host_failure_runs_the_job_again_and_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (replicate, svc) = replicate_service(dir.path(), cog_command(dir.path(), None)).await;
    let token = svc.token(USER);
    let id = svc.create(&token, "Host dies on replicate", 30).await;
    svc.wait(
        &token,
        &id,
        "training relayed from Replicate",
        Duration::from_secs(180),
        |s| s["stage"] == "training" && s["progress"].as_u64().is_some_and(|p| p >= 1),
    )
    .await;
    let first = replicate.trainings()[0]["id"].as_str().unwrap().to_owned();
    assert!(replicate.fail_training(&first, "the GPU host died"));
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n{}",
        svc.logs(),
        replicate_logs(&replicate, dir.path())
    );
    let (outcomes, details) = svc.outcomes(&token, &id).await;
    assert_eq!(outcomes, ["provider_failed", "trained"], "{details}");
    let trainings = replicate.trainings();
    assert_eq!(trainings.len(), 2, "{trainings:?}");
    assert_eq!(trainings[0]["status"], "failed");
    assert_eq!(trainings[1]["status"], "succeeded");
    assert_eq!(replicate.live_processes(), 0);
}

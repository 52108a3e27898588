//! Training through ai-toolkit, end to end: `loraforge serve` with `LORAFORGE_BACKENDS=aitoolkit`
//! against the contract fake of ai-toolkit's web UI (`loraforge_fakes::aitoolkit`, auth on),
//! whose jobs run our trainer on the tiny SDXL-shaped model (CPU). The backend plays the
//! worker's part: dataset and job at ai-toolkit, progress relayed, the final kohya file
//! converted and delivered, everything at ai-toolkit deleted at the end.
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use loraforge_fakes::aitoolkit::{FakeAiToolkit, ToolkitConfig, ToolkitTrainer};
use serde_json::{Value, json};

use common::{loraforge, noise_png, strip_ansi, trainer_python};

const USER: &str = "2b5e1f0c-9a55-4c9a-8d3e-0f4c1a2b3c4d";
const TOKEN: &str = "aitk-test-token";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn trainer_env() -> Vec<(String, String)> {
    vec![
        (
            "PYTHONPATH".into(),
            repo_root().join("trainer").display().to_string(),
        ),
        ("HF_HUB_OFFLINE".into(), "1".into()),
        ("OMP_NUM_THREADS".into(), "1".into()),
        ("LORAFORGE_TORCH_THREADS".into(), "1".into()),
    ]
}

fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let model = dir.path().join("tiny-sdxl");
            let out = std::process::Command::new(trainer_python())
                .args(["-m", "loraforge_trainer.testing", "tiny-sdxl"])
                .arg(&model)
                .envs(trainer_env())
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

async fn fake_aitoolkit(dir: &Path) -> FakeAiToolkit {
    let mut config = ToolkitConfig::new(dir.join("aitoolkit"));
    config.auth = Some(TOKEN.to_owned());
    config.tick = Duration::from_millis(50);
    config.trainer = Some(ToolkitTrainer {
        program: trainer_python(),
        args: vec!["-m".into(), "loraforge_trainer".into()],
        env: trainer_env(),
    });
    FakeAiToolkit::start(config, 0)
        .await
        .expect("fake ai-toolkit")
}

/// `loraforge serve` training on ai-toolkit; SIGTERM then SIGKILL on drop.
struct Service {
    child: Option<Child>,
    dir: PathBuf,
    data: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    starts: usize,
    url: String,
    http: reqwest::Client,
}

impl Service {
    fn start(dir: &Path, aitoolkit: &FakeAiToolkit) -> Service {
        let url = aitoolkit.url();
        let env: Vec<(String, String)> = [
            ("LORAFORGE_BACKENDS", "aitoolkit"),
            ("LORAFORGE_AITOOLKIT_URL", url.as_str()),
            ("LORAFORGE_AITOOLKIT_TOKEN", TOKEN),
            ("LORAFORGE_AITOOLKIT_OBSERVE_SECS", "1"),
            ("LORAFORGE_AITOOLKIT_PRICE_PER_HOUR", "0.69"),
            ("LORAFORGE_MIN_STEPS", "1"),
            ("LORAFORGE_MIN_RESOLUTION", "64"),
            ("LORAFORGE_IMAGE_MIN_SIDE", "64"),
            ("LORAFORGE_IMAGE_MIN_BYTES", "1000"),
            ("LORAFORGE_LORA_MIN_BYTES", "1000"),
            ("LORAFORGE_VALIDATION_AUTO_APPROVE", "true"),
            ("LORAFORGE_ENGINE_POLL_MS", "200"),
            ("LORAFORGE_CREATES_PER_MINUTE", "0"),
            // Step saves next to the final file: the backend must take the final one.
            ("LORAFORGE_CHECKPOINT_EVERY_STEPS", "2"),
            (
                "LORAFORGE_LOG",
                "info,sqlx=warn,tower_http=warn,loraforge_aitoolkit=debug",
            ),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain([(
            "LORAFORGE_LOCAL_MODEL_ROOTS".to_owned(),
            tiny_model().parent().unwrap().display().to_string(),
        )])
        .collect();
        let mut s = Service {
            child: None,
            dir: dir.to_owned(),
            data: dir.join("data"),
            env,
            log: PathBuf::new(),
            starts: 0,
            url: String::new(),
            http: reqwest::Client::new(),
        };
        s.spawn();
        s
    }

    /// (Re)starts `serve` on a free port with the same data dir.
    fn spawn(&mut self) {
        self.log = self.dir.join(format!("serve-{}.log", self.starts));
        self.starts += 1;
        let child = loraforge(&self.dir)
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
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
        (0..self.starts)
            .map(|i| {
                let t = std::fs::read_to_string(self.dir.join(format!("serve-{i}.log")))
                    .unwrap_or_default();
                format!("--- serve-{i}.log ---\n{t}")
            })
            .collect()
    }

    fn token(&self) -> String {
        let out = loraforge(&self.dir)
            .args(["token", "--user", USER, "--data-dir"])
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

    async fn get(&self, token: &str, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn create(&self, token: &str, name: &str, steps: u32) -> String {
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
        assert_eq!(resp.status().as_u16(), 201);
        let dataset: Value = resp.json().await.unwrap();
        let body = json!({
            "name": name,
            "dataset_id": dataset["dataset_id"],
            "params": {"base_model": tiny_model().display().to_string(), "steps": steps, "resolution": 64,
                       "rank": 4, "alpha": 8, "lr_warmup_steps": 0, "trigger_words": ["zxq"]},
        });
        let resp = self
            .http
            .post(format!("{}/api/v1/lora-models", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let lora: Value = resp.json().await.unwrap();
        lora["lora_id"].as_str().expect("id").to_owned()
    }

    async fn post(&self, token: &str, path: &str) -> u16 {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        resp.status().as_u16()
    }

    async fn finished(&self, token: &str, id: &str, fake: &FakeAiToolkit) -> Value {
        let started = Instant::now();
        loop {
            let s = self
                .get(token, &format!("/api/v1/lora-models/{id}/status"))
                .await;
            if matches!(
                s["training_status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the LoRA did not finish: {s}\n{}\n--- ai-toolkit jobs ---\n{:?}",
                self.logs(),
                fake.jobs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until ai-toolkit holds neither a job nor a dataset (the backend cleaned up).
    async fn cleaned_up(&self, fake: &FakeAiToolkit) {
        let started = Instant::now();
        while !(fake.jobs().is_empty() && fake.datasets().is_empty() && fake.live_processes() == 0)
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "ai-toolkit still holds jobs {:?} / datasets {:?}\n{}",
                fake.jobs(),
                fake.datasets(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
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

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_model_trains_end_to_end_through_ai_toolkit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let svc = Service::start(dir.path(), &fake);
    let token = svc.token();
    let id = svc.create(&token, "Zxq on ai-toolkit", 4).await;
    let done = svc.finished(&token, &id, &fake).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    svc.cleaned_up(&fake).await;

    // The backend started the stopped GPU queue itself; it sent its token on every API call.
    assert!(fake.queue_running("0"));
    let calls = fake.calls();
    assert!(
        calls.iter().any(|c| c.path == "/api/queue/0/start"),
        "{calls:?}"
    );
    assert!(calls.iter().all(|c| c.status != 401), "{calls:?}");
    for route in [
        "/api/datasets/create",
        "/api/datasets/upload",
        "/api/jobs",
        "/api/datasets/delete",
    ] {
        assert!(
            calls.iter().any(|c| c.path == route),
            "{route} never called: {calls:?}"
        );
    }

    // ai-toolkit listed step saves too (`_000000002`); the final file is the one downloaded.
    let downloads: Vec<&str> = calls
        .iter()
        .filter(|c| c.path.starts_with("/api/files/") && c.path.ends_with(".safetensors"))
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert!(
        downloads[0].ends_with(&format!("loraforge-{id}-1.safetensors")),
        "{downloads:?}"
    );
    let step_saves = fake.step_saves_seen();
    assert!(step_saves > 0, "the fake wrote no step saves");

    // The run is on record with its backend and outcome; the published file is our diffusers
    // form (converted from ai-toolkit's kohya file) and passes the LoRA check.
    let details = svc.get(&token, &format!("/api/v1/lora-models/{id}")).await;
    let attempt = &details["attempts"][0];
    assert_eq!(attempt["backend"], "aitoolkit", "{details}");
    assert_eq!(attempt["outcome"], "trained", "{details}");
    let url = details["download_url"]
        .as_str()
        .or_else(|| details["lora_file_url"].as_str())
        .map(str::to_owned);
    let url = url.unwrap_or_else(|| panic!("no download link in {details}"));
    let url = if url.starts_with("http") {
        url
    } else {
        format!("{}{url}", svc.url)
    };
    let bytes = svc
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let rules = loraforge_checks::LoraRules {
        min_bytes: 0,
        ..Default::default()
    };
    let report = loraforge_checks::inspect_lora(&bytes, &rules)
        .expect("the published LoRA passes the check");
    assert_eq!(report.format, loraforge_checks::LoraFormat::Diffusers);
    assert_eq!((report.rank, report.alpha), (4, Some(8.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_toolkit_error_fails_the_lora_with_the_reason_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    fake.fail_next_jobs(
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
    );
    let svc = Service::start(dir.path(), &fake);
    let token = svc.token();
    let id = svc.create(&token, "Zxq runs out of memory", 4).await;
    let done = svc.finished(&token, &id, &fake).await;
    assert_eq!(done["training_status"], "failed", "{done}\n{}", svc.logs());
    let details = svc.get(&token, &format!("/api/v1/lora-models/{id}")).await;
    assert_eq!(
        details["attempts"][0]["outcome"], "out_of_memory",
        "{details}"
    );
    assert!(
        details.to_string().contains("CUDA out of memory"),
        "{details}"
    );
    svc.cleaned_up(&fake).await;
}

/// Waits until ai-toolkit's job for `lora` runs past its first step; returns its id.
async fn training(fake: &FakeAiToolkit, lora: &str, attempt: u32, svc: &Service) -> String {
    let name = format!("loraforge-{lora}-{attempt}");
    let started = Instant::now();
    loop {
        if let Some(job) = fake
            .jobs()
            .into_iter()
            .find(|j| j.name == name && j.status == "running" && j.step >= 1)
        {
            return job.id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} never trained: {:?}\n{}",
            fake.jobs(),
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn attempts(svc: &Service, token: &str, id: &str) -> Vec<String> {
    let details = svc.get(token, &format!("/api/v1/lora-models/{id}")).await;
    details["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_training_stops_the_ai_toolkit_job_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let svc = Service::start(dir.path(), &fake);
    let token = svc.token();
    let id = svc.create(&token, "Zxq cancelled", 400).await;
    training(&fake, &id, 1, &svc).await;
    assert_eq!(
        svc.post(&token, &format!("/api/v1/lora-models/{id}/cancel"))
            .await,
        200
    );
    let done = svc.finished(&token, &id, &fake).await;
    assert_eq!(done["training_status"], "cancelled", "{done}");
    svc.cleaned_up(&fake).await;
    // The job's folder goes once its trainer has exited.
    let output = dir.path().join("aitoolkit/output");
    let started = Instant::now();
    while output.read_dir().unwrap().next().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job's folder is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_outside_loraforge_is_a_provider_failure_and_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let svc = Service::start(dir.path(), &fake);
    let token = svc.token();
    let id = svc.create(&token, "Zxq stopped by hand", 40).await;
    let job = training(&fake, &id, 1, &svc).await;
    // Someone presses Stop in ai-toolkit's UI.
    let stopped = reqwest::Client::new()
        .get(format!("{}/api/jobs/{job}/stop", fake.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status().as_u16(), 200);
    let done = svc.finished(&token, &id, &fake).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    assert_eq!(
        attempts(&svc, &token, &id).await,
        vec!["provider_failed", "trained"]
    );
    svc.cleaned_up(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_serve_the_restarted_service_brings_the_ai_toolkit_run_home() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_aitoolkit(dir.path()).await;
    let mut svc = Service::start(dir.path(), &fake);
    let token = svc.token();
    let id = svc.create(&token, "Zxq survives a crash", 60).await;
    training(&fake, &id, 1, &svc).await;
    svc.kill_9();
    // ai-toolkit trains on without us; the restarted service acts for the attempt with a token
    // issued again, relays progress and delivers the result.
    svc.spawn();
    let done = svc.finished(&token, &id, &fake).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}",
        svc.logs()
    );
    assert_eq!(
        attempts(&svc, &token, &id).await,
        vec!["trained"],
        "{}",
        svc.logs()
    );
    svc.cleaned_up(&fake).await;
}

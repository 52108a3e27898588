//! `loraforge train <DIR> --name NAME`: a client of a running service. Checks the images
//! locally (a bad dataset fails before anything is uploaded), uploads them as a dataset, creates
//! the LoRA (with an `Idempotency-Key`, so a retried create never creates two), prints its id
//! and status, and with `--follow` shows its progress until it completes, fails or is cancelled.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use loraforge_domain::{DatasetRules, LoraName, ParamLimits, TrainingParams};

use super::check_dataset::{load_and_check, render};
use super::{EXIT_ACCEPTED, EXIT_REJECTED, EXIT_USAGE};

/// Exit status after Ctrl-C while following (the training goes on).
const EXIT_INTERRUPTED: i32 = 130;
/// How often `--follow` asks for the status.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// `--follow` gives up after this many failed polls in a row (about a minute).
const MAX_POLL_FAILURES: u32 = 60;

#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub dir: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub triggers: Vec<String>,
    pub base_model: Option<String>,
    pub steps: Option<u32>,
    pub resolution: Option<u32>,
    pub follow: bool,
    pub server: String,
    pub token: Option<String>,
}

/// Runs the command; returns the exit status.
pub async fn run(args: &TrainArgs, rules: &DatasetRules) -> i32 {
    let Some(token) = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        eprintln!(
            "error: no API token: set LORAFORGE_TOKEN (or pass --token). For a local server, get one with \
             `loraforge token --user <uuid>` (same --data-dir as the server)"
        );
        return EXIT_USAGE;
    };
    let name = match LoraName::parse(&args.name) {
        Ok(n) => n.to_string(),
        Err(e) => {
            eprintln!("error: --name: {e}");
            return EXIT_USAGE;
        }
    };
    let params = params(args);
    // What can be judged here (ranges, multiples of 64, trigger words) is, so a typo does not
    // cost an upload; the server's own limits and its model folders are its to judge.
    let mut local = params.clone();
    local.remove("base_model");
    if let Err(e) = TrainingParams::from_json(
        &local,
        &ParamLimits {
            min_steps: 1,
            min_resolution: 64,
            ..ParamLimits::default()
        },
    ) {
        eprintln!("error: --{}: {}", e.field.replace('_', "-"), e.message);
        return EXIT_USAGE;
    }
    let api = match Api::new(&args.server, token) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };

    // 1. The local check: a bad dataset fails here, before anything is uploaded.
    if !args.dir.is_dir() {
        eprintln!(
            "error: {} is not a folder; name the folder that holds the training images",
            args.dir.display()
        );
        return EXIT_USAGE;
    }
    let (images, report) = match load_and_check(std::slice::from_ref(&args.dir), rules) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("error: {msg}");
            return EXIT_USAGE;
        }
    };
    if !report.accepted {
        print!("{}", render(&report));
        eprintln!(
            "error: the images in {} failed the dataset check; nothing was uploaded",
            args.dir.display()
        );
        return EXIT_REJECTED;
    }
    let warnings = report.warnings.len()
        + report
            .images
            .iter()
            .map(|i| i.warnings.len())
            .sum::<usize>();
    let total: usize = images.iter().map(|i| i.bytes.len()).sum();
    println!(
        "dataset check passed: {} images, {}{}",
        images.len(),
        loraforge_checks::problem::format_bytes(total as u64),
        if warnings > 0 {
            format!(" ({warnings} warnings; `loraforge check-dataset` lists them)")
        } else {
            String::new()
        }
    );

    // 2. The token and the monthly limit, before the upload (a server that refuses the token
    // closes the connection while a large upload is still being sent).
    match api
        .send(api.request(Method::GET, "/api/v1/me/limits"))
        .await
    {
        Ok(l) if l["remaining"].as_u64() == Some(0) => {
            eprintln!(
                "error: you have used your {} LoRAs for this month; the limit resets at {}. Nothing was uploaded",
                l["limit"],
                l["resets_at"]
                    .as_str()
                    .unwrap_or("the start of next month (UTC)")
            );
            return EXIT_REJECTED;
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_REJECTED;
        }
    }

    // 3. Upload.
    let captions = captions(&args.dir, &images);
    let spinner = spinner(&format!(
        "uploading {} images to {}",
        images.len(),
        api.base
    ));
    let mut form = reqwest::multipart::Form::new();
    for img in images {
        let mime = mime_of(&img.file_name);
        let part = reqwest::multipart::Part::bytes(img.bytes).file_name(img.file_name);
        form = form.part("images", part.mime_str(mime).expect("a valid mime type"));
    }
    for (file_name, text) in captions {
        let part = reqwest::multipart::Part::text(text).file_name(file_name);
        form = form.part(
            "images",
            part.mime_str("text/plain").expect("a valid mime type"),
        );
    }
    let uploaded = api
        .send(
            api.request(Method::POST, "/api/v1/datasets")
                .multipart(form)
                .timeout(Duration::from_secs(600)),
        )
        .await;
    spinner.finish_and_clear();
    let dataset = match uploaded {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: uploading the dataset: {e}");
            return EXIT_REJECTED;
        }
    };
    let Some(dataset_id) = dataset["dataset_id"].as_str().map(str::to_owned) else {
        eprintln!("error: the server's answer to the upload has no dataset_id: {dataset}");
        return EXIT_REJECTED;
    };
    println!("uploaded: dataset {dataset_id}");
    for w in dataset["warnings"].as_array().into_iter().flatten() {
        println!("  warning: {}", w.as_str().unwrap_or_default());
    }

    // 4. Create, retried with the same idempotency key.
    let mut body =
        json!({"name": name, "dataset_id": dataset_id, "params": Value::Object(params.clone())});
    if let Some(d) = &args.description {
        body["description"] = json!(d);
    }
    let key = uuid::Uuid::new_v4().to_string();
    let created = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = api
                .request(Method::POST, "/api/v1/lora-models")
                .header("Idempotency-Key", &key)
                .json(&body);
            match api.send(req).await {
                Err(e) if e.is_retryable() && attempt < 3 => {
                    eprintln!("creating the LoRA failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                }
                other => break other,
            }
        }
    };
    let created = match created {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: creating the LoRA: {e}");
            eprintln!("(the images were uploaded as dataset {dataset_id})");
            return EXIT_REJECTED;
        }
    };
    let Some(lora_id) = created["lora_id"].as_str().map(str::to_owned) else {
        eprintln!("error: the server's answer to the create has no lora_id: {created}");
        return EXIT_REJECTED;
    };
    println!("LoRA \"{name}\" created");
    println!("  id:      {lora_id}");
    println!("  status:  {}", created["status"].as_str().unwrap_or("?"));
    if !args.follow {
        println!("follow it:  {}", api.status_hint(&lora_id));
        return EXIT_ACCEPTED;
    }
    follow(&api, &lora_id).await
}

/// The `params` object from the flags (only what was given; the server's defaults fill the rest).
fn params(args: &TrainArgs) -> Map<String, Value> {
    let mut p = Map::new();
    if !args.triggers.is_empty() {
        p.insert("trigger_words".into(), json!(args.triggers));
    }
    if let Some(m) = &args.base_model {
        p.insert("base_model".into(), json!(m));
    }
    if let Some(s) = args.steps {
        p.insert("steps".into(), json!(s));
    }
    if let Some(r) = args.resolution {
        p.insert("resolution".into(), json!(r));
    }
    p
}

/// `.txt` files in `dir` named after an image (`photo1.jpg` → `photo1.txt`): (file name, text).
fn captions(dir: &Path, images: &[loraforge_checks::InputImage]) -> Vec<(String, String)> {
    let stems: Vec<&str> = images
        .iter()
        .map(|i| {
            Path::new(&i.file_name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
        })
        .collect();
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")))
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| stems.contains(&s))
        })
        .filter_map(|p| {
            Some((
                p.file_name()?.to_str()?.to_owned(),
                std::fs::read_to_string(&p).ok()?,
            ))
        })
        .collect();
    out.sort();
    out
}

fn mime_of(file_name: &str) -> &'static str {
    let ext = Path::new(file_name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    }
}

fn spinner(message: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let b = ProgressBar::with_draw_target(None, target).with_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.enable_steady_tick(Duration::from_millis(120));
    b.set_message(message.to_owned());
    b
}

/// Polls the status every second, drawing a progress bar, until a final status or Ctrl-C.
async fn follow(api: &Api, id: &str) -> i32 {
    // The training's step count (the server's default when --steps was not given), to show
    // about which step a percentage is.
    let steps = match api
        .send(api.request(Method::GET, &format!("/api/v1/lora-models/{id}")))
        .await
    {
        Ok(d) => d["params"]["steps"].as_u64(),
        Err(_) => None,
    };
    let tty = std::io::stderr().is_terminal();
    let target = if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(100), target).with_style(
        ProgressStyle::with_template("{spinner} {prefix:<11} [{bar:30}] {pos:>3}%  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut last_line = String::new();
    let mut failures = 0u32;
    let poll = async {
        loop {
            match api
                .send(api.request(Method::GET, &format!("/api/v1/lora-models/{id}/status")))
                .await
            {
                Ok(s) => {
                    failures = 0;
                    let status = s["training_status"].as_str().unwrap_or("?").to_owned();
                    let stage = s["stage"].as_str().unwrap_or(&status).to_owned();
                    let percent = s["progress"].as_u64().unwrap_or(0).min(100);
                    let eta = s["estimated_remaining"]
                        .as_u64()
                        .map(|e| format!("ETA {}", human_secs(e)))
                        .unwrap_or_default();
                    let step = steps
                        .filter(|_| status == "training")
                        .map(|n| format!("~step {}/{n}  ", n * percent / 100))
                        .unwrap_or_default();
                    bar.set_prefix(stage.clone());
                    bar.set_position(percent);
                    bar.set_message(format!("{step}{eta}"));
                    if !tty {
                        // Without a terminal: one line per change of status or stage, and per 10 %.
                        let line = format!("{status}: {stage} {}%", percent / 10 * 10);
                        if line != last_line {
                            let what = if stage == status {
                                status.clone()
                            } else {
                                format!("{status} ({stage})")
                            };
                            println!("{what}: {percent}% {step}{eta}");
                            last_line = line;
                        }
                    }
                    if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                        return Ok((status, s));
                    }
                }
                Err(e) if e.is_retryable() && failures + 1 < MAX_POLL_FAILURES => {
                    failures += 1;
                    bar.set_message(format!("(server not answering: {e}; retrying)"));
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    };
    let outcome = tokio::select! {
        r = poll => r,
        _ = tokio::signal::ctrl_c() => {
            bar.finish_and_clear();
            eprintln!("stopped following; the training goes on on the server.");
            eprintln!("check it with:  {}", api.status_hint(id));
            return EXIT_INTERRUPTED;
        }
    };
    bar.finish_and_clear();
    match outcome {
        Ok((status, _)) if status == "completed" => {
            match api
                .send(api.request(Method::GET, &format!("/api/v1/lora-models/{id}")))
                .await
            {
                Ok(d) => {
                    println!("completed: LoRA {id}");
                    if let Some(size) = d["file_size"].as_u64() {
                        println!(
                            "  size:     {}",
                            loraforge_checks::problem::format_bytes(size)
                        );
                    }
                    match d["download_url"].as_str() {
                        Some(url) => {
                            println!("  download: {url}");
                            if let Some(kohya) = d["kohya_download_url"].as_str() {
                                println!("  kohya:    {kohya}   (for ComfyUI, A1111, Forge)");
                            }
                            if let Some(exp) = d["download_url_expires_at"].as_str() {
                                println!(
                                    "  (the link expires at {exp}; GET /api/v1/lora-models/{id} gives a fresh one)"
                                );
                            }
                        }
                        None => {
                            println!("  (no download link yet; GET /api/v1/lora-models/{id} later)")
                        }
                    }
                    EXIT_ACCEPTED
                }
                Err(e) => {
                    eprintln!("the LoRA completed, but fetching its download link failed: {e}");
                    EXIT_REJECTED
                }
            }
        }
        Ok((status, s)) => {
            let reason = s["error"].as_str().unwrap_or("no reason given");
            eprintln!("{status}: LoRA {id}: {reason}");
            EXIT_REJECTED
        }
        Err(e) => {
            eprintln!("error: following LoRA {id}: {e}");
            eprintln!(
                "the training may still be going on; check it with:  {}",
                api.status_hint(id)
            );
            EXIT_REJECTED
        }
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A failed API call: the server's error, or no answer.
#[derive(Debug)]
enum ApiError {
    Server {
        status: StatusCode,
        code: String,
        message: String,
    },
    Transport {
        server: String,
        error: reqwest::Error,
    },
}

impl ApiError {
    fn is_retryable(&self) -> bool {
        match self {
            ApiError::Server { status, .. } => status.is_server_error(),
            ApiError::Transport { error, .. } => !error.is_builder(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Server {
                status,
                code,
                message,
            } => write!(f, "{message} ({code}, HTTP {})", status.as_u16()),
            ApiError::Transport { server, error } => {
                let mut msg = error.to_string();
                let mut src = std::error::Error::source(error);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                write!(
                    f,
                    "cannot reach the server at {server} ({msg}); is `loraforge serve` running there? (--server, LORAFORGE_SERVER)"
                )
            }
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &str, token: &str) -> Result<Self, String> {
        let base = server.trim().trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base).map_err(|e| {
            format!("--server {server:?} is not a URL ({e}); e.g. http://127.0.0.1:8080")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "--server {server:?} must be an http:// or https:// URL"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("loraforge-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base,
            token: token.to_owned(),
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends; a 2xx answer's JSON body, or the server's `error.message` and `code`.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let transport = |error| ApiError::Transport {
            server: self.base.clone(),
            error,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("http_error")
            .to_owned();
        let mut message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "the server answered {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                )
            });
        if status == StatusCode::UNAUTHORIZED {
            message.push_str("; check LORAFORGE_TOKEN (for a local server, get one with `loraforge token --user <uuid>`)");
        }
        // The per-image reasons of a refused dataset.
        for img in body["error"]["images"].as_array().into_iter().flatten() {
            for e in img["errors"].as_array().into_iter().flatten() {
                if let Some(m) = e["message"].as_str() {
                    message.push_str(&format!(
                        "\n  {}: {m}",
                        img["file_name"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        Err(ApiError::Server {
            status,
            code,
            message,
        })
    }

    fn status_hint(&self, id: &str) -> String {
        format!(
            "curl -H \"Authorization: Bearer $LORAFORGE_TOKEN\" {}/api/v1/lora-models/{id}/status",
            self.base
        )
    }
}

//! `spawn_app()`: a real server on a random loopback port with its own fresh database, real local
//! storage in a temp dir, and a manual clock the test moves.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use reqwest::multipart::{Form, Part};
use secrecy::SecretSlice;
use serde_json::{Value, json};
use url::Url;

use loraforge_db::Repository;
use loraforge_domain::{Clock, ManualClock, ParamLimits, UserId};
use loraforge_server::state::BackendInfo;
use loraforge_server::{AppState, Application, JwtKeys, ServerSettings};
use loraforge_storage::StorageSettings;

pub const SECRET: &[u8] = b"api-test-secret-api-test-secret!";

pub struct TestApp {
    /// The server's state, for what a test looks at inside it (the library index).
    pub state: AppState,
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub repo: Arc<dyn Repository>,
    pub jwt: JwtKeys,
    pub blob_root: std::path::PathBuf,
    pub store: Arc<dyn loraforge_storage::BlobStore>,
    pub settings: ServerSettings,
    /// The server's wake-up of "its job engine" (none runs here): tests see whether a request
    /// woke it.
    pub engine_wake: Arc<tokio::sync::Notify>,
    /// The database's URL, for a test's own connection to it.
    pub db_url: String,
    _dir: tempfile::TempDir,
    _pg: Option<loraforge_db::test_support::TestDatabase>,
}

pub fn start_time() -> DateTime<Utc> {
    "2026-11-15T12:00:00Z".parse().unwrap()
}

pub fn test_settings() -> ServerSettings {
    ServerSettings {
        param_limits: ParamLimits {
            min_steps: 1,
            min_resolution: 64,
            local_model_roots: vec!["/models".into()],
            ..ParamLimits::default()
        },
        // Off by default: many tests write through the repository directly, as another replica
        // would; the cache has tests of its own.
        library_cache_ttl: Duration::ZERO,
        // For the same reason the library index reads the change feed before every answer; so
        // every library test runs through it (it has lag tests of its own).
        library_index_lag: Some(Duration::ZERO),
        ..ServerSettings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Engine::Sqlite, |_| {}).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub async fn spawn_app_with(
    engine: Engine,
    configure: impl FnOnce(&mut ServerSettings),
) -> TestApp {
    spawn_app_with_state(engine, configure, |state| state).await
}

/// As [`spawn_app_with`], and `extend` adds to the server's state before it serves (metrics).
pub async fn spawn_app_with_state(
    engine: Engine,
    configure: impl FnOnce(&mut ServerSettings),
    extend: impl FnOnce(AppState) -> AppState,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (db_url, pg) = match engine {
        Engine::Sqlite => (
            format!("sqlite://{}", dir.path().join("test.db").display()),
            None,
        ),
        Engine::Postgres => {
            let db = loraforge_db::test_support::TestDatabase::create().await;
            (db.url().to_owned(), Some(db))
        }
    };
    let repo = loraforge_db::connect(&db_url, &Default::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let blob_root = dir.path().join("blobs");
    let store = loraforge_storage::open(&StorageSettings::Local {
        root: blob_root.clone(),
        public_base_url: Url::parse(&base).unwrap(),
        signing_key: Arc::new(SecretSlice::from(
            b"file-signing-key-for-tests-32byt".to_vec(),
        )),
    })
    .unwrap();
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut settings = test_settings();
    settings.worker.public_url = Some(Url::parse(&base).unwrap());
    configure(&mut settings);
    let engine_wake = Arc::new(tokio::sync::Notify::new());
    let secret = SecretSlice::from(SECRET.to_vec());
    let state = AppState::new(
        repo.clone(),
        store.clone(),
        clock.clone(),
        JwtKeys::new(&secret),
        settings.clone(),
    )
    .with_backends(
        vec![
            BackendInfo {
                name: "runpod".into(),
                max_runs: 4,
                shared: true,
            },
            BackendInfo {
                name: "local".into(),
                max_runs: 1,
                shared: false,
            },
        ],
        Default::default(),
    )
    .with_engine_wake(engine_wake.clone());
    let state = extend(state);
    let app = Application::new(state.clone(), listener);
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        state,
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        clock,
        repo,
        jwt: JwtKeys::new(&secret),
        blob_root,
        store,
        settings,
        engine_wake,
        db_url,
        _dir: dir,
        _pg: pg,
    }
}

/// A signed-in user of the test app.
#[derive(Clone)]
pub struct User {
    pub id: UserId,
    pub token: String,
}

impl TestApp {
    pub fn user(&self) -> User {
        self.user_with(
            Some(format!("{}@example.com", &UserId::new().to_string()[..8])),
            false,
        )
    }

    pub fn user_with(&self, email: Option<String>, admin: bool) -> User {
        let id = UserId::new();
        let token = self
            .jwt
            .issue(
                id,
                email,
                admin,
                Duration::from_secs(365 * 24 * 3600),
                self.clock.now(),
            )
            .unwrap();
        User { id, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, user: &User, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, user: &User, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&user.token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn upload(&self, user: &User, files: Vec<(String, Vec<u8>)>) -> reqwest::Response {
        let mut form = Form::new();
        for (name, bytes) in files {
            let part_name = "images";
            form = form.part(part_name, Part::bytes(bytes).file_name(name));
        }
        self.http
            .post(self.url("/api/v1/datasets"))
            .bearer_auth(&user.token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads three valid images and returns the dataset id.
    pub async fn dataset(&self, user: &User) -> String {
        let files = (0..3)
            .map(|i| (format!("photo{i}.png"), noise_png(512, 512, i)))
            .collect();
        let resp = self.upload(user, files).await;
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        resp.json::<Value>().await.unwrap()["dataset_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates a LoRA; returns the response.
    pub async fn create_lora(
        &self,
        user: &User,
        name: &str,
        dataset_id: &str,
    ) -> reqwest::Response {
        self.post_json(
            user,
            "/api/v1/lora-models",
            &json!({"name": name, "dataset_id": dataset_id}),
        )
        .await
    }

    pub async fn create_ok(&self, user: &User, name: &str, dataset_id: &str) -> String {
        let resp = self.create_lora(user, name, dataset_id).await;
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
        resp.json::<Value>().await.unwrap()["lora_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Takes a LoRA in `training` to `completed` the way the engine publishes one: validation
    /// begins with its model file (`file_size` bytes) recorded, then passes.
    pub async fn publish(&self, id: loraforge_domain::LoraId, file_size: u64, now: DateTime<Utc>) {
        use loraforge_db::{EventDetail, TrainedFiles};
        use loraforge_domain::{StatusEvent, TrainingStatus};
        let files = TrainedFiles {
            storage_key: format!("lora-models/u/{id}/model.safetensors"),
            file_size,
            sha256: None,
            validation_image_keys: vec![],
        };
        self.repo
            .apply_event(
                id,
                StatusEvent::BeginValidation,
                EventDetail {
                    outputs: Some(files),
                    ..EventDetail::default()
                },
                now,
            )
            .await
            .unwrap();
        let done = self
            .repo
            .apply_event(
                id,
                StatusEvent::Complete,
                EventDetail {
                    validation_passed: Some(true),
                    ..EventDetail::default()
                },
                now,
            )
            .await
            .unwrap();
        assert_eq!(done.status, TrainingStatus::Completed);
    }
}

/// A PNG of random pixels: incompressible, so it is large enough for the size window, and
/// distinct per seed (no near-duplicates).
pub fn noise_png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The `error` object of an error response, after checking its status.
pub async fn error_of(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    body["error"].clone()
}

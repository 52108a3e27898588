//! A small HTTP server on 127.0.0.1 that serves test images the way image hosts do, and fails
//! the way they fail: `/img/{name}` serves a file, `/flaky/{name}` answers 503 twice then
//! serves it, `/status/{code}/{name}` always answers `code`. Every path's hits are counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use loraforge_fetch::{FetchSettings, HostPattern};

#[derive(Clone, Default)]
struct Shared {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Shared {
    fn hit(&self, path: String) -> usize {
        let mut hits = self.hits.lock().unwrap();
        let n = hits.entry(path).or_default();
        *n += 1;
        *n
    }
    fn file(&self, name: &str) -> Response {
        match self.files.lock().unwrap().get(name) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

pub struct ImageServer {
    pub base: String,
    shared: Shared,
}

impl ImageServer {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route(
                "/img/{name}",
                get(
                    |State(s): State<Shared>, Path(name): Path<String>| async move {
                        s.hit(format!("/img/{name}"));
                        s.file(&name)
                    },
                ),
            )
            .route(
                "/flaky/{name}",
                get(
                    |State(s): State<Shared>, Path(name): Path<String>| async move {
                        if s.hit(format!("/flaky/{name}")) <= 2 {
                            return StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        s.file(&name)
                    },
                ),
            )
            .route(
                "/status/{code}/{name}",
                get(
                    |State(s): State<Shared>, Path((code, name)): Path<(u16, String)>| async move {
                        s.hit(format!("/status/{code}/{name}"));
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    },
                ),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, shared }
    }

    /// Serves `bytes` at `/img/{name}` (and `/flaky/{name}`); returns the `/img/` URL.
    pub fn add(&self, name: &str, bytes: Vec<u8>) -> String {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(name.to_owned(), bytes);
        format!("{}/img/{name}", self.base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.shared.hits.lock().unwrap().values().sum()
    }
}

/// URL intake that may reach this loopback server: 127.0.0.1 allowed, private addresses
/// allowed (the one setting tests need), millisecond backoff, a cache in `cache_dir` if given.
pub fn loopback_intake(cache_dir: Option<PathBuf>) -> FetchSettings {
    FetchSettings {
        allowed_hosts: vec![HostPattern::parse("127.0.0.1").unwrap()],
        allow_private_addresses: true,
        backoff_base: Duration::from_millis(1),
        timeout: Duration::from_secs(20),
        cache_dir,
        ..FetchSettings::default()
    }
}

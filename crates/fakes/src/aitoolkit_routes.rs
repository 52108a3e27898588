//! The fake ai-toolkit's HTTP routes, with the contract's quirks.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, ToolkitCall, ToolkitConfig, ToolkitJob};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/api/auth",
            get(|| async { Json(json!({"isAuthenticated": true})) }),
        )
        .route("/api/settings", get(settings))
        .route("/api/datasets/create", post(create_dataset))
        .route("/api/datasets/list", get(list_datasets))
        .route("/api/datasets/upload", post(upload))
        .route("/api/datasets/delete", post(delete_dataset))
        .route("/api/jobs", get(get_jobs).post(create_job))
        .route("/api/jobs/{id}/start", get(start_job))
        .route("/api/jobs/{id}/stop", get(stop_job))
        .route("/api/jobs/{id}/delete", get(delete_job))
        .route("/api/jobs/{id}/log", get(job_log))
        .route("/api/jobs/{id}/files", get(job_files))
        .route("/api/jobs/{id}/samples", get(job_samples))
        .route("/api/queue", get(queues))
        .route("/api/queue/{gpu_ids}/start", get(start_queue))
        .route("/api/queue/{gpu_ids}/stop", get(stop_queue))
        .route("/api/files/{*path}", get(file))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Records the call, answers injected statuses, and checks the token the way ai-toolkit's
/// middleware does.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let injected = {
        let mut st = shared.lock();
        match st.inject.as_mut() {
            Some((n, status)) if *n > 0 => {
                *n -= 1;
                Some(*status)
            }
            _ => None,
        }
    };
    // The call is on record before its handler runs, so a test that sees the handler's effect
    // (a dataset gone) also sees the call; its status is filled in once answered (0 until then).
    let index = {
        let mut st = shared.lock();
        st.calls.push(ToolkitCall {
            method,
            path: path.clone(),
            status: 0,
        });
        st.calls.len() - 1
    };
    let response = if let Some(status) = injected {
        error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected by the fake",
        )
    } else if !authorized(&shared.config, &path, request.headers()) {
        error(StatusCode::UNAUTHORIZED, "Unauthorized")
    } else {
        next.run(request).await
    };
    if let Some(call) = shared.lock().calls.get_mut(index) {
        call.status = response.status().as_u16();
    }
    response
}

fn authorized(config: &ToolkitConfig, path: &str, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = &config.auth else {
        return true;
    };
    if path.starts_with("/api/img/") || path.starts_with("/api/files/") {
        return true;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(' ').nth(1));
    given == Some(token.as_str())
}

async fn settings(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let c = &shared.config;
    Json(json!({
        "TRAINING_FOLDER": c.training_folder().display().to_string(),
        "DATASETS_FOLDER": c.datasets_folder().display().to_string(),
        "MODELS_PATH": c.root.join("models").display().to_string(),
        "HF_TOKEN": "",
    }))
}

/// `datasets/create`'s rule: lowercased, runs of `[^a-z0-9]` become `_`.
fn dataset_name(name: &str) -> String {
    let mut out = String::new();
    let mut run = false;
    for c in name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            run = false;
        } else if !run {
            out.push('_');
            run = true;
        }
    }
    out
}

/// The upload rule: `[^a-zA-Z0-9.-]` becomes `_`.
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) fn dataset_names(config: &ToolkitConfig) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config.datasets_folder())
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn create_dataset(State(shared): State<Arc<Shared>>, Json(body): Json<NameBody>) -> Response {
    let name = dataset_name(&body.name);
    if name.is_empty() || name.chars().all(|c| c == '_') {
        return error(StatusCode::BAD_REQUEST, "Invalid dataset name");
    }
    if let Err(e) = std::fs::create_dir_all(shared.config.datasets_folder().join(&name)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    Json(json!({"success": true, "name": name})).into_response()
}

async fn list_datasets(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(dataset_names(&shared.config)))
}

async fn upload(State(shared): State<Arc<Shared>>, mut multipart: Multipart) -> Response {
    let mut dataset: Option<String> = None;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let fname = field.file_name().map(str::to_owned);
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        match name.as_str() {
            "datasetName" => dataset = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "files" => files.push((
                file_name(fname.as_deref().unwrap_or("file")),
                bytes.to_vec(),
            )),
            _ => {}
        }
    }
    if files.is_empty() {
        return error(StatusCode::BAD_REQUEST, "No files provided");
    }
    let Some(dataset) = dataset else {
        return error(StatusCode::BAD_REQUEST, "Dataset name is required");
    };
    let dir = shared.config.datasets_folder().join(dataset_name(&dataset));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let mut names = Vec::new();
    for (name, bytes) in files {
        if let Err(e) = std::fs::write(dir.join(&name), bytes) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
        names.push(name);
    }
    Json(json!({"message": "Files uploaded successfully", "files": names})).into_response()
}

async fn delete_dataset(State(shared): State<Arc<Shared>>, Json(body): Json<NameBody>) -> Response {
    let name = dataset_name(&body.name);
    let dir = shared.config.datasets_folder().join(&name);
    if name.is_empty() || !dir.is_dir() {
        return error(StatusCode::NOT_FOUND, "Dataset not found");
    }
    let _ = std::fs::remove_dir_all(dir);
    Json(json!({"success": true})).into_response()
}

#[derive(Deserialize)]
struct CreateJob {
    #[serde(default)]
    id: Option<String>,
    name: String,
    gpu_ids: String,
    job_config: Value,
}

async fn create_job(State(shared): State<Arc<Shared>>, Json(body): Json<CreateJob>) -> Response {
    let mut st = shared.lock();
    let config = match &body.job_config {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let now = Utc::now();
    if let Some(id) = &body.id {
        let Some(job) = st.jobs.iter_mut().find(|j| &j.id == id) else {
            return error(StatusCode::NOT_FOUND, "Job not found");
        };
        job.name = body.name;
        job.gpu_ids = body.gpu_ids;
        job.job_config = config;
        job.updated_at = now;
        return Json(job.row()).into_response();
    }
    if st.jobs.iter().any(|j| j.name == body.name) {
        return error(StatusCode::CONFLICT, "Job name already exists");
    }
    let job = ToolkitJob {
        id: uuid::Uuid::new_v4().to_string(),
        name: body.name,
        gpu_ids: body.gpu_ids,
        job_config: config,
        status: "stopped".to_owned(),
        stop: false,
        step: 0,
        total_steps: None,
        info: String::new(),
        pid: None,
        created_at: now,
        updated_at: now,
    };
    let row = job.row();
    st.jobs.push(job);
    Json(row).into_response()
}

#[derive(Deserialize)]
struct JobsQuery {
    id: Option<String>,
}

async fn get_jobs(State(shared): State<Arc<Shared>>, Query(q): Query<JobsQuery>) -> Json<Value> {
    let st = shared.lock();
    match q.id {
        Some(id) => Json(
            st.jobs
                .iter()
                .find(|j| j.id == id)
                .map_or(Value::Null, ToolkitJob::row),
        ),
        None => Json(json!({"jobs": st.jobs.iter().map(ToolkitJob::row).collect::<Vec<_>>()})),
    }
}

/// Applies `change` to the job and answers the row as it was **before** (ai-toolkit's quirk).
fn update_job(shared: &Shared, id: &str, change: impl FnOnce(&mut ToolkitJob)) -> Response {
    let mut st = shared.lock();
    let Some(job) = st.jobs.iter_mut().find(|j| j.id == id) else {
        return error(StatusCode::NOT_FOUND, "Job not found");
    };
    let before = job.row();
    change(job);
    job.updated_at = Utc::now();
    Json(before).into_response()
}

async fn start_job(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    update_job(&shared, &id, |j| {
        j.status = "queued".to_owned();
        j.stop = false;
        j.info = String::new();
    })
}

async fn stop_job(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let response = update_job(&shared, &id, |j| {
        j.stop = true;
        j.status = "stopped".to_owned();
        j.info = "Job stopped".to_owned();
    });
    super::run::kill(&shared, &id);
    response
}

async fn delete_job(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    super::run::kill(&shared, &id);
    let mut st = shared.lock();
    let Some(at) = st.jobs.iter().position(|j| j.id == id) else {
        return error(StatusCode::NOT_FOUND, "Job not found");
    };
    let job = st.jobs.remove(at);
    let _ = std::fs::remove_dir_all(shared.config.training_folder().join(&job.name));
    Json(job.row()).into_response()
}

fn job_folder(shared: &Shared, id: &str) -> Option<PathBuf> {
    let st = shared.lock();
    let job = st.jobs.iter().find(|j| j.id == id)?;
    Some(shared.config.training_folder().join(&job.name))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// At most the last 5 MB on the first call; then from `offset`.
const LOG_TAIL: u64 = 5 * 1024 * 1024;

async fn job_log(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(folder) = job_folder(&shared, &id) else {
        return error(StatusCode::NOT_FOUND, "Job not found");
    };
    let bytes = std::fs::read(folder.join("log.txt")).unwrap_or_default();
    let size = bytes.len() as u64;
    let (from, reset) = if q.offset > size {
        (size.saturating_sub(LOG_TAIL), true)
    } else if q.offset == 0 {
        (size.saturating_sub(LOG_TAIL), false)
    } else {
        (q.offset, false)
    };
    let text = String::from_utf8_lossy(&bytes[from as usize..]).into_owned();
    Json(json!({"log": text, "offset": size, "reset": reset})).into_response()
}

fn listed(folder: &FsPath, keep: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(folder)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| keep(&e.file_name().to_string_lossy()))
                .filter_map(|e| Some((e.path().display().to_string(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn job_files(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(folder) = job_folder(&shared, &id) else {
        return error(StatusCode::NOT_FOUND, "Job not found");
    };
    let files = listed(&folder, |n| {
        n.ends_with(".safetensors") || n == "optimizer.pt"
    });
    let files: Vec<Value> = files
        .into_iter()
        .map(|(p, s)| json!({"path": p, "size": s}))
        .collect();
    Json(json!({ "files": files })).into_response()
}

async fn job_samples(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(folder) = job_folder(&shared, &id) else {
        return error(StatusCode::NOT_FOUND, "Job not found");
    };
    let samples = listed(&folder.join("samples"), |n| {
        n.ends_with(".png") || n.ends_with(".jpg")
    });
    Json(json!({"samples": samples.into_iter().map(|(p, _)| p).collect::<Vec<_>>()}))
        .into_response()
}

fn queue_row(gpu_ids: &str, running: bool) -> Value {
    json!({"id": 1, "gpu_ids": gpu_ids, "is_running": running})
}

async fn queues(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let st = shared.lock();
    Json(json!({"queues": st.queues.iter().map(|(g, r)| queue_row(g, *r)).collect::<Vec<_>>()}))
}

async fn start_queue(
    State(shared): State<Arc<Shared>>,
    Path(gpu_ids): Path<String>,
) -> Json<Value> {
    shared.lock().queues.insert(gpu_ids.clone(), true);
    Json(queue_row(&gpu_ids, true))
}

async fn stop_queue(State(shared): State<Arc<Shared>>, Path(gpu_ids): Path<String>) -> Json<Value> {
    shared.lock().queues.insert(gpu_ids.clone(), false);
    Json(queue_row(&gpu_ids, false))
}

/// `/api/files/{urlencoded abs path}`: only under the datasets or training roots.
async fn file(State(shared): State<Arc<Shared>>, Path(path): Path<String>) -> Response {
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let Ok(real) = std::fs::canonicalize(&path) else {
        return error(StatusCode::NOT_FOUND, "File not found");
    };
    let roots = [
        shared.config.datasets_folder(),
        shared.config.training_folder(),
    ];
    let allowed = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| real.starts_with(r));
    if !allowed {
        return error(StatusCode::FORBIDDEN, "Forbidden");
    }
    match tokio::fs::read(&real).await {
        Ok(bytes) => {
            let name = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(_) => error(StatusCode::NOT_FOUND, "File not found"),
    }
}

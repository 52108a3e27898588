//! The fake Docker Engine's HTTP side: one handler that strips the optional `/v1.NN` prefix and
//! dispatches by method and path (image names hold slashes, so axum's path router does not fit),
//! answering errors in Docker's `{"message": …}` shape with Docker's statuses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use crate::docker::{
    ContainerRecord, ContainerSnapshot, ContainerStatus, DeviceRequestSeen, DockerCall,
    DockerShared, DockerState, container_id, normalize_reference, start_process,
};
use crate::process;

/// The API version this fake says it speaks (bollard 0.21.1's `API_DEFAULT_VERSION`).
pub const FAKE_API_VERSION: &str = "1.53";

pub(crate) fn router(shared: Arc<DockerShared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": message.into() }))).into_response()
}

fn no_such_container(key: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("No such container: {key}"))
}

/// `/v1.53/containers/json` → `/containers/json`; paths without a version are kept.
fn strip_version(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = version.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if is_version { &rest[end..] } else { path }
}

fn query_map(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Docker reads query booleans as `1`/`true` (any case); bollard sends `true`/`false`.
pub(crate) fn query_bool(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

async fn handle(State(shared): State<Arc<DockerShared>>, request: Request) -> Response {
    let method = request.method().clone();
    let raw = request.uri().path();
    let path = strip_version(raw).to_owned();
    let version = (path.len() < raw.len()).then(|| raw[2..raw.len() - path.len()].to_owned());
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = match axum::body::to_bytes(request.into_body(), 4 << 20).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "request body too large"),
    };
    let injected = {
        let mut st = shared.lock();
        let status = match st.inject.as_mut() {
            Some((n, status)) if *n > 0 => {
                *n -= 1;
                Some(*status)
            }
            _ => None,
        };
        status.or_else(|| {
            (shared.config.fail_rate > 0.0 && st.draw() < shared.config.fail_rate).then_some(500)
        })
    };
    // On record before it is answered (status 0 until then): a test that sees the call's effect
    // also sees the call.
    let index = {
        let mut st = shared.lock();
        st.calls.push(DockerCall {
            method: method.to_string(),
            version,
            path: path.clone(),
            query: query.clone(),
            status: 0,
        });
        st.calls.len() - 1
    };
    let response = match injected {
        Some(status) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "fake Docker: injected failure",
        ),
        None => dispatch(&shared, &method, &path, &query_map(&query), &body).await,
    };
    if let Some(call) = shared.lock().calls.get_mut(index) {
        call.status = response.status().as_u16();
    }
    response
}

async fn dispatch(
    shared: &Arc<DockerShared>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) => (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (
                    header::HeaderName::from_static("api-version"),
                    FAKE_API_VERSION,
                ),
            ],
            "OK",
        )
            .into_response(),
        ("GET", ["version"]) => axum::Json(json!({
            "Version": "29.0.0-fake", "ApiVersion": FAKE_API_VERSION, "MinAPIVersion": "1.24",
            "Os": "linux", "Arch": "amd64", "KernelVersion": "fake",
        }))
        .into_response(),
        ("POST", ["images", "create"]) => pull(shared, q).await,
        ("GET", ["images", rest @ .., "json"]) if !rest.is_empty() => {
            inspect_image(shared, &rest.join("/"))
        }
        ("POST", ["containers", "create"]) => create(shared, q, body),
        ("GET", ["containers", "json"]) => crate::docker_list::list(shared, q),
        ("GET", ["containers", id, "json"]) => inspect(shared, id),
        ("POST", ["containers", id, "start"]) => start(shared, id),
        ("POST", ["containers", id, "stop"]) => stop(shared, id, q).await,
        ("POST", ["containers", id, "kill"]) => kill(shared, id, q),
        ("POST", ["containers", id, "wait"]) => wait(shared, id).await,
        ("DELETE", ["containers", id]) => remove(shared, id, q),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("page not found: {method} {path} is not served by this fake"),
        ),
    }
}

async fn pull(shared: &DockerShared, q: &HashMap<String, String>) -> Response {
    tokio::time::sleep(shared.config.pull_delay).await;
    let Some(from) = q.get("fromImage").filter(|f| !f.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "fromImage is required");
    };
    let reference = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{from}:{tag}"),
        None => normalize_reference(from),
    };
    if let Some(message) = &shared.config.pull_error {
        return error(StatusCode::NOT_FOUND, message.clone());
    }
    let Some(image) = shared.config.registry.get(&reference).cloned() else {
        let repo = reference
            .rsplit_once(':')
            .map_or(reference.as_str(), |(r, _)| r);
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "pull access denied for {repo}, repository does not exist or may require 'docker login': denied: requested access to the resource is denied"
            ),
        );
    };
    shared.lock().images.insert(reference.clone(), image);
    // Docker streams JSON progress objects; a pull that succeeded ends with its status line.
    let lines = format!(
        "{}\n{}\n",
        json!({"status": format!("Pulling from {reference}")}),
        json!({"status": format!("Status: Downloaded newer image for {reference}")}),
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(lines),
    )
        .into_response()
}

pub(crate) fn image_id(reference: &str) -> String {
    format!("sha256:{}", blake_ish(reference))
}

/// A stable 64-hex-digit id for a name (not a real digest; the fake only needs it stable).
fn blake_ish(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    (0u8..4)
        .map(|i| {
            let mut h = std::hash::DefaultHasher::new();
            (text, i).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

fn inspect_image(shared: &DockerShared, name: &str) -> Response {
    let reference = normalize_reference(name);
    if shared.lock().images.contains_key(&reference) {
        axum::Json(json!({"Id": image_id(&reference), "RepoTags": [reference], "Os": "linux", "Architecture": "amd64"}))
            .into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("No such image: {reference}"))
    }
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() >= 2
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn device_requests(host: &Value) -> Vec<DeviceRequestSeen> {
    host.get("DeviceRequests")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .map(|r| DeviceRequestSeen {
                    driver: r
                        .get("Driver")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .filter(|d| !d.is_empty()),
                    count: r.get("Count").and_then(Value::as_i64),
                    device_ids: strings(r.get("DeviceIDs")),
                    capabilities: r
                        .get("Capabilities")
                        .and_then(Value::as_array)
                        .map(|ors| ors.iter().map(|and| strings(Some(and))).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn create(shared: &Arc<DockerShared>, q: &HashMap<String, String>, body: &[u8]) -> Response {
    let Ok(config) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    let Some(image_ref) = config
        .get("Image")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "config cannot be empty in order to create a container",
        );
    };
    let reference = normalize_reference(image_ref);
    let name = q.get("name").cloned().unwrap_or_default();
    let mut st = shared.lock();
    let Some(image) = st.images.get(&reference).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("No such image: {reference}"));
    };
    let id = container_id();
    let name = if name.is_empty() {
        format!("fake_{}", &id[..12])
    } else {
        name
    };
    if !valid_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
        );
    }
    if let Some(other) = st
        .find(&name)
        .filter(|other| st.containers[other].snapshot.name == name)
    {
        return error(
            StatusCode::CONFLICT,
            format!(
                "Conflict. The container name \"/{name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
            ),
        );
    }
    let env = strings(config.get("Env"))
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv, String::new()),
        })
        .collect();
    let labels = config
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let host = config.get("HostConfig").cloned().unwrap_or(Value::Null);
    st.next_seq += 1;
    let seq = st.next_seq;
    let snapshot = ContainerSnapshot {
        id: id.clone(),
        name,
        image: reference,
        cmd: strings(config.get("Cmd")),
        env,
        labels,
        device_requests: device_requests(&host),
        memory: host
            .get("Memory")
            .and_then(Value::as_i64)
            .filter(|m| *m > 0),
        nano_cpus: host
            .get("NanoCpus")
            .and_then(Value::as_i64)
            .filter(|n| *n > 0),
        network_mode: host
            .get("NetworkMode")
            .and_then(Value::as_str)
            .map(str::to_owned),
        status: ContainerStatus::Created,
        exit_code: None,
        oom_killed: false,
        removed: false,
        created_at: Utc::now(),
        pid: None,
        log_path: shared.logs_dir.join(format!("{id}.log")),
    };
    let (exited, _) = tokio::sync::watch::channel(false);
    st.containers.insert(
        id.clone(),
        ContainerRecord {
            snapshot,
            seq,
            image,
            process: None,
            started_at: None,
            finished_at: None,
            exited,
        },
    );
    let lost = if st.lose_creates > 0 {
        st.lose_creates -= 1;
        true
    } else {
        shared.config.lose_rate > 0.0 && st.draw() < shared.config.lose_rate
    };
    if lost {
        st.lost_answers += 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "fake Docker: the answer was lost",
        );
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"Id": id, "Warnings": []})),
    )
        .into_response()
}

/// GPUs the container's device requests need, or Docker's error when the host cannot give them.
fn check_gpus(gpus: u32, requests: &[DeviceRequestSeen]) -> Result<(), String> {
    for r in requests {
        let caps = if r.capabilities.is_empty() {
            "[]".to_owned()
        } else {
            format!("{:?}", r.capabilities).replace('"', "")
        };
        let no_driver = || {
            format!(
                "could not select device driver \"{}\" with capabilities: {caps}",
                r.driver.as_deref().unwrap_or("")
            )
        };
        if gpus == 0 {
            return Err(no_driver());
        }
        for id in &r.device_ids {
            if !id.parse::<u32>().is_ok_and(|i| i < gpus) {
                return Err(format!(
                    "failed to create task for container: failed to create shim task: OCI runtime create failed: nvidia-container-cli: device error: {id}: unknown device"
                ));
            }
        }
        if let Some(n) = r.count.filter(|n| *n > i64::from(gpus)) {
            return Err(format!(
                "failed to create task for container: failed to create shim task: OCI runtime create failed: nvidia-container-cli: requested {n} GPUs, {gpus} available: no such device"
            ));
        }
    }
    Ok(())
}

fn start(shared: &Arc<DockerShared>, key: &str) -> Response {
    let mut st = shared.lock();
    let Some(id) = st.find(key) else {
        return no_such_container(key);
    };
    let c = &st.containers[&id];
    if c.snapshot.status == ContainerStatus::Running {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    if let Err(message) = check_gpus(shared.config.gpus, &c.snapshot.device_requests) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, message);
    }
    match start_process(shared, &mut st, &id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

fn inspect(shared: &DockerShared, key: &str) -> Response {
    let st = shared.lock();
    let Some(id) = st.find(key) else {
        return no_such_container(key);
    };
    let c = &st.containers[&id];
    let s = &c.snapshot;
    let zero = "0001-01-01T00:00:00Z".to_owned();
    let time = |t: Option<chrono::DateTime<Utc>>| t.map_or(zero.clone(), |t| t.to_rfc3339());
    let env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let requests: Vec<Value> = s
        .device_requests
        .iter()
        .map(|r| json!({"Driver": r.driver.clone().unwrap_or_default(), "Count": r.count.unwrap_or(0), "DeviceIDs": r.device_ids, "Capabilities": r.capabilities}))
        .collect();
    axum::Json(json!({
        "Id": s.id, "Created": s.created_at.to_rfc3339(), "Name": format!("/{}", s.name),
        "Path": s.cmd.first(), "Args": s.cmd.get(1..).unwrap_or_default(), "Image": image_id(&s.image),
        "State": {
            "Status": s.status.as_wire(), "Running": s.status == ContainerStatus::Running,
            "Paused": false, "Restarting": false, "OOMKilled": s.oom_killed, "Dead": false,
            "Pid": s.pid.unwrap_or(0), "ExitCode": s.exit_code.unwrap_or(0), "Error": "",
            "StartedAt": time(c.started_at), "FinishedAt": time(c.finished_at),
        },
        "Config": {"Image": s.image, "Env": env, "Cmd": s.cmd, "Labels": s.labels},
        "HostConfig": {
            "Memory": s.memory.unwrap_or(0), "NanoCpus": s.nano_cpus.unwrap_or(0),
            "NetworkMode": s.network_mode.as_deref().unwrap_or("bridge"), "DeviceRequests": requests,
        },
    }))
    .into_response()
}

/// The container's process, and a receiver that turns true when it has exited.
fn running(
    st: &DockerState,
    id: &str,
) -> Option<(Option<i32>, tokio::sync::watch::Receiver<bool>)> {
    let c = st.containers.get(id)?;
    (c.snapshot.status == ContainerStatus::Running)
        .then(|| (c.process.map(|(_, pid)| pid), c.exited.subscribe()))
}

/// A container of an image with no process has nothing to wait for: it exits at once.
fn exit_idle(st: &mut DockerState, id: &str, code: i32) {
    if let Some(c) = st.containers.get_mut(id).filter(|c| c.process.is_none()) {
        c.snapshot.status = ContainerStatus::Exited;
        c.snapshot.exit_code = Some(code);
        c.finished_at = Some(Utc::now());
        c.exited.send_replace(true);
    }
}

async fn stop(shared: &Arc<DockerShared>, key: &str, q: &HashMap<String, String>) -> Response {
    let grace = Duration::from_secs(q.get("t").and_then(|t| t.parse::<u64>().ok()).unwrap_or(10));
    let (pid, mut exited) = {
        let mut st = shared.lock();
        let Some(id) = st.find(key) else {
            return no_such_container(key);
        };
        let Some((pid, exited)) = running(&st, &id) else {
            return StatusCode::NOT_MODIFIED.into_response();
        };
        match pid {
            Some(pid) => process::signal_group(pid, libc::SIGTERM),
            None => exit_idle(&mut st, &id, 143),
        }
        (pid, exited)
    };
    if tokio::time::timeout(grace, exited.wait_for(|e| *e))
        .await
        .is_err()
    {
        if let Some(pid) = pid {
            process::signal_group(pid, libc::SIGKILL);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e)).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

fn signal_number(name: Option<&String>) -> Option<i32> {
    let name = name.map_or("SIGKILL", String::as_str);
    if let Ok(n) = name.parse::<i32>() {
        return Some(n);
    }
    match name.trim_start_matches("SIG") {
        "KILL" => Some(libc::SIGKILL),
        "TERM" => Some(libc::SIGTERM),
        "INT" => Some(libc::SIGINT),
        "HUP" => Some(libc::SIGHUP),
        _ => None,
    }
}

fn kill(shared: &DockerShared, key: &str, q: &HashMap<String, String>) -> Response {
    let Some(signal) = signal_number(q.get("signal")) else {
        return error(StatusCode::BAD_REQUEST, "invalid signal");
    };
    let mut st = shared.lock();
    let Some(id) = st.find(key) else {
        return no_such_container(key);
    };
    match running(&st, &id) {
        None => error(
            StatusCode::CONFLICT,
            format!("Cannot kill container: {key}: container {id} is not running"),
        ),
        Some((Some(pid), _)) => {
            process::signal_group(pid, signal);
            StatusCode::NO_CONTENT.into_response()
        }
        Some((None, _)) => {
            exit_idle(&mut st, &id, 128 + signal);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn wait(shared: &DockerShared, key: &str) -> Response {
    let exited = {
        let st = shared.lock();
        let Some(id) = st.find(key) else {
            return no_such_container(key);
        };
        running(&st, &id).map(|(_, rx)| (id, rx))
    };
    let id = match exited {
        Some((id, mut rx)) => {
            let _ = rx.wait_for(|e| *e).await;
            id
        }
        None => shared.lock().find(key).unwrap_or_default(),
    };
    let code = shared
        .lock()
        .containers
        .get(&id)
        .and_then(|c| c.snapshot.exit_code)
        .unwrap_or(0);
    axum::Json(json!({"StatusCode": code, "Error": null})).into_response()
}

fn remove(shared: &DockerShared, key: &str, q: &HashMap<String, String>) -> Response {
    let mut st = shared.lock();
    let Some(id) = st.find(key) else {
        return no_such_container(key);
    };
    let c = st.containers.get_mut(&id).expect("found above");
    if c.snapshot.status == ContainerStatus::Running {
        if !query_bool(q, "force") {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    c.snapshot.name
                ),
            );
        }
        if let Some((_, pid)) = c.process {
            process::signal_group(pid, libc::SIGKILL);
        }
    }
    c.snapshot.removed = true;
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stripped_only_when_they_are_versions() {
        assert_eq!(strip_version("/v1.53/containers/json"), "/containers/json");
        assert_eq!(strip_version("/containers/json"), "/containers/json");
        assert_eq!(strip_version("/v1.x/containers"), "/v1.x/containers");
        assert_eq!(strip_version("/volumes"), "/volumes");
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("loraforge-0192-1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a"));
    }

    #[test]
    fn gpus_are_checked_against_the_host() {
        let all = DeviceRequestSeen {
            driver: Some("nvidia".into()),
            count: Some(-1),
            capabilities: vec![vec!["gpu".into()]],
            ..Default::default()
        };
        assert!(
            check_gpus(0, std::slice::from_ref(&all))
                .unwrap_err()
                .contains("could not select device driver \"nvidia\" with capabilities: [[gpu]]")
        );
        assert!(check_gpus(1, std::slice::from_ref(&all)).is_ok());
        let two = DeviceRequestSeen {
            count: Some(2),
            ..all.clone()
        };
        assert!(
            check_gpus(1, &[two])
                .unwrap_err()
                .contains("no such device")
        );
        let ids = DeviceRequestSeen {
            count: None,
            device_ids: vec!["1".into()],
            ..all
        };
        assert!(check_gpus(1, std::slice::from_ref(&ids)).is_err());
        assert!(check_gpus(2, &[ids]).is_ok());
    }
}

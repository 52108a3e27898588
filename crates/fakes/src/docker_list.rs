//! The fake Docker Engine's container listing: `GET /containers/json` with `all` and Docker's
//! `filters` (label, name, status, id), newest first, in the summary shape Docker answers.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use crate::docker::{ContainerRecord, ContainerSnapshot, ContainerStatus, DockerShared};
use crate::docker_server::{error, image_id, query_bool};

fn summary_status(c: &ContainerRecord) -> String {
    let ago = |t: Option<chrono::DateTime<Utc>>| {
        let secs = t.map_or(0, |t| (Utc::now() - t).num_seconds().max(0));
        format!("{secs} seconds")
    };
    match c.snapshot.status {
        ContainerStatus::Created => "Created".to_owned(),
        ContainerStatus::Running => format!("Up {}", ago(c.started_at)),
        ContainerStatus::Exited => format!(
            "Exited ({}) {} ago",
            c.snapshot.exit_code.unwrap_or(0),
            ago(c.finished_at)
        ),
    }
}

/// `filters` as Docker takes it: `{"label": ["k=v", "k"]}` (or the older `{"label": {"k=v": true}}`).
fn parse_filters(text: Option<&String>) -> Result<HashMap<String, Vec<String>>, String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(HashMap::new());
    };
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid filter: {e}"))?;
    let object = value.as_object().ok_or("invalid filter: not an object")?;
    let mut out = HashMap::new();
    for (key, values) in object {
        let list = match values {
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Value::Object(m) => m.keys().cloned().collect(),
            _ => return Err(format!("invalid filter: {key}")),
        };
        out.insert(key.clone(), list);
    }
    Ok(out)
}

fn matches_filters(
    c: &ContainerSnapshot,
    filters: &HashMap<String, Vec<String>>,
) -> Result<bool, String> {
    for (key, values) in filters {
        let ok = match key.as_str() {
            "label" => values.iter().all(|want| match want.split_once('=') {
                Some((k, v)) => c.labels.get(k).is_some_and(|have| have == v),
                None => c.labels.contains_key(want),
            }),
            "name" => values
                .iter()
                .any(|n| c.name.contains(n.trim_start_matches('/'))),
            "status" => values.iter().any(|s| s == c.status.as_wire()),
            "id" => values.iter().any(|i| c.id.starts_with(i.as_str())),
            other => return Err(format!("invalid filter '{other}'")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn list(shared: &DockerShared, q: &HashMap<String, String>) -> Response {
    let filters = match parse_filters(q.get("filters")) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let all = query_bool(q, "all");
    let st = shared.lock();
    let mut found = Vec::new();
    for c in st.containers.values().filter(|c| !c.snapshot.removed) {
        if !all && c.snapshot.status != ContainerStatus::Running {
            continue;
        }
        match matches_filters(&c.snapshot, &filters) {
            Ok(true) => found.push(c),
            Ok(false) => {}
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        }
    }
    // Docker lists the newest first.
    found.sort_by_key(|c| std::cmp::Reverse(c.seq));
    let body: Vec<Value> = found
        .into_iter()
        .map(|c| {
            let s = &c.snapshot;
            json!({
                "Id": s.id, "Names": [format!("/{}", s.name)], "Image": s.image, "ImageID": image_id(&s.image),
                "Command": s.cmd.join(" "), "Created": s.created_at.timestamp(), "Labels": s.labels,
                "State": s.status.as_wire(), "Status": summary_status(c),
                "HostConfig": {"NetworkMode": s.network_mode.as_deref().unwrap_or("bridge")},
            })
        })
        .collect();
    axum::Json(Value::Array(body)).into_response()
}

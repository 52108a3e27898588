//! What happens to one training on the fake Replicate: `starting` for `start_delay`, then the
//! dataset is downloaded, the spec written and the command run (`processing`, its stdout
//! streamed into `logs`), then `succeeded` with the tar at `output.weights`, or `failed`. And the
//! webhooks: signed per Standard Webhooks (api-contracts.md §3), sent per the training's
//! `webhook_events_filter` (all events when none), `logs` at most every 500 ms, only the
//! terminal one retried; duplicates and replays when configured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::process;
use crate::replicate::{Delivery, FakeTrainingStatus, Shared};

/// `logs` beyond this keep only their newest part.
const MAX_LOGS: usize = 4 << 20;
/// Replicate sends `logs` (and `output`) webhooks at most this often.
const LOGS_EVERY: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>, id: String) {
    tokio::time::sleep(shared.config.start_delay).await;
    let input = {
        let st = shared.lock();
        match st.trainings.get(&id) {
            Some(t) if t.status == FakeTrainingStatus::Starting && !st.shutting_down => {
                t.input.clone()
            }
            _ => return,
        }
    };
    let dir = shared.work_dir.join(&id);
    match prepare(&shared, &dir, &input).await {
        Ok(files) => execute(&shared, &id, &dir, files).await,
        Err(error) => {
            fail(&shared, &id, &error);
        }
    }
}

struct Files {
    dataset_url: String,
    dataset: PathBuf,
    spec: PathBuf,
    output: PathBuf,
}

/// Downloads the dataset (bounded) and writes the spec, as a Cog model's inputs arrive.
async fn prepare(shared: &Shared, dir: &Path, input: &Value) -> Result<Files, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("could not make the training's folder: {e}"))?;
    let dataset_url = input
        .get("dataset_url")
        .and_then(Value::as_str)
        .ok_or("input.dataset_url is required (a string)")?
        .to_owned();
    let spec = match input.get("spec") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => return Err("input.spec is required (JSON text)".to_owned()),
    };
    let files = Files {
        dataset: dir.join("dataset.zip"),
        spec: dir.join("spec.json"),
        output: dir.join("weights.tar"),
        dataset_url,
    };
    tokio::fs::write(&files.spec, spec)
        .await
        .map_err(|e| format!("could not write the spec: {e}"))?;
    download(shared, &files.dataset_url, &files.dataset).await?;
    Ok(files)
}

async fn download(shared: &Shared, url: &str, to: &Path) -> Result<(), String> {
    let mut response = shared
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("could not download dataset_url: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!(
            "could not download dataset_url: HTTP {}",
            response.status().as_u16()
        ));
    }
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| format!("could not save the dataset: {e}"))?;
    let mut total = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("could not download dataset_url: {}", e.without_url()))?
    {
        total += chunk.len() as u64;
        if total > shared.config.max_dataset_bytes {
            return Err("the dataset is larger than the fake allows".to_owned());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("could not save the dataset: {e}"))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("could not save the dataset: {e}"))
}

fn fill(template: &str, files: &Files, dir: &Path) -> String {
    template
        .replace("{dataset_url}", &files.dataset_url)
        .replace("{dataset}", &files.dataset.to_string_lossy())
        .replace("{spec}", &files.spec.to_string_lossy())
        .replace("{output}", &files.output.to_string_lossy())
        .replace("{work}", &dir.to_string_lossy())
}

async fn execute(shared: &Arc<Shared>, id: &str, dir: &Path, files: Files) {
    let spec = &shared.config.command;
    let stderr = match std::fs::File::create(dir.join("stderr.log")) {
        Ok(f) => f,
        Err(e) => return fail(shared, id, &format!("could not open the log: {e}")),
    };
    let mut command = Command::new(&spec.program);
    command
        .args(spec.args.iter().map(|a| fill(a, &files, dir)))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd.as_deref().unwrap_or(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0);
    // Spawned and registered under the lock, so a cancel or a drop sees the pid.
    let mut child = {
        let mut st = shared.lock();
        let Some(t) = st.trainings.get_mut(id) else {
            return;
        };
        if t.status != FakeTrainingStatus::Starting {
            return;
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                drop(st);
                return fail(
                    shared,
                    id,
                    &format!("the training command could not start: {e}"),
                );
            }
        };
        let pid = child.id().map_or(0, |p| p as i32);
        t.status = FakeTrainingStatus::Processing;
        t.started_at = Some(chrono::Utc::now());
        t.started = Some(Instant::now());
        t.pid = Some(pid);
        child
    };
    send_hook(shared, id, "start");
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        let mut last_hook = Instant::now();
        while let Ok(Some(line)) = lines.next_line().await {
            {
                let mut st = shared.lock();
                if let Some(t) = st.trainings.get_mut(id) {
                    t.logs.push_str(&line);
                    t.logs.push('\n');
                    if t.logs.len() > MAX_LOGS {
                        let mut cut = t.logs.len() - MAX_LOGS;
                        while !t.logs.is_char_boundary(cut) {
                            cut += 1;
                        }
                        t.logs.drain(..cut);
                    }
                }
            }
            if last_hook.elapsed() >= LOGS_EVERY {
                last_hook = Instant::now();
                send_hook(shared, id, "logs");
            }
        }
    }
    let status = child.wait().await;
    let exit = status.as_ref().map(process::exit_code).ok();
    let ended_now = {
        let mut st = shared.lock();
        let Some(t) = st.trainings.get_mut(id) else {
            return;
        };
        t.pid = None;
        if t.status.is_terminal() {
            false
        } else if exit == Some(0) && files.output.is_file() {
            t.weights = Some(files.output.clone());
            t.output = Some(serde_json::json!({
                "version": format!("{}:{}", t.destination, id),
                "weights": format!("{}/files/{id}/weights.tar", shared.base),
            }));
            t.finish(FakeTrainingStatus::Succeeded);
            true
        } else {
            let why = match exit {
                Some(0) => "the training produced no weights".to_owned(),
                Some(code) => format!("Training failed: the command exited with status {code}"),
                None => "Training failed: the command could not be waited for".to_owned(),
            };
            t.error = Some(why);
            t.finish(FakeTrainingStatus::Failed);
            true
        }
    };
    if ended_now {
        completed_hook(shared, id);
    }
}

fn fail(shared: &Arc<Shared>, id: &str, error: &str) {
    {
        let mut st = shared.lock();
        let Some(t) = st.trainings.get_mut(id) else {
            return;
        };
        if t.status.is_terminal() {
            return;
        }
        t.error = Some(error.to_owned());
        t.finish(FakeTrainingStatus::Failed);
    }
    completed_hook(shared, id);
}

/// The terminal webhook (retried), then the configured replay.
pub(crate) fn completed_hook(shared: &Arc<Shared>, id: &str) {
    send_hook(shared, id, "completed");
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` with the key the base64 after
/// `whsec_`.
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let tag = mac.finalize().into_bytes();
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    ))
}

/// Sends `event` for training `id` if it has a webhook that wants it (in the background).
fn send_hook(shared: &Arc<Shared>, id: &str, event: &str) {
    let (url, body) = {
        let st = shared.lock();
        let Some(t) = st.trainings.get(id) else {
            return;
        };
        let Some(url) = t.webhook.clone() else {
            return;
        };
        let wanted = t
            .webhook_events_filter
            .as_ref()
            .is_none_or(|f| f.is_empty() || f.iter().any(|e| e == event));
        if !wanted {
            return;
        }
        (url, t.to_json(&shared.base).to_string())
    };
    let timestamp = chrono::Utc::now().timestamp();
    let msg = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let Some(signature) = sign_webhook(&shared.config.webhook_secret, &msg, timestamp, &body)
    else {
        tracing::warn!("the fake's webhook secret is not whsec_<base64>; no webhook sent");
        return;
    };
    let delivery = Delivery {
        training: id.to_owned(),
        event: event.to_owned(),
        id: msg,
        timestamp,
        signature,
        body,
        answered: None,
    };
    let shared = Arc::clone(shared);
    let terminal = event == "completed";
    tokio::spawn(async move {
        let tries = if terminal { 4 } else { 1 };
        for copy in 0..=shared.config.duplicate_webhooks {
            deliver(&shared, &url, &delivery, if copy == 0 { tries } else { 1 }).await;
        }
        if terminal && shared.config.replay_webhooks {
            let first = shared
                .lock()
                .deliveries
                .iter()
                .find(|d| d.training == delivery.training && d.event != "completed")
                .cloned();
            if let Some(first) = first {
                deliver(&shared, &url, &first, 1).await;
            }
        }
    });
}

async fn deliver(shared: &Shared, url: &str, delivery: &Delivery, tries: u32) {
    for attempt in 0..tries {
        let answered = shared
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", delivery.timestamp.to_string())
            .header("webhook-signature", &delivery.signature)
            .body(delivery.body.clone())
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        shared.lock().deliveries.push(Delivery {
            answered,
            ..delivery.clone()
        });
        if answered.is_some_and(|s| (200..300).contains(&s)) {
            return;
        }
        if attempt + 1 < tries {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sign_webhook;

    #[test]
    fn signs_the_documented_test_vector() {
        let signature = sign_webhook(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_2bGm7Ky9ZWxqXjR4",
            1_700_000_000,
            r#"{"id":"zz4ibbonubfz7carwiefibzgga","status":"succeeded"}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,zXQj/fN7fKtFI8gIQxVo6jHkxMa7j2zRj/l6mc54CV4=")
        );
    }
}

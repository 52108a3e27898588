//! The fake ai-toolkit's worker: each tick, every running queue without a running job starts its
//! oldest queued job; a job runs our trainer on its dataset with a spec derived back from its
//! config and ends `completed`, `error` or `stopped`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Shared;

pub(super) async fn queue_worker(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.config.tick).await;
        for id in due_jobs(&shared) {
            tokio::spawn(run_job(Arc::clone(&shared), id));
        }
    }
}

/// Queued jobs whose queue is running and idle; marked `running` here so no tick starts one twice.
fn due_jobs(shared: &Shared) -> Vec<String> {
    let mut st = shared.lock();
    let mut due = Vec::new();
    let queues: Vec<String> = st
        .queues
        .iter()
        .filter(|(_, r)| **r)
        .map(|(g, _)| g.clone())
        .collect();
    for gpu in queues {
        let busy = st
            .jobs
            .iter()
            .any(|j| j.gpu_ids == gpu && (j.status == "running" || j.status == "stopping"));
        if busy {
            continue;
        }
        if let Some(job) = st
            .jobs
            .iter_mut()
            .find(|j| j.gpu_ids == gpu && j.status == "queued")
        {
            job.status = "running".to_owned();
            job.info = "Starting".to_owned();
            job.step = 0;
            job.updated_at = Utc::now();
            due.push(job.id.clone());
        }
    }
    due
}

fn set(shared: &Shared, id: &str, change: impl FnOnce(&mut super::ToolkitJob)) {
    let mut st = shared.lock();
    if let Some(job) = st.jobs.iter_mut().find(|j| j.id == id) {
        // A stopped (or deleted) job keeps its end.
        if job.status == "running" || job.status == "stopping" {
            change(job);
            job.updated_at = Utc::now();
        }
    }
}

fn end(shared: &Shared, id: &str, status: &str, info: &str) {
    set(shared, id, |j| {
        j.status = status.to_owned();
        j.info = info.to_owned();
        j.pid = None;
    });
}

fn append(log: &Path, text: &str) {
    if let Ok(mut f) = std::fs::File::options().create(true).append(true).open(log) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// The trainer spec a job config stands for (the inverse of the backend's mapping).
pub(super) fn spec_from_config(config: &Value, job_id: &str) -> Result<Value, String> {
    let p = config
        .pointer("/config/process/0")
        .ok_or("job_config has no config.process[0]")?;
    let get = |ptr: &str| {
        p.pointer(ptr)
            .cloned()
            .ok_or(format!("job_config lacks {ptr}"))
    };
    let optimizer = match get("/train/optimizer")?.as_str() {
        Some("adamw8bit") => "adamw_8bit",
        Some("adamw") => "adamw",
        other => return Err(format!("unsupported optimizer {other:?}")),
    };
    let scheduler_name = get("/train/lr_scheduler")?;
    let scheduler = match scheduler_name.as_str() {
        Some("cosine") => "cosine_with_warmup",
        Some(s @ ("constant" | "constant_with_warmup" | "linear")) => s,
        other => return Err(format!("unsupported lr_scheduler {other:?}")),
    };
    let trigger_words: Vec<String> = p
        .get("trigger_word")
        .and_then(Value::as_str)
        .map(|t| t.split(", ").map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(json!({
        "job_id": job_id,
        "base_model": get("/model/name_or_path")?,
        "type": "lora",
        "rank": get("/network/linear")?,
        "alpha": get("/network/linear_alpha")?,
        "dropout": p.pointer("/network/dropout").cloned().unwrap_or(json!(0.0)),
        "target_modules": get("/network/network_kwargs/only_if_contains")?,
        "steps": get("/train/steps")?,
        "learning_rate": get("/train/lr")?,
        "batch_size": get("/train/batch_size")?,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
        "lr_warmup_steps": p.pointer("/train/lr_warmup_steps").cloned().unwrap_or(json!(0)),
        "resolution": get("/datasets/0/resolution/0")?,
        "trigger_words": trigger_words,
        "seed": get("/sample/seed")?,
        "checkpoint_every": get("/save/save_every")?,
        "validation": {"enabled": true, "scorer": null},
    }))
}

async fn run_job(shared: Arc<Shared>, id: String) {
    let Some((name, config)) = ({
        let st = shared.lock();
        st.jobs
            .iter()
            .find(|j| j.id == id)
            .map(|j| (j.name.clone(), j.job_config.clone()))
    }) else {
        return;
    };
    let folder = shared.config.training_folder().join(&name);
    let _ = std::fs::create_dir_all(&folder);
    let log = folder.join("log.txt");
    append(&log, &format!("Running job {name}\n"));
    let injected = {
        let mut st = shared.lock();
        (!st.failures.is_empty()).then(|| st.failures.remove(0))
    };
    if let Some((info, text)) = injected {
        append(&log, &text);
        end(&shared, &id, "error", &info);
        return;
    }
    match train(&shared, &id, &name, &config, &folder, &log).await {
        Ok(()) => end(&shared, &id, "completed", "Training completed"),
        Err(e) => {
            append(&log, &format!("Error running job: {e}\n"));
            end(&shared, &id, "error", &e);
        }
    }
    // Deleted while it ran: what the stopping trainer wrote on its way out goes too.
    if !shared.lock().jobs.iter().any(|j| j.id == id) {
        let _ = std::fs::remove_dir_all(&folder);
    }
}

async fn train(
    shared: &Shared,
    id: &str,
    name: &str,
    config: &str,
    folder: &Path,
    log: &Path,
) -> Result<(), String> {
    let trainer = shared
        .config
        .trainer
        .clone()
        .ok_or("no trainer is configured in this fake")?;
    let config: Value = serde_json::from_str(config).map_err(|e| format!("job_config: {e}"))?;
    let spec = spec_from_config(&config, &uuid::Uuid::new_v4().to_string())?;
    let images = config
        .pointer("/config/process/0/datasets/0/folder_path")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or("job_config lacks datasets[0].folder_path")?;
    let total = spec["steps"].as_u64();
    set(shared, id, |j| {
        j.total_steps = total;
        j.info = "Loading model".to_owned();
    });
    let work = folder.join(".trainer");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let spec_path = work.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).map_err(|e| e.to_string())?;
    let out = work.join("out");
    let stderr = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&trainer.program)
        .args(&trainer.args)
        .arg("train")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .envs(trainer.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the trainer: {e}"))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    if let Some(pid) = pid {
        shared.lock().running.insert(id.to_owned(), pid);
        set(shared, id, |j| j.pid = Some(pid));
    }
    let mut checkpoints: Vec<u64> = Vec::new();
    let mut last_error: Option<String> = None;
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            append(log, &format!("{line}\n"));
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match event.get("event").and_then(Value::as_str) {
                Some("progress") => {
                    let step = event.get("step").and_then(Value::as_u64);
                    set(shared, id, |j| {
                        j.step = step.unwrap_or(j.step);
                        j.info = "Training".to_owned();
                    });
                }
                Some("stage") => {
                    let stage = event
                        .get("stage")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    set(shared, id, |j| j.info = stage);
                }
                Some("checkpoint") => checkpoints.extend(event.get("step").and_then(Value::as_u64)),
                Some("error") => {
                    last_error = event
                        .get("reason")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }
                _ => {}
            }
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    shared.lock().running.remove(id);
    if shared
        .lock()
        .jobs
        .iter()
        .find(|j| j.id == id)
        .is_none_or(|j| j.stop)
    {
        return Ok(()); // stopped: the stop route set the status
    }
    if !status.success() {
        return Err(last_error.unwrap_or_else(|| format!("the trainer exited with {status}")));
    }
    // ai-toolkit's outputs: the final file, step saves, samples.
    let kohya = out.join("model.kohya.safetensors");
    let final_file = folder.join(format!("{name}.safetensors"));
    std::fs::copy(&kohya, &final_file)
        .map_err(|e| format!("saving {}: {e}", final_file.display()))?;
    for step in checkpoints.iter().filter(|s| Some(**s) != total) {
        if std::fs::copy(&kohya, folder.join(format!("{name}_{step:09}.safetensors"))).is_ok() {
            shared.lock().step_saves += 1;
        }
    }
    let samples = folder.join("samples");
    std::fs::create_dir_all(&samples).map_err(|e| e.to_string())?;
    let stamp = Utc::now().timestamp_millis();
    for i in 0..3 {
        let from = out.join("validation").join(format!("{i}.png"));
        if from.is_file() {
            let to = samples.join(format!("{stamp}__{:09}_{i}.png", total.unwrap_or(0)));
            let _ = std::fs::copy(from, to);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    set(shared, id, |j| j.step = total.unwrap_or(j.step));
    Ok(())
}

/// Stops the job's trainer: SIGTERM to its group, SIGKILL after the grace.
pub(super) fn kill(shared: &Arc<Shared>, id: &str) {
    let Some(pgid) = shared.lock().running.get(id).copied() else {
        return;
    };
    crate::process::signal_group(pgid, libc::SIGTERM);
    let shared = Arc::clone(shared);
    let id = id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(shared.config.kill_grace).await;
        if shared.lock().running.get(&id) == Some(&pgid) {
            crate::process::signal_group(pgid, libc::SIGKILL);
        }
    });
}

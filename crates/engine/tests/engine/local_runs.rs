//! Real child processes under the local backend: progress, exits, timeouts, cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loraforge_db::EventDetail;
use loraforge_domain::{LoraId, StatusEvent, TrainingStatus};
use loraforge_engine::backends::LocalBackend;
use loraforge_engine::{EngineSettings, RunId, TrainingBackend};

use crate::helpers::*;

/// The run id and pid of `id`'s live run.
async fn run_of(db: &Db, local: &LocalBackend, id: LoraId) -> (RunId, u32) {
    let run = db.repo.live_runs().await.unwrap().into_iter().find(|r| r.lora_id == id).expect("a live run");
    let run_id = RunId(run.run_id);
    let pid = local.pid(&run_id).expect("a pid");
    (run_id, pid)
}

#[tokio::test]
async fn a_finished_run_relays_progress_and_is_let_finish_once_its_result_is_in() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Finishes", 0).await;
    let local = db.local(1, &[("FAKE_STEPS", "6"), ("FAKE_STEP_SECONDS", "0.1")]);
    let engine = db
        .engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("e1"))
        .with_worker_tokens(Arc::new(FixedTokens));
    assert_eq!(engine.tick().await.unwrap().started, [id]);
    // The spec the worker got: this job's parameters and images, and no token on disk.
    let job_dir = db.dir.path().join("runs").join(id.to_string());
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(job_dir.join("spec-1.json")).unwrap()).unwrap();
    assert_eq!(spec["lora_id"], id.to_string());
    assert_eq!(spec["attempt"], 1);
    assert_eq!(spec["images"].as_array().unwrap().len(), 2);
    assert_eq!(spec["params"]["rank"], 8);
    assert!(spec.get("worker_token").is_none(), "the token stays off the disk: {spec}");
    // ... it gets it in its environment instead (the fake worker writes what it got).
    let seen = job_dir.join("out/token");
    wait_for("the worker to start", || async { seen.exists() }).await;
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), format!("token-{id}-1-e1"));

    tick_until(&engine, "progress to be relayed", async |r| r.iter().any(|r| r.progress > 0)).await;
    // The worker's result call moves the job on while the worker is still finishing.
    db.repo.apply_event(id, StatusEvent::BeginValidation, EventDetail::default(), db.now()).await.unwrap();
    let reports = tick_until(&engine, "the run to finish", async |r| r.iter().any(|r| r.trained == [id])).await;
    assert!(reports.iter().all(|r| r.stopped_runs.is_empty()), "a run past training is not stopped: {reports:?}");
    assert_eq!(db.status(id).await, TrainingStatus::Validating);
    let log = db.repo.events_after(id, 0, 1000).await.unwrap();
    let percents: Vec<u64> =
        log.iter().filter(|e| e.kind == "progress").filter_map(|e| e.data["percent"].as_u64()).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "progress only goes up: {percents:?}");
    // The run is forgotten, its slot free and its job folder gone.
    assert!(db.repo.live_runs().await.unwrap().is_empty());
    assert_eq!(local.capacity(), 1);
    assert!(!job_dir.exists(), "the job folder is released");
}

#[tokio::test]
async fn a_run_that_exits_without_its_result_is_requeued() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Silent end", 0).await;
    let local = db.local(1, &[("FAKE_STEPS", "2"), ("FAKE_STEP_SECONDS", "0.01")]);
    let engine = db.engine(vec![local as Arc<dyn TrainingBackend>], settings("e1"));
    tick_until(&engine, "the run to end", async |r| r.iter().any(|r| r.requeued == [id])).await;
    // Requeued with the reason (and, slots being free, started again at once).
    let log = db.repo.events_after(id, 0, 1000).await.unwrap();
    let requeue = log.iter().find(|e| e.data["event"] == "requeue").expect("a requeue event");
    assert_eq!(requeue.data["error"], "the worker ended without reporting its result");
    assert!(matches!(db.status(id).await, TrainingStatus::Queued | TrainingStatus::Training));
}

#[tokio::test]
async fn exit_code_3_fails_the_job_with_non_finite_loss() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Diverges", 0).await;
    let local = db.local(1, &[("FAKE_STEPS", "3"), ("FAKE_EXIT_CODE", "3")]);
    let engine = db.engine(vec![local as Arc<dyn TrainingBackend>], settings("e1"));
    tick_until(&engine, "the run to fail", async |r| r.iter().any(|r| r.failed == [id])).await;
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Failed);
    assert_eq!(lora.error.as_deref(), Some("training diverged: non-finite loss at step 3"));
    // Not retried: a diverging job would diverge again.
    let again = engine.tick().await.unwrap();
    assert!(again.started.is_empty());
}

#[tokio::test]
async fn a_failure_the_worker_calls_retryable_requeues_the_job() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Hub down", 0).await;
    let local = db.local(1, &[("FAKE_STEPS", "1"), ("FAKE_EXIT_CODE", "2"), ("FAKE_RETRYABLE", "true")]);
    let engine = db.engine(vec![local as Arc<dyn TrainingBackend>], settings("e1"));
    tick_until(&engine, "the run to end", async |r| r.iter().any(|r| r.requeued == [id])).await;
    let log = db.repo.events_after(id, 0, 1000).await.unwrap();
    let requeue = log.iter().find(|e| e.data["event"] == "requeue").expect("a requeue event");
    assert_eq!(requeue.data["error"], "the run failed for now: fake failure");
}

#[tokio::test]
async fn a_run_past_the_timeout_is_killed_and_failed() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Too slow", 0).await;
    let local = db.local(1, LONG_RUN);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("e1"));
    assert_eq!(engine.tick().await.unwrap().started, [id]);
    let (_, pid) = run_of(&db, &local, id).await;

    db.advance(Duration::from_secs(2 * 3600 - 1));
    let before = engine.tick().await.unwrap();
    assert!(before.timed_out.is_empty(), "{before:?}");
    assert_eq!(before.watched, [id], "still running: watched and its lease kept");

    db.advance(Duration::from_secs(2));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.timed_out, [id]);
    assert_eq!(report.stopped_runs, [id]);
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Failed);
    assert_eq!(lora.error.as_deref(), Some("training took longer than 2 h"));
    wait_for("the timed-out worker to exit", || async { !process_alive(pid) }).await;
    tick_until(&engine, "the run to be forgotten", async |_| db.repo.live_runs().await.unwrap().is_empty()).await;
    assert_eq!(local.capacity(), 1);
}

#[tokio::test]
async fn the_timeout_is_configurable() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Short leash", 0).await;
    let local = db.local(1, LONG_RUN);
    let settings = EngineSettings { job_timeout: Duration::from_secs(90 * 60), ..settings("e1") };
    let engine = db.engine(vec![local as Arc<dyn TrainingBackend>], settings);
    engine.tick().await.unwrap();
    db.advance(Duration::from_secs(90 * 60 + 1));
    assert_eq!(engine.tick().await.unwrap().timed_out, [id]);
    assert_eq!(db.get(id).await.error.as_deref(), Some("training took longer than 90 min"));
}

#[tokio::test]
async fn cancel_kills_the_whole_process_tree_within_30_s() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Cancelled", 0).await;
    let local = db.local(1, &[LONG_RUN[0], LONG_RUN[1], ("FAKE_GRANDCHILD", "1")]);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("e1"));
    assert_eq!(engine.tick().await.unwrap().started, [id]);
    let (run_id, pid) = run_of(&db, &local, id).await;
    let pid_file = db.dir.path().join("runs").join(id.to_string()).join("out/grandchild.pid");
    wait_for("the worker's own child to start", || async { pid_file.exists() }).await;
    let grandchild: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(process_alive(pid) && process_alive(grandchild));

    // The owner cancels through the API's path: a status change only.
    let cancelled_at = Instant::now();
    db.repo
        .apply_event(id, StatusEvent::Cancel, EventDetail::because("cancelled by owner"), db.now())
        .await
        .unwrap();
    let report = engine.tick().await.unwrap();
    assert_eq!(report.stopped_runs, [id]);
    wait_for("the worker and its child to be gone", || async { !process_alive(pid) && !process_alive(grandchild) })
        .await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(30), "took {:?}", cancelled_at.elapsed());
    // SIGTERM was honoured: the worker stopped itself (exit 10).
    wait_for("the run to be recorded as ended", || async {
        matches!(local.status(&run_id).await.unwrap(), loraforge_engine::RunState::Exited { code: Some(10), .. })
    })
    .await;
    tick_until(&engine, "the run to be forgotten", async |_| db.repo.live_runs().await.unwrap().is_empty()).await;
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Cancelled);
    assert_eq!(lora.error.as_deref(), Some("cancelled by owner"));
    assert_eq!(local.capacity(), 1);
}

#[tokio::test]
async fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Stubborn", 0).await;
    let mut s = local_settings(db.dir.path().join("runs"), 1, &[LONG_RUN[0], LONG_RUN[1], ("FAKE_IGNORE_TERM", "1")]);
    s.kill_grace = Duration::from_millis(300);
    let local = Arc::new(LocalBackend::new(s));
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("e1"));
    engine.tick().await.unwrap();
    let (run_id, pid) = run_of(&db, &local, id).await;
    db.repo.apply_event(id, StatusEvent::Cancel, EventDetail::default(), db.now()).await.unwrap();
    engine.tick().await.unwrap();
    wait_for("the stubborn worker to be killed", || async { !process_alive(pid) }).await;
    wait_for("the run to end", || async {
        // Killed by SIGKILL: no exit code.
        matches!(local.status(&run_id).await.unwrap(), loraforge_engine::RunState::Exited { code: None, .. })
    })
    .await;
}

#[tokio::test]
async fn a_program_that_cannot_run_fails_the_job_at_once() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "No worker", 0).await;
    let mut s = local_settings(db.dir.path().join("runs"), 1, &[]);
    s.program = db.dir.path().join("no-such-worker");
    let engine = db.engine(vec![Arc::new(LocalBackend::new(s)) as Arc<dyn TrainingBackend>], settings("e1"));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.failed, [id]);
    assert!(report.start_retries.is_empty(), "a missing program is not retried");
    let error = db.get(id).await.error.unwrap();
    assert!(error.starts_with("training could not start: could not start the run: cannot run"), "{error}");
    assert!(error.contains("No such file"), "{error}");
}

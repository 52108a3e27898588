//! A run's life: launched, watched, ended (by its worker's report, by what its backend sees, by
//! the engine), settled on its job once, its instance ended and its cost recorded.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use loraforge_db::{EventDetail, FaultPoint};
use loraforge_domain::{MicroUsd, StatusEvent, TrainingStatus};
use loraforge_engine::{BackendError, Ending, EngineSettings, Observed, TrainingBackend};

use crate::helpers::*;

fn engine_settings(worker: &str) -> EngineSettings {
    EngineSettings {
        server_url: "http://control.example:8080".into(),
        ..settings(worker)
    }
}

async fn a_trained_run_is_published_and_its_instance_ended_with_its_cost(db: Db) {
    let u = db.user().await;
    let id = db.lora(u, "Published", 0).await;
    let pods = Scripted::new("pods", 4);
    let engine = db
        .engine(
            vec![pods.clone() as Arc<dyn TrainingBackend>],
            engine_settings("e1"),
        )
        .with_worker_tokens(Arc::new(FixedTokens));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started, [id]);

    // The run is a record: backend, instance, GPU, price, the worker's environment.
    let run = db.run(id).await;
    assert_eq!(
        (run.attempt, run.backend.as_str(), run.engine.as_str()),
        (1, "pods", "e1")
    );
    assert_eq!(run.instance_name, format!("loraforge-{id}-1"));
    assert_eq!(run.gpu_type.as_deref(), Some("NVIDIA Test GPU"));
    assert_eq!(run.price_per_hour, Some(MicroUsd(720_000)));
    let (_, instance) = pods.instance(id).unwrap();
    assert_eq!((instance.lora, instance.attempt), (id, 1));
    assert_eq!(instance.token, format!("token-{id}-1-e1"));
    assert_eq!(instance.server, "http://control.example:8080");

    // Watched while it runs: the lease is kept.
    let watching = engine.tick().await.unwrap();
    assert_eq!(watching.watched, [id]);

    // 90 minutes later the worker reports its result: the after-training steps publish it and
    // the instance is ended; the cost is 1.5 h at $0.72/h.
    db.advance(Duration::from_secs(90 * 60));
    db.report_trained(id).await;
    let done = engine.tick().await.unwrap();
    assert_eq!(
        (done.published.clone(), done.gone.clone()),
        (vec![id], vec![id]),
        "{done:?}"
    );
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Completed);
    assert_eq!(lora.validation_passed, Some(true));
    assert!(lora.storage_key.unwrap().ends_with("/model.safetensors"));
    // The worker reported no hash: the stored file was hashed at publish, so the hand-off's
    // first resolve has nothing to hash.
    assert_eq!(
        lora.sha256,
        Some(hex::encode(sha2::Sha256::digest(tiny_lora())))
    );
    assert_eq!(lora.training_cost, MicroUsd(1_080_000));
    let run = db.run(id).await;
    assert_eq!(run.cost, Some(MicroUsd(1_080_000)));
    assert!(run.instance_gone_at.is_some() && run.settled_at.is_some());
    assert_eq!(
        pods.terminates(),
        [("pods-1".to_owned(), Ending::Finished)],
        "the worker ended it: no hurry"
    );
    let statuses: Vec<String> = db
        .repo
        .events_after(id, 0, 100)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.data["to"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(statuses, ["queued", "training", "validating", "completed"]);
    // Nothing is left to do.
    let idle = engine.tick().await.unwrap();
    assert_eq!(idle, Default::default());
    assert!(db.open().await.is_empty());
}

#[tokio::test]
async fn sqlite_a_trained_run_is_published_and_its_instance_ended_with_its_cost() {
    a_trained_run_is_published_and_its_instance_ended_with_its_cost(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_trained_run_is_published_and_its_instance_ended_with_its_cost() {
    a_trained_run_is_published_and_its_instance_ended_with_its_cost(Db::postgres().await).await;
}

/// A worker hashes the model file before uploading it: when the stored file has the size it
/// reported, that hash is what publishing records (the file is not hashed again).
#[tokio::test]
async fn publishing_records_the_hash_the_worker_reported() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Hashed", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    let reported = "5e".repeat(32);
    db.report_trained_with_sha(id, Some(&reported)).await;
    let done = engine.tick().await.unwrap();
    assert_eq!(done.published, [id], "{done:?}");
    assert_eq!(db.get(id).await.sha256, Some(reported));
}

#[tokio::test]
async fn a_failure_the_worker_reports_fails_the_job_with_its_reason() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Diverges", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    db.report_failure(id, "non_finite_loss", "non-finite loss at step 3")
        .await;
    let report = engine.tick().await.unwrap();
    assert_eq!(report.failed, [id]);
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Failed);
    assert_eq!(
        lora.error.as_deref(),
        Some("training diverged: non-finite loss at step 3")
    );
    assert_eq!(pods.live(), 0, "its instance is ended");
    assert_eq!(db.runs(id).await.len(), 1, "not retried");
}

async fn failures_of_the_run_use_up_attempts_and_stops_by_the_platform_do_not(db: Db) {
    let u = db.user().await;
    let counted = db.lora(u, "Flaky storage", 0).await;
    let pods = Scripted::new("pods", 1);
    let settings = EngineSettings {
        max_runs: 4,
        ..settings("e1")
    };
    let engine = db.engine(vec![pods.clone() as Arc<dyn TrainingBackend>], settings);
    assert_eq!(engine.tick().await.unwrap().started, [counted]);
    for attempt in 1..=3 {
        db.report_failure(counted, "upload_failed", "storage answered 503")
            .await;
        let report = engine.tick().await.unwrap();
        if attempt < 3 {
            // Requeued, its instance ended, and run again in the same tick.
            assert_eq!(
                (report.requeued.clone(), report.started.clone()),
                (vec![counted], vec![counted]),
                "attempt {attempt}: {report:?}"
            );
        } else {
            assert_eq!(report.failed, [counted], "{report:?}");
        }
    }
    let lora = db.get(counted).await;
    assert_eq!(
        lora.error.as_deref(),
        Some(
            "the trained files could not be uploaded: storage answered 503; not retried after 3 failed attempts"
        )
    );

    // Stopped by the control plane (a shutdown, a crash): not the job's fault, so not counted —
    // but bounded by max_runs.
    let stopped = db.lora(u, "Interrupted", 10).await;
    assert_eq!(engine.tick().await.unwrap().started, [stopped]);
    for run in 1..=4 {
        db.report_failure(stopped, "stopped", "the worker received SIGTERM")
            .await;
        let report = engine.tick().await.unwrap();
        if run < 4 {
            assert_eq!(
                (report.requeued.clone(), report.started.clone()),
                (vec![stopped], vec![stopped]),
                "run {run}: {report:?}"
            );
        } else {
            assert_eq!(report.failed, [stopped], "{report:?}");
        }
    }
    assert_eq!(db.repo.open_runs().await.unwrap().len(), 0);
    let error = db.get(stopped).await.error.unwrap();
    assert!(error.ends_with("not retried after 4 runs"), "{error}");
}

#[tokio::test]
async fn sqlite_failures_of_the_run_use_up_attempts_and_stops_by_the_platform_do_not() {
    failures_of_the_run_use_up_attempts_and_stops_by_the_platform_do_not(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_failures_of_the_run_use_up_attempts_and_stops_by_the_platform_do_not() {
    failures_of_the_run_use_up_attempts_and_stops_by_the_platform_do_not(Db::postgres().await)
        .await;
}

#[tokio::test]
async fn a_vanished_instance_is_requeued_and_the_next_run_waits_until_it_is_gone() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Lost pod", 0).await;
    let pods = Scripted::new("pods", 2);
    pods.slow_to_end();
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    // The pod's container died without a word from the worker; the pod still exists.
    pods.set(
        id,
        Observed::Ended {
            outcome: "vanished",
            reason: Some("the pod exited".into()),
            gone: false,
        },
    );
    let report = engine.tick().await.unwrap();
    assert_eq!(report.requeued, [id], "{report:?}");
    assert_eq!(report.stopped_runs, [id], "its instance is being ended");
    assert!(
        report.started.is_empty(),
        "no second instance while the first may still run: {report:?}"
    );
    assert_eq!(db.status(id).await, TrainingStatus::Queued);
    // Once it is confirmed gone the job runs again, as attempt 2.
    let report = engine.tick().await.unwrap();
    assert_eq!(
        (report.gone.clone(), report.started.clone()),
        (vec![id], vec![id]),
        "{report:?}"
    );
    let runs = db.runs(id).await;
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(runs[0].outcome.as_deref(), Some("vanished"));
    assert_eq!(
        runs[0].message().unwrap(),
        "the training instance ended without a word from its worker: the pod exited"
    );
}

#[tokio::test]
async fn a_cancelled_lora_has_its_instance_stopped_at_once() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Cancelled", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    db.repo
        .apply_event(
            id,
            StatusEvent::Cancel,
            EventDetail::because("changed my mind"),
            db.now(),
        )
        .await
        .unwrap();
    let report = engine.tick().await.unwrap();
    assert_eq!(report.gone, [id]);
    assert_eq!(pods.terminates(), [("pods-1".to_owned(), Ending::Stop)]);
    assert_eq!(db.run(id).await.outcome.as_deref(), Some("cancelled"));
    assert_eq!(db.status(id).await, TrainingStatus::Cancelled);
}

#[tokio::test]
async fn a_run_past_the_timeout_fails_and_its_instance_is_stopped() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Slow", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    db.advance(Duration::from_secs(2 * 3600 + 1));
    let report = engine.tick().await.unwrap();
    assert_eq!(
        (report.timed_out.clone(), report.failed.clone()),
        (vec![id], vec![id]),
        "{report:?}"
    );
    assert_eq!(
        db.get(id).await.error.as_deref(),
        Some("training took too long: training took longer than 2 h")
    );
    assert_eq!(pods.terminates(), [("pods-1".to_owned(), Ending::Stop)]);
    // Two hours at $0.72/h.
    assert_eq!(db.get(id).await.training_cost, MicroUsd(1_440_200));
}

#[tokio::test]
async fn no_capacity_puts_the_job_back_without_using_an_attempt() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Patient", 0).await;
    let pods = Scripted::new("pods", 1);
    pods.fail_next_launch(BackendError::NoCapacity(
        "no RTX A6000 or A40 available".into(),
    ));
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    let report = engine.tick().await.unwrap();
    assert_eq!(report.waiting, [id], "{report:?}");
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Queued);
    let message = lora.status_message.unwrap();
    assert!(
        message.starts_with("waiting for a GPU: pods has none available")
            && message.contains("A6000"),
        "{message}"
    );
    assert!(lora.error.is_none());
    // The backend is left alone for a minute, then asked again; the run is attempt 1.
    assert!(engine.tick().await.unwrap().started.is_empty());
    db.advance(Duration::from_secs(61));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started, [id], "{report:?}");
    assert_eq!(db.run(id).await.attempt, 1);
    assert!(
        db.get(id).await.status_message.is_none(),
        "cleared when it starts"
    );
}

#[tokio::test]
async fn a_launch_that_fails_for_now_is_retried_and_one_that_never_can_fails_the_job() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Retried", 0).await;
    let pods = Scripted::new("pods", 1);
    pods.fail_next_launch(BackendError::Transient("HTTP 502".into()));
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    assert_eq!(engine.tick().await.unwrap().start_retries, [id]);
    db.advance(Duration::from_secs(2));
    assert_eq!(engine.tick().await.unwrap().started, [id]);
    assert_eq!(db.run(id).await.attempt, 1, "the failed launch made no run");

    let broken = db.lora(u, "Broken", 1).await;
    db.report_failure(id, "non_finite_loss", "x").await;
    pods.fail_next_launch(BackendError::Permanent("the image does not exist".into()));
    let report = engine.tick().await.unwrap();
    assert!(
        report.failed.contains(&id) && report.failed.contains(&broken),
        "{report:?}"
    );
    assert_eq!(
        db.get(broken).await.error.as_deref(),
        Some("training could not start: the image does not exist")
    );
}

#[tokio::test]
async fn a_backend_that_can_never_start_a_run_falls_back_instead_of_failing_the_job() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Misconfigured", 0).await;
    let pods = Scripted::new("pods", 1);
    let spare = Scripted::new("spare", 1);
    pods.fail_next_launch(BackendError::Permanent("the image does not exist".into()));
    let engine = db.engine(
        vec![
            pods.clone() as Arc<dyn TrainingBackend>,
            spare.clone() as Arc<dyn TrainingBackend>,
        ],
        settings("e1"),
    );
    let mut started = Vec::new();
    for _ in 0..3 {
        let report = engine.tick().await.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        started.extend(report.started);
    }
    assert_eq!(started, [id]);
    let run = db.run(id).await;
    assert_eq!(run.backend, "spare");
    let why = run.route_reason.unwrap_or_default();
    assert!(why.contains("pods"), "{why}");
    assert_eq!(spare.launches(), 1);
}

#[tokio::test]
async fn an_instance_that_will_not_end_is_tried_again_with_backoff() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Sticky", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    pods.fail_terminates(4);
    db.report_failure(id, "non_finite_loss", "x").await;
    let report = engine.tick().await.unwrap();
    assert_eq!(report.failed, [id]);
    assert!(
        report.errors.iter().any(|e| e.contains("503")),
        "{report:?}"
    );
    // Not again before the pause (2 s, then 4 s, 8 s, 8 s).
    engine.tick().await.unwrap();
    assert_eq!(pods.terminates().len(), 1);
    for pause in [2, 4, 8, 8] {
        db.advance(Duration::from_secs(pause));
        engine.tick().await.unwrap();
    }
    assert_eq!(pods.terminates().len(), 5);
    let run = db.run(id).await;
    assert!(run.instance_gone_at.is_some(), "{run:?}");
    assert_eq!(run.terminate_failures, 4);
}

#[tokio::test]
async fn trained_files_missing_from_storage_requeue_the_job() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Nothing stored", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    let run = db.run(id).await;
    let result =
        serde_json::json!({"attempt": 1, "model": {"bytes": 10}, "validation": {"images": 3}});
    db.repo
        .record_run_outcome(run.id, "trained", None, Some(&result), db.now())
        .await
        .unwrap();
    let report = engine.tick().await.unwrap();
    assert_eq!(report.requeued, [id], "{report:?}");
    let events = db.repo.events_after(id, 0, 100).await.unwrap();
    let requeue = events
        .iter()
        .find(|e| e.data["event"] == "requeue")
        .expect("a requeue");
    let error = requeue.data["error"].as_str().unwrap();
    assert!(
        error.starts_with("the trained files are missing from storage: ")
            && error.contains("is not stored"),
        "{error}"
    );
}

/// A database error at each step after a run ended (recording what the backend saw, settling,
/// recording the end of the instance): the next tick finishes the work; nothing is done twice.
async fn a_failed_step_is_finished_by_the_next_tick(db: Db) {
    let u = db.user().await;
    let id = db.lora(u, "Resilient", 0).await;
    let pods = Scripted::new("pods", 1);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    db.report_trained(id).await;
    db.repo.faults().arm(FaultPoint::Settle);
    db.repo.faults().arm(FaultPoint::InstanceGone);
    let report = engine.tick().await.unwrap();
    assert_eq!(
        report
            .errors
            .iter()
            .filter(|e| e.contains("fault injected"))
            .count(),
        2,
        "{report:?}"
    );
    assert_eq!(db.status(id).await, TrainingStatus::Training);
    assert!(db.run(id).await.instance_gone_at.is_none());
    let report = engine.tick().await.unwrap();
    assert_eq!(
        (report.published.clone(), report.gone.clone()),
        (vec![id], vec![id]),
        "{report:?}"
    );
    assert_eq!(db.status(id).await, TrainingStatus::Completed);
    let report = engine.tick().await.unwrap();
    assert!(
        report.gone.is_empty() && report.published.is_empty(),
        "done once: {report:?}"
    );
    assert_eq!(
        db.get(id).await.training_cost,
        db.run(id).await.cost.unwrap()
    );

    // The backend's account of a vanished instance fails to be recorded once.
    let other = db.lora(u, "Vanishing", 5).await;
    engine.tick().await.unwrap();
    pods.set(
        other,
        Observed::Ended {
            outcome: "vanished",
            reason: None,
            gone: true,
        },
    );
    db.repo.faults().arm(FaultPoint::RunOutcome);
    let report = engine.tick().await.unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains("fault injected")),
        "{report:?}"
    );
    let report = engine.tick().await.unwrap();
    assert_eq!(
        (report.requeued.clone(), report.started.clone()),
        (vec![other], vec![other]),
        "{report:?}"
    );
    let runs = db.runs(other).await;
    assert_eq!(runs.len(), 2);
    assert!(runs[0].instance_gone_at.is_some());
    assert_eq!(runs[0].outcome.as_deref(), Some("vanished"));
}

#[tokio::test]
async fn sqlite_a_failed_step_is_finished_by_the_next_tick() {
    a_failed_step_is_finished_by_the_next_tick(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_failed_step_is_finished_by_the_next_tick() {
    a_failed_step_is_finished_by_the_next_tick(Db::postgres().await).await;
}

/// A replica died with a run on a shared backend: another replica reaps the job when its lease
/// ends (not the job's fault: it does not use an attempt), ends the instance, and runs the job
/// again.
async fn a_dead_replicas_run_is_reaped_ended_and_run_again(db: Db) {
    let u = db.user().await;
    let id = db.lora(u, "Orphaned", 0).await;
    let pods = Scripted::new("pods", 2);
    let dead = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("replica-a"),
    );
    dead.tick().await.unwrap();
    drop(dead);
    let alive = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("replica-b"),
    );
    assert!(
        alive.tick().await.unwrap().requeued.is_empty(),
        "the lease still runs"
    );
    db.advance(Duration::from_secs(6 * 60));
    // The provider fails the first try to end the dead replica's pod: the job waits for it.
    pods.fail_terminates(1);
    let report = alive.tick().await.unwrap();
    assert_eq!(
        (report.requeued.clone(), report.started.clone()),
        (vec![id], vec![]),
        "{report:?}"
    );
    // The next try is this replica's too, though the run is not its own.
    db.advance(Duration::from_secs(3));
    let report = alive.tick().await.unwrap();
    assert_eq!(
        (report.gone.clone(), report.started.clone()),
        (vec![id], vec![id]),
        "{report:?}"
    );
    let runs = db.runs(id).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("lease_expired"));
    assert_eq!((runs[1].attempt, runs[1].engine.as_str()), (2, "replica-b"));
    assert_eq!(
        db.open().await[0].job_failures,
        0,
        "the death of a replica is not the job's fault"
    );
}

#[tokio::test]
async fn sqlite_a_dead_replicas_run_is_reaped_ended_and_run_again() {
    a_dead_replicas_run_is_reaped_ended_and_run_again(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_dead_replicas_run_is_reaped_ended_and_run_again() {
    a_dead_replicas_run_is_reaped_ended_and_run_again(Db::postgres().await).await;
}

#[tokio::test]
async fn a_slow_backend_never_stalls_the_tick() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Patient", 0).await;
    let slow = Arc::new(Stuck);
    let settings = EngineSettings {
        call_timeout: Duration::from_millis(200),
        ..settings("e1")
    };
    let engine = db.engine(vec![slow as Arc<dyn TrainingBackend>], settings);
    let started = std::time::Instant::now();
    let report = engine.tick().await.unwrap();
    // The backend never answers, so any bound shows the tick did not wait for it; a generous
    // one keeps a busy CI box from failing a tick that merely ran slowly.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        report.start_retries,
        [id],
        "a launch with no answer is retried: {report:?}"
    );
}

/// A backend whose every call hangs.
#[derive(Debug)]
struct Stuck;

#[async_trait::async_trait]
impl TrainingBackend for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }
    fn max_runs(&self) -> usize {
        1
    }
    fn scope(&self) -> loraforge_engine::Scope {
        loraforge_engine::Scope::Shared
    }
    async fn launch(
        &self,
        _: &loraforge_engine::Launch,
    ) -> Result<loraforge_engine::Launched, BackendError> {
        std::future::pending().await
    }
    async fn observe(
        &self,
        _: &[loraforge_engine::Instance],
    ) -> Result<Vec<Observed>, BackendError> {
        std::future::pending().await
    }
    async fn terminate(
        &self,
        _: &loraforge_engine::Instance,
        _: Ending,
    ) -> Result<loraforge_engine::Termination, BackendError> {
        std::future::pending().await
    }
}

/// The orphan sweep ends instances with this service's name that no live run owns, leaves owned
/// ones and other services' alone, alerts after 3 failed tries, and runs on one replica at a time.
#[tokio::test]
async fn the_orphan_sweep_ends_instances_no_run_owns() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Owned", 0).await;
    let pods = Scripted::new("pods", 4);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    let (owned, _) = pods.instance(id).unwrap();
    let orphan = pods.plant(&format!("loraforge-{}-1", loraforge_domain::LoraId::new()));
    let foreign = pods.plant("someone-elses-pod");
    let odd = pods.plant("loraforge-not-one-of-ours");

    let report = engine.sweep_orphans().await;
    assert!(report.swept && report.errors.is_empty(), "{report:?}");
    assert_eq!(report.seen, 3, "owned, orphan and odd carry the prefix");
    assert_eq!(report.terminated, std::slice::from_ref(&orphan));
    assert!(pods.is_terminated(&orphan));
    for kept in [&owned, &foreign, &odd] {
        assert!(!pods.is_terminated(kept), "{kept}");
    }

    // Another replica does not sweep while this one holds the sweep.
    let other = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e2"),
    );
    assert!(!other.sweep_orphans().await.swept);

    // An orphan that will not end: 3 tries, then an alert.
    let stuck = pods.plant(&format!("loraforge-{}-2", loraforge_domain::LoraId::new()));
    pods.fail_terminates(3);
    let report = engine.sweep_orphans().await;
    assert_eq!(report.alerts, std::slice::from_ref(&stuck), "{report:?}");
    let alerts = db.repo.alerts(10).await.unwrap();
    assert_eq!(
        (alerts[0].kind.as_str(), alerts[0].subject.as_str()),
        ("orphan_instance", stuck.as_str())
    );
    assert!(
        alerts[0]
            .message
            .contains("could not be terminated after 3 tries"),
        "{}",
        alerts[0].message
    );
}

/// Checkpoints of a job past training that were left behind (their deletion failed when the
/// job ended) are deleted by the sweep; a training job's are kept.
#[tokio::test]
async fn the_sweep_deletes_checkpoints_left_by_ended_jobs() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let ended = db.lora(u, "Ended", 0).await;
    let training = db.lora(u, "Training", 1).await;
    let pods = Scripted::new("pods", 4);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    let key = |id| loraforge_domain::keys::checkpoint(u.0, id, 1);
    for id in [ended, training] {
        db.store
            .put(&key(id), bytes::Bytes::from_static(b"ckpt"))
            .await
            .unwrap();
    }
    db.repo
        .apply_event(ended, StatusEvent::Cancel, EventDetail::default(), db.now())
        .await
        .unwrap();
    let report = engine.sweep_orphans().await;
    assert_eq!(report.checkpoints_deleted, [ended], "{report:?}");
    assert!(db.store.head(&key(ended)).await.unwrap().is_none());
    assert!(
        db.store.head(&key(training)).await.unwrap().is_some(),
        "a training job keeps its checkpoint"
    );
}

//! Crashes of the control plane (issue 9, item 0): a run that outlived its engine is never the
//! job's fault, a run that trained just before the crash is published once, and a later attempt
//! on the local backend never shares its scratch folder with an earlier one.

use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::Duration;

use loraforge_domain::{LoraId, TrainingStatus};
use loraforge_engine::{Ending, EngineSettings, Instance, Launch, Observed, TrainingBackend};

use crate::helpers::*;

/// A counted failure (the worker could not download its images) of a run the engine's
/// predecessor started does not use an attempt; the same failure of a run this engine started
/// does.
#[tokio::test]
async fn a_failure_of_a_run_that_outlived_its_engine_does_not_use_an_attempt() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Crashed under", 0).await;
    let pods = Scripted::new("pods", 1);
    {
        let before = db.engine(
            vec![pods.clone() as Arc<dyn TrainingBackend>],
            settings("host-1"),
        );
        assert_eq!(before.tick().await.unwrap().started, [id]);
        // The service dies (kill -9) with the run going.
    }
    db.advance(Duration::from_secs(2));
    let after = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("host-1"),
    );
    db.report_failure(id, "image_download_failed", "connection refused")
        .await;
    let report = after.tick().await.unwrap();
    assert_eq!(
        (report.requeued.clone(), report.started.clone()),
        (vec![id], vec![id]),
        "{report:?}"
    );
    let open = db.open().await;
    assert_eq!(open[0].job_failures, 0, "the crash is not the job's fault");
    let runs = db.runs(id).await;
    assert!(
        runs[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("connection refused")),
        "{runs:?}"
    );
    let events = db.repo.events_after(id, 0, 100).await.unwrap();
    let requeue = events
        .iter()
        .find(|e| e.data["event"] == "requeue")
        .expect("a requeue event");
    assert!(
        requeue.data["error"]
            .as_str()
            .is_some_and(|e| e.contains("the service restarted during this run")),
        "{requeue:?}"
    );

    // The second run is this engine's own: the same failure counts.
    db.report_failure(id, "image_download_failed", "connection refused")
        .await;
    after.tick().await.unwrap();
    assert_eq!(db.open().await[0].job_failures, 1, "the job's own failure");
}

/// The worker reported its result and the service died before settling it: the next engine
/// publishes the LoRA once and never trains it again.
#[tokio::test]
async fn a_run_that_trained_just_before_a_crash_is_published_once() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Just in time", 0).await;
    let pods = Scripted::new("pods", 2);
    {
        let before = db.engine(
            vec![pods.clone() as Arc<dyn TrainingBackend>],
            settings("host-1"),
        );
        before.tick().await.unwrap();
        db.report_trained(id).await;
        // Killed before its next tick.
    }
    db.advance(Duration::from_secs(3));
    let after = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("host-1"),
    );
    let report = after.tick().await.unwrap();
    assert_eq!(report.published, [id], "{report:?}");
    assert!(report.started.is_empty(), "{report:?}");
    for _ in 0..3 {
        db.advance(Duration::from_secs(200));
        let idle = after.tick().await.unwrap();
        assert!(
            idle.started.is_empty() && idle.published.is_empty(),
            "{idle:?}"
        );
    }
    assert_eq!(db.status(id).await, TrainingStatus::Completed);
    assert_eq!(db.runs(id).await.len(), 1, "trained once");
    assert_eq!(pods.launches(), 1);
}

fn launch(lora: LoraId, attempt: u32) -> Launch {
    Launch {
        lora_id: lora,
        attempt,
        instance_name: format!("loraforge-{lora}-{attempt}"),
        server: "http://127.0.0.1:9".into(),
        token: "tok".into(),
        retry: false,
        task: loraforge_engine::Task::Train,
    }
}

fn instance(provider_id: &str, lora: LoraId, attempt: u32) -> Instance {
    Instance {
        provider_id: provider_id.to_owned(),
        instance_name: format!("loraforge-{lora}-{attempt}"),
        lora_id: lora,
        attempt,
    }
}

/// Two attempts of one job, one still running (a worker the crashed service started and never
/// recorded): each has its own folder. Once an attempt is gone, what it kept (checkpoints) is
/// handed to the next; a folder with nothing worth keeping is deleted.
#[tokio::test]
async fn attempts_never_share_a_folder_and_the_next_gets_what_the_last_one_kept() {
    let db = Db::sqlite().await;
    let backend = db.local(3, LONG_RUN);
    let lora = LoraId::new();
    let job = db.dir.path().join("runs").join(lora.to_string());
    let first = backend.launch(&launch(lora, 1)).await.unwrap();
    let second = backend.launch(&launch(lora, 2)).await.unwrap();
    let (a1, a2) = (job.join("attempt-1"), job.join("attempt-2"));
    wait_for("both workers", || async {
        a1.join("env.txt").exists() && a2.join("env.txt").exists()
    })
    .await;
    // Attempt 1 kept a checkpoint; both stop.
    std::fs::create_dir_all(a1.join("train")).unwrap();
    std::fs::write(a1.join("train/step-5.pt"), b"checkpoint").unwrap();
    for (p, attempt) in [(&first, 1), (&second, 2)] {
        let i = instance(&p.provider_id, lora, attempt);
        wait_for("the worker to stop", || async {
            backend.terminate(&i, Ending::Stop).await.unwrap().gone
        })
        .await;
    }
    backend.retire(&instance(&first.provider_id, lora, 1)).await;
    backend
        .retire(&instance(&second.provider_id, lora, 2))
        .await;
    assert!(!a1.exists() && !a2.exists(), "both folders retired");
    assert_eq!(
        std::fs::read(job.join("handover/train/step-5.pt")).unwrap(),
        b"checkpoint",
        "attempt 2 had nothing to keep and did not replace what attempt 1 kept"
    );
    // The next attempt starts in what was handed over.
    let third = backend.launch(&launch(lora, 3)).await.unwrap();
    let a3 = job.join("attempt-3");
    assert!(a3.join("train/step-5.pt").exists());
    assert!(!job.join("handover").exists());
    let i = instance(&third.provider_id, lora, 3);
    wait_for("the worker to stop", || async {
        backend.terminate(&i, Ending::Stop).await.unwrap().gone
    })
    .await;
    // Retiring twice (an engine that died before recording the end) is harmless.
    backend.retire(&i).await;
    backend.retire(&i).await;
    backend.release(lora, false).await;
    assert!(!job.exists(), "the job's folder is released");

    // Trained files never uploaded stay while the LoRA is not published, and go once it is (a
    // worker whose result was recorded but whose answer a crash cut off kept them).
    std::fs::create_dir_all(job.join("attempt-4")).unwrap();
    std::fs::write(job.join("attempt-4/result.json"), b"{}").unwrap();
    backend.release(lora, false).await;
    assert!(job.join("attempt-4/result.json").exists());
    backend.release(lora, true).await;
    assert!(!job.exists());
}

/// `serve` was killed: its worker died, but the trainer it started (same process group) still
/// runs. The run is not gone, and the next engine ends the rest of the group first.
#[tokio::test]
async fn a_predecessors_run_is_gone_only_with_the_last_process_of_its_group() {
    let db = Db::sqlite().await;
    let lora = LoraId::new();
    let out = db.dir.path().join("old");
    let mut child = std::process::Command::new(worker_process())
        .args(["--out", out.to_str().unwrap()])
        .env("WORKER_SECONDS", "600")
        .env("WORKER_GRANDCHILD", "1")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let pidfile = out.join("grandchild.pid");
    wait_for("the grandchild", || async { pidfile.exists() }).await;
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The worker alone dies.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(process_alive(grandchild));

    let backend = db.local(1, &[]);
    let i = instance(&format!("local:{pid}:{start}"), lora, 1);
    let seen = backend
        .observe(std::slice::from_ref(&i))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        seen,
        Observed::Ended {
            outcome: "lost",
            reason: Some("the service restarted and the run's worker had stopped with it".into()),
            gone: false
        },
        "its trainer is still there"
    );
    assert!(!backend.terminate(&i, Ending::Stop).await.unwrap().gone);
    wait_for("the rest of the group to end", || async {
        backend.terminate(&i, Ending::Stop).await.unwrap().gone
    })
    .await;
    assert!(!process_alive(grandchild));
}

/// End to end on the local backend: the first engine launches attempt 1 and dies; its worker
/// stops (as orphaned workers do) keeping a checkpoint; the next engine finds the run lost,
/// hands the folder over and runs attempt 2 in its own folder, which starts from the checkpoint.
#[tokio::test]
async fn after_a_restart_the_next_attempt_continues_from_the_lost_ones_checkpoint() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Resumed", 0).await;
    let job = db.dir.path().join("runs").join(id.to_string());
    {
        let backend = db.local(1, LONG_RUN);
        let engine = db.engine(
            vec![backend.clone() as Arc<dyn TrainingBackend>],
            settings("host-1"),
        );
        engine.tick().await.unwrap();
        let a1 = job.join("attempt-1");
        wait_for("the worker", || async { a1.join("env.txt").exists() }).await;
        std::fs::create_dir_all(a1.join("train")).unwrap();
        std::fs::write(a1.join("train/step-5.pt"), b"checkpoint").unwrap();
        // Dropping the backend kills its worker, as the death of `serve` does.
    }
    db.advance(Duration::from_secs(1));
    let backend = db.local(1, LONG_RUN);
    let engine = db.engine(
        vec![backend.clone() as Arc<dyn TrainingBackend>],
        EngineSettings {
            ..settings("host-1")
        },
    );
    tick_until(&engine, "the job to run again", async |r| {
        r.iter().any(|r| !r.started.is_empty())
    })
    .await;
    let runs = db.runs(id).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("lost"));
    assert_eq!(runs[1].attempt, 2);
    assert!(job.join("attempt-2/train/step-5.pt").exists());
    assert!(!job.join("attempt-1").exists() && !job.join("handover").exists());
    assert_eq!(db.open().await[0].job_failures, 0);
}

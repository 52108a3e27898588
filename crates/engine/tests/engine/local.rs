//! The local backend with real child processes: what it hands a worker, what it sees of a
//! worker's end, how it stops one (its whole process group), how a restarted engine finds and
//! ends workers its predecessor started, and the job folder.

use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loraforge_domain::{LoraId, TrainingStatus};
use loraforge_engine::backends::LocalBackend;
use loraforge_engine::{Ending, EngineSettings, Instance, Launch, Observed, TrainingBackend};

use crate::helpers::*;

fn launch(lora: LoraId, attempt: u32) -> Launch {
    Launch {
        lora_id: lora,
        attempt,
        instance_name: format!("loraforge-{lora}-{attempt}"),
        server: "http://127.0.0.1:9".into(),
        token: "tok-123".into(),
        retry: false,
        task: loraforge_engine::Task::Train,
    }
}

fn instance(provider_id: &str, lora: LoraId) -> Instance {
    Instance {
        provider_id: provider_id.to_owned(),
        instance_name: "n".into(),
        lora_id: lora,
        attempt: 1,
    }
}

async fn observe(b: &LocalBackend, i: &Instance) -> Observed {
    b.observe(std::slice::from_ref(i))
        .await
        .unwrap()
        .pop()
        .unwrap()
}

async fn ended(b: &LocalBackend, i: &Instance) -> Observed {
    let start = Instant::now();
    loop {
        let o = observe(b, i).await;
        if o != Observed::Running {
            return o;
        }
        assert!(start.elapsed() < DEADLINE, "the worker did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_worker_gets_its_environment_and_its_end_is_seen() {
    let db = Db::sqlite().await;
    let backend = db.local(
        2,
        &[("WORKER_CODE", "non_finite_loss"), ("WORKER_EXIT", "3")],
    );
    let lora = LoraId::new();
    let launched = backend.launch(&launch(lora, 1)).await.unwrap();
    assert!(launched.provider_id.starts_with("local:"), "{launched:?}");
    assert_eq!((launched.gpu_type, launched.price_per_hour), (None, None));
    let i = instance(&launched.provider_id, lora);
    let end = ended(&backend, &i).await;
    assert_eq!(
        end,
        Observed::Ended {
            outcome: "non_finite_loss",
            reason: Some("the fixture failed with non_finite_loss".into()),
            gone: true
        }
    );
    let env = std::fs::read_to_string(
        db.dir
            .path()
            .join("runs")
            .join(lora.to_string())
            .join("attempt-1/env.txt"),
    )
    .unwrap();
    assert_eq!(env, format!("http://127.0.0.1:9\n{lora}\ntok-123\n"));
    // An exit without an error line is read from its status.
    let quiet = db.local(1, &[]);
    let launched = quiet.launch(&launch(LoraId::new(), 1)).await.unwrap();
    let end = ended(&quiet, &instance(&launched.provider_id, lora)).await;
    assert!(
        matches!(
            end,
            Observed::Ended {
                outcome: "trained",
                gone: true,
                ..
            }
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn stopping_a_run_stops_its_whole_group_and_a_finished_one_gets_a_grace() {
    let db = Db::sqlite().await;
    let backend = db.local(2, &[("WORKER_SECONDS", "600"), ("WORKER_GRANDCHILD", "1")]);
    let lora = LoraId::new();
    let launched = backend.launch(&launch(lora, 1)).await.unwrap();
    let i = instance(&launched.provider_id, lora);
    let pid = LocalBackend::pid(&launched.provider_id).unwrap();
    let pidfile = db
        .dir
        .path()
        .join("runs")
        .join(lora.to_string())
        .join("attempt-1/grandchild.pid");
    wait_for("the grandchild", || async { pidfile.exists() }).await;
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(observe(&backend, &i).await, Observed::Running);
    // Asked to end a finished run, the backend first lets it exit on its own.
    let t = backend.terminate(&i, Ending::Finished).await.unwrap();
    assert!(!t.gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        process_alive(pid),
        "within the finish grace the worker is left alone"
    );
    wait_for("the grace to pass and the stop to work", || async {
        backend.terminate(&i, Ending::Finished).await.unwrap().gone
    })
    .await;
    assert!(
        !process_alive(pid) && !process_alive(grandchild),
        "the whole group is gone"
    );
    let end = observe(&backend, &i).await;
    assert!(
        matches!(
            end,
            Observed::Ended {
                outcome: "stopped",
                ..
            }
        ),
        "SIGTERM → stopped: {end:?}"
    );
}

#[tokio::test]
async fn a_worker_that_ignores_sigterm_is_killed_after_the_grace() {
    let db = Db::sqlite().await;
    let backend = db.local(1, &[("WORKER_SECONDS", "600"), ("WORKER_IGNORE_TERM", "1")]);
    let lora = LoraId::new();
    let launched = backend.launch(&launch(lora, 1)).await.unwrap();
    let i = instance(&launched.provider_id, lora);
    let env = db
        .dir
        .path()
        .join("runs")
        .join(lora.to_string())
        .join("attempt-1/env.txt");
    wait_for("the worker to be ready", || async { env.exists() }).await;
    let asked = Instant::now();
    assert!(!backend.terminate(&i, Ending::Stop).await.unwrap().gone);
    let end = ended(&backend, &i).await;
    assert!(
        asked.elapsed() >= Duration::from_secs(3),
        "SIGKILL only after the 3 s grace: {end:?} after {:?}",
        asked.elapsed()
    );
    assert!(
        matches!(
            end,
            Observed::Ended {
                outcome: "killed",
                ..
            }
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn the_backend_holds_no_more_runs_than_its_slots() {
    let db = Db::sqlite().await;
    let backend = db.local(1, LONG_RUN);
    backend.launch(&launch(LoraId::new(), 1)).await.unwrap();
    let err = backend.launch(&launch(LoraId::new(), 1)).await.unwrap_err();
    assert!(err.is_capacity(), "{err}");
}

/// `serve` restarted (same host, same data dir): the new engine's backend does not have the old
/// workers as children, but finds them by process id and start time, watches them, and ends them.
#[tokio::test]
async fn a_restarted_engine_finds_and_ends_the_workers_of_its_predecessor() {
    let db = Db::sqlite().await;
    let lora = LoraId::new();
    // A worker started by "the previous serve": its own process group, not our child any more.
    let out = db.dir.path().join("old");
    let mut child = std::process::Command::new(worker_process())
        .args(["--out", out.to_str().unwrap()])
        .env("WORKER_SECONDS", "600")
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
    let reaper = std::thread::spawn(move || child.wait());
    let i = instance(&format!("local:{pid}:{start}"), lora);

    let backend = db.local(1, &[]);
    assert_eq!(observe(&backend, &i).await, Observed::Running);
    assert!(!backend.terminate(&i, Ending::Stop).await.unwrap().gone);
    reaper.join().unwrap().unwrap();
    assert!(backend.terminate(&i, Ending::Stop).await.unwrap().gone);
    // A process that is gone (or whose pid now names another process) is gone.
    let end = observe(&backend, &i).await;
    assert!(
        matches!(
            end,
            Observed::Ended {
                outcome: "lost",
                gone: true,
                ..
            }
        ),
        "{end:?}"
    );
    let me = instance(&format!("local:{}:1", std::process::id()), lora);
    assert!(matches!(
        observe(&backend, &me).await,
        Observed::Ended {
            outcome: "lost",
            ..
        }
    ));
}

#[tokio::test]
async fn the_engine_runs_a_job_on_the_local_backend_and_releases_its_folder() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Local", 0).await;
    let backend = db.local(1, &[("WORKER_CODE", "bad_spec"), ("WORKER_EXIT", "2")]);
    let engine = db.engine(
        vec![backend.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    engine.tick().await.unwrap();
    let folder = db.dir.path().join("runs").join(id.to_string());
    assert!(folder.join("attempt-1").exists());
    // The worker could not report over the API (there is none here): its exit is the outcome.
    tick_until(&engine, "the job to fail", async |_| {
        db.status(id).await == TrainingStatus::Failed
    })
    .await;
    assert_eq!(
        db.get(id).await.error.as_deref(),
        Some("the training job is invalid: the fixture failed with bad_spec")
    );
    let run = db.run(id).await;
    assert!(run.instance_gone_at.is_some());
    assert!(
        !folder.exists(),
        "the job folder is released once the job is over"
    );
}

#[tokio::test]
async fn a_cancel_stops_a_local_worker_within_its_grace() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Cancelled", 0).await;
    let backend = db.local(1, LONG_RUN);
    let engine = db.engine(
        vec![backend.clone() as Arc<dyn TrainingBackend>],
        EngineSettings { ..settings("e1") },
    );
    engine.tick().await.unwrap();
    let pid = LocalBackend::pid(&db.run(id).await.provider_id).unwrap();
    db.repo
        .apply_event(
            id,
            loraforge_domain::StatusEvent::Cancel,
            loraforge_db::EventDetail::default(),
            db.now(),
        )
        .await
        .unwrap();
    let asked = Instant::now();
    tick_until(&engine, "the instance to be gone", async |_| {
        db.run(id).await.instance_gone_at.is_some()
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(!process_alive(pid));
    assert_eq!(db.run(id).await.outcome.as_deref(), Some("cancelled"));
}

/// The engine stopped with `serve` (kill -9): the next engine on the host sees the run's worker
/// gone, and requeues the job without using one of its attempts.
#[tokio::test]
async fn a_run_lost_in_a_restart_is_requeued_without_using_an_attempt() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Survivor", 0).await;
    {
        let backend = db.local(1, LONG_RUN);
        let engine = db.engine(
            vec![backend.clone() as Arc<dyn TrainingBackend>],
            settings("host-1"),
        );
        engine.tick().await.unwrap();
        // Dropping the backend kills its workers, as the death of `serve` does (they stop
        // themselves when their parent dies).
    }
    let backend = db.local(1, LONG_RUN);
    let engine = db.engine(
        vec![backend.clone() as Arc<dyn TrainingBackend>],
        settings("host-1"),
    );
    let reports = tick_until(&engine, "the job to run again", async |r| {
        r.iter().any(|r| !r.started.is_empty())
    })
    .await;
    assert!(reports.iter().any(|r| r.requeued == [id]), "{reports:?}");
    let runs = db.runs(id).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("lost"));
    assert_eq!(runs.len(), 2);
    let open = db.open().await;
    assert_eq!(
        open[0].job_failures, 0,
        "a crash of the control plane is not the job's fault"
    );
}

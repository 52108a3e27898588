//! After a restart no job stays `training` forever: runs the backend still has are re-attached,
//! runs it lost are requeued at once (same host) or when their lease ends (another host).

use std::sync::Arc;
use std::time::Duration;

use loraforge_domain::TrainingStatus;
use loraforge_engine::{RunId, TrainingBackend};

use crate::helpers::*;

#[tokio::test]
async fn a_restarted_engine_requeues_the_runs_its_backend_lost() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Interrupted", 0).await;
    let local = db.local(1, LONG_RUN);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("host-1"));
    assert_eq!(engine.tick().await.unwrap().started, [id]);
    let old = db.repo.live_runs().await.unwrap().pop().unwrap();
    let pid = local.pid(&RunId(old.run_id.clone())).unwrap();

    // The process goes away: engine and backend dropped, and with them the child.
    drop(engine);
    drop(local);
    wait_for("the orphaned worker to be killed", || async { !process_alive(pid) }).await;
    assert_eq!(db.status(id).await, TrainingStatus::Training);

    // A new process on the same host, same database: its first tick finds the run gone,
    // requeues the job, and starts it again as attempt 2.
    let local = db.local(1, LONG_RUN);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("host-1"));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.requeued, [id]);
    assert_eq!(report.started, [id]);
    let new = db.repo.live_runs().await.unwrap().pop().unwrap();
    assert_eq!((new.lora_id, new.attempt, new.status), (id, 2, TrainingStatus::Training));
    assert_ne!(new.run_id, old.run_id);
    assert!(local.pid(&RunId(new.run_id)).is_some_and(process_alive));
    let requeue = db.repo.events_after(id, 0, 100).await.unwrap().into_iter().find(|e| e.data["event"] == "requeue");
    let why = requeue.expect("a requeue event").data["error"].as_str().unwrap().to_owned();
    assert!(why.starts_with("the run was lost"), "{why}");
}

#[tokio::test]
async fn a_restarted_engine_reattaches_to_runs_its_backend_still_has() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Still running", 0).await;
    // The backend outlives the engine (as a remote backend's runs outlive the control plane).
    let local = db.local(1, LONG_RUN);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("host-1"));
    engine.tick().await.unwrap();
    drop(engine);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("host-1"));
    db.advance(Duration::from_secs(60));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.watched, [id]);
    assert!(report.requeued.is_empty() && report.started.is_empty(), "{report:?}");
    // Its lease was extended from the new "now", so the reaper will not take it.
    let run = db.repo.live_runs().await.unwrap().pop().unwrap();
    assert_eq!(run.lease_until, Some(db.now() + chrono::Duration::minutes(5)));
    assert_eq!(db.status(id).await, TrainingStatus::Training);
}

#[tokio::test]
async fn a_job_of_a_host_that_never_came_back_is_taken_over_after_its_lease() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Orphan", 0).await;
    let local = db.local(1, LONG_RUN);
    let engine = db.engine(vec![local.clone() as Arc<dyn TrainingBackend>], settings("host-1"));
    engine.tick().await.unwrap();
    drop(engine);
    drop(local);

    // Another host: the run is not its own, so it leaves it to its lease.
    let other = db.local(1, LONG_RUN);
    let engine = db.engine(vec![other.clone() as Arc<dyn TrainingBackend>], settings("host-2"));
    let first = engine.tick().await.unwrap();
    assert!(first.requeued.is_empty() && first.started.is_empty(), "{first:?}");
    assert_eq!(db.status(id).await, TrainingStatus::Training);
    db.advance(Duration::from_secs(5 * 60 + 1));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.requeued, [id]);
    assert_eq!(report.started, [id]);
    let run = db.repo.live_runs().await.unwrap().pop().unwrap();
    assert_eq!((run.worker.as_deref(), run.attempt), (Some("host-2"), 2));
}

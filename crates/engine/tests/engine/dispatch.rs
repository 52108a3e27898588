//! Admission and dispatch: pending → queued, FIFO, per-user concurrency, backend limits, replicas
//! racing.

use std::collections::HashSet;
use std::sync::Arc;

use loraforge_db::EventDetail;
use loraforge_domain::{StatusEvent, TrainingStatus};
use loraforge_engine::TrainingBackend;

use crate::helpers::*;

#[tokio::test]
async fn pending_loras_are_queued_oldest_first_on_tick() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let later = db.lora(u, "Later", 20).await;
    let first = db.lora(u, "First", 10).await;
    let engine = db.engine(Vec::new(), settings("e1"));

    let report = engine.tick().await.unwrap();
    assert_eq!(report.admitted, [first, later]);
    for id in [first, later] {
        assert_eq!(db.status(id).await, TrainingStatus::Queued);
    }
    // Nothing left to admit; with no backend nothing is dispatched.
    let again = engine.tick().await.unwrap();
    assert!(
        again.admitted.is_empty() && again.started.is_empty(),
        "{again:?}"
    );
    let last = db
        .repo
        .events_after(first, 0, 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.data["event"], "enqueue");
}

#[tokio::test]
async fn dispatch_is_fifo_and_a_users_third_job_waits_for_a_slot() {
    let db = Db::sqlite().await;
    let (a, b) = (db.user().await, db.user().await);
    let a1 = db.lora(a, "A1", 1).await;
    let a2 = db.lora(a, "A2", 2).await;
    let a3 = db.lora(a, "A3", 3).await;
    let b1 = db.lora(b, "B1", 4).await;
    let pods = Scripted::new("pods", 4);
    let engine = db.engine(
        vec![pods.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );

    let first = engine.tick().await.unwrap();
    assert_eq!(first.admitted, [a1, a2, a3, b1]);
    // Oldest first, but A may only have 2 at once: A3 is skipped for B1.
    let mut started = first.started.clone();
    started.sort();
    let mut expected = vec![a1, a2, b1];
    expected.sort();
    assert_eq!(started, expected);
    assert_eq!(db.status(a3).await, TrainingStatus::Queued);
    assert_eq!(pods.live(), 3);
    let again = engine.tick().await.unwrap();
    assert!(again.started.is_empty(), "A3 must wait: {again:?}");

    // One of A's jobs ends (its owner cancels it): the next tick ends its instance and starts A3.
    db.repo
        .apply_event(a1, StatusEvent::Cancel, EventDetail::default(), db.now())
        .await
        .unwrap();
    let next = engine.tick().await.unwrap();
    assert_eq!(next.gone, [a1], "{next:?}");
    assert_eq!(next.started, [a3]);
    assert_eq!(db.status(a3).await, TrainingStatus::Training);
    assert_eq!(db.run(a1).await.outcome.as_deref(), Some("cancelled"));
    assert_eq!(
        pods.terminates(),
        [("pods-1".to_owned(), loraforge_engine::Ending::Stop)]
    );
}

#[tokio::test]
async fn a_backend_never_holds_more_runs_than_its_limit_and_the_next_one_takes_the_rest() {
    let db = Db::sqlite().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let u = db.user().await;
        ids.push(db.lora(u, &format!("Job {i}"), i).await);
    }
    let (first, second) = (Scripted::new("first", 2), Scripted::new("second", 2));
    let engine = db.engine(
        vec![first.clone() as Arc<dyn TrainingBackend>, second.clone()],
        settings("e1"),
    );
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started.len(), 4, "{report:?}");
    assert_eq!((first.live(), second.live()), (2, 2));
    assert_eq!(db.status(ids[4]).await, TrainingStatus::Queued);
    // A finished run frees its slot once its instance is gone.
    db.report_failure(ids[0], "non_finite_loss", "non-finite loss at step 3")
        .await;
    let next = engine.tick().await.unwrap();
    assert_eq!(next.failed, [ids[0]]);
    assert_eq!(next.started, [ids[4]], "{next:?}");
    assert_eq!(first.launches(), 3);
}

/// Two replicas (engines with different worker ids and their own local backends) tick at the
/// same time on one database: every job runs exactly once.
async fn replicas_never_start_a_job_twice(db: Db) {
    let mut ids = Vec::new();
    for i in 0..6 {
        let u = db.user().await;
        ids.push(db.lora(u, &format!("Job {i}"), i).await);
    }
    // A shared backend's limit is for all replicas together: room for all six.
    let (la, lb) = (Scripted::new("pods", 8), Scripted::new("pods", 8));
    let ea = db.engine(
        vec![la.clone() as Arc<dyn TrainingBackend>],
        settings("replica-a"),
    );
    let eb = db.engine(
        vec![lb.clone() as Arc<dyn TrainingBackend>],
        settings("replica-b"),
    );
    // Both admit and both claim at once (admission races too: each LoRA is enqueued once).
    let (ra, rb) = tokio::join!(ea.tick(), eb.tick());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut admitted = ra.admitted.clone();
    admitted.extend(&rb.admitted);
    assert_eq!(
        admitted.iter().collect::<HashSet<_>>().len(),
        admitted.len(),
        "a LoRA admitted twice"
    );
    // Whatever was admitted by the time the claims ran got claimed once; a second round
    // dispatches the rest.
    let (ra2, rb2) = tokio::join!(ea.tick(), eb.tick());
    let mut started: Vec<_> = [
        ra.started,
        rb.started,
        ra2.unwrap().started,
        rb2.unwrap().started,
    ]
    .concat();
    started.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(started, expected, "every job started exactly once");
    let runs = db.open().await;
    assert_eq!(runs.len(), 6);
    for r in &runs {
        assert_eq!(r.job_status, TrainingStatus::Training);
        assert_eq!(r.run.attempt, 1);
        assert!(r.current);
    }
    assert_eq!(
        la.launches() + lb.launches(),
        6,
        "six instances across both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_replicas_never_start_a_job_twice() {
    replicas_never_start_a_job_twice(Db::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_never_start_a_job_twice() {
    replicas_never_start_a_job_twice(Db::postgres().await).await;
}

#[tokio::test]
async fn run_ticks_until_shutdown() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "In the background", 0).await;
    let settings = loraforge_engine::EngineSettings {
        poll_interval: std::time::Duration::from_millis(20),
        ..settings("e1")
    };
    let engine = db.engine(Vec::new(), settings);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async {
        let _ = stopped.await;
    }));
    wait_for("the loop to admit the LoRA", || async {
        db.status(id).await == TrainingStatus::Queued
    })
    .await;
    stop.send(()).expect("the loop is running");
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the loop stops on shutdown")
        .expect("no panic");
}

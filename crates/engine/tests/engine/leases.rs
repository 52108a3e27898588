//! The reaper: a job whose worker stops reporting is requeued, and failed after its attempts.

use std::time::Duration;

use chrono::Duration as Span;

use loraforge_domain::TrainingStatus;

use crate::helpers::*;

/// A worker elsewhere (not this engine's) claims the job and vanishes, three times over.
async fn lease_expiry_requeues_then_fails(db: Db) {
    let u = db.user().await;
    let id = db.lora(u, "Abandoned", 0).await;
    // An engine with no backend of its own: it only admits and reaps.
    let engine = db.engine(Vec::new(), settings("reaper"));
    assert_eq!(engine.tick().await.unwrap().admitted, [id]);

    for attempt in 1..=3u32 {
        let lease_until = db.now() + Span::minutes(5);
        let job = db.repo.claim_next_job("gone-worker", 2, lease_until, db.now()).await.unwrap().expect("claimed");
        assert_eq!(job.attempt, attempt);
        // Before the lease ends nothing happens.
        db.advance(Duration::from_secs(4 * 60));
        let quiet = engine.tick().await.unwrap();
        assert!(quiet.requeued.is_empty() && quiet.failed.is_empty(), "{quiet:?}");
        assert_eq!(db.status(id).await, TrainingStatus::Training);

        db.advance(Duration::from_secs(2 * 60));
        let report = engine.tick().await.unwrap();
        let lora = db.get(id).await;
        let expected_why =
            format!("the worker stopped reporting (lease expired at {})", lease_until.format("%Y-%m-%d %H:%M:%S UTC"));
        if attempt < 3 {
            assert_eq!(report.requeued, [id], "attempt {attempt}");
            assert_eq!(lora.status, TrainingStatus::Queued);
            assert_eq!(lora.error.as_deref(), Some(expected_why.as_str()));
        } else {
            assert_eq!(report.failed, [id]);
            assert_eq!(lora.status, TrainingStatus::Failed);
            assert_eq!(lora.error, Some(format!("{expected_why}; not retried after 3 attempts")));
        }
    }
    // Failed is final: later ticks leave it alone.
    db.advance(Duration::from_secs(3600));
    let after = engine.tick().await.unwrap();
    assert!(after.requeued.is_empty() && after.failed.is_empty());
}

#[tokio::test]
async fn sqlite_lease_expiry_requeues_then_fails_after_three_attempts() {
    lease_expiry_requeues_then_fails(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_lease_expiry_requeues_then_fails_after_three_attempts() {
    lease_expiry_requeues_then_fails(Db::postgres().await).await;
}

/// A live worker's heartbeats keep its lease, even when the reaper runs on several replicas
/// at once; the reaper only takes a job whose heartbeats stopped, and only once.
async fn heartbeats_keep_the_lease_and_reapers_race_safely(db: Db) {
    let u = db.user().await;
    let alive = db.lora(u, "Alive", 0).await;
    let u2 = db.user().await;
    let dead = db.lora(u2, "Dead", 1).await;
    let reapers: Vec<_> = (0..3).map(|i| db.engine(Vec::new(), settings(&format!("reaper-{i}")))).collect();
    reapers[0].tick().await.unwrap();
    for who in ["live-worker", "dead-worker"] {
        db.repo.claim_next_job(who, 2, db.now() + Span::minutes(5), db.now()).await.unwrap().unwrap();
    }
    for _ in 0..3 {
        db.advance(Duration::from_secs(4 * 60));
        assert!(db.repo.heartbeat(alive, "live-worker", db.now() + Span::minutes(5), db.now()).await.unwrap());
    }
    // The dead worker's lease ended long ago; three reapers find it at once.
    let (r0, r1, r2) = tokio::join!(reapers[0].tick(), reapers[1].tick(), reapers[2].tick());
    let requeued: Vec<_> = [r0.unwrap(), r1.unwrap(), r2.unwrap()].into_iter().flat_map(|r| r.requeued).collect();
    assert_eq!(requeued, [dead], "requeued exactly once");
    assert_eq!(db.status(dead).await, TrainingStatus::Queued);
    assert_eq!(db.status(alive).await, TrainingStatus::Training);
    let requeues =
        db.repo.events_after(dead, 0, 100).await.unwrap().into_iter().filter(|e| e.data["event"] == "requeue");
    assert_eq!(requeues.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_heartbeats_keep_the_lease_and_reapers_race_safely() {
    heartbeats_keep_the_lease_and_reapers_race_safely(Db::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_heartbeats_keep_the_lease_and_reapers_race_safely() {
    heartbeats_keep_the_lease_and_reapers_race_safely(Db::postgres().await).await;
}

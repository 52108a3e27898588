//! The circuit breaker and the router on a `ManualClock`: provider-side launch failures move a
//! job to the next backend at once; 3 within 10 min open the failing backend's breaker, which the
//! router then skips (no calls to it); after 30 min one probe is let through (a second replica
//! does not get one); its accepted launch closes the breaker, its failure opens it again. With
//! every backend open, LoRAs wait queued saying why and when the next probe is.

use std::sync::Arc;
use std::time::Duration;

use loraforge_domain::TrainingStatus;
use loraforge_domain::breaker::BreakerState;
use loraforge_engine::{BackendError, Observed, TrainingBackend};

use crate::helpers::*;

fn down() -> BackendError {
    BackendError::Transient("connection refused".into())
}

fn states(report: &loraforge_engine::TickReport) -> Vec<(BreakerState, BreakerState)> {
    report
        .breaker_transitions
        .iter()
        .map(|t| (t.from, t.to))
        .collect()
}

async fn the_whole_cycle(db: Db) {
    use BreakerState::{Closed, HalfOpen, Open};
    let primary = Scripted::new("runpod", 10);
    let fallback = Scripted::new("local", 10);
    let backends = || {
        vec![
            primary.clone() as Arc<dyn TrainingBackend>,
            fallback.clone() as Arc<dyn TrainingBackend>,
        ]
    };
    let mut s1 = settings("e1");
    s1.max_active_per_user = 50;
    let engine = db.engine(backends(), s1.clone());
    let mut s2 = s1.clone();
    s2.worker_id = "e2".into();
    let replica = db.engine(backends(), s2);
    let u = db.user().await;

    // Three jobs, each failing on the primary first: each goes to the fallback on the next tick
    // (no waiting on the dead one), and the third failure opens the primary's breaker.
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(db.lora(u, &format!("Job {i}"), i).await);
        primary.fail_next_launch(down());
    }
    let first = engine.tick().await.unwrap();
    assert_eq!(first.start_retries.len(), 3, "{first:?}");
    assert_eq!(states(&first), [(Closed, Open)]);
    db.advance(Duration::from_secs(1));
    let second = engine.tick().await.unwrap();
    assert_eq!(second.started.len(), 3, "{second:?}");
    for id in &jobs {
        let run = db.run(*id).await;
        assert_eq!(run.backend, "local");
        let why = run.route_reason.unwrap_or_default();
        assert!(why.starts_with("local; fallback after runpod: "), "{why}");
    }
    assert_eq!(primary.launch_calls(), 3);

    // Open: new jobs go to the fallback without a call to the primary.
    let next = db.lora(u, "While open", 10).await;
    db.advance(Duration::from_secs(60));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started, [next]);
    let why = db.run(next).await.route_reason.unwrap_or_default();
    assert!(
        why.contains("runpod: circuit breaker open; next probe at 10:30:00 UTC"),
        "{why}"
    );
    assert_eq!(
        primary.launch_calls(),
        3,
        "no call to the primary while open"
    );

    // 30 min after opening: one probe, whose accepted launch closes the breaker; the replica
    // then finds it closed.
    db.advance(Duration::from_secs(29 * 60));
    let probe_job = db.lora(u, "Probe", 20).await;
    let fallback_before = fallback.launches();
    let report = engine.tick().await.unwrap();
    assert_eq!(
        states(&report),
        [(Open, HalfOpen), (HalfOpen, Closed)],
        "{report:?}"
    );
    assert_eq!(report.started, [probe_job]);
    let probe_run = db.run(probe_job).await;
    assert_eq!(probe_run.backend, "runpod");
    assert!(probe_run.route_reason.unwrap_or_default().contains("probe"));
    let replica_job = db.lora(u, "Replica", 21).await;
    let report = replica.tick().await.unwrap();
    assert_eq!(report.started, [replica_job]);
    assert_eq!(
        db.run(replica_job).await.route_reason.as_deref(),
        Some("runpod: first in order"),
        "closed again"
    );
    assert_eq!(fallback.launches(), fallback_before);

    // Open it again, then a failing probe reopens it for another 30 min; two replicas racing for
    // the probe make one probe in all.
    for i in 0..3 {
        db.lora(u, &format!("Again {i}"), 30 + i).await;
        primary.fail_next_launch(down());
    }
    db.advance(Duration::from_secs(1));
    let report = engine.tick().await.unwrap();
    assert_eq!(states(&report), [(Closed, Open)]);
    let opened_at = db.now();
    db.advance(Duration::from_secs(1));
    let report = engine.tick().await.unwrap();
    assert_eq!(
        report.started.len(),
        3,
        "the retries go to the fallback: {report:?}"
    );
    db.advance(Duration::from_secs(30 * 60));
    let probe_2 = db.lora(u, "Probe 2", 40).await;
    let probe_3 = db.lora(u, "Probe 3", 41).await;
    primary.fail_next_launch(down());
    let racing = futures::future::join(engine.tick(), replica.tick()).await;
    let (a, b) = (racing.0.unwrap(), racing.1.unwrap());
    let mut all = states(&a);
    all.extend(states(&b));
    assert_eq!(
        all,
        [(Open, HalfOpen), (HalfOpen, Open)],
        "one probe in all: {a:?} {b:?}"
    );
    assert_eq!(
        primary.fail_pending(),
        0,
        "the probe called the primary once"
    );
    let stored = db
        .repo
        .breakers(&Default::default(), db.now())
        .await
        .unwrap();
    let runpod = stored
        .iter()
        .find(|s| s.breaker.backend == "runpod")
        .unwrap();
    assert_eq!(runpod.breaker.state, Open);
    assert!(
        runpod.breaker.opened_at.unwrap() > opened_at,
        "a new 30 min"
    );
    // The failed probe's job goes on on the fallback.
    db.advance(Duration::from_secs(1));
    engine.tick().await.unwrap();
    replica.tick().await.unwrap();
    for id in [probe_2, probe_3] {
        assert_eq!(db.run(id).await.backend, "local");
    }

    // Every transition the ticks reported is in the table, in order.
    let table = db
        .repo
        .breaker_transitions(Some("runpod"), 100)
        .await
        .unwrap();
    assert_eq!(
        table
            .iter()
            .rev()
            .map(|t| (t.from, t.to))
            .collect::<Vec<_>>(),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed),
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_the_breakers_whole_cycle() {
    the_whole_cycle(Db::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_breakers_whole_cycle() {
    the_whole_cycle(Db::postgres().await).await;
}

#[tokio::test]
async fn with_every_backend_open_loras_wait_queued_saying_when_the_next_probe_is() {
    let db = Db::sqlite().await;
    let only = Scripted::new("runpod", 10);
    let engine = db.engine(
        vec![only.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    let u = db.user().await;
    let id = db.lora(u, "Waits", 1).await;
    for _ in 0..3 {
        only.fail_next_launch(BackendError::NoCapacity("no GPU".into()));
    }
    // No capacity three times (60 s apart): the breaker opens.
    for _ in 0..3 {
        engine.tick().await.unwrap();
        db.advance(Duration::from_secs(61));
    }
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Queued);
    let message = lora.status_message.unwrap_or_default();
    assert!(
        message.contains("runpod: circuit breaker open; next probe at 10:32:02 UTC"),
        "{message}"
    );
    let calls = only.launch_calls();
    for _ in 0..10 {
        db.advance(Duration::from_secs(60));
        let report = engine.tick().await.unwrap();
        assert!(report.started.is_empty(), "{report:?}");
    }
    assert_eq!(only.launch_calls(), calls, "no calls while open");
    // The probe is due: the LoRA trains.
    db.advance(Duration::from_secs(20 * 60));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started, [id], "{report:?}");
}

#[tokio::test]
async fn a_diverged_job_or_bad_input_never_trips_the_breaker_but_vanished_instances_do() {
    let db = Db::sqlite().await;
    let pods = Scripted::new("runpod", 10);
    let mut s = settings("e1");
    s.max_active_per_user = 10;
    let engine = db.engine(vec![pods.clone() as Arc<dyn TrainingBackend>], s);
    let u = db.user().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(db.lora(u, &format!("J{i}"), i).await);
    }
    engine.tick().await.unwrap();
    db.report_failure(ids[0], "non_finite_loss", "loss is NaN")
        .await;
    db.report_failure(ids[1], "bad_input", "no images").await;
    db.report_failure(ids[2], "validation_failed", "no samples")
        .await;
    let report = engine.tick().await.unwrap();
    assert!(report.breaker_transitions.is_empty(), "{report:?}");
    for id in &ids[3..6] {
        pods.set(
            *id,
            Observed::Ended {
                outcome: "vanished",
                reason: Some("the pod is gone".into()),
                gone: true,
            },
        );
    }
    let report = engine.tick().await.unwrap();
    assert_eq!(
        states(&report),
        [(BreakerState::Closed, BreakerState::Open)],
        "{report:?}"
    );
    let stored = db
        .repo
        .breakers(&Default::default(), db.now())
        .await
        .unwrap();
    assert_eq!(stored[0].failures_in_window, 3);
}

/// A 429 on a launch says "slow down", not "broken": it never counts toward the breaker. The job
/// goes back to the queue (no attempt used) saying so, goes to the next backend meanwhile if
/// one can take it, and the throttled backend is asked again once its `Retry-After` has passed.
#[tokio::test]
async fn a_throttled_launch_waits_as_asked_and_never_trips_the_breaker() {
    let db = Db::sqlite().await;
    let replicate = Scripted::new("replicate", 10);
    let engine = db.engine(
        vec![replicate.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    let u = db.user().await;
    let id = db.lora(u, "Throttled", 1).await;
    let throttled = || BackendError::Throttled {
        message: "creating a Replicate training: Replicate rate limit hit (HTTP 429)".into(),
        retry_after: Some(Duration::from_secs(20)),
    };
    for _ in 0..5 {
        replicate.fail_next_launch(throttled());
    }
    let report = engine.tick().await.unwrap();
    assert_eq!(report.waiting, [id], "{report:?}");
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Queued);
    let message = lora.status_message.unwrap_or_default();
    assert!(
        message.starts_with("waiting: replicate asked us to slow down")
            && message.ends_with("trying again from 10:00:20 UTC"),
        "{message}"
    );
    // Left alone until then: no call.
    db.advance(Duration::from_secs(19));
    engine.tick().await.unwrap();
    assert_eq!(replicate.launch_calls(), 1);
    // Asked again every 20 s, four more 429s: still closed, no transition, no attempt used.
    for _ in 0..4 {
        db.advance(Duration::from_secs(2));
        let report = engine.tick().await.unwrap();
        assert!(report.breaker_transitions.is_empty(), "{report:?}");
        db.advance(Duration::from_secs(18));
    }
    assert_eq!(replicate.launch_calls(), 5);
    assert_eq!(replicate.fail_pending(), 0);
    let stored = db
        .repo
        .breakers(&Default::default(), db.now())
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|b| b.failures_in_window == 0 && b.breaker.state == BreakerState::Closed),
        "{stored:?}"
    );
    db.advance(Duration::from_secs(2));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started, [id], "{report:?}");
    assert_eq!(db.run(id).await.attempt, 1, "no attempt was used");

    // With a second backend the job does not wait: it goes there while the first cools down.
    let db = Db::sqlite().await;
    let first = Scripted::new("replicate", 10);
    let second = Scripted::new("docker", 10);
    let engine = db.engine(
        vec![
            first.clone() as Arc<dyn TrainingBackend>,
            second.clone() as Arc<dyn TrainingBackend>,
        ],
        settings("e1"),
    );
    let u = db.user().await;
    let id = db.lora(u, "Elsewhere", 1).await;
    first.fail_next_launch(throttled());
    engine.tick().await.unwrap();
    db.advance(Duration::from_secs(1));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started, [id], "{report:?}");
    let run = db.run(id).await;
    assert_eq!(run.backend, "docker");
    assert!(
        run.route_reason
            .as_deref()
            .is_some_and(|r| r
                .contains("replicate: asked us to slow down (429); asked again from 10:00:20 UTC")),
        "{run:?}"
    );
}

//! The operators' aggregates behind `/metrics` (`MetricsStore::ops_snapshot`).

use chrono::Duration;

use loraforge_db::{NewRun, OpsSnapshot, RunTotals};
use loraforge_domain::breaker::{BreakerEvent, BreakerRules, BreakerState};
use loraforge_domain::{LoraId, MicroUsd, RunId, StatusEvent, TrainingStatus};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

async fn lora(repo: &Repo, name: &str, created: i64, enqueue: bool) -> LoraId {
    let (owner, ds) = user(repo).await;
    let l = create(repo, new_lora(owner, ds, name, t(created))).await;
    if enqueue {
        apply(repo, l.id, StatusEvent::Enqueue, t(created))
            .await
            .unwrap();
    }
    l.id
}

fn run(lora: LoraId, backend: &str, engine: &str, at: i64) -> NewRun {
    NewRun {
        id: RunId::new(),
        lora_id: lora,
        attempt: 1,
        backend: backend.into(),
        route_reason: None,
        engine: engine.into(),
        instance_name: format!("loraforge-{lora}-1"),
        provider_id: format!("{backend}-{lora}"),
        gpu_type: None,
        price_per_hour: Some(MicroUsd(790_000)),
        created_at: t(at),
        started_at: t(at) + Duration::seconds(2),
    }
}

pub async fn the_snapshot_counts_statuses_queue_runs_breakers_and_alerts(repo: Repo) {
    assert_eq!(repo.ops_snapshot().await.unwrap(), OpsSnapshot::default());

    let first = lora(&repo, "Metrics A", 0, true).await;
    let second = lora(&repo, "Metrics B", 1, true).await;
    lora(&repo, "Metrics C", 2, true).await;
    lora(&repo, "Metrics D", 3, false).await;
    // FIFO: the two oldest are claimed (training), "Metrics C" waits queued since t(2).
    for worker in ["w1", "w2"] {
        repo.claim_next_job(worker, 9, t(30), t(4))
            .await
            .unwrap()
            .expect("claimed");
    }
    let run_a = repo
        .insert_run(&run(first, "runpod", "w1", 4))
        .await
        .unwrap();
    repo.insert_run(&run(second, "docker", "w2", 4))
        .await
        .unwrap();
    // Run A ends 10 min after it was created (its start was 2 s later): 598 s.
    assert!(
        repo.record_run_outcome(run_a.id, "upload_failed", Some("HTTP 503"), None, t(14))
            .await
            .unwrap()
    );
    assert!(
        repo.record_instance_gone(run_a.id, MicroUsd(1), t(15))
            .await
            .unwrap()
    );
    for (i, at) in [5, 6, 7].into_iter().enumerate() {
        let failure = BreakerEvent::Failure {
            key: format!("k{i}"),
            reason: "503".into(),
        };
        repo.step_breaker("runpod", &failure, &BreakerRules::default(), t(at))
            .await
            .unwrap();
    }
    repo.record_alert("instance_not_ended", "run 1", "it would not end", t(8))
        .await
        .unwrap();
    repo.record_alert("instance_not_ended", "run 2", "it would not end", t(9))
        .await
        .unwrap();
    repo.record_alert("orphan", "pod x", "nobody wants it", t(9))
        .await
        .unwrap();

    let snap = repo.ops_snapshot().await.unwrap();
    let mut statuses = snap.loras_by_status.clone();
    statuses.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        statuses,
        [
            (TrainingStatus::Pending, 1),
            (TrainingStatus::Queued, 1),
            (TrainingStatus::Training, 2)
        ]
    );
    assert_eq!(snap.oldest_queued_created_at, Some(t(2)));
    assert_eq!(
        snap.ended_runs,
        [RunTotals {
            backend: "runpod".into(),
            outcome: "upload_failed".into(),
            runs: 1,
            seconds: 598,
        }]
    );
    assert_eq!(snap.live_runs, [("docker".to_owned(), 1)]);
    assert_eq!(snap.breakers, [("runpod".to_owned(), BreakerState::Open)]);
    assert_eq!(
        snap.alerts_by_kind,
        [
            ("instance_not_ended".to_owned(), 2),
            ("orphan".to_owned(), 1)
        ]
    );
}

pub async fn seeded_runs_are_ended_for_finished_loras_and_live_for_training_ones(repo: Repo) {
    loraforge_db::seed::seed_library(repo.as_ref(), 300, 7, 3)
        .await
        .unwrap();
    let before = repo.ops_snapshot().await.unwrap();
    let count = |s: TrainingStatus| {
        before
            .loras_by_status
            .iter()
            .find(|(x, _)| *x == s)
            .map_or(0, |(_, n)| *n)
    };
    let training = count(TrainingStatus::Training);
    assert!(training > 3, "the seed has LoRAs training: {before:?}");
    let seeded = repo.seed_runs(3).await.unwrap();
    assert_eq!(
        (seeded.ended, seeded.live),
        (
            count(TrainingStatus::Completed) + count(TrainingStatus::Failed),
            3
        )
    );
    let after = repo.ops_snapshot().await.unwrap();
    assert_eq!(after.live_runs.iter().map(|(_, n)| n).sum::<u64>(), 3);
    let ended: u64 = after.ended_runs.iter().map(|r| r.runs).sum();
    assert_eq!(ended, seeded.ended);
    for r in &after.ended_runs {
        assert_eq!(r.seconds, r.runs * 1800, "{r:?}");
        assert!(["trained", "non_finite_loss"].contains(&r.outcome.as_str()));
    }
    // Again: no finished LoRA lacks its run; live runs go to training LoRAs still without one.
    let again = repo.seed_runs(3).await.unwrap();
    assert_eq!((again.ended, again.live), (0, 3.min(training - 3)));
}

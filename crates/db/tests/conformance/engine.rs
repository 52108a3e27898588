//! What the job engine keeps in the database: leases and heartbeats, the reaper's and the
//! timeout's scans, backend runs and the start-retry state. Status changes stay in
//! `apply_event`; these methods never change a status.

use chrono::Duration;

use loraforge_db::{DbError, ExpiredLease, JobClaim, LiveRun, RunningJob, StartDue};
use loraforge_domain::{LoraId, StatusEvent, TrainingStatus};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

fn expired(lora_id: LoraId, attempt: u32, lease_until: chrono::DateTime<chrono::Utc>) -> ExpiredLease {
    ExpiredLease { lora_id, attempt, lease_until }
}

/// A queued LoRA of a fresh user, created at `created`.
async fn queued(repo: &Repo, name: &str, created: i64) -> LoraId {
    let (owner, ds) = user(repo).await;
    let l = create(repo, new_lora(owner, ds, name, t(created))).await;
    apply(repo, l.id, StatusEvent::Enqueue, t(created)).await.unwrap();
    l.id
}

pub async fn heartbeat_extends_only_the_holders_lease(repo: Repo) {
    let id = queued(&repo, "Beat", 0).await;
    let job = repo.claim_next_job("w1", 2, t(5), t(1)).await.unwrap().expect("claimed");
    assert_eq!(job.lora.id, id);

    assert!(repo.heartbeat(id, "w1", t(10), t(2)).await.unwrap());
    assert!(!repo.heartbeat(id, "w2", t(60), t(2)).await.unwrap(), "a stranger extended the lease");
    // The lease now ends at t(10): not expired at t(9), expired at t(11).
    assert!(repo.expired_leases(t(9)).await.unwrap().is_empty());
    assert_eq!(repo.expired_leases(t(11)).await.unwrap(), [expired(id, 1, t(10))]);

    // Once requeued the lease is void: its old holder can no longer extend it.
    apply(&repo, id, StatusEvent::Requeue, t(11)).await.unwrap();
    assert!(!repo.heartbeat(id, "w1", t(20), t(12)).await.unwrap());
    assert!(repo.expired_leases(t(100)).await.unwrap().is_empty(), "a queued job has no lease");
    // A final status ends it too.
    let again = repo.claim_next_job("w3", 2, t(20), t(12)).await.unwrap().expect("claimed again");
    assert_eq!((again.lora.id, again.attempt), (id, 2));
    assert!(repo.heartbeat(id, "w3", t(25), t(13)).await.unwrap());
    apply(&repo, id, StatusEvent::Fail, t(14)).await.unwrap();
    assert!(!repo.heartbeat(id, "w3", t(30), t(15)).await.unwrap());
    assert!(repo.expired_leases(t(100)).await.unwrap().is_empty());
    assert!(!repo.heartbeat(LoraId::new(), "w3", t(30), t(15)).await.unwrap());
}

pub async fn concurrent_heartbeats_and_claims_keep_one_holder(repo: Repo) {
    let id = queued(&repo, "Contended", 0).await;
    repo.claim_next_job("w1", 2, t(5), t(1)).await.unwrap().expect("claimed");

    // The holder and a stranger beat at once: every one of the holder's succeeds, none of the
    // stranger's does.
    let beats: Vec<_> = (0..8)
        .map(|i| {
            let repo = repo.clone();
            let worker = if i % 2 == 0 { "w1" } else { "w2" };
            tokio::spawn(async move { (worker, repo.heartbeat(id, worker, t(10 + i), t(2)).await) })
        })
        .collect();
    for b in beats {
        let (worker, got) = b.await.unwrap();
        assert_eq!(got.unwrap(), worker == "w1", "{worker}");
    }

    // The holder keeps beating while the job is requeued and claimed by 4 workers at once: exactly
    // one claim wins, and afterwards only the winner holds the lease.
    apply(&repo, id, StatusEvent::Requeue, t(20)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            repo.claim_next_job(&format!("c{i}"), 2, t(40), t(21)).await.map(|j| j.map(|j| j.worker))
        }));
    }
    let stale: Vec<_> = (0..4)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.heartbeat(id, "w1", t(50), t(21)).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(w) = task.await.unwrap().unwrap() {
            winners.push(w);
        }
    }
    for s in stale {
        assert!(!s.await.unwrap().unwrap(), "the old holder extended a requeued job");
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert!(repo.heartbeat(id, &winners[0], t(45), t(22)).await.unwrap());
    assert!(!repo.heartbeat(id, "w1", t(45), t(22)).await.unwrap());
    // The winner's lease (t(45)) is what the reaper sees.
    assert!(repo.expired_leases(t(44)).await.unwrap().is_empty());
    assert_eq!(repo.expired_leases(t(46)).await.unwrap(), [expired(id, 2, t(45))]);
}

pub async fn expired_leases_and_long_runs_are_found(repo: Repo) {
    let a = queued(&repo, "A", 0).await;
    let b = queued(&repo, "B", 1).await;
    let c = queued(&repo, "C", 2).await;
    let waiting = queued(&repo, "Waiting", 3).await;
    // a starts at t(10) leased to t(15); b at t(12) leased to t(14); c at t(20) leased to t(60).
    assert_eq!(repo.claim_next_job("w", 9, t(15), t(10)).await.unwrap().unwrap().lora.id, a);
    assert_eq!(repo.claim_next_job("w", 9, t(14), t(12)).await.unwrap().unwrap().lora.id, b);
    assert_eq!(repo.claim_next_job("w", 9, t(60), t(20)).await.unwrap().unwrap().lora.id, c);

    assert!(repo.expired_leases(t(13)).await.unwrap().is_empty());
    // Oldest lease first; queued jobs have none.
    assert_eq!(repo.expired_leases(t(16)).await.unwrap(), [expired(b, 1, t(14)), expired(a, 1, t(15))]);
    // Validating jobs are no longer leased by the reaper's rules.
    apply(&repo, b, StatusEvent::BeginValidation, t(16)).await.unwrap();
    assert_eq!(repo.expired_leases(t(16)).await.unwrap(), [expired(a, 1, t(15))]);

    assert!(repo.jobs_running_longer_than(t(10)).await.unwrap().is_empty());
    assert_eq!(
        repo.jobs_running_longer_than(t(11)).await.unwrap(),
        [RunningJob { lora_id: a, started_at: t(10), attempt: 1 }]
    );
    let both = repo.jobs_running_longer_than(t(30)).await.unwrap();
    assert_eq!(both.iter().map(|j| j.lora_id).collect::<Vec<_>>(), [a, c], "validating b is not training");
    // A requeue and a new claim restart the clock of the run.
    apply(&repo, a, StatusEvent::Requeue, t(31)).await.unwrap();
    let again = repo.claim_next_job("w", 9, t(90), t(32)).await.unwrap().unwrap();
    assert_eq!(again.lora.id, a);
    assert_eq!(
        repo.jobs_running_longer_than(t(33)).await.unwrap(),
        [
            RunningJob { lora_id: c, started_at: t(20), attempt: 1 },
            RunningJob { lora_id: a, started_at: t(32), attempt: 2 },
        ]
    );
    assert_eq!(repo.get_lora(waiting).await.unwrap().unwrap().status, TrainingStatus::Queued);
}

pub async fn runs_are_recorded_until_cleared(repo: Repo) {
    let a = queued(&repo, "Run A", 0).await;
    let b = queued(&repo, "Run B", 1).await;
    repo.claim_next_job("w1", 9, t(5), t(2)).await.unwrap().unwrap();
    repo.claim_next_job("w2", 9, t(5), t(2)).await.unwrap().unwrap();
    assert!(repo.live_runs().await.unwrap().is_empty());

    repo.set_run(a, "local", "run-a1").await.unwrap();
    repo.set_run(b, "runpod", "pod-b").await.unwrap();
    let runs = repo.live_runs().await.unwrap();
    assert_eq!(
        runs,
        [
            LiveRun {
                lora_id: a,
                status: TrainingStatus::Training,
                backend: "local".into(),
                run_id: "run-a1".into(),
                worker: Some("w1".into()),
                lease_until: Some(t(5)),
                attempt: 1,
            },
            LiveRun {
                lora_id: b,
                status: TrainingStatus::Training,
                backend: "runpod".into(),
                run_id: "pod-b".into(),
                worker: Some("w2".into()),
                lease_until: Some(t(5)),
                attempt: 1,
            },
        ]
    );

    // A run outlives its job's status: a cancelled job's run is still listed (it must be killed),
    // with the worker that started it even though the lease is gone.
    apply(&repo, a, StatusEvent::Cancel, t(3)).await.unwrap();
    let a_run = repo.live_runs().await.unwrap().into_iter().find(|r| r.lora_id == a).unwrap();
    assert_eq!(
        (a_run.status, a_run.worker.as_deref(), a_run.lease_until),
        (TrainingStatus::Cancelled, Some("w1"), None)
    );

    // Clearing compares the run id, so a newer run is never forgotten by mistake.
    assert!(!repo.clear_run(a, "run-a0").await.unwrap());
    assert!(repo.clear_run(a, "run-a1").await.unwrap());
    assert!(!repo.clear_run(a, "run-a1").await.unwrap());
    assert_eq!(repo.live_runs().await.unwrap().iter().map(|r| r.lora_id).collect::<Vec<_>>(), [b]);

    // A requeued job keeps its run until the engine clears it; a new claim starts with none.
    apply(&repo, b, StatusEvent::Requeue, t(4)).await.unwrap();
    let b_run = repo.live_runs().await.unwrap().pop().unwrap();
    assert_eq!((b_run.status, b_run.worker.as_deref()), (TrainingStatus::Queued, Some("w2")));
    repo.claim_next_job("w3", 9, t(9), t(5)).await.unwrap().unwrap();
    assert!(repo.live_runs().await.unwrap().is_empty());

    let missing = repo.set_run(LoraId::new(), "local", "x").await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");
}

pub async fn pending_ids_are_oldest_first(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let late = create(&repo, new_lora(owner, ds, "Late", t(3))).await;
    let early = create(&repo, new_lora(owner, ds, "Early", t(1))).await;
    let middle = create(&repo, new_lora(owner, ds, "Middle", t(2))).await;
    let gone = create(&repo, new_lora(owner, ds, "Queued already", t(0))).await;
    apply(&repo, gone.id, StatusEvent::Enqueue, t(4)).await.unwrap();
    assert_eq!(repo.pending_ids(10).await.unwrap(), [early.id, middle.id, late.id]);
    assert_eq!(repo.pending_ids(2).await.unwrap(), [early.id, middle.id]);
    apply(&repo, early.id, StatusEvent::Cancel, t(5)).await.unwrap();
    assert_eq!(repo.pending_ids(10).await.unwrap(), [middle.id, late.id]);
}

pub async fn start_failures_wait_for_their_time(repo: Repo) {
    let id = queued(&repo, "Flaky start", 0).await;
    let other = queued(&repo, "Someone else's", 1).await;
    repo.claim_next_job("engine", 9, t(30), t(2)).await.unwrap().unwrap();
    repo.claim_next_job("other-engine", 9, t(30), t(2)).await.unwrap().unwrap();
    // A fresh claim has no start attempt pending (the claimer starts it right away).
    assert!(repo.starts_due("engine", t(100)).await.unwrap().is_empty());

    let at = |s: i64| t(2) + Duration::seconds(s);
    assert_eq!(repo.record_start_failure(id, "pod quota", at(2)).await.unwrap(), 1);
    repo.record_start_failure(other, "pod quota", at(2)).await.unwrap();
    assert!(repo.starts_due("engine", at(1)).await.unwrap().is_empty());
    assert_eq!(
        repo.starts_due("engine", at(2)).await.unwrap(),
        [StartDue { lora_id: id, attempt: 1, start_failures: 1 }]
    );
    assert_eq!(repo.record_start_failure(id, "pod quota", at(6)).await.unwrap(), 2);
    assert!(repo.starts_due("engine", at(5)).await.unwrap().is_empty());
    assert_eq!(repo.starts_due("engine", at(6)).await.unwrap()[0].start_failures, 2);

    // A started run ends the retry state.
    repo.set_run(id, "local", "r1").await.unwrap();
    assert!(repo.starts_due("engine", at(100)).await.unwrap().is_empty());
    // A cancelled job is not started again.
    apply(&repo, other, StatusEvent::Cancel, at(3)).await.unwrap();
    assert!(repo.starts_due("other-engine", at(100)).await.unwrap().is_empty());
    let missing = repo.record_start_failure(LoraId::new(), "x", at(1)).await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");
}

pub async fn job_claim_names_the_holder_and_the_attempt(repo: Repo) {
    let id = queued(&repo, "Claimed", 0).await;
    assert_eq!(repo.job_claim(id).await.unwrap(), Some(JobClaim { worker: None, attempt: 0, lease_until: None }));
    repo.claim_next_job("w1", 2, t(5), t(1)).await.unwrap().expect("claimed");
    assert_eq!(repo.job_claim(id).await.unwrap(), Some(JobClaim { worker: Some("w1".into()), attempt: 1, lease_until: Some(t(5)) }));
    assert!(repo.heartbeat(id, "w1", t(9), t(2)).await.unwrap());
    assert_eq!(repo.job_claim(id).await.unwrap().and_then(|c| c.lease_until), Some(t(9)));
    apply(&repo, id, StatusEvent::Requeue, t(3)).await.unwrap();
    repo.claim_next_job("w2", 2, t(8), t(4)).await.unwrap().expect("claimed again");
    assert_eq!(repo.job_claim(id).await.unwrap(), Some(JobClaim { worker: Some("w2".into()), attempt: 2, lease_until: Some(t(8)) }));
    assert_eq!(repo.job_claim(LoraId::new()).await.unwrap(), None);
}

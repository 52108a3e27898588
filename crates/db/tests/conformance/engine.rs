//! What the job engine keeps in the database: leases and heartbeats, the reaper's and the
//! timeout's scans, runs (recorded, ended, settled, their instances ended) and the start-retry
//! state. Status changes stay in
//! `apply_event`; these methods never change a status.

use chrono::Duration;

use loraforge_db::{
    DbError, ExpiredLease, JobClaim, NewRun, PublishVerdict, RunningJob, Settle, StartDue,
    TrainedFiles,
};
use loraforge_domain::{LoraId, MicroUsd, RunId, StatusEvent, TrainingStatus};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

fn expired(
    lora_id: LoraId,
    attempt: u32,
    lease_until: chrono::DateTime<chrono::Utc>,
) -> ExpiredLease {
    ExpiredLease {
        lora_id,
        attempt,
        lease_until,
    }
}

/// A queued LoRA of a fresh user, created at `created`.
async fn queued(repo: &Repo, name: &str, created: i64) -> LoraId {
    let (owner, ds) = user(repo).await;
    let l = create(repo, new_lora(owner, ds, name, t(created))).await;
    apply(repo, l.id, StatusEvent::Enqueue, t(created))
        .await
        .unwrap();
    l.id
}

pub async fn heartbeat_extends_only_the_holders_lease(repo: Repo) {
    let id = queued(&repo, "Beat", 0).await;
    let job = repo
        .claim_next_job("w1", 2, t(5), t(1))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(job.lora.id, id);

    assert!(repo.heartbeat(id, "w1", t(10), t(2)).await.unwrap());
    assert!(
        !repo.heartbeat(id, "w2", t(60), t(2)).await.unwrap(),
        "a stranger extended the lease"
    );
    // The lease now ends at t(10): not expired at t(9), expired at t(11).
    assert!(repo.expired_leases(t(9)).await.unwrap().is_empty());
    assert_eq!(
        repo.expired_leases(t(11)).await.unwrap(),
        [expired(id, 1, t(10))]
    );

    // Once requeued the lease is void: its old holder can no longer extend it.
    apply(&repo, id, StatusEvent::Requeue, t(11)).await.unwrap();
    assert!(!repo.heartbeat(id, "w1", t(20), t(12)).await.unwrap());
    assert!(
        repo.expired_leases(t(100)).await.unwrap().is_empty(),
        "a queued job has no lease"
    );
    // A final status ends it too.
    let again = repo
        .claim_next_job("w3", 2, t(20), t(12))
        .await
        .unwrap()
        .expect("claimed again");
    assert_eq!((again.lora.id, again.attempt), (id, 2));
    assert!(repo.heartbeat(id, "w3", t(25), t(13)).await.unwrap());
    apply(&repo, id, StatusEvent::Fail, t(14)).await.unwrap();
    assert!(!repo.heartbeat(id, "w3", t(30), t(15)).await.unwrap());
    assert!(repo.expired_leases(t(100)).await.unwrap().is_empty());
    assert!(
        !repo
            .heartbeat(LoraId::new(), "w3", t(30), t(15))
            .await
            .unwrap()
    );
}

pub async fn concurrent_heartbeats_and_claims_keep_one_holder(repo: Repo) {
    let id = queued(&repo, "Contended", 0).await;
    repo.claim_next_job("w1", 2, t(5), t(1))
        .await
        .unwrap()
        .expect("claimed");

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
            repo.claim_next_job(&format!("c{i}"), 2, t(40), t(21))
                .await
                .map(|j| j.map(|j| j.worker))
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
        assert!(
            !s.await.unwrap().unwrap(),
            "the old holder extended a requeued job"
        );
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert!(repo.heartbeat(id, &winners[0], t(45), t(22)).await.unwrap());
    assert!(!repo.heartbeat(id, "w1", t(45), t(22)).await.unwrap());
    // The winner's lease (t(45)) is what the reaper sees.
    assert!(repo.expired_leases(t(44)).await.unwrap().is_empty());
    assert_eq!(
        repo.expired_leases(t(46)).await.unwrap(),
        [expired(id, 2, t(45))]
    );
}

pub async fn expired_leases_and_long_runs_are_found(repo: Repo) {
    let a = queued(&repo, "A", 0).await;
    let b = queued(&repo, "B", 1).await;
    let c = queued(&repo, "C", 2).await;
    let waiting = queued(&repo, "Waiting", 3).await;
    // a starts at t(10) leased to t(15); b at t(12) leased to t(14); c at t(20) leased to t(60).
    assert_eq!(
        repo.claim_next_job("w", 9, t(15), t(10))
            .await
            .unwrap()
            .unwrap()
            .lora
            .id,
        a
    );
    assert_eq!(
        repo.claim_next_job("w", 9, t(14), t(12))
            .await
            .unwrap()
            .unwrap()
            .lora
            .id,
        b
    );
    assert_eq!(
        repo.claim_next_job("w", 9, t(60), t(20))
            .await
            .unwrap()
            .unwrap()
            .lora
            .id,
        c
    );

    assert!(repo.expired_leases(t(13)).await.unwrap().is_empty());
    // Oldest lease first; queued jobs have none.
    assert_eq!(
        repo.expired_leases(t(16)).await.unwrap(),
        [expired(b, 1, t(14)), expired(a, 1, t(15))]
    );
    // Validating jobs are no longer leased by the reaper's rules.
    apply(&repo, b, StatusEvent::BeginValidation, t(16))
        .await
        .unwrap();
    assert_eq!(
        repo.expired_leases(t(16)).await.unwrap(),
        [expired(a, 1, t(15))]
    );

    assert!(
        repo.jobs_running_longer_than(t(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        repo.jobs_running_longer_than(t(11)).await.unwrap(),
        [RunningJob {
            lora_id: a,
            started_at: t(10),
            attempt: 1
        }]
    );
    let both = repo.jobs_running_longer_than(t(30)).await.unwrap();
    assert_eq!(
        both.iter().map(|j| j.lora_id).collect::<Vec<_>>(),
        [a, c],
        "validating b is not training"
    );
    // A requeue and a new claim restart the clock of the run.
    apply(&repo, a, StatusEvent::Requeue, t(31)).await.unwrap();
    let again = repo
        .claim_next_job("w", 9, t(90), t(32))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.lora.id, a);
    assert_eq!(
        repo.jobs_running_longer_than(t(33)).await.unwrap(),
        [
            RunningJob {
                lora_id: c,
                started_at: t(20),
                attempt: 1
            },
            RunningJob {
                lora_id: a,
                started_at: t(32),
                attempt: 2
            },
        ]
    );
    assert_eq!(
        repo.get_lora(waiting).await.unwrap().unwrap().status,
        TrainingStatus::Queued
    );
}

fn new_run(lora: LoraId, attempt: u32, engine: &str, at: i64) -> NewRun {
    NewRun {
        id: RunId::new(),
        lora_id: lora,
        attempt,
        backend: "runpod".into(),
        route_reason: Some("runpod: first in order".into()),
        engine: engine.into(),
        instance_name: format!("loraforge-{lora}-{attempt}"),
        provider_id: format!("pod-{lora}-{attempt}"),
        gpu_type: Some("NVIDIA RTX A6000".into()),
        price_per_hour: Some(MicroUsd(790_000)),
        created_at: t(at),
        started_at: t(at) + Duration::seconds(2),
    }
}

pub async fn runs_are_recorded_settled_and_ended_once(repo: Repo) {
    let a = queued(&repo, "Run A", 0).await;
    let b = queued(&repo, "Run B", 1).await;
    repo.claim_next_job("w1", 9, t(5), t(2))
        .await
        .unwrap()
        .unwrap();
    repo.claim_next_job("w2", 9, t(5), t(2))
        .await
        .unwrap()
        .unwrap();
    assert!(repo.open_runs().await.unwrap().is_empty());

    // Only the engine holding the job, for the attempt it holds, records a run.
    for wrong in [
        new_run(a, 1, "w2", 2),
        new_run(a, 2, "w1", 2),
        new_run(LoraId::new(), 1, "w1", 2),
    ] {
        assert!(
            matches!(repo.insert_run(&wrong).await, Err(DbError::NotFound)),
            "{wrong:?}"
        );
    }
    let run_a = repo.insert_run(&new_run(a, 1, "w1", 2)).await.unwrap();
    assert_eq!(
        (
            run_a.attempt,
            run_a.engine.as_str(),
            run_a.provider_id.clone()
        ),
        (1, "w1", format!("pod-{a}-1"))
    );
    assert_eq!(
        (run_a.price_per_hour, run_a.gpu_type.as_deref()),
        (Some(MicroUsd(790_000)), Some("NVIDIA RTX A6000"))
    );
    assert_eq!(
        (run_a.created_at, run_a.started_at),
        (t(2), t(2) + Duration::seconds(2))
    );
    assert!(run_a.outcome.is_none() && run_a.cost.is_none() && run_a.instance_gone_at.is_none());
    let run_b = repo.insert_run(&new_run(b, 1, "w2", 2)).await.unwrap();
    assert_eq!(repo.get_run(run_a.id).await.unwrap(), Some(run_a.clone()));
    let open = repo.open_runs().await.unwrap();
    assert_eq!(
        open.iter().map(|o| o.run.id).collect::<Vec<_>>(),
        [run_a.id, run_b.id]
    );
    assert!(
        open.iter()
            .all(|o| o.current && o.job_status == TrainingStatus::Training && o.job_failures == 0)
    );
    assert_eq!(open[0].job_worker.as_deref(), Some("w1"));

    // The first outcome wins.
    let facts = serde_json::json!({"retryable": false});
    assert!(
        repo.record_run_outcome(
            run_a.id,
            "upload_failed",
            Some("HTTP 503"),
            Some(&facts),
            t(3)
        )
        .await
        .unwrap()
    );
    assert!(
        !repo
            .record_run_outcome(run_a.id, "stopped", None, None, t(4))
            .await
            .unwrap()
    );
    let ended = repo.get_run(run_a.id).await.unwrap().unwrap();
    assert_eq!(
        (
            ended.outcome.as_deref(),
            ended.reason.as_deref(),
            ended.ended_at
        ),
        (Some("upload_failed"), Some("HTTP 503"), Some(t(3)))
    );
    assert_eq!(ended.result, Some(facts));

    // Settled once: the requeue counts against the job's attempts and the run is no longer current.
    let settle = Settle::Requeue {
        counted: true,
        reason: "the trained files could not be uploaded: HTTP 503".into(),
    };
    let lora = repo
        .settle_run(run_a.id, settle.clone(), t(3))
        .await
        .unwrap()
        .expect("settled");
    assert_eq!(
        (lora.status, lora.error.as_deref()),
        (
            TrainingStatus::Queued,
            Some("the trained files could not be uploaded: HTTP 503")
        )
    );
    assert!(
        repo.settle_run(run_a.id, settle, t(4))
            .await
            .unwrap()
            .is_none(),
        "settled once"
    );
    let open_a = repo
        .open_runs()
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.run.id == run_a.id)
        .unwrap();
    assert!(!open_a.current && open_a.job_failures == 1 && open_a.run.settled_at == Some(t(3)));

    // While its instance may still run, the job is not claimed again.
    assert!(
        repo.claim_next_job("w3", 9, t(9), t(5))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        repo.record_instance_gone(run_a.id, MicroUsd(39_500), t(5))
            .await
            .unwrap()
    );
    assert!(
        !repo
            .record_instance_gone(run_a.id, MicroUsd(39_500), t(6))
            .await
            .unwrap(),
        "recorded once"
    );
    assert_eq!(
        repo.get_lora(a).await.unwrap().unwrap().training_cost,
        MicroUsd(39_500)
    );
    let again = repo
        .claim_next_job("w3", 9, t(9), t(5))
        .await
        .unwrap()
        .expect("claimable once gone");
    assert_eq!((again.lora.id, again.attempt), (a, 2));
    let run_a2 = repo.insert_run(&new_run(a, 2, "w3", 5)).await.unwrap();
    assert_eq!(
        run_a2.route_reason.as_deref(),
        Some("runpod: first in order"),
        "why the router chose the backend is kept with the run"
    );
    assert_eq!(
        repo.runs_of(a)
            .await
            .unwrap()
            .iter()
            .map(|r| r.attempt)
            .collect::<Vec<_>>(),
        [1, 2]
    );

    // A job that moved on (cancelled) only marks its run settled.
    apply(&repo, a, StatusEvent::Cancel, t(6)).await.unwrap();
    repo.record_run_outcome(run_a2.id, "cancelled", None, None, t(6))
        .await
        .unwrap();
    let lora = repo
        .settle_run(run_a2.id, Settle::Fail { reason: "x".into() }, t(6))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lora.status, TrainingStatus::Cancelled);
    assert_eq!(
        repo.open_runs()
            .await
            .unwrap()
            .iter()
            .find(|o| o.run.id == run_a2.id)
            .unwrap()
            .job_failures,
        1
    );

    // Ending an instance may fail and is tried again.
    assert_eq!(
        repo.record_terminate_failure(run_b.id, "HTTP 502", t(7))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        repo.record_terminate_failure(run_b.id, "HTTP 502", t(8))
            .await
            .unwrap(),
        2
    );
    let b_run = repo.get_run(run_b.id).await.unwrap().unwrap();
    assert_eq!(
        (b_run.terminate_failures, b_run.next_terminate_at),
        (2, Some(t(8)))
    );

    // Publishing a trained run: validating and completed in one commit.
    let files = TrainedFiles {
        storage_key: "lora-models/u/l/model.safetensors".into(),
        file_size: 1234,
        sha256: Some("ab".repeat(32)),
        validation_image_keys: vec!["v0".into()],
    };
    repo.record_run_outcome(
        run_b.id,
        "trained",
        None,
        Some(&serde_json::json!({"attempt": 1})),
        t(9),
    )
    .await
    .unwrap();
    let done = repo
        .settle_run(
            run_b.id,
            Settle::Publish {
                files: files.clone(),
                verdict: PublishVerdict::Complete,
                scores: None,
            },
            t(9),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            done.status,
            done.storage_key.as_deref(),
            done.file_size,
            done.validation_passed
        ),
        (
            TrainingStatus::Completed,
            Some("lora-models/u/l/model.safetensors"),
            Some(1234),
            Some(true)
        )
    );
    // The file's hash is recorded with it: the hand-off has nothing to hash.
    assert_eq!(done.sha256, Some("ab".repeat(32)));
    let statuses: Vec<String> = repo
        .events_after(b, 0, 100)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.data["to"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(statuses, ["queued", "training", "validating", "completed"]);
}

pub async fn a_review_wait_and_a_rejected_file_are_recorded(repo: Repo) {
    let r = queued(&repo, "Review", 0).await;
    let x = queued(&repo, "Rejected", 1).await;
    let files = TrainedFiles {
        storage_key: "k".into(),
        file_size: 1,
        sha256: None,
        validation_image_keys: Vec::new(),
    };
    for (id, w) in [(r, "w1"), (x, "w2")] {
        repo.claim_next_job(w, 9, t(5), t(2))
            .await
            .unwrap()
            .unwrap();
        let run = repo.insert_run(&new_run(id, 1, w, 2)).await.unwrap();
        repo.record_run_outcome(run.id, "trained", None, None, t(3))
            .await
            .unwrap();
        let settle = if id == r {
            Settle::Publish {
                files: files.clone(),
                verdict: PublishVerdict::Review,
                scores: None,
            }
        } else {
            Settle::Reject {
                files: files.clone(),
                reason: "the trained file failed its check: NaN".into(),
            }
        };
        repo.settle_run(run.id, settle, t(3))
            .await
            .unwrap()
            .unwrap();
    }
    let review = repo.get_lora(r).await.unwrap().unwrap();
    assert_eq!(
        (
            review.status,
            review.progress.stage.as_deref(),
            review.progress.percent
        ),
        (TrainingStatus::Validating, Some("awaiting_review"), 100)
    );
    let rejected = repo.get_lora(x).await.unwrap().unwrap();
    assert_eq!(
        (
            rejected.status,
            rejected.storage_key.as_deref(),
            rejected.error.as_deref()
        ),
        (
            TrainingStatus::Failed,
            Some("k"),
            Some("the trained file failed its check: NaN")
        )
    );
}

pub async fn a_claim_without_capacity_is_undone_with_a_message(repo: Repo) {
    let id = queued(&repo, "Waiting", 0).await;
    repo.claim_next_job("w1", 9, t(5), t(1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !repo.unclaim(id, "w2", "no", t(2)).await.unwrap(),
        "only the holder"
    );
    assert!(
        repo.unclaim(id, "w1", "waiting for a GPU: none available", t(2))
            .await
            .unwrap()
    );
    let lora = repo.get_lora(id).await.unwrap().unwrap();
    assert_eq!(
        (lora.status, lora.status_message.as_deref(), lora.error),
        (
            TrainingStatus::Queued,
            Some("waiting for a GPU: none available"),
            None
        )
    );
    assert_eq!(
        repo.job_claim(id).await.unwrap().unwrap().attempt,
        0,
        "no attempt used"
    );
    let claimed = repo
        .claim_next_job("w1", 9, t(5), t(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((claimed.attempt, claimed.lora.status_message), (1, None));
    // Not once a run is recorded.
    repo.insert_run(&new_run(id, 1, "w1", 3)).await.unwrap();
    assert!(!repo.unclaim(id, "w1", "no", t(4)).await.unwrap());
    repo.set_status_message(id, Some("note"), t(4))
        .await
        .unwrap();
    assert_eq!(
        repo.get_lora(id)
            .await
            .unwrap()
            .unwrap()
            .status_message
            .as_deref(),
        Some("note")
    );
}

pub async fn pending_ids_are_oldest_first(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let late = create(&repo, new_lora(owner, ds, "Late", t(3))).await;
    let early = create(&repo, new_lora(owner, ds, "Early", t(1))).await;
    let middle = create(&repo, new_lora(owner, ds, "Middle", t(2))).await;
    let gone = create(&repo, new_lora(owner, ds, "Queued already", t(0))).await;
    apply(&repo, gone.id, StatusEvent::Enqueue, t(4))
        .await
        .unwrap();
    assert_eq!(
        repo.pending_ids(10).await.unwrap(),
        [early.id, middle.id, late.id]
    );
    assert_eq!(repo.pending_ids(2).await.unwrap(), [early.id, middle.id]);
    apply(&repo, early.id, StatusEvent::Cancel, t(5))
        .await
        .unwrap();
    assert_eq!(repo.pending_ids(10).await.unwrap(), [middle.id, late.id]);
}

pub async fn start_failures_wait_for_their_time(repo: Repo) {
    let id = queued(&repo, "Flaky start", 0).await;
    let other = queued(&repo, "Someone else's", 1).await;
    repo.claim_next_job("engine", 9, t(30), t(2))
        .await
        .unwrap()
        .unwrap();
    repo.claim_next_job("other-engine", 9, t(30), t(2))
        .await
        .unwrap()
        .unwrap();
    // A fresh claim has no start attempt pending (the claimer starts it right away).
    assert!(repo.starts_due("engine", t(100)).await.unwrap().is_empty());

    let at = |s: i64| t(2) + Duration::seconds(s);
    assert_eq!(
        repo.record_start_failure(id, "pod quota", at(2))
            .await
            .unwrap(),
        1
    );
    repo.record_start_failure(other, "pod quota", at(2))
        .await
        .unwrap();
    assert!(repo.starts_due("engine", at(1)).await.unwrap().is_empty());
    assert_eq!(
        repo.starts_due("engine", at(2)).await.unwrap(),
        [StartDue {
            lora_id: id,
            attempt: 1,
            start_failures: 1
        }]
    );
    assert_eq!(
        repo.record_start_failure(id, "pod quota", at(6))
            .await
            .unwrap(),
        2
    );
    assert!(repo.starts_due("engine", at(5)).await.unwrap().is_empty());
    assert_eq!(
        repo.starts_due("engine", at(6)).await.unwrap()[0].start_failures,
        2
    );

    // A started run ends the retry state.
    repo.insert_run(&new_run(id, 1, "engine", 2)).await.unwrap();
    assert!(repo.starts_due("engine", at(100)).await.unwrap().is_empty());
    // A cancelled job is not started again.
    apply(&repo, other, StatusEvent::Cancel, at(3))
        .await
        .unwrap();
    assert!(
        repo.starts_due("other-engine", at(100))
            .await
            .unwrap()
            .is_empty()
    );
    let missing = repo.record_start_failure(LoraId::new(), "x", at(1)).await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");
}

pub async fn job_claim_names_the_holder_and_the_attempt(repo: Repo) {
    let id = queued(&repo, "Claimed", 0).await;
    assert_eq!(
        repo.job_claim(id).await.unwrap(),
        Some(JobClaim {
            worker: None,
            attempt: 0,
            lease_until: None,
            checkpoint: None
        })
    );
    repo.claim_next_job("w1", 2, t(5), t(1))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(
        repo.job_claim(id).await.unwrap(),
        Some(JobClaim {
            worker: Some("w1".into()),
            attempt: 1,
            lease_until: Some(t(5)),
            checkpoint: None
        })
    );
    // The holder records the newest checkpoint; nobody else can.
    assert!(
        repo.record_checkpoint(id, "w1", 1, "training-checkpoints/u/l/attempt-1.pt", 250)
            .await
            .unwrap()
    );
    assert!(!repo.record_checkpoint(id, "w2", 1, "x", 500).await.unwrap());
    assert!(!repo.record_checkpoint(id, "w1", 2, "x", 500).await.unwrap());
    assert_eq!(
        repo.job_claim(id).await.unwrap().unwrap().checkpoint,
        Some(("training-checkpoints/u/l/attempt-1.pt".into(), 250))
    );
    assert!(repo.heartbeat(id, "w1", t(9), t(2)).await.unwrap());
    assert_eq!(
        repo.job_claim(id)
            .await
            .unwrap()
            .and_then(|c| c.lease_until),
        Some(t(9))
    );
    apply(&repo, id, StatusEvent::Requeue, t(3)).await.unwrap();
    repo.claim_next_job("w2", 2, t(8), t(4))
        .await
        .unwrap()
        .expect("claimed again");
    // A later attempt still sees the checkpoint to resume from.
    assert_eq!(
        repo.job_claim(id).await.unwrap(),
        Some(JobClaim {
            worker: Some("w2".into()),
            attempt: 2,
            lease_until: Some(t(8)),
            checkpoint: Some(("training-checkpoints/u/l/attempt-1.pt".into(), 250))
        })
    );
    assert_eq!(repo.job_claim(LoraId::new()).await.unwrap(), None);
}

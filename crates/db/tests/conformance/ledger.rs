//! The cost ledger (`LedgerStore`): a run's GPU entry is written with its cost, once; a LoRA's
//! `training_cost` is the sum of its `gpu` and `validation` entries; idempotency keys make
//! retried writes no-ops; totals, the budget override, once-a-month alert claims and the reads
//! the budget and the admin overview are computed from.

use chrono::Duration;

use loraforge_db::ledger::NewCostEntry;
use loraforge_db::{NewRun, PublishVerdict, Settle, TrainedFiles};
use loraforge_domain::budget::{CostKind, gpu_entry_key, month_key, storage_entry_key};
use loraforge_domain::{LoraId, MicroUsd, MonthlyWindow, RunId, StatusEvent, UserId};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

/// A LoRA of a fresh user, claimed by `engine`, with its first run recorded on `backend`.
async fn running(
    repo: &Repo,
    lora_name: &str,
    engine: &str,
    backend: &str,
) -> (UserId, LoraId, RunId) {
    let (owner, ds) = user(repo).await;
    let l = create(repo, new_lora(owner, ds, lora_name, t(0))).await;
    apply(repo, l.id, StatusEvent::Enqueue, t(0)).await.unwrap();
    let job = repo
        .claim_next_job(engine, 9, t(60), t(1))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(job.lora.id, l.id);
    let run = repo
        .insert_run(&NewRun {
            id: RunId::new(),
            lora_id: l.id,
            attempt: 1,
            backend: backend.into(),
            route_reason: None,
            engine: engine.into(),
            instance_name: format!("loraforge-{}-1", l.id),
            provider_id: format!("p-{}", l.id),
            gpu_type: None,
            price_per_hour: Some(MicroUsd::from_dollars(2)),
            created_at: t(1),
            started_at: t(1),
        })
        .await
        .unwrap();
    (owner, l.id, run.id)
}

fn storage_entry(lora: LoraId, user: UserId, month: &str, amount: i64) -> NewCostEntry {
    NewCostEntry {
        lora_id: lora,
        user_id: user,
        backend: None,
        kind: CostKind::Storage,
        month: month.into(),
        amount: MicroUsd(amount),
        run_id: None,
        idempotency_key: storage_entry_key(lora, month),
        created_at: t(100),
    }
}

pub async fn run_costs_are_ledger_entries_and_training_cost_is_their_sum(repo: Repo) {
    let month = month_key(t(0));
    let (owner_a, a, run_a) = running(&repo, "Ledger A", "w1", "runpod").await;
    let (_, b, run_b) = running(&repo, "Ledger B", "w2", "docker").await;

    // While running, both count for the budget; nothing is spent yet.
    let runs = repo.budget_runs(t(-1000), 100).await.unwrap();
    assert_eq!(runs.running.len(), 2);
    assert!(runs.history.is_empty());
    assert_eq!(repo.month_spend(&month).await.unwrap(), MicroUsd::ZERO);

    // A trained and published, then its instance gone: one gpu entry, with the cost.
    repo.record_run_outcome(
        run_a,
        "trained",
        None,
        Some(&serde_json::json!({"attempt": 1})),
        t(31),
    )
    .await
    .unwrap();
    let files = TrainedFiles {
        storage_key: format!("lora-models/{owner_a}/{a}/model.safetensors"),
        file_size: 2_500_000_000,
        sha256: None,
        validation_image_keys: vec![],
    };
    repo.settle_run(
        run_a,
        Settle::Publish {
            files,
            verdict: PublishVerdict::Complete,
            scores: None,
        },
        t(31),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        repo.record_instance_gone(run_a, MicroUsd(1_000_000), t(31))
            .await
            .unwrap()
    );
    // A retried end writes nothing more.
    assert!(
        !repo
            .record_instance_gone(run_a, MicroUsd(1_000_000), t(32))
            .await
            .unwrap()
    );
    let entries = repo.lora_cost_entries(a).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0].entry;
    assert_eq!(
        (
            e.kind,
            e.backend.as_deref(),
            e.month.as_str(),
            e.amount,
            e.run_id,
            e.user_id
        ),
        (
            CostKind::Gpu,
            Some("runpod"),
            month.as_str(),
            MicroUsd(1_000_000),
            Some(run_a),
            owner_a
        )
    );
    assert_eq!(e.idempotency_key, gpu_entry_key(run_a));

    // An entry with a used key is a no-op, even with another amount.
    let mut again = e.clone();
    again.amount = MicroUsd(5);
    assert!(!repo.insert_cost_entry(&again).await.unwrap());

    // B ends too, costs 0.25.
    assert!(
        repo.record_instance_gone(run_b, MicroUsd(250_000), t(40))
            .await
            .unwrap()
    );

    // training_cost == the sum of each LoRA's gpu and validation entries.
    for lora in [a, b] {
        let cost = repo.get_lora(lora).await.unwrap().unwrap().training_cost;
        let sum: i64 = repo
            .lora_cost_entries(lora)
            .await
            .unwrap()
            .iter()
            .filter(|e| matches!(e.entry.kind, CostKind::Gpu | CostKind::Validation))
            .map(|e| e.entry.amount.micros())
            .sum();
        assert_eq!(cost.micros(), sum, "{lora}");
    }

    // Storage: only A has a stored file; its month is written once.
    let stored = repo.stored_loras(None, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].lora_id, stored[0].bytes), (a, 2_500_000_000));
    assert!(repo.stored_loras(Some(a), 10).await.unwrap().is_empty());
    assert!(
        repo.insert_cost_entry(&storage_entry(a, owner_a, &month, 57_500))
            .await
            .unwrap()
    );
    assert!(
        !repo
            .insert_cost_entry(&storage_entry(a, owner_a, &month, 57_500))
            .await
            .unwrap()
    );
    assert!(
        repo.insert_cost_entry(&storage_entry(a, owner_a, "2026-12", 57_500))
            .await
            .unwrap()
    );
    // Storage is not training: training_cost stays the GPU sum.
    assert_eq!(
        repo.get_lora(a).await.unwrap().unwrap().training_cost,
        MicroUsd(1_000_000)
    );

    // Totals of the month.
    assert_eq!(repo.month_spend(&month).await.unwrap(), MicroUsd(1_307_500));
    assert_eq!(repo.month_spend("2026-12").await.unwrap(), MicroUsd(57_500));
    let totals = repo.month_totals(&month).await.unwrap();
    assert_eq!(totals.total, MicroUsd(1_307_500));
    let mut by_backend = totals.by_backend.clone();
    by_backend.sort();
    assert_eq!(
        by_backend,
        [
            (None, MicroUsd(57_500)),
            (Some("docker".to_owned()), MicroUsd(250_000)),
            (Some("runpod".to_owned()), MicroUsd(1_000_000)),
        ]
    );
    assert_eq!(
        totals.by_kind,
        [
            ("gpu".to_owned(), MicroUsd(1_250_000)),
            ("storage".to_owned(), MicroUsd(57_500))
        ]
    );

    // The budget's view of runs: none running; both finished, with their billed time.
    let runs = repo.budget_runs(t(-1000), 100).await.unwrap();
    assert!(runs.running.is_empty());
    let mut history: Vec<(String, i64, i64)> = runs
        .history
        .iter()
        .map(|(b, f)| (b.clone(), f.millis, f.cost.micros()))
        .collect();
    history.sort();
    assert_eq!(
        history,
        [
            ("docker".to_owned(), 39 * 60_000, 250_000),
            ("runpod".to_owned(), 30 * 60_000, 1_000_000)
        ]
    );
    assert!(repo.budget_runs(t(35), 100).await.unwrap().history.len() == 1);

    // The overview: one completed LoRA, its cost, its run's time.
    let stats = repo
        .month_stats(MonthlyWindow::containing(t(0)), 5)
        .await
        .unwrap();
    assert_eq!((stats.completed, stats.failed), (1, 0));
    assert_eq!(stats.avg_cost_per_completed, Some(MicroUsd(1_000_000)));
    assert_eq!(stats.loras_per_user.len(), 2);
    assert!(stats.loras_per_user.iter().all(|(_, n)| *n == 1));
    assert_eq!(stats.total_uses, 0);
}

pub async fn the_budget_override_and_alert_claims_are_shared(repo: Repo) {
    assert_eq!(repo.budget_override().await.unwrap(), None);
    repo.set_budget_override(MicroUsd::from_dollars(350), Some("admin"), t(0))
        .await
        .unwrap();
    assert_eq!(
        repo.budget_override().await.unwrap(),
        Some(MicroUsd::from_dollars(350))
    );
    repo.set_budget_override(MicroUsd::from_dollars(400), None, t(1))
        .await
        .unwrap();
    assert_eq!(
        repo.budget_override().await.unwrap(),
        Some(MicroUsd::from_dollars(400))
    );

    // Each (month, level) is claimed once, even by racing replicas.
    let claims: Vec<_> = (0..6)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.claim_budget_alert("2026-11", "warning", t(2)).await })
        })
        .collect();
    let mut won = 0;
    for c in claims {
        if c.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1);
    assert!(
        repo.claim_budget_alert("2026-11", "exhausted", t(3))
            .await
            .unwrap()
    );
    assert!(
        !repo
            .claim_budget_alert("2026-11", "exhausted", t(4))
            .await
            .unwrap()
    );
    assert!(
        repo.claim_budget_alert("2026-12", "warning", t(5))
            .await
            .unwrap()
    );
}

//! Credits (`CreditStore`): the ledger is the truth, reservations happen inside the create's
//! per-user critical section, and settlements are written once whatever repeats.

use chrono::Duration;

use loraforge_db::{CreateOutcome, DbError, NewCreditGrant, NewRun, SettledCredits};
use loraforge_domain::credit::{CreditKind, Settlement, settlement};
use loraforge_domain::{LoraId, MicroUsd, RunId, StatusEvent, TrainingStatus, UserId};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

async fn grant(repo: &Repo, user: UserId, micros: i64) {
    let kind = if micros >= 0 {
        CreditKind::Grant
    } else {
        CreditKind::Adjust
    };
    repo.add_credits(NewCreditGrant {
        user_id: user,
        kind,
        amount: MicroUsd(micros),
        reason: "test".into(),
        actor: Some("admin-1".into()),
        now: now(),
    })
    .await
    .unwrap();
}

/// The summary and the ledger's own sums agree.
async fn assert_ledger_agrees(repo: &Repo, user: UserId) {
    let s = repo.credit_summary(user).await.unwrap();
    let entries = repo.credit_history(user, 1_000, 0).await.unwrap();
    let all: i64 = entries.iter().map(|e| e.amount.0).sum();
    let held: i64 = entries
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                CreditKind::Reserve | CreditKind::Release | CreditKind::Refund
            )
        })
        .map(|e| e.amount.0)
        .sum();
    assert_eq!(s.available.0, all);
    assert_eq!(s.reserved.0, -held);
    assert_eq!(s.balance.0, s.available.0 + s.reserved.0);
}

fn count(entries: &[loraforge_db::CreditEntry], lora: LoraId, kind: CreditKind) -> usize {
    entries
        .iter()
        .filter(|e| e.lora_id == Some(lora) && e.kind == kind)
        .count()
}

/// Runs the reconciler's two steps as the server does: every due reservation, settled.
async fn reconcile(repo: &Repo) -> Vec<SettledCredits> {
    let mut out = Vec::new();
    for due in repo.due_reservations(100).await.unwrap() {
        let s = settlement(due.status).expect("only finished LoRAs are due");
        out.push(
            repo.settle_reservation(due.lora_id, s, t(30))
                .await
                .unwrap(),
        );
    }
    out
}

pub async fn grants_reserves_and_history_add_up(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    assert_eq!(
        repo.credit_summary(owner).await.unwrap().balance,
        MicroUsd(0)
    );
    grant(&repo, owner, 5_000_000).await;
    grant(&repo, owner, -1_000_000).await;
    let mut new = new_lora(owner, ds, "Reserved", now());
    new.reserve = Some(MicroUsd(1_500_000));
    let lora = create(&repo, new).await;
    let s = repo.credit_summary(owner).await.unwrap();
    assert_eq!(
        (s.balance.0, s.reserved.0, s.available.0),
        (4_000_000, 1_500_000, 2_500_000)
    );
    let history = repo.credit_history(owner, 10, 0).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [CreditKind::Reserve, CreditKind::Adjust, CreditKind::Grant],
        "newest first"
    );
    assert_eq!(history[0].lora_id, Some(lora.id));
    assert_eq!(history[2].actor.as_deref(), Some("admin-1"));
    // Pages.
    let page2 = repo.credit_history(owner, 2, 2).await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].kind, CreditKind::Grant);
    assert_ledger_agrees(&repo, owner).await;

    // More than available: 402-worthy, and nothing created.
    let mut too_much = new_lora(owner, ds, "Too much", now());
    too_much.reserve = Some(MicroUsd(2_500_001));
    let id = too_much.id;
    match repo.create_lora(too_much, policy(100, now())).await {
        Err(DbError::InsufficientCredits { summary, price }) => {
            assert_eq!(summary.available, MicroUsd(2_500_000));
            assert_eq!(price, MicroUsd(2_500_001));
        }
        other => panic!("expected InsufficientCredits, got {other:?}"),
    }
    assert!(repo.get_lora(id).await.unwrap().is_none());
    // An idempotent replay reserves nothing new.
    let keyed = with_key(new_lora(owner, ds, "Keyed", now()), "k1", "h1");
    let mut keyed = keyed;
    keyed.reserve = Some(MicroUsd(1_000_000));
    create(&repo, keyed.clone()).await;
    let before = repo.credit_summary(owner).await.unwrap();
    let replay = repo.create_lora(keyed, policy(100, now())).await.unwrap();
    assert!(matches!(replay, CreateOutcome::Replayed(_)));
    assert_eq!(repo.credit_summary(owner).await.unwrap(), before);
    assert_eq!(before.reserved, MicroUsd(2_500_000));
    // Another user's credits are their own.
    assert_eq!(
        repo.credit_summary(UserId::new()).await.unwrap().balance,
        MicroUsd(0)
    );
}

pub async fn concurrent_creates_never_overdraw(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    // Enough for exactly 7 reservations of $1.
    grant(&repo, owner, 7_000_000).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let mut new = new_lora(owner, ds, &format!("Credit {i}"), now());
                new.reserve = Some(MicroUsd(1_000_000));
                repo.create_lora(new, policy(1_000, now())).await
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(CreateOutcome::Created(_)) => created += 1,
            Err(DbError::InsufficientCredits { price, .. }) => {
                assert_eq!(price, MicroUsd(1_000_000));
                refused += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, refused), (7, 13));
    let s = repo.credit_summary(owner).await.unwrap();
    assert_eq!(
        (s.balance.0, s.reserved.0, s.available.0),
        (7_000_000, 7_000_000, 0)
    );
    assert_ledger_agrees(&repo, owner).await;
}

/// A completed LoRA of `owner` that reserved `reserve` at create, with one trained run whose
/// instance is not confirmed gone yet.
async fn trained(repo: &Repo, owner: UserId, name: &str, reserve: i64) -> (LoraId, RunId) {
    let ds = dataset(repo, owner).await;
    let mut new = new_lora(owner, ds, name, t(0));
    new.reserve = Some(MicroUsd(reserve));
    let lora = create(repo, new).await.id;
    apply(repo, lora, StatusEvent::Enqueue, t(0)).await.unwrap();
    let job = repo
        .claim_next_job("w1", 99, t(60), t(1))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(job.lora.id, lora);
    let run = repo
        .insert_run(&NewRun {
            id: RunId::new(),
            lora_id: lora,
            attempt: 1,
            backend: "docker".into(),
            route_reason: None,
            engine: "w1".into(),
            instance_name: format!("loraforge-{lora}-1"),
            provider_id: format!("c-{lora}"),
            gpu_type: Some("L4".into()),
            price_per_hour: Some(MicroUsd(3_600_000)),
            created_at: t(1),
            started_at: t(1),
        })
        .await
        .unwrap();
    assert!(
        repo.record_run_outcome(run.id, "trained", None, None, t(11))
            .await
            .unwrap()
    );
    apply(repo, lora, StatusEvent::BeginValidation, t(11))
        .await
        .unwrap();
    apply(repo, lora, StatusEvent::Complete, t(11))
        .await
        .unwrap();
    (lora, run.id)
}

pub async fn a_crash_between_reserve_and_deduct_charges_once(repo: Repo) {
    let owner = UserId::new();
    grant(&repo, owner, 10_000_000).await;
    let (lora, run) = trained(&repo, owner, "Charged", 2_000_000).await;
    // Completed, but the instance is not confirmed gone: its cost is not final, nothing is due.
    assert!(repo.due_reservations(100).await.unwrap().is_empty());
    assert!(
        repo.record_instance_gone(run, MicroUsd(600_000), t(12))
            .await
            .unwrap()
    );
    // The reconciler never ran (a crash right after the reservation); now it runs twice, and a
    // third time settles the LoRA directly as a status change would.
    let first = reconcile(&repo).await;
    assert_eq!(
        first,
        [SettledCredits {
            deducted: Some(MicroUsd(600_000)),
            returned: Some(MicroUsd(2_000_000)),
            reimbursed: None,
        }]
    );
    assert!(reconcile(&repo).await.is_empty());
    assert_eq!(
        repo.settle_reservation(lora, Settlement::Charge, t(40))
            .await
            .unwrap(),
        SettledCredits::default()
    );
    let entries = repo.credit_history(owner, 100, 0).await.unwrap();
    assert_eq!(count(&entries, lora, CreditKind::Deduct), 1);
    assert_eq!(count(&entries, lora, CreditKind::Release), 1);
    assert_eq!(count(&entries, lora, CreditKind::Reserve), 1);
    let s = repo.credit_summary(owner).await.unwrap();
    assert_eq!(
        (s.balance.0, s.reserved.0, s.available.0),
        (9_400_000, 0, 9_400_000)
    );
    assert_ledger_agrees(&repo, owner).await;

    // The run feeds quotes: its backend, GPU, steps and resolution, and billed time.
    let samples = repo.quote_samples(200).await.unwrap();
    let sample = samples
        .iter()
        .find(|s| s.backend == "docker" && s.cost == MicroUsd(600_000))
        .expect("the trained run is a sample");
    assert_eq!(sample.gpu_type.as_deref(), Some("L4"));
    assert_eq!((sample.steps, sample.resolution), (1500, 1024));
    assert_eq!(sample.billed_seconds, 11 * 60);
    assert_eq!(sample.price_per_hour, Some(MicroUsd(3_600_000)));
}

pub async fn failure_and_cancel_refund_in_full(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    grant(&repo, owner, 3_000_000).await;
    let mut ids = Vec::new();
    for (name, status) in [
        ("Fails", TrainingStatus::Failed),
        ("Cancelled", TrainingStatus::Cancelled),
        ("Still queued", TrainingStatus::Queued),
    ] {
        let mut new = new_lora(owner, ds, name, now());
        new.reserve = Some(MicroUsd(1_000_000));
        let l = create(&repo, new).await;
        drive(&repo, l.id, status, now()).await;
        ids.push(l.id);
    }
    let settled = reconcile(&repo).await;
    assert_eq!(settled.len(), 2);
    assert!(
        settled
            .iter()
            .all(|s| s.deducted.is_none() && s.returned == Some(MicroUsd(1_000_000)))
    );
    assert!(reconcile(&repo).await.is_empty(), "refunded once");
    let entries = repo.credit_history(owner, 100, 0).await.unwrap();
    assert_eq!(count(&entries, ids[0], CreditKind::Refund), 1);
    assert_eq!(count(&entries, ids[1], CreditKind::Refund), 1);
    assert_eq!(count(&entries, ids[2], CreditKind::Refund), 0);
    let s = repo.credit_summary(owner).await.unwrap();
    assert_eq!(
        (s.balance.0, s.reserved.0, s.available.0),
        (3_000_000, 1_000_000, 2_000_000)
    );
    // A LoRA without a reservation (credits were off) settles to nothing.
    let plain = create(&repo, new_lora(owner, ds, "No credits", now())).await;
    assert_eq!(
        repo.settle_reservation(plain.id, Settlement::Refund, now())
            .await
            .unwrap(),
        SettledCredits::default()
    );
    assert_ledger_agrees(&repo, owner).await;
}

/// PRD 4 Scenario 8: a completed LoRA whose file is gone for good fails, and a failed LoRA costs
/// its owner nothing. Charged already: the charge is reimbursed, once, however many settle it
/// at once. Not charged yet: a charge decided on `completed` writes nothing and the reservation
/// is refunded in full. Either way the LoRA leaves the monthly count.
pub async fn a_lost_file_gives_back_what_the_lora_cost_once(repo: Repo) {
    let owner = UserId::new();
    grant(&repo, owner, 10_000_000).await;
    let window = loraforge_domain::MonthlyWindow::containing(t(0));

    // Charged, then its file is lost.
    let (charged, run) = trained(&repo, owner, "Charged then lost", 2_000_000).await;
    assert!(
        repo.record_instance_gone(run, MicroUsd(600_000), t(12))
            .await
            .unwrap()
    );
    reconcile(&repo).await;
    assert_eq!(
        repo.credit_summary(owner).await.unwrap().available,
        MicroUsd(9_400_000)
    );
    assert_eq!(repo.count_monthly(owner, window).await.unwrap(), 1);
    apply(&repo, charged, StatusEvent::FileLost, t(20))
        .await
        .unwrap();
    assert_eq!(repo.count_monthly(owner, window).await.unwrap(), 0);
    let due = repo.due_reservations(100).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|d| (d.lora_id, d.status))
            .collect::<Vec<_>>(),
        [(charged, TrainingStatus::Failed)]
    );
    // Two resolves racing, each settling the LoRA it failed, and then the reconciler.
    let (a, b) = tokio::join!(
        repo.settle_reservation(charged, Settlement::Refund, t(21)),
        repo.settle_reservation(charged, Settlement::Refund, t(21)),
    );
    let written: Vec<SettledCredits> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter(|s| *s != SettledCredits::default())
        .collect();
    assert_eq!(
        written,
        [SettledCredits {
            reimbursed: Some(MicroUsd(600_000)),
            ..SettledCredits::default()
        }]
    );
    assert!(reconcile(&repo).await.is_empty(), "reimbursed once");
    let entries = repo.credit_history(owner, 100, 0).await.unwrap();
    assert_eq!(count(&entries, charged, CreditKind::Reimburse), 1);
    assert_eq!(count(&entries, charged, CreditKind::Refund), 0);
    let net: i64 = entries
        .iter()
        .filter(|e| e.lora_id == Some(charged))
        .map(|e| e.amount.0)
        .sum();
    assert_eq!(net, 0, "the lost LoRA cost its owner nothing");
    let s = repo.credit_summary(owner).await.unwrap();
    assert_eq!(
        (s.balance.0, s.reserved.0, s.available.0),
        (10_000_000, 0, 10_000_000)
    );
    assert_ledger_agrees(&repo, owner).await;

    // Lost before its charge: the reconciler had decided to charge it, too late.
    let (early, run) = trained(&repo, owner, "Lost before its charge", 1_000_000).await;
    assert!(
        repo.record_instance_gone(run, MicroUsd(300_000), t(12))
            .await
            .unwrap()
    );
    apply(&repo, early, StatusEvent::FileLost, t(20))
        .await
        .unwrap();
    assert_eq!(
        repo.settle_reservation(early, Settlement::Charge, t(21))
            .await
            .unwrap(),
        SettledCredits::default(),
        "no charge for a failed LoRA"
    );
    let settled = reconcile(&repo).await;
    assert_eq!(
        settled,
        [SettledCredits {
            returned: Some(MicroUsd(1_000_000)),
            ..SettledCredits::default()
        }]
    );
    let entries = repo.credit_history(owner, 100, 0).await.unwrap();
    assert_eq!(count(&entries, early, CreditKind::Deduct), 0);
    assert_eq!(count(&entries, early, CreditKind::Reimburse), 0);
    assert_eq!(
        repo.credit_summary(owner).await.unwrap().available,
        MicroUsd(10_000_000)
    );
    assert_eq!(repo.count_monthly(owner, window).await.unwrap(), 0);
    assert_ledger_agrees(&repo, owner).await;
}

//! The system budget (`BudgetGate`): a month of runs whose costs cross 75 % and then 100 % of the
//! budget raises the warning once and the exhausted alert once; new jobs then wait `queued`
//! saying the budget is reached while running ones finish; the next month they start, and an
//! admin raising the budget releases them too.

use std::sync::Arc;
use std::time::Duration;

use loraforge_domain::{LoraId, MicroUsd, TrainingStatus};
use loraforge_engine::{BudgetGate, BudgetSettings, TrainingBackend};

use crate::helpers::*;

async fn alerts_of(repo: &Repo, kind: &str) -> Vec<String> {
    repo.alerts(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == kind)
        .map(|a| a.subject)
        .collect()
}

/// Launches run concurrently: compare without order.
fn set(mut ids: Vec<LoraId>) -> Vec<LoraId> {
    ids.sort();
    ids
}

async fn message(db: &Db, id: LoraId) -> String {
    db.get(id).await.status_message.unwrap_or_default()
}

async fn a_month_of_runs_crosses_the_budget(db: Db) {
    let u = db.user().await;
    let names = ["A", "B", "C", "D", "E", "F"];
    let mut ids = Vec::new();
    for (i, n) in names.iter().enumerate() {
        ids.push(db.lora(u, &format!("Budget {n}"), i as i64).await);
    }
    let [a, b, c, d, e, f] = ids[..] else {
        unreachable!()
    };
    // $0.72 an hour per run, two at a time, a $3 budget with the warning at 75 %.
    let pods = Scripted::new("pods", 2);
    let gate = Arc::new(BudgetGate::new(
        db.repo.clone(),
        BudgetSettings {
            monthly_budget: MicroUsd::from_dollars(3),
            alert_percent: 75,
        },
    ));
    let mut s = settings("e1");
    s.max_active_per_user = 10;
    let engine = db
        .engine(vec![pods.clone() as Arc<dyn TrainingBackend>], s)
        .with_worker_tokens(Arc::new(FixedTokens))
        .with_gate(gate.clone());

    let r = engine.tick().await.unwrap();
    assert_eq!(set(r.started.clone()), set(vec![a, b]), "{r:?}");

    // An hour later both trained: $1.44 spent (48 %); a run is expected to cost $0.72, so C and
    // D start ($1.44 + $0.72 fits $3).
    db.advance(Duration::from_secs(3600));
    db.report_trained(a).await;
    db.report_trained(b).await;
    let r = engine.tick().await.unwrap();
    assert_eq!(r.gone.len(), 2, "{r:?}");
    assert_eq!(set(r.started.clone()), set(vec![c, d]), "{r:?}");
    assert!(alerts_of(&db.repo, "budget_warning").await.is_empty());

    // Half an hour into C and D: $1.44 spent + $1.44 expected for them = 96 % → the warning,
    // once, and E waits: another $0.72 would pass $3.
    db.advance(Duration::from_secs(1800));
    for _ in 0..3 {
        let r = engine.tick().await.unwrap();
        assert!(r.started.is_empty(), "{r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
    }
    assert_eq!(
        alerts_of(&db.repo, "budget_warning").await,
        ["budget:2026-11"]
    );
    assert!(alerts_of(&db.repo, "budget_exhausted").await.is_empty());
    assert_eq!(db.status(e).await, TrainingStatus::Queued);
    let why = message(&db, e).await;
    assert!(
        why.contains("monthly budget of $3 is reached")
            && why.contains("2026-12-01")
            && why.contains("admin raises the budget"),
        "{why}"
    );
    assert!(db.runs(e).await.is_empty(), "no attempt was used");

    // The running ones finish (1 h 15 min each: $0.90): $3.24 spent → exhausted, once.
    db.advance(Duration::from_secs(45 * 60));
    db.report_trained(c).await;
    db.report_trained(d).await;
    let r = engine.tick().await.unwrap();
    assert_eq!(r.published.len(), 2, "{r:?}");
    assert!(r.started.is_empty(), "{r:?}");
    for id in [a, b, c, d] {
        assert_eq!(db.status(id).await, TrainingStatus::Completed);
    }
    engine.tick().await.unwrap();
    assert_eq!(
        alerts_of(&db.repo, "budget_exhausted").await,
        ["budget:2026-11"]
    );
    assert_eq!(alerts_of(&db.repo, "budget_warning").await.len(), 1);
    let status = gate.status().unwrap();
    assert_eq!(status.spent, MicroUsd(3_240_000));
    assert_eq!(status.left(), MicroUsd::ZERO);
    assert_eq!(db.status(e).await, TrainingStatus::Queued);

    // The month turns: December's ledger is empty, E and F start.
    let now = db.now();
    let december: chrono::DateTime<chrono::Utc> = "2026-12-01T00:00:05Z".parse().unwrap();
    db.advance((december - now).to_std().unwrap());
    let r = engine.tick().await.unwrap();
    assert_eq!(set(r.started.clone()), set(vec![e, f]), "{r:?}");

    // E and F end a minute later ($0.012 each). An admin lowers December's budget to $0.50:
    // a new run is expected to cost $0.72 (the median of the last 30 days), so G waits; raising
    // the budget releases it.
    let g = db.lora(u, "Budget G", 100).await;
    db.repo
        .set_budget_override(
            MicroUsd::parse_dollars("0.50").unwrap(),
            Some("admin"),
            db.now(),
        )
        .await
        .unwrap();
    db.advance(Duration::from_secs(60));
    db.report_trained(e).await;
    db.report_trained(f).await;
    let r = engine.tick().await.unwrap();
    assert_eq!(r.gone.len(), 2, "{r:?}");
    assert!(r.started.is_empty(), "{r:?}");
    assert_eq!(gate.status().unwrap().spent, MicroUsd(24_000));
    assert_eq!(db.status(g).await, TrainingStatus::Queued);
    db.advance(Duration::from_secs(16));
    engine.tick().await.unwrap();
    assert!(
        message(&db, g)
            .await
            .contains("monthly budget of $0.50 is reached")
    );
    db.repo
        .set_budget_override(MicroUsd::from_dollars(50), Some("admin"), db.now())
        .await
        .unwrap();
    let r = engine.tick().await.unwrap();
    assert_eq!(r.started, [g], "{r:?}");
    // December raised no alert: it never came near its budget's 75 %.
    assert_eq!(
        alerts_of(&db.repo, "budget_warning").await,
        ["budget:2026-11"]
    );
}

#[tokio::test]
async fn sqlite_a_month_of_runs_crosses_the_budget() {
    a_month_of_runs_crosses_the_budget(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_month_of_runs_crosses_the_budget() {
    a_month_of_runs_crosses_the_budget(Db::postgres().await).await;
}

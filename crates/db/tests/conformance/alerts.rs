//! Alerts: dedup within the cooldown (by `record_alert` and `raise_alert` alike), acknowledgement
//! closes an alert, paging and the open filter, and per-channel delivery state.

use std::time::Duration as StdDuration;

use chrono::Duration;

use loraforge_db::{AlertQuery, DeliveryAttempt};

use crate::helpers::*;

const HOUR: StdDuration = StdDuration::from_secs(3600);

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

fn all() -> AlertQuery {
    AlertQuery {
        open_only: false,
        before_id: None,
        limit: 50,
    }
}

pub async fn alerts_dedup_within_the_cooldown(repo: Repo) {
    let a = repo
        .raise_alert("k", "s", "first", HOUR, t(0))
        .await
        .unwrap();
    assert!(a.new);
    assert_eq!(a.count, 1);
    let b = repo
        .raise_alert("k", "s", "second", HOUR, t(30))
        .await
        .unwrap();
    assert_eq!((b.id, b.new, b.count), (a.id, false, 2));
    // Another subject or kind is another alert.
    let other = repo.raise_alert("k", "t", "x", HOUR, t(31)).await.unwrap();
    assert!(other.new && other.id != a.id);
    let row = repo.get_alert(a.id).await.unwrap().unwrap();
    assert_eq!(row.count, 2);
    assert_eq!(row.message, "second");
    assert_eq!((row.first_seen, row.last_seen), (t(0), t(30)));
    // After the cooldown (from the first sighting) a new row.
    let c = repo
        .raise_alert("k", "s", "third", HOUR, t(61))
        .await
        .unwrap();
    assert!(c.new && c.id != a.id, "{c:?}");
    // record_alert goes the same way, with the configured cooldown.
    repo.set_alert_cooldown(StdDuration::from_secs(600));
    assert_eq!(repo.alert_cooldown(), StdDuration::from_secs(600));
    repo.record_alert("orphan_instance", "pod-1", "m1", t(100))
        .await
        .unwrap();
    repo.record_alert("orphan_instance", "pod-1", "m2", t(105))
        .await
        .unwrap();
    repo.record_alert("orphan_instance", "pod-1", "m3", t(111))
        .await
        .unwrap();
    let rows = repo.list_alerts(all()).await.unwrap();
    let pods: Vec<i64> = rows
        .iter()
        .filter(|r| r.subject == "pod-1")
        .map(|r| r.count)
        .collect();
    assert_eq!(pods, vec![1, 2], "newest first: {rows:?}");
    // The old reading still works.
    let old = repo.alerts(1).await.unwrap();
    assert_eq!(
        (old[0].kind.as_str(), old[0].message.as_str()),
        ("orphan_instance", "m3")
    );
}

pub async fn concurrent_raises_make_one_alert(repo: Repo) {
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.raise_alert("race", "one", &format!("m{i}"), HOUR, t(0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        if task.await.unwrap().new {
            new += 1;
        }
    }
    assert_eq!(new, 1);
    let rows = repo.list_alerts(all()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].count, 10);
}

pub async fn acknowledged_alerts_close_and_page(repo: Repo) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            repo.raise_alert("k", &format!("s{i}"), "m", HOUR, t(i))
                .await
                .unwrap()
                .id,
        );
    }
    let acked = repo
        .ack_alert(ids[1], "admin-1", t(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked.acknowledged_at, Some(t(10)));
    assert_eq!(acked.acknowledged_by.as_deref(), Some("admin-1"));
    // A second ack keeps the first.
    let again = repo
        .ack_alert(ids[1], "admin-2", t(11))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.acknowledged_by.as_deref(), Some("admin-1"));
    assert!(
        repo.ack_alert(9_999_999, "admin-1", t(11))
            .await
            .unwrap()
            .is_none()
    );
    // Once acknowledged, the next occurrence is a new alert even within the cooldown.
    let after = repo
        .raise_alert("k", "s1", "again", HOUR, t(12))
        .await
        .unwrap();
    assert!(after.new && after.id != ids[1]);

    let open: Vec<i64> = repo
        .list_alerts(AlertQuery {
            open_only: true,
            before_id: None,
            limit: 50,
        })
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(open, vec![after.id, ids[4], ids[3], ids[2], ids[0]]);
    let page1 = repo
        .list_alerts(AlertQuery {
            open_only: false,
            before_id: None,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![after.id, ids[4]]
    );
    let page2 = repo
        .list_alerts(AlertQuery {
            open_only: false,
            before_id: Some(ids[4]),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2]]
    );
}

pub async fn deliveries_are_due_retried_and_done(repo: Repo) {
    let old = repo
        .raise_alert("k", "old", "m", HOUR, t(-600))
        .await
        .unwrap();
    let a = repo.raise_alert("k", "a", "m", HOUR, t(0)).await.unwrap();
    let b = repo.raise_alert("k", "b", "m", HOUR, t(1)).await.unwrap();
    let due = repo
        .due_deliveries("slack", t(-60), t(2), 10)
        .await
        .unwrap();
    assert_eq!(
        due.iter()
            .map(|d| (d.alert.id, d.attempts))
            .collect::<Vec<_>>(),
        vec![(a.id, 0), (b.id, 0)]
    );
    assert!(
        !due.iter().any(|d| d.alert.id == old.id),
        "older than `since`"
    );

    repo.record_delivery(a.id, "slack", &DeliveryAttempt::Delivered, t(2))
        .await
        .unwrap();
    repo.record_delivery(
        b.id,
        "slack",
        &DeliveryAttempt::Failed {
            error: "HTTP 500".into(),
            retry_at: t(3),
        },
        t(2),
    )
    .await
    .unwrap();
    // b waits for its retry; the webhook channel is separate.
    assert!(
        repo.due_deliveries("slack", t(-60), t(2), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        repo.due_deliveries("webhook", t(-60), t(2), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let due = repo
        .due_deliveries("slack", t(-60), t(3), 10)
        .await
        .unwrap();
    assert_eq!(
        due.iter()
            .map(|d| (d.alert.id, d.attempts))
            .collect::<Vec<_>>(),
        vec![(b.id, 1)]
    );
    repo.record_delivery(
        b.id,
        "slack",
        &DeliveryAttempt::GaveUp {
            error: "HTTP 500".into(),
        },
        t(3),
    )
    .await
    .unwrap();
    assert!(
        repo.due_deliveries("slack", t(-60), t(9), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let states = repo.alert_deliveries(b.id).await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].attempts, 2);
    assert_eq!(states[0].gave_up_at, Some(t(3)));
    assert_eq!(states[0].last_error.as_deref(), Some("HTTP 500"));
    let states = repo.alert_deliveries(a.id).await.unwrap();
    assert_eq!(
        (states[0].attempts, states[0].delivered_at),
        (1, Some(t(2)))
    );

    // Acknowledged before delivery: not sent.
    repo.ack_alert(a.id, "x", t(4)).await.unwrap();
    assert!(
        !repo
            .due_deliveries("webhook", t(-60), t(4), 10)
            .await
            .unwrap()
            .iter()
            .any(|d| d.alert.id == a.id)
    );
}

pub async fn finished_loras_are_mailed_once_and_opt_out_is_kept(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    assert!(repo.email_on_finish(owner).await.unwrap(), "on by default");
    let done = create(&repo, new_lora(owner, ds, "Done", t(0))).await;
    let failed = create(&repo, new_lora(owner, ds, "Broke", t(0))).await;
    let running = create(&repo, new_lora(owner, ds, "Running", t(0))).await;
    drive(
        &repo,
        done.id,
        loraforge_domain::TrainingStatus::Completed,
        t(1),
    )
    .await;
    drive(
        &repo,
        failed.id,
        loraforge_domain::TrainingStatus::Failed,
        t(2),
    )
    .await;
    drive(
        &repo,
        running.id,
        loraforge_domain::TrainingStatus::Training,
        t(2),
    )
    .await;

    let due = repo.finished_unmailed(t(0), 10).await.unwrap();
    let got: Vec<_> = due.iter().map(|f| (f.lora_id, f.status.as_str())).collect();
    assert_eq!(got, vec![(done.id, "completed"), (failed.id, "failed")]);
    assert!(due.iter().all(|f| f.email_on_finish));
    assert!(
        repo.finished_unmailed(t(3), 10).await.unwrap().is_empty(),
        "older than since"
    );

    repo.record_finish_mail(done.id, "completed", "sent", None, t(3))
        .await
        .unwrap();
    repo.record_finish_mail(done.id, "completed", "failed", Some("again"), t(4))
        .await
        .unwrap();
    let due = repo.finished_unmailed(t(0), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|f| f.lora_id).collect::<Vec<_>>(),
        vec![failed.id]
    );

    repo.set_email_on_finish(owner, Some("me@example.com"), false, t(5))
        .await
        .unwrap();
    assert!(!repo.email_on_finish(owner).await.unwrap());
    let due = repo.finished_unmailed(t(0), 10).await.unwrap();
    assert!(!due[0].email_on_finish);
    repo.set_email_on_finish(owner, None, true, t(6))
        .await
        .unwrap();
    assert!(repo.email_on_finish(owner).await.unwrap());
    let due = repo.finished_unmailed(t(0), 10).await.unwrap();
    assert_eq!(due[0].email.as_deref(), Some("me@example.com"));
}

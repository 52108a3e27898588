//! Client webhooks (`WebhookStore`, migration 0011): the webhook stored with the LoRA, stable
//! per-user secrets, the outbox cursor moved once per batch, leased deliveries and their log.

use chrono::Duration;

use loraforge_db::{AttemptNext, NewDelivery, NewWebhook, WebhookAttempt, WebhookBatch};
use loraforge_domain::webhooks::WebhookEvent;
use loraforge_domain::{Progress, TrainingStatus};

use crate::helpers::{Repo, create, drive, new_lora, now, user};

fn hook(events: &[WebhookEvent]) -> NewWebhook {
    NewWebhook {
        url: "https://hooks.example.com/loraforge".into(),
        events: events.to_vec(),
    }
}

pub async fn webhook_is_stored_with_the_lora_and_secrets_are_stable(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let mut new = new_lora(owner, ds, "Hooked", now());
    new.webhook = Some(hook(&[WebhookEvent::Completed, WebhookEvent::Start]));
    let lora = create(&repo, new).await;
    let stored = repo.lora_webhook(lora.id).await.unwrap().expect("stored");
    assert_eq!(stored.url, "https://hooks.example.com/loraforge");
    assert_eq!(
        stored.events,
        [WebhookEvent::Start, WebhookEvent::Completed]
    );
    assert_eq!(stored.owner, owner);
    assert_eq!(stored.event_cursor, 0);
    let plain = create(&repo, new_lora(owner, ds, "Plain", now())).await;
    assert_eq!(repo.lora_webhook(plain.id).await.unwrap(), None);

    let first = repo
        .webhook_secret(owner, "whsec_first", now())
        .await
        .unwrap();
    assert_eq!(first, "whsec_first");
    let again = repo
        .webhook_secret(owner, "whsec_other", now())
        .await
        .unwrap();
    assert_eq!(again, "whsec_first", "made once, stable after");
    let rotated = repo
        .rotate_webhook_secret(owner, "whsec_rotated", now())
        .await
        .unwrap();
    assert_eq!(rotated, "whsec_rotated");
    assert_eq!(
        repo.webhook_secret(owner, "whsec_x", now()).await.unwrap(),
        "whsec_rotated"
    );
    let (someone, _) = user(&repo).await;
    assert_eq!(
        repo.webhook_secret(someone, "whsec_theirs", now())
            .await
            .unwrap(),
        "whsec_theirs"
    );
}

pub async fn batches_move_the_cursor_once(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let mut new = new_lora(owner, ds, "Outbox", now());
    new.webhook = Some(hook(&WebhookEvent::ALL));
    let lora = create(&repo, new).await;
    // Another LoRA without a webhook: its events are not the outbox's.
    let plain = create(&repo, new_lora(owner, ds, "Plain", now())).await;
    drive(&repo, plain.id, TrainingStatus::Training, now()).await;
    drive(&repo, lora.id, TrainingStatus::Training, now()).await;

    let pending = repo.pending_webhook_events(100).await.unwrap();
    let kinds: Vec<_> = pending.iter().map(|p| p.event.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "status", "status"]);
    assert!(pending.iter().all(|p| p.event.lora_id == lora.id));
    assert!(pending.windows(2).all(|w| w[0].event.id < w[1].event.id));
    let start = &pending[2].event;
    assert_eq!(start.status, TrainingStatus::Training);

    let batch = WebhookBatch {
        lora_id: lora.id,
        from_cursor: 0,
        to_cursor: start.id,
        last_progress_at: None,
        deliveries: vec![NewDelivery {
            id: format!("msg_{}", start.id),
            event_id: start.id,
            event: WebhookEvent::Start,
            body: "{\"event\":\"start\"}".into(),
        }],
        now: now(),
    };
    assert!(repo.record_webhook_batch(&batch).await.unwrap());
    // A second writer with the same batch (another replica, a retry after a crash) writes nothing.
    assert!(!repo.record_webhook_batch(&batch).await.unwrap());
    assert!(repo.pending_webhook_events(100).await.unwrap().is_empty());
    let listed = repo.webhook_deliveries_of(lora.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "pending");
    assert_eq!(listed[0].url, "https://hooks.example.com/loraforge");

    let p = Progress {
        stage: Some("training".into()),
        percent: 40,
        estimated_remaining: None,
    };
    repo.record_progress(lora.id, &p, now()).await.unwrap();
    let pending = repo.pending_webhook_events(100).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event.kind, "progress");
    assert_eq!(pending[0].webhook.event_cursor, start.id);
    let at = now() + Duration::seconds(3);
    let moved = WebhookBatch {
        lora_id: lora.id,
        from_cursor: start.id,
        to_cursor: pending[0].event.id,
        last_progress_at: Some(at),
        deliveries: vec![],
        now: now(),
    };
    assert!(repo.record_webhook_batch(&moved).await.unwrap());
    let stored = repo.lora_webhook(lora.id).await.unwrap().unwrap();
    assert_eq!(stored.last_progress_at, Some(at));
    assert_eq!(stored.event_cursor, pending[0].event.id);
}

pub async fn deliveries_are_leased_attempted_and_logged(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let mut new = new_lora(owner, ds, "Leased", now());
    new.webhook = Some(hook(&WebhookEvent::ALL));
    let lora = create(&repo, new).await;
    let t0 = now();
    let batch = WebhookBatch {
        lora_id: lora.id,
        from_cursor: 0,
        to_cursor: 1,
        last_progress_at: None,
        deliveries: vec![NewDelivery {
            id: "msg_leased".into(),
            event_id: 1,
            event: WebhookEvent::Completed,
            body: "{}".into(),
        }],
        now: t0,
    };
    assert!(repo.record_webhook_batch(&batch).await.unwrap());
    let lease = Duration::seconds(60);

    let a = repo
        .claim_webhook_deliveries("a", t0 + lease, t0, 10)
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].id, "msg_leased");
    assert_eq!(a[0].owner, owner);
    assert_eq!(a[0].attempts, 0);
    assert_eq!(a[0].event, WebhookEvent::Completed);
    assert!(
        repo.claim_webhook_deliveries("b", t0 + lease, t0, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased to a"
    );
    let failed = WebhookAttempt {
        attempt: 1,
        at: t0,
        status_code: Some(500),
        error: Some("the receiver answered 500".into()),
        duration_ms: 12,
    };
    assert!(
        !repo
            .record_webhook_attempt("msg_leased", "b", &failed, AttemptNext::Failed)
            .await
            .unwrap(),
        "only the holder records"
    );
    let retry_at = t0 + Duration::seconds(5);
    assert!(
        repo.record_webhook_attempt("msg_leased", "a", &failed, AttemptNext::RetryAt(retry_at))
            .await
            .unwrap()
    );
    let t1 = t0 + Duration::seconds(1);
    assert!(
        repo.claim_webhook_deliveries("b", t1 + lease, t1, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    // Due again; a holder that dies keeps it only until its lease ends.
    let held = repo
        .claim_webhook_deliveries("a", retry_at + lease, retry_at, 10)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].attempts, 1);
    let after = retry_at + lease;
    let b = repo
        .claim_webhook_deliveries("b", after + lease, after, 10)
        .await
        .unwrap();
    assert_eq!(b.len(), 1, "the lease ended");
    let ok = WebhookAttempt {
        attempt: 2,
        at: after,
        status_code: Some(204),
        error: None,
        duration_ms: 3,
    };
    assert!(
        repo.record_webhook_attempt("msg_leased", "b", &ok, AttemptNext::Delivered)
            .await
            .unwrap()
    );
    assert!(
        !repo
            .record_webhook_attempt("msg_leased", "a", &ok, AttemptNext::Delivered)
            .await
            .unwrap(),
        "a lost its lease"
    );
    let later = after + Duration::hours(1);
    assert!(
        repo.claim_webhook_deliveries("a", later + lease, later, 10)
            .await
            .unwrap()
            .is_empty(),
        "delivered is done"
    );
    let log = repo.webhook_deliveries_of(lora.id).await.unwrap();
    assert_eq!(log.len(), 1);
    let d = &log[0];
    assert_eq!(d.state, "delivered");
    assert_eq!(d.next_attempt_at, None);
    assert_eq!(d.finished_at, Some(after));
    let codes: Vec<_> = d
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(codes, [(1, Some(500)), (2, Some(204))]);
    assert_eq!(
        d.attempts[0].error.as_deref(),
        Some("the receiver answered 500")
    );
    assert_eq!(d.attempts[0].duration_ms, 12);
    assert_eq!(d.attempts[0].at, t0);
}

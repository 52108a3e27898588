//! Datasets and `create_lora`: the per-user critical section.

use std::collections::HashSet;

use chrono::Duration;
use serde_json::json;

use loraforge_db::{CreateOutcome, DbError, FaultPoint, LoraQuery};
use loraforge_domain::{
    Dataset, DatasetId, LoraId, MonthlyWindow, Progress, TrainingParams, TrainingStatus, UserId,
};

use crate::helpers::*;

pub async fn dataset_round_trip(repo: Repo) {
    let owner = UserId::new();
    // Stored out of order; read back by index.
    let images = vec![image(2), image(0), image(1)];
    let d = Dataset {
        id: DatasetId::new(),
        user_id: owner,
        images,
        created_at: at("2026-11-15T12:00:00.123456Z"),
    };
    repo.insert_dataset(&d).await.unwrap();
    let got = repo
        .get_dataset(d.id)
        .await
        .unwrap()
        .expect("dataset stored");
    let mut want = d.clone();
    want.images.sort_by_key(|i| i.index);
    assert_eq!(got, want);
    assert_eq!(got.images[1].caption.as_deref(), Some("caption 1"));
    assert_eq!(got.images[0].caption, None);
    assert!(repo.get_dataset(DatasetId::new()).await.unwrap().is_none());
    // The same id twice is refused, and the first stays intact.
    assert!(repo.insert_dataset(&d).await.is_err());
    assert_eq!(repo.get_dataset(d.id).await.unwrap().unwrap(), want);
    repo.ping().await.unwrap();
}

pub async fn create_and_get(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let mut new = new_lora(
        owner,
        ds,
        "Cyberpunk Girl",
        at("2026-11-15T12:00:00.654321Z"),
    );
    new.description = Some("neon portraits".into());
    new.owner_email = Some("user@example.com".into());
    new.params = TrainingParams {
        rank: 16,
        steps: 2000,
        ..TrainingParams::default()
    };
    let id = new.id;
    let created = create(&repo, new.clone()).await;
    assert_eq!(created.id, id);
    assert_eq!(created.name, "Cyberpunk Girl");
    assert_eq!(created.description.as_deref(), Some("neon portraits"));
    assert_eq!(created.creator.id, owner);
    assert_eq!(created.creator.email.as_deref(), Some("user@example.com"));
    assert_eq!(created.status, TrainingStatus::Pending);
    assert_eq!(created.dataset_id, ds);
    assert_eq!(created.params, new.params);
    assert_eq!(created.progress, Progress::default());
    assert_eq!(
        (
            created.usage_count,
            created.error.clone(),
            created.storage_key.clone()
        ),
        (0, None, None)
    );
    assert!(created.validation_image_keys.is_empty());
    assert_eq!(
        (
            created.file_size,
            created.validation_passed,
            created.training_cost
        ),
        (None, None, loraforge_domain::MicroUsd::ZERO)
    );
    assert_eq!(created.created_at, new.now);
    assert_eq!(created.updated_at, new.now);
    assert_eq!(created.completed_at, None);
    assert_eq!(repo.get_lora(id).await.unwrap(), Some(created.clone()));
    assert_eq!(repo.get_lora(LoraId::new()).await.unwrap(), None);

    let events = repo.events_after(id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), events[0].status),
        ("created", TrainingStatus::Pending)
    );
    assert_eq!(events[0].lora_id, id);
    assert_eq!(events[0].at, new.now);
    assert_eq!(events[0].data, json!({ "name": "Cyberpunk Girl" }));

    // No email in a later token keeps the one we know; a new one replaces it everywhere.
    let mut second = new_lora(owner, ds, "Second", now());
    second.owner_email = None;
    assert_eq!(
        create(&repo, second).await.creator.email.as_deref(),
        Some("user@example.com")
    );
    let mut third = new_lora(owner, ds, "Third", now());
    third.owner_email = Some("new@example.com".into());
    create(&repo, third).await;
    assert_eq!(
        repo.get_lora(id)
            .await
            .unwrap()
            .unwrap()
            .creator
            .email
            .as_deref(),
        Some("new@example.com")
    );
}

async fn count_of(repo: &Repo, owner: UserId) -> u64 {
    repo.list_loras(&LoraQuery {
        creator: Some(owner),
        limit: 100,
        ..Default::default()
    })
    .await
    .unwrap()
    .total
}

pub async fn duplicate_name_per_user(repo: Repo) {
    let (alice, alice_ds) = user(&repo).await;
    let (bob, bob_ds) = user(&repo).await;
    create(&repo, new_lora(alice, alice_ds, "Cyberpunk Girl", now())).await;
    let again = repo
        .create_lora(
            new_lora(alice, alice_ds, "Cyberpunk Girl", now()),
            policy(100, now()),
        )
        .await;
    assert!(
        matches!(&again, Err(DbError::DuplicateName(n)) if n == "Cyberpunk Girl"),
        "{again:?}"
    );
    assert_eq!(count_of(&repo, alice).await, 1);
    // Another user may use the name.
    let bobs = create(&repo, new_lora(bob, bob_ds, "Cyberpunk Girl", now())).await;
    assert_eq!(bobs.creator.id, bob);
    assert_eq!(count_of(&repo, bob).await, 1);
}

pub async fn names_are_unique_by_their_key(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    create(&repo, new_lora(owner, ds, "Cyberpunk Girl", now())).await;
    // Trimmed, spaced, cased, full-width or with a joiner, it is the same name to its owner,
    // and the refusal names the LoRA they already have.
    for same in [
        "  Cyberpunk Girl\t",
        "cyberpunk girl",
        "CYBERPUNK  GIRL",
        "Ｃｙｂｅｒｐｕｎｋ Ｇｉｒｌ",
    ] {
        let again = repo
            .create_lora(new_lora(owner, ds, same, now()), policy(100, now()))
            .await;
        assert!(
            matches!(again, Err(DbError::DuplicateName(ref n)) if n == "Cyberpunk Girl"),
            "{same:?}: {again:?}"
        );
    }
    create(&repo, new_lora(owner, ds, "Cyberpunk Girls", now())).await;
    create(&repo, new_lora(owner, ds, "Straße", now())).await;
    let sharp = repo
        .create_lora(new_lora(owner, ds, "STRASSE", now()), policy(100, now()))
        .await;
    assert!(
        matches!(sharp, Err(DbError::DuplicateName(ref n)) if n == "Straße"),
        "{sharp:?}"
    );
    assert_eq!(count_of(&repo, owner).await, 3);
}

pub async fn monthly_limit_counts_this_window_and_counted_statuses(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let last_month = at("2026-10-31T23:59:59.999999Z");
    let now = now();
    let window = MonthlyWindow::containing(now);
    let limit = 5;

    // Last month's LoRA does not count, whatever its status.
    let old = create(&repo, new_lora(owner, ds, "October", last_month)).await;
    drive(&repo, old.id, TrainingStatus::Completed, last_month).await;
    // Failed and cancelled ones don't count.
    let failed = create(&repo, new_lora(owner, ds, "Failed", now)).await;
    drive(&repo, failed.id, TrainingStatus::Failed, now).await;
    let cancelled = create(&repo, new_lora(owner, ds, "Cancelled", now)).await;
    drive(&repo, cancelled.id, TrainingStatus::Cancelled, now).await;
    assert_eq!(repo.count_monthly(owner, window).await.unwrap(), 0);

    // Pending, queued, training, validating and completed do.
    for (i, status) in TrainingStatus::COUNTED.into_iter().enumerate() {
        let got = repo
            .create_lora(
                new_lora(owner, ds, &format!("Counted {i}"), now),
                policy(limit, now),
            )
            .await;
        let Ok(CreateOutcome::Created(l)) = got else {
            panic!("create {i}: {got:?}")
        };
        drive(&repo, l.id, status, now).await;
        assert_eq!(
            repo.count_monthly(owner, window).await.unwrap(),
            i as u32 + 1
        );
    }
    let refused = repo
        .create_lora(new_lora(owner, ds, "Sixth", now), policy(limit, now))
        .await;
    assert!(
        matches!(
            refused,
            Err(DbError::MonthlyLimitReached { used: 5, limit: 5 })
        ),
        "{refused:?}"
    );
    assert_eq!(repo.count_monthly(owner, window).await.unwrap(), 5);

    // A count that fails lets the create through (fail open), once.
    repo.faults().arm(FaultPoint::MonthlyCount);
    let open = repo
        .create_lora(new_lora(owner, ds, "Sixth", now), policy(limit, now))
        .await;
    assert!(matches!(open, Ok(CreateOutcome::Created(_))), "{open:?}");
    let refused = repo
        .create_lora(new_lora(owner, ds, "Seventh", now), policy(limit, now))
        .await;
    assert!(
        matches!(
            refused,
            Err(DbError::MonthlyLimitReached { used: 6, limit: 5 })
        ),
        "{refused:?}"
    );

    // A new month starts from zero, from its first instant.
    let december = at("2026-12-01T00:00:00Z");
    assert_eq!(
        repo.count_monthly(owner, MonthlyWindow::containing(december))
            .await
            .unwrap(),
        0
    );
    let fresh = repo
        .create_lora(
            new_lora(owner, ds, "December", december),
            policy(limit, december),
        )
        .await;
    assert!(matches!(fresh, Ok(CreateOutcome::Created(_))), "{fresh:?}");
    // Another user's count is their own.
    assert_eq!(repo.count_monthly(UserId::new(), window).await.unwrap(), 0);
}

pub async fn concurrent_creates_stop_at_the_limit(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.create_lora(
                    new_lora(owner, ds, &format!("LoRA {i}"), now()),
                    policy(5, now()),
                )
                .await
            })
        })
        .collect();
    let (mut created, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(CreateOutcome::Created(_)) => created += 1,
            Err(DbError::MonthlyLimitReached { used: 5, limit: 5 }) => limited += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((created, limited), (5, 15));
    assert_eq!(
        repo.count_monthly(owner, MonthlyWindow::containing(now()))
            .await
            .unwrap(),
        5
    );
    assert_eq!(count_of(&repo, owner).await, 5);
}

pub async fn idempotency_replay_and_mismatch(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let first = create(
        &repo,
        with_key(new_lora(owner, ds, "Keyed", now()), "key-1", "hash-a"),
    )
    .await;
    // The same request again, even at the limit and with another id, answers the first LoRA.
    let replay = with_key(
        new_lora(owner, ds, "Keyed", now() + Duration::seconds(5)),
        "key-1",
        "hash-a",
    );
    let got = repo.create_lora(replay, policy(1, now())).await.unwrap();
    assert_eq!(got, CreateOutcome::Replayed(first.clone()));
    // The same key with another body is refused.
    let other = with_key(new_lora(owner, ds, "Other", now()), "key-1", "hash-b");
    let got = repo.create_lora(other, policy(100, now())).await;
    assert!(matches!(got, Err(DbError::IdempotencyKeyReused)), "{got:?}");
    assert_eq!(count_of(&repo, owner).await, 1);
    // Keys belong to a user: another user's identical key is a new request.
    let (bob, bob_ds) = user(&repo).await;
    let bobs = create(
        &repo,
        with_key(new_lora(bob, bob_ds, "Keyed", now()), "key-1", "hash-a"),
    )
    .await;
    assert_ne!(bobs.id, first.id);
    // A new key is a new LoRA.
    let second = create(
        &repo,
        with_key(new_lora(owner, ds, "Keyed 2", now()), "key-2", "hash-a"),
    )
    .await;
    assert_ne!(second.id, first.id);
}

pub async fn concurrent_same_key_creates_make_one_lora(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let repo = repo.clone();
            let new = with_key(new_lora(owner, ds, "Once", now()), "retry-key", "same-body");
            tokio::spawn(async move { repo.create_lora(new, policy(5, now())).await })
        })
        .collect();
    let mut created = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let outcome = t.await.unwrap().expect("created or replayed");
        created += usize::from(matches!(outcome, CreateOutcome::Created(_)));
        ids.insert(outcome.lora().id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(count_of(&repo, owner).await, 1);
}

pub async fn dataset_of_someone_else_is_not_found(repo: Repo) {
    let (alice, _) = user(&repo).await;
    let (_, bobs_dataset) = user(&repo).await;
    let got = repo
        .create_lora(
            new_lora(alice, bobs_dataset, "Stolen", now()),
            policy(5, now()),
        )
        .await;
    assert!(matches!(got, Err(DbError::DatasetNotFound)), "{got:?}");
    let got = repo
        .create_lora(
            new_lora(alice, DatasetId::new(), "Missing", now()),
            policy(5, now()),
        )
        .await;
    assert!(matches!(got, Err(DbError::DatasetNotFound)), "{got:?}");
    assert_eq!(count_of(&repo, alice).await, 0);
}

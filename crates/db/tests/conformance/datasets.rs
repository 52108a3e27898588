//! Dataset quotas, the dataset sweep with content-addressed blobs, creators' display names and
//! idempotency look-ups (issue 9 items 4–6).

use std::sync::Arc;

use chrono::Duration;

use loraforge_db::{DatasetCutoffs, DbError, LoraQuery};
use loraforge_domain::{
    DailyWindow, Dataset, DatasetId, DatasetQuota, DatasetUsage, QuotaKind, TrainingStatus, UserId,
};

use crate::helpers::*;

/// A dataset of `owner` at `created` whose images have the blob keys `keys` (100 bytes each).
fn dataset_with(owner: UserId, keys: &[&str], created: chrono::DateTime<chrono::Utc>) -> Dataset {
    Dataset {
        id: DatasetId::new(),
        user_id: owner,
        images: keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut img = image(i as u32);
                img.storage_key = (*k).to_owned();
                img.bytes = 100;
                img
            })
            .collect(),
        created_at: created,
    }
}

fn keys(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|k| (*k).to_owned()).collect()
}

/// Claims the keys at the dataset's time, then inserts it under `quota`.
async fn store(repo: &Repo, d: &Dataset, quota: DatasetQuota) -> Result<(), DbError> {
    let ks: Vec<String> = d.images.iter().map(|i| i.storage_key.clone()).collect();
    repo.claim_blobs(&ks, d.created_at).await?;
    repo.insert_dataset_within(d, quota).await
}

pub async fn dataset_quota_counts_the_day_and_refuses_past_it(repo: Repo) {
    let (u, other) = (UserId::new(), UserId::new());
    let quota = DatasetQuota {
        datasets_per_day: 2,
        bytes_per_day: 500,
    };
    let t = now();
    store(&repo, &dataset_with(u, &["b/1", "b/2"], t), quota)
        .await
        .unwrap();
    store(
        &repo,
        &dataset_with(u, &["b/3"], t + Duration::hours(1)),
        quota,
    )
    .await
    .unwrap();
    let usage = repo
        .dataset_usage(u, DailyWindow::containing(t))
        .await
        .unwrap();
    assert_eq!(
        usage,
        DatasetUsage {
            datasets: 2,
            bytes: 300
        }
    );
    let third = dataset_with(u, &["b/4"], t + Duration::hours(2));
    match store(&repo, &third, quota).await {
        Err(DbError::DatasetQuotaReached(e)) => {
            assert_eq!((e.kind, e.limit, e.used), (QuotaKind::Datasets, 2, 2));
        }
        other => panic!("expected the quota, got {other:?}"),
    }
    assert!(repo.get_dataset(third.id).await.unwrap().is_none());
    // Another user, and the same user the next UTC day, start from zero.
    store(&repo, &dataset_with(other, &["b/4"], t), quota)
        .await
        .unwrap();
    let tomorrow = DailyWindow::containing(t).end;
    store(&repo, &dataset_with(u, &["b/5"], tomorrow), quota)
        .await
        .unwrap();
    // Bytes: 3 × 100 fits 500 only once more on a fresh day.
    let day3 = tomorrow + Duration::days(1);
    let bytes_quota = DatasetQuota {
        datasets_per_day: 10,
        bytes_per_day: 500,
    };
    store(
        &repo,
        &dataset_with(u, &["c/1", "c/2", "c/3"], day3),
        bytes_quota,
    )
    .await
    .unwrap();
    match store(
        &repo,
        &dataset_with(u, &["c/4", "c/5", "c/6"], day3),
        bytes_quota,
    )
    .await
    {
        Err(DbError::DatasetQuotaReached(e)) => {
            assert_eq!((e.kind, e.limit, e.used), (QuotaKind::Bytes, 500, 300));
        }
        other => panic!("expected the byte quota, got {other:?}"),
    }
}

pub async fn concurrent_dataset_inserts_stop_at_the_quota(repo: Repo) {
    let u = UserId::new();
    let quota = DatasetQuota {
        datasets_per_day: 3,
        bytes_per_day: 1 << 30,
    };
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let repo = Arc::clone(&repo);
            tokio::spawn(async move {
                let d = dataset_with(u, &[format!("k/{i}").as_str()], now());
                store(&repo, &d, quota).await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(DbError::DatasetQuotaReached(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 3);
    let usage = repo
        .dataset_usage(u, DailyWindow::containing(now()))
        .await
        .unwrap();
    assert_eq!(usage.datasets, 3);
}

pub async fn unused_datasets_go_and_shared_blobs_stay(repo: Repo) {
    let u = UserId::new();
    let quota = DatasetQuota::default();
    let t = now();
    let unused = dataset_with(u, &["img/shared", "img/only-unused"], t);
    let used = dataset_with(u, &["img/shared", "img/only-used"], t);
    let young = dataset_with(u, &["img/young"], t + Duration::days(6));
    for d in [&unused, &used, &young] {
        store(&repo, d, quota).await.unwrap();
    }
    let lora = create(&repo, new_lora(u, used.id, "Uses it", t)).await;

    let cutoffs = DatasetCutoffs {
        unused_before: t + Duration::days(1),
        trained_before: None,
    };
    let swept = repo
        .sweep_datasets(cutoffs, 100, t + Duration::days(8))
        .await
        .unwrap();
    assert_eq!(swept.deleted, vec![unused.id]);
    assert!(swept.images_removed.is_empty());
    assert!(repo.get_dataset(unused.id).await.unwrap().is_none());
    assert_eq!(
        repo.get_dataset(used.id)
            .await
            .unwrap()
            .unwrap()
            .images
            .len(),
        2
    );
    assert!(repo.get_dataset(young.id).await.unwrap().is_some());
    assert_eq!(
        repo.get_lora(lora.id).await.unwrap().unwrap().dataset_id,
        used.id
    );

    // Only the blob no dataset references, and only once its claim is older than the grace.
    let sweep_at = t + Duration::days(8);
    let orphans = repo
        .orphan_blobs(t - Duration::hours(1), 100, sweep_at)
        .await
        .unwrap();
    assert!(orphans.is_empty(), "claimed within the grace: {orphans:?}");
    let orphans = repo
        .orphan_blobs(t + Duration::hours(1), 100, sweep_at)
        .await
        .unwrap();
    assert_eq!(orphans, keys(&["img/only-unused"]));
    // An interrupted sweep finds its marked blobs again; forgetting them ends that.
    let again = repo
        .orphan_blobs(t + Duration::hours(1), 100, sweep_at)
        .await
        .unwrap();
    assert_eq!(again, orphans);
    repo.forget_blobs(&orphans).await.unwrap();
    assert!(
        repo.orphan_blobs(t + Duration::hours(1), 100, sweep_at)
            .await
            .unwrap()
            .is_empty()
    );
    // A second sweep has nothing left to delete.
    let swept = repo.sweep_datasets(cutoffs, 100, sweep_at).await.unwrap();
    assert!(swept.deleted.is_empty());
}

pub async fn a_blob_being_deleted_cannot_be_claimed_or_referenced(repo: Repo) {
    let u = UserId::new();
    let t = now();
    let gone = dataset_with(u, &["img/a"], t);
    store(&repo, &gone, DatasetQuota::default()).await.unwrap();
    let cutoffs = DatasetCutoffs {
        unused_before: t + Duration::days(1),
        trained_before: None,
    };
    let later = t + Duration::days(2);
    repo.sweep_datasets(cutoffs, 100, later).await.unwrap();
    let marked = repo.orphan_blobs(later, 100, later).await.unwrap();
    assert_eq!(marked, keys(&["img/a"]));

    // While the sweep deletes its bytes, nobody may start using it again.
    let err = repo
        .claim_blobs(&keys(&["img/a"]), later)
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::BlobBusy), "{err:?}");
    let again = dataset_with(u, &["img/a"], later);
    let err = repo
        .insert_dataset_within(&again, DatasetQuota::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::BlobBusy), "{err:?}");
    assert!(err.is_retryable());
    assert!(repo.get_dataset(again.id).await.unwrap().is_none());
    // A strict insert of a key nobody claimed is refused too.
    let unclaimed = dataset_with(u, &["img/never-claimed"], later);
    let err = repo
        .insert_dataset_within(&unclaimed, DatasetQuota::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::BlobBusy), "{err:?}");

    // Once forgotten, the same bytes can be stored again (and are then protected).
    repo.forget_blobs(&marked).await.unwrap();
    store(&repo, &again, DatasetQuota::default()).await.unwrap();
    let far = later + Duration::days(30);
    assert!(repo.orphan_blobs(far, 100, far).await.unwrap().is_empty());
}

pub async fn trained_datasets_keep_their_images_unless_retention_says_otherwise(repo: Repo) {
    let u = UserId::new();
    let t = now();
    let quota = DatasetQuota::default();
    let done = dataset_with(u, &["img/done"], t);
    let busy = dataset_with(u, &["img/busy"], t);
    store(&repo, &done, quota).await.unwrap();
    store(&repo, &busy, quota).await.unwrap();
    let finished = create(&repo, new_lora(u, done.id, "Finished", t)).await;
    drive(&repo, finished.id, TrainingStatus::Completed, t).await;
    let training = create(&repo, new_lora(u, busy.id, "Training", t)).await;
    drive(&repo, training.id, TrainingStatus::Training, t).await;

    let later = t + Duration::days(60);
    let kept = DatasetCutoffs {
        unused_before: t,
        trained_before: None,
    };
    assert_eq!(
        repo.sweep_datasets(kept, 100, later).await.unwrap(),
        Default::default(),
        "the default keeps trained datasets"
    );
    let retention = DatasetCutoffs {
        unused_before: t,
        trained_before: Some(t + Duration::days(30)),
    };
    let swept = repo.sweep_datasets(retention, 100, later).await.unwrap();
    assert_eq!(swept.images_removed, vec![done.id]);
    assert!(swept.deleted.is_empty());
    let d = repo
        .get_dataset(done.id)
        .await
        .unwrap()
        .expect("record stays");
    assert!(d.images.is_empty());
    assert_eq!(
        repo.get_dataset(busy.id)
            .await
            .unwrap()
            .unwrap()
            .images
            .len(),
        1
    );
    // The LoRA stays; its dataset cannot be trained again.
    assert_eq!(
        repo.get_lora(finished.id).await.unwrap().unwrap().status,
        TrainingStatus::Completed
    );
    let again = repo
        .create_lora(new_lora(u, done.id, "Again", later), policy(100, later))
        .await;
    assert!(matches!(again, Err(DbError::DatasetNotFound)), "{again:?}");
    // Its image is now an orphan; the busy one's is not.
    let orphans = repo.orphan_blobs(later, 100, later).await.unwrap();
    assert_eq!(orphans, keys(&["img/done"]));
    // Nothing more on the next sweep.
    assert_eq!(
        repo.sweep_datasets(retention, 100, later).await.unwrap(),
        Default::default()
    );
}

pub async fn display_names_show_in_the_library(repo: Repo) {
    let (u, d) = user(&repo).await;
    assert_eq!(repo.user_profile(UserId::new()).await.unwrap(), None);
    let lora = create(&repo, new_lora(u, d, "Named", now())).await;
    let email = lora.creator.email.clone();
    assert!(email.is_some());
    assert_eq!(lora.creator.display_name, None);

    let p = repo
        .set_display_name(u, None, Some("Ann Artist"), now())
        .await
        .unwrap();
    assert_eq!(
        (p.email.clone(), p.display_name.as_deref()),
        (email.clone(), Some("Ann Artist"))
    );
    assert_eq!(repo.user_profile(u).await.unwrap(), Some(p));
    let got = repo.get_lora(lora.id).await.unwrap().unwrap();
    assert_eq!(got.creator.display_name.as_deref(), Some("Ann Artist"));
    let page = repo
        .list_loras(&LoraQuery {
            limit: 10,
            ..LoraQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.items[0].creator.display_name.as_deref(),
        Some("Ann Artist")
    );
    let page = repo
        .list_loras(&LoraQuery {
            search: Some("named".into()),
            limit: 10,
            ..LoraQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.items[0].creator.display_name.as_deref(),
        Some("Ann Artist")
    );

    let cleared = repo.set_display_name(u, None, None, now()).await.unwrap();
    assert_eq!((cleared.email, cleared.display_name), (email, None));
    // A user the service has not seen yet gets a record.
    let fresh = UserId::new();
    let p = repo
        .set_display_name(fresh, Some("f@example.com"), Some("Fresh"), now())
        .await
        .unwrap();
    assert_eq!(p.email.as_deref(), Some("f@example.com"));
}

pub async fn idempotent_lora_answers_before_any_work(repo: Repo) {
    let (u, d) = user(&repo).await;
    assert!(repo.idempotent_lora(u, "k1").await.unwrap().is_none());
    let lora = create(
        &repo,
        with_key(new_lora(u, d, "Keyed", now()), "k1", "hash-1"),
    )
    .await;
    let found = repo
        .idempotent_lora(u, "k1")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(found.request_hash, "hash-1");
    assert_eq!(found.lora.id, lora.id);
    // Keys are per user.
    assert!(
        repo.idempotent_lora(UserId::new(), "k1")
            .await
            .unwrap()
            .is_none()
    );
}

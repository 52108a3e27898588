//! `UsageStore` and `HandoffStore` (migration 0012): uses counted once per generation, also
//! under concurrent retries; uses per day; a character's newest completed LoRA; the sha256 and
//! the first-miss time of a LoRA's file; a lost file fails a completed LoRA.

use chrono::{Duration, NaiveDate};

use loraforge_db::UseRecord;
use loraforge_domain::{LoraId, StatusEvent, TrainingStatus, UserId};

use crate::helpers::*;

async fn lora_for(repo: &Repo, lora_name: &str, character: Option<&str>, minutes: i64) -> LoraId {
    let (u, d) = user(repo).await;
    let mut new = new_lora(u, d, lora_name, now() + Duration::minutes(minutes));
    new.character_id = character.map(str::to_owned);
    new.triggered_by_job_id = Some(format!("job-{lora_name}"));
    create(repo, new).await.id
}

async fn count(repo: &Repo, id: LoraId) -> u64 {
    repo.get_lora(id).await.unwrap().unwrap().usage_count
}

pub async fn uses_count_once_per_generation_and_by_day(repo: Repo) {
    let a = lora_for(&repo, "A", None, 0).await;
    let b = lora_for(&repo, "B", None, 1).await;
    let gen_user = UserId::new();
    let day1 = now();
    let day2 = now() + Duration::days(1);

    let mut want = vec![a, b];
    want.sort();
    let counted = repo
        .record_uses("g1", &[b, a, b], gen_user, day1)
        .await
        .unwrap();
    assert_eq!(counted, want, "each LoRA once, in id order");
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (1, 1));
    let again = repo
        .record_uses("g1", &[a, b], gen_user, day1)
        .await
        .unwrap();
    assert!(again.is_empty(), "a retry counts nothing: {again:?}");
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (1, 1));
    assert_eq!(
        repo.record_uses("g2", &[a], gen_user, day1).await.unwrap(),
        vec![a]
    );
    assert_eq!(
        repo.record_uses("g3", &[a], gen_user, day2).await.unwrap(),
        vec![a]
    );
    assert!(
        repo.record_uses("g4", &[], gen_user, day2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count(&repo, a).await, 3);

    let d1 = day1.date_naive();
    let d2 = day2.date_naive();
    let days = repo
        .uses_by_day(a, d1 - Duration::days(5), d2)
        .await
        .unwrap();
    let got: Vec<(NaiveDate, u64)> = days.iter().map(|d| (d.day, d.uses)).collect();
    assert_eq!(got, vec![(d1, 2), (d2, 1)]);
    let only_first = repo.uses_by_day(a, d1, d1).await.unwrap();
    assert_eq!(only_first.len(), 1);
    assert_eq!(only_first[0].uses, 2);
    let b_days = repo.uses_by_day(b, d1, d2).await.unwrap();
    assert_eq!(b_days.len(), 1);
    assert_eq!(b_days[0].uses, 1);
    assert!(repo.uses_by_day(b, d2, d2).await.unwrap().is_empty());
}

pub async fn concurrent_retries_of_a_generation_count_once(repo: Repo) {
    let a = lora_for(&repo, "A", None, 0).await;
    let b = lora_for(&repo, "B", None, 1).await;
    let u = UserId::new();
    // 12 concurrent retries of one generation, in both orders.
    let retries = (0..12).map(|i| {
        let repo = repo.clone();
        let loras = if i % 2 == 0 { vec![a, b] } else { vec![b, a] };
        tokio::spawn(async move { repo.record_uses("same", &loras, u, now()).await })
    });
    let mut counted = 0;
    for r in futures::future::join_all(retries).await {
        counted += r.unwrap().expect("no error, no deadlock").len();
    }
    assert_eq!(counted, 2, "one recorder counted both LoRAs");
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (1, 1));
    // 12 different generations at once: each counts.
    let gens = (0..12).map(|i| {
        let repo = repo.clone();
        let loras = if i % 2 == 0 { vec![a, b] } else { vec![b, a] };
        tokio::spawn(async move { repo.record_uses(&format!("g{i}"), &loras, u, now()).await })
    });
    for r in futures::future::join_all(gens).await {
        assert_eq!(r.unwrap().expect("no error, no deadlock").len(), 2);
    }
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (13, 13));
}

pub async fn a_batch_of_generations_is_one_recording(repo: Repo) {
    let a = lora_for(&repo, "A", None, 0).await;
    let b = lora_for(&repo, "B", None, 1).await;
    let u = UserId::new();
    let day1 = now();
    let day2 = now() + Duration::days(1);
    let rec = |g: &str, loras: &[LoraId], at| UseRecord {
        generation_id: g.to_owned(),
        loras: loras.to_vec(),
        user: u,
        at,
    };
    repo.record_uses("old", &[a], u, day1).await.unwrap();
    let mut ab = vec![a, b];
    ab.sort();
    let batch = [
        rec("g1", &[b, a, b], day1),
        // Stored before this batch: counts nothing.
        rec("old", &[a], day1),
        // A retry of g1 in the same batch: its pairs belong to the first record.
        rec("g1", &[a], day1),
        rec("g2", &[b], day2),
        rec("g3", &[], day2),
    ];
    let counted = repo.record_use_batch(&batch).await.unwrap();
    assert_eq!(counted, vec![ab.clone(), vec![], vec![], vec![b], vec![]]);
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (2, 2));
    // Each record's own day.
    let b_days: Vec<(NaiveDate, u64)> = repo
        .uses_by_day(b, day1.date_naive(), day2.date_naive())
        .await
        .unwrap()
        .iter()
        .map(|d| (d.day, d.uses))
        .collect();
    assert_eq!(b_days, vec![(day1.date_naive(), 1), (day2.date_naive(), 1)]);
    // The whole batch again: nothing new.
    let again = repo.record_use_batch(&batch).await.unwrap();
    assert!(again.iter().all(Vec::is_empty), "{again:?}");
    assert!(repo.record_use_batch(&[]).await.unwrap().is_empty());
    // A LoRA that does not exist fails the whole batch and records none of it.
    let ghost = repo
        .record_use_batch(&[rec("g4", &[a], day1), rec("g5", &[LoraId::new()], day1)])
        .await;
    assert!(ghost.is_err(), "{ghost:?}");
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (2, 2));
    // Concurrent batches over the same LoRAs, in both orders: no deadlock, each pair once.
    let batches = (0..8).map(|i| {
        let repo = repo.clone();
        let loras = if i % 2 == 0 { vec![a, b] } else { vec![b, a] };
        let batch: Vec<UseRecord> = (0..4)
            .map(|j| rec(&format!("c{}", (i + j) % 10), &loras, day1))
            .collect();
        tokio::spawn(async move { repo.record_use_batch(&batch).await })
    });
    let mut counted = 0;
    for r in futures::future::join_all(batches).await {
        counted += r
            .unwrap()
            .expect("no error, no deadlock")
            .iter()
            .map(Vec::len)
            .sum::<usize>();
    }
    assert_eq!(counted, 20, "10 generations × 2 LoRAs, each once");
    assert_eq!((count(&repo, a).await, count(&repo, b).await), (12, 12));
}

pub async fn a_characters_newest_completed_lora_and_its_file_facts(repo: Repo) {
    let old = lora_for(&repo, "Old", Some("hero"), 0).await;
    let new = lora_for(&repo, "New", Some("hero"), 1).await;
    let newer = lora_for(&repo, "Newer", Some("hero"), 2).await;
    let other = lora_for(&repo, "Other", Some("villain"), 3).await;
    assert!(
        repo.newest_completed_of_character("hero")
            .await
            .unwrap()
            .is_none()
    );
    for id in [old, new, other] {
        drive(
            &repo,
            id,
            TrainingStatus::Completed,
            now() + Duration::minutes(5),
        )
        .await;
    }
    drive(
        &repo,
        newer,
        TrainingStatus::Training,
        now() + Duration::minutes(5),
    )
    .await;
    let found = repo
        .newest_completed_of_character("hero")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found.id, new,
        "newest completed, not the newer one in training"
    );
    assert_eq!(found.character_id.as_deref(), Some("hero"));
    assert_eq!(found.triggered_by_job_id.as_deref(), Some("job-New"));
    assert!(
        repo.newest_completed_of_character("nobody")
            .await
            .unwrap()
            .is_none()
    );
    // All at once: one answer per character that has one, duplicates asked once.
    let mut many: Vec<_> = repo
        .newest_completed_of_characters(&[
            "hero".to_owned(),
            "nobody".to_owned(),
            "villain".to_owned(),
            "hero".to_owned(),
        ])
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.character_id.unwrap(), l.id))
        .collect();
    many.sort();
    assert_eq!(
        many,
        vec![("hero".to_owned(), new), ("villain".to_owned(), other)]
    );
    assert!(
        repo.newest_completed_of_characters(&[])
            .await
            .unwrap()
            .is_empty()
    );

    // The first sha256 recorded stays.
    let sha = "a".repeat(64);
    repo.record_sha256(new, &sha).await.unwrap();
    repo.record_sha256(new, &"b".repeat(64)).await.unwrap();
    assert_eq!(repo.get_lora(new).await.unwrap().unwrap().sha256, Some(sha));

    // The first miss is kept until the file is found again.
    let t0 = now() + Duration::minutes(10);
    assert_eq!(repo.note_file_missing(new, t0).await.unwrap(), t0);
    assert_eq!(
        repo.note_file_missing(new, t0 + Duration::minutes(3))
            .await
            .unwrap(),
        t0
    );
    assert_eq!(
        repo.get_lora(new)
            .await
            .unwrap()
            .unwrap()
            .file_missing_since,
        Some(t0)
    );
    repo.clear_file_missing(new).await.unwrap();
    assert_eq!(
        repo.get_lora(new)
            .await
            .unwrap()
            .unwrap()
            .file_missing_since,
        None
    );
    let t1 = t0 + Duration::minutes(20);
    assert_eq!(repo.note_file_missing(new, t1).await.unwrap(), t1);
    assert!(
        repo.note_file_missing(LoraId::new(), t1)
            .await
            .unwrap_err()
            .is_not_found()
    );

    // A lost file fails a completed LoRA through the status machine; nothing else can.
    let failed = apply(&repo, new, StatusEvent::FileLost, t1).await.unwrap();
    assert_eq!(failed.status, TrainingStatus::Failed);
    assert!(
        apply(&repo, newer, StatusEvent::FileLost, t1)
            .await
            .is_err()
    );
    assert!(apply(&repo, old, StatusEvent::Fail, t1).await.is_err());
    let found = repo
        .newest_completed_of_character("hero")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, old, "a failed LoRA is no longer handed out");
}

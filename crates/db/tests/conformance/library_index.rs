//! The change feed (`LibraryFeed`, migration 0023) and the in-memory library built from it
//! (`SyncedIndex`): the index answers every listing it serves exactly as the store does, before
//! and after LoRAs are used, hidden, shown again, renamed in their description, given a new
//! creator name or added; and the feed, read in small pages while the library changes, misses
//! nothing.

use std::collections::HashSet;

use chrono::Duration;

use loraforge_db::{FeedCursor, LibraryRow, LoraQuery, SEARCH_TOTAL_CAP, SyncedIndex};
use loraforge_domain::{LoraId, LoraSort, TrainingStatus, UserId};

use crate::helpers::*;

/// `n` LoRAs over `users`: names from a small vocabulary ("Kappa", "Kaboom", "Lambda", "Zeta"),
/// some with a description, statuses, uses and times varied; ASCII names, so every engine's
/// `lower()` agrees.
fn library(users: &[(UserId, loraforge_domain::DatasetId)], n: i64, from: i64) -> Vec<LibraryRow> {
    (from..from + n)
        .map(|i| {
            let word = match i {
                _ if i % 40 == 0 => "Kaboom",
                _ if i % 11 == 0 => "Zeta",
                _ if i % 2 == 0 => "Kappa",
                _ => "Lambda",
            };
            let description = match i % 4 {
                0 => Some("neon city, Lamp light"),
                1 => Some("kappa-style portrait"),
                _ => None,
            };
            let (u, d) = users[(i % users.len() as i64) as usize];
            let email = (i % 3 == 0).then_some("creator@example.com");
            let status = match i % 9 {
                0 => TrainingStatus::Failed,
                4 => TrainingStatus::Queued,
                _ => TrainingStatus::Completed,
            };
            let at = now() - Duration::days(5) + Duration::minutes(i % 37);
            row(
                u,
                email,
                d,
                &format!("{word} n{i}"),
                description,
                status,
                (i % 7) as u64,
                at,
            )
        })
        .collect()
}

/// Every listing the index serves, compared with the store's answer.
async fn answers_match(repo: &Repo, index: &SyncedIndex, when: &str) {
    let searches = [
        None,
        Some("ka"),
        Some("kap"),
        Some("kappa"),
        Some("KAPPA n1"),
        Some("lam"),
        Some("l"),
        Some("kab"),
        Some("ka lamp"),
        Some("zeta neon"),
        Some("portrait"),
        Some("nothing"),
    ];
    let mut compared = 0;
    for search in searches {
        for sort in [LoraSort::Popular, LoraSort::Recent, LoraSort::Name] {
            for status in [
                None,
                Some(TrainingStatus::Completed),
                Some(TrainingStatus::Failed),
            ] {
                for (offset, limit) in [(0, 50), (7, 11), (990, 20), (1_030, 50), (5_000, 5)] {
                    let query = LoraQuery {
                        search: search.map(str::to_owned),
                        sort,
                        status,
                        offset,
                        limit,
                        ..LoraQuery::default()
                    };
                    let want = repo.list_loras(&query).await.unwrap();
                    let got = index.query(&query).expect("a public listing is served");
                    assert_eq!(got, want, "{when}: {query:?}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 12 * 3 * 3 * 5);
}

pub async fn the_index_answers_as_the_store(repo: Repo) {
    let users = [user(&repo).await, user(&repo).await, user(&repo).await];
    let n = 2 * SEARCH_TOTAL_CAP as i64;
    assert_eq!(
        repo.bulk_insert_library(library(&users, n, 0))
            .await
            .unwrap(),
        n as u64
    );
    let all = repo
        .list_loras(&LoraQuery {
            sort: LoraSort::Recent,
            limit: 100,
            ..LoraQuery::default()
        })
        .await
        .unwrap();
    // Broad prefixes are capped, as the store caps them.
    let broad = repo
        .list_loras(&LoraQuery {
            search: Some("ka".into()),
            limit: 1,
            ..LoraQuery::default()
        })
        .await
        .unwrap();
    assert!(!broad.total_exact);

    let index = SyncedIndex::new();
    assert!(!index.ready());
    let read = index.catch_up(repo.as_ref()).await.unwrap();
    assert!(index.ready());
    assert!(read.rows >= n as usize, "{read:?}");
    assert_eq!(index.len(), n as usize);
    answers_match(&repo, &index, "after the first read").await;

    // Changes of every kind the listings show.
    let ids: Vec<LoraId> = all.items.iter().map(|s| s.id).collect();
    repo.record_uses("gen-1", &ids[..5], users[0].0, now())
        .await
        .unwrap();
    repo.record_uses("gen-2", &ids[2..4], users[1].0, now())
        .await
        .unwrap();
    repo.hide_lora(ids[10], "spam", users[0].0, now())
        .await
        .unwrap();
    repo.hide_lora(ids[11], "spam", users[0].0, now())
        .await
        .unwrap();
    repo.unhide_lora(ids[11]).await.unwrap();
    repo.update_description(ids[12], Some("a zebra among kappas".into()), now())
        .await
        .unwrap();
    repo.set_display_name(users[1].0, None, Some("Nightshade"), now())
        .await
        .unwrap();
    repo.bulk_insert_library(library(&users, 40, n))
        .await
        .unwrap();

    index.catch_up(repo.as_ref()).await.unwrap();
    assert_eq!(index.len(), n as usize + 40);
    answers_match(&repo, &index, "after the changes").await;
    let zebra = index
        .query(&LoraQuery {
            search: Some("zeb".into()),
            limit: 5,
            ..LoraQuery::default()
        })
        .unwrap();
    assert_eq!(
        zebra.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        [ids[12]]
    );
    let hidden = index
        .query(&LoraQuery {
            search: Some(all.items[10].name.clone()),
            limit: 50,
            ..LoraQuery::default()
        })
        .unwrap();
    assert!(hidden.items.iter().all(|s| s.id != ids[10]));
}

pub async fn the_feed_in_small_pages_misses_nothing(repo: Repo) {
    let users = [user(&repo).await, user(&repo).await];
    repo.bulk_insert_library(library(&users, 25, 0))
        .await
        .unwrap();
    let everything: HashSet<LoraId> = repo
        .list_loras(&LoraQuery {
            limit: 100,
            include_hidden: true,
            ..LoraQuery::default()
        })
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(everything.len(), 25);

    // A round read 4 rows at a time; a LoRA changes and another is added half-way.
    let mut seen: HashSet<LoraId> = HashSet::new();
    let mut cursor = FeedCursor::default();
    let mut pages = 0;
    let mut changed = None;
    loop {
        let page = repo.library_changes(&cursor, 4).await.unwrap();
        assert!(page.rows.len() <= 4);
        seen.extend(page.rows.iter().map(|s| s.id));
        pages += 1;
        if pages == 3 {
            let first = *seen.iter().next().unwrap();
            repo.record_uses("mid-round", &[first], users[0].0, now())
                .await
                .unwrap();
            let added = library(&users, 1, 100);
            changed = Some((first, added[0].id));
            repo.bulk_insert_library(added).await.unwrap();
        }
        cursor = page.cursor;
        if page.caught_up {
            break;
        }
    }
    assert!(pages >= 7, "25 rows in pages of 4: {pages}");
    assert!(everything.iter().all(|id| seen.contains(id)));

    // The next round has what changed during the first one, in its current state.
    let (used, added) = changed.unwrap();
    let mut next: Vec<loraforge_domain::LoraSummary> = Vec::new();
    loop {
        let page = repo.library_changes(&cursor, 4).await.unwrap();
        next.extend(page.rows);
        cursor = page.cursor;
        if page.caught_up {
            break;
        }
    }
    let used_now = next.iter().rev().find(|s| s.id == used);
    assert_eq!(
        used_now.map(|s| s.usage_count),
        Some(repo.get_lora(used).await.unwrap().unwrap().usage_count)
    );
    assert!(next.iter().any(|s| s.id == added) || seen.contains(&added));
}

//! The public library: filters, search, sorts and paging, over rows imported in bulk.

use chrono::Duration;

use loraforge_db::{LoraQuery, Page, SEARCH_TOTAL_CAP};
use loraforge_domain::{LoraSort, LoraSummary, TrainingStatus, UserId};

use crate::helpers::*;

struct Library {
    u1: UserId,
    u3: UserId,
}

/// a: "Cyberpunk Girl" (u1, completed, 50 uses, t1)   b: "cyber knight" (u2, completed, 50, t2)
/// c: "Watercolor Cat" (u1, failed, 10, t3)           d: "Zebra" (u2, queued, 100, t0)
/// e: "apple tree" (u3 without email, completed, 0, t4) f: "zebra" (u1, completed, 0, t5)
async fn seed(repo: &Repo) -> Library {
    let (u1, d1) = user(repo).await;
    let (u2, d2) = user(repo).await;
    let (u3, d3) = user(repo).await;
    let t = |m: i64| now() - Duration::days(10) + Duration::minutes(m);
    let (e1, e2) = (Some("u1@example.com"), Some("u2@example.com"));
    use TrainingStatus::*;
    let rows = vec![
        row(
            u1,
            e1,
            d1,
            "Cyberpunk Girl",
            Some("neon city portrait"),
            Completed,
            50,
            t(1),
        ),
        row(u2, e2, d2, "cyber knight", None, Completed, 50, t(2)),
        row(
            u1,
            e1,
            d1,
            "Watercolor Cat",
            Some("soft CYBERNETIC paws"),
            Failed,
            10,
            t(3),
        ),
        row(u2, e2, d2, "Zebra", Some("stripes"), Queued, 100, t(0)),
        row(
            u3,
            None,
            d3,
            "apple tree",
            Some("Cyberpunk orchard"),
            Completed,
            0,
            t(4),
        ),
        row(
            u1,
            e1,
            d1,
            "zebra",
            Some("more stripes"),
            Completed,
            0,
            t(5),
        ),
    ];
    assert_eq!(repo.bulk_insert_library(rows).await.unwrap(), 6);
    Library { u1, u3 }
}

fn names(page: &Page<LoraSummary>) -> Vec<&str> {
    page.items.iter().map(|s| s.name.as_str()).collect()
}

fn q(sort: LoraSort) -> LoraQuery {
    LoraQuery {
        sort,
        limit: 50,
        ..Default::default()
    }
}

async fn search(repo: &Repo, text: &str) -> Page<LoraSummary> {
    let query = LoraQuery {
        search: Some(text.to_owned()),
        ..q(LoraSort::Name)
    };
    repo.list_loras(&query)
        .await
        .unwrap_or_else(|e| panic!("search {text:?}: {e}"))
}

pub async fn list_sorts_filters_and_pages(repo: Repo) {
    let lib = seed(&repo).await;
    let popular = repo.list_loras(&q(LoraSort::Popular)).await.unwrap();
    assert_eq!(
        names(&popular),
        [
            "Zebra",
            "cyber knight",
            "Cyberpunk Girl",
            "Watercolor Cat",
            "zebra",
            "apple tree"
        ]
    );
    assert_eq!(popular.total, 6);
    let recent = repo.list_loras(&q(LoraSort::Recent)).await.unwrap();
    assert_eq!(
        names(&recent),
        [
            "zebra",
            "apple tree",
            "Watercolor Cat",
            "cyber knight",
            "Cyberpunk Girl",
            "Zebra"
        ]
    );
    let by_name = repo.list_loras(&q(LoraSort::Name)).await.unwrap();
    assert_eq!(
        names(&by_name),
        [
            "apple tree",
            "cyber knight",
            "Cyberpunk Girl",
            "Watercolor Cat",
            "zebra",
            "Zebra"
        ]
    );

    let first = &popular.items[2];
    assert_eq!(first.creator.id, lib.u1);
    assert_eq!(first.creator.email.as_deref(), Some("u1@example.com"));
    assert_eq!(
        (first.usage_count, first.status),
        (50, TrainingStatus::Completed)
    );
    assert_eq!(first.description.as_deref(), Some("neon city portrait"));
    assert_eq!(
        first.created_at,
        now() - Duration::days(10) + Duration::minutes(1)
    );
    assert_eq!(popular.items[5].creator.email, None);
    assert_eq!(popular.items[5].creator.id, lib.u3);

    let completed = LoraQuery {
        status: Some(TrainingStatus::Completed),
        ..q(LoraSort::Recent)
    };
    let page = repo.list_loras(&completed).await.unwrap();
    assert_eq!(
        (names(&page), page.total),
        (
            vec!["zebra", "apple tree", "cyber knight", "Cyberpunk Girl"],
            4
        )
    );
    let mine = LoraQuery {
        creator: Some(lib.u1),
        ..q(LoraSort::Recent)
    };
    let page = repo.list_loras(&mine).await.unwrap();
    assert_eq!(
        (names(&page), page.total),
        (vec!["zebra", "Watercolor Cat", "Cyberpunk Girl"], 3)
    );
    let both = LoraQuery {
        creator: Some(lib.u1),
        status: Some(TrainingStatus::Failed),
        ..q(LoraSort::Recent)
    };
    assert_eq!(
        names(&repo.list_loras(&both).await.unwrap()),
        ["Watercolor Cat"]
    );
    let nobody = LoraQuery {
        creator: Some(UserId::new()),
        ..q(LoraSort::Recent)
    };
    assert_eq!(
        repo.list_loras(&nobody).await.unwrap(),
        Page {
            items: vec![],
            total: 0,
            total_exact: true,
        }
    );

    // Paging: total counts every match, whatever the page.
    let page = repo
        .list_loras(&LoraQuery {
            limit: 2,
            offset: 1,
            ..q(LoraSort::Recent)
        })
        .await
        .unwrap();
    assert_eq!(
        (names(&page), page.total),
        (vec!["apple tree", "Watercolor Cat"], 6)
    );
    let page = repo
        .list_loras(&LoraQuery {
            limit: 10,
            offset: 5,
            ..q(LoraSort::Recent)
        })
        .await
        .unwrap();
    assert_eq!((names(&page), page.total), (vec!["Zebra"], 6));
    let page = repo
        .list_loras(&LoraQuery {
            limit: 10,
            offset: 60,
            ..q(LoraSort::Recent)
        })
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.total), (0, 6));
}

pub async fn search_matches_word_prefixes(repo: Repo) {
    seed(&repo).await;
    let cyber = [
        "apple tree",
        "cyber knight",
        "Cyberpunk Girl",
        "Watercolor Cat",
    ];
    assert_eq!(names(&search(&repo, "cyber").await), cyber);
    assert_eq!(search(&repo, "cyber").await.total, 4);
    assert_eq!(names(&search(&repo, "CyBeR").await), cyber);
    // Every word must match, in any order, in name or description.
    assert_eq!(
        names(&search(&repo, "cyber girl").await),
        ["Cyberpunk Girl"]
    );
    assert_eq!(
        names(&search(&repo, "GIRL   cyb").await),
        ["Cyberpunk Girl"]
    );
    assert_eq!(names(&search(&repo, "neon").await), ["Cyberpunk Girl"]);
    assert_eq!(
        names(&search(&repo, "cyberpunk orch").await),
        ["apple tree"]
    );
    assert_eq!(names(&search(&repo, "zeb").await), ["zebra", "Zebra"]);
    assert_eq!(names(&search(&repo, "stripes more").await), ["zebra"]);
    assert_eq!(search(&repo, "cyber zebra").await.total, 0);
    // Prefixes of words, not infixes.
    assert_eq!(search(&repo, "punk").await.total, 0);
    assert_eq!(search(&repo, "nothing-like-this").await.total, 0);

    // Empty searches filter nothing.
    for empty in ["", "   ", "\t\n"] {
        assert_eq!(search(&repo, empty).await.total, 6, "{empty:?}");
    }
    let none = repo.list_loras(&q(LoraSort::Name)).await.unwrap();
    assert_eq!(none.total, 6);

    // Query syntax typed by users is text, never an error or an operator.
    for hostile in [
        "\"",
        "*",
        "\"\"*",
        "NEAR(",
        "NEAR(cyber girl)",
        "'; DROP TABLE lora_models; --",
        "(",
        ")",
        "^",
        ":",
        "&|!",
    ] {
        let page = search(&repo, hostile).await;
        assert!(page.total <= 6, "{hostile:?}");
    }
    assert_eq!(search(&repo, "\"").await.total, 6, "no words: no filter");
    assert_eq!(
        search(&repo, "'; DROP TABLE lora_models; --").await.total,
        0
    );
    assert_eq!(names(&search(&repo, "cyber\"*").await), cyber);
    assert_eq!(
        names(&search(&repo, "-cyber").await),
        cyber,
        "a leading minus is not negation"
    );
    assert_eq!(
        names(&search(&repo, "NEAR(cyber girl)").await),
        Vec::<&str>::new(),
        "NEAR is a word"
    );
    assert_eq!(
        names(&search(&repo, "cyber AND girl").await),
        Vec::<&str>::new(),
        "AND is a word"
    );
    assert_eq!(
        names(&search(&repo, "cyber:* & girl").await),
        ["Cyberpunk Girl"]
    );
    assert_eq!(
        repo.list_loras(&q(LoraSort::Name)).await.unwrap().total,
        6,
        "the table survived"
    );

    // Search with filters and a sort.
    let query = LoraQuery {
        search: Some("cyber".into()),
        status: Some(TrainingStatus::Completed),
        ..q(LoraSort::Popular)
    };
    let page = repo.list_loras(&query).await.unwrap();
    assert_eq!(
        (names(&page), page.total),
        (vec!["cyber knight", "Cyberpunk Girl", "apple tree"], 3)
    );
    let query = LoraQuery {
        search: Some("cyber".into()),
        limit: 1,
        offset: 1,
        ..q(LoraSort::Recent)
    };
    let page = repo.list_loras(&query).await.unwrap();
    assert_eq!((names(&page), page.total), (vec!["Watercolor Cat"], 4));
    // Paged past the end of the matches: no items, the total still right.
    let query = LoraQuery {
        search: Some("cyber".into()),
        limit: 10,
        offset: 10,
        ..q(LoraSort::Popular)
    };
    let page = repo.list_loras(&query).await.unwrap();
    assert_eq!((page.items.len(), page.total), (0, 4));
    let query = LoraQuery {
        search: Some("zzzz".into()),
        ..q(LoraSort::Popular)
    };
    assert_eq!(repo.list_loras(&query).await.unwrap().total, 0);
}

pub async fn search_follows_new_and_edited_loras(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let mut new = new_lora(owner, ds, "Café Racer", now());
    new.description = Some("vintage motorcycles".into());
    let lora = create(&repo, new).await;
    assert_eq!(names(&search(&repo, "caf").await), ["Café Racer"]);
    assert_eq!(names(&search(&repo, "CAFÉ rac").await), ["Café Racer"]);
    assert_eq!(names(&search(&repo, "vintage").await), ["Café Racer"]);
    repo.update_description(lora.id, Some("modern scooters".into()), now())
        .await
        .unwrap();
    assert_eq!(search(&repo, "vintage").await.total, 0);
    assert_eq!(names(&search(&repo, "scoot").await), ["Café Racer"]);
    repo.update_description(lora.id, None, now()).await.unwrap();
    assert_eq!(search(&repo, "scoot").await.total, 0);
    assert_eq!(search(&repo, "racer").await.total, 1);
    // Status changes keep the row findable.
    apply(
        &repo,
        lora.id,
        loraforge_domain::StatusEvent::Enqueue,
        now(),
    )
    .await
    .unwrap();
    assert_eq!(
        search(&repo, "racer").await.items[0].status,
        TrainingStatus::Queued
    );
}

/// A search finds its page by walking the sort's index (a prefix matching many rows) or by
/// sorting the matches (a rare word); either way every page must be the library's own order,
/// filtered. 120 rows with tied usage counts and times; "ka" matches 60 of them, "kab" 3.
pub async fn search_pages_match_the_sorted_library(repo: Repo) {
    let (u1, d1) = user(&repo).await;
    let (u2, d2) = user(&repo).await;
    let rows = (0..120)
        .map(|i: i64| {
            let word = match i {
                _ if i % 40 == 0 => "Kaboom",
                _ if i % 2 == 0 => "Kappa",
                _ => "Lambda",
            };
            let (u, e, d) = if i % 3 == 0 {
                (u1, Some("u1@example.com"), d1)
            } else {
                (u2, None, d2)
            };
            let status = if i % 5 == 0 {
                TrainingStatus::Failed
            } else {
                TrainingStatus::Completed
            };
            let at = now() - Duration::days(5) + Duration::minutes(i % 13);
            let name = format!("{word} n{i}");
            row(u, e, d, &name, None, status, (i % 7) as u64, at)
        })
        .collect();
    assert_eq!(repo.bulk_insert_library(rows).await.unwrap(), 120);

    for sort in [LoraSort::Popular, LoraSort::Recent, LoraSort::Name] {
        let mut library = repo
            .list_loras(&LoraQuery {
                limit: 100,
                ..q(sort)
            })
            .await
            .unwrap()
            .items;
        library.extend(
            repo.list_loras(&LoraQuery {
                limit: 100,
                offset: 100,
                ..q(sort)
            })
            .await
            .unwrap()
            .items,
        );
        assert_eq!(library.len(), 120);
        for (prefix, matches) in [("ka", 60), ("kab", 3), ("kappa", 57), ("lam", 60)] {
            let expected: Vec<&LoraSummary> = library
                .iter()
                .filter(|s| s.name.to_lowercase().starts_with(prefix))
                .collect();
            assert_eq!(expected.len(), matches, "{prefix}");
            for (offset, limit) in [
                (0, 5),
                (0, 50),
                (7, 11),
                (55, 50),
                (62, 3),
                (63, 5),
                (200, 5),
            ] {
                let page = repo
                    .list_loras(&LoraQuery {
                        search: Some(prefix.into()),
                        offset,
                        limit,
                        ..q(sort)
                    })
                    .await
                    .unwrap();
                let want: Vec<_> = expected
                    .iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .map(|s| (s.id, s.creator.email.clone()))
                    .collect();
                let got: Vec<_> = page
                    .items
                    .iter()
                    .map(|s| (s.id, s.creator.email.clone()))
                    .collect();
                assert_eq!(
                    got, want,
                    "{prefix:?} {sort:?} offset {offset} limit {limit}"
                );
                assert_eq!(page.total, matches as u64, "{prefix:?} total");
            }
        }
        // With a filter the page comes from the matches alone; same order, filtered.
        let failed = repo
            .list_loras(&LoraQuery {
                search: Some("ka".into()),
                status: Some(TrainingStatus::Failed),
                limit: 100,
                ..q(sort)
            })
            .await
            .unwrap();
        let want: Vec<_> = library
            .iter()
            .filter(|s| s.name.starts_with("Ka") && s.status == TrainingStatus::Failed)
            .map(|s| s.id)
            .collect();
        assert_eq!(failed.items.iter().map(|s| s.id).collect::<Vec<_>>(), want);
        assert_eq!(failed.total, want.len() as u64);
    }
}

/// A search counts exactly up to `SEARCH_TOTAL_CAP` matches; past it `total` is the cap and
/// `total_exact` false, while pages (within the cap and past it) stay those of the sorted library.
pub async fn search_total_is_capped_and_flagged(repo: Repo) {
    let (u, d) = user(&repo).await;
    let cap = SEARCH_TOTAL_CAP as i64;
    let many = cap + 30;
    let rows = (0..many + 5)
        .map(|i: i64| {
            let name = if i < many {
                format!("Capword n{i}")
            } else {
                format!("Rare n{i}")
            };
            let status = if i % 2 == 0 {
                TrainingStatus::Failed
            } else {
                TrainingStatus::Completed
            };
            let at = now() - Duration::days(5) + Duration::minutes(i % 17);
            // Exactly `cap` rows say "exact" in their description.
            let description = (i < cap).then_some("exact");
            row(u, None, d, &name, description, status, (i % 7) as u64, at)
        })
        .collect();
    assert_eq!(
        repo.bulk_insert_library(rows).await.unwrap(),
        (many + 5) as u64
    );

    let all = repo
        .list_loras(&LoraQuery {
            limit: 100,
            ..q(LoraSort::Popular)
        })
        .await
        .unwrap();
    assert_eq!((all.total, all.total_exact), ((many + 5) as u64, true));
    let mut library = Vec::new();
    for offset in (0..many + 5).step_by(100) {
        let page = repo
            .list_loras(&LoraQuery {
                limit: 100,
                offset: offset as u64,
                ..q(LoraSort::Popular)
            })
            .await
            .unwrap();
        library.extend(page.items.into_iter().map(|s| (s.id, s.name)));
    }
    let capwords: Vec<_> = library
        .iter()
        .filter(|(_, n)| n.starts_with("Capword"))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(capwords.len() as i64, many);

    for (offset, limit) in [
        (0u64, 50u32),
        (950, 50),
        (990, 20),
        (1_000, 50),
        (1_020, 50),
    ] {
        let page = repo
            .list_loras(&LoraQuery {
                search: Some("cap".into()),
                offset,
                limit,
                ..q(LoraSort::Popular)
            })
            .await
            .unwrap();
        assert_eq!(
            (page.total, page.total_exact),
            (SEARCH_TOTAL_CAP, false),
            "offset {offset}"
        );
        let got: Vec<_> = page.items.iter().map(|s| s.id).collect();
        let want: Vec<_> = capwords
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .copied()
            .collect();
        assert_eq!(got, want, "offset {offset} limit {limit}");
    }

    // Under the cap the count is exact: a narrow word, a filter, two words.
    let rare = search(&repo, "rare").await;
    assert_eq!((rare.total, rare.total_exact), (5, true));
    let failed = repo
        .list_loras(&LoraQuery {
            search: Some("capword".into()),
            status: Some(TrainingStatus::Failed),
            limit: 10,
            ..q(LoraSort::Recent)
        })
        .await
        .unwrap();
    assert_eq!(
        (failed.total, failed.total_exact),
        ((many / 2) as u64, true)
    );
    // "n1" is a prefix of n1, n10–n19, n100–n199 and n1000–n1029.
    let two = search(&repo, "capword n1").await;
    assert_eq!((two.total, two.total_exact), (1 + 10 + 100 + 30, true));
    // Exactly the cap is still exact; one more is not.
    let at_cap = search(&repo, "exact").await;
    assert_eq!((at_cap.total, at_cap.total_exact), (SEARCH_TOTAL_CAP, true));
    let everything = search(&repo, "n").await;
    assert_eq!(
        (everything.total, everything.total_exact),
        (SEARCH_TOTAL_CAP, false)
    );
}

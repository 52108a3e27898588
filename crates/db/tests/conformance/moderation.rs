//! `ModerationStore`: reports (one open per reporter and LoRA), hiding (idempotent, resolving the
//! open reports), unhiding, dismissing, and the library leaving hidden LoRAs out.

use chrono::Duration;

use loraforge_db::{DbError, Filed, LoraQuery, NewReport, Report, ReportQuery, ReportState};
use loraforge_domain::{LoraId, LoraSort, ReportReason, Resolution, UserId};

use crate::helpers::*;

fn report(lora: LoraId, reporter: UserId, reason: ReportReason, minutes: i64) -> NewReport {
    NewReport {
        lora_id: lora,
        reporter,
        reason,
        details: Some(format!("details {minutes}")),
        now: now() + Duration::minutes(minutes),
    }
}

async fn file(repo: &Repo, new: NewReport) -> (Report, u32) {
    match repo.file_report(&new).await.expect("file report") {
        Filed::Created {
            report,
            open_reports,
        } => (report, open_reports),
        other => panic!("expected Created, got {other:?}"),
    }
}

fn open() -> ReportQuery {
    ReportQuery {
        state: ReportState::Open,
        limit: 50,
        offset: 0,
    }
}

fn resolved() -> ReportQuery {
    ReportQuery {
        state: ReportState::Resolved,
        ..open()
    }
}

pub async fn reports_are_one_open_per_reporter_and_listed_with_their_lora(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let lora = create(&repo, new_lora(owner, ds, "Shady", now())).await;
    let other = create(&repo, new_lora(owner, ds, "Fine", now())).await;
    let (alice, bob) = (UserId::new(), UserId::new());

    let (first, count) = file(&repo, report(lora.id, alice, ReportReason::Spam, 1)).await;
    assert_eq!(count, 1);
    assert_eq!(first.reason, ReportReason::Spam);
    assert_eq!(first.details.as_deref(), Some("details 1"));
    assert_eq!(first.created_at, now() + Duration::minutes(1));
    assert!(first.is_open() && first.resolution.is_none() && first.resolved_by.is_none());
    assert_eq!(
        repo.get_report(first.id).await.unwrap(),
        Some(first.clone())
    );

    // The same reporter again, while the first is open: nothing stored, the open one returned.
    match repo
        .file_report(&report(lora.id, alice, ReportReason::Hate, 2))
        .await
        .unwrap()
    {
        Filed::AlreadyOpen(r) => assert_eq!(r, first),
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
    let (_, count) = file(&repo, report(lora.id, bob, ReportReason::Copyright, 3)).await;
    assert_eq!(count, 2, "another reporter counts");
    let (_, count) = file(&repo, report(other.id, alice, ReportReason::Other, 4)).await;
    assert_eq!(count, 1, "counted per LoRA");

    let missing = repo
        .file_report(&report(LoraId::new(), alice, ReportReason::Spam, 5))
        .await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");

    let page = repo.list_reports(&open()).await.unwrap();
    assert_eq!(page.total, 3);
    let names: Vec<_> = page.items.iter().map(|r| r.lora_name.as_str()).collect();
    assert_eq!(
        names,
        ["Shady", "Shady", "Fine"],
        "the queue is oldest first"
    );
    assert_eq!(page.items[0].open_reports_of_lora, 2);
    assert_eq!(page.items[2].open_reports_of_lora, 1);
    assert_eq!(page.items[0].creator.id, owner);
    assert!(page.items[0].hidden.is_none());
    let second = repo
        .list_reports(&ReportQuery {
            limit: 1,
            offset: 1,
            ..open()
        })
        .await
        .unwrap();
    assert_eq!(second.total, 3);
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].report.reporter, bob);
    assert_eq!(repo.list_reports(&resolved()).await.unwrap().total, 0);

    // Once resolved, the same person may report again.
    let dismissed = repo
        .dismiss_report(first.id, UserId::new(), now() + Duration::minutes(6))
        .await
        .unwrap();
    assert_eq!(dismissed.resolution, Some(Resolution::Dismissed));
    let (again, count) = file(&repo, report(lora.id, alice, ReportReason::Violence, 7)).await;
    assert_ne!(again.id, first.id);
    assert_eq!(count, 2);
}

pub async fn hiding_resolves_open_reports_and_keeps_the_first_hide(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let lora = create(&repo, new_lora(owner, ds, "Bad", now())).await;
    let (a, b) = (UserId::new(), UserId::new());
    let (ra, _) = file(&repo, report(lora.id, a, ReportReason::Minor, 1)).await;
    let (rb, _) = file(&repo, report(lora.id, b, ReportReason::Minor, 2)).await;
    let (admin, admin2) = (UserId::new(), UserId::new());
    let t = now() + Duration::hours(1);

    let hid = repo
        .hide_lora(lora.id, "breaks rule 3", admin, t)
        .await
        .unwrap();
    assert!(hid.newly_hidden);
    assert_eq!(hid.resolved_reports, 2);
    let hidden = hid.lora.hidden.clone().expect("hidden");
    assert_eq!(
        (hidden.at, hidden.reason.as_str(), hidden.by),
        (t, "breaks rule 3", admin)
    );
    assert!(hid.lora.is_hidden());
    assert_eq!(
        repo.get_lora(lora.id).await.unwrap().unwrap().hidden,
        Some(hidden.clone())
    );
    for id in [ra.id, rb.id] {
        let r = repo.get_report(id).await.unwrap().unwrap();
        assert_eq!(r.resolution, Some(Resolution::Hidden));
        assert_eq!((r.resolved_at, r.resolved_by), (Some(t), Some(admin)));
    }

    // Again, later, by another admin: the first hide stays; a report filed meanwhile is resolved.
    let (rc, _) = file(
        &repo,
        report(lora.id, UserId::new(), ReportReason::Spam, 90),
    )
    .await;
    let again = repo
        .hide_lora(lora.id, "other words", admin2, t + Duration::hours(1))
        .await
        .unwrap();
    assert!(!again.newly_hidden);
    assert_eq!(again.resolved_reports, 1);
    assert_eq!(again.lora.hidden, Some(hidden));
    assert_eq!(
        repo.get_report(rc.id).await.unwrap().unwrap().resolved_by,
        Some(admin2)
    );

    let listed = repo.list_reports(&resolved()).await.unwrap();
    assert_eq!(listed.total, 3);
    assert!(
        listed
            .items
            .iter()
            .all(|r| r.hidden.is_some() && r.open_reports_of_lora == 0)
    );
    assert_eq!(
        listed.items[0].report.id, rc.id,
        "most recently resolved first"
    );
    assert_eq!(repo.list_reports(&open()).await.unwrap().total, 0);

    // Dismissing a report resolved by the hide keeps its resolution.
    let kept = repo
        .dismiss_report(ra.id, admin2, t + Duration::hours(3))
        .await
        .unwrap();
    assert_eq!(kept.resolution, Some(Resolution::Hidden));
    assert_eq!(kept.resolved_at, Some(t));
    assert!(matches!(
        repo.dismiss_report(999_999, admin, t).await,
        Err(DbError::NotFound)
    ));

    // Unhide: visible again, reports stay resolved; unhiding twice changes nothing.
    let back = repo.unhide_lora(lora.id).await.unwrap();
    assert!(!back.is_hidden());
    assert!(!repo.unhide_lora(lora.id).await.unwrap().is_hidden());
    assert_eq!(repo.list_reports(&open()).await.unwrap().total, 0);
    assert_eq!(repo.list_reports(&resolved()).await.unwrap().total, 3);
    assert!(matches!(
        repo.hide_lora(LoraId::new(), "x", admin, t).await,
        Err(DbError::NotFound)
    ));
    assert!(matches!(
        repo.unhide_lora(LoraId::new()).await,
        Err(DbError::NotFound)
    ));
}

pub async fn the_library_leaves_hidden_loras_out_unless_asked(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let mut ids = Vec::new();
    for (i, n) in ["Cyber Cat", "Cyber Dog", "Plain Owl"].iter().enumerate() {
        let l = create(
            &repo,
            new_lora(owner, ds, n, now() + Duration::seconds(i as i64)),
        )
        .await;
        ids.push(l.id);
    }
    repo.hide_lora(ids[1], "no", UserId::new(), now())
        .await
        .unwrap();

    for sort in [LoraSort::Recent, LoraSort::Popular, LoraSort::Name] {
        for search in [None, Some("cyber".to_owned())] {
            let public = repo
                .list_loras(&LoraQuery {
                    sort,
                    search: search.clone(),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            let names: Vec<_> = public.items.iter().map(|s| s.name.as_str()).collect();
            assert!(
                !names.contains(&"Cyber Dog"),
                "{sort:?} {search:?}: {names:?}"
            );
            assert_eq!(
                public.total,
                if search.is_some() { 1 } else { 2 },
                "{sort:?} {search:?}"
            );
            assert!(public.items.iter().all(|s| s.hidden.is_none()));

            let all = repo
                .list_loras(&LoraQuery {
                    sort,
                    search: search.clone(),
                    limit: 10,
                    include_hidden: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(
                all.total,
                if search.is_some() { 2 } else { 3 },
                "{sort:?} {search:?}"
            );
            let dog = all.items.iter().find(|s| s.id == ids[1]).expect("listed");
            assert_eq!(dog.hidden.as_ref().map(|h| h.reason.as_str()), Some("no"));
        }
    }
    let mine = repo
        .list_loras(&LoraQuery {
            creator: Some(owner),
            include_hidden: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.total, 3);

    repo.unhide_lora(ids[1]).await.unwrap();
    let public = repo
        .list_loras(&LoraQuery {
            search: Some("cyber".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(public.total, 2, "unhidden: back in search");
}

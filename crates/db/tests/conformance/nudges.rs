//! `NudgeStore` (migration 0022): one row per backend holding its latest nudge, which an earlier
//! nudge (a late delivery, another replica's clock) never replaces.

use chrono::Duration;

use crate::helpers::*;

pub async fn a_backend_keeps_its_latest_nudge(repo: Repo) {
    assert!(repo.backend_nudges().await.unwrap().is_empty());
    let t0 = now();
    repo.nudge_backend("replicate", t0).await.unwrap();
    repo.nudge_backend("runpod", t0 + Duration::seconds(1))
        .await
        .unwrap();
    repo.nudge_backend("replicate", t0 + Duration::seconds(5))
        .await
        .unwrap();
    // Older than the one stored: ignored.
    repo.nudge_backend("replicate", t0 + Duration::seconds(2))
        .await
        .unwrap();
    assert_eq!(
        repo.backend_nudges().await.unwrap(),
        vec![
            ("replicate".to_owned(), t0 + Duration::seconds(5)),
            ("runpod".to_owned(), t0 + Duration::seconds(1)),
        ]
    );
    // The same time again changes nothing either.
    repo.nudge_backend("runpod", t0 + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(repo.backend_nudges().await.unwrap().len(), 2);
}

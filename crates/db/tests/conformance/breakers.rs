//! Circuit breakers: the repository applies `domain::breaker::step` atomically, counts keyed
//! failures in the window, gives the half-open probe to one caller and keeps every transition.

use chrono::Duration;

use loraforge_db::BreakerStep;
use loraforge_domain::breaker::{BreakerEvent, BreakerRules, BreakerState};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

fn failure(key: &str) -> BreakerEvent {
    BreakerEvent::Failure {
        key: key.into(),
        reason: format!("503 on {key}"),
    }
}

fn claim(holder: &str) -> BreakerEvent {
    BreakerEvent::ClaimProbe {
        holder: holder.into(),
    }
}

async fn step(repo: &Repo, event: BreakerEvent, at: i64) -> BreakerStep {
    repo.step_breaker("runpod", &event, &BreakerRules::default(), t(at))
        .await
        .expect("step")
}

pub async fn a_breaker_opens_probes_once_and_closes(repo: Repo) {
    let rules = BreakerRules::default();
    assert!(repo.breakers(&rules, t(0)).await.unwrap().is_empty());
    assert_eq!(
        step(&repo, failure("a"), 0).await.breaker.state,
        BreakerState::Closed
    );
    let second = step(&repo, failure("b"), 1).await;
    assert_eq!(
        (second.breaker.state, second.failures_in_window),
        (BreakerState::Closed, 2)
    );
    let third = step(&repo, failure("c"), 2).await;
    assert_eq!(third.breaker.state, BreakerState::Open);
    let opened = third.transition.expect("recorded");
    assert_eq!(
        (opened.from, opened.to),
        (BreakerState::Closed, BreakerState::Open)
    );
    assert_eq!(third.breaker.opened_at, Some(t(2)));

    // No probe before 30 min; then one, to the first caller.
    assert!(!step(&repo, claim("e1"), 31).await.changed);
    let probe = step(&repo, claim("e1"), 32).await;
    assert!(probe.changed);
    assert_eq!(probe.breaker.state, BreakerState::HalfOpen);
    assert!(
        !step(&repo, claim("e2"), 32).await.changed,
        "a second replica gets no probe"
    );

    // The probe fails: open again, for a new 30 min.
    let reopened = step(&repo, failure("probe-1"), 33).await;
    assert_eq!(reopened.breaker.state, BreakerState::Open);
    assert_eq!(reopened.breaker.opened_at, Some(t(33)));
    assert!(!step(&repo, claim("e2"), 62).await.changed);
    assert!(step(&repo, claim("e2"), 63).await.changed);
    // Another engine's launch does not close it; the probe holder's does.
    let other = BreakerEvent::Launched {
        holder: "e1".into(),
    };
    assert!(!step(&repo, other, 63).await.changed);
    let closed = step(
        &repo,
        BreakerEvent::Launched {
            holder: "e2".into(),
        },
        64,
    )
    .await;
    assert_eq!(closed.breaker.state, BreakerState::Closed);
    assert_eq!(
        closed.failures_in_window, 0,
        "failures before the close no longer count"
    );

    let listed = repo.breakers(&rules, t(64)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].breaker, closed.breaker);
    let history: Vec<(BreakerState, BreakerState)> = repo
        .breaker_transitions(Some("runpod"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.from, t.to))
        .collect();
    use BreakerState::{Closed, HalfOpen, Open};
    assert_eq!(
        history,
        [
            (HalfOpen, Closed),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (Closed, Open)
        ],
        "newest first"
    );
}

pub async fn failures_count_once_per_key_and_only_in_the_window(repo: Repo) {
    step(&repo, failure("run-1"), 0).await;
    let again = step(&repo, failure("run-1"), 1).await;
    assert_eq!(
        again.failures_in_window, 1,
        "the same failure reported twice counts once"
    );
    assert!(!again.changed);
    step(&repo, failure("run-2"), 1).await;
    // Ten minutes later the first has left the window: two in it, still closed.
    let later = step(&repo, failure("run-3"), 11).await;
    assert_eq!(
        (later.breaker.state, later.failures_in_window),
        (BreakerState::Closed, 2)
    );
    let open = step(&repo, failure("run-4"), 11).await;
    assert_eq!(open.breaker.state, BreakerState::Open);
    // Other backends are untouched.
    let other = repo
        .step_breaker("local", &failure("x"), &BreakerRules::default(), t(11))
        .await
        .unwrap();
    assert_eq!(
        (other.breaker.state, other.failures_in_window),
        (BreakerState::Closed, 1)
    );
}

pub async fn concurrent_probe_claims_have_one_winner(repo: Repo) {
    for k in ["a", "b", "c"] {
        step(&repo, failure(k), 0).await;
    }
    let claims = (0..8).map(|i| {
        let repo = repo.clone();
        async move {
            repo.step_breaker(
                "runpod",
                &claim(&format!("replica-{i}")),
                &BreakerRules::default(),
                t(30),
            )
            .await
            .expect("claim")
            .changed
        }
    });
    let won = futures::future::join_all(claims).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let transitions = repo.breaker_transitions(None, 10).await.unwrap();
    assert_eq!(transitions.len(), 2, "closed → open, open → half_open");
}

pub async fn operators_force_and_every_transition_is_kept(repo: Repo) {
    let force = |to, reason: &str| BreakerEvent::Force {
        to,
        reason: reason.into(),
        by: "admin-7".into(),
    };
    let forced = step(&repo, force(BreakerState::Open, "provider maintenance"), 0).await;
    assert_eq!(forced.breaker.state, BreakerState::Open);
    let t1 = forced.transition.expect("recorded");
    assert_eq!(t1.forced_by.as_deref(), Some("admin-7"));
    assert_eq!(t1.reason, "forced: provider maintenance");
    assert!(
        !step(&repo, force(BreakerState::Open, "again"), 1)
            .await
            .changed
    );
    let closed = step(&repo, force(BreakerState::Closed, "back"), 2).await;
    assert_eq!(closed.breaker.state, BreakerState::Closed);
    let kept = repo.breaker_transitions(Some("runpod"), 1).await.unwrap();
    assert_eq!(kept.len(), 1, "the limit holds");
    assert_eq!(kept[0].to, BreakerState::Closed);
    assert_eq!(kept[0].at, t(2));
    assert!(
        repo.breaker_transitions(Some("local"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

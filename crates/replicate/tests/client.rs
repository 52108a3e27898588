//! The typed client against the contract fake (`loraforge_fakes::FakeReplicate`): auth schemes,
//! 429 with backoff, the 404 destination, cursor pagination, cancel from `starting`, the
//! list-and-match guard on creates, and the training lifecycle with real processes.

use std::time::{Duration, Instant};

use loraforge_fakes::{FakeReplicate, ReplicateConfig, TrainingCommand};
use loraforge_replicate::{
    AuthScheme, CreateTraining, INSTANCE_TAG, ModelRef, ReplicateClient, ReplicateError,
    ReplicateSettings, RetrySettings, TrainingStatus,
};
use secrecy::SecretString;
use serde_json::json;

const TOKEN: &str = "r8_test_token";
const DEST: &str = "acme/loras";

/// A training that prints two progress lines and packs a tar, as `cog/train.py` does.
fn packing_script() -> TrainingCommand {
    TrainingCommand::shell(
        r#"set -e
echo '{"event":"progress","step":1,"total":2,"loss":0.5}'
test -s {dataset}; test -s {spec}
mkdir -p {work}/o/train
printf model > {work}/o/train/model.safetensors
echo '{"event":"done"}' > {work}/o/events.jsonl
tar -cf {output} -C {work}/o .
echo '{"event":"progress","step":2,"total":2,"loss":0.25}'"#,
    )
}

async fn fake_with(
    command: TrainingCommand,
    tune: impl FnOnce(&mut ReplicateConfig),
) -> FakeReplicate {
    let mut config = ReplicateConfig::new(TOKEN, command).with_model(DEST);
    tune(&mut config);
    FakeReplicate::start(config).await
}

fn client(fake: &FakeReplicate, token: &str, auth: AuthScheme) -> ReplicateClient {
    let mut settings = ReplicateSettings::new(SecretString::from(token.to_owned()));
    settings.base_url = fake.base_url().parse().unwrap();
    settings.auth = auth;
    settings.timeout = Duration::from_secs(10);
    settings.retry = RetrySettings {
        max_retries: 4,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
    };
    ReplicateClient::new(settings).unwrap()
}

fn model() -> ModelRef {
    ModelRef::parse("acme/trainer:0123abcd").unwrap()
}

/// A dataset served on loopback for the fake to download.
async fn dataset_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/data.zip",
        axum::routing::get(|| async { "PK-not-really" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/data.zip")
}

fn create(tag: &str, dataset_url: &str) -> CreateTraining {
    CreateTraining {
        destination: DEST.to_owned(),
        input: json!({"dataset_url": dataset_url, "spec": "{\"steps\":2}", INSTANCE_TAG: tag}),
        webhook: None,
        webhook_events_filter: Vec::new(),
    }
}

async fn wait_terminal(client: &ReplicateClient, id: &str) -> loraforge_replicate::Training {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = client.training(id).await.unwrap().expect("known");
        if t.status.is_terminal() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "training {id} still {:?}",
            t.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn both_auth_schemes_work_and_a_wrong_token_is_refused() {
    let fake = fake_with(TrainingCommand::shell("true"), |_| {}).await;
    for auth in [AuthScheme::Bearer, AuthScheme::Token] {
        let page = client(&fake, TOKEN, auth).list_trainings().await.unwrap();
        assert!(page.results.is_empty() && page.next.is_none());
    }
    let wrong = client(&fake, "nope", AuthScheme::Bearer);
    let err = wrong.list_trainings().await.unwrap_err();
    assert!(matches!(err, ReplicateError::Unauthorized(401)), "{err:?}");
    assert!(!err.is_retryable());
    let secret = client(&fake, TOKEN, AuthScheme::Token)
        .webhook_secret()
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(secret.expose_secret(), ReplicateConfig::DEFAULT_SECRET);
}

#[tokio::test]
async fn throttled_reads_back_off_as_told_and_creates_are_not_repeated() {
    // No Retry-After header: the body's "Expected available in 1 second." sets the wait.
    let fake = fake_with(TrainingCommand::shell("true"), |c| {
        c.retry_after_header = false
    })
    .await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    fake.throttle(2);
    let started = Instant::now();
    c.list_trainings().await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");

    fake.throttle(1);
    let err = c
        .create_training(&model(), &create("loraforge-x-1", "http://127.0.0.1:9/x"))
        .await
        .unwrap_err();
    match err {
        ReplicateError::RateLimited { retry_after } => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(fake.counts().0, 0, "a throttled create made nothing");
    assert!(fake.trainings().is_empty());

    // 5xx: reads are retried, a create is not.
    fake.inject_status(1, 503);
    c.list_trainings().await.unwrap();
    fake.inject_status(1, 503);
    let err = c
        .create_training(&model(), &create("loraforge-x-1", "http://127.0.0.1:9/x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::Server { status: 503, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_missing_destination_is_a_404_with_the_detail() {
    let fake = fake_with(TrainingCommand::shell("true"), |_| {}).await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    let mut request = create("loraforge-x-1", "http://127.0.0.1:9/x");
    request.destination = "acme/nothing-here".to_owned();
    let err = c.create_training(&model(), &request).await.unwrap_err();
    match &err {
        ReplicateError::Missing(detail) => {
            assert_eq!(detail, "The specified training destination does not exist")
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(!err.is_retryable());
    // The raw answer is the documented problem document.
    let raw = reqwest::Client::new()
        .post(format!(
            "{}/models/acme/trainer/versions/1/trainings",
            fake.base_url()
        ))
        .header("authorization", format!("Bearer {TOKEN}"))
        .json(&json!({"destination": "nobody/none", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 404);
    assert_eq!(raw.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": "The specified training destination does not exist", "status": 404})
    );
}

/// A model that declares only `dataset_url` and `spec` refuses the instance tag with 422 (as a
/// Cog runtime forbidding undeclared inputs does): the create fails for good, with the field
/// named, and nothing is created. Our Cog model declares the tag (`cog/train.py`), so the same
/// create against its input list goes through.
#[tokio::test]
async fn an_undeclared_input_is_refused_with_422_and_a_declared_tag_is_taken() {
    let narrow = fake_with(TrainingCommand::shell("true"), |c| {
        c.declared_inputs = Some(vec!["dataset_url".into(), "spec".into()]);
    })
    .await;
    let c = client(&narrow, TOKEN, AuthScheme::Bearer);
    let err = c
        .create_training(&model(), &create("loraforge-x-1", "http://127.0.0.1:9/x"))
        .await
        .unwrap_err();
    match &err {
        ReplicateError::Rejected {
            status: 422,
            detail,
        } => {
            assert!(detail.contains(INSTANCE_TAG), "{detail}")
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(narrow.counts().0, 0, "nothing was created");
    assert!(narrow.trainings().is_empty());

    let ours = fake_with(TrainingCommand::shell("true"), |c| {
        *c = c
            .clone()
            .with_declared_inputs(&["dataset_url", "spec", INSTANCE_TAG]);
    })
    .await;
    let c = client(&ours, TOKEN, AuthScheme::Bearer);
    let training = c
        .create_training(&model(), &create("loraforge-x-1", "http://127.0.0.1:9/x"))
        .await
        .unwrap();
    assert_eq!(training.instance_tag(), Some("loraforge-x-1"));
}

#[tokio::test]
async fn pages_are_followed_by_their_next_links() {
    let fake = fake_with(TrainingCommand::shell("true"), |c| {
        c.page_size = 2;
        c.start_delay = Duration::from_secs(60);
    })
    .await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    for n in 1..=5 {
        c.create_training(
            &model(),
            &create(&format!("loraforge-l-{n}"), "http://127.0.0.1:9/x"),
        )
        .await
        .unwrap();
    }
    let first = c.list_trainings().await.unwrap();
    assert_eq!(first.results.len(), 2);
    assert_eq!(
        first.results[0].instance_tag(),
        Some("loraforge-l-5"),
        "newest first"
    );
    let next = first.next.clone().expect("more pages");
    assert!(next.starts_with(&fake.base_url()), "{next}");
    let all = c
        .list_tagged(10, |t| t.starts_with("loraforge-l-"))
        .await
        .unwrap();
    let tags: Vec<_> = all.iter().filter_map(|t| t.instance_tag()).collect();
    assert_eq!(
        tags,
        [
            "loraforge-l-5",
            "loraforge-l-4",
            "loraforge-l-3",
            "loraforge-l-2",
            "loraforge-l-1"
        ]
    );
    // Two pages hold only the four newest.
    assert_eq!(c.list_tagged(2, |_| true).await.unwrap().len(), 4);
    assert!(
        c.find_by_tag("loraforge-l-1").await.unwrap().is_some(),
        "found on page 3"
    );
    // A `next` link to another origin is not followed with the token.
    let err = c
        .list_page("http://example.com/v1/trainings?cursor=2")
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicateError::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn a_training_cancelled_while_starting_never_runs() {
    let fake = fake_with(TrainingCommand::shell("touch {work}/ran"), |c| {
        c.start_delay = Duration::from_millis(500);
    })
    .await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    let t = c
        .create_training(&model(), &create("loraforge-c-1", "http://127.0.0.1:9/x"))
        .await
        .unwrap();
    assert_eq!(t.status, TrainingStatus::Starting);
    let cancelled = c.cancel(&t.id).await.unwrap().expect("known");
    assert_eq!(cancelled.status, TrainingStatus::Canceled);
    assert!(
        cancelled.predict_millis().is_some(),
        "a cancelled training has its metrics"
    );
    // Idempotent, and unknown ids are None.
    assert_eq!(
        c.cancel(&t.id).await.unwrap().unwrap().status,
        TrainingStatus::Canceled
    );
    assert!(c.cancel("doesnotexist").await.unwrap().is_none());
    assert!(c.training("doesnotexist").await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.training(&t.id).await.unwrap().unwrap().status,
        TrainingStatus::Canceled
    );
    assert!(
        !fake.work_dir().join(&t.id).join("ran").exists(),
        "the command never ran"
    );
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_not_created_twice() {
    let fake = fake_with(TrainingCommand::shell("true"), |c| {
        c.start_delay = Duration::from_secs(60)
    })
    .await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    fake.lose_create_answers(1);
    let request = create("loraforge-g-1", "http://127.0.0.1:9/x");
    // The plain create sees the 504 and does not repeat itself.
    let err = c.create_training(&model(), &request).await.unwrap_err();
    assert!(
        matches!(err, ReplicateError::Server { status: 504, .. }),
        "{err:?}"
    );
    assert_eq!(fake.counts().0, 1);
    // A relaunch looks first and finds it.
    let found = c
        .create_training_once(&model(), &request, "loraforge-g-1", true)
        .await
        .unwrap();
    assert_eq!(found.instance_tag(), Some("loraforge-g-1"));
    assert_eq!(fake.counts().0, 1, "nothing created twice");

    // A guarded create whose answer is lost finds its training by the tag.
    fake.lose_create_answers(1);
    let request = create("loraforge-g-2", "http://127.0.0.1:9/x");
    let made = c
        .create_training_once(&model(), &request, "loraforge-g-2", false)
        .await
        .unwrap();
    assert_eq!(made.instance_tag(), Some("loraforge-g-2"));
    assert_eq!(fake.counts().0, 2);
    assert_eq!(fake.trainings().len(), 2);
}

#[tokio::test]
async fn trainings_run_to_succeeded_or_failed_with_logs_and_metrics() {
    let dataset = dataset_server().await;
    let fake = fake_with(packing_script(), |_| {}).await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    let t = c
        .create_training(&model(), &create("loraforge-r-1", &dataset))
        .await
        .unwrap();
    assert_eq!(t.status, TrainingStatus::Starting);
    let done = wait_terminal(&c, &t.id).await;
    assert_eq!(
        done.status,
        TrainingStatus::Succeeded,
        "{:?}",
        done.error_text()
    );
    let logs = done.logs.clone().unwrap();
    assert!(logs.contains(r#""step":2"#), "{logs}");
    assert!(done.predict_millis().is_some());
    let tar = reqwest::get(done.weights_url().unwrap()).await.unwrap();
    assert_eq!(tar.status().as_u16(), 200);
    assert!(tar.bytes().await.unwrap().len() >= 1024, "a tar");

    // A dataset that cannot be downloaded fails the training before the command.
    let bad = c
        .create_training(
            &model(),
            &create("loraforge-r-2", "http://127.0.0.1:9/none.zip"),
        )
        .await
        .unwrap();
    let failed = wait_terminal(&c, &bad.id).await;
    assert_eq!(failed.status, TrainingStatus::Failed);
    assert!(
        failed.error_text().unwrap().contains("dataset_url"),
        "{:?}",
        failed.error
    );
    assert!(failed.weights_url().is_none());
    assert_eq!(fake.live_processes(), 0);
}

/// What a webhook receiver got: (id, timestamp, signature, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>;

async fn webhook_receiver() -> (String, Received) {
    let received: Received = Default::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                seen.lock().unwrap().push((
                    h("webhook-id"),
                    h("webhook-timestamp"),
                    h("webhook-signature"),
                    body,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

#[tokio::test]
async fn webhooks_are_signed_filtered_duplicated_and_replayed_as_configured() {
    let dataset = dataset_server().await;
    let (hook, received) = webhook_receiver().await;
    let fake = fake_with(packing_script(), |c| {
        c.duplicate_webhooks = 1;
        c.replay_webhooks = true;
    })
    .await;
    let c = client(&fake, TOKEN, AuthScheme::Bearer);
    let mut request = create("loraforge-w-1", &dataset);
    request.webhook = Some(hook);
    request.webhook_events_filter = vec!["start".to_owned(), "completed".to_owned()];
    let t = c.create_training(&model(), &request).await.unwrap();
    wait_terminal(&c, &t.id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().unwrap().clone();
    for (id, ts, signature, body) in &got {
        let ts: i64 = ts.parse().unwrap();
        let expected = loraforge_fakes::sign_webhook(ReplicateConfig::DEFAULT_SECRET, id, ts, body);
        assert_eq!(
            Some(signature.clone()),
            expected,
            "signed over id.timestamp.body"
        );
    }
    let status = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let statuses: Vec<String> = got.iter().map(|g| status(&g.3)).collect();
    // start ×2 (duplicate), completed ×2 (duplicate), then the start replayed; no `logs`.
    assert_eq!(
        statuses,
        [
            "processing",
            "processing",
            "succeeded",
            "succeeded",
            "processing"
        ],
        "{got:?}"
    );
    assert_eq!(got[0].0, got[1].0, "a duplicate keeps its webhook-id");
    assert_eq!(got[2].0, got[3].0);
    assert_ne!(got[0].0, got[2].0);
    assert_eq!(
        got[4], got[0],
        "a replay is the same delivery, signature and all"
    );
}

/// Which of `n` reads fail on a fake with random faults (`rate`, `seed`).
async fn fault_pattern(seed: u64, n: usize) -> Vec<bool> {
    let fake = fake_with(TrainingCommand::shell("true"), |c| {
        c.faults = Some(loraforge_fakes::Faults::failing(0.3, seed, 503))
    })
    .await;
    let mut settings = ReplicateSettings::new(SecretString::from(TOKEN.to_owned()));
    settings.base_url = fake.base_url().parse().unwrap();
    settings.retry = RetrySettings::none();
    let c = ReplicateClient::new(settings).unwrap();
    let mut failed = Vec::with_capacity(n);
    for _ in 0..n {
        match c.list_trainings().await {
            Ok(_) => failed.push(false),
            Err(ReplicateError::Server { status: 503, .. }) => failed.push(true),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    failed
}

#[tokio::test]
async fn random_faults_follow_their_seed() {
    let a = fault_pattern(42, 200).await;
    let b = fault_pattern(42, 200).await;
    let c = fault_pattern(7, 200).await;
    assert_eq!(a, b, "the same seed fails the same requests");
    assert_ne!(a, c, "another seed fails others");
    let rate = a.iter().filter(|f| **f).count();
    assert!(
        (40..=80).contains(&rate),
        "about 30 % of 200 failed: {rate}"
    );
}

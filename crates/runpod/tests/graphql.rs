//! The GraphQL client against the contract fake: the real client code, the documented wire.

mod common;

use std::time::{Duration, Instant};

use common::{KEY, eventually, graphql, process_running, read};
use loraforge_fakes::{
    CallOp, FakeConfig, FakePodStatus, FakeRunpod, ImageSpec, KillPod, TerminateUnknown,
    TerminatedPods,
};
use loraforge_runpod::{DeployPod, PodStatus, RunpodError};

const GPU: &str = "NVIDIA RTX A6000";

/// An image whose program records its environment, then sleeps until SIGTERM and notes it.
fn recording_image(dir: &std::path::Path) -> ImageSpec {
    ImageSpec::shell(
        r#"env > "$OUT_DIR/$RUNPOD_POD_ID.env"
trap 'echo term > "$OUT_DIR/$RUNPOD_POD_ID.term"; exit 0' TERM
sleep 30 &
wait $!"#,
    )
    .with_env("OUT_DIR", dir.to_str().unwrap())
    .with_env("IMAGE_VAR", "from-image")
}

fn config(dir: &std::path::Path) -> FakeConfig {
    let mut config = FakeConfig::new(KEY)
        .with_gpu(GPU, 2, "0.79")
        .with_image("loraforge/trainer:test", recording_image(dir))
        .with_image("idle", ImageSpec::idle());
    config.boot_delay = Duration::from_secs(1);
    config.kill_grace = Duration::from_secs(2);
    config
}

fn deploy_request(name: &str) -> DeployPod {
    let mut deploy = DeployPod::new(name, "loraforge/trainer:test", GPU);
    deploy.env = vec![
        ("LORAFORGE_LORA_ID".into(), "lora-1".into()),
        ("IMAGE_VAR".into(), "from-pod".into()),
    ];
    deploy.ports = Some("8000/http".into());
    deploy.container_disk_in_gb = Some(20);
    deploy
}

#[tokio::test]
async fn deploy_boot_run_list_terminate_and_terminate_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start(config(dir.path())).await;
    let client = graphql(&fake.graphql_url(), KEY);

    let pod = client
        .deploy_pod(&deploy_request("lf-run-1"))
        .await
        .unwrap();
    assert_eq!(pod.name, "lf-run-1");
    assert_eq!(pod.desired_status, PodStatus::Running);
    assert_eq!(pod.cost_per_hour_micros, Some(790_000));
    assert_eq!(pod.id.len(), 14);
    assert!(
        pod.id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );

    let booting = client.pod(&pod.id).await.unwrap().expect("pod exists");
    assert!(!booting.runtime_up, "runtime is null during the boot delay");
    let up = eventually(Duration::from_secs(4), "runtime", || {
        let client = client.clone();
        let id = pod.id.clone();
        async move { client.pod(&id).await.unwrap().filter(|p| p.runtime_up) }
    })
    .await;
    assert_eq!(up.gpu_type.as_deref(), Some(GPU));
    assert_eq!(up.image_name.as_deref(), Some("loraforge/trainer:test"));

    // The container process really ran, with exactly the image's env overridden by the pod's.
    let env_file = dir.path().join(format!("{}.env", pod.id));
    let env = eventually(Duration::from_secs(3), "env file", || {
        let path = env_file.clone();
        async move { read(&path) }
    })
    .await;
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"LORAFORGE_LORA_ID=lora-1"), "{env}");
    assert!(lines.contains(&"IMAGE_VAR=from-pod"), "{env}");
    assert!(
        lines.contains(&format!("RUNPOD_POD_ID={}", pod.id).as_str()),
        "{env}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("CARGO_")),
        "the test's own environment leaked: {env}"
    );

    let listed = client.list_pods().await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![pod.id.as_str()]
    );
    let pid = fake.pod(&pod.id).unwrap().pid.expect("process running");

    client.terminate_pod(&pod.id).await.unwrap();
    assert_eq!(client.pod(&pod.id).await.unwrap(), None);
    assert!(client.list_pods().await.unwrap().is_empty());
    let term_file = dir.path().join(format!("{}.term", pod.id));
    eventually(
        Duration::from_secs(3),
        "SIGTERM noted and process gone",
        || {
            let done = read(&term_file).is_some() && fake.live_processes() == 0;
            async move { done.then_some(()) }
        },
    )
    .await;
    assert!(!process_running(pid));
    let snapshot = fake.pod(&pod.id).unwrap();
    assert_eq!(snapshot.status, FakePodStatus::Terminated);
    assert!(snapshot.terminated_at.is_some());

    client
        .terminate_pod(&pod.id)
        .await
        .expect("terminating again is fine");
    let ops: Vec<CallOp> = fake.calls().into_iter().map(|c| c.op).collect();
    assert!(matches!(&ops[0], CallOp::Deploy { pod_id: Some(id), .. } if *id == pod.id));
    assert_eq!(
        ops[1],
        CallOp::Terminate {
            pod_id: pod.id.clone(),
            found: true
        }
    );
    assert_eq!(
        ops[2],
        CallOp::Terminate {
            pod_id: pod.id.clone(),
            found: false
        }
    );
}

#[tokio::test]
async fn terminate_of_an_unknown_pod_is_ok_even_when_the_api_says_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.terminate_unknown = TerminateUnknown::Error("Pod not found".into());
    config.terminated_pods = TerminatedPods::ReportTerminated;
    let fake = FakeRunpod::start(config).await;
    let client = graphql(&fake.graphql_url(), KEY);
    client.terminate_pod("doesnotexist01").await.unwrap();

    let pod = client
        .deploy_pod(&DeployPod::new("idle-1", "idle", GPU))
        .await
        .unwrap();
    client.terminate_pod(&pod.id).await.unwrap();
    let after = client
        .pod(&pod.id)
        .await
        .unwrap()
        .expect("reported as TERMINATED");
    assert_eq!(after.desired_status, PodStatus::Terminated);
    assert!(!after.runtime_up);
    client.terminate_pod(&pod.id).await.unwrap();
}

#[tokio::test]
async fn process_exit_makes_the_pod_exited_and_kill_pod_can_make_it_vanish() {
    let mut config = FakeConfig::new(KEY)
        .with_gpu(GPU, 4, "0.79")
        .with_image("quick", ImageSpec::shell("exit 3"));
    config.images.insert("idle".into(), ImageSpec::idle());
    config.boot_delay = Duration::ZERO;
    let fake = FakeRunpod::start(config).await;
    let client = graphql(&fake.graphql_url(), KEY);

    let quick = client
        .deploy_pod(&DeployPod::new("quick", "quick", GPU))
        .await
        .unwrap();
    let exited = eventually(Duration::from_secs(3), "EXITED", || {
        let client = client.clone();
        let id = quick.id.clone();
        async move {
            client
                .pod(&id)
                .await
                .unwrap()
                .filter(|p| p.desired_status == PodStatus::Exited)
        }
    })
    .await;
    assert!(!exited.runtime_up);
    assert_eq!(fake.pod(&quick.id).unwrap().exit_code, Some(3));

    let idle = client
        .deploy_pod(&DeployPod::new("idle", "idle", GPU))
        .await
        .unwrap();
    assert!(client.pod(&idle.id).await.unwrap().unwrap().runtime_up);
    assert!(fake.kill_pod(&idle.id, KillPod::Removed));
    assert_eq!(client.pod(&idle.id).await.unwrap(), None);
    assert!(
        client
            .list_pods()
            .await
            .unwrap()
            .iter()
            .all(|p| p.id != idle.id)
    );
}

#[tokio::test]
async fn a_bad_key_is_unauthorized_and_the_key_never_shows() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu(GPU, 1, "0.79")).await;
    let wrong = "rpa_wrong_key_secret";
    let client = graphql(&fake.graphql_url(), wrong);
    let error = client.list_pods().await.unwrap_err();
    assert!(matches!(error, RunpodError::Unauthorized), "{error:?}");
    assert!(!error.is_retryable());
    let error = client
        .deploy_pod(&DeployPod::new("x", "idle", GPU))
        .await
        .unwrap_err();
    assert!(matches!(error, RunpodError::Unauthorized), "{error:?}");
    assert!(!format!("{error} {error:?} {client:?}").contains(wrong));

    // A key configured in the URL (?api_key=) stays out of transport errors too.
    let unreachable = graphql("http://127.0.0.1:9/graphql?api_key=rpa_in_url_secret", "k");
    let error = unreachable.list_pods().await.unwrap_err();
    assert!(matches!(error, RunpodError::Transport(_)), "{error:?}");
    assert!(
        !format!("{error} {error:?} {unreachable:?}").contains("rpa_in_url_secret"),
        "{error}"
    );
}

#[tokio::test]
async fn no_capacity_is_recognised_and_capacity_can_come_back() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu(GPU, 1, "0.79")).await;
    let client = graphql(&fake.graphql_url(), KEY);
    client
        .deploy_pod(&DeployPod::new("first", "idle", GPU))
        .await
        .unwrap();
    let error = client
        .deploy_pod(&DeployPod::new("second", "idle", GPU))
        .await
        .unwrap_err();
    assert!(error.is_capacity(), "{error:?}");
    assert!(!error.is_retryable());
    let error = client
        .deploy_pod(&DeployPod::new("other", "idle", "NVIDIA H100 80GB HBM3"))
        .await
        .unwrap_err();
    assert!(error.is_capacity(), "{error:?}");

    fake.set_capacity(GPU, 1);
    client
        .deploy_pod(&DeployPod::new("third", "idle", GPU))
        .await
        .unwrap();
    let deploys = fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c.op, CallOp::Deploy { .. }))
        .count();
    assert_eq!(deploys, 4, "a capacity error is not retried");
}

#[tokio::test]
async fn rate_limits_wait_for_retry_after_then_succeed() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu(GPU, 2, "0.79")).await;
    let client = graphql(&fake.graphql_url(), KEY);

    fake.inject_status(1, 429, Some(Duration::from_secs(1)));
    let started = Instant::now();
    assert!(client.list_pods().await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured, not the 10 ms backoff"
    );

    // A create is not repeated on a 429: the caller gets the rate limit and decides.
    fake.inject_status(2, 429, Some(Duration::from_secs(1)));
    let error = client
        .deploy_pod(&DeployPod::new("after-429", "idle", GPU))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RunpodError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(1)),
        "{error:?}"
    );
    assert!(error.is_retryable());
    // The second injected 429 is still pending: the client did not spend it repeating the create.
    assert!(client.list_pods().await.unwrap().is_empty());
    client
        .deploy_pod(&DeployPod::new("after-429", "idle", GPU))
        .await
        .unwrap();
    assert_eq!(fake.pods().len(), 1);

    // Four 429s in a row exhaust three retries.
    fake.inject_status(4, 429, None);
    let error = client.list_pods().await.unwrap_err();
    assert!(
        matches!(error, RunpodError::RateLimited { retry_after: None }),
        "{error:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_but_not_for_creates() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu(GPU, 2, "0.79")).await;
    let client = graphql(&fake.graphql_url(), KEY);

    fake.inject_status(2, 502, None);
    assert!(client.list_pods().await.unwrap().is_empty());

    fake.inject_status(1, 500, None);
    let error = client
        .deploy_pod(&DeployPod::new("once", "idle", GPU))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RunpodError::Http { status: 500, .. }),
        "{error:?}"
    );
    assert!(
        error.is_retryable(),
        "retryable in kind, but the client left the decision to the caller"
    );
    // The next deploy goes through: the client did not use it up repeating the failed one.
    client
        .deploy_pod(&DeployPod::new("once", "idle", GPU))
        .await
        .unwrap();
    assert_eq!(fake.pods().len(), 1);
}

/// A server that accepts connections and never answers: the request was sent, its fate unknown.
async fn silent_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/graphql", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_create_that_timed_out_after_sending_is_not_repeated_but_a_read_is() {
    use loraforge_runpod::{GraphqlClient, GraphqlSettings};
    use std::sync::atomic::Ordering;
    let (url, accepted) = silent_server().await;
    let client = GraphqlClient::new(GraphqlSettings {
        url: url::Url::parse(&url).unwrap(),
        api_key: secrecy::SecretString::from(KEY),
        timeout: Duration::from_millis(200),
        retry: common::fast_retry(),
    });
    let error = client
        .deploy_pod(&DeployPod::new("maybe", "idle", GPU))
        .await
        .unwrap_err();
    assert!(matches!(error, RunpodError::Transport(_)), "{error:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a create is never sent twice"
    );

    let error = client.pod("abc").await.unwrap_err();
    assert!(matches!(error, RunpodError::Transport(_)), "{error:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1 + 4,
        "a read is tried once and retried three times"
    );
}

#[tokio::test]
async fn a_create_that_could_not_connect_is_repeated() {
    // Bind then drop: nothing listens on the port, so every attempt fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = graphql(&format!("http://127.0.0.1:{port}/graphql"), KEY);
    let started = Instant::now();
    let error = client
        .deploy_pod(&DeployPod::new("never", "idle", GPU))
        .await
        .unwrap_err();
    assert!(matches!(error, RunpodError::Transport(_)), "{error:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(70),
        "waited 10 + 20 + 40 ms between four attempts"
    );
}

#[tokio::test]
async fn cost_arrives_as_a_string_or_a_number_and_scales_with_gpu_count() {
    let mut config = FakeConfig::new(KEY).with_gpu(GPU, 4, "0.79");
    config.cost_as_string = true;
    let fake = FakeRunpod::start(config).await;
    let client = graphql(&fake.graphql_url(), KEY);
    let mut deploy = DeployPod::new("two", "idle", GPU);
    deploy.gpu_count = 2;
    let pod = client.deploy_pod(&deploy).await.unwrap();
    assert_eq!(pod.cost_per_hour_micros, Some(1_580_000));
    let listed = client.list_pods().await.unwrap();
    assert_eq!(listed[0].cost_per_hour_micros, Some(1_580_000));
    assert_eq!(fake.pods()[0].gpu_count, 2);
}

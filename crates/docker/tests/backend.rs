//! The `docker` backend against the fake Docker Engine (`loraforge_fakes::FakeDocker`), whose
//! containers really run their command as local processes: what a container is given, how its
//! end is read, how it is ended and found again, and how Docker's errors reach the engine.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loraforge_docker::{DockerBackend, DockerSettings, Gpus, connect, parse_cpus};
use loraforge_domain::LoraId;
use loraforge_engine::conformance::Subject;
use loraforge_engine::{BackendError, Ending, Instance, Launch, Observed, TrainingBackend};
use loraforge_fakes::{ContainerStatus, DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};

const IMAGE: &str = "ghcr.io/acme/loraforge-worker:0.1.0";

/// An executable `/bin/sh` script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The worker image, whose `loraforge` runs `body`.
fn image(dir: &Path, body: &str) -> DockerImage {
    DockerImage::new(ImageSpec::idle().with_env("PATH", "/usr/local/bin:/usr/bin:/bin"))
        .with_program("loraforge", script(dir, "loraforge", body))
}

fn settings() -> DockerSettings {
    let mut s = DockerSettings::new(IMAGE);
    s.max_runs = 4;
    s.stop_timeout = Duration::from_secs(2);
    s.finish_grace = Duration::from_millis(200);
    s.call_timeout = Duration::from_secs(5);
    s.pull_timeout = Duration::from_secs(5);
    s.pull_wait = Duration::from_secs(5);
    s
}

fn backend(fake: &FakeDocker, settings: DockerSettings) -> DockerBackend {
    DockerBackend::new(
        connect(&fake.host(), Duration::from_secs(30)).unwrap(),
        settings,
    )
}

fn launch(lora: LoraId, attempt: u32, retry: bool) -> Launch {
    Launch {
        lora_id: lora,
        attempt,
        instance_name: format!("loraforge-{lora}-{attempt}"),
        server: "http://127.0.0.1:8080".into(),
        token: "tok-123".into(),
        retry,
        task: loraforge_engine::Task::Train,
    }
}

fn instance(id: &str, l: &Launch) -> Instance {
    Instance {
        provider_id: id.to_owned(),
        instance_name: l.instance_name.clone(),
        lora_id: l.lora_id,
        attempt: l.attempt,
    }
}

/// Polls `check` every 20 ms until it gives `Some`, or panics after 10 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ended(b: &DockerBackend, i: &Instance) -> Observed {
    eventually("the run to end", || async {
        let seen = b.observe(std::slice::from_ref(i)).await.unwrap().remove(0);
        (seen != Observed::Running).then_some(seen)
    })
    .await
}

#[tokio::test]
async fn a_container_gets_the_workers_env_gpus_limits_and_labels_and_is_removed_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen.txt");
    let fake = FakeDocker::start(FakeDockerConfig::default().with_gpus(1).with_image(
        IMAGE,
        image(
            dir.path(),
            "echo \"$LORAFORGE_LORA_ID $LORAFORGE_SERVER $LORAFORGE_WORKER_TOKEN $HF_TOKEN $1\" > \"$OUT\"; exec sleep 300",
        ),
    ))
    .await;
    let mut s = settings();
    s.gpus = Gpus::All;
    s.memory_mb = Some(2048);
    s.nano_cpus = Some(parse_cpus("1.5").unwrap());
    s.network = Some("loraforge-net".into());
    s.price_per_hour = Some(loraforge_domain::MicroUsd::parse_dollars("0.69").unwrap());
    s.env = vec![
        ("HF_TOKEN".into(), "hf-abc".into()),
        ("OUT".into(), out.display().to_string()),
    ];
    let b = backend(&fake, s);
    let l = launch(LoraId::new(), 1, false);
    let launched = b.launch(&l).await.unwrap();
    assert_eq!(launched.gpu_type.as_deref(), Some("docker:all"));
    assert_eq!(
        launched.price_per_hour,
        Some(loraforge_domain::MicroUsd(690_000)),
        "the host's price is recorded on the run"
    );

    let c = fake.container(&launched.provider_id).unwrap();
    assert_eq!(c.name, l.instance_name);
    assert_eq!(c.image, IMAGE);
    assert_eq!(c.cmd, ["loraforge", "worker"]);
    assert_eq!(c.labels["loraforge.instance"], l.instance_name);
    assert_eq!(c.labels["loraforge.lora"], l.lora_id.to_string());
    assert_eq!(c.labels["loraforge.attempt"], "1");
    assert_eq!(c.labels["loraforge.managed"], "true");
    assert_eq!(c.device_requests.len(), 1);
    let gpu = &c.device_requests[0];
    assert_eq!(
        (gpu.driver.as_deref(), gpu.count, gpu.capabilities.clone()),
        (Some("nvidia"), Some(-1), vec![vec!["gpu".to_owned()]])
    );
    assert_eq!(c.memory, Some(2048 * 1024 * 1024));
    assert_eq!(c.nano_cpus, Some(1_500_000_000));
    assert_eq!(c.network_mode.as_deref(), Some("loraforge-net"));
    // The worker really ran with its environment and its command's argument.
    let seen = eventually("the worker's output", || async {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(
        seen.trim(),
        format!("{} http://127.0.0.1:8080 tok-123 hf-abc worker", l.lora_id)
    );

    let i = instance(&launched.provider_id, &l);
    assert_eq!(
        b.observe(std::slice::from_ref(&i)).await.unwrap(),
        [Observed::Running]
    );
    let t = b.terminate(&i, Ending::Stop).await.unwrap();
    assert!(t.gone);
    let c = fake.container(&launched.provider_id).unwrap();
    assert!(c.removed, "removed at the end");
    eventually("the process to be reaped", || async {
        (fake.live_processes() == 0).then_some(())
    })
    .await;
}

/// A sample batch's attempt: the container is named and labelled for the batch, its worker gets
/// the batch in its environment, and it is found and ended by id like a training container.
#[tokio::test]
async fn a_sample_batch_attempt_gets_its_batch_and_is_found_and_ended_like_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen.txt");
    let fake = FakeDocker::start(FakeDockerConfig::default().with_gpus(1).with_image(
        IMAGE,
        image(
            dir.path(),
            "echo \"$LORAFORGE_SAMPLE_BATCH\" > \"$OUT\"; exec sleep 300",
        ),
    ))
    .await;
    let mut s = settings();
    s.env = vec![("OUT".into(), out.display().to_string())];
    let b = backend(&fake, s);
    assert!(b.runs_samples());
    let batch = loraforge_domain::SampleBatchId::new();
    let mut l = launch(LoraId::new(), 2, false);
    l.task = loraforge_engine::Task::Sample { batch };
    l.instance_name = loraforge_domain::run::sample_instance_name("loraforge-", batch, 2);
    let id = b.launch(&l).await.unwrap().provider_id;
    let c = fake.container(&id).unwrap();
    assert_eq!(c.name, format!("loraforge-sample-{batch}-2"));
    assert_eq!(c.labels["loraforge.sample_batch"], batch.to_string());
    assert_eq!(c.labels["loraforge.lora"], l.lora_id.to_string());
    assert_eq!(c.labels["loraforge.attempt"], "2");
    let seen = eventually("the worker's output", || async {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(seen.trim(), batch.to_string());
    // A training container carries no batch.
    let t = b.launch(&launch(LoraId::new(), 1, false)).await.unwrap();
    assert!(
        !fake
            .container(&t.provider_id)
            .unwrap()
            .labels
            .contains_key("loraforge.sample_batch")
    );

    let mut found = b.list_instances("loraforge-").await.unwrap().unwrap();
    found.sort();
    assert!(
        found.contains(&(id.clone(), l.instance_name.clone())),
        "{found:?}"
    );
    let i = instance(&id, &l);
    assert_eq!(
        b.observe(std::slice::from_ref(&i)).await.unwrap(),
        [Observed::Running]
    );
    assert!(b.terminate(&i, Ending::Stop).await.unwrap().gone);
    assert!(fake.container(&id).unwrap().removed);
    let t = instance(&t.provider_id, &launch(LoraId::new(), 1, false));
    assert!(b.terminate(&t, Ending::Stop).await.unwrap().gone);
}

#[tokio::test]
async fn a_worker_that_exits_non_zero_ends_with_the_outcome_of_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exit 3")),
    )
    .await;
    let b = backend(&fake, settings());
    let l = launch(LoraId::new(), 1, false);
    let id = b.launch(&l).await.unwrap().provider_id;
    let i = instance(&id, &l);
    match ended(&b, &i).await {
        Observed::Ended {
            outcome,
            reason,
            gone,
        } => {
            assert_eq!(outcome, "non_finite_loss", "exit 3 in the outcome table");
            assert!(!gone, "exited, not removed yet");
            assert!(reason.unwrap().contains("status 3"));
        }
        other => panic!("{other:?}"),
    }
    // Finished and already exited: removed without waiting for the grace.
    assert!(b.terminate(&i, Ending::Finished).await.unwrap().gone);
    assert!(fake.container(&id).unwrap().removed);
}

#[tokio::test]
async fn a_finished_run_gets_its_grace_before_it_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let b = backend(&fake, settings());
    let l = launch(LoraId::new(), 1, false);
    let i = instance(&b.launch(&l).await.unwrap().provider_id, &l);
    assert!(!b.terminate(&i, Ending::Finished).await.unwrap().gone);
    assert_eq!(
        fake.container(&i.provider_id).unwrap().status,
        ContainerStatus::Running,
        "left to exit on its own"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(b.terminate(&i, Ending::Finished).await.unwrap().gone);
}

#[tokio::test]
async fn an_oom_kill_is_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let mut s = settings();
    s.memory_mb = Some(512);
    let b = backend(&fake, s);
    let l = launch(LoraId::new(), 1, false);
    let i = instance(&b.launch(&l).await.unwrap().provider_id, &l);
    assert!(fake.oom_kill(&i.provider_id));
    match ended(&b, &i).await {
        Observed::Ended {
            outcome, reason, ..
        } => {
            assert_eq!(outcome, "out_of_memory");
            assert!(reason.unwrap().contains("512 MiB"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn containers_left_by_a_crash_are_found_by_label_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let l = launch(LoraId::new(), 2, false);
    let id = {
        let crashed = backend(&fake, settings());
        crashed.launch(&l).await.unwrap().provider_id
    };
    // A new `serve` knows nothing of it but the labels.
    let b = backend(&fake, settings());
    let found = b.list_instances("loraforge-").await.unwrap().unwrap();
    assert_eq!(found, [(id.clone(), l.instance_name.clone())]);
    assert!(
        b.list_instances("other-")
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert!(
        b.terminate(&instance(&id, &l), Ending::Stop)
            .await
            .unwrap()
            .gone
    );
    assert!(
        b.list_instances("loraforge-")
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    let filters: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.path == "/containers/json")
        .map(|c| c.query)
        .collect();
    assert!(
        filters
            .iter()
            .all(|q| q.contains("loraforge.managed%3Dtrue") && q.contains("all=true")),
        "listed by label, stopped ones too: {filters:?}"
    );
    // bollard 0.21.1 builds its URLs without the `/v1.53` prefix (issue 736: the version is
    // never sent, so the daemon's default applies). Should this fail after an upgrade, the
    // version is sent: check the hosts' Docker speaks 1.53.
    assert!(
        fake.calls().iter().all(|c| c.version.is_none()),
        "{:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn a_missing_image_is_pulled_and_an_image_that_cannot_be_pulled_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_registry_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let b = backend(&fake, settings());
    b.launch(&launch(LoraId::new(), 1, false)).await.unwrap();
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.path == "/images/create" && c.status == 200),
        "pulled"
    );

    let mut config = FakeDockerConfig::default().with_gpus(1);
    config.pull_error = Some("pull access denied for ghcr.io/acme/loraforge-worker".into());
    let failing = FakeDocker::start(config).await;
    let err = backend(&failing, settings())
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    assert!(
        text.contains("pull access denied") && text.contains("LORAFORGE_DOCKER_IMAGE"),
        "{text}"
    );
    assert!(failing.containers().is_empty());
}

#[tokio::test]
async fn a_host_without_the_gpus_asked_for_has_no_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(0)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let b = backend(&fake, settings());
    let err = b
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    assert!(err.is_capacity(), "{err:?}");
    assert!(
        err.to_string().contains("could not select device driver"),
        "{err}"
    );
    assert!(
        fake.containers().iter().all(|c| c.removed),
        "the container that could not start is removed"
    );
    // A CPU host with `none`: no device request, and it runs.
    let mut s = settings();
    s.gpus = Gpus::None;
    let cpu = backend(&fake, s);
    let launched = cpu.launch(&launch(LoraId::new(), 1, false)).await.unwrap();
    assert!(
        fake.container(&launched.provider_id)
            .unwrap()
            .device_requests
            .is_empty()
    );
    assert_eq!(launched.gpu_type, None);
    assert_eq!(launched.price_per_hour, None, "no price set: no cost");
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_transient_bad_requests_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let b = backend(&fake, settings());
    fake.inject_status(1, 503);
    let err = b
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
    fake.inject_status(1, 400);
    let err = b.observe(&[]).await.unwrap_err();
    assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");

    // Nothing listens: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let nobody = DockerBackend::new(
        connect(&format!("tcp://{closed}"), Duration::from_secs(5)).unwrap(),
        settings(),
    );
    let err = nobody.observe(&[]).await.unwrap_err();
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_not_made_twice() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let b = backend(&fake, settings());
    let lora = LoraId::new();
    fake.lose_create_answers(1);
    let err = b.launch(&launch(lora, 1, false)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    // The engine retries: the container made by the lost create is taken and started.
    let launched = b.launch(&launch(lora, 1, true)).await.unwrap();
    let all = fake.containers();
    assert_eq!(all.len(), 1, "one container");
    assert_eq!(all[0].id, launched.provider_id);
    assert_eq!(all[0].status, ContainerStatus::Running);
    // A plain (not retried) launch of the same attempt meets the name conflict and takes it too.
    let again = b.launch(&launch(lora, 1, false)).await.unwrap();
    assert_eq!(again.provider_id, launched.provider_id);
    assert_eq!(fake.containers().len(), 1);
}

#[tokio::test]
async fn the_backend_keeps_the_training_backend_contract() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDocker::start(
        FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300")),
    )
    .await;
    let b = backend(&fake, settings());
    Subject::new(&b, "conf-docker-").run_all().await;
}

#[tokio::test]
async fn the_fake_also_answers_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let mut config = FakeDockerConfig::default()
        .with_gpus(1)
        .with_image(IMAGE, image(dir.path(), "exec sleep 300"));
    config.unix_socket = Some(socket.clone());
    let fake = FakeDocker::start(config).await;
    let b = DockerBackend::new(
        connect(
            &format!("unix://{}", socket.display()),
            Duration::from_secs(5),
        )
        .unwrap(),
        settings(),
    );
    let l = launch(LoraId::new(), 1, false);
    let id = b.launch(&l).await.unwrap().provider_id;
    assert_eq!(
        b.list_instances("loraforge-").await.unwrap().unwrap(),
        [(id.clone(), l.instance_name.clone())]
    );
    assert!(fake.container(&id).is_some());
}

#[tokio::test]
async fn a_flaky_daemon_fails_transiently_and_the_same_seed_fails_the_same_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let mut config = FakeDockerConfig::default()
            .with_gpus(1)
            .with_image(IMAGE, image(dir.path(), "exec sleep 300"));
        config.fail_rate = 0.5;
        config.seed = 42;
        let fake = FakeDocker::start(config).await;
        let b = backend(&fake, settings());
        let mut seen = Vec::new();
        for _ in 0..20 {
            match b.observe(&[]).await {
                Ok(_) => seen.push(true),
                Err(e) => {
                    assert!(matches!(e, BackendError::Transient(_)), "{e:?}");
                    seen.push(false);
                }
            }
        }
        assert!(seen.contains(&true) && seen.contains(&false), "{seen:?}");
        outcomes.push(seen);
    }
    assert_eq!(outcomes[0], outcomes[1], "repeatable from the seed");
}

#[tokio::test]
async fn a_slow_pull_leaves_the_job_waiting_until_the_image_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = FakeDockerConfig::default()
        .with_gpus(1)
        .with_registry_image(IMAGE, image(dir.path(), "exec sleep 300"));
    config.pull_delay = Duration::from_millis(800);
    let fake = FakeDocker::start(config).await;
    let mut s = settings();
    s.pull_wait = Duration::from_millis(100);
    let b = backend(&fake, s);
    let err = b
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    assert!(
        err.is_capacity() && err.to_string().contains("being pulled"),
        "{err:?}"
    );
    // A launch meanwhile does not start a second pull.
    let err = b
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    assert!(err.is_capacity(), "{err:?}");
    eventually("the pulled image to be used", || async {
        b.launch(&launch(LoraId::new(), 1, false)).await.ok()
    })
    .await;
    let pulls = fake
        .calls()
        .iter()
        .filter(|c| c.path == "/images/create")
        .count();
    assert_eq!(pulls, 1, "one pull");
}

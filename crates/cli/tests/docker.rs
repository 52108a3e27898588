//! Training in Docker containers, end to end through the real binary: `loraforge serve` with
//! `LORAFORGE_BACKENDS=docker` against the fake Docker Engine, whose containers run this build's
//! `loraforge worker` as local processes with the worker image's environment.
//!
//! Needs the trainer venv (`scripts/trainer-env.sh`, which `scripts/test.sh` runs first).

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::service::{Service, USER, assert_sample_pngs, pod_logs, uuid_like, worker_image};

/// The Docker backend, end to end: `serve` with `LORAFORGE_BACKENDS=docker` against the fake
/// Docker Engine, which pulls the worker image and runs the container's `loraforge worker` as a
/// local process (this build's binary, with only the image's and the container's environment);
/// the LoRA completes, the container is removed and the attempt recorded as run on `docker`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_trains_end_to_end_in_a_docker_container() {
    use loraforge_fakes::{DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};
    let dir = tempfile::tempdir().unwrap();
    let image_data = dir.path().join("image-data");
    let worker_image = worker_image(ImageSpec::idle(), &image_data);
    let image = "ghcr.io/acme/loraforge-worker:test";
    let mut config = FakeDockerConfig::default()
        .with_gpus(1)
        .with_registry_image(
            image,
            DockerImage::new(worker_image)
                .with_program("loraforge", env!("CARGO_BIN_EXE_loraforge")),
        );
    config.logs_dir = Some(dir.path().join("pods"));
    let docker = FakeDocker::start(config).await;
    let host = docker.host();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "docker"),
            ("LORAFORGE_DOCKER_HOST", host.as_str()),
            ("LORAFORGE_DOCKER_IMAGE", image),
            ("LORAFORGE_DOCKER_MEMORY_MB", "8192"),
            ("LORAFORGE_DOCKER_OBSERVE_SECS", "1"),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq in a container", 10).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- containers ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let containers = docker.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let c = &containers[0];
    assert_eq!(c.name, format!("loraforge-{id}-1"));
    assert_eq!(c.labels["loraforge.lora"], id);
    assert_eq!(c.memory, Some(8192 * 1024 * 1024));
    assert_eq!(c.device_requests[0].count, Some(-1), "all GPUs");
    assert!(
        c.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_LORA_ID" && *v == id)
    );
    let started = Instant::now();
    loop {
        let (_, details) = svc.details(&token, &id).await;
        let attempt = &details["attempts"][0];
        if attempt["cost"].is_object() && docker.containers()[0].removed {
            assert_eq!(
                (attempt["backend"].as_str(), attempt["gpu_type"].as_str()),
                (Some("docker"), Some("docker:all")),
                "{details}"
            );
            assert_eq!(attempt["outcome"], "trained");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the container's end was not recorded: {details}\n{:?}",
            docker.containers()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(docker.live_processes(), 0, "no worker left running");
}

/// A container of this service that no run owns (left by a `serve` that crashed before recording
/// its run) is found by its labels when `serve` starts and removed by the orphan sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_container_is_removed_when_serve_starts() {
    use loraforge_fakes::{DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sleeper = dir.path().join("sleeper");
    std::fs::write(&sleeper, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = "ghcr.io/acme/loraforge-worker:test";
    let docker = FakeDocker::start(
        FakeDockerConfig::default().with_gpus(1).with_image(
            image,
            DockerImage::new(ImageSpec::idle().with_env("PATH", "/usr/bin:/bin"))
                .with_program("loraforge", &sleeper),
        ),
    )
    .await;
    let orphan_name = format!("loraforge-{}-1", uuid_like());
    let crashed = loraforge_docker::DockerBackend::new(
        loraforge_docker::connect(&docker.host(), Duration::from_secs(10)).unwrap(),
        loraforge_docker::DockerSettings::new(image),
    );
    let orphan = {
        use loraforge_engine::TrainingBackend;
        crashed
            .launch(&loraforge_engine::Launch {
                lora_id: uuid_like().parse().unwrap(),
                attempt: 1,
                instance_name: orphan_name.clone(),
                server: "http://127.0.0.1:9".into(),
                token: "t".into(),
                retry: false,
                task: loraforge_engine::Task::Train,
            })
            .await
            .unwrap()
            .provider_id
    };
    let host = docker.host();
    let _svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "docker"),
            ("LORAFORGE_DOCKER_HOST", host.as_str()),
            ("LORAFORGE_DOCKER_IMAGE", image),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let started = Instant::now();
    while !docker.container(&orphan).unwrap().removed {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the orphan was not swept: {:?}",
            docker.containers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sample batches in Docker, end to end: a LoRA trained in a container (one step of the tiny
/// model), then `POST …/samples` renders in a container of its own (`loraforge-sample-<batch>-1`,
/// labelled with the batch, the batch in its environment) whose `loraforge worker` runs in sample
/// mode; the batch reads completed with signed links to PNGs that decode, and every container is
/// removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_render_in_a_docker_container() {
    use loraforge_fakes::{DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};
    let dir = tempfile::tempdir().unwrap();
    let worker_image = worker_image(ImageSpec::idle(), &dir.path().join("image-data"));
    let image = "ghcr.io/acme/loraforge-worker:test";
    let mut config = FakeDockerConfig::default().with_gpus(1).with_image(
        image,
        DockerImage::new(worker_image).with_program("loraforge", env!("CARGO_BIN_EXE_loraforge")),
    );
    config.logs_dir = Some(dir.path().join("pods"));
    let docker = FakeDocker::start(config).await;
    let host = docker.host();
    let svc = Service::start(
        dir.path(),
        &[
            ("LORAFORGE_BACKENDS", "docker"),
            ("LORAFORGE_DOCKER_HOST", host.as_str()),
            ("LORAFORGE_DOCKER_IMAGE", image),
            ("LORAFORGE_DOCKER_OBSERVE_SECS", "1"),
            ("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ],
    );
    let token = svc.token(USER);
    let id = svc.create(&token, "Zxq sampled in a container", 1).await;
    let done = svc.finished(&token, &id).await;
    assert_eq!(
        done["training_status"],
        "completed",
        "{done}\n{}\n--- containers ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    let batch = svc
        .render_samples(
            &token,
            &id,
            json!({"prompts": [{"prompt": "zxq in a box", "seed": 3}], "width": 64, "height": 64, "steps": 1}),
            Duration::from_secs(240),
        )
        .await;
    assert_eq!(
        batch["status"],
        "completed",
        "{batch}\n{}\n--- containers ---\n{}",
        svc.logs(),
        pod_logs(dir.path())
    );
    assert_eq!(batch["attempts"], 1);
    assert_sample_pngs(&batch, 64).await;
    let batch_id = batch["id"].as_str().unwrap();
    let started = Instant::now();
    while docker.containers().iter().any(|c| !c.removed) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a container was left: {:?}",
            docker.containers()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let containers = docker.containers();
    assert_eq!(
        containers.len(),
        2,
        "one to train, one to sample: {containers:?}"
    );
    let c = containers
        .iter()
        .find(|c| c.name == format!("loraforge-sample-{batch_id}-1"))
        .unwrap_or_else(|| panic!("no sample container: {containers:?}"));
    assert_eq!(c.labels["loraforge.sample_batch"], batch_id);
    assert_eq!(c.labels["loraforge.lora"], id);
    assert!(
        c.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_SAMPLE_BATCH" && v == batch_id)
    );
    assert_eq!(docker.live_processes(), 0, "no worker left running");
}

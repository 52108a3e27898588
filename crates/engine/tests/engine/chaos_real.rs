//! Chaos on the real backends: `ReplicateBackend` against `FakeReplicate` and `DockerBackend`
//! against `FakeDocker`, each fake failing 30 % of its API calls at random (fixed seeds) and
//! losing some answers (the training or container was made, the answer never arrived), 50 LoRAs,
//! the engine stepped on the `ManualClock` (and its orphan sweep stepped as its loop would) while
//! the fakes run their processes in real time.
//!
//! Nothing trains for real. A Replicate training runs a shell command that packs the outputs a
//! trainer leaves (a small valid LoRA file, validation images, the `done` line) into its weights
//! tar, and the Replicate backend brings them home through the real control plane: the server's
//! worker routes on the same database and blob store, with real worker tokens. A Docker container
//! waits until the test, playing its worker as `chaos.rs` does, has reported the result, then
//! exits. A tenth of the runs lose their instance (the training fails on the provider, the
//! container is OOM-killed).
//!
//! The invariants are chaos.rs's (`chaos_check.rs`), and neither fake keeps a live training, a
//! container or a process.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::{SecretSlice, SecretString};

use loraforge_docker::{DockerBackend, DockerSettings};
use loraforge_domain::{
    Clock, Dataset, DatasetId, DatasetImage, ImageFormat, LoraId, ManualClock, TrainingStatus,
    UserId,
};
use loraforge_engine::{EngineSettings, TrainingBackend, WorkerTokens};
use loraforge_fakes::{
    DockerImage, FakeDocker, FakeDockerConfig, FakeReplicate, FakeTrainingStatus, Faults,
    ImageSpec, ReplicateConfig, TrainingCommand,
};
use loraforge_replicate::{
    INSTANCE_TAG, ModelRef, ReplicateBackend, ReplicateBackendSettings, ReplicateClient,
    ReplicateSettings, RetrySettings,
};
use loraforge_server::{AppState, Application, JwtKeys, ServerSettings};

use crate::chaos_check::{all_ended, check_ended};
use crate::helpers::*;

const IMAGE: &str = "ghcr.io/acme/loraforge-worker:chaos";
const DEST: &str = "acme/loras";
const JWT_SECRET: &[u8] = b"chaos-test-secret-chaos-test-sec";

/// Worker tokens the server accepts, issued on the test's clock.
#[derive(Debug)]
struct Tokens {
    keys: JwtKeys,
    clock: Arc<ManualClock>,
}

impl WorkerTokens for Tokens {
    fn issue(&self, lora: LoraId, attempt: u32, worker_id: &str) -> Result<String, String> {
        self.keys
            .issue_worker(
                lora,
                attempt,
                worker_id,
                Duration::from_secs(30 * 24 * 3600),
                self.clock.now(),
            )
            .map_err(|e| e.to_string())
    }
}

/// The control plane's HTTP API on `listener`, over the test's database, store and clock.
fn serve(db: &Db, listener: tokio::net::TcpListener, base: &url::Url) {
    let mut settings = ServerSettings::default();
    settings.worker.public_url = Some(base.clone());
    let state = AppState::new(
        db.repo.clone(),
        db.store.clone(),
        db.clock.clone(),
        JwtKeys::new(&SecretSlice::from(JWT_SECRET.to_vec())),
        settings,
    );
    tokio::spawn(Application::new(state, listener).run_until_stopped(std::future::pending()));
}

/// A user whose dataset's two images and captions are in the store (the dataset zip link serves
/// them to Replicate's trainings).
async fn user_with_images(db: &Db) -> (UserId, DatasetId) {
    let user = UserId::new();
    let mut images = Vec::new();
    for index in 0..2u32 {
        let bytes = format!("\u{89}PNG image {index} of {user}").into_bytes();
        let key = format!("datasets/{user}/{index}.png");
        db.store
            .put(&key, Bytes::from(bytes.clone()))
            .await
            .expect("image");
        images.push(DatasetImage {
            index,
            file_name: format!("{index}.png"),
            format: ImageFormat::Png,
            width: 1024,
            height: 1024,
            bytes: bytes.len() as u64,
            content_hash: format!("{index:064x}"),
            storage_key: key,
            caption: Some(format!("ohwx person, photo {index}")),
        });
    }
    let dataset = Dataset {
        id: DatasetId::new(),
        user_id: user,
        images,
        created_at: db.now(),
    };
    db.repo.insert_dataset(&dataset).await.expect("dataset");
    (user, dataset.id)
}

/// What a trainer leaves, in the worker's layout, for the training command to pack.
fn trainer_outputs(dir: &Path) {
    let train = dir.join("train");
    std::fs::create_dir_all(train.join("validation")).unwrap();
    std::fs::write(train.join("model.safetensors"), tiny_lora()).unwrap();
    std::fs::write(train.join("model.kohya.safetensors"), tiny_lora()).unwrap();
    for i in 0..3 {
        std::fs::write(train.join(format!("validation/{i}.png")), b"\x89PNG fake").unwrap();
    }
    let events = [
        r#"{"event":"progress","step":2,"total":2,"loss":0.1}"#,
        r#"{"event":"validation","images":["validation/0.png","validation/1.png","validation/2.png"],"scores":null}"#,
        r#"{"event":"done","train_seconds":0.5,"steps":2,"resumed_from":0}"#,
    ];
    std::fs::write(dir.join("events.jsonl"), events.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("timing.json"), r#"{"trainer_seconds": 0.5}"#).unwrap();
}

/// The worker image: its `loraforge` waits for the test to have reported its LoRA trained
/// (`$MARKERS/<lora>`), then exits 0 as the worker does after posting its result.
fn worker_image(dir: &Path) -> DockerImage {
    let script = dir.join("loraforge");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile [ ! -e \"$MARKERS/$LORAFORGE_LORA_ID\" ]; do sleep 0.05; done\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    DockerImage::new(ImageSpec::idle().with_env("PATH", "/usr/local/bin:/usr/bin:/bin"))
        .with_program("loraforge", script)
}

fn live_trainings(fake: &FakeReplicate) -> Vec<String> {
    fake.trainings()
        .into_iter()
        .filter(|t| {
            !matches!(
                t["status"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            )
        })
        .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn live_containers(fake: &FakeDocker) -> Vec<String> {
    fake.containers()
        .into_iter()
        .filter(|c| !c.removed)
        .map(|c| c.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_loras_on_the_real_replicate_and_docker_backends_with_30_percent_faults() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let db = Db::sqlite_serving_at(base.clone()).await;
    serve(&db, listener, &base);
    let tokens = Arc::new(Tokens {
        keys: JwtKeys::new(&SecretSlice::from(JWT_SECRET.to_vec())),
        clock: db.clock.clone(),
    });
    let server = base.as_str().trim_end_matches('/').to_owned();

    // Replicate: trainings pack the outputs; 30 % of requests fail, 10 % of the creates and
    // cancels that went through lose their answer.
    let outputs = db.dir.path().join("outputs");
    trainer_outputs(&outputs);
    let command = TrainingCommand::shell(format!(
        "test -s {{dataset}} && test -s {{spec}} && sleep 0.3 && tar -cf {{output}} -C '{}' .",
        outputs.display()
    ));
    let mut config = ReplicateConfig::new("r8-chaos", command)
        .with_model(DEST)
        .with_declared_inputs(&["dataset_url", "spec", INSTANCE_TAG]);
    config.start_delay = Duration::from_millis(20);
    config.kill_grace = Duration::from_millis(500);
    config.faults = Some(Faults {
        rate: 0.3,
        seed: 0x5EED_0002,
        status: 503,
        lose_rate: 0.1,
    });
    let replicate_fake = FakeReplicate::start(config).await;
    let mut client = ReplicateSettings::new(SecretString::from("r8-chaos".to_owned()));
    client.base_url = replicate_fake.base_url().parse().unwrap();
    client.timeout = Duration::from_secs(10);
    client.retry = RetrySettings {
        max_retries: 2,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    };
    let mut rs = ReplicateBackendSettings::new(
        ModelRef::parse("acme/loraforge-trainer:0a1b2c3d").unwrap(),
        DEST,
        db.dir.path().join("replicate-scratch"),
    );
    rs.max_runs = 6;
    rs.observe_every = Duration::ZERO;
    rs.server = server.clone();
    rs.tokens = Some(tokens.clone());
    rs.worker_id = "e1".to_owned();
    let replicate =
        Arc::new(ReplicateBackend::new(ReplicateClient::new(client).unwrap(), rs).unwrap());

    // Docker: 30 % of requests answer 500, 20 % of the container creates lose their answer.
    let markers = db.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let mut docker_config = FakeDockerConfig::default()
        .with_gpus(1)
        .with_image(IMAGE, worker_image(db.dir.path()));
    docker_config.fail_rate = 0.3;
    docker_config.lose_rate = 0.2;
    docker_config.seed = 0x5EED_0003;
    let docker_fake = FakeDocker::start(docker_config).await;
    let mut ds = DockerSettings::new(IMAGE);
    ds.max_runs = 6;
    ds.stop_timeout = Duration::from_secs(1);
    ds.finish_grace = Duration::from_millis(200);
    ds.call_timeout = Duration::from_secs(5);
    ds.pull_timeout = Duration::from_secs(5);
    ds.pull_wait = Duration::from_secs(5);
    ds.observe_every = Duration::ZERO;
    ds.env = vec![("MARKERS".into(), markers.display().to_string())];
    let docker = Arc::new(DockerBackend::new(
        loraforge_docker::connect(&docker_fake.host(), Duration::from_secs(30)).unwrap(),
        ds,
    ));

    let mut s = EngineSettings {
        server_url: server.clone(),
        ..settings("e1")
    };
    s.max_active_per_user = 100;
    s.terminate_retry_delays = vec![Duration::from_secs(2)];
    s.call_timeout = Duration::from_secs(10);
    let engine = db
        .engine(
            vec![
                replicate.clone() as Arc<dyn TrainingBackend>,
                docker.clone() as Arc<dyn TrainingBackend>,
            ],
            s,
        )
        .with_worker_tokens(tokens.clone());

    let mut loras = Vec::new();
    for i in 0..50 {
        let u = user_with_images(&db).await;
        loras.push(db.lora(u, &format!("Real chaos {i}"), i).await);
    }
    let mut rng = 0x5EED_0004_u64;
    let mut chance = |percent: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100 < percent
    };
    let started = Instant::now();
    let mut reported = Vec::new();
    let mut age: HashMap<String, u32> = HashMap::new();
    let mut ticks = 0;
    let mut sweeps = 0;
    loop {
        let report = engine.tick().await.expect("tick");
        reported.extend(report.breaker_transitions.clone());
        ticks += 1;
        // The engine's loop sweeps orphans every `sweep_interval` (an hour: 120 ticks here); a
        // create whose answer was lost, followed by a fallback to the other backend, leaves one.
        if ticks % 120 == 0 {
            engine.sweep_orphans().await;
            sweeps += 1;
        }
        // Workers: a Docker run up for a few ticks reports its result (its container then exits);
        // a tenth of the runs on either backend lose their instance instead.
        for o in db.open().await {
            if o.run.outcome.is_some() || !o.current || o.job_status != TrainingStatus::Training {
                continue;
            }
            let n = age.entry(o.run.provider_id.clone()).or_default();
            *n += 1;
            if *n != 3 {
                continue;
            }
            let id = &o.run.provider_id;
            if chance(10) {
                if o.run.backend == "replicate" {
                    replicate_fake.fail_training(id, "the GPU host died");
                } else {
                    docker_fake.oom_kill(id);
                }
            } else if o.run.backend == "docker" {
                db.report_trained(o.run.lora_id).await;
                std::fs::write(markers.join(o.run.lora_id.to_string()), b"").unwrap();
            }
        }
        db.advance(Duration::from_secs(30));
        if all_ended(&db, &loras).await {
            // What lost answers left behind is the sweep's (as it would be within the hour).
            if live_trainings(&replicate_fake).is_empty()
                && live_containers(&docker_fake).is_empty()
            {
                break;
            }
            if ticks % 10 == 0 {
                engine.sweep_orphans().await;
                sweeps += 1;
            }
        }
        assert!(
            ticks < 3000,
            "not done after {ticks} ticks (25 h on the clock): stuck LoRAs, or left {:?} {:?}",
            live_trainings(&replicate_fake),
            live_containers(&docker_fake)
        );
        // The fakes' processes and the deliveries run in real time.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ended = check_ended(&db, &loras, reported).await;

    // Nothing left on either provider: no live training, container or process.
    assert!(live_trainings(&replicate_fake).is_empty());
    assert!(live_containers(&docker_fake).is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while replicate_fake.live_processes() + docker_fake.live_processes() > 0 {
        assert!(Instant::now() < deadline, "processes left on the fakes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The faults happened (answers lost too), and both backends trained.
    let docker_calls = docker_fake.calls();
    let docker_failed = docker_calls.iter().filter(|c| c.status >= 500).count();
    assert!(docker_failed > 0);
    let lost = (replicate_fake.lost_answers(), docker_fake.lost_answers());
    assert!(lost.0 + lost.1 > 0, "answers lost: {lost:?}");
    let mut on = HashMap::<String, usize>::new();
    for id in &loras {
        for run in db.runs(*id).await {
            if run.outcome.as_deref() == Some("trained") {
                *on.entry(run.backend).or_default() += 1;
            }
        }
    }
    assert!(
        on.get("replicate").is_some_and(|n| *n > 0) && on.get("docker").is_some_and(|n| *n > 0),
        "both backends trained: {on:?}"
    );
    let succeeded = replicate_fake
        .trainings()
        .iter()
        .filter(|t| t["status"] == FakeTrainingStatus::Succeeded.as_wire())
        .count();
    println!(
        "real chaos: {} completed ({on:?}), {} failed, {ticks} ticks, {sweeps} sweeps, {} transitions, \
         {} Replicate trainings ({succeeded} succeeded, {:?} creates/cancels), {} Docker calls \
         ({docker_failed} failed), {lost:?} answers lost, {:?}",
        ended.completed,
        ended.failed,
        ended.transitions,
        replicate_fake.trainings().len(),
        replicate_fake.counts(),
        docker_calls.len(),
        started.elapsed()
    );
    assert!(
        ended.completed >= 40,
        "most LoRAs complete: {}",
        ended.completed
    );
}

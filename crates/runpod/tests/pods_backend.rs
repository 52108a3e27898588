//! The `runpod` backend against the contract fake: GPU types in order, capacity, a retried
//! launch takes the pod an earlier create made, one listing observes every run, and terminate
//! ends a pod until RunPod no longer knows it.

mod common;

use loraforge_domain::{LoraId, MicroUsd};
use loraforge_engine::{Ending, Instance, Launch, Observed, TrainingBackend};
use loraforge_fakes::{FakeConfig, FakeRunpod, KillPod};
use loraforge_runpod::{DeployPod, PodsBackend, PodsSettings};

use common::{KEY, graphql};

fn launch(lora: LoraId, attempt: u32, retry: bool) -> Launch {
    Launch {
        lora_id: lora,
        attempt,
        instance_name: format!("loraforge-{lora}-{attempt}"),
        server: "https://control.example".into(),
        token: "tok".into(),
        retry,
        task: loraforge_engine::Task::Train,
    }
}

fn backend(fake: &FakeRunpod) -> PodsBackend {
    let settings = PodsSettings::new(
        "img:1",
        vec!["NVIDIA GeForce RTX 3090".into(), "NVIDIA A40".into()],
    );
    PodsBackend::new(graphql(fake.graphql_url().as_str(), KEY), settings)
}

fn instance(id: &str, l: &Launch) -> Instance {
    Instance {
        provider_id: id.to_owned(),
        instance_name: l.instance_name.clone(),
        lora_id: l.lora_id,
        attempt: l.attempt,
    }
}

#[tokio::test]
async fn pods_launch_in_gpu_order_and_end_until_gone() {
    let fake = FakeRunpod::start(
        FakeConfig::new(KEY)
            .with_gpu("NVIDIA GeForce RTX 3090", 0, "0.44")
            .with_gpu("NVIDIA A40", 1, "0.79"),
    )
    .await;
    let b = backend(&fake);
    let first = launch(LoraId::new(), 1, false);
    let launched = b.launch(&first).await.unwrap();
    assert_eq!(
        (launched.gpu_type.as_deref(), launched.price_per_hour),
        (Some("NVIDIA A40"), Some(MicroUsd(790_000)))
    );
    let pod = fake.pod(&launched.provider_id).unwrap();
    assert_eq!(pod.name, first.instance_name);
    assert!(
        pod.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_SERVER" && v == "https://control.example")
    );

    // Every type taken: no capacity, said as such.
    let err = b
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    assert!(
        err.is_capacity() && err.to_string().contains("NVIDIA A40"),
        "{err}"
    );

    let i = instance(&launched.provider_id, &first);
    assert_eq!(
        b.observe(std::slice::from_ref(&i)).await.unwrap(),
        [Observed::Running]
    );
    assert_eq!(
        b.list_instances("loraforge-").await.unwrap().unwrap(),
        [(launched.provider_id.clone(), first.instance_name.clone())]
    );
    let t = b.terminate(&i, Ending::Stop).await.unwrap();
    assert!(t.gone);
    assert!(
        b.terminate(&i, Ending::Stop).await.unwrap().gone,
        "idempotent"
    );
    assert!(matches!(
        b.observe(std::slice::from_ref(&i)).await.unwrap()[0],
        Observed::Ended {
            outcome: "vanished",
            gone: true,
            ..
        }
    ));
}

/// A sample batch's attempt runs on a pod of its own, named for the batch, with the batch in the
/// pod's environment; it is listed, observed and ended by pod id like a training pod.
#[tokio::test]
async fn a_sample_batch_attempt_gets_a_pod_named_for_its_batch() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu("NVIDIA A40", 1, "0.79")).await;
    let b = backend(&fake);
    assert!(b.runs_samples());
    let batch = loraforge_domain::SampleBatchId::new();
    let mut l = launch(LoraId::new(), 1, false);
    l.task = loraforge_engine::Task::Sample { batch };
    l.instance_name = loraforge_domain::run::sample_instance_name("loraforge-", batch, 1);
    let launched = b.launch(&l).await.unwrap();
    let pod = fake.pod(&launched.provider_id).unwrap();
    assert_eq!(pod.name, format!("loraforge-sample-{batch}-1"));
    assert!(
        pod.env
            .iter()
            .any(|(k, v)| k == "LORAFORGE_SAMPLE_BATCH" && *v == batch.to_string()),
        "{:?}",
        pod.env
    );
    assert_eq!(
        b.list_instances("loraforge-").await.unwrap().unwrap(),
        [(launched.provider_id.clone(), l.instance_name.clone())]
    );
    let i = instance(&launched.provider_id, &l);
    assert_eq!(
        b.observe(std::slice::from_ref(&i)).await.unwrap(),
        [Observed::Running]
    );
    assert!(b.terminate(&i, Ending::Stop).await.unwrap().gone);
}

#[tokio::test]
async fn a_retried_launch_takes_the_pod_a_lost_answer_made() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu("NVIDIA A40", 5, "0.79")).await;
    let b = backend(&fake);
    let l = launch(LoraId::new(), 2, true);
    // The first create went through but its answer was lost.
    let made = graphql(fake.graphql_url().as_str(), KEY)
        .deploy_pod(&DeployPod::new(
            l.instance_name.clone(),
            "img:1",
            "NVIDIA A40",
        ))
        .await
        .unwrap();
    let launched = b.launch(&l).await.unwrap();
    assert_eq!(launched.provider_id, made.id);
    assert_eq!(fake.pods().len(), 1, "no second pod");
    // A pod that died shows as ended, not yet gone.
    assert!(fake.kill_pod(&made.id, KillPod::Exited));
    let seen = b.observe(&[instance(&made.id, &l)]).await.unwrap();
    assert!(
        matches!(
            seen[0],
            Observed::Ended {
                outcome: "vanished",
                gone: false,
                ..
            }
        ),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_bad_key_is_permanent_and_says_what_to_fix() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu("NVIDIA A40", 1, "0.79")).await;
    let b = PodsBackend::new(
        graphql(fake.graphql_url().as_str(), "wrong"),
        PodsSettings::new("img:1", vec!["NVIDIA A40".into()]),
    );
    let err = b
        .launch(&launch(LoraId::new(), 1, false))
        .await
        .unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("LORAFORGE_RUNPOD_API_KEY"),
        "{err}"
    );
}

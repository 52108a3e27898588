//! The `TrainingBackend` conformance suite (`loraforge_engine::conformance`) on the RunPod pods
//! backend against the contract fake, whose pods of an image without a program run until
//! terminated.

mod common;

use loraforge_engine::conformance::Subject;
use loraforge_fakes::{FakeConfig, FakeRunpod};
use loraforge_runpod::{PodsBackend, PodsSettings};

use common::{KEY, graphql};

#[tokio::test]
async fn the_pods_backend_keeps_the_training_backend_contract() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu("NVIDIA A40", 10, "0.79")).await;
    let b = PodsBackend::new(
        graphql(fake.graphql_url().as_str(), KEY),
        PodsSettings::new("img:1", vec!["NVIDIA A40".into()]),
    );
    Subject::new(&b, "conf-runpod-").run_all().await;
}

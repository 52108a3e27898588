//! Shared set-up: the fake ai-toolkit, the trainer's interpreter, the tiny model.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use loraforge_aitoolkit::{AiToolkitClient, ClientSettings};
use loraforge_fakes::aitoolkit::{FakeAiToolkit, ToolkitConfig, ToolkitTrainer};

#[allow(unused_imports)] // each test binary uses some
pub use loraforge_fakes::trainer::{repo_root, tiny_model, trainer_env, trainer_python};

pub fn trainer() -> ToolkitTrainer {
    ToolkitTrainer {
        program: trainer_python(),
        args: vec!["-m".into(), "loraforge_trainer".into()],
        env: trainer_env(),
    }
}

pub async fn fake(
    root: &Path,
    auth: Option<&str>,
    trainer: Option<ToolkitTrainer>,
) -> FakeAiToolkit {
    let mut config = ToolkitConfig::new(root);
    config.auth = auth.map(str::to_owned);
    config.trainer = trainer;
    config.tick = Duration::from_millis(20);
    config.kill_grace = Duration::from_secs(2);
    FakeAiToolkit::start(config, 0)
        .await
        .expect("fake ai-toolkit")
}

pub fn client(url: &str, token: Option<&str>) -> AiToolkitClient {
    let mut s = ClientSettings::new(url.parse().unwrap(), token.map(|t| t.to_owned().into()));
    s.retry_delay = Duration::from_millis(10);
    s.timeout = Duration::from_secs(10);
    AiToolkitClient::new(s).unwrap()
}

/// Polls `f` every 20 ms until it is true or `limit` passed.
pub async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

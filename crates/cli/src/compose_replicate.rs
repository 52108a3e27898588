//! The `replicate` backend from the `replicate_*` settings: Replicate trainings of our Cog model
//! (`cog/`), with the control plane playing the worker's part (`loraforge_worker::remote`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use loraforge_domain::MicroUsd;
use loraforge_engine::WorkerTokens;
use loraforge_replicate::{
    ModelRef, ReplicateBackend, ReplicateBackendSettings, ReplicateClient, ReplicateSettings,
};

use crate::settings::{Settings, absolute};

/// The route Replicate posts a training's events to (the server's webhook route).
pub const WEBHOOK_PATH: &str = "/api/v1/webhooks/replicate";

/// `server`: the control plane's public URL (Replicate downloads the dataset zip from it and
/// posts webhooks to it); `tokens` issues a token again for an attempt launched before a
/// restart.
pub fn replicate_backend(
    s: &Settings,
    server: &str,
    tokens: Arc<dyn WorkerTokens>,
) -> anyhow::Result<ReplicateBackend> {
    let token = s
        .replicate_api_token
        .clone()
        .context("the replicate backend needs LORAFORGE_REPLICATE_API_TOKEN")?;
    let model = s
        .replicate_model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .context("the replicate backend needs LORAFORGE_REPLICATE_MODEL (owner/name:version of the cog/ model)")?;
    let model = ModelRef::parse(model).map_err(|e| anyhow::anyhow!("replicate_model: {e}"))?;
    let destination = s
        .replicate_destination
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .context(
            "the replicate backend needs LORAFORGE_REPLICATE_DESTINATION (an existing owner/name)",
        )?;
    let mut client = ReplicateSettings::new(token);
    client.base_url = url::Url::parse(&s.replicate_api_url)
        .with_context(|| format!("replicate_api_url {:?} is not a URL", s.replicate_api_url))?;
    let price = MicroUsd::parse_dollars(&s.replicate_price_per_second)
        .map_err(|e| anyhow::anyhow!("replicate_price_per_second: {e}"))?;
    let mut settings =
        ReplicateBackendSettings::new(model, destination, absolute(&s.data_dir.join("replicate")));
    settings.max_runs = s.replicate_max_runs.max(1);
    settings.price_per_second = Some(price);
    settings.observe_every = Duration::from_secs(s.replicate_observe_secs.max(1));
    // Without the account's signing secret the route refuses every delivery (404), so
    // Replicate is not asked to send any: polling alone follows the trainings.
    settings.webhook = s
        .replicate_webhook_key()
        .map(|_| format!("{server}{WEBHOOK_PATH}"));
    settings.server = server.to_owned();
    settings.tokens = Some(tokens);
    settings.worker_id = s.worker_id();
    let client = ReplicateClient::new(client).context("setting up the Replicate client")?;
    ReplicateBackend::new(client, settings).map_err(|e| anyhow::anyhow!("{e}"))
}

//! The backends `LORAFORGE_BACKENDS` may name and the checks of their settings, made whether
//! or not a backend is on (a typo should not wait for the day it is switched on).

use anyhow::bail;

use super::Settings;

/// Every backend `LORAFORGE_BACKENDS` may name, in the order the docs list them.
pub(crate) const BACKEND_NAMES: &[&str] = &[
    "local",
    "runpod",
    "runpod-serverless",
    "replicate",
    "docker",
    "aitoolkit",
];

/// `local, runpod, … and/or aitoolkit`, for messages.
pub(crate) fn backend_choices() -> String {
    let (last, rest) = BACKEND_NAMES.split_last().expect("backends are named");
    format!("{} and/or {last}", rest.join(", "))
}

/// Every backend named is known, and each backend's settings that are given are well-formed.
pub(super) fn check(s: &Settings) -> anyhow::Result<()> {
    for b in &s.backends {
        if !BACKEND_NAMES.contains(&b.as_str()) {
            bail!("backends: unknown backend {b:?}; use {}", backend_choices());
        }
    }
    check_replicate(s)?;
    if let Err(e) = loraforge_docker::Gpus::parse(&s.docker_gpus) {
        bail!("{e}");
    }
    if let Some(cpus) = &s.docker_cpus
        && let Err(e) = loraforge_docker::parse_cpus(cpus)
    {
        bail!("{e}");
    }
    for (key, price) in [
        ("aitoolkit_price_per_hour", &s.aitoolkit_price_per_hour),
        ("docker_price_per_hour", &s.docker_price_per_hour),
    ] {
        if let Some(price) = price
            && let Err(e) = loraforge_domain::MicroUsd::parse_dollars(price)
        {
            bail!("{key} must be decimal dollars per hour like 0.69: {e}");
        }
    }
    Ok(())
}

/// The `replicate_*` settings that are given must be well-formed, whether or not the backend is
/// on (a typo should not wait for the day it is switched on).
fn check_replicate(s: &Settings) -> anyhow::Result<()> {
    if let Err(e) = loraforge_domain::MicroUsd::parse_dollars(&s.replicate_price_per_second) {
        bail!("replicate_price_per_second must be decimal dollars per second like 0.0014: {e}");
    }
    if let Some(model) = s
        .replicate_model
        .as_deref()
        .filter(|m| !m.trim().is_empty())
        && let Err(e) = loraforge_replicate::ModelRef::parse(model.trim())
    {
        bail!("replicate_model: {e}");
    }
    if let Some(dest) = s
        .replicate_destination
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        && let Err(e) = loraforge_replicate::parse_slug_pair(dest.trim())
    {
        bail!("replicate_destination: {e}");
    }
    if let Err(e) = url::Url::parse(&s.replicate_api_url) {
        bail!(
            "replicate_api_url {:?} is not a URL: {e}",
            s.replicate_api_url
        );
    }
    if s.replicate_max_runs == 0 {
        bail!("replicate_max_runs must be at least 1");
    }
    Ok(())
}

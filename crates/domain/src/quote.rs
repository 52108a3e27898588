//! Quotes: what a training is expected to take and cost on a backend, before it is created.
//!
//! From history when there is some: the finished runs of the same backend (and GPU type, when the
//! sample knows it), at a resolution in the same bucket, each turned into seconds per step; the
//! median of those (robust to one slow or cheap outlier) × the requested steps. Without history a
//! documented fallback table of seconds per step per resolution bucket, plus a fixed overhead.
//! The cost is the expected seconds × the backend's price per hour (the median price of the runs
//! used, else the configured one); a backend whose price is unknown has no cost, with a reason.
//! Pure: samples and prices are handed in.

use serde::Serialize;

use crate::MicroUsd;

/// One finished, trained run as the quote learns from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteSample {
    pub backend: String,
    pub gpu_type: Option<String>,
    pub steps: u32,
    pub resolution: u32,
    /// Seconds the provider billed (instance start to gone).
    pub billed_seconds: u64,
    pub cost: MicroUsd,
    pub price_per_hour: Option<MicroUsd>,
}

/// What is asked to be quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteRequest {
    pub steps: u32,
    pub resolution: u32,
}

/// A backend as the quote sees it: its name, the GPU type it runs (when one is known) and its
/// configured price per hour (`None`: unknown, e.g. RunPod pods are priced per pod at launch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteBackend {
    pub name: String,
    pub gpu_type: Option<String>,
    pub price_per_hour: Option<MicroUsd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteMethod {
    /// From recorded runs of similar trainings.
    History,
    /// From [`FALLBACK_SECONDS_PER_STEP`] and [`FALLBACK_OVERHEAD_SECONDS`].
    Fallback,
}

impl QuoteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuoteMethod::History => "history",
            QuoteMethod::Fallback => "fallback",
        }
    }
}

/// The expected time and cost on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub backend: String,
    pub gpu_type: Option<String>,
    pub expected_seconds: u64,
    /// `None` when the backend's price is unknown (`cost_unknown_reason` says why).
    pub expected_cost: Option<MicroUsd>,
    pub cost_unknown_reason: Option<String>,
    /// Runs the estimate rests on (0 for the fallback).
    pub based_on_runs: u32,
    pub method: QuoteMethod,
}

/// Resolution buckets: a sample is similar to a request when both fall in the same bucket
/// (upper bounds in pixels, inclusive; the last bucket takes everything above).
pub const RESOLUTION_BUCKETS: [u32; 3] = [512, 768, 1024];

/// Fallback seconds per training step, in milliseconds, per resolution bucket (≤512, ≤768,
/// ≤1024, above). Not measured by this project: no GPU was available when the trainer's GPU
/// benchmark was written (docs/performance.md, "Trainer on CPU": GPU numbers not measured).
/// These are typical rates of SDXL LoRA training (rank 16, batch 1, fp16, gradient
/// checkpointing) on a 24 GB-class GPU as commonly reported for diffusers/kohya trainers
/// (≈1 step/s at 1024²; cost scales roughly with pixels). Replace them with
/// `bench/trainer_gpu.sh`'s numbers once measured; history replaces them per backend anyway.
pub const FALLBACK_SECONDS_PER_STEP_MILLIS: [u64; 4] = [350, 600, 1_000, 1_600];

/// Fixed seconds every run spends outside training steps: instance start, model load, latent
/// and text-embedding caching, validation images, uploads.
pub const FALLBACK_OVERHEAD_SECONDS: u64 = 300;

/// The bucket index of a resolution.
pub fn resolution_bucket(resolution: u32) -> usize {
    RESOLUTION_BUCKETS
        .iter()
        .position(|&max| resolution <= max)
        .unwrap_or(RESOLUTION_BUCKETS.len())
}

/// The quote on `backend` for `request`, from `samples` (any backends; the similar ones are
/// picked here).
pub fn estimate(backend: &QuoteBackend, request: &QuoteRequest, samples: &[QuoteSample]) -> Quote {
    let bucket = resolution_bucket(request.resolution);
    let similar: Vec<&QuoteSample> = samples
        .iter()
        .filter(|s| s.backend == backend.name && s.steps > 0)
        .filter(|s| match (&backend.gpu_type, &s.gpu_type) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        })
        .filter(|s| resolution_bucket(s.resolution) == bucket)
        .collect();
    if similar.is_empty() {
        let per_step = FALLBACK_SECONDS_PER_STEP_MILLIS[bucket];
        let seconds =
            FALLBACK_OVERHEAD_SECONDS + (per_step * u64::from(request.steps)).div_ceil(1_000);
        let (cost, reason) = cost_at(seconds, backend.price_per_hour, &backend.name);
        return Quote {
            backend: backend.name.clone(),
            gpu_type: backend.gpu_type.clone(),
            expected_seconds: seconds,
            expected_cost: cost,
            cost_unknown_reason: reason,
            based_on_runs: 0,
            method: QuoteMethod::Fallback,
        };
    }
    // Seconds per step in micro-seconds, to keep integers and precision.
    let mut per_step: Vec<u64> = similar
        .iter()
        .map(|s| s.billed_seconds.saturating_mul(1_000_000) / u64::from(s.steps))
        .collect();
    let median_per_step = median(&mut per_step);
    let seconds = (median_per_step.saturating_mul(u64::from(request.steps))).div_ceil(1_000_000);
    // The price the runs were billed at (a pod's price is only known per run), else configured.
    let mut prices: Vec<u64> = similar
        .iter()
        .filter_map(|s| s.price_per_hour)
        .filter_map(|p| u64::try_from(p.0).ok())
        .collect();
    let price = if prices.is_empty() {
        backend.price_per_hour
    } else {
        Some(MicroUsd(
            i64::try_from(median(&mut prices)).unwrap_or(i64::MAX),
        ))
    };
    let (cost, reason) = cost_at(seconds, price, &backend.name);
    Quote {
        backend: backend.name.clone(),
        gpu_type: backend
            .gpu_type
            .clone()
            .or_else(|| similar.iter().find_map(|s| s.gpu_type.clone())),
        expected_seconds: seconds,
        expected_cost: cost,
        cost_unknown_reason: reason,
        based_on_runs: u32::try_from(similar.len()).unwrap_or(u32::MAX),
        method: QuoteMethod::History,
    }
}

fn cost_at(
    seconds: u64,
    price: Option<MicroUsd>,
    backend: &str,
) -> (Option<MicroUsd>, Option<String>) {
    match price {
        Some(p) => (
            Some(p.per_hour_for_millis(seconds.saturating_mul(1_000))),
            None,
        ),
        None => (
            None,
            Some(format!(
                "no price per hour is configured for backend {backend:?} and no priced run of it is recorded"
            )),
        ),
    }
}

/// The median (the lower of the two middle values for an even count, so it is always a value
/// that was seen). `values` must not be empty.
fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[(values.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, price: Option<i64>) -> QuoteBackend {
        QuoteBackend {
            name: name.into(),
            gpu_type: None,
            price_per_hour: price.map(MicroUsd),
        }
    }

    fn sample(backend: &str, steps: u32, res: u32, secs: u64, price: Option<i64>) -> QuoteSample {
        QuoteSample {
            backend: backend.into(),
            gpu_type: Some("A100".into()),
            steps,
            resolution: res,
            billed_seconds: secs,
            cost: MicroUsd(0),
            price_per_hour: price.map(MicroUsd),
        }
    }

    #[test]
    fn buckets_split_at_their_upper_bounds() {
        assert_eq!(resolution_bucket(256), 0);
        assert_eq!(resolution_bucket(512), 0);
        assert_eq!(resolution_bucket(576), 1);
        assert_eq!(resolution_bucket(1024), 2);
        assert_eq!(resolution_bucket(1536), 3);
    }

    #[test]
    fn fallback_without_history_uses_the_table_and_the_configured_price() {
        let q = estimate(
            &backend("docker", Some(3_600_000)),
            &QuoteRequest {
                steps: 1500,
                resolution: 1024,
            },
            &[sample("other", 1000, 1024, 100, Some(1))],
        );
        assert_eq!(q.method, QuoteMethod::Fallback);
        assert_eq!(q.based_on_runs, 0);
        assert_eq!(q.expected_seconds, 300 + 1500);
        // $3.60/h = $0.001/s → 1800 s = $1.80.
        assert_eq!(q.expected_cost, Some(MicroUsd(1_800_000)));
        assert!(q.cost_unknown_reason.is_none());
    }

    #[test]
    fn unknown_price_gives_no_cost_and_says_why() {
        let q = estimate(
            &backend("runpod", None),
            &QuoteRequest {
                steps: 100,
                resolution: 512,
            },
            &[],
        );
        assert_eq!(q.expected_cost, None);
        assert!(q.cost_unknown_reason.unwrap().contains("runpod"));
        assert_eq!(q.expected_seconds, 300 + 35);
    }

    #[test]
    fn history_scales_the_median_seconds_per_step_and_ignores_outliers() {
        let samples = [
            sample("runpod", 1000, 1024, 1000, Some(2_000_000)), // 1.0 s/step
            sample("runpod", 500, 1024, 600, Some(2_000_000)),   // 1.2 s/step
            sample("runpod", 1000, 1024, 900, Some(2_000_000)),  // 0.9 s/step
            sample("runpod", 100, 1024, 100_000, Some(9_000_000)), // outlier, 1000 s/step
            sample("runpod", 1000, 512, 10, Some(2_000_000)),    // other bucket
            sample("local", 1000, 1024, 5, None),                // other backend
        ];
        let q = estimate(
            &backend("runpod", None),
            &QuoteRequest {
                steps: 2000,
                resolution: 1024,
            },
            &samples,
        );
        assert_eq!(q.method, QuoteMethod::History);
        assert_eq!(q.based_on_runs, 4);
        // Sorted per step: 0.9, 1.0, 1.2, 1000 → lower middle 1.0 → 2000 s.
        assert_eq!(q.expected_seconds, 2000);
        // The runs' own median price ($2/h) although none is configured.
        assert_eq!(q.expected_cost, Some(MicroUsd(1_111_111)));
        assert_eq!(q.gpu_type.as_deref(), Some("A100"));
    }

    #[test]
    fn a_known_gpu_type_only_learns_from_runs_on_it() {
        let mut other = sample("runpod", 100, 1024, 1000, None);
        other.gpu_type = Some("H100".into());
        let mut b = backend("runpod", Some(1_000_000));
        b.gpu_type = Some("A100".into());
        let q = estimate(
            &b,
            &QuoteRequest {
                steps: 100,
                resolution: 1024,
            },
            &[other.clone(), sample("runpod", 100, 1024, 50, None)],
        );
        assert_eq!(q.based_on_runs, 1);
        assert_eq!(q.expected_seconds, 50);
        b.gpu_type = Some("L4".into());
        let q = estimate(
            &b,
            &QuoteRequest {
                steps: 100,
                resolution: 1024,
            },
            &[other],
        );
        assert_eq!(q.method, QuoteMethod::Fallback);
    }
}

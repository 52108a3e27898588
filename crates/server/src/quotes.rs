//! Quotes: the expected time and cost of a training on each configured backend, in the router's
//! order, from the recorded runs (`CreditStore::quote_samples`) and `domain::quote::estimate`.

use serde::Serialize;
use utoipa::ToSchema;

use loraforge_domain::quote::{self, QuoteBackend, QuoteRequest};
use loraforge_domain::{MicroUsd, TrainingParams};

use crate::error::ApiResult;
use crate::state::AppState;

/// Recorded runs a quote learns from, per backend (the newest).
pub const SAMPLES_PER_BACKEND: u32 = 200;

/// One backend's quote.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuoteView {
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    pub expected_seconds: u64,
    /// Micro-dollars; null when the backend's price is unknown (`cost_unknown_reason`).
    pub expected_cost_micros: Option<i64>,
    /// The same in dollars, as decimal text ("1.800000").
    pub expected_cost_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_unknown_reason: Option<String>,
    /// Recorded runs the estimate rests on (0: the fallback table).
    pub based_on_runs: u32,
    /// `history` or `fallback`.
    pub method: String,
}

/// Body of `POST /api/v1/quotes` (and of a dry-run create).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuotesView {
    /// One per configured backend, in the router's order (the first is what a create reserves
    /// when credits are on).
    pub quotes: Vec<QuoteView>,
    /// Always `USD`.
    pub currency: &'static str,
}

/// Decimal dollars with six places, for people ("1.800000", "-0.500000").
pub fn usd(m: MicroUsd) -> String {
    let sign = if m.0 < 0 { "-" } else { "" };
    let abs = m.0.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// The quotes for `params` on every configured backend, in order.
pub async fn quote(state: &AppState, params: &TrainingParams) -> ApiResult<QuotesView> {
    let samples = state.repo().quote_samples(SAMPLES_PER_BACKEND).await?;
    let request = QuoteRequest {
        steps: params.steps,
        resolution: params.resolution,
    };
    let prices = &state.settings().credits.prices_per_hour;
    let quotes = state
        .backends()
        .iter()
        .map(|b| {
            let backend = QuoteBackend {
                name: b.name.clone(),
                gpu_type: None,
                price_per_hour: prices.get(&b.name).copied(),
            };
            let q = quote::estimate(&backend, &request, &samples);
            QuoteView {
                backend: q.backend,
                gpu_type: q.gpu_type,
                expected_seconds: q.expected_seconds,
                expected_cost_micros: q.expected_cost.map(|c| c.0),
                expected_cost_usd: q.expected_cost.map(usd),
                cost_unknown_reason: q.cost_unknown_reason,
                based_on_runs: q.based_on_runs,
                method: q.method.as_str().to_owned(),
            }
        })
        .collect();
    Ok(QuotesView {
        quotes,
        currency: "USD",
    })
}

/// What a create reserves with credits on: the first backend in router order whose cost is
/// known; zero when none is (the actual cost is still deducted when training completes).
pub fn reservation(quotes: &QuotesView) -> MicroUsd {
    quotes
        .quotes
        .iter()
        .find_map(|q| q.expected_cost_micros)
        .map(MicroUsd)
        .unwrap_or(MicroUsd::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_print_with_six_places() {
        assert_eq!(usd(MicroUsd(1_800_000)), "1.800000");
        assert_eq!(usd(MicroUsd(5)), "0.000005");
        assert_eq!(usd(MicroUsd(-500_000)), "-0.500000");
    }
}

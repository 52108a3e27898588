//! The one way a LoRA is created, shared by `POST /api/v1/lora-models` and the reference-image
//! intake: per-user rate limit, then the repository's atomic create (idempotency key, dataset
//! ownership, duplicate name, monthly limit and, with credits on, the reservation of the quote),
//! then a wake-up for SSE streams.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use loraforge_db::{CreateOutcome, DbError, IdempotencyKey, MonthlyPolicy, NewLora, NewWebhook};
use loraforge_domain::limits::monthly_limit_message;
use loraforge_domain::{DatasetId, LoraId, LoraModel, LoraName, MonthlyWindow, TrainingParams};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A parsed create request.
#[derive(Debug, Clone)]
pub struct CreateLora {
    pub name: LoraName,
    pub description: Option<String>,
    pub dataset_id: DatasetId,
    pub params: TrainingParams,
    pub idempotency: Option<IdempotencyKey>,
    /// A checked client webhook (`client_webhooks::parse_webhook`).
    pub webhook: Option<NewWebhook>,
    /// The generator's character (cleaned identifier).
    pub character_id: Option<String>,
    /// The generation job that asked for it (cleaned identifier).
    pub triggered_by_job_id: Option<String>,
}

#[derive(Debug)]
pub struct Created {
    pub lora: LoraModel,
    /// The idempotency key had been used for this request before; nothing new was created.
    pub replayed: bool,
}

pub async fn create_lora(
    state: &AppState,
    user: &AuthUser,
    input: CreateLora,
) -> ApiResult<Created> {
    let now = state.now();
    if let Err(wait) = state.create_limiter().check(user.id, now) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many create requests; at most {} per minute. Try again in {wait} s",
                state.settings().limits.creates_per_minute
            ),
        )
        .retry(wait));
    }
    let window = MonthlyWindow::containing(now);
    let limit = state.settings().limits.monthly_loras;
    // With credits on, the quote of the first backend in router order is reserved in the
    // create's own transaction (402 `insufficient_credits` when it does not fit).
    let reserve = if state.settings().credits.enabled {
        Some(crate::quotes::reservation(
            &crate::quotes::quote(state, &input.params).await?,
        ))
    } else {
        None
    };
    let new = NewLora {
        id: LoraId::new(),
        owner: user.id,
        owner_email: user.email.clone(),
        name: input.name,
        description: input.description,
        dataset_id: input.dataset_id,
        params: input.params,
        idempotency: input.idempotency,
        reserve,
        webhook: input.webhook,
        now,
        character_id: input.character_id,
        triggered_by_job_id: input.triggered_by_job_id,
    };
    let outcome = match state
        .repo()
        .create_lora(new, MonthlyPolicy { limit, window })
        .await
    {
        Ok(o) => o,
        Err(DbError::MonthlyLimitReached { used, limit }) => {
            return Err(monthly_limit_reached(window, now, used, limit));
        }
        Err(e) => return Err(e.into()),
    };
    let (lora, replayed) = match outcome {
        CreateOutcome::Created(l) => (l, false),
        CreateOutcome::Replayed(l) => (l, true),
    };
    if !replayed {
        state.notify_changed(lora.id);
        tracing::info!(lora_id = %lora.id, user_id = %user.id, "LoRA created");
    }
    Ok(Created { lora, replayed })
}

/// 429 `monthly_limit_reached` with when the limit resets.
pub fn monthly_limit_reached(
    window: MonthlyWindow,
    now: DateTime<Utc>,
    used: u32,
    limit: u32,
) -> ApiError {
    let retry = u64::try_from((window.end - now).num_seconds())
        .unwrap_or(0)
        .max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "monthly_limit_reached",
        monthly_limit_message(limit),
    )
    .with("limit", limit)
    .with("used", used)
    .with("resets_at", window.end.to_rfc3339())
    .retry(retry)
}

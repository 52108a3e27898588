//! The monthly archival review: `GET /api/v1/admin/archival-review` lists completed LoRAs not
//! used for 6 months with their stored bytes and monthly storage cost; `POST` records an admin's
//! approval of archiving a list of them. Nothing is moved or deleted (LoRAs are kept for ever;
//! archiving itself is a later step). Usage is not tracked yet, so "not used" means completed
//! (or created) more than 6 months ago.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use loraforge_domain::LoraId;

use crate::auth::AuthUser;
use crate::body::{from_value, json_value};
use crate::error::{ApiError, ApiResult};
use crate::monitors::storage_cost;
use crate::state::AppState;
use crate::views::{ErrorBody, MoneyView};

/// Unused this long, a LoRA is listed.
const UNUSED_DAYS: i64 = 183;
const LIMIT: u32 = 500;
const MAX_APPROVALS: usize = 500;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchivalCandidateView {
    pub lora_id: String,
    pub name: String,
    /// When it completed (or was created); usage is not tracked yet.
    pub last_activity: DateTime<Utc>,
    pub stored_bytes: u64,
    pub monthly_cost: MoneyView,
    /// The latest recorded approval of archiving it.
    pub approved_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchivalReview {
    /// How "not used" is judged.
    pub basis: String,
    pub unused_before: DateTime<Utc>,
    pub candidates: Vec<ArchivalCandidateView>,
    pub total_bytes: u64,
    pub total_monthly_cost: MoneyView,
}

/// Body of `POST /api/v1/admin/archival-review`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveArchival {
    /// The LoRAs approved for archiving (at most 500).
    pub lora_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchivalApproved {
    pub approved: Vec<String>,
    /// Ids that name no LoRA.
    pub unknown: Vec<String>,
}

fn require_admin(user: &AuthUser) -> ApiResult<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("only admins can review archival"))
    }
}

/// Completed LoRAs not used for 6 months, oldest first, with their storage cost. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/archival-review", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = ArchivalReview), (status = 403, body = ErrorBody)))]
pub async fn review(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<ArchivalReview>> {
    require_admin(&user)?;
    let cutoff = state.now() - chrono::Duration::days(UNUSED_DAYS);
    let price = state.settings().monitors.storage_price_per_gb_month;
    let rows = state.repo().archival_candidates(cutoff, LIMIT).await?;
    let total_bytes: u64 = rows.iter().map(|c| c.file_size).sum();
    Ok(Json(ArchivalReview {
        basis: "completed_at, else created_at: LoRA usage is not tracked yet".into(),
        unused_before: cutoff,
        candidates: rows
            .into_iter()
            .map(|c| ArchivalCandidateView {
                lora_id: c.lora_id.to_string(),
                name: c.name,
                last_activity: c.last_activity,
                stored_bytes: c.file_size,
                monthly_cost: storage_cost(c.file_size, price).into(),
                approved_at: c.approved_at,
            })
            .collect(),
        total_bytes,
        total_monthly_cost: storage_cost(total_bytes, price).into(),
    }))
}

/// Records the approval of archiving these LoRAs (nothing is moved or deleted). Admins only.
#[utoipa::path(post, path = "/api/v1/admin/archival-review", request_body = ApproveArchival, tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = ArchivalApproved), (status = 400, description = "invalid_json", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "invalid_archival_approval", body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    user: AuthUser,
    body: Bytes,
) -> ApiResult<Json<ArchivalApproved>> {
    require_admin(&user)?;
    let invalid = |m: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_archival_approval",
            m,
        )
    };
    let body: ApproveArchival = from_value(json_value(&body)?)
        .map_err(|e| invalid(format!("{}; send {{\"lora_ids\": [\"…\"]}}", e.message)))?;
    if body.lora_ids.len() > MAX_APPROVALS {
        return Err(invalid(format!("at most {MAX_APPROVALS} ids at once")));
    }
    let (mut approved, mut unknown) = (Vec::new(), Vec::new());
    let now = state.now();
    for raw in body.lora_ids {
        match raw.parse::<LoraId>() {
            Ok(id)
                if state
                    .repo()
                    .approve_archival(id, &user.id.to_string(), now)
                    .await? =>
            {
                approved.push(id.to_string());
            }
            _ => unknown.push(raw),
        }
    }
    tracing::info!(admin = %user.id, approved = approved.len(), "archival approved (recorded only)");
    Ok(Json(ArchivalApproved { approved, unknown }))
}

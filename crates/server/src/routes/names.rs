//! `GET /api/v1/lora-names/check?name=…`: the check a person sees while typing a new LoRA's
//! name (the web UI's new-LoRA form and the `<lora-selector>` element). It applies the same rule
//! and the same comparison as `POST /api/v1/lora-models` (`LoraName::parse`, `LoraName::key`), so
//! "valid and not yours" here means the create will not answer `invalid_name` or
//! `duplicate_name` (unless the name is taken in between).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use loraforge_domain::LoraName;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ErrorBody;

/// Raw input beyond this many bytes cannot be a name (255 characters of at most 4 bytes each,
/// with room for what cleaning removes); it is answered without being cleaned.
const MAX_RAW_BYTES: usize = 4096;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NameCheckParams {
    /// The name as typed.
    pub name: String,
}

/// Why a name cannot be used as it is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NameProblem {
    /// `invalid_name`, as `POST /api/v1/lora-models` would answer.
    pub code: String,
    /// The stable reason: `empty`, `too_long`, `control_character`, `bidi_control`,
    /// `invisible_character`.
    pub reason: String,
    pub message: String,
}

/// What creating a LoRA with this name would meet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NameCheckView {
    /// The name as it would be stored (trimmed, NFKC, one space between words); as typed when
    /// it is not valid.
    pub name: String,
    /// The name follows the rules (1–255 characters, no control or invisible characters).
    pub valid: bool,
    /// Present when `valid` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<NameProblem>,
    /// You already have a LoRA of this name (compared ignoring case, width and invisible
    /// characters): creating it would be refused with `duplicate_name`.
    pub yours: bool,
    /// Other users' LoRAs of this name: allowed; the library tells them apart by creator.
    pub others: u64,
}

/// Checks a name for a new LoRA as you type: valid, already yours, used by others.
#[utoipa::path(get, path = "/api/v1/lora-names/check", params(NameCheckParams), tag = "library",
    security(("bearer" = [])),
    responses((status = 200, body = NameCheckView),
        (status = 400, description = "invalid_query (no `name`)", body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn check(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<NameCheckParams>, QueryRejection>,
) -> ApiResult<Json<NameCheckView>> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("{}; send ?name=<the name as typed>", e.body_text()),
        )
    })?;
    let parsed = if q.name.len() > MAX_RAW_BYTES {
        Err(None)
    } else {
        LoraName::parse(&q.name).map_err(Some)
    };
    let view = match parsed {
        Ok(name) => {
            let used = state.repo().name_use(user.id, &name.key()).await?;
            NameCheckView {
                name: name.into_inner(),
                valid: true,
                problem: None,
                yours: used.yours,
                others: used.others,
            }
        }
        Err(e) => NameCheckView {
            problem: Some(match e {
                Some(e) => NameProblem {
                    code: "invalid_name".into(),
                    reason: e.code().into(),
                    message: e.to_string(),
                },
                None => NameProblem {
                    code: "invalid_name".into(),
                    reason: "too_long".into(),
                    message: format!(
                        "a name is at most {} characters",
                        loraforge_domain::name::MAX_NAME_CHARS
                    ),
                },
            }),
            name: q.name.chars().take(300).collect(),
            valid: false,
            yours: false,
            others: 0,
        },
    };
    Ok(Json(view))
}

//! `GET/PUT /api/v1/me/notifications`: whether the caller is e-mailed when one of their LoRAs
//! completes or fails (`creator_mail::mail_creators`). On by default; effective only when the
//! service has an SMTP server and knows the caller's address.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::auth::AuthUser;
use crate::body::{from_value, json_value};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ErrorBody;

/// The caller's notification choices.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationsView {
    /// E-mail me when a LoRA of mine completes or fails.
    pub email_on_finish: bool,
    /// Whether such e-mails can reach you now: the service sends e-mail and knows your address.
    pub email_deliverable: bool,
}

/// Body of `PUT /api/v1/me/notifications`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNotifications {
    pub email_on_finish: bool,
}

async fn view(state: &AppState, user: &AuthUser) -> ApiResult<NotificationsView> {
    let on = state.repo().email_on_finish(user.id).await?;
    let known = match state.repo().user_profile(user.id).await? {
        Some(p) => p.email.is_some() || user.email.is_some(),
        None => user.email.is_some(),
    };
    Ok(NotificationsView {
        email_on_finish: on,
        email_deliverable: on && known && state.settings().finish_mails,
    })
}

/// Your notification choices.
#[utoipa::path(get, path = "/api/v1/me/notifications", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = NotificationsView), (status = 401, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<NotificationsView>> {
    Ok(Json(view(&state, &user).await?))
}

/// Turns the e-mail sent when a LoRA of yours completes or fails on or off.
#[utoipa::path(put, path = "/api/v1/me/notifications", request_body = PutNotifications,
    tag = "account", security(("bearer" = [])),
    responses((status = 200, body = NotificationsView), (status = 400, description = "invalid_json", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "invalid_notifications", body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    user: AuthUser,
    body: Bytes,
) -> ApiResult<Json<NotificationsView>> {
    let body: PutNotifications = from_value(json_value(&body)?).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_notifications",
            format!("{}; send {{\"email_on_finish\": true | false}}", e.message),
        )
    })?;
    state
        .repo()
        .set_email_on_finish(
            user.id,
            user.email.as_deref(),
            body.email_on_finish,
            state.now(),
        )
        .await?;
    Ok(Json(view(&state, &user).await?))
}

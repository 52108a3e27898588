//! `/files/{key}`: serves local-disk blobs to holders of a signed, unexpired link. S3 storage
//! hands out presigned URLs instead, and this route answers 404 there.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use loraforge_storage::SignedQuery;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ErrorBody;

/// The signature of a link (both are required; a link without them is refused with 403).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// When the link expires, in Unix seconds.
    pub expires: Option<i64>,
    /// The link's HMAC signature.
    pub sig: Option<String>,
}

/// Downloads a file through a signed, unexpired link from the API (local storage only; with
/// S3 storage links point at the bucket and this route answers 404).
#[utoipa::path(get, path = "/files/{key}", tag = "files",
    params(("key" = String, Path, description = "the storage key (may contain `/`)"), FileQuery),
    responses((status = 200, description = "the file's bytes, typed by its extension"),
        (status = 400, body = ErrorBody),
        (status = 403, description = "invalid_signature or link_expired", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_file(
    State(state): State<AppState>,
    Path(key): Path<String>,
    q: Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = q.map(|Query(q)| q).unwrap_or(FileQuery {
        expires: None,
        sig: None,
    });
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "invalid_signature",
            "this link is not signed; ask the API for a download URL",
        ));
    };
    let bytes = state
        .store()
        .open_signed(&key, &SignedQuery { expires, sig }, state.now())
        .await?;
    let file_name = key.rsplit('/').next().unwrap_or("file").to_owned();
    let content_type = match file_name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, "private, max-age=300".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `PUT /files/{key}?expires=&sig=`: a worker uploads a trained file through a signed upload
/// link (local storage only; S3 takes presigned PUTs itself). The raw body is the object.
#[utoipa::path(put, path = "/files/{key}", tag = "files",
    params(("key" = String, Path, description = "the storage key (may contain `/`)"), FileQuery),
    request_body(content = String, content_type = "application/octet-stream", description = "the file's bytes"),
    responses((status = 201, description = "stored"),
        (status = 400, body = ErrorBody),
        (status = 403, description = "invalid_signature or link_expired", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, description = "larger than the file upload limit", body = ErrorBody),
        (status = 503, description = "storage unavailable; try again", body = ErrorBody)))]
pub async fn put_file(
    State(state): State<AppState>,
    Path(key): Path<String>,
    q: Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<axum::http::StatusCode> {
    let q = q.map(|Query(q)| q).unwrap_or(FileQuery {
        expires: None,
        sig: None,
    });
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "invalid_signature",
            "this upload link is not signed; ask the API for an upload URL",
        ));
    };
    let body = body.map_err(crate::error::body_error)?;
    // Only trained files: a test of a failed upload means the LoRA's files, not its checkpoints.
    let trained_file = !key.starts_with(loraforge_domain::keys::CHECKPOINTS_PREFIX);
    if trained_file && state.take_upload_fault() {
        tracing::warn!(key, "refusing an upload (debug_fail_uploads)");
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "uploads are refused for testing (debug_fail_uploads); try again",
        ));
    }
    state
        .store()
        .put_signed(&key, &SignedQuery { expires, sig }, body, state.now())
        .await
        .map_err(|e| match e {
            // The storage error speaks of downloads; this link was an upload's.
            loraforge_storage::StorageError::LinkExpired => ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "link_expired",
                "the upload link has expired; a worker gets new links with its next attempt",
            ),
            e => e.into(),
        })?;
    Ok(axum::http::StatusCode::CREATED)
}

//! `/files/{key}`: serves local-disk blobs to holders of a signed, unexpired link. S3 storage
//! hands out presigned URLs instead, and this route answers 404 there.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use loraforge_storage::SignedQuery;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    pub expires: Option<i64>,
    pub sig: Option<String>,
}

pub async fn get_file(
    State(state): State<AppState>,
    Path(key): Path<String>,
    q: Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = q.map(|Query(q)| q).unwrap_or(FileQuery { expires: None, sig: None });
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "invalid_signature",
            "this link is not signed; ask the API for a download URL",
        ));
    };
    let bytes = state.store().open_signed(&key, &SignedQuery { expires, sig }, state.now()).await?;
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
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file_name}\"")),
        ],
        bytes,
    )
        .into_response())
}

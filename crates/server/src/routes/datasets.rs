//! `/api/v1/datasets`: training images uploaded (multipart) or given as URLs, and read back.
//! Both ways in go through [`crate::intake::store_dataset`]: every image is checked before
//! anything is stored; a rejected dataset stores nothing and lists every problem.

use std::collections::HashMap;

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use loraforge_checks::InputImage;
use loraforge_domain::{DatasetId, DatasetImage, TextRule, text};

use crate::auth::AuthUser;
use crate::downloads::{self, UrlImage, download_all};
use crate::error::{ApiError, ApiResult, body_error, invalid_dataset, invalid_text};
use crate::intake::{IntakeImage, StoredDataset, store_dataset};
use crate::quota::check_dataset_quota;
use crate::state::AppState;

const MAX_CAPTION_BYTES: usize = 16 * 1024;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetImageView {
    pub file_name: String,
    /// jpeg, png or webp, from the file's content.
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub caption: Option<String>,
    /// Problems worth knowing that did not block the upload (e.g. near-duplicates).
    pub warnings: Vec<String>,
    /// Signed, expiring link to the image (on GET only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetView {
    pub dataset_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub images: Vec<DatasetImageView>,
    pub warnings: Vec<String>,
}

/// Upload training images: one multipart part per image named `images` (JPEG or PNG, judged by
/// content), plus optional `.txt` caption parts whose file stem matches an image's.
#[utoipa::path(post, path = "/api/v1/datasets", tag = "datasets", security(("bearer" = [])),
    request_body(content_type = "multipart/form-data", description = "parts named `images`; `.txt` parts are captions"),
    responses((status = 201, body = DatasetView), (status = 400, body = crate::views::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::views::ErrorBody),
        (status = 422, description = "invalid_dataset: every failing image with its reason", body = crate::views::ErrorBody),
        (status = 429, description = "dataset_quota_reached: the daily dataset quota, with limit, used and resets_at", body = crate::views::ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<DatasetView>)> {
    // Before a byte of the body is read.
    check_dataset_quota(&state, user.id).await?;
    let mut mp = mp.map_err(|e| {
        ApiError::bad_request(
            "invalid_multipart",
            format!(
                "{}; send multipart/form-data with parts named `images`",
                e.body_text()
            ),
        )
    })?;
    let mut images: Vec<InputImage> = Vec::new();
    let mut captions: HashMap<String, String> = HashMap::new();
    let max_parts = state.settings().max_upload_parts();
    let max_image_bytes =
        usize::try_from(state.settings().dataset_rules.max_bytes).unwrap_or(usize::MAX);
    let mut parts = 0;
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        // Bounded before anything of the part is read: a request of 100,000 tiny parts costs
        // no more than one of a few.
        parts += 1;
        if parts > max_parts {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_parts",
                format!(
                    "the upload has more than {max_parts} parts; send at most {} images and a caption for each",
                    state.settings().dataset_rules.max_images
                ),
            )
            .with("max_parts", max_parts));
        }
        let part = field.name().unwrap_or_default().to_owned();
        let file_name = clean_file_name(field.file_name().unwrap_or(&part))?;
        let is_caption = file_name.to_ascii_lowercase().ends_with(".txt");
        if part != "images" && part != "captions" {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                format!(
                    "unexpected part {part:?}; send images in parts named `images` and captions as `.txt` files"
                ),
            ));
        }
        // Each part is read only up to its own limit, never to the body's.
        let limit = if is_caption {
            MAX_CAPTION_BYTES
        } else {
            max_image_bytes
        };
        let Some(data) = read_part(&mut field, limit).await? else {
            return Err(if is_caption {
                ApiError::bad_request(
                    "invalid_caption",
                    format!("{file_name} is longer than 16 KB; shorten the caption"),
                )
            } else {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "image_too_large",
                    format!(
                        "{file_name} is larger than {}; images must be at most that — export it at a lower quality",
                        loraforge_checks::problem::format_bytes(limit as u64)
                    ),
                )
                .with("file_name", file_name)
                .with("limit_bytes", limit)
            });
        };
        if is_caption {
            let text = String::from_utf8(data).map_err(|_| {
                ApiError::bad_request(
                    "invalid_caption",
                    format!("{file_name} is not UTF-8 text; save it as UTF-8"),
                )
            })?;
            // Editors put a byte order mark at the start of UTF-8 files; it is not text.
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let caption = text::clean(text, &TextRule::CAPTION).map_err(|e| {
                invalid_text("invalid_caption", &e).with("file_name", file_name.clone())
            })?;
            captions.insert(stem(&file_name).to_owned(), caption);
        } else {
            images.push(InputImage {
                file_name,
                bytes: data,
            });
        }
    }
    if let Some(orphan) = captions
        .keys()
        .find(|c| !images.iter().any(|i| stem(&i.file_name) == c.as_str()))
    {
        return Err(ApiError::bad_request(
            "invalid_caption",
            format!(
                "{orphan}.txt has no image with the same name; name captions after their image (photo1.jpg → photo1.txt)"
            ),
        ));
    }

    let images = images
        .into_iter()
        .map(|input| {
            let caption = captions.get(stem(&input.file_name)).cloned();
            IntakeImage { input, caption }
        })
        .collect();
    let stored = store_dataset(&state, user.id, images).await?;
    Ok((StatusCode::CREATED, Json(dataset_view(&stored))))
}

/// Body of `POST /api/v1/datasets/from-urls`: `images` (URLs with optional captions) or `urls`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromUrlsRequest {
    pub images: Option<Vec<UrlImageRequest>>,
    /// Shorthand for `images` without captions.
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlImageRequest {
    /// http(s) URL on a host the server allows (`image_url_allowed_hosts`).
    pub url: String,
    pub caption: Option<String>,
}

/// Create a dataset from image URLs: each is downloaded (allowed hosts only, public addresses
/// only, 3 attempts, size-capped, cached for an hour), then checked and stored exactly like an
/// upload.
#[utoipa::path(post, path = "/api/v1/datasets/from-urls", tag = "datasets", security(("bearer" = [])),
    request_body = FromUrlsRequest,
    responses((status = 201, body = DatasetView), (status = 400, body = crate::views::ErrorBody),
        (status = 403, description = "url_intake_disabled: the server allows no hosts", body = crate::views::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::views::ErrorBody),
        (status = 422, description = "invalid_dataset: every URL that failed to download or failed the checks, with its reason", body = crate::views::ErrorBody),
        (status = 429, description = "dataset_quota_reached: the daily dataset quota, with limit, used and resets_at", body = crate::views::ErrorBody)))]
pub async fn from_urls(
    State(state): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<DatasetView>)> {
    let body = body.map_err(body_error)?;
    let req: FromUrlsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("{e}; send {{\"images\": [{{\"url\": \"https://…\", \"caption\": \"…\"}}]}} or {{\"urls\": [\"https://…\"]}}"))
    })?;
    let images: Vec<UrlImage> = match (req.images, req.urls) {
        (Some(images), None) => images
            .into_iter()
            .map(|i| UrlImage {
                url: i.url,
                caption: i.caption,
            })
            .collect(),
        (None, Some(urls)) => urls
            .into_iter()
            .map(|url| UrlImage { url, caption: None })
            .collect(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "send either `images` or `urls`, not both and not neither",
            ));
        }
    };
    let images = images
        .into_iter()
        .map(|i| {
            Ok(UrlImage {
                caption: clean_caption(i.caption.as_deref(), &i.url)?,
                ..i
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let max = state.settings().dataset_rules.max_images;
    if images.len() > max {
        // Refused before downloading anything: the count alone decides it.
        let msg = format!(
            "at most {max} images are allowed, {} were sent; remove at least {}",
            images.len(),
            images.len() - max
        );
        return Err(invalid_dataset(
            vec![msg.clone()],
            Vec::new(),
            vec![json!({"code": "too_many_images", "message": msg})],
        ));
    }
    let fetcher = downloads::fetcher(&state)?;
    // Before anything is downloaded.
    check_dataset_quota(&state, user.id).await?;
    let images = download_all(&state, fetcher, images).await?;
    let stored = store_dataset(&state, user.id, images).await?;
    Ok((StatusCode::CREATED, Json(dataset_view(&stored))))
}

/// A caption from JSON: at most 16 KB, checked and normalised like every caption
/// (`loraforge_domain::text`); blank is none.
fn clean_caption(caption: Option<&str>, url: &str) -> ApiResult<Option<String>> {
    if caption.is_some_and(|c| c.len() > MAX_CAPTION_BYTES) {
        return Err(ApiError::bad_request(
            "invalid_caption",
            format!("the caption of {url} is longer than 16 KB; shorten it"),
        ));
    }
    text::clean_optional(caption, &TextRule::CAPTION)
        .map_err(|e| invalid_text("invalid_caption", &e).with("url", url))
}

/// What a stored dataset looks like to its owner right after intake.
pub(crate) fn dataset_view(stored: &StoredDataset) -> DatasetView {
    let StoredDataset { dataset, report } = stored;
    let warnings_of = |name: &str| -> Vec<String> {
        report
            .images
            .iter()
            .filter(|r| r.file_name == name)
            .flat_map(|r| r.warnings.iter().map(|w| w.message.clone()))
            .collect()
    };
    DatasetView {
        dataset_id: dataset.id.0,
        created_at: dataset.created_at,
        images: dataset
            .images
            .iter()
            .map(|i| image_view(i, warnings_of(&i.file_name), None))
            .collect(),
        warnings: report.warnings.iter().map(|w| w.message.clone()).collect(),
    }
}

/// One of your datasets, with signed links to its images.
#[utoipa::path(get, path = "/api/v1/datasets/{id}", tag = "datasets", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = DatasetView), (status = 404, body = crate::views::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<DatasetView>> {
    let id: DatasetId = id.parse().map_err(|_| ApiError::not_found("dataset"))?;
    let dataset = match state.repo().get_dataset(id).await? {
        // Someone else's dataset is answered exactly like a missing one.
        Some(d) if d.user_id == user.id => d,
        _ => return Err(ApiError::not_found("dataset")),
    };
    let now = state.now();
    let ttl = state.settings().download_url_ttl;
    let mut images = Vec::with_capacity(dataset.images.len());
    for img in &dataset.images {
        let url = state
            .store()
            .signed_get_url(&img.storage_key, ttl, now)
            .await?;
        images.push(image_view(img, Vec::new(), Some(url.to_string())));
    }
    Ok(Json(DatasetView {
        dataset_id: dataset.id.0,
        created_at: dataset.created_at,
        images,
        warnings: Vec::new(),
    }))
}

fn image_view(i: &DatasetImage, warnings: Vec<String>, url: Option<String>) -> DatasetImageView {
    DatasetImageView {
        file_name: i.file_name.clone(),
        format: i.format.as_str().to_owned(),
        width: i.width,
        height: i.height,
        bytes: i.bytes,
        caption: i.caption.clone(),
        warnings,
        url,
    }
}

/// The part's bytes, read chunk by chunk; `None` as soon as they pass `limit` (the rest is
/// never read).
async fn read_part(
    field: &mut axum::extract::multipart::Field<'_>,
    limit: usize,
) -> ApiResult<Option<Vec<u8>>> {
    let mut data = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if data.len() + chunk.len() > limit {
            return Ok(None);
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Some(data))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the upload is too large; send at most the allowed number of images, each within the size limit",
        );
    }
    if crate::http::is_body_timeout(&e) {
        return crate::error::body_timeout();
    }
    ApiError::bad_request(
        "invalid_multipart",
        format!("could not read the multipart upload: {}", e.body_text()),
    )
}

/// The last path component of a part's file name, checked and normalised like all text
/// (`loraforge_domain::text`: no control, bidirectional or invisible characters, at most 255
/// characters); "unnamed" when blank.
fn clean_file_name(raw: &str) -> ApiResult<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned = text::clean(base, &TextRule::FILE_NAME)
        .map_err(|e| invalid_text("invalid_file_name", &e))?;
    Ok(if cleaned.is_empty() {
        "unnamed".to_owned()
    } else {
        cleaned
    })
}

fn stem(file_name: &str) -> &str {
    file_name.rsplit_once('.').map_or(file_name, |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_paths_and_control_characters() {
        assert_eq!(clean_file_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(
            clean_file_name("C:\\Users\\me\\photo.jpg").unwrap(),
            "photo.jpg"
        );
        assert_eq!(clean_file_name("ｐｈｏｔｏ.png").unwrap(), "photo.png");
        assert_eq!(clean_file_name("").unwrap(), "unnamed");
        for (raw, reason) in [
            ("a\nb.png", "control_character"),
            ("dir/abc\u{202e}gnp.exe", "bidi_control"),
            ("a\u{200b}.png", "invisible_character"),
        ] {
            let e = clean_file_name(raw).unwrap_err();
            assert_eq!(e.code, "invalid_file_name");
            assert_eq!(e.details["reason"], reason, "{raw:?}");
        }
        assert_eq!(stem("photo.1.jpg"), "photo.1");
        assert_eq!(stem("noext"), "noext");
    }
}

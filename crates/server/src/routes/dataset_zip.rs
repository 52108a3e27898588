//! `GET /api/v1/worker/jobs/{id}/dataset.zip?sig=…`: one attempt's training images and captions
//! as one zip, for providers that run the trainer but not our worker (Replicate fetches it by
//! URL and hands it to `cog/train.py`). The worker job (`routes/worker.rs`) carries the link.
//!
//! The link needs no bearer token: its `sig` is a JWT under the service's secret with its own
//! audience (`auth::DATASET_LINK_AUDIENCE`), naming the LoRA, the attempt and the engine, and
//! expiring with the attempt's token. It opens the zip only while that attempt still holds the
//! job, through the blob store (local or S3 alike). The zip is streamed: entries are stored
//! (images are compressed already), each image is read from the store when its turn comes, and
//! the exact length is sent up front, so memory holds about one image at a time.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use loraforge_domain::TrainingStatus;
use loraforge_storage::BlobStore;

use crate::auth::WorkerAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load;
use crate::routes::worker::{TrainingImage, dataset_of, not_active, training_images};
use crate::state::AppState;
use crate::views::ErrorBody;
use crate::zip::{ZipPlan, ZipWriter};

/// Pieces (headers and images) queued between the store and the connection.
const QUEUED_PIECES: usize = 2;

/// The link's signature.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DatasetZipQuery {
    /// The link's signature, as the worker job hands it out.
    pub sig: Option<String>,
}

/// The dataset zip link for `auth`'s attempt, when the server knows its public URL.
pub(crate) fn link(state: &AppState, auth: &WorkerAuth) -> ApiResult<Option<String>> {
    let Some(base) = &state.settings().worker.public_url else {
        return Ok(None);
    };
    let sig = state
        .jwt()
        .sign_dataset_link(auth)
        .map_err(|e| ApiError::internal("signing a dataset link", &e))?;
    // Appended to the base's path (a public URL may carry a prefix, with or without a slash).
    let mut url = url::Url::parse(&format!(
        "{}/api/v1/worker/jobs/{}/dataset.zip",
        base.as_str().trim_end_matches('/'),
        auth.lora_id
    ))
    .map_err(|e| ApiError::internal("the dataset link", &e))?;
    url.query_pairs_mut().append_pair("sig", &sig);
    Ok(Some(url.to_string()))
}

/// Downloads the job's images (`NN.ext`) and captions (`NN.txt`, with the trigger word) as one
/// zip, through the signed link in the worker job; only while the attempt holds the job.
#[utoipa::path(get, path = "/api/v1/worker/jobs/{id}/dataset.zip", tag = "worker",
    params(("id" = uuid::Uuid, Path, description = "the LoRA (job) id"), DatasetZipQuery),
    responses((status = 200, description = "the zip (stored entries, exact Content-Length)", content_type = "application/zip"),
        (status = 400, body = ErrorBody),
        (status = 403, description = "invalid_signature (no, a bad or another job's signature) or link_expired", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "job_not_active (the attempt no longer holds the job) or dataset_gone", body = ErrorBody)))]
pub async fn dataset_zip(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DatasetZipQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let sig = q.ok().and_then(|Query(q)| q.sig).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "this dataset link is not signed; take the link from the worker job",
        )
    })?;
    let auth = state.jwt().verify_dataset_link(&sig, state.now())?;
    if id.parse().ok() != Some(auth.lora_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "this dataset link was signed for another job",
        ));
    }
    let lora = load(&state, &id).await?;
    if lora.status != TrainingStatus::Training {
        return Err(not_active(&lora, "it is not training"));
    }
    let claim = state.repo().job_claim(lora.id).await?;
    let holds = claim.is_some_and(|c| {
        c.worker.as_deref() == Some(auth.worker_id.as_str()) && c.attempt == auth.attempt
    });
    if !holds {
        return Err(not_active(&lora, "another attempt holds it"));
    }
    let dataset = dataset_of(&state, &lora).await?;
    let images = training_images(&lora, &dataset);
    // The stored sizes, not the recorded ones: the announced length must be exact.
    let mut entries = Vec::with_capacity(images.len() * 2);
    for img in &images {
        let meta = state.store().head(&img.storage_key).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "dataset_gone",
                format!(
                    "image {} of the LoRA's dataset is no longer stored",
                    img.file_name
                ),
            )
        })?;
        entries.push((img.file_name.clone(), meta.size));
        entries.push((img.caption_name.clone(), img.caption.len() as u64));
    }
    let plan = ZipPlan::new(entries).map_err(|e| ApiError::internal("the dataset zip", &e))?;
    let len = plan.len();
    let (tx, rx) = mpsc::channel(QUEUED_PIECES);
    tokio::spawn(write_zip(state.store_handle(), images, plan.writer(), tx));
    tracing::info!(lora = %lora.id, attempt = auth.attempt, bytes = len, "serving the dataset zip");
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"dataset-{}.zip\"", lora.id),
            ),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

type Piece = Result<Bytes, std::io::Error>;

/// Sends the archive's pieces in order; a failure mid-way ends the body with an error (the
/// client sees a short, broken download, never a wrong one). Stops when the client goes.
async fn write_zip(
    store: std::sync::Arc<dyn BlobStore>,
    images: Vec<TrainingImage>,
    mut zip: ZipWriter,
    tx: mpsc::Sender<Piece>,
) {
    let fail = |what: String| {
        tracing::warn!("the dataset zip broke off: {what}");
        Err(std::io::Error::other(what))
    };
    for img in images {
        let data = match store.get(&img.storage_key).await {
            Ok(d) => d,
            Err(e) => {
                let _ = tx
                    .send(fail(format!("reading {}: {e}", img.file_name)))
                    .await;
                return;
            }
        };
        for data in [data, Bytes::from(img.caption.into_bytes())] {
            match zip.entry(data) {
                Ok(pieces) => {
                    for piece in pieces {
                        if tx.send(Ok(piece)).await.is_err() {
                            return; // the client went away
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(fail(e.to_string())).await;
                    return;
                }
            }
        }
    }
    let end = zip.finish().or_else(|e| fail(e.to_string()));
    let _ = tx.send(end).await;
}

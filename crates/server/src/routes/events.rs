//! `GET /api/v1/lora-models/{id}/events`: Server-Sent Events on every change of one LoRA.
//!
//! The stream replays the LoRA's event log after `Last-Event-ID` (header, or `last_event_id` in
//! the query for EventSource polyfills), then waits for more: woken at once by changes made in
//! this process, and polling the log every `events_poll_interval` (2 s) for changes made by
//! other replicas. It ends after the event that puts the LoRA in a final status.
//!
//! Visibility is checked at every read of the log, not only when the stream opens: once an
//! admin hides the LoRA (woken at once by the hide on this process, within the poll interval on
//! others), a stream opened by anyone but its owner or an admin gets one last `unavailable`
//! event and ends, as the LoRA's pages now answer them 404. The owner's and admins' streams go
//! on.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use loraforge_db::LoraEvent;
use loraforge_domain::{LoraId, TrainingStatus, UserId};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load_visible;
use crate::state::AppState;

const BATCH: u32 = 100;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub last_event_id: Option<i64>,
}

/// One SSE `data:` payload.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: i64,
    pub lora_id: uuid::Uuid,
    /// created, status, progress or updated.
    pub kind: String,
    #[schema(value_type = String)]
    pub training_status: TrainingStatus,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The `data:` of the last event (`event: unavailable`) of a stream whose LoRA its viewer may no
/// longer see (an admin hid it). It has no `id:`: resuming after it is a 404.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnavailableView {
    pub lora_id: uuid::Uuid,
    /// Always `not_found`: to its viewer, the LoRA is gone as if deleted.
    pub code: String,
    pub message: String,
}

/// The `event:` name of [`UnavailableView`].
pub const UNAVAILABLE_EVENT: &str = "unavailable";

impl From<&LoraEvent> for EventView {
    fn from(e: &LoraEvent) -> Self {
        Self {
            id: e.id,
            lora_id: e.lora_id.0,
            kind: e.kind.clone(),
            training_status: e.status,
            data: e.data.clone(),
            at: e.at,
        }
    }
}

/// Live changes of one LoRA as Server-Sent Events (`event:` is the kind, `id:` the event id).
#[utoipa::path(get, path = "/api/v1/lora-models/{id}/events", tag = "library", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path), ("Last-Event-ID" = Option<i64>, Header, description = "resume after this event"),
        ("last_event_id" = Option<i64>, Query, description = "the same, for EventSource polyfills that cannot send headers")),
    responses((status = 200, description = "text/event-stream of EventView payloads; a viewer who is neither the owner nor an admin gets a last `unavailable` event (UnavailableView) when the LoRA is hidden, then the stream ends", content_type = "text/event-stream"),
        (status = 400, description = "invalid_query or an invalid Last-Event-ID", body = crate::views::ErrorBody),
        (status = 404, body = crate::views::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let lora = load_visible(&state, &id, &user).await?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_request",
                    "Last-Event-ID must be the integer id of an event",
                )
            })?,
        None => q.last_event_id.unwrap_or(0),
    };
    let watch = Watch {
        state: state.clone(),
        id: lora.id,
        viewer: user.id,
        is_admin: user.is_admin,
        cursor: after,
        rx: state.subscribe_changes(),
        buf: VecDeque::new(),
    };
    let stream = futures::stream::unfold(Some(watch), |w| async move {
        let mut w = w?;
        let ev = match w.next().await? {
            Next::Event(ev) => ev,
            Next::Unavailable => return Some((Ok(unavailable(w.id)), None)),
        };
        let ends = ev.kind == "status" && ev.status.is_final() && w.buf.is_empty();
        let sse = Event::default()
            .id(ev.id.to_string())
            .event(ev.kind.clone())
            .json_data(EventView::from(&ev))
            .unwrap_or_else(|_| Event::default().comment("unserializable event"));
        Some((Ok(sse), if ends { None } else { Some(w) }))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The last event of a stream whose LoRA was hidden from its viewer.
fn unavailable(id: LoraId) -> Event {
    let view = UnavailableView {
        lora_id: id.0,
        code: "not_found".to_owned(),
        message: "this LoRA is no longer available".to_owned(),
    };
    Event::default()
        .event(UNAVAILABLE_EVENT)
        .json_data(view)
        .unwrap_or_else(|_| Event::default().event(UNAVAILABLE_EVENT))
}

/// What [`Watch::next`] found.
enum Next {
    Event(LoraEvent),
    /// The viewer may no longer see the LoRA: say so and end.
    Unavailable,
}

struct Watch {
    state: AppState,
    id: LoraId,
    /// Who opened the stream: whether they may still see the LoRA is checked at every read.
    viewer: UserId,
    is_admin: bool,
    cursor: i64,
    rx: broadcast::Receiver<LoraId>,
    buf: VecDeque<LoraEvent>,
}

impl Watch {
    /// The next event, waiting for one if needed; None ends the stream.
    async fn next(&mut self) -> Option<Next> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Some(Next::Event(ev));
            }
            // Status first, events second: a status change and its event commit together, so
            // if the LoRA was already final here, its final event is in the read below.
            let was_final = match self.state.repo().get_lora(self.id).await {
                Ok(Some(l)) if !l.visible_to(self.viewer, self.is_admin) => {
                    return Some(Next::Unavailable);
                }
                Ok(Some(l)) => l.status.is_final(),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(lora_id = %self.id, error = %e, "event stream ended: could not read the LoRA");
                    return None;
                }
            };
            match self
                .state
                .repo()
                .events_after(self.id, self.cursor, BATCH)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    self.cursor = events.last().map_or(self.cursor, |e| e.id);
                    self.buf.extend(events);
                    continue;
                }
                Ok(_) if was_final => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(lora_id = %self.id, error = %e, "event stream ended: could not read events");
                    return None;
                }
            }
            self.wait_for_change().await;
        }
    }

    async fn wait_for_change(&mut self) {
        // The poll interval: changes from other replicas.
        let deadline = Instant::now() + self.state.settings().events_poll_interval;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return,                                // poll interval passed
                Ok(Ok(changed)) if changed == self.id => return, // our LoRA changed here
                Ok(Ok(_)) => {}                                  // someone else's
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    }
}

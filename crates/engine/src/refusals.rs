//! When no backend may train at all (every one refused by a gate — the trainer's environment is
//! missing, a budget is spent — or by its open circuit breaker, or full while the others refuse),
//! queued LoRAs wait where they are, unclaimed, and say why in their status message, instead of
//! being launched into a certain failure.

use chrono::{DateTime, Duration, Utc};

use loraforge_db::LoraQuery;
use loraforge_domain::TrainingStatus;

use crate::TickReport;
use crate::engine::Engine;

/// How often the queued LoRAs are told again while the refusal stays the same (new LoRAs get the
/// message within this time).
const REEXPLAIN_EVERY: Duration = Duration::seconds(15);

/// Queued LoRAs told per round (the oldest first are told first at the next round).
const BATCH: u32 = 200;

/// The status message of a LoRA that waits because no backend may train.
pub(crate) fn waiting_message(why: &str) -> String {
    format!("waiting in the queue: no backend can train right now ({why})")
}

impl Engine {
    /// Sets the status message of queued LoRAs when no backend may take a run and some refuses
    /// (`Router::wait_reason`; `room`: what dispatch left), once per change of reason and every
    /// [`REEXPLAIN_EVERY`].
    pub(crate) async fn explain_refusals(
        &self,
        room: &[usize],
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) {
        let Some(why) = self.router.wait_reason(room, now) else {
            *self.explained.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        };
        {
            let explained = self.explained.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((last, at)) = explained.as_ref()
                && *last == why
                && now < *at + REEXPLAIN_EVERY
            {
                return;
            }
        }
        let message = waiting_message(&why);
        let queued = match self
            .repo
            .list_loras(&LoraQuery {
                status: Some(TrainingStatus::Queued),
                limit: BATCH,
                // A hidden LoRA still trains; its owner sees why it waits.
                include_hidden: true,
                ..LoraQuery::default()
            })
            .await
        {
            Ok(page) => page.items,
            Err(e) => {
                report
                    .errors
                    .push(format!("listing queued LoRAs to explain the wait: {e}"));
                return;
            }
        };
        for lora in &queued {
            if let Err(e) = self
                .repo
                .set_status_message(lora.id, Some(&message), now)
                .await
            {
                report
                    .errors
                    .push(format!("status message of LoRA {}: {e}", lora.id));
            }
        }
        if !queued.is_empty() {
            tracing::warn!(reason = %why, waiting = queued.len(), "no backend can train: queued LoRAs wait");
        }
        *self.explained.lock().unwrap_or_else(|e| e.into_inner()) = Some((why, now));
    }
}

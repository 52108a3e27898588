//! Creators' e-mails when their LoRA becomes `completed` or `failed` (issue 11 item 6): the
//! owner's choice (`users.email_on_finish`, on unless turned off) and a row per LoRA handled
//! (`lora_finish_mails`), so each LoRA is mailed at most once after its row is written; the
//! mailer writes the row right after sending (a crash in between mails once more, never more).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, UserId};

use crate::Result;

/// A finished LoRA no e-mail has been handled for yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedLora {
    pub lora_id: LoraId,
    pub name: String,
    /// `completed` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// The owner's address, if known.
    pub email: Option<String>,
    /// The owner's choice (default on).
    pub email_on_finish: bool,
}

#[async_trait]
pub trait FinishMailStore: Send + Sync {
    /// Whether `user` wants an e-mail when a LoRA finishes (default on).
    async fn email_on_finish(&self, user: UserId) -> Result<bool>;

    /// Sets the user's choice, creating the user's record (with `email`, when given) if needed.
    async fn set_email_on_finish(
        &self,
        user: UserId,
        email: Option<&str>,
        on: bool,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// LoRAs `completed` or `failed` whose last change is at or after `since` with no mail row,
    /// oldest change first, at most `limit`.
    async fn finished_unmailed(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<FinishedLora>>;

    /// Records what was done for a LoRA (`sent`, `opted_out`, `no_address`, `failed`); a second
    /// record for the same LoRA is ignored.
    async fn record_finish_mail(
        &self,
        lora: LoraId,
        status: &str,
        outcome: &str,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

pub(crate) fn parse_lora(id: &str) -> Result<LoraId> {
    id.parse()
        .map_err(|_| crate::DbError::Corrupt(format!("a LoRA id {id:?} that is not one")))
}

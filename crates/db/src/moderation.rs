//! Content moderation in the database (migration 0013): reports of LoRAs (`lora_reports`) and the
//! hidden state of a LoRA (`lora_models.hidden_at`, `hidden_reason`, `hidden_by`).
//!
//! Contracts both engines keep (the conformance suite checks them):
//! - one OPEN report per (LoRA, reporter): a second one while the first is open is
//!   [`Filed::AlreadyOpen`], with the open one; once resolved, the same person may report again;
//! - hiding is idempotent: hiding a hidden LoRA keeps the first hide (time, reason, admin), and
//!   every open report of the LoRA is resolved `hidden` by the admin, in the same transaction;
//! - unhiding clears the hidden state only; resolved reports stay resolved;
//! - dismissing resolves one open report `dismissed`; a report resolved already is returned as
//!   it is;
//! - nothing is deleted: not the LoRA, not its reports.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{CreatorRef, Hidden, LoraId, LoraModel, ReportReason, Resolution, UserId};

use crate::{Page, Result};

/// A report to file ([`ModerationStore::file_report`]). `details` is already clean
/// (`domain::moderation::ReportInput`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    pub lora_id: LoraId,
    pub reporter: UserId,
    pub reason: ReportReason,
    pub details: Option<String>,
    pub now: DateTime<Utc>,
}

/// One stored report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: i64,
    pub lora_id: LoraId,
    pub reporter: UserId,
    pub reason: ReportReason,
    pub details: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Set with `resolved_by` and `resolution` once an admin closed it.
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<UserId>,
    pub resolution: Option<Resolution>,
}

impl Report {
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }
}

/// What [`ModerationStore::file_report`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filed {
    /// Stored; `open_reports` is how many open reports the LoRA has now, this one included.
    Created { report: Report, open_reports: u32 },
    /// The reporter already has an open report of this LoRA (nothing stored).
    AlreadyOpen(Report),
}

/// Which reports [`ModerationStore::list_reports`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportState {
    /// Not resolved yet, oldest first (the review queue).
    #[default]
    Open,
    /// Resolved, most recently resolved first.
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportQuery {
    pub state: ReportState,
    pub limit: u32,
    pub offset: u64,
}

/// A report with what an admin needs to judge it: the LoRA's name, creator and hidden state,
/// and how many open reports the LoRA has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub report: Report,
    pub lora_name: String,
    pub creator: CreatorRef,
    pub hidden: Option<Hidden>,
    pub open_reports_of_lora: u32,
}

/// What [`ModerationStore::hide_lora`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct HideOutcome {
    /// The LoRA after the call (hidden; with the first hide's facts when it was hidden already).
    pub lora: LoraModel,
    /// This call hid it (`false`: it was hidden already and kept as it was).
    pub newly_hidden: bool,
    /// Open reports this call resolved `hidden`.
    pub resolved_reports: u32,
}

#[async_trait]
pub trait ModerationStore: Send + Sync {
    /// Files a report of `new.lora_id` unless its reporter has one open already. `NotFound`
    /// when the LoRA does not exist.
    async fn file_report(&self, new: &NewReport) -> Result<Filed>;

    async fn get_report(&self, id: i64) -> Result<Option<Report>>;

    /// Reports in `query.state`, paged, each with its LoRA's facts; `total` counts them all.
    async fn list_reports(&self, query: &ReportQuery) -> Result<Page<ReportRow>>;

    /// Hides LoRA `id` with `reason` (shown to its owner) unless hidden already, and resolves
    /// its open reports `hidden` by `by`, in one transaction. `NotFound` when it does not exist.
    async fn hide_lora(
        &self,
        id: LoraId,
        reason: &str,
        by: UserId,
        now: DateTime<Utc>,
    ) -> Result<HideOutcome>;

    /// Makes LoRA `id` visible again (nothing changes when it is visible). `NotFound` when it
    /// does not exist.
    async fn unhide_lora(&self, id: LoraId) -> Result<LoraModel>;

    /// Resolves open report `id` `dismissed` by `by`; a resolved report is returned unchanged.
    /// `NotFound` when there is no such report.
    async fn dismiss_report(&self, id: i64, by: UserId, now: DateTime<Utc>) -> Result<Report>;
}

/// The columns of one `lora_reports` row, decoded by an engine.
#[derive(Debug)]
pub(crate) struct ReportRecord {
    pub id: i64,
    pub lora_id: uuid::Uuid,
    pub reporter: uuid::Uuid,
    pub reason: String,
    pub details: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<uuid::Uuid>,
    pub resolution: Option<String>,
}

impl ReportRecord {
    pub fn into_report(self) -> Result<Report> {
        let reason = ReportReason::parse(&self.reason).ok_or_else(|| {
            crate::common::corrupt(format!("report {}: reason {:?}", self.id, self.reason))
        })?;
        let resolution = self
            .resolution
            .map(|r| {
                Resolution::parse(&r).ok_or_else(|| {
                    crate::common::corrupt(format!("report {}: resolution {r:?}", self.id))
                })
            })
            .transpose()?;
        Ok(Report {
            id: self.id,
            lora_id: self.lora_id.into(),
            reporter: self.reporter.into(),
            reason,
            details: self.details,
            created_at: self.created_at,
            resolved_at: self.resolved_at,
            resolved_by: self.resolved_by.map(Into::into),
            resolution,
        })
    }
}

/// The columns of `lora_reports r` both engines select, in `ReportRecord`'s order.
pub(crate) const REPORT_COLUMNS: &str = "r.id, r.lora_id, r.reporter_id, r.reason, r.details, r.created_at, \
     r.resolved_at, r.resolved_by, r.resolution";

/// `ORDER BY` of a report listing: the open queue oldest first, resolved ones newest first.
pub(crate) fn report_order(state: ReportState) -> &'static str {
    match state {
        ReportState::Open => " ORDER BY r.id",
        ReportState::Resolved => " ORDER BY r.resolved_at DESC, r.id DESC",
    }
}

pub(crate) fn report_filter(state: ReportState) -> &'static str {
    match state {
        ReportState::Open => " WHERE r.resolved_at IS NULL",
        ReportState::Resolved => " WHERE r.resolved_at IS NOT NULL",
    }
}

/// One page of a report listing, each report with its LoRA's name, creator, hidden state and
/// open-report count; `$1` is the limit, `$2` the offset.
pub(crate) fn list_reports_sql(state: ReportState) -> String {
    format!(
        "SELECT {REPORT_COLUMNS}, m.name AS lora_name, m.user_id, u.email, u.display_name, \
         m.hidden_at, m.hidden_reason, m.hidden_by, \
         (SELECT count(*) FROM lora_reports o WHERE o.lora_id = r.lora_id AND o.resolved_at IS NULL) AS open_reports \
         FROM lora_reports r JOIN lora_models m ON m.id = r.lora_id LEFT JOIN users u ON u.id = m.user_id{}{} \
         LIMIT $1 OFFSET $2",
        report_filter(state),
        report_order(state)
    )
}

/// Every report in `state`.
pub(crate) fn count_reports_sql(state: ReportState) -> String {
    format!(
        "SELECT count(*) FROM lora_reports r{}",
        report_filter(state)
    )
}

// The writes both engines run (they differ only in how ids and times are bound).

/// `$1` the LoRA: how many open reports it has.
pub(crate) const OPEN_REPORTS_OF: &str =
    "SELECT count(*) FROM lora_reports WHERE lora_id = $1 AND resolved_at IS NULL";

/// `$1` now, `$2` the admin, `$3` `Resolution::Hidden`, `$4` the LoRA: its open reports resolved.
pub(crate) const RESOLVE_OPEN_REPORTS: &str = "UPDATE lora_reports \
     SET resolved_at = $1, resolved_by = $2, resolution = $3 \
     WHERE lora_id = $4 AND resolved_at IS NULL";

/// `$1` now, `$2` the admin, `$3` `Resolution::Dismissed`, `$4` the report, if still open.
pub(crate) const DISMISS_REPORT: &str = "UPDATE lora_reports \
     SET resolved_at = $1, resolved_by = $2, resolution = $3 \
     WHERE id = $4 AND resolved_at IS NULL";

/// `$1` the LoRA: visible again.
pub(crate) const UNHIDE_LORA: &str = "UPDATE lora_models \
     SET hidden_at = NULL, hidden_reason = NULL, hidden_by = NULL WHERE id = $1";

//! The Postgres engine: many writers, so every per-user critical section locks that user's
//! `user_training_limits` row (`SELECT … FOR UPDATE`), the queue claims with `FOR UPDATE SKIP
//! LOCKED`, and status changes are compare-and-sets retried on a lost race. Event-log rows are
//! inserted only after the LoRA's row is locked by an `UPDATE` (or created) in the same
//! transaction, so the `bigserial` ids of one LoRA's events commit in order.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use loraforge_domain::{
    DailyWindow, Dataset, DatasetId, DatasetQuota, DatasetUsage, LoraId, LoraModel, LoraSummary,
    MicroUsd, MonthlyWindow, Progress, RunId, StatusEvent, TrainingRun, UserId,
};

use crate::{
    ClaimedJob, ConnectOptions, CreateOutcome, DatasetCutoffs, EventDetail, ExpiredLease, Faults,
    IdempotentLora, JobClaim, LibraryRow, LoraEvent, LoraQuery, MonthlyPolicy, NewLora, NewRun,
    OpenRun, Page, Repository, Result, RunningJob, Settle, StartDue, SweptDatasets, UserProfile,
};

/// `SELECT` of every column `rows::lora_record` decodes; append a `WHERE`.
macro_rules! lora_select {
    () => {
        "SELECT m.id, m.user_id, u.email, u.display_name, m.name, m.description, m.dataset_id, m.params, \
         m.training_status, m.stage, m.progress, m.estimated_remaining, m.error, m.usage_count, \
         m.storage_key, m.file_size, m.validation_image_keys, m.validation_passed, m.validation_scores, m.training_cost_micros, \
         m.status_message, m.created_at, m.updated_at, m.completed_at, \
         m.character_id, m.triggered_by_job_id, m.sha256, m.file_missing_since, \
         m.hidden_at, m.hidden_reason, m.hidden_by \
         FROM lora_models m LEFT JOIN users u ON u.id = m.user_id"
    };
}

/// Rolls back after an error; a failing rollback is only logged (a broken connection is
/// discarded by the pool), so the original error is what the caller sees.
async fn rollback(tx: Transaction<'static, Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "postgres rollback failed");
    }
}

/// Runs `body` inside a transaction and commits when it returns `Ok(Some(_))`; rolls back on
/// `Ok(None)` (nothing to do) and on errors.
macro_rules! in_write_tx {
    ($repo:expr, |$conn:ident| $body:expr) => {{
        let mut tx = $repo.write_tx().await?;
        let result: crate::Result<Option<_>> = {
            let $conn: &mut sqlx::PgConnection = &mut tx;
            $body.await
        };
        match result {
            Ok(Some(v)) => {
                tx.commit().await?;
                Ok(Some(v))
            }
            Ok(None) => {
                crate::postgres::rollback(tx).await;
                Ok(None)
            }
            Err(e) => {
                crate::postgres::rollback(tx).await;
                Err(e)
            }
        }
    }};
}

mod alerts;
mod archival;
mod breakers;
mod credits;
mod datasets;
mod feed;
mod finish_mails;
mod handoff;
mod jobs;
mod ledger;
mod library;
mod metrics;
mod moderation;
mod monitors;
mod names;
mod nudges;
mod retention;
mod rows;
mod runs;
mod samples;
mod usage;
mod users;
mod webhooks;

/// How long to wait for a pooled connection before failing (the error is retryable).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct PgRepository {
    pool: PgPool,
    faults: Faults,
    /// `AlertStore::set_alert_cooldown`, in seconds.
    alert_cooldown_secs: std::sync::atomic::AtomicU64,
}

impl PgRepository {
    /// Connects to `url` (`postgres://…`) and applies `migrations/postgres`.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        library::backfill_name_keys(&pool).await?;
        Ok(Self {
            pool,
            faults: Faults::default(),
            alert_cooldown_secs: std::sync::atomic::AtomicU64::new(
                crate::alerts::DEFAULT_ALERT_COOLDOWN.as_secs(),
            ),
        })
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

#[async_trait]
impl Repository for PgRepository {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn insert_dataset(&self, dataset: &Dataset) -> Result<()> {
        datasets::insert_dataset(self, dataset, None).await
    }

    async fn insert_dataset_within(&self, dataset: &Dataset, quota: DatasetQuota) -> Result<()> {
        datasets::insert_dataset(self, dataset, Some(quota)).await
    }

    async fn get_dataset(&self, id: DatasetId) -> Result<Option<Dataset>> {
        datasets::get_dataset(&self.pool, id).await
    }

    async fn dataset_usage(&self, user: UserId, window: DailyWindow) -> Result<DatasetUsage> {
        datasets::dataset_usage(&self.pool, user, window).await
    }

    async fn claim_blobs(&self, keys: &[String], now: DateTime<Utc>) -> Result<()> {
        retention::claim_blobs(self, keys, now).await
    }

    async fn sweep_datasets(
        &self,
        cutoffs: DatasetCutoffs,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<SweptDatasets> {
        retention::sweep_datasets(self, cutoffs, limit, now).await
    }

    async fn orphan_blobs(
        &self,
        claimed_before: DateTime<Utc>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        retention::orphan_blobs(self, claimed_before, limit, now).await
    }

    async fn forget_blobs(&self, keys: &[String]) -> Result<()> {
        retention::forget_blobs(self, keys).await
    }

    async fn user_profile(&self, user: UserId) -> Result<Option<UserProfile>> {
        users::user_profile(&self.pool, user).await
    }

    async fn set_display_name(
        &self,
        user: UserId,
        email: Option<&str>,
        display_name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UserProfile> {
        users::set_display_name(self, user, email, display_name, now).await
    }

    async fn idempotent_lora(&self, user: UserId, key: &str) -> Result<Option<IdempotentLora>> {
        users::idempotent_lora(&self.pool, user, key).await
    }

    async fn create_lora(&self, new: NewLora, policy: MonthlyPolicy) -> Result<CreateOutcome> {
        library::create_lora(self, new, policy).await
    }

    async fn get_lora(&self, id: LoraId) -> Result<Option<LoraModel>> {
        let mut conn = self.pool.acquire().await?;
        rows::fetch_lora(&mut conn, id.as_uuid()).await
    }

    async fn list_loras(&self, query: &LoraQuery) -> Result<Page<LoraSummary>> {
        library::list_loras(&self.pool, query).await
    }

    async fn count_monthly(&self, user: UserId, window: MonthlyWindow) -> Result<u32> {
        let mut conn = self.pool.acquire().await?;
        library::count_monthly(&mut conn, user.as_uuid(), window).await
    }

    async fn update_description(
        &self,
        id: LoraId,
        description: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<LoraModel> {
        library::update_description(self, id, description, now).await
    }

    async fn apply_event(
        &self,
        id: LoraId,
        event: StatusEvent,
        detail: EventDetail,
        now: DateTime<Utc>,
    ) -> Result<LoraModel> {
        jobs::apply_event(self, id, event, detail, now).await
    }

    async fn record_progress(
        &self,
        id: LoraId,
        progress: &Progress,
        now: DateTime<Utc>,
    ) -> Result<()> {
        jobs::record_progress(self, id, progress, now).await
    }

    async fn events_after(&self, id: LoraId, after: i64, limit: u32) -> Result<Vec<LoraEvent>> {
        jobs::events_after(&self.pool, id, after, limit).await
    }

    async fn claim_next_job(
        &self,
        worker: &str,
        max_active_per_user: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<ClaimedJob>> {
        jobs::claim_next_job(self, worker, max_active_per_user, lease_until, now).await
    }

    async fn heartbeat(
        &self,
        id: LoraId,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        jobs::heartbeat(&self.pool, id, worker, lease_until, now).await
    }

    async fn expired_leases(&self, now: DateTime<Utc>) -> Result<Vec<ExpiredLease>> {
        jobs::expired_leases(&self.pool, now).await
    }

    async fn jobs_running_longer_than(&self, cutoff: DateTime<Utc>) -> Result<Vec<RunningJob>> {
        jobs::jobs_running_longer_than(&self.pool, cutoff).await
    }

    async fn open_runs(&self) -> Result<Vec<OpenRun>> {
        runs::open_runs(&self.pool).await
    }

    async fn job_claim(&self, id: LoraId) -> Result<Option<JobClaim>> {
        jobs::job_claim(&self.pool, id).await
    }

    async fn record_checkpoint(
        &self,
        id: LoraId,
        worker: &str,
        attempt: u32,
        key: &str,
        step: u64,
    ) -> Result<bool> {
        jobs::record_checkpoint(&self.pool, id, worker, attempt, key, step).await
    }

    async fn insert_run(&self, run: &NewRun) -> Result<TrainingRun> {
        runs::insert_run(self, run).await
    }

    async fn get_run(&self, id: RunId) -> Result<Option<TrainingRun>> {
        runs::get_run(&self.pool, id).await
    }

    async fn runs_of(&self, lora: LoraId) -> Result<Vec<TrainingRun>> {
        runs::runs_of(&self.pool, lora).await
    }

    async fn record_run_outcome(
        &self,
        id: RunId,
        code: &str,
        reason: Option<&str>,
        result: Option<&serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        runs::record_run_outcome(self, id, code, reason, result, now).await
    }

    async fn settle_run(
        &self,
        id: RunId,
        settle: Settle,
        now: DateTime<Utc>,
    ) -> Result<Option<LoraModel>> {
        runs::settle_run(self, id, settle, now).await
    }

    async fn record_instance_gone(
        &self,
        id: RunId,
        cost: MicroUsd,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        runs::record_instance_gone(self, id, cost, now).await
    }

    async fn record_terminate_failure(
        &self,
        id: RunId,
        error: &str,
        next_at: DateTime<Utc>,
    ) -> Result<u32> {
        runs::record_terminate_failure(&self.pool, id, error, next_at).await
    }

    async fn unclaim(
        &self,
        id: LoraId,
        worker: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        runs::unclaim(self, id, worker, message, now).await
    }

    async fn record_alert(
        &self,
        kind: &str,
        subject: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        alerts::record_alert(self, kind, subject, message, now).await
    }

    async fn alerts(&self, limit: u32) -> Result<Vec<crate::Alert>> {
        runs::alerts(&self.pool, limit).await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        runs::try_lease(self, name, holder, until, now).await
    }

    async fn set_status_message(
        &self,
        id: LoraId,
        message: Option<&str>,
        _now: DateTime<Utc>,
    ) -> Result<()> {
        runs::set_status_message(&self.pool, id, message).await
    }

    async fn pending_ids(&self, limit: u32) -> Result<Vec<LoraId>> {
        jobs::pending_ids(&self.pool, limit).await
    }

    async fn record_start_failure(
        &self,
        id: LoraId,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<u32> {
        jobs::record_start_failure(&self.pool, id, error, next_attempt_at).await
    }

    async fn starts_due(&self, worker: &str, now: DateTime<Utc>) -> Result<Vec<StartDue>> {
        jobs::starts_due(&self.pool, worker, now).await
    }

    async fn step_breaker(
        &self,
        backend: &str,
        event: &loraforge_domain::breaker::BreakerEvent,
        rules: &loraforge_domain::breaker::BreakerRules,
        now: DateTime<Utc>,
    ) -> Result<crate::BreakerStep> {
        breakers::step_breaker(self, backend, event, rules, now).await
    }

    async fn breakers(
        &self,
        rules: &loraforge_domain::breaker::BreakerRules,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::BreakerStatus>> {
        breakers::breakers(&self.pool, rules, now).await
    }

    async fn breaker_transitions(
        &self,
        backend: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::BreakerTransition>> {
        breakers::breaker_transitions(&self.pool, backend, limit).await
    }

    async fn bulk_insert_library(&self, rows: Vec<LibraryRow>) -> Result<u64> {
        datasets::bulk_insert_library(self, rows).await
    }
}

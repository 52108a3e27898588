//! The SQLite engine: one file, WAL, and a single writer at a time. Every write transaction
//! starts with `BEGIN IMMEDIATE`, so it holds the database's write lock from its first statement:
//! that lock is the per-user critical section of `create_lora` and `claim_next_job`, and a
//! deferred transaction can never fail half-way with `SQLITE_BUSY` when it upgrades to a writer.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

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

/// The database holds users' e-mails: the file is created (or tightened to) 0600 before SQLite
/// opens it, and SQLite gives its `-wal` and `-shm` files the database file's mode. Those two are
/// tightened too when an older version left them readable.
fn make_private(file: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| {
            crate::DbError::Sqlx(sqlx::Error::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", file.display()),
            )))
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(file)
            .map_err(io)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let path = std::path::PathBuf::from(name);
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Rolls back after an error; a failing rollback is only logged (the connection is discarded
/// by the pool if it is broken), so the original error is what the caller sees.
async fn rollback(tx: WriteTx) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "sqlite rollback failed");
    }
}

/// Runs `body` inside a write transaction and commits when it returns `Ok(Some(_))`; rolls back on
/// `Ok(None)` (nothing to do) and on errors.
macro_rules! in_write_tx {
    ($repo:expr, |$conn:ident| $body:expr) => {{
        let mut tx = $repo.write_tx().await?;
        let result: crate::Result<Option<_>> = {
            let $conn: &mut sqlx::SqliteConnection = &mut tx;
            $body.await
        };
        match result {
            Ok(Some(v)) => {
                tx.commit().await?;
                Ok(Some(v))
            }
            Ok(None) => {
                crate::sqlite::rollback(tx).await;
                Ok(None)
            }
            Err(e) => {
                crate::sqlite::rollback(tx).await;
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

/// Address space each connection may map of the database file.
const MMAP_BYTES: u64 = 1 << 30;
/// Page cache per connection, KiB.
const CACHE_KIB: i64 = 16 * 1024;

/// How long a connection waits for the write lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// A write transaction (`BEGIN IMMEDIATE`) with this process's turn to write
/// ([`SqliteRepository::write_tx`]). Derefs to the connection; `commit` or `rollback` ends it.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    async fn rollback(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

#[derive(Debug)]
pub struct SqliteRepository {
    pool: SqlitePool,
    /// This process's writers take turns here before `BEGIN IMMEDIATE`: waiting on SQLite's lock
    /// instead means its busy handler's sleeps (1, 2, 5 … 100 ms), which under concurrent writes
    /// gave the hand-off a p99 of over a second (docs/performance.md). Other processes on the
    /// same file (CLI commands) still meet the busy timeout.
    writers: std::sync::Arc<tokio::sync::Mutex<()>>,
    faults: Faults,
    /// `AlertStore::set_alert_cooldown`, in seconds.
    alert_cooldown_secs: std::sync::atomic::AtomicU64,
}

impl SqliteRepository {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, `sqlite::memory:`)
    /// and applies `migrations/sqlite`.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        let file = options.get_filename().to_owned();
        if !file.as_os_str().is_empty() && !url.contains(":memory:") && !url.contains("mode=memory")
        {
            make_private(&file)?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Reads of a large library go through the OS page cache without a syscall per page,
            // and each connection keeps more pages of its own (the default is 2 MB).
            .pragma("mmap_size", MMAP_BYTES.to_string())
            .pragma("cache_size", (-CACHE_KIB).to_string());
        // Every connection to an in-memory database is a database of its own: keep exactly one.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut pool = SqlitePoolOptions::new().max_connections(if in_memory {
            1
        } else {
            opts.max_connections.max(1)
        });
        if in_memory {
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        library::backfill_name_keys(&pool).await?;
        Ok(Self {
            pool,
            writers: std::sync::Arc::default(),
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

    /// A transaction holding the write lock from the start.
    async fn write_tx(&self) -> Result<WriteTx> {
        let turn = self.writers.clone().lock_owned().await;
        Ok(WriteTx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
        })
    }
}

#[async_trait]
impl Repository for SqliteRepository {
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
        rows::fetch_lora(&mut conn, &id.to_string()).await
    }

    async fn list_loras(&self, query: &LoraQuery) -> Result<Page<LoraSummary>> {
        library::list_loras(&self.pool, query).await
    }

    async fn count_monthly(&self, user: UserId, window: MonthlyWindow) -> Result<u32> {
        let mut conn = self.pool.acquire().await?;
        library::count_monthly(&mut conn, &user.to_string(), window).await
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

#[cfg(all(test, unix))]
mod file_mode_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_database_and_its_wal_and_shm_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("loraforge.db");
        let url = format!("sqlite://{}", db.display());
        let repo = SqliteRepository::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        repo.ping().await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.path().join(format!("loraforge.db{suffix}"));
            assert!(
                path.exists(),
                "{} (WAL mode keeps it while open)",
                path.display()
            );
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        repo.close().await;

        // A database an older version left world-readable is tightened when opened.
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.path().join(format!("loraforge.db{suffix}"));
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let repo = SqliteRepository::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        repo.ping().await.unwrap();
        assert_eq!(mode(&db), 0o600);
        for suffix in ["-wal", "-shm"] {
            let path = dir.path().join(format!("loraforge.db{suffix}"));
            if path.exists() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }
}

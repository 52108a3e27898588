//! [`LibraryFeed`] on Postgres (migration 0023): a row's rev is the id of the transaction that
//! last changed it, and transactions commit out of id order, so the next round starts at the
//! oldest transaction still running when this round began (`pg_snapshot_xmin`): anything it or
//! a later one writes is read again then.

use async_trait::async_trait;

use super::PgRepository;
use super::rows::summary_record;
use crate::Result;
use crate::common::to_u64;
use crate::feed::{FeedCursor, FeedPage, LibraryFeed, decode_rows, feed_page, start_after};

const CHANGES: &str = "SELECT m.rev::text::bigint AS rev, m.id, m.user_id, m.name, m.description, \
     m.training_status, m.usage_count, m.created_at, m.character_id, m.triggered_by_job_id, \
     m.hidden_at, m.hidden_reason, m.hidden_by, u.email, u.display_name \
     FROM lora_models m LEFT JOIN users u ON u.id = m.user_id \
     WHERE (m.rev, m.id) > ($1::text::xid8, $2) ORDER BY m.rev, m.id LIMIT $3";

#[async_trait]
impl LibraryFeed for PgRepository {
    async fn library_changes(&self, cursor: &FeedCursor, limit: u32) -> Result<FeedPage> {
        let limit = limit.max(1);
        // Repeatable read: the horizon and the rows come from the transaction's one snapshot.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *tx)
                .await?;
        let (after_rev, after_id) = start_after(cursor);
        let rows = sqlx::query(CHANGES)
            .bind(after_rev.to_string())
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let rows = decode_rows(&rows, summary_record)?;
        Ok(feed_page(cursor, limit, rows, to_u64(horizon, "xmin")?))
    }
}

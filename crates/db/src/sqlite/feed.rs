//! [`LibraryFeed`] on SQLite (migration 0023): one writer at a time, so revs are handed out in
//! commit order and the next round starts after the highest rev this page's snapshot holds.

use async_trait::async_trait;

use super::SqliteRepository;
use super::rows::summary_record;
use crate::Result;
use crate::common::to_u64;
use crate::feed::{FeedCursor, FeedPage, LibraryFeed, decode_rows, feed_page, start_after};

const CHANGES: &str = "SELECT m.rev, m.id, m.user_id, u.email, u.display_name, m.name, m.description, \
     m.training_status, m.usage_count, m.created_at, m.character_id, m.triggered_by_job_id, \
     m.hidden_at, m.hidden_reason, m.hidden_by \
     FROM lora_models m LEFT JOIN users u ON u.id = m.user_id \
     WHERE (m.rev, m.id) > ($1, $2) ORDER BY m.rev, m.id LIMIT $3";

#[async_trait]
impl LibraryFeed for SqliteRepository {
    async fn library_changes(&self, cursor: &FeedCursor, limit: u32) -> Result<FeedPage> {
        let limit = limit.max(1);
        // One read transaction: the horizon and the rows come from the same snapshot.
        let mut tx = self.pool.begin().await?;
        let top: i64 = sqlx::query_scalar("SELECT coalesce(max(rev), 0) FROM lora_models")
            .fetch_one(&mut *tx)
            .await?;
        let (after_rev, after_id) = start_after(cursor);
        let rows = sqlx::query(CHANGES)
            .bind(i64::try_from(after_rev).unwrap_or(i64::MAX))
            .bind(after_id.hyphenated().to_string())
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let rows = decode_rows(&rows, summary_record)?;
        Ok(feed_page(cursor, limit, rows, to_u64(top, "rev")? + 1))
    }
}

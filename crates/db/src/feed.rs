//! The library's change feed (migration 0023): what changed in the library since a reader's last
//! read, so that every replica can keep the public library in memory (the server's library
//! index) and answer searches without a database query each.
//!
//! Every LoRA row carries `rev`, bumped by the database itself (triggers) whenever anything a
//! library row shows changes: its name, description, status, uses, creator, hand-off fields or
//! hiding. A reader reads in rounds. A round returns, page by page in (rev, id) order, every row
//! whose rev is at least the round's `since`; where the next round starts (`next_since`) is fixed
//! by the round's first page: the oldest write that could still have been in flight then
//! (SQLite: the highest rev committed, plus one; Postgres: `pg_snapshot_xmin`, because
//! transactions commit out of id order). A row may be returned twice; it is never missed.
//! LoRAs are never deleted, so the feed has no deletions.

use async_trait::async_trait;

use loraforge_domain::{LoraId, LoraSummary};

use crate::Result;
use crate::common::{SummaryRecord, to_u64};

/// Where a reader of [`LibraryFeed`] stands. `FeedCursor::default()` reads the whole library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCursor {
    /// This round returns the rows whose rev is at least this.
    pub since: u64,
    /// The last row of the round's previous page, `None` at the start of a round.
    pub after: Option<(u64, LoraId)>,
    /// Where the next round starts, fixed by this round's first page.
    pub next_since: u64,
}

/// One page of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// Every row changed, in its current state (hidden ones included, with `hidden` set).
    pub rows: Vec<LoraSummary>,
    /// Where to read next.
    pub cursor: FeedCursor,
    /// The round ended with this page: the reader has every change made before the round
    /// started.
    pub caught_up: bool,
}

#[async_trait]
pub trait LibraryFeed: Send + Sync {
    /// At most `limit` (≥ 1) rows changed since `cursor`, and where to read next.
    async fn library_changes(&self, cursor: &FeedCursor, limit: u32) -> Result<FeedPage>;
}

/// The (rev, id) a page starts after, exclusive: the previous page's last row, or, at a round's
/// start, just below every row whose rev is at least `since` (no row has the nil or the max
/// id). One bound, so that the (rev, id) index's range starts there (with a second bound on rev
/// alone, Postgres started its scan at the other and read the whole index: 18 ms for no row).
pub(crate) fn start_after(cursor: &FeedCursor) -> (u64, uuid::Uuid) {
    match cursor.after {
        Some((rev, id)) => (rev, id.as_uuid()),
        None if cursor.since == 0 => (0, uuid::Uuid::nil()),
        None => (cursor.since - 1, uuid::Uuid::max()),
    }
}

/// An engine's feed rows as (rev, summary): `summary` decodes the row's summary columns, the
/// `rev` column (a bigint on both engines) is read here.
pub(crate) fn decode_rows<R>(
    rows: &[R],
    summary: impl Fn(&R) -> Result<SummaryRecord>,
) -> Result<Vec<(u64, LoraSummary)>>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| {
            let rev = to_u64(r.try_get("rev")?, "rev")?;
            Ok((rev, summary(r)?.into_summary()?))
        })
        .collect()
}

/// The page an engine read: `rows` with their revs, in (rev, id) order, at most `limit`;
/// `horizon` is where a round starting at this page's snapshot would start the next one.
pub(crate) fn feed_page(
    cursor: &FeedCursor,
    limit: u32,
    rows: Vec<(u64, LoraSummary)>,
    horizon: u64,
) -> FeedPage {
    let next_since = if cursor.after.is_none() {
        horizon
    } else {
        cursor.next_since
    };
    let full = rows.len() >= limit as usize;
    let last = rows.last().map(|(rev, s)| (*rev, s.id));
    let rows = rows.into_iter().map(|(_, s)| s).collect();
    match last {
        Some(last) if full => FeedPage {
            rows,
            cursor: FeedCursor {
                since: cursor.since,
                after: Some(last),
                next_since,
            },
            caught_up: false,
        },
        _ => FeedPage {
            rows,
            cursor: FeedCursor {
                since: next_since,
                after: None,
                next_since,
            },
            caught_up: true,
        },
    }
}

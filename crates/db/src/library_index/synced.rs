//! [`SyncedIndex`]: a [`LibraryIndex`] kept in step with the database's change feed
//! ([`LibraryFeed`], migration 0023), for readers on many tasks at once.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use loraforge_domain::LoraSummary;

use super::{LibraryIndex, Rendered, Renderer};
use crate::feed::{FeedCursor, LibraryFeed};
use crate::{LoraQuery, Page, Result};

/// Rows read from the feed per page while catching up.
const FEED_PAGE: u32 = 2_000;
/// Rows applied per hold of the write lock.
const APPLY_CHUNK: usize = 256;

/// A [`LibraryIndex`] and where it stands in the feed.
#[derive(Debug, Default)]
pub struct SyncedIndex {
    index: RwLock<LibraryIndex>,
    cursor: tokio::sync::Mutex<FeedCursor>,
    ready: AtomicBool,
}

/// What one [`SyncedIndex::catch_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    /// Rows read (a row may come twice).
    pub rows: usize,
}

impl SyncedIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index that also keeps each LoRA rendered by `render` ([`Self::query_rendered`]).
    pub fn with_renderer(render: Renderer) -> Self {
        Self {
            index: RwLock::new(LibraryIndex::with_renderer(render)),
            ..Self::default()
        }
    }

    /// Reads every change made before this call from `feed` and applies it; the index then
    /// answers as the database did when the call began (or later). Calls queue behind each
    /// other. The first call reads the whole library.
    pub async fn catch_up(&self, feed: &dyn LibraryFeed) -> Result<CaughtUp> {
        let guard = self.cursor.lock().await;
        self.catch_up_locked(guard, feed).await
    }

    /// [`Self::catch_up`], unless another one is under way: then `None` at once.
    pub async fn try_catch_up(&self, feed: &dyn LibraryFeed) -> Option<Result<CaughtUp>> {
        let guard = self.cursor.try_lock().ok()?;
        Some(self.catch_up_locked(guard, feed).await)
    }

    async fn catch_up_locked(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, FeedCursor>,
        feed: &dyn LibraryFeed,
    ) -> Result<CaughtUp> {
        let mut cursor = guard.clone();
        let mut rows = 0;
        loop {
            let page = feed.library_changes(&cursor, FEED_PAGE).await?;
            rows += page.rows.len();
            // A few hundred at a time, so that answers wait for the write lock briefly.
            let mut rows_left = page.rows.into_iter().peekable();
            while rows_left.peek().is_some() {
                let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                for s in rows_left.by_ref().take(APPLY_CHUNK) {
                    index.apply(s);
                }
            }
            cursor = page.cursor;
            if page.caught_up {
                break;
            }
        }
        *guard = cursor;
        self.ready.store(true, Ordering::Release);
        Ok(CaughtUp { rows })
    }

    /// Whether a catch-up has completed (before, the index holds part of the library at most).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The index's answer, as [`LibraryIndex::query`].
    pub fn query(&self, query: &LoraQuery) -> Option<Page<LoraSummary>> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .query(query)
    }

    /// The index's answer with each LoRA rendered, as [`LibraryIndex::query_rendered`].
    pub fn query_rendered(&self, query: &LoraQuery) -> Option<Page<Rendered>> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .query_rendered(query)
    }

    /// LoRAs held.
    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

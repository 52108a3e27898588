//! The public library in memory for this process (`loraforge_db::SyncedIndex`), so that library
//! pages and searches — every search word a new query, as a search box sends them — are
//! answered without a database query each (issue 9's measure: docs/performance.md).
//!
//! Freshness: a change made through this process (`AppState::notify_changed`) shows in the next
//! answer, which first reads the change feed; other replicas' changes show within `lag` (the
//! first answer after `lag` has passed reads the feed, while the others keep answering from
//! the index). `lag = 0` reads the feed before every answer. Until the first read of the whole
//! library has finished (started in the background as the server starts), listings go to the
//! database, as do the listings the index does not serve (hidden LoRAs, a creator's own, awaiting
//! review, the hand-off filters).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::library_index::{Rendered, Renderer};
use loraforge_db::{LibraryIndex, LoraQuery, Page, Repository, SyncedIndex};

use crate::views::LoraListItem;

#[derive(Debug)]
pub struct LiveIndex {
    index: Arc<SyncedIndex>,
    lag: chrono::Duration,
    /// A change was made through this process since the last read of the feed.
    dirty: AtomicBool,
    /// When the last completed read of the feed started.
    read_at: Mutex<Option<DateTime<Utc>>>,
    /// The first, whole read is under way in the background.
    loading: Arc<AtomicBool>,
}

impl LiveIndex {
    /// `show_emails`: the operator's `show_creator_emails`, as each LoRA's JSON is made once.
    pub fn new(lag: Duration, show_emails: bool) -> Self {
        let render: Renderer = Arc::new(move |s| {
            serde_json::to_vec(&LoraListItem::of(s, show_emails)).unwrap_or_else(|e| {
                tracing::error!(error = %e, lora = %s.id, "serializing a library entry");
                b"null".to_vec()
            })
        });
        Self {
            index: Arc::new(SyncedIndex::with_renderer(render)),
            lag: chrono::Duration::from_std(lag).unwrap_or(chrono::Duration::MAX),
            dirty: AtomicBool::new(false),
            read_at: Mutex::new(None),
            loading: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Something in the library changed through this process.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether the first read of the whole library has finished.
    pub fn loaded(&self) -> bool {
        self.index.ready()
    }

    /// LoRAs held (0 until the first read has finished).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the feed now and waits for it: the index then holds every change made before.
    pub async fn catch_up(
        &self,
        repo: &dyn Repository,
        now: DateTime<Utc>,
    ) -> loraforge_db::Result<()> {
        self.dirty.store(false, Ordering::Release);
        self.index.catch_up(repo).await?;
        self.read(now);
        Ok(())
    }

    fn read(&self, started: DateTime<Utc>) {
        let mut at = self.read_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.is_none_or(|t| t < started) {
            *at = Some(started);
        }
    }

    /// The page from memory, each LoRA as its [`LoraListItem`] JSON, or `None` when the
    /// database must answer (a listing the index does not serve, or the index is still loading).
    pub async fn page(
        &self,
        repo: &Arc<dyn Repository>,
        query: &LoraQuery,
        now: DateTime<Utc>,
    ) -> loraforge_db::Result<Option<Page<Rendered>>> {
        if !LibraryIndex::serves(query) {
            return Ok(None);
        }
        if !self.index.ready() {
            self.load(repo);
            return Ok(None);
        }
        let read_at = *self.read_at.lock().unwrap_or_else(|e| e.into_inner());
        let stale = read_at.is_none_or(|t| now - t >= self.lag);
        if self.lag.is_zero() || self.dirty.load(Ordering::Acquire) {
            // This process changed something (or every answer must be fresh): wait for it.
            self.catch_up(repo.as_ref(), now).await?;
        } else if stale {
            // Another answer may be reading the feed already; then this one answers from the
            // index as it stands (at most one read of the feed old).
            // If the database fails, the index answers as it stands (the next answer tries again).
            match self.index.try_catch_up(repo.as_ref()).await {
                Some(Ok(_)) => self.read(now),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading the library's change feed failed; answering from the index as it stands")
                }
                None => {}
            }
        }
        Ok(self.index.query_rendered(query))
    }

    /// Starts reading the whole library in the background, unless that is under way or done
    /// (or there is no async runtime to run it on).
    pub fn load(&self, repo: &Arc<dyn Repository>) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.loading.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let index = self.index.clone();
        let loading = self.loading.clone();
        let repo = repo.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            match index.catch_up(repo.as_ref()).await {
                Ok(done) => tracing::info!(
                    loras = index.len(),
                    rows = done.rows,
                    ms = started.elapsed().as_millis() as u64,
                    "library index loaded"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "loading the library index failed; listings use the database, and the next one tries again");
                    loading.store(false, Ordering::Release);
                }
            }
        });
    }
}

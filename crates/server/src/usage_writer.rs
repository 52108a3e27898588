//! Group commit of the hand-out's uses (`POST /api/v1/generation/resolve`). Every resolve that
//! hands out LoRAs records its uses before it answers, and resolves of one generator share the
//! same few LoRAs: written one transaction each, they queue on the same rows (Postgres row locks,
//! SQLite's one writer) and each waits for every earlier commit. The writer instead lets one
//! transaction at a time run and gathers the resolves that arrive meanwhile into the next one
//! (`UsageStore::record_use_batch`), so under load a transaction records many generations and
//! alone it costs what one did before. Each resolve still answers only once its uses are
//! committed.
//!
//! One flusher task at a time writes the batches, started by the record that finds none running:
//! a resolve whose client goes away does not take the batch of the others with it, and a use
//! queued by it is still written. A batch that fails is written again one record at a time, so
//! one bad record costs only its own recording. Tested on both databases in
//! `tests/api/generation.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use loraforge_db::{Repository, UseRecord};
use loraforge_domain::LoraId;

/// Transactions the writer ran (`GET /metrics`); with [`RECORDS`], the mean batch.
pub const WRITES: &str = "loraforge_usage_writes_total";
/// Resolves whose uses were recorded (one record each, however many LoRAs).
pub const RECORDS: &str = "loraforge_usage_records_total";

/// How long a resolve waits for its uses to be committed before it answers anyway: a slow or
/// locked database delays the bookkeeping, never the generation. The flusher still writes them.
pub const RECORD_WAIT: Duration = Duration::from_secs(1);

/// Records written in one transaction at most (×10 characters: 640 use rows).
pub const MAX_BATCH: usize = 64;

type Answer = Result<Vec<LoraId>, String>;

struct Waiting {
    record: UseRecord,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A flusher task is running: it writes until the queue is empty.
    flushing: bool,
}

/// The process's usage writer (`AppState::usage`).
pub struct UsageWriter {
    repo: Arc<dyn Repository>,
    queue: Mutex<Queue>,
    batches: AtomicU64,
    /// [`RECORD_WAIT`], shorter in tests.
    wait: Duration,
}

impl std::fmt::Debug for UsageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageWriter")
            .field("batches", &self.batches())
            .finish_non_exhaustive()
    }
}

/// A flusher that panics (or is dropped with the runtime) is no longer flushing: the next
/// record starts another. A flusher that ends normally says so itself, under the queue's lock.
struct Flushing<'a>(&'a UsageWriter, bool);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.lock().flushing = false;
        }
    }
}

impl UsageWriter {
    pub fn new(repo: Arc<dyn Repository>) -> Arc<Self> {
        Self::with_wait(repo, RECORD_WAIT)
    }

    /// A writer whose callers wait at most `wait` for their commit.
    pub fn with_wait(repo: Arc<dyn Repository>, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            repo,
            queue: Mutex::new(Queue::default()),
            batches: AtomicU64::new(0),
            wait,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Transactions written so far (each a batch of one or more records).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Records one generation's uses, committed together with whatever other resolves are
    /// waiting; returns the LoRAs counted for it (`UsageStore::record_uses`). Cancelling the
    /// returned future does not cancel the recording, and neither does giving up waiting: after
    /// the writer's wait ([`RECORD_WAIT`]) this answers an error saying the uses are still being
    /// written, and the flusher writes them when the database lets it.
    pub async fn record(self: &Arc<Self>, record: UseRecord) -> Answer {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push(Waiting { record, answer });
            !std::mem::replace(&mut queue.flushing, true)
        };
        if start {
            // The flusher is a task of its own, so that a caller that goes away leaves its
            // record (and the others it took) to be written all the same.
            let writer = Arc::clone(self);
            tokio::spawn(async move { writer.flush().await });
        }
        match tokio::time::timeout(self.wait, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the usage writer stopped before answering".to_owned()),
            Err(_) => Err(format!(
                "not committed within {} ms; answered without waiting, still being written",
                self.wait.as_millis()
            )),
        }
    }

    /// Writes batches (everything queued, up to [`MAX_BATCH`]) one transaction after the other
    /// until the queue is empty: what arrives while one commits is the next one.
    async fn flush(&self) {
        let mut flushing = Flushing(self, false);
        loop {
            let batch: Vec<Waiting> = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    // Under the lock: a record pushed after this starts a new flusher.
                    queue.flushing = false;
                    flushing.1 = true;
                    return;
                }
                let n = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..n).collect()
            };
            self.write(batch).await;
        }
    }

    /// One batch in one transaction (or, if that fails, one record at a time).
    async fn write(&self, batch: Vec<Waiting>) {
        let records: Vec<UseRecord> = batch.iter().map(|w| w.record.clone()).collect();
        self.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(WRITES).increment(1);
        metrics::counter!(RECORDS).increment(records.len() as u64);
        let answers: Vec<Answer> = match self.repo.record_use_batch(&records).await {
            Ok(counted) if counted.len() == records.len() => counted.into_iter().map(Ok).collect(),
            Ok(counted) => {
                let e = format!(
                    "the store answered {} records for a batch of {}",
                    counted.len(),
                    records.len()
                );
                records.iter().map(|_| Err(e.clone())).collect()
            }
            Err(e) if records.len() == 1 => vec![Err(e.to_string())],
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "recording a batch of LoRA uses failed; recording them one at a time");
                let mut answers = Vec::with_capacity(records.len());
                for r in &records {
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(WRITES).increment(1);
                    answers.push(
                        self.repo
                            .record_use_batch(std::slice::from_ref(r))
                            .await
                            .map(|mut v| v.pop().unwrap_or_default())
                            .map_err(|e| e.to_string()),
                    );
                }
                answers
            }
        };
        for (w, a) in batch.into_iter().zip(answers) {
            // The caller may have gone away; its uses are recorded all the same.
            let _ = w.answer.send(a);
        }
    }
}

//! Group commit of the hand-out's uses (`POST /api/v1/generation/resolve`). Every resolve that
//! hands out LoRAs records its uses before it answers, and resolves of one generator share the
//! same few LoRAs: written one transaction each, they queue on the same rows (Postgres row locks,
//! SQLite's one writer) and each waits for every earlier commit. The writer instead lets one
//! transaction at a time run and gathers the resolves that arrive meanwhile into the next one
//! (`UsageStore::record_use_batch`), so under load a transaction records many generations and
//! alone it costs what one did before. Each resolve still answers only once its uses are
//! committed.
//!
//! A batch is written in a task of its own: a resolve whose client goes away does not take the
//! batch of the others with it, and a use queued by it is still written. A batch that fails is
//! written again one record at a time, so one bad record costs only its own recording. Tested on
//! both databases in `tests/api/generation.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use loraforge_db::{Repository, UseRecord};
use loraforge_domain::LoraId;

/// Records written in one transaction at most (×10 characters: 640 use rows).
pub const MAX_BATCH: usize = 64;

type Answer = Result<Vec<LoraId>, String>;

struct Waiting {
    record: UseRecord,
    answer: oneshot::Sender<Answer>,
}

/// The process's usage writer (`AppState::usage`).
pub struct UsageWriter {
    repo: Arc<dyn Repository>,
    queue: Mutex<Vec<Waiting>>,
    /// The write turn: held by the task writing a batch.
    turn: Arc<tokio::sync::Mutex<()>>,
    batches: AtomicU64,
}

impl std::fmt::Debug for UsageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageWriter")
            .field("batches", &self.batches())
            .finish_non_exhaustive()
    }
}

impl UsageWriter {
    pub fn new(repo: Arc<dyn Repository>) -> Arc<Self> {
        Arc::new(Self {
            repo,
            queue: Mutex::new(Vec::new()),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            batches: AtomicU64::new(0),
        })
    }

    /// Transactions written so far (each a batch of one or more records).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Records one generation's uses, committed together with whatever other resolves are
    /// waiting; returns the LoRAs counted for it (`UsageStore::record_uses`). Cancelling the
    /// returned future does not cancel the recording.
    pub async fn record(self: &Arc<Self>, record: UseRecord) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Waiting { record, answer });
        let writer = Arc::clone(self);
        // Taking the turn and writing happen in a task, so that a caller that goes away
        // leaves its record (and the others it took) to be written all the same.
        tokio::spawn(async move { writer.take_turn().await });
        answered
            .await
            .unwrap_or_else(|_| Err("the usage writer stopped before answering".to_owned()))
    }

    /// Waits for the write turn, then writes everything queued (up to [`MAX_BATCH`]); finds the
    /// queue empty when an earlier turn took this caller's record.
    async fn take_turn(&self) {
        let _turn = self.turn.lock().await;
        let batch: Vec<Waiting> = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = queue.len().min(MAX_BATCH);
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let records: Vec<UseRecord> = batch.iter().map(|w| w.record.clone()).collect();
        self.batches.fetch_add(1, Ordering::Relaxed);
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

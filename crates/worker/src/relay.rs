//! The progress relay: a task that posts the trainer's progress and the worker's heartbeats to
//! the control plane, so that a slow or unreachable control plane never holds up reading the
//! trainer's stdout.
//!
//! The reader only hands lines to a [`Feed`] (stages queued, steps overwritten); the relay posts
//! from it: every stage change at once and in order, steps at most once per `progress_interval`
//! (the newest wins), and a heartbeat with only `attempt` when nothing was posted for
//! `heartbeat_interval`. It runs from the job's fetch until just before the result, so heartbeats
//! also cover downloads and uploads. A failed post is logged
//! and forgotten (the next one carries newer news); `409` halts the attempt as no longer active,
//! `401`/`403`/`404` as refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Halt;
use crate::api::ControlPlane;
use crate::job::ProgressBody;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Step {
    pub step: u64,
    pub total: u64,
    pub loss: Option<f64>,
    pub eta_s: Option<f64>,
}

/// The reader's side: stages are queued (every one is posted, in order), steps overwrite each
/// other (the newest wins). Neither ever waits.
pub(crate) struct Feed {
    stages: mpsc::UnboundedSender<String>,
    /// A sequence number, so the relay knows what it has not posted, and the newest step.
    steps: watch::Sender<(u64, Option<Step>)>,
}

/// The relay's side of a [`Feed`].
pub(crate) struct FeedRx {
    stages: mpsc::UnboundedReceiver<String>,
    steps: watch::Receiver<(u64, Option<Step>)>,
}

pub(crate) fn feed() -> (Feed, FeedRx) {
    let (stages, stages_rx) = mpsc::unbounded_channel();
    let (steps, steps_rx) = watch::channel((0, None));
    (
        Feed { stages, steps },
        FeedRx {
            stages: stages_rx,
            steps: steps_rx,
        },
    )
}

impl Feed {
    pub fn stage(&self, stage: &str) {
        // The relay may be gone (halted); then nobody needs the news.
        let _ = self.stages.send(stage.to_owned());
    }

    pub fn step(&self, step: Step) {
        self.steps.send_modify(|(seq, newest)| {
            *seq += 1;
            *newest = Some(step);
        });
    }
}

pub(crate) struct RelaySettings {
    pub attempt: u64,
    pub progress_interval: Duration,
    pub heartbeat_interval: Duration,
    /// How long the control plane may stay unreachable (no answer at all, e.g. the service is
    /// down) before the worker stops the attempt: a crash of the service is survived, a service
    /// that never comes back does not leave a worker training for nobody.
    pub unreachable_limit: Duration,
}

/// The running relay. Dropping it stops the task at once; [`Relay::finish`] posts what is left
/// first.
pub(crate) struct Relay {
    handle: JoinHandle<()>,
    finish: Option<oneshot::Sender<()>>,
}

impl Relay {
    pub fn start(
        api: Arc<ControlPlane>,
        settings: RelaySettings,
        feed: FeedRx,
        halt: watch::Sender<Option<Halt>>,
    ) -> Self {
        let (finish, finish_rx) = oneshot::channel();
        let handle = tokio::spawn(relay(api, settings, feed, finish_rx, halt).in_current_span());
        Self {
            handle,
            finish: Some(finish),
        }
    }

    /// Posts anything not yet posted, then ends the task.
    pub async fn finish(mut self) {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        let _ = (&mut self.handle).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn relay(
    api: Arc<ControlPlane>,
    s: RelaySettings,
    feed: FeedRx,
    mut finish: oneshot::Receiver<()>,
    halt: watch::Sender<Option<Halt>>,
) {
    let FeedRx {
        stages: mut stages_rx,
        steps: mut steps_rx,
    } = feed;
    let mut queued: VecDeque<String> = VecDeque::new();
    let (mut stages_open, mut steps_open) = (true, true);
    // The newest stage posted; step posts carry it.
    let mut stage: Option<String> = None;
    let mut posted_step = 0;
    let mut last_post = Instant::now();
    // The last time the control plane answered anything (even a refusal).
    let mut last_answer = Instant::now();
    let mut last_step_post: Option<Instant> = None;
    let mut finishing = false;
    loop {
        while let Ok(next) = stages_rx.try_recv() {
            queued.push_back(next);
        }
        let next_stage = queued.pop_front();
        let (step_seq, newest_step) = *steps_rx.borrow_and_update();
        let now = Instant::now();
        let step_pending = step_seq != posted_step;
        let step_due = step_pending
            && (finishing || last_step_post.is_none_or(|t| now >= t + s.progress_interval));
        let heartbeat_due = !finishing && now >= last_post + s.heartbeat_interval;

        if next_stage.is_some() || step_due || heartbeat_due {
            let mut body = ProgressBody::heartbeat(s.attempt);
            if let Some(next) = next_stage {
                stage = Some(next);
                body.stage.clone_from(&stage);
            }
            if step_due && let Some(step) = newest_step {
                body.stage.clone_from(&stage);
                body.step = Some(step.step);
                body.total = Some(step.total);
                body.loss = step.loss;
                body.eta_s = step.eta_s;
            }
            // Counted as posted whatever the answer: a failed post is not repeated, the next one
            // carries the newest state.
            if step_due {
                posted_step = step_seq;
                last_step_post = Some(now);
            }
            match api.progress(&body).await {
                Ok(()) => {
                    last_answer = Instant::now();
                    tracing::trace!(?body, "progress posted");
                }
                Err(e) if e.status().is_none() && last_answer.elapsed() > s.unreachable_limit => {
                    tracing::warn!(error = %e, limit = ?s.unreachable_limit, "the control plane has been unreachable too long; stopping");
                    crate::raise(&halt, Halt::Unreachable(s.unreachable_limit));
                    return;
                }
                Err(e) => {
                    if e.status().is_some() {
                        last_answer = Instant::now();
                    }
                    let halted = match e.status() {
                        Some(StatusCode::CONFLICT) => Some(Halt::NotActive(e.message())),
                        Some(
                            s @ (StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::NOT_FOUND),
                        ) => Some(Halt::Refused(format!("{s}: {}", e.message()))),
                        _ => None,
                    };
                    if let Some(h) = halted {
                        tracing::warn!(error = %e, "the control plane turned down a progress report; stopping");
                        crate::raise(&halt, h);
                        return;
                    }
                    tracing::warn!(error = %e, "progress report failed; the next one will carry the news");
                }
            }
            last_post = Instant::now();
            continue;
        }
        if finishing {
            return;
        }
        let mut wake = last_post + s.heartbeat_interval;
        if step_pending && let Some(t) = last_step_post {
            wake = wake.min(t + s.progress_interval);
        }
        tokio::select! {
            next = stages_rx.recv(), if stages_open => match next {
                Some(next) => queued.push_back(next),
                None => stages_open = false,
            },
            changed = steps_rx.changed(), if steps_open => {
                if changed.is_err() {
                    steps_open = false;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
            _ = &mut finish => finishing = true,
        }
    }
}

#[cfg(test)]
impl FeedRx {
    pub fn stages(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(s) = self.stages.try_recv() {
            out.push(s);
        }
        out
    }

    pub fn newest_step(&self) -> Option<Step> {
        self.steps.borrow().1
    }
}

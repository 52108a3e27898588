//! Keeps the job engine alive. The engine's loop runs as a task of its own; if it ends by a panic,
//! the panic's message is logged and the loop is started again after a backoff (1, 2, 4 … 60 s;
//! back to 1 s once a restarted loop has ticked). [`EngineHealth`] is what `/readyz` reads: whether
//! a loop is running, when it last finished a tick, how often it was restarted.
//!
//! Steppable: [`Supervisor::run_once`] runs one loop to its end and says what happened and how
//! long to wait; [`supervise`] only adds the waiting.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What `/readyz` and the logs know of the engine.
#[derive(Debug, Default)]
pub struct EngineHealth {
    state: Mutex<HealthReport>,
}

/// A snapshot of [`EngineHealth`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// A loop is running now.
    pub running: bool,
    /// When the last tick finished (successful or not: a failing database is `/readyz`'s
    /// database check, not a dead engine).
    pub last_tick: Option<DateTime<Utc>>,
    /// Ticks since the process started.
    pub ticks: u64,
    /// Loops restarted after a panic.
    pub restarts: u32,
    /// The message of the last panic.
    pub last_panic: Option<String>,
}

impl EngineHealth {
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, f: impl FnOnce(&mut HealthReport)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A tick finished at `now`.
    pub fn ticked(&self, now: DateTime<Utc>) {
        self.update(|s| {
            s.last_tick = Some(now);
            s.ticks += 1;
        });
    }

    pub fn report(&self) -> HealthReport {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How one supervised loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEnd {
    /// It returned: the service is stopping.
    Stopped,
    /// It panicked with `message`; start it again after `retry_in`.
    Panicked { message: String, retry_in: Duration },
}

/// Restarts after a panic: the `n`th consecutive one waits 2^(n-1) s, at most a minute.
pub fn restart_delay(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Runs engine loops one at a time and records what becomes of them.
#[derive(Debug)]
pub struct Supervisor {
    health: std::sync::Arc<EngineHealth>,
    consecutive: u32,
}

impl Supervisor {
    pub fn new(health: std::sync::Arc<EngineHealth>) -> Self {
        Self {
            health,
            consecutive: 0,
        }
    }

    /// Runs `run` as a task until it ends.
    pub async fn run_once<F>(&mut self, run: F) -> LoopEnd
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ticks_before = self.health.report().ticks;
        self.health.update(|s| s.running = true);
        let ended = tokio::spawn(run).await;
        self.health.update(|s| s.running = false);
        let payload = match ended {
            Ok(()) => return LoopEnd::Stopped,
            Err(e) if e.is_panic() => e.into_panic(),
            // Cancelled: only when the runtime shuts down.
            Err(_) => return LoopEnd::Stopped,
        };
        let message = panic_message(payload.as_ref());
        // A loop that ticked was healthy for a while: this is a new run of failures.
        if self.health.report().ticks > ticks_before {
            self.consecutive = 0;
        }
        self.consecutive += 1;
        let retry_in = restart_delay(self.consecutive);
        self.health.update(|s| {
            s.restarts += 1;
            s.last_panic = Some(message.clone());
        });
        tracing::error!(panic = %message, restart_in_secs = retry_in.as_secs(), consecutive = self.consecutive,
            "operator alert: the job engine panicked; it is restarted");
        LoopEnd::Panicked { message, retry_in }
    }
}

/// The text of a panic's payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs `make()`'s loop, and a new one after each panic, until a loop returns or `stopping`
/// resolves during a backoff.
pub async fn supervise<F, Fut>(
    health: std::sync::Arc<EngineHealth>,
    mut make: F,
    stopping: impl Future<Output = ()> + Send,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(stopping);
    let mut supervisor = Supervisor::new(health);
    loop {
        match supervisor.run_once(make()).await {
            LoopEnd::Stopped => return,
            LoopEnd::Panicked { retry_in, .. } => {
                tokio::select! {
                    () = &mut stopping => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn restarts_back_off_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(u32::MAX).as_secs(), 60);
    }

    #[tokio::test]
    async fn a_panicking_loop_is_reported_with_its_message_and_backs_off() {
        let health = Arc::new(EngineHealth::new());
        let mut sup = Supervisor::new(health.clone());
        let boom = |n: u32| async move { panic!("tick {n} found a bug") };
        let end = sup.run_once(boom(1)).await;
        assert_eq!(
            end,
            LoopEnd::Panicked {
                message: "tick 1 found a bug".into(),
                retry_in: Duration::from_secs(1)
            }
        );
        let end = sup.run_once(boom(2)).await;
        assert!(
            matches!(end, LoopEnd::Panicked { retry_in, .. } if retry_in == Duration::from_secs(2))
        );
        let r = health.report();
        assert_eq!((r.running, r.restarts), (false, 2));
        assert_eq!(r.last_panic.as_deref(), Some("tick 2 found a bug"));

        // A loop that ticks before it panics starts the backoff over.
        let h = health.clone();
        let end = sup
            .run_once(async move {
                h.ticked(t(5));
                panic!("{}", String::from("later"));
            })
            .await;
        assert!(
            matches!(end, LoopEnd::Panicked { retry_in, .. } if retry_in == Duration::from_secs(1))
        );
        assert_eq!(health.report().last_tick, Some(t(5)));
        assert_eq!(health.report().last_panic.as_deref(), Some("later"));

        // While a loop runs, the health says so; a loop that returns is a stop.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = health.clone();
        let running = tokio::spawn(async move {
            let mut sup = Supervisor::new(h);
            sup.run_once(async move {
                let _ = rx.await;
            })
            .await
        });
        while !health.report().running {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        assert_eq!(running.await.unwrap(), LoopEnd::Stopped);
        assert!(!health.report().running);
    }

    #[tokio::test]
    async fn supervise_restarts_until_a_loop_returns() {
        let health = Arc::new(EngineHealth::new());
        let mut runs = 0;
        supervise(
            health.clone(),
            || {
                runs += 1;
                let n = runs;
                async move {
                    // One restart: the backoff before it is a real second.
                    if n < 2 {
                        panic!("run {n}");
                    }
                }
            },
            std::future::pending(),
        )
        .await;
        assert_eq!(runs, 2);
        assert_eq!(health.report().restarts, 1);
        assert_eq!(health.report().last_panic.as_deref(), Some("run 1"));
    }
}

//! The job engine, stepped tick by tick with a `ManualClock` on a real database (SQLite in a temp
//! dir; Postgres where replicas race). Decisions are tested against a backend the tests steer
//! (`helpers::Scripted`); the local backend against real child processes
//! (`tests/fixtures/worker_process.sh`, which behaves toward its parent as `loraforge worker`
//! does).

mod breaker;
mod budget;
mod chaos;
mod chaos_check;
mod chaos_real;
mod dispatch;
mod helpers;
mod local;
mod nudge;
mod refusals;
mod restarts;
mod runs;
mod samples;

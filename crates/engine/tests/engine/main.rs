//! The job engine, stepped tick by tick with a `ManualClock` on a real database (SQLite in a temp
//! dir; Postgres where replicas race), with the real `local` backend running
//! `tests/fixtures/fake_worker.sh` as its child process.

mod dispatch;
mod helpers;
mod leases;
mod local_runs;
mod restart;
mod start_retries;

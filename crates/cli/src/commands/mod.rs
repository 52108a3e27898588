//! Operator and user tools: the file tools (no server, no database), the trainer's setup and
//! health check, and `train`, a client of a running service.

pub mod check_dataset;
pub mod doctor;
pub mod inspect;
pub mod setup_trainer;
pub mod train;
pub mod worker;

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit status of a file command: 0 accepted, 1 rejected or malformed, 2 a usage error.
pub const EXIT_ACCEPTED: i32 = 0;
pub const EXIT_REJECTED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// A progress bar on stderr, drawn only when stderr is a terminal (never in pipes, logs or tests).
fn progress(len: Option<u64>, message: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), target).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => {
            let b = ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        }
    };
    bar.set_message(message.to_owned());
    bar
}

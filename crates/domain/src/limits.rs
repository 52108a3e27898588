//! Per-user limits: the monthly window (UTC calendar month) and the numbers that bound a user.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The limits every user is held to. Defaults follow PRD 2 (5 per month) and 004 (2 concurrent,
/// 10 creates per minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimits {
    /// LoRAs a user may create per UTC calendar month (pending … completed count).
    pub monthly_loras: u32,
    /// Jobs of one user that may train or validate at once; the rest wait as `queued`.
    pub concurrent_jobs: u32,
    /// Create requests per user per minute.
    pub creates_per_minute: u32,
}

impl Default for UsageLimits {
    fn default() -> Self {
        Self {
            monthly_loras: 5,
            concurrent_jobs: 2,
            creates_per_minute: 10,
        }
    }
}

/// The UTC calendar month containing an instant: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthlyWindow {
    pub start: DateTime<Utc>,
    /// The first instant of the next month: when the limit resets.
    pub end: DateTime<Utc>,
}

impl MonthlyWindow {
    pub fn containing(now: DateTime<Utc>) -> Self {
        let start = first_of_month(now.year(), now.month());
        let (y, m) = if now.month() == 12 {
            (now.year() + 1, 1)
        } else {
            (now.year(), now.month() + 1)
        };
        Self {
            start,
            end: first_of_month(y, m),
        }
    }
}

fn first_of_month(year: i32, month: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .expect("the first of a month at midnight UTC always exists")
}

/// PRD 2's message, with the limit filled in.
pub fn monthly_limit_message(limit: u32) -> String {
    format!(
        "You've reached your monthly limit of {limit} LoRAs. Limit resets on the first of each month."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn window_mid_month() {
        let w = MonthlyWindow::containing(at("2026-11-23T09:30:00Z"));
        assert_eq!(w.start, at("2026-11-01T00:00:00Z"));
        assert_eq!(w.end, at("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn window_rolls_over_the_year() {
        let w = MonthlyWindow::containing(at("2026-12-31T23:59:59Z"));
        assert_eq!(w.start, at("2026-12-01T00:00:00Z"));
        assert_eq!(w.end, at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn first_instant_belongs_to_the_new_month() {
        let w = MonthlyWindow::containing(at("2027-03-01T00:00:00Z"));
        assert_eq!(w.start, at("2027-03-01T00:00:00Z"));
        let before = MonthlyWindow::containing(at("2027-02-28T23:59:59.999Z"));
        assert_eq!(before.end, w.start);
    }

    #[test]
    fn message_matches_prd() {
        assert_eq!(
            monthly_limit_message(5),
            "You've reached your monthly limit of 5 LoRAs. Limit resets on the first of each month."
        );
    }
}

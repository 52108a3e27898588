//! Per-user dataset quotas (issue 9 item 5): how many datasets, and how many bytes of images, a
//! user may store per UTC calendar day, and how long stored datasets are kept.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};

/// How much a user may store per UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetQuota {
    /// Datasets a user may store per UTC calendar day.
    pub datasets_per_day: u32,
    /// Bytes of stored images a user may add per UTC calendar day (what each dataset stores,
    /// counted per dataset even where its images are shared with another).
    pub bytes_per_day: u64,
}

impl Default for DatasetQuota {
    fn default() -> Self {
        Self {
            datasets_per_day: 50,
            bytes_per_day: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// What a user stored inside a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatasetUsage {
    pub datasets: u32,
    pub bytes: u64,
}

/// Which part of the quota a dataset would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Datasets,
    Bytes,
}

impl QuotaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Datasets => "datasets",
            QuotaKind::Bytes => "bytes",
        }
    }
}

/// A dataset the quota refuses: which limit, the limit and what is used already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub kind: QuotaKind,
    pub limit: u64,
    pub used: u64,
}

impl DatasetQuota {
    /// Whether one more dataset of `bytes` fits next to `usage`; `bytes` 0 asks only whether
    /// anything may still be stored (the check before downloading).
    pub fn admits(&self, usage: DatasetUsage, bytes: u64) -> Result<(), QuotaExceeded> {
        if usage.datasets >= self.datasets_per_day {
            return Err(QuotaExceeded {
                kind: QuotaKind::Datasets,
                limit: u64::from(self.datasets_per_day),
                used: u64::from(usage.datasets),
            });
        }
        let over = if bytes == 0 {
            usage.bytes >= self.bytes_per_day
        } else {
            usage.bytes.saturating_add(bytes) > self.bytes_per_day
        };
        if over {
            return Err(QuotaExceeded {
                kind: QuotaKind::Bytes,
                limit: self.bytes_per_day,
                used: usage.bytes,
            });
        }
        Ok(())
    }
}

/// The UTC calendar day containing an instant: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    pub start: DateTime<Utc>,
    /// The next midnight UTC: when the quota resets.
    pub end: DateTime<Utc>,
}

impl DailyWindow {
    pub fn containing(now: DateTime<Utc>) -> Self {
        let start = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()
            .expect("midnight UTC always exists");
        Self {
            start,
            end: start + chrono::Duration::days(1),
        }
    }
}

/// How long datasets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetRetention {
    /// A dataset no LoRA uses is deleted this long after it was stored.
    pub unused_after: Duration,
    /// The images of a dataset whose LoRAs have all finished (completed, failed or cancelled) are
    /// deleted this long after the last of them finished; `None` keeps them. The dataset's record
    /// stays (its LoRAs name it); LoRA files are never deleted.
    pub trained_images_after: Option<Duration>,
}

impl Default for DatasetRetention {
    fn default() -> Self {
        Self {
            unused_after: Duration::from_secs(7 * 86_400),
            trained_images_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_runs_from_midnight_to_midnight_utc() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let w = DailyWindow::containing(t);
        assert_eq!(
            w.start,
            Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap()
        );
        assert_eq!(w.end, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(DailyWindow::containing(w.end).start, w.end);
    }

    #[test]
    fn quota_refuses_the_dataset_past_either_limit() {
        let q = DatasetQuota {
            datasets_per_day: 2,
            bytes_per_day: 100,
        };
        let used = |datasets, bytes| DatasetUsage { datasets, bytes };
        assert_eq!(q.admits(used(1, 40), 60), Ok(()));
        let e = q.admits(used(1, 40), 61).unwrap_err();
        assert_eq!((e.kind, e.limit, e.used), (QuotaKind::Bytes, 100, 40));
        let e = q.admits(used(2, 0), 1).unwrap_err();
        assert_eq!((e.kind, e.limit, e.used), (QuotaKind::Datasets, 2, 2));
        // Before downloading: only "is anything left".
        assert_eq!(q.admits(used(1, 99), 0), Ok(()));
        assert_eq!(
            q.admits(used(1, 100), 0).unwrap_err().kind,
            QuotaKind::Bytes
        );
    }
}

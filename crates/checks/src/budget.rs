//! A process-wide budget of bytes for decoded pixels. A 420 KB PNG can declare 40 megapixels at
//! 16 bits per channel — 320 MB once decoded — so a pixel cap per image does not bound memory
//! when many such images arrive at once. Every decode first takes its estimated size (known from
//! the header, before anything is allocated) from one shared budget, and gives it back when its
//! buffers are gone. A decode larger than the whole budget is refused outright (the image's
//! fault); one that does not fit now waits, at most `wait`, for others to finish (the server's
//! load, not the image's fault).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Why a decode may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The decode alone needs more than the whole budget; it can never run.
    #[error("decoding needs {needed} bytes; the budget is {total} bytes")]
    TooLarge { needed: u64, total: u64 },
    /// Other decodes held the budget for longer than the wait.
    #[error("the decode budget stayed in use for longer than the wait")]
    Busy,
}

/// Bytes of decoded pixels allowed in memory at once, shared by everything that decodes.
#[derive(Debug)]
pub struct DecodeBudget {
    total: u64,
    wait: Duration,
    used: Mutex<u64>,
    freed: Condvar,
}

impl DecodeBudget {
    /// `total` bytes at once; a decode waits at most `wait` for room.
    pub const fn new(total: u64, wait: Duration) -> Self {
        Self {
            total,
            wait,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// No limit (command-line checks of one's own files, tests).
    pub const fn unlimited() -> Self {
        Self::new(u64::MAX, Duration::ZERO)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held by decodes now.
    pub fn in_use(&self) -> u64 {
        *self.lock()
    }

    /// Takes `bytes` from the budget, waiting up to the budget's wait for room. Blocking: call
    /// it from a thread that may block (the checks run on rayon or `spawn_blocking` threads).
    pub fn acquire(&self, bytes: u64) -> Result<DecodePermit<'_>, BudgetError> {
        if bytes > self.total {
            return Err(BudgetError::TooLarge {
                needed: bytes,
                total: self.total,
            });
        }
        let deadline = Instant::now() + self.wait;
        let mut used = self.lock();
        while self.total - *used < bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BudgetError::Busy);
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *used += bytes;
        Ok(DecodePermit {
            budget: self,
            bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // The count stays consistent under a panic: it is only changed in whole steps.
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bytes taken from a [`DecodeBudget`]; given back when dropped.
#[derive(Debug)]
pub struct DecodePermit<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl Drop for DecodePermit<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.lock();
        *used = used.saturating_sub(self.bytes);
        drop(used);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_add_up_and_are_given_back() {
        let b = DecodeBudget::new(100, Duration::ZERO);
        let a = b.acquire(60).unwrap();
        assert_eq!(b.in_use(), 60);
        assert_eq!(b.acquire(41).unwrap_err(), BudgetError::Busy);
        let c = b.acquire(40).unwrap();
        assert_eq!(b.in_use(), 100);
        drop(a);
        drop(c);
        assert_eq!(b.in_use(), 0);
        assert_eq!(
            b.acquire(101).unwrap_err(),
            BudgetError::TooLarge {
                needed: 101,
                total: 100
            }
        );
    }

    #[test]
    fn a_waiting_decode_starts_when_another_finishes() {
        let b = DecodeBudget::new(100, Duration::from_secs(600));
        let first = b.acquire(80).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| b.acquire(50).map(|p| p.bytes));
            // Whenever the waiter runs, it can only succeed once `first` is gone.
            drop(first);
            assert_eq!(waiter.join().unwrap(), Ok(50));
        });
        assert_eq!(b.in_use(), 0);
    }
}

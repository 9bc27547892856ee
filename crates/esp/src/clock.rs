//! A coarse clock shared by the SAD and its SAs, so the hot path can stamp "last use" without a
//! system call per packet: the daemon advances it (e.g. every 100 ms from its timer), tests set it.
//! Times are milliseconds since the clock's epoch, an `Instant` fixed when the clock is made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug)]
pub struct CoarseClock {
    epoch: Instant,
    now_ms: AtomicU64,
}

impl CoarseClock {
    /// A clock whose epoch and current time are `now`.
    pub fn new(now: Instant) -> Self {
        CoarseClock { epoch: now, now_ms: AtomicU64::new(0) }
    }

    /// Moves the clock to `now` (never backwards).
    pub fn set(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis().min(u128::from(u64::MAX)) as u64;
        self.now_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Milliseconds since the epoch, as last set.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// The current coarse time as an `Instant`.
    pub fn now(&self) -> Instant {
        self.at(self.now_ms())
    }

    /// The `Instant` of a coarse timestamp.
    pub fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Milliseconds since the epoch of an `Instant`.
    pub fn ms_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis().min(u128::from(u64::MAX)) as u64
    }
}

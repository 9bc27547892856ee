//! The outbound sequence counter of an SA (RFC 4303 section 3.3.3): shared by every worker thread
//! that seals on the SA, it hands out each number exactly once, in batches, and refuses to wrap.
//!
//! Without ESN the last usable number is 2^32-1, with ESN 2^64-1. Well before that, at the soft
//! threshold (7/8 of the space by default), [`SeqCounter::needs_rekey`] turns true so the control
//! plane rekeys while traffic still flows; at the end, [`SeqCounter::reserve`] fails and the SA stops
//! sealing rather than reuse a number (and with it a GCM nonce).

use std::sync::atomic::{AtomicU64, Ordering};

/// The sequence space is used up: the SA must be rekeyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound sequence numbers exhausted, the SA needs a rekey")]
pub struct SeqExhausted;

/// See the module documentation.
#[derive(Debug)]
pub struct SeqCounter {
    /// The last number handed out (0 before the first; numbers start at 1).
    last: AtomicU64,
    /// The last number that may be used.
    limit: u64,
    /// Once `last` reaches this, a rekey is due.
    soft: u64,
}

impl SeqCounter {
    /// A fresh counter; `esn` selects the 64-bit space.
    pub fn new(esn: bool) -> Self {
        let limit = if esn { u64::MAX } else { u64::from(u32::MAX) };
        SeqCounter { last: AtomicU64::new(0), limit, soft: limit - limit / 8 }
    }

    /// Sets the soft threshold: once a number at or above `soft` was handed out,
    /// [`SeqCounter::needs_rekey`] is true.
    pub fn with_soft_threshold(mut self, soft: u64) -> Self {
        self.soft = soft.min(self.limit);
        self
    }

    /// Takes `n` consecutive numbers and returns the first. Fails, taking none, when they would run
    /// past the limit. `n == 0` returns the next number without taking it.
    pub fn reserve(&self, n: u64) -> Result<u64, SeqExhausted> {
        let limit = self.limit;
        self.last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                let new_last = last.checked_add(n)?;
                (new_last <= limit && last < limit).then_some(new_last)
            })
            .map(|last| last + 1)
            .map_err(|_| SeqExhausted)
    }

    /// The next number that will be handed out (for HA sync and listings); saturates at 2^64-1.
    pub fn next_seq(&self) -> u64 {
        self.last.load(Ordering::Relaxed).saturating_add(1)
    }

    /// The last number handed out (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// HA: continue from `next` (e.g. the active node's counter plus a safety margin). The counter
    /// only ever moves forward, so a stale value can never make a number repeat; returns whether it
    /// moved.
    pub fn set_next_seq(&self, next: u64) -> bool {
        let last = next.saturating_sub(1);
        self.last.fetch_max(last, Ordering::Relaxed) < last
    }

    /// The last usable number.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// True once the soft threshold is reached: rekey now.
    pub fn needs_rekey(&self) -> bool {
        self.last_seq() >= self.soft
    }

    /// True when no number is left.
    pub fn is_exhausted(&self) -> bool {
        self.last_seq() >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_start_at_one() {
        let c = SeqCounter::new(false);
        assert_eq!(c.reserve(1), Ok(1));
        assert_eq!(c.reserve(10), Ok(2));
        assert_eq!(c.reserve(1), Ok(12));
        assert_eq!(c.next_seq(), 13);
    }

    #[test]
    fn exhaustion_without_esn_stops_at_2_pow_32_minus_1() {
        let c = SeqCounter::new(false);
        assert!(c.set_next_seq(u64::from(u32::MAX) - 2));
        assert!(c.needs_rekey());
        assert_eq!(c.reserve(4), Err(SeqExhausted));
        assert_eq!(c.reserve(3), Ok(u64::from(u32::MAX) - 2));
        assert!(c.is_exhausted());
        assert_eq!(c.reserve(1), Err(SeqExhausted));
    }

    #[test]
    fn exhaustion_with_esn_never_wraps() {
        let c = SeqCounter::new(true);
        assert!(!c.needs_rekey());
        c.set_next_seq(u64::MAX - 1);
        assert_eq!(c.reserve(1), Ok(u64::MAX - 1));
        assert_eq!(c.reserve(2), Err(SeqExhausted));
        assert_eq!(c.reserve(1), Ok(u64::MAX));
        assert_eq!(c.reserve(1), Err(SeqExhausted));
    }

    #[test]
    fn set_next_seq_never_goes_back() {
        let c = SeqCounter::new(true);
        c.set_next_seq(1000);
        assert!(!c.set_next_seq(10));
        assert_eq!(c.reserve(1), Ok(1000));
    }
}

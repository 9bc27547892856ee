//! The outbound sequence counter of an SA (RFC 4303 section 3.3.3): shared by every worker thread
//! that seals on the SA, it hands out each number exactly once, in batches, and refuses to wrap.
//!
//! Without ESN the last usable number is 2^32-1, with ESN 2^64-1. Well before that, at the soft
//! threshold (7/8 of the space by default), [`SeqCounter::needs_rekey`] turns true so the control
//! plane rekeys while traffic still flows; at the end, [`SeqCounter::reserve`] fails and the SA stops
//! sealing rather than reuse a number (and with it a GCM nonce).
//!
//! HA adds a second bound, the lease *ceiling*: the highest number the standby node has
//! acknowledged it will never use after a takeover (it resumes at ceiling + 1). The active node may
//! only seal up to it. Running into the ceiling is a [`SeqError::LeaseStall`], a temporary
//! condition that clears when the lease is renewed: unlike the limit it does not make
//! [`SeqCounter::is_exhausted`] or [`SeqCounter::needs_rekey`] true, because either would make the
//! SAD report a hard or soft lifetime and rekey or delete an SA that is merely waiting for an ack.
//! Without HA the ceiling equals the limit and changes nothing.
//!
//! # Why the ceiling checks are race-free
//!
//! [`SeqCounter::reserve`] reads the ceiling inside the compare-and-swap loop on `last`, so a
//! reservation is checked against a ceiling that was current while `last` had the value it
//! replaces. For a ceiling that only rises ([`SeqCounter::set_ceiling`]) that is enough: a stale
//! read can only be lower than the truth, which stalls a batch needlessly but never overruns a
//! lease. [`SeqCounter::freeze`] is the one operation that lowers the ceiling (planned switchover:
//! stop now and report exactly where), and there the read inside the loop is not enough: a
//! reserver may read the old ceiling, the freeze may lower it and read `last`, and only then the
//! reserver's swap lands, above the number the freeze reported. So a reservation checks the ceiling
//! a second time *after* its swap, and the freeze lowers the ceiling *before* reading `last`, all
//! with `SeqCst`. In the single order of `SeqCst` operations either the freeze's read of `last`
//! comes after the reserver's swap (the freeze reports a number at or above the reservation), or
//! the reserver's second read comes after the freeze's lowering (the reservation sees a ceiling
//! below its numbers and fails). The numbers of a reservation failed that way are never sealed,
//! only skipped, which RFC 4303 section 3.3.3 allows.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why [`SeqCounter::reserve`] handed out no numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// The sequence space is used up: the SA must be rekeyed.
    #[error("outbound sequence numbers exhausted, the SA needs a rekey")]
    Exhausted,
    /// HA: the numbers would pass the lease ceiling the standby acknowledged. Sealing resumes when
    /// the lease is renewed; the SA itself is fine.
    #[error("outbound sequence numbers at the HA lease ceiling, waiting for a renewal")]
    LeaseStall,
}

/// See the module documentation.
#[derive(Debug)]
pub struct SeqCounter {
    /// The last number handed out (0 before the first; numbers start at 1).
    last: AtomicU64,
    /// The last number the HA lease allows (`limit` without HA). May be below `last` after a
    /// [`SeqCounter::freeze`] or when a counter was resumed beyond its lease.
    ceiling: AtomicU64,
    /// The last number that may be used.
    limit: u64,
    /// Once `last` reaches this, a rekey is due.
    soft: u64,
}

impl SeqCounter {
    /// A fresh counter; `esn` selects the 64-bit space. The ceiling is the limit (no HA lease).
    pub fn new(esn: bool) -> Self {
        let limit = if esn { u64::MAX } else { u64::from(u32::MAX) };
        SeqCounter { last: AtomicU64::new(0), ceiling: AtomicU64::new(limit), limit, soft: limit - limit / 8 }
    }

    /// HA standby: a counter that is installed but seals nothing until a lease arrives through
    /// [`SeqCounter::set_ceiling`] (its ceiling is its last number, 0).
    pub fn paused(esn: bool) -> Self {
        SeqCounter::new(esn).with_ceiling(0)
    }

    /// Sets the soft threshold: once a number at or above `soft` was handed out,
    /// [`SeqCounter::needs_rekey`] is true.
    pub fn with_soft_threshold(mut self, soft: u64) -> Self {
        self.soft = soft.min(self.limit);
        self
    }

    /// Sets the lease ceiling to exactly `ceiling`; see [`SeqCounter::init_ceiling`].
    pub fn with_ceiling(mut self, ceiling: u64) -> Self {
        self.init_ceiling(ceiling);
        self
    }

    /// Sets the lease ceiling to exactly `ceiling`, lower or higher than before. Unlike
    /// [`SeqCounter::set_ceiling`] this may lower it without the care [`SeqCounter::freeze`] takes,
    /// because `&mut` proves that no other thread can be reserving: it is for counters that are
    /// still being built (an SA resumed from HA state before it is published).
    pub fn init_ceiling(&mut self, ceiling: u64) {
        *self.ceiling.get_mut() = ceiling;
    }

    /// Takes `n` consecutive numbers and returns the first. Fails, taking none, with
    /// [`SeqError::Exhausted`] when they would run past the limit and with
    /// [`SeqError::LeaseStall`] when they would run past the lease ceiling (and exhaustion wins
    /// when both hold, being permanent). `n == 0` returns the next number without taking it.
    ///
    /// In one case a failed reservation does use up numbers: when it raced a
    /// [`SeqCounter::freeze`] (see the module documentation); they are skipped, never sealed.
    pub fn reserve(&self, n: u64) -> Result<u64, SeqError> {
        let limit = self.limit;
        let taken = self.last.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            let new_last = last.checked_add(n)?;
            // Relaxed is enough here: this read only spares a swap; the SeqCst read below is the
            // one a freeze relies on.
            let ceiling = self.ceiling.load(Ordering::Relaxed);
            (new_last <= limit && last < limit && new_last <= ceiling).then_some(new_last)
        });
        match taken {
            Ok(last) => {
                // Cannot overflow: the closure checked `last + n` and `last < limit`.
                if last + n > self.ceiling.load(Ordering::SeqCst) {
                    return Err(SeqError::LeaseStall);
                }
                Ok(last + 1)
            }
            Err(last) => {
                let exhausted = last >= limit || last.checked_add(n).is_none_or(|l| l > limit);
                Err(if exhausted { SeqError::Exhausted } else { SeqError::LeaseStall })
            }
        }
    }

    /// The next number that will be handed out (for HA sync and listings); saturates at 2^64-1.
    pub fn next_seq(&self) -> u64 {
        self.last.load(Ordering::SeqCst).saturating_add(1)
    }

    /// The last number handed out (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }

    /// HA: continue from `next` (e.g. the active node's counter plus a safety margin). The counter
    /// only ever moves forward, so a stale value can never make a number repeat; returns whether it
    /// moved.
    pub fn set_next_seq(&self, next: u64) -> bool {
        let last = next.saturating_sub(1);
        self.last.fetch_max(last, Ordering::SeqCst) < last
    }

    /// The last number the HA lease allows (the limit without HA).
    pub fn ceiling(&self) -> u64 {
        self.ceiling.load(Ordering::SeqCst)
    }

    /// HA: the standby acknowledged a lease up to `ceiling`. Only ever raises the ceiling, so a
    /// late or reordered ack cannot undo a newer one; returns whether it moved.
    pub fn set_ceiling(&self, ceiling: u64) -> bool {
        self.ceiling.fetch_max(ceiling, Ordering::SeqCst) < ceiling
    }

    /// HA planned switchover: stops sealing and returns the highest number that was or may still
    /// be sealed. The new active node resumes at the returned number + 1; no reservation that
    /// completes after this call returns gets a number above it (see the module documentation).
    /// Sealing stays stopped until [`SeqCounter::set_ceiling`] raises the ceiling again; do not
    /// race that call against this one.
    pub fn freeze(&self) -> u64 {
        let seen = self.last.load(Ordering::SeqCst);
        self.ceiling.fetch_min(seen, Ordering::SeqCst);
        self.last.load(Ordering::SeqCst)
    }

    /// True while the lease ceiling stops sealing (not an exhaustion: see the module documentation).
    pub fn is_stalled(&self) -> bool {
        self.last_seq() >= self.ceiling() && !self.is_exhausted()
    }

    /// The last usable number.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// True once the soft threshold is reached: rekey now. The lease ceiling plays no part.
    pub fn needs_rekey(&self) -> bool {
        self.last_seq() >= self.soft
    }

    /// True when no number is left. The lease ceiling plays no part.
    pub fn is_exhausted(&self) -> bool {
        self.last_seq() >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

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
        assert_eq!(c.reserve(4), Err(SeqError::Exhausted));
        assert_eq!(c.reserve(3), Ok(u64::from(u32::MAX) - 2));
        assert!(c.is_exhausted());
        assert!(!c.is_stalled(), "an exhausted counter is not waiting for a lease");
        assert_eq!(c.reserve(1), Err(SeqError::Exhausted));
    }

    #[test]
    fn exhaustion_with_esn_never_wraps() {
        let c = SeqCounter::new(true);
        assert!(!c.needs_rekey());
        c.set_next_seq(u64::MAX - 1);
        assert_eq!(c.reserve(1), Ok(u64::MAX - 1));
        assert_eq!(c.reserve(2), Err(SeqError::Exhausted));
        assert_eq!(c.reserve(1), Ok(u64::MAX));
        assert_eq!(c.reserve(1), Err(SeqError::Exhausted));
    }

    #[test]
    fn set_next_seq_never_goes_back() {
        let c = SeqCounter::new(true);
        c.set_next_seq(1000);
        assert!(!c.set_next_seq(10));
        assert_eq!(c.reserve(1), Ok(1000));
    }

    #[test]
    fn default_ceiling_is_the_limit() {
        assert_eq!(SeqCounter::new(false).ceiling(), u64::from(u32::MAX));
        assert_eq!(SeqCounter::new(true).ceiling(), u64::MAX);
    }

    #[test]
    fn ceiling_stalls_without_exhausting_and_renewal_resumes_at_the_next_number() {
        let c = SeqCounter::new(false).with_ceiling(10).with_soft_threshold(5);
        assert_eq!(c.reserve(10), Ok(1));
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
        assert_eq!(c.reserve(64), Err(SeqError::LeaseStall));
        assert_eq!(c.last_seq(), 10, "a stall takes no numbers");
        assert!(c.is_stalled());
        assert!(!c.is_exhausted());
        assert!(c.needs_rekey(), "the soft threshold (5) still counts, independently of the lease");
        let c = SeqCounter::new(false).with_ceiling(10);
        c.reserve(10).unwrap();
        assert!(!c.needs_rekey(), "a stall is not a reason to rekey");
        assert!(c.set_ceiling(12));
        assert!(!c.is_stalled());
        assert_eq!(c.reserve(3), Err(SeqError::LeaseStall), "11..=13 would pass 12");
        assert_eq!(c.reserve(1), Ok(11));
        assert_eq!(c.reserve(1), Ok(12));
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
    }

    #[test]
    fn set_ceiling_only_rises() {
        let c = SeqCounter::new(true).with_ceiling(100);
        assert!(c.set_ceiling(200));
        assert!(!c.set_ceiling(150), "a late ack of an older lease changes nothing");
        assert_eq!(c.ceiling(), 200);
    }

    #[test]
    fn exhaustion_wins_over_a_stall() {
        let c = SeqCounter::new(false).with_ceiling(u64::from(u32::MAX) - 5);
        c.set_next_seq(u64::from(u32::MAX) - 2);
        assert_eq!(c.reserve(10), Err(SeqError::Exhausted));
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
    }

    #[test]
    fn paused_counter_seals_nothing_until_a_lease() {
        let c = SeqCounter::paused(true);
        assert_eq!(c.ceiling(), 0);
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
        assert!(!c.is_exhausted());
        c.set_next_seq(1000);
        c.set_ceiling(999);
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall), "next is 1000, above the lease");
        c.set_ceiling(1000);
        assert_eq!(c.reserve(1), Ok(1000));
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
    }

    #[test]
    fn freeze_reports_the_last_number_and_stops_sealing() {
        let c = SeqCounter::new(true);
        assert_eq!(c.reserve(5), Ok(1));
        assert_eq!(c.freeze(), 5);
        assert_eq!(c.ceiling(), 5);
        assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
        assert!(!c.is_exhausted());
        assert_eq!(c.freeze(), 5, "idempotent");
        // An aborted switchover: a new lease resumes at the next number.
        c.set_ceiling(7);
        assert_eq!(c.reserve(1), Ok(6));
    }

    /// Reservers on several threads against a ceiling raised in steps by another thread: every
    /// number handed out is unique and within the ceiling at the end, and together they are
    /// exactly 1..=ceiling (stalls take nothing).
    #[test]
    fn concurrent_reservers_stay_under_the_ceiling_and_never_share_a_number() {
        const FINAL: u64 = 40_000;
        let c = Arc::new(SeqCounter::new(true).with_ceiling(1000));
        let done = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3u64)
            .map(|t| {
                let (c, done) = (c.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut stalls = 0u64;
                    let mut i = 0u64;
                    while !done.load(Ordering::SeqCst) || c.last_seq() < c.ceiling() {
                        i += 1;
                        let n = 1 + (i * (t + 3)) % 7;
                        match c.reserve(n) {
                            Ok(first) => {
                                let ceiling = c.ceiling();
                                assert!(first + n - 1 <= ceiling, "{first}+{n} above {ceiling}");
                                got.extend(first..first + n);
                            }
                            Err(SeqError::LeaseStall) if c.ceiling() >= FINAL => {
                                // A batch larger than what is left at the end: take singles.
                                if c.reserve(1).map(|s| got.push(s)).is_err() {
                                    break;
                                }
                            }
                            Err(SeqError::LeaseStall) => stalls += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (got, stalls)
                })
            })
            .collect();
        let mut ceiling = 1000;
        while ceiling < FINAL {
            ceiling += 1000;
            c.set_ceiling(ceiling);
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().unwrap().0);
        }
        let unique: HashSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a number was handed out twice");
        assert!(all.iter().all(|&s| (1..=FINAL).contains(&s)));
        assert_eq!(all.len() as u64, FINAL, "stalls take no numbers");
        assert!(!c.is_exhausted());
    }

    /// A freeze racing reservers on other threads: no reservation that succeeds, before or after
    /// the freeze, gets a number above the one the freeze reported.
    #[test]
    fn freeze_racing_reservers_is_exact() {
        for round in 0..200u64 {
            let c = Arc::new(SeqCounter::new(true));
            let frozen = Arc::new(AtomicBool::new(false));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (c, frozen) = (c.clone(), frozen.clone());
                    std::thread::spawn(move || {
                        let mut max_ok = 0;
                        // Keep going for a while after the freeze, to catch late swaps.
                        let mut after = 0;
                        while after < 50 {
                            if frozen.load(Ordering::SeqCst) {
                                after += 1;
                            }
                            if let Ok(first) = c.reserve(1 + round % 4) {
                                max_ok = max_ok.max(first + round % 4);
                            }
                        }
                        max_ok
                    })
                })
                .collect();
            while c.last_seq() < 100 + round * 10 {
                std::hint::spin_loop();
            }
            let f = c.freeze();
            frozen.store(true, Ordering::SeqCst);
            for w in workers {
                let max_ok = w.join().unwrap();
                assert!(max_ok <= f, "round {round}: sealed {max_ok} after a freeze at {f}");
            }
            assert_eq!(c.reserve(1), Err(SeqError::LeaseStall));
        }
    }
}

//! How often the active looks at its outbound counters (the lease tick), from how fast they
//! move: every wakeup of the engine on a loaded gateway preempts the packet path, so an idle or
//! slow tunnel should not cost the 200 wakeups a second that the fastest one needs.
//!
//! A lease is renewed once `last_seq` passes `ceiling - shift/2` (`lease`), so the second half
//! of the lease has to last from that crossing until the standby's ack arrives: at most one tick
//! for the crossing to be seen, then one round trip on the sync link. The period is a quarter of
//! the time the fastest SA takes to seal `shift/2` numbers, which leaves three quarters of it to
//! the round trip, clamped to [`MIN_TICK`, `MAX_TICK`]. At the default shift of 65,536 and 590k
//! packets/s (tandem's single-SA rate) that is 14 ms; a tunnel carrying TCP acks at 50k packets/s
//! gets the maximum. A burst from idle is seen within one `MAX_TICK`, in which even 1.3M
//! packets/s seal less than half a default lease: the renewal is still asked for in time. A late
//! tick can only make sealing wait (a counted lease stall), never exceed an acknowledged ceiling.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The shortest period: the fastest counters, a handover to watch, an ack to wait for.
pub const MIN_TICK: Duration = Duration::from_millis(5);
/// The longest period, also the bound on how late a due replay-window update is noticed
/// (`replay::MIN_PACKET_INTERVAL` is the same: a busy SA's window goes out every one or two
/// ticks, 25-50 ms apart).
pub const MAX_TICK: Duration = Duration::from_millis(25);

// A burst from idle at 1.3M packets/s must seal less than half a default lease (`oseq-shift`
// 65,536) within one `MAX_TICK`, or its renewal would be asked for too late.
const _: () = assert!(MAX_TICK.as_millis() * 1_300 < 65_536 / 2);

/// A gap between two observations longer than this starts the rates over (the node was not
/// active, or not ticking): a counter that moved meanwhile, by a takeover's resume for one, is
/// not a rate.
const STALE: Duration = Duration::from_secs(1);

/// The lease tick's period, from the outbound counters seen at each tick.
#[derive(Debug)]
pub struct TickPace {
    half_lease: u64,
    /// Each SA's counter at the last observation.
    last: HashMap<u32, u64>,
    /// The next observation's counters, swapped with `last` (no map allocated per tick).
    next: HashMap<u32, u64>,
    at: Option<Instant>,
    period: Duration,
}

impl TickPace {
    /// `shift` is `oseq-shift`.
    pub fn new(shift: u64) -> Self {
        TickPace {
            half_lease: (shift / 2).max(1),
            last: HashMap::new(),
            next: HashMap::new(),
            at: None,
            period: MIN_TICK,
        }
    }

    /// The outbound counters at `now`, (inbound SPI, last sequence number used) per CHILD SA.
    /// SAs that are gone are forgotten.
    pub fn observe(&mut self, now: Instant, counters: impl IntoIterator<Item = (u32, u64)>) {
        let dt = self.at.map(|a| now.saturating_duration_since(a)).filter(|d| !d.is_zero() && *d <= STALE);
        let mut fastest = 0u64;
        self.next.clear();
        for (spi, seq) in counters {
            if let Some(prev) = self.last.get(&spi) {
                fastest = fastest.max(seq.saturating_sub(*prev));
            }
            self.next.insert(spi, seq);
        }
        std::mem::swap(&mut self.last, &mut self.next);
        self.at = Some(now);
        self.period = match dt {
            // Time to seal half a lease at the fastest rate, a quarter of it.
            Some(dt) if fastest > 0 => {
                let half = dt.as_secs_f64() * self.half_lease as f64 / fastest as f64;
                Duration::from_secs_f64(half / 4.0).clamp(MIN_TICK, MAX_TICK)
            }
            Some(_) => MAX_TICK,
            // No rate yet: look again soon.
            None => MIN_TICK,
        };
    }

    /// The time to the next tick.
    pub fn period(&self) -> Duration {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_counters_tick_at_the_longest_period() {
        let t0 = Instant::now();
        let mut p = TickPace::new(65_536);
        assert_eq!(p.period(), MIN_TICK, "no rate yet");
        p.observe(t0, [(1, 100), (2, 5)]);
        assert_eq!(p.period(), MIN_TICK, "one observation is no rate");
        p.observe(t0 + ms(5), [(1, 100), (2, 5)]);
        assert_eq!(p.period(), MAX_TICK);
    }

    #[test]
    fn the_fastest_sa_sets_the_period() {
        let t0 = Instant::now();
        let mut p = TickPace::new(65_536);
        p.observe(t0, [(1, 0), (2, 0)]);
        // SA 2 at 590k packets/s: 32,768 numbers take 55.5 ms, a quarter is 13.9 ms.
        p.observe(t0 + ms(10), [(1, 500), (2, 5_900)]);
        let period = p.period().as_secs_f64() * 1000.0;
        assert!((13.0..15.0).contains(&period), "{period} ms");
        // 50k packets/s (TCP acks): 164 ms a half lease, clamped to the longest period.
        p.observe(t0 + ms(20), [(1, 1_000), (2, 6_400)]);
        assert_eq!(p.period(), MAX_TICK);
        // 2M packets/s: clamped to the shortest.
        p.observe(t0 + ms(30), [(1, 1_000), (2, 26_400)]);
        assert_eq!(p.period(), MIN_TICK);
    }

    #[test]
    fn new_gone_and_jumped_counters_are_not_rates() {
        let t0 = Instant::now();
        let mut p = TickPace::new(65_536);
        p.observe(t0, [(1, 0)]);
        // SA 3 appears far along (installed resumed), SA 1 is gone: no rate.
        p.observe(t0 + ms(5), [(3, 1_000_000)]);
        assert_eq!(p.period(), MAX_TICK);
        // After a long gap (not active meanwhile) a moved counter starts the rates over.
        p.observe(t0 + ms(5) + STALE + ms(1), [(3, 9_000_000)]);
        assert_eq!(p.period(), MIN_TICK);
        p.observe(t0 + ms(5) + STALE + ms(6), [(3, 9_000_000)]);
        assert_eq!(p.period(), MAX_TICK);
    }
}

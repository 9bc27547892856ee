//! Inbound replay windows (guides/HA.md section b, seed 002 "seqnum-sync"): the active sends each
//! inbound SA's window to the standby, so a node that takes over rejects packets the old active
//! already accepted. The pace follows the seed's two triggers, either of which sends an update:
//! - `sync-period-packets` (default 2): the window's top moved by at least that many packets since
//!   the last update;
//! - `sync-period-time` (default 10 s): that long since the last update, and the top moved.
//!
//! The packet trigger fires at most once per [`MIN_PACKET_INTERVAL`] per SA, whatever the packet
//! rate: at the seed's default of 2 packets every busy SA would otherwise send one update per
//! lease tick (then 5 ms), 200 a second, each a message, an ack and a wakeup of both nodes; measured
//! with `scripts/bench-ha` on this 2-vCPU machine (2026-12-07, 8 paired rounds of sync on
//! against sync off), a single TCP stream kept 88% of its throughput with them and 96-101% with
//! the packet trigger disabled. At one update per 25 ms the link carries 6.5 kB/s instead of 36.
//! The interval costs little at a takeover: the window's age there is dominated by VRRP's
//! detection (tens of ms), and `auto` advances by the measured rate times the age.
//!
//! What the standby cannot know is what arrived after the last update: at a takeover the window
//! is advanced by `replay-advance` (`auto`: the packet rate seen between the last two updates
//! times the age of the last, at most half the window). Those numbers were mostly sent by the
//! peer while no node answered (lost anyway), so marking them received costs few legitimate
//! packets and refuses replays of what the old active accepted after its last update (RFC 6027
//! section 3.5). No fixed margin is added: a margin of 64 dropped 64 new packets at every
//! failover (0.64 s of a 100 packets/s stream, measured in the namespace test).
//! Outbound counters need none of this: they are leased (`lease`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The shortest time between two updates of one SA's window sent by the packet trigger.
pub const MIN_PACKET_INTERVAL: Duration = Duration::from_millis(25);

/// The seed's triggers; `None` disables one.
#[derive(Debug)]
pub struct ReplayTrigger {
    time: Option<Duration>,
    packets: Option<u32>,
    last: HashMap<u32, (u64, Instant)>,
}

impl ReplayTrigger {
    pub fn new(time: Option<Duration>, packets: Option<u32>) -> Self {
        ReplayTrigger { time, packets, last: HashMap::new() }
    }

    /// Should the window of `spi_in`, whose top is `top`, be sent now? Records it when it should.
    pub fn due(&mut self, spi_in: u32, top: u64, now: Instant) -> bool {
        let (last_top, at) = self.last.get(&spi_in).copied().unwrap_or((0, now));
        let first = !self.last.contains_key(&spi_in);
        let moved = top.saturating_sub(last_top);
        let since = now.saturating_duration_since(at);
        let by_packets = self.packets.is_some_and(|p| moved >= u64::from(p.max(1)))
            && (first || since >= MIN_PACKET_INTERVAL);
        let by_time = moved > 0 && self.time.is_some_and(|t| first || since >= t);
        if by_packets || by_time {
            self.last.insert(spi_in, (top, now));
            return true;
        }
        if first {
            self.last.insert(spi_in, (0, now));
        }
        false
    }

    pub fn remove(&mut self, spi_in: u32) {
        self.last.remove(&spi_in);
    }

    /// Forget what was sent: a new standby needs every window again.
    pub fn reset(&mut self) {
        self.last.clear();
    }
}

/// One mirrored window on the standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredWindow {
    pub window: u32,
    pub top: u64,
    pub bitmap: Vec<u64>,
    pub(crate) at: Instant,
    /// Packets per second, measured over at least [`RATE_SPAN`] of updates (updates come every
    /// few milliseconds: the rate between two of them is noise, and an overestimate drops new
    /// packets at the takeover; 1-8 per failover in the namespace test with the two-update rate).
    pub(crate) rate: u64,
    /// The update the rate is measured from.
    anchor: (u64, Instant),
}

/// The shortest span the rate estimate is measured over.
pub const RATE_SPAN: Duration = Duration::from_millis(500);

impl MirroredWindow {
    pub(crate) fn update(
        prev: Option<&MirroredWindow>,
        window: u32,
        top: u64,
        bitmap: Vec<u64>,
        now: Instant,
    ) -> Self {
        let Some(p) = prev else {
            return MirroredWindow { window, top, bitmap, at: now, rate: 0, anchor: (top, now) };
        };
        let (anchor_top, anchor_at) = p.anchor;
        let span = now.saturating_duration_since(anchor_at);
        let (rate, anchor) = if span >= RATE_SPAN {
            let us = span.as_micros().max(1) as u64;
            (top.saturating_sub(anchor_top).saturating_mul(1_000_000) / us, (top, now))
        } else {
            (p.rate, p.anchor)
        };
        MirroredWindow { window, top, bitmap, at: now, rate, anchor }
    }

    /// How far to advance the window at a takeover at `now`: `fixed`, or (`None`) the estimate.
    pub fn advance(&self, now: Instant, fixed: Option<u64>) -> u64 {
        if let Some(n) = fixed {
            return n;
        }
        let age_us = now.saturating_duration_since(self.at).as_micros() as u64;
        let est = self.rate.saturating_mul(age_us) / 1_000_000;
        est.min(u64::from(self.window / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn either_trigger_sends_and_nothing_is_sent_for_a_quiet_sa() {
        let now = t0();
        let mut t = ReplayTrigger::new(Some(Duration::from_secs(10)), Some(64));
        assert!(!t.due(1, 0, now), "nothing received yet");
        assert!(!t.due(1, 10, now + Duration::from_secs(1)), "10 packets, 1 s: neither trigger");
        assert!(t.due(1, 64, now + Duration::from_secs(2)), "64 packets");
        assert!(!t.due(1, 64, now + Duration::from_secs(20)), "quiet: nothing to send");
        assert!(t.due(1, 65, now + Duration::from_secs(21)), "moved, and 19 s since the last");
        let mut only_time = ReplayTrigger::new(Some(Duration::from_secs(1)), None);
        assert!(only_time.due(2, 1000, now), "first window of an SA");
        assert!(!only_time.due(2, 5000, now + Duration::from_millis(500)));
        let mut busy = ReplayTrigger::new(None, Some(2));
        assert!(busy.due(4, 10, now), "first window of a busy SA");
        assert!(!busy.due(4, 100, now + Duration::from_millis(5)), "within the interval");
        assert!(busy.due(4, 200, now + MIN_PACKET_INTERVAL), "once it passed");
        let mut off = ReplayTrigger::new(None, None);
        assert!(!off.due(3, 1 << 20, now + Duration::from_secs(100)));
    }

    #[test]
    fn auto_advance_follows_the_rate_and_is_bounded() {
        let now = t0();
        let a = MirroredWindow::update(None, 1024, 1000, vec![], now);
        // A burst between two close updates does not set the rate.
        let a2 = MirroredWindow::update(Some(&a), 1024, 1010, vec![], now + Duration::from_millis(5));
        assert_eq!(a2.rate, 0);
        let b = MirroredWindow::update(Some(&a2), 1024, 2000, vec![], now + Duration::from_secs(1));
        assert_eq!(b.rate, 1000);
        assert_eq!(b.advance(now + Duration::from_millis(1100), None), 100);
        assert_eq!(b.advance(now + Duration::from_secs(60), None), 512, "at most half the window");
        assert_eq!(b.advance(now + Duration::from_secs(60), Some(0)), 0);
    }
}

//! Traffic-triggered tunnels (start action `trap`): a packet matching a Protect policy whose SA
//! does not exist yet makes the control plane negotiate one (an Acquire), at most once per reqid
//! per interval, and a bounded number of such packets wait for the SA. Pure state, driven with an
//! injected `now`; the buffers of queued packets are recycled so a busy trap does not allocate.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What the caller should do after offering a packet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrapOutcome {
    /// Send an Acquire for this reqid now.
    pub acquire: bool,
    /// The oldest queued packet was dropped to make room (count it).
    pub dropped_oldest: bool,
}

struct Pending {
    last_acquire: Instant,
    packets: VecDeque<(Instant, Vec<u8>)>,
}

/// Queues of packets waiting for SAs, by reqid.
pub struct TrapQueues {
    interval: Duration,
    cap: usize,
    max_hold: Duration,
    by_reqid: HashMap<u32, Pending>,
    spare: Vec<Vec<u8>>,
}

impl TrapQueues {
    /// `interval`: minimum time between two Acquires of one reqid; `cap`: packets kept per reqid;
    /// `max_hold`: queued packets older than this are dropped by `expire` (negotiation failed).
    pub fn new(interval: Duration, cap: usize, max_hold: Duration) -> Self {
        TrapQueues { interval, cap, max_hold, by_reqid: HashMap::new(), spare: Vec::new() }
    }

    /// A packet for `reqid` found no SA: queue a copy (when `cap` > 0) and say whether to Acquire.
    pub fn offer(&mut self, now: Instant, reqid: u32, packet: &[u8]) -> TrapOutcome {
        let mut out = TrapOutcome::default();
        let entry = self.by_reqid.entry(reqid).or_insert_with(|| {
            out.acquire = true;
            Pending { last_acquire: now, packets: VecDeque::new() }
        });
        if !out.acquire && now.saturating_duration_since(entry.last_acquire) >= self.interval {
            entry.last_acquire = now;
            out.acquire = true;
        }
        if self.cap == 0 {
            return out;
        }
        if entry.packets.len() >= self.cap {
            if let Some((_, old)) = entry.packets.pop_front() {
                self.spare.push(old);
            }
            out.dropped_oldest = true;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        entry.packets.push_back((now, buf));
        out
    }

    /// Reqids with queued packets or a recent Acquire.
    pub fn reqids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_reqid.keys().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_reqid.is_empty()
    }

    /// The SA of `reqid` is installed: hand every queued packet (oldest first) to `f` and forget
    /// the reqid. Returns how many packets were handed over.
    pub fn flush(&mut self, reqid: u32, mut f: impl FnMut(&[u8])) -> usize {
        let Some(p) = self.by_reqid.remove(&reqid) else { return 0 };
        let n = p.packets.len();
        for (_, buf) in p.packets {
            f(&buf);
            self.spare.push(buf);
        }
        n
    }

    /// Drop packets held longer than `max_hold` and forget reqids with nothing queued whose last
    /// Acquire is that old. Returns the number of packets dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        let max_hold = self.max_hold;
        let spare = &mut self.spare;
        self.by_reqid.retain(|_, p| {
            while let Some((t, _)) = p.packets.front() {
                if now.saturating_duration_since(*t) < max_hold {
                    break;
                }
                if let Some((_, b)) = p.packets.pop_front() {
                    spare.push(b);
                }
                dropped += 1;
            }
            !p.packets.is_empty() || now.saturating_duration_since(p.last_acquire) < max_hold
        });
        self.spare.truncate(self.cap.max(1) * 4);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> (TrapQueues, Instant) {
        (TrapQueues::new(Duration::from_secs(1), 3, Duration::from_secs(10)), Instant::now())
    }

    #[test]
    fn acquire_at_most_once_per_interval_per_reqid() {
        let (mut q, t0) = q();
        assert!(q.offer(t0, 7, b"a").acquire);
        assert!(!q.offer(t0 + Duration::from_millis(500), 7, b"b").acquire);
        assert!(q.offer(t0, 8, b"x").acquire, "other reqids are independent");
        assert!(!q.offer(t0 + Duration::from_millis(999), 7, b"c").acquire);
        assert!(q.offer(t0 + Duration::from_millis(1000), 7, b"d").acquire);
        assert!(!q.offer(t0 + Duration::from_millis(1999), 7, b"e").acquire);
        assert!(q.offer(t0 + Duration::from_millis(2000), 7, b"f").acquire);
    }

    #[test]
    fn queue_is_bounded_and_drops_oldest() {
        let (mut q, t0) = q();
        for (i, p) in [b"1", b"2", b"3"].iter().enumerate() {
            assert!(!q.offer(t0, 1, *p).dropped_oldest, "packet {i}");
        }
        assert!(q.offer(t0, 1, b"4").dropped_oldest);
        assert!(q.offer(t0, 1, b"5").dropped_oldest);
        let mut got = Vec::new();
        assert_eq!(q.flush(1, |p| got.push(p.to_vec())), 3);
        assert_eq!(got, vec![b"3".to_vec(), b"4".to_vec(), b"5".to_vec()]);
        assert_eq!(q.flush(1, |_| panic!("flushed twice")), 0);
        assert!(q.is_empty());
        // After a flush, a new miss acquires again at once.
        assert!(q.offer(t0, 1, b"6").acquire);
    }

    #[test]
    fn expiry_drops_stale_packets_and_forgets_reqid() {
        let (mut q, t0) = q();
        q.offer(t0, 1, b"old");
        q.offer(t0 + Duration::from_secs(5), 1, b"new");
        assert_eq!(q.expire(t0 + Duration::from_secs(10)), 1);
        assert_eq!(q.reqids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(q.expire(t0 + Duration::from_secs(15)), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn zero_capacity_only_acquires() {
        let mut q = TrapQueues::new(Duration::from_secs(1), 0, Duration::from_secs(10));
        let t0 = Instant::now();
        let o = q.offer(t0, 3, b"p");
        assert!(o.acquire && !o.dropped_oldest);
        assert_eq!(q.flush(3, |_| {}), 0);
    }
}

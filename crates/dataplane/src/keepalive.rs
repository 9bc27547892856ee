//! NAT keepalives (RFC 3948 section 2.3): a one-byte 0xFF datagram to a UDP-encapsulating peer
//! after `interval` without other outbound traffic to it, so the NAT mapping stays open. Pure
//! bookkeeping with an injected `now`; the outbound worker sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The keepalive payload.
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];

/// Last outbound transmission per (local, remote) pair of UDP-encapsulated SAs.
pub struct KeepaliveTracker {
    interval: Duration,
    last_tx: HashMap<(SocketAddr, SocketAddr), Instant>,
}

impl KeepaliveTracker {
    pub fn new(interval: Duration) -> Self {
        KeepaliveTracker { interval, last_tx: HashMap::new() }
    }

    /// Traffic went out to `remote` from `local` at `at` (e.g. an SA's last use).
    pub fn note_tx(&mut self, local: SocketAddr, remote: SocketAddr, at: Instant) {
        if let Some(t) = self.last_tx.get_mut(&(local, remote)) {
            *t = (*t).max(at);
        }
    }

    /// `peers` are the (local, remote) pairs that currently have UDP-encapsulated SAs. Calls
    /// `send` for each pair silent for `interval` (a pair seen for the first time starts its
    /// clock now) and forgets pairs that are gone.
    pub fn poll(
        &mut self,
        now: Instant,
        peers: impl IntoIterator<Item = (SocketAddr, SocketAddr)>,
        mut send: impl FnMut(SocketAddr, SocketAddr),
    ) {
        let mut seen: HashMap<(SocketAddr, SocketAddr), Instant> = HashMap::with_capacity(self.last_tx.len());
        for pair in peers {
            let last = self.last_tx.get(&pair).copied().unwrap_or(now);
            let last = if now.saturating_duration_since(last) >= self.interval {
                send(pair.0, pair.1);
                now
            } else {
                last
            };
            seen.insert(pair, last);
        }
        self.last_tx = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_only_after_silence() {
        let l: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let r: SocketAddr = "198.51.100.7:4500".parse().unwrap();
        let mut k = KeepaliveTracker::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let mut sent = Vec::new();
        k.poll(t0, [(l, r)], |a, b| sent.push((a, b)));
        assert!(sent.is_empty(), "clock starts when the pair appears");
        k.note_tx(l, r, t0 + Duration::from_secs(15));
        k.poll(t0 + Duration::from_secs(30), [(l, r)], |a, b| sent.push((a, b)));
        assert!(sent.is_empty(), "traffic 15 s ago");
        k.poll(t0 + Duration::from_secs(35), [(l, r)], |a, b| sent.push((a, b)));
        assert_eq!(sent, vec![(l, r)]);
        k.poll(t0 + Duration::from_secs(36), [(l, r)], |a, b| sent.push((a, b)));
        assert_eq!(sent.len(), 1, "a keepalive counts as traffic");
        k.poll(t0 + Duration::from_secs(100), [], |a, b| sent.push((a, b)));
        k.poll(t0 + Duration::from_secs(200), [(l, r)], |a, b| sent.push((a, b)));
        assert_eq!(sent.len(), 1, "a pair that went away starts over");
    }
}

//! Last responses of removed IKE SAs, to answer retransmissions of the request that ended them.
//!
//! When the peer deletes an IKE SA we answer and remove it at once. If that answer is lost, or
//! reaches the peer before it can match it (charon registers the redundant IKE SA of a lost rekey
//! collision with its SA manager only after it sent the Delete, and drops a faster answer as
//! unknown), the peer retransmits the Delete to an SA we no longer have and, unanswered, keeps its
//! half for minutes of retransmissions. RFC 7296 section 2.1 asks a responder to answer a
//! retransmitted request with the same response: a tombstone keeps that response (a few dozen
//! bytes, already encrypted) for a while after the SA is gone.

use crate::api::IkeSaId;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Longer than charon's default retransmission schedule (5 retransmits over about 165 s).
pub(crate) const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(180);
/// A bound, so that a churn of deletions cannot grow memory without end.
pub(crate) const MAX_TOMBSTONES: usize = 65_536;

struct Tomb {
    message_id: u32,
    datagrams: Vec<Vec<u8>>,
    peer: IpAddr,
}

#[derive(Default)]
pub(crate) struct Tombstones {
    map: HashMap<IkeSaId, Tomb>,
    /// (expiry, SA) in insertion order, which is expiry order.
    order: VecDeque<(Instant, IkeSaId)>,
}

impl Tombstones {
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.order.front() {
            if t > now && self.order.len() <= MAX_TOMBSTONES {
                break;
            }
            self.order.pop_front();
            self.map.remove(&id);
        }
    }

    /// Keep the response `datagrams` to request `message_id` of the removed SA `id`.
    pub(crate) fn bury(
        &mut self,
        now: Instant,
        id: IkeSaId,
        message_id: u32,
        datagrams: Vec<Vec<u8>>,
        peer: SocketAddr,
    ) {
        self.expire(now);
        if self.map.insert(id, Tomb { message_id, datagrams, peer: peer.ip() }).is_none() {
            self.order.push_back((now + TOMBSTONE_LIFETIME, id));
        }
    }

    /// The response to send again for a retransmitted request, if it is one.
    pub(crate) fn answer(
        &mut self,
        now: Instant,
        id: IkeSaId,
        message_id: u32,
        from: SocketAddr,
    ) -> Option<Vec<Vec<u8>>> {
        self.expire(now);
        let t = self.map.get(&id)?;
        (t.message_id == message_id && t.peer == from.ip()).then(|| t.datagrams.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_the_same_request_from_the_same_peer_until_expiry() {
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let mut t = Tombstones::default();
        t.bury(now, 7, 3, vec![b"resp".to_vec()], peer);
        assert_eq!(t.answer(now, 7, 3, peer), Some(vec![b"resp".to_vec()]));
        assert_eq!(t.answer(now, 7, 4, peer), None, "another Message ID");
        assert_eq!(t.answer(now, 8, 3, peer), None, "another SA");
        assert_eq!(t.answer(now, 7, 3, "192.0.2.2:4500".parse().unwrap()), None, "another peer");
        assert_eq!(t.answer(now + TOMBSTONE_LIFETIME, 7, 3, peer), None, "expired");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn bounded() {
        let now = Instant::now();
        let peer: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let mut t = Tombstones::default();
        for id in 0..(MAX_TOMBSTONES as u64 + 10) {
            t.bury(now, id, 0, vec![vec![0; 8]], peer);
        }
        assert!(t.len() <= MAX_TOMBSTONES + 1);
        assert_eq!(t.answer(now, 0, 0, peer), None, "the oldest went first");
    }
}

//! The receiving half: merges control events, live messages and bulk messages into one stream of
//! [`LinkEvent`]s.
//!
//! Live messages share a queue with the control events (so a live message can never be reported
//! before its connection's `PeerUp` or after its `PeerDown`), and bulk messages have their own,
//! read only when the first is empty. That is what keeps a backlog of large bulk messages from
//! delaying a live one at the receiver, as the stream priorities do on the wire. The price is that
//! bulk messages must be matched to their connection by generation number: see [`LinkRx::poll_recv`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;
use zeroize::Zeroizing;

use crate::stats::Counters;
use crate::{Channel, DownReason};

/// A received message still held by the link. The permit is its share of the receive budget,
/// returned when the message is handed to the caller (or dropped), which lets the reader take
/// more off the wire. Zeroizing, so a message dropped undelivered is wiped.
pub(crate) struct Held {
    pub generation: u64,
    pub bytes: Zeroizing<Vec<u8>>,
    pub permit: OwnedSemaphorePermit,
}

impl Held {
    fn into_bytes(mut self) -> Vec<u8> {
        drop(self.permit);
        std::mem::take(&mut *self.bytes)
    }
}

pub(crate) enum Ctl {
    Up(u64),
    Down(u64, DownReason),
    Live(Held),
}

/// What the link reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A connection to the peer is up. Every connection gets a new, larger `generation`; messages
    /// sent before this event (on either side) may have been lost, so the upper layer resyncs here.
    PeerUp { generation: u64 },
    /// The connection of `generation` is gone. Nothing more of it will be delivered.
    PeerDown { generation: u64, reason: DownReason },
    /// A message from the peer, in the order it was sent on its channel.
    Message { channel: Channel, bytes: Vec<u8> },
}

/// Why [`LinkRx::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("no event ready")]
    Empty,
    #[error("the link has stopped")]
    Closed,
}

/// Receives [`LinkEvent`]s. If it is not read, the link stops reading from the peer once the
/// receive budget is used up, and QUIC flow control then stops the peer's sender: a slow reader
/// slows the peer rather than growing memory. Dropping it discards what arrives afterwards.
pub struct LinkRx {
    ctl: mpsc::Receiver<Ctl>,
    bulk: mpsc::Receiver<Held>,
    /// Generation whose `PeerUp` was reported and whose `PeerDown` was not.
    up: Option<u64>,
    /// Newest generation whose `PeerUp` was reported.
    seen: u64,
    /// Bulk messages taken from the queue before their connection's `PeerUp` was reported.
    held: VecDeque<Held>,
    ready: VecDeque<LinkEvent>,
    stats: Arc<Counters>,
}

impl LinkRx {
    pub(crate) fn new(ctl: mpsc::Receiver<Ctl>, bulk: mpsc::Receiver<Held>, stats: Arc<Counters>) -> Self {
        LinkRx { ctl, bulk, up: None, seen: 0, held: VecDeque::new(), ready: VecDeque::new(), stats }
    }

    /// The next event; `None` once the link has stopped (all [`LinkTx`](crate::LinkTx) handles
    /// dropped) and everything before that was delivered. Cancel-safe.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is ready now.
    pub fn try_recv(&mut self) -> Result<LinkEvent, TryRecvError> {
        match self.poll_recv(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(ev)) => Ok(ev),
            Poll::Ready(None) => Err(TryRecvError::Closed),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }

    /// The merge. Invariants the link's tasks provide: a generation's `Up` is queued before any of
    /// its messages, and its `Down` only after its readers are gone (so after its last message was
    /// queued); generations only grow. From those, a bulk message of generation `g` is:
    /// delivered if `g` is up; held back if `g`'s `Up` is still in the control queue (`g > seen`);
    /// and otherwise stale (its `Down` was reported), which cannot happen given the drain at `Down`
    /// but is counted and dropped rather than trusted.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Poll::Ready(Some(ev));
            }
            match self.ctl.poll_recv(cx) {
                Poll::Ready(Some(Ctl::Up(generation))) => {
                    self.up = Some(generation);
                    self.seen = generation;
                    return Poll::Ready(Some(LinkEvent::PeerUp { generation }));
                }
                Poll::Ready(Some(Ctl::Live(m))) => {
                    if self.up == Some(m.generation) {
                        return Poll::Ready(Some(message(Channel::Live, m)));
                    }
                    self.stats.live.stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Poll::Ready(Some(Ctl::Down(generation, reason))) => {
                    self.drain_bulk(generation);
                    if self.up == Some(generation) {
                        self.up = None;
                    }
                    self.ready.push_back(LinkEvent::PeerDown { generation, reason });
                    continue;
                }
                Poll::Ready(None) => {
                    // The link stopped: its final `Down` (if any) came before this.
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            if let Some(front) = self.held.front() {
                if self.up == Some(front.generation) {
                    let m = self.held.pop_front().map(|m| message(Channel::Bulk, m));
                    return Poll::Ready(m);
                }
                if front.generation > self.seen {
                    // Its `Up` is on the way in the control queue, whose waker is registered.
                    return Poll::Pending;
                }
                self.held.pop_front();
                self.stats.bulk.stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            match self.bulk.poll_recv(cx) {
                Poll::Ready(Some(m)) => {
                    if self.up == Some(m.generation) {
                        return Poll::Ready(Some(message(Channel::Bulk, m)));
                    }
                    // Held or counted stale by the branch above on the next turn.
                    self.held.push_back(m);
                    continue;
                }
                // The bulk queue closes with the link; the control queue reports that.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// At `Down(generation)`: every bulk message of that connection is already queued (its reader
    /// is gone), so deliver them before the `PeerDown`, keeping their order.
    fn drain_bulk(&mut self, generation: u64) {
        let up = self.up == Some(generation);
        let mut later = VecDeque::new();
        let queued = std::iter::from_fn(|| self.bulk.try_recv().ok());
        for m in self.held.drain(..).chain(queued) {
            if m.generation == generation && up {
                self.ready.push_back(message(Channel::Bulk, m));
            } else if m.generation > generation {
                later.push_back(m);
            } else {
                self.stats.bulk.stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.held = later;
    }
}

fn message(channel: Channel, m: Held) -> LinkEvent {
    LinkEvent::Message { channel, bytes: m.into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    struct Rig {
        ctl: mpsc::Sender<Ctl>,
        bulk: mpsc::Sender<Held>,
        budget: Arc<Semaphore>,
        rx: LinkRx,
    }

    fn rig() -> Rig {
        let (ctl, ctl_rx) = mpsc::channel(64);
        let (bulk, bulk_rx) = mpsc::channel(64);
        Rig {
            ctl,
            bulk,
            budget: Arc::new(Semaphore::new(1 << 20)),
            rx: LinkRx::new(ctl_rx, bulk_rx, Default::default()),
        }
    }

    impl Rig {
        fn held(&self, generation: u64, b: u8) -> Held {
            let permit = self.budget.clone().try_acquire_many_owned(1).unwrap();
            Held { generation, bytes: Zeroizing::new(vec![b]), permit }
        }
        fn up(&self, g: u64) {
            self.ctl.try_send(Ctl::Up(g)).ok().unwrap();
        }
        fn down(&self, g: u64) {
            self.ctl.try_send(Ctl::Down(g, DownReason::TimedOut)).ok().unwrap();
        }
        fn live(&self, g: u64, b: u8) {
            self.ctl.try_send(Ctl::Live(self.held(g, b))).ok().unwrap();
        }
        fn bulk(&self, g: u64, b: u8) {
            self.bulk.try_send(self.held(g, b)).ok().unwrap();
        }
        fn drain(&mut self) -> Vec<String> {
            let mut out = vec![];
            while let Ok(ev) = self.rx.try_recv() {
                out.push(match ev {
                    LinkEvent::PeerUp { generation } => format!("up{generation}"),
                    LinkEvent::PeerDown { generation, .. } => format!("down{generation}"),
                    LinkEvent::Message { channel: Channel::Live, bytes } => format!("L{}", bytes[0]),
                    LinkEvent::Message { channel: Channel::Bulk, bytes } => format!("B{}", bytes[0]),
                });
            }
            out
        }
    }

    #[test]
    fn live_overtakes_queued_bulk_and_order_holds_per_channel() {
        let mut r = rig();
        r.up(1);
        r.bulk(1, 1);
        r.bulk(1, 2);
        r.live(1, 1);
        r.live(1, 2);
        assert_eq!(r.drain(), ["up1", "L1", "L2", "B1", "B2"]);
    }

    #[test]
    fn bulk_of_a_new_generation_waits_for_its_peer_up() {
        let mut r = rig();
        // The bulk message is queued, but its Up not yet: nothing may be delivered.
        r.bulk(1, 7);
        assert_eq!(r.drain(), Vec::<String>::new());
        r.up(1);
        assert_eq!(r.drain(), ["up1", "B7"]);
    }

    #[test]
    fn peer_down_comes_after_the_connections_bulk_and_before_the_next() {
        let mut r = rig();
        r.up(1);
        r.bulk(1, 1);
        r.bulk(1, 2);
        r.down(1);
        r.up(2);
        r.bulk(2, 3);
        r.live(2, 4);
        assert_eq!(r.drain(), ["up1", "B1", "B2", "down1", "up2", "L4", "B3"]);
        assert_eq!(r.rx.stats.bulk.stale.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn budget_is_returned_on_delivery() {
        let mut r = rig();
        let before = r.budget.available_permits();
        r.up(1);
        r.bulk(1, 1);
        assert_eq!(r.budget.available_permits(), before - 1);
        r.drain();
        assert_eq!(r.budget.available_permits(), before);
    }

    #[test]
    fn closed_link_ends_the_stream() {
        let r = rig();
        r.up(1);
        r.down(1);
        let Rig { ctl, bulk, mut rx, .. } = r;
        drop((ctl, bulk));
        assert!(matches!(rx.try_recv(), Ok(LinkEvent::PeerUp { generation: 1 })));
        assert!(matches!(rx.try_recv(), Ok(LinkEvent::PeerDown { generation: 1, .. })));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }
}

//! Events from the dataplane to the control plane, and the non-blocking sink that delivers them.
//! A worker thread never waits for the control plane, yet the two kinds of event are treated
//! differently:
//!
//! - IKE datagrams from the NAT-T port go through a bounded channel: anyone can send them, so a
//!   control plane that falls behind drops (and counts) them, and IKE retransmits.
//! - Control events (lifetimes, Acquires, unknown SPIs) go through their own unbounded channel
//!   and are never dropped: a lost soft-limit event would let an SA expire without a rekey. An
//!   event equal to one still waiting (same kind and SA, reqid or SPI) is merged into it, so what
//!   waits is bounded by the number of SAs and reqids, whatever the rate. Only INVALID_SPI
//!   reports, whose keys come from unauthenticated packets, have a cap on what may wait.
//!
//! The receiver hands out control events before datagrams, so a datagram flood delays them by at
//! most one datagram.

use crate::counters::{add, Counters};
use std::collections::HashSet;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tandem_esp::selector::PacketSelector;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneEvent {
    /// An IKE message arrived on a UDP encapsulation socket (non-ESP marker removed).
    IkeDatagram { local: SocketAddr, remote: SocketAddr, data: Vec<u8> },
    /// A packet matched a Protect policy with no SA: negotiate one for `reqid`. `packet` is the
    /// triggering packet's selector (for the first, most specific traffic selector, RFC 7296
    /// section 2.9).
    Acquire { reqid: u32, packet: PacketSelector },
    /// ESP arrived for an SPI we do not have (rate-limited per SPI and remote): the IKE engine
    /// may send INVALID_SPI inside the IKE SA with that peer.
    InvalidSpi { spi: u32, remote: std::net::IpAddr },
    /// A CHILD SA reached a soft lifetime (bytes, packets, time or sequence space): rekey it.
    /// Reported once per SA pair.
    SoftLimit { reqid: u32, spi_in: u32, spi_out: u32 },
    /// A CHILD SA reached a hard lifetime: the dataplane removed it; delete it in IKE.
    HardLimit { reqid: u32, spi_in: u32, spi_out: u32 },
}

/// What makes two waiting control events the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ControlKey {
    Acquire(u32),
    InvalidSpi(u32, IpAddr),
    Soft(u32),
    Hard(u32),
}

impl ControlKey {
    /// `None` for IKE datagrams, which are not control events.
    fn of(ev: &DataplaneEvent) -> Option<ControlKey> {
        match *ev {
            DataplaneEvent::IkeDatagram { .. } => None,
            DataplaneEvent::Acquire { reqid, .. } => Some(ControlKey::Acquire(reqid)),
            DataplaneEvent::InvalidSpi { spi, remote } => Some(ControlKey::InvalidSpi(spi, remote)),
            DataplaneEvent::SoftLimit { spi_in, .. } => Some(ControlKey::Soft(spi_in)),
            DataplaneEvent::HardLimit { spi_in, .. } => Some(ControlKey::Hard(spi_in)),
        }
    }
}

/// INVALID_SPI reports that may wait for the control plane at once (they are rate-limited at
/// the source too); beyond this they are dropped and counted.
pub const MAX_PENDING_INVALID_SPI: usize = 1024;

/// The control events sent and not yet received, shared by the sink and the receiver.
#[derive(Default)]
struct Pending {
    keys: HashSet<ControlKey>,
    invalid_spi: usize,
}

fn relock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Non-blocking, counted delivery of events (see the module documentation).
#[derive(Clone)]
pub struct EventSink {
    datagrams: mpsc::Sender<DataplaneEvent>,
    control: mpsc::UnboundedSender<DataplaneEvent>,
    pending: Arc<Mutex<Pending>>,
    counters: Arc<Counters>,
}

/// The control plane's end: `recv` yields control events first, then IKE datagrams.
pub struct EventReceiver {
    datagrams: mpsc::Receiver<DataplaneEvent>,
    control: mpsc::UnboundedReceiver<DataplaneEvent>,
    pending: Arc<Mutex<Pending>>,
    control_closed: bool,
}

/// A sink and its receiver; at most `datagram_capacity` IKE datagrams wait.
pub fn event_channel(datagram_capacity: usize, counters: Arc<Counters>) -> (EventSink, EventReceiver) {
    let (dtx, drx) = mpsc::channel(datagram_capacity.max(1));
    let (ctx, crx) = mpsc::unbounded_channel();
    let pending = Arc::new(Mutex::new(Pending::default()));
    (
        EventSink { datagrams: dtx, control: ctx, pending: pending.clone(), counters },
        EventReceiver { datagrams: drx, control: crx, pending, control_closed: false },
    )
}

impl EventSink {
    pub fn send(&self, ev: DataplaneEvent) {
        let Some(key) = ControlKey::of(&ev) else {
            if self.datagrams.try_send(ev).is_err() {
                add(&self.counters.drop_events, 1);
            }
            return;
        };
        let mut p = relock(&self.pending);
        if p.keys.contains(&key) {
            add(&self.counters.events_coalesced, 1);
            return;
        }
        if matches!(key, ControlKey::InvalidSpi(..)) {
            if p.invalid_spi >= MAX_PENDING_INVALID_SPI {
                add(&self.counters.drop_events, 1);
                return;
            }
            p.invalid_spi += 1;
        }
        // Fails only when the receiver is gone, and then nobody is left to tell.
        if self.control.send(ev).is_ok() {
            p.keys.insert(key);
        }
    }
}

impl EventReceiver {
    /// A control event was handed out: an equal one may be queued again.
    fn taken(&self, ev: &DataplaneEvent) {
        if let Some(key) = ControlKey::of(ev) {
            let mut p = relock(&self.pending);
            p.keys.remove(&key);
            if matches!(key, ControlKey::InvalidSpi(..)) {
                p.invalid_spi -= 1;
            }
        }
    }

    /// The next event, control events first; `None` once the dataplane is gone and everything
    /// it sent was received.
    pub async fn recv(&mut self) -> Option<DataplaneEvent> {
        poll_fn(|cx| {
            if !self.control_closed {
                match self.control.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => {
                        self.taken(&ev);
                        return Poll::Ready(Some(ev));
                    }
                    Poll::Ready(None) => self.control_closed = true,
                    Poll::Pending => {}
                }
            }
            match self.datagrams.poll_recv(cx) {
                Poll::Ready(Some(ev)) => Poll::Ready(Some(ev)),
                Poll::Ready(None) if self.control_closed => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// The next event if one is waiting, control events first.
    pub fn try_recv(&mut self) -> Result<DataplaneEvent, TryRecvError> {
        match self.control.try_recv() {
            Ok(ev) => {
                self.taken(&ev);
                return Ok(ev);
            }
            Err(TryRecvError::Disconnected) => self.control_closed = true,
            Err(TryRecvError::Empty) => {}
        }
        match self.datagrams.try_recv() {
            Err(TryRecvError::Disconnected) if !self.control_closed => Err(TryRecvError::Empty),
            r => r,
        }
    }
}

/// Rate limit for InvalidSpi reports: at most one per (SPI, remote) per interval, remembered in a
/// fixed-size table (a flood of random SPIs cannot grow memory; a collision only lets one extra
/// report through), and at most `burst` reports per interval overall.
pub struct InvalidSpiLimiter {
    interval: Duration,
    slots: Box<[Option<(u32, std::net::IpAddr, Instant)>; 256]>,
    window_start: Option<Instant>,
    in_window: u32,
    burst: u32,
}

impl InvalidSpiLimiter {
    pub fn new(interval: Duration, burst: u32) -> Self {
        InvalidSpiLimiter { interval, slots: Box::new([None; 256]), window_start: None, in_window: 0, burst }
    }

    /// Should this unknown SPI from `remote` be reported now?
    pub fn allow(&mut self, now: Instant, spi: u32, remote: std::net::IpAddr) -> bool {
        let idx = slot_index(spi, remote);
        if let Some((s, r, t)) = self.slots[idx] {
            if s == spi && r == remote && now.saturating_duration_since(t) < self.interval {
                return false;
            }
        }
        match self.window_start {
            Some(w) if now.saturating_duration_since(w) < self.interval => {
                if self.in_window >= self.burst {
                    return false;
                }
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        self.in_window += 1;
        self.slots[idx] = Some((spi, remote, now));
        true
    }
}

fn slot_index(spi: u32, remote: std::net::IpAddr) -> usize {
    let a = match remote {
        std::net::IpAddr::V4(v) => u32::from(v),
        std::net::IpAddr::V6(v) => {
            let o = v.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]]) ^ u32::from_be_bytes([o[0], o[1], o[2], o[3]])
        }
    };
    (spi.wrapping_mul(0x9e37_79b9) ^ a.wrapping_mul(0x85eb_ca6b)).rotate_left(7) as usize & 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_spi_reports_are_rate_limited() {
        let mut l = InvalidSpiLimiter::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let peer: std::net::IpAddr = [192, 0, 2, 1].into();
        assert!(l.allow(t0, 0x1000, peer));
        assert!(!l.allow(t0 + Duration::from_millis(10), 0x1000, peer));
        assert!(l.allow(t0 + Duration::from_millis(10), 0x1001, peer));
        assert!(l.allow(t0 + Duration::from_millis(20), 0x1002, peer));
        assert!(!l.allow(t0 + Duration::from_millis(30), 0x1003, peer), "burst exhausted");
        assert!(l.allow(t0 + Duration::from_millis(1000), 0x1000, peer), "next interval");
    }

    fn sel() -> PacketSelector {
        let ip: IpAddr = [10, 0, 0, 1].into();
        PacketSelector { src: ip, dst: ip, protocol: 1, src_port: None, dst_port: None }
    }

    fn soft(spi_in: u32) -> DataplaneEvent {
        DataplaneEvent::SoftLimit { reqid: 1, spi_in, spi_out: spi_in + 1 }
    }

    fn datagram(i: u32) -> DataplaneEvent {
        DataplaneEvent::IkeDatagram {
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "192.0.2.2:4500".parse().unwrap(),
            data: i.to_be_bytes().to_vec(),
        }
    }

    #[test]
    fn a_datagram_flood_cannot_drop_a_control_event() {
        let counters = Arc::new(Counters::default());
        let (sink, mut rx) = event_channel(8, counters.clone());
        let peer: IpAddr = [192, 0, 2, 2].into();
        // Datagrams fill the channel, then lifetime events and an Acquire arrive in the flood.
        for i in 0..10_000u32 {
            sink.send(datagram(i));
            if i % 1000 == 500 {
                sink.send(soft(0x1000 + i));
                sink.send(DataplaneEvent::HardLimit { reqid: 2, spi_in: 0x2000 + i, spi_out: 1 });
                sink.send(DataplaneEvent::InvalidSpi { spi: 0x3000 + i, remote: peer });
            }
        }
        sink.send(DataplaneEvent::Acquire { reqid: 9, packet: sel() });
        assert_eq!(counters.snapshot().drop_events, 10_000 - 8, "datagrams beyond the capacity");
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            got.push(ev);
        }
        let control: Vec<_> =
            got.iter().filter(|e| !matches!(e, DataplaneEvent::IkeDatagram { .. })).collect();
        assert_eq!(control.len(), 31, "every control event: {control:?}");
        for i in (0..10_000u32).filter(|i| i % 1000 == 500) {
            assert!(control.contains(&&soft(0x1000 + i)));
        }
        // Control events come first, then the datagrams that fitted, in order.
        assert!(got[..31].iter().all(|e| !matches!(e, DataplaneEvent::IkeDatagram { .. })));
        assert_eq!(got[31..], (0..8).map(datagram).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn equal_control_events_merge_while_waiting_and_queue_again_once_received() {
        let counters = Arc::new(Counters::default());
        let (sink, mut rx) = event_channel(1, counters.clone());
        for _ in 0..100 {
            sink.send(soft(0x1000));
            sink.send(DataplaneEvent::Acquire { reqid: 3, packet: sel() });
        }
        sink.send(soft(0x1001));
        assert_eq!(counters.snapshot().events_coalesced, 198);
        assert_eq!(rx.try_recv().unwrap(), soft(0x1000));
        assert!(matches!(rx.try_recv().unwrap(), DataplaneEvent::Acquire { reqid: 3, .. }));
        sink.send(soft(0x1000));
        assert_eq!(rx.try_recv().unwrap(), soft(0x1001));
        assert_eq!(rx.try_recv().unwrap(), soft(0x1000), "received, so it may come again");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(counters.snapshot().drop_events, 0);
    }

    #[test]
    fn invalid_spi_reports_waiting_are_capped() {
        let counters = Arc::new(Counters::default());
        let (sink, mut rx) = event_channel(1, counters.clone());
        let peer: IpAddr = [198, 51, 100, 7].into();
        let n = MAX_PENDING_INVALID_SPI as u32 + 10;
        for spi in 0..n {
            sink.send(DataplaneEvent::InvalidSpi { spi: 0x1_0000 + spi, remote: peer });
        }
        sink.send(soft(0x1000));
        assert_eq!(counters.snapshot().drop_events, 10);
        assert_eq!(rx.try_recv().unwrap(), DataplaneEvent::InvalidSpi { spi: 0x1_0000, remote: peer });
        // One was received: room for one more.
        sink.send(DataplaneEvent::InvalidSpi { spi: 0x2_0000, remote: peer });
        assert_eq!(counters.snapshot().drop_events, 10);
        let mut rest = 0;
        let mut saw_soft = false;
        while let Ok(ev) = rx.try_recv() {
            saw_soft |= ev == soft(0x1000);
            rest += 1;
        }
        assert!(saw_soft, "lifetime events are not capped");
        assert_eq!(rest, MAX_PENDING_INVALID_SPI + 1);
    }

    #[test]
    fn recv_prefers_control_events_and_ends_after_the_dataplane_is_gone() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (sink, mut rx) = event_channel(4, Arc::new(Counters::default()));
            sink.send(datagram(1));
            sink.send(soft(0x1000));
            assert_eq!(rx.recv().await, Some(soft(0x1000)));
            assert_eq!(rx.recv().await, Some(datagram(1)));
            // A control event sent from a worker thread wakes a waiting receiver.
            let s2 = sink.clone();
            let t = std::thread::spawn(move || s2.send(soft(0x1001)));
            assert_eq!(rx.recv().await, Some(soft(0x1001)));
            t.join().unwrap();
            sink.send(datagram(2));
            drop(sink);
            assert_eq!(rx.recv().await, Some(datagram(2)));
            assert_eq!(rx.recv().await, None);
        });
    }
}

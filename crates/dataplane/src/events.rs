//! Events from the dataplane to the control plane, and the non-blocking sink that delivers them:
//! a worker thread never waits for the control plane, so a full channel drops (and counts).

use crate::counters::{add, Counters};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_esp::selector::PacketSelector;
use tokio::sync::mpsc;

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

/// Non-blocking, counted delivery of events.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<DataplaneEvent>,
    counters: Arc<Counters>,
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<DataplaneEvent>, counters: Arc<Counters>) -> Self {
        EventSink { tx, counters }
    }

    pub fn send(&self, ev: DataplaneEvent) {
        if self.tx.try_send(ev).is_err() {
            add(&self.counters.drop_events, 1);
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

    #[test]
    fn sink_counts_drops_when_full() {
        let counters = Arc::new(Counters::default());
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(tx, counters.clone());
        sink.send(DataplaneEvent::SoftLimit { reqid: 1, spi_in: 2, spi_out: 3 });
        sink.send(DataplaneEvent::HardLimit { reqid: 1, spi_in: 2, spi_out: 3 });
        assert_eq!(counters.snapshot().drop_events, 1);
        assert_eq!(rx.try_recv().unwrap(), DataplaneEvent::SoftLimit { reqid: 1, spi_in: 2, spi_out: 3 });
    }
}

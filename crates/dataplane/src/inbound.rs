//! The inbound worker: wire → demux → open → TUN. One thread polls every UDP encapsulation socket
//! and the raw ESP sockets; per batch it loads the SAD snapshot once, opens each ESP packet in
//! place in the receive buffer (a UDP GRO entry holds many packets of one stride), copies the
//! inner packet into the TUN frame of its flow (`gro`: TCP segments of a flow coalesced into one
//! 64 KiB frame) and writes the frames.

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::RecvMeta;
use tandem_esp::error::DropReason;
use tandem_esp::esp_packet::peek_spi;
use tandem_esp::gro::{self, Coalescer};
use tandem_esp::ip::{recompute_l4_checksum, write_ip_header};
use tandem_esp::open::open_sa;
use tandem_esp::sa::Mode;
use tandem_esp::sad::SadSnapshot;

use crate::counters::add;
use crate::demux::{classify, NattKind};
use crate::events::{DataplaneEvent, InvalidSpiLimiter};
use crate::raw::RawEspSocket;
use crate::shared::{Shared, TunTable};
use crate::sys::MMSG_BATCH;
use crate::tun::Tun;
use crate::worker::Stage;

/// UDP receive entries per call and the size of each (room for a full GRO train of 64 datagrams).
const UDP_SLOTS: usize = 8;
const UDP_SLOT_LEN: usize = 64 * 1500;
/// Raw socket datagrams per call.
const RAW_SLOT_LEN: usize = 2048;
// The frames' header is the one the TUN was opened with.
const _: () = assert!(gro::HDR == tun_rs::VIRTIO_NET_HDR_LEN);

/// TUN frames per batch (a frame holds one packet or a coalesced flow of up to 64 KiB).
const TUN_BATCH: usize = 128;
/// Receive calls per socket before looking at the other sockets.
const ROUNDS: usize = 16;

/// Pending writes to one TUN, coalesced per flow (see `gro`).
struct TunOut {
    tun: Arc<Tun>,
    frames: Coalescer,
    /// Where a transport-mode packet is rebuilt (IP header + payload) before it is queued.
    assemble: Vec<u8>,
}

impl TunOut {
    fn new(tun: Arc<Tun>) -> TunOut {
        let frames = Coalescer::new(TUN_BATCH, tun.offload());
        TunOut { tun, frames, assemble: Vec::with_capacity(65536) }
    }

    /// Queue one inner IP packet.
    fn push(&mut self, shared: &Shared, pkt: &[u8]) {
        if self.frames.is_full() {
            self.flush(shared);
        }
        if !self.frames.push(pkt) {
            add(&shared.counters.tun_write_errors, 1);
        }
    }

    fn flush(&mut self, shared: &Shared) {
        if self.frames.is_empty() {
            return;
        }
        let c = &shared.counters;
        let (tun, mut packets, mut bytes, mut errors) = (&self.tun, 0u64, 0u64, 0u64);
        let header = if tun.offload() { gro::HDR } else { 0 };
        // Counted per packet, as before coalescing: a failed frame loses all it carries.
        self.frames.drain(|frame, segs| match tun.write_frame(frame) {
            Ok(_) => {
                packets += segs as u64;
                bytes += (frame.len() - header) as u64;
            }
            Err(e) => {
                tracing::debug!(target: "dataplane", "TUN write: {e}");
                errors += segs as u64;
            }
        });
        add(&c.tun_tx_packets, packets);
        add(&c.tun_tx_bytes, bytes);
        add(&c.tun_write_errors, errors);
    }
}

pub struct Inbound {
    shared: Arc<Shared>,
    raw: Vec<Arc<RawEspSocket>>,
    udp_bufs: Vec<Vec<u8>>,
    raw_bufs: Vec<Vec<u8>>,
    outs: Vec<TunOut>,
    table: Arc<TunTable>,
    invalid_spi: InvalidSpiLimiter,
    generation: u64,
}

impl Stage for Inbound {
    /// The interface table changes only what is written to, not what is polled.
    fn refresh(&mut self) -> bool {
        let g = self.shared.tuns_generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.table = self.shared.tuns.load_full();
            self.outs = self.table.list.iter().map(|e| TunOut::new(e.tun.clone())).collect();
        }
        false
    }

    /// The waker, the UDP encapsulation sockets, the raw ESP sockets.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.shared.wake_in.raw_fd()];
        fds.extend(self.shared.udp.iter().map(|s| s.raw_fd()));
        fds.extend(self.raw.iter().map(|s| s.raw_fd()));
        fds
    }

    fn serve(&mut self, now: Instant, ready: &dyn Fn(usize) -> bool) {
        if ready(0) {
            self.shared.wake_in.drain();
        }
        let udp = self.shared.udp.len();
        for i in 0..udp {
            if ready(1 + i) {
                self.drain_udp(now, i);
            }
        }
        for i in 0..self.raw.len() {
            if ready(1 + udp + i) {
                self.drain_raw(now, i);
            }
        }
    }
}

impl Inbound {
    pub fn new(shared: Arc<Shared>, raw: Vec<Arc<RawEspSocket>>) -> Inbound {
        let table = shared.tuns.load_full();
        let outs = table.list.iter().map(|e| TunOut::new(e.tun.clone())).collect();
        let invalid_spi = InvalidSpiLimiter::new(shared.cfg.invalid_spi_interval, 64);
        Inbound {
            shared,
            raw,
            udp_bufs: vec![vec![0u8; UDP_SLOT_LEN]; UDP_SLOTS],
            raw_bufs: vec![vec![0u8; RAW_SLOT_LEN]; MMSG_BATCH],
            outs,
            table,
            invalid_spi,
            // Never a real generation: the first `refresh` reloads the table (it may have
            // changed since it was loaded above).
            generation: u64::MAX,
        }
    }

    fn drain_udp(&mut self, now: Instant, idx: usize) {
        let shared = self.shared.clone();
        let sock = shared.udp[idx].clone();
        let mut meta = [RecvMeta::default(); UDP_SLOTS];
        for _ in 0..ROUNDS {
            let n = {
                let mut iovs: [IoSliceMut<'_>; UDP_SLOTS] = {
                    let mut it = self.udp_bufs.iter_mut();
                    std::array::from_fn(|_| {
                        IoSliceMut::new(it.next().map(|b| b.as_mut_slice()).unwrap_or(&mut []))
                    })
                };
                match sock.recv(&mut iovs, &mut meta) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(target: "dataplane", "UDP receive: {e}");
                        break;
                    }
                }
            };
            add(&shared.counters.rx_batches, 1);
            let sad = shared.sad.snapshot();
            let mut datagrams = 0u64;
            for (m, buf) in meta.iter().zip(self.udp_bufs.iter_mut()).take(n) {
                let local = sock.local_of(m);
                let stride = m.stride.max(1);
                let len = m.len.min(buf.len());
                if len == 0 {
                    // An empty datagram yields no chunk below: count it as the runt it is.
                    datagrams += 1;
                    add(&shared.counters.drop_runt, 1);
                    continue;
                }
                for seg in buf[..len].chunks_mut(stride) {
                    datagrams += 1;
                    match classify(seg) {
                        NattKind::Ike(ike) => {
                            add(&shared.counters.ike_rx, 1);
                            shared.events.send(DataplaneEvent::IkeDatagram {
                                local,
                                remote: m.addr,
                                data: ike.to_vec(),
                            });
                        }
                        NattKind::Keepalive => add(&shared.counters.nat_keepalive_rx, 1),
                        NattKind::Runt => add(&shared.counters.drop_runt, 1),
                        NattKind::Esp(_) => process_esp(
                            &shared,
                            &sad,
                            &self.table,
                            &mut self.outs,
                            &mut self.invalid_spi,
                            now,
                            seg,
                            m.addr,
                        ),
                    }
                }
            }
            add(&shared.counters.rx_datagrams, datagrams);
            self.flush_tuns();
            if n < UDP_SLOTS {
                break;
            }
        }
    }

    fn drain_raw(&mut self, now: Instant, idx: usize) {
        let shared = self.shared.clone();
        let sock = self.raw[idx].clone();
        let mut out = [(0usize, 0usize, None::<IpAddr>); MMSG_BATCH];
        for _ in 0..ROUNDS {
            let n = {
                let mut slices: [&mut [u8]; MMSG_BATCH] = {
                    let mut it = self.raw_bufs.iter_mut();
                    std::array::from_fn(|_| it.next().map(|b| b.as_mut_slice()).unwrap_or(&mut []))
                };
                match sock.recv(&mut slices, &mut out) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(target: "dataplane", "raw ESP receive: {e}");
                        break;
                    }
                }
            };
            add(&shared.counters.rx_batches, 1);
            add(&shared.counters.rx_datagrams, n as u64);
            let sad = shared.sad.snapshot();
            for (&(start, len, src), buf) in out.iter().zip(self.raw_bufs.iter_mut()).take(n) {
                let (Some(src), true) = (src, len > 0 && start + len <= buf.len()) else {
                    add(&shared.counters.drop_runt, 1);
                    continue;
                };
                let seg = &mut buf[start..start + len];
                if seg.len() < tandem_wire::esp::EspHeader::LEN {
                    add(&shared.counters.drop_runt, 1);
                    continue;
                }
                let remote = SocketAddr::new(src, 0);
                process_esp(
                    &shared,
                    &sad,
                    &self.table,
                    &mut self.outs,
                    &mut self.invalid_spi,
                    now,
                    seg,
                    remote,
                );
            }
            self.flush_tuns();
            if n < MMSG_BATCH {
                break;
            }
        }
    }

    fn flush_tuns(&mut self) {
        for o in &mut self.outs {
            o.flush(&self.shared);
        }
    }
}

/// Open one ESP packet (in place) and queue its inner packet for the right TUN.
#[allow(clippy::too_many_arguments)]
fn process_esp(
    shared: &Shared,
    sad: &SadSnapshot,
    table: &TunTable,
    outs: &mut [TunOut],
    limiter: &mut InvalidSpiLimiter,
    now: Instant,
    pkt: &mut [u8],
    remote: SocketAddr,
) {
    let c = &shared.counters;
    add(&c.esp_rx_packets, 1);
    add(&c.esp_rx_bytes, pkt.len() as u64);
    let Some(spi) = peek_spi(pkt) else {
        add(&c.drop_runt, 1);
        return;
    };
    let Some(sa) = sad.inbound(spi) else {
        add(&c.drop_unknown_spi, 1);
        shared.sad.global().count_drop(DropReason::NoSa(spi));
        if limiter.allow(now, spi, remote.ip()) {
            add(&c.invalid_spi_reports, 1);
            shared.events.send(DataplaneEvent::InvalidSpi { spi, remote: remote.ip() });
        }
        return;
    };
    let opened = match open_sa(sa, pkt) {
        Ok(o) => {
            shared.sad.confirm_received(sa);
            o
        }
        Err(reason) => {
            shared.sad.global().count_drop(reason);
            match reason {
                DropReason::PolicyMismatch => add(&c.drop_inbound_policy, 1),
                DropReason::InnerMalformed | DropReason::BadNextHeader(_) => add(&c.drop_malformed_inner, 1),
                _ => add(&c.drop_open_error, 1),
            }
            return;
        }
    };
    let Some(out) = outs.get_mut(table.for_reqid(sa.reqid())) else {
        add(&c.tun_write_errors, 1);
        return;
    };
    let payload = &pkt[opened.payload.clone()];
    match sa.mode() {
        Mode::Tunnel => out.push(shared, payload),
        Mode::Transport => {
            // Rebuild the IP packet the kernel would have delivered: from the peer to us.
            let (src, dst) = (sa.remote().ip(), sa.local().ip());
            let mut buf = std::mem::take(&mut out.assemble);
            buf.clear();
            buf.resize(40, 0);
            let ok = match write_ip_header(&mut buf, src, dst, opened.next_header, payload.len()) {
                Some(hl) => {
                    buf.truncate(hl);
                    buf.extend_from_slice(payload);
                    if sa.udp_encap() {
                        // Behind NAT the peer computed its TCP/UDP checksum over its own,
                        // private addresses (RFC 3948 section 3.1.2): recompute it over the
                        // addresses we deliver.
                        recompute_l4_checksum(&mut buf);
                    }
                    out.push(shared, &buf);
                    true
                }
                None => false,
            };
            out.assemble = buf;
            if !ok {
                add(&c.drop_malformed_inner, 1);
                return;
            }
        }
    }
    add(&c.esp_rx_ok, 1);
}

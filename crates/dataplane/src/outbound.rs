//! The outbound worker: TUN → policy → seal → wire. One thread; per batch it loads the SAD and SPD
//! snapshots once, reads every queued packet from every TUN, seals in place in reused buffers and
//! hands the ESP packets to the egress batches (UDP GSO / sendmmsg).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_esp::error::SealError;
use tandem_esp::ip::split_ip;
use tandem_esp::sa::{Mode, OutboundSa};
use tandem_esp::seal::seal_in_place;
use tandem_esp::selector::packet_selector;
use tandem_esp::spd::{lookup_outbound, LookupResult};

use crate::acquire::TrapQueues;
use crate::counters::{add, Counters};
use crate::egress::Egress;
use crate::events::DataplaneEvent;
use crate::shared::{Shared, TunTable};
use crate::tun::TUN_SCRATCH_LEN;
use crate::worker::Stage;

/// Bytes kept free in front of each packet read from the TUN: ESP header and the longest IV.
pub const OUT_HEADROOM: usize = 64;
/// Packet buffers per batch (a 64 KiB offload super-frame splits into at most ~48 packets at
/// MSS 1356; with small MSS more, hence the margin).
const BATCH: usize = 256;
/// Keep reading while at least this many buffers are free.
const MIN_FREE: usize = 128;

/// Per-batch counts added to the shared counters once per batch.
#[derive(Default)]
struct Tally {
    rx_packets: u64,
    rx_bytes: u64,
    no_policy: u64,
    bypass: u64,
    discard: u64,
    malformed: u64,
    seal_error: u64,
    lease_stall: u64,
    trap_queued: u64,
    trap_overflow: u64,
    acquires: u64,
    read_errors: u64,
}

impl Tally {
    fn flush(&mut self, c: &Counters) {
        add(&c.tun_rx_packets, self.rx_packets);
        add(&c.tun_rx_bytes, self.rx_bytes);
        add(&c.drop_no_policy, self.no_policy);
        add(&c.drop_bypass, self.bypass);
        add(&c.drop_discard, self.discard);
        add(&c.drop_malformed_outbound, self.malformed + self.read_errors);
        add(&c.drop_seal_error, self.seal_error);
        add(&c.drop_lease_stall, self.lease_stall);
        add(&c.trap_queued, self.trap_queued);
        add(&c.drop_trap_overflow, self.trap_overflow);
        add(&c.acquires, self.acquires);
        *self = Tally::default();
    }
}

pub struct Outbound {
    shared: Arc<Shared>,
    egress: Egress,
    traps: TrapQueues,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    scratch: Vec<u8>,
    tally: Tally,
    generation: u64,
    table: Arc<TunTable>,
    last_expiry: Instant,
}

impl Stage for Outbound {
    fn refresh(&mut self) -> bool {
        // Generation first: a change racing with these two loads is seen on the next round.
        let g = self.shared.tuns_generation.load(Ordering::Acquire);
        if g == self.generation {
            return false;
        }
        self.generation = g;
        self.table = self.shared.tuns.load_full();
        true
    }

    /// The waker, then every TUN.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.shared.wake_out.raw_fd()];
        fds.extend(self.table.list.iter().map(|e| e.tun.raw_fd()));
        fds
    }

    fn serve(&mut self, now: Instant, ready: &dyn Fn(usize) -> bool) {
        if ready(0) {
            self.shared.wake_out.drain();
            self.flush_traps(now);
        }
        let table = self.table.clone();
        for (i, entry) in table.list.iter().enumerate() {
            if ready(i + 1) {
                self.drain_tun(now, entry.tun.as_ref(), entry.reqid);
            }
        }
        if now.saturating_duration_since(self.last_expiry) >= Duration::from_secs(1) {
            self.last_expiry = now;
            let dropped = self.traps.expire(now);
            add(&self.shared.counters.drop_trap_overflow, dropped as u64);
            // An SA may have appeared without a wake-up reaching us (e.g. installed by HA).
            self.flush_traps(now);
        }
    }
}

impl Outbound {
    pub fn new(shared: Arc<Shared>, egress: Egress) -> Outbound {
        let mtu = usize::from(shared.cfg.tun.mtu).max(1500);
        let buf_len = OUT_HEADROOM + mtu + 128;
        let traps = TrapQueues::new(
            shared.cfg.acquire_interval,
            shared.cfg.pending_per_reqid,
            Duration::from_secs(10).max(shared.cfg.acquire_interval * 3),
        );
        Outbound {
            shared,
            egress,
            traps,
            bufs: vec![vec![0u8; buf_len]; BATCH],
            sizes: vec![0; BATCH],
            scratch: vec![0u8; TUN_SCRATCH_LEN],
            tally: Tally::default(),
            // Never a real generation: the first `refresh` loads the table.
            generation: u64::MAX,
            table: Arc::default(),
            last_expiry: Instant::now(),
        }
    }

    /// Read and process everything queued on one TUN.
    fn drain_tun(&mut self, now: Instant, tun: &crate::tun::Tun, route_reqid: Option<u32>) {
        for _round in 0..16 {
            let n = match tun.recv_batch(
                &mut self.scratch,
                &mut self.bufs,
                &mut self.sizes,
                OUT_HEADROOM,
                MIN_FREE,
                &mut self.tally.read_errors,
            ) {
                Ok(n) => n,
                Err(e) => {
                    // The interface is gone or broken: poll would report it again at once, so
                    // pace the retries instead of spinning.
                    tracing::debug!(target: "dataplane", "TUN read: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                    0
                }
            };
            if n == 0 {
                break;
            }
            let sad = self.shared.sad.snapshot();
            let spd = self.shared.policies.snapshot();
            for i in 0..n {
                let len = self.sizes[i];
                self.tally.rx_packets += 1;
                self.tally.rx_bytes += len as u64;
                let pkt = &self.bufs[i][OUT_HEADROOM..OUT_HEADROOM + len];
                let Some(sel) = packet_selector(pkt) else {
                    self.tally.malformed += 1;
                    continue;
                };
                let result = match route_reqid {
                    // Route-based interface: everything routed into it belongs to its SA.
                    Some(reqid) => match sad.outbound(reqid) {
                        Some(sa) => LookupResult::Protect(sa),
                        None => LookupResult::Acquire(reqid),
                    },
                    None => lookup_outbound(&spd, &sad, self.shared.sad.global(), &sel),
                };
                match result {
                    LookupResult::Protect(sa) => seal_and_queue(
                        sa,
                        &mut self.bufs[i],
                        OUT_HEADROOM,
                        len,
                        &mut self.egress,
                        &mut self.tally,
                    ),
                    LookupResult::Acquire(reqid) => {
                        let o = self.traps.offer(now, reqid, pkt);
                        self.tally.trap_queued += u64::from(self.shared.cfg.pending_per_reqid > 0);
                        self.tally.trap_overflow += u64::from(o.dropped_oldest);
                        if o.acquire {
                            self.tally.acquires += 1;
                            self.shared.events.send(DataplaneEvent::Acquire { reqid, packet: sel });
                        }
                    }
                    LookupResult::Bypass => self.tally.bypass += 1,
                    LookupResult::Discard => self.tally.discard += 1,
                    LookupResult::NoPolicy => self.tally.no_policy += 1,
                }
            }
            self.egress.flush();
            self.tally.flush(&self.shared.counters);
            if n < MIN_FREE {
                break;
            }
        }
    }

    /// Send the queued packets of every reqid whose SA now exists.
    fn flush_traps(&mut self, _now: Instant) {
        if self.traps.is_empty() {
            return;
        }
        let sad = self.shared.sad.snapshot();
        let ready: Vec<u32> = self.traps.reqids().filter(|r| sad.outbound(*r).is_some()).collect();
        let mut flushed = 0u64;
        for reqid in ready {
            let Some(sa) = sad.outbound(reqid) else { continue };
            let (egress, tally, buf) = (&mut self.egress, &mut self.tally, &mut self.bufs[0]);
            flushed += self.traps.flush(reqid, |pkt| {
                let len = pkt.len().min(buf.len().saturating_sub(OUT_HEADROOM + 128));
                buf[OUT_HEADROOM..OUT_HEADROOM + len].copy_from_slice(&pkt[..len]);
                seal_and_queue(sa, buf, OUT_HEADROOM, len, egress, tally);
                // One packet at a time through buffer 0: send it before the next overwrites it.
                egress.flush();
            }) as u64;
        }
        add(&self.shared.counters.trap_flushed, flushed);
        self.tally.flush(&self.shared.counters);
    }
}

/// Seal the packet at `buf[head..head + len]` with `sa` and queue it for sending.
fn seal_and_queue(
    sa: &Arc<OutboundSa>,
    buf: &mut [u8],
    head: usize,
    len: usize,
    egress: &mut Egress,
    tally: &mut Tally,
) {
    let pkt = &buf[head..head + len];
    let (payload, next_header) = match sa.mode() {
        Mode::Tunnel => {
            let nh = if pkt[0] >> 4 == 6 {
                tandem_esp::esp_packet::NEXT_HEADER_IPV6
            } else {
                tandem_esp::esp_packet::NEXT_HEADER_IPV4
            };
            (head..head + len, nh)
        }
        Mode::Transport => match split_ip(pkt) {
            Some(s) => (head + s.header_len..head + len, s.protocol),
            None => {
                tally.malformed += 1;
                return;
            }
        },
    };
    match seal_in_place(sa, buf, payload, next_header) {
        Ok(range) => {
            let esp = &buf[range];
            if sa.udp_encap() {
                match egress.udp_socket_for(&sa.local(), &sa.remote()) {
                    Some(sock) => egress.push_udp(sock, sa.local(), sa.remote(), esp),
                    None => tally.seal_error += 1,
                }
            } else {
                egress.push_raw(sa.remote(), esp);
            }
        }
        Err(SealError::LeaseStall) => tally.lease_stall += 1,
        Err(_) => tally.seal_error += 1,
    }
}

//! Coalescing decrypted inner packets into TUN super-frames (GRO in userspace). Consecutive TCP
//! segments of one flow are copied straight from the receive buffer into one frame of up to
//! 64 KiB with a virtio-net header asking the kernel to treat it as a GSO packet: one write and
//! one trip through the kernel's stack instead of ~45. Everything else is written as it came, in
//! order. (UDP GSO frames, USO, were tried too: iperf3's UDP receive rate fell from 206 to 149
//! kpps for 64-byte and from 203 to 176 kpps for 1400-byte datagrams, so UDP is not merged.)
//!
//! Merging follows the kernel's own GRO rules: same addresses, ports and IP header fields (TOS or
//! traffic class and flow label, TTL, DF), TCP sequence numbers that follow on, the same ACK
//! number, window and options, only ACK or ACK+PSH flags, and no segment larger than the first
//! (a shorter one, or PSH, ends the frame). Because the kernel does not check the checksum of a
//! GSO frame, every merged segment's own checksum is verified first; a segment with a bad one is
//! written alone and the kernel drops it as it would have. Order within a flow is kept: a packet
//! of the flow that cannot merge ends its frame and later segments start a new one.

use crate::csum::pseudo_header;
use crate::ip::fix_ip_header;

/// Bytes of the virtio-net header (`struct virtio_net_hdr`, without `num_buffers`) in front of
/// every frame written to a TUN opened with IFF_VNET_HDR.
pub const HDR: usize = 10;
/// The largest IP packet (IPv4 total length, IPv6 payload length are 16-bit).
const MAX_IP: usize = 65535;
/// Flows remembered per batch; the oldest is forgotten beyond this (its next segment then starts
/// a new frame, which is still correct).
const MAX_FLOWS: usize = 32;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Addresses, protocol and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    udp: bool,
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
}

/// A TCP segment that may merge: where its parts are.
#[derive(Debug, Clone, Copy)]
struct Segment {
    key: FlowKey,
    /// IP header length, TCP header length.
    iph: usize,
    l4h: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

enum Parsed {
    /// TCP that may merge.
    Segment(Segment),
    /// TCP or UDP of this flow that must not merge (SYN, FIN, pure ACK, IPv4 options, any UDP):
    /// it ends the flow's frame so nothing later overtakes it.
    Barrier(FlowKey),
    /// Anything else.
    Other,
}

/// One frame: `buf[..HDR]` is the virtio-net header (when the TUN has one), the packet follows.
struct Frame {
    buf: Vec<u8>,
    /// The first segment's shape when the frame can grow; `None` for a packet written as is.
    head: Option<Segment>,
    segs: u16,
    next_seq: u32,
    open: bool,
    /// The first segment's checksum was verified (done when the second one merges).
    head_checked: bool,
}

/// See the module documentation.
pub struct Coalescer {
    frames: Vec<Frame>,
    used: usize,
    /// Flow → index of its open frame, most recent last.
    flows: Vec<(FlowKey, usize)>,
    /// The TUN takes a virtio-net header (offload on); without it nothing merges.
    vnet: bool,
}

impl Coalescer {
    /// `capacity` frames per batch; `vnet`: frames carry a virtio-net header (else nothing merges).
    pub fn new(capacity: usize, vnet: bool) -> Coalescer {
        let cap = if vnet { HDR + MAX_IP } else { MAX_IP };
        Coalescer {
            // Capacity only: pages are touched as far as frames are used.
            frames: (0..capacity.max(1))
                .map(|_| Frame {
                    buf: Vec::with_capacity(cap),
                    head: None,
                    segs: 0,
                    next_seq: 0,
                    open: false,
                    head_checked: false,
                })
                .collect(),
            used: 0,
            flows: Vec::with_capacity(MAX_FLOWS),
            vnet,
        }
    }

    /// No frame is free: write the frames out (`drain`) before the next `push`.
    pub fn is_full(&self) -> bool {
        self.used == self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Packets merged or queued so far in this batch.
    pub fn packets(&self) -> usize {
        self.frames[..self.used].iter().map(|f| usize::from(f.segs)).sum()
    }

    /// Add one IP packet. If no frame is free it is dropped and `false` returned (check
    /// `is_full` first).
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        if pkt.is_empty() || pkt.len() > MAX_IP {
            return false;
        }
        let parsed = if self.vnet { parse(pkt) } else { Parsed::Other };
        match parsed {
            Parsed::Segment(seg) => {
                if let Some(pos) = self.flows.iter().rposition(|(k, _)| *k == seg.key) {
                    let idx = self.flows[pos].1;
                    if self.try_merge(idx, &seg, pkt) {
                        return true;
                    }
                    self.flows.remove(pos);
                }
                let Some(idx) = self.start(pkt, Some(seg)) else { return false };
                if self.flows.len() == MAX_FLOWS {
                    self.flows.remove(0);
                }
                self.flows.push((seg.key, idx));
                true
            }
            Parsed::Barrier(key) => {
                self.flows.retain(|(k, _)| *k != key);
                self.start(pkt, None).is_some()
            }
            Parsed::Other => self.start(pkt, None).is_some(),
        }
    }

    /// Put `pkt` in the next free frame.
    fn start(&mut self, pkt: &[u8], head: Option<Segment>) -> Option<usize> {
        if self.is_full() {
            return None;
        }
        let idx = self.used;
        self.used += 1;
        let f = &mut self.frames[idx];
        f.buf.clear();
        if self.vnet {
            f.buf.extend_from_slice(&[0u8; HDR]);
        }
        f.buf.extend_from_slice(pkt);
        f.segs = 1;
        // PSH ends a frame, even its first segment's.
        f.open = head.is_some_and(|h| !h.psh);
        f.next_seq = head.map_or(0, |s| s.seq.wrapping_add(s.payload as u32));
        f.head = head;
        f.head_checked = false;
        Some(idx)
    }

    /// Append `seg` (whole packet `pkt`) to frame `idx` if the rules allow.
    fn try_merge(&mut self, idx: usize, seg: &Segment, pkt: &[u8]) -> bool {
        let f = &mut self.frames[idx];
        let Some(head) = f.head else { return false };
        if !f.open || head.iph != seg.iph || head.l4h != seg.l4h || seg.payload > head.payload {
            return false;
        }
        let first = &f.buf[HDR..HDR + head.iph + head.l4h];
        if f.buf.len() - HDR + seg.payload > MAX_IP || !same_headers(first, pkt, seg) {
            return false;
        }
        if seg.seq != f.next_seq {
            return false;
        }
        if !f.head_checked {
            if !l4_checksum_ok(&f.buf[HDR..], &head) {
                f.open = false;
                return false;
            }
            f.head_checked = true;
        }
        if !l4_checksum_ok(pkt, seg) {
            return false;
        }
        f.buf.extend_from_slice(&pkt[seg.iph + seg.l4h..]);
        f.segs += 1;
        f.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.payload < head.payload {
            f.open = false;
        }
        if seg.psh {
            f.buf[HDR + head.iph + 13] |= TCP_PSH;
            f.open = false;
        }
        true
    }

    /// Finish the headers of every frame and hand each (virtio-net header included when the TUN
    /// has one) to `write` with the number of packets it carries, in order. The batch is empty
    /// afterwards.
    pub fn drain(&mut self, mut write: impl FnMut(&[u8], usize)) {
        for f in &mut self.frames[..self.used] {
            if let (Some(head), true) = (f.head, f.segs > 1) {
                finish_gso_frame(&mut f.buf, &head);
            }
            write(&f.buf, usize::from(f.segs));
        }
        self.used = 0;
        self.flows.clear();
    }
}

/// Classify an IP packet.
fn parse(pkt: &[u8]) -> Parsed {
    let (v6, iph, proto) = match pkt[0] >> 4 {
        4 if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let fragment = pkt[6] & 0x20 != 0 || (u16::from(pkt[6] & 0x1f) << 8 | u16::from(pkt[7])) != 0;
            if ihl < 20 || fragment || usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
                return Parsed::Other;
            }
            (false, ihl, pkt[9])
        }
        6 if pkt.len() >= 40 => {
            if usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 != pkt.len() {
                return Parsed::Other;
            }
            // Extension headers: written as they are.
            (true, 40, pkt[6])
        }
        _ => return Parsed::Other,
    };
    let udp = match proto {
        6 => false,
        17 => true,
        _ => return Parsed::Other,
    };
    if pkt.len() < iph + if udp { 8 } else { 20 } {
        return Parsed::Other;
    }
    let mut key = FlowKey { v6, udp, src: [0; 16], dst: [0; 16], ports: [0; 4] };
    if v6 {
        key.src.copy_from_slice(&pkt[8..24]);
        key.dst.copy_from_slice(&pkt[24..40]);
    } else {
        key.src[..4].copy_from_slice(&pkt[12..16]);
        key.dst[..4].copy_from_slice(&pkt[16..20]);
    }
    key.ports.copy_from_slice(&pkt[iph..iph + 4]);
    // IPv4 options make headers differ in ways we do not compare: never merge those.
    if udp || (!v6 && iph != 20) {
        return Parsed::Barrier(key);
    }
    let t = &pkt[iph..];
    let l4h = usize::from(t[12] >> 4) * 4;
    let flags = t[13];
    if l4h < 20 || t.len() <= l4h || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
        return Parsed::Barrier(key);
    }
    Parsed::Segment(Segment {
        key,
        iph,
        l4h,
        payload: t.len() - l4h,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        psh: flags & TCP_PSH != 0,
    })
}

/// The header fields that must be equal for `pkt` to continue the frame whose first headers are
/// `first`: IP TOS/traffic class, flow label, TTL/hop limit, DF; TCP ACK number, window, options.
fn same_headers(first: &[u8], pkt: &[u8], seg: &Segment) -> bool {
    let ip_same = if seg.key.v6 {
        first[..4] == pkt[..4] && first[7] == pkt[7]
    } else {
        first[1] == pkt[1] && first[8] == pkt[8] && (first[6] & 0x40) == (pkt[6] & 0x40)
    };
    let (a, b) = (&first[seg.iph..seg.iph + seg.l4h], &pkt[seg.iph..seg.iph + seg.l4h]);
    ip_same && a[8..12] == b[8..12] && a[14..16] == b[14..16] && a[20..] == b[20..]
}

/// Whether the TCP checksum of the IP packet `pkt` is right.
fn l4_checksum_ok(pkt: &[u8], seg: &Segment) -> bool {
    let l4 = &pkt[seg.iph..];
    pseudo_header(pkt, seg.key.v6, 6, l4.len() as u16).add_bytes(l4).is_valid()
}

/// Turn a frame of merged segments into a GSO packet: IP length (and IPv4 header checksum), the
/// TCP checksum field set to the pseudo-header sum (the kernel completes it per segment), and the
/// virtio-net header.
fn finish_gso_frame(buf: &mut [u8], head: &Segment) {
    const CSUM_OFFSET: u16 = 16;
    let pkt = &mut buf[HDR..];
    let l4_len = (pkt.len() - head.iph) as u16;
    // Length fields (and the IPv4 header checksum) for the grown packet; the protocol stays TCP.
    fix_ip_header(pkt, if head.key.v6 { 6 } else { 9 }, 6);
    let at = head.iph + usize::from(CSUM_OFFSET);
    let partial = pseudo_header(pkt, head.key.v6, 6, l4_len).folded_bytes();
    pkt[at..at + 2].copy_from_slice(&partial);
    // struct virtio_net_hdr, little-endian fields (TUN without TUNSETVNETBE on x86/arm64).
    let h = &mut buf[..HDR];
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h[1] = if head.key.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    h[2..4].copy_from_slice(&((head.iph + head.l4h) as u16).to_le_bytes());
    h[4..6].copy_from_slice(&(head.payload as u16).to_le_bytes());
    h[6..8].copy_from_slice(&(head.iph as u16).to_le_bytes());
    h[8..10].copy_from_slice(&CSUM_OFFSET.to_le_bytes());
}

#[cfg(test)]
#[path = "gro_tests.rs"]
mod tests;

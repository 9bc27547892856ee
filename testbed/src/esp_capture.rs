//! Every ESP packet on one interface, both directions, as (SPI, sequence number): the evidence for
//! docs/ha.md's security property "no (key, sequence number) pair is sealed twice". With AES-GCM
//! and ChaCha20-Poly1305 the sequence number is the nonce, so one (SPI, seq) seen twice on the
//! wire is a nonce reuse (ESP never retransmits a packet: a repeat is always a second seal).
//!
//! An AF_PACKET socket, opened in the namespace by a thread of the test process (`nsenter`), bound
//! to the interface; a thread of ours reads it until `stop`. Raw ESP (IP protocol 50) and ESP in
//! UDP (RFC 3948: port 4500 on either side, a non-zero SPI where IKE has its zero marker) are
//! decoded, IPv4 and IPv6. tandem sends ESP in UDP with UDP GSO (one super-frame of several
//! datagrams per send), and between veths and a bridge such a frame stays one until a socket
//! receives it: the socket asks for a virtio-net header on each frame (`PACKET_VNET_HDR`), whose
//! `gso_size` splits the super-frame into the datagrams that a NIC would put on the wire, each
//! with its own SPI and sequence number. The kernel's count of frames it had to drop for a full socket buffer is
//! reported with the result: a capture that missed frames cannot prove the absence of a repeat.

use crate::netns::Netns;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ETH_P_ALL: u16 = 0x0003;
const SOL_PACKET: libc::c_int = 263;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_OUTGOING: u8 = 4;
const PACKET_VNET_HDR: libc::c_int = 15;
/// `struct virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

/// One ESP packet seen on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspPacket {
    /// Sent by this namespace (PACKET_OUTGOING), else received.
    pub outgoing: bool,
    pub spi: u32,
    pub seq: u32,
    pub at: Instant,
    /// The frame's Ethernet source: which host put it on the wire (which gateway sealed it).
    pub src_mac: [u8; 6],
}

/// An (SPI, sequence number) seen more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    pub spi: u32,
    pub seq: u32,
    pub count: usize,
    /// How many of them left this namespace (the rest arrived).
    pub outgoing: usize,
}

/// What a capture saw.
#[derive(Debug, Clone)]
pub struct Capture {
    pub packets: Vec<EspPacket>,
    /// Frames the kernel dropped because our socket buffer was full (`PACKET_STATISTICS`).
    pub kernel_drops: u64,
    /// Frames read that were not ESP (IKE, ARP, ...).
    pub other: u64,
    /// GSO super-frames split into their datagrams.
    pub gso_frames: u64,
}

impl Capture {
    /// Every (SPI, seq) seen more than once, sorted by SPI then seq.
    pub fn repeats(&self) -> Vec<Repeat> {
        repeats(&self.packets)
    }

    /// Packets per SPI: (spi, outgoing, count, lowest seq, highest seq), sorted by SPI.
    pub fn per_spi(&self) -> Vec<(u32, bool, usize, u32, u32)> {
        let mut m: HashMap<u32, (bool, usize, u32, u32)> = HashMap::new();
        for p in &self.packets {
            let e = m.entry(p.spi).or_insert((p.outgoing, 0, u32::MAX, 0));
            e.1 += 1;
            e.2 = e.2.min(p.seq);
            e.3 = e.3.max(p.seq);
        }
        let mut v: Vec<_> = m.into_iter().map(|(s, (o, n, lo, hi))| (s, o, n, lo, hi)).collect();
        v.sort_unstable();
        v
    }

    /// Packets with `spi` put on the wire by `mac`: (count, lowest seq, highest seq).
    pub fn sent_by(&self, spi: u32, mac: [u8; 6]) -> (usize, Option<u32>, Option<u32>) {
        let q = || self.packets.iter().filter(|p| p.spi == spi && p.src_mac == mac).map(|p| p.seq);
        (q().count(), q().min(), q().max())
    }

    /// A one-line summary per SPI, for the test output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ESP packets ({} sent from here, {} received; {} GSO super-frames split), kernel drops {}, other frames {}",
            self.packets.len(),
            self.packets.iter().filter(|p| p.outgoing).count(),
            self.packets.iter().filter(|p| !p.outgoing).count(),
            self.gso_frames,
            self.kernel_drops,
            self.other
        );
        for (spi, out, n, lo, hi) in self.per_spi() {
            s += &format!(
                "\n  SPI {spi:#010x} ({}): {n} packets, seq {lo}..={hi}",
                if out { "sent" } else { "received" }
            );
        }
        s
    }
}

/// Every (SPI, seq) that occurs more than once in `packets`.
pub fn repeats(packets: &[EspPacket]) -> Vec<Repeat> {
    let mut m: HashMap<(u32, u32), (usize, usize)> = HashMap::with_capacity(packets.len());
    for p in packets {
        let e = m.entry((p.spi, p.seq)).or_default();
        e.0 += 1;
        e.1 += usize::from(p.outgoing);
    }
    let mut v: Vec<Repeat> = m
        .into_iter()
        .filter(|(_, (n, _))| *n > 1)
        .map(|((spi, seq), (count, outgoing))| Repeat { spi, seq, count, outgoing })
        .collect();
    v.sort_unstable_by_key(|r| (r.spi, r.seq));
    v
}

/// (SPI, seq) of an Ethernet frame carrying one ESP packet, raw or in UDP; None for anything else.
pub fn parse_esp(frame: &[u8]) -> Option<(u32, u32)> {
    parse_frame(frame, None).first().copied()
}

/// Every (SPI, seq) in an Ethernet frame: one ESP packet, or, for a UDP GSO super-frame of
/// segment size `gso_size`, one per segment (each segment's payload is one ESP-in-UDP datagram).
pub fn parse_frame(frame: &[u8], gso_size: Option<usize>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Some((proto, l4)) = l4_of(frame) else { return out };
    match proto {
        50 => out.extend(spi_seq(l4)),
        17 => {
            let ports =
                l4.get(0..4).map(|p| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])));
            let Some((sport, dport)) = ports else { return out };
            if sport != 4500 && dport != 4500 {
                return out;
            }
            let payload = l4.get(8..).unwrap_or(&[]);
            match gso_size {
                Some(size) if size > 0 => out.extend(payload.chunks(size).filter_map(spi_seq)),
                _ => out.extend(spi_seq(payload)),
            }
        }
        _ => {}
    }
    out
}

/// An ESP header's (SPI, seq). A NAT keepalive is one byte; IKE on 4500 starts with the zero
/// non-ESP marker where ESP has its SPI.
fn spi_seq(esp: &[u8]) -> Option<(u32, u32)> {
    let spi = u32::from_be_bytes(esp.get(0..4)?.try_into().ok()?);
    let seq = u32::from_be_bytes(esp.get(4..8)?.try_into().ok()?);
    (spi != 0).then_some((spi, seq))
}

/// The IP protocol and transport header onwards of an Ethernet frame (IPv4 first fragments and
/// unfragmented packets, IPv6 without extension headers).
fn l4_of(frame: &[u8]) -> Option<(u8, &[u8])> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?) & 0x1fff;
            if ihl < 20 || frag != 0 {
                return None;
            }
            Some((*ip.get(9)?, ip.get(ihl..)?))
        }
        0x86dd => Some((*ip.get(6)?, ip.get(40..)?)),
        _ => None,
    }
}

/// A running capture.
pub struct EspCapture {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<Capture>>,
}

impl EspCapture {
    /// Capture on `iface` of `ns` from now on (the socket is bound when this returns).
    pub fn start(ns: &Netns, iface: &str) -> EspCapture {
        let iface_c = std::ffi::CString::new(iface).expect("interface name");
        let (fd, ifindex) = crate::nsenter::in_netns(&ns.name, || {
            // SAFETY: plain socket calls on a descriptor we own; the sockaddr_ll and the option
            // values are local, correctly sized values.
            unsafe {
                let ifindex = libc::if_nametoindex(iface_c.as_ptr());
                assert!(ifindex != 0, "no interface {iface:?} in {}", ns.name);
                let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be()));
                assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(raw);
                let buf: libc::c_int = 32 << 20;
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&buf as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
                let on: libc::c_int = 1;
                let rc = libc::setsockopt(
                    raw,
                    SOL_PACKET,
                    PACKET_VNET_HDR,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
                let tv = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                );
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = ETH_P_ALL.to_be();
                sll.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    raw,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "bind AF_PACKET to {iface}: {}", std::io::Error::last_os_error());
                (fd, ifindex as i32)
            }
        });
        // Reset the statistics (reading them clears them): frames before the bind do not count.
        let _ = kernel_stats(&fd);
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let thread = std::thread::Builder::new()
            .name(format!("esp-capture-{iface}"))
            .spawn(move || read_loop(fd, ifindex, &s, &c))
            .expect("spawn the capture thread");
        EspCapture { stop, count, thread: Some(thread) }
    }

    /// ESP packets seen so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stop reading and return everything seen.
    pub fn stop(mut self) -> Capture {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("capture thread");
        t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for EspCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (packets, drops) since the last call (the kernel resets them on read).
fn kernel_stats(fd: &OwnedFd) -> (u64, u64) {
    #[repr(C)]
    #[derive(Default)]
    struct TpacketStats {
        packets: u32,
        drops: u32,
    }
    let mut st = TpacketStats::default();
    let mut len = size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized local struct (struct tpacket_stats).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            (&mut st as *mut TpacketStats).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return (0, 0);
    }
    (u64::from(st.packets), u64::from(st.drops))
}

fn read_loop(fd: OwnedFd, ifindex: i32, stop: &AtomicBool, count: &AtomicU64) -> Capture {
    let mut packets = Vec::with_capacity(1 << 16);
    let (mut other, mut gso_frames) = (0, 0);
    let mut drops = 0;
    let mut buf = vec![0u8; 128 * 1024];
    let mut last_stats = Instant::now();
    // After `stop`, drain what is already queued (reads time out once the queue is empty).
    let mut draining: Option<Instant> = None;
    loop {
        match draining {
            None if stop.load(Ordering::Relaxed) => draining = Some(Instant::now()),
            Some(t) if t.elapsed() > Duration::from_millis(100) => break,
            _ => {}
        }
        // SAFETY: sockaddr_ll and buffer are local and sized as passed.
        let (n, sll) = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut len,
            );
            (n, sll)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    if draining.is_some() {
                        break;
                    }
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => panic!("AF_PACKET recvfrom: {e}"),
            }
        }
        let at = Instant::now();
        if sll.sll_ifindex != ifindex {
            continue;
        }
        let n = n as usize;
        let (Some(vnet), Some(frame)) = (buf.get(..VNET_HDR_LEN), buf.get(VNET_HDR_LEN..n)) else { continue };
        let gso_size = match vnet[1] & 0x7f {
            VIRTIO_NET_HDR_GSO_NONE => None,
            VIRTIO_NET_HDR_GSO_UDP_L4 => Some(usize::from(u16::from_le_bytes([vnet[4], vnet[5]]))),
            // TCP or UFO super-frames are not ESP; counted as other frames below.
            _ => Some(0),
        };
        if gso_size.is_some() {
            gso_frames += 1;
        }
        let found = parse_frame(frame, gso_size);
        if found.is_empty() {
            other += 1;
        }
        let outgoing = sll.sll_pkttype == PACKET_OUTGOING;
        let src_mac: [u8; 6] = frame.get(6..12).and_then(|m| m.try_into().ok()).unwrap_or_default();
        for (spi, seq) in found {
            packets.push(EspPacket { outgoing, spi, seq, at, src_mac });
            count.fetch_add(1, Ordering::Relaxed);
        }
        if last_stats.elapsed() > Duration::from_millis(500) {
            drops += kernel_stats(&fd).1;
            last_stats = Instant::now();
        }
    }
    drops += kernel_stats(&fd).1;
    Capture { packets, kernel_drops: drops, other, gso_frames }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 frame with `proto` and `l4` as its payload.
    fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&[10, 95, 0, 1, 10, 95, 0, 10]);
        f.extend_from_slice(l4);
        f
    }

    fn esp(spi: u32, seq: u32) -> Vec<u8> {
        let mut e = spi.to_be_bytes().to_vec();
        e.extend_from_slice(&seq.to_be_bytes());
        e.extend_from_slice(&[0xab; 40]);
        e
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut u = sport.to_be_bytes().to_vec();
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    #[test]
    fn decodes_raw_and_udp_esp_and_ignores_the_rest() {
        assert_eq!(parse_esp(&ipv4(50, &esp(0xc1234567, 7))), Some((0xc1234567, 7)));
        assert_eq!(parse_esp(&ipv4(17, &udp(4500, 4500, &esp(0x21, 65537)))), Some((0x21, 65537)));
        assert_eq!(parse_esp(&ipv4(17, &udp(40000, 4500, &esp(0x21, 3)))), Some((0x21, 3)));
        // IKE on 4500 (non-ESP marker), a NAT keepalive, IKE on 500, other UDP, ICMP.
        let mut ike = vec![0, 0, 0, 0];
        ike.extend_from_slice(&[1; 28]);
        assert_eq!(parse_esp(&ipv4(17, &udp(4500, 4500, &ike))), None);
        assert_eq!(parse_esp(&ipv4(17, &udp(4500, 4500, &[0xff]))), None);
        assert_eq!(parse_esp(&ipv4(17, &udp(500, 500, &esp(1, 1)))), None);
        assert_eq!(parse_esp(&ipv4(17, &udp(5001, 5001, &esp(1, 1)))), None);
        assert_eq!(parse_esp(&ipv4(1, &esp(1, 1))), None);
        // ARP, a truncated frame.
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06, 0, 1]);
        assert_eq!(parse_esp(&arp), None);
        assert_eq!(parse_esp(&ipv4(50, &[1, 2, 3])), None);
        // IPv6, raw ESP.
        let mut v6 = vec![0u8; 12];
        v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 48, 50, 64]);
        v6.extend_from_slice(&[0u8; 32]);
        v6.extend_from_slice(&esp(0x99, 12));
        assert_eq!(parse_esp(&v6), Some((0x99, 12)));
    }

    #[test]
    fn splits_a_udp_gso_super_frame() {
        // Three ESP-in-UDP datagrams of 60 bytes in one super-frame (the last one shorter).
        let mut payload = esp(0x77, 10);
        payload.truncate(48);
        payload.resize(60, 0xcd);
        let mut two = esp(0x77, 11);
        two.resize(60, 0xcd);
        payload.extend_from_slice(&two);
        payload.extend_from_slice(&esp(0x77, 12)[..20]);
        let frame = ipv4(17, &udp(4500, 4500, &payload));
        assert_eq!(parse_frame(&frame, Some(60)), vec![(0x77, 10), (0x77, 11), (0x77, 12)]);
        // Without the GSO size only the first is seen: what a capture without the virtio-net
        // header would count.
        assert_eq!(parse_frame(&frame, None), vec![(0x77, 10)]);
    }

    /// The check the HA tests rely on: it must flag a second seal of one (SPI, seq), whichever
    /// direction or node it came from, and only that.
    #[test]
    fn repeats_finds_a_second_seal() {
        let t = Instant::now();
        let p = |outgoing, spi, seq| EspPacket { outgoing, spi, seq, at: t, src_mac: [0; 6] };
        let mut frames: Vec<EspPacket> = (1..=1000).map(|s| p(false, 0x1000_0001, s)).collect();
        frames.extend((1..=1000).map(|s| p(true, 0x2000_0002, s)));
        // A new active resuming above its lease: no repeat.
        frames.extend((65_537..=66_000).map(|s| p(false, 0x1000_0001, s)));
        // The same numbers on another SPI are not repeats.
        frames.extend((1..=10).map(|s| p(false, 0x1000_0003, s)));
        assert!(repeats(&frames).is_empty());
        // A node resuming at 990 on the first SPI: 11 numbers sealed twice.
        let decoded: Vec<EspPacket> = (990..=1000)
            .map(|s| {
                let (spi, seq) = parse_esp(&ipv4(17, &udp(4500, 4500, &esp(0x1000_0001, s)))).unwrap();
                p(false, spi, seq)
            })
            .collect();
        frames.extend(decoded);
        let r = repeats(&frames);
        assert_eq!(r.len(), 11, "{r:?}");
        assert_eq!(r[0], Repeat { spi: 0x1000_0001, seq: 990, count: 2, outgoing: 0 });
        assert!(r.iter().all(|x| x.spi == 0x1000_0001 && x.count == 2));
    }
}

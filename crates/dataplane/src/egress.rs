//! Outbound ESP to the wire. Consecutive packets of one SA that have the same size go out as one
//! UDP GSO send (the kernel, or the veth/NIC, cuts them); raw ESP goes out with `sendmmsg`. The
//! packets are copied once into a send buffer: that copy buys the one-syscall-per-64-packets GSO
//! path.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::counters::{add, Counters};
use crate::raw::RawEspSocket;
use crate::udp::EncapSocket;

/// Largest UDP payload of one GSO send (64 KiB minus IP and UDP headers, with margin).
const GSO_MAX_BYTES: usize = 65000;

struct Run {
    sock: usize,
    local: SocketAddr,
    dst: SocketAddr,
    seg: usize,
    count: usize,
    /// A shorter (final) segment was added: nothing may follow.
    closed: bool,
}

/// Outer sockets plus the send batches being built.
pub struct Egress {
    pub udp: Vec<Arc<EncapSocket>>,
    pub raw_v4: Option<Arc<RawEspSocket>>,
    pub raw_v6: Option<Arc<RawEspSocket>>,
    gso_buf: Vec<u8>,
    run: Option<Run>,
    raw_buf: Vec<u8>,
    raw_items: Vec<(usize, usize, SocketAddr)>,
    counters: Arc<Counters>,
}

impl Egress {
    pub fn new(
        udp: Vec<Arc<EncapSocket>>,
        raw_v4: Option<Arc<RawEspSocket>>,
        raw_v6: Option<Arc<RawEspSocket>>,
        counters: Arc<Counters>,
    ) -> Egress {
        Egress {
            udp,
            raw_v4,
            raw_v6,
            gso_buf: Vec::with_capacity(GSO_MAX_BYTES + 2048),
            run: None,
            raw_buf: Vec::with_capacity(crate::sys::MMSG_BATCH * 2048),
            raw_items: Vec::with_capacity(crate::sys::MMSG_BATCH),
            counters,
        }
    }

    /// The UDP socket to use for traffic from `local` to `remote`.
    pub fn udp_socket_for(&self, local: &SocketAddr, remote: &SocketAddr) -> Option<usize> {
        udp_socket_for(&self.udp, local, remote)
    }

    /// Queue one ESP packet for UDP encapsulation from `local` to `remote`.
    pub fn push_udp(&mut self, sock: usize, local: SocketAddr, remote: SocketAddr, pkt: &[u8]) {
        if pkt.is_empty() {
            return;
        }
        let joins = match &self.run {
            Some(r) => {
                r.sock == sock && r.dst == remote && r.local == local && !r.closed && pkt.len() <= r.seg
            }
            None => false,
        };
        if !joins {
            self.flush_udp();
            self.run = Some(Run { sock, local, dst: remote, seg: pkt.len(), count: 0, closed: false });
        }
        self.gso_buf.extend_from_slice(pkt);
        let max = self.udp.get(sock).map_or(1, |s| s.max_gso_segments()).clamp(1, 64);
        let full = if let Some(r) = &mut self.run {
            r.count += 1;
            r.closed = pkt.len() < r.seg;
            r.closed || r.count >= max || (r.count + 1) * r.seg > GSO_MAX_BYTES
        } else {
            false
        };
        if full {
            self.flush_udp();
        }
    }

    /// Queue one ESP packet for a raw socket (IP protocol 50) to `remote`.
    pub fn push_raw(&mut self, remote: SocketAddr, pkt: &[u8]) {
        if self.raw_items.len() >= crate::sys::MMSG_BATCH {
            self.flush_raw();
        }
        let start = self.raw_buf.len();
        self.raw_buf.extend_from_slice(pkt);
        self.raw_items.push((start, pkt.len(), SocketAddr::new(remote.ip(), 0)));
    }

    /// Send everything queued.
    pub fn flush(&mut self) {
        self.flush_udp();
        self.flush_raw();
    }

    fn flush_udp(&mut self) {
        let Some(r) = self.run.take() else { return };
        let Some(sock) = self.udp.get(r.sock) else {
            self.gso_buf.clear();
            return;
        };
        let seg = (r.count > 1).then_some(r.seg);
        match sock.send(r.dst, Some(r.local.ip()), &self.gso_buf, seg) {
            Ok(()) => {
                add(&self.counters.esp_tx_packets, r.count as u64);
                add(&self.counters.esp_tx_bytes, self.gso_buf.len() as u64);
                if r.count > 1 {
                    add(&self.counters.gso_sends, 1);
                    add(&self.counters.gso_segments, r.count as u64);
                }
            }
            Err(_) => add(&self.counters.send_errors, r.count as u64),
        }
        self.gso_buf.clear();
    }

    fn flush_raw(&mut self) {
        if self.raw_items.is_empty() {
            return;
        }
        for v6 in [false, true] {
            let sock = if v6 { &self.raw_v6 } else { &self.raw_v4 };
            let mut msgs: [(&[u8], SocketAddr); crate::sys::MMSG_BATCH] =
                [(&[], SocketAddr::from(([0, 0, 0, 0], 0))); crate::sys::MMSG_BATCH];
            let mut n = 0;
            for &(start, len, dst) in self.raw_items.iter().filter(|i| i.2.is_ipv6() == v6) {
                msgs[n] = (&self.raw_buf[start..start + len], dst);
                n += 1;
            }
            if n == 0 {
                continue;
            }
            let Some(sock) = sock else {
                add(&self.counters.send_errors, n as u64);
                continue;
            };
            let (sent, failed) = sock.send(&msgs[..n]);
            add(&self.counters.esp_tx_packets, sent as u64);
            add(&self.counters.esp_tx_bytes, msgs[..sent].iter().map(|m| m.0.len() as u64).sum());
            add(&self.counters.send_errors, failed as u64);
        }
        self.raw_items.clear();
        self.raw_buf.clear();
    }
}

/// The socket of `udp` for traffic from `local` to `remote`: one bound to that address and port,
/// else a wildcard one of the family, else any of the family.
pub fn udp_socket_for(udp: &[Arc<EncapSocket>], local: &SocketAddr, remote: &SocketAddr) -> Option<usize> {
    udp.iter()
        .position(|s| s.serves(local, remote))
        .or_else(|| udp.iter().position(|s| s.bound.is_ipv4() == remote.is_ipv4()))
}

/// Send one datagram (IKE with its marker, or a NAT keepalive) outside the batches.
pub fn send_one(
    udp: &[Arc<EncapSocket>],
    counters: &Counters,
    local: SocketAddr,
    remote: SocketAddr,
    data: &[u8],
) -> std::io::Result<()> {
    let Some(i) = udp_socket_for(udp, &local, &remote) else {
        add(&counters.send_errors, 1);
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no UDP socket for this local address",
        ));
    };
    let r = udp[i].send(remote, Some(local.ip()), data, None);
    if r.is_err() {
        add(&counters.send_errors, 1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// Equal-size packets to one peer leave in GSO runs, a shorter one closes a run, a change of
    /// size or peer starts a new one; the receiver sees every datagram, in order, intact.
    #[test]
    fn gso_runs_preserve_order_and_sizes() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dst = rx.local_addr().unwrap();
        let sock = Arc::new(EncapSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, None).unwrap());
        let local = sock.bound;
        let counters = Arc::new(Counters::default());
        let mut eg = Egress::new(vec![sock], None, None, counters.clone());
        let sizes = [300, 300, 300, 120, 300, 300, 500, 40];
        for (i, &n) in sizes.iter().enumerate() {
            eg.push_udp(0, local, dst, &vec![i as u8; n]);
        }
        eg.flush();
        let mut buf = [0u8; 2048];
        for (i, &n) in sizes.iter().enumerate() {
            let (len, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(len, n, "datagram {i}");
            assert!(buf[..len].iter().all(|&b| b == i as u8), "datagram {i} content");
        }
        let c = counters.snapshot();
        assert_eq!(c.esp_tx_packets, sizes.len() as u64);
        assert_eq!(c.send_errors, 0);
        if eg.udp[0].max_gso_segments() > 1 {
            // Runs: [300 300 300 120] [300 300] [500 40] (a shorter last segment may join).
            assert_eq!((c.gso_sends, c.gso_segments), (3, 8));
        }
    }

    #[test]
    fn raw_without_socket_counts_errors() {
        let counters = Arc::new(Counters::default());
        let mut eg = Egress::new(Vec::new(), None, None, counters.clone());
        eg.push_raw("192.0.2.1:0".parse().unwrap(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        eg.flush();
        assert_eq!(counters.snapshot().send_errors, 1);
        assert_eq!(counters.snapshot().esp_tx_packets, 0);
    }
}

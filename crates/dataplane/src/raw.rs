//! Raw IP protocol 50 sockets for ESP without NAT. The kernel here has no ESP handler, so these
//! sockets see every ESP packet addressed to the host. On receive an IPv4 raw socket hands us the
//! IP header too (we skip it); an IPv6 one does not. On send the kernel builds the IP header.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;
use tandem_esp::esp_packet::IPPROTO_ESP;

pub struct RawEspSocket {
    sock: Socket,
    v6: bool,
}

impl RawEspSocket {
    /// Open the IPv4 or IPv6 raw ESP socket (needs CAP_NET_RAW).
    /// `mark`: the SO_MARK of outer packets (see `DataplaneConfig::fwmark`).
    pub fn open(v6: bool, buffer: usize, mark: Option<u32>) -> io::Result<RawEspSocket> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(IPPROTO_ESP))))?;
        if let Some(m) = mark {
            sock.set_mark(m)?;
        }
        sock.set_nonblocking(true)?;
        sys::set_socket_buffers(&sock, buffer);
        Ok(RawEspSocket { sock, v6 })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Receive a batch into `bufs`. For each datagram, `out[i] = (start, len, source)`: the ESP
    /// packet is `bufs[i][start..start + len]` (IPv4 headers are skipped). Malformed IPv4
    /// datagrams get `len` 0. `WouldBlock` when empty.
    pub fn recv(
        &self,
        bufs: &mut [&mut [u8]],
        out: &mut [(usize, usize, Option<IpAddr>)],
    ) -> io::Result<usize> {
        let mut raw = [(0usize, None); sys::MMSG_BATCH];
        let n = sys::recv_mmsg(self.raw_fd(), bufs, &mut raw)?;
        for i in 0..n {
            let (len, src) = raw[i];
            out[i] =
                if self.v6 { (0, len, src) } else { strip_ipv4(&bufs[i][..len.min(bufs[i].len())], src) };
        }
        Ok(n)
    }

    /// Send ESP packets to their destinations (port ignored). Returns (sent, failed).
    pub fn send(&self, msgs: &[(&[u8], SocketAddr)]) -> (usize, usize) {
        sys::send_mmsg(self.raw_fd(), msgs)
    }
}

/// Where the ESP payload starts inside a raw IPv4 datagram, and its length.
fn strip_ipv4(d: &[u8], src: Option<IpAddr>) -> (usize, usize, Option<IpAddr>) {
    if d.len() < 20 || d[0] >> 4 != 4 {
        return (0, 0, src);
    }
    let ihl = usize::from(d[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([d[2], d[3]])).min(d.len());
    if ihl < 20 || total < ihl {
        return (0, 0, src);
    }
    (ihl, total - ihl, src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_skipped() {
        let mut d = vec![0u8; 20 + 16];
        tandem_esp::ip::write_ip_header(&mut d, [1, 2, 3, 4].into(), [5, 6, 7, 8].into(), 50, 16).unwrap();
        assert_eq!(strip_ipv4(&d, None), (20, 16, None));
        assert_eq!(strip_ipv4(&d[..10], None).1, 0);
        d[0] = 0x43;
        assert_eq!(strip_ipv4(&d, None).1, 0);
    }
}

//! UDP encapsulation sockets (RFC 3948), normally port 4500, shared with IKE. quinn-udp gives
//! batched receive (recvmmsg with UDP GRO: one entry can hold many datagrams of one stride) and
//! GSO send (one sendmsg carries up to 64 equal-size ESP packets to one peer), plus IP_PKTINFO
//! so a wildcard-bound socket still knows and chooses its local address.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

pub struct EncapSocket {
    sock: std::net::UdpSocket,
    state: UdpSocketState,
    /// The bound address (possibly a wildcard).
    pub bound: SocketAddr,
}

impl EncapSocket {
    /// `mark`: the SO_MARK (fwmark) of outer packets, so policy routing can keep them out of
    /// the TUN (see `DataplaneConfig::fwmark`).
    pub fn bind(addr: SocketAddr, buffer: usize, mark: Option<u32>) -> io::Result<EncapSocket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if let Some(m) = mark {
            s.set_mark(m)?;
        }
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        // An address that is not (yet) on an interface binds all the same: an HA standby serves its
        // cluster's virtual address the moment keepalived adds it, without a restart.
        if addr.is_ipv6() {
            s.set_freebind_v6(true)?;
        } else {
            s.set_freebind_v4(true)?;
        }
        s.set_reuse_address(true)?;
        crate::sys::set_socket_buffers(&s, buffer);
        s.bind(&addr.into())?;
        let sock: std::net::UdpSocket = s.into();
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let bound = sock.local_addr()?;
        Ok(EncapSocket { sock, state, bound })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }

    /// Segments one GSO send may carry (1 without GSO; drops to 1 if the kernel refuses GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receive a batch (non-blocking; `WouldBlock` when empty).
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.state.recv(UdpSockRef::from(&self.sock), bufs, meta)
    }

    /// The local address of a received datagram: the bound address, or with a wildcard bind the
    /// destination address the kernel reported.
    pub fn local_of(&self, meta: &RecvMeta) -> SocketAddr {
        match meta.dst_ip {
            Some(ip) if self.bound.ip().is_unspecified() => SocketAddr::new(unmap(ip), self.bound.port()),
            _ => self.bound,
        }
    }

    /// Send `contents` to `dst`; with `segment_size`, as consecutive datagrams of that size (the
    /// last may be shorter) in one GSO call. `src` picks the source address on a wildcard socket.
    pub fn send(
        &self,
        dst: SocketAddr,
        src: Option<IpAddr>,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let src_ip = if self.bound.ip().is_unspecified() { src } else { None };
        let t = Transmit { destination: dst, ecn: None, contents, segment_size, src_ip };
        self.state.try_send(UdpSockRef::from(&self.sock), &t)
    }

    /// Whether this socket can send to `dst` from `local` (family and, when bound to one
    /// address, that address).
    pub fn serves(&self, local: &SocketAddr, dst: &SocketAddr) -> bool {
        self.bound.is_ipv4() == dst.is_ipv4()
            && (self.bound.ip().is_unspecified() || self.bound.ip() == local.ip())
            && (local.port() == 0 || self.bound.port() == local.port())
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

//! The OS edge that no crate wraps for us the way we need it: `poll(2)` over a reused descriptor
//! list, and `recvmmsg(2)`/`sendmmsg(2)` on the raw ESP sockets with preallocated headers (one
//! system call per batch, no allocation per call). Every `unsafe` block of the crate is in this
//! file, each with the reason it is sound.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// Wakes a worker blocked in `poll` (control-plane changes, shutdown). An eventfd.
pub struct Waker(nix::sys::eventfd::EventFd);

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let flags = nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC;
        Ok(Waker(nix::sys::eventfd::EventFd::from_flags(flags)?))
    }

    pub fn wake(&self) {
        // EAGAIN means the counter is saturated: already awake.
        let _ = self.0.write(1);
    }

    /// Consume pending wake-ups (call when poll reported the waker readable).
    pub fn drain(&self) {
        let _ = self.0.read();
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A reusable `poll(2)` set of descriptors waiting for input.
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    pub fn new(fds: &[RawFd]) -> PollSet {
        PollSet { fds: fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect() }
    }

    /// Wait up to `timeout_ms` for input on any descriptor. EINTR counts as a timeout.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        for p in &mut self.fds {
            p.revents = 0;
        }
        // SAFETY: `fds` is a valid, exclusively borrowed array of `pollfd` of the given length;
        // the kernel only writes `revents` inside it. The descriptors are owned by the caller and
        // outlive the call (a closed descriptor only yields POLLNVAL).
        let r = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// True when descriptor number `i` (in construction order) is readable or in error (a read
    /// then reports the error).
    pub fn ready(&self, i: usize) -> bool {
        self.fds.get(i).is_some_and(|p| p.revents != 0)
    }
}

/// Raise a socket buffer past `net.core.[rw]mem_max` when privileged (SO_*BUFFORCE), else as far
/// as allowed. Large buffers keep bursts of ESP from being dropped at the socket.
pub fn set_socket_buffers(sock: &socket2::Socket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = sock.set_recv_buffer_size(bytes);
    }
    if setsockopt(sock, sockopt::SndBufForce, &bytes).is_err() {
        let _ = sock.set_send_buffer_size(bytes);
    }
}

/// Most datagrams moved by one `recvmmsg`/`sendmmsg` call.
pub const MMSG_BATCH: usize = 64;

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = (*addr).into();
    // SAFETY: `SockAddr` holds a valid `sockaddr_storage` of which `len()` bytes are set;
    // copying the whole storage is a plain-data copy.
    let storage = unsafe { *sa.as_ptr().cast::<libc::sockaddr_storage>() };
    (storage, sa.len())
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`; storage is larger
            // and suitably aligned for it.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receive up to `bufs.len()` (at most `MMSG_BATCH`) datagrams with one system call. Fills
/// `out[i] = (len, source)` and returns the count; `WouldBlock` when nothing is queued.
pub fn recv_mmsg(
    fd: RawFd,
    bufs: &mut [&mut [u8]],
    out: &mut [(usize, Option<IpAddr>)],
) -> io::Result<usize> {
    let n = bufs.len().min(out.len()).min(MMSG_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut names: [libc::sockaddr_storage; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above (null pointers and zero lengths).
    let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr().cast(), iov_len: bufs[i].len() };
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a live name buffer and one iovec over an exclusively
    // borrowed byte slice of the stated length; all of them outlive the call, and the kernel
    // writes at most those lengths. MSG_DONTWAIT keeps the call from blocking.
    let r = unsafe {
        libc::recvmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = r as usize;
    for i in 0..r {
        out[i] = (hdrs[i].msg_len as usize, from_storage(&names[i]).map(|a| a.ip()));
    }
    Ok(r)
}

/// Send datagrams `(payload, destination)` with as few `sendmmsg` calls as it takes. A datagram
/// the kernel refuses (unreachable destination, too big) is skipped. Returns (sent, failed).
pub fn send_mmsg(fd: RawFd, msgs: &[(&[u8], SocketAddr)]) -> (usize, usize) {
    let (mut done, mut failed) = (0, 0);
    while done < msgs.len() {
        let chunk = &msgs[done..msgs.len().min(done + MMSG_BATCH)];
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_storage; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        for (i, (data, dst)) in chunk.iter().enumerate() {
            let (storage, len) = to_storage(dst);
            names[i] = storage;
            iovs[i] = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = len;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live address and one iovec over a borrowed slice of
        // the stated length; the kernel only reads them (the const-to-mut cast is for the C
        // signature). All outlive the call.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), chunk.len() as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // The socket buffer is full: the rest of this batch is lost.
                io::ErrorKind::WouldBlock => return (done - failed, failed + msgs.len() - done),
                // The first datagram of the chunk failed: skip it.
                _ => {
                    failed += 1;
                    done += 1;
                    continue;
                }
            }
        }
        if r == 0 {
            failed += 1;
            done += 1;
        } else {
            done += (r as usize).min(chunk.len());
        }
    }
    (done - failed, failed)
}

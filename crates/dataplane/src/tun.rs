//! The TUN edge (tun-rs): create and configure the interface, read batches of packets (offload
//! super-frames split into MTU-sized packets by tun-rs), write frames (coalesced by `gro` when
//! offload is on).

use crate::config::TunConfig;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tun_rs::{DeviceBuilder, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Size of the buffer one offload read needs (virtio header + a 64 KiB super-frame).
pub const TUN_SCRATCH_LEN: usize = VIRTIO_NET_HDR_LEN + 65535;

pub struct Tun {
    dev: SyncDevice,
    name: String,
    offload: bool,
}

impl Tun {
    /// Create (or attach to) the interface, set its MTU and addresses and bring it up.
    pub fn create(cfg: &TunConfig) -> io::Result<Tun> {
        if cfg.name.is_empty() || cfg.name.len() > 15 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "TUN name must be 1-15 bytes"));
        }
        let mut b = DeviceBuilder::new().name(&cfg.name).mtu(cfg.mtu).enable(true);
        let offload = cfg.offload;
        b = b.with(|g| {
            g.offload(offload);
            g.tx_queue_len(1000);
        });
        for (addr, prefix) in &cfg.addresses {
            b = match addr {
                std::net::IpAddr::V4(a) => b.ipv4(*a, *prefix, None),
                std::net::IpAddr::V6(a) => b.ipv6(*a, *prefix),
            };
        }
        let dev = b.build_sync()?;
        dev.set_nonblocking(true)?;
        let name = dev.name().unwrap_or_else(|_| cfg.name.clone());
        // tun-rs falls back to plain frames when the kernel refuses IFF_VNET_HDR/TUNSETOFFLOAD.
        let offload = dev.tcp_gso();
        Ok(Tun { dev, name, offload })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn offload(&self) -> bool {
        self.offload
    }

    pub fn raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    /// Read packets until the interface is empty or fewer than `min_free` buffers remain. Each
    /// packet lands at `bufs[i][offset..offset + sizes[i]]`. Returns the count (0: nothing queued).
    /// A malformed offload frame is skipped (counted by the caller through `errors`).
    pub fn recv_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
        min_free: usize,
        errors: &mut u64,
    ) -> io::Result<usize> {
        let mut n = 0;
        let mut reads = 0;
        while bufs.len() - n >= min_free.max(1) && reads < 64 {
            reads += 1;
            match self.dev.recv_multiple(scratch, &mut bufs[n..], &mut sizes[n..], offset) {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A bad GSO header or too many segments: the frame is lost, the device is fine.
                Err(e) if e.raw_os_error().is_none() || e.kind() == io::ErrorKind::InvalidInput => {
                    *errors += 1
                }
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
    }

    /// Write one frame: with offload, a virtio-net header followed by the packet (see `gro`).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.dev.send(frame)
    }
}

//! Dataplane settings with defaults that work without tuning. The daemon fills these from the
//! operator's configuration; tests build them directly.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::worker::WorkerLayout;

/// Largest ESP overhead for an IPv4 outer header with UDP encapsulation: outer IPv4 (20), UDP (8),
/// ESP header (8), the longest IV (AES-CBC, 16), pad length and next header (2), the worst block
/// padding (15) and the longest ICV (HMAC-SHA2-512-256, 32).
pub const MAX_ESP_OVERHEAD_V4: usize = 20 + 8 + 8 + 16 + 2 + 15 + 32;

/// The same with an IPv6 outer header (40 bytes instead of 20).
pub const MAX_ESP_OVERHEAD_V6: usize = MAX_ESP_OVERHEAD_V4 + 20;

/// The inner MTU that always fits a 1500-byte path with an IPv4 outer header (1399, rounded
/// down to a multiple of 4 → 1396; we use the conventional 1400 only when the overhead allows).
pub const fn inner_mtu_for(path_mtu: usize, overhead: usize) -> usize {
    (path_mtu - overhead) & !3
}

/// Default TUN MTU: 1500 minus the worst-case IPv4/UDP/ESP overhead, rounded to 4 (1396). With
/// AES-GCM (8-byte IV, 16-byte ICV, padding to 4) real overhead is 58 bytes, so 1400 fits too;
/// the conservative value keeps AES-CBC + HMAC-SHA2-512 safe without fragmentation.
pub const DEFAULT_TUN_MTU: u16 = inner_mtu_for(1500, MAX_ESP_OVERHEAD_V4) as u16;

/// One TUN interface.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name (`tandem0`, or `tnd-<vpn>` for a route-based vpn). At most 15 bytes.
    pub name: String,
    pub mtu: u16,
    /// Ask the kernel for IFF_VNET_HDR + TUNSETOFFLOAD (TSO4/6, USO): fewer, larger reads from
    /// the TUN which we segment ourselves, and coalesced (GRO) writes back into it.
    pub offload: bool,
    /// Addresses to put on the interface (address, prefix length); often empty (the operator or
    /// the daemon routes traffic into the interface).
    pub addresses: Vec<(IpAddr, u8)>,
}

impl TunConfig {
    pub fn new(name: impl Into<String>) -> Self {
        TunConfig { name: name.into(), mtu: DEFAULT_TUN_MTU, offload: true, addresses: Vec::new() }
    }
}

/// Settings of the whole dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// The policy-based TUN interface (SPD lookups decide what is protected).
    pub tun: TunConfig,
    /// Addresses of the UDP-encapsulation sockets (normally port 4500), shared with IKE. A
    /// wildcard address is allowed: the local address of each datagram then comes from
    /// IP_PKTINFO.
    pub natt_bind: Vec<SocketAddr>,
    /// Open raw IP protocol 50 sockets (IPv4 and IPv6) for ESP without NAT (needs CAP_NET_RAW).
    pub raw_esp: bool,
    /// Send a NAT keepalive (0xFF) to a UDP-encapsulating peer after this long without other
    /// outbound traffic to it (RFC 3948 section 2.3). `None` disables keepalives.
    pub keepalive_interval: Option<Duration>,
    /// At most one Acquire per reqid in this interval.
    pub acquire_interval: Duration,
    /// Packets held per reqid while its SA is being negotiated (oldest dropped beyond this).
    pub pending_per_reqid: usize,
    /// At most one InvalidSpi event per (SPI, remote address) in this interval.
    pub invalid_spi_interval: Duration,
    /// SO_RCVBUF/SO_SNDBUF of the outer sockets (SO_*BUFFORCE when privileged).
    pub socket_buffer: usize,
    /// IKE datagrams from the NAT-T sockets that may wait for the control plane (beyond it they
    /// are dropped and counted; the dataplane never blocks on the control plane). Control
    /// events have their own channel and are never dropped (see `events`).
    pub event_capacity: usize,
    /// How long a replaced inbound SA keeps accepting packets after a rekey (in-flight packets).
    pub rekey_linger: Duration,
    /// SO_MARK put on the outer (UDP and raw ESP) sockets. The daemon routes protected traffic
    /// into the TUN with a policy-routing rule that skips marked packets, so the dataplane's own
    /// ESP (and IKE) never loops back into the TUN even when a selector covers the peer's address.
    pub fwmark: Option<u32>,
    /// How the two directions are spread over worker threads (see `worker`).
    pub workers: WorkerLayout,
}

impl DataplaneConfig {
    pub fn new(tun: TunConfig, natt_bind: Vec<SocketAddr>) -> Self {
        DataplaneConfig {
            tun,
            natt_bind,
            raw_esp: true,
            keepalive_interval: Some(Duration::from_secs(20)),
            acquire_interval: Duration::from_secs(1),
            pending_per_reqid: 16,
            invalid_spi_interval: Duration::from_secs(1),
            socket_buffer: 8 << 20,
            event_capacity: 1024,
            rekey_linger: Duration::from_secs(5),
            fwmark: None,
            workers: WorkerLayout::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mtu_fits_worst_case_overhead() {
        assert_eq!(MAX_ESP_OVERHEAD_V4, 101);
        assert_eq!(DEFAULT_TUN_MTU, 1396);
        assert!(DEFAULT_TUN_MTU as usize + MAX_ESP_OVERHEAD_V4 <= 1500);
        assert_eq!(DEFAULT_TUN_MTU % 4, 0);
    }
}

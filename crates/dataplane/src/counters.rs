//! Global dataplane counters (per-SA counters live in the SAD). Relaxed atomics: each is written
//! by one worker thread per batch and read by the control plane; no lock on the hot path.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters shared by the worker threads.
        #[derive(Debug, Default)]
        pub struct Counters { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A copy of the counters at one moment (`DataplaneHandle::counters`).
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
        pub struct CountersSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Packets read from the TUN interfaces (after splitting offload super-frames).
    tun_rx_packets,
    tun_rx_bytes,
    /// Packets written to the TUN interfaces (before GRO coalescing).
    tun_tx_packets,
    tun_tx_bytes,
    /// ESP packets sent (UDP-encapsulated or raw) and their size on the wire without IP/UDP.
    esp_tx_packets,
    esp_tx_bytes,
    /// ESP packets received and handed to the ESP core.
    esp_rx_packets,
    esp_rx_bytes,
    /// ESP packets decrypted and written to a TUN.
    esp_rx_ok,
    /// IKE datagrams on the NAT-T port handed to the control plane / sent for it.
    ike_rx,
    ike_tx,
    nat_keepalive_rx,
    nat_keepalive_tx,
    /// Outbound packets matching no policy (dropped: a TUN has nowhere else to send them).
    drop_no_policy,
    /// Outbound packets matching a Bypass policy (dropped: nothing to bypass to on a TUN).
    drop_bypass,
    /// Packets matching a Discard policy.
    drop_discard,
    /// Packets of a trap policy queued while the SA is negotiated.
    trap_queued,
    /// Queued packets dropped (queue full, or held too long).
    drop_trap_overflow,
    /// Queued packets sent once their SA was installed.
    trap_flushed,
    /// Acquire events sent.
    acquires,
    /// Outbound packets that failed to parse (not IPv4/IPv6, bad lengths).
    drop_malformed_outbound,
    /// Outbound packets that the ESP core refused (SA exhausted, too big).
    drop_seal_error,
    /// HA: outbound packets not sealed because their SA was at its sequence-number lease
    /// ceiling (the standby's ack of a renewal was late). Not in `drop_seal_error`: the SA is
    /// healthy, and a rising count means the sync link lags.
    drop_lease_stall,
    /// Inbound packets too short to be ESP (1-7 bytes on the NAT-T port).
    drop_runt,
    /// Inbound ESP for an SPI we do not know.
    drop_unknown_spi,
    /// Inbound ESP refused by the ESP core (authentication failure, replay, bad padding, dummy
    /// packets...); `esp_stats()` has the reasons.
    drop_open_error,
    /// Decrypted packets whose inner addresses do not match the SA's selectors (RFC 4301).
    drop_inbound_policy,
    /// Decrypted packets that are not well-formed IP, carry an unexpected next header, or are
    /// transport-mode payloads whose IP header cannot be rebuilt.
    drop_malformed_inner,
    /// InvalidSpi events sent to the control plane.
    invalid_spi_reports,
    /// Events dropped because the control plane did not keep up: IKE datagrams beyond the
    /// datagram channel's capacity, and INVALID_SPI reports beyond their cap. Lifetime events
    /// and Acquires are never dropped (see `events`).
    drop_events,
    /// Control events merged into an equal one that was still waiting for the control plane.
    events_coalesced,
    /// Send failures on the outer sockets and write failures on the TUN.
    send_errors,
    tun_write_errors,
    /// Datagrams handed to sendmsg with UDP GSO, and the segments they carried.
    gso_sends,
    gso_segments,
    /// Receive calls returning data, and the datagrams they carried (batching efficiency).
    rx_batches,
    rx_datagrams,
}

#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

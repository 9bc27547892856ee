//! tandem-ha-link: the sync channel between the two nodes of an HA pair.
//!
//! It moves opaque messages (`Vec<u8>`) between exactly two nodes, reliably and in order per
//! channel, over QUIC (quinn) with TLS 1.3. It knows nothing about IKE; the HA layer above decides
//! what the messages mean. The link itself is not trusted: it may be a shared LAN, and the
//! messages carry SA keys.
//!
//! # Trust model
//! - Each node has its own key ([`keygen`], stored with [`NodeKey::write_pem_file`], mode 0600).
//!   Its [`Pin`] is the SHA-256 of its certificate's SubjectPublicKeyInfo, in lowercase hex; the
//!   operator copies each node's pin into the other's configuration.
//! - Both sides authenticate: the server requires a client certificate, and each side accepts only
//!   the single key whose SPKI hashes to the configured peer pin. No CA, names or expiry are
//!   consulted, so rotating a key means changing the peer's pin. The handshake signature is checked
//!   by rustls against that key, proving possession.
//! - TLS 1.3 only (QUIC requires it; TLS 1.2 is not even compiled in), aws-lc-rs, key exchange
//!   X25519+ML-KEM-768 first, then X25519. ALPN must be `tandem-ha/1`. No session resumption and no
//!   0-RTT, so every connection runs the full handshake and pin check.
//! - The peer's address is not trusted or checked: only the pin is. A node with the right key
//!   behind NAT or on another address still connects; anything else fails the handshake, is counted
//!   in [`LinkStats::auth_failures`]/[`LinkStats::handshake_failures`], and delivers nothing.
//!
//! # Roles
//! Both nodes run the same code and bind `local`. To have exactly one connection, the node whose
//! own pin is lower (as bytes, which is the same as comparing the hex strings) is the client and
//! dials `remote`; the other is the server and only accepts ([`Role::for_pins`]). Pins are unique
//! per node and both nodes know both, so they always agree, with no tie-break round-trip, and
//! neither depends on addresses (which NAT or a wildcard bind can make differ between the two
//! views). If the server sees a new connection from the peer while one is up (the client restarted
//! before the server noticed), the new one replaces the old.
//!
//! # Failure behaviour
//! - Keep-alives every `keepalive` (100 ms) and an idle timeout (500 ms; QUIC uses the smaller of
//!   the two sides' values) detect a dead peer or link: the connection ends with
//!   [`DownReason::TimedOut`] and [`LinkEvent::PeerDown`] is reported.
//! - The client redials with backoff (100 ms doubling to 2 s per failure, back to 100 ms once a
//!   connection has stayed up for 2 s); the server keeps accepting, asks unvalidated sources for a
//!   QUIC Retry (so spoofed floods cost it nothing), and runs at most 32 handshakes at once. Each new connection is reported with [`LinkEvent::PeerUp`] and a
//!   larger generation, and the upper layer must resync: messages queued while no connection was up
//!   are dropped when the next comes up ([`ChannelStats::purged`]), and messages in flight when a
//!   connection died may be lost.
//! - [`LinkTx::send`] never blocks or awaits. Each channel has a queue bounded in messages and
//!   bytes; when it is full, `send` returns [`SendError::Full`] and counts it, and the caller should
//!   consider itself out of sync (and resync once it can send again).
//! - A peer that breaks the framing (a frame over `max_message`, a stream it should not open or
//!   close) gets its connection closed with an application error; that is reported as
//!   [`DownReason::Protocol`] and counted, never a panic.
//! - Memory is bounded on both sides: send queues by their limits, receiving by a byte budget per
//!   channel (when the reader does not keep up, QUIC flow control stops the peer's sender).
//!
//! # Framing
//! Each side opens two unidirectional streams, live and bulk, each starting with one kind byte.
//! A message is a 4-byte big-endian length and that many bytes. Bulk has the lower stream
//! priority, and its flow-control window is kept well below the connection's send window, so a
//! bulk transfer can never fill the buffers a live message needs; at the receiver, live messages
//! are also delivered ahead of queued bulk ones.
//!
//! # Secrets
//! Private key bytes are kept in zeroizing buffers. Messages are wiped when the link drops them
//! (queued, purged, undelivered); a delivered message belongs to the caller, who wipes it.
//! quinn's own stream buffers (plaintext until packets are sealed) are freed without wiping; that
//! is outside this crate's reach.
#![forbid(unsafe_code)]

mod key;
mod link;
mod rx;
mod stats;
mod tls;

pub use key::{keygen, KeyError, NodeKey, Pin};
pub use link::{Link, LinkConfig, LinkTx, QueueLimits, Role, SendError};
pub use rx::{LinkEvent, LinkRx, TryRecvError};
pub use stats::{ChannelStats, LinkStats};
pub use tls::ALPN;

use std::fmt;

/// Which ordered stream a message travels on. Order holds within a channel, not across them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Small, urgent messages (SA changes, leases, takeover steps). Never delayed by bulk.
    Live,
    /// Large transfers (a full resync). Lower priority; uses what live leaves over.
    Bulk,
}

impl Channel {
    /// The first byte of the stream, telling the receiver which channel it is.
    pub(crate) const fn kind_byte(self) -> u8 {
        match self {
            Channel::Live => 1,
            Channel::Bulk => 2,
        }
    }

    pub(crate) const fn from_kind_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Channel::Live),
            2 => Some(Channel::Bulk),
            _ => None,
        }
    }
}

/// Why a connection ended, in [`LinkEvent::PeerDown`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownReason {
    /// Nothing heard from the peer within the idle timeout: the peer or the path is gone.
    TimedOut,
    /// The peer closed the connection. `code` is its application error code (0 shutdown,
    /// 1 protocol error, 2 replaced); `reason` is its text, untrusted and shortened.
    PeerClosed { code: u64, reason: String },
    /// We closed it because the peer broke the protocol.
    Protocol(String),
    /// A QUIC or TLS level error, from either side.
    Transport(String),
    /// The peer has no state for the connection (it restarted).
    Reset,
    /// The peer opened a newer connection, which replaces this one.
    Replaced,
    /// This link was shut down (every [`LinkTx`] dropped).
    Shutdown,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::TimedOut => f.write_str("peer timed out"),
            DownReason::PeerClosed { code, reason } => write!(f, "closed by peer (code {code}: {reason})"),
            DownReason::Protocol(why) => write!(f, "protocol error: {why}"),
            DownReason::Transport(why) => write!(f, "transport error: {why}"),
            DownReason::Reset => f.write_str("reset by peer"),
            DownReason::Replaced => f.write_str("replaced by a newer connection"),
            DownReason::Shutdown => f.write_str("link shut down"),
        }
    }
}

/// Errors of [`Link::start`]. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("HA link configuration: {0}")]
    Config(String),
    #[error("HA link socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("HA link TLS setup: {0}")]
    Tls(String),
}

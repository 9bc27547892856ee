//! tandem-ha: the active/standby sync protocol of a tandem cluster, sans-IO (issue 10,
//! guides/HA.md).
//!
//! Like the IKE engine, nothing here reads a clock or touches a socket. The daemon feeds
//! [`ActiveSync`] the snapshots the engine's observer produces and the datagrams the engine wants
//! to send; it sends the [`SyncMsg`]s it is handed over the sync link (crates/ha-link, QUIC) and
//! feeds back what arrives. On the other node [`StandbySync`] applies them to a standby
//! `Endpoint` and answers with acknowledgements.
//!
//! Two rules make a failover invisible to the peer:
//! - **write-ahead**: a datagram the engine produced leaves only once the standby has applied
//!   (and acknowledged) every snapshot taken before it. Whatever the peer has seen, the standby
//!   knows; after a takeover it answers retransmissions from the synced response and resends the
//!   synced outstanding request byte for byte, so no Message ID is reused or skipped.
//! - **sequence-number leases**: the active seals on an outbound ESP SA only up to a ceiling the
//!   standby has acknowledged, and asks for the next one well ahead of time. A takeover resumes
//!   each SA above its ceiling, so no (key, sequence number) pair, hence no AES-GCM or
//!   ChaCha20-Poly1305 nonce, is ever used twice, at any packet rate.

#![forbid(unsafe_code)]

pub mod active;
pub mod beside;
pub mod lease;
pub mod msg;
pub mod pace;
pub mod replay;
pub mod shared;
pub mod standby;

pub use active::{ActiveSync, BulkSa, Released};
pub use beside::BesideWatch;
pub use lease::{LeaseBook, LeaseOutcome};
pub use msg::{SaChange, SyncMsg, PROTOCOL_VERSION};
pub use pace::TickPace;
pub use shared::{place_child_sa, Placement, Shared, SharedExchanges};
pub use standby::StandbySync;

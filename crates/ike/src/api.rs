//! The engine's inputs and outputs as seen from the daemon (and from HA sync): datagrams out,
//! events, SA listings. Nothing here touches a socket or a clock.

use crate::config::{Identity, IpsecMode, Lifetimes};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tandem_crypto::{DhGroup, EncrAlg, Esn, IntegAlg, PrfAlg};
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// Local handle of an IKE SA (stable for the SA's life, not sent on the wire). Equal to the local
/// IKE SPI, which is unique per node.
pub type IkeSaId = u64;

/// A datagram to send. `data` never includes the 4-byte non-ESP marker: the daemon adds it when
/// `local` uses port 4500 (RFC 3948) and strips it on receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub data: Vec<u8>,
}

/// Keys of one direction of a CHILD SA.
#[derive(Clone, Serialize, Deserialize)]
pub struct DirectionKeys {
    /// Encryption key material including the AEAD salt (see `EncrAlg::key_material_len`).
    pub encr_key: Zeroizing<Vec<u8>>,
    /// Integrity key (empty for AEAD).
    pub integ_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKeys(<redacted>)")
    }
}

/// A mirrored CHILD SA as the dataplane will route it once this node takes it over: an HA
/// standby routes these selectors into its TUN ahead of time (`Endpoint::mirrored_routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredRoute {
    pub reqid: u32,
    pub spi_in: u32,
    /// The selectors as installed (transport mode across a NAT: the outer addresses).
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
}

/// Everything the ESP dataplane needs to install one CHILD SA (both directions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSaInstall {
    pub ike_sa: IkeSaId,
    pub vpn: String,
    pub child: String,
    /// Stable id of the CHILD SA configuration + IKE SA pairing; survives rekeys (like reqid).
    pub reqid: u32,
    /// SPI we chose: the peer sends to it (inbound SA).
    pub spi_in: u32,
    /// SPI the peer chose: we send to it (outbound SA).
    pub spi_out: u32,
    pub mode: IpsecMode,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub esn: Esn,
    pub keys_in: DirectionKeys,
    pub keys_out: DirectionKeys,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Outer addresses; with `udp_encap` the ports are the IKE ports of the NAT-T exchange (4500).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Use ESP-in-UDP (RFC 3948) rather than raw IP protocol 50.
    pub udp_encap: bool,
    pub replay_window: u32,
    pub lifetimes: Lifetimes,
    /// The SA this one replaces (rekey): the dataplane keeps the old inbound SA for a short while.
    pub replaces_spi_in: Option<u32>,
    /// We answered the rekey: keep sending on the old SA until the peer's first packet on the new
    /// one (the peer installs the new SA only when our response arrives), as strongSwan does.
    #[serde(default)]
    pub defer_outbound: bool,
    /// Key of the outbound SA's CBC IV generator (IVs are the sequence number encrypted under it),
    /// drawn from the engine's injected random source so that a seeded run is reproducible. Unused
    /// with AEAD. Never logged (`DirectionKeys` neither).
    #[serde(default)]
    pub iv_key: Zeroizing<Vec<u8>>,
}

/// Why an SA went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownReason {
    /// Deleted by us (operator, lifetime, rekey done).
    LocalDelete,
    /// The peer sent a Delete.
    PeerDelete,
    /// Liveness checks or retransmissions were not answered.
    PeerDead,
    /// The peer reported INVALID_SPI for this SA.
    InvalidSpi,
    /// Replaced by a rekeyed SA.
    Rekeyed,
    /// Hard lifetime expired.
    Expired,
    /// A newer IKE SA with the same identities replaced it (`unique = replace`).
    Duplicate,
    /// Negotiation failed (with the notify type or a text).
    Failed(String),
}

/// Output events, drained with `Endpoint::poll_event`.
#[derive(Debug, Clone)]
pub enum Event {
    /// An IKE SA completed IKE_AUTH (or a rekeyed IKE SA took over).
    IkeSaUp { ike_sa: IkeSaId, vpn: String },
    /// An IKE SA is gone; its CHILD SAs have been reported down before this.
    IkeSaDown { ike_sa: IkeSaId, vpn: String, reason: DownReason },
    /// Install this CHILD SA in the dataplane.
    ChildSaUp(Box<ChildSaInstall>),
    /// Remove the CHILD SA with these SPIs from the dataplane.
    ChildSaDown {
        ike_sa: IkeSaId,
        vpn: String,
        child: String,
        reqid: u32,
        spi_in: u32,
        spi_out: u32,
        reason: DownReason,
    },
    /// RFC 6311 IPSEC_REPLAY_COUNTER_SYNC from a clustered peer: move this CHILD SA's outbound
    /// sequence number forward by `delta`, past the jump of the peer's new active node's inbound
    /// replay window, so that what we send next is not refused as a replay.
    OutboundSeqAdvance { ike_sa: IkeSaId, spi_in: u32, spi_out: u32, delta: u64 },
    /// A negotiation attempt failed (shown in logs and the API).
    Failure { vpn: Option<String>, message: String },
}

/// IKE SA states as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IkeSaState {
    Connecting,
    Established,
    Rekeying,
    Deleting,
}

/// One IKE SA as listed by `show ike-sa`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IkeSaInfo {
    pub id: IkeSaId,
    /// vpn name, or `None` when not yet known (responder before IKE_AUTH): shown as "(unknown)".
    pub vpn: Option<String>,
    pub state: IkeSaState,
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub local_id: Option<Identity>,
    pub remote_id: Option<Identity>,
    pub encr: Option<EncrAlg>,
    pub prf: Option<PrfAlg>,
    pub integ: Option<IntegAlg>,
    pub dh: Option<DhGroup>,
    pub nat_local: bool,
    pub nat_remote: bool,
    /// Seconds since the SA was established.
    pub established_secs: Option<u64>,
    pub rekey_in_secs: Option<u64>,
    pub child_sas: usize,
    /// Mirrored from the HA active node; this node does not run it (yet).
    #[serde(default)]
    pub standby: bool,
}

/// One CHILD SA as listed by `show child-sa`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSaInfo {
    pub ike_sa: IkeSaId,
    pub vpn: String,
    pub child: String,
    pub reqid: u32,
    pub spi_in: u32,
    pub spi_out: u32,
    pub mode: IpsecMode,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub dh: Option<DhGroup>,
    pub esn: Esn,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub udp_encap: bool,
    pub established_secs: u64,
    pub rekey_in_secs: Option<u64>,
    /// Mirrored from the HA active node; this node does not run it (yet).
    #[serde(default)]
    pub standby: bool,
}

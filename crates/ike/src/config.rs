//! What the engine is told about its peers: a sans-IO view of the configuration. The daemon builds
//! these from `tandem-config`; tests build them directly.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;
pub use tandem_crypto::Proposal;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// IKE identities (RFC 7296 section 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Identity {
    Ipv4(std::net::Ipv4Addr),
    Ipv6(std::net::Ipv6Addr),
    Fqdn(String),
    Rfc822(String),
    KeyId(Vec<u8>),
}

/// What to do when the peer stops answering liveness checks or deletes an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeadPeerAction {
    /// Remove the SAs and do nothing else.
    #[default]
    Clear,
    /// Remove the SAs and initiate again at once.
    Restart,
    /// Remove the SAs and keep a trap policy so traffic re-establishes them.
    Trap,
}

/// What the engine does with a CHILD SA configuration once it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAction {
    /// Wait for the peer or an operator.
    #[default]
    None,
    /// Initiate as soon as the configuration is loaded.
    Start,
    /// Install a trap policy; the first matching packet makes the engine initiate.
    Trap,
}

/// What a responder does when a peer authenticates while an IKE SA with the same identities
/// already exists for the vpn (strongSwan's `unique`). A peer that restarts without
/// INITIAL_CONTACT would otherwise pile up IKE and CHILD SAs with the same selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UniquePolicy {
    /// The new IKE SA replaces the older ones (their CHILD SAs go at once, a Delete follows).
    #[default]
    Replace,
    /// The older IKE SA stays; the new one is refused with AUTHENTICATION_FAILED.
    Keep,
    /// Duplicates are allowed (INITIAL_CONTACT still clears the older ones).
    Never,
}

/// Whether we initiate IKE SAs without a CHILD SA in IKE_AUTH (RFC 6023; strongSwan's
/// `childless`). As responder tandem always accepts them and says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Childless {
    /// The first CHILD SA rides in IKE_AUTH.
    #[default]
    Allow,
    /// Childless when the responder announced CHILDLESS_IKEV2_SUPPORTED; every CHILD SA then
    /// comes with CREATE_CHILD_SA (with its own KE when the proposal asks for PFS).
    Prefer,
    /// Always childless.
    Force,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpsecMode {
    #[default]
    Tunnel,
    Transport,
}

/// Time, byte and packet limits of an SA. `None` means no limit of that kind.
/// The soft limit (rekey) is reached first; the hard limit deletes the SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Lifetimes {
    pub rekey_time: Option<Duration>,
    pub life_time: Option<Duration>,
    /// Random amount subtracted from `rekey_time` so both peers do not rekey at once.
    pub rand_time: Duration,
    pub rekey_bytes: Option<u64>,
    pub life_bytes: Option<u64>,
    pub rekey_packets: Option<u64>,
    pub life_packets: Option<u64>,
}

/// A `security-policy` of a vpn: one CHILD SA configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildConfig {
    pub name: String,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// ESP proposals, most preferred first. A non-empty `dh` list means PFS on rekey.
    pub esp_proposals: Vec<Proposal>,
    pub mode: IpsecMode,
    pub lifetimes: Lifetimes,
    pub start_action: StartAction,
    /// Action when the peer is found dead or deletes the CHILD SA / sends INVALID_SPI for it.
    pub close_action: DeadPeerAction,
    /// Anti-replay window in packets (0 disables the check).
    pub replay_window: u32,
}

/// A `vpn`: one IKE peer with its CHILD SA configurations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConfig {
    pub name: String,
    /// Local address to use; `None` lets the daemon pick.
    pub local_addr: Option<IpAddr>,
    /// Remote address; `None` accepts any address (responder only).
    pub remote_addr: Option<IpAddr>,
    /// Remote IKE port (500 normally).
    pub remote_port: u16,
    pub local_id: Identity,
    /// Expected identity of the peer; `None` accepts any identity that has a PSK.
    pub remote_id: Option<Identity>,
    /// IKE proposals, most preferred first. The first DH group of the first proposal is used for
    /// the KE payload of an initiated IKE_SA_INIT.
    pub ike_proposals: Vec<Proposal>,
    pub ike_lifetimes: Lifetimes,
    /// Reauthenticate (make a new IKE SA with IKE_AUTH) instead of rekeying at the soft lifetime.
    pub reauth: bool,
    /// Liveness check interval; `None` disables DPD.
    pub dpd_delay: Option<Duration>,
    /// How long to wait for a liveness answer before the peer is declared dead (retransmission
    /// of the check included). `None` uses the retransmission give-up time.
    pub dpd_timeout: Option<Duration>,
    pub dpd_action: DeadPeerAction,
    /// Force UDP encapsulation (NAT-T) even when no NAT is detected.
    pub force_encap: bool,
    /// Send INITIAL_CONTACT with the first IKE_AUTH.
    pub initial_contact: bool,
    /// Uniqueness of IKE SAs with the same identities (see [`UniquePolicy`]).
    pub unique: UniquePolicy,
    /// Each CHILD SA gets a reqid of its own instead of its configuration's: a vpn that serves
    /// many peers (any remote address, policy-based). A route-based vpn keeps the configuration's,
    /// to which its interface is bound.
    pub reqid_per_sa: bool,
    /// Initiating without a CHILD SA in IKE_AUTH (see [`Childless`]).
    pub childless: Childless,
    pub children: Vec<ChildConfig>,
}

/// A pre-shared key with the identities it is valid for (an empty list matches any identity).
#[derive(Clone, Serialize, Deserialize)]
pub struct PreSharedKey {
    pub ids: Vec<Identity>,
    #[serde(skip)]
    pub secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreSharedKey").field("ids", &self.ids).field("secret", &"<redacted>").finish()
    }
}

/// Retransmission policy of the reliability layer (RFC 7296 section 2.1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RetransmitConfig {
    /// First timeout.
    pub timeout: Duration,
    /// Each retry waits `base` times longer than the last.
    pub base: f64,
    /// Retries before giving up (the SA is then considered dead).
    pub tries: u32,
    /// Upper bound of a single wait.
    pub max_timeout: Duration,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        RetransmitConfig {
            timeout: Duration::from_secs(4),
            base: 1.8,
            tries: 5,
            max_timeout: Duration::from_secs(60),
        }
    }
}

/// Node-wide engine settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// Cluster node id 1..=15 (0 = standalone). Carried in the high bits of every SPI this node
    /// allocates so cluster members never collide (RFC 6027 section 3.9).
    pub node_id: u8,
    /// Number of half-open IKE SAs above which the responder demands a COOKIE (0 = always).
    pub cookie_threshold: usize,
    pub retransmit: RetransmitConfig,
    /// Limit of half-open responder SAs kept at once; further IKE_SA_INIT requests are dropped.
    pub max_half_open: usize,
    /// How long a half-open SA may live before it is dropped.
    pub half_open_timeout: Duration,
    /// Minimum interval between two INVALID_SPI notifications to the same peer.
    pub invalid_spi_interval: Duration,
    /// Largest IKE datagram to send once both sides support fragmentation (RFC 7383); larger
    /// encrypted messages are sent as SKF fragments.
    pub fragment_size: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            node_id: 0,
            cookie_threshold: 100,
            retransmit: RetransmitConfig::default(),
            max_half_open: 10_000,
            half_open_timeout: Duration::from_secs(30),
            invalid_spi_interval: Duration::from_secs(1),
            fragment_size: 1280,
        }
    }
}

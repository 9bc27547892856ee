//! The `[ha]` table: one node of an active/standby pair.
//!
//! The first eight keys are 6WIND's HA IKE parameters with their meaning and defaults (`node-id`,
//! `interface`, `local-address`, `remote-address`, `listen-ha-group`, and the `seqnum-sync` ones
//! written flat: `sync-period-time`, `sync-period-packets`, `oseq-shift`). The others are tandem's
//! own: the sync link is QUIC with pinned certificates rather than an IPsec tunnel, so it needs a
//! port, a key and the peer's pin; write-ahead IKE sync needs an ack timeout; and the replay-window
//! jump at takeover is a security trade-off the operator should see and be able to set.

use crate::convert::Ctx;
use crate::raw::RawHa;
use crate::ConfigError;
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

const T: &str = "ha";

/// The UDP port of the sync link when `port` is not set: the one strongSwan's HA plugin uses, so
/// firewall rules written for a strongSwan pair keep working.
pub const DEFAULT_HA_PORT: u16 = 4510;

/// Largest `oseq-shift` and numeric `replay-advance`: half of a 32-bit sequence space. A larger step
/// would let a single takeover consume most of a non-ESN SA's numbers, so it is a typo, not a choice.
pub const MAX_SEQ_STEP: u64 = 1 << 31;

/// Validated `[ha]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaSettings {
    /// 1..=15, carried in the top four bits of every SPI this node allocates (RFC 6027 section
    /// 3.9), so the two nodes never hand out the same SPI. The one `[ha]` key that must differ
    /// between the nodes.
    pub node_id: u8,
    /// The interface the sync link is to use (6WIND's `interface`).
    pub interface: Option<String>,
    /// This node's end of the sync link.
    pub local_address: IpAddr,
    /// The other node's end of the sync link; same address family as `local_address`.
    pub remote_address: IpAddr,
    /// The keepalived group or instance name whose `notify` transitions move this node between
    /// standby and active; transitions of other groups are ignored.
    pub listen_ha_group: Option<String>,
    /// Minimum time between two sequence-number updates of an SA whose counters moved; `None`
    /// (written `0`) disables the time trigger.
    pub sync_period_time: Option<Duration>,
    /// An SA whose input or output counter moved by at least this many packets since its last
    /// update is updated again; `None` (written `0`) disables the packet trigger.
    pub sync_period_packets: Option<u32>,
    /// How far ahead of the last synchronised output sequence number a node that takes over
    /// starts each SA (the size of a sequence-number lease).
    pub oseq_shift: u64,
    /// UDP port of the sync link (QUIC), on both nodes.
    pub port: u16,
    /// The role at start.
    pub initial_role: HaRole,
    /// PEM file with this node's private key and certificate for the sync link.
    pub key_file: PathBuf,
    /// SHA-256 of the other node's public key (its certificate's SubjectPublicKeyInfo, as
    /// `tandemctl ha keygen` prints it): the only key the sync link accepts.
    pub peer_pin: PeerPin,
    /// How long a queued IKE datagram waits for the standby to acknowledge the state it depends
    /// on before it is sent anyway and the standby is marked out of sync.
    pub ack_timeout: Duration,
    /// How far inbound replay windows jump forward at takeover when the peer does not do RFC 6311
    /// replay-counter sync.
    pub replay_advance: ReplayAdvance,
}

/// `initial-role`: what the node is until told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HaRole {
    /// Mirror the active node; never initiate, answer or time out anything.
    Standby,
    /// Serve traffic from the start (a single node, or an operator-forced master).
    Active,
    /// Behave as standby until keepalived's notify hook says MASTER for `listen-ha-group`.
    Vrrp,
}

/// `replay-advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayAdvance {
    /// Estimated per SA from its packet rate and the age of its last synced state (bounded by
    /// half the replay window).
    Auto,
    /// A fixed number of packets; 0 keeps the last synced window as it is, accepting that packets
    /// received by the old active after that sync could be replayed once (RFC 6027 section 3.5).
    Packets(u64),
}

/// A SHA-256 public-key pin (of the SubjectPublicKeyInfo). Written as 64 hex digits, with or without colons between the
/// bytes (`openssl x509 -noout -fingerprint -sha256` prints the colon form); shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerPin(pub [u8; 32]);

impl PeerPin {
    pub fn parse(s: &str) -> Result<PeerPin, String> {
        let s = s.trim();
        let hex_digits: String = if s.contains(':') {
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() != 32 || parts.iter().any(|p| p.len() != 2) {
                return Err("with colons, 32 two-digit hex bytes (AB:CD:...) are needed".into());
            }
            parts.concat()
        } else {
            s.to_string()
        };
        if hex_digits.len() != 64 {
            return Err(format!("{} hex digits given, a SHA-256 fingerprint has 64", hex_digits.len()));
        }
        let bytes = hex::decode(&hex_digits).map_err(|_| "not a hex string".to_string())?;
        let mut pin = [0u8; 32];
        pin.copy_from_slice(&bytes);
        Ok(PeerPin(pin))
    }
}

impl fmt::Display for PeerPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerPin({self})")
    }
}

impl Serialize for PeerPin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// keepalived instance and group names as the notify hook passes them: one word of printable ASCII.
fn valid_group(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

/// An address the sync link can use: a unicast one of this host or of the other node.
fn sync_address(ctx: &Ctx, key: &str, v: &Option<String>) -> Result<IpAddr, ConfigError> {
    let s = v.as_deref().ok_or_else(|| {
        ctx.err(T, Some(key), None, "needed: the sync link runs between local-address and remote-address")
    })?;
    let a: IpAddr =
        s.parse().map_err(|_| ctx.err(T, Some(key), None, format!("{s:?} is not an IP address")))?;
    if a.is_unspecified() || a.is_multicast() || a == IpAddr::from([255, 255, 255, 255]) {
        return Err(ctx.err(T, Some(key), None, format!("{a} is not a unicast address")));
    }
    Ok(a)
}

/// `ike_port`, `natt_port` and `retransmit_timeout` come from `[daemon]`: the sync port must not
/// collide with the IKE sockets, and an IKE datagram held back longer than the retransmission
/// timeout would make the retransmission timer meaningless.
pub(crate) fn convert_ha(
    ctx: &Ctx,
    h: &RawHa,
    ike_port: u16,
    natt_port: u16,
    retransmit_timeout: Duration,
) -> Result<HaSettings, ConfigError> {
    if !(1..=15).contains(&h.node_id) {
        return Err(ctx.err(T, Some("node-id"), None, "must be 1..=15"));
    }
    if let Some(i) = &h.interface {
        if !crate::dataplane::valid_ifname(i) {
            return Err(ctx.err(T, Some("interface"), None, "an interface name of 1 to 15 characters"));
        }
    }
    let local_address = sync_address(ctx, "local-address", &h.local_address)?;
    let remote_address = sync_address(ctx, "remote-address", &h.remote_address)?;
    if local_address.is_ipv4() != remote_address.is_ipv4() {
        return Err(ctx.err(T, Some("remote-address"), None, "not of the same family as local-address"));
    }
    if local_address == remote_address {
        return Err(ctx.err(T, Some("remote-address"), None, "the same as local-address"));
    }

    let initial_role = match h.initial_role.as_deref() {
        None | Some("standby") => HaRole::Standby,
        Some("active") => HaRole::Active,
        Some("vrrp") => HaRole::Vrrp,
        Some(r) => {
            return Err(ctx.err(
                T,
                Some("initial-role"),
                None,
                format!("{r:?} is not standby, active or vrrp"),
            ))
        }
    };
    if let Some(g) = &h.listen_ha_group {
        if !valid_group(g) {
            return Err(ctx.err(
                T,
                Some("listen-ha-group"),
                None,
                "one word of 1 to 64 printable characters",
            ));
        }
    }
    if initial_role == HaRole::Vrrp && h.listen_ha_group.is_none() {
        return Err(ctx.err(
            T,
            Some("listen-ha-group"),
            None,
            "needed with initial-role = \"vrrp\": the keepalived group whose transitions this node follows",
        ));
    }

    let sync_period_time =
        ctx.duration(T, "sync-period-time", &h.sync_period_time)?.unwrap_or(Duration::from_secs(10));
    let sync_period_time = (!sync_period_time.is_zero()).then_some(sync_period_time);
    let sync_period_packets = h.sync_period_packets.unwrap_or(2);
    let sync_period_packets = (sync_period_packets != 0).then_some(sync_period_packets);
    if sync_period_time.is_none() && sync_period_packets.is_none() {
        return Err(ctx.err(
            T,
            Some("sync-period-packets"),
            None,
            "0 while sync-period-time is 0 too: sequence numbers would never reach the other node",
        ));
    }
    let oseq_shift = h.oseq_shift.unwrap_or(65536);
    if !(2..=MAX_SEQ_STEP).contains(&oseq_shift) {
        return Err(ctx.err(T, Some("oseq-shift"), None, format!("must be between 2 and {MAX_SEQ_STEP}")));
    }
    if let Some(p) = sync_period_packets {
        // An update every p packets keeps the other node at most p behind; the shift must cover
        // that with room for an update in flight, or a takeover reuses sequence numbers.
        if u64::from(p) > oseq_shift / 2 {
            return Err(ctx.err(
                T,
                Some("sync-period-packets"),
                None,
                format!("{p} is more than half of oseq-shift ({oseq_shift}): a takeover could reuse sequence numbers"),
            ));
        }
    }

    let port = h.port.unwrap_or(DEFAULT_HA_PORT);
    if port == 0 {
        return Err(ctx.err(T, Some("port"), None, "must be 1..=65535"));
    }
    if port == ike_port || port == natt_port {
        return Err(ctx.err(T, Some("port"), None, format!("{port} is also an IKE port of [daemon]")));
    }

    let key_file = match h.key_file.as_deref() {
        None => {
            return Err(ctx.err(
                T,
                Some("key-file"),
                None,
                "needed: the sync link carries keys and only runs authenticated",
            ))
        }
        Some("") => return Err(ctx.err(T, Some("key-file"), None, "an empty path")),
        Some(f) => PathBuf::from(f),
    };
    let peer_pin = match h.peer_pin.as_deref() {
        None => {
            return Err(ctx.err(
                T,
                Some("peer-pin"),
                None,
                "needed: the other node's pin (`tandemctl ha keygen` prints it)",
            ))
        }
        Some(p) => PeerPin::parse(p).map_err(|e| ctx.err(T, Some("peer-pin"), None, e))?,
    };

    let ack_timeout = ctx.duration(T, "ack-timeout", &h.ack_timeout)?.unwrap_or(Duration::from_millis(50));
    if ack_timeout.is_zero() {
        return Err(ctx.err(T, Some("ack-timeout"), None, "must be more than 0"));
    }
    if ack_timeout >= retransmit_timeout {
        return Err(ctx.err(
            T,
            Some("ack-timeout"),
            None,
            "must be shorter than daemon.retransmit-timeout, or held-back IKE messages outlast their retransmission",
        ));
    }

    let replay_advance = match &h.replay_advance {
        None => ReplayAdvance::Auto,
        Some(toml::Value::String(s)) if s == "auto" => ReplayAdvance::Auto,
        Some(toml::Value::Integer(n)) if (0..=MAX_SEQ_STEP as i64).contains(n) => {
            ReplayAdvance::Packets(*n as u64)
        }
        Some(toml::Value::Integer(_)) => {
            return Err(ctx.err(
                T,
                Some("replay-advance"),
                None,
                format!("must be between 0 and {MAX_SEQ_STEP}"),
            ))
        }
        Some(_) => {
            return Err(ctx.err(T, Some("replay-advance"), None, "\"auto\" or a number of packets"));
        }
    };

    Ok(HaSettings {
        node_id: h.node_id,
        interface: h.interface.clone(),
        local_address,
        remote_address,
        listen_ha_group: h.listen_ha_group.clone(),
        sync_period_time,
        sync_period_packets,
        oseq_shift,
        port,
        initial_role,
        key_file,
        peer_pin,
        ack_timeout,
        replay_advance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_in_both_notations() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let pin = PeerPin::parse(hex).unwrap();
        assert_eq!(pin.to_string(), hex.to_lowercase());
        let colons = hex.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>();
        assert_eq!(PeerPin::parse(&colons.join(":")), Ok(pin));
        assert!(PeerPin::parse(&hex[..62]).is_err());
        assert!(PeerPin::parse(&format!("{}zz", &hex[..62])).is_err());
        assert!(PeerPin::parse(&colons[..31].join(":")).is_err());
        assert!(PeerPin::parse("é").is_err(), "non-ASCII is an error, not a panic");
    }
}

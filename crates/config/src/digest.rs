//! The cluster digest: what the two nodes of an HA pair compare before they sync anything.
//!
//! A standby that adopts SAs negotiated under another configuration would serve them with the
//! wrong proposals, lifetimes, selectors or keys, so the nodes refuse to sync unless their
//! configurations agree on everything but the `[ha]` table (which differs by design: node-id and
//! the two addresses) and host-local facts (file and socket paths, log level, dataplane
//! performance tuning).
//!
//! Two SHA-256 digests come out, so the one that can be shown never depends on a secret:
//! - `public` covers everything agreed on except the values of pre-shared keys and manual SA
//!   keys (the identities they belong to are in). It is fine in logs and `tandemctl ha status`.
//! - `secrets` covers those values, with the identities or SA they belong to. It is only for the
//!   encrypted, authenticated sync channel: a digest of a weak PSK is an offline guessing oracle.
//!
//! Both hash a canonical encoding of the parsed structures ([`crate::canon`]), so TOML key order,
//! whitespace, comments, number notation (`0x1000` or `4096`) and every other way of writing the
//! same configuration give the same digest. Each view below destructures its source struct without
//! `..`, so a field added to the configuration does not compile until someone decides whether the
//! two nodes must agree on it.

use crate::canon::encode;
use crate::{Config, DaemonSettings, DataplaneSettings, ManualKeys, ManualSa};
use aws_lc_rs::digest::{Context, SHA256};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;
use tandem_crypto::{EncrAlg, IntegAlg};
use tandem_ike::config::IpsecMode;
use tandem_ike::{EndpointConfig, Identity, PeerConfig, PreSharedKey, RetransmitConfig};
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// Domain separation: a digest of this configuration view can never equal a SHA-256 of anything
/// else tandem hashes, and a change of the encoding gets a new tag.
const PUBLIC_DOMAIN: &str = "tandem cluster digest v1: public";
const SECRETS_DOMAIN: &str = "tandem cluster digest v1: secrets";

/// The two digests of a configuration (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterDigest {
    public: [u8; 32],
    secrets: SecretsDigest,
}

impl ClusterDigest {
    /// The digest without secrets; safe to show.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The public digest as 64 lowercase hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }

    /// The digest of the secret values; only for the encrypted sync channel.
    pub fn secrets(&self) -> &SecretsDigest {
        &self.secrets
    }
}

/// Shows the public digest only.
impl fmt::Debug for ClusterDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterDigest")
            .field("public", &self.public_hex())
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// SHA-256 over the configuration's secret values. Not `Display`, not `Serialize`, redacted in
/// `Debug`, compared in constant time and zeroized when dropped, so it cannot end up in a log or an
/// API answer by accident; the sync link takes the bytes explicitly.
#[derive(Clone)]
pub struct SecretsDigest(Zeroizing<[u8; 32]>);

impl SecretsDigest {
    /// The digest bytes, to send over the encrypted sync channel and nowhere else.
    pub fn expose_for_sync_channel(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether the other node's digest (as received on the sync channel) is this one, in constant
    /// time so a mismatch does not tell how much matched.
    pub fn matches(&self, theirs: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0[..], theirs).is_ok()
    }
}

impl PartialEq for SecretsDigest {
    fn eq(&self, other: &SecretsDigest) -> bool {
        self.matches(&other.0[..])
    }
}

impl Eq for SecretsDigest {}

impl fmt::Debug for SecretsDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsDigest(<redacted>)")
    }
}

/// Bytes as one length-prefixed string rather than a sequence of numbers (serde's default for
/// slices), which is shorter and never buffered.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(Serialize)]
struct PublicView<'a> {
    domain: &'static str,
    daemon: DaemonView,
    endpoint: EndpointView<'a>,
    peers: &'a [PeerConfig],
    psk_ids: Vec<&'a [Identity]>,
    dataplane: DataplaneView<'a>,
    interfaces: &'a BTreeMap<String, String>,
    manual_sas: Vec<ManualSaView<'a>>,
}

/// `[daemon]` without `socket` and `log-level` (host-local). `listen` is a set of addresses to
/// bind, so it is sorted and deduplicated.
#[derive(Serialize)]
struct DaemonView {
    listen: Vec<IpAddr>,
    ike_port: u16,
    natt_port: u16,
}

/// The engine settings without `node_id`, which comes from `[ha]` and differs by design.
#[derive(Serialize)]
struct EndpointView<'a> {
    cookie_threshold: usize,
    retransmit: &'a RetransmitConfig,
    max_half_open: usize,
    half_open_timeout: Duration,
    invalid_spi_interval: Duration,
    fragment_size: usize,
}

/// `[dataplane]` without `offload`, `socket-buffer` and `workers`: they tune one host's packet
/// path and may differ with its hardware, while the rest decides what happens to traffic (which
/// packets reach the TUN, how ESP is framed, when keepalives go, how long a rekeyed SA lingers),
/// which a takeover must not change.
#[derive(Serialize)]
struct DataplaneView<'a> {
    enabled: bool,
    tun_name: &'a str,
    tun_mtu: u16,
    raw_esp: bool,
    install_routes: bool,
    route_table: u32,
    nat_keepalive: Option<Duration>,
    rekey_linger: Duration,
    trap_queue: usize,
}

/// A manual SA without its keys.
#[derive(Serialize)]
struct ManualSaView<'a> {
    name: &'a str,
    local: IpAddr,
    remote: IpAddr,
    spi_in: u32,
    spi_out: u32,
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    mode: IpsecMode,
    local_ts: &'a [TrafficSelector],
    remote_ts: &'a [TrafficSelector],
    esn: bool,
    replay_window: u32,
    encap: bool,
    remote_port: u16,
    interface: Option<&'a str>,
}

/// No maps in here: see [`crate::canon`] on buffers.
#[derive(Serialize)]
struct SecretsView<'a> {
    domain: &'static str,
    psks: Vec<PskSecret<'a>>,
    manual_sas: Vec<ManualSecret<'a>>,
}

#[derive(Serialize)]
struct PskSecret<'a> {
    ids: &'a [Identity],
    secret: Bytes<'a>,
}

#[derive(Serialize)]
struct ManualSecret<'a> {
    name: &'a str,
    keys_in: KeysView<'a>,
    keys_out: KeysView<'a>,
}

#[derive(Serialize)]
struct KeysView<'a> {
    encr: Bytes<'a>,
    integ: Bytes<'a>,
}

impl<'a> KeysView<'a> {
    fn of(k: &'a ManualKeys) -> KeysView<'a> {
        let ManualKeys { encr, integ } = k;
        KeysView { encr: Bytes(encr), integ: Bytes(integ) }
    }
}

fn daemon_view(d: &DaemonSettings) -> DaemonView {
    let DaemonSettings { socket: _, listen, ike_port, natt_port, log_level: _ } = d;
    let mut listen = listen.clone();
    listen.sort();
    listen.dedup();
    DaemonView { listen, ike_port: *ike_port, natt_port: *natt_port }
}

fn endpoint_view(e: &EndpointConfig) -> EndpointView<'_> {
    let EndpointConfig {
        node_id: _,
        cookie_threshold,
        retransmit,
        max_half_open,
        half_open_timeout,
        invalid_spi_interval,
        fragment_size,
    } = e;
    EndpointView {
        cookie_threshold: *cookie_threshold,
        retransmit,
        max_half_open: *max_half_open,
        half_open_timeout: *half_open_timeout,
        invalid_spi_interval: *invalid_spi_interval,
        fragment_size: *fragment_size,
    }
}

fn dataplane_view(d: &DataplaneSettings) -> DataplaneView<'_> {
    let DataplaneSettings {
        enabled,
        tun_name,
        tun_mtu,
        offload: _,
        raw_esp,
        install_routes,
        route_table,
        nat_keepalive,
        socket_buffer: _,
        rekey_linger,
        trap_queue,
        workers: _,
    } = d;
    DataplaneView {
        enabled: *enabled,
        tun_name,
        tun_mtu: *tun_mtu,
        raw_esp: *raw_esp,
        install_routes: *install_routes,
        route_table: *route_table,
        nat_keepalive: *nat_keepalive,
        rekey_linger: *rekey_linger,
        trap_queue: *trap_queue,
    }
}

fn manual_view(m: &ManualSa) -> ManualSaView<'_> {
    let ManualSa {
        name,
        local,
        remote,
        spi_in,
        spi_out,
        encr,
        integ,
        keys_in: _,
        keys_out: _,
        mode,
        local_ts,
        remote_ts,
        esn,
        replay_window,
        encap,
        remote_port,
        interface,
    } = m;
    ManualSaView {
        name,
        local: *local,
        remote: *remote,
        spi_in: *spi_in,
        spi_out: *spi_out,
        encr: *encr,
        integ: *integ,
        mode: *mode,
        local_ts,
        remote_ts,
        esn: *esn,
        replay_window: *replay_window,
        encap: *encap,
        remote_port: *remote_port,
        interface: interface.as_deref(),
    }
}

fn sha256<T: Serialize>(view: &T) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    encode(view, &mut ctx);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Config {
    /// The digests the two nodes of a pair compare before syncing (see [`ClusterDigest`]).
    pub fn cluster_digest(&self) -> ClusterDigest {
        let Config { path: _, daemon, endpoint, peers, psks, ha: _, dataplane, interfaces, manual_sas } =
            self;
        let public = PublicView {
            domain: PUBLIC_DOMAIN,
            daemon: daemon_view(daemon),
            endpoint: endpoint_view(endpoint),
            peers,
            psk_ids: psks.iter().map(|p| p.ids.as_slice()).collect(),
            dataplane: dataplane_view(dataplane),
            interfaces,
            manual_sas: manual_sas.iter().map(manual_view).collect(),
        };
        let secrets = SecretsView {
            domain: SECRETS_DOMAIN,
            psks: psks
                .iter()
                .map(|p: &PreSharedKey| PskSecret { ids: &p.ids, secret: Bytes(&p.secret) })
                .collect(),
            manual_sas: manual_sas
                .iter()
                .map(|m| ManualSecret {
                    name: &m.name,
                    keys_in: KeysView::of(&m.keys_in),
                    keys_out: KeysView::of(&m.keys_out),
                })
                .collect(),
        };
        ClusterDigest { public: sha256(&public), secrets: SecretsDigest(Zeroizing::new(sha256(&secrets))) }
    }
}

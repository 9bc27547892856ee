//! State of one IKE SA and its CHILD SAs. Everything but caches (SK crypters, fragment reassembly,
//! the half-open map key) is serializable, deadlines and an in-flight key exchange included, so an
//! HA standby rebuilds the SA from an `SaObserver` snapshot (see `snapshot`).

use crate::api::{DirectionKeys, IkeSaId};
use crate::config::{Identity, IpsecMode};
use crate::proposal::Selected;
use crate::reliability::Reliability;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Instant;
use tandem_crypto::{IkeKeys, KeyExchange, SkCrypter};
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaState {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    InitDone,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    Established,
    /// Delete sent; waiting for the answer.
    Deleting,
}

/// One CHILD SA (a pair of ESP SAs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSa {
    pub name: String,
    pub reqid: u32,
    pub spi_in: u32,
    pub spi_out: u32,
    pub sel: Selected,
    pub mode: IpsecMode,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub keys_in: DirectionKeys,
    pub keys_out: DirectionKeys,
    /// Set once it is out of service: replaced by a rekey or made redundant by a collision. It is
    /// kept until the Delete exchange completes, never rekeyed, and its hard lifetime removes it
    /// locally without a Delete (RFC 7296 section 2.8; a Delete could race the peer's).
    #[serde(default)]
    pub retired: Option<Retired>,
    /// Our Delete for it is in flight.
    #[serde(default)]
    pub deleting: bool,
    /// The dataplane was told of it (a redundant SA of a lost collision never is).
    #[serde(default)]
    pub announced: bool,
    /// We initiated the exchange that made it.
    #[serde(default)]
    pub initiated: bool,
    /// Inbound SPI of the CHILD SA this one replaced by a rekey.
    #[serde(default)]
    pub replaces: Option<u32>,
    /// Nonces (Ni, Nr) of the CREATE_CHILD_SA exchange that made it, to settle simultaneous rekeys.
    #[serde(default)]
    pub exchange_nonces: Option<(Vec<u8>, Vec<u8>)>,
    /// Inbound SPI of the CHILD SA the peer made by rekeying this one. While our own rekey of it is
    /// in flight this is not final: our response settles the collision (section 2.8.1).
    #[serde(default)]
    pub peer_successor: Option<u32>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub created: Option<Instant>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub rekey_at: Option<Instant>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub expire_at: Option<Instant>,
}

/// Why a CHILD SA is out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retired {
    /// A rekey replaced it with the CHILD SA of this inbound SPI.
    Replaced(u32),
    /// Made redundant by a simultaneous rekey; its creator deletes it.
    Redundant,
}

impl ChildSa {
    /// In service: carries traffic, may be rekeyed.
    pub fn live(&self) -> bool {
        self.retired.is_none() && !self.deleting
    }
}

/// A CHILD SA we are negotiating as the exchange initiator.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingChild {
    pub name: String,
    pub spi_in: u32,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// SPI (inbound) of the CHILD SA this one rekeys.
    pub rekeys_spi_in: Option<u32>,
    pub nonce: Vec<u8>,
    #[serde(default)]
    pub ke: Option<KeyExchange>,
}

/// A new IKE SA we are negotiating as the rekey initiator.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingIkeRekey {
    pub new_spi: u64,
    pub nonce: Vec<u8>,
    #[serde(default)]
    pub ke: Option<KeyExchange>,
}

/// What our outstanding request was, so its response can be interpreted.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    SaInit,
    Auth(Option<PendingChild>),
    CreateChild(PendingChild),
    RekeyIke(PendingIkeRekey),
    DeleteChild(Vec<u32>),
    DeleteIke,
    Liveness,
    Notify,
    /// RFC 6311 sync after a takeover (sent with Message ID 0, outside the window's numbering),
    /// with the nonce its response must echo when it asked for the Message IDs.
    TakeoverSync(Option<u32>),
    /// A request whose work moved to another IKE SA (a simultaneous IKE rekey): it keeps the
    /// window until answered or given up, so that no later Message ID overtakes it, and its
    /// response is ignored.
    Abandoned,
}

/// What an RFC 6311 sync owed after a takeover asks of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDue {
    /// IKEV2_MESSAGE_ID_SYNC, our next request ID pushed forward by this margin.
    pub mid_margin: Option<u32>,
    /// IPSEC_REPLAY_COUNTER_SYNC: the peer adds this to its outbound sequence numbers.
    pub replay_delta: Option<u64>,
}

/// A refused CHILD SA to ask for again (see `child_retry`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildRetry {
    pub name: String,
    /// Refusals so far, which set the backoff.
    pub attempt: u32,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub at: Option<Instant>,
}

/// A request waiting for the window (window size 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Queued {
    CreateChild {
        name: String,
        rekeys_spi_in: Option<u32>,
    },
    RekeyIke,
    DeleteChild(Vec<u32>),
    /// A Delete for CHILD SAs (by inbound SPI) already removed here, so that the peer removes its
    /// half too (after INVALID_SPI).
    DeleteRemoved(Vec<u32>),
    DeleteIke,
    Liveness,
    InvalidSpi(u32),
}

impl Queued {
    /// Work on CHILD SAs, which moves with them to a rekeyed IKE SA.
    pub fn is_child_work(&self) -> bool {
        matches!(
            self,
            Queued::CreateChild { .. }
                | Queued::DeleteChild(_)
                | Queued::DeleteRemoved(_)
                | Queued::InvalidSpi(_)
        )
    }
}

#[derive(Serialize, Deserialize)]
pub struct IkeSa {
    pub id: IkeSaId,
    /// We are the original initiator (we sent the IKE_SA_INIT request).
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub vpn: Option<String>,
    /// Responder before IKE_AUTH: the vpns this SA may turn out to belong to.
    pub candidates: Vec<String>,
    pub state: SaState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub nat_local: bool,
    pub nat_remote: bool,
    pub suite: Option<Selected>,
    pub keys: Option<IkeKeys>,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub init_request: Vec<u8>,
    pub init_response: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
    pub local_id: Option<Identity>,
    pub remote_id: Option<Identity>,
    pub children: Vec<ChildSa>,
    pub rel: Reliability,
    pub request: Option<Request>,
    pub queue: Vec<Queued>,
    /// The responder announced CHILDLESS_IKEV2_SUPPORTED (RFC 6023).
    #[serde(default)]
    pub peer_childless: bool,
    /// CHILD SAs (start-action `start`) the peer refused, asked for again with backoff.
    #[serde(default)]
    pub child_retries: Vec<ChildRetry>,
    /// Set when a rekeyed IKE SA replaced this one (or a collision made this one redundant): its
    /// CHILD SAs live elsewhere, so it goes without reporting them down.
    pub superseded: bool,
    /// A superseded SA whose Delete has not come by then is removed by us (the peer's Delete may
    /// have been lost, or the peer expects us to delete it).
    #[serde(with = "crate::snapshot::deadline", default)]
    pub retire_at: Option<Instant>,
    /// Our IKE SA rekey was refused (TEMPORARY_FAILURE) and waits for its retry at `rekey_at`:
    /// until then our CHILD SA exchanges wait too, so that they cannot refuse the peer's IKE
    /// rekey while the peer's CHILD exchanges refuse ours (the livelock of seeds 2029 and 3321).
    #[serde(default)]
    pub ike_rekey_waits: bool,
    /// Set on an IKE SA the peer rekeyed: (new IKE SA id, Ni, Nr of that exchange), to settle
    /// simultaneous rekeys (RFC 7296 section 2.8.1).
    #[serde(default)]
    pub rekeyed_by_peer: Option<(IkeSaId, Vec<u8>, Vec<u8>)>,
    /// On an IKE SA made by the peer's rekey: the SA it replaced (to hand the CHILD SAs back if
    /// the peer deletes this one as the redundant SA of a collision before our response arrives).
    #[serde(default)]
    pub replaces_ike: Option<IkeSaId>,
    /// Why the SA is being deleted, once it is.
    pub down_reason: Option<crate::api::DownReason>,
    /// Both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383).
    #[serde(default)]
    pub frag_supported: bool,
    /// The peer announced IKEV2_MESSAGE_ID_SYNC_SUPPORTED in IKE_AUTH (RFC 6311): it answers a
    /// Message ID sync, so a node taking over from a stale mirror can learn the real counters.
    #[serde(default)]
    pub peer_mid_sync: bool,
    /// The peer announced IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED in IKE_AUTH (RFC 6311): after a
    /// takeover it can be asked to move its outbound sequence numbers past a jump of our
    /// inbound replay windows.
    #[serde(default)]
    pub peer_replay_sync: bool,
    /// An RFC 6311 sync is owed after a takeover. It goes once the window is free; an inherited
    /// request still outstanding gets one retransmission period first (see `mid_sync`).
    #[serde(default)]
    pub sync_due: Option<SyncDue>,
    #[serde(skip)]
    pub reassembly: tandem_wire::fragment::FragmentReassembler,
    #[serde(default)]
    pub ke: Option<KeyExchange>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub created: Option<Instant>,
    /// The SK crypters, built on first use once the keys exist (keys never change afterwards: a
    /// rekey makes a new SA), instead of for every message.
    #[serde(skip)]
    pub sk: std::cell::OnceCell<SkPair>,
    /// Key of this responder SA in the endpoint's half-open map, until it is established.
    #[serde(skip)]
    pub half_open_key: Option<(u64, std::net::SocketAddr)>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub established: Option<Instant>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub last_received: Option<Instant>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub rekey_at: Option<Instant>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub expire_at: Option<Instant>,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub dpd_at: Option<Instant>,
}

/// Which SK keys protect messages in each direction.
pub struct SkPair {
    pub outbound: SkCrypter,
    pub inbound: SkCrypter,
}

impl IkeSa {
    pub fn new(
        id: IkeSaId,
        initiator: bool,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> Box<Self> {
        Box::new(IkeSa {
            id,
            initiator,
            spi_i: if initiator { id } else { 0 },
            spi_r: if initiator { 0 } else { id },
            vpn: None,
            candidates: Vec::new(),
            state: if initiator { SaState::InitSent } else { SaState::InitDone },
            local,
            remote,
            nat_local: false,
            nat_remote: false,
            suite: None,
            keys: None,
            ni: Vec::new(),
            nr: Vec::new(),
            init_request: Vec::new(),
            init_response: Vec::new(),
            cookie: None,
            local_id: None,
            remote_id: None,
            children: Vec::new(),
            rel: Reliability::default(),
            request: None,
            queue: Vec::new(),
            child_retries: Vec::new(),
            peer_childless: false,
            superseded: false,
            retire_at: None,
            down_reason: None,
            ike_rekey_waits: false,
            rekeyed_by_peer: None,
            replaces_ike: None,
            frag_supported: false,
            peer_mid_sync: false,
            peer_replay_sync: false,
            sync_due: None,
            reassembly: Default::default(),
            ke: None,
            created: Some(now),
            sk: Default::default(),
            half_open_key: None,
            established: None,
            last_received: Some(now),
            rekey_at: None,
            expire_at: None,
            dpd_at: None,
        })
    }

    /// IKE_AUTH is done: the IKE_SA_INIT messages and nonces (signed into AUTH, keys for the
    /// CHILD SA of IKE_AUTH), SK_pi and SK_pr (AUTH only) and the candidate vpns are no longer
    /// needed. Freed, not kept for the SA's lifetime: about 700 bytes of every tunnel (issue 9:
    /// memory per tunnel), and two keys fewer in memory (zeroized as they go).
    pub fn forget_handshake(&mut self) {
        for v in [&mut self.init_request, &mut self.init_response, &mut self.ni, &mut self.nr] {
            *v = Vec::new();
        }
        if let Some(k) = self.keys.as_mut() {
            k.sk_pi = Zeroizing::new(Vec::new());
            k.sk_pr = Zeroizing::new(Vec::new());
        }
        self.candidates = Vec::new();
    }

    /// The SK crypters for this SA, or `None` before keys exist.
    pub fn crypters(&self) -> Option<&SkPair> {
        if let Some(c) = self.sk.get() {
            return Some(c);
        }
        let pair = self.build_crypters()?;
        Some(self.sk.get_or_init(|| pair))
    }

    fn build_crypters(&self) -> Option<SkPair> {
        let keys = self.keys.as_ref()?;
        let suite = self.suite?;
        let (e_out, a_out, e_in, a_in) = if self.initiator {
            (&keys.sk_ei, &keys.sk_ai, &keys.sk_er, &keys.sk_ar)
        } else {
            (&keys.sk_er, &keys.sk_ar, &keys.sk_ei, &keys.sk_ai)
        };
        Some(SkPair {
            outbound: SkCrypter::new(suite.encr, suite.integ, e_out, a_out).ok()?,
            inbound: SkCrypter::new(suite.encr, suite.integ, e_in, a_in).ok()?,
        })
    }

    /// Our CREATE_CHILD_SA in flight rekeys the CHILD SA with inbound SPI `spi`.
    pub fn child_rekey_in_flight(&self, spi: Option<u32>) -> bool {
        matches!(&self.request, Some(Request::CreateChild(p)) if spi.is_some() && p.rekeys_spi_in == spi)
    }

    pub fn child_by_spi(&self, spi: u32) -> Option<usize> {
        self.children.iter().position(|c| c.spi_in == spi || c.spi_out == spi)
    }

    /// Earliest of this SA's deadlines.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d = [self.rel.deadline(), self.rekey_at, self.expire_at, self.dpd_at, self.retire_at]
            .into_iter()
            .flatten()
            .min();
        for c in &self.children {
            for t in [c.rekey_at, c.expire_at].into_iter().flatten() {
                d = Some(d.map_or(t, |x: Instant| x.min(t)));
            }
        }
        for t in self.child_retries.iter().filter_map(|r| r.at) {
            d = Some(d.map_or(t, |x: Instant| x.min(t)));
        }
        d
    }
}

/// Split CHILD SA keys into inbound/outbound for the side that did (or did not) initiate the exchange.
pub fn child_directions(
    keys: tandem_crypto::ChildKeys,
    we_initiated: bool,
) -> (DirectionKeys, DirectionKeys) {
    let i = DirectionKeys { encr_key: keys.encr_i.clone(), integ_key: keys.integ_i.clone() };
    let r = DirectionKeys { encr_key: keys.encr_r.clone(), integ_key: keys.integ_r.clone() };
    if we_initiated {
        (r, i)
    } else {
        (i, r)
    }
}

/// A zeroizing copy of a nonce or key.
pub fn secret(v: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(v.to_vec())
}

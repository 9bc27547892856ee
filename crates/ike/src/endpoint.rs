//! The Endpoint: owns all IKE SAs of a node and routes datagrams, timers and commands to them.
//! The exchanges live in `ex_*` modules as further `impl Endpoint` blocks; the reliability layer in
//! `reliability`.

use crate::api::{ChildSaInfo, DownReason, Event, IkeSaId, IkeSaInfo, IkeSaState, Transmit};
use crate::config::{DeadPeerAction, EndpointConfig, PeerConfig, PreSharedKey, StartAction};
use crate::observer::SaObserver;
use crate::peers::Peers;
use crate::reliability::{RequestCheck, Tick};
use crate::sa::{IkeSa, Queued, Request, SaState};
use crate::spi::SpiAllocator;
use crate::table::SaTable;
use crate::tombstones::Tombstones;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tandem_crypto::Random;
use tandem_wire::{emit_payloads, flags, Encrypted, ExchangeType, IkeHeader, Message, Payload, PayloadType};
use tracing::{debug, info, warn};

/// Errors of operator commands (datagram problems are counted and logged, never returned).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("no vpn named {0:?}")]
    UnknownVpn(String),
    #[error("no IKE SA {0:#018x}")]
    UnknownIkeSa(IkeSaId),
    #[error("no CHILD SA with SPI {0:#010x}")]
    UnknownChildSa(u32),
    #[error("vpn {0:?} has no remote address to initiate to")]
    NoRemoteAddress(String),
    #[error("this node is an HA standby: the active node runs the SAs")]
    Standby,
    #[error("{0}")]
    Other(String),
}

/// Counters of dropped or rejected input, by reason.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub malformed: u64,
    pub unknown_sa: u64,
    pub bad_message_id: u64,
    pub decrypt_failed: u64,
    pub retransmits_answered: u64,
    /// Responses sent a second time because they crossed our request with the same Message ID.
    pub crossed_responses_resent: u64,
    pub cookies_sent: u64,
    pub half_open_dropped: u64,
    /// Datagrams that reached this node while it was an HA standby (it must not answer them).
    pub standby_dropped: u64,
    /// Standby: CHILD SA configurations renumbered to the active node's reqids (`Reqids::adopt`;
    /// the nodes' reload histories differ).
    pub reqids_adopted: u64,
    /// Mirrored CHILD SAs whose reqid this node could not take (another mirrored CHILD SA holds
    /// it; see `Reqids::adopt`).
    pub reqid_conflicts: u64,
    /// RFC 6311 Message ID syncs this node started (takeovers from a stale mirror).
    pub mid_syncs_sent: u64,
    /// Of those, answered by the peer with counters now in use.
    pub mid_syncs_done: u64,
    /// Message ID syncs a peer asked of this node, answered.
    pub mid_syncs_answered: u64,
    /// Message ID syncs refused or ignored: a wrong nonce, a malformed notify, a replayed or
    /// backwards request.
    pub mid_syncs_rejected: u64,
    /// IPSEC_REPLAY_COUNTER_SYNC sent after a takeover, and received from a clustered peer (its
    /// CHILD SAs' outbound sequence numbers then moved forward).
    pub replay_syncs_sent: u64,
    pub replay_syncs_answered: u64,
    /// RFC 6311 syncs not sent after a takeover, because the peer could not answer them
    /// (`mid_sync::strongswan_cannot_answer`).
    pub mid_syncs_skipped: u64,
}

/// A received message of an existing IKE SA, with its payloads when already decrypted (fragments).
struct Incoming<'a> {
    local: SocketAddr,
    remote: SocketAddr,
    raw: &'a [u8],
    msg: Message,
    opened: Option<Vec<Payload>>,
}

pub struct Endpoint {
    pub(crate) config: EndpointConfig,
    pub(crate) peers: Peers,
    pub(crate) psks: Vec<PreSharedKey>,
    pub(crate) sas: SaTable,
    /// Responder SAs by (initiator SPI, peer address), to recognise retransmitted IKE_SA_INIT requests.
    pub(crate) half_open: HashMap<(u64, SocketAddr), IkeSaId>,
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) observer: Option<Box<dyn SaObserver>>,
    pub(crate) reqids: crate::reqid::Reqids,
    /// Standby: mirroring renumbered a configuration (`take_reqids_renumbered`).
    pub(crate) reqids_renumbered: bool,
    pub(crate) spis: SpiAllocator,
    pub(crate) cookie_secret: [u8; 32],
    pub(crate) stats: Stats,
    last_invalid_spi: HashMap<IpAddr, Instant>,
    /// vpns to initiate again at the given time (restart actions).
    pub(crate) restarts: Vec<(Instant, String)>,
    /// Failed initiations in a row per vpn with start-action `start` (see `child_retry`).
    pub(crate) start_attempts: std::collections::BTreeMap<String, u32>,
    pub(crate) now: Option<Instant>,
    /// Last responses of removed IKE SAs (see `tombstones`).
    pub(crate) tombstones: Tombstones,
    /// IKE SAs created while another SA was being handled, committed by `finish`.
    // Boxed like the table's SAs, so committing one moves a pointer, not a kilobyte.
    #[allow(clippy::vec_box)]
    pub(crate) spawned: Vec<Box<IkeSa>>,
    /// The one source of randomness (see `with_random`).
    pub(crate) rng: Box<dyn Random>,
    /// HA standby: the table holds mirrored SAs; nothing is sent, timed out or initiated (see
    /// `standby`).
    pub(crate) standby: bool,
}

impl Endpoint {
    /// An endpoint drawing its randomness from the operating system.
    pub fn new(config: EndpointConfig, peers: Vec<PeerConfig>, psks: Vec<PreSharedKey>) -> Self {
        Self::with_random(config, peers, psks, Box::new(tandem_crypto::OsRandom))
    }

    /// An endpoint drawing every nonce, SPI, private key, IV, jitter and its cookie secret from
    /// `rng`: with a seeded generator and an injected clock, a run is reproducible bit for bit.
    pub fn with_random(
        config: EndpointConfig,
        peers: Vec<PeerConfig>,
        psks: Vec<PreSharedKey>,
        mut rng: Box<dyn Random>,
    ) -> Self {
        let cookie_secret = rng.seed();
        Endpoint {
            rng,
            spawned: Vec::new(),
            tombstones: Tombstones::default(),
            spis: SpiAllocator::new(config.node_id),
            sas: SaTable::new(config.half_open_timeout),
            config,
            peers: Peers::new(peers),
            psks,
            half_open: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            observer: None,
            reqids: Default::default(),
            reqids_renumbered: false,
            cookie_secret,
            stats: Stats::default(),
            last_invalid_spi: HashMap::new(),
            restarts: Vec::new(),
            start_attempts: Default::default(),
            now: None,
            standby: false,
        }
    }

    /// Replace the peer configuration (reload). Existing SAs stay up; SAs of removed vpns are deleted;
    /// vpns with start-action `start` that have no IKE SA are initiated.
    pub fn set_peers(&mut self, now: Instant, peers: Vec<PeerConfig>, psks: Vec<PreSharedKey>) {
        self.now = Some(now);
        self.peers = Peers::new(peers);
        self.psks = psks;
        if self.standby {
            // The active node applies the reload to the SAs; its snapshots follow.
            return;
        }
        let mut removed: Vec<IkeSaId> = self
            .sas
            .values()
            .filter(|sa| sa.vpn.as_ref().is_some_and(|v| !self.peers.contains(v)))
            .map(|sa| sa.id)
            .collect();
        removed.sort_unstable();
        for id in removed {
            let _ = self.terminate_ike_sa(now, id);
        }
        // Release the reqids of configurations that are gone and that no SA still carries.
        let in_use: std::collections::HashSet<u32> =
            self.sas.values().flat_map(|sa| sa.children.iter().map(|c| c.reqid)).collect();
        let peers = &self.peers;
        self.reqids.retain(|vpn, child, reqid| {
            peers.get(vpn).is_some_and(|p| p.children.iter().any(|c| c.name == child))
                || in_use.contains(&reqid)
        });
        self.start_configured(now);
    }

    /// Initiate every vpn that has a CHILD SA with start-action `start` and no IKE SA yet.
    pub fn start_configured(&mut self, now: Instant) {
        if self.standby {
            return;
        }
        let names: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.children.iter().any(|c| c.start_action == StartAction::Start))
            .filter(|p| self.sas.of_vpn(&p.name).next().is_none())
            .map(|p| p.name.clone())
            .collect();
        for n in names {
            if let Err(e) = self.initiate(now, &n) {
                warn!(target: "ike", vpn = %n, "cannot start: {e}");
            }
        }
    }

    pub fn set_observer(&mut self, observer: Box<dyn SaObserver>) {
        self.observer = Some(observer);
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.get(name)
    }

    /// The reqid of a vpn's CHILD SA configuration (allocated on first use, stable afterwards):
    /// the daemon keys its security policies and trap routes by it before any SA exists.
    pub fn reqid(&mut self, vpn: &str, child: &str) -> u32 {
        self.reqids.get(vpn, child)
    }

    /// Feed one received IKE datagram (non-ESP marker already stripped).
    pub fn handle_datagram(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.now = Some(now);
        if self.standby {
            self.stats.standby_dropped += 1;
            return;
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                debug!(target: "ike", %remote, "dropping malformed datagram: {e}");
                return;
            }
        };
        let h = &msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.is_response() && h.spi_r == 0 {
            if let Some(&id) = self.half_open.get(&(h.spi_i, remote)) {
                // Retransmitted IKE_SA_INIT: answer from the cache.
                if let Some(sa) = self.sas.get(&id) {
                    if let RequestCheck::Resend(d) = sa.rel.check_request(0) {
                        self.stats.retransmits_answered += 1;
                        self.send_datagrams(local, remote, d);
                    }
                }
                return;
            }
            self.respond_sa_init(now, local, remote, data, msg);
            return;
        }
        // Our SPI is the responder SPI in messages from the original initiator, else the initiator SPI.
        let ours = if h.is_initiator() { h.spi_r } else { h.spi_i };
        let Some(mut sa) = self.sas.checkout(&ours) else {
            if !h.is_response() {
                if let Some(d) = self.tombstones.answer(now, ours, h.message_id, remote) {
                    self.stats.retransmits_answered += 1;
                    debug!(target: "ike", %remote, spi = format_args!("{ours:#018x}"), "answering a retransmission for a removed IKE SA");
                    self.send_datagrams(local, remote, d);
                    return;
                }
            }
            self.stats.unknown_sa += 1;
            debug!(target: "ike", %remote, spi = format_args!("{ours:#018x}"), "no IKE SA for datagram");
            return;
        };
        if h.is_initiator() == sa.initiator {
            // The flag must name the peer's role, not ours.
            self.stats.malformed += 1;
            self.sas.commit(sa);
            return;
        }
        let fragment = match msg.payloads.last() {
            Some(Payload::EncryptedFragment(f)) => Some(f.fragment_number),
            _ => None,
        };
        let mut opened = None;
        if h.is_response() {
            // An IKE_SA_INIT response (unencrypted: anyone can replay one) answers only our
            // IKE_SA_INIT, not another request with Message ID 0 (an RFC 6311 sync).
            let init_ok =
                h.exchange != ExchangeType::IKE_SA_INIT || matches!(sa.request, Some(Request::SaInit));
            let expected =
                init_ok && sa.rel.outstanding.as_ref().is_some_and(|o| o.message_id == h.message_id);
            if !expected {
                self.stats.bad_message_id += 1;
            } else if fragment.is_some() {
                opened = self.reassemble(&mut sa, data, &msg);
            }
            if expected && (fragment.is_none() || opened.is_some()) && sa.rel.accept_response(h.message_id) {
                sa.last_received = Some(now);
                // An inherited request answered: the peer expects exactly our next ID, so the
                // sync owed needs no margin.
                if let Some(due) = sa.sync_due.as_mut() {
                    due.mid_margin = due.mid_margin.map(|_| 0);
                }
                if let Some(d) = sa.rel.take_crossed_response(now, h.message_id) {
                    self.stats.crossed_responses_resent += 1;
                    debug!(target: "ike", mid = h.message_id, "Message IDs crossed: sending our response again");
                    self.send_datagrams(sa.local, sa.remote, d);
                }
                self.handle_response(now, &mut sa, Incoming { local, remote, raw: data, msg, opened });
            }
        } else {
            // RFC 6311: a Message ID sync from a clustered peer uses ID 0 whatever we expect.
            let maybe_sync = h.message_id == 0
                && h.exchange == ExchangeType::INFORMATIONAL
                && fragment.is_none()
                && (sa.peer_mid_sync || sa.peer_replay_sync)
                && sa.state == SaState::Established;
            let pre = if maybe_sync { self.open(&sa, data, &msg) } else { None };
            if pre.as_deref().is_some_and(crate::mid_sync::is_sync_request) {
                let payloads = pre.unwrap_or_default();
                self.note_peer_address(&mut sa, local, remote);
                self.answer_mid_sync(now, &mut sa, &payloads);
                self.finish(now, sa);
                return;
            }
            match sa.rel.check_request(h.message_id) {
                RequestCheck::Process => {
                    opened = pre;
                    if fragment.is_some() {
                        opened = self.reassemble(&mut sa, data, &msg);
                    }
                    if fragment.is_none() || opened.is_some() {
                        self.handle_request(now, &mut sa, Incoming { local, remote, raw: data, msg, opened });
                    }
                }
                // Answer a retransmitted fragmented request once, on its first fragment (RFC 7383 2.6.1).
                RequestCheck::Resend(d) if fragment.is_none_or(|n| n == 1) => {
                    self.stats.retransmits_answered += 1;
                    self.send_datagrams(local, remote, d);
                }
                RequestCheck::Resend(_) => {}
                RequestCheck::Drop => self.stats.bad_message_id += 1,
            }
        }
        self.finish(now, sa);
    }

    /// Decrypt one SKF fragment and collect it; the whole message's payloads once all are in.
    fn reassemble(&mut self, sa: &mut IkeSa, raw: &[u8], msg: &Message) -> Option<Vec<Payload>> {
        let Some(Payload::EncryptedFragment(f)) = msg.payloads.last() else { return None };
        let crypters = sa.crypters()?;
        let prefix = &raw[..raw.len() - f.body.len()];
        let Ok(plain) = crypters.inbound.open(prefix, &f.body) else {
            self.stats.decrypt_failed += 1;
            return None;
        };
        let frag = tandem_wire::EncryptedFragment { body: plain.to_vec(), ..f.clone() };
        match sa.reassembly.add(msg.header.message_id, frag) {
            tandem_wire::fragment::FragmentOutcome::Complete(frags) => {
                let first = frags.first()?.first_inner;
                let plain: Vec<u8> = frags.into_iter().flat_map(|f| f.body).collect();
                match tandem_wire::parse_payloads(first, &plain) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        self.stats.malformed += 1;
                        None
                    }
                }
            }
            tandem_wire::fragment::FragmentOutcome::Rejected => {
                self.stats.malformed += 1;
                None
            }
            _ => None,
        }
    }

    fn handle_response(&mut self, now: Instant, sa: &mut IkeSa, inc: Incoming) {
        let Incoming { local, remote, raw, msg, opened } = inc;
        let Some(request) = sa.request.take() else { return };
        if msg.header.exchange == ExchangeType::IKE_SA_INIT {
            self.initiator_sa_init_response(now, sa, local, remote, raw, msg);
            return;
        }
        let Some(payloads) = opened.or_else(|| self.open(sa, raw, &msg)) else { return };
        self.note_peer_address(sa, local, remote);
        match request {
            crate::sa::Request::Auth(pending) => self.initiator_auth_response(now, sa, payloads, pending),
            crate::sa::Request::CreateChild(pending) => {
                self.initiator_child_response(now, sa, payloads, pending)
            }
            crate::sa::Request::RekeyIke(pending) => {
                self.initiator_rekey_ike_response(now, sa, payloads, pending)
            }
            crate::sa::Request::DeleteChild(spis) => {
                for spi in spis {
                    self.remove_child(sa, spi, DownReason::LocalDelete);
                }
            }
            crate::sa::Request::DeleteIke => sa.state = SaState::Deleting,
            crate::sa::Request::TakeoverSync(nonce) => self.takeover_sync_response(sa, &payloads, nonce),
            crate::sa::Request::Liveness | crate::sa::Request::Notify | crate::sa::Request::Abandoned => {}
            crate::sa::Request::SaInit => {}
        }
    }

    fn handle_request(&mut self, now: Instant, sa: &mut IkeSa, inc: Incoming) {
        let Incoming { local, remote, raw, msg, opened } = inc;
        let Some(payloads) = opened.or_else(|| self.open(sa, raw, &msg)) else { return };
        sa.last_received = Some(now);
        self.note_peer_address(sa, local, remote);
        let mid = msg.header.message_id;
        let response = match msg.header.exchange {
            ExchangeType::IKE_AUTH if sa.state == SaState::InitDone => self.responder_auth(now, sa, payloads),
            ExchangeType::CREATE_CHILD_SA if sa.state == SaState::Established => {
                self.responder_create_child(now, sa, payloads)
            }
            ExchangeType::INFORMATIONAL => self.responder_informational(now, sa, payloads),
            _ => vec![Payload::Notify(tandem_wire::Notify::new(
                tandem_wire::NotifyType::INVALID_SYNTAX,
                vec![],
            ))],
        };
        let datagrams = self.seal(sa, msg.header.exchange, true, mid, response);
        sa.rel.responded(now, mid, datagrams.clone());
        self.send_datagrams(sa.local, sa.remote, datagrams);
    }

    /// NAT mapping updates: follow the peer's address and port on authenticated messages.
    fn note_peer_address(&mut self, sa: &mut IkeSa, local: SocketAddr, remote: SocketAddr) {
        if sa.remote != remote || sa.local != local {
            debug!(target: "ike", from = %sa.remote, to = %remote, "peer address changed");
            sa.remote = remote;
            sa.local = local;
        }
    }

    /// Decrypt the SK payload of a message of `sa`.
    pub(crate) fn open(&mut self, sa: &IkeSa, raw: &[u8], msg: &Message) -> Option<Vec<Payload>> {
        let Some(Payload::Encrypted(Encrypted { first_inner, body })) = msg.payloads.last() else {
            self.stats.malformed += 1;
            return None;
        };
        let crypters = sa.crypters()?;
        let prefix = &raw[..raw.len() - body.len()];
        let plain = match crypters.inbound.open(prefix, body) {
            Ok(p) => p,
            Err(_) => {
                self.stats.decrypt_failed += 1;
                debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), "SK payload failed to verify");
                return None;
            }
        };
        match tandem_wire::parse_payloads(*first_inner, &plain) {
            Ok(p) => Some(p),
            Err(e) => {
                self.stats.malformed += 1;
                debug!(target: "ike", "malformed inner payloads: {e}");
                None
            }
        }
    }

    /// Encrypt `payloads` into a message of `sa`.
    pub(crate) fn seal(
        &mut self,
        sa: &IkeSa,
        exchange: ExchangeType,
        response: bool,
        message_id: u32,
        payloads: Vec<Payload>,
    ) -> Vec<Vec<u8>> {
        let Some(c) = sa.crypters() else { return Vec::new() };
        let (first, inner) = emit_payloads(&payloads);
        let body_len = c.outbound.body_len(inner.len());
        let mut fl = if sa.initiator { flags::INITIATOR } else { 0 };
        if response {
            fl |= flags::RESPONSE;
        }
        let header = IkeHeader::new(sa.spi_i, sa.spi_r, exchange, fl, message_id);
        let whole = IkeHeader::LEN + 4 + body_len;
        if sa.frag_supported && whole > self.config.fragment_size {
            return fragment(&c.outbound, header, first, &inner, self.config.fragment_size, &mut *self.rng);
        }
        let mut bytes = Message {
            header,
            payloads: vec![Payload::Encrypted(Encrypted {
                first_inner: if payloads.is_empty() { PayloadType::NONE } else { first },
                body: vec![0; body_len],
            })],
        }
        .emit();
        let split = bytes.len() - body_len;
        let (prefix, body) = bytes.split_at_mut(split);
        if c.outbound.seal(prefix, &inner, body, &mut *self.rng).is_err() {
            return Vec::new();
        }
        vec![bytes]
    }

    /// Send a new request on `sa` (the window must be free).
    pub(crate) fn send_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        request: crate::sa::Request,
    ) {
        let mid = sa.rel.next_request_id;
        let datagrams = self.seal(sa, exchange, false, mid, payloads);
        sa.rel.send_request(now, datagrams.clone(), &self.config.retransmit);
        sa.request = Some(request);
        self.send_datagrams(sa.local, sa.remote, datagrams);
    }

    pub(crate) fn send_datagrams(&mut self, local: SocketAddr, remote: SocketAddr, datagrams: Vec<Vec<u8>>) {
        for data in datagrams {
            self.transmits.push_back(Transmit { local, remote, data });
        }
    }

    /// Put an SA back after handling, run its queued requests and tell the observer, which hears
    /// of this SA and of the IKE SAs its rekey made as one turn.
    pub(crate) fn finish(&mut self, now: Instant, sa: Box<IkeSa>) {
        self.finish_one(now, sa);
        if let Some(obs) = self.observer.as_mut() {
            obs.end_of_turn();
        }
    }

    fn finish_one(&mut self, now: Instant, mut sa: Box<IkeSa>) {
        if sa.state == SaState::Deleting && sa.rel.can_send() {
            let reason = if sa.superseded {
                DownReason::Rekeyed
            } else {
                sa.down_reason.clone().unwrap_or(DownReason::LocalDelete)
            };
            self.drop_sa(&mut sa, reason);
            return;
        }
        if sa.state == SaState::Established && sa.rel.can_send() && sa.sync_due.is_some() {
            self.start_takeover_sync(now, &mut sa);
        }
        if sa.state == SaState::Established && sa.rel.can_send() {
            if let Some(i) = sa.queue.iter().position(|q| !sa.waits_for_ike_rekey(q)) {
                let q = sa.queue.remove(i);
                self.start_queued(now, &mut sa, q);
            }
        }
        self.report_changed(now, &sa);
        self.sas.commit(sa);
        // IKE SAs born of this turn (rekeys) take the same path: queued work starts, the observer
        // hears of them.
        while let Some(new) = self.spawned.pop() {
            self.finish_one(now, new);
        }
    }

    fn start_queued(&mut self, now: Instant, sa: &mut IkeSa, q: Queued) {
        match q {
            Queued::CreateChild { name, rekeys_spi_in } => {
                self.start_create_child(now, sa, &name, rekeys_spi_in)
            }
            Queued::RekeyIke => self.start_rekey_ike(now, sa),
            Queued::DeleteChild(spis) => self.start_delete_children(now, sa, spis),
            Queued::DeleteRemoved(spis) => self.send_delete_children(now, sa, spis),
            Queued::DeleteIke => self.start_delete_ike(now, sa),
            Queued::Liveness => {
                self.send_request(now, sa, ExchangeType::INFORMATIONAL, vec![], crate::sa::Request::Liveness)
            }
            Queued::InvalidSpi(spi) => {
                let n = tandem_wire::Notify::new(
                    tandem_wire::NotifyType::INVALID_SPI,
                    spi.to_be_bytes().to_vec(),
                );
                self.send_request(
                    now,
                    sa,
                    ExchangeType::INFORMATIONAL,
                    vec![Payload::Notify(n)],
                    crate::sa::Request::Notify,
                )
            }
        }
    }

    /// Queue a request, starting it at once when the window is free.
    pub(crate) fn enqueue(&mut self, now: Instant, sa: &mut IkeSa, q: Queued) {
        if sa.state == SaState::Established && sa.rel.can_send() && !sa.waits_for_ike_rekey(&q) {
            self.start_queued(now, sa, q);
        } else {
            sa.queue.push(q);
        }
    }

    /// An instance reqid goes back to the pool once no CHILD SA of `sa` holds it (a CHILD SA and
    /// the twin of a collision share one; other IKE SAs never hold it).
    pub(crate) fn release_reqid_if_unused(&mut self, sa: &IkeSa, reqid: u32) {
        if !sa.children.iter().any(|c| c.reqid == reqid) {
            self.reqids.release_instance(reqid);
        }
    }

    /// Tell the observer (HA sync) the state of an authenticated SA. Only authenticated SAs are
    /// mirrored: an unauthenticated peer must not be able to make sync traffic (half-open floods).
    fn report_changed(&mut self, now: Instant, sa: &IkeSa) {
        if let (Some(obs), true) = (self.observer.as_mut(), sa.established.is_some()) {
            match crate::snapshot::encode(sa, now) {
                Ok(snap) => obs.ike_sa_changed(sa.id, &snap),
                Err(e) => warn!(target: "ike", sa = format_args!("{:#018x}", sa.id), "cannot snapshot: {e}"),
            }
        }
    }

    /// The response that ended the SA (the peer's Delete) may need sending again: kept as a
    /// tombstone for a while if it is recent.
    pub(crate) fn bury_last_response(&mut self, now: Instant, sa: &mut IkeSa) {
        if sa.established.is_none() || !sa.rel.buries_at(now) {
            return;
        }
        if let Some((mid, d)) = sa.rel.last_response.take() {
            self.tombstones.bury(now, sa.id, mid, d, sa.remote);
        }
    }

    /// Take a responder SA out of the half-open map (established or gone).
    pub(crate) fn forget_half_open(&mut self, sa: &mut IkeSa) {
        if let Some(k) = sa.half_open_key.take() {
            if self.half_open.get(&k) == Some(&sa.id) {
                self.half_open.remove(&k);
            }
        }
    }

    /// Remove an SA for good: report its CHILD SAs and itself down.
    pub(crate) fn drop_sa(&mut self, sa: &mut IkeSa, reason: DownReason) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        // HA: the standby gets the SA once more with the response about to be kept as a tombstone
        // (`bury_last_response`), then its removal, and keeps the same tombstone: after a takeover
        // the peer's retransmission of the request that ended the SA (its Delete, an IKE rekey)
        // reaches the standby, which answers it instead of leaving the peer's half to its
        // retransmission timeout (B7 in docs/ha.md).
        if let Some(now) = self.now.filter(|&now| sa.rel.buries_at(now)) {
            self.report_changed(now, sa);
        }
        if !sa.superseded {
            let children = std::mem::take(&mut sa.children);
            for r in children.iter().map(|c| c.reqid).collect::<BTreeSet<u32>>() {
                self.reqids.release_instance(r);
            }
            for c in children.into_iter().filter(|c| c.announced) {
                self.events.push_back(Event::ChildSaDown {
                    ike_sa: sa.id,
                    vpn: vpn.clone(),
                    child: c.name,
                    reqid: c.reqid,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    reason: reason.clone(),
                });
            }
        }
        if sa.established.is_some() && !sa.superseded {
            info!(target: "ike", vpn = %vpn, sa = format_args!("{:#018x}", sa.id), ?reason, "IKE SA down");
            self.events.push_back(Event::IkeSaDown {
                ike_sa: sa.id,
                vpn: vpn.clone(),
                reason: reason.clone(),
            });
        }
        self.forget_half_open(sa);
        self.sas.discard(sa.id);
        if let Some(now) = self.now {
            self.bury_last_response(now, sa);
        }
        if let (Some(obs), true) = (self.observer.as_mut(), sa.established.is_some()) {
            obs.ike_sa_removed(sa.id);
        }
        let failed = matches!(reason, DownReason::Failed(_) | DownReason::PeerDead);
        if let (Some(now), true) = (self.now, failed && sa.initiator && sa.established.is_none()) {
            self.schedule_start_retry(now, &vpn);
        }
        if !sa.superseded && (reason == DownReason::PeerDead || reason == DownReason::PeerDelete) {
            if let Some(p) = sa.vpn.as_ref().and_then(|v| self.peer(v)) {
                if sa.initiator || p.remote_addr.is_some() {
                    let action = if reason == DownReason::PeerDead {
                        p.dpd_action
                    } else {
                        p.children.first().map_or(DeadPeerAction::Clear, |c| c.close_action)
                    };
                    if action == DeadPeerAction::Restart {
                        if let Some(now) = self.now {
                            self.restarts.push((now, p.name.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Run due timers (retransmissions, rekeys, lifetimes, DPD, restarts).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        if self.standby {
            return;
        }
        for id in self.sas.due(now) {
            let Some(mut sa) = self.sas.checkout(&id) else { continue };
            if let Some(d) = sa.rel.due_echo(now) {
                self.stats.crossed_responses_resent += 1;
                self.send_datagrams(sa.local, sa.remote, d);
            }
            if self.give_up_stale_request(now, &mut sa) {
                self.finish(now, sa);
                continue;
            }
            match sa.rel.tick(now, &self.config.retransmit) {
                Tick::Retransmit(d) => {
                    debug!(target: "ike", sa = format_args!("{id:#018x}"), "retransmitting");
                    self.send_datagrams(sa.local, sa.remote, d);
                }
                Tick::GiveUp => {
                    warn!(target: "ike", vpn = ?sa.vpn, remote = %sa.remote, "peer not answering: giving up");
                    if sa.established.is_none() {
                        self.events.push_back(Event::Failure {
                            vpn: sa.vpn.clone(),
                            message: format!("no response from {}", sa.remote),
                        });
                    }
                    // An unanswered Delete ends an SA that was going anyway, for its own reason
                    // (and without the dead-peer action: the peer may well be alive).
                    let reason = match sa.state {
                        SaState::Deleting => sa.down_reason.clone().unwrap_or(DownReason::LocalDelete),
                        _ => DownReason::PeerDead,
                    };
                    self.drop_sa(&mut sa, reason);
                    continue;
                }
                Tick::Nothing => {}
            }
            if self.lifetime_tick(now, &mut sa) {
                continue;
            }
            self.finish(now, sa);
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.restarts).into_iter().partition(|(t, _)| *t <= now);
        self.restarts = later;
        for (_, vpn) in due {
            if !self.sas.of_vpn(&vpn).any(|sa| sa.state != SaState::Deleting) {
                info!(target: "ike", vpn = %vpn, "re-establishing");
                if let Err(e) = self.initiate(now, &vpn) {
                    warn!(target: "ike", vpn = %vpn, "restart failed: {e}");
                }
            }
        }
    }

    /// Lifetimes, half-open expiry and liveness checks. Returns true when the SA was removed.
    fn lifetime_tick(&mut self, now: Instant, sa: &mut IkeSa) -> bool {
        if sa.established.is_none() {
            if sa.created.is_some_and(|c| now >= c + self.config.half_open_timeout) {
                debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), "half-open IKE SA expired");
                self.stats.half_open_dropped += 1;
                if sa.initiator {
                    self.events.push_back(Event::Failure {
                        vpn: sa.vpn.clone(),
                        message: format!(
                            "no IKE SA with {} within {:?}",
                            sa.remote, self.config.half_open_timeout
                        ),
                    });
                }
                self.drop_sa(sa, DownReason::Failed("half-open timeout".into()));
                return true;
            }
            return false;
        }
        if sa.expire_at.is_some_and(|t| t <= now) {
            sa.expire_at = None;
            self.drop_sa(sa, DownReason::Expired);
            return true;
        }
        if sa.retire_at.is_some_and(|t| t <= now) {
            sa.retire_at = None;
            if sa.superseded && sa.state == SaState::Established {
                debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), "superseded IKE SA not deleted by the peer: deleting it");
                sa.queue.retain(|q| matches!(q, Queued::DeleteIke));
                if sa.queue.is_empty() {
                    self.enqueue(now, sa, Queued::DeleteIke);
                }
            }
        }
        if sa.rekey_at.is_some_and(|t| t <= now) {
            sa.rekey_at = None;
            let reauth = sa.vpn.as_ref().and_then(|v| self.peer(v)).is_some_and(|p| p.reauth);
            if reauth {
                if let Some(v) = sa.vpn.clone() {
                    sa.superseded = false;
                    self.restarts.push((now, v));
                    self.enqueue(now, sa, Queued::DeleteIke);
                }
            } else {
                self.enqueue(now, sa, Queued::RekeyIke);
            }
        }
        self.run_child_retries(now, sa);
        let mut rekeys = Vec::new();
        let mut expired = Vec::new();
        let mut retired = Vec::new();
        for c in sa.children.iter_mut() {
            if c.expire_at.is_some_and(|t| t <= now) {
                c.expire_at = None;
                // Row C7: a replaced or redundant SA goes locally, without a Delete that could
                // race the peer's own rekey or Delete of it.
                if c.live() {
                    expired.push(c.spi_in);
                } else {
                    retired.push(c.spi_in);
                }
            } else if c.rekey_at.is_some_and(|t| t <= now) {
                c.rekey_at = None;
                if c.live() && c.peer_successor.is_none() {
                    rekeys.push((c.name.clone(), c.spi_in));
                }
            }
        }
        for spi in retired {
            self.remove_child(sa, spi, DownReason::Expired);
        }
        for (name, spi) in rekeys {
            self.enqueue(now, sa, Queued::CreateChild { name, rekeys_spi_in: Some(spi) });
        }
        if !expired.is_empty() {
            self.enqueue(now, sa, Queued::DeleteChild(expired));
        }
        if sa.dpd_at.is_some_and(|t| t <= now) {
            // A check is due `dpd-delay` after the last message received, not after the last
            // check: re-arming at now + delay would skip a check whenever a reply arrived just
            // after the timer, and detection could take twice the delay.
            let delay = sa.vpn.as_ref().and_then(|v| self.peer(v)).and_then(|p| p.dpd_delay);
            sa.dpd_at = delay.map(|d| {
                let due = sa.last_received.map_or(now, |t| t + d);
                if due > now {
                    return due;
                }
                if sa.rel.can_send() && sa.queue.is_empty() {
                    self.enqueue(now, sa, Queued::Liveness);
                }
                // The reply moves `last_received`; without one the retransmissions decide.
                now + d
            });
        }
        false
    }

    /// Initiate the vpn (its first CHILD SA in IKE_AUTH, the others with CREATE_CHILD_SA).
    pub fn initiate(&mut self, now: Instant, vpn: &str) -> Result<IkeSaId, EngineError> {
        self.now = Some(now);
        self.refuse_on_standby()?;
        self.initiate_sa_init(now, vpn)
    }

    /// A packet matched a trap policy of `vpn`/`child`: initiate if no negotiation is under way.
    pub fn acquire(&mut self, now: Instant, vpn: &str, child: &str) {
        if self.standby {
            return;
        }
        // The SA in service if there is one, not one a rekey superseded or a Delete is ending.
        let existing = self
            .sas
            .of_vpn(vpn)
            .find(|sa| sa.state == SaState::Established && !sa.superseded)
            .or_else(|| self.sas.of_vpn(vpn).next())
            .map(|sa| (sa.id, sa.state));
        match existing {
            None => {
                if let Err(e) = self.initiate(now, vpn) {
                    warn!(target: "ike", vpn, "acquire failed: {e}");
                }
            }
            Some((id, SaState::Established)) => {
                let Some(mut sa) = self.sas.checkout(&id) else { return };
                let up = sa.children.iter().any(|c| c.name == child && c.live());
                let queued =
                    sa.queue.iter().any(|q| matches!(q, Queued::CreateChild { name, .. } if name == child));
                if !up && !queued {
                    self.enqueue(
                        now,
                        &mut sa,
                        Queued::CreateChild { name: child.to_string(), rekeys_spi_in: None },
                    );
                }
                self.finish(now, sa);
            }
            Some(_) => {}
        }
    }

    /// The dataplane received ESP for an unknown SPI from `remote`: notify the peer (rate-limited).
    pub fn report_invalid_spi(&mut self, now: Instant, remote: IpAddr, spi: u32) {
        if self.standby {
            return;
        }
        if let Some(t) = self.last_invalid_spi.get(&remote) {
            if now < *t + self.config.invalid_spi_interval {
                return;
            }
        }
        self.last_invalid_spi.insert(remote, now);
        let id = self.sas.of_remote(remote).find(|sa| sa.state == SaState::Established).map(|sa| sa.id);
        if let Some(id) = id {
            if let Some(mut sa) = self.sas.checkout(&id) {
                self.enqueue(now, &mut sa, Queued::InvalidSpi(spi));
                self.finish(now, sa);
            }
        }
    }

    /// Drop the SA's queued work and send its Delete now, or once the window is free.
    pub(crate) fn delete_ike_next(&mut self, now: Instant, sa: &mut IkeSa) {
        sa.queue.clear();
        if sa.rel.can_send() {
            self.start_delete_ike(now, sa);
        } else {
            sa.queue.push(Queued::DeleteIke);
        }
    }

    /// Delete an IKE SA (and its CHILD SAs) with an INFORMATIONAL Delete.
    pub fn terminate_ike_sa(&mut self, now: Instant, id: IkeSaId) -> Result<(), EngineError> {
        self.now = Some(now);
        self.refuse_on_standby()?;
        let mut sa = self.sas.checkout(&id).ok_or(EngineError::UnknownIkeSa(id))?;
        if sa.state == SaState::Established {
            self.delete_ike_next(now, &mut sa);
            self.finish(now, sa);
        } else {
            self.drop_sa(&mut sa, DownReason::LocalDelete);
        }
        Ok(())
    }

    /// Delete a CHILD SA by either of its SPIs.
    pub fn terminate_child_sa(&mut self, now: Instant, spi: u32) -> Result<(), EngineError> {
        self.now = Some(now);
        self.refuse_on_standby()?;
        let id = self.sa_of_child(spi).ok_or(EngineError::UnknownChildSa(spi))?;
        let mut sa = self.sas.checkout(&id).ok_or(EngineError::UnknownChildSa(spi))?;
        let spi_in = sa.child_by_spi(spi).map(|i| sa.children[i].spi_in).unwrap_or(spi);
        self.enqueue(now, &mut sa, Queued::DeleteChild(vec![spi_in]));
        self.finish(now, sa);
        Ok(())
    }

    /// Start a CHILD SA rekey.
    pub fn rekey_child_sa(&mut self, now: Instant, spi: u32) -> Result<(), EngineError> {
        self.now = Some(now);
        self.refuse_on_standby()?;
        let id = self.sa_of_child(spi).ok_or(EngineError::UnknownChildSa(spi))?;
        let mut sa = self.sas.checkout(&id).ok_or(EngineError::UnknownChildSa(spi))?;
        let c = sa.child_by_spi(spi).map(|i| (sa.children[i].name.clone(), sa.children[i].spi_in));
        if let Some((name, spi_in)) = c {
            self.enqueue(now, &mut sa, Queued::CreateChild { name, rekeys_spi_in: Some(spi_in) });
        }
        self.finish(now, sa);
        Ok(())
    }

    /// Start an IKE SA rekey.
    pub fn rekey_ike_sa(&mut self, now: Instant, id: IkeSaId) -> Result<(), EngineError> {
        self.now = Some(now);
        self.refuse_on_standby()?;
        let mut sa = self.sas.checkout(&id).ok_or(EngineError::UnknownIkeSa(id))?;
        self.enqueue(now, &mut sa, Queued::RekeyIke);
        self.finish(now, sa);
        Ok(())
    }

    fn sa_of_child(&self, spi: u32) -> Option<IkeSaId> {
        self.sas.sa_of_child(spi)
    }

    /// Recompute the SA table's timer queue and indexes and compare them with what is filed
    /// (simulations check this after every step).
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        self.sas.check()
    }

    /// True when no IKE SA has a request outstanding or queued: nothing will happen until a
    /// datagram, a command or a lifetime timer arrives (simulations check end states here).
    pub fn is_idle(&self) -> bool {
        self.sas.values().all(|sa| sa.rel.can_send() && sa.queue.is_empty())
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.standby {
            return None;
        }
        let sa_min = self.sas.next_deadline();
        let restart = self.restarts.iter().map(|(t, _)| *t).min();
        [sa_min, restart].into_iter().flatten().min()
    }

    pub fn ike_sas(&self) -> Vec<IkeSaInfo> {
        let now = self.now;
        let secs = |t: Option<Instant>| -> Option<u64> { Some(now?.saturating_duration_since(t?).as_secs()) };
        let until =
            |t: Option<Instant>| -> Option<u64> { Some(t?.saturating_duration_since(now?).as_secs()) };
        let mut v: Vec<IkeSaInfo> = self
            .sas
            .values()
            .map(|sa| IkeSaInfo {
                id: sa.id,
                vpn: sa.vpn.clone(),
                state: match sa.state {
                    SaState::Established if sa.rekey_in_progress() => IkeSaState::Rekeying,
                    SaState::Established => IkeSaState::Established,
                    SaState::Deleting => IkeSaState::Deleting,
                    _ => IkeSaState::Connecting,
                },
                initiator: sa.initiator,
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                local: sa.local,
                remote: sa.remote,
                local_id: sa.local_id.clone(),
                remote_id: sa.remote_id.clone(),
                encr: sa.suite.map(|s| s.encr),
                prf: sa.suite.and_then(|s| s.prf),
                integ: sa.suite.and_then(|s| s.integ),
                dh: sa.suite.and_then(|s| s.dh),
                nat_local: sa.nat_local,
                nat_remote: sa.nat_remote,
                established_secs: secs(sa.established),
                rekey_in_secs: until(sa.rekey_at),
                child_sas: sa.children.len(),
                standby: self.standby,
            })
            .collect();
        v.sort_by(|a, b| (&a.vpn, a.id).cmp(&(&b.vpn, b.id)));
        v
    }

    pub fn child_sas(&self) -> Vec<ChildSaInfo> {
        let now = self.now;
        let mut v: Vec<ChildSaInfo> = self
            .sas
            .values()
            .flat_map(|sa| {
                sa.children.iter().map(move |c| ChildSaInfo {
                    ike_sa: sa.id,
                    vpn: sa.vpn.clone().unwrap_or_default(),
                    child: c.name.clone(),
                    reqid: c.reqid,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    mode: c.mode,
                    encr: c.sel.encr,
                    integ: c.sel.integ,
                    dh: c.sel.dh,
                    esn: c.sel.esn,
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    udp_encap: sa.local.port() != 500 || sa.nat_local || sa.nat_remote,
                    established_secs: match (now, c.created) {
                        (Some(n), Some(t)) => n.saturating_duration_since(t).as_secs(),
                        _ => 0,
                    },
                    rekey_in_secs: match (now, c.rekey_at) {
                        (Some(n), Some(t)) => Some(t.saturating_duration_since(n).as_secs()),
                        _ => None,
                    },
                    standby: self.standby,
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.vpn, &a.child, a.spi_in).cmp(&(&b.vpn, &b.child, b.spi_in)));
        v
    }
}

impl IkeSa {
    fn rekey_in_progress(&self) -> bool {
        matches!(self.request, Some(crate::sa::Request::RekeyIke(_)))
    }
}

/// Split an encrypted message into SKF fragments of at most `size` bytes (RFC 7383 section 2.5):
/// each is encrypted on its own, with the IKE header and SKF header (with fragment fields) as prefix.
fn fragment(
    c: &tandem_crypto::SkCrypter,
    header: IkeHeader,
    first: PayloadType,
    inner: &[u8],
    size: usize,
    rng: &mut dyn Random,
) -> Vec<Vec<u8>> {
    let fixed = IkeHeader::LEN + 8 + c.body_len(0) + 16;
    let chunk = size.saturating_sub(fixed).max(16);
    let pieces: Vec<&[u8]> = inner.chunks(chunk).collect();
    let total = pieces.len() as u16;
    let mut out = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        let body_len = c.body_len(piece.len());
        let mut bytes = Message {
            header: header.clone(),
            payloads: vec![Payload::EncryptedFragment(tandem_wire::EncryptedFragment {
                fragment_number: i as u16 + 1,
                total_fragments: total,
                first_inner: if i == 0 { first } else { PayloadType::NONE },
                body: vec![0; body_len],
            })],
        }
        .emit();
        let split = bytes.len() - body_len;
        let (prefix, body) = bytes.split_at_mut(split);
        if c.seal(prefix, piece, body, rng).is_err() {
            return Vec::new();
        }
        out.push(bytes);
    }
    out
}

/// Jittered soft lifetime: `rekey - random(0..=rand)`.
pub(crate) fn jitter(rng: &mut dyn Random, rekey: Duration, rand: Duration) -> Duration {
    if rand.is_zero() {
        return rekey;
    }
    let r = rng.up_to(rand.as_millis() as u64);
    rekey.saturating_sub(Duration::from_millis(r))
}

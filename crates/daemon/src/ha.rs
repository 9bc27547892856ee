//! The daemon's half of HA (issue 10, docs/ha.md): the sync link, the role, and the glue between
//! the engine's observer, the sans-IO sync protocol (`tandem-ha`) and the dataplane's leases. The
//! engine task owns it and calls it at fixed points: after every engine call (`observe`), for
//! every datagram the engine wants to send (`gate`), for every CHILD SA it installs or removes,
//! for every event of the link, and on a lease tick.

use crate::dataplane::Esp;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_config::{Config, HaRole, HaSettings, ReplayAdvance};
use tandem_dataplane::tandem_esp::{ReplayState, Resume};
use tandem_ha::active::PeerState;
use tandem_ha::msg::Role;
use tandem_ha::replay::ReplayTrigger;
use tandem_ha::{
    place_child_sa, ActiveSync, BesideWatch, BulkSa, Released, SaChange, SharedExchanges, StandbySync,
    SyncMsg, TickPace,
};
use tandem_ha_link::{Channel, Link, LinkConfig, LinkEvent, LinkRx, LinkTx, NodeKey, Pin, SendError};
use tandem_ike::{ChildSaInstall, Endpoint, IkeSaId, SaObserver, Takeover, Transmit};
use tracing::{info, warn};

/// Planned switchover: the other node must acknowledge the handover within this, or this node
/// runs its SAs again (it has said nothing to the peers meanwhile; they retransmit).
const HANDOVER_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Planned switchover: how long the old active keeps forwarding on its CHILD SAs (traffic still
/// reaching it while keepalived moves the addresses) if nobody tells it to step down first.
const HANDOVER_LINGER: Duration = Duration::from_secs(10);

enum Observed {
    Changed(IkeSaId, zeroize::Zeroizing<Vec<u8>>),
    Removed(IkeSaId),
    /// What came since the last one belongs together (`SaObserver::end_of_turn`).
    EndOfTurn,
}

/// The engine's observer: queues what it reports for the engine task to hand to the sync.
struct Queue(Arc<Mutex<VecDeque<Observed>>>);

impl SaObserver for Queue {
    fn ike_sa_changed(&mut self, id: IkeSaId, snapshot: &[u8]) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(Observed::Changed(id, zeroize::Zeroizing::new(snapshot.to_vec())));
        }
    }
    fn ike_sa_removed(&mut self, id: IkeSaId) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(Observed::Removed(id));
        }
    }
    fn end_of_turn(&mut self) {
        if let Ok(mut q) = self.0.lock() {
            // Consecutive ends (turns that changed nothing authenticated) need no marker each.
            if q.back().is_some_and(|o| !matches!(o, Observed::EndOfTurn)) {
                q.push_back(Observed::EndOfTurn);
            }
        }
    }
}

/// How far a stale takeover pushes its next Message ID past the mirrored one when it asks the peer
/// to synchronise (RFC 6311). strongSwan ignores a sync whose sender ID is below the one it
/// expects, and the old active may have sent requests alone since the mirror went stale: a DPD
/// every second for 18 hours stays below this. A jump costs nothing (32-bit IDs; a rekey starts
/// again at 0).
pub const MID_SYNC_MARGIN: u32 = 65_536;

/// How far a takeover from a stale mirror jumps the inbound replay window of a CHILD SA whose peer
/// does RFC 6311 replay counter sync, and asks the peer to move its outbound numbers. It should
/// exceed what the old active may have received since the last window it synced: 2^24 is 28 s of
/// the fastest single SA measured here (590k packets/s), and 1/256 of a 32-bit space. A hot
/// takeover keeps the estimated `replay-advance`: its windows are current, and a jump would drop
/// the packets already in flight.
pub const REPLAY_SYNC_DELTA: u64 = 1 << 24;

/// `GET /v1/ha`.
#[derive(Debug, Clone, Serialize)]
pub struct HaStatus {
    pub node_id: u8,
    pub role: &'static str,
    /// Active: where the standby stands (`down`, `syncing`, `in-sync`). Standby: `in-sync` once a
    /// bulk transfer completed on the current connection.
    pub peer: &'static str,
    pub link_up: bool,
    pub link_generation: u64,
    /// The other node's configuration digest matches ours (None before its Hello).
    pub config_match: Option<bool>,
    pub config_digest: String,
    /// Times the other node's digest was found to differ from ours (at its Hello, or when either
    /// node reloaded).
    pub config_mismatches: u64,
    /// IKE SAs mirrored here (standby) or run here (active).
    pub ike_sas: usize,
    /// Active: sync messages not yet acknowledged.
    pub lag_messages: u64,
    /// Active: how long the standby has been acknowledging nothing while messages wait (None when
    /// nothing waits).
    pub lag_ms: Option<u64>,
    pub since_last_sync_ms: Option<u64>,
    pub takeovers: u64,
    pub last_takeover: Option<Takeover>,
    /// Takeovers from a mirror that was not known to be current (no complete bulk transfer on the
    /// connection, or the link gone before the takeover): IKE SAs the old active ran on alone may
    /// have moved on (docs/ha.md, "Known faults").
    pub stale_takeovers: u64,
    /// IKE SAs whose Message IDs a stale takeover set out to synchronise with the peer (RFC 6311;
    /// only peers that announced support). The engine's `mid_syncs_done` counts the answers.
    pub mid_syncs: u64,
    /// Takeovers put off because the other node was active and this node's mirror incomplete
    /// (see `Ha::take_over`), and whether one is waiting now.
    pub takeovers_deferred: u64,
    pub takeover_waiting: bool,
    /// Planned switchovers: handed over by this node, taken over by this node.
    pub switchovers_out: u64,
    pub switchovers_in: u64,
    /// A handover from this node is under way (it forwards, says nothing, and steps down on
    /// `set-state standby` or after a while).
    pub handing_over: bool,
    /// Times the other node said it is active while this node was active too (split brain: the
    /// sync link or VRRP was partitioned). Node-ids in SPIs and the sequence-number leases keep
    /// the two from sealing the same (SPI, sequence number); an operator must still pick one.
    pub split_brain: u64,
    pub active: tandem_ha::active::ActiveStats,
    pub standby: tandem_ha::standby::StandbyStats,
    pub link: tandem_ha_link::LinkStats,
}

pub struct Ha {
    settings: HaSettings,
    active_role: bool,
    observed: Arc<Mutex<VecDeque<Observed>>>,
    active: ActiveSync<Transmit>,
    standby: StandbySync,
    tx: LinkTx,
    rx: Option<LinkRx>,
    link_up: bool,
    /// The other node's last Hello said it is a standby (a node that may be bulk-synced).
    peer_standby: bool,
    /// The other node's last Hello said it is active.
    peer_active: bool,
    /// While this node is active: whether the other node ran SAs beside it (docs/ha.md, B5).
    beside: BesideWatch,
    /// Told to take over (keepalived's MASTER) while the other node is active on a live link and
    /// this node's mirror is incomplete: since when. See `take_over`.
    deferred_takeover: Option<Instant>,
    takeovers_deferred: u64,
    /// Standby: the latest ack not yet taken by the link (acks are cumulative: one is enough).
    pending_ack: Option<u64>,
    generation: u64,
    /// This node's configuration digest (`Config::cluster_digest`), and the other node's last.
    digest: [u8; 32],
    peer_digest: Option<[u8; 32]>,
    config_mismatches: u64,
    last_sync: Option<Instant>,
    takeovers: u64,
    last_takeover: Option<Takeover>,
    split_brain: u64,
    stale_takeovers: u64,
    mid_syncs: u64,
    switchovers_out: u64,
    switchovers_in: u64,
    /// The planned switchover this node started: when, the Handover's sync sequence number, and
    /// whether the other node acknowledged it (took over).
    handover: Option<(Instant, u64, bool)>,
    /// Requests another node may complete too, and the CHILD SAs they make.
    shared: SharedExchanges,
    /// Where the SAs of a takeover resume, until the dataplane has them: the outbound counter and
    /// the inbound replay window.
    resumes: HashMap<u32, Resume>,
    replay: ReplayTrigger,
    /// The lease tick's period, from how fast the outbound counters move.
    pace: TickPace,
}

impl Ha {
    /// Start the sync link and put the endpoint in its initial role.
    pub fn start(config: &Config, endpoint: &mut Endpoint) -> Result<Option<Ha>, String> {
        let Some(s) = config.ha.clone() else { return Ok(None) };
        let key = NodeKey::read_pem_file(&s.key_file)
            .map_err(|e| format!("[ha] key-file {}: {e}", s.key_file.display()))?;
        let local = std::net::SocketAddr::new(s.local_address, s.port);
        let remote = std::net::SocketAddr::new(s.remote_address, s.port);
        let pin = Pin::from_bytes(s.peer_pin.0);
        let (tx, rx) = Link::start(LinkConfig::new(local, remote, key, pin))
            .map_err(|e| format!("[ha] sync link: {e}"))?;
        let observed: Arc<Mutex<VecDeque<Observed>>> = Arc::default();
        endpoint.set_observer(Box::new(Queue(observed.clone())));
        let active_role = s.initial_role == HaRole::Active;
        if !active_role {
            endpoint.set_standby();
        }
        info!(target: "ha", node = s.node_id, %local, %remote, role = if active_role { "active" } else { "standby" },
              "HA node started");
        let (s_time, s_packets) = (s.sync_period_time, s.sync_period_packets);
        Ok(Some(Ha {
            active: ActiveSync::new(s.oseq_shift, s.ack_timeout),
            standby: StandbySync::new(s.oseq_shift),
            pace: TickPace::new(s.oseq_shift),
            settings: s,
            active_role,
            observed,
            tx,
            rx: Some(rx),
            link_up: false,
            peer_standby: false,
            peer_active: false,
            beside: BesideWatch::default(),
            deferred_takeover: None,
            takeovers_deferred: 0,
            pending_ack: None,
            generation: 0,
            digest: *config.cluster_digest().public(),
            peer_digest: None,
            config_mismatches: 0,
            last_sync: None,
            takeovers: 0,
            last_takeover: None,
            split_brain: 0,
            stale_takeovers: 0,
            mid_syncs: 0,
            switchovers_out: 0,
            switchovers_in: 0,
            handover: None,
            shared: SharedExchanges::new(),
            resumes: HashMap::new(),
            replay: ReplayTrigger::new(s_time, s_packets),
        }))
    }

    /// Standby: a bulk transfer is coming in (the link is up and the mirror not complete yet).
    pub fn receiving_bulk(&self) -> bool {
        !self.active_role && self.link_up && !self.standby.in_sync()
    }

    /// The HA tick has work: leases and replay windows (active), or a handover to watch.
    pub fn ticking(&self) -> bool {
        self.active_role || self.handover.is_some() || self.pending_ack.is_some()
    }

    /// The time from a tick to the next one: paced by the outbound counters' rates (`TickPace`).
    pub fn tick_period(&self) -> Duration {
        self.pace.period()
    }

    /// When the HA tick must run at the latest, whatever the pace, after the engine's work at
    /// `now`: soon while a handover or an ack to send is pending or the link's queue refused a
    /// message (a bulk transfer is paced by the link, and tries again on every tick); at the
    /// ack timeout's deadline while the standby owes an ack (`ack-timeout`, 50 ms by default,
    /// for held datagrams), so a standby that stopped acknowledging is seen on time.
    pub fn tick_deadline(&self, now: Instant) -> Option<Instant> {
        if self.handover.is_some() || self.pending_ack.is_some() || self.active.has_queued() {
            return Some(now + tandem_ha::pace::MIN_TICK);
        }
        self.active.poll_timeout()
    }

    /// Planned switchover (`tandemctl ha switchover` on the active): the standby, in sync, gets
    /// every inbound replay window as it stands, then the `Handover`; it takes over on applying
    /// it. From now on this node says nothing for its SAs (no two nodes speak IKE for one SA), but
    /// its dataplane keeps forwarding within the leases the standby holds, so traffic that reaches
    /// it while the addresses move is not lost. The standby resumes every outbound SA above them
    /// and each inbound window exactly (no replay advance: nothing was lost).
    pub fn switchover(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        esp: Option<&Esp>,
    ) -> Result<(), String> {
        if !self.active_role {
            return Err("not the active node: run the switchover on the active one".into());
        }
        if !self.link_up || self.active.state() != PeerState::InSync {
            return Err(
                "the standby is not in sync: a switchover now would lose state (tandemctl ha status)".into(),
            );
        }
        let mut last = Vec::new();
        if let Some(esp) = esp {
            let h = esp.handle();
            for spi in self.active.leases.spis() {
                if let Some(w) = h.replay_state(spi) {
                    self.active.replay(spi, w.window, w.top, w.bitmap);
                }
                // This node keeps sealing, up to the ceiling in force (it can only rise on the
                // standby's acks, which this node no longer takes), so traffic still reaching it
                // while the addresses move is forwarded; the new active starts above. Not frozen:
                // a freeze would drop those packets, and the new active's first packet reaches
                // the peer after them (it has traffic only once the addresses moved).
                if let Some((_, ceiling)) = h.seq_lease(spi) {
                    last.push((spi, ceiling));
                }
            }
        }
        let seq = self.active.handover(last);
        self.send_queued();
        endpoint.hand_over();
        // Datagrams still held are the standby's to send: its mirror has their state, and the
        // peer retransmits what it misses.
        let _ = self.active.link_down();
        self.active_role = false;
        self.handover = Some((now, seq, false));
        self.switchovers_out += 1;
        info!(target: "ha", seq, "planned switchover: handed over to the other node");
        Ok(())
    }

    /// Watch a handover this node started (from the HA tick).
    fn handover_tick(&mut self, now: Instant, endpoint: &mut Endpoint, esp: Option<&Esp>) {
        let Some((since, _, acked)) = self.handover else { return };
        let age = now.saturating_duration_since(since);
        if !acked && age > HANDOVER_ACK_TIMEOUT {
            warn!(target: "ha", "the other node did not take over within {HANDOVER_ACK_TIMEOUT:?}: active again");
            self.handover = None;
            endpoint.cancel_hand_over();
            self.active_role = true;
        } else if age > HANDOVER_LINGER {
            info!(target: "ha", "handover: nobody told this node to step down: stepping down now");
            self.step_down(endpoint, esp);
        }
    }

    /// The link's event stream, for the engine task's select loop.
    pub fn take_rx(&mut self) -> Option<LinkRx> {
        self.rx.take()
    }

    /// Hand what the engine's observer reported to the sync (active only).
    pub fn observe(&mut self) {
        let items: Vec<Observed> = match self.observed.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => return,
        };
        if !self.active_role {
            return;
        }
        // One message per turn, applied whole by the standby (docs/ha.md, B8).
        let mut turn = Vec::new();
        for o in items {
            match o {
                Observed::Changed(id, snapshot) => turn.push(SaChange::IkeSa { id, snapshot }),
                Observed::Removed(id) => {
                    self.shared.removed(id);
                    turn.push(SaChange::IkeSaRemoved { id });
                }
                Observed::EndOfTurn => self.active.observed(std::mem::take(&mut turn)),
            }
        }
        self.active.observed(turn);
    }

    /// A datagram of the engine: `Some` to send now, `None` when held for the standby's ack.
    pub fn gate(&mut self, now: Instant, t: Transmit) -> Option<Transmit> {
        if !self.active_role {
            return None;
        }
        self.active.transmit(now, t)
    }

    /// The resume state to install a new CHILD SA with: where a takeover resumes it, else 1; or,
    /// for an SA whose keys the old active may have used (it completes a request this node
    /// inherited), above anything the old active could have sealed.
    pub fn installing(&mut self, c: &ChildSaInstall, endpoint: &Endpoint) -> Resume {
        let spi_in = c.spi_in;
        let mut r = self.resumes.remove(&spi_in);
        let p = place_child_sa(
            &mut self.active,
            &self.standby,
            &mut self.shared,
            c.ike_sa,
            spi_in,
            endpoint.outstanding_request(c.ike_sa),
            r.as_ref().map(|r| r.next_seq),
        );
        if p.shared.inherited || p.shared.left_behind {
            info!(target: "ha", spi_in = format_args!("{spi_in:#010x}"), next_seq = p.next_seq,
                  inherited = p.shared.inherited, left_behind = p.shared.left_behind,
                  "CHILD SA from a request the other node may complete too");
        }
        let mut r = r.take().unwrap_or_default();
        r.next_seq = p.next_seq;
        r.ceiling = Some(p.ceiling);
        r
    }

    /// The standby is gone (link down, or too slow): the requests outstanding now are held by it
    /// too, and it may complete them after a takeover.
    fn note_solo(&mut self, was: PeerState, endpoint: &Endpoint) {
        if was != PeerState::Down && self.active.state() == PeerState::Down {
            self.shared.left_behind(endpoint.outstanding_requests());
        }
    }

    pub fn removed(&mut self, spi_in: u32) {
        self.active.child_sa_removed(spi_in);
        self.replay.remove(spi_in);
    }

    /// Send what the protocol has queued, as far as the link takes it now: a message its queue
    /// refuses waits for the next call (every engine event and the HA tick, 5 ms while messages
    /// wait), so a bulk transfer of any size is paced by the link instead of overflowing it
    /// (fault B1, docs/ha.md).
    pub fn send_queued(&mut self) {
        if let Some(seq) = self.pending_ack {
            if !self.try_send(&SyncMsg::Ack { seq }) {
                return;
            }
            self.pending_ack = None;
        }
        while let Some(m) = self.active.poll_send() {
            if !self.try_send(&m) {
                self.active.unsend(m);
                return;
            }
        }
    }

    /// The link has or refuses `m`: false when its queue is full (try again later); a message it
    /// can never take is logged and dropped (the standby then finds a gap and resyncs).
    fn try_send(&mut self, m: &SyncMsg) -> bool {
        // Bulk and live messages share one numbered sequence that the standby applies in order, so
        // one ordered stream carries both. Moving bulk to the link's lower-priority stream needs
        // ordering per SA instead (docs/ha.md, "What is not built yet").
        match self.tx.send(Channel::Live, m.encode().to_vec()) {
            Ok(()) => true,
            Err(SendError::Full(_)) => false,
            Err(e) => {
                warn!(target: "ha", "sync message not queued: {e}");
                true
            }
        }
    }

    fn send(&mut self, m: &SyncMsg) {
        if !self.try_send(m) {
            warn!(target: "ha", "sync message not queued: the link's queue is full");
        }
    }

    fn hello(&mut self) {
        let role = if self.active_role { Role::Active } else { Role::Standby };
        let m = SyncMsg::Hello {
            node_id: self.settings.node_id,
            role,
            epoch: self.takeovers,
            config_digest: self.digest,
        };
        self.send(&m);
    }

    /// The configuration was reloaded: a new digest, told to the other node.
    pub fn config_changed(&mut self, config: &Config) {
        let digest = *config.cluster_digest().public();
        if digest == self.digest {
            return;
        }
        self.digest = digest;
        info!(target: "ha", "configuration digest changed: telling the other node");
        if self.link_up {
            self.send(&SyncMsg::Config { config_digest: digest });
        }
        if let Some(peer) = self.peer_digest {
            self.report_config_match(peer);
        }
    }

    /// The other node's configuration digest, from its Hello or a `Config` message.
    fn peer_config(&mut self, digest: [u8; 32]) {
        if self.peer_digest != Some(digest) {
            self.peer_digest = Some(digest);
            self.report_config_match(digest);
        }
    }

    fn report_config_match(&mut self, peer: [u8; 32]) {
        if peer == self.digest {
            info!(target: "ha", "the nodes' configurations agree (digest match)");
        } else {
            self.config_mismatches += 1;
            warn!(target: "ha", "the other node's configuration differs from ours (digest mismatch)");
        }
    }

    /// An event of the sync link. Returns what the protocol released.
    pub fn link_event(
        &mut self,
        now: Instant,
        ev: LinkEvent,
        endpoint: &mut Endpoint,
        esp: Option<&Esp>,
    ) -> Released<Transmit> {
        let mut out = Released { datagrams: vec![], ceilings: vec![], rekeys: vec![] };
        match ev {
            LinkEvent::PeerUp { generation } => {
                self.link_up = true;
                // An ack of the last connection's numbering must not reach the new one.
                self.pending_ack = None;
                self.generation = generation;
                info!(target: "ha", generation, "sync link up");
                // Each side introduces itself; an active node starts the bulk transfer when the
                // other says it is a standby (now, or later after stepping down).
                self.hello();
                if !self.active_role {
                    self.standby.link_up();
                }
            }
            LinkEvent::PeerDown { generation, reason } => {
                self.link_up = false;
                self.pending_ack = None;
                self.peer_standby = false;
                self.peer_active = false;
                warn!(target: "ha", generation, ?reason, "sync link down");
                self.take_over_if_deferred(now, endpoint, "the sync link is down");
                if self.active_role {
                    let was = self.active.state();
                    out = self.active.link_down();
                    self.note_solo(was, endpoint);
                }
            }
            LinkEvent::Message { bytes, .. } => match SyncMsg::decode(&bytes) {
                Err(e) => warn!(target: "ha", "undecodable sync message: {e}"),
                Ok(SyncMsg::Config { config_digest }) => self.peer_config(config_digest),
                Ok(SyncMsg::Hello { node_id, role, config_digest, epoch }) => {
                    self.peer_config(config_digest);
                    if self.active_role && self.beside.hello(role, epoch) {
                        // Rekeyed as each nears its ceiling, not all at once: no rekey storm for
                        // a VRRP blip, and none of them is sealed past what the other node
                        // resumed above.
                        let spis = self.active.taint_all();
                        warn!(target: "ha", peer = node_id, child_sas = spis.len(),
                              "the other node ran the SAs beside this one and is a standby again: \
                              no CHILD SA is sealed past its ceiling, each is rekeyed before it");
                    }
                    self.peer_standby = role == Role::Standby;
                    self.peer_active = role == Role::Active;
                    if !self.peer_active {
                        self.take_over_if_deferred(now, endpoint, "the other node is not active any more");
                    }
                    match (role, self.active_role) {
                        (Role::Active, true) => {
                            self.split_brain += 1;
                            warn!(target: "ha", peer = node_id, "both nodes are active (split brain): \
                                  make one of them standby (tandemctl ha set-state standby)")
                        }
                        (Role::Standby, true) => self.begin_bulk(now, endpoint, esp),
                        _ => {}
                    }
                }
                Ok(SyncMsg::Ack { seq }) if self.active_role => {
                    self.last_sync = Some(now);
                    out = self.active.ack(now, seq);
                }
                Ok(SyncMsg::Ack { seq }) if self.handover.is_some_and(|(_, h, _)| seq >= h) => {
                    if let Some((_, _, acked)) = self.handover.as_mut() {
                        if !*acked {
                            info!(target: "ha", "the other node has taken over; forwarding until the addresses move");
                        }
                        *acked = true;
                    }
                }
                Ok(m) if !self.active_role => match self.standby.handle(now, endpoint, m) {
                    Ok(Some(ack)) => {
                        self.last_sync = Some(now);
                        if let SyncMsg::Ack { seq } = ack {
                            // Sent by `send_queued`, right after this event, or on a later tick
                            // when the link's queue is full.
                            self.pending_ack = Some(seq);
                        }
                        if self.standby.in_sync() {
                            self.take_over_if_deferred(now, endpoint, "the mirror is complete");
                        }
                        if self.standby.take_handover() {
                            if let Some(t) = self.take_over_as(now, endpoint, true) {
                                self.switchovers_in += 1;
                                info!(target: "ha", ?t, "planned switchover: now active");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // A message lost or out of order: ask for everything again.
                        warn!(target: "ha", "{e}");
                        self.pending_ack = None;
                        self.standby.link_up();
                        self.hello();
                    }
                },
                Ok(_) => {}
            },
        }
        out
    }

    /// Send the standby everything: every established IKE SA with its CHILD SAs' leases.
    fn begin_bulk(&mut self, now: Instant, endpoint: &Endpoint, esp: Option<&Esp>) {
        // A new standby needs every replay window again.
        self.replay.reset();
        let sas = endpoint
            .snapshots(now)
            .into_iter()
            .map(|(id, snapshot, kids)| {
                let children = kids
                    .into_iter()
                    .map(|k| (k, esp.and_then(|e| e.handle().seq_lease(k)).map_or(0, |l| l.0)))
                    .collect();
                BulkSa { id, snapshot, children }
            })
            .collect();
        self.active.start_bulk(sas);
    }

    /// Lease renewals and replay windows (active): look at every SA's counters.
    pub fn lease_tick(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        esp: Option<&Esp>,
    ) -> Released<Transmit> {
        self.handover_tick(now, endpoint, esp);
        let was = self.active.state();
        let mut out = self.active.tick(now);
        self.note_solo(was, endpoint);
        if self.active_role && self.link_up && self.peer_standby && self.active.state() == PeerState::Down {
            // The standby fell behind (no ack within ack-timeout) but is still connected: it is
            // rebuilt from a fresh bulk transfer rather than left with a stale mirror.
            info!(target: "ha", "resyncing the standby");
            self.begin_bulk(now, endpoint, esp);
        }
        let (Some(esp), true) = (esp, self.active_role) else { return out };
        let syncing = self.active.state() != PeerState::Down;
        let h = esp.handle();
        let counters = h.ha_counters();
        self.pace.observe(now, counters.iter().map(|&(spi, last, _)| (spi, last)));
        for (spi, last, top) in counters {
            if !self.active.check_lease(spi, last, &mut out) {
                continue;
            }
            if syncing && self.replay.due(spi, top, now) {
                if let Some(w) = h.replay_state(spi) {
                    self.active.replay(spi, w.window, w.top, w.bitmap);
                }
            }
        }
        out
    }

    /// Whether this node is the active one (runs its SAs).
    pub fn is_active(&self) -> bool {
        self.active_role
    }

    /// Standby: the IKE SAs whose mirror changed since the last call (`Esp::mirror_routes`).
    pub fn take_mirror_changes(&mut self) -> Vec<u64> {
        self.standby.take_mirror_changes()
    }

    /// Become active: the engine runs every mirrored SA; the dataplane installs them resumed above
    /// every number the old active could have sealed.
    ///
    /// Deferred while the other node says it is active on a live sync link and this node's mirror
    /// is not complete (no bulk transfer finished yet): keepalived on a node that just started
    /// can report MASTER for a few tens of ms before the other node's adverts reach it (B3 in
    /// docs/ha.md). Taking over then would serve from a partial mirror beside a healthy active.
    /// The takeover happens as soon as the mirror is complete, the link drops or the other node
    /// stops being active; `step_down` (BACKUP) cancels it.
    pub fn take_over(&mut self, now: Instant, endpoint: &mut Endpoint) -> Option<Takeover> {
        let joining = self.link_up && self.peer_active && !self.standby.in_sync();
        if !self.active_role && self.handover.is_none() && joining {
            if self.deferred_takeover.is_none() {
                self.takeovers_deferred += 1;
                warn!(target: "ha", "told to take over while the other node is active and this node's mirror is \
                      incomplete: waiting for the bulk transfer, the link to drop, or the other node to step down");
            }
            self.deferred_takeover.get_or_insert(now);
            return None;
        }
        self.deferred_takeover = None;
        self.take_over_as(now, endpoint, false)
    }

    /// Run a deferred takeover now (`why` it may go ahead).
    fn take_over_if_deferred(&mut self, now: Instant, endpoint: &mut Endpoint, why: &str) {
        let Some(since) = self.deferred_takeover.take() else { return };
        let waited = now.saturating_duration_since(since).as_millis() as u64;
        if let Some(t) = self.take_over_as(now, endpoint, false) {
            info!(target: "ha", ?t, waited_ms = waited, "deferred takeover: {why}");
        }
    }

    /// `planned`: a switchover, whose replay windows are exact (no advance).
    fn take_over_as(&mut self, now: Instant, endpoint: &mut Endpoint, planned: bool) -> Option<Takeover> {
        if self.active_role || self.handover.is_some() {
            return None;
        }
        let stale = !self.standby.in_sync() || !self.link_up;
        if stale {
            // Taken over anyway: the active may simply have died (its death is what took the link
            // down), and nothing better than this mirror exists. But an active that ran alone after
            // the link went (a partition, or an ack timeout) may have moved IKE SAs on.
            self.stale_takeovers += 1;
            warn!(target: "ha", in_sync = self.standby.in_sync(), link_up = self.link_up,
                  "taking over from a mirror not known to be current");
        }
        // Requests the old active had outstanding: it may have completed them and sealed on the
        // CHILD SAs they made (model finding F1).
        self.shared.inherited(endpoint.outstanding_requests());
        // From a stale mirror the windows may be far behind (the old active received alone):
        // peers that do RFC 6311 replay counter sync move their outbound numbers past a jump of
        // the window that covers it all. Otherwise, and for the other peers, the estimated advance.
        let replay_synced =
            if stale && !planned { endpoint.replay_sync_children() } else { Default::default() };
        let fixed = match self.settings.replay_advance {
            _ if planned => Some(0),
            ReplayAdvance::Auto => None,
            ReplayAdvance::Packets(n) => Some(n),
        };
        for c in endpoint.child_sas() {
            let w = self.standby.window(c.spi_in);
            self.resumes.insert(
                c.spi_in,
                Resume {
                    next_seq: self.standby.resume_seq(c.spi_in),
                    ceiling: None,
                    replay: w.map(|w| ReplayState { window: w.window, top: w.top, bitmap: w.bitmap.clone() }),
                    replay_advance: if replay_synced.contains(&c.spi_in) {
                        REPLAY_SYNC_DELTA
                    } else {
                        w.map_or(0, |w| w.advance(now, fixed))
                    },
                },
            );
        }
        let t = endpoint.take_over(now);
        if stale && !planned {
            // The old active may have run exchanges this mirror never saw: learn the peers'
            // Message IDs instead of talking past them (model finding F3), and move the replay
            // windows past whatever it received alone.
            let n = endpoint.sync_after_takeover(now, Some(MID_SYNC_MARGIN), Some(REPLAY_SYNC_DELTA));
            self.mid_syncs += n as u64;
        }
        self.active_role = true;
        // What the other node did before is not beside this node's run: it starts now.
        self.beside.reset();
        // `peer_standby` stays as the other node last said: a node that said "standby" (a pair
        // coming up) gets its bulk at the next tick; an old active said "active" and gets none
        // until it steps down and says "standby".
        self.takeovers += 1;
        self.last_takeover = Some(t.clone());
        // The standby the old active had is gone: this node starts alone, and the next standby
        // that connects gets a bulk transfer.
        let _ = self.active.link_down();
        if self.link_up {
            self.hello();
        }
        Some(t)
    }

    /// Become standby again (keepalived says BACKUP while this node is active): drop every SA
    /// without Deletes, and ask the active node for its state.
    pub fn step_down(&mut self, endpoint: &mut Endpoint, esp: Option<&Esp>) -> bool {
        if self.deferred_takeover.take().is_some() {
            info!(target: "ha", "deferred takeover cancelled: staying standby");
        }
        if !self.active_role && self.handover.is_none() {
            return false;
        }
        self.handover = None;
        // What this node sealed beside the other one (a split brain healing): the other node's
        // leases do not cover it, so a later takeover must resume above it (docs/ha.md B5). The
        // counters are frozen first, so nothing is sealed past what is recorded while the
        // dataplane removes the SAs.
        let own_seals: Vec<(u32, u64)> = esp
            .map(|esp| {
                let h = esp.handle();
                endpoint
                    .child_sas()
                    .iter()
                    .filter_map(|c| Some((c.spi_in, h.freeze_seq(c.spi_in)?)))
                    .collect()
            })
            .unwrap_or_default();
        let n = endpoint.demote();
        let _ = self.active.link_down();
        self.active_role = false;
        self.resumes.clear();
        self.shared = SharedExchanges::new();
        self.standby = StandbySync::new(self.settings.oseq_shift);
        self.standby.remember_own_seals(own_seals);
        self.standby.link_up();
        warn!(target: "ha", ike_sas = n, "stepped down to standby");
        if self.link_up {
            self.hello();
        }
        true
    }

    pub fn status(&self, endpoint: &Endpoint) -> HaStatus {
        let peer = if self.active_role {
            match self.active.state() {
                PeerState::Down => "down",
                PeerState::Syncing => "syncing",
                PeerState::InSync => "in-sync",
            }
        } else if self.standby.in_sync() {
            "in-sync"
        } else {
            "syncing"
        };
        HaStatus {
            node_id: self.settings.node_id,
            role: if self.active_role { "active" } else { "standby" },
            peer,
            link_up: self.link_up,
            link_generation: self.generation,
            config_match: self.peer_digest.map(|d| d == self.digest),
            config_mismatches: self.config_mismatches,
            config_digest: self.digest.iter().map(|b| format!("{b:02x}")).collect(),
            ike_sas: endpoint.ike_sas().len(),
            lag_messages: self.active.lag(),
            lag_ms: self.active.waiting_since().map(|t| t.elapsed().as_millis() as u64),
            since_last_sync_ms: self.last_sync.map(|t| t.elapsed().as_millis() as u64),
            takeovers: self.takeovers,
            last_takeover: self.last_takeover.clone(),
            split_brain: self.split_brain,
            stale_takeovers: self.stale_takeovers,
            mid_syncs: self.mid_syncs,
            takeovers_deferred: self.takeovers_deferred,
            takeover_waiting: self.deferred_takeover.is_some(),
            switchovers_out: self.switchovers_out,
            switchovers_in: self.switchovers_in,
            handing_over: self.handover.is_some(),
            active: self.active.stats.clone(),
            standby: self.standby.stats.clone(),
            link: self.tx.stats(),
        }
    }
}

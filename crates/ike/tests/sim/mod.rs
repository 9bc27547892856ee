//! A seeded simulation of IKE endpoints on a lossy, reordering network with an injected clock and
//! injected randomness: one master seed gives every node's RNG seed, the network's RNG and the
//! scenario, so a failing run replays exactly (`TANDEM_SIM_SEED=<seed>`). After every step the
//! harness checks the safety properties of ENGINE.md section 3; at the end it heals the network and
//! checks the end state (one IKE SA and one CHILD SA per policy on both sides, crosswise-agreeing).

// Shared by several test binaries, each using a part.
#![allow(dead_code)]

pub mod dataplane;
pub mod engine_log;
pub mod net;
pub mod scenario;

use dataplane::DataplaneModel;
use net::{LinkModel, Network, Packet};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_crypto::{Random, SeededRandom};
use tandem_ike::*;
use tandem_wire::IkeHeader;

pub struct Node {
    pub ep: Endpoint,
    pub addr: SocketAddr,
    pub dp: DataplaneModel,
    pub events: Vec<Event>,
    /// False once killed: it gets no datagram and no timer, and what it had queued is lost.
    pub alive: bool,
    /// HA active: the snapshots its observer produced, and the standby that mirrors them.
    pub sync: Option<(SyncQueue, usize)>,
}

/// What an active node's observer reports, in order.
pub enum SyncMsg {
    Changed(IkeSaId, Vec<u8>),
    Removed(IkeSaId),
    /// The changes since the last one belong together (`SaObserver::end_of_turn`).
    EndOfTurn,
}

pub type SyncQueue = Arc<Mutex<VecDeque<SyncMsg>>>;

/// The sync channel of the simulation: a perfect, ordered queue to the standby, applied before any
/// datagram of the same step leaves the active (the write-ahead rule of guides/HA.md section b).
pub struct QueueObserver(pub SyncQueue);

impl SaObserver for QueueObserver {
    fn ike_sa_changed(&mut self, id: IkeSaId, snapshot: &[u8]) {
        self.0.lock().unwrap().push_back(SyncMsg::Changed(id, snapshot.to_vec()));
    }
    fn ike_sa_removed(&mut self, id: IkeSaId) {
        self.0.lock().unwrap().push_back(SyncMsg::Removed(id));
    }
    fn end_of_turn(&mut self) {
        self.0.lock().unwrap().push_back(SyncMsg::EndOfTurn);
    }
}

/// Where inside one call into the active node it dies (guides/HA.md section i, kill points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// State changed, nothing synced, nothing sent (K1).
    BeforeSync,
    /// Synced and applied by the standby, the datagrams not yet released (K3).
    BeforeSend,
    /// Synced and sent (K4).
    AfterSend,
}

#[derive(Debug, Clone, Copy)]
pub struct Kill {
    pub node: usize,
    /// The first call into the node at or after this time is its last.
    pub after: Duration,
    pub mode: KillMode,
}

/// Key of a request on the wire: (SPIi, SPIr, sent by the original initiator, Message ID).
type RequestKey = (u64, u64, bool, u32);

pub struct Sim {
    pub nodes: Vec<Node>,
    pub net: Network,
    pub start: Instant,
    pub now: Duration,
    pub seed: u64,
    trace: VecDeque<String>,
    first_trace: Option<String>,
    /// First bytes seen for each request: a different request under the same key reuses its ID.
    requests: BTreeMap<RequestKey, Vec<u8>>,
    /// Responses sent, by request key.
    answered: BTreeMap<RequestKey, ()>,
    pub violations: Vec<String>,
    pub pings_sent: u64,
    pub pings_lost: u64,
    ping_id: u64,
    /// Pings count only once both sides have had an outbound SA.
    counting: bool,
    drains: u64,
    pub kill: Option<Kill>,
    /// When the kill happened, and what the standby's takeover did.
    pub killed_at: Option<Duration>,
    pub takeover: Option<Takeover>,
    /// What the killed node had in flight: its IKE SAs' outstanding requests as "exchange".
    pub in_flight_at_kill: Vec<String>,
    /// IKE_SA_INIT requests sent after the kill: a failover must not make anyone renegotiate.
    pub inits_after_kill: u64,
    /// At the kill, some node outside the HA pair had an IKE SA still connecting: that one is
    /// not mirrored (unauthenticated), so its initiator starts over, legitimately.
    pub handshake_at_kill: bool,
    /// Inbound SPIs of pairs the killed node's dataplane kept lingering after the engine removed
    /// them. Only the engine's state is synced so far, not the SAD's (issue 10: SAD-only state),
    /// so the new active lacks them: pings in flight on them are counted here, not as violations.
    pub unsynced_linger: std::collections::BTreeSet<u32>,
    /// The sync link is down: what the active's observer reports is lost (a stale mirror).
    pub mirror_paused: bool,
    /// At the takeover, synchronise Message IDs (RFC 6311) with this margin.
    pub mid_sync_margin: Option<u32>,
    /// At the takeover, ask for a replay counter sync (RFC 6311) of this delta.
    pub replay_sync_delta: Option<u64>,
    /// IKE SAs (by SPIs and direction) whose next request may skip Message IDs: a Message ID
    /// sync moved the counter on.
    mid_synced: std::collections::BTreeSet<(u64, u64, bool)>,
    /// New requests seen on the wire (retransmissions not counted), by exchange type.
    pub requests_by_exchange: std::collections::BTreeMap<String, u64>,
    /// The last Message ID sync request on the wire, as (sender, datagram), to replay.
    pub last_mid_sync: Option<(usize, Vec<u8>)>,
    pub pings_lost_to_linger: u64,
}

pub const TRACE_LINES: usize = 60;
/// Lines kept when `TANDEM_SIM_TRACE=all` asks for the whole run.
fn trace_limit() -> usize {
    if std::env::var("TANDEM_SIM_TRACE").as_deref() == Ok("all") {
        usize::MAX
    } else {
        TRACE_LINES
    }
}

impl Sim {
    pub fn new(seed: u64, endpoints: Vec<(Endpoint, SocketAddr)>, link: LinkModel) -> Self {
        let n = endpoints.len();
        Sim {
            nodes: endpoints
                .into_iter()
                .map(|(ep, addr)| Node {
                    ep,
                    addr,
                    dp: DataplaneModel::new(Duration::from_secs(5)),
                    events: vec![],
                    alive: true,
                    sync: None,
                })
                .collect(),
            net: Network::new(seed ^ 0x6e65_7477_6f72_6b00, n, link),
            start: Instant::now(),
            now: Duration::ZERO,
            seed,
            trace: VecDeque::new(),
            first_trace: None,
            requests: BTreeMap::new(),
            answered: BTreeMap::new(),
            violations: Vec::new(),
            pings_sent: 0,
            pings_lost: 0,
            ping_id: 0,
            counting: false,
            drains: 0,
            kill: None,
            killed_at: None,
            takeover: None,
            in_flight_at_kill: Vec::new(),
            inits_after_kill: 0,
            handshake_at_kill: false,
            unsynced_linger: Default::default(),
            mirror_paused: false,
            mid_sync_margin: None,
            replay_sync_delta: None,
            mid_synced: Default::default(),
            requests_by_exchange: Default::default(),
            last_mid_sync: None,
            pings_lost_to_linger: 0,
        }
    }

    /// Make `standby` mirror `active` (HA): the active's observer feeds the standby's table.
    pub fn mirror(&mut self, active: usize, standby: usize) {
        let q: SyncQueue = Arc::default();
        self.nodes[active].ep.set_observer(Box::new(QueueObserver(q.clone())));
        self.nodes[active].sync = Some((q, standby));
        self.nodes[standby].ep.set_standby();
    }

    /// Apply what node `i` synced so far to its standby.
    fn apply_sync(&mut self, i: usize) {
        let Some((q, to)) = self.nodes[i].sync.clone() else { return };
        let msgs: Vec<SyncMsg> = q.lock().unwrap().drain(..).collect();
        if self.mirror_paused {
            if !msgs.is_empty() {
                self.log(format!("{to} loses {} sync messages (link down)", msgs.len()));
            }
            return;
        }
        let at = self.at();
        for m in msgs {
            match m {
                SyncMsg::Changed(id, bytes) => match self.nodes[to].ep.mirror(at, &bytes) {
                    Ok(_) => self.log(format!("{to} mirror {id:#018x} ({} bytes)", bytes.len())),
                    Err(e) => self.violate(format!("node {to} cannot mirror {id:#018x}: {e}")),
                },
                SyncMsg::Removed(id) => {
                    self.nodes[to].ep.unmirror(at, id);
                    self.log(format!("{to} unmirror {id:#018x}"));
                }
                // Everything of one call is applied at once here anyway.
                SyncMsg::EndOfTurn => {}
            }
        }
    }

    /// After each call into node `i`: is this where it dies?
    fn maybe_kill(&mut self, i: usize) {
        let Some(k) = self.kill else { return };
        if k.node != i || !self.nodes[i].alive || self.now < k.after {
            return;
        }
        self.kill = None;
        self.in_flight_at_kill = self.nodes[i]
            .ep
            .ike_sas()
            .iter()
            .filter(|sa| sa.state != IkeSaState::Established || sa.child_sas == 0)
            .map(|sa| format!("{:?}", sa.state))
            .collect();
        let (mine, standby) = (i, self.nodes[i].sync.as_ref().map(|s| s.1));
        self.handshake_at_kill =
            (0..self.nodes.len()).filter(|&j| j != mine && Some(j) != standby).any(|j| {
                self.nodes[j].ep.ike_sas().iter().any(|sa| sa.state == IkeSaState::Connecting)
                    || self.nodes[j].ep.ike_sas().is_empty()
            });
        match k.mode {
            KillMode::BeforeSync => {
                if let Some((q, _)) = &self.nodes[i].sync {
                    q.lock().unwrap().clear();
                }
            }
            KillMode::BeforeSend => self.apply_sync(i),
            KillMode::AfterSend => self.drain(),
        }
        while self.nodes[i].ep.poll_transmit().is_some() {}
        while self.nodes[i].ep.poll_event().is_some() {}
        self.nodes[i].alive = false;
        self.killed_at = Some(self.now);
        self.log(format!("KILL node {i} ({:?})", k.mode));
        if let Some((_, to)) = self.nodes[i].sync.clone() {
            let at = self.at();
            let t = self.nodes[to].ep.take_over(at);
            self.log(format!("{to} takes over: {t:?}"));
            if self.mid_sync_margin.is_some() || self.replay_sync_delta.is_some() {
                let n =
                    self.nodes[to].ep.sync_after_takeover(at, self.mid_sync_margin, self.replay_sync_delta);
                self.log(format!("{to} runs an RFC 6311 sync on {n} IKE SAs"));
            }
            self.takeover = Some(t);
            self.drain();
            // Pairs the old active's dataplane still accepted that the new one did not install:
            // removed by the engine (synced) but lingering in the SAD (not synced yet).
            let installed = &self.nodes[to].dp.pairs;
            self.unsynced_linger =
                self.nodes[i].dp.pairs.keys().filter(|spi| !installed.contains_key(spi)).copied().collect();
        }
        self.drain();
    }

    /// The live node answering for node `i`'s address (itself, or the standby that took over).
    pub fn owner(&self, i: usize) -> Option<usize> {
        if self.nodes[i].alive {
            return Some(i);
        }
        self.node_of(self.nodes[i].addr)
    }

    pub fn at(&self) -> Instant {
        self.start + self.now
    }

    pub fn log(&mut self, line: String) {
        if self.trace.len() >= trace_limit() {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9.3}s {line}", self.now.as_secs_f64()));
    }

    /// Every node's SA table agrees with its SAs (timer queue and indexes).
    pub fn check_tables(&mut self) {
        for i in 0..self.nodes.len() {
            if let Err(e) = self.nodes[i].ep.check_indexes() {
                self.violate(format!("node {i} SA table: {e}"));
            }
        }
    }

    /// The engine's own log lines of one call into node `i`, in the trace where they happened.
    fn log_engine(&mut self, i: usize, lines: Vec<String>) {
        for l in lines {
            self.log(format!("{i} log  {l}"));
        }
    }

    fn violate(&mut self, v: String) {
        self.log(format!("VIOLATION {v}"));
        self.violations.push(v);
        if self.first_trace.is_none() {
            self.first_trace = Some(self.trace_now());
        }
    }

    fn trace_now(&self) -> String {
        self.trace.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The trace up to the first violation (or up to now).
    pub fn trace(&self) -> String {
        self.first_trace.clone().unwrap_or_else(|| self.trace_now())
    }

    /// The live node with this address (an HA pair shares one: the active answers).
    fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.alive && !n.ep.is_standby() && n.addr.ip() == addr.ip())
    }

    /// Record a datagram leaving node `from` and check Message ID use.
    fn observe_ike(&mut self, from: usize, data: &[u8]) {
        let Ok(h) = IkeHeader::parse(data) else { return };
        let key = (h.spi_i, h.spi_r, h.is_initiator() != h.is_response(), h.message_id);
        let kind = if h.is_response() { "resp" } else { "req " };
        self.log(format!(
            "{from}-> {kind} {:?} mid={} spis={:016x}/{:016x} len={}",
            h.exchange,
            h.message_id,
            h.spi_i,
            h.spi_r,
            data.len()
        ));
        if h.exchange == tandem_wire::ExchangeType::IKE_SA_INIT
            && !h.is_response()
            && self.killed_at.is_some()
        {
            self.inits_after_kill += 1;
        }
        if h.spi_r == 0 {
            return; // IKE_SA_INIT before the responder's SPI exists (retried with cookie or KE)
        }
        if h.is_response() {
            self.answered.insert(key, ());
            return;
        }
        // RFC 6311 sync: an INFORMATIONAL with Message ID 0 that is not that direction's first
        // request (the original initiator's Message ID 0 is IKE_SA_INIT, the responder's may be a
        // DPD). Outside the numbering; the next request may jump.
        let first_mid0 = self.requests.get(&key);
        let sync = h.message_id == 0
            && h.exchange == tandem_wire::ExchangeType::INFORMATIONAL
            && (key.2 || first_mid0.is_some_and(|b| b.as_slice() != data));
        if sync {
            self.mid_synced.insert((key.0, key.1, key.2));
            self.last_mid_sync = Some((from, data.to_vec()));
            return;
        }
        match self.requests.get(&key) {
            Some(b) if b.as_slice() != data => {
                // A fragmented request has several datagrams per ID: compare only whole messages.
                let frag = |d: &[u8]| d.get(28) == Some(&53);
                if !frag(data) && !frag(b) {
                    self.violate(format!(
                        "Message ID {} reused by node {from} on {:016x}",
                        h.message_id, h.spi_i
                    ));
                }
            }
            Some(_) => {}
            None => {
                *self.requests_by_exchange.entry(format!("{:?}", h.exchange)).or_default() += 1;
                let jumped = self.mid_synced.remove(&(key.0, key.1, key.2));
                if h.message_id > 0
                    && !jumped
                    && !self.answered.contains_key(&(key.0, key.1, key.2, h.message_id - 1))
                {
                    self.violate(format!(
                        "node {from} sent request {} on {:016x} before {} was answered",
                        h.message_id,
                        h.spi_i,
                        h.message_id - 1
                    ));
                }
                self.requests.insert(key, data.to_vec());
            }
        }
    }

    /// Drain every node's transmits and events.
    fn drain(&mut self) {
        // Recomputing the SA tables' indexes costs more than the step itself: every 16th step
        // catches a stale index within a few events of its cause.
        self.drains += 1;
        if self.drains.is_multiple_of(16) {
            self.check_tables();
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            // Write-ahead: the standby has what the datagrams below were made from.
            self.apply_sync(i);
            while let Some(t) = self.nodes[i].ep.poll_transmit() {
                self.observe_ike(i, &t.data);
                match self.node_of(t.remote) {
                    Some(to) => self.net.send(self.now, i, to, Packet::Ike(t.data)),
                    None => self.violate(format!("node {i} sent to unknown {}", t.remote)),
                }
            }
            while let Some(e) = self.nodes[i].ep.poll_event() {
                self.log(format!("{i} event {}", summarize(&e)));
                self.nodes[i].dp.apply(self.now, &e);
                self.nodes[i].events.push(e);
            }
            let errs = std::mem::take(&mut self.nodes[i].dp.errors);
            for e in errs {
                self.violate(format!("node {i} dataplane: {e}"));
            }
        }
    }

    /// The next time anything happens, bounded by `limit`.
    fn next_time(&self, limit: Duration) -> Duration {
        let mut t = limit;
        if let Some(n) = self.net.next_time() {
            t = t.min(n);
        }
        for n in self.nodes.iter().filter(|n| n.alive) {
            if let Some(d) = n.ep.poll_timeout() {
                t = t.min(d.saturating_duration_since(self.start));
            }
        }
        t.max(self.now)
    }

    /// Run until `until`, pinging through every CHILD SA of `reqids` each `ping_every`.
    pub fn run(
        &mut self,
        until: Duration,
        ping_every: Option<Duration>,
        reqids: &[(usize, usize, u32, u32)],
    ) {
        let mut next_ping = self.now + ping_every.unwrap_or(Duration::MAX / 4);
        let mut steps = 0u64;
        let mut stalled = 0u32;
        while self.now < until {
            steps += 1;
            let t = self.next_time(until.min(next_ping));
            if t == self.now {
                stalled += 1;
                if stalled > 10_000 {
                    // A deadline that handling does not move: in a daemon this is a busy loop.
                    let v = format!(
                        "node timers stuck at {:?}: {:?}",
                        self.now,
                        self.nodes.iter().map(|n| n.ep.ike_sas()).collect::<Vec<_>>()
                    );
                    self.violate(v);
                    return;
                }
            } else {
                stalled = 0;
            }
            assert!(steps < 5_000_000, "seed {}: simulation did not make progress", self.seed);
            self.now = t;
            let at = self.at();
            while let Some(mut d) = self.net.pop_due(self.now) {
                // A datagram for a dead node goes to whoever holds its address now, if anyone.
                match self.owner(d.to) {
                    Some(to) => d.to = to,
                    None => continue,
                }
                match d.payload {
                    Packet::Ike(data) => {
                        let (local, remote) = (self.nodes[d.to].addr, self.nodes[d.from].addr);
                        let ep = &mut self.nodes[d.to].ep;
                        let lines = engine_log::capture(|| ep.handle_datagram(at, local, remote, &data));
                        self.log_engine(d.to, lines);
                        self.maybe_kill(d.to);
                    }
                    Packet::Esp { spi, key, id } => {
                        if let Err(e) = self.nodes[d.to].dp.receive(self.now, spi, &key) {
                            if self.killed_at.is_some() && self.unsynced_linger.contains(&spi) {
                                self.pings_lost_to_linger += 1;
                                self.log(format!("ping {id} lost on a lingering SA of the killed node: {e}"));
                            } else if self.counting {
                                self.pings_lost += 1;
                                self.violate(format!("ping {id} {}->{} lost: {e}", d.from, d.to));
                            }
                        }
                    }
                }
                self.drain();
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].alive && self.nodes[i].ep.poll_timeout().is_some_and(|d| d <= at) {
                    let ep = &mut self.nodes[i].ep;
                    let lines = engine_log::capture(|| ep.handle_timeout(at));
                    self.log_engine(i, lines);
                    self.maybe_kill(i);
                }
            }
            self.drain();
            for n in &mut self.nodes {
                n.dp.expire(self.now);
            }
            if self.now >= next_ping {
                next_ping = self.now + ping_every.unwrap_or_default();
                self.ping(reqids);
            }
        }
    }

    fn ping(&mut self, reqids: &[(usize, usize, u32, u32)]) {
        let ready = reqids.iter().all(|&(a, b, ra, rb)| match (self.owner(a), self.owner(b)) {
            (Some(a), Some(b)) => {
                self.nodes[a].dp.outbound(ra).is_some() && self.nodes[b].dp.outbound(rb).is_some()
            }
            _ => false,
        });
        if ready {
            self.counting = true;
        }
        for &(a, b, ra, rb) in reqids {
            let (Some(a), Some(b)) = (self.owner(a), self.owner(b)) else { continue };
            for (from, to, reqid) in [(a, b, ra), (b, a, rb)] {
                self.ping_id += 1;
                let id = self.ping_id;
                match self.nodes[from].dp.outbound(reqid) {
                    Some(p) => {
                        let (spi, key) = (p.spi_out, p.key_out.clone());
                        if self.counting {
                            self.pings_sent += 1;
                        }
                        self.net.send(self.now, from, to, Packet::Esp { spi, key, id });
                    }
                    None if self.counting => {
                        self.pings_sent += 1;
                        self.pings_lost += 1;
                        self.violate(format!("ping {id} {from}->{to}: no outbound SA"));
                    }
                    None => {}
                }
            }
        }
    }

    /// Run until no node has work pending and no IKE datagram is in flight (or `limit`).
    pub fn settle(&mut self, limit: Duration) -> bool {
        while self.now < limit {
            if self.nodes.iter().filter(|n| n.alive).all(|n| n.ep.is_idle()) && !self.net.ike_in_flight() {
                self.check_tables();
                return true;
            }
            let step = self.now + Duration::from_millis(10);
            self.run(step.min(limit), None, &[]);
        }
        false
    }
}

pub fn summarize(e: &Event) -> String {
    match e {
        Event::ChildSaUp(c) => format!(
            "CHILD up in={:#010x} out={:#010x} replaces={:?} defer={}",
            c.spi_in, c.spi_out, c.replaces_spi_in, c.defer_outbound
        ),
        Event::ChildSaDown { spi_in, spi_out, reason, .. } => {
            format!("CHILD down in={spi_in:#010x} out={spi_out:#010x} {reason:?}")
        }
        Event::IkeSaUp { ike_sa, .. } => format!("IKE up {ike_sa:#018x}"),
        Event::IkeSaDown { ike_sa, reason, .. } => format!("IKE down {ike_sa:#018x} {reason:?}"),
        Event::Failure { message, .. } => format!("failure: {message}"),
        Event::OutboundSeqAdvance { spi_out, delta, .. } => format!("outbound {spi_out:#010x} +{delta}"),
    }
}

/// Seeds to run: `TANDEM_SIM_SEED` replays one; otherwise `count` seeds from `base`
/// (`TANDEM_SIM_SEEDS` overrides the count).
pub fn seeds(base: u64, count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("TANDEM_SIM_SEED") {
        return vec![s.parse().expect("TANDEM_SIM_SEED is a u64")];
    }
    let n = std::env::var("TANDEM_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(count);
    (0..n).map(|i| base.wrapping_add(i)).collect()
}

/// A generator for the scenario's own choices, separate from the nodes' and the network's.
pub fn scenario_rng(seed: u64) -> SeededRandom {
    SeededRandom::from_u64(seed ^ 0x7363_656e_6172_696f)
}

/// An endpoint with a seeded generator drawn from `rng`.
pub fn seeded_endpoint(
    rng: &mut dyn Random,
    config: EndpointConfig,
    peers: Vec<PeerConfig>,
    psks: Vec<PreSharedKey>,
) -> Endpoint {
    Endpoint::with_random(config, peers, psks, Box::new(SeededRandom::from_seed(rng.seed())))
}

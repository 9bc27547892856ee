//! The sync protocol end to end with real IKE engines: a peer, an active node and a standby, the
//! active's observer feeding [`ActiveSync`], every sync message encoded, decoded and applied by
//! [`StandbySync`], acks flowing back, datagrams held until their state is acknowledged, and the
//! active sealing ESP packets only within its leases. Whatever is lost on the sync link, a
//! takeover resumes every outbound SA above every sequence number the dead active sealed, and the
//! peer keeps its SAs.
// One real instant is the origin of the fake clock; everything after it is simulated.
#![allow(clippy::disallowed_methods)]

#[path = "../../ike/tests/sim/mod.rs"]
mod sim;

use sim::scenario::{config, peer, psks, Scenario};
use sim::{scenario_rng, seeded_endpoint, seeds, QueueObserver, SyncMsg as ObserverMsg, SyncQueue};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tandem_crypto::{Random, SeededRandom};
use tandem_ha::{
    place_child_sa, ActiveSync, BulkSa, Released, SaChange, SharedExchanges, StandbySync, SyncMsg,
};
use tandem_ike::{Endpoint, EndpointConfig, Event, Transmit};
use zeroize::Zeroizing;

const SHIFT: u64 = 1000;

struct Cluster {
    now: Instant,
    p: Endpoint,
    a: Endpoint,
    b: Endpoint,
    observed: SyncQueue,
    active: ActiveSync<Transmit>,
    standby: StandbySync,
    /// Sync messages on the link, each way.
    to_standby: VecDeque<Vec<u8>>,
    to_active: VecDeque<Vec<u8>>,
    link_up: bool,
    /// Datagrams on the wire, and whether each goes to the peer.
    wire: VecDeque<(bool, Transmit)>,
    /// The active's outbound ESP counters and ceilings, by CHILD SA inbound SPI.
    sealed: BTreeMap<u32, (u64, u64)>,
    /// Highest number ever sealed per SA (kept after the SA is gone).
    high: BTreeMap<u32, u64>,
    a_alive: bool,
    /// Requests the active may share with the standby it lost (`SharedExchanges`), and the
    /// standby-side state it would consult (it never takes over here).
    shared_a: SharedExchanges,
    a_standby: StandbySync,
    /// The new active after a takeover: its sync (alone), its shared requests, and what it seals
    /// per CHILD SA: (first, last, ceiling).
    b_active: ActiveSync<Transmit>,
    shared_b: SharedExchanges,
    sealed_b: BTreeMap<u32, (u64, u64, u64)>,
    /// The standby found a gap and asked for a resync.
    resync: bool,
    /// Drop the next sync message to the standby (lost or reordered: the standby sees a gap).
    drop_next: bool,
    /// IKE_SA_INIT requests the peer sent after the takeover.
    inits_after_kill: usize,
    /// The active ran without its standby since the standby's last complete bulk.
    solo: bool,
    /// Kill the active after this many more deliveries inside `run`, with this many of the sync
    /// messages in flight delivered: a kill inside an exchange.
    kill_in: Option<(usize, usize)>,
    /// Packets the active seals on a new CHILD SA as soon as it is installed (traffic waiting for
    /// it), before its snapshot can reach the standby.
    install_burst: u64,
    /// Whether the mirror was current when the active died.
    current_at_kill: Option<bool>,
    /// Take the sync link down after this many more deliveries inside `run`: inside an exchange.
    disconnect_in: Option<usize>,
}

fn endpoint(s: &Scenario, rng: &mut dyn Random, side: usize, node_id: u8) -> Endpoint {
    let (local, remote, lid, rid) = if side == 0 {
        ("10.0.0.1", "10.0.0.2", "a.test", "b.test")
    } else {
        ("10.0.0.2", "10.0.0.1", "b.test", "a.test")
    };
    seeded_endpoint(
        rng,
        EndpointConfig { node_id, ..config() },
        vec![peer(s, side, local, remote, lid, rid)],
        psks(),
    )
}

/// The exchange type of an IKE datagram (after a non-ESP marker, if any).
fn exchange_type(data: &[u8]) -> Option<u8> {
    let d = if data.starts_with(&[0, 0, 0, 0]) { &data[4..] } else { data };
    d.get(18).copied()
}

const IKE_SA_INIT: u8 = 34;

impl Cluster {
    fn new() -> Cluster {
        Cluster::seeded(7)
    }

    fn seeded(seed: u64) -> Cluster {
        let s = Scenario::draw(seed);
        let rng = &mut scenario_rng(seed.rotate_left(17));
        let observed: SyncQueue = Default::default();
        let mut a = endpoint(&s, rng, 1, 1);
        a.set_observer(Box::new(QueueObserver(observed.clone())));
        let mut b = endpoint(&s, rng, 1, 2);
        b.set_standby();
        Cluster {
            now: Instant::now(),
            p: endpoint(&s, rng, 0, 0),
            a,
            b,
            observed,
            active: ActiveSync::new(SHIFT, Duration::from_millis(50)),
            standby: StandbySync::new(SHIFT),
            to_standby: VecDeque::new(),
            to_active: VecDeque::new(),
            link_up: false,
            wire: VecDeque::new(),
            sealed: BTreeMap::new(),
            high: BTreeMap::new(),
            a_alive: true,
            shared_a: SharedExchanges::new(),
            a_standby: StandbySync::new(SHIFT),
            b_active: ActiveSync::new(SHIFT, Duration::from_millis(50)),
            shared_b: SharedExchanges::new(),
            sealed_b: BTreeMap::new(),
            resync: false,
            drop_next: false,
            inits_after_kill: 0,
            solo: false,
            kill_in: None,
            install_burst: 0,
            current_at_kill: None,
            disconnect_in: None,
        }
    }

    fn connect(&mut self) {
        self.link_up = true;
        self.standby.link_up();
        let sas = self
            .a
            .snapshots(self.now)
            .into_iter()
            .map(|(id, snapshot, kids)| {
                let children =
                    kids.into_iter().map(|k| (k, self.sealed.get(&k).map_or(0, |s| s.0))).collect();
                BulkSa { id, snapshot, children }
            })
            .collect();
        self.active.start_bulk(sas);
        self.after_active();
    }

    /// The sync link breaks: whatever is on it is lost.
    fn disconnect(&mut self) {
        self.link_up = false;
        self.to_standby.clear();
        self.to_active.clear();
        let r = self.active.link_down();
        self.shared_a.left_behind(self.a.outstanding_requests());
        self.solo = true;
        self.apply(r);
    }

    fn apply(&mut self, r: Released<Transmit>) {
        for t in r.datagrams {
            self.wire.push_back((true, t));
        }
        for (spi, c) in r.ceilings {
            if let Some(s) = self.sealed.get_mut(&spi) {
                s.1 = s.1.max(c);
            }
        }
        for spi in r.rekeys {
            let _ = self.a.rekey_child_sa(self.now, spi);
        }
    }

    /// After any call into the active: observer output to the sync, events to its dataplane,
    /// datagrams through the write-ahead gate.
    fn after_active(&mut self) {
        let msgs: Vec<ObserverMsg> = self.observed.lock().unwrap().drain(..).collect();
        // One sync message per turn, as the daemon sends them (`SaObserver::end_of_turn`).
        let mut turn = Vec::new();
        for m in msgs {
            match m {
                ObserverMsg::Changed(id, bytes) => {
                    turn.push(SaChange::IkeSa { id, snapshot: Zeroizing::new(bytes) })
                }
                ObserverMsg::Removed(id) => turn.push(SaChange::IkeSaRemoved { id }),
                ObserverMsg::EndOfTurn => self.active.observed(std::mem::take(&mut turn)),
            }
        }
        self.active.observed(turn);
        while let Some(e) = self.a.poll_event() {
            match e {
                Event::ChildSaUp(c) => {
                    let out = self.a.outstanding_request(c.ike_sa);
                    let p = place_child_sa(
                        &mut self.active,
                        &self.a_standby,
                        &mut self.shared_a,
                        c.ike_sa,
                        c.spi_in,
                        out,
                        None,
                    );
                    assert_eq!(p.next_seq, 1, "the first active starts every SA at 1");
                    let last = self.install_burst.min(p.ceiling);
                    self.sealed.insert(c.spi_in, (last, p.ceiling));
                    let h = self.high.entry(c.spi_in).or_default();
                    *h = (*h).max(last);
                }
                Event::ChildSaDown { spi_in, .. } => {
                    self.active.child_sa_removed(spi_in);
                    self.sealed.remove(&spi_in);
                }
                _ => {}
            }
        }
        while let Some(t) = self.a.poll_transmit() {
            if let Some(t) = self.active.transmit(self.now, t) {
                self.wire.push_back((true, t));
            }
        }
        while let Some(m) = self.active.poll_send() {
            if self.link_up {
                self.to_standby.push_back(m.encode().to_vec());
            }
        }
    }

    /// Deliver sync messages and acks until none is left, datagrams staying on the wire.
    fn sync_only(&mut self) {
        while !self.to_standby.is_empty() || !self.to_active.is_empty() {
            while let Some(f) = self.to_standby.pop_front() {
                let m = SyncMsg::decode(&f).expect("frame");
                if let Ok(Some(ack)) = self.standby.handle(self.now, &mut self.b, m) {
                    self.to_active.push_back(ack.encode().to_vec());
                }
            }
            while let Some(f) = self.to_active.pop_front() {
                if let SyncMsg::Ack { seq } = SyncMsg::decode(&f).expect("frame") {
                    let r = self.active.ack(self.now, seq);
                    self.apply(r);
                    self.after_active();
                }
            }
        }
    }

    /// Move everything until quiet: datagrams, sync messages and acks.
    fn run(&mut self) {
        for _ in 0..100_000 {
            if let Some((n, k)) = self.kill_in {
                if n == 0 && self.a_alive {
                    self.kill_in = None;
                    self.kill_after(k);
                    continue;
                }
                self.kill_in = Some((n.saturating_sub(1), k));
            }
            if let Some(n) = self.disconnect_in {
                if n == 0 && self.link_up && self.a_alive {
                    self.disconnect_in = None;
                    self.disconnect();
                    continue;
                }
                self.disconnect_in = Some(n.saturating_sub(1));
            }
            let mut moved = false;
            while let Some(f) = self.to_standby.pop_front() {
                moved = true;
                if std::mem::take(&mut self.drop_next) {
                    continue;
                }
                let m = SyncMsg::decode(&f).expect("frame");
                let done = matches!(m, SyncMsg::BulkDone { .. });
                match self.standby.handle(self.now, &mut self.b, m) {
                    Ok(Some(ack)) => {
                        // A complete bulk: the mirror is current again (what follows is held
                        // for the standby's acks).
                        if done {
                            self.solo = false;
                        }
                        self.to_active.push_back(ack.encode().to_vec())
                    }
                    Ok(None) => {}
                    // A gap: the standby asks for everything again (its Hello, in the daemon).
                    Err(_) => {
                        self.standby.link_up();
                        self.resync = true;
                    }
                }
            }
            if std::mem::take(&mut self.resync) && self.a_alive && self.link_up {
                self.connect();
            }
            while let Some(f) = self.to_active.pop_front() {
                moved = true;
                if let (SyncMsg::Ack { seq }, true) = (SyncMsg::decode(&f).expect("frame"), self.a_alive) {
                    let r = self.active.ack(self.now, seq);
                    self.apply(r);
                    self.after_active();
                }
            }
            if let Some((to_peer, t)) = self.wire.pop_front() {
                moved = true;
                if to_peer {
                    self.p.handle_datagram(self.now, t.remote, t.local, &t.data);
                    self.after_peer();
                } else if self.a_alive {
                    self.a.handle_datagram(self.now, t.remote, t.local, &t.data);
                    self.after_active();
                } else {
                    self.b.handle_datagram(self.now, t.remote, t.local, &t.data);
                    self.after_b();
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never went quiet");
    }

    fn after_peer(&mut self) {
        while let Some(t) = self.p.poll_transmit() {
            if !self.a_alive && exchange_type(&t.data) == Some(IKE_SA_INIT) {
                self.inits_after_kill += 1;
            }
            self.wire.push_back((false, t));
        }
        while self.p.poll_event().is_some() {}
    }

    /// A CHILD SA the new active installs, placed by the daemon's rule; it seals from there.
    fn place_b(&mut self, ike_sa: u64, spi_in: u32, outstanding: Option<u32>, resumed: Option<u64>) {
        let p = place_child_sa(
            &mut self.b_active,
            &self.standby,
            &mut self.shared_b,
            ike_sa,
            spi_in,
            outstanding,
            resumed,
        );
        self.sealed_b.insert(spi_in, (p.next_seq, p.next_seq - 1, p.ceiling));
    }

    /// After any call into the new active: CHILD SAs placed by the same rule as the daemon's.
    fn after_b(&mut self) {
        while let Some(e) = self.b.poll_event() {
            match e {
                Event::ChildSaUp(c) => {
                    let out = self.b.outstanding_request(c.ike_sa);
                    self.place_b(c.ike_sa, c.spi_in, out, None);
                }
                Event::ChildSaDown { spi_in, .. } => {
                    self.b_active.child_sa_removed(spi_in);
                }
                _ => {}
            }
        }
        while let Some(t) = self.b.poll_transmit() {
            self.wire.push_back((true, t));
        }
    }

    /// Time passes, in steps of at most 50 ms: every node's timers (retransmissions, rekeys,
    /// DPD), the ack timeout. (One jump of seconds would skip a rekey's retry and expire the SA.)
    fn advance(&mut self, by: Duration) {
        let step = Duration::from_millis(50);
        let mut left = by;
        while left > Duration::ZERO {
            let d = left.min(step);
            left -= d;
            self.step(d);
        }
    }

    fn step(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        self.p.handle_timeout(now);
        self.after_peer();
        if self.a_alive {
            let was_up = self.active.state() != tandem_ha::active::PeerState::Down;
            let r = self.active.tick(now);
            if was_up && self.active.state() == tandem_ha::active::PeerState::Down {
                self.shared_a.left_behind(self.a.outstanding_requests());
                self.solo = true;
            }
            self.apply(r);
            if self.link_up && self.active.state() == tandem_ha::active::PeerState::Down {
                // The daemon's lease tick: a standby that fell behind gets a fresh bulk.
                self.connect();
            }
            self.a.handle_timeout(now);
            self.after_active();
        } else {
            self.b.handle_timeout(now);
            self.after_b();
        }
        self.run();
    }

    /// The new active seals `n` packets on every outbound SA, as far as its leases allow.
    fn traffic_b(&mut self, n: u64) {
        let spis: Vec<u32> = self.sealed_b.keys().copied().collect();
        for spi in spis {
            let Some(&(first, last, ceiling)) = self.sealed_b.get(&spi) else { continue };
            let last = (last + n).min(ceiling).max(last);
            self.sealed_b.insert(spi, (first, last, ceiling));
            let mut r = Released::default();
            self.b_active.check_lease(spi, last, &mut r);
            for (s, c) in r.ceilings {
                if let Some(e) = self.sealed_b.get_mut(&s) {
                    e.2 = e.2.max(c);
                }
            }
            for s in r.rekeys {
                let _ = self.b.rekey_child_sa(self.now, s);
            }
            self.after_b();
        }
        self.run();
    }

    /// No (SPI, sequence number) sealed by both nodes: the new active's range on every SA the
    /// old one sealed on starts above it.
    fn check_no_reuse(&self) -> Result<(), String> {
        for (&spi, &(first, last, _)) in &self.sealed_b {
            let a = self.high.get(&spi).copied().unwrap_or(0);
            if last >= first && first <= a {
                return Err(format!(
                    "SA {spi:#x}: the old active sealed 1..={a}, the new one {first}..={last}"
                ));
            }
        }
        Ok(())
    }

    /// The active seals `n` packets on every outbound SA, as far as its leases allow.
    fn traffic(&mut self, n: u64) {
        for _ in 0..n {
            let spis: Vec<u32> = self.sealed.keys().copied().collect();
            for spi in spis {
                let Some(&(last, ceiling)) = self.sealed.get(&spi) else { continue };
                let last = if last < ceiling { last + 1 } else { last };
                self.sealed.insert(spi, (last, ceiling));
                let h = self.high.entry(spi).or_default();
                *h = (*h).max(last);
                let mut r = Released { datagrams: vec![], ceilings: vec![], rekeys: vec![] };
                self.active.check_lease(spi, last, &mut r);
                self.apply(r);
                self.after_active();
            }
            self.run();
        }
    }

    /// Kill the active; the standby takes over. Returns (inbound SPI, resumed next seq, highest
    /// seq the dead active sealed) per CHILD SA the new active installed.
    fn fail_over(&mut self) -> Vec<(u32, u64, u64)> {
        self.a_alive = false;
        self.link_up = false;
        self.to_standby.clear();
        self.to_active.clear();
        // Its datagrams held for acks never leave.
        self.shared_b.inherited(self.b.outstanding_requests());
        let t = self.b.take_over(self.now);
        assert!(t.ike_sas > 0 || self.b.ike_sas().is_empty(), "{t:?}");
        let mut out = Vec::new();
        while let Some(e) = self.b.poll_event() {
            match e {
                Event::ChildSaUp(c) => {
                    let sealed = self.high.get(&c.spi_in).copied().unwrap_or(0);
                    let resume = self.standby.resume_seq(c.spi_in);
                    self.place_b(c.ike_sa, c.spi_in, None, Some(resume));
                    out.push((c.spi_in, resume, sealed));
                }
                Event::ChildSaDown { spi_in, .. } => self.b_active.child_sa_removed(spi_in),
                _ => {}
            }
        }
        while let Some(t) = self.b.poll_transmit() {
            self.wire.push_back((true, t));
        }
        self.run();
        out
    }

    /// The active dies with only the first `k` sync messages in flight delivered (the rest, and
    /// every ack in flight, are lost with it).
    fn kill_after(&mut self, k: usize) -> Vec<(u32, u64, u64)> {
        self.current_at_kill = Some(current(self));
        let mut msgs: Vec<Vec<u8>> = self.to_standby.drain(..).collect();
        msgs.truncate(k);
        for f in msgs {
            let m = SyncMsg::decode(&f).expect("frame");
            if self.standby.handle(self.now, &mut self.b, m).is_err() {
                break;
            }
        }
        self.fail_over()
    }
}

fn up() -> Cluster {
    let mut c = Cluster::new();
    c.connect();
    c.run();
    let now = c.now;
    c.p.initiate(now, "t").unwrap();
    c.after_peer();
    c.run();
    assert_eq!(c.b.ike_sas().len(), 1, "the standby mirrors the IKE SA");
    assert!(c.b.ike_sas()[0].standby);
    assert_eq!(c.sealed.len(), 1, "one CHILD SA on the active");
    c
}

fn assert_no_reuse(resumed: &[(u32, u64, u64)]) {
    assert!(!resumed.is_empty());
    for &(spi, next, sealed) in resumed {
        assert!(next > sealed, "SA {spi:#x}: resumes at {next}, the old active sealed up to {sealed}");
    }
}

/// The peer's IKE SA SPIs and CHILD SA SPI pairs.
#[derive(Debug, PartialEq, Eq)]
struct PeerSpis {
    ike: Vec<(u64, u64)>,
    child: Vec<(u32, u32)>,
}

fn peer_spis(c: &Cluster) -> PeerSpis {
    PeerSpis {
        ike: c.p.ike_sas().iter().map(|s| (s.spi_i, s.spi_r)).collect(),
        child: c.p.child_sas().iter().map(|k| (k.spi_in, k.spi_out)).collect(),
    }
}

#[test]
fn takeover_resumes_above_every_sealed_number_and_keeps_the_peers_sas() {
    let mut c = up();
    c.traffic(3 * SHIFT + 17);
    assert!(c.high.values().all(|&h| h == 3 * SHIFT + 17), "leases kept ahead of the traffic: {:?}", c.high);
    let before = peer_spis(&c);
    let resumed = c.fail_over();
    assert_no_reuse(&resumed);
    assert_eq!(peer_spis(&c), before, "the peer's SAs are unchanged");
    // The new active runs the SA: the peer's CHILD rekey goes through it.
    let now = c.now;
    let spi = c.p.child_sas()[0].spi_in;
    c.p.rekey_child_sa(now, spi).unwrap();
    c.after_peer();
    c.run();
    let (pk, bk) = (c.p.child_sas(), c.b.child_sas());
    assert_eq!(pk.len(), 1, "{pk:?}");
    assert_eq!((pk[0].spi_in, pk[0].spi_out), (bk[0].spi_out, bk[0].spi_in));
    assert_ne!(pk[0].spi_in, spi, "rekeyed");
    assert!(!bk[0].standby);
}

/// What the standby's daemon routes into its TUN ahead of a takeover (`take_mirror_changes`, then
/// `mirrored_routes` per changed IKE SA) follows the mirror: the CHILD SA when it is mirrored, its
/// successor after a rekey, nothing once the IKE SA is gone.
#[test]
fn the_standby_reports_every_mirror_change_for_its_routes() {
    let mut c = up();
    let mut routed: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut follow = |c: &mut Cluster| {
        for id in c.standby.take_mirror_changes() {
            let spis: Vec<u32> = c.b.mirrored_routes(id).iter().map(|r| r.spi_in).collect();
            if spis.is_empty() {
                routed.remove(&id);
            } else {
                routed.insert(id, spis);
            }
        }
        let mirrored: Vec<u32> = c.b.child_sas().iter().map(|k| k.spi_in).collect();
        (routed.values().flatten().copied().collect::<Vec<u32>>(), mirrored)
    };
    let (r, m) = follow(&mut c);
    assert_eq!((r.len(), &r), (1, &m), "the mirrored CHILD SA is reported");
    assert!(c.standby.take_mirror_changes().is_empty(), "each change is reported once");
    let old = r[0];
    let now = c.now;
    let spi = c.p.child_sas()[0].spi_in;
    c.p.rekey_child_sa(now, spi).unwrap();
    c.after_peer();
    c.run();
    let (r, m) = follow(&mut c);
    assert_eq!(r, m, "after the CHILD rekey");
    assert!(r.len() == 1 && r[0] != old, "the rekeyed CHILD SA replaces {old:#x}: {r:?}");
    let id = c.p.ike_sas()[0].id;
    let now = c.now;
    c.p.terminate_ike_sa(now, id).unwrap();
    c.after_peer();
    c.run();
    let (r, m) = follow(&mut c);
    assert!(m.is_empty() && r.is_empty(), "the IKE SA deleted: routed {r:?}, mirrored {m:?}");
}

/// docs/ha.md, B5: the standby ran the SAs beside the active for a while (it resumed each above
/// the active's ceiling) and is a standby again: once told (`taint_all`, from its Hello), the
/// active never seals past the ceiling it had, however many leases the rejoined standby would
/// grant after its bulk transfer; the SA is rekeyed before it instead.
#[test]
fn after_the_standby_ran_beside_it_the_active_never_seals_past_its_ceiling() {
    let mut c = up();
    c.traffic(SHIFT / 3);
    let spi = *c.sealed.keys().next().unwrap();
    let (_, ceiling) = c.sealed[&spi];
    assert_eq!(c.active.taint_all(), vec![spi]);
    c.disconnect();
    c.connect();
    c.run();
    assert!(c.standby.in_sync(), "bulk-synced again");
    c.traffic(2 * SHIFT);
    assert!(c.high[&spi] <= ceiling, "sealed {} on {spi:#x}, past its ceiling {ceiling}", c.high[&spi]);
    assert!(!c.sealed.contains_key(&spi), "the SA was rekeyed before its ceiling");
    assert!(c.sealed.values().all(|&(last, _)| last > 0), "its successor carries the traffic");
}

#[test]
fn a_lost_sync_link_never_lets_a_takeover_reuse_a_sequence_number() {
    let mut c = up();
    c.traffic(SHIFT);
    // The link breaks with lease requests in flight; the active goes on alone.
    c.disconnect();
    let spi = *c.sealed.keys().next().unwrap();
    c.traffic(2 * SHIFT);
    // It could not lease the SA further without its standby, so it rekeyed it: fresh keys.
    assert!(!c.sealed.contains_key(&spi), "the SA the standby knew was replaced");
    assert!(c.high[&spi] <= 2 * SHIFT, "and never sealed past its last lease");
    // The standby comes back, gets everything again, and then the active dies.
    c.connect();
    c.run();
    assert!(c.standby.in_sync());
    c.traffic(SHIFT / 3);
    let before = peer_spis(&c);
    let resumed = c.fail_over();
    assert_no_reuse(&resumed);
    assert_eq!(peer_spis(&c), before);
}

#[test]
fn a_standby_that_joins_late_gets_every_sa_without_a_rekey() {
    let mut c = Cluster::new();
    let now = c.now;
    c.p.initiate(now, "t").unwrap();
    c.after_peer();
    c.run();
    c.traffic(5 * SHIFT);
    assert!(c.b.ike_sas().is_empty());
    let before = peer_spis(&c);
    c.connect();
    c.run();
    assert!(c.standby.in_sync());
    assert_eq!(c.b.ike_sas().len(), 1);
    assert_eq!(peer_spis(&c), before, "joining made nobody rekey");
    let resumed = c.fail_over();
    assert_no_reuse(&resumed);
}

#[test]
fn an_active_that_steps_down_drops_its_sas_without_a_word_to_the_peer() {
    let mut c = up();
    c.traffic(10);
    let before = peer_spis(&c);
    let dropped = c.a.demote();
    assert_eq!(dropped, 1);
    assert!(c.a.is_standby());
    assert!(c.a.ike_sas().is_empty());
    assert!(c.a.poll_transmit().is_none(), "no Delete or anything else to the peer");
    let downs =
        std::iter::from_fn(|| c.a.poll_event()).filter(|e| matches!(e, Event::ChildSaDown { .. })).count();
    assert_eq!(downs, 1, "the dataplane is told to remove the CHILD SA");
    // The other node takes over (here: the standby of this harness) and the peer keeps its SAs.
    let resumed = c.fail_over();
    assert_no_reuse(&resumed);
    assert_eq!(peer_spis(&c), before);
}

/// docs/ha.md, B8: the peer rekeys the IKE SA while the sync link is down, moving its CHILD SA
/// (leased past `oseq-shift` before) to the new IKE SA. The resync sends the new IKE SA; the stale
/// old one, which still holds the CHILD SA in the standby's mirror, goes at the end of it, and
/// must not take the CHILD SA's lease with it: the takeover resumes above every sealed number.
#[test]
fn a_resync_after_an_ike_rekey_keeps_the_leases_of_the_child_sas_it_moved() {
    let mut c = up();
    c.traffic(SHIFT + SHIFT / 3);
    let spi = *c.sealed.keys().next().unwrap();
    assert!(c.high[&spi] > SHIFT, "sealed past the implicit lease: {:?}", c.high);
    c.disconnect();
    let now = c.now;
    let id = c.p.ike_sas()[0].id;
    c.p.rekey_ike_sa(now, id).unwrap();
    c.after_peer();
    c.run();
    assert_eq!(c.b.ike_sas().len(), 1, "the mirror is stale: the old IKE SA");
    c.connect();
    c.run();
    assert!(c.standby.in_sync());
    let (ours, theirs) = (c.a.ike_sas(), c.b.ike_sas());
    assert_eq!((theirs.len(), theirs[0].id), (1, ours[0].id), "the stale IKE SA is gone from the mirror");
    assert_eq!(c.b.child_sas()[0].spi_in, spi, "its CHILD SA is under the new one");
    let resumed = c.fail_over();
    assert_no_reuse(&resumed);
}

/// docs/ha.md, B8: an IKE rekey, by the peer or by the active, and the active dies holding the
/// datagram of the turn that made the new IKE SA (its answer to the peer's request, or its Delete
/// of the old SA after the peer's answer) with none or all of that turn's sync traffic delivered.
/// The turn (the new IKE SA, the old one's snapshot, the CHILD SAs moved) is applied whole or not
/// at all: after the takeover the rekey is finished from the mirror or anew, and the peer and the
/// new active end with the same SAs, no orphan on either side.
#[test]
fn a_kill_inside_an_ike_rekey_leaves_no_orphan_on_either_side() {
    for by_active in [false, true] {
        for delivered in 0..2 {
            let mut c = up();
            let now = c.now;
            if by_active {
                let id = c.a.ike_sas()[0].id;
                c.a.rekey_ike_sa(now, id).unwrap();
                c.after_active();
                c.sync_only();
            } else {
                let id = c.p.ike_sas()[0].id;
                c.p.rekey_ike_sa(now, id).unwrap();
                c.after_peer();
            }
            let Some((to_peer, t)) = c.wire.pop_front() else { panic!("the request") };
            if by_active {
                assert!(to_peer);
                c.p.handle_datagram(now, t.remote, t.local, &t.data);
                c.after_peer();
                let Some((false, t)) = c.wire.pop_front() else { panic!("the peer's answer") };
                c.a.handle_datagram(now, t.remote, t.local, &t.data);
            } else {
                c.a.handle_datagram(now, t.remote, t.local, &t.data);
            }
            c.after_active();
            assert!(c.wire.is_empty(), "the datagram waits for the standby's ack");
            assert_eq!(c.to_standby.len(), 1, "one message for the whole turn");
            c.kill_after(delivered);
            c.advance(Duration::from_secs(20));
            let what = format!(
                "rekey by the {}, turn delivered: {}",
                if by_active { "active" } else { "peer" },
                delivered == 1
            );
            let spis = |v: Vec<tandem_ike::IkeSaInfo>| {
                let mut v: Vec<(u64, u64)> = v.iter().map(|s| (s.spi_i, s.spi_r)).collect();
                v.sort_unstable();
                v
            };
            let (p, b) = (spis(c.p.ike_sas()), spis(c.b.ike_sas()));
            assert_eq!(p.len(), 1, "{what}: {p:?}");
            assert_eq!(p, b, "{what}: peer and new active hold the same IKE SA");
            let pk: Vec<(u32, u32)> = c.p.child_sas().iter().map(|k| (k.spi_out, k.spi_in)).collect();
            let bk: Vec<(u32, u32)> = c.b.child_sas().iter().map(|k| (k.spi_in, k.spi_out)).collect();
            assert_eq!((pk.len(), &pk), (1, &bk), "{what}: and the same CHILD SA");
            assert_eq!(c.inits_after_kill, 0, "{what}: no renegotiation");
        }
    }
}

/// The mirror at a takeover is current: connected, a complete bulk since the active last ran alone.
fn current(c: &Cluster) -> bool {
    c.link_up && c.standby.in_sync() && !c.solo
}

/// One seeded schedule: traffic, rekeys of both sides (CHILD and IKE), the sync link lost and
/// restored, sync messages lost (the standby sees a gap and resyncs), time passing (timers, ack
/// timeouts), and the active killed at a random step with a random part of the sync messages in
/// flight delivered. Then the new active carries on. Always: no (SPI, sequence number) sealed by
/// both nodes. From a current mirror (connected, in sync, no solo since): also no IKE_SA_INIT from
/// the peer and, once settled, the peer and the new active hold the same SAs.
fn schedule(seed: u64) -> Result<String, String> {
    let mut c = Cluster::seeded(seed);
    let r = &mut SeededRandom::from_u64(seed ^ 0x5343_4845_4455_4c45);
    c.connect();
    c.run();
    let now = c.now;
    c.p.initiate(now, "t").map_err(|e| format!("initiate: {e:?}"))?;
    c.after_peer();
    c.run();
    if c.b.ike_sas().len() != 1 {
        return Err(format!("seed {seed}: the standby does not mirror the IKE SA"));
    }
    let steps = 8 + r.up_to(24);
    let kill_at = r.up_to(steps);
    let mut log = Vec::new();
    let mut current_at_kill = None;
    for step in 0..=steps {
        if step == kill_at {
            // Inside an exchange: a CHILD rekey of either side, the kill some deliveries into it.
            let (n, k) = (r.up_to(12) as usize, r.up_to(3) as usize);
            c.install_burst = r.up_to(SHIFT);
            c.kill_in = Some((n, k));
            let now = c.now;
            let by_peer = r.up_to(1) == 0;
            if !c.link_up && r.up_to(1) == 0 {
                // The standby comes back: the kill may fall inside or just after its bulk.
                c.connect();
            }
            log.push(format!("kill (current {}) {n} deliveries into a rekey by the {}, {k} sync messages through, burst {}",
                current(&c), if by_peer { "peer" } else { "active" }, c.install_burst));
            if by_peer {
                if let Some(k) = c.p.child_sas().first() {
                    let _ = c.p.rekey_child_sa(now, k.spi_in);
                }
                c.after_peer();
            } else {
                if let Some(k) = c.a.child_sas().first() {
                    let _ = c.a.rekey_child_sa(now, k.spi_in);
                }
                c.after_active();
            }
            c.run();
            if c.a_alive {
                c.kill_in = None;
                c.kill_after(k);
            }
            current_at_kill = c.current_at_kill;
            continue;
        }
        let alive = c.a_alive;
        let op = r.up_to(6);
        log.push(format!("op {op}"));
        let now = c.now;
        match op {
            0 if alive => c.traffic(1 + r.up_to(SHIFT)),
            0 => c.traffic_b(1 + r.up_to(SHIFT)),
            1 => {
                let kids = c.p.child_sas();
                if let Some(k) = kids.get(r.up_to(kids.len().max(1) as u64 - 1) as usize) {
                    let _ = c.p.rekey_child_sa(now, k.spi_in);
                    c.after_peer();
                    c.run();
                }
            }
            2 => {
                let (ep, alive) = if alive { (&mut c.a, true) } else { (&mut c.b, false) };
                let kids = ep.child_sas();
                if let Some(k) = kids.get(r.up_to(kids.len().max(1) as u64 - 1) as usize) {
                    let _ = ep.rekey_child_sa(now, k.spi_in);
                }
                if alive {
                    c.after_active();
                } else {
                    c.after_b();
                }
                c.run();
            }
            3 => {
                if let Some(sa) = c.p.ike_sas().first() {
                    let _ = c.p.rekey_ike_sa(now, sa.id);
                    c.after_peer();
                    c.run();
                }
            }
            // The link lost inside a rekey of the active's: its request may be mirrored.
            4 if alive && c.link_up => {
                c.disconnect_in = Some(r.up_to(6) as usize);
                c.install_burst = r.up_to(SHIFT);
                if let Some(k) = c.a.child_sas().first() {
                    let _ = c.a.rekey_child_sa(now, k.spi_in);
                }
                c.after_active();
                c.run();
                if c.link_up {
                    c.disconnect_in = None;
                    c.disconnect();
                }
                c.install_burst = 0;
            }
            4 if alive => {
                c.connect();
                c.run();
            }
            5 if alive && c.link_up => c.drop_next = true,
            _ => c.advance(Duration::from_millis(100 + r.up_to(3_000))),
        }
        c.check_no_reuse().map_err(|e| format!("seed {seed}: {e}\nschedule: {log:?}"))?;
    }
    for _ in 0..40 {
        c.advance(Duration::from_millis(1_000));
        c.traffic_b(1 + r.up_to(50));
    }
    c.check_no_reuse().map_err(|e| format!("seed {seed}: {e}\nschedule: {log:?}"))?;
    let current = current_at_kill.unwrap_or(false);
    if current {
        if c.inits_after_kill > 0 {
            return Err(format!(
                "seed {seed}: the peer renegotiated after a takeover from a current mirror\n{log:?}"
            ));
        }
        let pk: Vec<(u32, u32)> = c.p.child_sas().iter().map(|k| (k.spi_out, k.spi_in)).collect();
        let bk: Vec<(u32, u32)> = c.b.child_sas().iter().map(|k| (k.spi_in, k.spi_out)).collect();
        let (mut pk, mut bk) = (pk, bk);
        pk.sort_unstable();
        bk.sort_unstable();
        if pk != bk || pk.is_empty() || c.p.ike_sas().len() != 1 || c.b.ike_sas().len() != 1 {
            return Err(format!(
                "seed {seed}: peer and new active disagree: peer {:?} {pk:?}, new active {:?} {bk:?}\n{log:?}",
                c.p.ike_sas().iter().map(|s| (s.spi_i, s.spi_r)).collect::<Vec<_>>(),
                c.b.ike_sas().iter().map(|s| (s.spi_i, s.spi_r)).collect::<Vec<_>>()
            ));
        }
    }
    Ok(format!("current {current}, {} steps", log.len()))
}

/// Schedules that once failed, found past the 200 seeds CI runs:
/// - B7 in docs/ha.md (1212231799, 1212233493): the active was killed holding the response to the
///   peer's Delete of an IKE SA (write-ahead), the standby had applied the removal but kept no
///   tombstone, and the peer retransmitted its Delete to the new active unanswered, keeping its
///   half of the IKE SA;
/// - B8 (1212249046, 1212255816, 1212267244): a resync after an IKE rekey dropped the lease of a
///   CHILD SA the rekey had moved, and the takeover reused sequence numbers; (1212257404) the kill
///   fell between two sync messages of one IKE rekey, and the new active kept an IKE SA the peer
///   never had.
#[test]
fn seeds_that_once_failed() {
    for seed in [1_212_231_799, 1_212_233_493, 1_212_249_046, 1_212_255_816, 1_212_267_244, 1_212_257_404] {
        if let Err(e) = schedule(seed) {
            panic!("{e}");
        }
    }
}

#[test]
fn seeded_schedules_never_reuse_a_sequence_number() {
    if std::env::var("TANDEM_SIM_SEED").is_ok() {
        // One seed replayed: its engines' logs too.
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_test_writer()
            .try_init();
    }
    let mut failures = Vec::new();
    let (mut current, mut n) = (0, 0);
    for seed in seeds(0x4841_0000, 200) {
        n += 1;
        match schedule(seed) {
            Ok(s) if s.starts_with("current true") => current += 1,
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{n} schedules, {current} from a current mirror, {} failed", failures.len());
    assert!(failures.is_empty(), "{} of {n} failed:\n{}", failures.len(), failures.join("\n"));
}

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
use sim::{QueueObserver, SyncMsg as ObserverMsg, SyncQueue};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tandem_ha::{ActiveSync, BulkSa, Released, StandbySync, SyncMsg};
use tandem_ike::{Endpoint, EndpointConfig, Event, Transmit};

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
}

fn endpoint(s: &Scenario, side: usize, node_id: u8) -> Endpoint {
    let (local, remote, lid, rid) = if side == 0 {
        ("10.0.0.1", "10.0.0.2", "a.test", "b.test")
    } else {
        ("10.0.0.2", "10.0.0.1", "b.test", "a.test")
    };
    Endpoint::new(
        EndpointConfig { node_id, ..config() },
        vec![peer(s, side, local, remote, lid, rid)],
        psks(),
    )
}

impl Cluster {
    fn new() -> Cluster {
        let s = Scenario::draw(7);
        let observed: SyncQueue = Default::default();
        let mut a = endpoint(&s, 1, 1);
        a.set_observer(Box::new(QueueObserver(observed.clone())));
        let mut b = endpoint(&s, 1, 2);
        b.set_standby();
        Cluster {
            now: Instant::now(),
            p: endpoint(&s, 0, 0),
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
        for m in msgs {
            match m {
                ObserverMsg::Changed(id, bytes) => self.active.ike_sa_changed(id, &bytes),
                ObserverMsg::Removed(id) => self.active.ike_sa_removed(id),
            }
        }
        while let Some(e) = self.a.poll_event() {
            match e {
                Event::ChildSaUp(c) => {
                    let ceiling = self.active.child_sa_installed(c.spi_in, 1, false);
                    self.sealed.insert(c.spi_in, (0, ceiling));
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

    /// Move everything until quiet: datagrams, sync messages and acks.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(f) = self.to_standby.pop_front() {
                moved = true;
                let m = SyncMsg::decode(&f).expect("frame");
                if let Some(ack) = self.standby.handle(self.now, &mut self.b, m).expect("in order") {
                    self.to_active.push_back(ack.encode().to_vec());
                }
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
                    while let Some(t) = self.p.poll_transmit() {
                        self.wire.push_back((false, t));
                    }
                    while self.p.poll_event().is_some() {}
                } else if self.a_alive {
                    self.a.handle_datagram(self.now, t.remote, t.local, &t.data);
                    self.after_active();
                } else {
                    self.b.handle_datagram(self.now, t.remote, t.local, &t.data);
                    while let Some(t) = self.b.poll_transmit() {
                        self.wire.push_back((true, t));
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never went quiet");
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
        // Its datagrams held for acks never leave.
        let t = self.b.take_over(self.now);
        assert!(t.ike_sas > 0, "{t:?}");
        let mut out = Vec::new();
        while let Some(e) = self.b.poll_event() {
            if let Event::ChildSaUp(c) = e {
                let sealed = self.high.get(&c.spi_in).copied().unwrap_or(0);
                out.push((c.spi_in, self.standby.resume_seq(c.spi_in), sealed));
            }
        }
        while let Some(t) = self.b.poll_transmit() {
            self.wire.push_back((true, t));
        }
        self.run();
        out
    }
}

fn up() -> Cluster {
    let mut c = Cluster::new();
    c.connect();
    c.run();
    let now = c.now;
    c.p.initiate(now, "t").unwrap();
    while let Some(t) = c.p.poll_transmit() {
        c.wire.push_back((false, t));
    }
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
    while let Some(t) = c.p.poll_transmit() {
        c.wire.push_back((false, t));
    }
    c.run();
    let (pk, bk) = (c.p.child_sas(), c.b.child_sas());
    assert_eq!(pk.len(), 1, "{pk:?}");
    assert_eq!((pk[0].spi_in, pk[0].spi_out), (bk[0].spi_out, bk[0].spi_in));
    assert_ne!(pk[0].spi_in, spi, "rekeyed");
    assert!(!bk[0].standby);
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
    while let Some(t) = c.p.poll_transmit() {
        c.wire.push_back((false, t));
    }
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

//! The active node's side of the sync: numbers what the engine reports, holds each datagram until
//! the standby has applied the state behind it (write-ahead), keeps the sequence-number leases,
//! and runs the bulk transfer when a standby (re)joins.

use crate::lease::{LeaseBook, LeaseOutcome};
use crate::msg::{SaChange, SyncMsg};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use zeroize::Zeroizing;

/// Where the standby stands, as seen from the active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// No sync connection: solo mode (nothing is held back).
    Down,
    /// Connected; the bulk transfer is not acknowledged yet.
    Syncing,
    /// Connected and current: datagrams wait for its acks.
    InSync,
}

/// Counters shown by `tandemctl ha status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ActiveStats {
    pub snapshots: u64,
    pub removals: u64,
    pub leases_asked: u64,
    pub rekeys_for_lease: u64,
    pub datagrams_held: u64,
    pub ack_timeouts: u64,
    pub bulk_transfers: u64,
    pub replay_updates: u64,
    /// CHILD SAs capped at their ceiling because the other node was active while this one was
    /// (docs/ha.md, B5): each is rekeyed before it.
    pub tainted: u64,
}

/// What [`ActiveSync`] releases or asks for after an input.
#[derive(Debug)]
pub struct Released<T> {
    /// Datagrams whose state the standby has: send them now, in this order.
    pub datagrams: Vec<T>,
    /// Dataplane ceilings to raise: (inbound SPI, ceiling).
    pub ceilings: Vec<(u32, u64)>,
    /// CHILD SAs to rekey (their lease cannot grow while the standby is away).
    pub rekeys: Vec<u32>,
}

// Not derived: that would require `T: Default`.
impl<T> Default for Released<T> {
    fn default() -> Self {
        Released { datagrams: Vec::new(), ceilings: Vec::new(), rekeys: Vec::new() }
    }
}

/// One IKE SA for the bulk transfer: its snapshot and its CHILD SAs as (inbound SPI, outbound
/// `last_seq`).
pub struct BulkSa {
    pub id: u64,
    pub snapshot: Zeroizing<Vec<u8>>,
    pub children: Vec<(u32, u64)>,
}

pub struct ActiveSync<T> {
    /// Last sequence number given to a message.
    seq: u64,
    /// Highest sequence number the standby acknowledged.
    acked: u64,
    state: PeerState,
    /// Sequence number of the `BulkDone` whose ack makes the standby current.
    bulk_done: Option<u64>,
    outbox: VecDeque<SyncMsg>,
    /// Datagrams waiting for an ack of this sequence number, with when they were held.
    held: VecDeque<(u64, Instant, T)>,
    /// Since when messages have been waiting for an ack with no ack coming: None while nothing is
    /// unacknowledged, reset by every ack that moves forward (a long bulk transfer that is being
    /// acknowledged is progress, not a timeout).
    waiting_since: Option<Instant>,
    ack_timeout: Duration,
    pub leases: LeaseBook,
    pub stats: ActiveStats,
}

impl<T> ActiveSync<T> {
    /// `oseq_shift` and `ack_timeout` come from `[ha]`.
    pub fn new(oseq_shift: u64, ack_timeout: Duration) -> Self {
        ActiveSync {
            seq: 0,
            acked: 0,
            state: PeerState::Down,
            bulk_done: None,
            outbox: VecDeque::new(),
            held: VecDeque::new(),
            waiting_since: None,
            ack_timeout,
            leases: LeaseBook::new(oseq_shift),
            stats: ActiveStats::default(),
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Messages not yet acknowledged (the lag).
    pub fn lag(&self) -> u64 {
        self.seq - self.acked
    }

    /// Since when unacknowledged messages have waited with no ack moving forward.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since
    }

    fn connected(&self) -> bool {
        self.state != PeerState::Down
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The next message to send over the sync link.
    pub fn poll_send(&mut self) -> Option<SyncMsg> {
        self.outbox.pop_front()
    }

    /// Messages wait to be sent (the link refused one: its queue is full).
    pub fn has_queued(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The link could not take `m` now (its queue is full): it goes first again, and the caller
    /// tries later. A bulk transfer of many SAs is paced by the link this way.
    pub fn unsend(&mut self, m: SyncMsg) {
        self.outbox.push_front(m);
    }

    /// Everything the engine's observer reported since the last call, in order (one engine turn,
    /// or a few): one message, which the standby applies whole ([`SyncMsg::Changes`]; a single
    /// change goes as the message of its own kind).
    pub fn observed(&mut self, mut changes: Vec<SaChange>) {
        if !self.connected() || changes.is_empty() {
            return;
        }
        for c in &changes {
            match c {
                SaChange::IkeSa { .. } => self.stats.snapshots += 1,
                SaChange::IkeSaRemoved { .. } => self.stats.removals += 1,
            }
        }
        let seq = self.next();
        let msg = if changes.len() > 1 {
            SyncMsg::Changes { seq, changes }
        } else {
            match changes.remove(0) {
                SaChange::IkeSa { id, snapshot } => SyncMsg::IkeSa { seq, id, snapshot },
                SaChange::IkeSaRemoved { id } => SyncMsg::IkeSaRemoved { seq, id },
            }
        };
        self.outbox.push_back(msg);
    }

    /// An inbound SA's replay window, when its `ReplayTrigger` says so.
    pub fn replay(&mut self, spi_in: u32, window: u32, top: u64, bitmap: Vec<u64>) {
        if !self.connected() {
            return;
        }
        self.stats.replay_updates += 1;
        let seq = self.next();
        self.outbox.push_back(SyncMsg::Replay { seq, spi_in, window, top, bitmap });
    }

    /// A datagram the engine produced: `Some` to send it now, `None` when it is held until the
    /// standby acknowledges the state it came from (see [`ActiveSync::ack`]). Held while a bulk
    /// transfer runs too: a standby that applied the bulk's end says it is in sync, so the live
    /// changes after it must reach it before the peer sees them (model finding F4).
    pub fn transmit(&mut self, now: Instant, t: T) -> Option<T> {
        if !self.connected() || self.acked >= self.seq {
            return Some(t);
        }
        self.stats.datagrams_held += 1;
        self.waiting_since.get_or_insert(now);
        self.held.push_back((self.seq, now, t));
        None
    }

    /// A CHILD SA was installed with its first outbound sequence number `next_seq` (1, or above
    /// where another node may have sealed on the same keys): the ceiling to install its outbound SA
    /// with. `left_behind`: a standby this node lost may complete the exchange that made it
    /// (`SharedExchanges`), so it gets no solo leases.
    ///
    /// An SA that starts above 1 while a standby is connected starts paused (ceiling `next_seq -
    /// 1`) with its lease asked for at once: the standby would otherwise resume it at
    /// `oseq-shift + 1`, inside the numbers this node is about to seal (model finding F1).
    pub fn child_sa_installed(&mut self, spi_in: u32, next_seq: u64, left_behind: bool) -> u64 {
        let connected = self.connected();
        if connected && next_seq > 1 {
            let seq = self.next();
            let (ceiling, ask) = self.leases.add_paused(spi_in, next_seq, seq);
            self.stats.leases_asked += 1;
            self.outbox.push_back(SyncMsg::Lease { seq, spi_in, ceiling: ask });
            return ceiling;
        }
        self.leases.add_from(spi_in, next_seq, connected || left_behind)
    }

    pub fn child_sa_removed(&mut self, spi_in: u32) {
        self.leases.remove(spi_in);
    }

    /// Look at one outbound SA's counter (call it often: every few milliseconds per busy SA).
    /// Returns whether the SA has a lease in the book.
    pub fn check_lease(&mut self, spi_in: u32, last_seq: u64, out: &mut Released<T>) -> bool {
        let up = self.connected();
        match self.leases.check(spi_in, last_seq, up, &mut self.seq) {
            LeaseOutcome::Ask { spi_in, seq, ceiling } => {
                self.stats.leases_asked += 1;
                self.outbox.push_back(SyncMsg::Lease { seq, spi_in, ceiling });
            }
            LeaseOutcome::Raise { spi_in, ceiling } => out.ceilings.push((spi_in, ceiling)),
            LeaseOutcome::Rekey { spi_in } => {
                self.stats.rekeys_for_lease += 1;
                out.rekeys.push(spi_in);
            }
            LeaseOutcome::Nothing => {}
            LeaseOutcome::Unleased => return false,
        }
        true
    }

    /// The standby applied everything up to `seq` (the ack arrived at `now`).
    pub fn ack(&mut self, now: Instant, seq: u64) -> Released<T> {
        let mut out = Released::default();
        if seq <= self.acked || seq > self.seq {
            return out;
        }
        self.acked = seq;
        self.waiting_since = (seq < self.seq).then_some(now);
        if self.bulk_done.is_some_and(|b| b <= seq) {
            self.bulk_done = None;
            self.state = PeerState::InSync;
            info!(target: "ha", seq, "standby in sync");
        }
        while self.held.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, _, t)) = self.held.pop_front() {
                out.datagrams.push(t);
            }
        }
        for o in self.leases.acked(seq) {
            if let LeaseOutcome::Raise { spi_in, ceiling } = o {
                out.ceilings.push((spi_in, ceiling));
            }
        }
        out
    }

    /// The standby is too slow to keep up: treated as gone (solo mode), everything held leaves,
    /// and it rejoins through a bulk sync. That is when datagrams are held and no ack moved
    /// forward for `ack-timeout`, or when other messages (lease asks, replay windows) wait that
    /// long: a lease ask left unanswered would stall its SA at the ceiling.
    pub fn tick(&mut self, now: Instant) -> Released<T> {
        if !self.connected() || self.acked >= self.seq {
            self.waiting_since = None;
            return Released::default();
        }
        let since = *self.waiting_since.get_or_insert(now);
        let limit = if self.held.is_empty() { self.stall_timeout() } else { self.ack_timeout };
        if now.saturating_duration_since(since) <= limit {
            return Released::default();
        }
        self.stats.ack_timeouts += 1;
        warn!(target: "ha", lag = self.lag(), "standby did not acknowledge within the ack timeout: going solo");
        self.link_down()
    }

    /// How long messages other than held datagrams may wait: a lease is asked for half a lease
    /// ahead, so there is time, but not forever.
    fn stall_timeout(&self) -> Duration {
        self.ack_timeout.max(Duration::from_secs(1))
    }

    /// When the next `tick` may have work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limit = if self.held.is_empty() { self.stall_timeout() } else { self.ack_timeout };
        self.waiting_since.map(|t| t + limit)
    }

    /// Planned switchover: number the `Handover` that makes the standby take over, after every
    /// message queued so far; `last` as in [`SyncMsg::Handover`]. Returns its sequence number.
    pub fn handover(&mut self, last: Vec<(u32, u64)>) -> u64 {
        let seq = self.next();
        self.outbox.push_back(SyncMsg::Handover { seq, last });
        seq
    }

    /// The other node was active while this one was, and is a standby again (docs/ha.md, B5):
    /// it may have sealed above the ceiling of any CHILD SA. Every one keeps its ceiling for good
    /// and is rekeyed before it. Returns the ones newly tainted (inbound SPIs).
    pub fn taint_all(&mut self) -> Vec<u32> {
        let spis = self.leases.taint_all();
        self.stats.tainted += spis.len() as u64;
        spis
    }

    /// The sync connection is gone: solo mode; everything held leaves now.
    pub fn link_down(&mut self) -> Released<T> {
        self.state = PeerState::Down;
        self.waiting_since = None;
        self.bulk_done = None;
        self.outbox.clear();
        self.leases.link_down();
        self.acked = self.seq;
        Released { datagrams: self.held.drain(..).map(|(_, _, t)| t).collect(), ..Released::default() }
    }

    /// A standby connected: send it everything, every established IKE SA. Each SA's leases go
    /// before its snapshot, so the standby never holds a CHILD SA without its lease.
    pub fn start_bulk(&mut self, sas: Vec<BulkSa>) {
        self.state = PeerState::Syncing;
        self.stats.bulk_transfers += 1;
        let seq = self.next();
        self.outbox.push_back(SyncMsg::BulkStart { seq });
        let n = sas.len();
        for BulkSa { id, snapshot, children } in sas {
            for (spi_in, last_seq) in children {
                let seq = self.seq + 1;
                if let Some(ceiling) = self.leases.reannounce(spi_in, last_seq, seq) {
                    self.seq = seq;
                    self.outbox.push_back(SyncMsg::Lease { seq, spi_in, ceiling });
                }
            }
            let seq = self.next();
            self.outbox.push_back(SyncMsg::IkeSa { seq, id, snapshot });
        }
        let seq = self.next();
        self.bulk_done = Some(seq);
        self.outbox.push_back(SyncMsg::BulkDone { seq });
        info!(target: "ha", ike_sas = n, "bulk sync to the standby started");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, bytes: &[u8]) -> SaChange {
        SaChange::IkeSa { id, snapshot: Zeroizing::new(bytes.to_vec()) }
    }

    fn t0() -> Instant {
        // The unit tests' fake clock starts at one real instant.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    #[test]
    fn datagrams_wait_for_the_ack_of_their_state() {
        let now = t0();
        let mut a: ActiveSync<&str> = ActiveSync::new(1000, Duration::from_millis(50));
        assert_eq!(a.transmit(now, "solo"), Some("solo"), "no standby: nothing held");
        a.start_bulk(vec![]);
        while a.poll_send().is_some() {}
        a.ack(now, 2);
        assert_eq!(a.state(), PeerState::InSync);
        assert_eq!(a.transmit(now, "x"), Some("x"), "nothing unacknowledged");
        a.observed(vec![snap(9, b"snap")]);
        assert!(matches!(a.poll_send(), Some(SyncMsg::IkeSa { seq: 3, id: 9, .. })));
        assert_eq!(a.transmit(now, "resp"), None);
        a.observed(vec![snap(9, b"snap2")]);
        assert_eq!(a.transmit(now, "req"), None);
        assert_eq!(a.ack(now, 3).datagrams, vec!["resp"]);
        assert_eq!(a.ack(now, 4).datagrams, vec!["req"]);
    }

    #[test]
    fn a_silent_standby_is_dropped_after_the_ack_timeout() {
        let now = t0();
        let mut a: ActiveSync<u8> = ActiveSync::new(1000, Duration::from_millis(50));
        a.start_bulk(vec![]);
        a.ack(now, 2);
        a.observed(vec![snap(1, b"s")]);
        assert_eq!(a.transmit(now, 1), None);
        assert!(a.tick(now + Duration::from_millis(10)).datagrams.is_empty());
        assert_eq!(a.tick(now + Duration::from_millis(60)).datagrams, vec![1]);
        assert_eq!(a.state(), PeerState::Down);
        assert_eq!(a.transmit(now, 2), Some(2));
    }

    #[test]
    fn bulk_sends_leases_before_their_snapshot() {
        let mut a: ActiveSync<u8> = ActiveSync::new(100, Duration::from_millis(50));
        a.child_sa_installed(5, 1, false);
        a.start_bulk(vec![BulkSa {
            id: 1,
            snapshot: Zeroizing::new(b"s".to_vec()),
            children: vec![(5, 70)],
        }]);
        let sent: Vec<SyncMsg> = std::iter::from_fn(|| a.poll_send()).collect();
        assert!(matches!(sent[0], SyncMsg::BulkStart { seq: 1 }));
        assert_eq!(sent[1], SyncMsg::Lease { seq: 2, spi_in: 5, ceiling: 170 });
        assert!(matches!(sent[2], SyncMsg::IkeSa { seq: 3, id: 1, .. }));
        assert_eq!(sent[3], SyncMsg::BulkDone { seq: 4 });
        let r = a.ack(t0(), 4);
        assert_eq!(r.ceilings, vec![(5, 170)]);
        assert_eq!(a.state(), PeerState::InSync);
    }

    #[test]
    fn datagrams_are_held_during_a_bulk_transfer_while_it_is_acknowledged() {
        let now = t0();
        let ms = Duration::from_millis;
        let mut a: ActiveSync<u8> = ActiveSync::new(100, ms(50));
        let sas = (1..=3).map(|id| BulkSa { id, snapshot: Zeroizing::new(b"s".to_vec()), children: vec![] });
        a.start_bulk(sas.collect());
        assert_eq!(a.state(), PeerState::Syncing);
        assert_eq!(a.transmit(now, 1), None, "the bulk's end is not acknowledged: held");
        // Acks keep coming, each within the timeout of the last: no timeout however long the bulk.
        for (i, seq) in (1..=4).enumerate() {
            let t = now + ms(40) * (i as u32 + 1);
            assert!(a.ack(t, seq).datagrams.is_empty());
            assert!(a.tick(t + ms(30)).datagrams.is_empty(), "progress at ack {seq}");
        }
        assert_eq!(a.ack(now + ms(200), 5).datagrams, vec![1], "BulkDone acknowledged");
        assert_eq!(a.state(), PeerState::InSync);
    }

    #[test]
    fn an_unanswered_lease_ask_ends_in_solo_mode() {
        let now = t0();
        let mut a: ActiveSync<u8> = ActiveSync::new(100, Duration::from_millis(50));
        a.start_bulk(vec![]);
        while a.poll_send().is_some() {}
        a.ack(now, 2);
        a.child_sa_installed(5, 1, false);
        let mut out = Released::default();
        a.check_lease(5, 60, &mut out);
        assert!(matches!(a.poll_send(), Some(SyncMsg::Lease { seq: 3, .. })));
        assert!(a.tick(now).datagrams.is_empty());
        a.tick(now + Duration::from_millis(500));
        assert_eq!(a.state(), PeerState::InSync, "a lease is asked half a lease ahead: time to wait");
        a.tick(now + Duration::from_millis(1100));
        assert_eq!(a.state(), PeerState::Down, "but not forever");
    }

    #[test]
    fn an_sa_resumed_above_1_while_a_standby_is_connected_waits_for_its_lease() {
        let now = t0();
        let mut a: ActiveSync<u8> = ActiveSync::new(100, Duration::from_millis(50));
        a.start_bulk(vec![]);
        while a.poll_send().is_some() {}
        a.ack(now, 2);
        assert_eq!(a.child_sa_installed(5, 101, false), 100, "paused: nothing may be sealed yet");
        assert_eq!(a.poll_send(), Some(SyncMsg::Lease { seq: 3, spi_in: 5, ceiling: 200 }));
        assert_eq!(a.ack(now, 3).ceilings, vec![(5, 200)]);
        assert_eq!(a.link_down().datagrams, vec![]);
        assert_eq!(a.child_sa_installed(6, 101, false), 200, "solo: the implicit lease from 101");
    }

    #[test]
    fn an_sa_a_lost_standby_may_complete_gets_no_solo_lease() {
        let mut a: ActiveSync<u8> = ActiveSync::new(100, Duration::from_millis(50));
        assert_eq!(a.child_sa_installed(5, 1, true), 100);
        let mut out = Released::default();
        a.check_lease(5, 60, &mut out);
        assert_eq!((out.ceilings, out.rekeys), (vec![], vec![5]), "rekeyed, not raised (model finding F2)");
        a.child_sa_installed(6, 1, false);
        let mut out = Released::default();
        a.check_lease(6, 60, &mut out);
        assert_eq!(out.ceilings, vec![(6, 200)]);
    }
}

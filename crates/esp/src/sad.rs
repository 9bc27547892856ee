//! The SA database. Readers (the packet path) see an immutable snapshot, swapped atomically with
//! `arc-swap` whenever the control plane installs or removes an SA: a lookup is one atomic load per
//! batch plus a shard index and a hash probe per packet, with no lock and no reference-count traffic
//! per packet.
//!
//! Writes are copy-on-write but incremental: the snapshot's maps are split into [`SHARDS`] shards
//! behind their own `Arc`s, so a change copies the shard table (pointers) and the shards it
//! touches, not the whole SAD. One install into a SAD of n pairs costs O(SHARDS + n / SHARDS)
//! instead of O(n), and [`Sad::install_many`] installs thousands of pairs (an HA standby taking
//! over) with one publication.
//!
//! SAs are installed in pairs (both directions of a CHILD SA) and identified by the inbound SPI,
//! which this node chose and which is therefore unique. Outbound lookups go by reqid and find the
//! newest pair of that reqid. Make-before-break rekeying: when a new pair replaces an old one, the old
//! pair is *retired*: its outbound SA is no longer used, while its inbound SA keeps accepting packets
//! for a grace period, after which `tick` removes it.

use crate::clock::CoarseClock;
use crate::counters::{GlobalCounters, GlobalStats};
use crate::error::SaError;
use crate::lifetime::LifetimeState;
use crate::listing::SaInfo;
use crate::observer::{Direction, RemoveReason, SadEvent, SadObserver};
use crate::replay::ReplayState;
use crate::sa::{ChildSaPair, ChildSaSpec, InboundSa, OutboundSa, Resume};
use arc_swap::{ArcSwap, Guard};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default time a replaced inbound SA keeps accepting packets.
pub const DEFAULT_REKEY_GRACE: Duration = Duration::from_secs(5);

/// A cheap hasher for 32-bit keys (SPIs, reqids). The keys are chosen by this node (random SPIs,
/// configured reqids), so flooding is not a concern; the mix spreads sequential manual SPIs too.
#[derive(Default)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32));
        }
    }
    fn write_u32(&mut self, n: u32) {
        let h = (u64::from(n) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

type U32Map<V> = HashMap<u32, V, BuildHasherDefault<U32Hasher>>;

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 8;

/// Shards of each snapshot map. 256 keeps a change at 10,000 pairs to copying 256 pointers and
/// a shard of about 40 entries, and costs the packet path one extra pointer hop.
pub const SHARDS: usize = 1 << SHARD_BITS;

/// The shard of a key: the top bits of a multiplicative hash, independent of the bits the
/// shard's own hash table uses (`U32Hasher`'s 64-bit mix), so keys of one shard still spread
/// over its buckets.
#[inline]
fn shard_of(key: u32) -> usize {
    (key.wrapping_mul(0x9e37_79b9) >> (32 - SHARD_BITS)) as usize
}

/// A u32-keyed map split into shards that are shared between snapshots until changed.
struct ShardedMap<V> {
    /// Inline, so a lookup goes snapshot -> shard -> bucket with no hop through a table box.
    shards: [Arc<U32Map<V>>; SHARDS],
    len: usize,
}

// Manual impls: derives would ask for `V: Default` / `V: Clone` bounds the shards do not need.
impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        let empty = Arc::new(U32Map::default());
        ShardedMap { shards: std::array::from_fn(|_| empty.clone()), len: 0 }
    }
}

impl<V> Clone for ShardedMap<V> {
    /// Copies the shard table only: `SHARDS` reference counts, no entries.
    fn clone(&self) -> Self {
        ShardedMap { shards: self.shards.clone(), len: self.len }
    }
}

impl<V: Clone> ShardedMap<V> {
    #[inline]
    fn get(&self, key: u32) -> Option<&V> {
        self.shards[shard_of(key)].get(&key)
    }

    /// Copies the key's shard first if another snapshot still shares it.
    fn insert(&mut self, key: u32, value: V) {
        if Arc::make_mut(&mut self.shards[shard_of(key)]).insert(key, value).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: u32) {
        let shard = &mut self.shards[shard_of(key)];
        if shard.contains_key(&key) {
            Arc::make_mut(shard).remove(&key);
            self.len -= 1;
        }
    }
}

/// An immutable view of the SAD for the packet path.
#[derive(Default, Clone)]
pub struct SadSnapshot {
    inbound: ShardedMap<Arc<InboundSa>>,
    outbound: ShardedMap<Arc<OutboundSa>>,
}

impl SadSnapshot {
    /// The inbound SA with this SPI (including retired ones in their grace period).
    #[inline]
    pub fn inbound(&self, spi: u32) -> Option<&InboundSa> {
        self.inbound.get(spi).map(|a| &**a)
    }

    /// The outbound SA currently used for `reqid`.
    #[inline]
    pub fn outbound(&self, reqid: u32) -> Option<&Arc<OutboundSa>> {
        self.outbound.get(reqid)
    }

    pub fn inbound_len(&self) -> usize {
        self.inbound.len
    }
}

/// Failure to install a pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SadError {
    #[error("an SA with inbound SPI {0:#010x} is already installed")]
    SpiInUse(u32),
    #[error(transparent)]
    Sa(#[from] SaError),
}

struct Entry {
    inbound: Arc<InboundSa>,
    outbound: Arc<OutboundSa>,
    /// Install order, to find the newest pair of a reqid.
    serial: u64,
    /// Set when retired: removed at that time.
    retired_until: Option<Instant>,
    soft_reported: bool,
    /// False while a rekey responder's new outbound SA waits (`ChildSaSpec::defer_outbound`).
    outbound_active: bool,
    /// The pair this one replaced, retired when this one's deferred outbound takes over.
    replaces: Option<u32>,
    /// The deferred pair that replaces this one: it takes over sending when this one leaves.
    deferred_successor: Option<u32>,
}

impl Entry {
    /// Order among the senders of a reqid: an active outbound SA before a deferred one, then
    /// the newest.
    fn rank(&self) -> (bool, u64) {
        (self.outbound_active, self.serial)
    }

    fn reqid(&self) -> u32 {
        self.outbound.reqid()
    }
}

/// The writers' state, behind the control mutex. Every change goes through its methods, which
/// keep `senders` in step with `pairs` and note the reqids whose outbound SA may have changed.
#[derive(Default)]
struct Control {
    pairs: BTreeMap<u32, Entry>,
    /// Per reqid, the pairs that may send (not retired) by rank, so the outbound SA of a reqid is
    /// found in O(log k) even when many pairs share it (one vpn template, many peers).
    senders: U32Map<BTreeMap<(bool, u64), u32>>,
    next_serial: u64,
}

impl Control {
    fn add_sender(&mut self, reqid: u32, rank: (bool, u64), spi: u32) {
        self.senders.entry(reqid).or_default().insert(rank, spi);
    }

    fn drop_sender(&mut self, reqid: u32, rank: (bool, u64)) {
        if let Some(m) = self.senders.get_mut(&reqid) {
            m.remove(&rank);
            if m.is_empty() {
                self.senders.remove(&reqid);
            }
        }
    }

    /// Marks the pair retired (once: the first deadline stands). Returns its reqid.
    fn retire(&mut self, spi: u32, until: Instant) -> Option<u32> {
        let e = self.pairs.get_mut(&spi)?;
        if e.retired_until.is_some() {
            return None;
        }
        e.retired_until = Some(until);
        let (reqid, rank, successor) = (e.reqid(), e.rank(), e.deferred_successor);
        self.drop_sender(reqid, rank);
        self.promote(successor, reqid);
        Some(reqid)
    }

    fn remove(&mut self, spi: u32) -> Option<Entry> {
        let e = self.pairs.remove(&spi)?;
        if e.retired_until.is_none() {
            self.drop_sender(e.reqid(), e.rank());
            self.promote(e.deferred_successor, e.reqid());
        }
        Some(e)
    }

    /// A deferred pair whose predecessor stops sending becomes active. The peer initiated the
    /// rekey that made it and deleted the predecessor only after installing it (or lost the
    /// predecessor anyway); left deferred, a newer deferred pair (the peer's next rekey, still
    /// unknown to the peer until our response arrives) would outrank it and take the traffic.
    /// Only a successor of the same `reqid` (a rekey keeps it), which the caller touches.
    fn promote(&mut self, successor: Option<u32>, reqid: u32) {
        let Some(spi) = successor else { return };
        let Some(e) = self.pairs.get_mut(&spi) else { return };
        if e.outbound_active || e.retired_until.is_some() || e.reqid() != reqid {
            return;
        }
        let old_rank = e.rank();
        e.outbound_active = true;
        let new_rank = e.rank();
        self.drop_sender(reqid, old_rank);
        self.add_sender(reqid, new_rank, spi);
    }

    /// The outbound SA `reqid` sends on now.
    fn best_outbound(&self, reqid: u32) -> Option<&Arc<OutboundSa>> {
        let (_, spi) = self.senders.get(&reqid)?.last_key_value()?;
        self.pairs.get(spi).map(|e| &e.outbound)
    }
}

/// Changes to one new snapshot, made under the control mutex and published once.
struct Draft {
    next: SadSnapshot,
    /// reqids whose outbound entry must be recomputed before publication.
    reqids: Vec<u32>,
}

impl Draft {
    fn new(current: &SadSnapshot) -> Draft {
        Draft { next: current.clone(), reqids: Vec::new() }
    }

    fn touch(&mut self, reqid: Option<u32>) {
        if let Some(r) = reqid {
            self.reqids.push(r);
        }
    }
}

/// See the module documentation.
pub struct Sad {
    snapshot: ArcSwap<SadSnapshot>,
    control: Mutex<Control>,
    observers: Mutex<Vec<Box<dyn SadObserver>>>,
    clock: Arc<CoarseClock>,
    global: GlobalCounters,
    grace: Duration,
}

impl std::fmt::Debug for Sad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad").field("inbound", &self.snapshot.load().inbound.len).finish_non_exhaustive()
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Control-plane state stays consistent across a panic in an observer; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sad {
    /// An empty SAD whose SAs stamp times with `clock`.
    pub fn new(clock: Arc<CoarseClock>) -> Sad {
        Sad {
            snapshot: ArcSwap::from_pointee(SadSnapshot::default()),
            control: Mutex::new(Control::default()),
            observers: Mutex::new(Vec::new()),
            clock,
            global: GlobalCounters::default(),
            grace: DEFAULT_REKEY_GRACE,
        }
    }

    /// Sets how long a replaced inbound SA keeps accepting packets.
    pub fn with_rekey_grace(mut self, grace: Duration) -> Sad {
        self.grace = grace;
        self
    }

    /// The clock SAs of this SAD must be built with (and that `tick` advances).
    pub fn clock(&self) -> &Arc<CoarseClock> {
        &self.clock
    }

    /// Global counters (`ipsec-stat`).
    pub fn global(&self) -> &GlobalCounters {
        &self.global
    }

    pub fn global_stats(&self) -> GlobalStats {
        self.global.snapshot()
    }

    /// The current snapshot, for the packet path: load once per batch.
    pub fn snapshot(&self) -> Guard<Arc<SadSnapshot>> {
        self.snapshot.load()
    }

    /// Registers an observer of SAD changes.
    pub fn add_observer(&self, observer: Box<dyn SadObserver>) {
        relock(&self.observers).push(observer);
    }

    fn notify(&self, events: &[SadEvent]) {
        if events.is_empty() {
            return;
        }
        let mut obs = relock(&self.observers);
        for e in events {
            for o in obs.iter_mut() {
                o.on_event(e);
            }
        }
    }

    /// A draft of the next snapshot. Call with the control mutex held: only writers holding it
    /// store snapshots, so the one loaded here is the latest.
    fn draft(&self) -> Draft {
        Draft::new(&self.snapshot.load())
    }

    /// Recomputes the outbound SA of each touched reqid and makes the draft the snapshot.
    fn publish(&self, ctl: &Control, mut d: Draft) {
        d.reqids.sort_unstable();
        d.reqids.dedup();
        for &reqid in &d.reqids {
            match ctl.best_outbound(reqid) {
                // Unchanged: leave the shard shared with the previous snapshot.
                Some(o) if d.next.outbound.get(reqid).is_some_and(|cur| Arc::ptr_eq(cur, o)) => {}
                Some(o) => d.next.outbound.insert(reqid, o.clone()),
                None => d.next.outbound.remove(reqid),
            }
        }
        self.snapshot.store(Arc::new(d.next));
    }

    /// Builds the pair of `spec` with this SAD's clock and installs it.
    pub fn install_spec(&self, spec: &ChildSaSpec, now: Instant) -> Result<(), SadError> {
        self.install(ChildSaPair::new(spec, &self.clock)?, now)
    }

    /// Installs a pair. If it replaces another (`replaces_spi_in`), that one is retired.
    pub fn install(&self, pair: ChildSaPair, now: Instant) -> Result<(), SadError> {
        self.install_many([pair], now).pop().unwrap_or(Ok(()))
    }

    /// Builds and installs the pairs of many specs with one snapshot publication; see
    /// [`Sad::install_many`]. The keys are prepared before the control mutex is taken.
    pub fn install_specs(&self, specs: &[ChildSaSpec], now: Instant) -> Vec<Result<(), SadError>> {
        self.build_and_install(specs.iter().map(|s| (s, None)), now)
    }

    /// HA takeover: like [`Sad::install_specs`], with each pair resumed (sequence number, lease
    /// ceiling, replay window) before the one publication, so no packet is sealed or accepted
    /// on a pair before its mirrored state is in place.
    pub fn install_specs_resumed(
        &self,
        specs: &[(ChildSaSpec, Resume)],
        now: Instant,
    ) -> Vec<Result<(), SadError>> {
        self.build_and_install(specs.iter().map(|(s, r)| (s, Some(r))), now)
    }

    fn build_and_install<'a>(
        &self,
        specs: impl ExactSizeIterator<Item = (&'a ChildSaSpec, Option<&'a Resume>)>,
        now: Instant,
    ) -> Vec<Result<(), SadError>> {
        let mut results: Vec<Result<(), SadError>> = Vec::with_capacity(specs.len());
        let mut ok = Vec::with_capacity(specs.len());
        for (spec, resume) in specs {
            match ChildSaPair::new(spec, &self.clock) {
                Ok(mut p) => {
                    if let Some(r) = resume {
                        p.resume(r);
                    }
                    results.push(Ok(()));
                    ok.push(p);
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        let mut installed = self.install_many(ok, now).into_iter();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = installed.next().unwrap_or(Ok(()));
        }
        results
    }

    /// Installs many pairs at once (an HA standby taking over thousands of SAs): the same as
    /// installing them one after the other, in order, but the packet path sees one new snapshot
    /// with all of them, built in O(SHARDS + pairs) instead of once per pair. A pair whose
    /// inbound SPI is taken fails alone; the result of each pair is returned in order.
    pub fn install_many(
        &self,
        pairs: impl IntoIterator<Item = ChildSaPair>,
        now: Instant,
    ) -> Vec<Result<(), SadError>> {
        let mut results = Vec::new();
        let mut events = Vec::new();
        {
            let mut ctl = relock(&self.control);
            let mut d = self.draft();
            for pair in pairs {
                let spi = pair.inbound.spi();
                if ctl.pairs.contains_key(&spi) {
                    results.push(Err(SadError::SpiInUse(spi)));
                    continue;
                }
                let inbound = Arc::new(pair.inbound);
                let outbound = Arc::new(pair.outbound);
                let serial = ctl.next_serial;
                ctl.next_serial += 1;
                let entry = Entry {
                    inbound: inbound.clone(),
                    outbound: outbound.clone(),
                    serial,
                    retired_until: None,
                    soft_reported: false,
                    outbound_active: !pair.defer_outbound,
                    replaces: pair.replaces_spi_in,
                    deferred_successor: None,
                };
                let (reqid, rank) = (entry.reqid(), entry.rank());
                if let Some(old) = pair.replaces_spi_in.filter(|_| pair.defer_outbound) {
                    if let Some(o) = ctl.pairs.get_mut(&old) {
                        o.deferred_successor = Some(spi);
                    }
                }
                ctl.pairs.insert(spi, entry);
                ctl.add_sender(reqid, rank, spi);
                d.next.inbound.insert(spi, inbound.clone());
                d.touch(Some(reqid));
                // A deferred pair leaves the old one sending until `activate` or its retirement.
                if let Some(old) = pair.replaces_spi_in.filter(|_| !pair.defer_outbound) {
                    let r = ctl.retire(old, now + self.grace);
                    d.touch(r);
                }
                events.push(SadEvent::Installed { inbound, outbound });
                results.push(Ok(()));
            }
            if !events.is_empty() {
                self.publish(&ctl, d);
            }
        }
        self.notify(&events);
        results
    }

    /// Called by every receive path after `sa` authenticated a packet: the first such packet of
    /// a pair installed with `defer_outbound` activates its outbound SA (one relaxed load
    /// otherwise).
    pub fn confirm_received(&self, sa: &InboundSa) {
        if sa.take_activation() {
            self.activate(sa.spi());
        }
    }

    /// The first packet arrived on a pair installed with `defer_outbound`: the peer has it, so
    /// its outbound SA takes over from the one it replaces. Called once per such pair by the
    /// receive path (see `InboundSa::take_activation`).
    pub fn activate(&self, spi_in: u32) {
        let mut ctl = relock(&self.control);
        let Some(e) = ctl.pairs.get_mut(&spi_in) else { return };
        if e.outbound_active {
            return;
        }
        let (reqid, old_rank, replaces, retired) =
            (e.reqid(), e.rank(), e.replaces, e.retired_until.is_some());
        e.outbound_active = true;
        let new_rank = e.rank();
        if !retired {
            ctl.drop_sender(reqid, old_rank);
            ctl.add_sender(reqid, new_rank, spi_in);
        }
        let mut d = self.draft();
        d.touch(Some(reqid));
        // The peer has moved on: the replaced pair only receives packets in flight now.
        if let Some(old) = replaces {
            let r = ctl.retire(old, self.clock.now() + self.grace);
            d.touch(r);
        }
        self.publish(&ctl, d);
    }

    /// Removes the pair with inbound SPI `spi_in` at once. Returns whether it existed.
    pub fn remove(&self, spi_in: u32) -> bool {
        let removed = {
            let mut ctl = relock(&self.control);
            let e = ctl.remove(spi_in);
            if let Some(e) = &e {
                let mut d = self.draft();
                d.next.inbound.remove(spi_in);
                d.touch(Some(e.reqid()));
                self.publish(&ctl, d);
            }
            e
        };
        match removed {
            Some(e) => {
                self.notify(&[removed_event(&e, RemoveReason::Deleted)]);
                true
            }
            None => false,
        }
    }

    /// Make-before-break removal: the pair stops sending now, its inbound SA keeps receiving until
    /// `now + grace` and `tick` removes it then. Returns whether it existed.
    pub fn retire(&self, spi_in: u32, now: Instant) -> bool {
        let mut ctl = relock(&self.control);
        if !ctl.pairs.contains_key(&spi_in) {
            return false;
        }
        if let Some(reqid) = ctl.retire(spi_in, now + self.grace) {
            let mut d = self.draft();
            d.touch(Some(reqid));
            self.publish(&ctl, d);
        }
        true
    }

    /// Removes every pair; returns how many.
    pub fn flush(&self) -> usize {
        let pairs = {
            let mut ctl = relock(&self.control);
            let pairs = std::mem::take(&mut ctl.pairs);
            ctl.senders.clear();
            self.snapshot.store(Arc::new(SadSnapshot::default()));
            pairs
        };
        let events: Vec<_> = pairs.values().map(|e| removed_event(e, RemoveReason::Flushed)).collect();
        self.notify(&events);
        pairs.len()
    }

    /// Control-plane timer: advances the clock to `now`, removes retired pairs whose grace is over,
    /// reports soft limits (once per pair) and removes pairs past a hard limit. Returns the events,
    /// which observers also receive.
    pub fn tick(&self, now: Instant) -> Vec<SadEvent> {
        self.clock.set(now);
        let mut events = Vec::new();
        {
            let mut ctl = relock(&self.control);
            let mut gone = Vec::new();
            for (&spi, e) in ctl.pairs.iter_mut() {
                if let Some(until) = e.retired_until {
                    if now >= until {
                        gone.push((spi, RemoveReason::Rekeyed));
                    }
                    continue;
                }
                let states = [
                    (Direction::Out, e.outbound.lifetime_state(now)),
                    (Direction::In, e.inbound.lifetime_state(now)),
                ];
                let (spi_in, spi_out, reqid) = (spi, e.outbound.spi(), e.outbound.reqid());
                if let Some(&(direction, _)) = states.iter().find(|(_, s)| *s == LifetimeState::Hard) {
                    events.push(SadEvent::HardLimit { spi_in, spi_out, reqid, direction });
                    gone.push((spi, RemoveReason::Expired));
                } else if let Some(&(direction, _)) = states.iter().find(|(_, s)| *s == LifetimeState::Soft) {
                    if !e.soft_reported {
                        e.soft_reported = true;
                        events.push(SadEvent::SoftLimit { spi_in, spi_out, reqid, direction });
                    }
                }
            }
            if !gone.is_empty() {
                let mut d = self.draft();
                for (spi, reason) in &gone {
                    if let Some(e) = ctl.remove(*spi) {
                        d.next.inbound.remove(*spi);
                        d.touch(Some(e.reqid()));
                        events.push(removed_event(&e, *reason));
                    }
                }
                self.publish(&ctl, d);
            }
        }
        self.notify(&events);
        events
    }

    /// The inbound SA with this SPI (control plane; the packet path uses `snapshot`).
    pub fn get_inbound(&self, spi: u32) -> Option<Arc<InboundSa>> {
        self.snapshot.load().inbound.get(spi).cloned()
    }

    /// The outbound SA currently used for `reqid`.
    pub fn get_outbound(&self, reqid: u32) -> Option<Arc<OutboundSa>> {
        self.snapshot.load().outbound.get(reqid).cloned()
    }

    /// The outbound SA of the pair with inbound SPI `spi_in` (also when retired).
    pub fn get_outbound_of(&self, spi_in: u32) -> Option<Arc<OutboundSa>> {
        relock(&self.control).pairs.get(&spi_in).map(|e| e.outbound.clone())
    }

    /// HA: the outbound SA of the pair with inbound SPI `spi_in`: (last sequence number used,
    /// lease ceiling). `None` if there is no such pair.
    pub fn seq_lease(&self, spi_in: u32) -> Option<(u64, u64)> {
        relock(&self.control).pairs.get(&spi_in).map(|e| e.outbound.seq_lease())
    }

    /// HA: every pair's counters in one call, for the lease tick's scan: (inbound SPI, outbound
    /// last sequence number, inbound replay window top). One lock of the table rather than two per
    /// pair; each window is read after the table's lock is released.
    pub fn ha_counters(&self) -> Vec<(u32, u64, u64)> {
        let pairs: Vec<(u32, Arc<OutboundSa>, Arc<InboundSa>)> = relock(&self.control)
            .pairs
            .iter()
            .map(|(&spi, e)| (spi, e.outbound.clone(), e.inbound.clone()))
            .collect();
        pairs.into_iter().map(|(spi, o, i)| (spi, o.seq_lease().0, i.replay_top())).collect()
    }

    /// HA: the replay window of the inbound SA `spi_in`, to mirror.
    pub fn replay_state(&self, spi_in: u32) -> Option<ReplayState> {
        let inbound = relock(&self.control).pairs.get(&spi_in).map(|e| e.inbound.clone());
        inbound.map(|i| i.replay_state())
    }

    /// HA: the standby acked a lease up to `ceiling` for the pair `spi_in`; the ceiling only
    /// rises (see `SeqCounter::set_ceiling`). Returns whether the pair exists.
    pub fn set_ceiling(&self, spi_in: u32, ceiling: u64) -> bool {
        let outbound = relock(&self.control).pairs.get(&spi_in).map(|e| e.outbound.clone());
        outbound.map(|o| o.seq().set_ceiling(ceiling)).is_some()
    }

    /// RFC 6311 replay counter sync: the outbound SA of the pair `spi_in` continues `delta`
    /// numbers further on (never backwards). Returns the next sequence number, `None` if there is
    /// no such pair.
    pub fn skip_seq(&self, spi_in: u32, delta: u64) -> Option<u64> {
        let outbound = relock(&self.control).pairs.get(&spi_in).map(|e| e.outbound.clone())?;
        let next = outbound.next_seq().saturating_add(delta);
        outbound.set_next_seq(next);
        Some(next)
    }

    /// HA planned switchover: stops sealing on the pair `spi_in` and returns the highest
    /// sequence number that was or may still be sealed (see `SeqCounter::freeze`).
    pub fn freeze_seq(&self, spi_in: u32) -> Option<u64> {
        let outbound = relock(&self.control).pairs.get(&spi_in).map(|e| e.outbound.clone());
        outbound.map(|o| o.seq().freeze())
    }

    /// HA: merge a mirrored replay window into the inbound SA `spi_in`, forward only (see
    /// `ReplayWindow::import`). Returns whether the pair exists.
    pub fn import_replay(&self, spi_in: u32, state: &ReplayState) -> bool {
        let inbound = relock(&self.control).pairs.get(&spi_in).map(|e| e.inbound.clone());
        inbound.map(|i| i.import_replay(state)).is_some()
    }

    /// Number of installed pairs (retired ones included).
    pub fn len(&self) -> usize {
        relock(&self.control).pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pair: (inbound, outbound, retired), ordered by inbound SPI.
    pub fn pairs(&self) -> Vec<(Arc<InboundSa>, Arc<OutboundSa>, bool)> {
        relock(&self.control)
            .pairs
            .values()
            .map(|e| (e.inbound.clone(), e.outbound.clone(), e.retired_until.is_some()))
            .collect()
    }

    /// Listing of every SA, outbound then inbound of each pair.
    pub fn list(&self, now: Instant) -> Vec<SaInfo> {
        let mut out = Vec::new();
        for (i, o, retired) in self.pairs() {
            out.push(SaInfo::outbound(&o, retired, now));
            out.push(SaInfo::inbound(&i, retired, now));
        }
        out
    }
}

fn removed_event(e: &Entry, reason: RemoveReason) -> SadEvent {
    SadEvent::Removed {
        spi_in: e.inbound.spi(),
        spi_out: e.outbound.spi(),
        reqid: e.outbound.reqid(),
        reason,
        counters_in: e.inbound.counters().snapshot(),
        counters_out: e.outbound.counters().snapshot(),
    }
}

#[cfg(test)]
mod tests {
    //! The incremental snapshot against the full rebuild it replaced, over random sequences of
    //! installs (single and bulk), rekeys with and without deferred outbound, activations,
    //! retirements, removals, ticks and flushes.

    use super::*;
    use crate::lifetime::LifetimeLimits;
    use crate::sa::{KeyMaterial, Mode};
    use proptest::prelude::*;
    use tandem_crypto::EncrAlg;
    use zeroize::Zeroizing;

    const SPIS: u32 = 24;
    const REQIDS: u32 = 4;

    fn spi(i: u32) -> u32 {
        0x1000 + i
    }

    fn spec(i: u32, reqid: u32, replaces: Option<u32>, defer: bool) -> ChildSaSpec {
        let key = Zeroizing::new(vec![7u8; EncrAlg::AesGcm16_128.key_material_len()]);
        ChildSaSpec {
            name: "t".into(),
            reqid,
            spi_in: spi(i),
            spi_out: 0x9000 + i,
            encr: EncrAlg::AesGcm16_128,
            integ: None,
            esn: false,
            mode: Mode::Tunnel,
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "192.0.2.2:4500".parse().unwrap(),
            udp_encap: true,
            replay_window: 64,
            lifetime: LifetimeLimits::default(),
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            keys_in: KeyMaterial { encr: key.clone(), integ: Zeroizing::new(Vec::new()) },
            keys_out: KeyMaterial { encr: key, integ: Zeroizing::new(Vec::new()) },
            replaces_spi_in: replaces.map(spi),
            defer_outbound: defer,
            iv_key: None,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Install { i: u32, reqid: u32, replaces: Option<u32>, defer: bool },
        InstallMany(Vec<(u32, u32, Option<u32>, bool)>),
        Activate(u32),
        Retire(u32),
        Remove(u32),
        Tick(u64),
        Flush,
    }

    fn install() -> impl Strategy<Value = (u32, u32, Option<u32>, bool)> {
        (0..SPIS, 0..REQIDS, proptest::option::of(0..SPIS), any::<bool>())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => install().prop_map(|(i, reqid, replaces, defer)| Op::Install { i, reqid, replaces, defer }),
            2 => proptest::collection::vec(install(), 0..12).prop_map(Op::InstallMany),
            3 => (0..SPIS).prop_map(Op::Activate),
            2 => (0..SPIS).prop_map(Op::Retire),
            2 => (0..SPIS).prop_map(Op::Remove),
            2 => (0u64..1500).prop_map(Op::Tick),
            1 => Just(Op::Flush),
        ]
    }

    /// The snapshot as the former full rebuild made it from the control state.
    fn rebuilt(ctl: &Control) -> (U32Map<Arc<InboundSa>>, U32Map<Arc<OutboundSa>>) {
        let (mut inbound, mut outbound) = (U32Map::default(), U32Map::default());
        let mut best: U32Map<(bool, u64)> = U32Map::default();
        for e in ctl.pairs.values() {
            inbound.insert(e.inbound.spi(), e.inbound.clone());
            let rank = (e.outbound_active, e.serial);
            if e.retired_until.is_none() && best.get(&e.reqid()).is_none_or(|&r| r < rank) {
                best.insert(e.reqid(), rank);
                outbound.insert(e.reqid(), e.outbound.clone());
            }
        }
        (inbound, outbound)
    }

    fn check(sad: &Sad) -> Result<(), TestCaseError> {
        let ctl = relock(&sad.control);
        let snap = sad.snapshot();
        let (inbound, outbound) = rebuilt(&ctl);
        prop_assert_eq!(snap.inbound_len(), inbound.len());
        prop_assert_eq!(snap.outbound.len, outbound.len());
        for i in 0..SPIS {
            let want = inbound.get(&spi(i)).map(Arc::as_ptr);
            prop_assert_eq!(snap.inbound.get(spi(i)).map(Arc::as_ptr), want, "inbound {:#x}", spi(i));
        }
        for r in 0..REQIDS {
            let want = outbound.get(&r).map(Arc::as_ptr);
            prop_assert_eq!(snap.outbound(r).map(Arc::as_ptr), want, "outbound of reqid {}", r);
        }
        let senders: usize = ctl.senders.values().map(BTreeMap::len).sum();
        prop_assert_eq!(senders, ctl.pairs.values().filter(|e| e.retired_until.is_none()).count());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn incremental_snapshot_equals_full_rebuild(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let sad = Sad::new(Arc::new(CoarseClock::new(t0))).with_rekey_grace(Duration::from_secs(1));
            let mut now = t0;
            for op in ops {
                match op {
                    Op::Install { i, reqid, replaces, defer } => {
                        let want_ok = sad.get_inbound(spi(i)).is_none();
                        prop_assert_eq!(sad.install_spec(&spec(i, reqid, replaces, defer), now).is_ok(), want_ok);
                    }
                    Op::InstallMany(list) => {
                        let specs: Vec<_> = list.iter().map(|&(i, r, rep, d)| spec(i, r, rep, d)).collect();
                        let mut taken: Vec<u32> = sad.pairs().iter().map(|p| p.0.spi()).collect();
                        let results = sad.install_specs(&specs, now);
                        prop_assert_eq!(results.len(), specs.len());
                        for (s, r) in specs.iter().zip(&results) {
                            let free = !taken.contains(&s.spi_in);
                            prop_assert_eq!(r.is_ok(), free);
                            if free {
                                taken.push(s.spi_in);
                            } else {
                                prop_assert_eq!(r, &Err(SadError::SpiInUse(s.spi_in)));
                            }
                        }
                    }
                    Op::Activate(i) => sad.activate(spi(i)),
                    Op::Retire(i) => {
                        let had = sad.get_inbound(spi(i)).is_some();
                        prop_assert_eq!(sad.retire(spi(i), now), had);
                    }
                    Op::Remove(i) => {
                        let had = sad.get_inbound(spi(i)).is_some();
                        prop_assert_eq!(sad.remove(spi(i)), had);
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        sad.tick(now);
                    }
                    Op::Flush => {
                        sad.flush();
                    }
                }
                check(&sad)?;
            }
        }
    }

    #[test]
    fn bulk_install_publishes_every_pair_and_reports_each() {
        struct Count(Arc<Mutex<usize>>);
        impl SadObserver for Count {
            fn on_event(&mut self, e: &SadEvent) {
                if matches!(e, SadEvent::Installed { .. }) {
                    *self.0.lock().unwrap() += 1;
                }
            }
        }
        let t0 = Instant::now();
        let sad = Sad::new(Arc::new(CoarseClock::new(t0)));
        let installed = Arc::new(Mutex::new(0));
        sad.add_observer(Box::new(Count(installed.clone())));
        let before = sad.snapshot().clone();
        let mut specs: Vec<ChildSaSpec> = (0..2000).map(|i| spec(i, i % 7, None, false)).collect();
        specs.push(spec(5, 0, None, false)); // SPI taken earlier in the same batch
        let results = sad.install_specs(&specs, t0);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2000);
        assert_eq!(results[2000], Err(SadError::SpiInUse(spi(5))));
        assert_eq!(*installed.lock().unwrap(), 2000);
        assert_eq!(before.inbound_len(), 0, "an earlier snapshot is not changed");
        let snap = sad.snapshot();
        assert_eq!(snap.inbound_len(), 2000);
        assert!((0..2000).all(|i| snap.inbound(spi(i)).is_some()));
        // The newest pair of each reqid sends.
        for r in 0..7u32 {
            let newest = (0..2000u32).filter(|i| i % 7 == r).max().unwrap();
            assert_eq!(snap.outbound(r).unwrap().spi(), 0x9000 + newest);
        }
    }
}

//! The SA database. Readers (the packet path) see an immutable snapshot, swapped atomically with
//! `arc-swap` whenever the control plane installs or removes an SA: a lookup is one atomic load per
//! batch plus a hash probe per packet, with no lock and no reference-count traffic per packet. Writes
//! rebuild the snapshot (O(number of SAs)), which suits a control plane that changes SAs rarely.
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
use crate::sa::{ChildSaPair, ChildSaSpec, InboundSa, OutboundSa};
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

/// An immutable view of the SAD for the packet path.
#[derive(Default)]
pub struct SadSnapshot {
    inbound: U32Map<Arc<InboundSa>>,
    outbound: U32Map<Arc<OutboundSa>>,
}

impl SadSnapshot {
    /// The inbound SA with this SPI (including retired ones in their grace period).
    pub fn inbound(&self, spi: u32) -> Option<&InboundSa> {
        self.inbound.get(&spi).map(|a| &**a)
    }

    /// The outbound SA currently used for `reqid`.
    pub fn outbound(&self, reqid: u32) -> Option<&Arc<OutboundSa>> {
        self.outbound.get(&reqid)
    }

    pub fn inbound_len(&self) -> usize {
        self.inbound.len()
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
}

#[derive(Default)]
struct Control {
    pairs: BTreeMap<u32, Entry>,
    next_serial: u64,
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
        f.debug_struct("Sad").field("inbound", &self.snapshot.load().inbound.len()).finish_non_exhaustive()
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

    fn publish(&self, ctl: &Control) {
        let mut snap = SadSnapshot::default();
        // Per reqid the best outbound SA: an active one before a deferred one, then the newest.
        let mut best: U32Map<(bool, u64)> = U32Map::default();
        for e in ctl.pairs.values() {
            snap.inbound.insert(e.inbound.spi(), e.inbound.clone());
            let rank = (e.outbound_active, e.serial);
            if e.retired_until.is_none() && best.get(&e.outbound.reqid()).is_none_or(|&r| r < rank) {
                best.insert(e.outbound.reqid(), rank);
                snap.outbound.insert(e.outbound.reqid(), e.outbound.clone());
            }
        }
        self.snapshot.store(Arc::new(snap));
    }

    /// Builds the pair of `spec` with this SAD's clock and installs it.
    pub fn install_spec(&self, spec: &ChildSaSpec, now: Instant) -> Result<(), SadError> {
        self.install(ChildSaPair::new(spec, &self.clock)?, now)
    }

    /// Installs a pair. If it replaces another (`replaces_spi_in`), that one is retired.
    pub fn install(&self, pair: ChildSaPair, now: Instant) -> Result<(), SadError> {
        let spi = pair.inbound.spi();
        let inbound = Arc::new(pair.inbound);
        let outbound = Arc::new(pair.outbound);
        {
            let mut ctl = relock(&self.control);
            if ctl.pairs.contains_key(&spi) {
                return Err(SadError::SpiInUse(spi));
            }
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
            };
            ctl.pairs.insert(spi, entry);
            // A deferred pair leaves the old one sending until `activate` or its retirement.
            if let Some(old) =
                pair.replaces_spi_in.filter(|_| !pair.defer_outbound).and_then(|s| ctl.pairs.get_mut(&s))
            {
                old.retired_until.get_or_insert(now + self.grace);
            }
            self.publish(&ctl);
        }
        self.notify(&[SadEvent::Installed { inbound, outbound }]);
        Ok(())
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
        e.outbound_active = true;
        // The peer has moved on: the replaced pair only receives packets in flight now.
        if let Some(old) = e.replaces.and_then(|s| ctl.pairs.get_mut(&s)) {
            old.retired_until.get_or_insert(self.clock.now() + self.grace);
        }
        self.publish(&ctl);
    }

    /// Removes the pair with inbound SPI `spi_in` at once. Returns whether it existed.
    pub fn remove(&self, spi_in: u32) -> bool {
        let removed = {
            let mut ctl = relock(&self.control);
            let e = ctl.pairs.remove(&spi_in);
            if e.is_some() {
                self.publish(&ctl);
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
        let Some(e) = ctl.pairs.get_mut(&spi_in) else { return false };
        e.retired_until.get_or_insert(now + self.grace);
        self.publish(&ctl);
        true
    }

    /// Removes every pair; returns how many.
    pub fn flush(&self) -> usize {
        let pairs = {
            let mut ctl = relock(&self.control);
            let pairs = std::mem::take(&mut ctl.pairs);
            self.publish(&ctl);
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
            for (spi, reason) in &gone {
                if let Some(e) = ctl.pairs.remove(spi) {
                    events.push(removed_event(&e, *reason));
                }
            }
            if !gone.is_empty() {
                self.publish(&ctl);
            }
        }
        self.notify(&events);
        events
    }

    /// The inbound SA with this SPI (control plane; the packet path uses `snapshot`).
    pub fn get_inbound(&self, spi: u32) -> Option<Arc<InboundSa>> {
        self.snapshot.load().inbound.get(&spi).cloned()
    }

    /// The outbound SA currently used for `reqid`.
    pub fn get_outbound(&self, reqid: u32) -> Option<Arc<OutboundSa>> {
        self.snapshot.load().outbound.get(&reqid).cloned()
    }

    /// The outbound SA of the pair with inbound SPI `spi_in` (also when retired).
    pub fn get_outbound_of(&self, spi_in: u32) -> Option<Arc<OutboundSa>> {
        relock(&self.control).pairs.get(&spi_in).map(|e| e.outbound.clone())
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

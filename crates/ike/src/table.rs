//! The IKE SA table: every IKE SA of an endpoint, with the indexes that keep an event's cost
//! independent of how many SAs there are (issue 9: 10,000 tunnels per node).
//!
//! - a timer queue ordered by (deadline, SA): `poll_timeout` reads its head and `handle_timeout`
//!   pops what is due, instead of both walking every SA;
//! - CHILD SAs by inbound SPI (ours, unique) and by outbound SPI (the peer's, so not unique);
//! - IKE SAs by vpn and by remote address (acquires, restarts, INVALID_SPI), and by vpn and
//!   remote identity (INITIAL_CONTACT and `unique`, checked on every handshake: one %any vpn
//!   may serve 10,000 road warriors, all of them from one address behind a NAT).
//!
//! An SA is handled outside the table: `checkout` takes it out and `commit` puts it back and
//! brings the indexes up to date from what the SA now holds (its deadline included), so protocol
//! code changes an SA freely and never maintains an index itself. While an SA is checked out its
//! index entries stay, so that its SPIs remain reserved; `discard` removes them when the SA goes
//! for good. Iteration orders are those of ordered maps, never of a hash: a seeded run replays
//! exactly.

use crate::api::IkeSaId;
use crate::config::Identity;
use crate::sa::IkeSa;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What the indexes hold for one SA; compared on commit to update only what changed. The vpn and
/// identity keys are hashes (`key_of`), not copies of the strings: one `Filed` per SA, and owned
/// keys cost a few allocations of every tunnel's memory. A lookup filters what it finds by the
/// SA's own fields, so a hash collision costs a wasted probe, never a wrong answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Filed {
    deadline: Option<Instant>,
    /// (inbound, outbound) SPI of each CHILD SA.
    spis: Vec<(u32, u32)>,
    vpn: Option<u64>,
    remote: Option<IpAddr>,
    identity: Option<u64>,
}

/// A fixed-key hash (the same in every table and every run, unlike `RandomState`: `check`
/// compares filings, and seeded runs replay).
fn key_of(k: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

impl Filed {
    fn of(sa: &IkeSa, half_open_timeout: Duration) -> Filed {
        let half_open = sa.created.filter(|_| sa.established.is_none()).map(|c| c + half_open_timeout);
        Filed {
            deadline: [sa.next_deadline(), half_open].into_iter().flatten().min(),
            spis: sa.children.iter().map(|c| (c.spi_in, c.spi_out)).collect(),
            vpn: sa.vpn.as_deref().map(key_of),
            remote: Some(sa.remote.ip()),
            identity: sa.vpn.as_deref().zip(sa.remote_id.as_ref()).map(key_of),
        }
    }
}

pub(crate) struct SaTable {
    /// Boxed: an `IkeSa` is over a kilobyte, and a map sized for growth keeps up to half its
    /// slots empty; inline, those empty slots cost more than the SAs' own heap data.
    sas: HashMap<IkeSaId, Box<IkeSa>>,
    filed: HashMap<IkeSaId, Filed>,
    timers: BTreeSet<(Instant, IkeSaId)>,
    by_spi_in: HashMap<u32, IkeSaId>,
    by_spi_out: HashMap<u32, FewIds>,
    by_vpn: HashMap<u64, BTreeSet<IkeSaId>>,
    by_remote: HashMap<IpAddr, BTreeSet<IkeSaId>>,
    by_identity: HashMap<u64, FewIds>,
    half_open_timeout: Duration,
}

/// A set of SA ids under one index key.
trait IdSet: Default {
    fn put(&mut self, id: IkeSaId);
    fn take(&mut self, id: IkeSaId);
    fn is_empty(&self) -> bool;
}

impl IdSet for BTreeSet<IkeSaId> {
    fn put(&mut self, id: IkeSaId) {
        self.insert(id);
    }
    fn take(&mut self, id: IkeSaId) {
        self.remove(&id);
    }
    fn is_empty(&self) -> bool {
        BTreeSet::is_empty(self)
    }
}

/// The ids under a key that holds one or two of them (an outbound SPI, a peer identity): a sorted
/// Vec, where a `BTreeSet` would allocate a whole node (about 200 bytes) for each key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FewIds(Vec<IkeSaId>);

impl IdSet for FewIds {
    fn put(&mut self, id: IkeSaId) {
        if let Err(i) = self.0.binary_search(&id) {
            self.0.insert(i, id);
        }
    }
    fn take(&mut self, id: IkeSaId) {
        if let Ok(i) = self.0.binary_search(&id) {
            self.0.remove(i);
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a FewIds {
    type Item = &'a IkeSaId;
    type IntoIter = std::slice::Iter<'a, IkeSaId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn add<K: std::hash::Hash + Eq, S: IdSet>(map: &mut HashMap<K, S>, k: K, id: IkeSaId) {
    map.entry(k).or_default().put(id);
}

fn remove<K: std::hash::Hash + Eq, S: IdSet>(map: &mut HashMap<K, S>, k: &K, id: IkeSaId) {
    if let Some(set) = map.get_mut(k) {
        set.take(id);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

impl SaTable {
    /// `half_open_timeout` bounds an SA that never completes: part of its deadline.
    pub(crate) fn new(half_open_timeout: Duration) -> SaTable {
        SaTable {
            sas: HashMap::new(),
            filed: HashMap::new(),
            timers: BTreeSet::new(),
            by_spi_in: HashMap::new(),
            by_spi_out: HashMap::new(),
            by_vpn: HashMap::new(),
            by_remote: HashMap::new(),
            by_identity: HashMap::new(),
            half_open_timeout,
        }
    }

    pub(crate) fn get(&self, id: &IkeSaId) -> Option<&IkeSa> {
        self.sas.get(id).map(|b| &**b)
    }

    /// True when `id` is taken, by a stored or a checked-out SA.
    pub(crate) fn contains(&self, id: &IkeSaId) -> bool {
        self.filed.contains_key(id) || self.sas.contains_key(id)
    }

    /// Take an SA out for handling; `commit` or `discard` it afterwards.
    pub(crate) fn checkout(&mut self, id: &IkeSaId) -> Option<Box<IkeSa>> {
        self.sas.remove(id)
    }

    /// Change a stored SA in place, indexes following.
    pub(crate) fn update<R>(&mut self, id: &IkeSaId, f: impl FnOnce(&mut IkeSa) -> R) -> Option<R> {
        let mut sa = self.checkout(id)?;
        let r = f(&mut sa);
        self.commit(sa);
        Some(r)
    }

    /// Store an SA (new or checked out) and file it under what it now holds.
    pub(crate) fn commit(&mut self, mut sa: Box<IkeSa>) {
        let id = sa.id;
        // A CHILD SA is ~300 bytes and a Vec's first allocation holds four: an SA back to one
        // CHILD SA after a rekey (or made with one) would keep three empty slots for its lifetime.
        if sa.children.capacity() > sa.children.len().max(1) * 2 {
            sa.children.shrink_to_fit();
        }
        let new = Filed::of(&sa, self.half_open_timeout);
        let old = self.filed.remove(&id).unwrap_or_default();
        if old != new {
            self.unfile(id, &old, &new);
            self.file(id, &old, &new);
        }
        self.filed.insert(id, new);
        self.sas.insert(id, sa);
    }

    /// Forget an SA for good (checked out or stored): its index entries go.
    pub(crate) fn discard(&mut self, id: IkeSaId) {
        self.sas.remove(&id);
        if let Some(old) = self.filed.remove(&id) {
            self.unfile(id, &old, &Filed::default());
        }
    }

    /// Remove the entries of `old` that `new` no longer has.
    fn unfile(&mut self, id: IkeSaId, old: &Filed, new: &Filed) {
        if old.deadline != new.deadline {
            if let Some(t) = old.deadline {
                self.timers.remove(&(t, id));
            }
        }
        for (s, _) in old.spis.iter().filter(|(s, _)| !new.spis.iter().any(|n| n.0 == *s)) {
            if self.by_spi_in.get(s) == Some(&id) {
                self.by_spi_in.remove(s);
            }
        }
        for (_, s) in old.spis.iter().filter(|(_, s)| !new.spis.iter().any(|n| n.1 == *s)) {
            remove(&mut self.by_spi_out, s, id);
        }
        if old.vpn != new.vpn {
            if let Some(v) = &old.vpn {
                remove(&mut self.by_vpn, v, id);
            }
        }
        if old.remote != new.remote {
            if let Some(r) = &old.remote {
                remove(&mut self.by_remote, r, id);
            }
        }
        if old.identity != new.identity {
            if let Some(k) = &old.identity {
                remove(&mut self.by_identity, k, id);
            }
        }
    }

    /// Add the entries of `new` that `old` did not have.
    fn file(&mut self, id: IkeSaId, old: &Filed, new: &Filed) {
        if old.deadline != new.deadline {
            if let Some(t) = new.deadline {
                self.timers.insert((t, id));
            }
        }
        for (s, _) in new.spis.iter().filter(|(s, _)| !old.spis.iter().any(|o| o.0 == *s)) {
            self.by_spi_in.insert(*s, id);
        }
        for (_, s) in new.spis.iter().filter(|(_, s)| !old.spis.iter().any(|o| o.1 == *s)) {
            add(&mut self.by_spi_out, *s, id);
        }
        if old.vpn != new.vpn {
            if let Some(v) = new.vpn {
                add(&mut self.by_vpn, v, id);
            }
        }
        if old.remote != new.remote {
            if let Some(r) = new.remote {
                add(&mut self.by_remote, r, id);
            }
        }
        if old.identity != new.identity {
            if let Some(k) = new.identity {
                add(&mut self.by_identity, k, id);
            }
        }
    }

    /// The earliest deadline of any SA.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The SAs whose deadline is at or before `now`, earliest first.
    pub(crate) fn due(&self, now: Instant) -> Vec<IkeSaId> {
        self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect()
    }

    /// True when a CHILD SA (stored or checked out) has inbound SPI `spi`.
    pub(crate) fn spi_in_use(&self, spi: u32) -> bool {
        self.by_spi_in.contains_key(&spi)
    }

    /// The IKE SA holding the CHILD SA with inbound SPI `spi`.
    pub(crate) fn holder_of_spi_in(&self, spi: u32) -> Option<IkeSaId> {
        self.by_spi_in.get(&spi).copied()
    }

    /// The IKE SA holding the CHILD SA with inbound (preferred) or outbound SPI `spi`.
    pub(crate) fn sa_of_child(&self, spi: u32) -> Option<IkeSaId> {
        self.by_spi_in
            .get(&spi)
            .copied()
            .or_else(|| self.by_spi_out.get(&spi).and_then(|s| s.0.first().copied()))
    }

    /// The IKE SAs of a vpn, in SPI order.
    pub(crate) fn of_vpn<'a>(&'a self, vpn: &'a str) -> impl Iterator<Item = &'a IkeSa> + 'a {
        let ids = self.by_vpn.get(&key_of(vpn)).into_iter().flatten();
        ids.filter_map(|id| self.get(id)).filter(move |sa| sa.vpn.as_deref() == Some(vpn))
    }

    /// The IKE SAs with a peer at `remote`, in SPI order.
    pub(crate) fn of_remote(&self, remote: IpAddr) -> impl Iterator<Item = &IkeSa> {
        self.by_remote.get(&remote).into_iter().flatten().filter_map(|id| self.get(id))
    }

    /// The IKE SAs of a vpn whose peer authenticated as `remote_id`, in SPI order.
    pub(crate) fn of_identity<'a>(
        &'a self,
        vpn: &'a str,
        remote_id: &'a Identity,
    ) -> impl Iterator<Item = &'a IkeSa> + 'a {
        let ids = self.by_identity.get(&key_of((vpn, remote_id))).into_iter().flatten();
        ids.filter_map(|id| self.get(id))
            .filter(move |sa| sa.vpn.as_deref() == Some(vpn) && sa.remote_id.as_ref() == Some(remote_id))
    }

    /// Every stored SA, in no particular order (listings sort; protocol code uses the indexes).
    pub(crate) fn values(&self) -> impl Iterator<Item = &IkeSa> {
        self.sas.values().map(|b| &**b)
    }

    /// Recompute every index from the stored SAs and compare (tests and simulations: a stale
    /// index is a bug that no protocol test would see until thousands of SAs).
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut fresh = SaTable::new(self.half_open_timeout);
        let mut stored: BTreeMap<IkeSaId, Filed> = BTreeMap::new();
        for sa in self.sas.values() {
            fresh.file(sa.id, &Filed::default(), &Filed::of(sa, self.half_open_timeout));
            stored.insert(sa.id, Filed::of(sa, self.half_open_timeout));
        }
        for (id, f) in &stored {
            if self.filed.get(id) != Some(f) {
                return Err(format!("SA {id:#018x} filed as {:?}, holds {f:?}", self.filed.get(id)));
            }
        }
        if self.filed.len() != stored.len() {
            return Err(format!("{} SAs filed, {} stored", self.filed.len(), stored.len()));
        }
        if fresh.timers != self.timers {
            return Err("timer queue differs from the SAs' deadlines".into());
        }
        if fresh.by_spi_in != self.by_spi_in || fresh.by_spi_out != self.by_spi_out {
            return Err("CHILD SA SPI index differs from the SAs".into());
        }
        if fresh.by_vpn != self.by_vpn
            || fresh.by_remote != self.by_remote
            || fresh.by_identity != self.by_identity
        {
            return Err("vpn or remote index differs from the SAs".into());
        }
        Ok(())
    }
}

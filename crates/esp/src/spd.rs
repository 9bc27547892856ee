//! The security policy database (RFC 4301 section 4.4.1): ordered policies that say, for outbound
//! plaintext, whether to protect it with the SA of a reqid, let it bypass IPsec, or discard it.
//!
//! Order: lower `priority` first, then insertion order; the first match wins. The SPD is a plain
//! value: the daemon keeps it behind an `ArcSwap` (or one per TUN interface) and replaces it when
//! policies change (copy, change, swap), like the SAD snapshot.
//!
//! Thousands of CHILD SAs each install a policy, so neither the lookup nor the copy may walk them
//! all. The index: every selector of a policy's `remote_ts` is filed under the smallest CIDR block
//! that covers its address range, in a hash map keyed by (family, prefix length, network). A
//! lookup masks the packet's remote address (destination outbound, source inbound) to each prefix
//! length in use (typically one to three) and probes that block; a block's policies are kept in
//! lookup order, so the first one that matches in full (local side, protocol, ports) is that
//! block's answer, and the earliest of the blocks' answers is the SPD's. That is exactly the first
//! match of the ordered list: a packet whose remote address lies in a selector's range lies in
//! that selector's covering block, so no matching policy is missed.
//!
//! Copies are cheap: the maps are split into [`SHARDS`] shards behind `Arc`s and a block's list into
//! chunks behind `Arc`s, so a change copies pointers and the few shards and chunks it touches;
//! changes made within one copy (a bulk install) copy each of those at most once.
//!
//! What it costs, honestly: a copy clones 2 x [`SHARDS`] `Arc`s; a change then copies one shard of
//! each map (about n / [`SHARDS`] entries) and, for a block holding many policies, that block's
//! chunk table (about m / 64 `Arc`s for m policies in the block). So a change is O(SHARDS + n /
//! SHARDS + m / 64), not O(1), but three orders of magnitude below the list's O(n) at 10,000.
//! A lookup probes one block per prefix length in use and walks each block only until its first
//! full match: O(1) when the policies of a block share their local side (every CHILD SA of one
//! template, road warriors with one /32 each), but a block holding many policies that differ only
//! in `local_ts`, protocol or ports (one remote subnet, many local subnets) is walked like the list.

use crate::counters::{bump, GlobalCounters};
use crate::sa::OutboundSa;
use crate::sad::SadSnapshot;
use crate::selector::{ts_list_matches, PacketSelector};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use tandem_wire::TrafficSelector;

/// What to do with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyAction {
    /// Protect with the outbound SA of this reqid; if none is installed, ask the IKE engine for one
    /// (a trap policy, RFC 4301 ACQUIRE).
    Protect { reqid: u32 },
    /// Send in the clear.
    Bypass,
    /// Drop.
    Discard,
}

/// One policy. A packet matches when its source is in `local_ts` and its destination in
/// `remote_ts` (outbound); both lists must be non-empty to match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Caller-chosen id, used to remove or replace the policy.
    pub id: u32,
    /// Lower values are looked at first.
    pub priority: u32,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub action: PolicyAction,
}

impl Policy {
    /// True when an outbound packet with these fields matches.
    pub fn matches_outbound(&self, sel: &PacketSelector) -> bool {
        ts_list_matches(&self.local_ts, sel.src, sel.protocol, sel.src_port)
            && ts_list_matches(&self.remote_ts, sel.dst, sel.protocol, sel.dst_port)
    }

    /// True when an inbound plaintext packet (source remote, destination local) matches.
    pub fn matches_inbound(&self, sel: &PacketSelector) -> bool {
        ts_list_matches(&self.remote_ts, sel.src, sel.protocol, sel.src_port)
            && ts_list_matches(&self.local_ts, sel.dst, sel.protocol, sel.dst_port)
    }
}

/// Lookup order of a policy: (priority, insertion order).
type Key = (u32, u64);

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    policy: Arc<Policy>,
}

/// The smallest CIDR block covering a selector's address range: where the selector is filed.
/// IPv4 networks are kept in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    v6: bool,
    len: u8,
    net: u128,
}

impl Block {
    fn mix(&self) -> u64 {
        let x = (self.net as u64) ^ ((self.net >> 64) as u64).rotate_left(29) ^ (u64::from(self.len) << 56);
        let h = (x ^ u64::from(self.v6)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
}

impl Hash for Block {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.mix());
    }
}

/// An address as (is IPv6, value); IPv4 in the low 32 bits.
fn addr_bits(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn width(v6: bool) -> u32 {
    if v6 {
        128
    } else {
        32
    }
}

/// `a` with all but its top `len` bits (of the family's width) cleared.
fn mask(a: u128, len: u8, v6: bool) -> u128 {
    let host_bits = width(v6) - u32::from(len);
    if host_bits >= 128 {
        0
    } else {
        a & (u128::MAX << host_bits)
    }
}

/// The covering block of a selector, `None` for one that can match no address (mixed families or
/// start above end: `TrafficSelector::matches` then never holds).
fn covering_block(ts: &TrafficSelector) -> Option<Block> {
    let ((v6, s), (v6e, e)) = (addr_bits(ts.start_addr), addr_bits(ts.end_addr));
    if v6 != v6e || s > e {
        return None;
    }
    let diff = s ^ e;
    // Leading zeros within the family's width: the common prefix of start and end.
    let len = (diff.leading_zeros() - (128 - width(v6))) as u8;
    Some(Block { v6, len, net: mask(s, len, v6) })
}

/// The distinct covering blocks of a policy's remote selectors.
fn blocks_of(p: &Policy) -> Vec<Block> {
    let mut v: Vec<Block> = Vec::with_capacity(p.remote_ts.len());
    for b in p.remote_ts.iter().filter_map(covering_block) {
        if !v.contains(&b) {
            v.push(b);
        }
    }
    v
}

/// A hasher for keys that hash themselves to one well-mixed u64 (`Block`) or are u32 ids.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_u32(&mut self, n: u32) {
        let h = (u64::from(n) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

type MixMap<K, V> = HashMap<K, V, BuildHasherDefault<MixHasher>>;

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 8;

/// Shards of the SPD's maps: at 10,000 policies a change copies 256 pointers per map and a shard
/// of about 40 entries.
pub const SHARDS: usize = 1 << SHARD_BITS;

fn shard_of(h: u64) -> usize {
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARD_BITS)) as usize
}

fn id_hash(id: u32) -> u64 {
    let mut h = MixHasher::default();
    h.write_u32(id);
    h.finish()
}

/// A hash map split into shards shared between copies of the SPD until changed.
#[derive(Debug)]
struct Sharded<K, V> {
    shards: Vec<Arc<MixMap<K, V>>>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Sharded { shards: self.shards.clone() }
    }
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Sharded { shards: (0..SHARDS).map(|_| Arc::new(MixMap::default())).collect() }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    fn get(&self, h: u64, k: &K) -> Option<&V> {
        self.shards[shard_of(h)].get(k)
    }
    fn shard_mut(&mut self, h: u64) -> &mut MixMap<K, V> {
        Arc::make_mut(&mut self.shards[shard_of(h)])
    }
    fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

/// Entries per chunk of a block's list before it splits in two.
const CHUNK_MAX: usize = 128;

/// The policies filed under one block, in lookup order, as chunks shared between copies: an
/// insert or removal copies the chunk table and one chunk, not the list (10,000 CHILD SAs with
/// the same `0.0.0.0/0` selectors all land in one block).
#[derive(Debug, Clone, Default)]
struct BlockList {
    /// Non-empty chunks, each sorted, all in order.
    chunks: Vec<Arc<Vec<Entry>>>,
}

impl BlockList {
    fn chunk_for(&self, key: Key) -> usize {
        self.chunks.partition_point(|c| c.last().is_some_and(|e| e.key < key))
    }

    fn insert(&mut self, e: Entry) {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(vec![e]));
            return;
        }
        let i = self.chunk_for(e.key).min(self.chunks.len() - 1);
        let c = Arc::make_mut(&mut self.chunks[i]);
        let at = c.partition_point(|x| x.key < e.key);
        c.insert(at, e);
        if c.len() > CHUNK_MAX {
            let tail = c.split_off(CHUNK_MAX / 2);
            self.chunks.insert(i + 1, Arc::new(tail));
        }
    }

    fn remove(&mut self, key: Key) {
        let i = self.chunk_for(key);
        let Some(c) = self.chunks.get_mut(i) else { return };
        if let Ok(at) = c.binary_search_by_key(&key, |x| x.key) {
            let c = Arc::make_mut(c);
            c.remove(at);
            if c.is_empty() {
                self.chunks.remove(i);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The first entry before `before` (if given) for which `f` holds.
    fn first(&self, before: Option<Key>, f: &impl Fn(&Policy) -> bool) -> Option<&Entry> {
        for c in &self.chunks {
            for e in c.iter() {
                if before.is_some_and(|b| e.key >= b) {
                    return None;
                }
                if f(&e.policy) {
                    return Some(e);
                }
            }
        }
        None
    }
}

/// Prefix lengths in use per family, as counts (for updates) and bit sets (for lookups).
#[derive(Debug, Clone)]
struct Lengths {
    count: [u32; 33 + 129],
    /// Bit `len` set when a block of that length exists: IPv4 in `v4`, IPv6 in `v6`.
    v4: u64,
    v6: [u64; 3],
}

impl Default for Lengths {
    fn default() -> Self {
        Lengths { count: [0; 33 + 129], v4: 0, v6: [0; 3] }
    }
}

impl Lengths {
    fn slot(v6: bool, len: u8) -> usize {
        if v6 {
            33 + usize::from(len)
        } else {
            usize::from(len)
        }
    }

    fn set(&mut self, v6: bool, len: u8, on: bool) {
        let l = u32::from(len);
        match (v6, on) {
            (false, true) => self.v4 |= 1 << l,
            (false, false) => self.v4 &= !(1 << l),
            (true, true) => self.v6[(l / 64) as usize] |= 1 << (l % 64),
            (true, false) => self.v6[(l / 64) as usize] &= !(1 << (l % 64)),
        }
    }

    fn add(&mut self, b: &Block) {
        let c = &mut self.count[Self::slot(b.v6, b.len)];
        *c += 1;
        if *c == 1 {
            self.set(b.v6, b.len, true);
        }
    }

    fn sub(&mut self, b: &Block) {
        let c = &mut self.count[Self::slot(b.v6, b.len)];
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.set(b.v6, b.len, false);
        }
    }

    /// Calls `f` with each prefix length in use for the family, without allocating.
    fn for_each(&self, v6: bool, mut f: impl FnMut(u8)) {
        let words: &[u64] = if v6 { &self.v6 } else { std::slice::from_ref(&self.v4) };
        for (w, &bits) in words.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                f((w as u32 * 64 + b) as u8);
            }
        }
    }
}

/// The policies, indexed. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Spd {
    by_id: Sharded<u32, Entry>,
    blocks: Sharded<Block, Arc<BlockList>>,
    lengths: Lengths,
    len: usize,
    next_order: u64,
}

impl Spd {
    pub fn new() -> Spd {
        Spd::default()
    }

    /// Adds a policy; one with the same id is replaced (and takes the new place in the order).
    pub fn insert(&mut self, policy: Policy) {
        self.remove(policy.id);
        let key = (policy.priority, self.next_order);
        self.next_order += 1;
        let e = Entry { key, policy: Arc::new(policy) };
        for b in blocks_of(&e.policy) {
            let h = b.mix();
            let list = self.blocks.shard_mut(h).entry(b).or_default();
            Arc::make_mut(list).insert(e.clone());
            self.lengths.add(&b);
        }
        let id = e.policy.id;
        self.by_id.shard_mut(id_hash(id)).insert(id, e);
        self.len += 1;
    }

    /// Adds policies in order, as repeated [`Spd::insert`] would, into one copy: for installing
    /// thousands at once (a standby taking over, a reload).
    pub fn extend(&mut self, policies: impl IntoIterator<Item = Policy>) {
        for p in policies {
            self.insert(p);
        }
    }

    /// Removes the policy with this id; returns whether it existed.
    pub fn remove(&mut self, id: u32) -> bool {
        let h = id_hash(id);
        if self.by_id.get(h, &id).is_none() {
            return false;
        }
        let Some(e) = self.by_id.shard_mut(h).remove(&id) else { return false };
        for b in blocks_of(&e.policy) {
            let shard = self.blocks.shard_mut(b.mix());
            if let Some(list) = shard.get_mut(&b) {
                Arc::make_mut(list).remove(e.key);
                if list.is_empty() {
                    shard.remove(&b);
                }
            }
            self.lengths.sub(&b);
        }
        self.len -= 1;
        true
    }

    pub fn clear(&mut self) {
        *self = Spd { next_order: self.next_order, ..Spd::default() };
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The policy with this id.
    pub fn get(&self, id: u32) -> Option<&Policy> {
        self.by_id.get(id_hash(id), &id).map(|e| &*e.policy)
    }

    /// Policies in lookup order (sorts: for listings, not for the packet path).
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        let mut v: Vec<&Entry> = self.by_id.values().collect();
        v.sort_unstable_by_key(|e| e.key);
        v.into_iter().map(|e| &*e.policy)
    }

    /// The earliest policy filed under a block containing `addr` for which `f` holds.
    fn first(&self, addr: IpAddr, f: impl Fn(&Policy) -> bool) -> Option<&Policy> {
        let (v6, a) = addr_bits(addr);
        let mut best: Option<&Entry> = None;
        self.lengths.for_each(v6, |len| {
            let b = Block { v6, len, net: mask(a, len, v6) };
            if let Some(list) = self.blocks.get(b.mix(), &b) {
                if let Some(e) = list.first(best.map(|e| e.key), &f) {
                    best = Some(e);
                }
            }
        });
        best.map(|e| &*e.policy)
    }

    /// The first policy matching an outbound packet.
    pub fn lookup(&self, sel: &PacketSelector) -> Option<&Policy> {
        self.first(sel.dst, |p| p.matches_outbound(sel))
    }

    /// The first policy matching an inbound plaintext packet (to enforce Discard/Bypass on traffic
    /// that arrived without ESP).
    pub fn lookup_inbound(&self, sel: &PacketSelector) -> Option<&Policy> {
        self.first(sel.src, |p| p.matches_inbound(sel))
    }
}

/// The outbound decision for one packet.
#[derive(Debug, Clone, Copy)]
pub enum LookupResult<'a> {
    /// Seal with this SA.
    Protect(&'a Arc<OutboundSa>),
    /// A Protect policy with no SA installed: the daemon should make the IKE engine initiate the
    /// CHILD SA of this reqid, and queue (bounded) or drop the packet.
    Acquire(u32),
    Bypass,
    Discard,
    /// No policy matched (dropped).
    NoPolicy,
}

/// SPD lookup followed by the SAD lookup of the reqid; counts policy drops in `global`.
pub fn lookup_outbound<'a>(
    spd: &Spd,
    sad: &'a SadSnapshot,
    global: &GlobalCounters,
    sel: &PacketSelector,
) -> LookupResult<'a> {
    match spd.lookup(sel).map(|p| p.action) {
        None => {
            bump(&global.out_no_policy, 1);
            LookupResult::NoPolicy
        }
        Some(PolicyAction::Discard) => {
            bump(&global.out_policy_discard, 1);
            LookupResult::Discard
        }
        Some(PolicyAction::Bypass) => LookupResult::Bypass,
        Some(PolicyAction::Protect { reqid }) => match sad.outbound(reqid) {
            Some(sa) => LookupResult::Protect(sa),
            None => {
                bump(&global.out_no_sa, 1);
                LookupResult::Acquire(reqid)
            }
        },
    }
}

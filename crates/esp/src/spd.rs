//! The security policy database (RFC 4301 section 4.4.1): ordered policies that say, for outbound
//! plaintext, whether to protect it with the SA of a reqid, let it bypass IPsec, or discard it.
//!
//! Order: lower `priority` first, then insertion order; the first match wins. Lookups walk the list
//! without allocating (a vpn has a handful of policies; route-based mode has one `0.0.0.0/0`
//! policy per interface). The SPD is a plain value: the daemon keeps it behind an `ArcSwap` (or one per
//! TUN interface) and replaces it when policies change, like the SAD snapshot.

use crate::counters::{bump, GlobalCounters};
use crate::sa::OutboundSa;
use crate::sad::SadSnapshot;
use crate::selector::{ts_list_matches, PacketSelector};
use serde::{Deserialize, Serialize};
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

/// The ordered policy list. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Spd {
    /// Sorted by (priority, order).
    policies: Vec<(u32, u64, Policy)>,
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
        let at = self.policies.partition_point(|(p, o, _)| (*p, *o) < key);
        self.policies.insert(at, (key.0, key.1, policy));
    }

    /// Removes the policy with this id; returns whether it existed.
    pub fn remove(&mut self, id: u32) -> bool {
        let before = self.policies.len();
        self.policies.retain(|(_, _, p)| p.id != id);
        self.policies.len() != before
    }

    pub fn clear(&mut self) {
        self.policies.clear();
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Policies in lookup order.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|(_, _, p)| p)
    }

    /// The first policy matching an outbound packet.
    pub fn lookup(&self, sel: &PacketSelector) -> Option<&Policy> {
        self.iter().find(|p| p.matches_outbound(sel))
    }

    /// The first policy matching an inbound plaintext packet (to enforce Discard/Bypass on traffic
    /// that arrived without ESP).
    pub fn lookup_inbound(&self, sel: &PacketSelector) -> Option<&Policy> {
        self.iter().find(|p| p.matches_inbound(sel))
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

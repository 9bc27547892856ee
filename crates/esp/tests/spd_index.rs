//! The indexed SPD against the ordered list it replaced: random inserts, replacements and removals
//! of policies with overlapping selectors (ranges that are not CIDR blocks, mixed families, empty
//! and unmatchable selectors, protocols and ports), then random packets. Every outbound and inbound
//! lookup must return the same policy as a first-match walk of the list sorted by (priority,
//! insertion order), and the listing must be in that order.

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tandem_esp::{PacketSelector, Policy, PolicyAction, Spd};
use tandem_wire::TrafficSelector;

/// The SPD as it was: a list sorted by (priority, insertion order), first match wins.
#[derive(Default)]
struct Linear {
    policies: Vec<(u32, u64, Policy)>,
    next: u64,
}

impl Linear {
    fn insert(&mut self, p: Policy) {
        self.remove(p.id);
        let key = (p.priority, self.next);
        self.next += 1;
        let at = self.policies.partition_point(|(a, b, _)| (*a, *b) < key);
        self.policies.insert(at, (key.0, key.1, p));
    }
    fn remove(&mut self, id: u32) -> bool {
        let n = self.policies.len();
        self.policies.retain(|(_, _, p)| p.id != id);
        n != self.policies.len()
    }
    fn lookup(&self, s: &PacketSelector) -> Option<&Policy> {
        self.policies.iter().map(|(_, _, p)| p).find(|p| p.matches_outbound(s))
    }
    fn lookup_inbound(&self, s: &PacketSelector) -> Option<&Policy> {
        self.policies.iter().map(|(_, _, p)| p).find(|p| p.matches_inbound(s))
    }
}

/// Addresses from a small space so that selectors overlap: 10.0.0.0-10.0.0.63 mostly, a few
/// IPv6 addresses in 2001:db8::/122.
fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        8 => (0u32..64).prop_map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
        2 => (0u128..64).prop_map(|i| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i))),
    ]
}

fn selector() -> impl Strategy<Value = TrafficSelector> {
    let range = (addr(), addr()).prop_map(|(a, b)| TrafficSelector::from_range(a, b));
    let subnet = (addr(), 0u8..=32).prop_map(|(a, l)| {
        let l = if a.is_ipv4() { l } else { l + 96 };
        TrafficSelector::from_subnet(a, l).expect("valid prefix")
    });
    let any = prop_oneof![Just(TrafficSelector::any_v4()), Just(TrafficSelector::any_v6())];
    (prop_oneof![4 => range, 4 => subnet, 1 => any], 0u8..4, 0u16..4, 0u16..4).prop_map(
        |(mut ts, p, a, b)| {
            ts.ip_protocol = [0, 0, 6, 17][usize::from(p)];
            if a != 0 {
                // A port range (sometimes start > end: matches nothing).
                ts.start_port = a * 20;
                ts.end_port = b * 30;
            }
            ts
        },
    )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        0u32..24,
        0u32..3,
        proptest::collection::vec(selector(), 0..3),
        proptest::collection::vec(selector(), 0..3),
        0u32..3,
    )
        .prop_map(|(id, priority, local_ts, remote_ts, a)| Policy {
            id,
            priority,
            local_ts,
            remote_ts,
            action: match a {
                0 => PolicyAction::Protect { reqid: id },
                1 => PolicyAction::Bypass,
                _ => PolicyAction::Discard,
            },
        })
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Policy),
    Remove(u32),
    Bulk(Vec<Policy>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => policy().prop_map(Op::Insert),
        2 => (0u32..24).prop_map(Op::Remove),
        1 => proptest::collection::vec(policy(), 0..8).prop_map(Op::Bulk),
    ]
}

fn packet() -> impl Strategy<Value = PacketSelector> {
    (addr(), addr(), 0u8..4, proptest::option::of(0u16..100), proptest::option::of(0u16..100)).prop_map(
        |(src, dst, p, sp, dp)| {
            // Same family on both sides, as in a real packet.
            let dst = match (src, dst) {
                (IpAddr::V4(_), IpAddr::V6(d)) => {
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (u128::from(d) as u32 & 63)))
                }
                (IpAddr::V6(_), IpAddr::V4(d)) => {
                    IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(u32::from(d) & 63)))
                }
                _ => dst,
            };
            let ports_none = sp.is_none() || dp.is_none();
            PacketSelector {
                src,
                dst,
                protocol: [1, 6, 17, 50][usize::from(p)],
                src_port: if ports_none { None } else { sp },
                dst_port: if ports_none { None } else { dp },
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_matches_the_ordered_list(
        ops in proptest::collection::vec(op(), 1..40),
        packets in proptest::collection::vec(packet(), 1..64),
    ) {
        let mut spd = Spd::new();
        let mut model = Linear::default();
        for (step, o) in ops.into_iter().enumerate() {
            // Every other step works on a copy, as the dataplane does (copy, change, swap), so
            // shared shards and chunks must not leak changes into the old copy.
            let before = spd.clone();
            let before_order: Vec<Policy> = before.iter().cloned().collect();
            match o {
                Op::Insert(p) => { model.insert(p.clone()); spd.insert(p); }
                Op::Remove(id) => prop_assert_eq!(spd.remove(id), model.remove(id)),
                Op::Bulk(ps) => { for p in &ps { model.insert(p.clone()); } spd.extend(ps); }
            }
            prop_assert_eq!(before.iter().cloned().collect::<Vec<_>>(), before_order, "old copy changed at step {}", step);
            prop_assert_eq!(spd.len(), model.policies.len());
            for s in &packets {
                prop_assert_eq!(spd.lookup(s), model.lookup(s), "outbound {:?} at step {}", s, step);
                prop_assert_eq!(spd.lookup_inbound(s), model.lookup_inbound(s), "inbound {:?} at step {}", s, step);
            }
        }
        let order: Vec<&Policy> = model.policies.iter().map(|(_, _, p)| p).collect();
        prop_assert_eq!(spd.iter().collect::<Vec<_>>(), order);
    }
}

/// Thousands of policies in one block (every CHILD SA of a `0.0.0.0/0` template) and thousands of
/// /32 blocks: chunk splits and removals in the middle keep the order.
#[test]
fn many_policies_in_one_block_and_many_blocks() {
    let mut spd = Spd::new();
    let mut model = Linear::default();
    let host = |i: u32| {
        TrafficSelector::from_range(
            Ipv4Addr::from(0x0a00_0000 + i).into(),
            Ipv4Addr::from(0x0a00_0000 + i).into(),
        )
    };
    for i in 0..3000u32 {
        let remote = if i % 2 == 0 { TrafficSelector::any_v4() } else { host(i) };
        let p = Policy {
            id: i,
            priority: i % 3,
            local_ts: vec![TrafficSelector::any_v4()],
            remote_ts: vec![remote],
            action: PolicyAction::Protect { reqid: i },
        };
        model.insert(p.clone());
        spd.insert(p);
    }
    for i in (0..3000u32).step_by(7) {
        assert_eq!(spd.remove(i), model.remove(i));
    }
    for i in 0..3000u32 {
        let s = PacketSelector {
            src: "192.0.2.1".parse().unwrap(),
            dst: Ipv4Addr::from(0x0a00_0000 + i).into(),
            protocol: 17,
            src_port: Some(1),
            dst_port: Some(2),
        };
        assert_eq!(spd.lookup(&s).map(|p| p.id), model.lookup(&s).map(|p| p.id), "dst #{i}");
    }
    assert_eq!(
        spd.iter().map(|p| p.id).collect::<Vec<_>>(),
        model.policies.iter().map(|(_, _, p)| p.id).collect::<Vec<_>>()
    );
}

//! Cost of SPD changes and lookups as the SPD grows, the way the dataplane uses it: every change
//! copies the published SPD, changes the copy and publishes it (`tandem_dataplane::policy`).
//!
//! Two layouts of n CHILD SA policies (each CHILD SA installs one, keyed by its inbound SPI):
//! - "/32 each": every policy protects its own remote host (road warriors with virtual IPs,
//!   or site-to-site tunnels to distinct subnets), so a packet matches one of n;
//! - "one block": every policy has the same `0.0.0.0/0` selectors (one vpn template narrowed to
//!   nothing), so every packet matches the first one installed.
//!
//! "before" is the SPD as it was (one sorted list, copied whole on every change, walked per
//! packet), reimplemented here as the baseline; "after" is `tandem_esp::Spd`.
//!
//! Run: `cargo run --release -p tandem-esp --example spd_install [n ...]` (default 1000 10000).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_esp::{PacketSelector, Policy, PolicyAction, Spd};
use tandem_wire::TrafficSelector;

/// The previous SPD: (priority, order, policy) sorted, first match wins.
#[derive(Clone, Default)]
struct ListSpd {
    policies: Vec<(u32, u64, Policy)>,
    next: u64,
}

impl ListSpd {
    fn insert(&mut self, p: Policy) {
        self.policies.retain(|(_, _, q)| q.id != p.id);
        let key = (p.priority, self.next);
        self.next += 1;
        let at = self.policies.partition_point(|(a, b, _)| (*a, *b) < key);
        self.policies.insert(at, (key.0, key.1, p));
    }
    fn remove(&mut self, id: u32) {
        self.policies.retain(|(_, _, q)| q.id != id);
    }
    fn lookup(&self, s: &PacketSelector) -> Option<&Policy> {
        self.policies.iter().map(|(_, _, p)| p).find(|p| p.matches_outbound(s))
    }
}

/// What both SPDs offer to the benchmark.
trait Db: Clone + Default {
    fn insert(&mut self, p: Policy);
    fn remove(&mut self, id: u32);
    fn find(&self, s: &PacketSelector) -> Option<u32>;
    fn bulk(&mut self, ps: Vec<Policy>);
}

impl Db for ListSpd {
    fn insert(&mut self, p: Policy) {
        ListSpd::insert(self, p)
    }
    fn remove(&mut self, id: u32) {
        ListSpd::remove(self, id)
    }
    fn find(&self, s: &PacketSelector) -> Option<u32> {
        self.lookup(s).map(|p| p.id)
    }
    fn bulk(&mut self, ps: Vec<Policy>) {
        for p in ps {
            ListSpd::insert(self, p);
        }
    }
}

impl Db for Spd {
    fn insert(&mut self, p: Policy) {
        Spd::insert(self, p)
    }
    fn remove(&mut self, id: u32) {
        Spd::remove(self, id);
    }
    fn find(&self, s: &PacketSelector) -> Option<u32> {
        self.lookup(s).map(|p| p.id)
    }
    fn bulk(&mut self, ps: Vec<Policy>) {
        self.extend(ps)
    }
}

fn host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a40_0000 + i)
}

fn policy(i: u32, one_block: bool) -> Policy {
    let remote = if one_block {
        TrafficSelector::any_v4()
    } else {
        TrafficSelector::from_range(host(i).into(), host(i).into())
    };
    Policy {
        id: 0x1000_0000 | i.wrapping_mul(0x9e37_79b9) >> 4,
        priority: 200,
        local_ts: vec![TrafficSelector::any_v4()],
        remote_ts: vec![remote],
        action: PolicyAction::Protect { reqid: i + 1 },
    }
}

fn sel(i: u32) -> PacketSelector {
    PacketSelector {
        src: "192.0.2.1".parse().unwrap(),
        dst: host(i).into(),
        protocol: 17,
        src_port: Some(40000),
        dst_port: Some(53),
    }
}

/// Copy, change, publish: what `Policies::update` does for each change.
fn publish<D: Db>(current: &mut Arc<D>, f: impl FnOnce(&mut D)) {
    let mut next = D::clone(current);
    f(&mut next);
    *current = Arc::new(next);
}

struct Figures {
    one_by_one: Duration,
    bulk: Duration,
    install_at_n: Duration,
    remove_at_n: Duration,
    lookup_ns: f64,
}

fn run<D: Db>(n: u32, one_block: bool) -> Figures {
    let mut spd: Arc<D> = Arc::new(D::default());
    let t = Instant::now();
    for i in 0..n {
        publish(&mut spd, |s| s.insert(policy(i, one_block)));
    }
    let one_by_one = t.elapsed();

    let mut bulk_spd: Arc<D> = Arc::new(D::default());
    let all: Vec<Policy> = (0..n).map(|i| policy(i, one_block)).collect();
    let t = Instant::now();
    publish(&mut bulk_spd, |s| s.bulk(all));
    let bulk = t.elapsed();
    drop(bulk_spd);

    let t = Instant::now();
    for i in n..n + 200 {
        publish(&mut spd, |s| s.insert(policy(i, one_block)));
    }
    let install_at_n = t.elapsed() / 200;
    let t = Instant::now();
    for i in n..n + 200 {
        publish(&mut spd, |s| s.remove(policy(i, one_block).id));
    }
    let remove_at_n = t.elapsed() / 200;

    // Packets to every host in turn (in "one block" they all match the first policy).
    let sels: Vec<PacketSelector> = (0..n).map(sel).collect();
    let rounds = (400_000 / n).max(1);
    let budget = Instant::now() + Duration::from_secs(20);
    let (mut looked, t) = (0u64, Instant::now());
    'outer: for _ in 0..rounds {
        for s in &sels {
            assert!(std::hint::black_box(spd.find(s)).is_some());
            looked += 1;
        }
        if Instant::now() > budget {
            break 'outer;
        }
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / looked as f64;
    Figures { one_by_one, bulk, install_at_n, remove_at_n, lookup_ns }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10_000] } else { sizes };
    println!("| n | layout | SPD | n installs one by one ms | n in one bulk ms | one install at n us | one remove at n us | lookup ns |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for one_block in [false, true] {
            let layout = if one_block { "one block (0.0.0.0/0 each)" } else { "/32 each" };
            for (name, f) in
                [("before (list)", run::<ListSpd>(n, one_block)), ("after (index)", run::<Spd>(n, one_block))]
            {
                println!(
                    "| {n} | {layout} | {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
                    ms(f.one_by_one),
                    ms(f.bulk),
                    us(f.install_at_n),
                    us(f.remove_at_n),
                    f.lookup_ns
                );
            }
        }
    }
}

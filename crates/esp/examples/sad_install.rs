//! Cost of SAD changes as the SAD grows: installing n CHILD SA pairs one at a time (what the IKE
//! engine does as tunnels come up), the cost of one install into a SAD that already holds n pairs,
//! and the packet path's SPI lookup at that size. Pairs are built (keys prepared) before the clock
//! starts, so the figures are the SAD's own cost.
//!
//! Two reqid layouts: one reqid per pair (site-to-site, one policy each) and one reqid shared by
//! every pair (many road warriors of one vpn template).
//!
//! Run: `cargo run --release -p tandem-esp --example sad_install [n ...]` (default 1000 10000).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_crypto::EncrAlg;
use tandem_esp::{ChildSaPair, ChildSaSpec, CoarseClock, KeyMaterial, LifetimeLimits, Mode, Sad};
use zeroize::Zeroizing;

fn spec(i: u32, shared_reqid: bool) -> ChildSaSpec {
    let key = Zeroizing::new(vec![i as u8; EncrAlg::AesGcm16_128.key_material_len()]);
    ChildSaSpec {
        name: format!("vpn{i}/child"),
        reqid: if shared_reqid { 1 } else { i + 1 },
        // Spread like random SPIs, all >= 256.
        spi_in: 0x1000_0000 | i.wrapping_mul(0x9e37_79b9) >> 4,
        spi_out: 0x2000_0000 + i,
        encr: EncrAlg::AesGcm16_128,
        integ: None,
        esn: true,
        mode: Mode::Tunnel,
        local: "192.0.2.1:4500".parse().unwrap(),
        remote: "198.51.100.1:4500".parse().unwrap(),
        udp_encap: true,
        replay_window: 1024,
        lifetime: LifetimeLimits::default(),
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
        keys_in: KeyMaterial { encr: key.clone(), integ: Zeroizing::new(Vec::new()) },
        keys_out: KeyMaterial { encr: key, integ: Zeroizing::new(Vec::new()) },
        replaces_spi_in: None,
        defer_outbound: false,
        iv_key: None,
    }
}

fn pairs(range: std::ops::Range<u32>, shared_reqid: bool, clock: &Arc<CoarseClock>) -> Vec<ChildSaPair> {
    range.map(|i| ChildSaPair::new(&spec(i, shared_reqid), clock).unwrap()).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(n: u32, shared_reqid: bool) {
    let now = Instant::now();
    let clock = Arc::new(CoarseClock::new(now));
    let layout = if shared_reqid { "one reqid" } else { "reqid each" };

    // The floor any SAD pays: moving n built pairs (about 0.9 KB each, keys in aws-lc's heap) into shared allocations.
    let batch = pairs(0..n, shared_reqid, &clock);
    let t = Instant::now();
    let arcs: Vec<_> = batch.into_iter().map(|p| (Arc::new(p.inbound), Arc::new(p.outbound))).collect();
    let floor = t.elapsed();
    drop(std::hint::black_box(arcs));

    // n installs, one at a time.
    let sad = Sad::new(clock.clone());
    let batch = pairs(0..n, shared_reqid, &clock);
    let t = Instant::now();
    for p in batch {
        sad.install(p, now).unwrap();
    }
    let one_by_one = t.elapsed();

    // All n at once (an HA standby taking over): one publication.
    let bulk_sad = Sad::new(clock.clone());
    let batch = pairs(0..n, shared_reqid, &clock);
    let t = Instant::now();
    assert!(bulk_sad.install_many(batch, now).iter().all(Result::is_ok));
    let bulk = t.elapsed();
    drop(bulk_sad);

    // One more install (and its removal) into the SAD of n pairs, averaged over 200.
    let extra = pairs(n..n + 200, shared_reqid, &clock);
    let spis: Vec<u32> = extra.iter().map(|p| p.inbound.spi()).collect();
    let t = Instant::now();
    for p in extra {
        sad.install(p, now).unwrap();
    }
    let install_at_n = t.elapsed() / 200;
    let t = Instant::now();
    for s in &spis {
        assert!(sad.remove(*s));
    }
    let remove_at_n = t.elapsed() / 200;

    // The packet path: one snapshot per batch, one SPI lookup per packet.
    let all: Vec<u32> = (0..n).map(|i| spec(i, shared_reqid).spi_in).collect();
    let snap = sad.snapshot();
    let rounds = (2_000_000 / n).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        for s in &all {
            std::hint::black_box(snap.inbound(*s).is_some());
        }
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / f64::from(rounds * n);
    drop(snap);

    println!(
        "n={n:>6} {layout:<10}  floor (n pairs into Arcs): {:>7.1} ms   installs one by one: {:>9.1} ms   in one install_many: {:>7.1} ms   one install at n: {:>8.1} us   \
         one remove at n: {:>8.1} us   lookup: {lookup_ns:>5.1} ns",
        ms(floor),
        ms(one_by_one),
        ms(bulk),
        install_at_n.as_secs_f64() * 1e6,
        remove_at_n.as_secs_f64() * 1e6,
    );
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10_000] } else { sizes };
    for &n in &sizes {
        for shared in [false, true] {
            run(n, shared);
        }
    }
}

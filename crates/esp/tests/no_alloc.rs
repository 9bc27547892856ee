//! No heap allocation per packet: a counting global allocator observes seal, open, the batch paths
//! and SPD/SAD lookups after warm-up. (aws-lc's C code allocates through its own malloc, outside this
//! count; the calls used, AEAD seal/open with a prepared key, raw CBC and HMAC with a copied context,
//! allocate nothing per call.)

mod common;

use common::{ipv4_udp, pair_of_sads, spec, suites};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use tandem_esp::esp_packet::NEXT_HEADER_IPV4;
use tandem_esp::{
    lookup_outbound, open, open_batch, packet_selector, seal, seal_batch, Mode, PacketBatch, Policy,
    PolicyAction, Spd,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarding to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn seal_open_and_lookups_do_not_allocate() {
    let probe = allocs();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(allocs() > probe, "the counting allocator sees allocations");
    drop(v);
    for (encr, integ) in suites() {
        for esn in [false, true] {
            let (a, b) = pair_of_sads(&spec(encr, integ, esn, Mode::Tunnel));
            let out_sa = a.get_outbound(7).unwrap();
            let inner = ipv4_udp(1000);
            let mut buf = vec![0u8; 2048];
            let mut spd = Spd::new();
            spd.insert(Policy {
                id: 1,
                priority: 10,
                local_ts: vec![tandem_wire::TrafficSelector::any_v4()],
                remote_ts: vec![tandem_wire::TrafficSelector::any_v4()],
                action: PolicyAction::Protect { reqid: 7 },
            });
            let mut batch = PacketBatch::new(32, 2048, 96);
            // Warm-up (thread-local RNG state, arc-swap debt slots).
            let n = seal(&out_sa, &inner, NEXT_HEADER_IPV4, &mut buf).unwrap();
            open(&b, &mut buf[..n]).unwrap();

            let before = allocs();
            for _ in 0..50 {
                let sel = packet_selector(&inner).unwrap();
                let snap = a.snapshot();
                assert!(matches!(
                    lookup_outbound(&spd, &snap, a.global(), &sel),
                    tandem_esp::LookupResult::Protect(_)
                ));
                let n = seal(&out_sa, &inner, NEXT_HEADER_IPV4, &mut buf).unwrap();
                open(&b, &mut buf[..n]).unwrap();
            }
            for _ in 0..4 {
                batch.clear();
                for _ in 0..32 {
                    batch.push(&inner, NEXT_HEADER_IPV4);
                }
                assert_eq!(seal_batch(&out_sa, &mut batch).sealed, 32);
                // Turn the sealed packets into received ones.
                for i in 0..32 {
                    let m = *batch.meta(i);
                    batch.set_packet(i, m.start..m.end, 0);
                }
                assert_eq!(open_batch(&b, &mut batch).opened, 32);
            }
            assert_eq!(allocs() - before, 0, "{encr:?} {integ:?} esn {esn}");
        }
    }
}

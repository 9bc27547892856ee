//! Single-thread ESP throughput of the core (no I/O): seal_batch then open_batch of 64-packet
//! batches, for each algorithm, with 64-byte and 1400-byte inner packets.
//!
//! Run: `cargo run --release -p tandem-esp --example esp_throughput [seconds-per-case]`

use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_crypto::{EncrAlg, IntegAlg};
use tandem_esp::esp_packet::NEXT_HEADER_IPV4;
use tandem_esp::{
    open_batch, seal_batch, ChildSaSpec, CoarseClock, KeyMaterial, LifetimeLimits, Mode, PacketBatch,
    PacketStatus, Sad,
};
use zeroize::Zeroizing;

const BATCH: usize = 64;

fn spec(encr: EncrAlg, integ: Option<IntegAlg>) -> ChildSaSpec {
    let k = |n: usize, s: u8| Zeroizing::new((0..n).map(|i| i as u8 ^ s).collect::<Vec<u8>>());
    let keys = |s: u8| KeyMaterial {
        encr: k(encr.key_material_len(), s),
        integ: integ.map_or_else(|| Zeroizing::new(Vec::new()), |i| k(i.key_len(), s ^ 0x5a)),
    };
    ChildSaSpec {
        name: "bench".into(),
        reqid: 1,
        spi_in: 0x1000,
        spi_out: 0x1000,
        encr,
        integ,
        esn: true,
        mode: Mode::Tunnel,
        local: "192.0.2.1:4500".parse().unwrap(),
        remote: "192.0.2.2:4500".parse().unwrap(),
        udp_encap: true,
        replay_window: 1024,
        lifetime: LifetimeLimits::default(),
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
        keys_in: keys(1),
        keys_out: keys(1),
        replaces_spi_in: None,
        defer_outbound: false,
        iv_key: None,
    }
}

fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = 17;
    p[12..20].copy_from_slice(&[10, 1, 0, 1, 10, 2, 0, 1]);
    p
}

/// The bare AEAD seal of aws-lc-rs on the same sizes, measured in the same run, as the ceiling the
/// ESP path is compared with (the machine may be shared, so absolute numbers vary).
fn raw_aead_baseline(secs: f64) {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
    for (name, alg) in
        [("raw aes256-gcm seal", &AES_256_GCM), ("raw chacha20-poly1305 seal", &CHACHA20_POLY1305)]
    {
        let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).unwrap());
        for size in [64usize + 4, 1400 + 4] {
            let mut buf = vec![0u8; size];
            let (mut n, start) = (0u64, Instant::now());
            while start.elapsed().as_secs_f64() < secs / 2.0 {
                for i in 0..BATCH as u64 {
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&(n + i).to_be_bytes());
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from([0u8; 8]),
                            &mut buf,
                        )
                        .unwrap();
                    let _ = std::hint::black_box(tag);
                }
                n += BATCH as u64;
            }
            let pps = n as f64 / start.elapsed().as_secs_f64();
            println!("{:<26} {:>6} {:>12.0}", name, size - 4, pps);
        }
    }
}

/// Per-packet costs of the pieces around the crypto: a SAD snapshot load plus SPI lookup (per packet,
/// the worst case; `open_batch` loads once per batch), the same lookup on a held snapshot, and the
/// replay check + mark pair (two uncontended lock acquisitions of the SA's window).
fn micro(secs: f64) {
    let now = Instant::now();
    let sad = Sad::new(Arc::new(CoarseClock::new(now)));
    for i in 0..1000u32 {
        let mut sp = spec(EncrAlg::AesGcm16_128, None);
        sp.spi_in = 0x10_0000 + i * 4099;
        sp.reqid = i + 10;
        sad.install_spec(&sp, now).unwrap();
    }
    let spis: Vec<u32> = (0..1000u32).map(|i| 0x10_0000 + i * 4099).collect();
    let iters = (secs * 2e7) as usize;
    let t = Instant::now();
    for k in 0..iters {
        let snap = sad.snapshot();
        std::hint::black_box(snap.inbound(spis[k % 1000]).is_some());
    }
    let per_load = t.elapsed().as_nanos() as f64 / iters as f64;
    let snap = sad.snapshot();
    let t = Instant::now();
    for k in 0..iters {
        std::hint::black_box(snap.inbound(spis[k % 1000]).is_some());
    }
    let per_lookup = t.elapsed().as_nanos() as f64 / iters as f64;
    let sa = snap.inbound(spis[0]).unwrap();
    let t = Instant::now();
    for k in 0..iters as u32 {
        let seq = sa.replay_check(k + 1).unwrap();
        sa.replay_mark(seq).unwrap();
    }
    let per_replay = t.elapsed().as_nanos() as f64 / iters as f64;
    println!(
        "SAD (1000 SAs): snapshot load + lookup {per_load:.1} ns, lookup on held snapshot {per_lookup:.1} ns; \
         replay check + mark {per_replay:.1} ns"
    );
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.5);
    micro(secs);
    raw_aead_baseline(secs);
    let suites: [(EncrAlg, Option<IntegAlg>); 6] = [
        (EncrAlg::AesGcm16_128, None),
        (EncrAlg::AesGcm16_256, None),
        (EncrAlg::ChaCha20Poly1305, None),
        (EncrAlg::AesCbc128, Some(IntegAlg::HmacSha1_96)),
        (EncrAlg::AesCbc256, Some(IntegAlg::HmacSha256_128)),
        (EncrAlg::AesCbc256, Some(IntegAlg::HmacSha512_256)),
    ];
    println!(
        "{:<26} {:>6} {:>12} {:>12} {:>14} {:>10}",
        "algorithm", "bytes", "seal pkt/s", "open pkt/s", "seal+open pkt/s", "Gbit/s"
    );
    for (encr, integ) in suites {
        for size in [64usize, 1400] {
            let now = Instant::now();
            let sad = Sad::new(Arc::new(CoarseClock::new(now)));
            sad.install_spec(&spec(encr, integ), now).unwrap();
            let out = sad.get_outbound(1).unwrap();
            let inner = ipv4_packet(size);
            let mut tx = PacketBatch::new(BATCH, 2048, 96);
            let mut rx = PacketBatch::new(BATCH, 2048, 0);
            let (mut seal_t, mut open_t, mut n) = (Duration::ZERO, Duration::ZERO, 0u64);
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                tx.clear();
                for _ in 0..BATCH {
                    tx.push(&inner, NEXT_HEADER_IPV4);
                }
                let t = Instant::now();
                let s = seal_batch(&out, &mut tx);
                seal_t += t.elapsed();
                assert_eq!(s.sealed, BATCH);
                rx.clear();
                for (_, p) in tx.iter_ok() {
                    rx.push(p, 0);
                }
                let t = Instant::now();
                let o = open_batch(&sad, &mut rx);
                open_t += t.elapsed();
                assert_eq!(o.opened, BATCH, "{:?}", rx.meta(0).status);
                debug_assert!(matches!(rx.meta(0).status, PacketStatus::Opened));
                n += BATCH as u64;
            }
            let seal_pps = n as f64 / seal_t.as_secs_f64();
            let open_pps = n as f64 / open_t.as_secs_f64();
            let both = n as f64 / (seal_t + open_t).as_secs_f64();
            let name = match integ {
                Some(i) => format!("{}-{}", encr.name(), i.name()),
                None => encr.name().to_string(),
            };
            println!(
                "{:<26} {:>6} {:>12.0} {:>12.0} {:>14.0} {:>10.2}",
                name,
                size,
                seal_pps,
                open_pps,
                both,
                both * size as f64 * 8.0 / 1e9
            );
        }
    }
}

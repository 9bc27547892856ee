//! The ESP receive path and the inner-packet parsers on hostile bytes. Three ways in, chosen by the
//! first byte: (0) arbitrary bytes opened against a SAD (must be a counted drop, never a panic);
//! (1) arbitrary plaintext sealed as a dummy packet, then a bit flipped or the packet cut, then opened (only the
//! untouched packet may authenticate, and it is then dropped as dummy); (2) the IP parsers the SPD and
//! transport mode use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Instant;
use tandem_crypto::{EncrAlg, IntegAlg};
use tandem_esp::esp_packet::NEXT_HEADER_NONE;
use tandem_esp::{open, seal, ChildSaSpec, CoarseClock, DropReason, KeyMaterial, LifetimeLimits, Mode, Sad};
use zeroize::Zeroizing;

const SUITES: [(EncrAlg, Option<IntegAlg>); 3] = [
    (EncrAlg::AesGcm16_256, None),
    (EncrAlg::ChaCha20Poly1305, None),
    (EncrAlg::AesCbc128, Some(IntegAlg::HmacSha256_128)),
];

fn spec(suite: usize, esn: bool, window: u32) -> ChildSaSpec {
    let (encr, integ) = SUITES[suite % SUITES.len()];
    let key = |n: usize, s: u8| Zeroizing::new((0..n).map(|i| (i as u8) ^ s).collect::<Vec<u8>>());
    let km = |s: u8| KeyMaterial {
        encr: key(encr.key_material_len(), s),
        integ: integ.map_or_else(|| Zeroizing::new(Vec::new()), |i| key(i.key_len(), s ^ 0x5a)),
    };
    ChildSaSpec {
        name: "fuzz".into(),
        reqid: 1,
        spi_in: 0x1000,
        spi_out: 0x1000,
        encr,
        integ,
        esn,
        mode: Mode::Tunnel,
        local: "192.0.2.1:4500".parse().unwrap(),
        remote: "192.0.2.2:4500".parse().unwrap(),
        udp_encap: true,
        replay_window: window,
        lifetime: LifetimeLimits::default(),
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
        keys_in: km(1),
        keys_out: km(1),
        replaces_spi_in: None,
        defer_outbound: false,
        iv_key: None,
    }
}

fn sad_with(spec: &ChildSaSpec) -> Sad {
    let now = Instant::now();
    let sad = Sad::new(Arc::new(CoarseClock::new(now)));
    sad.install_spec(spec, now).expect("valid spec");
    sad
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((&opts, rest)) = rest.split_first() else { return };
    let sp = spec(usize::from(opts & 3), opts & 4 != 0, [0, 32, 1024][usize::from(opts >> 3) % 3]);
    match mode % 3 {
        0 => {
            let sad = sad_with(&sp);
            let mut pkt = rest.to_vec();
            let _ = open(&sad, &mut pkt);
        }
        1 => {
            let sad = sad_with(&sp);
            let sa = sad.get_outbound(1).expect("installed");
            let (cut, flip, plain) = match rest {
                [c, f, p @ ..] => (usize::from(*c), usize::from(*f), p),
                _ => return,
            };
            let mut buf = vec![0u8; plain.len() + 128];
            let Ok(n) = seal(&sa, plain, NEXT_HEADER_NONE, &mut buf) else { return };
            let mut pkt = buf[..n].to_vec();
            let untouched = cut == 0 && flip == 0;
            if cut > 0 {
                pkt.truncate(n.saturating_sub(cut));
            } else if flip > 0 {
                let i = (flip * 7) % pkt.len();
                pkt[i] ^= 1 << (flip % 8);
            }
            let r = open(&sad, &mut pkt);
            if untouched {
                // Next header 59 (dummy): authenticated, then dropped and counted, not delivered.
                assert_eq!(r, Err(DropReason::Dummy));
            } else if let Ok(o) = r {
                panic!("a modified packet opened: {o:?}");
            }
        }
        _ => {
            let _ = tandem_esp::selector::packet_selector(rest);
            let _ = tandem_esp::ip::split_ip(rest);
            let _ = tandem_esp::ip::ip_packet_len(rest);
            let mut copy = rest.to_vec();
            let _ = tandem_esp::ip::recompute_l4_checksum(&mut copy);
        }
    }
});

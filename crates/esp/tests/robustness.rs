//! Hostile input never panics: random bytes (with and without a valid SPI in front) through `open`,
//! the batch path, transport mode and the packet parsers; every drop is a counted reason.

mod common;

use common::{pair_of_sads, spec, suites};
use proptest::prelude::*;
use tandem_esp::{
    ip, open, open_batch, open_transport, packet_selector, DropReason, Mode, PacketBatch, PacketStatus,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn open_of_random_bytes_never_panics(
        suite in 0usize..15,
        esn in any::<bool>(),
        transport in any::<bool>(),
        known_spi in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (encr, integ) = suites()[suite];
        let mode = if transport { Mode::Transport } else { Mode::Tunnel };
        let (_a, b) = pair_of_sads(&spec(encr, integ, esn, mode));
        let mut pkt = body.clone();
        if known_spi && pkt.len() >= 4 {
            pkt[..4].copy_from_slice(&0x2000u32.to_be_bytes());
        }
        let r = open(&b, &mut pkt);
        prop_assert!(r.is_err(), "random bytes authenticated");
        if let Err(DropReason::NoSa(spi)) = r {
            prop_assert_ne!(spi, 0x2000);
        }
        let mut batch = PacketBatch::new(4, 512, 0);
        batch.push(&body, 0);
        batch.push(&pkt, 0);
        let st = open_batch(&b, &mut batch);
        prop_assert_eq!(st.opened, 0);
        prop_assert!(matches!(batch.meta(0).status, PacketStatus::Dropped(_)));
        let mut buf = body.clone();
        let len = buf.len();
        prop_assert!(open_transport(&b, &mut buf, 0..len).is_err());
    }

    #[test]
    fn ip_parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..120), v6 in any::<bool>()) {
        let mut p = body;
        if let Some(first) = p.first_mut() {
            *first = (*first & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
        let _ = packet_selector(&p);
        let _ = ip::split_ip(&p);
        let _ = ip::ip_packet_len(&p);
        let _ = ip::recompute_l4_checksum(&mut p.clone());
        let _ = ip::fix_ip_header(&mut p.clone(), 9, 50);
    }
}

//! The userspace GRO on hostile inner packets (what a peer can put inside authenticated ESP).
//! The input is cut into packets by a length byte each; every packet must be accepted or refused
//! without a panic, and what comes out must keep every packet: a frame without a GSO header is
//! one packet as given, a GSO frame's payload splits into segments of its `gso_size`, none empty,
//! and no frame exceeds an IP packet's 64 KiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_esp::gro::{Coalescer, HDR};

fuzz_target!(|data: &[u8]| {
    let vnet = data.first().is_some_and(|b| b & 1 == 0);
    let mut c = Coalescer::new(8, vnet);
    let mut rest = data.get(1..).unwrap_or(&[]);
    let (mut pushed, mut out) = (0usize, 0usize);
    let check = |c: &mut Coalescer, out: &mut usize| {
        let expected = c.packets();
        let mut got = 0;
        c.drain(|f, segs| {
            let before = got;
            assert!(f.len() <= HDR + 65535);
            if vnet && f[1] != 0 {
                let hdr_len = usize::from(u16::from_le_bytes([f[2], f[3]]));
                let gso = usize::from(u16::from_le_bytes([f[4], f[5]]));
                assert!(gso > 0 && HDR + hdr_len < f.len());
                got += (f.len() - HDR - hdr_len).div_ceil(gso);
            } else {
                got += 1;
            }
            assert_eq!(got - before, segs, "the count drain reports");
        });
        assert_eq!(got, expected, "packets in = segments out");
        *out += got;
    };
    while let Some((&n, tail)) = rest.split_first() {
        // Lengths up to 255 * 8 bytes, so real-sized segments can occur.
        let len = (usize::from(n) * 8).min(tail.len());
        let (pkt, tail) = tail.split_at(len);
        rest = tail;
        if c.is_full() {
            check(&mut c, &mut out);
        }
        if c.push(pkt) {
            pushed += 1;
        }
    }
    check(&mut c, &mut out);
    assert_eq!(pushed, out);
});

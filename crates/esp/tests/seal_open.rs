//! Sealing and opening ESP packets: known answers, round trips for every algorithm, ESN and mode,
//! tampering, replays, padding and next-header rules, sequence exhaustion and lifetimes.

mod common;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use common::{ipv4_udp, ipv6_tcp, mirror, pair_of_sads, spec, suites};
use std::sync::Arc;
use std::time::Instant;
use tandem_crypto::EncrAlg;
use tandem_esp::esp_packet::{NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE};
use tandem_esp::{
    open, open_transport, seal, seal_in_place, seal_transport, ChildSaPair, CoarseClock, DropReason,
    LifetimeLimits, LifetimeState, Mode, OutboundSa, Sad, SealError,
};

/// Builds an AES-256-GCM ESP packet directly with aws-lc-rs: SPI | seq | IV=seq64 | ct | tag, with
/// `plaintext` already including padding, pad length and next header.
fn gcm_packet(key_material: &[u8], spi: u32, seq: u64, esn: bool, plaintext: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_material[..32]).unwrap());
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&key_material[32..36]);
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    let mut aad = spi.to_be_bytes().to_vec();
    if esn {
        aad.extend_from_slice(&((seq >> 32) as u32).to_be_bytes());
    }
    aad.extend_from_slice(&(seq as u32).to_be_bytes());
    let mut ct = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct).unwrap();
    let mut p = spi.to_be_bytes().to_vec();
    p.extend_from_slice(&(seq as u32).to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ct);
    p
}

fn with_trailer(inner: &[u8], nh: u8) -> Vec<u8> {
    let pad = (4 - (inner.len() + 2) % 4) % 4;
    let mut v = inner.to_vec();
    v.extend((1..=pad).map(|i| i as u8));
    v.push(pad as u8);
    v.push(nh);
    v
}

#[test]
fn aes_gcm_known_answer_built_independently() {
    for esn in [false, true] {
        let sp = spec(EncrAlg::AesGcm16_256, None, esn, Mode::Tunnel);
        let (a, _b) = pair_of_sads(&sp);
        let sa = a.get_outbound(7).unwrap();
        let inner = ipv4_udp(33);
        for seq in 1..=3u64 {
            let mut out = vec![0u8; 2048];
            let n = seal(&sa, &inner, NEXT_HEADER_IPV4, &mut out).unwrap();
            let expect = gcm_packet(&sp.keys_out.encr, 0x2000, seq, esn, &with_trailer(&inner, 4));
            assert_eq!(hex::encode(&out[..n]), hex::encode(&expect), "esn {esn} seq {seq}");
        }
    }
}

#[test]
fn aes_gcm_esp_test_vector_from_draft_mcgrew_gcm_test() {
    // draft-mcgrew-gcm-test-01: AES-128 key feffe992..., salt cafebabe, SPI 0xa5f8, seq 10, IV
    // facedbaddecaf888; the plaintext ends with pad length 0 and next header 1.
    let mut sp = spec(EncrAlg::AesGcm16_128, None, false, Mode::Transport);
    sp.spi_in = 0xa5f8;
    sp.keys_in.encr =
        zeroize::Zeroizing::new(hex::decode("feffe9928665731c6d6a8f9467308308cafebabe").unwrap());
    let sad = Sad::new(Arc::new(CoarseClock::new(Instant::now())));
    sad.install_spec(&sp, Instant::now()).unwrap();
    let mut packet = hex::decode(concat!(
        "0000a5f80000000afacedbaddecaf888",
        "deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c",
        "3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1",
        "83b70d3aa8bc6ee4c309e9d85a41ad4a",
    ))
    .unwrap();
    let o = open(&sad, &mut packet).unwrap();
    assert_eq!((o.spi, o.seq, o.next_header), (0xa5f8, 10, 1));
    assert_eq!(
        hex::encode(&packet[o.payload]),
        concat!(
            "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d00100",
            "00010000000000000373697009637962657263697479",
            "02646b000001000100"
        )[..124]
    );
}

#[test]
fn round_trip_every_algorithm_esn_and_mode() {
    for (encr, integ) in suites() {
        for esn in [false, true] {
            // Tunnel mode, IPv4 and IPv6 inner packets of several sizes.
            let sp = spec(encr, integ, esn, Mode::Tunnel);
            let (a, b) = pair_of_sads(&sp);
            let out_sa = a.get_outbound(7).unwrap();
            for (inner, nh) in [
                (ipv4_udp(0), NEXT_HEADER_IPV4),
                (ipv4_udp(1372), NEXT_HEADER_IPV4),
                (ipv6_tcp(1), NEXT_HEADER_IPV6),
                (ipv6_tcp(1000), NEXT_HEADER_IPV6),
            ] {
                let mut buf = vec![0u8; 2048];
                let n = seal(&out_sa, &inner, nh, &mut buf).unwrap();
                assert_eq!(n, out_sa.sizes().sealed_len(inner.len()));
                assert_eq!(
                    (n - 8 - out_sa.sizes().iv_len - out_sa.sizes().icv_len) % out_sa.sizes().align,
                    0
                );
                let o = open(&b, &mut buf[..n]).unwrap_or_else(|e| panic!("{encr:?} {integ:?} {esn}: {e}"));
                assert_eq!(o.next_header, nh);
                assert_eq!(&buf[o.payload], &inner[..]);
            }
            let inb = b.get_inbound(0x2000).unwrap();
            assert_eq!(inb.counters().snapshot().packets, 4);
            assert_eq!(out_sa.counters().snapshot().packets, 4);

            // Transport mode over whole IP packets.
            let sp = spec(encr, integ, esn, Mode::Transport);
            let (a, b) = pair_of_sads(&sp);
            let out_sa = a.get_outbound(7).unwrap();
            for original in [ipv4_udp(100), ipv6_tcp(77)] {
                let mut buf = vec![0u8; 2048];
                let at = 64;
                buf[at..at + original.len()].copy_from_slice(&original);
                let r = seal_transport(&out_sa, &mut buf, at..at + original.len()).unwrap();
                let v4 = original[0] >> 4 == 4;
                assert_eq!(buf[r.start + if v4 { 9 } else { 6 }], 50, "protocol is ESP");
                assert_eq!(tandem_esp::ip::ip_packet_len(&buf[r.clone()]), Some(r.len()));
                let (o, ip) = open_transport(&b, &mut buf, r).unwrap();
                assert_eq!(&buf[ip], &original[..], "{encr:?} {integ:?} esn {esn}");
                assert_eq!(o.next_header, if v4 { 17 } else { 6 });
            }
        }
    }
}

#[test]
fn tampering_anywhere_is_an_auth_failure() {
    for (encr, integ) in suites() {
        let sp = spec(encr, integ, true, Mode::Tunnel);
        let (a, b) = pair_of_sads(&sp);
        let out_sa = a.get_outbound(7).unwrap();
        let inner = ipv4_udp(64);
        let mut buf = vec![0u8; 512];
        let n = seal(&out_sa, &inner, NEXT_HEADER_IPV4, &mut buf).unwrap();
        let mut failures = 0;
        // Every byte after the SPI: sequence number, IV, ciphertext, ICV.
        for i in 4..n {
            let mut p = buf[..n].to_vec();
            p[i] ^= 0x40;
            let r = open(&b, &mut p);
            assert!(
                matches!(r, Err(DropReason::AuthFailed) | Err(DropReason::ReplayOld)),
                "{encr:?} byte {i}: {r:?}"
            );
            failures += usize::from(r == Err(DropReason::AuthFailed));
        }
        let inb = b.get_inbound(0x2000).unwrap();
        assert_eq!(inb.counters().snapshot().auth_failures, failures as u64);
        assert_eq!(b.global_stats().in_auth_failed, failures as u64);
        assert_eq!(inb.counters().snapshot().packets, 0);
        // The untouched packet still opens: failures did not move the window.
        assert!(open(&b, &mut buf[..n]).is_ok(), "{encr:?}");
    }
}

#[test]
fn replays_are_dropped_and_counted() {
    let sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    let (a, b) = pair_of_sads(&sp);
    let out_sa = a.get_outbound(7).unwrap();
    let inner = ipv4_udp(10);
    let mut packets = Vec::new();
    for _ in 0..100 {
        let mut buf = vec![0u8; 256];
        let n = seal(&out_sa, &inner, NEXT_HEADER_IPV4, &mut buf).unwrap();
        buf.truncate(n);
        packets.push(buf);
    }
    // Out of order within the window: 100 first, then 99 down to 37 (window 64).
    let mut p = packets[99].clone();
    assert!(open(&b, &mut p).is_ok());
    for i in (36..99).rev() {
        let mut p = packets[i].clone();
        assert!(open(&b, &mut p).is_ok(), "seq {}", i + 1);
    }
    let mut p = packets[35].clone();
    assert_eq!(open(&b, &mut p), Err(DropReason::ReplayOld), "seq 36 is below the window");
    for i in [99, 50, 36] {
        let mut p = packets[i].clone();
        assert_eq!(open(&b, &mut p), Err(DropReason::ReplayDuplicate));
    }
    let c = b.get_inbound(0x2000).unwrap().counters().snapshot();
    assert_eq!((c.packets, c.replay_drops), (64, 4));
    assert_eq!(b.global_stats().in_replay, 4);
}

#[test]
fn esn_crosses_the_32_bit_boundary() {
    let sp = spec(EncrAlg::ChaCha20Poly1305, None, true, Mode::Tunnel);
    let (a, b) = pair_of_sads(&sp);
    let out_sa = a.get_outbound(7).unwrap();
    out_sa.set_next_seq((1 << 32) - 3);
    let inner = ipv4_udp(20);
    for k in 0..6u64 {
        let mut buf = vec![0u8; 256];
        let n = seal(&out_sa, &inner, NEXT_HEADER_IPV4, &mut buf).unwrap();
        let o = open(&b, &mut buf[..n]).unwrap();
        assert_eq!(o.seq, (1 << 32) - 3 + k);
    }
}

#[test]
fn sequence_exhaustion_without_esn_stops_sealing() {
    let sp = spec(EncrAlg::AesGcm16_128, None, false, Mode::Tunnel);
    let (a, _b) = pair_of_sads(&sp);
    let out_sa = a.get_outbound(7).unwrap();
    assert_eq!(out_sa.lifetime_state(Instant::now()), LifetimeState::Ok);
    out_sa.set_next_seq(u64::from(u32::MAX));
    assert_eq!(out_sa.lifetime_state(Instant::now()), LifetimeState::Soft, "rekey due before the wrap");
    let mut buf = vec![0u8; 256];
    assert!(seal(&out_sa, &ipv4_udp(1), NEXT_HEADER_IPV4, &mut buf).is_ok());
    assert_eq!(seal(&out_sa, &ipv4_udp(1), NEXT_HEADER_IPV4, &mut buf), Err(SealError::SeqExhausted));
    assert_eq!(out_sa.lifetime_state(Instant::now()), LifetimeState::Hard);
    assert_eq!(out_sa.counters().snapshot().expired_drops, 1);
}

#[test]
fn hard_packet_lifetime_stops_sealing_and_opening() {
    let mut sp = spec(EncrAlg::AesGcm16_128, None, false, Mode::Tunnel);
    sp.lifetime = LifetimeLimits { soft_packets: Some(2), hard_packets: Some(3), ..Default::default() };
    let (a, b) = pair_of_sads(&sp);
    let out_sa = a.get_outbound(7).unwrap();
    let mut sealed = Vec::new();
    for _ in 0..3 {
        let mut buf = vec![0u8; 256];
        let n = seal(&out_sa, &ipv4_udp(1), NEXT_HEADER_IPV4, &mut buf).unwrap();
        sealed.push(buf[..n].to_vec());
    }
    let mut buf = vec![0u8; 256];
    assert_eq!(seal(&out_sa, &ipv4_udp(1), NEXT_HEADER_IPV4, &mut buf), Err(SealError::Expired));
    for p in sealed.iter_mut() {
        assert!(open(&b, p).is_ok());
    }
    let mut extra = sealed[0].clone();
    assert_eq!(open(&b, &mut extra), Err(DropReason::Expired));
}

#[test]
fn dummy_packets_tfc_padding_and_bad_padding() {
    let sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    let sad = Sad::new(Arc::new(CoarseClock::new(Instant::now())));
    sad.install_spec(&mirror(&sp), Instant::now()).unwrap();
    let key = &sp.keys_out.encr;

    // Next header 59: authenticated, marked, dropped, counted.
    let mut p = gcm_packet(key, 0x2000, 1, false, &with_trailer(&[0xaa; 30], NEXT_HEADER_NONE));
    assert_eq!(open(&sad, &mut p), Err(DropReason::Dummy));
    let mut p = gcm_packet(key, 0x2000, 1, false, &with_trailer(&[0xaa; 30], NEXT_HEADER_NONE));
    assert_eq!(open(&sad, &mut p), Err(DropReason::ReplayDuplicate), "dummy packets are marked");

    // TFC padding after the inner packet: the inner IP length rules.
    let inner = ipv4_udp(12);
    let mut padded = inner.clone();
    padded.extend_from_slice(&[0u8; 200]);
    let mut p = gcm_packet(key, 0x2000, 2, false, &with_trailer(&padded, 4));
    let o = open(&sad, &mut p).unwrap();
    assert_eq!(&p[o.payload], &inner[..]);

    // Padding bytes not 1, 2, 3.
    let mut pt = inner.clone();
    pt.extend_from_slice(&[1, 2, 9, 3, 4]);
    let mut p = gcm_packet(key, 0x2000, 3, false, &pt);
    assert_eq!(open(&sad, &mut p), Err(DropReason::BadPadding));
    // Pad length beyond the data.
    let mut p = gcm_packet(key, 0x2000, 4, false, &[200, 4]);
    assert_eq!(open(&sad, &mut p), Err(DropReason::BadPadding));
    // Tunnel mode carries only IPv4/IPv6.
    let mut p = gcm_packet(key, 0x2000, 5, false, &with_trailer(&inner, 17));
    assert_eq!(open(&sad, &mut p), Err(DropReason::BadNextHeader(17)));
    // Inner packet claiming more bytes than it has.
    let mut short = inner.clone();
    short.truncate(30);
    let mut p = gcm_packet(key, 0x2000, 6, false, &with_trailer(&short, 4));
    assert_eq!(open(&sad, &mut p), Err(DropReason::InnerMalformed));

    let c = sad.get_inbound(0x2000).unwrap().counters().snapshot();
    assert_eq!((c.dummy, c.malformed, c.packets, c.replay_drops), (1, 4, 1, 1));
    // Unknown SPI and runt packets.
    let mut p = gcm_packet(key, 0x9999, 1, false, &with_trailer(&inner, 4));
    assert_eq!(open(&sad, &mut p), Err(DropReason::NoSa(0x9999)));
    assert_eq!(open(&sad, &mut [0, 0, 0x20, 0, 0, 0, 0, 1, 2]), Err(DropReason::Malformed));
    assert_eq!(open(&sad, &mut [0, 0]), Err(DropReason::Malformed));
    let g = sad.global_stats();
    assert_eq!((g.in_no_sa, g.in_malformed, g.in_dummy), (1, 6, 1));
}

#[test]
fn inner_packets_outside_the_selectors_are_dropped() {
    let mut sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    sp.local_ts = vec![tandem_wire::TrafficSelector::from_subnet("10.1.0.0".parse().unwrap(), 16).unwrap()];
    sp.remote_ts = vec![tandem_wire::TrafficSelector::from_subnet("10.2.0.0".parse().unwrap(), 16).unwrap()];
    let (a, b) = pair_of_sads(&sp);
    let out_sa = a.get_outbound(7).unwrap();
    let mut buf = vec![0u8; 256];
    let n = seal(&out_sa, &ipv4_udp(5), NEXT_HEADER_IPV4, &mut buf).unwrap();
    assert!(open(&b, &mut buf[..n]).is_ok());
    let mut other = ipv4_udp(5);
    other[12] = 172; // source 172.1.0.1 is not in 10.1.0.0/16
    tandem_esp::ip::fix_ip_header(&mut other, 9, 17);
    let n = seal(&out_sa, &other, NEXT_HEADER_IPV4, &mut buf).unwrap();
    assert_eq!(open(&b, &mut buf[..n]), Err(DropReason::PolicyMismatch));
}

#[test]
fn seal_needs_room() {
    let sp = spec(EncrAlg::AesCbc256, Some(tandem_crypto::IntegAlg::HmacSha256_128), false, Mode::Tunnel);
    let pair = ChildSaPair::new(&sp, &Arc::new(CoarseClock::new(Instant::now()))).unwrap();
    let sa: OutboundSa = pair.outbound;
    let inner = ipv4_udp(30);
    let mut small = vec![0u8; sa.sizes().sealed_len(inner.len()) - 1];
    assert!(matches!(seal(&sa, &inner, 4, &mut small), Err(SealError::BufferTooSmall { .. })));
    let mut buf = vec![0u8; 200];
    buf[10..10 + inner.len()].copy_from_slice(&inner);
    assert!(matches!(
        seal_in_place(&sa, &mut buf, 10..10 + inner.len(), 4),
        Err(SealError::BufferTooSmall { headroom: 24, .. })
    ));
    assert_eq!(sa.counters().snapshot().seal_errors, 2);
}

#[test]
fn aes_cbc_hmac_layout_verified_independently() {
    use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, UnboundCipherKey, AES_256};
    use aws_lc_rs::hmac;
    use aws_lc_rs::iv::FixedLength;
    for esn in [false, true] {
        let sp = spec(EncrAlg::AesCbc256, Some(tandem_crypto::IntegAlg::HmacSha256_128), esn, Mode::Tunnel);
        let (a, _b) = pair_of_sads(&sp);
        let sa = a.get_outbound(7).unwrap();
        sa.set_next_seq(if esn { (5 << 32) + 9 } else { 9 });
        let inner = ipv4_udp(45);
        let mut out = vec![0u8; 512];
        let n = seal(&sa, &inner, NEXT_HEADER_IPV4, &mut out).unwrap();
        let seq = if esn { (5u64 << 32) + 9 } else { 9 };
        let p = &out[..n];
        assert_eq!(&p[..4], &0x2000u32.to_be_bytes());
        assert_eq!(&p[4..8], &(seq as u32).to_be_bytes());
        let (body, icv) = p.split_at(n - 16);
        let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &sp.keys_out.integ));
        mac.update(body);
        if esn {
            mac.update(&((seq >> 32) as u32).to_be_bytes());
        }
        assert_eq!(&mac.sign().as_ref()[..16], icv, "ICV covers SPI..ciphertext and the ESN high half");
        let iv: [u8; 16] = p[8..24].try_into().unwrap();
        let key = DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &sp.keys_out.encr).unwrap()).unwrap();
        let mut ct = p[24..n - 16].to_vec();
        let pt = key.decrypt(&mut ct, DecryptionContext::Iv128(FixedLength::from(iv))).unwrap();
        assert_eq!(pt, &with_trailer_to(&inner, 4, 16)[..]);
    }
}

/// Payload | 1, 2, 3.. | pad length | next header, padded to `align`.
fn with_trailer_to(inner: &[u8], nh: u8, align: usize) -> Vec<u8> {
    let pad = (align - (inner.len() + 2) % align) % align;
    let mut v = inner.to_vec();
    v.extend((1..=pad).map(|i| i as u8));
    v.push(pad as u8);
    v.push(nh);
    v
}

#[test]
fn cbc_ivs_differ_per_packet_and_per_sa() {
    let sp = spec(EncrAlg::AesCbc128, Some(tandem_crypto::IntegAlg::HmacSha1_96), false, Mode::Tunnel);
    let (a, _) = pair_of_sads(&sp);
    let (c, _) = pair_of_sads(&sp);
    let mut ivs = std::collections::HashSet::new();
    for sa in [a.get_outbound(7).unwrap(), c.get_outbound(7).unwrap()] {
        for _ in 0..100 {
            let mut out = vec![0u8; 256];
            seal(&sa, &ipv4_udp(1), NEXT_HEADER_IPV4, &mut out).unwrap();
            assert!(ivs.insert(out[8..24].to_vec()));
        }
    }
}

#[test]
fn cbc_ivs_come_from_the_given_iv_key() {
    // The IKE engine hands every SA an IV key drawn from its injected random source, so that a
    // seeded run seals the same bytes; without one the SA draws from the OS.
    let clock = Arc::new(CoarseClock::new(Instant::now()));
    let sealed = |iv_key: Option<u8>| {
        let mut sp =
            spec(EncrAlg::AesCbc256, Some(tandem_crypto::IntegAlg::HmacSha256_128), false, Mode::Tunnel);
        sp.iv_key = iv_key.map(|b| zeroize::Zeroizing::new(vec![b; 16]));
        let sa = OutboundSa::new(&sp, &clock).unwrap();
        let mut out = vec![0u8; 2048];
        let n = seal(&sa, &ipv4_udp(40), NEXT_HEADER_IPV4, &mut out).unwrap();
        out.truncate(n);
        out
    };
    assert_eq!(sealed(Some(1)), sealed(Some(1)), "same IV key, same packet");
    assert_ne!(sealed(Some(1)), sealed(Some(2)), "another IV key, another IV");
    assert_ne!(sealed(None), sealed(None), "IV keys from the OS differ");
    let mut bad =
        spec(EncrAlg::AesCbc256, Some(tandem_crypto::IntegAlg::HmacSha256_128), false, Mode::Tunnel);
    bad.iv_key = Some(zeroize::Zeroizing::new(vec![0; 15]));
    assert!(OutboundSa::new(&bad, &clock).is_err(), "a malformed IV key is refused");
}

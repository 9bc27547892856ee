//! Helpers shared by the integration tests: SA specs for both ends of a tunnel and sample packets.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Instant;
use tandem_crypto::{EncrAlg, IntegAlg};
use tandem_esp::{ChildSaSpec, CoarseClock, KeyMaterial, LifetimeLimits, Mode, Sad};
use zeroize::Zeroizing;

/// Every algorithm combination the dataplane supports.
pub fn suites() -> Vec<(EncrAlg, Option<IntegAlg>)> {
    let mut v =
        vec![(EncrAlg::AesGcm16_128, None), (EncrAlg::AesGcm16_256, None), (EncrAlg::ChaCha20Poly1305, None)];
    for e in [EncrAlg::AesCbc128, EncrAlg::AesCbc192, EncrAlg::AesCbc256] {
        for i in IntegAlg::ALL {
            v.push((e, Some(i)));
        }
    }
    v
}

fn key(len: usize, seed: u8) -> Zeroizing<Vec<u8>> {
    Zeroizing::new((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect())
}

fn keys(encr: EncrAlg, integ: Option<IntegAlg>, seed: u8) -> KeyMaterial {
    KeyMaterial {
        encr: key(encr.key_material_len(), seed),
        integ: integ.map_or_else(|| Zeroizing::new(Vec::new()), |i| key(i.key_len(), seed ^ 0x55)),
    }
}

/// The spec of side A (inbound SPI 0x1000, outbound 0x2000).
pub fn spec(encr: EncrAlg, integ: Option<IntegAlg>, esn: bool, mode: Mode) -> ChildSaSpec {
    ChildSaSpec {
        name: "vpn1/child1".into(),
        reqid: 7,
        spi_in: 0x1000,
        spi_out: 0x2000,
        encr,
        integ,
        esn,
        mode,
        local: "192.0.2.1:4500".parse().unwrap(),
        remote: "198.51.100.1:4500".parse().unwrap(),
        udp_encap: true,
        replay_window: 64,
        lifetime: LifetimeLimits::default(),
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
        keys_in: keys(encr, integ, 1),
        keys_out: keys(encr, integ, 2),
        replaces_spi_in: None,
        defer_outbound: false,
        iv_key: None,
    }
}

/// The same CHILD SA seen from side B.
pub fn mirror(a: &ChildSaSpec) -> ChildSaSpec {
    ChildSaSpec {
        spi_in: a.spi_out,
        spi_out: a.spi_in,
        local: a.remote,
        remote: a.local,
        local_ts: a.remote_ts.clone(),
        remote_ts: a.local_ts.clone(),
        keys_in: a.keys_out.clone(),
        keys_out: a.keys_in.clone(),
        ..a.clone()
    }
}

/// Two SADs, A and B, each with its side of `spec` installed.
pub fn pair_of_sads(spec_a: &ChildSaSpec) -> (Sad, Sad) {
    let now = Instant::now();
    let a = Sad::new(Arc::new(CoarseClock::new(now)));
    let b = Sad::new(Arc::new(CoarseClock::new(now)));
    a.install_spec(spec_a, now).unwrap();
    b.install_spec(&mirror(spec_a), now).unwrap();
    (a, b)
}

/// A valid IPv4 UDP packet 10.1.0.1:1000 -> 10.2.0.1:2000 with `payload_len` bytes of payload.
pub fn ipv4_udp(payload_len: usize) -> Vec<u8> {
    let total = 28 + payload_len;
    let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&[10, 1, 0, 1, 10, 2, 0, 1]);
    let ul = 8 + payload_len;
    p.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, (ul >> 8) as u8, ul as u8, 0, 0]);
    p.extend((0..payload_len).map(|i| i as u8));
    tandem_esp::ip::fix_ip_header(&mut p, 9, 17);
    p
}

/// A valid IPv6 TCP-ish packet 2001:db8:1::1 -> 2001:db8:2::1 with `payload_len` bytes after 20
/// bytes of TCP header.
pub fn ipv6_tcp(payload_len: usize) -> Vec<u8> {
    let plen = 20 + payload_len;
    let mut p = vec![0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, 6, 64];
    p.extend_from_slice(&"2001:db8:1::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&"2001:db8:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend((0..payload_len).map(|i| (i * 3) as u8));
    p
}

//! Codec tests: a hand-laid IKE_SA_INIT request, malformed inputs, and property round-trips of every
//! payload kind.

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tandem_wire::fragment::{FragmentOutcome, FragmentReassembler};
use tandem_wire::*;

/// An IKE_SA_INIT request laid out byte by byte after RFC 7296 section 3 figures:
/// SA (one proposal, AES-GCM-256 / PRF-HMAC-SHA256 / group 31), KE, Nonce.
fn sa_init_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x0102030405060708u64.to_be_bytes()); // SPIi
    b.extend_from_slice(&0u64.to_be_bytes()); // SPIr
    b.extend_from_slice(&[33, 0x20, 34, 0x08]); // next SA, version 2.0, IKE_SA_INIT, Initiator
    b.extend_from_slice(&0u32.to_be_bytes()); // Message ID
    b.extend_from_slice(&0u32.to_be_bytes()); // length, patched below
                                              // SA payload: header + proposal(8) + 3 transforms (12 + 8 + 8)
    b.extend_from_slice(&[34, 0, 0, 4 + 8 + 12 + 8 + 8]);
    b.extend_from_slice(&[0, 0, 0, 8 + 12 + 8 + 8, 1, 1, 0, 3]);
    b.extend_from_slice(&[3, 0, 0, 12, 1, 0, 0, 20, 0x80, 14, 1, 0]); // ENCR 20, key length 256
    b.extend_from_slice(&[3, 0, 0, 8, 2, 0, 0, 5]); // PRF 5
    b.extend_from_slice(&[0, 0, 0, 8, 4, 0, 0, 31]); // KE 31
                                                     // KE payload: group 31, 32 bytes
    b.extend_from_slice(&[40, 0, 0, 8 + 32, 0, 31, 0, 0]);
    b.extend_from_slice(&[0xaa; 32]);
    // Nonce payload, last
    b.extend_from_slice(&[0, 0, 0, 4 + 32]);
    b.extend_from_slice(&[0xbb; 32]);
    let len = b.len() as u32;
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

#[test]
fn parses_hand_built_sa_init() {
    let bytes = sa_init_bytes();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header.exchange, ExchangeType::IKE_SA_INIT);
    assert!(m.header.is_initiator() && !m.header.is_response());
    let Payload::Sa(props) = &m.payloads[0] else { panic!("not SA") };
    assert_eq!(props[0].transforms[0].key_length(), Some(256));
    assert_eq!(props[0].transforms[2].transform_id, 31);
    assert_eq!(m.payloads[1], Payload::Ke { dh_group: 31, data: vec![0xaa; 32] });
    assert_eq!(m.payloads[2], Payload::Nonce(vec![0xbb; 32]));
    assert_eq!(m.emit(), bytes, "emit reproduces the exact bytes");
}

#[test]
fn rejects_truncation_and_bad_lengths_everywhere() {
    let bytes = sa_init_bytes();
    for cut in 0..bytes.len() {
        assert!(Message::parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = bytes.clone();
    bad[17] = 0x30; // major version 3
    assert_eq!(Message::parse(&bad), Err(WireError::BadVersion(3)));
    let mut bad = bytes.clone();
    bad[28 + 3] = 200; // SA payload longer than the message
    assert!(Message::parse(&bad).is_err());
}

#[test]
fn unknown_payloads_follow_the_critical_bit() {
    let mut m = Message { header: IkeHeader::new(1, 2, ExchangeType::INFORMATIONAL, 0, 5), payloads: vec![] };
    m.payloads.push(Payload::Unknown {
        payload_type: PayloadType(200),
        critical: false,
        data: vec![1, 2, 3],
    });
    let bytes = m.emit();
    assert_eq!(Message::parse(&bytes).unwrap().payloads, m.payloads);
    let mut crit = bytes.clone();
    crit[28 + 1] = 0x80;
    assert_eq!(Message::parse(&crit), Err(WireError::UnsupportedCriticalPayload(PayloadType(200))));
}

#[test]
fn sk_payload_must_be_last_and_carries_first_inner_type() {
    let m = Message {
        header: IkeHeader::new(1, 2, ExchangeType::IKE_AUTH, flags::INITIATOR, 1),
        payloads: vec![Payload::Encrypted(Encrypted { first_inner: PayloadType::IDI, body: vec![9; 40] })],
    };
    let bytes = m.emit();
    assert_eq!(bytes[28], PayloadType::IDI.0, "SK header's next payload is the first inner payload");
    assert_eq!(Message::parse(&bytes).unwrap().payloads, m.payloads);
    let mut extra = bytes.clone();
    extra.extend_from_slice(&[0, 0, 0, 4]);
    let len = extra.len() as u32;
    extra[24..28].copy_from_slice(&len.to_be_bytes());
    assert_eq!(Message::parse(&extra), Err(WireError::SkNotLast));
}

#[test]
fn reassembles_fragments_in_any_order_within_limits() {
    let frag = |n, t, b: u8| EncryptedFragment {
        fragment_number: n,
        total_fragments: t,
        first_inner: if n == 1 { PayloadType::IDI } else { PayloadType::NONE },
        body: vec![b; 10],
    };
    let mut r = FragmentReassembler::new(8, 100);
    assert_eq!(r.add(2, frag(3, 3, 3)), FragmentOutcome::Pending);
    assert_eq!(r.add(2, frag(3, 3, 3)), FragmentOutcome::Ignored);
    assert_eq!(r.add(2, frag(1, 3, 1)), FragmentOutcome::Pending);
    match r.add(2, frag(2, 3, 2)) {
        FragmentOutcome::Complete(v) => {
            assert_eq!(v.iter().map(|f| f.body[0]).collect::<Vec<_>>(), vec![1, 2, 3])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.add(3, frag(1, 9, 1)), FragmentOutcome::Rejected);
    let mut small = FragmentReassembler::new(8, 15);
    assert_eq!(small.add(1, frag(1, 2, 1)), FragmentOutcome::Pending);
    assert_eq!(small.add(1, frag(2, 2, 1)), FragmentOutcome::Rejected);
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_ts() -> impl Strategy<Value = TrafficSelector> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u128>(),
        any::<u32>(),
        any::<u128>(),
    )
        .prop_map(|(v4, ip_protocol, start_port, end_port, a4, a6, b4, b6)| {
            let (start_addr, end_addr) = if v4 {
                (IpAddr::V4(Ipv4Addr::from(a4)), IpAddr::V4(Ipv4Addr::from(b4)))
            } else {
                (IpAddr::V6(Ipv6Addr::from(a6)), IpAddr::V6(Ipv6Addr::from(b6)))
            };
            TrafficSelector { ip_protocol, start_port, end_port, start_addr, end_addr }
        })
}

fn arb_transform() -> impl Strategy<Value = Transform> {
    (
        1u8..6,
        any::<u16>(),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec((1u16..0x7fff, arb_bytes(6)), 0..2),
    )
        .prop_map(|(t, id, kl, tlv)| {
            let mut tr = Transform::new(t, id, kl);
            for (attr_type, value) in tlv {
                if attr_type != Transform::KEY_LENGTH {
                    tr.attributes.push(TransformAttribute { attr_type, tv: false, value });
                }
            }
            tr
        })
}

fn arb_proposal() -> impl Strategy<Value = Proposal> {
    (any::<u8>(), 1u8..4, arb_bytes(9), proptest::collection::vec(arb_transform(), 0..5)).prop_map(
        |(number, p, spi, transforms)| Proposal { number, protocol: ProtocolId(p), spi, transforms },
    )
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        proptest::collection::vec(arb_proposal(), 1..4).prop_map(Payload::Sa),
        (any::<u16>(), arb_bytes(64)).prop_map(|(dh_group, data)| Payload::Ke { dh_group, data }),
        (any::<u8>(), arb_bytes(32))
            .prop_map(|(t, data)| Payload::IdI(Identification { id_type: IdType(t), data })),
        (any::<u8>(), arb_bytes(32))
            .prop_map(|(t, data)| Payload::IdR(Identification { id_type: IdType(t), data })),
        (any::<u8>(), arb_bytes(32)).prop_map(|(encoding, data)| Payload::Cert { encoding, data }),
        (any::<u8>(), arb_bytes(32)).prop_map(|(encoding, data)| Payload::CertReq { encoding, data }),
        (any::<u8>(), arb_bytes(32)).prop_map(|(m, data)| Payload::Auth { method: AuthMethod(m), data }),
        arb_bytes(64).prop_map(Payload::Nonce),
        (any::<u8>(), arb_bytes(8), any::<u16>(), arb_bytes(32)).prop_map(|(p, spi, t, data)| {
            Payload::Notify(Notify { protocol: ProtocolId(p), spi, notify_type: NotifyType(t), data })
        }),
        (any::<u8>(), 1u8..9, 0usize..5).prop_map(|(p, size, n)| Payload::Delete(Delete {
            protocol: ProtocolId(p),
            spi_size: size,
            spis: (0..n).map(|i| vec![i as u8; size as usize]).collect()
        })),
        arb_bytes(32).prop_map(Payload::VendorId),
        proptest::collection::vec(arb_ts(), 0..4).prop_map(Payload::TsI),
        proptest::collection::vec(arb_ts(), 0..4).prop_map(Payload::TsR),
        (any::<u8>(), proptest::collection::vec((0u16..0x7fff, arb_bytes(16)), 0..4)).prop_map(
            |(t, attrs)| Payload::Cp(ConfigPayload {
                cfg_type: CfgType(t),
                attributes: attrs
                    .into_iter()
                    .map(|(attr_type, value)| ConfigAttribute { attr_type, value })
                    .collect()
            })
        ),
        arb_bytes(32).prop_map(Payload::Eap),
        (49u8..53, arb_bytes(16)).prop_map(|(t, data)| Payload::Unknown {
            payload_type: PayloadType(t),
            critical: false,
            data
        }),
    ]
}

fn arb_sk() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (any::<u8>(), arb_bytes(64))
            .prop_map(|(t, body)| Payload::Encrypted(Encrypted { first_inner: PayloadType(t), body })),
        (1u16..10, arb_bytes(64)).prop_map(|(total, body)| Payload::EncryptedFragment(EncryptedFragment {
            fragment_number: total,
            total_fragments: total,
            first_inner: PayloadType::NONE,
            body
        })),
    ]
}

proptest! {
    #[test]
    fn every_payload_round_trips(payloads in proptest::collection::vec(arb_payload(), 0..6), sk in proptest::option::of(arb_sk()),
                                 spi_i in any::<u64>(), spi_r in any::<u64>(), mid in any::<u32>(), fl in any::<u8>()) {
        let mut payloads = payloads;
        if let Some(sk) = sk { payloads.push(sk); }
        let m = Message { header: IkeHeader::new(spi_i, spi_r, ExchangeType::INFORMATIONAL, fl, mid), payloads };
        let bytes = m.emit();
        let parsed = Message::parse(&bytes).unwrap();
        prop_assert_eq!(&parsed.payloads, &m.payloads);
        prop_assert_eq!(parsed.emit(), bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in arb_bytes(300)) {
        let _ = Message::parse(&bytes);
        let _ = parse_payloads(PayloadType::SA, &bytes);
        let _ = parse_payloads(PayloadType::TSI, &bytes);
        let _ = parse_payloads(PayloadType::NOTIFY, &bytes);
    }

    #[test]
    fn mutated_messages_never_panic(idx in 0usize..200, val in any::<u8>(), cut in 0usize..200) {
        let mut b = sa_init_bytes();
        let i = idx % b.len();
        b[i] = val;
        let _ = Message::parse(&b);
        b.truncate(cut.min(b.len()));
        let _ = Message::parse(&b);
    }
}

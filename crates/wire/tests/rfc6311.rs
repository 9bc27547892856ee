//! RFC 6311 notifies: byte vectors laid out after the section 4 figures (generic payload header,
//! Protocol ID 0, SPI size 0, type, data), strict lengths, and property tests.

use proptest::prelude::*;
use tandem_wire::*;

/// A lone Notify payload as it appears inside an SK payload: header, protocol, SPI size, type, data.
fn notify_bytes(ty: u16, protocol: u8, spi: &[u8], data: &[u8]) -> Vec<u8> {
    let len = (4 + 4 + spi.len() + data.len()) as u16;
    let mut b = vec![0, 0];
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&[protocol, spi.len() as u8]);
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(spi);
    b.extend_from_slice(data);
    b
}

fn only_notify(bytes: &[u8]) -> Notify {
    match parse_payloads(PayloadType::NOTIFY, bytes).unwrap().as_slice() {
        [Payload::Notify(n)] => n.clone(),
        other => panic!("not one notify: {other:?}"),
    }
}

#[test]
fn notify_numbers_and_names_are_the_iana_ones() {
    for (t, v, name) in [
        (NotifyType::IKEV2_MESSAGE_ID_SYNC_SUPPORTED, 16420, "IKEV2_MESSAGE_ID_SYNC_SUPPORTED"),
        (NotifyType::IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED, 16421, "IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED"),
        (NotifyType::IKEV2_MESSAGE_ID_SYNC, 16422, "IKEV2_MESSAGE_ID_SYNC"),
        (NotifyType::IPSEC_REPLAY_COUNTER_SYNC, 16423, "IPSEC_REPLAY_COUNTER_SYNC"),
    ] {
        assert_eq!(t.0, v);
        assert_eq!(t.name(), Some(name));
        assert_eq!(NotifyType(v).to_string(), name);
        assert!(!t.is_error(), "status types");
    }
}

#[test]
fn message_id_sync_request_from_the_rfc_layout() {
    // Nonce 0xdeadbeef, M1 = 5 (our next request), P1 = 3 (the peer request we expect next).
    let data = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 5, 0, 0, 0, 3];
    let wire = notify_bytes(16422, 0, &[], &data);
    assert_eq!(wire.len(), 20, "payload length 20 as in section 4.1");
    let n = only_notify(&wire);
    let m = MessageIdSync::from_notify(&n).unwrap();
    assert_eq!(m, MessageIdSync { nonce: 0xdeadbeef, expected_send_req_mid: 5, expected_recv_req_mid: 3 });
    assert_eq!(m.emit(), data);
    let (first, emitted) = emit_payloads(&[Payload::Notify(m.to_notify())]);
    assert_eq!((first, emitted), (PayloadType::NOTIFY, wire));
}

#[test]
fn message_id_sync_takes_exactly_twelve_octets() {
    let data = [1u8; 16];
    for len in 0..MessageIdSync::LEN {
        assert_eq!(
            MessageIdSync::parse(&data[..len]),
            Err(WireError::Truncated("IKEV2_MESSAGE_ID_SYNC data")),
            "{len}"
        );
    }
    assert!(MessageIdSync::parse(&data[..12]).is_ok());
    for len in 13..=16 {
        assert_eq!(
            MessageIdSync::parse(&data[..len]),
            Err(WireError::BadLength("IKEV2_MESSAGE_ID_SYNC data"))
        );
    }
}

#[test]
fn replay_counter_sync_narrow_and_wide_from_the_rfc_layout() {
    let wire = notify_bytes(16423, 0, &[], &[0, 1, 0, 0]);
    let r = ReplayCounterSync::from_notify(&only_notify(&wire)).unwrap();
    assert_eq!((r.delta(), r.is_wide()), (65536, false));
    assert_eq!(emit_payloads(&[Payload::Notify(r.to_notify())]).1, wire);

    let wire = notify_bytes(16423, 0, &[], &[0, 0, 0, 1, 0, 0, 0, 0]);
    let r = ReplayCounterSync::from_notify(&only_notify(&wire)).unwrap();
    assert_eq!((r.delta(), r.is_wide()), (1 << 32, true));
    assert_eq!(emit_payloads(&[Payload::Notify(r.to_notify())]).1, wire);
    // The width survives a round trip even when the value would fit in 32 bits.
    assert_eq!(ReplayCounterSync::wide(1).emit(), [0, 0, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn replay_counter_sync_takes_four_or_eight_octets() {
    let data = [7u8; 12];
    for len in 0..=12 {
        let r = ReplayCounterSync::parse(&data[..len]);
        match len {
            4 | 8 => assert!(r.is_ok(), "{len}"),
            0..=3 => assert_eq!(r, Err(WireError::Truncated("IPSEC_REPLAY_COUNTER_SYNC data"))),
            _ => assert_eq!(r, Err(WireError::BadLength("IPSEC_REPLAY_COUNTER_SYNC data"))),
        }
    }
}

#[test]
fn sync_notifies_must_be_about_the_ike_sa() {
    let data = [0u8; 12];
    // Protocol ESP with a 4-octet SPI: well-formed as a Notify, but not an RFC 6311 one.
    let n = only_notify(&notify_bytes(16422, 3, &[1, 2, 3, 4], &data));
    assert_eq!(MessageIdSync::from_notify(&n), Err(WireError::Invalid("IKEV2_MESSAGE_ID_SYNC notify")));
    let n = only_notify(&notify_bytes(16422, 1, &[], &data));
    assert!(MessageIdSync::from_notify(&n).is_err(), "protocol IKE is not 0 either");
    let n = only_notify(&notify_bytes(16423, 0, &[9], &data[..4]));
    assert_eq!(
        ReplayCounterSync::from_notify(&n),
        Err(WireError::Invalid("IPSEC_REPLAY_COUNTER_SYNC notify"))
    );
    // The wrong type is refused, whatever the data.
    let n = only_notify(&notify_bytes(16423, 0, &[], &data));
    assert!(MessageIdSync::from_notify(&n).is_err());
    let n = only_notify(&notify_bytes(16422, 0, &[], &data[..8]));
    assert!(ReplayCounterSync::from_notify(&n).is_err());
}

proptest! {
    #[test]
    fn message_id_sync_round_trips(nonce in any::<u32>(), send in any::<u32>(), recv in any::<u32>()) {
        let m = MessageIdSync { nonce, expected_send_req_mid: send, expected_recv_req_mid: recv };
        let bytes = m.emit();
        prop_assert_eq!(bytes.len(), MessageIdSync::LEN);
        prop_assert_eq!(MessageIdSync::parse(&bytes), Ok(m));
        prop_assert_eq!(MessageIdSync::from_notify(&m.to_notify()), Ok(m));
    }

    #[test]
    fn replay_counter_sync_round_trips(delta in any::<u64>(), esn in any::<bool>()) {
        match ReplayCounterSync::new(delta, esn) {
            Ok(r) => {
                prop_assert_eq!(r.delta(), delta);
                prop_assert_eq!(r.emit().len(), if esn { 8 } else { 4 });
                prop_assert_eq!(ReplayCounterSync::parse(&r.emit()), Ok(r));
                prop_assert_eq!(ReplayCounterSync::from_notify(&r.to_notify()), Ok(r));
            }
            Err(_) => prop_assert!(!esn && delta > u64::from(u32::MAX)),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_parses_re_emits(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(m) = MessageIdSync::parse(&bytes) {
            prop_assert_eq!(m.emit(), bytes.clone());
        }
        if let Ok(r) = ReplayCounterSync::parse(&bytes) {
            prop_assert_eq!(r.emit(), bytes.clone());
        }
        if let Ok(payloads) = parse_payloads(PayloadType::NOTIFY, &bytes) {
            for p in &payloads {
                if let Payload::Notify(n) = p {
                    let _ = MessageIdSync::from_notify(n);
                    let _ = ReplayCounterSync::from_notify(n);
                }
            }
        }
    }
}

//! RFC 6311 notification data (IKEV2_MESSAGE_ID_SYNC, IPSEC_REPLAY_COUNTER_SYNC) on hostile bytes.
//! The first byte picks the way in: (0) the raw data of either notify, (1) a Notify payload chain
//! as found after decryption, then the typed decoders on every notify in it. Parsing must never
//! panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_wire::{parse_payloads, MessageIdSync, Payload, PayloadType, ReplayCounterSync};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 2 {
        0 => {
            if let Ok(m) = MessageIdSync::parse(rest) {
                assert_eq!(m.emit(), rest);
                assert_eq!(MessageIdSync::from_notify(&m.to_notify()), Ok(m));
            }
            if let Ok(r) = ReplayCounterSync::parse(rest) {
                assert_eq!(r.emit(), rest);
                assert_eq!(ReplayCounterSync::from_notify(&r.to_notify()), Ok(r));
            }
        }
        _ => {
            let Ok(payloads) = parse_payloads(PayloadType::NOTIFY, rest) else { return };
            for p in &payloads {
                let Payload::Notify(n) = p else { continue };
                if let Ok(m) = MessageIdSync::from_notify(n) {
                    assert_eq!(m.emit(), n.data);
                }
                if let Ok(r) = ReplayCounterSync::from_notify(n) {
                    assert_eq!(r.emit(), n.data);
                }
            }
        }
    }
});

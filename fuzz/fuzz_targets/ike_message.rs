//! Whole IKE messages: parsing must never panic, and whatever parses must emit and re-parse to the
//! same payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_wire::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let bytes = m.emit();
        let again = Message::parse(&bytes).expect("emitted message parses");
        assert_eq!(again.payloads, m.payloads);
    }
});

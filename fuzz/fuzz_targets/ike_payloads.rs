//! Payload chains as found inside a decrypted SK payload, starting with any payload type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_wire::{emit_payloads, parse_payloads, PayloadType};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    if let Ok(p) = parse_payloads(PayloadType(first), rest) {
        let (f, bytes) = emit_payloads(&p);
        if !p.is_empty() {
            let again = parse_payloads(f, &bytes).expect("emitted payloads parse");
            assert_eq!(again, p);
        }
    }
});

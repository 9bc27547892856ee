//! The standby's side of the sync link on hostile frames: each input is a sequence of frames
//! (two-byte length, then the frame), every one decoded as a `SyncMsg` and, when it decodes,
//! applied to a standby `Endpoint` through `StandbySync::handle` (snapshots included: their
//! decoder and `Endpoint::mirror` get the hostile bytes too); a gap makes the standby resync, as
//! the daemon's does. Then the standby takes over. Properties: no panic; whatever decodes
//! re-encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use tandem_crypto::SeededRandom;
use tandem_ha::{StandbySync, SyncMsg};
use tandem_ike::{Endpoint, EndpointConfig};

fuzz_target!(|data: &[u8]| {
    let mut ep =
        Endpoint::with_random(EndpointConfig::default(), vec![], vec![], Box::new(SeededRandom::from_u64(7)));
    ep.set_standby();
    let mut sync = StandbySync::new(1000);
    sync.link_up();
    // The fuzzer's clock starts at one real instant; everything after it is simulated.
    let mut now = Instant::now();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let n = (u16::from_be_bytes(*len) as usize).min(tail.len());
        let (frame, tail) = tail.split_at(n);
        rest = tail;
        now += Duration::from_millis(u64::from(n as u8));
        let Ok(m) = SyncMsg::decode(frame) else { continue };
        assert_eq!(SyncMsg::decode(&m.encode()).as_ref(), Ok(&m));
        if sync.handle(now, &mut ep, m).is_err() {
            sync.link_up();
        }
    }
    let _ = sync.take_mirror_changes();
    ep.take_over(now);
    ep.handle_timeout(now + Duration::from_secs(60));
});

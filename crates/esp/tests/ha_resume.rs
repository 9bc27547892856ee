//! HA hooks of the ESP core, through the real seal and open paths: sequence-number lease
//! ceilings (a stall is not an expiry), SAs installed with resume state (sequence number, lease,
//! replay window) before they are published, and the SAD's accessors keyed by inbound SPI.

mod common;

use common::{ipv4_udp, mirror, spec, suites};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_crypto::EncrAlg;
use tandem_esp::esp_packet::NEXT_HEADER_IPV4;
use tandem_esp::{
    open, seal, seal_batch, ChildSaSpec, CoarseClock, DropReason, LifetimeState, Mode, PacketBatch,
    PacketStatus, Resume, Sad, SadEvent, SealError,
};

const SPI_IN: u32 = 0x1000;
const REQID: u32 = 7;

fn sad(t0: Instant) -> Sad {
    Sad::new(Arc::new(CoarseClock::new(t0)))
}

/// The sequence number in the ESP header of a sealed packet (RFC 4303 section 2: SPI, then the
/// low 32 bits of the sequence number).
fn wire_seq(esp: &[u8]) -> u32 {
    u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]])
}

/// Seals one packet on the SA `sad` sends with for `REQID`.
fn seal_one(sad: &Sad) -> Result<Vec<u8>, SealError> {
    let out = sad.get_outbound(REQID).expect("an outbound SA");
    let mut buf = vec![0u8; 256];
    let n = seal(&out, &ipv4_udp(8), NEXT_HEADER_IPV4, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn install_resumed(sad: &Sad, sp: &ChildSaSpec, r: Resume, now: Instant) {
    let results = sad.install_specs_resumed(&[(sp.clone(), r)], now);
    assert_eq!(results, vec![Ok(())]);
}

#[test]
fn an_sa_at_its_lease_ceiling_stalls_is_not_exhausted_and_survives_tick() {
    let t0 = Instant::now();
    let sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    let (active, peer) = (sad(t0), sad(t0));
    install_resumed(&active, &sp, Resume { ceiling: Some(3), ..Resume::default() }, t0);
    peer.install_spec(&mirror(&sp), t0).unwrap();

    for want in 1..=3 {
        let mut p = seal_one(&active).unwrap();
        assert_eq!(open(&peer, &mut p).unwrap().seq, want);
    }
    assert_eq!(seal_one(&active), Err(SealError::LeaseStall));
    let mut batch = PacketBatch::new(4, 256, 64);
    for _ in 0..4 {
        batch.push(&ipv4_udp(8), NEXT_HEADER_IPV4);
    }
    let out = active.get_outbound(REQID).unwrap();
    assert_eq!(seal_batch(&out, &mut batch).failed, 4);
    assert_eq!(batch.meta(0).status, PacketStatus::SealFailed(SealError::LeaseStall));
    let c = out.counters().snapshot();
    assert_eq!((c.packets, c.lease_stalls, c.expired_drops, c.seal_errors), (3, 5, 0, 0));
    assert_eq!(active.seq_lease(SPI_IN), Some((3, 3)), "a stall takes no numbers");
    assert!(!out.seq().is_exhausted() && !out.seq().needs_rekey());
    assert_eq!(out.lifetime_state(t0), LifetimeState::Ok);

    // The SAD neither expires nor rekeys a stalled SA.
    let events = active.tick(t0 + Duration::from_secs(1));
    assert!(events.is_empty(), "{events:?}");
    assert!(active.get_inbound(SPI_IN).is_some() && active.get_outbound(REQID).is_some());

    // The renewal: sealing resumes at exactly the next number, and the peer accepts it.
    assert!(active.set_ceiling(SPI_IN, 10));
    let mut p = seal_one(&active).unwrap();
    assert_eq!(wire_seq(&p), 4);
    assert_eq!(open(&peer, &mut p).unwrap().seq, 4);
    assert_eq!(active.seq_lease(SPI_IN), Some((4, 10)));
    assert!(!active.set_ceiling(0xdead, 10), "unknown SPI");
}

#[test]
fn an_sa_resumed_at_1000_seals_its_first_packet_with_1000() {
    let t0 = Instant::now();
    for (encr, integ) in suites() {
        for esn in [false, true] {
            let sp = spec(encr, integ, esn, Mode::Tunnel);
            let (standby, peer) = (sad(t0), sad(t0));
            install_resumed(&standby, &sp, Resume { next_seq: 1000, ..Resume::default() }, t0);
            peer.install_spec(&mirror(&sp), t0).unwrap();
            let mut p = seal_one(&standby).unwrap();
            assert_eq!(wire_seq(&p), 1000, "{encr:?} {integ:?} esn {esn}");
            assert_eq!(open(&peer, &mut p).unwrap().seq, 1000, "{encr:?} {integ:?} esn {esn}");
            assert_eq!(wire_seq(&seal_one(&standby).unwrap()), 1001);
        }
    }
}

#[test]
fn a_standby_pair_installed_paused_seals_nothing_until_its_lease() {
    let t0 = Instant::now();
    let sp = spec(EncrAlg::ChaCha20Poly1305, None, true, Mode::Tunnel);
    let standby = sad(t0);
    install_resumed(&standby, &sp, Resume { next_seq: 500, ceiling: Some(499), ..Resume::default() }, t0);
    assert_eq!(seal_one(&standby), Err(SealError::LeaseStall));
    assert_eq!(standby.seq_lease(SPI_IN), Some((499, 499)));
    assert!(standby.tick(t0 + Duration::from_secs(1)).is_empty());
    standby.set_ceiling(SPI_IN, 600);
    assert_eq!(wire_seq(&seal_one(&standby).unwrap()), 500);
}

#[test]
fn planned_switchover_freezes_and_resumes_exactly_above() {
    let t0 = Instant::now();
    let sp = spec(EncrAlg::AesGcm16_128, None, false, Mode::Tunnel);
    let (old, new, peer) = (sad(t0), sad(t0), sad(t0));
    old.install_spec(&sp, t0).unwrap();
    peer.install_spec(&mirror(&sp), t0).unwrap();
    for _ in 0..5 {
        open(&peer, &mut seal_one(&old).unwrap()).unwrap();
    }
    let last = old.freeze_seq(SPI_IN).unwrap();
    assert_eq!(last, 5);
    assert_eq!(seal_one(&old), Err(SealError::LeaseStall));
    assert!(old.tick(t0 + Duration::from_secs(1)).is_empty(), "a frozen SA is not expired");
    install_resumed(&new, &sp, Resume { next_seq: last + 1, ..Resume::default() }, t0);
    let mut p = seal_one(&new).unwrap();
    assert_eq!(open(&peer, &mut p).unwrap().seq, 6, "no gap, no reuse");
    assert_eq!(old.freeze_seq(0xdead), None);
}

/// Packets `1..=n` from the peer to side A, sealed.
fn from_peer(peer: &Sad, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| seal_one(peer).unwrap()).collect()
}

#[test]
fn install_with_a_replay_resume_rejects_a_replayed_packet_at_once() {
    let t0 = Instant::now();
    let sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    let (active, peer) = (sad(t0), sad(t0));
    active.install_spec(&sp, t0).unwrap();
    peer.install_spec(&mirror(&sp), t0).unwrap();
    let packets = from_peer(&peer, 10);
    for p in &packets[..6] {
        open(&active, &mut p.clone()).unwrap();
    }
    let mirrored = active.replay_state(SPI_IN).unwrap();
    assert_eq!(mirrored.top, 6);

    let standby = sad(t0);
    install_resumed(&standby, &sp, Resume { replay: Some(mirrored.clone()), ..Resume::default() }, t0);
    for p in &packets[..6] {
        assert_eq!(open(&standby, &mut p.clone()), Err(DropReason::ReplayDuplicate));
    }
    assert_eq!(open(&standby, &mut packets[6].clone()).unwrap().seq, 7);

    // With an advance: numbers the old active may have accepted after its last sync are refused.
    let standby = sad(t0);
    let r = Resume { replay: Some(mirrored), replay_advance: 2, ..Resume::default() };
    install_resumed(&standby, &sp, r, t0);
    for p in &packets[..8] {
        assert_eq!(open(&standby, &mut p.clone()), Err(DropReason::ReplayDuplicate));
    }
    assert_eq!(open(&standby, &mut packets[8].clone()).unwrap().seq, 9);
}

/// RFC 6311 replay counter sync: the new active jumps its window by `delta` over a stale mirror,
/// the peer skips as many outbound numbers; everything the old active may have received alone is
/// refused, and the peer's next packet is accepted.
#[test]
fn replay_counter_sync_jump_refuses_the_old_actives_packets_and_accepts_the_peers_next() {
    let t0 = Instant::now();
    let sp = spec(EncrAlg::AesGcm16_128, None, false, Mode::Tunnel);
    let (old, peer) = (sad(t0), sad(t0));
    old.install_spec(&sp, t0).unwrap();
    peer.install_spec(&mirror(&sp), t0).unwrap();
    let packets = from_peer(&peer, 300);
    for p in &packets[..3] {
        open(&old, &mut p.clone()).unwrap();
    }
    let stale = old.replay_state(SPI_IN).unwrap();
    // The old active runs on alone and receives 297 more: far beyond any estimate's bound.
    for p in &packets[3..] {
        open(&old, &mut p.clone()).unwrap();
    }
    let delta = 1 << 24;
    let new = sad(t0);
    install_resumed(
        &new,
        &sp,
        Resume { replay: Some(stale), replay_advance: delta, ..Resume::default() },
        t0,
    );
    for p in &packets {
        let r = open(&new, &mut p.clone());
        assert!(matches!(r, Err(DropReason::ReplayOld | DropReason::ReplayDuplicate)), "{r:?}");
    }
    // The peer's pair is keyed by its inbound SPI, our outbound one.
    assert_eq!(peer.skip_seq(sp.spi_out, delta), Some(301 + delta));
    let mut next = seal_one(&peer).unwrap();
    assert_eq!(open(&new, &mut next).unwrap().seq, 301 + delta);
    assert_eq!(peer.skip_seq(0xdead, 1), None);
}

#[test]
fn sad_replay_import_is_forward_only() {
    let t0 = Instant::now();
    let sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    let (a, peer) = (sad(t0), sad(t0));
    a.install_spec(&sp, t0).unwrap();
    peer.install_spec(&mirror(&sp), t0).unwrap();
    let packets = from_peer(&peer, 20);
    for p in &packets[..3] {
        open(&a, &mut p.clone()).unwrap();
    }
    let stale = a.replay_state(SPI_IN).unwrap();
    for p in &packets[3..12] {
        open(&a, &mut p.clone()).unwrap();
    }
    // A stale sync message arrives after this node accepted more: nothing reopens.
    assert!(a.import_replay(SPI_IN, &stale));
    assert_eq!(a.replay_state(SPI_IN).unwrap().top, 12);
    for p in &packets[..12] {
        assert_eq!(open(&a, &mut p.clone()), Err(DropReason::ReplayDuplicate));
    }
    // A newer one moves the window up and merges its marks.
    let newer = tandem_esp::ReplayState { window: 64, top: 15, bitmap: vec![0b101] };
    assert!(a.import_replay(SPI_IN, &newer));
    assert_eq!(open(&a, &mut packets[14].clone()), Err(DropReason::ReplayDuplicate), "15 marked");
    assert_eq!(open(&a, &mut packets[12].clone()), Err(DropReason::ReplayDuplicate), "13 marked");
    assert_eq!(open(&a, &mut packets[13].clone()).unwrap().seq, 14, "14 was received by neither");
    assert!(!a.import_replay(0xdead, &newer));
    assert_eq!(a.replay_state(0xdead), None);
}

#[test]
fn installed_events_see_the_resumed_state() {
    // An HA observer (or anything reacting to `Installed`) sees the pair as resumed, never at 1.
    struct Seen(Arc<std::sync::Mutex<Vec<u64>>>);
    impl tandem_esp::SadObserver for Seen {
        fn on_event(&mut self, e: &SadEvent) {
            if let SadEvent::Installed { outbound, .. } = e {
                self.0.lock().unwrap().push(outbound.seq().next_seq());
            }
        }
    }
    let t0 = Instant::now();
    let s = sad(t0);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    s.add_observer(Box::new(Seen(seen.clone())));
    let sp = spec(EncrAlg::AesGcm16_256, None, false, Mode::Tunnel);
    install_resumed(&s, &sp, Resume { next_seq: 77, ..Resume::default() }, t0);
    assert_eq!(*seen.lock().unwrap(), vec![77]);
    assert_eq!(s.seq_lease(SPI_IN), Some((76, u64::from(u32::MAX))));
}

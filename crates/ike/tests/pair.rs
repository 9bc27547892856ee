//! Two endpoints driven in one process with a fake clock: the deterministic harness of the engine.
// One real instant is the origin of the fake clock; everything after it is simulated.
#![allow(clippy::disallowed_methods)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

const A: &str = "10.0.0.1";
const B: &str = "10.0.0.2";

fn ts(s: &str) -> TrafficSelector {
    let (a, p) = s.split_once('/').unwrap();
    TrafficSelector::from_subnet(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn peer(
    name: &str,
    local: &str,
    remote: &str,
    lid: &str,
    rid: &str,
    ike: &str,
    esp: &str,
    lts: &str,
    rts: &str,
) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        local_addr: Some(local.parse().unwrap()),
        remote_addr: Some(remote.parse().unwrap()),
        remote_port: 500,
        local_id: Identity::parse(lid),
        remote_id: Some(Identity::parse(rid)),
        ike_proposals: ike.split(',').map(|p| parse_ike_proposal(p).unwrap()).collect(),
        ike_lifetimes: Lifetimes::default(),
        reauth: false,
        dpd_delay: None,
        dpd_timeout: None,
        dpd_action: DeadPeerAction::Clear,
        force_encap: false,
        initial_contact: true,
        unique: UniquePolicy::default(),
        reqid_per_sa: false,
        childless: Childless::default(),
        children: vec![ChildConfig {
            name: "net".into(),
            local_ts: vec![ts(lts)],
            remote_ts: vec![ts(rts)],
            esp_proposals: esp.split(',').map(|p| parse_esp_proposal(p).unwrap()).collect(),
            mode: IpsecMode::Tunnel,
            lifetimes: Lifetimes::default(),
            start_action: StartAction::None,
            close_action: DeadPeerAction::Clear,
            replay_window: 1024,
        }],
    }
}

fn psk(secret: &str) -> Vec<PreSharedKey> {
    vec![PreSharedKey {
        ids: vec![Identity::parse("a.test"), Identity::parse("b.test")],
        secret: Zeroizing::new(secret.as_bytes().to_vec()),
    }]
}

struct Pair {
    a: Endpoint,
    b: Endpoint,
    now: Instant,
    /// Datagrams dropped so far, and how many more to drop.
    drop_next: usize,
    dropped: usize,
    events_a: Vec<Event>,
    events_b: Vec<Event>,
}

impl Pair {
    fn new(ike: &str, esp: &str, cookie_threshold: usize, ike_b: Option<&str>) -> Pair {
        let cfg = |t| EndpointConfig { cookie_threshold: t, ..EndpointConfig::default() };
        let a = Endpoint::new(
            cfg(100),
            vec![peer("t", A, B, "a.test", "b.test", ike, esp, "10.1.0.0/24", "10.2.0.0/24")],
            psk("secret"),
        );
        let b = Endpoint::new(
            cfg(cookie_threshold),
            vec![peer(
                "t",
                B,
                A,
                "b.test",
                "a.test",
                ike_b.unwrap_or(ike),
                esp,
                "10.2.0.0/16",
                "10.1.0.0/16",
            )],
            psk("secret"),
        );
        Pair { a, b, now: Instant::now(), drop_next: 0, dropped: 0, events_a: vec![], events_b: vec![] }
    }

    /// Move datagrams until both sides are quiet. Returns the number delivered.
    fn run(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..100 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                if self.drop_next > 0 {
                    self.drop_next -= 1;
                    self.dropped += 1;
                    continue;
                }
                n += 1;
                self.b.handle_datagram(self.now, t.remote, t.local, &t.data);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                if self.drop_next > 0 {
                    self.drop_next -= 1;
                    self.dropped += 1;
                    continue;
                }
                n += 1;
                self.a.handle_datagram(self.now, t.remote, t.local, &t.data);
            }
            while let Some(e) = self.a.poll_event() {
                self.events_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.events_b.push(e);
            }
            if !moved {
                break;
            }
        }
        n
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.run();
    }
}

fn installs(events: &[Event]) -> Vec<ChildSaInstall> {
    events
        .iter()
        .filter_map(|e| if let Event::ChildSaUp(c) = e { Some((**c).clone()) } else { None })
        .collect()
}

fn assert_matching_child(p: &Pair) {
    let a = installs(&p.events_a);
    let b = installs(&p.events_b);
    let (a, b) = (a.last().expect("child up on a"), b.last().expect("child up on b"));
    assert_eq!(a.spi_in, b.spi_out);
    assert_eq!(a.spi_out, b.spi_in);
    assert_eq!(*a.keys_out.encr_key, *b.keys_in.encr_key);
    assert_eq!(*a.keys_in.encr_key, *b.keys_out.encr_key);
    assert_eq!(*a.keys_out.integ_key, *b.keys_in.integ_key);
    assert_eq!(a.local_ts, b.remote_ts);
    assert_eq!(a.local_ts, vec![ts("10.1.0.0/24")], "narrowed to the initiator's smaller subnet");
}

fn establish(p: &mut Pair) {
    p.a.initiate(p.now, "t").unwrap();
    p.run();
    assert_eq!(p.a.ike_sas()[0].state, IkeSaState::Established);
    assert_eq!(p.b.ike_sas()[0].state, IkeSaState::Established);
    assert_eq!(p.a.ike_sas()[0].spi_r, p.b.ike_sas()[0].spi_r);
}

#[test]
fn handshake_for_every_acceptance_suite() {
    for (ike, esp) in [
        ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
        ("aes128-sha256-modp2048", "aes128-sha256"),
        ("aes256-sha384-ecp384", "aes256-sha384"),
        ("chacha20poly1305-prfsha256-curve25519", "chacha20poly1305"),
    ] {
        let mut p = Pair::new(ike, esp, 100, None);
        establish(&mut p);
        assert_matching_child(&p);
        assert_eq!(p.b.child_sas()[0].vpn, "t");
    }
}

#[test]
fn wrong_psk_fails_authentication() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    p.b = Endpoint::new(
        EndpointConfig::default(),
        vec![peer(
            "t",
            B,
            A,
            "b.test",
            "a.test",
            "aes256gcm16-prfsha256-x25519",
            "aes256gcm16",
            "10.2.0.0/16",
            "10.1.0.0/16",
        )],
        psk("other"),
    );
    p.a.initiate(p.now, "t").unwrap();
    p.run();
    assert!(installs(&p.events_a).is_empty());
    assert!(p.events_b.iter().any(|e| matches!(e, Event::Failure { .. })));
    assert!(p.a.ike_sas().is_empty(), "initiator removes the failed SA");
}

#[test]
fn invalid_ke_payload_is_recovered() {
    // a offers x25519 first then ecp256; b only accepts ecp256.
    let mut p = Pair::new(
        "aes256gcm16-prfsha256-x25519-ecp256",
        "aes256gcm16",
        100,
        Some("aes256gcm16-prfsha256-ecp256"),
    );
    establish(&mut p);
    assert_eq!(p.a.ike_sas()[0].dh, Some(tandem_crypto::DhGroup::Ecp256));
}

#[test]
fn cookie_is_demanded_and_answered() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 0, None);
    establish(&mut p);
    assert_eq!(p.b.stats().cookies_sent, 1);
}

#[test]
fn lost_response_is_retransmitted_and_answered_from_cache() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    p.a.initiate(p.now, "t").unwrap();
    // Deliver IKE_SA_INIT both ways, then drop the IKE_AUTH request once.
    let t = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, t.remote, t.local, &t.data);
    let t = p.b.poll_transmit().unwrap();
    p.a.handle_datagram(p.now, t.remote, t.local, &t.data);
    let auth = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, auth.remote, auth.local, &auth.data);
    let lost_response = p.b.poll_transmit().unwrap();
    assert!(p.a.poll_timeout().is_some());
    p.advance(Duration::from_secs(4));
    assert_eq!(p.b.stats().retransmits_answered, 1);
    assert_eq!(p.a.ike_sas()[0].state, IkeSaState::Established);
    // The cached response is byte-identical to the lost one: feeding the lost one now is a duplicate.
    p.a.handle_datagram(p.now, lost_response.remote, lost_response.local, &lost_response.data);
    assert!(p.a.stats().bad_message_id >= 1);
}

#[test]
fn gives_up_when_the_peer_never_answers() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    p.a.initiate(p.now, "t").unwrap();
    p.drop_next = usize::MAX;
    for _ in 0..20 {
        p.advance(Duration::from_secs(30));
    }
    assert!(p.a.ike_sas().is_empty());
    assert!(p.events_a.iter().any(|e| matches!(e, Event::Failure { .. })));
}

#[test]
fn delete_from_initiator_tears_down_both() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    establish(&mut p);
    let id = p.a.ike_sas()[0].id;
    p.a.terminate_ike_sa(p.now, id).unwrap();
    p.run();
    assert!(p.a.ike_sas().is_empty());
    assert!(p.b.ike_sas().is_empty());
    assert!(p
        .events_b
        .iter()
        .any(|e| matches!(e, Event::ChildSaDown { reason: DownReason::PeerDelete, .. })));
}

#[test]
fn a_retransmitted_delete_of_a_removed_ike_sa_is_answered() {
    // The peer's answer to our Delete is lost (or, as with charon's redundant IKE SA after a lost
    // rekey collision, arrives before it can match it); its retransmission must find an answer
    // although the SA is gone, or the initiator keeps its half for minutes.
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    establish(&mut p);
    let id = p.a.ike_sas()[0].id;
    p.a.terminate_ike_sa(p.now, id).unwrap();
    let delete = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, delete.remote, delete.local, &delete.data);
    let answer = p.b.poll_transmit().expect("b answers the Delete");
    assert!(p.b.ike_sas().is_empty(), "b removed the IKE SA");
    let answered = p.b.stats().retransmits_answered;
    p.b.handle_datagram(p.now + Duration::from_secs(2), delete.remote, delete.local, &delete.data);
    let again = p.b.poll_transmit().expect("the retransmitted Delete is answered");
    assert_eq!(again.data, answer.data, "with the same response");
    assert_eq!(p.b.stats().retransmits_answered, answered + 1);
    p.a.handle_datagram(p.now, again.remote, again.local, &again.data);
    assert!(p.a.ike_sas().is_empty(), "and a completes its Delete");
    // Not from another address, and not for ever.
    let elsewhere: std::net::SocketAddr = "192.0.2.99:500".parse().unwrap();
    p.b.handle_datagram(p.now, delete.remote, elsewhere, &delete.data);
    assert!(p.b.poll_transmit().is_none());
    p.b.handle_datagram(p.now + Duration::from_secs(181), delete.remote, delete.local, &delete.data);
    assert!(p.b.poll_transmit().is_none());
}

#[test]
fn child_delete_from_responder() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    establish(&mut p);
    let spi = p.b.child_sas()[0].spi_in;
    p.b.terminate_child_sa(p.now, spi).unwrap();
    p.run();
    assert!(p.a.child_sas().is_empty());
    assert!(p.b.child_sas().is_empty());
    assert_eq!(p.a.ike_sas().len(), 1);
}

#[test]
fn child_rekey_with_and_without_pfs() {
    for esp in ["aes256gcm16", "aes256gcm16-x25519"] {
        let mut p = Pair::new("aes256gcm16-prfsha256-x25519", esp, 100, None);
        establish(&mut p);
        let old = p.a.child_sas()[0].spi_in;
        p.a.rekey_child_sa(p.now, old).unwrap();
        p.run();
        let a = p.a.child_sas();
        assert_eq!(a.len(), 1, "old child deleted after rekey ({esp})");
        assert_ne!(a[0].spi_in, old);
        assert_eq!(p.b.child_sas().len(), 1);
        assert_eq!(installs(&p.events_a).last().unwrap().replaces_spi_in, Some(old));
        assert_matching_child(&p);
    }
}

#[test]
fn ike_rekey_by_either_side_keeps_children() {
    for by_a in [true, false] {
        let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
        establish(&mut p);
        let old = p.a.ike_sas()[0].id;
        if by_a {
            p.a.rekey_ike_sa(p.now, old).unwrap();
        } else {
            let id = p.b.ike_sas()[0].id;
            p.b.rekey_ike_sa(p.now, id).unwrap();
        }
        p.run();
        let (a, b) = (p.a.ike_sas(), p.b.ike_sas());
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_ne!(a[0].id, old);
        assert_eq!((a[0].spi_i, a[0].spi_r), (b[0].spi_i, b[0].spi_r));
        assert_eq!(a[0].child_sas, 1);
        // The rekeyed SA works: a CHILD rekey over it succeeds.
        let spi = p.a.child_sas()[0].spi_in;
        p.a.rekey_child_sa(p.now, spi).unwrap();
        p.run();
        assert_ne!(p.b.child_sas()[0].spi_out, spi);
        assert!(!p.events_a.iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
    }
}

#[test]
fn invalid_spi_notify_replaces_the_child() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    establish(&mut p);
    let dead = p.a.child_sas()[0].spi_out;
    let remote: IpAddr = A.parse().unwrap();
    p.b.report_invalid_spi(p.now, remote, dead);
    p.run();
    let a = p.a.child_sas();
    assert_eq!(a.len(), 1);
    assert_ne!(a[0].spi_out, dead, "re-established with new SPIs");
    assert!(p
        .events_a
        .iter()
        .any(|e| matches!(e, Event::ChildSaDown { reason: DownReason::InvalidSpi, .. })));
}

#[test]
fn dead_peer_detected_by_liveness_checks() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    p.a = Endpoint::new(
        EndpointConfig::default(),
        vec![PeerConfig {
            dpd_delay: Some(Duration::from_secs(5)),
            ..peer(
                "t",
                A,
                B,
                "a.test",
                "b.test",
                "aes256gcm16-prfsha256-x25519",
                "aes256gcm16",
                "10.1.0.0/24",
                "10.2.0.0/24",
            )
        }],
        psk("secret"),
    );
    establish(&mut p);
    p.drop_next = usize::MAX;
    let mut waited = Duration::ZERO;
    while !p.a.ike_sas().is_empty() && waited < Duration::from_secs(600) {
        p.advance(Duration::from_secs(1));
        waited += Duration::from_secs(1);
    }
    assert!(p.a.ike_sas().is_empty(), "declared dead");
    assert!(p.events_a.iter().any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::PeerDead, .. })));
}

#[test]
fn garbage_does_not_disturb_an_established_sa() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    establish(&mut p);
    let from: SocketAddr = "10.0.0.1:500".parse().unwrap();
    let to: SocketAddr = "10.0.0.2:500".parse().unwrap();
    let mut seed = 0x1234_5678u32;
    for i in 0..2000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (seed % 300) as usize;
        let mut d: Vec<u8> = (0..len).map(|j| (seed >> (j % 24)) as u8).collect();
        if i % 2 == 0 && d.len() >= 28 {
            // Make it look like IKE for the SA under test.
            let spi = p.b.ike_sas()[0].spi_i;
            d[..8].copy_from_slice(&spi.to_be_bytes());
            d[17] = 0x20;
        }
        p.b.handle_datagram(p.now, to, from, &d);
    }
    assert_eq!(p.b.ike_sas()[0].state, IkeSaState::Established);
    let spi = p.a.child_sas()[0].spi_in;
    p.a.rekey_child_sa(p.now, spi).unwrap();
    p.run();
    assert_eq!(p.b.child_sas().len(), 1);
}

#[test]
fn simultaneous_child_rekey_leaves_one_child_sa() {
    for _ in 0..8 {
        let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
        establish(&mut p);
        let old_a = p.a.child_sas()[0].spi_in;
        let old_b = p.b.child_sas()[0].spi_in;
        p.a.rekey_child_sa(p.now, old_a).unwrap();
        p.b.rekey_child_sa(p.now, old_b).unwrap();
        p.run();
        let (a, b) = (p.a.child_sas(), p.b.child_sas());
        assert_eq!((a.len(), b.len()), (1, 1), "{a:?}\n{b:?}");
        assert_eq!(a[0].spi_in, b[0].spi_out);
        assert_eq!(a[0].spi_out, b[0].spi_in);
        assert_ne!(a[0].spi_in, old_a);
    }
}

#[test]
fn simultaneous_ike_rekey_leaves_one_ike_sa() {
    for _ in 0..8 {
        let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
        establish(&mut p);
        let (ida, idb) = (p.a.ike_sas()[0].id, p.b.ike_sas()[0].id);
        p.a.rekey_ike_sa(p.now, ida).unwrap();
        p.b.rekey_ike_sa(p.now, idb).unwrap();
        p.run();
        let (a, b) = (p.a.ike_sas(), p.b.ike_sas());
        assert_eq!((a.len(), b.len()), (1, 1), "{a:?}\n{b:?}");
        assert_eq!((a[0].spi_i, a[0].spi_r), (b[0].spi_i, b[0].spi_r));
        assert_eq!((a[0].child_sas, b[0].child_sas), (1, 1));
        assert!(!p
            .events_a
            .iter()
            .chain(&p.events_b)
            .any(|e| matches!(e, Event::IkeSaDown { .. } | Event::ChildSaDown { .. })));
        // The survivor works.
        let spi = p.a.child_sas()[0].spi_in;
        p.a.rekey_child_sa(p.now, spi).unwrap();
        p.run();
        assert_eq!(p.b.child_sas().len(), 1);
        assert_ne!(p.b.child_sas()[0].spi_out, spi);
    }
}

#[test]
fn fragmented_messages_are_reassembled() {
    for size in [140usize, 160, 200] {
        let mut p = Pair::new("aes128-sha256-modp2048", "aes128-sha256", 100, None);
        let cfg = EndpointConfig { fragment_size: size, ..EndpointConfig::default() };
        p.a = Endpoint::new(
            cfg.clone(),
            vec![peer(
                "t",
                A,
                B,
                "a.test",
                "b.test",
                "aes128-sha256-modp2048",
                "aes128-sha256",
                "10.1.0.0/24",
                "10.2.0.0/24",
            )],
            psk("secret"),
        );
        p.b = Endpoint::new(
            cfg,
            vec![peer(
                "t",
                B,
                A,
                "b.test",
                "a.test",
                "aes128-sha256-modp2048",
                "aes128-sha256",
                "10.2.0.0/16",
                "10.1.0.0/16",
            )],
            psk("secret"),
        );
        p.a.initiate(p.now, "t").unwrap();
        // Capture the IKE_AUTH request to check it really went out in fragments no larger than `size`.
        let t = p.a.poll_transmit().unwrap();
        p.b.handle_datagram(p.now, t.remote, t.local, &t.data);
        let t = p.b.poll_transmit().unwrap();
        p.a.handle_datagram(p.now, t.remote, t.local, &t.data);
        let mut frags = Vec::new();
        while let Some(t) = p.a.poll_transmit() {
            frags.push(t);
        }
        assert!(frags.len() > 1, "IKE_AUTH fragmented at {size}");
        assert!(
            frags.iter().all(|t| t.data.len() <= size),
            "{:?}",
            frags.iter().map(|t| t.data.len()).collect::<Vec<_>>()
        );
        // Deliver out of order, with a duplicate.
        frags.reverse();
        let dup = frags[0].clone();
        frags.push(dup);
        for t in frags {
            p.b.handle_datagram(p.now, t.remote, t.local, &t.data);
        }
        p.run();
        assert_matching_child(&p);
        let spi = p.a.child_sas()[0].spi_in;
        p.b.rekey_child_sa(p.now, p.b.child_sas()[0].spi_in).unwrap();
        p.run();
        assert_ne!(p.a.child_sas()[0].spi_in, spi);
    }
}

#[test]
fn liveness_checks_come_dpd_delay_after_the_last_message() {
    // dpd-delay 2 s and a peer that answers every check: 12 s of silence must see one check per
    // 2 s after each answer, not one per 4 s (the timer used to re-arm from the previous check).
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    let mut cfg = peer(
        "t",
        A,
        B,
        "a.test",
        "b.test",
        "aes256gcm16-prfsha256-x25519",
        "aes256gcm16",
        "10.1.0.0/24",
        "10.2.0.0/24",
    );
    cfg.dpd_delay = Some(Duration::from_secs(2));
    p.a = Endpoint::new(EndpointConfig::default(), vec![cfg], psk("secret"));
    establish(&mut p);
    let mut delivered = 0;
    for _ in 0..120 {
        // Timers fire, then the answers come back 50 ms later (a round trip).
        p.now += Duration::from_millis(50);
        p.a.handle_timeout(p.now);
        p.b.handle_timeout(p.now);
        p.now += Duration::from_millis(50);
        delivered += p.run();
    }
    // Each check is a request and its response: 6 checks in 12 s (5 when a boundary falls late).
    let checks = delivered / 2;
    assert!((5..=6).contains(&checks), "{checks} liveness checks in 12 s with dpd-delay 2 s");
}

#[test]
fn a_half_open_sa_expires_at_the_deadline_poll_timeout_reports() {
    // poll_timeout reported the half-open expiry, but handle_timeout only visited SAs with a
    // deadline of their own: the daemon woke up at the same instant forever.
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    p.a.initiate(p.now, "t").unwrap();
    let init = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, init.remote, init.local, &init.data);
    while p.b.poll_transmit().is_some() {}
    assert_eq!(p.b.ike_sas().len(), 1);
    let due = p.b.poll_timeout().expect("half-open expiry is a deadline");
    p.b.handle_timeout(due);
    assert!(p.b.ike_sas().is_empty(), "dropped at its deadline");
    assert!(p.b.poll_timeout().is_none_or(|t| t > due), "the deadline moved on");
}

#[test]
fn ike_sa_init_announces_childless_support_both_ways() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16", 100, None);
    p.a.initiate(p.now, "t").unwrap();
    let req = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, req.remote, req.local, &req.data);
    let resp = p.b.poll_transmit().unwrap();
    for bytes in [&req.data, &resp.data] {
        let m = tandem_wire::Message::parse(bytes).unwrap();
        assert!(m.payloads.iter().any(|x| matches!(x, tandem_wire::Payload::Notify(n)
            if n.notify_type == tandem_wire::NotifyType::CHILDLESS_IKEV2_SUPPORTED)));
    }
}

/// Bring both ends' request Message IDs level (A has used 0 and 1 for IKE_SA_INIT and IKE_AUTH):
/// B rekeys the CHILD SA once, a CREATE_CHILD_SA and an INFORMATIONAL of its own.
fn level_message_ids(p: &mut Pair) {
    let spi = p.b.child_sas()[0].spi_in;
    p.b.rekey_child_sa(p.now, spi).unwrap();
    p.run();
    assert_eq!(p.b.child_sas().len(), 1);
}

/// strongSwan drops a message whose Message ID equals the one it is processing on that IKE SA,
/// request or response. Both ends rekey at once with equal IDs; A's response to B's request
/// reaches B while B is busy with A's request and is lost. A sends it again when B's response
/// arrives, so B finishes at once instead of after a retransmission timeout.
#[test]
fn a_response_lost_to_crossed_message_ids_is_sent_again() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519", 100, None);
    establish(&mut p);
    level_message_ids(&mut p);
    let (old_a, old_b) = (p.a.child_sas()[0].spi_in, p.b.child_sas()[0].spi_in);
    p.a.rekey_child_sa(p.now, old_a).unwrap();
    p.b.rekey_child_sa(p.now, old_b).unwrap();
    let a_req = p.a.poll_transmit().expect("A's request");
    let b_req = p.b.poll_transmit().expect("B's request");
    // B's request reaches A first; A's answer is lost (B is busy with A's request).
    p.a.handle_datagram(p.now, b_req.remote, b_req.local, &b_req.data);
    assert!(p.a.poll_transmit().is_some(), "A answers B's request");
    assert!(p.a.poll_transmit().is_none());
    p.b.handle_datagram(p.now, a_req.remote, a_req.local, &a_req.data);
    let b_resp = p.b.poll_transmit().expect("B answers A's request");
    assert!(p.b.poll_transmit().is_none());
    // B's response makes A send its lost response again at once: B, still busy for a moment,
    // loses that too (charon does, at times); the second resend, CROSSED_ECHO_DELAY later,
    // completes B's rekey long before B's retransmission timeout.
    p.a.handle_datagram(p.now, b_resp.remote, b_resp.local, &b_resp.data);
    assert_eq!(p.a.stats().crossed_responses_resent, 1);
    assert!(p.a.poll_transmit().is_some(), "the immediate resend (lost)");
    p.run();
    assert!(!p.b.is_idle(), "B still waits for A's response");
    p.advance(tandem_ike::reliability::CROSSED_ECHO_DELAY);
    assert_eq!(p.a.stats().crossed_responses_resent, 2);
    let (a, b) = (p.a.child_sas(), p.b.child_sas());
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?}\n{b:?}");
    assert_eq!((a[0].spi_in, a[0].spi_out), (b[0].spi_out, b[0].spi_in));
    assert!(a[0].spi_in != old_a && b[0].spi_in != old_b, "rekeyed");
    assert!(p.a.is_idle() && p.b.is_idle(), "no exchange left waiting for a retransmission");
}

/// The other order: A answers B's request N and sends its own request N right after; B, busy with
/// A's response, drops the request. A retransmits it early instead of after its full timeout.
#[test]
fn a_request_lost_to_crossed_message_ids_is_retransmitted_early() {
    let mut p = Pair::new("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519", 100, None);
    establish(&mut p);
    level_message_ids(&mut p);
    let old_b = p.b.child_sas()[0].spi_in;
    p.b.rekey_child_sa(p.now, old_b).unwrap();
    let b_req = p.b.poll_transmit().expect("B's request");
    p.a.handle_datagram(p.now, b_req.remote, b_req.local, &b_req.data);
    let a_resp = p.a.poll_transmit().expect("A's response");
    // A's own request (an INVALID_SPI report) starts a moment later with the same Message ID;
    // B drops it.
    p.now += Duration::from_millis(1);
    p.a.report_invalid_spi(p.now, B.parse().unwrap(), 0x0bad_5e1f);
    let lost = p.a.poll_transmit().expect("A's request");
    assert!(p.a.poll_transmit().is_none());
    drop(lost);
    p.b.handle_datagram(p.now, a_resp.remote, a_resp.local, &a_resp.data);
    p.run();
    assert!(!p.a.is_idle(), "A's request is unanswered");
    p.advance(tandem_ike::reliability::CROSSED_RETRANSMIT);
    p.run();
    assert!(p.a.is_idle() && p.b.is_idle(), "answered after the early retransmission");
    assert_eq!(p.b.stats().bad_message_id, 0);
}

const SUITE: &str = "aes256gcm16-prfsha256-x25519";

fn a_peer() -> PeerConfig {
    peer("t", A, B, "a.test", "b.test", SUITE, "aes256gcm16", "10.1.0.0/24", "10.2.0.0/24")
}

fn b_peer() -> PeerConfig {
    peer("t", B, A, "b.test", "a.test", SUITE, "aes256gcm16", "10.2.0.0/16", "10.1.0.0/16")
}

/// Establish, then let `a` restart without INITIAL_CONTACT and authenticate again, with `b`
/// applying `unique`.
fn restart_without_initial_contact(unique: UniquePolicy) -> Pair {
    let mut p = Pair::new(SUITE, "aes256gcm16", 100, None);
    p.b.set_peers(p.now, vec![PeerConfig { unique, ..b_peer() }], psk("secret"));
    establish(&mut p);
    p.a = Endpoint::new(
        EndpointConfig::default(),
        vec![PeerConfig { initial_contact: false, ..a_peer() }],
        psk("secret"),
    );
    p.events_a.clear();
    p.a.initiate(p.now, "t").unwrap();
    p.run();
    p
}

#[test]
fn unique_replace_leaves_only_the_newer_ike_sa_of_a_restarted_peer() {
    let mut p = restart_without_initial_contact(UniquePolicy::Replace);
    let (ia, ib) = (p.a.ike_sas(), p.b.ike_sas());
    assert_eq!(ia.len(), 1);
    assert_eq!(ia[0].state, IkeSaState::Established);
    let live: Vec<_> = ib.iter().filter(|s| s.state == IkeSaState::Established).collect();
    assert_eq!(live.len(), 1, "one established IKE SA on b: {ib:?}");
    assert_eq!((live[0].spi_i, live[0].spi_r), (ia[0].spi_i, ia[0].spi_r), "the new one");
    let (ca, cb) = (p.a.child_sas(), p.b.child_sas());
    assert_eq!(cb.len(), 1, "the older CHILD SA went with it: {cb:?}");
    assert_eq!((cb[0].spi_in, cb[0].spi_out), (ca[0].spi_out, ca[0].spi_in));
    assert!(p.events_b.iter().any(|e| matches!(e, Event::ChildSaDown { reason: DownReason::Duplicate, .. })));
    // The restarted peer never answers the Delete of the old SA: retransmissions end it.
    for _ in 0..10 {
        p.advance(Duration::from_secs(30));
    }
    assert_eq!(p.b.ike_sas().len(), 1);
    assert_eq!(p.b.child_sas().len(), 1);
}

#[test]
fn unique_keep_refuses_the_newer_ike_sa() {
    let p = restart_without_initial_contact(UniquePolicy::Keep);
    assert!(p.a.ike_sas().is_empty(), "the restarted peer was refused: {:?}", p.a.ike_sas());
    assert!(p.events_a.iter().any(|e| matches!(e, Event::Failure { .. })));
    assert_eq!(p.b.ike_sas().len(), 1, "b keeps the older IKE SA");
    assert_eq!(p.b.child_sas().len(), 1);
}

#[test]
fn unique_never_allows_duplicates() {
    let p = restart_without_initial_contact(UniquePolicy::Never);
    assert_eq!(p.b.ike_sas().len(), 2);
    assert_eq!(p.b.child_sas().len(), 2);
}

#[test]
fn a_refused_child_sa_with_start_action_start_is_asked_for_again_with_backoff() {
    let mut p = Pair::new(SUITE, "aes256gcm16", 100, None);
    let start = |mut c: PeerConfig| {
        c.children[0].start_action = StartAction::Start;
        c
    };
    // b does not accept a's selectors yet: the CHILD SA of IKE_AUTH is refused.
    let mut narrow = b_peer();
    narrow.children[0].remote_ts = vec![ts("10.9.0.0/16")];
    p.a.set_peers(p.now, vec![start(a_peer())], psk("secret"));
    p.b.set_peers(p.now, vec![narrow], psk("secret"));
    p.run();
    assert_eq!(p.a.ike_sas().len(), 1, "the IKE SA stands, childless");
    assert!(p.a.child_sas().is_empty());
    let refusals = |p: &Pair| {
        p.events_a
            .iter()
            .filter(|e| matches!(e, Event::Failure { message, .. } if message.contains("refused")))
            .count()
    };
    assert_eq!(refusals(&p), 1);
    // Still refused: asked again within the first backoff (at most 5 s), then again later.
    p.advance(Duration::from_secs(5));
    assert_eq!(refusals(&p), 2, "asked again within 5 s");
    p.advance(Duration::from_secs(4));
    assert_eq!(refusals(&p), 2, "the second wait is longer (5-10 s)");
    // The operator fixes b; the next attempt succeeds.
    p.b.set_peers(p.now, vec![b_peer()], psk("secret"));
    for _ in 0..12 {
        p.advance(Duration::from_secs(1));
    }
    assert_eq!(p.a.child_sas().len(), 1, "the CHILD SA came up on a retry");
    assert_eq!(p.b.child_sas().len(), 1);
    let n = refusals(&p);
    for _ in 0..10 {
        p.advance(Duration::from_secs(60));
    }
    assert_eq!(refusals(&p), n, "no more attempts once it is up");
    assert_eq!(p.a.child_sas().len(), 1);
}

#[test]
fn a_start_vpn_whose_ike_sa_never_came_up_is_initiated_again_with_backoff() {
    // Every datagram is lost for a while (b unreachable): with start-action `start`, a gives up
    // on that IKE SA like any other, then initiates again, and the tunnel comes up once b answers.
    let mut p = Pair::new(SUITE, "aes256gcm16", 100, None);
    let mut a = a_peer();
    a.children[0].start_action = StartAction::Start;
    p.a.set_peers(p.now, vec![a], psk("secret"));
    p.drop_next = usize::MAX;
    p.a.start_configured(p.now);
    p.run();
    let failures = |p: &Pair| p.events_a.iter().filter(|e| matches!(e, Event::Failure { .. })).count();
    let mut secs = 0;
    while failures(&p) == 0 && secs < 120 {
        p.advance(Duration::from_secs(1));
        secs += 1;
    }
    assert_eq!(failures(&p), 1, "the first IKE SA failed after {secs} s");
    assert!(p.a.ike_sas().is_empty());
    // b is back: a new attempt comes within the first backoff (at most 5 s).
    p.drop_next = 0;
    for _ in 0..5 {
        p.advance(Duration::from_secs(1));
    }
    assert_eq!(p.a.ike_sas().first().map(|s| s.state), Some(IkeSaState::Established));
    assert_eq!(p.a.child_sas().len(), 1);
    assert_matching_child(&p);

    // Without start-action `start` a failed initiation stays failed (the operator asked once).
    let mut q = Pair::new(SUITE, "aes256gcm16", 100, None);
    q.drop_next = usize::MAX;
    q.a.initiate(q.now, "t").unwrap();
    q.run();
    for _ in 0..120 {
        q.advance(Duration::from_secs(1));
    }
    assert_eq!(failures(&q), 1);
    q.drop_next = 0;
    for _ in 0..400 {
        q.advance(Duration::from_secs(1));
    }
    assert!(q.a.ike_sas().is_empty(), "{:?}", q.a.ike_sas());
}

/// Move datagrams between two endpoints until both are quiet.
fn exchange(x: &mut Endpoint, y: &mut Endpoint, now: Instant) {
    for _ in 0..100 {
        let mut moved = false;
        while let Some(t) = x.poll_transmit() {
            moved = true;
            y.handle_datagram(now, t.remote, t.local, &t.data);
        }
        while let Some(t) = y.poll_transmit() {
            moved = true;
            x.handle_datagram(now, t.remote, t.local, &t.data);
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_vpn_serving_any_peer_gives_each_child_sa_its_own_reqid() {
    // One %any vpn on b, two road warriors with their own subnets: sharing the configuration's
    // reqid would send both peers' traffic on whichever outbound SA came last.
    let now = Instant::now();
    let mut any = b_peer();
    any.remote_addr = None;
    any.remote_id = None;
    any.reqid_per_sa = true;
    any.children[0].remote_ts = vec![ts("10.0.0.0/8")];
    let psks = || {
        vec![PreSharedKey {
            ids: vec![Identity::parse("a.test"), Identity::parse("c.test"), Identity::parse("b.test")],
            secret: Zeroizing::new(b"secret".to_vec()),
        }]
    };
    let mut b = Endpoint::new(EndpointConfig::default(), vec![any], psks());
    let client = |addr: &str, id: &str, subnet: &str| {
        let p = peer("t", addr, B, id, "b.test", SUITE, "aes256gcm16", subnet, "10.2.0.0/16");
        Endpoint::new(EndpointConfig::default(), vec![p], psks())
    };
    let mut a = client(A, "a.test", "10.1.0.0/24");
    let mut c = client("10.0.0.3", "c.test", "10.3.0.0/24");
    a.initiate(now, "t").unwrap();
    exchange(&mut a, &mut b, now);
    c.initiate(now, "t").unwrap();
    exchange(&mut c, &mut b, now);
    let children = b.child_sas();
    assert_eq!(children.len(), 2, "{children:?}");
    assert_ne!(children[0].reqid, children[1].reqid, "one reqid per CHILD SA");
    let of = |b: &Endpoint, subnet: &str| {
        b.child_sas().into_iter().find(|ch| ch.remote_ts == vec![ts(subnet)]).map(|ch| (ch.reqid, ch.spi_in))
    };
    let (reqid_a, spi_a) = of(&b, "10.1.0.0/24").unwrap();
    // A rekey keeps the reqid.
    b.rekey_child_sa(now, spi_a).unwrap();
    exchange(&mut a, &mut b, now);
    let (after, spi_after) = of(&b, "10.1.0.0/24").unwrap();
    assert_ne!(spi_after, spi_a, "rekeyed");
    assert_eq!(after, reqid_a, "a rekey keeps its reqid");
    // Deleting it frees its reqid but never hands it straight to the next peer.
    b.terminate_child_sa(now, spi_after).unwrap();
    exchange(&mut a, &mut b, now);
    assert!(of(&b, "10.1.0.0/24").is_none());
    let mut d = client("10.0.0.4", "a.test", "10.4.0.0/24");
    d.initiate(now, "t").unwrap();
    exchange(&mut d, &mut b, now);
    let (reqid_d, _) = of(&b, "10.4.0.0/24").unwrap();
    assert_ne!(reqid_d, reqid_a);
    assert!(b.child_sas().iter().all(|ch| ch.reqid != reqid_a));
}

#[test]
fn childless_initiation_creates_every_child_sa_with_create_child_sa() {
    // The CHILD SA of IKE_AUTH never has its own DH exchange; one made by CREATE_CHILD_SA with a
    // PFS proposal does: that tells where it was made.
    let esp = "aes256gcm16-x25519";
    for (mode, expect_pfs) in [(Childless::Allow, false), (Childless::Prefer, true), (Childless::Force, true)]
    {
        let mut p = Pair::new(SUITE, esp, 100, None);
        let mut a = peer("t", A, B, "a.test", "b.test", SUITE, esp, "10.1.0.0/24", "10.2.0.0/24");
        a.childless = mode;
        p.a.set_peers(p.now, vec![a], psk("secret"));
        establish(&mut p);
        let (ca, cb) = (p.a.child_sas(), p.b.child_sas());
        assert_eq!((ca.len(), cb.len()), (1, 1), "{mode:?}");
        assert_eq!((cb[0].spi_in, cb[0].spi_out), (ca[0].spi_out, ca[0].spi_in));
        assert_eq!(ca[0].dh.is_some(), expect_pfs, "{mode:?}: {:?}", ca[0]);
    }
}

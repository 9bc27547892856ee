//! End-to-end tests: two dataplanes in two network namespaces joined by a veth, manually keyed SAs
//! (mirrored keys), traffic through the TUNs. Need root; see `common::require_root`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem_dataplane::tandem_esp::sa::{Mode, Resume};
use tandem_dataplane::{DataplaneConfig, DataplaneEvent, WorkerLayout};

fn natt(ip: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 4500)
}

/// Policy-based tunnels between 172.16.1.0/24 (behind a) and 172.16.2.0/24 (behind b).
fn setup_inner(ns: &NsPair) {
    ns.ip(&ns.a, "addr add 172.16.1.1/32 dev tnd0");
    ns.ip(&ns.a, "route add 172.16.2.0/24 dev tnd0 src 172.16.1.1");
    ns.ip(&ns.b, "addr add 172.16.2.1/32 dev tnd0");
    ns.ip(&ns.b, "route add 172.16.1.0/24 dev tnd0 src 172.16.2.1");
}

fn with_layout(mut c: DataplaneConfig, workers: WorkerLayout) -> DataplaneConfig {
    c.workers = workers;
    c
}

fn params(encr: EncrAlg, integ: Option<IntegAlg>, esn: bool, udp_encap: bool) -> SaParams {
    SaParams {
        encr,
        integ,
        esn,
        mode: Mode::Tunnel,
        udp_encap,
        reqid: 1,
        spi_ab: 0x0000_a0b1,
        spi_ba: 0x0000_b0a1,
        ts_a: vec![subnet("172.16.1.0/24")],
        ts_b: vec![subnet("172.16.2.0/24")],
    }
}

fn only_esp(frames: &[String], udp: bool) {
    assert!(!frames.is_empty(), "the capture saw nothing");
    let esp = frames.iter().filter(|f| f.ends_with(":esp") && f.contains(":udp:") == udp).count();
    for f in frames {
        assert!(
            // ESP, NAT keepalives ("udpencap" without ESP), ARP and IPv6 neighbour discovery.
            f.ends_with(":esp") || f.ends_with(":udpencap") || f.contains(":arp") || f.contains("icmpv6"),
            "non-ESP frame on the wire: {f}"
        );
        assert!(!f.contains(":icmp") || f.contains("icmpv6"), "clear ICMP on the wire: {f}");
    }
    assert!(esp >= 6, "expected ESP frames, saw {frames:?}");
}

#[test]
fn udp_encap_gcm_ping_and_wire_is_esp_only() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("udp", 71);
    // Both worker layouts, one on each side (the raw ESP test swaps them).
    let (ha, _ra) = start(&ns.a, with_layout(config("tnd0", natt(ns.addr_a)), WorkerLayout::Split));
    let (hb, _rb) = start(&ns.b, with_layout(config("tnd0", natt(ns.addr_b)), WorkerLayout::Combined));
    setup_inner(&ns);
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, 1, "172.16.2.0/24", "172.16.1.0/24"));
    let (sa_a, sa_b) =
        sa_pair(&params(EncrAlg::AesGcm16_256, None, false, true), natt(ns.addr_a), natt(ns.addr_b));
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();

    let cap = Capture::start(&ns.b, "vb", "udp");
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 4));
    if let Some(cap) = cap {
        only_esp(&cap.stop(), true);
    }
    let (ca, cb) = (ha.counters(), hb.counters());
    assert!(ca.esp_tx_packets >= 4 && ca.esp_rx_ok >= 4, "{ca:?}");
    assert!(cb.esp_rx_ok >= 4 && cb.esp_tx_packets >= 4, "{cb:?}");
    assert_eq!(ca.drop_open_error + cb.drop_open_error, 0);
    let sas = ha.list_sas();
    assert_eq!(sas.len(), 2);
    assert!(sas.iter().all(|s| s.counters.packets >= 4), "{sas:?}");
    ha.shutdown();
    hb.shutdown();
}

#[test]
fn raw_esp_cbc_sha256_esn_ipv4_and_ipv6_inner() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("raw", 72);
    let (ha, _ra) = start(&ns.a, with_layout(config("tnd0", natt(ns.addr_a)), WorkerLayout::Combined));
    let (hb, _rb) = start(&ns.b, with_layout(config("tnd0", natt(ns.addr_b)), WorkerLayout::Split));
    setup_inner(&ns);
    ns.ip(&ns.a, "addr add fd99:1::1/128 dev tnd0 nodad");
    ns.ip(&ns.a, "route add fd99:2::/64 dev tnd0");
    ns.ip(&ns.b, "addr add fd99:2::1/128 dev tnd0 nodad");
    ns.ip(&ns.b, "route add fd99:1::/64 dev tnd0");
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    ha.add_policy(protect(2, 1, "fd99:1::/64", "fd99:2::/64"));
    hb.add_policy(protect(1, 1, "172.16.2.0/24", "172.16.1.0/24"));
    hb.add_policy(protect(2, 1, "fd99:2::/64", "fd99:1::/64"));
    let mut p = params(EncrAlg::AesCbc256, Some(IntegAlg::HmacSha256_128), true, false);
    p.ts_a.push(subnet("fd99:1::/64"));
    p.ts_b.push(subnet("fd99:2::/64"));
    let (sa_a, sa_b) = sa_pair(&p, SocketAddr::new(ns.addr_a, 0), SocketAddr::new(ns.addr_b, 0));
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();

    let cap = Capture::start(&ns.b, "vb", "raw");
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 3));
    assert!(ping(&ns, &ns.a, "fd99:1::1", "fd99:2::1", 3));
    if let Some(cap) = cap {
        only_esp(&cap.stop(), false);
    }
    let (ca, cb) = (ha.counters(), hb.counters());
    assert!(ca.esp_rx_ok >= 6 && cb.esp_rx_ok >= 6, "{ca:?} {cb:?}");
}

#[test]
fn trap_policy_acquires_queues_and_flushes() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("trap", 73);
    let (ha, mut ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    setup_inner(&ns);
    ha.add_policy(protect(1, 7, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, 7, "172.16.2.0/24", "172.16.1.0/24"));
    // No SA yet: the first packet makes an Acquire and waits in the queue.
    let o = ns.exec(&ns.a, &["ping", "-c", "1", "-W", "1", "-I", "172.16.1.1", "172.16.2.1"]);
    assert!(!o.status.success());
    let ev = wait_event(&mut ra, Duration::from_secs(3), |e| matches!(e, DataplaneEvent::Acquire { .. }))
        .expect("an Acquire");
    let DataplaneEvent::Acquire { reqid, packet } = ev else { unreachable!() };
    assert_eq!(reqid, 7);
    assert_eq!(packet.dst, "172.16.2.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(packet.protocol, 1);
    assert!(ha.counters().trap_queued >= 1);

    let mut p = params(EncrAlg::ChaCha20Poly1305, None, false, true);
    p.reqid = 7;
    let (sa_a, sa_b) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
    hb.install_sa(&sa_b).unwrap();
    ha.install_sa(&sa_a).unwrap();
    // The queued echo request goes out once the SA exists, and b answers it.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while ha.counters().trap_flushed == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ha.counters().trap_flushed >= 1, "{:?}", ha.counters());
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 2));
    assert!(hb.counters().esp_rx_ok >= 3, "flushed packet + 2 pings: {:?}", hb.counters());
}

#[test]
fn nat_t_socket_demux_ike_keepalive_and_invalid_spi() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("demux", 74);
    let (ha, mut ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, mut rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    // IKE from a's NAT-T socket: b gets it without the marker, with exact addresses.
    ha.send_ike(natt(ns.addr_a), natt(ns.addr_b), b"ike-message").unwrap();
    let ev = wait_event(&mut rb, Duration::from_secs(3), |e| matches!(e, DataplaneEvent::IkeDatagram { .. }));
    assert_eq!(
        ev,
        Some(DataplaneEvent::IkeDatagram {
            local: natt(ns.addr_b),
            remote: natt(ns.addr_a),
            data: b"ike-message".to_vec()
        })
    );
    // ESP for an SPI b does not know: counted and reported once per interval.
    let (sa_a, _) =
        sa_pair(&params(EncrAlg::AesGcm16_128, None, false, true), natt(ns.addr_a), natt(ns.addr_b));
    ha.install_sa(&sa_a).unwrap();
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    ns.ip(&ns.a, "addr add 172.16.1.1/32 dev tnd0");
    ns.ip(&ns.a, "route add 172.16.2.0/24 dev tnd0 src 172.16.1.1");
    let _ = ns.exec(&ns.a, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "172.16.1.1", "172.16.2.1"]);
    let ev = wait_event(&mut rb, Duration::from_secs(3), |e| matches!(e, DataplaneEvent::InvalidSpi { .. }));
    assert_eq!(ev, Some(DataplaneEvent::InvalidSpi { spi: sa_a.spi_out, remote: ns.addr_a }));
    assert!(hb.counters().drop_unknown_spi >= 3);
    let (reports, drops) = (hb.counters().invalid_spi_reports, hb.counters().drop_unknown_spi);
    assert!(reports >= 1 && reports < drops, "rate-limited: {reports} reports for {drops} packets");
    // NAT keepalives: a's SA is UDP-encapsulated and idle for the 1 s interval used here.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hb.counters().nat_keepalive_rx == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ha.counters().nat_keepalive_tx >= 1 && hb.counters().nat_keepalive_rx >= 1);
    // a saw no IKE (nothing was sent to it) and no unknown SPI.
    assert!(wait_event(&mut ra, Duration::from_millis(10), |e| !matches!(e, DataplaneEvent::Acquire { .. }))
        .is_none());
}

#[test]
fn route_based_interface_carries_whatever_is_routed_into_it() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("route", 75);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    let tun = |n: &str| tandem_dataplane::TunConfig::new(n);
    in_netns(&ns.a, || ha.add_interface(&tun("tnd-vpn1"), 9)).unwrap();
    in_netns(&ns.b, || hb.add_interface(&tun("tnd-vpn1"), 9)).unwrap();
    ns.ip(&ns.a, "addr add 192.168.50.1/32 dev tnd-vpn1");
    ns.ip(&ns.a, "route add 192.168.60.0/24 dev tnd-vpn1 src 192.168.50.1");
    ns.ip(&ns.b, "addr add 192.168.60.1/32 dev tnd-vpn1");
    ns.ip(&ns.b, "route add 192.168.50.0/24 dev tnd-vpn1 src 192.168.60.1");
    let mut p = params(EncrAlg::AesGcm16_256, None, true, true);
    p.reqid = 9;
    p.ts_a = vec![subnet("0.0.0.0/0"), subnet("::/0")];
    p.ts_b = p.ts_a.clone();
    let (sa_a, sa_b) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();
    // No policy at all: the interface binding is the policy.
    assert!(ping(&ns, &ns.a, "192.168.50.1", "192.168.60.1", 3));
    assert_eq!(ha.interfaces().len(), 2);
    assert!(ha.counters().esp_rx_ok >= 3);
    assert!(ha.remove_interface("tnd-vpn1"));
    assert!(!ha.remove_interface("tnd-vpn1"));
}

#[test]
fn wrong_keys_fail_authentication_and_count() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("auth", 76);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    setup_inner(&ns);
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    let p = params(EncrAlg::AesGcm16_256, None, false, true);
    let (sa_a, mut sa_b) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
    sa_b.keys_in.encr[0] ^= 1;
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();
    assert!(!ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 2));
    assert!(hb.counters().drop_open_error >= 2);
    assert!(hb.esp_stats().in_auth_failed >= 2);
    assert_eq!(hb.counters().tun_tx_packets, 0);
}

#[test]
fn inner_packets_outside_the_sa_selectors_are_dropped() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("sel", 77);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    setup_inner(&ns);
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    let mut p = params(EncrAlg::AesGcm16_128, None, false, true);
    let (sa_a, _) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
    // b's SA only admits 172.16.9.0/24 as the peer's side (RFC 4301 section 5.2 inbound check).
    p.ts_a = vec![subnet("172.16.9.0/24")];
    let (_, sa_b) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();
    assert!(!ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 2));
    assert!(hb.counters().drop_inbound_policy >= 2, "{:?}", hb.counters());
    assert!(hb.esp_stats().in_policy_mismatch >= 2);
    assert_eq!(hb.counters().tun_tx_packets, 0);
}

#[test]
fn transport_mode_between_the_hosts() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("trans", 78);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    // Host-to-host ICMP goes through the TUN (policy routing by protocol), while ESP itself
    // leaves by the veth.
    for (n, me, peer) in [(&ns.a, ns.addr_a, ns.addr_b), (&ns.b, ns.addr_b, ns.addr_a)] {
        ns.ip(n, &format!("route add default dev tnd0 src {me} table 100"));
        ns.ip(n, &format!("rule add to {peer} ipproto icmp lookup 100"));
    }
    let host = |a: std::net::IpAddr| subnet(&format!("{a}/32"));
    for (h, me, peer) in [(&ha, ns.addr_a, ns.addr_b), (&hb, ns.addr_b, ns.addr_a)] {
        h.add_policy(protect(1, 3, &format!("{me}/32"), &format!("{peer}/32")));
    }
    let mut p = params(EncrAlg::AesGcm16_256, None, false, false);
    p.mode = Mode::Transport;
    p.reqid = 3;
    p.ts_a = vec![host(ns.addr_a)];
    p.ts_b = vec![host(ns.addr_b)];
    let (sa_a, sa_b) = sa_pair(&p, SocketAddr::new(ns.addr_a, 0), SocketAddr::new(ns.addr_b, 0));
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();
    let cap = Capture::start(&ns.b, "vb", "trans");
    assert!(ping(&ns, &ns.a, &ns.addr_a.to_string(), &ns.addr_b.to_string(), 3));
    if let Some(cap) = cap {
        only_esp(&cap.stop(), false);
    }
    assert!(ha.counters().esp_rx_ok >= 3 && hb.counters().esp_rx_ok >= 3);
}

#[test]
fn an_ike_datagram_flood_does_not_drop_a_soft_limit_event() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("flood", 79);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    // Room for 4 IKE datagrams: the flood below fills it, and b's control plane reads nothing.
    let mut cfg_b = config("tnd0", natt(ns.addr_b));
    cfg_b.event_capacity = 4;
    let (hb, mut rb) = start(&ns.b, cfg_b);
    setup_inner(&ns);
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, 1, "172.16.2.0/24", "172.16.1.0/24"));
    let (sa_a, mut sa_b) =
        sa_pair(&params(EncrAlg::AesGcm16_128, None, false, true), natt(ns.addr_a), natt(ns.addr_b));
    sa_b.lifetime.soft_packets = Some(3);
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();

    let flood = |n: u32| {
        for i in 0..n {
            let _ = ha.send_ike(natt(ns.addr_a), natt(ns.addr_b), &i.to_be_bytes());
        }
    };
    flood(2000);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hb.counters().drop_events < 1000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(hb.counters().drop_events >= 1000, "the datagram channel is full: {:?}", hb.counters());
    // The soft limit is reached while the flood goes on.
    std::thread::scope(|s| {
        s.spawn(|| flood(20_000));
        assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 4));
    });
    let ev = wait_event(&mut rb, Duration::from_secs(3), |e| matches!(e, DataplaneEvent::SoftLimit { .. }));
    assert_eq!(ev, Some(DataplaneEvent::SoftLimit { reqid: 1, spi_in: sa_b.spi_in, spi_out: sa_b.spi_out }));
    let c = hb.counters();
    assert!(c.drop_events >= 10_000 && c.ike_rx >= c.drop_events, "{c:?}");
    ha.shutdown();
    hb.shutdown();
}

#[test]
fn thousands_of_sas_installed_at_once_carry_traffic() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("bulk", 80);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    setup_inner(&ns);
    const N: u32 = 3000;
    // SA i has reqid i + 1 and SPIs 0x10000 + i (a to b) and 0x20000 + i (b to a).
    let (mut side_a, mut side_b) = (Vec::new(), Vec::new());
    for i in 0..N {
        let mut p = params(EncrAlg::AesGcm16_128, None, false, true);
        (p.reqid, p.spi_ab, p.spi_ba) = (i + 1, 0x1_0000 + i, 0x2_0000 + i);
        let (a, b) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
        side_a.push(a);
        side_b.push(b);
    }
    side_a.push(side_a[7].clone()); // its inbound SPI is taken by then
    let results = ha.install_sas(&side_a);
    assert_eq!(results.len(), N as usize + 1);
    assert!(results[..N as usize].iter().all(Result::is_ok));
    assert!(results[N as usize].is_err());
    assert!(hb.install_sas(&side_b).iter().all(Result::is_ok));
    assert_eq!(ha.list_sas().len(), 2 * N as usize);
    // Traffic on one SA from the middle of the batch.
    let reqid = 1234;
    ha.add_policy(protect(1, reqid, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, reqid, "172.16.2.0/24", "172.16.1.0/24"));
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 3));
    let used: Vec<_> = ha.list_sas().into_iter().filter(|s| s.counters.packets > 0).collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(used.iter().all(|s| s.reqid == reqid), "{used:?}");
    ha.shutdown();
    hb.shutdown();
}

/// HA takeover: an SA installed with resume state seals the packets a trap policy queued
/// before it existed from the resumed number, never from 1 (the old active used 1.. with the
/// same key).
#[test]
fn a_resumed_sa_seals_trap_queued_packets_from_the_resumed_number() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("resume", 82);
    let (ha, mut ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    setup_inner(&ns);
    ha.add_policy(protect(1, 7, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, 7, "172.16.2.0/24", "172.16.1.0/24"));
    let o = ns.exec(&ns.a, &["ping", "-c", "1", "-W", "1", "-I", "172.16.1.1", "172.16.2.1"]);
    assert!(!o.status.success());
    assert!(wait_event(&mut ra, Duration::from_secs(3), |e| matches!(e, DataplaneEvent::Acquire { .. }))
        .is_some());
    let mut p = params(EncrAlg::AesGcm16_256, None, false, true);
    p.reqid = 7;
    let (sa_a, sa_b) = sa_pair(&p, natt(ns.addr_a), natt(ns.addr_b));
    hb.install_sa(&sa_b).unwrap();
    ha.install_sa_resumed(&sa_a, &Resume { next_seq: 1000, ..Resume::default() }).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while hb.counters().esp_rx_ok == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ha.counters().trap_flushed >= 1, "{:?}", ha.counters());
    // What b received, from its replay window: 1000 and nothing below it.
    let st = hb.replay_state(sa_b.spi_in).unwrap();
    let received: Vec<u64> = (0..u64::from(st.window).min(st.top))
        .filter(|&i| st.bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0)
        .map(|i| st.top - i)
        .collect();
    assert_eq!(received.iter().min(), Some(&1000), "received {received:?}");
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 2));
    let (last, ceiling) = ha.seq_lease(sa_a.spi_in).unwrap();
    assert_eq!((last, ceiling), (hb.replay_state(sa_b.spi_in).unwrap().top, u64::from(u32::MAX)));
    assert!(last >= 1002);
    ha.shutdown();
    hb.shutdown();
}

/// HA: an SA at its lease ceiling drops and counts (not as seal errors), stays installed past
/// the SAD's timer, and carries traffic again once the lease is renewed.
#[test]
fn a_lease_stall_drops_and_counts_until_the_lease_is_renewed() {
    if !require_root() {
        return;
    }
    let ns = NsPair::new("lease", 83);
    let (ha, _ra) = start(&ns.a, config("tnd0", natt(ns.addr_a)));
    let (hb, _rb) = start(&ns.b, config("tnd0", natt(ns.addr_b)));
    setup_inner(&ns);
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, 1, "172.16.2.0/24", "172.16.1.0/24"));
    let (sa_a, sa_b) =
        sa_pair(&params(EncrAlg::AesGcm16_128, None, false, true), natt(ns.addr_a), natt(ns.addr_b));
    ha.install_sa_resumed(&sa_a, &Resume { ceiling: Some(2), ..Resume::default() }).unwrap();
    hb.install_sa(&sa_b).unwrap();
    // Four echo requests: two fit under the ceiling, two stall.
    let _ = ns.exec(&ns.a, &["ping", "-c", "4", "-i", "0.2", "-W", "1", "-I", "172.16.1.1", "172.16.2.1"]);
    let c = ha.counters();
    assert_eq!((c.drop_lease_stall, c.drop_seal_error), (2, 0), "{c:?}");
    assert_eq!(ha.seq_lease(sa_a.spi_in), Some((2, 2)));
    // Past at least one SAD tick (the timer thread's): a stall is not an expiry.
    std::thread::sleep(Duration::from_millis(1200));
    let out = ha.list_sas().into_iter().find(|s| s.spi == sa_a.spi_out).expect("still installed");
    assert_eq!(out.state, tandem_dataplane::tandem_esp::SaState::Mature);
    assert_eq!((out.counters.packets, out.counters.lease_stalls, out.counters.expired_drops), (2, 2, 0));
    assert_eq!(hb.replay_state(sa_b.spi_in).unwrap().top, 2);
    assert!(ha.set_ceiling(sa_a.spi_in, 1000));
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 2));
    assert_eq!(hb.replay_state(sa_b.spi_in).unwrap().top, 4, "resumed at exactly 3");
    ha.shutdown();
    hb.shutdown();
}

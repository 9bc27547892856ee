//! Bulk sync cost for N established tunnels (issue 10, "bulk sync time for 10,000 SAs"): the
//! active encodes a snapshot of every IKE SA and the protocol frames them (`start_bulk`), the
//! standby decodes every frame and mirrors every SA into its table (`StandbySync::handle`), in one
//! process. The QUIC transfer between the nodes is not in it (crates/ha-link measures the link).
//!
//! `cargo run --release -p tandem-ha --example bulk_sync [count]`
// The example measures elapsed time: it reads the clock.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal};
use tandem_ha::{ActiveSync, BulkSa, StandbySync, SyncMsg};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// One vpn per initiator, or the responder's `%any` vpn (no remote address).
fn vpn(name: String, local: &str, remote: Option<&str>, id: String) -> PeerConfig {
    let any = TrafficSelector::any_v4();
    let mut c = ChildConfig {
        name: "c".into(),
        local_ts: vec![any],
        remote_ts: vec![any],
        esp_proposals: vec![parse_esp_proposal("aes256gcm16").unwrap()],
        mode: IpsecMode::Tunnel,
        lifetimes: Lifetimes::default(),
        start_action: StartAction::None,
        close_action: DeadPeerAction::Clear,
        replay_window: 1024,
    };
    c.lifetimes.rekey_time = Some(Duration::from_secs(3600));
    PeerConfig {
        name,
        local_addr: Some(local.parse().unwrap()),
        remote_addr: remote.map(|r| r.parse().unwrap()),
        remote_port: 500,
        local_id: Identity::Fqdn(id),
        remote_id: None,
        ike_proposals: vec![parse_ike_proposal("aes256gcm16-prfsha256-x25519").unwrap()],
        ike_lifetimes: Lifetimes::default(),
        reauth: false,
        dpd_delay: None,
        dpd_timeout: None,
        dpd_action: DeadPeerAction::Clear,
        force_encap: false,
        initial_contact: false,
        unique: UniquePolicy::default(),
        reqid_per_sa: remote.is_none(),
        childless: Childless::default(),
        children: vec![c],
    }
}

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let psk = || vec![PreSharedKey { ids: vec![], secret: Zeroizing::new(b"bulk".to_vec()) }];
    let config = EndpointConfig { cookie_threshold: usize::MAX, ..EndpointConfig::default() };
    let (ia, ra): (SocketAddr, SocketAddr) =
        ("10.0.0.1:500".parse().unwrap(), "10.0.0.2:500".parse().unwrap());
    let peers =
        (0..count).map(|i| vpn(format!("load-{i}"), "10.0.0.1", Some("10.0.0.2"), format!("load-{i}.test")));
    let mut init = Endpoint::new(config.clone(), peers.collect(), psk());
    let responder = || vec![vpn("any".into(), "10.0.0.2", None, "responder.test".into())];
    let mut active = Endpoint::new(EndpointConfig { node_id: 1, ..config.clone() }, responder(), psk());
    let mut standby_ep = Endpoint::new(EndpointConfig { node_id: 2, ..config }, responder(), psk());
    standby_ep.set_standby();
    let now = Instant::now();
    for i in 0..count {
        init.initiate(now, &format!("load-{i}")).unwrap();
        for _ in 0..10 {
            let requests: Vec<Transmit> = std::iter::from_fn(|| init.poll_transmit()).collect();
            if requests.is_empty() {
                break;
            }
            for t in requests {
                active.handle_datagram(now, ra, ia, &t.data);
                while active.poll_event().is_some() {}
                for a in std::iter::from_fn(|| active.poll_transmit()).collect::<Vec<_>>() {
                    init.handle_datagram(now, ia, ra, &a.data);
                }
            }
            while init.poll_event().is_some() {}
        }
        if (i + 1) % 2000 == 0 {
            eprintln!("{} tunnels up", i + 1);
        }
    }
    assert_eq!(active.ike_sas().len(), count, "every tunnel established");

    let t0 = Instant::now();
    let snaps = active.snapshots(now);
    let t_snap = t0.elapsed();
    let mut sync: ActiveSync<()> = ActiveSync::new(65536, Duration::from_millis(50));
    let bulk = snaps
        .into_iter()
        .map(|(id, snapshot, kids)| BulkSa {
            id,
            snapshot,
            children: kids.into_iter().map(|k| (k, 0)).collect(),
        })
        .collect();
    sync.start_bulk(bulk);
    let frames: Vec<Zeroizing<Vec<u8>>> =
        std::iter::from_fn(|| sync.poll_send()).map(|m| m.encode()).collect();
    let t_active = t0.elapsed();
    let bytes: usize = frames.iter().map(|f| f.len()).sum();

    let t1 = Instant::now();
    let mut standby = StandbySync::new(65536);
    standby.link_up();
    for f in &frames {
        let m = SyncMsg::decode(f).expect("frame");
        standby.handle(now, &mut standby_ep, m).expect("in order");
    }
    let t_standby = t1.elapsed();
    assert!(standby.in_sync());
    assert_eq!(standby_ep.ike_sas().len(), count, "every IKE SA mirrored");
    let children = standby_ep.child_sas().len();
    let t2 = Instant::now();
    let t = standby_ep.take_over(now);
    let installs =
        std::iter::from_fn(|| standby_ep.poll_event()).filter(|e| matches!(e, Event::ChildSaUp(_))).count();
    let t_takeover = t2.elapsed();
    assert_eq!((t.ike_sas, installs), (count, count), "{t:?}");
    println!(
        "takeover of {count} IKE SAs by the engine: {:.0} ms ({installs} CHILD SA installs handed to the dataplane)",
        t_takeover.as_secs_f64() * 1e3
    );
    println!(
        "bulk sync of {count} IKE SAs ({} CHILD SAs): active {:.0} ms (snapshots {:.0} ms), standby {:.0} ms, \
         total {:.0} ms; {} frames, {:.1} MB, {:.0} bytes per IKE SA",
        children,
        t_active.as_secs_f64() * 1e3,
        t_snap.as_secs_f64() * 1e3,
        t_standby.as_secs_f64() * 1e3,
        (t_active + t_standby).as_secs_f64() * 1e3,
        frames.len(),
        bytes as f64 / 1e6,
        bytes as f64 / count as f64
    );
}

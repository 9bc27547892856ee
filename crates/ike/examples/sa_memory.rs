//! Heap bytes per established IKE SA (with one CHILD SA) in a responder engine, as the scale
//! benchmark's responder holds them: one `%any` vpn, every initiator with its own identity, all
//! from one address. Counts live heap bytes with dhat's allocator; the dataplane's share of a
//! tunnel is not in it (see `scripts/bench-scale` for the whole daemon).
//!
//! `cargo run --release -p tandem-ike --example sa_memory [count]`
// One real instant is the origin; the example measures memory, not time.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::Instant;
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn peer(name: String, local: &str, remote: Option<&str>, id: String) -> PeerConfig {
    let any = TrafficSelector::any_v4();
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
        children: vec![ChildConfig {
            name: "c".into(),
            local_ts: vec![any],
            remote_ts: vec![any],
            esp_proposals: vec![parse_esp_proposal("aes256gcm16").unwrap()],
            mode: IpsecMode::Tunnel,
            lifetimes: Lifetimes::default(),
            start_action: StartAction::None,
            close_action: DeadPeerAction::Clear,
            replay_window: 0,
        }],
    }
}

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let _profiler = dhat::Profiler::builder().testing().build();
    let psk = || vec![PreSharedKey { ids: vec![], secret: Zeroizing::new(b"memory".to_vec()) }];
    let config = EndpointConfig { cookie_threshold: usize::MAX, ..EndpointConfig::default() };
    let (ia, ra): (SocketAddr, SocketAddr) =
        ("10.0.0.1:500".parse().unwrap(), "10.0.0.2:500".parse().unwrap());
    let peers =
        (0..count).map(|i| peer(format!("load-{i}"), "10.0.0.1", Some("10.0.0.2"), format!("load-{i}.test")));
    let mut init = Endpoint::new(config.clone(), peers.collect(), psk());
    let mut resp =
        Endpoint::new(config, vec![peer("any".into(), "10.0.0.2", None, "responder.test".into())], psk());
    let now = Instant::now();
    // Only the responder's share counts: heap growth over its calls, less the datagrams it sent
    // once they are freed.
    let heap = || dhat::HeapStats::get().curr_bytes as i64;
    let mut resp_bytes = 0i64;
    for i in 0..count {
        init.initiate(now, &format!("load-{i}")).unwrap();
        for _ in 0..10 {
            let requests: Vec<Transmit> = std::iter::from_fn(|| init.poll_transmit()).collect();
            if requests.is_empty() {
                break;
            }
            for t in requests {
                let b0 = heap();
                resp.handle_datagram(now, ra, ia, &t.data);
                while resp.poll_event().is_some() {}
                let answers: Vec<Transmit> = std::iter::from_fn(|| resp.poll_transmit()).collect();
                resp_bytes += heap() - b0;
                for a in &answers {
                    init.handle_datagram(now, ia, ra, &a.data);
                }
                let b1 = heap();
                drop(answers);
                resp_bytes += heap() - b1;
            }
            while init.poll_event().is_some() {}
        }
    }
    println!(
        "{count} IKE SAs established on the responder: {} IKE SAs, {} CHILD SAs, {:.0} bytes of heap per IKE SA",
        resp.ike_sas().len(),
        resp.child_sas().len(),
        resp_bytes as f64 / count as f64
    );
}

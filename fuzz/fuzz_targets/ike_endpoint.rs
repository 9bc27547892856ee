//! Stateful fuzzing of `Endpoint::handle_datagram`: a responder (fresh, or mid-exchange after a
//! real IKE_SA_INIT) and an initiator (waiting for its IKE_SA_INIT response, or established) are
//! fed a sequence of hostile datagrams: raw bytes, or real messages of a recorded exchange with
//! bytes flipped, interleaved with clock jumps. Seeded randomness makes every run reproducible.
//! Properties: no panic, and after `handle_timeout(now)` no deadline is left at or before `now`
//! (a deadline that handling does not move makes the daemon spin).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal, SeededRandom};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

fn peer(local: &str, remote: &str, lid: &str, rid: &str) -> PeerConfig {
    let ts = |s: &str| TrafficSelector::from_subnet(s.parse().unwrap(), 16).unwrap();
    PeerConfig {
        name: "f".into(),
        local_addr: Some(local.parse().unwrap()),
        remote_addr: Some(remote.parse().unwrap()),
        remote_port: 500,
        local_id: Identity::parse(lid),
        remote_id: Some(Identity::parse(rid)),
        ike_proposals: vec![parse_ike_proposal("aes256gcm16-prfsha256-x25519").unwrap()],
        ike_lifetimes: Lifetimes { rekey_time: Some(Duration::from_secs(30)), ..Lifetimes::default() },
        reauth: false,
        dpd_delay: Some(Duration::from_secs(10)),
        dpd_timeout: None,
        dpd_action: DeadPeerAction::Clear,
        force_encap: false,
        initial_contact: true,
        unique: UniquePolicy::default(),
        reqid_per_sa: false,
        childless: Childless::default(),
        children: vec![ChildConfig {
            name: "net".into(),
            local_ts: vec![ts(if lid == "a.test" { "10.1.0.0" } else { "10.2.0.0" })],
            remote_ts: vec![ts(if lid == "a.test" { "10.2.0.0" } else { "10.1.0.0" })],
            esp_proposals: vec![parse_esp_proposal("aes256gcm16-x25519").unwrap()],
            mode: IpsecMode::Tunnel,
            lifetimes: Lifetimes { rekey_time: Some(Duration::from_secs(20)), ..Lifetimes::default() },
            start_action: StartAction::None,
            close_action: DeadPeerAction::Clear,
            replay_window: 64,
        }],
    }
}

fn endpoint(seed: u64, p: PeerConfig) -> Endpoint {
    let psk = PreSharedKey {
        ids: vec![Identity::parse("a.test"), Identity::parse("b.test")],
        secret: Zeroizing::new(b"fuzz".to_vec()),
    };
    Endpoint::with_random(EndpointConfig::default(), vec![p], vec![psk], Box::new(SeededRandom::from_u64(seed)))
}

const A: &str = "10.0.0.1:500";
const B: &str = "10.0.0.2:500";

fn drain(e: &mut Endpoint) -> Vec<Vec<u8>> {
    while e.poll_event().is_some() {}
    std::iter::from_fn(|| e.poll_transmit()).map(|t| t.data).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&stage, mut rest)) = data.split_first() else { return };
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let mut now = Instant::now();
    let mut a = endpoint(1, peer("10.0.0.1", "10.0.0.2", "a.test", "b.test"));
    let mut b = endpoint(2, peer("10.0.0.2", "10.0.0.1", "b.test", "a.test"));
    // A real exchange, recorded, to mutate from.
    let mut recorded = Vec::new();
    a.initiate(now, "f").unwrap();
    let init = drain(&mut a);
    recorded.extend(init.iter().cloned());
    let mut last_from_a = init;
    let steps = stage % 4;
    for step in 0..steps {
        let (from, to, to_addr, from_addr) =
            if step % 2 == 0 { (&mut a, &mut b, b_addr, a_addr) } else { (&mut b, &mut a, a_addr, b_addr) };
        let _ = from;
        for d in &last_from_a {
            to.handle_datagram(now, to_addr, from_addr, d);
        }
        last_from_a = drain(to);
        recorded.extend(last_from_a.iter().cloned());
    }
    // The target: the side that would receive next.
    let (target, local, remote) = if steps % 2 == 0 { (&mut b, b_addr, a_addr) } else { (&mut a, a_addr, b_addr) };
    let mut ops = 0;
    while let Some((&op, tail)) = rest.split_first() {
        ops += 1;
        if ops > 64 {
            break;
        }
        let Some((&len, tail)) = tail.split_first() else { break };
        let n = (len as usize).min(tail.len());
        let (arg, tail) = tail.split_at(n);
        rest = tail;
        match op % 3 {
            0 => target.handle_datagram(now, local, remote, arg),
            1 if !recorded.is_empty() => {
                let mut m = recorded[arg.first().copied().unwrap_or(0) as usize % recorded.len()].clone();
                for pair in arg.get(1..).unwrap_or(&[]).chunks(2) {
                    if let [pos, x] = pair {
                        let i = *pos as usize % m.len();
                        m[i] ^= *x;
                    }
                }
                target.handle_datagram(now, local, remote, &m);
            }
            _ => {
                now += Duration::from_millis(arg.first().copied().unwrap_or(1) as u64 * 250);
                target.handle_timeout(now);
                assert!(
                    target.poll_timeout().is_none_or(|t| t > now),
                    "a deadline at or before now survived handle_timeout"
                );
            }
        }
        drain(target);
        let _ = (target.ike_sas(), target.child_sas());
    }
});

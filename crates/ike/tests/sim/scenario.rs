//! The two-tunnel-end scenario shared by the seeded simulations: lifetimes, link and operator
//! commands drawn from a seed, the vpn configuration of each side, and the end-state check.

use super::net::LinkModel;
use super::{scenario_rng, Sim};
use std::time::Duration;
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal, Random};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

pub fn ts(s: &str) -> TrafficSelector {
    let (a, p) = s.split_once('/').unwrap();
    TrafficSelector::from_subnet(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

/// The knobs of one run, all drawn from the seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub pfs: bool,
    pub ike_rekey: [Duration; 2],
    pub child_rekey: [Duration; 2],
    pub rand_time: [Duration; 2],
    pub margin: Duration,
    pub link: LinkModel,
    /// Operator rekeys on top of the timers: (time, node, ike?).
    pub manual: Vec<(Duration, usize, bool)>,
}

pub const fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Scenario {
    pub fn draw(seed: u64) -> Scenario {
        let r = &mut scenario_rng(seed);
        let same = r.up_to(1) == 0;
        let pick = |r: &mut dyn Random, lo: u64, hi: u64| ms(lo + r.up_to(hi - lo));
        let ike0 = pick(r, 6_000, 10_000);
        let child0 = pick(r, 3_000, 6_000);
        let ike_rekey = [ike0, if same { ike0 } else { pick(r, 6_000, 10_000) }];
        let child_rekey = [child0, if same { child0 } else { pick(r, 3_000, 6_000) }];
        let jit = |r: &mut dyn Random| if r.up_to(2) == 0 { pick(r, 1, 1_500) } else { Duration::ZERO };
        let rand_time = [jit(r), jit(r)];
        let delay_min = pick(r, 1, 20);
        let delay_max = delay_min + [ms(0), ms(5), ms(50), ms(200), ms(400)][r.up_to(4) as usize];
        let loss_permille = [0, 0, 20, 80][r.up_to(3) as usize];
        let dup_permille = [0, 0, 30][r.up_to(2) as usize];
        let link = LinkModel { delay_min, delay_max, loss_permille, dup_permille };
        // Hard lifetimes must outlast a rekey that needs retransmissions: otherwise the SA dies
        // legitimately and traffic stops, which is not what this harness looks for.
        let margin = if loss_permille > 0 { ms(40_000) } else { ms(2_000) + delay_max * 8 };
        let manual =
            (0..r.up_to(4)).map(|_| (pick(r, 2_000, 50_000), r.up_to(1) as usize, r.up_to(2) == 0)).collect();
        Scenario { pfs: r.up_to(1) == 0, ike_rekey, child_rekey, rand_time, margin, link, manual }
    }
}

pub fn peer(s: &Scenario, side: usize, local: &str, remote: &str, lid: &str, rid: &str) -> PeerConfig {
    let life = |rekey: Duration, rand: Duration| Lifetimes {
        rekey_time: Some(rekey),
        life_time: Some(rekey + s.margin.max(rekey / 10)),
        rand_time: rand,
        ..Lifetimes::default()
    };
    let esp = if s.pfs { "aes256gcm16-x25519" } else { "aes256gcm16" };
    PeerConfig {
        name: "t".into(),
        local_addr: Some(local.parse().unwrap()),
        remote_addr: Some(remote.parse().unwrap()),
        remote_port: 500,
        local_id: Identity::parse(lid),
        remote_id: Some(Identity::parse(rid)),
        ike_proposals: vec![parse_ike_proposal("aes256gcm16-prfsha256-x25519").unwrap()],
        ike_lifetimes: life(s.ike_rekey[side], s.rand_time[side]),
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
            local_ts: vec![ts(if side == 0 { "10.1.0.0/16" } else { "10.2.0.0/16" })],
            remote_ts: vec![ts(if side == 0 { "10.2.0.0/16" } else { "10.1.0.0/16" })],
            esp_proposals: vec![parse_esp_proposal(esp).unwrap()],
            mode: IpsecMode::Tunnel,
            lifetimes: life(s.child_rekey[side], s.rand_time[side]),
            // Node 0 starts the tunnel and, like a gateway, keeps trying until it is up.
            start_action: if side == 0 { StartAction::Start } else { StartAction::None },
            close_action: DeadPeerAction::Clear,
            replay_window: 1024,
        }],
    }
}

pub fn psks() -> Vec<PreSharedKey> {
    vec![PreSharedKey {
        ids: vec![Identity::parse("a.test"), Identity::parse("b.test")],
        secret: Zeroizing::new(b"collide".to_vec()),
    }]
}

pub fn config() -> EndpointConfig {
    EndpointConfig {
        retransmit: RetransmitConfig {
            timeout: Duration::from_secs(1),
            base: 1.8,
            tries: 6,
            max_timeout: Duration::from_secs(20),
        },
        ..EndpointConfig::default()
    }
}

/// One IKE SA and one CHILD SA on both sides, crosswise-agreeing, and the dataplanes alike.
pub fn end_state(sim: &Sim, a: usize, b: usize) -> Result<(), String> {
    let (a, b) = (&sim.nodes[a], &sim.nodes[b]);
    let (ia, ib) = (a.ep.ike_sas(), b.ep.ike_sas());
    if ia.len() != 1 || ib.len() != 1 {
        return Err(format!("IKE SAs: {} on a, {} on b\na: {ia:?}\nb: {ib:?}", ia.len(), ib.len()));
    }
    if (ia[0].spi_i, ia[0].spi_r) != (ib[0].spi_i, ib[0].spi_r) || ia[0].state != IkeSaState::Established {
        return Err(format!("IKE SAs disagree: {:?} vs {:?}", ia[0], ib[0]));
    }
    let (ca, cb) = (a.ep.child_sas(), b.ep.child_sas());
    if ca.len() != 1 || cb.len() != 1 {
        let spis = |v: &[ChildSaInfo]| v.iter().map(|c| (c.spi_in, c.spi_out)).collect::<Vec<_>>();
        return Err(format!("CHILD SAs: a {:x?}, b {:x?}", spis(&ca), spis(&cb)));
    }
    if ca[0].spi_in != cb[0].spi_out || ca[0].spi_out != cb[0].spi_in {
        return Err(format!("CHILD SAs disagree: a {:?} b {:?}", ca[0], cb[0]));
    }
    for (n, c) in [(a, &ca[0]), (b, &cb[0])] {
        let live: Vec<(u32, u32)> = n.dp.live().iter().map(|p| (p.spi_in, p.spi_out)).collect();
        if live != vec![(c.spi_in, c.spi_out)] {
            return Err(format!("dataplane holds {live:x?}, engine {:x}/{:x}", c.spi_in, c.spi_out));
        }
    }
    Ok(())
}

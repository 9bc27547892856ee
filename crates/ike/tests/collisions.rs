//! Rekey collisions under a seeded random network (issue 9, section 1): two endpoints with
//! overlapping CHILD and IKE rekey timers, random delay, reordering, loss and duplication between
//! them, a ping every 100 ms each way through the modelled dataplane. Whatever the interleaving,
//! traffic flows throughout and the end state is one IKE SA and one CHILD SA on both sides with
//! agreeing SPIs. A failing seed prints its trace and replays with `TANDEM_SIM_SEED=<seed>`.
// One real instant is the origin of the fake clock; everything after it is simulated.
#![allow(clippy::disallowed_methods)]

mod sim;

use sim::net::LinkModel;
use sim::{scenario_rng, seeded_endpoint, seeds, Sim};
use std::net::SocketAddr;
use std::time::Duration;
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal, Random};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

fn ts(s: &str) -> TrafficSelector {
    let (a, p) = s.split_once('/').unwrap();
    TrafficSelector::from_subnet(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

/// The knobs of one run, all drawn from the seed.
#[derive(Debug, Clone)]
struct Scenario {
    pfs: bool,
    ike_rekey: [Duration; 2],
    child_rekey: [Duration; 2],
    rand_time: [Duration; 2],
    margin: Duration,
    link: LinkModel,
    /// Operator rekeys on top of the timers: (time, node, ike?).
    manual: Vec<(Duration, usize, bool)>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Scenario {
    fn draw(seed: u64) -> Scenario {
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

fn peer(s: &Scenario, side: usize, local: &str, remote: &str, lid: &str, rid: &str) -> PeerConfig {
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

fn psks() -> Vec<PreSharedKey> {
    vec![PreSharedKey {
        ids: vec![Identity::parse("a.test"), Identity::parse("b.test")],
        secret: Zeroizing::new(b"collide".to_vec()),
    }]
}

fn config() -> EndpointConfig {
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

const RUN: Duration = Duration::from_secs(60);

/// One seeded run; Err describes the first problem.
fn run(seed: u64) -> Result<(), String> {
    let s = Scenario::draw(seed);
    let r = &mut scenario_rng(seed.rotate_left(17));
    let a_addr: SocketAddr = "10.0.0.1:500".parse().unwrap();
    let b_addr: SocketAddr = "10.0.0.2:500".parse().unwrap();
    let a =
        seeded_endpoint(r, config(), vec![peer(&s, 0, "10.0.0.1", "10.0.0.2", "a.test", "b.test")], psks());
    let b =
        seeded_endpoint(r, config(), vec![peer(&s, 1, "10.0.0.2", "10.0.0.1", "b.test", "a.test")], psks());
    let mut sim = Sim::new(seed, vec![(a, a_addr), (b, b_addr)], s.link);
    let fail = |sim: &Sim, what: String| {
        Err(format!(
            "seed {seed}: {what}\nscenario: {s:?}\nlast {} trace lines:\n{}",
            sim::TRACE_LINES,
            sim.trace()
        ))
    };
    let at = sim.at();
    sim.nodes[0].ep.start_configured(at);
    let (ra, rb) = (sim.nodes[0].ep.reqid("t", "net"), sim.nodes[1].ep.reqid("t", "net"));
    let pings = [(0, 1, ra, rb)];
    let mut manual = s.manual.clone();
    manual.sort();
    for (t, node, ike) in manual {
        sim.run(t, Some(ms(100)), &pings);
        let at = sim.at();
        let ep = &mut sim.nodes[node].ep;
        // An operator command may find nothing to rekey (mid-collision): that is fine.
        if ike {
            if let Some(sa) = ep.ike_sas().first() {
                let _ = ep.rekey_ike_sa(at, sa.id);
            }
        } else if let Some(c) = ep.child_sas().first() {
            let _ = ep.rekey_child_sa(at, c.spi_in);
        }
    }
    sim.run(RUN, Some(ms(100)), &pings);
    if let Some(v) = sim.violations.first() {
        return fail(&sim, v.clone());
    }
    // 600 when the tunnel is up at once; a first IKE SA lost to the link's loss fails after 30 s
    // and the next attempt brings it up some seconds later.
    if sim.pings_sent < 200 {
        return fail(&sim, format!("only {} pings counted: the tunnel never came up", sim.pings_sent));
    }
    // Heal the network, let every lifetime run out twice, then look at a quiet moment.
    sim.net.heal(ms(2));
    let longest = s.ike_rekey.iter().chain(&s.child_rekey).max().copied().unwrap() + s.margin;
    let end = sim.now + longest * 2;
    sim.run(end, Some(ms(100)), &pings);
    if !sim.settle(end + Duration::from_secs(30)) {
        return fail(&sim, "never quiet after healing".into());
    }
    if let Some(v) = sim.violations.first() {
        return fail(&sim, v.clone());
    }
    if let Err(e) = end_state(&sim) {
        return fail(&sim, e);
    }
    Ok(())
}

/// One IKE SA and one CHILD SA on both sides, crosswise-agreeing, and the dataplanes alike.
fn end_state(sim: &Sim) -> Result<(), String> {
    let (a, b) = (&sim.nodes[0], &sim.nodes[1]);
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

#[test]
fn seeded_rekey_collisions_keep_one_tunnel_and_traffic() {
    let list = seeds(1, 1000);
    let mut failures = Vec::new();
    for seed in &list {
        if let Err(e) = run(*seed) {
            failures.push(e);
        }
    }
    let n = failures.len();
    if n > 0 {
        let seeds: Vec<&str> =
            failures.iter().map(|f| f.split(':').next().unwrap_or("").trim_start_matches("seed ")).collect();
        // Replay the first failure with the engines' own log lines in its trace.
        sim::engine_log::enable();
        let first = seeds[0].parse().ok().and_then(|s| run(s).err()).unwrap_or_else(|| failures[0].clone());
        panic!("{n} of {} seeds failed ({seeds:?}); the first:\n{first}", list.len());
    }
}

/// Seeds beyond the default range that once failed, run every time.
/// - 2029, 3321: both sides' IKE rekeys were refused (TEMPORARY_FAILURE) by each other's CHILD
///   rekeys, turn after turn, until the IKE SA expired; now CHILD work waits for a refused IKE
///   rekey's retry.
/// - 12600: the responder of two CHILD rekeys in a row sent on the second new SA before the peer
///   had it; now a deferred pair takes over when the pair it replaces leaves.
/// - 14525: the first IKE_SA_INIT and its retransmissions were lost and the vpn stayed down; now
///   a vpn with start-action `start` is initiated again.
/// - 48069: a CHILD Delete whose responses the link kept losing refused the peer's IKE rekeys
///   until the IKE SA expired; now a Delete in flight moves to the new IKE SA instead.
#[test]
fn seeds_that_once_failed() {
    for seed in [2029, 3321, 12600, 14525, 48069] {
        if let Err(e) = run(seed) {
            sim::engine_log::enable();
            panic!("{}", run(seed).err().unwrap_or(e));
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    // Same seed, same wire: the determinism the harness depends on.
    let trace = |seed| {
        let s = Scenario::draw(seed);
        let r = &mut scenario_rng(seed.rotate_left(17));
        let a = seeded_endpoint(
            r,
            config(),
            vec![peer(&s, 0, "10.0.0.1", "10.0.0.2", "a.test", "b.test")],
            psks(),
        );
        let b = seeded_endpoint(
            r,
            config(),
            vec![peer(&s, 1, "10.0.0.2", "10.0.0.1", "b.test", "a.test")],
            psks(),
        );
        let mut sim = Sim::new(
            seed,
            vec![(a, "10.0.0.1:500".parse().unwrap()), (b, "10.0.0.2:500".parse().unwrap())],
            s.link,
        );
        let at = sim.at();
        sim.nodes[0].ep.initiate(at, "t").unwrap();
        sim.run(Duration::from_secs(20), None, &[]);
        let kids: Vec<_> = sim.nodes[0].ep.child_sas().iter().map(|c| (c.spi_in, c.spi_out)).collect();
        (sim.trace(), kids)
    };
    assert_eq!(trace(42), trace(42));
    assert_ne!(trace(42).0, trace(43).0);
}

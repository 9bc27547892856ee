//! Rekey collisions under a seeded random network (issue 9, section 1): two endpoints with
//! overlapping CHILD and IKE rekey timers, random delay, reordering, loss and duplication between
//! them, a ping every 100 ms each way through the modelled dataplane. Whatever the interleaving,
//! traffic flows throughout and the end state is one IKE SA and one CHILD SA on both sides with
//! agreeing SPIs. A failing seed prints its trace and replays with `TANDEM_SIM_SEED=<seed>`.
// One real instant is the origin of the fake clock; everything after it is simulated.
#![allow(clippy::disallowed_methods)]

mod sim;

use sim::scenario::{config, end_state, ms, peer, psks, Scenario};
use sim::{scenario_rng, seeded_endpoint, seeds, Sim};
use std::net::SocketAddr;
use std::time::Duration;

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
    if let Err(e) = end_state(&sim, 0, 1) {
        return fail(&sim, e);
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

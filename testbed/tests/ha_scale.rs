//! Scale acceptance of HA (docs/ha.md): 1,000 tunnels from tandem's load generator (`tandem-load`,
//! many initiators in the cluster's peer namespace, each with its own identity and inner address)
//! on the active node of a two-node cluster, mirrored to the standby, and all kept through one
//! failover (`kill -9` of the active, the VIP moved, node 2 set active through the HA API) without
//! any renegotiation, with the same SPIs, and traffic through a sample of the tunnels afterwards.
//!
//! `TANDEM_HA_SCALE_TUNNELS` changes the count (default 1,000, what CI runs).

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_testbed::cluster::{ha_set_state, ha_status, tail, Cluster};
use tandem_testbed::load_peer::{cluster_load_toml, LoadOpts, LoadPeer};
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{tools_present, wait_until};

/// Tunnels probed (ICMP through the tunnel to the cluster's protected address) during the hold.
const SAMPLE: usize = 20;
/// One probe per sampled tunnel this often.
const PROBE_INTERVAL_MS: u64 = 50;
/// Generous bounds (a debug build on a shared 2-vCPU machine); the test reports what it measured.
const ESTABLISH_BOUND: Duration = Duration::from_secs(60);
const MIRROR_BOUND: Duration = Duration::from_secs(10);
const TAKEOVER_BOUND: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

fn tunnels() -> usize {
    std::env::var("TANDEM_HA_SCALE_TUNNELS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000)
}

fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// A node's IKE SAs and CHILD SAs as SPI sets, with how many are established and how many are
/// marked standby: ((spi_i, spi_r) set, (spi_in, spi_out) set, established, standby).
type Listing = (BTreeSet<(u64, u64)>, BTreeSet<(u64, u64)>, usize, usize);

fn listing(t: &Tandemd) -> Listing {
    let (ike, child) = (t.ike_sas(), t.child_sas());
    let spis = |v: &[Value], a: &str, b: &str| -> BTreeSet<(u64, u64)> {
        v.iter().map(|s| (s[a].as_u64().unwrap_or(0), s[b].as_u64().unwrap_or(0))).collect()
    };
    let established = ike.iter().filter(|s| s["state"] == "established").count();
    let standby = ike.iter().filter(|s| s["standby"] == true).count()
        + child.iter().filter(|s| s["standby"] == true).count();
    (spis(&ike, "spi_i", "spi_r"), spis(&child, "spi_in", "spi_out"), established, standby)
}

/// The SPIs of a node's dataplane SAs: (inbound set, outbound set).
fn dataplane_spis(t: &Tandemd) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let sas = t.ipsec_sas();
    let dir =
        |d: &str| sas.iter().filter(|s| s["direction"] == d).filter_map(|s| s["spi"].as_u64()).collect();
    (dir("in"), dir("out"))
}

fn logs(t: &[(&str, &Tandemd)], load: &str) -> String {
    let mut s = String::new();
    for (name, t) in t {
        s += &format!("--- tandemd {name} ({}) ---\n{}\n", t.dir.display(), tail(&t.log(), 40));
    }
    s + &format!("--- tandem-load ---\n{}\n", tail(load, 20))
}

/// Requests of an exchange type in one direction of the generator's hold report (0 when absent).
fn requests(report: &Value, dir: &str, exchange: &str) -> u64 {
    report[dir][exchange]["requests"].as_u64().unwrap_or(0)
}

#[test]
fn thousand_tunnels_mirrored_and_kept_through_failover() {
    if !tools_present(&[]) {
        return;
    }
    let n = tunnels();
    let t_test = Instant::now();
    let mut cl = Cluster::new();
    // 1. node 1 active with the VIP, node 2 standby, in sync.
    cl.move_vip(None, 0);
    let [t1, t2] = cl.start_nodes_toml(&cluster_load_toml(""), ["active", "standby"], "");
    let in_sync = wait_until(Duration::from_secs(20), POLL, || {
        ha_status(&t1)["peer"] == "in-sync" && ha_status(&t2)["peer"] == "in-sync"
    });
    assert!(
        in_sync,
        "nodes not in sync: {}\n{}",
        ha_status(&t2),
        logs(&[("node 1", &t1), ("node 2", &t2)], "")
    );

    // 2. n tunnels from the generator, through the VIP to node 1.
    let mut opts = LoadOpts::new(n);
    opts.timeout_s = ESTABLISH_BOUND.as_secs();
    opts.probe = SAMPLE.min(n);
    opts.probe_interval_ms = PROBE_INTERVAL_MS;
    let t_load = Instant::now();
    let load = LoadPeer::start(&mut cl.peer, &opts);
    let up = load
        .line(1, ESTABLISH_BOUND + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[("node 1", &t1), ("node 2", &t2)], &load.log())));
    let t_up = t_load.elapsed();
    eprintln!("tandem-load: {up}");
    assert_eq!(up["established"], n, "{up}\n{}", logs(&[("node 1", &t1)], &load.log()));
    assert_eq!(up["failed"], 0, "{up}");
    assert_eq!(up["child_sas"], n, "the generator holds one CHILD SA per tunnel: {up}");

    // 3. The standby mirrors all of them; timed from the generator's "all up".
    let mut mirrored_at = None;
    wait_until(MIRROR_BOUND, Duration::from_millis(10), || {
        let ok = ha_status(&t2)["ike_sas"] == n;
        if ok {
            mirrored_at = Some(t_load.elapsed());
        }
        ok
    });
    let Some(mirrored_at) = mirrored_at else {
        panic!(
            "node 2 did not mirror {n} IKE SAs within {MIRROR_BOUND:?} of the last handshake: {}\n{}",
            ha_status(&t2),
            logs(&[("node 1", &t1), ("node 2", &t2)], &load.log())
        );
    };
    eprintln!(
        "SCALE: {n} tunnels established in {:.2} s (generator's {:.2} s); node 2 had mirrored all {n} IKE SAs {:.0} ms after the generator's last handshake ({:.2} s after its start)",
        t_up.as_secs_f64(),
        up["elapsed_s"].as_f64().unwrap_or(0.0),
        (mirrored_at.saturating_sub(t_up)).as_secs_f64() * 1000.0,
        mirrored_at.as_secs_f64()
    );

    // 4. The active runs them all: n established IKE SAs with a CHILD SA each, 2n dataplane SAs;
    //    the standby lists the same SPIs, marked standby.
    let before = listing(&t1);
    assert_eq!((before.0.len(), before.1.len(), before.2, before.3), (n, n, n, 0), "node 1's listing");
    let (dp_in, dp_out) = dataplane_spis(&t1);
    assert_eq!((dp_in.len(), dp_out.len()), (n, n), "node 1's dataplane SAs");
    let child_in: BTreeSet<u64> = before.1.iter().map(|c| c.0).collect();
    let child_out: BTreeSet<u64> = before.1.iter().map(|c| c.1).collect();
    assert_eq!(
        (&dp_in, &dp_out),
        (&child_in, &child_out),
        "node 1's dataplane has other SPIs than its CHILD SAs"
    );
    let mut mirror = listing(&t2);
    let same = wait_until(MIRROR_BOUND, POLL, || {
        mirror = listing(&t2);
        mirror.0 == before.0 && mirror.1 == before.1
    });
    assert!(
        same,
        "node 2's mirror differs from node 1's SAs: {} IKE SAs, {} CHILD SAs",
        mirror.0.len(),
        mirror.1.len()
    );
    assert_eq!(mirror.3, 2 * n, "node 2 lists every mirrored IKE and CHILD SA as standby");
    let st1 = ha_status(&t1);
    eprintln!("node 1 (active) after the handshakes: {st1}");

    // 5. Probes flow through node 1 (it seals the echo replies).
    let sealed = |t: &Tandemd| t.sa_counter("out", "packets");
    let probes_through_1 = wait_until(Duration::from_secs(10), POLL, || sealed(&t1) >= 3 * SAMPLE as u64);
    assert!(probes_through_1, "no probe replies sealed by node 1\n{}", logs(&[("node 1", &t1)], &load.log()));

    // 6. kill -9 node 1, the VIP to node 2, node 2 active.
    let epoch_kill = epoch_now();
    let t_kill = Instant::now();
    cl.kill_node(0, &t1);
    cl.move_vip(Some(0), 1);
    let taken = ha_set_state(&t2, "active");
    let t_active = t_kill.elapsed();
    let epoch_active = epoch_now();
    let taken = taken.unwrap_or_else(|e| {
        panic!("ha set-state active on node 2: {e}\n{}", logs(&[("node 2", &t2)], &load.log()))
    });
    assert_eq!(taken["role"], "active", "{taken}");

    // 7. Node 2 runs all n, with the same SPIs, in its dataplane too; the probes come back.
    let mut after = listing(&t2);
    let runs = wait_until(TAKEOVER_BOUND, POLL, || {
        after = listing(&t2);
        after.2 == n && after.3 == 0
    });
    let t_runs = t_kill.elapsed();
    assert!(
        runs,
        "node 2 does not run {n} established SAs of its own: {} established, {} standby\n{}",
        after.2,
        after.3,
        logs(&[("node 2", &t2)], &load.log())
    );
    assert_eq!(after.0, before.0, "node 2's IKE SPIs differ from node 1's before the failover");
    assert_eq!(after.1, before.1, "node 2's CHILD SPIs differ from node 1's before the failover");
    let dp2 = dataplane_spis(&t2);
    assert_eq!((&dp2.0, &dp2.1), (&dp_in, &dp_out), "node 2's dataplane SAs differ from node 1's");
    let sealed_at_takeover = sealed(&t2);
    let resumed = wait_until(TAKEOVER_BOUND, POLL, || sealed(&t2) >= sealed_at_takeover + 3 * SAMPLE as u64);
    let t_resumed = t_kill.elapsed();
    assert!(
        resumed,
        "no probe replies sealed by node 2 after the takeover\n{}",
        logs(&[("node 2", &t2)], &load.log())
    );
    let st2 = ha_status(&t2);
    eprintln!(
        "failover: node 2 active +{:.0} ms, lists {n} own SAs +{:.0} ms, sealing probe replies +{:.0} ms; status {st2}",
        t_active.as_secs_f64() * 1000.0,
        t_runs.as_secs_f64() * 1000.0,
        t_resumed.as_secs_f64() * 1000.0
    );
    assert_eq!(st2["takeovers"], 1, "{st2}");
    assert_eq!(st2["last_takeover"]["ike_sas"], n, "{st2}");
    assert_eq!(st2["last_takeover"]["child_sas"], n, "{st2}");
    assert_eq!(st2["last_takeover"]["dropped"], 0, "{st2}");

    // 8. The generator saw no renegotiation: no IKE SA up or down, no CHILD SA lost, no failure,
    //    no IKE message at all from either side during the hold (no IKE_SA_INIT, no Delete, no
    //    DPD, no rekey), and every sampled tunnel answered after the takeover.
    let log = load.log();
    let report = load
        .finish(&mut cl.peer, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[("node 2", &t2)], &log)));
    eprintln!("tandem-load hold report: {report}");
    for (k, want) in [
        ("ike_sas_up", 0),
        ("ike_sas_down", 0),
        ("child_sas_down", 0),
        ("failures", 0),
        ("child_rekeys", 0),
        ("ike_sas_at_end", n as u64),
        ("child_sas_at_end", n as u64),
    ] {
        assert_eq!(report[k].as_u64(), Some(want), "tandem-load's {k}: {report}");
    }
    for ex in ["IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL"] {
        assert_eq!(
            requests(&report, "ike_sent", ex),
            0,
            "tandem-load sent {ex} requests during the hold: {report}"
        );
        assert_eq!(
            requests(&report, "ike_received", ex),
            0,
            "the cluster sent {ex} requests during the hold: {report}"
        );
    }
    let probe = &report["probe"];
    assert_eq!(probe["bad"], 0, "ESP from the cluster that did not open as a probe reply: {probe}");
    let per_tunnel = probe["per_tunnel"].as_array().cloned().unwrap_or_default();
    assert_eq!(per_tunnel.len(), SAMPLE.min(n), "{probe}");
    for p in &per_tunnel {
        let last = p["last_reply_epoch"].as_f64().unwrap_or(0.0);
        assert!(last > epoch_active, "tunnel {} had no reply after the takeover: {p}", p["tunnel"]);
    }
    let gap = &probe["largest_gap"];
    eprintln!(
        "SCALE FAILOVER: {n} tunnels kept, same SPIs, no renegotiation; probe outage over {} tunnels (one probe each per {PROBE_INTERVAL_MS} ms): largest gap {:.0} ms, from {:+.0} ms to {:+.0} ms of the kill; test {:.1} s",
        per_tunnel.len(),
        gap["ms"].as_f64().unwrap_or(f64::NAN),
        (gap["from_epoch"].as_f64().unwrap_or(0.0) - epoch_kill) * 1000.0,
        (gap["to_epoch"].as_f64().unwrap_or(0.0) - epoch_kill) * 1000.0,
        t_test.elapsed().as_secs_f64()
    );
}

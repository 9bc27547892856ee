//! `scripts/demo`, second part: the point of tandem. Two tandemd nodes (active and standby, synced
//! over a QUIC link) behind one virtual address in front of a strongSwan peer; traffic flows;
//! `kill -9` of the active; the standby takes over; the gap and both sides' SPIs are printed.
//! (In production keepalived moves the address and calls the notify hook: examples/ha/. Here the
//! demo moves it itself, as keepalived would, so it also runs where VRRP timing is noisy.)

use std::time::{Duration, Instant};
use tandem_testbed::charon::Charon;
use tandem_testbed::cluster::{
    charon_view, cluster_conf, ha_set_state, ha_status, largest_gap, peer_conf, settled, BackgroundPing,
    Cluster, CLUSTER_INNER, PEER_INNER, VIP,
};
use tandem_testbed::probe::ping_until_reply;
use tandem_testbed::wait_until;

const IKE: &str = "aes256gcm16-prfsha256-x25519";
const ESP: &str = "aes256gcm16";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

fn show(title: &str, text: &str) {
    println!("\n--- {title}");
    print!("{text}");
}

fn fail(what: &str) -> ! {
    eprintln!("demo: {what}");
    std::process::exit(1);
}

fn main() {
    println!(
        "\n== HA: two tandemd nodes (10.95.0.11, 10.95.0.12) share {VIP} in front of strongSwan (10.95.0.1)"
    );
    let mut cl = Cluster::new();
    cl.move_vip(None, 0);
    let [t1, t2] = cl.start_nodes(&cluster_conf(IKE, ESP), ["active", "standby"], "");
    let c = Charon::start_with(&mut cl.peer, &peer_conf(IKE, ESP).swanctl_conf(), "install_routes = yes", 1);
    let synced =
        wait_until(WAIT, POLL, || ha_status(&t1)["peer"] == "in-sync" && ha_status(&t2)["peer"] == "in-sync");
    if !synced {
        fail("the two nodes did not sync");
    }
    println!("   node 1 active, node 2 standby, sync link up and in sync");
    if !c.initiate().status.success() || !wait_until(WAIT, POLL, || settled(&t1, &c).is_some()) {
        fail("strongSwan did not establish its tunnel to the cluster");
    }
    let mirrored = wait_until(WAIT, POLL, || ha_status(&t2)["ike_sas"] == 1);
    println!("   strongSwan -> {VIP}: IKE SA and CHILD SA up on node 1; mirrored on node 2: {mirrored}");
    show(
        "node 2 (standby) tandemctl show ike-sa",
        &String::from_utf8_lossy(&t2.ctl(&["show", "ike-sa"]).stdout),
    );
    if !ping_until_reply(&cl.peer, PEER_INNER, CLUSTER_INNER, WAIT) {
        fail("no traffic through the tunnel");
    }
    let before = charon_view(&c).unwrap_or_else(|| fail("no SAs on strongSwan"));

    println!("\n== a ping every 10 ms from {PEER_INNER} (behind strongSwan) to {CLUSTER_INNER} (behind the cluster)");
    let ping = BackgroundPing::start(&mut cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500)); // let the stream run before the failure
    println!("== kill -9 of the active node's tandemd; the address moves; node 2 takes over");
    let t0 = Instant::now();
    cl.kill_node(0, &t1);
    cl.move_vip(Some(0), 1);
    if let Err(e) = ha_set_state(&t2, "active") {
        fail(&format!("takeover: {e}"));
    }
    println!("   node 2 active {:.0} ms after the kill", t0.elapsed().as_secs_f64() * 1e3);
    std::thread::sleep(Duration::from_millis(500)); // traffic after the takeover, to measure the gap
    let result = ping.stop(&mut cl.peer);
    match largest_gap(&result) {
        Some((gap, a, b)) => println!(
            "   traffic gap: {:.0} ms (ping replies {a} -> {b}; {} sent, {} answered)",
            gap.as_secs_f64() * 1e3,
            result.transmitted,
            result.received
        ),
        None => println!("   no replies to measure a gap"),
    }
    let after = charon_view(&c).unwrap_or_else(|| fail("strongSwan lost its SAs"));
    let same = (before.0.spi_i == after.0.spi_i, before.0.spi_r == after.0.spi_r, before.1 == after.1);
    println!(
        "   strongSwan's IKE SPIs {} / {} and CHILD SPIs {:#010x} / {:#010x}: {}",
        after.0.spi_i,
        after.0.spi_r,
        after.1 .0,
        after.1 .1,
        if same == (true, true, true) { "unchanged (no renegotiation)" } else { "CHANGED" }
    );
    show("strongSwan swanctl --list-sas", &String::from_utf8_lossy(&c.swanctl(&["--list-sas"]).stdout));
    show(
        "node 2 (now active) tandemctl show ike-sa",
        &String::from_utf8_lossy(&t2.ctl(&["show", "ike-sa"]).stdout),
    );
    show("node 2 tandemctl show child-sa", &String::from_utf8_lossy(&t2.ctl(&["show", "child-sa"]).stdout));
    println!("== cleaning up namespaces");
    if same != (true, true, true) {
        std::process::exit(1);
    }
}

//! RFC 6311 replay counter sync end to end: a takeover from a stale mirror against a tandemd peer
//! (strongSwan announces neither replay notify, so here tandem is the only peer that does).
//!
//! `stale_takeover_moves_the_peers_outbound_numbers`, one cluster (node 1 active with the VIP,
//! node 2 standby, static roles), the peer a plain tandemd initiating to the VIP, IKE with AES-CBC
//! (tandem sends no sync on an AEAD IKE SA that already answered a request: strongSwan could not
//! encrypt the answer, `mid_sync::strongswan_cannot_answer`):
//! 1. the sync link cut at node 2 (nftables) under a 20 ms ping until node 1 goes solo, then the
//!    ping carries on for a while: node 1 accepts the peer's ESP packets past the last inbound
//!    replay window node 2 mirrored;
//! 2. `kill -9` of node 1, the VIP moved, node 2 made active. Its mirror is stale, so it jumps its
//!    inbound replay window by 2^24 (`REPLAY_SYNC_DELTA` in crates/daemon/src/ha.rs: no packet
//!    node 1 took can be replayed to it) and sends IPSEC_REPLAY_COUNTER_SYNC with the same delta in
//!    its Message ID 0 sync request;
//! 3. asserted: node 2 counts the stale takeover and the replay sync sent; the peer counts it
//!    answered, and its outbound sequence number on the CHILD SA moved by at least the delta; a
//!    ping passes through node 2 at once, node 2's inbound SA took the peer's packets above the
//!    jumped window with no replay drop; the peer's IKE and CHILD SA SPIs are the ones it had.
//!
//! Without the peer moving its numbers, every packet it sent after the takeover would fall below
//! node 2's jumped window and be dropped as a replay, and the tunnel would carry nothing inbound
//! until its next CHILD rekey.

use serde_json::Value;
use std::time::{Duration, Instant};
use tandem_testbed::cluster::{
    cluster_conf, ha_set_state, ha_status, tail, BackgroundPing, Cluster, CLUSTER_INNER, PEER_INNER,
    PEER_WAN, VIP,
};
use tandem_testbed::faults::{DropUdp, SYNC_PORT};
use tandem_testbed::probe::ping_until_reply;
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{tools_present, wait_until};

const IKE_CBC: &str = "aes256-sha256-x25519";
const ESP: &str = "aes256gcm16";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// `REPLAY_SYNC_DELTA` of crates/daemon/src/ha.rs: how far a stale takeover jumps an inbound
/// window whose peer does replay counter sync, and asks the peer to move its outbound numbers.
const DELTA: u64 = 1 << 24;

fn engine_stat(t: &Tandemd, key: &str) -> u64 {
    t.status()["engine"][key].as_u64().unwrap_or(0)
}

/// The SA of one direction ("in" / "out") of the only CHILD SA in a node's dataplane.
fn esp_sa(t: &Tandemd, direction: &str) -> Option<Value> {
    let sas: Vec<Value> = t.ipsec_sas().into_iter().filter(|s| s["direction"] == direction).collect();
    (sas.len() == 1).then(|| sas[0].clone())
}

/// (IKE SA SPIs, CHILD SA SPIs) as a node lists them.
fn spis(t: &Tandemd) -> (Vec<String>, Vec<String>) {
    let ike = t.ike_sas().iter().map(|s| format!("{}/{}", s["spi_i"], s["spi_r"])).collect();
    let child = t.child_sas().iter().map(|c| format!("{}/{}", c["spi_in"], c["spi_out"])).collect();
    (ike, child)
}

fn logs(nodes: &[Option<&Tandemd>], peer: &Tandemd) -> String {
    let mut s = String::new();
    for (i, t) in nodes.iter().enumerate() {
        if let Some(t) = t {
            s += &format!("--- tandemd node {} ({}) ---\n{}\n", i + 1, t.dir.display(), tail(&t.log(), 60));
        }
    }
    s + &format!("--- tandemd peer ({}) ---\n{}\n", peer.dir.display(), tail(&peer.log(), 60))
}

#[test]
fn stale_takeover_moves_the_peers_outbound_numbers() {
    if !tools_present(&["nft", "ping"]) {
        return;
    }
    let mut cl = Cluster::new();
    cl.move_vip(None, 0);
    let conf = cluster_conf(IKE_CBC, ESP);
    let [t1, t2] = cl.start_nodes(&conf, ["active", "standby"], "");
    let in_sync =
        wait_until(WAIT, POLL, || ha_status(&t1)["peer"] == "in-sync" && ha_status(&t2)["peer"] == "in-sync");
    assert!(in_sync, "nodes not in sync: {} / {}", ha_status(&t1), ha_status(&t2));
    let dir = Tandemd::dir_for(&cl.peer);
    let mut pc = conf.mirrored(&dir.join("tandemd.sock").display().to_string(), PEER_WAN, Some(VIP));
    pc.start_action = Some("start".into());
    let peer = Tandemd::start(&mut cl.peer, dir, &pc.toml());
    let up = wait_until(WAIT, POLL, || {
        t1.child_sas().len() == 1
            && peer.child_sas().len() == 1
            && t2.child_sas().len() == 1
            && ha_status(&t1)["lag_messages"] == 0
    });
    assert!(up, "tunnel not up and mirrored\n{}", logs(&[Some(&t1), Some(&t2)], &peer));
    assert!(
        ping_until_reply(&cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "no ping through node 1\n{}",
        logs(&[Some(&t1), Some(&t2)], &peer)
    );
    let before = spis(&peer);

    // 1. The sync link cut under a ping until node 1 goes solo; the ping goes on a while after.
    let acks0 = ha_status(&t1)["active"]["ack_timeouts"].as_u64().unwrap_or(0);
    let ping = BackgroundPing::start(&mut cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(20));
    let _cut = DropUdp::start(&cl.gw[1], SYNC_PORT);
    let solo = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
        let a = ha_status(&t1);
        a["peer"] == "down" || a["active"]["ack_timeouts"].as_u64().unwrap_or(0) > acks0
    });
    assert!(solo, "node 1 did not go solo with the sync link cut: {}", ha_status(&t1));
    let seq_solo = esp_sa(&t1, "in").map_or(0, |s| s["seq"].as_u64().unwrap_or(0));
    let moved = wait_until(Duration::from_secs(10), POLL, || {
        esp_sa(&t1, "in").is_some_and(|s| s["seq"].as_u64().unwrap_or(0) >= seq_solo + 25)
    });
    assert!(moved, "node 1's inbound SA did not move while solo\n{}", logs(&[Some(&t1), Some(&t2)], &peer));
    let pinged = ping.stop(&mut cl.peer);
    let peer_out0 = esp_sa(&peer, "out").map_or(0, |s| s["seq"].as_u64().unwrap_or(0));
    let in1 = esp_sa(&t1, "in").map_or(0, |s| s["seq"].as_u64().unwrap_or(0));
    eprintln!(
        "solo: node 1 received up to {in1} (from {seq_solo} when it went solo), the peer sent up to {peer_out0}; ping {}/{}",
        pinged.received, pinged.transmitted
    );

    // 2. kill -9 node 1, the VIP to node 2, node 2 active (the sync link still cut).
    cl.kill_node(0, &t1);
    cl.move_vip(Some(0), 1);
    let t_kill = Instant::now();
    let taken = ha_set_state(&t2, "active").unwrap_or_else(|e| panic!("ha set-state active on node 2: {e}"));
    assert_eq!(taken["role"], "active", "{taken}");
    let st = ha_status(&t2);
    assert_eq!(st["stale_takeovers"], 1, "node 2 does not count its takeover as stale: {st}");

    // 3. The replay counter sync, sent and answered; the peer's numbers moved.
    let synced = wait_until(WAIT, POLL, || {
        engine_stat(&t2, "replay_syncs_sent") >= 1 && engine_stat(&peer, "replay_syncs_answered") >= 1
    });
    assert!(
        synced,
        "replay counter sync: node 2 sent {}, the peer answered {}; node 2's engine {}\n{}",
        engine_stat(&t2, "replay_syncs_sent"),
        engine_stat(&peer, "replay_syncs_answered"),
        t2.status()["engine"],
        logs(&[None, Some(&t2)], &peer)
    );
    let peer_out = esp_sa(&peer, "out").map_or(0, |s| s["seq"].as_u64().unwrap_or(0));
    assert!(
        peer_out >= peer_out0 + DELTA,
        "the peer's outbound sequence number moved from {peer_out0} to {peer_out}, less than {DELTA}\n{}",
        logs(&[None, Some(&t2)], &peer)
    );
    assert!(
        ping_until_reply(&cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "no ping through node 2 after the replay sync\n{}",
        logs(&[None, Some(&t2)], &peer)
    );
    eprintln!(
        "replay sync done and a ping through node 2, {:.0} ms after the kill",
        t_kill.elapsed().as_secs_f64() * 1e3
    );
    let in2 = esp_sa(&t2, "in").expect("node 2's inbound SA");
    let (top, drops) =
        (in2["seq"].as_u64().unwrap_or(0), in2["counters"]["replay_drops"].as_u64().unwrap_or(0));
    assert!(
        top >= in1 + DELTA,
        "node 2's inbound SA took up to {top}, not above its jumped window ({in1} + {DELTA})"
    );
    assert_eq!(drops, 0, "node 2 dropped the peer's packets as replays: {in2}");
    assert_eq!(spis(&peer), before, "the peer renegotiated\n{}", logs(&[None, Some(&t2)], &peer));
}

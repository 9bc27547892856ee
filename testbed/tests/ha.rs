//! Active/standby HA (docs/ha.md) against a real strongSwan 5.9 charon: two tandemd nodes share a
//! VIP on one wan segment, mirror their SAs over a sync link, and a standby takes over without
//! the peer noticing anything but a short traffic gap.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_testbed::charon::Charon;
use tandem_testbed::cluster::{
    at_charon, charon_view, cluster_conf, ha_set_state, ha_status, in_dataplane, largest_gap, peer_conf,
    reply_times, routed_into_tun, settled, sole_active, tail, AddrEvent, AddrMonitor, BackgroundPing,
    Cluster, Sas, CLUSTER_INNER, HA_GROUP, LAN_VIP, PEER_INNER, VIP,
};
use tandem_testbed::probe::ping_until_reply;
use tandem_testbed::replay::{self, EspRecorder};
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{tools_present, wait_until};

const IKE: &str = "aes256gcm16-prfsha256-x25519";
const ESP: &str = "aes256gcm16";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// tandem's `rekey-linger` and charon's `delete_rekeyed_delay`: old SAs go 1 s after a rekey.
const LINGER: Duration = Duration::from_secs(1);
const CHARON_CONF: &str = "install_routes = yes\n  delete_rekeyed_delay = 1";
/// The failover's traffic gap must stay below this here, where the test moves the VIP and orders
/// the takeover itself; the keepalived tests below measure the target (KEEPALIVED_TARGET_GAP).
const MAX_GAP: Duration = Duration::from_secs(2);
/// The target for a failover driven by keepalived (track_process, advert_int 0.01, the
/// notify hook): the traffic gap of a 10 ms ping across it. Printed with every run as met or not.
const KEEPALIVED_TARGET_GAP: Duration = Duration::from_millis(150);
/// What the test asserts. On this shared 2-vCPU machine VRRP and the notify hook alone take 50-160
/// ms when other work runs, so the 150 ms target is a measured figure (docs/performance.md), not a
/// pass/fail line; a failover that renegotiates, or drops packets as replays, takes far longer
/// than this bound and fails.
const KEEPALIVED_MAX_GAP: Duration = Duration::from_millis(600);
/// What charon must not log after a failover or a rejoin: a new IKE SA, a rekey it did not ask for,
/// a rejected packet, a Delete, a DPD.
const CHARON_BAD: [&str; 7] = [
    "IKE_SA_INIT",
    "CREATE_CHILD_SA",
    "verification failed",
    "replay",
    "INVALID_SPI",
    "DELETE",
    "INFORMATIONAL request",
];
/// ESP packets of charon's replayed to node 2 after the takeover.
const REPLAYED: usize = 20;

fn logs(t: &[&Tandemd], c: &Charon) -> String {
    let mut s = String::new();
    for (i, t) in t.iter().enumerate() {
        s += &format!("--- tandemd node {} ({}) ---\n{}\n", i + 1, t.dir.display(), tail(&t.log(), 60));
    }
    s + &format!("--- charon ---\n{}\n", tail(&c.log(), 60))
}

/// The `seq` of a node's outbound SA `spi` in its dataplane (next to send).
fn out_seq(t: &Tandemd, spi: u32) -> u64 {
    let sas = t.ipsec_sas();
    let sa = sas.iter().find(|s| s["direction"] == "out" && s["spi"].as_u64() == Some(u64::from(spi)));
    sa.and_then(|s| s["seq"].as_u64()).unwrap_or_else(|| panic!("no outbound SA {spi:#x}: {sas:?}"))
}

fn status_field(t: &Tandemd, key: &str) -> serde_json::Value {
    ha_status(t)[key].clone()
}

/// A rekey through `t` (the active node): completed (settled on new SPIs of the kind rekeyed, the
/// other kind unchanged), the old CHILD SA gone from both ends, traffic through the new SAs.
fn await_rekey(cl: &Cluster, t: &Tandemd, c: &Charon, old: &Sas, child: bool, what: &str) -> Sas {
    let mut new = None;
    let ok = wait_until(WAIT, Duration::from_millis(20), || {
        new = settled(t, c).filter(|s| if child { s.child != old.child } else { s.ike != old.ike });
        new.is_some()
    });
    assert!(ok, "{what}: no completed rekey of {old:?}\n{}", logs(&[t], c));
    let new = new.unwrap();
    if child {
        assert_eq!(new.ike, old.ike, "{what}: a CHILD SA rekey keeps the IKE SA");
        let gone = wait_until(LINGER + Duration::from_secs(3), POLL, || {
            !in_dataplane(t, old.child) && !at_charon(c, old.child)
        });
        assert!(
            gone,
            "{what}: the old CHILD SA {old:?} is still there: tandem {:?}\n{}",
            t.ipsec_sas(),
            logs(&[t], c)
        );
    } else {
        assert_eq!(new.child, old.child, "{what}: an IKE SA rekey moves the CHILD SA over unchanged");
    }
    assert!(
        ping_until_reply(&cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "{what}: no traffic through the new SAs\n{}",
        logs(&[t], c)
    );
    eprintln!("{what}: done, now {new:?}");
    new
}

/// Node 1 active with the VIP, node 2 standby (the test moves the VIP, not keepalived), and charon
/// started, not initiated yet. None when ping is missing (a skip; a failure under CI=true).
fn manual_cluster() -> Option<(Cluster, [Tandemd; 2], Charon)> {
    if !tools_present(&["ping"]) {
        return None;
    }
    let mut cl = Cluster::new();
    cl.move_vip(None, 0);
    let mut conf = cluster_conf(IKE, ESP);
    conf.dataplane_extra = "rekey-linger = \"1s\"".into();
    let nodes = cl.start_nodes(&conf, ["active", "standby"], "");
    let c = Charon::start_with(&mut cl.peer, &peer_conf(IKE, ESP).swanctl_conf(), CHARON_CONF, 2);
    Some((cl, nodes, c))
}

#[test]
fn hot_failover_keeps_strongswans_sas() {
    // 1. node 1 active with the VIP, node 2 standby; both in sync.
    let Some((mut cl, [t1, t2], c)) = manual_cluster() else { return };
    let in_sync = wait_until(WAIT, POLL, || {
        status_field(&t1, "peer") == "in-sync" && status_field(&t2, "peer") == "in-sync"
    });
    assert!(
        in_sync,
        "nodes not in sync: node 1 {}\nnode 2 {}\n{}",
        ha_status(&t1),
        ha_status(&t2),
        logs(&[&t1, &t2], &c)
    );
    assert_eq!(status_field(&t1, "role"), "active");
    assert_eq!(status_field(&t2, "role"), "standby");

    // 2. charon initiates to the VIP; node 2 mirrors the IKE SA.
    let out = c.initiate();
    assert!(
        out.status.success(),
        "charon initiate: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        logs(&[&t1, &t2], &c)
    );
    let mut before = None;
    wait_until(WAIT, POLL, || {
        before = settled(&t1, &c);
        before.is_some()
    });
    let before =
        before.unwrap_or_else(|| panic!("not established on charon and node 1\n{}", logs(&[&t1, &t2], &c)));
    let mirrored = wait_until(WAIT, POLL, || status_field(&t2, "ike_sas") == 1);
    assert!(mirrored, "node 2 did not mirror the IKE SA: {}\n{}", ha_status(&t2), logs(&[&t1, &t2], &c));
    // The standby routes the mirrored CHILD SA's remote selectors into its TUN already (the
    // takeover then does not wait for netlink), and has no SA in its dataplane to seal with.
    let routed = wait_until(WAIT, POLL, || routed_into_tun(&cl, 1, PEER_INNER));
    assert!(routed, "standby node 2 does not route {PEER_INNER} into its TUN\n{}", logs(&[&t2], &c));
    assert!(t2.ipsec_sas().is_empty(), "standby node 2 has SAs in its dataplane: {:?}", t2.ipsec_sas());
    assert!(
        ping_until_reply(&cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "no traffic through node 1\n{}",
        logs(&[&t1, &t2], &c)
    );

    // 3. A numbered ping every 10 ms, across the failover; wait until it flows.
    let (_, spis) = charon_view(&c).expect("charon's SAs");
    let packets_out =
        |c: &Charon| c.list_sas().iter().flat_map(|s| s.children.clone()).map(|x| x.packets_out).sum::<u64>();
    let packets_in =
        |c: &Charon| c.list_sas().iter().flat_map(|s| s.children.clone()).map(|x| x.packets_in).sum::<u64>();
    let out0 = packets_out(&c);
    // The first ESP packets charon sends from here on, to be replayed to node 2 after the takeover.
    let recorder = EspRecorder::start(&mut cl.peer, &cl.peer_if.clone(), REPLAYED);
    let ping = BackgroundPing::start(&mut cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    assert!(wait_until(WAIT, POLL, || packets_out(&c) >= out0 + 20), "background ping not flowing");

    // The recorded frames are in node 1's window; node 2 must have that window before the kill
    // (else the last few are beyond what was synced, and their replay is accepted rightly, as
    // packets the dead node never reported): two replay updates sent after the recording ended,
    // and everything node 1 sent acknowledged.
    let mut frames = recorder.finish(&mut cl.peer, WAIT);
    assert_eq!(frames.len(), REPLAYED, "recorded ESP frames");
    let replay_updates = |t: &Tandemd| ha_status(t)["active"]["replay_updates"].as_u64().unwrap_or(0);
    let updates0 = replay_updates(&t1);
    let covered = wait_until(WAIT, POLL, || {
        replay_updates(&t1) >= updates0 + 2 && ha_status(&t1)["lag_messages"].as_u64() == Some(0)
    });
    assert!(covered, "node 1 sent no replay update the standby acknowledged: {}", ha_status(&t1));

    // 4. Record charon's SPIs; kill node 1, move the VIP, node 2 takes over.
    let (c_sa, _) = charon_view(&c).expect("charon's SAs");
    let charon_ike = (c_sa.spi_i.clone(), c_sa.spi_r.clone());
    let charon_log_at_kill = c.log().len();
    // Where node 1's outbound counter stands (a lower bound of what it sealed before it died).
    let sealed_by_node1 = out_seq(&t1, before.child.1);
    let t_kill = Instant::now();
    cl.kill_node(0, &t1);
    let t_killed = t_kill.elapsed();
    cl.move_vip(Some(0), 1);
    let t_vip = t_kill.elapsed();
    let taken = ha_set_state(&t2, "active");
    let t_active = t_kill.elapsed();
    let taken = taken.unwrap_or_else(|e| panic!("ha set-state active on node 2: {e}\n{}", logs(&[&t2], &c)));
    eprintln!(
        "failover: node 1 killed +{t_killed:?}, VIP on node 2 +{t_vip:?}, node 2 active +{t_active:?}; set-state answered {taken}"
    );
    assert_eq!(cl.vip_on(), vec![1]);

    // 5. Traffic resumes through node 2 with the same SAs.
    let in_at = packets_in(&c);
    let resumed = wait_until(WAIT, Duration::from_millis(10), || packets_in(&c) >= in_at + 50);
    let result = ping.stop(&mut cl.peer);
    let gap = largest_gap(&result);
    eprintln!(
        "background ping: {} sent, {} answered, largest gap {:?} (lost icmp_seq {:?})",
        result.transmitted,
        result.received,
        gap,
        result.missing().iter().map(|m| m.0).collect::<Vec<_>>()
    );
    assert!(resumed, "traffic did not resume through node 2\n{}", logs(&[&t2], &c));
    let (gap, seq_before, seq_after) = gap.expect("replies to measure a gap");
    eprintln!(
        "FAILOVER GAP: {:.1} ms (between icmp_seq {seq_before} and {seq_after})",
        gap.as_secs_f64() * 1000.0
    );
    assert!(gap < MAX_GAP, "traffic gap {gap:?} over {MAX_GAP:?}\n{}", logs(&[&t2], &c));

    let (c_sa, c_spis) = charon_view(&c).expect("charon still has its SAs");
    assert_eq!((c_sa.spi_i.clone(), c_sa.spi_r.clone()), charon_ike, "charon's IKE SPIs changed");
    assert_eq!(c_spis, spis, "charon's CHILD SPIs changed");
    let agree = wait_until(WAIT, POLL, || settled(&t2, &c).as_ref() == Some(&before));
    assert!(
        agree,
        "node 2 and charon do not agree on node 1's SAs {before:?}: node 2 {:?} {:?}\n{}",
        t2.ike_sas(),
        t2.child_sas(),
        logs(&[&t2], &c)
    );
    let charon_log = c.log();
    let since_kill = charon_log.get(charon_log_at_kill..).unwrap_or("");
    for bad in
        ["IKE_SA_INIT", "verification failed", "replay", "INVALID_SPI", "DELETE", "INFORMATIONAL request"]
    {
        let lines: Vec<&str> = since_kill.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            lines.is_empty(),
            "charon logged {bad:?} after the failover: {lines:#?}\n{}",
            logs(&[&t2], &c)
        );
    }
    // Node 2 resumed the outbound SA above every number node 1 could have sealed (its lease).
    let next_on_node2 = out_seq(&t2, before.child.1);
    eprintln!(
        "outbound SA {:#010x}: node 1 at seq {sealed_by_node1} before the kill, node 2 next {next_on_node2}",
        before.child.1
    );
    assert!(
        next_on_node2 > sealed_by_node1,
        "node 2 resumed at {next_on_node2}, node 1 had reached {sealed_by_node1}"
    );
    let st = ha_status(&t2);
    assert_eq!(st["role"], "active", "{st}");
    assert_eq!(st["takeovers"], 1, "{st}");

    // Node 1 accepted the recorded packets before it died; node 2 took its replay window over, so
    // the same packets sent again are dropped as replays (a fresh window would accept them).
    let mac: Vec<u8> = cl.gw_mac(1).split(':').map(|b| u8::from_str_radix(b, 16).expect("mac")).collect();
    let mac_hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    for f in &mut frames {
        // They were addressed to node 1's interface; the VIP now answers on node 2's.
        f.hex.replace_range(0..12, &mac_hex);
    }
    let drops0 = t2.sa_counter("in", "replay_drops");
    assert_eq!(replay::inject(&cl.peer, &cl.peer_if, &frames), REPLAYED);
    let dropped = wait_until(WAIT, POLL, || t2.sa_counter("in", "replay_drops") >= drops0 + REPLAYED as u64);
    assert!(
        dropped,
        "node 2 accepted replayed packets (replay drops {} -> {}; seqs {:?})",
        drops0,
        t2.sa_counter("in", "replay_drops"),
        frames.iter().map(|f| f.seq).collect::<Vec<_>>()
    );
    assert_eq!(t2.sa_counter("in", "auth_failures"), 0);

    // 6. Rekeys through node 2: CHILD and IKE by charon, CHILD by node 2.
    let out = c.swanctl(&["--rekey", "--child", "net"]);
    assert!(out.status.success(), "swanctl --rekey --child: {}", String::from_utf8_lossy(&out.stdout));
    let sas = await_rekey(&cl, &t2, &c, &before, true, "CHILD rekey by charon through node 2");
    let out = c.swanctl(&["--rekey", "--ike", "t"]);
    assert!(out.status.success(), "swanctl --rekey --ike: {}", String::from_utf8_lossy(&out.stdout));
    let sas = await_rekey(&cl, &t2, &c, &sas, false, "IKE rekey by charon through node 2");
    let out = t2.ctl(&["rekey", "child-sa", &format!("{:#x}", sas.child.0)]);
    assert!(out.status.success(), "tandemctl rekey child-sa: {}", String::from_utf8_lossy(&out.stderr));
    await_rekey(&cl, &t2, &c, &sas, true, "CHILD rekey by node 2");
    let log = c.log();
    let failed: Vec<&str> =
        log.lines().filter(|l| l.contains("failed") || l.contains("verification")).collect();
    assert!(failed.is_empty(), "charon logged failures: {failed:#?}");
}

// ---------------------------------------------------------------------------------------------
// keepalived (examples/ha/): VRRPv3 at 10 ms, track_process on each node's tandemd, the notify
// hook ordering the takeover. The tests never move a VIP or call set-state themselves.

/// A keepalived-driven cluster with charon's tunnel established through the active node.
struct KaCluster {
    cl: Cluster,
    /// Each node's running tandemd (None while killed).
    t: [Option<Tandemd>; 2],
    c: Charon,
    /// The node keepalived made MASTER (its tandemd active).
    active: usize,
    /// The SAs as charon and the active node agree on them (unchanged through every failover).
    sas: Sas,
    /// charon's CHILD SPIs (in, out).
    charon_child: (u32, u32),
}

impl KaCluster {
    fn node(&self, i: usize) -> &Tandemd {
        self.t[i].as_ref().unwrap_or_else(|| panic!("node {} is not running", i + 1))
    }

    /// Every running node's and keepalived's log tails, and charon's.
    fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..2 {
            if let Some(t) = &self.t[i] {
                s += &format!(
                    "--- tandemd node {} ({}) ---\n{}\n",
                    i + 1,
                    t.dir.display(),
                    tail(&t.log(), 40)
                );
            }
            s += &format!("--- keepalived node {} ---\n{}\n", i + 1, tail(&self.cl.keepalived_log(i), 25));
            s += &format!("--- notify node {} ---\n{}\n", i + 1, tail(&self.cl.notify_log(i), 15));
        }
        s + &format!("--- charon ---\n{}\n", tail(&self.c.log(), 40))
    }
}

fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// The notify log's lines after byte `from` that contain `what`, as (epoch seconds, line).
fn notify_events(log: &str, from: usize, what: &str) -> Vec<(f64, String)> {
    log.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| Some((l.split_whitespace().next()?.parse::<f64>().ok()?, l.to_string())))
        .collect()
}

/// Both nodes `initial-role = "vrrp"`; keepalived on node 1, which becomes MASTER (its notify makes
/// tandemd active), then on node 2, which becomes BACKUP (standby, in sync); both VIPs on node 1
/// only; then charon's tunnel through node 1, mirrored by node 2. None when keepalived or ping are
/// missing (a skip; a failure under CI=true).
fn keepalived_cluster() -> Option<KaCluster> {
    if !tools_present(&["ping", "keepalived", "timeout"]) {
        return None;
    }
    let mut cl = Cluster::new();
    let mut conf = cluster_conf(IKE, ESP);
    conf.dataplane_extra = "rekey-linger = \"1s\"".into();
    let ha_extra = format!("listen-ha-group = \"{HA_GROUP}\"");
    let [t1, t2] = cl.start_nodes(&conf, ["vrrp", "vrrp"], &ha_extra);
    for t in [&t1, &t2] {
        assert_eq!(status_field(t, "role"), "standby", "initial-role vrrp starts as standby");
    }
    let c = Charon::start_with(&mut cl.peer, &peer_conf(IKE, ESP).swanctl_conf(), CHARON_CONF, 2);
    let mut k = KaCluster {
        cl,
        t: [Some(t1), Some(t2)],
        c,
        active: 0,
        sas: Sas { ike: (String::new(), String::new()), child: (0, 0) },
        charon_child: (0, 0),
    };
    // One node at a time, as an operator brings a pair up: node 1's keepalived alone becomes
    // MASTER (after its master-down interval) and its notify makes tandemd active. Two keepalived
    // started together may both be MASTER for a moment, and an active tandemd cannot step down.
    let t0 = Instant::now();
    k.cl.start_keepalived(0);
    let first = wait_until(WAIT, Duration::from_millis(5), || status_field(k.node(0), "role") == "active");
    let t_first = t0.elapsed();
    assert!(first, "keepalived did not make node 1 active: {}\n{}", ha_status(k.node(0)), k.logs());
    // Node 2 joins as BACKUP: its notify (BACKUP) keeps it standby; tandem syncs it.
    let t1 = Instant::now();
    k.cl.start_keepalived(1);
    let backup = format!("GROUP {HA_GROUP} BACKUP 0: tandemd is standby");
    let joined = wait_until(WAIT, Duration::from_millis(10), || {
        k.cl.notify_log(1).contains(&backup)
            && status_field(k.node(0), "peer") == "in-sync"
            && status_field(k.node(1), "peer") == "in-sync"
    });
    let t_second = t1.elapsed();
    assert!(
        joined,
        "node 2 did not join as BACKUP, in sync: {}\n{}\n{}",
        ha_status(k.node(0)),
        ha_status(k.node(1)),
        k.logs()
    );
    let a = 0;
    let t_elected = t0.elapsed();
    for (i, role) in [(0, "active"), (1, "standby")] {
        assert_eq!(status_field(k.node(i), "role"), role, "node {}\n{}", i + 1, k.logs());
    }
    // VRRP at 10 ms adverts may make the joining node MASTER for a moment before it hears the
    // other's adverts (seen once in CI); its tandemd then steps down on the BACKUP that follows
    // (the roles above). What must hold is that it ends BACKUP: its last group transition.
    let n2 = k.cl.notify_log(1);
    let last = n2.lines().rfind(|l| l.contains(&format!("GROUP {HA_GROUP} "))).unwrap_or("");
    assert!(last.contains("BACKUP"), "node 2 did not end BACKUP: {last}\n{}", k.logs());
    if n2.contains(&format!("GROUP {HA_GROUP} MASTER")) {
        eprintln!("keepalived: node 2 was MASTER for a moment while joining, then BACKUP (stepped down)");
    }
    let vips = wait_until(WAIT, POLL, || k.cl.vip_on() == vec![a] && k.cl.lan_vip_on() == vec![a]);
    assert!(
        vips,
        "VIPs not on node {} only: wan {:?}, lan {:?}\n{}",
        a + 1,
        k.cl.vip_on(),
        k.cl.lan_vip_on(),
        k.logs()
    );
    eprintln!(
        "keepalived: node 1 alone MASTER and active after {t_first:?}; node 2 BACKUP, standby and in sync {t_second:?} after its start ({t_elected:?} in all)"
    );
    for i in 0..2 {
        eprintln!("notify node {}:\n{}", i + 1, k.cl.notify_log(i).trim_end());
    }

    // charon initiates to the VIP (served by the MASTER); the standby mirrors the IKE SA.
    let out = k.c.initiate();
    assert!(out.status.success(), "charon initiate: {}\n{}", String::from_utf8_lossy(&out.stdout), k.logs());
    // Whichever node is active once the tunnel is up (`sole_active`: VRRP may still elect node 2
    // on its own, after the checks above; seen in CI) is the one the tests kill.
    let (mut sas, mut a) = (None, a);
    wait_until(WAIT, POLL, || {
        let Some(x) = sole_active([k.node(0), k.node(1)]) else { return false };
        a = x;
        sas = settled(k.node(a), &k.c);
        sas.is_some()
    });
    k.sas = sas.unwrap_or_else(|| panic!("not established on charon and node {}\n{}", a + 1, k.logs()));
    if a != 0 {
        eprintln!("keepalived: VRRP elected node 2 on its own before the tunnel came up; it is the active");
    }
    k.active = a;
    let mirrored = wait_until(WAIT, POLL, || {
        let s = ha_status(k.node(1 - a));
        s["ike_sas"] == 1 && s["peer"] == "in-sync"
    });
    assert!(mirrored, "node {} did not mirror the IKE SA: {}\n{}", 2 - a, ha_status(k.node(1 - a)), k.logs());
    assert!(
        ping_until_reply(&k.cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "no traffic through node {}\n{}",
        a + 1,
        k.logs()
    );
    k.charon_child = charon_view(&k.c).expect("charon's SAs").1;
    Some(k)
}

/// What a failover measured.
struct Failover {
    gap: Duration,
}

/// `kill -9` the active node's tandemd with a 10 ms ping running, and nothing else: keepalived's
/// track_process must give up the VIPs there, the other keepalived become MASTER and its notify
/// make that tandemd active. Checks the gap, charon's SPIs and log, the VIPs and the new active's
/// status; afterwards `k.active` is the new active.
fn keepalived_failover(k: &mut KaCluster, what: &str) -> Failover {
    let (a, b) = (k.active, 1 - k.active);
    let packets_out =
        |c: &Charon| c.list_sas().iter().flat_map(|s| s.children.clone()).map(|x| x.packets_out).sum::<u64>();
    let packets_in =
        |c: &Charon| c.list_sas().iter().flat_map(|s| s.children.clone()).map(|x| x.packets_in).sum::<u64>();
    let out0 = packets_out(&k.c);
    let monitors = [AddrMonitor::start(&mut k.cl.gw[0]), AddrMonitor::start(&mut k.cl.gw[1])];
    let ping = BackgroundPing::start(&mut k.cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    assert!(wait_until(WAIT, POLL, || packets_out(&k.c) >= out0 + 20), "{what}: background ping not flowing");

    let (c_sa, _) = charon_view(&k.c).expect("charon's SAs");
    let charon_ike = (c_sa.spi_i.clone(), c_sa.spi_r.clone());
    assert_eq!(charon_ike, k.sas.ike, "{what}: charon's IKE SPIs moved before the kill");
    let charon_log_at_kill = k.c.log().len();
    let notify_at = [k.cl.notify_log(0).len(), k.cl.notify_log(1).len()];
    let takeovers_before = status_field(k.node(b), "takeovers").as_u64().unwrap_or(0);
    let victim = k.t[a].take().expect("the active node runs");
    let (epoch_kill, t_kill) = (epoch_now(), Instant::now());
    k.cl.kill_node(a, &victim);
    let t_killed = t_kill.elapsed();
    let taken = wait_until(WAIT, Duration::from_millis(2), || status_field(k.node(b), "role") == "active");
    let t_seen = t_kill.elapsed();
    assert!(taken, "{what}: node {} did not become active\n{}", b + 1, k.logs());

    let in_at = packets_in(&k.c);
    let resumed = wait_until(WAIT, Duration::from_millis(10), || packets_in(&k.c) >= in_at + 50);
    let result = ping.stop(&mut k.cl.peer);
    let gap = largest_gap(&result);
    let [m0, m1] = monitors;
    let addr_events = [m0.stop(&mut k.cl.gw[0]), m1.stop(&mut k.cl.gw[1])];
    let vip_event = |i: usize, addr: &str, added: bool| {
        addr_events[i]
            .iter()
            .find(|e: &&AddrEvent| e.added == added && e.addr.starts_with(&format!("{addr}/")))
            .map(|e| format!("+{:.1} ms", (e.at - epoch_kill) * 1000.0))
            .unwrap_or_else(|| "never".into())
    };
    eprintln!(
        "{what}: VIPs: wan off node {} {}, on node {} {}; lan off node {} {}, on node {} {}",
        a + 1,
        vip_event(a, VIP, false),
        b + 1,
        vip_event(b, VIP, true),
        a + 1,
        vip_event(a, LAN_VIP, false),
        b + 1,
        vip_event(b, LAN_VIP, true),
    );
    // The transitions, from the notify hooks' logs (epoch timestamps) against the kill.
    let since = |i: usize, what: &str| {
        notify_events(&k.cl.notify_log(i), notify_at[i], what)
            .first()
            .map(|(t, _)| format!("+{:.1} ms", (t - epoch_kill) * 1000.0))
            .unwrap_or_else(|| "never".into())
    };
    eprintln!(
        "{what}: node {} tandemd killed +{t_killed:?}; notify on node {}: FAULT {}; notify on node {}: MASTER {}, \
         set-state active done {}; node {} seen active +{t_seen:?}",
        a + 1,
        a + 1,
        since(a, &format!("GROUP {HA_GROUP} FAULT 0: tandemctl")),
        b + 1,
        since(b, &format!("GROUP {HA_GROUP} MASTER 0: tandemctl")),
        since(b, "tandemd is active"),
        b + 1,
    );
    eprintln!(
        "{what}: background ping: {} sent, {} answered, largest gap {:?} (lost icmp_seq {:?})",
        result.transmitted,
        result.received,
        gap,
        result.missing().iter().map(|m| m.0).collect::<Vec<_>>()
    );
    assert!(resumed, "{what}: traffic did not resume through node {}\n{}", b + 1, k.logs());
    let (gap, seq_before, seq_after) = gap.expect("replies to measure a gap");
    let replies = reply_times(&result);
    let at = |seq: u32| {
        replies
            .iter()
            .find(|r| r.0 == seq)
            .map(|r| format!("{:+.1} ms", (r.1 - epoch_kill) * 1000.0))
            .unwrap_or_default()
    };
    // ping -O prints "no answer yet for icmp_seq=N" (timestamped) when it sends the next request.
    let around: Vec<&str> = result
        .output
        .lines()
        .filter(|l| {
            l.split("icmp_seq=")
                .nth(1)
                .and_then(|x| x.split_whitespace().next())
                .and_then(|x| x.parse::<u32>().ok())
                .is_some_and(|q| q + 1 >= seq_before && q <= seq_after + 1)
        })
        .collect();
    eprintln!("{what}: ping around the gap (kill at {epoch_kill:.6}):\n{}", around.join("\n"));
    eprintln!(
        "{what}: KEEPALIVED FAILOVER GAP: {:.1} ms (between icmp_seq {seq_before} at {} and {seq_after} at {} from the kill)",
        gap.as_secs_f64() * 1000.0,
        at(seq_before),
        at(seq_after)
    );
    for sa in k.node(b).ipsec_sas() {
        eprintln!(
            "{what}: node {} SA {} {:#x}: seq {} counters {}",
            b + 1,
            sa["direction"],
            sa["spi"].as_u64().unwrap_or(0),
            sa["seq"],
            sa["counters"]
        );
    }
    let vips = wait_until(WAIT, POLL, || k.cl.vip_on() == vec![b] && k.cl.lan_vip_on() == vec![b]);
    assert!(
        vips,
        "{what}: VIPs not on node {} only: wan {:?}, lan {:?}\n{}",
        b + 1,
        k.cl.vip_on(),
        k.cl.lan_vip_on(),
        k.logs()
    );

    let (c_sa, c_spis) = charon_view(&k.c).expect("charon still has its SAs");
    assert_eq!((c_sa.spi_i.clone(), c_sa.spi_r.clone()), charon_ike, "{what}: charon's IKE SPIs changed");
    assert_eq!(c_spis, k.charon_child, "{what}: charon's CHILD SPIs changed");
    let agree = wait_until(WAIT, POLL, || settled(k.node(b), &k.c).as_ref() == Some(&k.sas));
    assert!(agree, "{what}: node {} and charon do not agree on {:?}\n{}", b + 1, k.sas, k.logs());
    let charon_log = k.c.log();
    let since_kill = charon_log.get(charon_log_at_kill..).unwrap_or("");
    for bad in CHARON_BAD {
        let lines: Vec<&str> = since_kill.lines().filter(|l| l.contains(bad)).collect();
        assert!(lines.is_empty(), "{what}: charon logged {bad:?} after the kill: {lines:#?}\n{}", k.logs());
    }
    let st = ha_status(k.node(b));
    assert_eq!(st["role"], "active", "{st}");
    assert_eq!(st["takeovers"].as_u64(), Some(takeovers_before + 1), "{st}");
    // keepalived moved the VIPs because of the kill, not before: no MASTER on the standby's side
    // earlier (a stalled VRRP process would make two active nodes).
    let early: Vec<String> = notify_events(&k.cl.notify_log(b), notify_at[b], "MASTER")
        .into_iter()
        .filter(|(t, _)| *t < epoch_kill)
        .map(|(_, l)| l)
        .collect();
    assert!(early.is_empty(), "{what}: node {} was MASTER before the kill: {early:#?}\n{}", b + 1, k.logs());
    eprintln!(
        "{what}: target of {KEEPALIVED_TARGET_GAP:?}: {}",
        if gap <= KEEPALIVED_TARGET_GAP { "met" } else { "NOT met" }
    );
    assert!(
        gap <= KEEPALIVED_MAX_GAP,
        "{what}: traffic gap {gap:?} over {KEEPALIVED_MAX_GAP:?}\n{}",
        k.logs()
    );
    k.active = b;
    Failover { gap }
}

#[test]
fn keepalived_failover_under_traffic() {
    let Some(mut k) = keepalived_cluster() else { return };
    keepalived_failover(&mut k, "keepalived failover");
    // The dead node's keepalived is in FAULT (its tandemd is gone) and holds no VIP.
    let dead = 1 - k.active;
    assert!(
        k.cl.keepalived_log(dead).contains("Entering FAULT STATE"),
        "node {}'s keepalived did not enter FAULT:\n{}",
        dead + 1,
        tail(&k.cl.keepalived_log(dead), 30)
    );
}

/// `tandemctl ha switchover` on the active node under a 10 ms ping: the standby takes over at the
/// handover, with exact replay windows and its counters just above the old active's (frozen, with
/// a few numbers kept for packets still reaching it); then the VIP moves make-before-break (on the
/// new active first, then off the old one: what a VRRP preemption does), and the old active steps
/// down and is bulk-synced again. Not one ping is lost, charon sees nothing (same SPIs, no
/// exchange, no replay), and the old active ends a standby in sync. With keepalived the VIP move
/// is VRRP's (docs/ha.md, "Planned switchover").
#[test]
fn planned_switchover_loses_nothing() {
    let Some((mut cl, [t1, t2], c)) = manual_cluster() else { return };
    let all = |t1: &Tandemd, t2: &Tandemd, c: &Charon| logs(&[t1, t2], c);
    assert!(c.initiate().status.success(), "charon initiate\n{}", all(&t1, &t2, &c));
    let mut sas = None;
    wait_until(WAIT, POLL, || {
        sas = settled(&t1, &c);
        sas.is_some()
    });
    let sas = sas.unwrap_or_else(|| panic!("not established\n{}", all(&t1, &t2, &c)));
    let synced = |t: &Tandemd| status_field(t, "peer") == "in-sync" && status_field(t, "ike_sas") == 1;
    assert!(wait_until(WAIT, POLL, || synced(&t1) && synced(&t2)), "not in sync\n{}", all(&t1, &t2, &c));
    let (_, charon_child) = charon_view(&c).expect("charon's SAs");
    let packets_in =
        |c: &Charon| c.list_sas().iter().flat_map(|s| s.children.clone()).map(|x| x.packets_in).sum::<u64>();
    let in0 = packets_in(&c);
    let ping = BackgroundPing::start(&mut cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    assert!(wait_until(WAIT, POLL, || packets_in(&c) >= in0 + 20), "ping not flowing\n{}", all(&t1, &t2, &c));
    let charon_log_at = c.log().len();

    let t0 = Instant::now();
    let answer = ha_set_state(&t1, "switchover");
    assert!(answer.is_ok(), "switchover refused: {answer:?}\n{}", all(&t1, &t2, &c));
    let taken = wait_until(WAIT, Duration::from_millis(2), || status_field(&t2, "role") == "active");
    let t_taken = t0.elapsed();
    assert!(taken, "node 2 did not take over at the handover\n{}", all(&t1, &t2, &c));
    assert_eq!(status_field(&t1, "handing_over"), true, "{}", ha_status(&t1));
    // Ten more pings through node 1 (it still holds the VIP and forwards), then the VIP moves.
    let in1 = packets_in(&c);
    assert!(wait_until(WAIT, POLL, || packets_in(&c) >= in1 + 10), "no traffic while handing over");
    cl.move_vip_make_before_break(0, 1);
    let t_moved = t0.elapsed();
    let in2 = packets_in(&c);
    assert!(
        wait_until(WAIT, POLL, || packets_in(&c) >= in2 + 20),
        "no traffic after the move\n{}",
        all(&t1, &t2, &c)
    );
    let counters: Vec<String> = [(&t1, "old active"), (&t2, "new active")]
        .iter()
        .flat_map(|(t, who)| {
            t.ipsec_sas().into_iter().map(move |sa| {
                let spi = sa["spi"].as_u64().unwrap_or(0);
                format!(
                    "{who} SA {} {spi:#x}: seq {} counters {}",
                    sa["direction"], sa["seq"], sa["counters"]
                )
            })
        })
        .collect();
    assert!(ha_set_state(&t1, "standby").is_ok(), "step down\n{}", all(&t1, &t2, &c));
    let rejoined =
        wait_until(WAIT, POLL, || status_field(&t1, "role") == "standby" && synced(&t1) && synced(&t2));
    let t_synced = t0.elapsed();
    assert!(rejoined, "node 1 is not a standby in sync: {}\n{}", ha_status(&t1), all(&t1, &t2, &c));
    let result = ping.stop(&mut cl.peer);
    // The last request may still be in flight when ping is stopped: not a loss.
    let lost: Vec<u32> = result.missing().iter().map(|m| m.0).filter(|&q| q < result.transmitted).collect();
    eprintln!(
        "switchover: node 2 active +{t_taken:?}, VIP moved +{t_moved:?}, node 1 standby in sync +{t_synced:?}; \
         ping {} sent, {} answered, largest gap {:?}, lost icmp_seq {lost:?}\nswitchover: {}",
        result.transmitted,
        result.received,
        largest_gap(&result),
        counters.join("\nswitchover: ")
    );
    assert!(lost.is_empty(), "pings lost in a planned switchover: {lost:?}\n{}", all(&t1, &t2, &c));
    let (c_sa, c_spis) = charon_view(&c).expect("charon's SAs");
    assert_eq!((c_sa.spi_i.clone(), c_sa.spi_r.clone()), sas.ike, "charon's IKE SPIs changed");
    assert_eq!(c_spis, charon_child, "charon's CHILD SPIs changed");
    assert_eq!(settled(&t2, &c).as_ref(), Some(&sas), "node 2 and charon disagree");
    let charon_log = c.log();
    let since = charon_log.get(charon_log_at..).unwrap_or("");
    for bad in CHARON_BAD {
        let lines: Vec<&str> = since.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            lines.is_empty(),
            "charon logged {bad:?} in the switchover: {lines:#?}\n{}",
            all(&t1, &t2, &c)
        );
    }
    let (s1, s2) = (ha_status(&t1), ha_status(&t2));
    assert_eq!(
        (s1["switchovers_out"].as_u64(), s2["switchovers_in"].as_u64()),
        (Some(1), Some(1)),
        "{s1}\n{s2}"
    );
    assert_eq!(s2["stale_takeovers"], 0, "{s2}");
}

#[test]
fn rejoin_without_rekey_and_fail_back() {
    let Some(mut k) = keepalived_cluster() else { return };
    let first = keepalived_failover(&mut k, "failover");
    let (a, r) = (k.active, 1 - k.active);

    // The killed node comes back as a vrrp standby: keepalived sees its tandemd again and goes
    // BACKUP (nopreempt: it does not take the VIPs back); the active bulk-syncs it, nothing rekeyed.
    let charon_log_at = k.c.log().len();
    let notify_at = k.cl.notify_log(r).len();
    let t0 = Instant::now();
    k.t[r] = Some(k.cl.start_node(r, "vrrp"));
    let t_up = t0.elapsed();
    let joined = wait_until(WAIT, POLL, || {
        let s = ha_status(k.node(r));
        s["role"] == "standby"
            && s["peer"] == "in-sync"
            && s["ike_sas"] == 1
            && status_field(k.node(a), "peer") == "in-sync"
    });
    let t_joined = t0.elapsed();
    assert!(
        joined,
        "node {} did not rejoin: {}\nactive: {}\n{}",
        r + 1,
        ha_status(k.node(r)),
        ha_status(k.node(a)),
        k.logs()
    );
    let backup = wait_until(WAIT, POLL, || {
        !notify_events(&k.cl.notify_log(r), notify_at, &format!("GROUP {HA_GROUP} BACKUP 0: tandemctl"))
            .is_empty()
    });
    let t_backup = t0.elapsed();
    assert!(backup, "node {}'s keepalived did not go BACKUP after the restart\n{}", r + 1, k.logs());
    eprintln!(
        "rejoin: node {} tandemd up +{t_up:?}, in sync with {} IKE SA +{t_joined:?}, keepalived BACKUP (notify) by +{t_backup:?}; status {}",
        r + 1,
        status_field(k.node(r), "ike_sas"),
        ha_status(k.node(r))
    );
    assert!(
        notify_events(&k.cl.notify_log(r), notify_at, "MASTER").is_empty(),
        "node {}'s keepalived went MASTER on rejoining\n{}",
        r + 1,
        k.logs()
    );
    assert_eq!(k.cl.vip_on(), vec![a], "the VIPs stay on the active node (nopreempt)");
    assert_eq!(k.cl.lan_vip_on(), vec![a]);
    let (c_sa, c_spis) = charon_view(&k.c).expect("charon's SAs");
    assert_eq!(
        (c_sa.spi_i.clone(), c_sa.spi_r.clone()),
        k.sas.ike,
        "charon's IKE SPIs changed by the rejoin"
    );
    assert_eq!(c_spis, k.charon_child, "charon's CHILD SPIs changed by the rejoin");
    assert_eq!(
        settled(k.node(a), &k.c).as_ref(),
        Some(&k.sas),
        "the active node's SAs changed by the rejoin"
    );
    let charon_log = k.c.log();
    let since = charon_log.get(charon_log_at..).unwrap_or("");
    for bad in CHARON_BAD {
        let lines: Vec<&str> = since.lines().filter(|l| l.contains(bad)).collect();
        assert!(lines.is_empty(), "charon logged {bad:?} after the rejoin: {lines:#?}\n{}", k.logs());
    }
    assert!(
        ping_until_reply(&k.cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "no traffic through node {} after the rejoin\n{}",
        a + 1,
        k.logs()
    );

    // Fail back: kill the active node; keepalived moves the VIPs to the rejoined one.
    let back = keepalived_failover(&mut k, "fail-back");
    assert_eq!(k.active, r);
    eprintln!(
        "gaps: failover {:.1} ms, fail-back {:.1} ms",
        first.gap.as_secs_f64() * 1000.0,
        back.gap.as_secs_f64() * 1000.0
    );
}

//! A vpn added at run time (`tandemctl reload`) in an HA cluster, against
//! strongSwan's charon (seed 000: SAs of peers added after the system came up must be mirrored and
//! survive a failover, and numbering must be right after a restart, whatever the order things were
//! added in).
//!
//! `vpn_added_by_reload_survives_restart_and_failover`, one cluster (node 1 active with the VIP,
//! node 2 standby, static roles), CHILD SA configurations `c1`, `c2`, `c3` on disjoint selectors
//! (10.99.1N.0/24 <-> 10.99.2N.0/24), `c1` and `c3` in vpn `t`, `c2` alone in vpn `s` (another
//! identity of charon's), charon initiating each by name:
//! 1. both nodes start with vpn `t`; charon brings `c1` and `c3` up; node 2 mirrors them;
//! 2. vpn `s` is added to both nodes' files and each node reloads: the
//!    configuration digests differ while only node 1 has reloaded and agree again after node 2
//!    has; charon brings `c2` up (a second IKE SA) and node 2 mirrors it;
//! 3. node 2 restarts with the new file. A node numbers CHILD SA configurations (reqids, which
//!    key the dataplane's policies and outbound SAs) as it learns them, at start in the order of
//!    vpn names: node 2 now has s/c2 = 1, t/c1 = 2, t/c3 = 3 where node 1, which learnt `s` last,
//!    has t/c1 = 1, t/c3 = 2, s/c2 = 3. Node 2 bulk-syncs and must adopt node 1's numbering;
//! 4. `kill -9` of node 1, the VIP moved, node 2 made active. Asserted: charon's IKE and CHILD
//!    SPIs unchanged, no IKE_SA_INIT or CREATE_CHILD_SA at charon, and for each configuration a
//!    ping between its own addresses is answered through its own CHILD SA: charon counts the
//!    reply on that CHILD SA;
//! 5. charon closes `c1` and opens it again through node 2; each configuration's traffic still
//!    comes back on its own CHILD SA. A node 2 that kept its own numbering gives the new CHILD SA
//!    its number for t/c1, the reqid of the mirrored t/c3 SA, and sends c3's traffic on it (the
//!    per-SA policies of the mirrored SAs hide the wrong numbering until then).

use std::time::Duration;
use tandem_testbed::charon::Charon;
use tandem_testbed::cluster::{
    cluster_conf, ha_set_state, ha_status, routed_into_tun, tail, Cluster, PEER_WAN, SOCKET_PLACEHOLDER, VIP,
};
use tandem_testbed::probe::ping_until_reply;
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{tools_present, wait_until};

const IKE: &str = "aes256gcm16-prfsha256-x25519";
const ESP: &str = "aes256gcm16";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// The CHILD SA configurations: vpn, name, and the third octet of the cluster's and the peer's
/// subnets. `c2` is in a vpn of its own (another identity of the peer's), the one added by reload.
const CHILDREN: [(&str, &str, u8, u8); 3] = [("t", "c1", 10, 20), ("s", "c2", 11, 21), ("t", "c3", 12, 22)];

/// The nodes' common configuration with the CHILD SA configurations `names`, in that order: vpn
/// `t` (c1, c3) and, with `c2`, vpn `s`.
fn config(names: &[&str]) -> String {
    let mut c = cluster_conf(IKE, ESP);
    c.socket = SOCKET_PLACEHOLDER.into();
    c.local_ts.clear();
    c.remote_ts.clear();
    let mut s = c.toml();
    for (vpn, name, l, r) in CHILDREN.iter().filter(|(_, n, ..)| names.contains(n)) {
        if *vpn == "s" {
            s += &format!(
                "[vpn.s]\nike-policy = \"ike1\"\nipsec-policy = \"ipsec1\"\nlocal-address = \"{VIP}\"\n\
                 remote-address = \"{PEER_WAN}\"\nlocal-id = \"a.test\"\nremote-id = \"c.test\"\n\n\
                 [pre-shared-key.s]\nids = [\"a.test\", \"c.test\"]\nsecret = \"another-test-psk\"\n\n"
            );
        }
        s += &format!(
            "[[vpn.{vpn}.security-policy]]\nname = \"{name}\"\nlocal-ts = [\"10.99.{l}.0/24\"]\nremote-ts = [\"10.99.{r}.0/24\"]\n\n"
        );
    }
    s
}

/// charon's connections: `t` (as b.test, children c1 and c3) and `s` (as c.test, child c2), none
/// started on its own.
fn charon_conf() -> String {
    let conn = |name: &str, id: &str, psk: &str| {
        let mut children = String::new();
        for (_, child, l, r) in CHILDREN.iter().filter(|(v, ..)| *v == name) {
            children += &format!(
                "      {child} {{\n        local_ts = 10.99.{r}.0/24\n        remote_ts = 10.99.{l}.0/24\n        \
                 esp_proposals = {ESP}\n        start_action = none\n      }}\n"
            );
        }
        let conn = format!(
            "  {name} {{\n    version = 2\n    local_addrs = {PEER_WAN}\n    remote_addrs = {VIP}\n    proposals = {IKE}\n    \
             local {{\n      auth = psk\n      id = {id}\n    }}\n    remote {{\n      auth = psk\n      id = a.test\n    }}\n    \
             children {{\n{children}    }}\n  }}\n"
        );
        let secret =
            format!("  ike-{name} {{\n    id-a = {id}\n    id-b = a.test\n    secret = \"{psk}\"\n  }}\n");
        (conn, secret)
    };
    let (t, t_secret) = conn("t", "b.test", "a-long-test-psk");
    let (u, u_secret) = conn("s", "c.test", "another-test-psk");
    format!("connections {{\n{t}{u}}}\nsecrets {{\n{t_secret}{u_secret}}}\n")
}

fn logs(t: &[&Tandemd], c: &Charon) -> String {
    let mut s = String::new();
    for t in t {
        s += &format!("--- tandemd {} ---\n{}\n", t.dir.display(), tail(&t.log(), 60));
    }
    s + &format!("--- charon ---\n{}\n", tail(&c.log(), 40))
}

/// charon's IKE SAs as (connection, SPIs), sorted.
fn charon_ike(c: &Charon) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = c.list_sas().into_iter().map(|s| (s.name, s.spi_i, s.spi_r)).collect();
    v.sort();
    v
}

/// charon's installed CHILD SAs: (name, spi_in, spi_out), sorted.
fn charon_children(c: &Charon) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = c
        .list_sas()
        .iter()
        .flat_map(|sa| {
            sa.installed_children()
                .iter()
                .map(|x| (x.name.clone(), x.spi_in.clone(), x.spi_out.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

/// Packets charon decrypted on its CHILD SA of configuration `name` (charon lists it as
/// `name-UNIQUEID`).
fn charon_packets_in(c: &Charon, name: &str) -> u64 {
    let of = |x: &str| x.rsplit_once('-').map_or(x, |(n, _)| n) == name;
    c.list_sas()
        .iter()
        .flat_map(|sa| {
            sa.installed_children()
                .into_iter()
                .filter(|x| of(&x.name))
                .map(|x| x.packets_in)
                .collect::<Vec<_>>()
        })
        .sum()
}

fn initiate(c: &Charon, child: &str, nodes: &[&Tandemd]) {
    let out = c.swanctl(&["--initiate", "--child", child, "--timeout", "20"]);
    assert!(
        out.status.success(),
        "charon initiate {child}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        logs(nodes, c)
    );
}

/// Node `t` (a standby) mirrors `ike` IKE SAs with `n` CHILD SAs.
fn await_mirrored(t: &Tandemd, ike: usize, n: usize, c: &Charon, what: &str) {
    let ok = wait_until(WAIT, POLL, || ha_status(t)["ike_sas"] == ike && t.child_sas().len() == n);
    assert!(ok, "{what}: node 2 does not mirror {n} CHILD SAs: {:?}\n{}", t.child_sas(), logs(&[t], c));
}

/// Standby node 2 routes each CHILD SA configuration's remote addresses into its TUN, or not,
/// as `want` says (the routes of mirrored CHILD SAs: docs/ha.md, takeover order).
fn await_standby_routes(cl: &Cluster, want: &[(&str, bool)], t: &Tandemd, c: &Charon, what: &str) {
    let dst = |name: &str| {
        let (.., r) = CHILDREN.iter().find(|(_, n, ..)| *n == name).expect("a CHILD SA configuration");
        format!("10.99.{r}.1")
    };
    let ok =
        wait_until(WAIT, POLL, || want.iter().all(|&(n, routed)| routed_into_tun(cl, 1, &dst(n)) == routed));
    let now: Vec<(&str, bool)> = want.iter().map(|&(n, _)| (n, routed_into_tun(cl, 1, &dst(n)))).collect();
    assert!(ok, "{what}: standby routes into its TUN {now:?}, want {want:?}\n{}", logs(&[t], c));
}

fn reload(cl: &Cluster, i: usize, t: &Tandemd, role: &str) {
    let out = cl.reload_node(i, t, role);
    assert!(out.status.success(), "node {} reload: {}", i + 1, String::from_utf8_lossy(&out.stderr));
}

#[test]
fn vpn_added_by_reload_survives_restart_and_failover() {
    if !tools_present(&["ping"]) {
        return;
    }
    let mut cl = Cluster::new();
    // The first configuration's addresses (the cluster's usual ones) are there already.
    for (_, _, l, r) in &CHILDREN[1..] {
        for gw in &cl.gw {
            gw.ip(&["addr", "add", &format!("10.99.{l}.1/32"), "dev", "lo"]);
        }
        cl.peer.ip(&["addr", "add", &format!("10.99.{r}.1/32"), "dev", "lo"]);
    }
    cl.move_vip(None, 0);
    let [t1, t2] = cl.start_nodes_toml(&config(&["c1", "c3"]), ["active", "standby"], "");
    let c = Charon::start_with(&mut cl.peer, &charon_conf(), "install_routes = yes", 2);
    let in_sync =
        wait_until(WAIT, POLL, || ha_status(&t1)["peer"] == "in-sync" && ha_status(&t2)["peer"] == "in-sync");
    assert!(in_sync, "nodes not in sync\n{}", logs(&[&t1, &t2], &c));

    // 1. c1 and c3 up, mirrored, and routed into the standby's TUN ahead of a takeover; c3
    //    closed by charon takes its route off the standby, opened again puts it back.
    initiate(&c, "c1", &[&t1, &t2]);
    initiate(&c, "c3", &[&t1, &t2]);
    await_mirrored(&t2, 1, 2, &c, "before the reload");
    await_standby_routes(&cl, &[("c1", true), ("c3", true)], &t2, &c, "c1 and c3 mirrored");
    let out = c.swanctl(&["--terminate", "--child", "c3", "--timeout", "20"]);
    assert!(out.status.success(), "charon terminate c3: {}", String::from_utf8_lossy(&out.stdout));
    await_mirrored(&t2, 1, 1, &c, "c3 closed");
    await_standby_routes(&cl, &[("c1", true), ("c3", false)], &t2, &c, "c3 closed");
    initiate(&c, "c3", &[&t1, &t2]);
    await_mirrored(&t2, 1, 2, &c, "c3 opened again");
    await_standby_routes(&cl, &[("c1", true), ("c3", true)], &t2, &c, "c3 opened again");

    // 2. c2 added by reload, node 1 first.
    cl.set_nodes_toml(&config(&["c1", "c2", "c3"]));
    reload(&cl, 0, &t1, "active");
    let differ = wait_until(WAIT, POLL, || ha_status(&t2)["config_match"] == false);
    assert!(differ, "node 2 does not see node 1's new configuration: {}", ha_status(&t2));
    reload(&cl, 1, &t2, "standby");
    let agree = wait_until(WAIT, POLL, || {
        ha_status(&t1)["config_match"] == true && ha_status(&t2)["config_match"] == true
    });
    assert!(agree, "digests differ after both reloads: {}\n{}", ha_status(&t1), ha_status(&t2));
    initiate(&c, "c2", &[&t1, &t2]);
    await_mirrored(&t2, 2, 3, &c, "after the reload");
    for (_, name, l, r) in CHILDREN {
        let (src, dst) = (format!("10.99.{r}.1"), format!("10.99.{l}.1"));
        assert!(
            ping_until_reply(&cl.peer, &src, &dst, WAIT),
            "{name}: no traffic through node 1\n{}",
            logs(&[&t1], &c)
        );
    }

    // 3. node 2 restarts from the new file and bulk-syncs.
    cl.kill_node(1, &t2);
    let t2 = cl.start_node(1, "standby");
    let rejoined =
        wait_until(WAIT, POLL, || ha_status(&t2)["peer"] == "in-sync" && ha_status(&t1)["peer"] == "in-sync");
    assert!(rejoined, "node 2 did not rejoin: {}\n{}", ha_status(&t2), logs(&[&t1, &t2], &c));
    await_mirrored(&t2, 2, 3, &c, "after node 2's restart");
    let all = [("c1", true), ("c2", true), ("c3", true)];
    await_standby_routes(&cl, &all, &t2, &c, "after node 2's restart");
    assert_eq!(ha_status(&t2)["config_match"], true, "{}", ha_status(&t2));

    // 4. failover to node 2.
    let ike = charon_ike(&c);
    assert_eq!(ike.len(), 2, "charon's IKE SAs: {ike:?}");
    let children = charon_children(&c);
    assert_eq!(children.len(), 3, "charon's CHILD SAs: {children:?}");
    let charon_log_at = c.log().len();
    cl.kill_node(0, &t1);
    cl.move_vip(Some(0), 1);
    ha_set_state(&t2, "active").unwrap_or_else(|e| panic!("set-state active: {e}\n{}", logs(&[&t2], &c)));
    each_on_its_own_sa(&cl, &c, &t2, "after the failover");
    assert_eq!(charon_ike(&c), ike, "charon's IKE SPIs changed");
    assert_eq!(charon_children(&c), children, "charon's CHILD SAs changed");
    let log = c.log();
    let since = log.get(charon_log_at..).unwrap_or("");
    for bad in ["IKE_SA_INIT", "CREATE_CHILD_SA", "verification failed", "INVALID_SPI", "DELETE"] {
        let lines: Vec<&str> = since.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            lines.is_empty(),
            "charon logged {bad:?} after the failover: {lines:#?}\n{}",
            logs(&[&t2], &c)
        );
    }

    // 5. charon closes c1 and opens it again through node 2: the new CHILD SA gets node 2's number
    //    for t/c1, which must not be one a mirrored CHILD SA of another configuration holds (a
    //    node that kept its own numbering gives it c3's, and the dataplane then sends c3's traffic
    //    on the new c1 SA, the latest outbound SA of that reqid).
    let out = c.swanctl(&["--terminate", "--child", "c1", "--timeout", "20"]);
    assert!(out.status.success(), "charon terminate c1: {}", String::from_utf8_lossy(&out.stdout));
    initiate(&c, "c1", &[&t2]);
    each_on_its_own_sa(&cl, &c, &t2, "after c1 was opened again");
    eprintln!("node 2 at the end: {}", ha_status(&t2));
}

/// For each configuration, a ping between its own addresses is answered, and the reply comes
/// back on that configuration's CHILD SA (charon counts it there).
fn each_on_its_own_sa(cl: &Cluster, c: &Charon, t: &Tandemd, what: &str) {
    for (_, name, l, r) in CHILDREN {
        let (src, dst) = (format!("10.99.{r}.1"), format!("10.99.{l}.1"));
        let before = charon_packets_in(c, name);
        assert!(ping_until_reply(&cl.peer, &src, &dst, WAIT), "{name}: no traffic {what}\n{}", logs(&[t], c));
        let after = charon_packets_in(c, name);
        assert!(
            after > before,
            "{name} {what}: the reply did not come back on {name}'s CHILD SA (charon's packets in {before} -> \
             {after}); charon {:?}\nnode 2 {:?}\n{}",
            c.list_sas(),
            t.ipsec_sas(),
            logs(&[t], c)
        );
    }
}

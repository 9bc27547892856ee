//! Failover mid-exchange (docs/ha.md, "Write-ahead" and "The standby and the takeover"): the active
//! tandemd is killed (`kill -9`) while a CHILD SA rekey, an IKE SA rekey or a liveness check (DPD)
//! is in flight, by either side, and node 2 takes over. The cluster must end with exactly the SAs
//! strongSwan has, none half-open, and the exchange that was in flight must complete.
//!
//! How an exchange is caught in flight, deterministically: nftables in node 1's namespace drops
//! IKE between node 1 and charon in one direction (UDP port 500, and port 4500 with the non-ESP
//! marker; ESP-in-UDP passes, so traffic keeps flowing), counted. When node 1's own message is
//! dropped on its way out, write-ahead says the standby had acknowledged the state behind it; when
//! charon's message to node 1 is dropped, charon has already processed node 1's request. Then node
//! 1 is killed, the VIP moved to node 2 and node 2 made active, as `hot_failover_keeps_strongswans_sas`
//! in `ha.rs` does (the rule dies with node 1's role: node 2 is another namespace).
//!
//! Nine tests, each a fresh cluster:
//! - tandem's request lost (its CHILD rekey, IKE rekey, DPD; `*_by_tandem_request_lost`): node 2
//!   sends it again at the takeover, byte for byte (charon parses that Message ID for the first
//!   time, at the size of the datagram node 1's rule dropped), and finishes the exchange with the
//!   mirrored state (the rekeys' private keys);
//! - charon's response to tandem's request lost (`*_by_tandem_response_lost`): node 2 sends the
//!   request again, charon answers it from its own response cache ("received retransmit", same
//!   size as node 1's request), node 2 finishes the exchange with that answer;
//! - tandem's response to charon's request lost (charon's CHILD rekey, IKE rekey, DPD;
//!   `*_by_charon_response_lost`): charon retransmits after its `retransmit_timeout` (2 s) and
//!   node 2 answers from the mirrored response cache; a rekeyed SA is the one node 1 answered with
//!   (its SPIs, its keys: traffic passes on it through node 2).
//!
//! Every test ends with: node 2 and charon hold exactly the same SAs, compared both ways (one IKE
//! SA, one CHILD SA, none half-open or left over from the rekey, node 2's dataplane holding that
//! CHILD SA's two directions and nothing else), traffic on them, charon's log clean of
//! IKE_SA_INIT, refusals and failures after the kill, and a 10 ms ping's largest gap.

use serde_json::Value;
use std::time::{Duration, Instant};
use tandem_testbed::charon::{Charon, CharonConfig};
use tandem_testbed::cluster::{
    cluster_conf, ha_set_state, ha_status, hex64, hex_u32, largest_gap, peer_conf, settled, tail,
    BackgroundPing, Cluster, Sas, CLUSTER_INNER, PEER_INNER, PEER_WAN, VIP,
};
use tandem_testbed::netns::Netns;
use tandem_testbed::probe::ping_until_reply;
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{tools_present, wait_until};

const IKE: &str = "aes256gcm16-prfsha256-x25519";
/// With PFS: a CHILD rekey carries a key exchange, so node 2 can complete node 1's only with the
/// mirrored private key.
const ESP: &str = "aes256gcm16-x25519";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// tandem's `rekey-linger` and charon's `delete_rekeyed_delay`: old SAs go 1 s after a rekey.
const CHARON_CONF: &str = "install_routes = yes\n  delete_rekeyed_delay = 1";
/// charon's first retransmission (`retransmit_timeout` in testbed/src/charon.rs).
const CHARON_RETRANSMIT: Duration = Duration::from_secs(2);
/// tandem's first retransmission (`daemon.retransmit-timeout`, its default).
const TANDEM_RETRANSMIT: Duration = Duration::from_secs(4);
/// tandem's `dpd-delay` in the test of its DPD.
const TANDEM_DPD: Duration = Duration::from_secs(2);
/// The traffic gap of a 10 ms ping across the failover (ha.rs measures 45-60 ms).
const MAX_GAP: Duration = Duration::from_secs(2);
/// What charon must never log after the kill: a new IKE SA, a rejected message or packet, a
/// refusal, a peer given up on.
const CHARON_BAD: [&str; 10] = [
    "IKE_SA_INIT",
    "verification failed",
    "replay",
    "INVALID_SPI",
    "NO_PROPOSAL_CHOSEN",
    "TS_UNACCEPTABLE",
    "INVALID_KE_PAYLOAD",
    "AUTHENTICATION_FAILED",
    "giving up",
    "failed",
];
/// The nftables table in node 1's namespace that loses IKE.
const TABLE: &str = "tmidex";

/// Which IKE messages node 1's namespace drops.
#[derive(Clone, Copy, Debug)]
enum Lose {
    /// Node 1's messages to charon (its requests or its responses).
    Node1s,
    /// charon's messages to node 1.
    Charons,
}

/// Drop IKE between the VIP and charon in one direction in `ns`, with a counter. ESP-in-UDP (port
/// 4500, a non-zero SPI where IKE has its four-zero-byte marker) passes.
fn lose_ike(ns: &Netns, lose: Lose) {
    let (hook, addrs, port) = match lose {
        Lose::Node1s => ("output", format!("ip saddr {VIP} ip daddr {PEER_WAN}"), "sport"),
        Lose::Charons => ("input", format!("ip saddr {PEER_WAN} ip daddr {VIP}"), "dport"),
    };
    let rules = format!(
        "table inet {TABLE} {{\n  counter ike500 {{ }}\n  counter ike4500 {{ }}\n  chain lose {{\n    type filter hook {hook} priority 0; policy accept;\n    \
         {addrs} udp {port} 500 counter name \"ike500\" drop\n    \
         {addrs} udp {port} 4500 @th,64,32 0 counter name \"ike4500\" drop\n  }}\n}}\n"
    );
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("run nft");
    {
        use std::io::Write;
        child.stdin.take().expect("nft stdin").write_all(rules.as_bytes()).expect("write nft rules");
    }
    let out = child.wait_with_output().expect("nft");
    assert!(out.status.success(), "nft: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
}

/// (datagrams, IKE bytes) dropped by `lose_ike` so far. IKE bytes are what charon logs as a
/// message's size: the UDP payload, without the non-ESP marker on port 4500.
fn lost(ns: &Netns) -> (u64, u64) {
    let counter = |name: &str| -> (u64, u64) {
        let out = ns.exec("nft", &["-j", "list", "counter", "inet", TABLE, name]);
        assert!(out.status.success(), "nft list counter: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("nft -j");
        let c = v["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|x| x.get("counter")))
            .cloned()
            .unwrap_or_default();
        (c["packets"].as_u64().unwrap_or(0), c["bytes"].as_u64().unwrap_or(0))
    };
    // The counters count whole IPv4 packets: 20 bytes of IP header, 8 of UDP, 4 of marker.
    let ((p500, b500), (p4500, b4500)) = (counter("ike500"), counter("ike4500"));
    (p500 + p4500, b500 - 28 * p500 + b4500 - 32 * p4500)
}

fn unlose_ike(ns: &Netns) {
    let out = ns.exec("nft", &["delete", "table", "inet", TABLE]);
    assert!(out.status.success(), "nft delete table: {}", String::from_utf8_lossy(&out.stderr));
}

/// The cluster with charon's tunnel established through node 1 and mirrored on node 2.
struct Bed {
    cl: Cluster,
    t1: Tandemd,
    t2: Tandemd,
    c: Charon,
    /// The SAs as charon and node 1 agree on them.
    sas: Sas,
    /// Whether node 1 was killed (its log stays readable).
    killed: bool,
}

impl Bed {
    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, t) in [&self.t1, &self.t2].into_iter().enumerate() {
            s += &format!("--- tandemd node {} ({}) ---\n{}\n", i + 1, t.dir.display(), tail(&t.log(), 50));
        }
        s + &format!("--- charon ---\n{}\n", tail(&self.c.log(), 60))
    }

    /// The nodes' HA status, for failure messages.
    fn ha(&self) -> String {
        let one = if self.killed { "(killed)".to_string() } else { ha_status(&self.t1).to_string() };
        format!("node 1: {one}\nnode 2: {}", ha_status(&self.t2))
    }
}

/// Cluster up (node 1 active with the VIP, node 2 standby, in sync), charon initiates, the SAs
/// settle on node 1 and are mirrored on node 2, a ping passes. `ike_extra`: more lines of both
/// nodes' ike-policy; `peer`: changes to charon's connection.
fn bed(ike_extra: &str, peer: impl FnOnce(&mut CharonConfig)) -> Option<Bed> {
    bed_with(ike_extra, "", &[], peer)
}

/// As `bed`, with more `[ha]` lines for both nodes and more tools required.
fn bed_with(
    ike_extra: &str,
    ha_extra: &str,
    tools: &[&str],
    peer: impl FnOnce(&mut CharonConfig),
) -> Option<Bed> {
    if !tools_present(&[&["ping", "nft"], tools].concat()) {
        return None;
    }
    let mut cl = Cluster::new();
    cl.move_vip(None, 0);
    let mut conf = cluster_conf(IKE, ESP);
    conf.dataplane_extra = "rekey-linger = \"1s\"".into();
    conf.ike_extra = ike_extra.into();
    let [t1, t2] = cl.start_nodes(&conf, ["active", "standby"], ha_extra);
    let mut pc = peer_conf(IKE, ESP);
    peer(&mut pc);
    let c = Charon::start_with(&mut cl.peer, &pc.swanctl_conf(), CHARON_CONF, 2);
    let mut b =
        Bed { cl, t1, t2, c, sas: Sas { ike: (String::new(), String::new()), child: (0, 0) }, killed: false };
    let in_sync = wait_until(WAIT, POLL, || {
        ha_status(&b.t1)["peer"] == "in-sync" && ha_status(&b.t2)["peer"] == "in-sync"
    });
    assert!(in_sync, "nodes not in sync:\n{}\n{}", b.ha(), b.logs());
    let out = b.c.initiate();
    assert!(out.status.success(), "charon initiate: {}\n{}", String::from_utf8_lossy(&out.stdout), b.logs());
    let mut sas = None;
    wait_until(WAIT, POLL, || {
        sas = settled(&b.t1, &b.c);
        sas.is_some()
    });
    b.sas = sas.unwrap_or_else(|| panic!("not established on charon and node 1\n{}", b.logs()));
    let mirrored = wait_until(WAIT, POLL, || {
        ha_status(&b.t2)["ike_sas"] == 1
            && b.t2.child_sas().len() == 1
            && ha_status(&b.t1)["lag_messages"] == 0
    });
    assert!(mirrored, "node 2 did not mirror the SAs:\n{}\n{}", b.ha(), b.logs());
    assert!(
        ping_until_reply(&b.cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "no traffic through node 1\n{}",
        b.logs()
    );
    eprintln!("established through node 1: {:?}", b.sas);
    Some(b)
}

/// Wait until node 1's namespace has dropped `n` IKE datagrams and node 1 has nothing left
/// unacknowledged on the sync link (write-ahead: what left node 1 was acknowledged before).
fn await_lost(b: &Bed, n: u64, what: &str) -> (u64, u64) {
    let mut l = (0, 0);
    let ok = wait_until(WAIT, Duration::from_millis(2), || {
        l = lost(&b.cl.gw[0]);
        l.0 >= n && ha_status(&b.t1)["lag_messages"] == 0
    });
    assert!(ok, "{what}: node 1's namespace dropped {l:?} IKE datagrams, not {n}\n{}\n{}", b.ha(), b.logs());
    l
}

/// What the takeover did and when it was answered.
struct Taken {
    /// When `ha set-state active` answered on node 2.
    at: Instant,
    /// `last_takeover` of node 2's status.
    report: Value,
    /// charon's log length at the kill.
    charon_log_at_kill: usize,
}

/// `kill -9` node 1, remove the rule there, move the VIP to node 2, make node 2 active.
fn fail_over(b: &mut Bed, what: &str) -> Taken {
    let charon_log_at_kill = b.c.log().len();
    let t0 = Instant::now();
    b.cl.kill_node(0, &b.t1);
    b.killed = true;
    let t_killed = t0.elapsed();
    // Not needed any more (node 2 is another namespace), but then node 1's namespace is as it was.
    for table in [TABLE, SYNC_TABLE] {
        let _ = b.cl.gw[0].exec("nft", &["delete", "table", "inet", table]);
    }
    b.cl.move_vip(Some(0), 1);
    let t_vip = t0.elapsed();
    let st = ha_set_state(&b.t2, "active")
        .unwrap_or_else(|e| panic!("{what}: ha set-state active on node 2: {e}\n{}", b.logs()));
    let at = Instant::now();
    eprintln!(
        "{what}: node 1 killed +{t_killed:?}, VIP on node 2 +{t_vip:?}, node 2 active +{:?}; last_takeover {}",
        at - t0,
        st["last_takeover"]
    );
    assert_eq!(st["role"], "active", "{what}: {st}");
    assert_eq!(b.cl.vip_on(), vec![1], "{what}: the VIP is on node 2 only");
    let report = st["last_takeover"].clone();
    assert!(report["ike_sas"].as_u64() >= Some(1), "{what}: node 2 took no IKE SA over: {report}");
    assert_eq!(report["dropped"], 0, "{what}: node 2 dropped mirrored SAs at the takeover: {report}");
    Taken { at, report, charon_log_at_kill }
}

/// Node 2 and charon hold exactly the same SAs, both ways: charon one established IKE SA with one
/// INSTALLED CHILD SA (no REKEYED, DELETING or half-open one), node 2 one established IKE SA it
/// runs (not standby) with one CHILD SA, and in its dataplane exactly that CHILD SA's two
/// directions; SPIs agreeing crosswise. `Err`: what differs.
fn exactly_charons(t: &Tandemd, c: &Charon) -> Result<Sas, String> {
    let c_sas = c.list_sas();
    let [c_sa] = &c_sas[..] else { return Err(format!("charon has {} IKE SAs: {c_sas:?}", c_sas.len())) };
    if !c_sa.established() {
        return Err(format!("charon's IKE SA is {}", c_sa.state));
    }
    let [c_child] = &c_sa.children[..] else {
        return Err(format!("charon has {} CHILD SAs: {:?}", c_sa.children.len(), c_sa.children));
    };
    if c_child.state != "INSTALLED" {
        return Err(format!("charon's CHILD SA is {}", c_child.state));
    }
    let ike = t.ike_sas();
    let [t_sa] = &ike[..] else { return Err(format!("node 2 has {} IKE SAs: {ike:?}", ike.len())) };
    if t_sa["state"] != "established" || t_sa["standby"] != false {
        return Err(format!("node 2's IKE SA: {t_sa}"));
    }
    if (hex64(&t_sa["spi_i"]), hex64(&t_sa["spi_r"])) != (c_sa.spi_i.clone(), c_sa.spi_r.clone()) {
        return Err(format!("IKE SPIs: node 2 {t_sa}, charon {} {}", c_sa.spi_i, c_sa.spi_r));
    }
    let children = t.child_sas();
    let [t_child] = &children[..] else {
        return Err(format!("node 2 has {} CHILD SAs: {children:?}", children.len()));
    };
    let spis =
        (t_child["spi_in"].as_u64().unwrap_or(0) as u32, t_child["spi_out"].as_u64().unwrap_or(0) as u32);
    if spis != (hex_u32(&c_child.spi_out), hex_u32(&c_child.spi_in)) {
        return Err(format!(
            "CHILD SPIs: node 2 {spis:x?}, charon in {} out {}",
            c_child.spi_in, c_child.spi_out
        ));
    }
    let mut dp: Vec<(String, u32)> = t
        .ipsec_sas()
        .iter()
        .map(|s| (s["direction"].as_str().unwrap_or("?").to_string(), s["spi"].as_u64().unwrap_or(0) as u32))
        .collect();
    dp.sort();
    if dp != vec![("in".to_string(), spis.0), ("out".to_string(), spis.1)] {
        return Err(format!("node 2's dataplane has {dp:x?}, not the CHILD SA {spis:x?}"));
    }
    Ok(Sas { ike: (c_sa.spi_i.clone(), c_sa.spi_r.clone()), child: spis })
}

/// Await `exactly_charons` with `accept` holding; returns the SAs and when they were reached.
fn await_exactly(b: &Bed, what: &str, mut accept: impl FnMut(&Sas) -> bool) -> (Sas, Instant) {
    let mut last = Err(String::new());
    let ok = wait_until(WAIT, POLL, || {
        last = exactly_charons(&b.t2, &b.c);
        last.as_ref().is_ok_and(&mut accept)
    });
    assert!(
        ok,
        "{what}: node 2 and charon do not hold exactly the same SAs: {last:?}\n{}\n{}",
        b.ha(),
        b.logs()
    );
    (last.expect("checked"), Instant::now())
}

/// Await the new SA of a rekey at both ends (a CHILD SA with `child`, else an IKE SA): charon
/// lists it (INSTALLED, or ESTABLISHED, with SPIs other than `old`'s) and node 2 runs it with the
/// same SPIs. Returns when; the old SA may still be there (it goes after the linger).
fn await_new(b: &Bed, old: &Sas, child: bool, what: &str) -> Instant {
    let ok = wait_until(WAIT, Duration::from_millis(5), || {
        let c_sas = b.c.list_sas();
        if child {
            let t: Vec<(u32, u32)> =
                b.t2.child_sas()
                    .iter()
                    .map(|c| {
                        (c["spi_in"].as_u64().unwrap_or(0) as u32, c["spi_out"].as_u64().unwrap_or(0) as u32)
                    })
                    .collect();
            c_sas
                .iter()
                .flat_map(|s| s.children.iter())
                .filter(|x| x.state == "INSTALLED")
                .map(|x| (hex_u32(&x.spi_out), hex_u32(&x.spi_in)))
                .any(|x| x != old.child && t.contains(&x))
        } else {
            let t: Vec<(String, String)> =
                b.t2.ike_sas()
                    .iter()
                    .filter(|s| s["state"] == "established")
                    .map(|s| (hex64(&s["spi_i"]), hex64(&s["spi_r"])))
                    .collect();
            c_sas
                .iter()
                .filter(|s| s.established())
                .map(|s| (s.spi_i.clone(), s.spi_r.clone()))
                .any(|x| x != old.ike && t.contains(&x))
        }
    });
    assert!(ok, "{what}: the rekey did not complete at both ends\n{}\n{}", b.ha(), b.logs());
    Instant::now()
}

/// Traffic flows through node 2 on exactly `sas.child`: a ping passes, and both directions of the
/// CHILD SA count packets on node 2 and at charon.
fn traffic_on(b: &Bed, sas: &Sas, what: &str) {
    let count = |dir: &str, spi: u32| -> u64 {
        b.t2.ipsec_sas()
            .iter()
            .find(|s| s["direction"] == dir && s["spi"].as_u64() == Some(u64::from(spi)))
            .and_then(|s| s["counters"]["packets"].as_u64())
            .unwrap_or(0)
    };
    let (in0, out0) = (count("in", sas.child.0), count("out", sas.child.1));
    assert!(
        ping_until_reply(&b.cl.peer, PEER_INNER, CLUSTER_INNER, WAIT),
        "{what}: no traffic through node 2\n{}",
        b.logs()
    );
    let (in1, out1) = (count("in", sas.child.0), count("out", sas.child.1));
    assert!(
        in1 > in0 && out1 > out0,
        "{what}: the ping did not pass on CHILD SA {:x?} (in {in0} -> {in1}, out {out0} -> {out1})",
        sas.child
    );
    let c_sas = b.c.list_sas();
    let c_child = c_sas.iter().flat_map(|s| s.children.iter()).find(|x| hex_u32(&x.spi_in) == sas.child.1);
    assert!(
        c_child.is_some_and(|x| x.packets_in > 0 && x.packets_out > 0),
        "{what}: charon counts no traffic on {:x?}: {c_sas:?}",
        sas.child
    );
}

/// The part of charon's log from byte `from`.
/// The end of a rekey of tandem's that node 2 completed by resending node 1's request: charon
/// processed that request once, under the resent Message ID, traffic runs on the new SAs, charon
/// logged nothing bad since the kill, and the ping's gap is measured.
#[allow(clippy::too_many_arguments)]
fn resent_rekey_done(
    b: &mut Bed,
    ping: BackgroundPing,
    answered: Option<u32>,
    bytes: u64,
    taken: &Taken,
    log_at: usize,
    new: &Sas,
    what: &str,
) {
    let mid = resent(b, "CREATE_CHILD_SA", answered, bytes, taken.charon_log_at_kill, what);
    let since = log_from(&b.c, log_at);
    let reqs = mids(&since, "parsed", "CREATE_CHILD_SA", "request");
    assert_eq!(reqs, vec![mid], "{what}: charon processed CREATE_CHILD_SA requests {reqs:?}:\n{since}");
    traffic_on(b, new, what);
    let since_kill = log_from(&b.c, taken.charon_log_at_kill);
    charon_clean(b, &since_kill, what);
    gap_of(b, ping, what);
}

fn log_from(c: &Charon, from: usize) -> String {
    c.log().get(from..).unwrap_or("").to_string()
}

/// Message IDs of charon's log lines `{verb} {exchange} {kind} {mid} [`, e.g. ("parsed",
/// "CREATE_CHILD_SA", "request"), in log order.
fn mids(log: &str, verb: &str, exchange: &str, kind: &str) -> Vec<u32> {
    let pat = format!("{verb} {exchange} {kind} ");
    log.lines().filter_map(|l| l.split(&pat).nth(1)?.split_whitespace().next()?.parse().ok()).collect()
}

/// The size charon logged (`received packet: ... (N bytes)`) of the datagram it received last
/// before the first line containing `marker` (e.g. `parsed CREATE_CHILD_SA request 2 [`).
fn received_size(log: &str, marker: &str) -> Option<u64> {
    let mut size = None;
    for l in log.lines() {
        if l.contains(marker) {
            return size;
        }
        if l.contains("received packet: from ") {
            size = l.rsplit_once('(').and_then(|(_, s)| s.split_whitespace().next()?.parse().ok());
        }
    }
    None
}

/// The size charon logged (`sending packet: ... (N bytes)`) of the datagram it sent first after
/// the first line containing `marker` (e.g. `generating INFORMATIONAL response 2 [`).
fn sent_size(log: &str, marker: &str) -> Option<u64> {
    let mut lines = log.lines().skip_while(|l| !l.contains(marker));
    lines
        .find(|l| l.contains("sending packet: from "))
        .and_then(|l| l.rsplit_once('(')?.1.split_whitespace().next()?.parse().ok())
}

fn parsed_request(exchange: &str, mid: u32) -> String {
    format!("parsed {exchange} request {mid} [")
}

fn retransmit_answered(mid: u32) -> String {
    format!("received retransmit of request with ID {mid}, retransmitting response")
}

/// Before the kill, where tandem's request lost in flight stands at charon. With node 1's messages
/// lost: charon has not seen it (None). With charon's lost: charon has answered it; its Message
/// ID, the answer checked to be the datagram node 1's namespace dropped (`lost_bytes`).
fn before_kill(b: &Bed, lose: Lose, exchange: &str, lost_bytes: u64, what: &str) -> Option<u32> {
    match lose {
        Lose::Node1s => None,
        Lose::Charons => {
            let log = b.c.log();
            let mid = *mids(&log, "generating", exchange, "response")
                .last()
                .unwrap_or_else(|| panic!("{what}: charon answered no {exchange} request:\n{log}"));
            let marker = format!("generating {exchange} response {mid} [");
            assert_eq!(
                sent_size(&log, &marker),
                Some(lost_bytes),
                "{what}: the datagram dropped is not charon's answer to {mid}"
            );
            Some(mid)
        }
    }
}

/// After the takeover, await the request node 2 sent again as charon saw it; its Message ID. With
/// node 1's messages lost (`answered` None): charon parses it for the first time (its Message ID
/// never parsed before the kill) and it has the size of the datagram node 1's namespace dropped.
/// With charon's lost: charon answers it from its cache, and it has the size of the request node 1
/// had sent.
fn resent(
    b: &Bed,
    exchange: &str,
    answered: Option<u32>,
    lost_bytes: u64,
    kill_at: usize,
    what: &str,
) -> u32 {
    let ok = wait_until(WAIT, Duration::from_millis(5), || {
        let after = log_from(&b.c, kill_at);
        match answered {
            None => !mids(&after, "parsed", exchange, "request").is_empty(),
            Some(mid) => after.contains(&retransmit_answered(mid)),
        }
    });
    let log = b.c.log();
    let (before, after) = log.split_at(kill_at.min(log.len()));
    assert!(ok, "{what}: charon got no {exchange} request from node 2 ({answered:?}):\n{after}");
    match answered {
        None => {
            let mid = mids(after, "parsed", exchange, "request")[0];
            assert!(
                !mids(before, "parsed", exchange, "request").contains(&mid),
                "{what}: charon had {exchange} request {mid} before the kill:\n{before}"
            );
            assert_eq!(
                received_size(after, &parsed_request(exchange, mid)),
                Some(lost_bytes),
                "{what}: charon received another request {mid} than node 1 sent"
            );
            mid
        }
        Some(mid) => {
            assert!(
                !mids(after, "parsed", exchange, "request").contains(&mid),
                "{what}: charon processed request {mid} twice:\n{after}"
            );
            let first = received_size(before, &parsed_request(exchange, mid));
            let again = received_size(after, &retransmit_answered(mid));
            assert!(first.is_some(), "{what}: charon's log has no size of request {mid}");
            assert_eq!(again, first, "{what}: node 2 sent another request {mid} than node 1 had");
            mid
        }
    }
}

/// charon logged nothing of `CHARON_BAD` in `log`.
fn charon_clean(b: &Bed, log: &str, what: &str) {
    for bad in CHARON_BAD {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(lines.is_empty(), "{what}: charon logged {bad:?} after the kill: {lines:#?}\n{}", b.logs());
    }
}

/// Stop the background ping, print and check its largest gap.
fn gap_of(b: &mut Bed, ping: BackgroundPing, what: &str) -> Duration {
    let r = ping.stop(&mut b.cl.peer);
    let (gap, before, after) = largest_gap(&r).unwrap_or_else(|| panic!("{what}: no ping replies"));
    eprintln!(
        "{what}: background ping {} sent, {} answered; TRAFFIC GAP {:.1} ms (icmp_seq {before} -> {after})",
        r.transmitted,
        r.received,
        gap.as_secs_f64() * 1000.0
    );
    assert!(gap < MAX_GAP, "{what}: traffic gap {gap:?} over {MAX_GAP:?}\n{}", b.logs());
    gap
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The standby's mirror of node 1's IKE SA: its state in node 2's listing.
fn mirrored_ike_states(t2: &Tandemd) -> Vec<String> {
    t2.ike_sas().iter().map(|s| s["state"].as_str().unwrap_or("?").to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// CHILD SA rekey

/// Which SA a rekey replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rekeyed {
    Child,
    Ike,
}

impl std::fmt::Display for Rekeyed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Rekeyed::Child => "CHILD",
            Rekeyed::Ike => "IKE",
        })
    }
}

impl Rekeyed {
    /// `new` has another SA of this kind than `old`.
    fn replaced(self, old: &Sas, new: &Sas) -> bool {
        match self {
            Rekeyed::Child => new.child != old.child,
            Rekeyed::Ike => new.ike != old.ike,
        }
    }
}

/// The end of a rekey at both ends after the takeover: the new SA appears (`await_new`), then node
/// 2 and charon hold exactly the SAs with it in place of the old one, and the other SA is kept (a
/// CHILD rekey keeps the IKE SA, an IKE rekey moves the CHILD SA over unchanged). Returns the SAs
/// and how long after the takeover the new SA appeared.
fn rekey_completed(b: &Bed, kind: Rekeyed, old: &Sas, taken: &Taken, what: &str) -> (Sas, Duration) {
    let took = await_new(b, old, kind == Rekeyed::Child, what) - taken.at;
    let (new, done) = await_exactly(b, what, |s| kind.replaced(old, s));
    let change = match kind {
        Rekeyed::Child => format!("{:x?} -> {:x?}", old.child, new.child),
        Rekeyed::Ike => format!("{:?} -> {:?}", old.ike, new.ike),
    };
    eprintln!(
        "{what}: rekey completed {} after the takeover, old {kind} SA gone at both ends after {}: {change}",
        ms(took),
        ms(done - taken.at),
    );
    match kind {
        Rekeyed::Child => assert_eq!(new.ike, old.ike, "{what}: a CHILD rekey keeps the IKE SA"),
        Rekeyed::Ike => {
            assert_eq!(new.child, old.child, "{what}: an IKE rekey moves the CHILD SA over unchanged")
        }
    }
    (new, took)
}

/// tandem rekeys the CHILD or the IKE SA (`tandemctl rekey child-sa`/`ike-sa` on node 1) and the
/// exchange is cut at node 1 (`lose`). Node 2 (whose mirror shows an IKE SA `rekeying`) sends node
/// 1's request again at the takeover, byte for byte, and completes the rekey (with the mirrored
/// private key: PFS for a CHILD SA); then it deletes the old SA, as node 1 would have.
fn rekey_by_tandem(kind: Rekeyed, lose: Lose, what: &str) {
    let Some(mut b) = bed("", |_| {}) else { return };
    let old = b.sas.clone();
    let ping = BackgroundPing::start(&mut b.cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    let log_at = b.c.log().len();
    let (sa, id) = match kind {
        Rekeyed::Child => ("child-sa", u64::from(old.child.0)),
        Rekeyed::Ike => ("ike-sa", b.t1.ike_sas()[0]["id"].as_u64().expect("IKE SA id")),
    };
    lose_ike(&b.cl.gw[0], lose);
    let out = b.t1.ctl(&["rekey", sa, &format!("{id:#x}")]);
    assert!(out.status.success(), "tandemctl rekey {sa}: {}", String::from_utf8_lossy(&out.stderr));
    let (_, bytes) = await_lost(&b, 1, what);
    if kind == Rekeyed::Ike {
        let mut states = Vec::new();
        let rekeying = wait_until(WAIT, POLL, || {
            states = mirrored_ike_states(&b.t2);
            states == ["rekeying"]
        });
        assert!(rekeying, "{what}: node 2's mirror is not rekeying: {states:?}\n{}", b.logs());
    }
    let answered = before_kill(&b, lose, "CREATE_CHILD_SA", bytes, what);
    eprintln!("{what}: in flight, {bytes} bytes lost; charon answered {answered:?}");

    let taken = fail_over(&mut b, what);
    assert_eq!(taken.report["retransmitted"], 1, "{what}: node 2 did not send node 1's request again");
    let (new, took) = rekey_completed(&b, kind, &old, &taken, what);
    assert!(
        took < TANDEM_RETRANSMIT,
        "{what}: completed {took:?} after the takeover: not by the takeover's resend"
    );
    resent_rekey_done(&mut b, ping, answered, bytes, &taken, log_at, &new, what);
}

#[test]
fn child_rekey_by_tandem_request_lost() {
    rekey_by_tandem(Rekeyed::Child, Lose::Node1s, "CHILD rekey by tandem, request lost");
}

#[test]
fn child_rekey_by_tandem_response_lost() {
    rekey_by_tandem(Rekeyed::Child, Lose::Charons, "CHILD rekey by tandem, charon's response lost");
}

/// The end of a rekey of charon's that node 2 answered from node 1's mirrored response: charon got
/// one answer to its request `mid`, after its first retransmission and within two of its
/// retransmit intervals of the takeover (`took`), traffic runs on the new SAs, charon logged
/// nothing bad since the kill, and the ping's gap is measured.
fn cached_answer_done(
    b: &mut Bed,
    ping: BackgroundPing,
    (mid, took): (u32, Duration),
    taken: &Taken,
    log_at: usize,
    new: &Sas,
    what: &str,
) {
    let since = log_from(&b.c, log_at);
    assert_eq!(
        mids(&since, "parsed", "CREATE_CHILD_SA", "response"),
        vec![mid],
        "{what}: charon did not get one answer to its request {mid}:\n{since}"
    );
    assert!(
        since.contains(&format!("retransmit 1 of request with message ID {mid}")),
        "{what}: the answer came without charon retransmitting:\n{since}"
    );
    assert!(
        took < CHARON_RETRANSMIT * 2,
        "{what}: took {took:?} after the takeover: not the answer to charon's first retransmission"
    );
    traffic_on(b, new, what);
    let since_kill = log_from(&b.c, taken.charon_log_at_kill);
    charon_clean(b, &since_kill, what);
    gap_of(b, ping, what);
}

/// A cluster under a 10 ms ping in which charon starts a rekey (`swanctl --rekey` with `which`)
/// that node 1 answers and whose answer is lost. Returns the bed, the SAs before, the ping and
/// where charon's log stood.
fn charon_rekeys(which: &[&str], what: &str) -> Option<(Bed, Sas, BackgroundPing, usize)> {
    let mut b = bed("", |_| {})?;
    let old = b.sas.clone();
    let ping = BackgroundPing::start(&mut b.cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    let log_at = b.c.log().len();
    lose_ike(&b.cl.gw[0], Lose::Node1s);
    let out = b.c.swanctl(&[&["--rekey"], which].concat());
    assert!(out.status.success(), "swanctl --rekey {which:?}: {}", String::from_utf8_lossy(&out.stdout));
    await_lost(&b, 1, what);
    Some((b, old, ping, log_at))
}

/// charon rekeys the CHILD SA (`swanctl --rekey --child`); node 1 answers, its response is lost.
/// charon retransmits to node 2, which answers from the mirrored response cache: the new CHILD SA
/// is the one node 1 negotiated (its SPIs, its keys) and carries the traffic through node 2.
#[test]
fn child_rekey_by_charon_response_lost() {
    rekey_by_charon(Rekeyed::Child, "CHILD rekey by charon, response lost");
}

/// charon rekeys the CHILD or the IKE SA (`swanctl --rekey --child`/`--ike`); node 1 answers, its
/// response is lost. Node 2, mirroring both the old and the new SA, answers charon's retransmission
/// from the mirrored response cache: the new SA is the one node 1 negotiated (its SPIs, its keys)
/// and carries the traffic through node 2 (an old IKE SA is deleted by charon through node 2).
fn rekey_by_charon(kind: Rekeyed, what: &str) {
    let which: &[&str] = match kind {
        Rekeyed::Child => &["--child", "net"],
        Rekeyed::Ike => &["--ike", "t"],
    };
    let Some((mut b, old, ping, log_at)) = charon_rekeys(which, what) else { return };
    // Node 1 answered and mirrored both SAs; charon has not had the answer.
    let mut mirrored = Vec::new();
    let both = wait_until(WAIT, POLL, || {
        mirrored = match kind {
            Rekeyed::Child => b.t2.child_sas(),
            Rekeyed::Ike => b.t2.ike_sas(),
        };
        mirrored.len() == 2
    });
    assert!(both, "{what}: node 2 does not mirror the new {kind} SA: {mirrored:?}\n{}", b.logs());
    // The SAs as node 1 answered: the old ones with the new SA in place.
    let answered: Vec<Sas> = mirrored
        .iter()
        .map(|m| match kind {
            Rekeyed::Child => Sas {
                child: (m["spi_in"].as_u64().unwrap_or(0) as u32, m["spi_out"].as_u64().unwrap_or(0) as u32),
                ..old.clone()
            },
            Rekeyed::Ike => Sas { ike: (hex64(&m["spi_i"]), hex64(&m["spi_r"])), ..old.clone() },
        })
        .filter(|s| kind.replaced(&old, s))
        .collect();
    let [answered] = &answered[..] else { panic!("{what}: node 2 mirrors {mirrored:?}") };
    let seen = log_from(&b.c, log_at);
    let [mid] = mids(&seen, "generating", "CREATE_CHILD_SA", "request")[..] else {
        panic!("{what}: charon sent no single CREATE_CHILD_SA request:\n{seen}")
    };
    if kind == Rekeyed::Child {
        assert!(
            mids(&seen, "parsed", "CREATE_CHILD_SA", "response").is_empty(),
            "{what}: charon got the response node 1's namespace was to drop:\n{seen}"
        );
    }

    let taken = fail_over(&mut b, what);
    assert_eq!(taken.report["retransmitted"], 0, "{what}: node 2 had no request of its own to resend");
    let (new, took) = rekey_completed(&b, kind, &old, &taken, what);
    assert_eq!(&new, answered, "{what}: the {kind} SA is not the one node 1 answered with");
    cached_answer_done(&mut b, ping, (mid, took), &taken, log_at, &new, what);
}

// ---------------------------------------------------------------------------------------------
// IKE SA rekey

#[test]
fn ike_rekey_by_tandem_request_lost() {
    rekey_by_tandem(Rekeyed::Ike, Lose::Node1s, "IKE rekey by tandem, request lost");
}

#[test]
fn ike_rekey_by_tandem_response_lost() {
    rekey_by_tandem(Rekeyed::Ike, Lose::Charons, "IKE rekey by tandem, charon's response lost");
}

/// charon rekeys the IKE SA (`swanctl --rekey --ike`); node 1 answers, its response is lost. Node 2
/// (mirroring both IKE SAs) answers charon's retransmission from the cache, charon deletes the old
/// IKE SA through node 2, and the new one is the one node 1 answered with.
#[test]
fn ike_rekey_by_charon_response_lost() {
    rekey_by_charon(Rekeyed::Ike, "IKE rekey by charon, response lost");
}

// ---------------------------------------------------------------------------------------------
// DPD

/// tandem's liveness check (`dpd-delay = 2s` on both nodes: nothing but DPD is sent while the
/// tunnel is idle of IKE) is cut at node 1 (`lose`). Node 2 sends it again at the takeover and
/// accepts the answer: its next check, one `dpd-delay` later, has the next Message ID and is not
/// a retransmission. Nothing else changes.
fn dpd_by_tandem(lose: Lose, what: &str) {
    let dpd = format!("dpd-delay = \"{}s\"", TANDEM_DPD.as_secs());
    let Some(mut b) = bed(&dpd, |_| {}) else { return };
    let old = b.sas.clone();
    let ping = BackgroundPing::start(&mut b.cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    lose_ike(&b.cl.gw[0], lose);
    let (_, bytes) = await_lost(&b, 1, what);
    let answered = before_kill(&b, lose, "INFORMATIONAL", bytes, what);
    eprintln!("{what}: in flight, {bytes} bytes lost; charon answered {answered:?}");

    let taken = fail_over(&mut b, what);
    assert_eq!(taken.report["retransmitted"], 1, "{what}: node 2 did not send node 1's DPD again");
    let mid = resent(&b, "INFORMATIONAL", answered, bytes, taken.charon_log_at_kill, what);
    let took = taken.at.elapsed();
    eprintln!("{what}: charon answered DPD {mid} {} after the takeover", ms(took));
    assert!(
        took < TANDEM_RETRANSMIT,
        "{what}: answered {took:?} after the takeover: not by the takeover's resend"
    );
    // Node 2 took the answer: its next check has the next Message ID, one dpd-delay later.
    let next = wait_until(TANDEM_DPD + Duration::from_secs(3), POLL, || {
        b.c.log()
            .get(taken.charon_log_at_kill..)
            .unwrap_or("")
            .contains(&parsed_request("INFORMATIONAL", mid + 1))
    });
    let since_kill = log_from(&b.c, taken.charon_log_at_kill);
    assert!(next, "{what}: no DPD {} from node 2 after DPD {mid}:\n{since_kill}", mid + 1);
    eprintln!("{what}: node 2's next DPD ({}) {} after the takeover", mid + 1, ms(taken.at.elapsed()));
    let retransmits = since_kill.matches("received retransmit of request").count();
    assert_eq!(
        retransmits,
        usize::from(answered.is_some()),
        "{what}: node 2 retransmitted a DPD more than once or after charon's answer:\n{since_kill}"
    );
    let (sas, _) = await_exactly(&b, what, |_| true);
    assert_eq!(sas, old, "{what}: the SAs changed");
    traffic_on(&b, &sas, what);
    charon_clean(&b, &since_kill, what);
    gap_of(&mut b, ping, what);
}

#[test]
fn dpd_by_tandem_request_lost() {
    dpd_by_tandem(Lose::Node1s, "DPD by tandem, request lost");
}

#[test]
fn dpd_by_tandem_response_lost() {
    dpd_by_tandem(Lose::Charons, "DPD by tandem, charon's response lost");
}

/// charon's DPD (`dpd_delay = 2s`, the tunnel idle): node 1 answers, its response is lost. charon
/// retransmits to node 2, which answers from the mirrored response cache; charon keeps the SAs.
#[test]
fn dpd_by_charon_response_lost() {
    let what = "DPD by charon, response lost";
    let Some(mut b) = bed("", |p| p.dpd_delay = "2s".into()) else { return };
    let old = b.sas.clone();
    let log_at = b.c.log().len();
    lose_ike(&b.cl.gw[0], Lose::Node1s);
    // Idle: charon checks liveness 2 s after it last received anything.
    let mut mid = None;
    let sent = wait_until(WAIT, POLL, || {
        mid = mids(&log_from(&b.c, log_at), "generating", "INFORMATIONAL", "request").first().copied();
        mid.is_some()
    });
    assert!(sent, "{what}: charon sent no DPD\n{}", b.logs());
    let mid = mid.expect("checked");
    await_lost(&b, 1, what);
    let ping = BackgroundPing::start(&mut b.cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    let seen = log_from(&b.c, log_at);
    assert!(
        mids(&seen, "parsed", "INFORMATIONAL", "response").is_empty(),
        "{what}: charon got the answer node 1's namespace was to drop:\n{seen}"
    );

    let taken = fail_over(&mut b, what);
    assert_eq!(taken.report["retransmitted"], 0, "{what}: node 2 had no request of its own to resend");
    let answered = wait_until(WAIT, POLL, || {
        mids(&log_from(&b.c, log_at), "parsed", "INFORMATIONAL", "response").contains(&mid)
    });
    let took = taken.at.elapsed();
    assert!(answered, "{what}: charon got no answer to DPD {mid}\n{}", b.logs());
    eprintln!("{what}: charon's DPD {mid} answered {} after the takeover", ms(took));
    let since = log_from(&b.c, log_at);
    assert!(
        since.contains(&format!("retransmit 1 of request with message ID {mid}")),
        "{what}: the answer came without charon retransmitting:\n{since}"
    );
    assert!(took < CHARON_RETRANSMIT * 2, "{what}: answered {took:?} after the takeover");
    let (sas, _) = await_exactly(&b, what, |_| true);
    assert_eq!(sas, old, "{what}: the SAs changed");
    traffic_on(&b, &sas, what);
    let since_kill = log_from(&b.c, taken.charon_log_at_kill);
    charon_clean(&b, &since_kill, what);
    gap_of(&mut b, ping, what);
}

// ---------------------------------------------------------------------------------------------
// Known fault F1 (docs/ha.md): a CHILD rekey node 1 completed but had not synced yet

/// Records the first IKE datagram (UDP port 500, or 4500 with the non-ESP marker) leaving an
/// interface, as one hex Ethernet frame in the file (renamed into place when done).
const IKE_CAPTURE: &str = r#"
import socket, struct, sys, os
iface, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
open(path + ".ready", "w").close()
while True:
    frame, addr = s.recvfrom(65535)
    if addr[2] != 4 or len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17: continue
    l4 = 14 + (frame[14] & 0x0f) * 4
    sport = struct.unpack("!H", frame[l4:l4+2])[0]
    if sport == 500 or (sport == 4500 and frame[l4+8:l4+12] == b"\0\0\0\0"):
        break
with open(path + ".tmp", "w") as out:
    out.write("0 0 %s\n" % frame.hex())
os.rename(path + ".tmp", path)
"#;

/// The sync link's port (`[ha] port`, its default).
const SYNC_PORT: u16 = 4510;
const SYNC_TABLE: &str = "tmidexsync";

/// Node 1 rekeys the CHILD SA; charon's answer is held back from node 1 (dropped at node 1,
/// recorded on charon's side) until node 1's sync link is made to lose everything but small
/// packets (QUIC keep-alives and acks get through, so the link stays up and node 1 keeps waiting
/// for the standby: `ack-timeout = 3s`). Then charon's answer is delivered to node 1 (injected
/// again, as recorded): node 1 installs the new CHILD SA and seals the ping's replies on it from
/// sequence number 1, while the snapshot that says so never reaches node 2 and the Delete of the
/// old CHILD SA waits for its acknowledgement. Node 1 dies; node 2 sends the request again,
/// charon answers from its cache with the same response, and node 2 derives the same keys.
///
/// Right behaviour (docs/ha.md, "no (key, sequence number) pair is sealed twice"): node 2 starts
/// that CHILD SA above every number node 1 could have sealed on it. Before the fix of the model's
/// finding F1 it started at 1: with AES-GCM that reused nonces, and charon dropped node 2's first
/// packets as replays (7 of 7 runs).
#[test]
fn child_rekey_completed_by_node1_unsynced_no_nonce_reuse() {
    let what = "CHILD rekey completed by node 1, not synced";
    let Some(mut b) = bed_with("", "ack-timeout = \"3s\"", &["python3"], |_| {}) else { return };
    let old = b.sas.clone();
    let ping = BackgroundPing::start(&mut b.cl.peer, PEER_INNER, CLUSTER_INNER, Duration::from_millis(10));
    // Record charon's next IKE datagram (its answer) and keep it from node 1.
    let dir = std::env::temp_dir().join(format!("tandem-midex-{}", b.cl.peer.name));
    std::fs::create_dir_all(&dir).expect("capture dir");
    let (script, file) = (dir.join("ike-capture.py"), dir.join("ike.txt"));
    std::fs::write(&script, IKE_CAPTURE).expect("write capture helper");
    let mut cmd = b.cl.peer.command("python3");
    cmd.arg(&script).arg(&b.cl.peer_if).arg(&file);
    let capture = b.cl.peer.spawn(cmd);
    let ready = wait_until(Duration::from_secs(10), POLL, || file.with_extension("txt.ready").exists());
    assert!(ready, "{what}: the IKE capture helper did not start");
    lose_ike(&b.cl.gw[0], Lose::Charons);
    let out = b.t1.ctl(&["rekey", "child-sa", &format!("{:#x}", old.child.0)]);
    assert!(out.status.success(), "tandemctl rekey child-sa: {}", String::from_utf8_lossy(&out.stderr));
    let (_, bytes) = await_lost(&b, 1, what);
    let answered = before_kill(&b, Lose::Charons, "CREATE_CHILD_SA", bytes, what);
    let recorded = wait_until(WAIT, POLL, || file.exists());
    b.cl.peer.stop(capture, Duration::from_secs(1));
    assert!(recorded, "{what}: charon's answer was not recorded");
    let frames = tandem_testbed::replay::read_frames(&file);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(frames.len(), 1, "{what}: recorded {frames:?}");

    // The sync link from node 1 to node 2 now carries only small packets.
    let rules = format!(
        "table inet {SYNC_TABLE} {{\n  counter big {{ }}\n  chain lose {{\n    type filter hook output priority 0; policy accept;\n    \
         ip saddr {} ip daddr {} udp dport {SYNC_PORT} ip length > 200 counter name \"big\" drop\n  }}\n}}\n",
        tandem_testbed::cluster::SYNC[0],
        tandem_testbed::cluster::SYNC[1]
    );
    let mut nft = b.cl.gw[0].command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("run nft");
    {
        use std::io::Write;
        child.stdin.take().expect("nft stdin").write_all(rules.as_bytes()).expect("write nft rules");
    }
    let o = child.wait_with_output().expect("nft");
    assert!(o.status.success(), "nft: {}", String::from_utf8_lossy(&o.stderr));
    unlose_ike(&b.cl.gw[0]);
    let charon_log_at_answer = b.c.log().len();
    assert_eq!(tandem_testbed::replay::inject(&b.cl.peer, &b.cl.peer_if, &frames), 1);

    // Node 1 has the new CHILD SA and seals on it; node 2 does not know.
    let (mut spi1, mut sealed) = (0, 0);
    let sealing = wait_until(WAIT, Duration::from_millis(5), || {
        let sas = b.t1.ipsec_sas();
        let new = sas
            .iter()
            .filter(|s| s["direction"] == "out" && s["spi"].as_u64() != Some(u64::from(old.child.1)))
            .find_map(|s| Some((s["spi"].as_u64()?, s["seq"].as_u64()?)));
        (spi1, sealed) = new.unwrap_or((0, 0));
        sealed > 10
    });
    assert!(
        sealing,
        "{what}: node 1 does not seal on a new CHILD SA (next seq {sealed})\n{}\n{}",
        b.ha(),
        b.logs()
    );
    let lag = ha_status(&b.t1)["lag_messages"].as_u64().unwrap_or(0);
    let deletes = mids(&log_from(&b.c, charon_log_at_answer), "parsed", "INFORMATIONAL", "request");
    eprintln!(
        "{what}: node 1 sealed up to {} on the new outbound SA {spi1:#x}, {lag} sync messages unacknowledged",
        sealed - 1
    );
    assert!(
        lag > 0,
        "{what}: node 2 acknowledged node 1's completion (the sync rule did not hold)\n{}",
        b.ha()
    );
    assert!(deletes.is_empty(), "{what}: node 1's Delete reached charon before the kill: {deletes:?}");
    assert_eq!(b.t2.child_sas().len(), 1, "{what}: node 2 mirrors the new CHILD SA");

    let taken = fail_over(&mut b, what);
    assert_eq!(taken.report["retransmitted"], 1, "{what}: node 2 did not send node 1's request again");
    let took = await_new(&b, &old, true, what) - taken.at;
    resent(&b, "CREATE_CHILD_SA", answered, bytes, taken.charon_log_at_kill, what);
    let new_out =
        b.t2.ipsec_sas()
            .iter()
            .filter(|s| s["direction"] == "out" && s["spi"].as_u64() != Some(u64::from(old.child.1)))
            .filter_map(|s| Some((s["spi"].as_u64()?, s["seq"].as_u64()?)))
            .collect::<Vec<_>>();
    eprintln!(
        "{what}: rekey completed by node 2 {} after the takeover; its new outbound SA {new_out:x?}",
        ms(took)
    );
    let [(spi2, next)] = new_out[..] else { panic!("{what}: node 2's new outbound SAs: {new_out:?}") };
    assert_eq!(spi2, spi1, "{what}: node 2 completed the rekey with another CHILD SA than node 1");
    assert!(
        next > sealed,
        "{what}: node 2 seals the new outbound SA {spi2:#x} at {next} (next to send), node 1 had sealed up to {} \
         on the same SA, the same keys (nonce reuse: known fault F1, docs/ha.md)\n{}",
        sealed - 1,
        b.logs()
    );
    let (new, _) = await_exactly(&b, what, |s| s.child != old.child);
    traffic_on(&b, &new, what);
    let since_kill = log_from(&b.c, taken.charon_log_at_kill);
    charon_clean(&b, &since_kill, what);
    gap_of(&mut b, ping, what);
}

//! Interop with a real strongSwan 5.9 charon (kernel-libipsec) in network namespaces.
//! tandemd runs on the left host (10.99.1.1), charon on the right (10.99.1.2).

use std::time::Duration;
use tandem_testbed::charon::{Charon, CharonConfig, IkeSa};
use tandem_testbed::netns::Pair;
use tandem_testbed::probe;
use tandem_testbed::tandemd::{left_config_full, Tandemd};
use tandem_testbed::{prerequisites_present, tools_present, wait_until};

const SUITES: [(&str, &str); 4] = [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes256-sha384-ecp384", "aes256-sha384"),
    ("chacha20poly1305-prfsha256-curve25519", "chacha20poly1305"),
];
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

struct Bed {
    t: Tandemd,
    c: Charon,
    pair: Pair,
}

fn bed(ike: &str, esp: &str, cfg: CharonConfig, extra_daemon: &str, extra_ike: &str) -> Bed {
    bed_full(ike, esp, cfg, extra_daemon, extra_ike, "")
}

fn bed_full(
    ike: &str,
    esp: &str,
    cfg: CharonConfig,
    extra_daemon: &str,
    extra_ike: &str,
    extra_ipsec: &str,
) -> Bed {
    bed_edited(ike, esp, cfg, extra_daemon, extra_ike, extra_ipsec, |toml| toml)
}

/// As `bed_full`, with tandem's configuration passed through `edit` first (for keys the
/// `extra_*` strings cannot place, such as one in the vpn section).
fn bed_edited(
    ike: &str,
    esp: &str,
    cfg: CharonConfig,
    extra_daemon: &str,
    extra_ike: &str,
    extra_ipsec: &str,
    edit: impl FnOnce(String) -> String,
) -> Bed {
    let mut pair = Pair::new();
    let dir = Tandemd::dir_for(&pair.left);
    let socket = dir.join("tandemd.sock");
    let toml =
        edit(left_config_full(socket.to_str().unwrap(), ike, esp, extra_daemon, extra_ike, extra_ipsec));
    let t = Tandemd::start(&mut pair.left, dir, &toml);
    // charon keeps a rekeyed CHILD SA (state DELETED) for `delete_rekeyed_delay` (5 s by default)
    // for packets in flight, as tandem does for `rekey-linger`; 1 s, so the rekey tests see the
    // old SAs disappear soon after each rekey.
    let c = Charon::start_with(&mut pair.right, &cfg.swanctl_conf(), CHARON_CONF, 2);
    Bed { t, c, pair }
}

const CHARON_CONF: &str = "install_routes = yes\n  delete_rekeyed_delay = 1";

fn hex64(v: &serde_json::Value) -> String {
    format!("{:016x}", v.as_u64().unwrap_or(0))
}

fn hex_u32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or(0)
}

/// Both ends have one established IKE SA with the same SPIs and one CHILD SA whose SPIs and
/// selectors mirror each other. Returns charon's view.
fn assert_agree(b: &Bed) -> IkeSa {
    let ok = wait_until(WAIT, POLL, || {
        let c = b.c.list_sas();
        b.t.established().len() == 1
            && b.t.child_sas().len() == 1
            && c.len() == 1
            && c[0].established()
            && c[0].installed_children().len() == 1
    });
    assert!(
        ok,
        "not established on both ends\n--- tandemd ---\n{}\n--- charon ---\n{}",
        b.t.log(),
        b.c.log()
    );
    let t_sa = &b.t.established()[0];
    let t_child = &b.t.child_sas()[0];
    let c_sa = b.c.list_sas().remove(0);
    let c_child = c_sa.installed_children()[0].clone();
    assert_eq!(hex64(&t_sa["spi_i"]), c_sa.spi_i, "IKE SPIi");
    assert_eq!(hex64(&t_sa["spi_r"]), c_sa.spi_r, "IKE SPIr");
    assert_eq!(
        t_child["spi_in"].as_u64().unwrap() as u32,
        hex_u32(&c_child.spi_out),
        "tandem inbound = charon outbound"
    );
    assert_eq!(
        t_child["spi_out"].as_u64().unwrap() as u32,
        hex_u32(&c_child.spi_in),
        "tandem outbound = charon inbound"
    );
    assert_eq!(c_child.local_ts, vec!["10.99.20.0/24"]);
    assert_eq!(c_child.remote_ts, vec!["10.99.10.0/24"]);
    assert_eq!(t_child["local_ts"][0]["start_addr"], "10.99.10.0");
    assert_eq!(t_child["remote_ts"][0]["end_addr"], "10.99.20.255");
    c_sa
}

fn tandem_initiates(b: &Bed) {
    let out = b.t.ctl(&["initiate", "t", "--wait", "20"]);
    assert!(
        out.status.success(),
        "initiate: {}\n{}\n--- charon ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.t.log(),
        b.c.log()
    );
}

fn charon_initiates(b: &Bed) {
    let out = b.c.initiate();
    assert!(
        out.status.success(),
        "charon initiate: {}\n--- tandemd ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        b.t.log()
    );
}

#[test]
fn every_suite_with_tandem_as_initiator() {
    if !prerequisites_present() {
        return;
    }
    for (ike, esp) in SUITES {
        let b = bed(ike, esp, CharonConfig::right(ike, esp), "", "");
        tandem_initiates(&b);
        assert_agree(&b);
        let table = String::from_utf8_lossy(&b.t.ctl(&["show", "ike-sa"]).stdout).into_owned();
        assert!(
            table.starts_with("VPN  Local-Addr  Local-ID  Remote-Addr  Remote-ID  State        Child-SAs"),
            "{table}"
        );
        assert!(
            table.contains("t    10.99.1.1   a.test    10.99.1.2    b.test     established  1"),
            "{table}"
        );
    }
}

#[test]
fn every_suite_with_tandem_as_responder() {
    if !prerequisites_present() {
        return;
    }
    for (ike, esp) in SUITES {
        let b = bed(ike, esp, CharonConfig::right(ike, esp), "", "");
        charon_initiates(&b);
        assert_agree(&b);
    }
}

#[test]
fn invalid_ke_payload_recovers_both_ways() {
    if !prerequisites_present() {
        return;
    }
    // charon guesses x25519 but tandem only takes ecp256.
    let b = bed(
        "aes256gcm16-prfsha256-ecp256",
        "aes256gcm16",
        CharonConfig::right("aes256gcm16-prfsha256-x25519-ecp256", "aes256gcm16"),
        "",
        "",
    );
    charon_initiates(&b);
    assert_agree(&b);
    assert!(b.c.log().contains("N(INVAL_KE)"), "{}", b.c.log());
    // tandem guesses x25519 but charon only takes ecp256.
    let b = bed(
        "aes256gcm16-prfsha256-x25519-ecp256",
        "aes256gcm16",
        CharonConfig::right("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
        "",
        "",
    );
    tandem_initiates(&b);
    assert_agree(&b);
    assert!(b.t.log().contains("INVALID_KE_PAYLOAD: retrying"), "{}", b.t.log());
}

#[test]
fn fragmented_ike_auth_both_ways() {
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = ("aes256-sha384-ecp384", "aes256-sha384");
    let mut pair = Pair::new();
    let dir = Tandemd::dir_for(&pair.left);
    let socket = dir.join("tandemd.sock");
    let toml = left_config_full(socket.to_str().unwrap(), ike, esp, "fragment-size = 200", "", "");
    let t = Tandemd::start(&mut pair.left, dir, &toml);
    let cfg = CharonConfig::right(ike, esp);
    let c = Charon::start_with(
        &mut pair.right,
        &cfg.swanctl_conf(),
        "install_routes = yes\n  fragment_size = 200",
        2,
    );
    let b = Bed { t, c, pair };
    tandem_initiates(&b);
    assert_agree(&b);
    let log = b.c.log();
    assert!(log.contains("IKE_AUTH request 1 [ EF("), "tandem sent fragments\n{log}");
    assert!(log.contains("IKE_AUTH response 1 [ EF("), "charon sent fragments\n{log}");
}

#[test]
fn ipv6_outer_and_inner_both_ways() {
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = SUITES[3];
    let v6 = |s: &str| {
        s.replace("10.99.1.1", "fd00:99:1::1")
            .replace("10.99.1.2", "fd00:99:1::2")
            .replace("10.99.10.0/24", "fd00:99:10::/64")
            .replace("10.99.20.0/24", "fd00:99:20::/64")
    };
    for tandem_first in [true, false] {
        let mut pair = Pair::new();
        let dir = Tandemd::dir_for(&pair.left);
        let socket = dir.join("tandemd.sock");
        let toml = v6(&left_config_full(socket.to_str().unwrap(), ike, esp, "", "", ""));
        let t = Tandemd::start(&mut pair.left, dir, &toml);
        let mut cfg = CharonConfig::right(ike, esp);
        cfg.local_addr = v6(&cfg.local_addr);
        cfg.remote_addr = v6(&cfg.remote_addr);
        cfg.local_ts = v6(&cfg.local_ts);
        cfg.remote_ts = v6(&cfg.remote_ts);
        let c = Charon::start(&mut pair.right, &cfg);
        let b = Bed { t, c, pair };
        if tandem_first {
            tandem_initiates(&b);
        } else {
            charon_initiates(&b);
        }
        let ok = wait_until(WAIT, POLL, || {
            let c = b.c.list_sas();
            b.t.established().len() == 1 && c.len() == 1 && c[0].installed_children().len() == 1
        });
        assert!(ok, "{}\n--- charon ---\n{}", b.t.log(), b.c.log());
        let sa = &b.t.established()[0];
        assert_eq!(sa["remote"], "[fd00:99:1::2]:4500");
        let c = b.c.list_sas().remove(0);
        assert_eq!(hex64(&sa["spi_i"]), c.spi_i);
        let child = &b.t.child_sas()[0];
        assert_eq!(child["spi_in"].as_u64().unwrap() as u32, hex_u32(&c.installed_children()[0].spi_out));
        assert_eq!(c.installed_children()[0].remote_ts, vec!["fd00:99:10::/64"]);
        assert_eq!(child["remote_ts"][0]["start_addr"], "fd00:99:20::");
    }
}

#[test]
fn cookie_demanded_at_threshold_zero() {
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = SUITES[0];
    let b = bed(ike, esp, CharonConfig::right(ike, esp), "cookie-threshold = 0", "");
    charon_initiates(&b);
    assert_agree(&b);
    assert!(b.c.log().contains("N(COOKIE)"), "{}", b.c.log());
}

fn child_spis(b: &Bed) -> (u32, u32) {
    let c = &b.t.child_sas()[0];
    (c["spi_in"].as_u64().unwrap() as u32, c["spi_out"].as_u64().unwrap() as u32)
}

/// The SAs of a settled tunnel, as both ends agree on them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sas {
    ike: (String, String),
    /// tandem's (inbound, outbound) CHILD SA SPIs.
    child: (u32, u32),
}

/// The tunnel with nothing left over at the IKE level: tandem lists exactly one IKE SA
/// (established) and one CHILD SA, charon exactly one IKE SA with exactly one CHILD SA that is not
/// DELETED (a rekeyed or deleting SA still counts), and the SPIs agree crosswise. None while
/// anything else is listed. (Deleted SAs lingering for packets in flight: see `await_rekey`.)
fn settled(b: &Bed) -> Option<Sas> {
    let (ike, child) = (b.t.ike_sas(), b.t.child_sas());
    let c = b.c.list_sas();
    let ([t_sa], [t_child], [c_sa]) = (&ike[..], &child[..], &c[..]) else { return None };
    // A DELETED CHILD SA is one charon deleted and keeps only for `delete_rekeyed_delay`.
    let live: Vec<_> = c_sa.children.iter().filter(|c| c.state != "DELETED").collect();
    let [c_child] = &live[..] else { return None };
    let t_child_spis =
        (t_child["spi_in"].as_u64().unwrap_or(0) as u32, t_child["spi_out"].as_u64().unwrap_or(0) as u32);
    let agree = t_sa["state"] == "established"
        && c_sa.established()
        && c_child.state == "INSTALLED"
        && hex64(&t_sa["spi_i"]) == c_sa.spi_i
        && hex64(&t_sa["spi_r"]) == c_sa.spi_r
        && t_child_spis == (hex_u32(&c_child.spi_out), hex_u32(&c_child.spi_in));
    agree.then(|| Sas { ike: (c_sa.spi_i.clone(), c_sa.spi_r.clone()), child: t_child_spis })
}

fn logs(b: &Bed) -> String {
    format!(
        "--- tandemd ---\n{}\n--- tandem SAs ---\n{:?}\n{:?}\n--- charon ---\n{}\n--- charon SAs ---\n{}",
        b.t.log(),
        b.t.ike_sas(),
        b.t.child_sas(),
        b.c.log(),
        String::from_utf8_lossy(&b.c.swanctl(&["--list-sas"]).stdout)
    )
}

/// Await the first settled state after `old` in which the CHILD SA (`child`) or the IKE SA was
/// replaced, and check that the old SA is gone from both ends: from the IKE engines' lists (that
/// is `settled`: exactly one of each) and from tandem's dataplane once its `rekey-linger` passed.
/// The other kind of SA is unchanged. Returns the new state.
fn await_rekey(b: &Bed, old: &Sas, child: bool, within: Duration, what: &str) -> Sas {
    let mut new = None;
    let ok = wait_until(within, Duration::from_millis(20), || {
        new = settled(b).filter(|s| if child { s.child != old.child } else { s.ike != old.ike });
        new.is_some()
    });
    assert!(ok, "{what}: no completed rekey of {old:?} within {within:?}\n{}", logs(b));
    let new = new.unwrap();
    if child {
        assert_eq!(new.ike, old.ike, "{what}: a CHILD SA rekey keeps the IKE SA");
    } else {
        assert_eq!(new.child, old.child, "{what}: an IKE SA rekey moves the CHILD SA over unchanged");
        return new;
    }
    let old_in_dataplane = || {
        b.t.ipsec_sas().iter().any(|s| {
            let spi = s["spi"].as_u64().unwrap_or(0) as u32;
            (s["direction"] == "in" && spi == old.child.0) || (s["direction"] == "out" && spi == old.child.1)
        })
    };
    let gone = wait_until(LINGER + Duration::from_secs(2), POLL, || !old_in_dataplane());
    assert!(gone, "{what}: the old CHILD SA {old:?} is still in the dataplane: {:?}", b.t.ipsec_sas());
    let old_at_charon = || {
        b.c.list_sas()
            .iter()
            .flat_map(|s| s.children.clone())
            .any(|c| hex_u32(&c.spi_out) == old.child.0 || hex_u32(&c.spi_in) == old.child.1)
    };
    let gone = wait_until(LINGER + Duration::from_secs(2), POLL, || !old_at_charon());
    assert!(gone, "{what}: charon still lists the old CHILD SA {old:?}\n{}", logs(b));
    new
}

/// tandem's `rekey-linger` in the rekey tests (the old inbound SA accepts packets this long), and
/// charon's `delete_rekeyed_delay` (CHARON_CONF).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_CONF: &str = "[dataplane]\nrekey-linger = \"1s\"";

/// The CREATE_CHILD_SA requests rekeying a CHILD SA in charon's log: (sent by charon, received).
fn child_rekey_requests(c: &Charon) -> (Vec<String>, Vec<String>) {
    let lines: Vec<String> = c
        .log()
        .lines()
        .filter(|l| l.contains("CREATE_CHILD_SA request") && l.contains("N(REKEY_SA)"))
        .map(str::to_string)
        .collect();
    let (sent, received) = lines.into_iter().partition(|l| l.contains("generating"));
    (sent, received)
}

#[test]
fn child_rekeys_by_either_side_with_and_without_pfs() {
    if !prerequisites_present() {
        return;
    }
    for esp in ["aes256gcm16", "aes256gcm16-x25519"] {
        for by_tandem in [true, false] {
            let what = format!("CHILD rekey ({esp}, by tandem: {by_tandem})");
            let ike = SUITES[0].0;
            let b = bed(ike, esp, CharonConfig::right(ike, esp), LINGER_CONF, "");
            tandem_initiates(&b);
            assert_agree(&b);
            let old = settled(&b).expect("settled after establishment");
            if by_tandem {
                let out = b.t.ctl(&["rekey", "child-sa", &format!("{:#x}", old.child.0)]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            } else {
                let out = b.c.swanctl(&["--rekey", "--child", "net"]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
            }
            await_rekey(&b, &old, true, WAIT, &what);
            let (sent, received) = child_rekey_requests(&b.c);
            let requests = if by_tandem { &received } else { &sent };
            assert_eq!(requests.len(), 1, "{what}: {sent:?} {received:?}");
            assert_eq!(requests[0].contains(" KE "), esp.contains("x25519"), "{what}: PFS: {requests:?}");
            assert!(!b.t.log().contains("refused"), "{}", b.t.log());
        }
    }
}

#[test]
fn ike_rekeys_by_either_side() {
    if !prerequisites_present() {
        return;
    }
    for by_tandem in [true, false] {
        let what = format!("IKE rekey (by tandem: {by_tandem})");
        let (ike, esp) = SUITES[1];
        let b = bed(ike, esp, CharonConfig::right(ike, esp), "", "");
        tandem_initiates(&b);
        assert_agree(&b);
        let old = settled(&b).expect("settled after establishment");
        if by_tandem {
            let id = format!("{:#x}", b.t.established()[0]["id"].as_u64().unwrap());
            let out = b.t.ctl(&["rekey", "ike-sa", &id]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            let out = b.c.swanctl(&["--rekey", "--ike", "t"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        }
        await_rekey(&b, &old, false, WAIT, &what);
    }
}

/// Rekeys driven by lifetimes alone, each side's own timer in turn (soft lifetime 3 s, no
/// operator command): tandem's CHILD SA and charon's CHILD SA, both with PFS (x25519), then
/// tandem's IKE SA and charon's IKE SA. Two rekeys each; after each, the old SA is gone on both
/// ends (not only a new SPI seen), and the rekeys came from the side whose timer it was.
#[test]
fn lifetimes_drive_rekeys_from_either_side() {
    if !tools_present(&["ping"]) {
        return;
    }
    let ike = SUITES[0].0;
    let esp = "aes256gcm16-x25519";
    let soft = Duration::from_secs(3);
    let within = soft + Duration::from_secs(4);
    let timers = "rekey-time = \"3s\"\nlifetime = \"30s\"\nrand-time = \"0s\"";
    for (case, child) in
        [("tandem CHILD", true), ("charon CHILD", true), ("tandem IKE", false), ("charon IKE", false)]
    {
        let t0 = std::time::Instant::now();
        let by_tandem = case.starts_with("tandem");
        let mut cfg = CharonConfig::right(ike, esp);
        let (mut ike_extra, mut ipsec_extra) = ("", "");
        match (by_tandem, child) {
            (true, true) => ipsec_extra = timers,
            (true, false) => ike_extra = timers,
            // An explicit hard lifetime: charon's default (rekey time + 10%) is whole seconds, so
            // 3 s would give 3 s, and the SA would expire and be re-created instead of rekeyed.
            (false, true) => {
                cfg.child_rekey_time = "3s".into();
                cfg.child_extra = "life_time = 30s\n        rand_time = 0s".into();
            }
            (false, false) => {
                cfg.rekey_time = "3s".into();
                cfg.conn_extra = "over_time = 30s\n    rand_time = 0s".into();
            }
        }
        let b = bed_full(ike, esp, cfg, LINGER_CONF, ike_extra, ipsec_extra);
        tandem_initiates(&b);
        assert_agree(&b);
        let mut sas = settled(&b).expect("settled after establishment");
        for round in 1..=2 {
            sas = await_rekey(&b, &sas, child, within, &format!("{case} rekey {round}"));
        }
        let log = b.c.log();
        if child {
            let (sent, received) = child_rekey_requests(&b.c);
            let (ours, theirs) = if by_tandem { (&received, &sent) } else { (&sent, &received) };
            assert!(
                ours.len() >= 2 && theirs.is_empty(),
                "{case}: charon sent {sent:?}, received {received:?}"
            );
            assert!(ours.iter().all(|l| l.contains(" KE ")), "{case}: rekeys without PFS: {ours:?}");
        } else {
            // charon's log names the exchange of an IKE SA rekey by who sent it.
            let sent = log.matches("generating CREATE_CHILD_SA request").count();
            let received = log.matches("parsed CREATE_CHILD_SA request").count();
            let (ours, theirs) = if by_tandem { (received, sent) } else { (sent, received) };
            assert!(ours >= 2 && theirs == 0, "{case}: charon sent {sent}, received {received}\n{log}");
        }
        assert!(!log.contains("failed"), "{case}\n{log}");
        assert!(
            tandem_testbed::probe::ping_until_reply(&b.pair.left, "10.99.10.1", "10.99.20.1", WAIT),
            "{case}: no traffic through the tunnel after the rekeys\n{}",
            logs(&b)
        );
        eprintln!(
            "{case}: two lifetime rekeys, old SAs gone on both ends, in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
    }
}

/// DPD settings of the two DPD tests: a check once nothing came from the peer for 2 s, sent at
/// +0 and retransmitted at +1 and +2.5 s, the peer declared dead at +4.75 s (1 + 1.5 + 2.25).
const DPD_DAEMON: &str = "retransmit-timeout = \"1s\"\nretransmit-tries = 2\nretransmit-base = 1.5";
const DPD_DELAY: Duration = Duration::from_secs(2);
const DPD_GIVE_UP: Duration = Duration::from_millis(4750);

/// Cut the link and return how long tandem took to remove the IKE SA `spi_i` (None: not within
/// 30 s). Checked against both bounds: the SA may go no sooner than the give-up time after the
/// cut (a check sent just before the cut may have lost its reply, so a little less), and no later
/// than dpd-delay after the last message from the peer plus the give-up time, plus 1 s for the
/// engine's timer, tandemctl and this poll.
fn cut_and_time_dpd(b: &Bed, spi_i: u64) -> Duration {
    let cut = std::time::Instant::now();
    b.pair.cut();
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        !b.t.ike_sas().iter().any(|s| s["spi_i"].as_u64() == Some(spi_i))
    });
    let took = cut.elapsed();
    assert!(gone, "IKE SA still there 30 s after the peer went away\n{}", b.t.log());
    let (min, max) =
        (DPD_GIVE_UP - Duration::from_millis(250), DPD_DELAY + DPD_GIVE_UP + Duration::from_secs(1));
    assert!(took >= min, "peer declared dead prematurely: after {took:?} (at least {min:?})\n{}", b.t.log());
    assert!(took <= max, "peer declared dead too late: after {took:?} (at most {max:?})\n{}", b.t.log());
    assert!(b.t.log().contains("peer not answering"), "{}", b.t.log());
    took
}

#[test]
fn dead_peer_detected_within_bounds() {
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = SUITES[0];
    let b = bed(
        ike,
        esp,
        CharonConfig::right(ike, esp),
        DPD_DAEMON,
        "dpd-delay = \"2s\"\ndpd-action = \"clear\"",
    );
    tandem_initiates(&b);
    assert_agree(&b);
    // Two DPD rounds with the peer alive first (charon answered two liveness checks): they must
    // not tear anything down.
    let checks = || b.c.log().matches("parsed INFORMATIONAL request").count();
    assert!(wait_until(DPD_DELAY * 4, POLL, || checks() >= 2), "no DPD checks seen\n{}", b.c.log());
    let sa = b.t.established();
    assert_eq!(sa.len(), 1, "DPD with a live peer kept the IKE SA\n{}", b.t.log());
    let took = cut_and_time_dpd(&b, sa[0]["spi_i"].as_u64().unwrap());
    // `clear`: nothing is re-established.
    assert!(b.t.ike_sas().is_empty() && b.t.child_sas().is_empty(), "{:?}", b.t.ike_sas());
    eprintln!("dpd clear: peer declared dead {took:?} after the cut");
}

/// `dpd-action = restart`: the peer goes dark, tandem declares it dead and at once tries to
/// re-establish the vpn; once the peer is reachable again the vpn is up with new SAs, agreed on
/// both ends (charon replaces its stale IKE SA on the INITIAL_CONTACT), and traffic flows.
#[test]
fn dead_peer_restart_reestablishes_when_the_peer_is_back() {
    if !tools_present(&["ping"]) {
        return;
    }
    let (ike, esp) = SUITES[0];
    let b = bed(
        ike,
        esp,
        CharonConfig::right(ike, esp),
        DPD_DAEMON,
        "dpd-delay = \"2s\"\ndpd-action = \"restart\"",
    );
    tandem_initiates(&b);
    let before = assert_agree(&b);
    let old_spi = b.t.established()[0]["spi_i"].as_u64().unwrap();
    let old_child = child_spis(&b);
    let took = cut_and_time_dpd(&b, old_spi);
    // The restart began while the peer is still dark: a new IKE SA is being negotiated.
    let retrying =
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || !b.t.ike_sas().is_empty());
    assert!(retrying, "no attempt to re-establish after the peer was declared dead\n{}", b.t.log());
    assert!(b.t.established().is_empty(), "established with a dead peer? {:?}", b.t.ike_sas());
    let back = std::time::Instant::now();
    b.pair.restore();
    let after = assert_agree(&b);
    assert_ne!(after.spi_i, before.spi_i, "a new IKE SA");
    assert_ne!(child_spis(&b), old_child, "a new CHILD SA");
    assert!(
        tandem_testbed::probe::ping_until_reply(&b.pair.left, "10.99.10.1", "10.99.20.1", WAIT),
        "no traffic through the re-established tunnel\n{}",
        b.t.log()
    );
    eprintln!(
        "dpd restart: peer declared dead {took:?} after the cut; up again {:?} after the peer came back",
        back.elapsed()
    );
}

#[test]
fn delete_from_either_side_tears_down_both() {
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = SUITES[0];
    let b = bed(ike, esp, CharonConfig::right(ike, esp), "", "");
    tandem_initiates(&b);
    assert_agree(&b);
    let out = b.c.swanctl(&["--terminate", "--ike", "t", "--timeout", "10"]);
    assert!(out.status.success());
    assert!(wait_until(WAIT, POLL, || b.t.ike_sas().is_empty()), "{}", b.t.log());

    charon_initiates(&b);
    assert_agree(&b);
    let out = b.t.ctl(&["terminate", "ike-sa", "--vpn", "t"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(WAIT, POLL, || b.c.list_sas().is_empty() && b.t.ike_sas().is_empty()),
        "{}",
        b.c.log()
    );
}

/// Sends 10,000 hostile datagrams from the right host: random bytes, and mutations of a well-formed
/// IKE_SA_INIT request (random SPIs, flipped bytes, truncations, bogus lengths), to 500 and 4500
/// (there 70% with the non-ESP marker). Seeded, so every run sends the same datagrams. Prints, as
/// JSON, how many went where and how tandemd must classify them: on 4500 as the dataplane's demux
/// does (NAT keepalive, IKE behind the marker, runt, ESP), and how many carry an IKE header that
/// cannot parse (too short, major version not 2, length field not the datagram's length).
const FLOOD: &str = r#"
import json, random, socket, struct, sys, time
rng = random.Random(7)
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def sa_init():
    spi = rng.randbytes(8)
    sa = bytes([0,0,0,48, 0,0,0,44, 1,1,0,4]) + bytes([3,0,0,12,1,0,0,20,0x80,14,1,0]) + bytes([3,0,0,8,2,0,0,5]) + bytes([3,0,0,8,4,0,0,31]) + bytes([0,0,0,8,3,0,0,0])
    ke = bytes([40,0,0,40,0,31,0,0]) + rng.randbytes(32)
    nonce = bytes([0,0,0,36]) + rng.randbytes(32)
    payloads = bytes([34,0]) + struct.pack(">H", len(sa)) + sa[4:] + ke + nonce
    hdr = spi + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4) + struct.pack(">I", 28 + len(payloads))
    return hdr + payloads
def bad_header(d):
    return len(d) < 28 or d[17] >> 4 != 2 or struct.unpack(">I", d[24:28])[0] != len(d)
c = dict(sent=0, p500=0, p500_bad_header=0, p4500=0, keepalive=0, marker=0, marker_bad_header=0, runt=0, esp=0)
for i in range(10000):
    if i % 4 == 0:
        d = rng.randbytes(rng.randint(0, 1500))
    else:
        d = bytearray(sa_init())
        for _ in range(rng.randint(1, 8)):
            d[rng.randrange(len(d))] = rng.randrange(256)
        if rng.random() < 0.3:
            d = d[:rng.randint(0, len(d))]
        d = bytes(d)
    port = 4500 if i % 3 == 0 else 500
    if port == 4500 and rng.random() < 0.7:
        d = bytes(4) + d
    s.sendto(d, (dst, port))
    c["sent"] += 1
    if i % 100 == 99:
        time.sleep(0.002)  # at most ~50,000/s: hostile, yet within what the socket buffers absorb
    if port == 500:
        c["p500"] += 1
        c["p500_bad_header"] += bad_header(d)
    else:
        c["p4500"] += 1
        if d == b"\xff":
            c["keepalive"] += 1
        elif len(d) >= 4 and d[:4] == bytes(4):
            c["marker"] += 1
            c["marker_bad_header"] += bad_header(d[4:])
        elif len(d) < 8:
            c["runt"] += 1
        else:
            c["esp"] += 1
print(json.dumps(c))
"#;

#[test]
fn survives_ten_thousand_hostile_datagrams_then_negotiates() {
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = SUITES[0];
    let b = bed(ike, esp, CharonConfig::right(ike, esp), "", "");
    let ns = b.pair.left.name.clone();
    // tandemd's receive and drop counters, and the kernel's drops on its sockets.
    let snap = |t: &Tandemd| -> serde_json::Value {
        let (st, ip) = (t.status(), t.ipsec_stat());
        serde_json::json!({
            "ike_received": st["io"]["ike_received"], "ike_sent": st["io"]["ike_sent"],
            "engine": st["engine"], "dp": ip["io"],
            "drops500": probe::udp_socket_drops(&ns, 500), "drops4500": probe::udp_socket_drops(&ns, 4500),
        })
    };
    let n = |v: &serde_json::Value, path: &[&str]| -> u64 {
        path.iter().fold(v, |v, p| &v[*p]).as_u64().unwrap_or(0)
    };
    let before = snap(&b.t);
    let out = b.pair.right.exec("python3", &["-c", FLOOD, "10.99.1.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flood summary");
    assert_eq!(n(&sent, &["sent"]), 10_000, "{sent}");
    let d = |now: &serde_json::Value, path: &[&str]| n(now, path) - n(&before, path);

    // Every datagram sent reached tandemd's sockets (one veth, nothing else in the way) and was
    // either read and counted by tandemd or dropped by the kernel on a full socket buffer:
    // port 500 by the daemon's IKE socket, 4500 by the dataplane's.
    let mut now = snap(&b.t);
    let closed = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        now = snap(&b.t);
        d(&now, &["ike_received"]) + d(&now, &["drops500"]) == n(&sent, &["p500"])
            && d(&now, &["dp", "rx_datagrams"]) + d(&now, &["drops4500"]) == n(&sent, &["p4500"])
    });
    assert!(closed, "datagrams unaccounted for: sent {sent}\nbefore {before}\nafter {now}\n{}", b.t.log());
    let kernel_drops = d(&now, &["drops500"]) + d(&now, &["drops4500"]);
    assert!(kernel_drops <= 1_000, "tandemd read too few of the datagrams to test much: {now}");
    // The dataplane's demux put each of its datagrams in exactly one class, the one the sender
    // computed (fewer only by what the kernel dropped); without SAs all ESP is for unknown SPIs.
    let classes = [
        (["dp", "nat_keepalive_rx"], "keepalive"),
        (["dp", "ike_rx"], "marker"),
        (["dp", "esp_rx_packets"], "esp"),
    ];
    let runt_class = d(&now, &["dp", "drop_runt"]);
    assert_eq!(
        classes.iter().map(|(p, _)| d(&now, p)).sum::<u64>() + runt_class,
        d(&now, &["dp", "rx_datagrams"]),
        "{now}"
    );
    let drops4500 = d(&now, &["drops4500"]);
    for (path, class) in classes.iter().map(|(p, c)| (&p[..], *c)).chain([(&["dp", "drop_runt"][..], "runt")])
    {
        let (got, want) = (d(&now, path), n(&sent, &[class]));
        assert!(got <= want && got + drops4500 >= want, "{class}: counted {got}, sent {want}: {now}");
    }
    assert_eq!(d(&now, &["dp", "drop_unknown_spi"]), d(&now, &["dp", "esp_rx_packets"]), "{now}");
    // The engine got what the two sockets passed on (less events the dataplane could not queue).
    // Each datagram is either counted as dropped (malformed, unknown SA, ...), or answered with
    // exactly one datagram: a cookie demand (counted too), or an IKE_SA_INIT response or error
    // notification for the mutated requests that still parse. Every datagram whose IKE header
    // cannot parse is among the malformed.
    let engine_in = d(&now, &["ike_received"]) + d(&now, &["dp", "ike_rx"]) - d(&now, &["dp", "drop_events"]);
    let bad = (n(&sent, &["p500_bad_header"]) + n(&sent, &["marker_bad_header"]))
        .saturating_sub(kernel_drops + d(&now, &["dp", "drop_events"]));
    let engine_dropped = |now: &serde_json::Value| -> u64 {
        [
            "malformed",
            "unknown_sa",
            "bad_message_id",
            "decrypt_failed",
            "cookies_sent",
            "retransmits_answered",
        ]
        .iter()
        .map(|k| d(now, &["engine", k]))
        .sum()
    };
    let answered = |now: &serde_json::Value| -> u64 {
        (d(now, &["ike_sent"]) + d(now, &["dp", "ike_tx"]))
            .saturating_sub(d(now, &["engine", "cookies_sent"]) + d(now, &["engine", "retransmits_answered"]))
    };
    let counted = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        now = snap(&b.t);
        engine_dropped(&now) + answered(&now) == engine_in
    });
    assert!(
        counted,
        "engine: {engine_in} in, {} counted as dropped, {} answered: {now}",
        engine_dropped(&now),
        answered(&now)
    );
    assert!(d(&now, &["engine", "malformed"]) >= bad, "malformed: fewer than {bad}: {now}");
    // The flood reached the responder's IKE_SA_INIT path, and its cookie defence beyond the
    // threshold of 100 half-open SAs.
    assert!(answered(&now) >= 100 && d(&now, &["engine", "cookies_sent"]) >= 1, "{now}");
    assert!(std::path::Path::new(&format!("/proc/{}", b.t.pid)).exists(), "tandemd died\n{}", b.t.log());
    charon_initiates(&b);
    assert_agree(&b);
    eprintln!(
        "hostile datagrams: sent {sent}; kernel dropped {kernel_drops}; engine got {engine_in}, counted {} as dropped ({} malformed, {} unknown SA, {} cookies), answered {}; {} IKE datagrams sent",
        engine_dropped(&now),
        d(&now, &["engine", "malformed"]),
        d(&now, &["engine", "unknown_sa"]),
        d(&now, &["engine", "cookies_sent"]),
        answered(&now),
        d(&now, &["ike_sent"]) + d(&now, &["dp", "ike_tx"]),
    );
}

#[test]
fn childless_initiation_against_charon() {
    // RFC 6023: with `childless = "prefer"` tandem leaves the CHILD SA out of IKE_AUTH when
    // charon announces CHILDLESS_IKEV2_SUPPORTED, and makes it with CREATE_CHILD_SA (here with its
    // own x25519 exchange, which an IKE_AUTH CHILD SA never has).
    if !prerequisites_present() {
        return;
    }
    let (ike, esp) = ("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519");
    let b = bed_edited(ike, esp, CharonConfig::right(ike, esp), "", "", "", |toml| {
        let toml =
            toml.replace("remote-id = \"b.test\"\n", "remote-id = \"b.test\"\nchildless = \"prefer\"\n");
        assert!(toml.contains("childless = \"prefer\""), "{toml}");
        toml
    });
    tandem_initiates(&b);
    assert_agree(&b);
    let log = b.c.log();
    let auth = log.lines().find(|l| l.contains("parsed IKE_AUTH request 1")).unwrap_or_default().to_string();
    assert!(!auth.is_empty() && !auth.contains(" SA "), "IKE_AUTH without a CHILD SA: {auth}\n{log}");
    assert!(
        log.lines().any(|l| l.contains("parsed CREATE_CHILD_SA request 2 [ SA No KE TSi TSr ]")),
        "the CHILD SA came with CREATE_CHILD_SA and PFS\n{log}"
    );
    let child = &b.t.child_sas()[0];
    assert!(!child["dh"].is_null(), "tandem's CHILD SA has a DH group: {child}");
}

//! Simultaneous rekeys against strongSwan (issue 9, section 1(b)): tandemd as the responder,
//! charon initiating, identical rekey timers and no jitter on either side (IKE SA every 8 s, CHILD
//! SA every 5 s with PFS x25519), so both ends start most rekeys at the same instant and the RFC
//! 7296 collision rules (sections 2.8.1, 2.8.2, 2.25) decide what survives.
//!
//! One run is `TUNNELS` independent trials at once: that many vpns (distinct identities, PSKs and
//! inner subnets) between one tandemd and one charon, each with its own paced ping, for 60 s. A
//! fault that kills one tunnel in ten 60-second runs goes unseen by all of them with probability
//! 0.9^24 = 8%. Each tunnel must lose no ping and end with exactly one IKE SA and one CHILD SA on
//! both ends, SPIs agreeing crosswise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tandem_testbed::charon::{Charon, IkeSa};
use tandem_testbed::netns::Pair;
use tandem_testbed::probe::{Ping, PingResult};
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{tools_present, wait_until};

/// Tunnels in one run: each is one trial.
const TUNNELS: usize = 24;
/// Paced ping per tunnel: 600 echo requests, one every 100 ms (60 s).
const PINGS: u32 = 600;
const PING_INTERVAL: Duration = Duration::from_millis(100);
const IKE_REKEY: Duration = Duration::from_secs(8);
const CHILD_REKEY: Duration = Duration::from_secs(5);
const IKE: &str = "aes256gcm16-prfsha256-x25519";
const ESP: &str = "aes256gcm16-x25519";

fn vpn(i: usize) -> String {
    format!("v{i:02}")
}

fn conn(i: usize) -> String {
    format!("t{i:02}")
}

/// Inner hosts of tunnel `i`: (tandem side, charon side), each in its own /24.
fn inner(i: usize) -> (String, String) {
    (format!("10.100.{i}.1"), format!("10.200.{i}.1"))
}

/// tandemd: one vpn per tunnel, responder only (no start-action), the same timers as charon and
/// no jitter; hard lifetimes are the defaults (rekey time + 10%).
fn tandem_conf(socket: &str) -> String {
    let mut s = format!(
        "[daemon]\nsocket = \"{socket}\"\nlisten = [\"10.99.1.1\"]\n\n\
         [ike-policy.ike1]\nproposals = [\"{IKE}\"]\nrekey-time = \"{}s\"\nrand-time = \"0s\"\n\n\
         [ipsec-policy.ipsec1]\nproposals = [\"{ESP}\"]\nrekey-time = \"{}s\"\nrand-time = \"0s\"\n\n",
        IKE_REKEY.as_secs(),
        CHILD_REKEY.as_secs()
    );
    for i in 0..TUNNELS {
        let v = vpn(i);
        let _ = write!(
            s,
            "[vpn.{v}]\nike-policy = \"ike1\"\nipsec-policy = \"ipsec1\"\nlocal-address = \"10.99.1.1\"\n\
             remote-address = \"10.99.1.2\"\nlocal-id = \"a{i}.test\"\nremote-id = \"b{i}.test\"\n\n\
             [[vpn.{v}.security-policy]]\nname = \"net\"\nlocal-ts = [\"10.100.{i}.0/24\"]\nremote-ts = [\"10.200.{i}.0/24\"]\n\n\
             [pre-shared-key.{v}]\nids = [\"a{i}.test\", \"b{i}.test\"]\nsecret = \"psk-of-tunnel-{i}-long-enough\"\n\n"
        );
    }
    s
}

/// charon: one connection per tunnel with the same rekey times and `rand_time = 0s`. Its hard
/// lifetimes are whole seconds (the default, rekey time + 10%, would round down to the rekey time
/// and expire the SAs instead of rekeying them): CHILD 6 s, IKE 8 + 1 s.
fn charon_conf() -> String {
    let (ike_rk, child_rk) = (IKE_REKEY.as_secs(), CHILD_REKEY.as_secs());
    let mut conns = String::new();
    let mut secrets = String::new();
    for i in 0..TUNNELS {
        let (c, v) = (conn(i), vpn(i));
        let _ = write!(
            conns,
            "  {c} {{\n    version = 2\n    local_addrs = 10.99.1.2\n    remote_addrs = 10.99.1.1\n    proposals = {IKE}\n\
             \x20   rekey_time = {ike_rk}s\n    over_time = 1s\n    rand_time = 0s\n    dpd_delay = 0s\n\
             \x20   local {{\n      auth = psk\n      id = b{i}.test\n    }}\n    remote {{\n      auth = psk\n      id = a{i}.test\n    }}\n\
             \x20   children {{\n      net{i} {{\n        mode = tunnel\n        local_ts = 10.200.{i}.0/24\n        remote_ts = 10.100.{i}.0/24\n\
             \x20       esp_proposals = {ESP}\n        rekey_time = {child_rk}s\n        life_time = {}s\n        rand_time = 0s\n\
             \x20       start_action = none\n      }}\n    }}\n  }}\n",
            child_rk + 1
        );
        let _ = write!(
            secrets,
            "  ike-{v} {{\n    id-a = a{i}.test\n    id-b = b{i}.test\n    secret = \"psk-of-tunnel-{i}-long-enough\"\n  }}\n"
        );
    }
    format!("connections {{\n{conns}}}\nsecrets {{\n{secrets}}}\n")
}

fn hex64(v: &serde_json::Value) -> String {
    format!("{:016x}", v.as_u64().unwrap_or(0))
}

fn hex_u32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or(0)
}

/// Tunnel `i` as both ends list it, when it is exactly one IKE SA and one CHILD SA on each end
/// with agreeing SPIs (charon's rekeyed CHILD SAs kept for `delete_rekeyed_delay` in state DELETED
/// do not count: they are deleted). Err: what is wrong.
fn tunnel_state(
    i: usize,
    t_ike: &[serde_json::Value],
    t_child: &[serde_json::Value],
    c: &[IkeSa],
) -> Result<(), String> {
    let v = vpn(i);
    let ike: Vec<_> = t_ike.iter().filter(|s| s["vpn"] == v.as_str()).collect();
    let child: Vec<_> = t_child.iter().filter(|s| s["vpn"] == v.as_str()).collect();
    let c_ike: Vec<_> = c.iter().filter(|s| s.name == conn(i)).collect();
    let ([t_sa], [t_ch], [c_sa]) = (&ike[..], &child[..], &c_ike[..]) else {
        return Err(format!(
            "tandem: {} IKE SAs, {} CHILD SAs; charon: {} IKE SAs",
            ike.len(),
            child.len(),
            c_ike.len()
        ));
    };
    let c_children: Vec<_> = c_sa.children.iter().filter(|c| c.state != "DELETED").collect();
    let [c_ch] = &c_children[..] else {
        return Err(format!("charon: {} CHILD SAs: {:?}", c_children.len(), c_sa.children));
    };
    let t_spis = (t_ch["spi_in"].as_u64().unwrap_or(0) as u32, t_ch["spi_out"].as_u64().unwrap_or(0) as u32);
    let ok = t_sa["state"] == "established"
        && c_sa.established()
        && c_ch.state == "INSTALLED"
        && t_ch["ike_sa"] == t_sa["id"]
        && hex64(&t_sa["spi_i"]) == c_sa.spi_i
        && hex64(&t_sa["spi_r"]) == c_sa.spi_r
        && t_spis == (hex_u32(&c_ch.spi_out), hex_u32(&c_ch.spi_in));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "disagree: tandem IKE {} {}/{} CHILD {:08x}/{:08x}; charon IKE {} {}/{} CHILD {} {}/{}",
            t_sa["state"],
            hex64(&t_sa["spi_i"]),
            hex64(&t_sa["spi_r"]),
            t_spis.0,
            t_spis.1,
            c_sa.state,
            c_sa.spi_i,
            c_sa.spi_r,
            c_ch.state,
            c_ch.spi_in,
            c_ch.spi_out
        ))
    }
}

/// The last `n` lines of `log` that mention `needle`.
fn tail_of(log: &str, needle: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// charon drops any message whose Message ID equals the one it is processing on that IKE SA, so
// when both ends send request N at once our response N is lost; tandem sends it again once the
// crossing is seen (crates/ike/src/reliability.rs). Without that, 15 of 24 tunnels failed here.
#[test]
fn simultaneous_rekeys_without_jitter_keep_every_tunnel() {
    if !tools_present(&["ping"]) {
        return;
    }
    let t0 = Instant::now();
    let mut pair = Pair::new();
    for i in 0..TUNNELS {
        let (l, r) = inner(i);
        pair.left.ip(&["addr", "add", &format!("{l}/32"), "dev", "lo"]);
        pair.right.ip(&["addr", "add", &format!("{r}/32"), "dev", "lo"]);
    }
    let dir = Tandemd::dir_for(&pair.left);
    let socket = dir.join("tandemd.sock");
    let t = Tandemd::start(&mut pair.left, dir, &tandem_conf(socket.to_str().expect("utf-8")));
    // delete_rekeyed_delay: see tunnel_state.
    let c = Charon::start_with(
        &mut pair.right,
        &charon_conf(),
        "install_routes = yes\n  delete_rekeyed_delay = 1",
        2,
    );
    // Diagnosis: TANDEM_COLLISION_DIAG=DIR keeps both logs and a capture of the wire there.
    let diag = std::env::var_os("TANDEM_COLLISION_DIAG").map(std::path::PathBuf::from);
    let capture = diag.as_ref().map(|d| {
        std::fs::create_dir_all(d).expect("diag dir");
        let mut cmd = pair.left.command("tshark");
        cmd.args(["-q", "-i", &pair.left_if, "-w"]).arg(d.join("wire.pcap"));
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        pair.left.spawn(cmd)
    });

    // charon initiates every tunnel, one after the other (so the tunnels' timers are spread
    // over the time this takes, not all in the same instant).
    for i in 0..TUNNELS {
        let out = c.swanctl(&["--initiate", "--child", &format!("net{i}"), "--timeout", "20"]);
        assert!(
            out.status.success(),
            "charon initiate {}: {}\n{}",
            conn(i),
            String::from_utf8_lossy(&out.stdout),
            t.log()
        );
    }
    let all_up = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let (ike, child, sas) = (t.ike_sas(), t.child_sas(), c.list_sas());
        (0..TUNNELS).all(|i| tunnel_state(i, &ike, &child, &sas).is_ok())
    });
    assert!(all_up, "not every tunnel came up\n{}", t.log());
    for i in 0..TUNNELS {
        let (l, r) = inner(i);
        assert!(
            tandem_testbed::probe::ping_until_reply(&pair.left, &l, &r, Duration::from_secs(10)),
            "tunnel {i}: no traffic before the test\n{}",
            t.log()
        );
    }
    let setup = t0.elapsed();

    // The paced pings, and meanwhile every SPI tandem lists, per vpn (to prove the rekeys ran).
    let stop = AtomicBool::new(false);
    let (results, seen) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen: BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>)> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for sa in t.ike_sas() {
                    let e = seen.entry(sa["vpn"].as_str().unwrap_or("").to_string()).or_default();
                    e.0.insert(sa["spi_i"].as_u64().unwrap_or(0));
                }
                for ch in t.child_sas() {
                    let e = seen.entry(ch["vpn"].as_str().unwrap_or("").to_string()).or_default();
                    e.1.insert(ch["spi_in"].as_u64().unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            seen
        });
        let pings: Vec<_> = (0..TUNNELS)
            .map(|i| {
                let left = &pair.left;
                s.spawn(move || {
                    let (l, r) = inner(i);
                    // 5 s of slack at the end: 24 pings at once drift by about 1% and must
                    // still send all their requests before ping's deadline.
                    let mut p = Ping::new(&l, &r, PINGS).interval(PING_INTERVAL);
                    p.wait = Duration::from_secs(5);
                    p.verbose = true;
                    p.run(left)
                })
            })
            .collect();
        let results: Vec<PingResult> = pings.into_iter().map(|h| h.join().expect("ping thread")).collect();
        stop.store(true, Ordering::Relaxed);
        (results, watcher.join().expect("watcher"))
    });

    // The end state, per tunnel: rekeys go on, so each tunnel is checked until one consistent
    // listing of both ends shows it settled (bounded: a broken tunnel never settles).
    let mut state: Vec<Result<(), String>> = vec![Err("not checked".into()); TUNNELS];
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (ike, child, sas) = (t.ike_sas(), t.child_sas(), c.list_sas());
        for (i, st) in state.iter_mut().enumerate() {
            if st.is_err() {
                *st = tunnel_state(i, &ike, &child, &sas);
            }
        }
        state.iter().all(Result::is_ok)
    });

    if let (Some(d), Some(pid)) = (&diag, capture) {
        pair.left.stop(pid, Duration::from_secs(2));
        let _ = std::fs::write(d.join("tandemd.log"), t.log());
        let _ = std::fs::write(d.join("charon.log"), c.log());
    }

    let (min_child, min_ike) = (8, 5); // of 12 CHILD and 7 IKE rekeys in 60 s
    let mut failed = Vec::new();
    for i in 0..TUNNELS {
        let r = &results[i];
        let (ike_spis, child_spis) = seen.get(&vpn(i)).map(|(a, b)| (a.len(), b.len())).unwrap_or((0, 0));
        let mut why = Vec::new();
        if r.transmitted != PINGS || r.lost() != 0 {
            why.push(format!("lost {} of {} pings {:?}", r.lost(), r.transmitted, r.missing()));
        }
        if let Err(e) = &state[i] {
            why.push(format!("end state: {e}"));
        }
        if child_spis < min_child || ike_spis < min_ike {
            why.push(format!(
                "only {child_spis} CHILD SAs and {ike_spis} IKE SAs seen (rekeys not running?)"
            ));
        }
        if !why.is_empty() {
            failed.push((i, why.join("; ")));
        }
    }
    eprintln!(
        "rekey collisions: {} of {TUNNELS} tunnels failed; setup {:.1}s, total {:.1}s",
        failed.len(),
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    if let Some((first, _)) = failed.first() {
        let summary: Vec<String> =
            failed.iter().map(|(i, w)| format!("  {} / {}: {w}", vpn(*i), conn(*i))).collect();
        panic!(
            "{} of {TUNNELS} tunnels failed:\n{}\n--- tandemd, {} ---\n{}\n--- charon, {} ---\n{}",
            failed.len(),
            summary.join("\n"),
            vpn(*first),
            tail_of(&t.log(), &vpn(*first), 60),
            conn(*first),
            tail_of(&c.log(), &format!("<{}|", conn(*first)), 60)
        );
    }
}

//! Stale and deleted SAs between two tandemd (seed 001, F5 bug 662331: INVALID_SPI logged but the
//! dead SA kept, so the tunnel stayed down until its lifetime ended). Here an SA that one side lost
//! is replaced at once, and operators can delete one SA by SPI on either side.

use std::time::Duration;
use tandem_testbed::netns::{Netns, Pair};
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::{prerequisites_present, wait_until};

const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// tandemd on one host of `Pair`: left (10.99.1.1, protects 10.99.10.0/24) or right.
fn config(socket: &str, left: bool) -> String {
    let (la, ra, lid, rid, lts, rts) = if left {
        ("10.99.1.1", "10.99.1.2", "a.test", "b.test", "10.99.10.0/24", "10.99.20.0/24")
    } else {
        ("10.99.1.2", "10.99.1.1", "b.test", "a.test", "10.99.20.0/24", "10.99.10.0/24")
    };
    format!(
        r#"[daemon]
socket = "{socket}"
listen = ["{la}"]
[ike-policy.ike1]
proposals = ["aes256gcm16-prfsha256-x25519"]
[ipsec-policy.ipsec1]
proposals = ["aes256gcm16"]
[vpn.t]
ike-policy = "ike1"
ipsec-policy = "ipsec1"
local-address = "{la}"
remote-address = "{ra}"
local-id = "{lid}"
remote-id = "{rid}"
[[vpn.t.security-policy]]
name = "net"
local-ts = ["{lts}"]
remote-ts = ["{rts}"]
[pre-shared-key.t]
ids = ["a.test", "b.test"]
secret = "a-long-test-psk"
"#
    )
}

fn start(ns: &mut Netns, left: bool) -> Tandemd {
    let dir = Tandemd::dir_for(ns);
    let socket = dir.join("tandemd.sock");
    let toml = config(socket.to_str().unwrap(), left);
    Tandemd::start(ns, dir, &toml)
}

fn ping_ok(ns: &Netns) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", "-I", "10.99.10.1", "10.99.20.1"]).status.success()
}

fn spis(t: &Tandemd) -> Vec<(u64, u64)> {
    t.child_sas()
        .iter()
        .map(|c| (c["spi_in"].as_u64().unwrap_or(0), c["spi_out"].as_u64().unwrap_or(0)))
        .collect()
}

fn json(t: &Tandemd, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = t.ctl(&a);
    assert!(out.status.success(), "tandemctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The dataplane's inbound SPIs.
fn inbound_spis(t: &Tandemd) -> Vec<u64> {
    json(t, &["show", "ipsec-sa"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["direction"] == "in" && s["state"] != "retired")
        .filter_map(|s| s["spi"].as_u64())
        .collect()
}

fn up(pair: &mut Pair) -> (Tandemd, Tandemd) {
    let right = start(&mut pair.right, false);
    let left = start(&mut pair.left, true);
    let out = left.ctl(&["initiate", "t", "--wait", "10"]);
    assert!(out.status.success(), "initiate: {}\n{}", String::from_utf8_lossy(&out.stderr), left.log());
    assert!(wait_until(WAIT, POLL, || ping_ok(&pair.left)), "no traffic through the tunnel");
    (left, right)
}

#[test]
fn a_lost_sa_is_replaced_at_once_after_invalid_spi() {
    if !prerequisites_present() {
        return;
    }
    let mut pair = Pair::new();
    let (left, right) = up(&mut pair);
    let before = spis(&left);
    assert_eq!(before.len(), 1);
    let (_, lost) = before[0];
    // The right side loses its inbound SA (the peer is not told): left's ESP now hits an unknown SPI.
    let out = right.ctl(&["delete", "ipsec-sa", "--spi", &format!("{lost:#x}"), "--local-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!inbound_spis(&right).contains(&lost));
    assert!(!ping_ok(&pair.left), "traffic to the lost SA must fail first");
    // INVALID_SPI from right makes left delete the dead SA and negotiate a new one, at once.
    let replaced = wait_until(WAIT, POLL, || {
        let now = spis(&left);
        now.len() == 1 && now[0] != before[0] && ping_ok(&pair.left)
    });
    assert!(replaced, "not replaced: left {:?}\n{}\n--- right\n{}", spis(&left), left.log(), right.log());
    let stat = json(&right, &["show", "ipsec-stat"]);
    assert!(stat["io"]["invalid_spi_reports"].as_u64() >= Some(1), "{stat}");
    assert!(stat["esp"]["in_no_sa"].as_u64() >= Some(1), "{stat}");
    // The dead SA is gone on both sides (no SA kept until its lifetime ends).
    assert!(wait_until(WAIT, POLL, || !json(&left, &["show", "ipsec-sa"])
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["spi"].as_u64() == Some(lost) && s["state"] != "retired")));
    assert!(wait_until(WAIT, POLL, || spis(&right).len() == 1), "right: {:?}\n{}", spis(&right), right.log());
}

#[test]
fn operators_delete_one_sa_by_spi_and_flush() {
    if !prerequisites_present() {
        return;
    }
    let mut pair = Pair::new();
    let (left, right) = up(&mut pair);
    let (spi_in, _) = spis(&left)[0];
    let out = left.ctl(&["delete", "ipsec-sa", "--spi", &format!("{spi_in:#x}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Deleted through IKE: both dataplanes drop the pair, the IKE SA stays.
    assert!(wait_until(WAIT, POLL, || inbound_spis(&left).is_empty() && inbound_spis(&right).is_empty()));
    assert_eq!(left.established().len(), 1);
    assert!(!ping_ok(&pair.left));
    let out = left.ctl(&["delete", "ipsec-sa", "--spi", "0x12345678"]);
    assert!(!out.status.success(), "an unknown SPI is an error");

    // A new CHILD SA (re-initiate the vpn's policy), then flush from the right side.
    let out = left.ctl(&["initiate", "t", "--wait", "10"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(WAIT, POLL, || ping_ok(&pair.left)));
    let flushed = json(&right, &["flush", "ipsec-sa"]);
    assert!(flushed["flushed"].as_u64() >= Some(1), "{flushed}");
    assert!(wait_until(WAIT, POLL, || inbound_spis(&left).is_empty() && inbound_spis(&right).is_empty()));
}

//! tandemd's control surface without a peer: reload (good and bad files), status, unknown objects.

use tandem_testbed::netns::Netns;
use tandem_testbed::tandemd::{left_config, Tandemd};
use tandem_testbed::{prerequisites_present, wait_until};

#[test]
fn reload_applies_good_files_and_refuses_bad_ones() {
    if !prerequisites_present() {
        return;
    }
    let mut ns = Netns::new(format!("tdm{}D", tandem_testbed::netns::unique_tag()));
    ns.ip(&["addr", "add", "10.99.1.1/32", "dev", "lo"]);
    let dir = Tandemd::dir_for(&ns);
    let sock = dir.join("tandemd.sock");
    let base = left_config(sock.to_str().unwrap(), "aes256gcm16-prfsha256-x25519", "aes256gcm16", "", "");
    let t = Tandemd::start(&mut ns, dir.clone(), &base);
    let status = |t: &Tandemd| -> serde_json::Value {
        serde_json::from_slice(&t.ctl(&["--json", "status"]).stdout).unwrap()
    };
    assert_eq!(status(&t)["vpns"], serde_json::json!(["t"]));

    // A second vpn appears on reload.
    let more = format!("{base}\n[vpn.u]\nike-policy = \"ike1\"\nipsec-policy = \"ipsec1\"\nlocal-id = \"u.test\"\n[[vpn.u.security-policy]]\nname = \"n\"\nlocal-ts = [\"10.0.0.0/8\"]\nremote-ts = [\"10.0.0.0/8\"]\n");
    std::fs::write(dir.join("tandem.toml"), &more).unwrap();
    let out = t.ctl(&["--json", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diff["added"], serde_json::json!(["u"]));
    assert!(wait_until(std::time::Duration::from_secs(5), std::time::Duration::from_millis(20), || status(
        &t
    )["vpns"]
        == serde_json::json!(["t", "u"])));

    // A broken file is refused with file:line and key; the running configuration stays.
    std::fs::write(
        dir.join("tandem.toml"),
        more.replace(
            "ike-policy = \"ike1\"\nipsec-policy = \"ipsec1\"\nlocal-id = \"u.test\"",
            "ike-policy = \"nope\"\nipsec-policy = \"ipsec1\"\nlocal-id = \"u.test\"",
        ),
    )
    .unwrap();
    let out = t.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tandem.toml:") && err.contains("vpn.u.ike-policy: no ike-policy named \"nope\""),
        "{err}"
    );
    assert_eq!(status(&t)["vpns"], serde_json::json!(["t", "u"]));

    // Unknown objects are clear errors.
    let out = t.ctl(&["terminate", "child-sa", "0x1234"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CHILD SA with SPI 0x00001234"));
    let out = t.ctl(&["initiate", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no vpn named \"nope\""));
}

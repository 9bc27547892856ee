//! Every example parses; every validation error names file, line and key.

use tandem_config::Config;

const GOOD: &str = r#"
[daemon]
socket = "/tmp/t.sock"
listen = ["10.0.0.1"]

[ike-policy.ike1]
proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048"]
rekey-time = "2h"
dpd-delay = "10s"
dpd-action = "restart"

[ipsec-policy.ipsec1]
proposals = ["aes128-sha1"]
esn = true
replay-window = 1024
rekey-time = "1h"

[vpn.vpn-secgw]
ike-policy = "ike1"
ipsec-policy = "ipsec1"
local-address = "10.175.0.1"
remote-address = "10.225.0.1"
local-id = "secgw.example"

[[vpn.vpn-secgw.security-policy]]
name = "site-to-secgw-site"
local-ts = ["10.100.0.64/26"]
remote-ts = ["10.250.0.192/26[tcp/80-443]"]

[pre-shared-key.secgw]
id = "10.225.0.1"
secret = "0sBzAyaM5PTcnTHi/yRA1lARpAoRetSzP8"
"#;

#[test]
fn seed_style_config_parses() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    let p = &c.peers[0];
    assert_eq!(p.name, "vpn-secgw");
    assert_eq!(p.remote_id, Some(tandem_ike::Identity::Ipv4("10.225.0.1".parse().unwrap())));
    assert_eq!(p.children[0].esp_proposals[0].esn, vec![tandem_crypto::Esn::Yes]);
    assert_eq!(p.children[0].remote_ts[0].start_port, 80);
    assert_eq!(c.psks[0].secret.len(), 24);
    assert!(!format!("{:?}", c.psks).contains("BzAy"), "secrets are not in Debug output");
}

fn err(text: &str) -> String {
    Config::parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn errors_name_file_line_and_key() {
    let e = err(&GOOD.replace("ike-policy = \"ike1\"", "ike-policy = \"ike9\""));
    assert!(e.starts_with("t.toml:19:1: vpn.vpn-secgw.ike-policy: no ike-policy named \"ike9\""), "{e}");
    let e = err(&GOOD.replace("aes128-sha256-modp2048", "aes128-sha256-modp9999"));
    assert!(
        e.starts_with("t.toml:7:1: ike-policy.ike1.proposals: unknown algorithm keyword \"modp9999\""),
        "{e}"
    );
    let e = err(&GOOD.replace("10.100.0.64/26", "10.100.0.640/26"));
    assert!(e.starts_with("t.toml:27:1: vpn.vpn-secgw.security-policy.local-ts:"), "{e}");
    let e = err(&GOOD.replace("0sBzAy", "0s!!!"));
    assert!(e.contains("pre-shared-key.secgw.secret: bad base64"), "{e}");
    let e = err(&GOOD.replace("replay-window", "replay-windw"));
    assert!(e.starts_with("t.toml:15:"), "{e}");
    assert!(e.contains("replay-windw"), "{e}");
    let e = err(&format!("{GOOD}\n[ha]\nnode-id = 16\n"));
    assert!(e.contains("ha.node-id: must be 1..=15"), "{e}");
}

#[test]
fn examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2);
}

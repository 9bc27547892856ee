//! `[dataplane]`, route-based vpns and `[manual-sa]`: defaults, conversion and located errors.

use tandem_config::Config;
use tandem_ike::config::IpsecMode;

const MANUAL: &str = r#"
[dataplane]
tun-name = "tnd0"
nat-keepalive = "0s"

[manual-sa.to-b]
local-address = "10.99.1.1"
remote-address = "10.99.1.2"
spi-in = 0x1000
spi-out = 0x2000
encryption = "aes256"
integrity = "sha256"
key-in = "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
key-out = "0x1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"
integrity-key-in = "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
integrity-key-out = "0xffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
local-ts = ["10.99.10.0/24"]
remote-ts = ["10.99.20.0/24"]
esn = true

[manual-sa.host]
local-address = "10.99.1.1"
remote-address = "10.99.1.3"
spi-in = 4096000
spi-out = 4096001
encryption = "aes128gcm16"
key-in = "0x000102030405060708090a0b0c0d0e0f10111213"
key-out = "0x000102030405060708090a0b0c0d0e0f10111214"
mode = "transport"
encap = true
"#;

fn err(text: &str) -> String {
    Config::parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn defaults_and_manual_sas() {
    let c = Config::parse("", "t.toml").unwrap();
    assert!(c.dataplane.enabled && c.dataplane.raw_esp && c.dataplane.install_routes);
    assert_eq!((c.dataplane.tun_name.as_str(), c.dataplane.route_table), ("tandem0", 220));

    let c = Config::parse(MANUAL, "t.toml").unwrap();
    assert_eq!(c.dataplane.tun_name, "tnd0");
    assert_eq!(c.dataplane.nat_keepalive, None);
    let m = &c.manual_sas[1];
    assert_eq!((m.name.as_str(), m.spi_in, m.spi_out), ("to-b", 0x1000, 0x2000));
    assert!(m.esn && !m.encap && m.integ.is_some());
    assert_eq!(m.keys_in.encr.len(), 32);
    let h = &c.manual_sas[0];
    assert_eq!(h.mode, IpsecMode::Transport);
    assert_eq!(h.local_ts[0].to_string(), "10.99.1.1/32", "transport mode defaults to the hosts");
    assert_eq!(h.remote_port, 4500);
    assert!(!format!("{:?}", c.manual_sas).contains("0a0b0c"), "keys are not in Debug output");
}

#[test]
fn manual_sa_errors_name_the_key() {
    let e = err(&MANUAL.replace("spi-in = 0x1000", "spi-in = 0xff"));
    assert!(e.contains("manual-sa.to-b.spi-in: an SPI is 256.."), "{e}");
    let e = err(&MANUAL.replace("integrity = \"sha256\"\n", ""));
    assert!(e.contains("manual-sa.to-b.encryption:") && e.contains("needs an integrity algorithm"), "{e}");
    let e = err(&MANUAL.replace("0x000102030405060708090a0b0c0d0e0f10111213\"", "0x0001\""));
    assert!(e.contains("manual-sa.host.key-in: 2 bytes given, the algorithm needs 20"), "{e}");
    let e = err(&MANUAL.replace("spi-in = 4096000", "spi-in = 0x1000"));
    assert!(e.contains("spi-in 0x1000 is used twice"), "{e}");
    let e = err(&MANUAL.replace("local-ts = [\"10.99.10.0/24\"]\n", ""));
    assert!(e.contains("manual-sa.to-b.local-ts: needed for a policy-based tunnel"), "{e}");
    let e = err(&MANUAL.replace("encryption = \"aes128gcm16\"", "encryption = \"aes128gcm16-x25519\""));
    assert!(e.contains("manual-sa.host.encryption:"), "{e}");
}

#[test]
fn dataplane_errors_name_the_key() {
    let e = err("[dataplane]\ntun-name = \"a-name-much-too-long\"\n");
    assert!(e.starts_with("t.toml:2:1: dataplane.tun-name:"), "{e}");
    let e = err("[dataplane]\nroute-table = 254\n");
    assert!(e.contains("dataplane.route-table"), "{e}");
    let e = err("[dataplane]\nnat-keepalive = \"soon\"\n");
    assert!(e.contains("dataplane.nat-keepalive"), "{e}");
    let e = err("[dataplane]\nworkers = \"many\"\n");
    assert!(e.contains("dataplane.workers: one of auto, combined, split"), "{e}");
}

#[test]
fn worker_layout() {
    use tandem_config::Workers;
    assert_eq!(Config::parse("", "t.toml").unwrap().dataplane.workers, Workers::Auto);
    let c = Config::parse("[dataplane]\nworkers = \"split\"\n", "t.toml").unwrap();
    assert_eq!(c.dataplane.workers, Workers::Split);
    let c = Config::parse("[dataplane]\nworkers = \"combined\"\n", "t.toml").unwrap();
    assert_eq!(c.dataplane.workers, Workers::Combined);
}

#[test]
fn route_based_vpn_defaults_to_any_selectors() {
    let text = r#"
[ike-policy.i]
proposals = ["aes256gcm16-prfsha256-x25519"]
[ipsec-policy.p]
proposals = ["aes256gcm16"]
[vpn.v]
ike-policy = "i"
ipsec-policy = "p"
local-address = "10.0.0.1"
remote-address = "10.0.0.2"
interface = "tnd-v"
[[vpn.v.security-policy]]
name = "all"
"#;
    let c = Config::parse(text, "t.toml").unwrap();
    assert_eq!(c.interfaces.get("v").map(String::as_str), Some("tnd-v"));
    let ts: Vec<String> = c.peers[0].children[0].local_ts.iter().map(|t| t.to_string()).collect();
    assert_eq!(ts, ["0.0.0.0/0", "::/0"]);
    let e = err(&text.replace("interface = \"tnd-v\"\n", ""));
    assert!(e.contains("local-ts: at least one selector is needed"), "{e}");
    let e = err(&format!("{text}\n[dataplane]\ntun-name = \"tnd-v\"\n"));
    assert!(e.contains("is also a vpn interface"), "{e}");
}

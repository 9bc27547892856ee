//! The cluster digest: the same configuration written differently digests the same; each kind of
//! change moves the digest that covers it and only that one; `[ha]` and host-local settings move
//! neither; the secrets digest never shows.

use tandem_config::{ClusterDigest, Config};

const BASE: &str = r#"
# node one
[daemon]
socket = "/run/tandem/a.sock"
listen = ["10.0.0.1", "10.0.0.2"]
log-level = "info"

[ike-policy.ike1]
proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048"]
rekey-time = "2h"

[ipsec-policy.ipsec1]
proposals = ["aes128gcm16"]
lifetime = "2h"
rekey-time = "1h"

[vpn.a]
ike-policy = "ike1"
ipsec-policy = "ipsec1"
local-address = "10.0.0.1"
remote-address = "10.9.0.1"

[[vpn.a.security-policy]]
name = "net"
local-ts = ["10.1.0.0/16"]
remote-ts = ["10.2.0.0/16"]

[vpn.b]
ike-policy = "ike1"
ipsec-policy = "ipsec1"
local-address = "10.0.0.1"
remote-address = "10.9.0.2"

[[vpn.b.security-policy]]
name = "net"
local-ts = ["10.1.0.0/16"]
remote-ts = ["10.3.0.0/16"]

[pre-shared-key.a]
id = "10.9.0.1"
secret = "first secret"

[pre-shared-key.b]
id = "10.9.0.2"
secret = "0x7365636f6e64"

[manual-sa.m]
local-address = "10.0.0.1"
remote-address = "10.9.0.3"
spi-in = 0x1000
spi-out = 0x2000
encryption = "aes128gcm16"
key-in = "0x000102030405060708090a0b0c0d0e0f10111213"
key-out = "0x000102030405060708090a0b0c0d0e0f10111214"
mode = "transport"

[ha]
node-id = 1
local-address = "10.150.0.1"
remote-address = "10.150.0.2"
key-file = "/etc/tandem/ha1.pem"
peer-pin = "3b1f0c9a7e5d4c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a1908f7e6d5c4b3a"
"#;

/// The same configuration as BASE: tables and keys in another order, other comments and spacing,
/// other notations for the same values (hex/decimal SPIs, seconds/units, hex/plain secret).
const REORDERED: &str = r#"
[ha]
peer-pin = "3b1f0c9a7e5d4c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a1908f7e6d5c4b3a"
remote-address = "10.150.0.2"
key-file = "/etc/tandem/ha1.pem"
local-address = "10.150.0.1"
node-id = 1

[pre-shared-key.b]
secret = "second"     # written as text this time
id = "10.9.0.2"

[pre-shared-key.a]
secret = "first secret"
id = "10.9.0.1"

[manual-sa.m]
mode = "transport"
key-out = "0x000102030405060708090A0B0C0D0E0F10111214"
key-in = "0x000102030405060708090a0b0c0d0e0f10111213"
encryption = "aes128gcm16"
spi-out = 8192
spi-in = 4096
remote-address = "10.9.0.3"
local-address = "10.0.0.1"

[vpn.b]
remote-address = "10.9.0.2"
local-address = "10.0.0.1"
ipsec-policy = "ipsec1"
ike-policy = "ike1"
[[vpn.b.security-policy]]
remote-ts = ["10.3.0.0/16"]
local-ts = ["10.1.0.0/16"]
name = "net"

[ipsec-policy.ipsec1]
rekey-time = 3600
lifetime = "1h60m"
proposals = ["aes128gcm16"]

[vpn.a]
ipsec-policy = "ipsec1"
ike-policy = "ike1"
remote-address = "10.9.0.1"
local-address = "10.0.0.1"
[[vpn.a.security-policy]]
name = "net"
remote-ts = ["10.2.0.0/16"]
local-ts = ["10.1.0.0/16"]

[ike-policy.ike1]
rekey-time = "7200"
proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048"]

[daemon]
listen = ["10.0.0.2", "10.0.0.1"]
"#;

fn digest(text: &str) -> ClusterDigest {
    Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}")).cluster_digest()
}

fn edited(from: &str, to: &str) -> ClusterDigest {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    digest(&BASE.replacen(from, to, 1))
}

/// Which of the two digests moved.
fn moved(a: &ClusterDigest, b: &ClusterDigest) -> (bool, bool) {
    (a.public() != b.public(), a.secrets() != b.secrets())
}

#[test]
fn same_configuration_written_differently_gives_the_same_digests() {
    let (a, b) = (digest(BASE), digest(REORDERED));
    assert_eq!(a.public_hex(), b.public_hex());
    assert!(a.secrets().matches(b.secrets().expose_for_sync_channel()));
    assert_eq!(a, b);
    assert_eq!(a, digest(BASE), "deterministic");
}

#[test]
fn proposal_and_lifetime_changes_move_the_public_digest_only() {
    let base = digest(BASE);
    for (from, to) in [
        ("proposals = [\"aes128gcm16\"]", "proposals = [\"aes256gcm16\"]"),
        (
            "\"aes256gcm16-prfsha256-x25519\", \"aes128-sha256-modp2048\"",
            "\"aes128-sha256-modp2048\", \"aes256gcm16-prfsha256-x25519\"",
        ),
        ("rekey-time = \"2h\"", "rekey-time = \"3h\""),
        ("lifetime = \"2h\"", "lifetime = \"3h\""),
        ("remote-ts = [\"10.3.0.0/16\"]", "remote-ts = [\"10.3.0.0/24\"]"),
        ("id = \"10.9.0.1\"", "id = \"10.9.0.9\""),
        ("spi-out = 0x2000", "spi-out = 0x2001"),
        ("listen = [\"10.0.0.1\", \"10.0.0.2\"]", "listen = [\"10.0.0.1\"]"),
        ("[daemon]\n", "[daemon]\nnatt-port = 4501\n"),
        ("[daemon]\n", "[dataplane]\ntun-mtu = 1300\n[daemon]\n"),
    ] {
        let (public, secrets) = moved(&base, &edited(from, to));
        assert!(public, "{from:?} -> {to:?} must move the public digest");
        // An identity moves both: the secrets digest binds each secret to its identities.
        assert_eq!(secrets, from.starts_with("id = "), "{from:?} -> {to:?}");
    }
}

#[test]
fn secret_changes_move_the_secrets_digest_only() {
    let base = digest(BASE);
    for (from, to) in [
        ("secret = \"first secret\"", "secret = \"first secreT\""),
        ("secret = \"0x7365636f6e64\"", "secret = \"0x7365636f6e65\""),
        (
            "key-in = \"0x000102030405060708090a0b0c0d0e0f10111213\"",
            "key-in = \"0x000102030405060708090a0b0c0d0e0f10111299\"",
        ),
    ] {
        assert_eq!(moved(&base, &edited(from, to)), (false, true), "{from:?} -> {to:?}");
    }
}

#[test]
fn ha_and_host_local_settings_move_neither_digest() {
    let base = digest(BASE);
    for (from, to) in [
        ("node-id = 1", "node-id = 2"),
        ("local-address = \"10.150.0.1\"", "local-address = \"10.150.0.3\""),
        (
            "key-file = \"/etc/tandem/ha1.pem\"",
            "key-file = \"/etc/tandem/ha2.pem\"\nport = 4600\ninitial-role = \"active\"",
        ),
        ("socket = \"/run/tandem/a.sock\"", "socket = \"/run/tandem/b.sock\""),
        ("log-level = \"info\"", "log-level = \"debug\""),
        (
            "[daemon]\n",
            "[dataplane]\nworkers = \"split\"\nsocket-buffer = 1048576\noffload = false\n[daemon]\n",
        ),
    ] {
        assert_eq!(moved(&base, &edited(from, to)), (false, false), "{from:?} -> {to:?}");
    }
    let without_ha = &BASE[..BASE.find("[ha]").unwrap()];
    assert_eq!(digest(without_ha), base, "a single node digests like a member of a pair");
}

#[test]
fn a_secret_read_from_a_file_digests_like_the_same_secret_inline() {
    let dir = std::env::temp_dir().join(format!("tandem-digest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("psk");
    std::fs::write(&file, "first secret\n").unwrap();
    let text = BASE.replacen(
        "secret = \"first secret\"",
        &format!("secret-file = {:?}", file.display().to_string()),
        1,
    );
    assert_eq!(digest(&text), digest(BASE));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_secrets_digest_never_shows() {
    let d = digest(BASE);
    let shown = format!("{d:?}");
    assert!(shown.contains(&d.public_hex()), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(!shown.contains(&hex::encode(d.secrets().expose_for_sync_channel())), "{shown}");
    assert_eq!(format!("{:?}", d.secrets()), "SecretsDigest(<redacted>)");
    assert!(!d.secrets().matches(d.public()), "the two digests differ");
    assert!(!d.secrets().matches(&d.secrets().expose_for_sync_channel()[..31]), "short input");
}

//! `[ha]`: the seed's keys with its defaults, tandem's own keys, and an error naming the key for
//! every way to get one wrong.

use std::time::Duration;
use tandem_config::{Config, HaRole, PeerPin, ReplayAdvance, DEFAULT_HA_PORT};

const PIN: &str = "3b1f0c9a7e5d4c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a1908f7e6d5c4b3a";

fn with_ha(extra: &str) -> String {
    format!(
        "[ha]\nnode-id = 1\nlocal-address = \"10.150.0.1\"\nremote-address = \"10.150.0.2\"\n\
         key-file = \"/etc/tandem/ha.pem\"\npeer-pin = \"{PIN}\"\n{extra}"
    )
}

fn err(text: &str) -> String {
    Config::parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn seed_defaults_and_tandem_defaults() {
    let c = Config::parse(&with_ha(""), "t.toml").unwrap();
    let h = c.ha.unwrap();
    assert_eq!(h.node_id, 1);
    assert_eq!(c.endpoint.node_id, 1, "the node id reaches the SPI allocator");
    assert_eq!(h.local_address, "10.150.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(h.sync_period_time, Some(Duration::from_secs(10)));
    assert_eq!(h.sync_period_packets, Some(2));
    assert_eq!(h.oseq_shift, 65536);
    assert_eq!(h.port, DEFAULT_HA_PORT);
    assert_eq!(h.port, 4510);
    assert_eq!(h.initial_role, HaRole::Standby);
    assert_eq!(h.ack_timeout, Duration::from_millis(50));
    assert_eq!(h.replay_advance, ReplayAdvance::Auto);
    assert_eq!(h.peer_pin, PeerPin::parse(PIN).unwrap());
    assert_eq!(h.interface, None);
    assert_eq!(h.listen_ha_group, None);
}

#[test]
fn seed_example_values_and_every_key_set() {
    let text = with_ha(
        "interface = \"eth3\"\nlisten-ha-group = \"ha-group1\"\nsync-period-time = \"1s\"\n\
         sync-period-packets = 64\noseq-shift = 131072\nport = 4600\ninitial-role = \"vrrp\"\n\
         ack-timeout = \"20ms\"\nreplay-advance = 4096\n",
    );
    let h = Config::parse(&text, "t.toml").unwrap().ha.unwrap();
    assert_eq!(h.interface.as_deref(), Some("eth3"));
    assert_eq!(h.listen_ha_group.as_deref(), Some("ha-group1"));
    assert_eq!(h.sync_period_time, Some(Duration::from_secs(1)));
    assert_eq!(h.sync_period_packets, Some(64));
    assert_eq!(h.oseq_shift, 131072);
    assert_eq!(h.port, 4600);
    assert_eq!(h.initial_role, HaRole::Vrrp);
    assert_eq!(h.ack_timeout, Duration::from_millis(20));
    assert_eq!(h.replay_advance, ReplayAdvance::Packets(4096));
}

#[test]
fn zero_disables_one_sync_trigger_but_not_both() {
    let h = Config::parse(&with_ha("sync-period-time = 0\n"), "t.toml").unwrap().ha.unwrap();
    assert_eq!((h.sync_period_time, h.sync_period_packets), (None, Some(2)));
    let h = Config::parse(&with_ha("sync-period-packets = 0\n"), "t.toml").unwrap().ha.unwrap();
    assert_eq!((h.sync_period_time, h.sync_period_packets), (Some(Duration::from_secs(10)), None));
    let e = err(&with_ha("sync-period-time = \"0s\"\nsync-period-packets = 0\n"));
    assert!(e.contains("ha.sync-period-packets: 0 while sync-period-time is 0 too"), "{e}");
}

#[test]
fn ipv6_sync_link_and_address_rules() {
    let v6 = with_ha("").replace("10.150.0.1", "fd00::1").replace("10.150.0.2", "fd00::2");
    assert!(Config::parse(&v6, "t.toml").unwrap().ha.unwrap().remote_address.is_ipv6());
    let e = err(&with_ha("").replace("10.150.0.2", "fd00::2"));
    assert!(e.contains("ha.remote-address: not of the same family as local-address"), "{e}");
    let e = err(&with_ha("").replace("10.150.0.2", "10.150.0.1"));
    assert!(e.contains("ha.remote-address: the same as local-address"), "{e}");
    let e = err(&with_ha("").replace("10.150.0.1", "0.0.0.0"));
    assert!(e.contains("ha.local-address: 0.0.0.0 is not a unicast address"), "{e}");
    let e = err(&with_ha("").replace("10.150.0.2", "ff02::1").replace("10.150.0.1", "fd00::1"));
    assert!(e.contains("ha.remote-address: ff02::1 is not a unicast address"), "{e}");
    let e = err(&with_ha("").replace("10.150.0.1", "ha1.example"));
    assert!(e.contains("ha.local-address: \"ha1.example\" is not an IP address"), "{e}");
    let e = err(&with_ha("").replace("remote-address = \"10.150.0.2\"\n", ""));
    assert!(e.contains("ha.remote-address: needed"), "{e}");
    let e = err(&with_ha("").replace("local-address = \"10.150.0.1\"\n", ""));
    assert!(e.contains("ha.local-address: needed"), "{e}");
}

#[test]
fn errors_name_the_key_and_its_line() {
    let cases: &[(&str, &str)] = &[
        ("interface = \"a-name-longer-than-15\"\n", "ha.interface: an interface name"),
        ("listen-ha-group = \"two words\"\n", "ha.listen-ha-group: one word"),
        ("initial-role = \"vrrp\"\n", "ha.listen-ha-group: needed with initial-role = \"vrrp\""),
        ("initial-role = \"master\"\n", "ha.initial-role: \"master\" is not standby, active or vrrp"),
        ("sync-period-time = \"10x\"\n", "ha.sync-period-time: \"10x\" is not a duration"),
        ("oseq-shift = 0\n", "ha.oseq-shift: must be between 2 and 2147483648"),
        ("oseq-shift = 4294967296\n", "ha.oseq-shift: must be between 2 and 2147483648"),
        ("oseq-shift = 3\n", "ha.sync-period-packets: 2 is more than half of oseq-shift (3)"),
        (
            "oseq-shift = 128\nsync-period-packets = 65\n",
            "ha.sync-period-packets: 65 is more than half of oseq-shift (128)",
        ),
        ("port = 0\n", "ha.port: must be 1..=65535"),
        ("port = 4500\n", "ha.port: 4500 is also an IKE port of [daemon]"),
        ("port = 500\n", "ha.port: 500 is also an IKE port"),
        ("ack-timeout = 0\n", "ha.ack-timeout: must be more than 0"),
        ("ack-timeout = \"4s\"\n", "ha.ack-timeout: must be shorter than daemon.retransmit-timeout"),
        ("replay-advance = \"lots\"\n", "ha.replay-advance: \"auto\" or a number of packets"),
        ("replay-advance = -1\n", "ha.replay-advance: must be between 0 and 2147483648"),
        ("replay-advance = 1.5\n", "ha.replay-advance: \"auto\" or a number of packets"),
    ];
    for (extra, want) in cases {
        let text = with_ha(extra);
        let e = err(&text);
        assert!(e.contains(want), "{extra:?}: {e}");
        // The line is that of the key when the key was written, else the [ha] header (line 1).
        let key = want.trim_start_matches("ha.").split(':').next().unwrap();
        let line = text.lines().position(|l| l.starts_with(&format!("{key} ="))).map_or(1, |i| i + 1);
        assert!(e.starts_with(&format!("t.toml:{line}:")), "{extra:?}: {e}");
    }
}

#[test]
fn key_file_and_peer_pin_are_required_and_checked() {
    let e = err(&with_ha("").replace("key-file = \"/etc/tandem/ha.pem\"\n", ""));
    assert!(e.contains("ha.key-file: needed"), "{e}");
    let e = err(&with_ha("").replace("/etc/tandem/ha.pem", ""));
    assert!(e.contains("ha.key-file: an empty path"), "{e}");
    let e = err(&with_ha("").replace(&format!("peer-pin = \"{PIN}\"\n"), ""));
    assert!(e.contains("ha.peer-pin: needed"), "{e}");
    let e = err(&with_ha("").replace(PIN, &PIN[..40]));
    assert!(e.contains("ha.peer-pin: 40 hex digits given, a SHA-256 fingerprint has 64"), "{e}");
    let colons =
        PIN.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap().to_uppercase()).collect::<Vec<_>>();
    let h = Config::parse(&with_ha("").replace(PIN, &colons.join(":")), "t.toml").unwrap().ha.unwrap();
    assert_eq!(h.peer_pin.to_string(), PIN);
}

#[test]
fn ack_timeout_follows_the_retransmit_timeout() {
    let text = format!("[daemon]\nretransmit-timeout = 10\n{}", with_ha("ack-timeout = \"5s\"\n"));
    assert_eq!(Config::parse(&text, "t.toml").unwrap().ha.unwrap().ack_timeout, Duration::from_secs(5));
}

#[test]
fn unknown_ha_keys_are_errors() {
    let e = err(&with_ha("seqnum-sinc = true\n"));
    assert!(e.contains("unknown field `seqnum-sinc`"), "{e}");
}

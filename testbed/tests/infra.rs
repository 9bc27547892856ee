//! Checks of the traffic-test infrastructure itself (no tandemd, no charon): the NAT topology, the
//! probes and the replay helper, so a failing traffic test points at the daemon, not the testbed.

use std::time::Duration;
use tandem_testbed::probe::{self, Capture, Ping};
use tandem_testbed::replay::{self, EspRecorder};
use tandem_testbed::tools_present;
use tandem_testbed::topo::Topo;

const TOOLS: [&str; 7] = ["tshark", "dumpcap", "iperf3", "nft", "python3", "ping", "ss"];

#[test]
fn nat_topology_masquerades_both_families() {
    if !tools_present(&TOOLS) {
        return;
    }
    let mut topo = Topo::nat();
    let right_if = topo.right_if.clone();
    let mut cap = Capture::start(&mut topo.right, &right_if, Some("icmp or icmp6"));
    for v6 in [false, true] {
        let r = Ping::new(topo.left_outer(v6), topo.right_outer(v6), 3).run(&topo.left);
        assert_eq!(r.received, 3, "through the NAT (v6: {v6}): {}", r.output);
    }
    // The right side has no route back to the private side.
    let r = Ping::new(topo.right_outer(false), topo.left_outer(false), 1).run(&topo.right);
    assert_eq!(r.received, 0, "{}", r.output);
    let frames = probe::frames(cap.stop(&mut topo.right));
    let addrs: Vec<&String> = frames.iter().flat_map(|f| &f.addrs).collect();
    assert!(addrs.iter().any(|a| *a == "10.99.1.254"), "{addrs:?}");
    assert!(addrs.iter().any(|a| *a == "fd00:99:1::fe"), "{addrs:?}");
    assert!(!addrs.iter().any(|a| a.starts_with("10.99.2.") || a.starts_with("fd00:99:2:")), "{addrs:?}");
}

#[test]
fn probes_measure_a_plain_link() {
    if !tools_present(&TOOLS) {
        return;
    }
    let mut topo = Topo::plain();
    let left_if = topo.left_if.clone();
    let mut cap = Capture::start(&mut topo.left, &left_if, None);
    let r = Ping::new("10.99.1.1", "10.99.1.2", 5).interval(Duration::from_millis(20)).run(&topo.left);
    assert_eq!((r.transmitted, r.received), (5, 5), "{}", r.output);
    // Every frame up to the stop is in the file (the last ones too).
    let frames = probe::frames(cap.stop(&mut topo.left));
    let icmp = frames.iter().filter(|f| f.layers().contains(&"icmp")).count();
    assert_eq!(icmp, 10, "{frames:?}");
    let s = probe::summarise(&frames, &["10.99.1."]);
    assert_eq!(s.other.len(), 10, "plain ICMP is unprotected: {s:?}");
    assert_eq!(s.leaking.len(), 10, "{s:?}");
    let ip =
        probe::iperf3(&mut topo.right, &topo.left, "fd00:99:1::1", "fd00:99:1::2", 5201, 1).expect("iperf3");
    assert!(ip.bytes_received > 1_000_000, "{ip:?}");
    let s = probe::parse_ping(
        "--- x ping statistics ---\n600 packets transmitted, 598 received, 0.3% packet loss",
    );
    assert_eq!((s.transmitted, s.received, s.lost()), (600, 598, 2));
}

/// Sends `n` UDP datagrams that look like ESP-in-UDP (non-zero SPI) to port 4500.
const SEND: &str = r#"
import socket, struct, sys
dst, n = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(struct.pack("!II", 0x1234, i + 1) + bytes(40), (dst, 4500))
"#;

/// Counts datagrams on port 4500 until 1 s of silence; prints the count.
const COUNT: &str = r#"
import socket, sys
bind = sys.argv[1]
fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((bind, 4500))
open(sys.argv[2], "w").close()
s.settimeout(3)
n = 0
try:
    while True:
        s.recv(2000)
        n += 1
        s.settimeout(1)
except socket.timeout:
    pass
print(n)
"#;

#[test]
fn replay_helper_recaptures_and_reinjects_v4_and_v6() {
    if !tools_present(&TOOLS) {
        return;
    }
    for (src_dst, bind) in [("10.99.1.1", "10.99.1.1"), ("fd00:99:1::1", "fd00:99:1::1")] {
        let mut topo = Topo::plain();
        let right_if = topo.right_if.clone();
        let ready = std::env::temp_dir().join(format!("tandem-infra-ready-{}", topo.left.name));
        let counter = topo
            .left
            .command("python3")
            .args(["-c", COUNT, bind])
            .arg(&ready)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("counter");
        assert!(
            tandem_testbed::wait_until(Duration::from_secs(5), Duration::from_millis(20), || ready.exists())
        );
        let rec = EspRecorder::start(&mut topo.right, &right_if, 5);
        let o = topo.right.exec("python3", &["-c", SEND, src_dst, "5"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let frames = rec.finish(&mut topo.right, Duration::from_secs(5));
        assert_eq!(
            frames.iter().map(|f| (f.spi, f.seq)).collect::<Vec<_>>(),
            (1..=5).map(|i| (0x1234, i)).collect::<Vec<_>>()
        );
        assert_eq!(replay::inject(&topo.right, &right_if, &frames), 5);
        let out = counter.wait_with_output().expect("counter output");
        let n: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        assert_eq!(n, 10, "{src_dst}: 5 originals + 5 re-injected copies arrive");
        let _ = std::fs::remove_file(&ready);
    }
}

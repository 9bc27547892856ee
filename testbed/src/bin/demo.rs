//! The demo behind `scripts/demo`: tandemd and a strongSwan peer in two network namespaces, a tunnel
//! negotiated and shown from both ends, ping and an iperf3 transfer through it (tandem's userspace
//! ESP on one end, strongSwan's kernel-libipsec on the other), a CHILD SA rekey under a ping stream,
//! then a clean teardown.
#![forbid(unsafe_code)]

use std::time::Duration;
use tandem_testbed::charon::{Charon, CharonConfig};
use tandem_testbed::netns::Pair;
use tandem_testbed::tandemd::{left_config, Tandemd};
use tandem_testbed::wait_until;

fn show(title: &str, out: std::process::Output) {
    println!("\n--- {title}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    let (ike, esp) = ("aes256gcm16-prfsha256-x25519", "aes256gcm16");
    println!("== creating namespaces: tandem (10.99.1.1, protects 10.99.10.0/24) <-> strongSwan (10.99.1.2, protects 10.99.20.0/24)");
    let mut pair = Pair::new();
    let dir = Tandemd::dir_for(&pair.left);
    let socket = dir.join("tandemd.sock");
    let toml = left_config(socket.to_str().expect("utf-8"), ike, esp, "", "");
    println!("== starting tandemd in {} and charon in {}", pair.left.name, pair.right.name);
    let t = Tandemd::start(&mut pair.left, dir, &toml);
    let c = Charon::start(&mut pair.right, &CharonConfig::right(ike, esp));

    println!("== tandemctl initiate t --wait 10   ({ike}, ESP {esp})");
    let started = std::time::Instant::now();
    let out = t.ctl(&["initiate", "t", "--wait", "10"]);
    if !out.status.success() {
        eprintln!("initiate failed: {}\n{}", String::from_utf8_lossy(&out.stderr), t.log());
        std::process::exit(1);
    }
    println!("   IKE SA + CHILD SA established in {:?}", started.elapsed());
    show("tandemctl show ike-sa", t.ctl(&["show", "ike-sa"]));
    show("tandemctl show child-sa", t.ctl(&["show", "child-sa"]));
    show("swanctl --list-sas (strongSwan's view)", c.swanctl(&["--list-sas"]));

    println!("\n== ping 10.99.10.1 -> 10.99.20.1 through the tunnel");
    show("ping -c 5", pair.left.exec("ping", &["-c", "5", "-i", "0.2", "-I", "10.99.10.1", "10.99.20.1"]));

    println!("\n== iperf3, 3 s of TCP from behind tandem to behind strongSwan");
    let mut server = pair.right.command("iperf3");
    server.args(["-s", "-1", "-B", "10.99.20.1"]).stdout(std::process::Stdio::null());
    let server_pid = pair.right.spawn(server);
    let listening = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        String::from_utf8_lossy(&pair.right.exec("ss", &["-ltn"]).stdout).contains("10.99.20.1:5201")
    });
    if listening {
        let out = pair.left.exec("iperf3", &["-c", "10.99.20.1", "-B", "10.99.10.1", "-t", "3", "-f", "m"]);
        let text = String::from_utf8_lossy(&out.stdout);
        println!("\n--- iperf3 (summary)");
        for line in text.lines().filter(|l| l.contains("sender") || l.contains("receiver")) {
            println!("{line}");
        }
    } else {
        println!("   iperf3 server did not start");
    }
    pair.right.stop(server_pid, Duration::from_secs(1));
    show("tandemctl show ipsec-sa", t.ctl(&["show", "ipsec-sa"]));

    let spi = t.child_sas()[0]["spi_in"].as_u64().unwrap_or(0);
    println!("\n== tandemctl rekey child-sa {spi:#010x}, under a ping stream (20 pings, 50 ms apart)");
    let mut ping = pair.left.command("ping");
    ping.args(["-c", "20", "-i", "0.05", "-I", "10.99.10.1", "10.99.20.1"]);
    let ping = ping.stdout(std::process::Stdio::piped()).spawn().expect("ping");
    let _ = t.ctl(&["rekey", "child-sa", &format!("{spi:#x}")]);
    let rekeyed = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let c = t.child_sas();
        c.len() == 1 && c[0]["spi_in"].as_u64() != Some(spi)
    });
    println!("   rekeyed: {rekeyed}");
    if let Ok(out) = ping.wait_with_output() {
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.contains("packets transmitted")) {
            println!("   ping during the rekey: {line}");
        }
    }
    show(
        "tandemctl show ipsec-sa (old inbound SA retired, kept briefly for packets in flight)",
        t.ctl(&["show", "ipsec-sa"]),
    );
    show("tandemctl show ipsec-stat", t.ctl(&["show", "ipsec-stat"]));
    println!("\n== tandemctl terminate ike-sa --vpn t");
    let _ = t.ctl(&["terminate", "ike-sa", "--vpn", "t"]);
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(50), || c.list_sas().is_empty());
    println!("   strongSwan removed its SAs: {gone}");
    println!("== cleaning up namespaces");
}

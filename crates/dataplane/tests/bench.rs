//! Throughput of tandem-to-tandem tunnels in namespaces, next to the raw veth (iperf3, TCP).
//! Not part of the normal run: `cargo test --release -p tandem-dataplane --test bench -- --ignored
//! --nocapture`. Needs root and iperf3.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tandem_dataplane::tandem_esp::sa::Mode;

fn iperf(ns: &NsPair, server: &str, client_src: &str, streams: u32, secs: u32) -> f64 {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &ns.b, "iperf3", "-s", "-1", "-B", server])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let (p, t) = (streams.to_string(), secs.to_string());
    let o = ns.exec(&ns.a, &["iperf3", "-c", server, "-B", client_src, "-P", &p, "-t", &t, "-J"]);
    let _ = srv.kill();
    let _ = srv.wait();
    let out = String::from_utf8_lossy(&o.stdout);
    // "sum_received": { ... "bits_per_second": N ... }
    let at = out.find("\"sum_received\"").expect("iperf3 JSON");
    let rest = &out[at..];
    let b = rest.find("\"bits_per_second\":").unwrap() + "\"bits_per_second\":".len();
    let num: String = rest[b..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse::<f64>().unwrap() / 1e9
}

#[test]
#[ignore]
fn throughput() {
    if !require_root_and(&["iperf3"]) {
        return;
    }
    let ns = NsPair::new("bench", 81);
    let raw1 = iperf(&ns, &ns.addr_b.to_string(), &ns.addr_a.to_string(), 1, 5);
    let udp = std::env::var("BENCH_RAW_ESP").is_err();
    let (ha, _ra) = start(&ns.a, config("tnd0", SocketAddr::new(ns.addr_a, 4500)));
    let (hb, _rb) = start(&ns.b, config("tnd0", SocketAddr::new(ns.addr_b, 4500)));
    ns.ip(&ns.a, "addr add 172.16.1.1/32 dev tnd0");
    ns.ip(&ns.a, "route add 172.16.2.0/24 dev tnd0 src 172.16.1.1");
    ns.ip(&ns.b, "addr add 172.16.2.1/32 dev tnd0");
    ns.ip(&ns.b, "route add 172.16.1.0/24 dev tnd0 src 172.16.2.1");
    ha.add_policy(protect(1, 1, "172.16.1.0/24", "172.16.2.0/24"));
    hb.add_policy(protect(1, 1, "172.16.2.0/24", "172.16.1.0/24"));
    let p = SaParams {
        encr: EncrAlg::AesGcm16_256,
        integ: None,
        esn: true,
        mode: Mode::Tunnel,
        udp_encap: udp,
        reqid: 1,
        spi_ab: 0x1000,
        spi_ba: 0x2000,
        ts_a: vec![subnet("172.16.1.0/24")],
        ts_b: vec![subnet("172.16.2.0/24")],
    };
    let port = if udp { 4500 } else { 0 };
    let (sa_a, sa_b) = sa_pair(&p, SocketAddr::new(ns.addr_a, port), SocketAddr::new(ns.addr_b, port));
    ha.install_sa(&sa_a).unwrap();
    hb.install_sa(&sa_b).unwrap();
    assert!(ping(&ns, &ns.a, "172.16.1.1", "172.16.2.1", 2));
    let t1 = iperf(&ns, "172.16.2.1", "172.16.1.1", 1, 5);
    let t4 = iperf(&ns, "172.16.2.1", "172.16.1.1", 4, 5);
    println!("raw veth 1 stream: {raw1:.2} Gbit/s");
    println!(
        "tandem ({}) 1 stream: {t1:.2} Gbit/s, 4 streams: {t4:.2} Gbit/s",
        if udp { "UDP 4500" } else { "raw ESP" }
    );
    println!("a: {:?}\nb: {:?}", ha.counters(), hb.counters());
    println!("b esp: {:?}", hb.esp_stats());
    println!("interfaces a: {:?}", ha.interfaces());
    for n in [&ns.a, &ns.b] {
        let o = ns.exec(n, &["ip", "-s", "link", "show", "tnd0"]);
        println!("{n}: {}", String::from_utf8_lossy(&o.stdout));
        let o = ns.exec(n, &["sh", "-c", "NSTAT_HISTORY=/tmp/tdp-nstat-$$ nstat -a | grep -iE 'drop|reorder|ofo|retrans|lost|Rcvbuf|Sndbuf|timeout|csum|err|prune|collapse'; tc -s qdisc show dev tnd0 | grep -i drop"]);
        println!("{}", String::from_utf8_lossy(&o.stdout));
    }
}

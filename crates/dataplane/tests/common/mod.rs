//! Network-namespace harness for the dataplane's integration tests: a pair of namespaces joined by
//! a veth, removed on drop (also when the test fails), and helpers to run a dataplane inside one.
#![allow(dead_code)]

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tandem_dataplane::tandem_esp::lifetime::LifetimeLimits;
use tandem_dataplane::tandem_esp::sa::{ChildSaSpec, KeyMaterial, Mode};
use tandem_dataplane::tandem_esp::spd::{Policy, PolicyAction};
use tandem_dataplane::{DataplaneConfig, DataplaneEvent, DataplaneHandle, EventReceiver, TunConfig};
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

pub use tandem_crypto::{EncrAlg, IntegAlg};

/// True when the test may run. Without root it is skipped visibly (`tandem_testbed::skip`), and
/// under CI=true it fails: a missing privilege must never pass silently.
pub fn require_root() -> bool {
    nix::unistd::geteuid().is_root()
        || tandem_testbed::skip("needs root (network namespaces, TUN, raw sockets)")
}

/// `require_root`, and every named tool on PATH.
pub fn require_root_and(tools: &[&str]) -> bool {
    if !require_root() {
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !tandem_testbed::which(t)).collect();
    missing.is_empty() || tandem_testbed::skip(&format!("tools missing: {missing:?}"))
}

pub fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
}

/// Two namespaces `a` and `b` joined by veth `va`/`vb` with 10.<net>.0.1/24 and 10.<net>.0.2/24
/// (IPv6 fd<net>::1/2 too).
pub struct NsPair {
    pub a: String,
    pub b: String,
    pub addr_a: IpAddr,
    pub addr_b: IpAddr,
    pub addr6_a: IpAddr,
    pub addr6_b: IpAddr,
}

impl NsPair {
    pub fn new(tag: &str, net: u8) -> NsPair {
        let id = std::process::id();
        let a = format!("tdp-{id}-{tag}-a");
        let b = format!("tdp-{id}-{tag}-b");
        let _ = run(&["ip", "netns", "del", &a]);
        let _ = run(&["ip", "netns", "del", &b]);
        must(&["ip", "netns", "add", &a]);
        let pair = NsPair {
            a: a.clone(),
            b: b.clone(),
            addr_a: format!("10.{net}.0.1").parse().unwrap(),
            addr_b: format!("10.{net}.0.2").parse().unwrap(),
            addr6_a: format!("fd{net:02x}::1").parse().unwrap(),
            addr6_b: format!("fd{net:02x}::2").parse().unwrap(),
        };
        must(&["ip", "netns", "add", &b]);
        must(&["ip", "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b]);
        for (ns, dev, v4, v6) in
            [(&a, "va", pair.addr_a, pair.addr6_a), (&b, "vb", pair.addr_b, pair.addr6_b)]
        {
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            must(&["ip", "-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            must(&["ip", "-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    pub fn ip(&self, ns: &str, args: &str) {
        let mut v = vec!["ip", "-n", ns];
        v.extend(args.split_whitespace());
        must(&v);
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        run(&v)
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.a]);
        let _ = run(&["ip", "netns", "del", &self.b]);
    }
}

/// Run `f` on a thread that entered namespace `ns` (threads it spawns stay there).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(format!("/var/run/netns/{ns}")).expect("netns file");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

pub fn config(tun: &str, natt: SocketAddr) -> DataplaneConfig {
    let mut c = DataplaneConfig::new(TunConfig::new(tun), vec![natt]);
    c.keepalive_interval = Some(Duration::from_secs(1));
    c
}

pub fn start(ns: &str, cfg: DataplaneConfig) -> (DataplaneHandle, EventReceiver) {
    in_netns(ns, || DataplaneHandle::start(cfg)).expect("dataplane start")
}

pub fn subnet(s: &str) -> TrafficSelector {
    let (a, p) = s.split_once('/').unwrap();
    TrafficSelector::from_subnet(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

pub fn protect(id: u32, reqid: u32, local: &str, remote: &str) -> Policy {
    Policy {
        id,
        priority: 100,
        local_ts: vec![subnet(local)],
        remote_ts: vec![subnet(remote)],
        action: PolicyAction::Protect { reqid },
    }
}

pub struct SaParams {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub esn: bool,
    pub mode: Mode,
    pub udp_encap: bool,
    pub reqid: u32,
    pub spi_ab: u32,
    pub spi_ba: u32,
    pub ts_a: Vec<TrafficSelector>,
    pub ts_b: Vec<TrafficSelector>,
}

fn keys(alg: EncrAlg, integ: Option<IntegAlg>, seed: u8) -> KeyMaterial {
    let ilen = integ.map_or(0, |i| i.key_len());
    KeyMaterial {
        encr: Zeroizing::new((0..alg.key_material_len()).map(|i| seed.wrapping_add(i as u8)).collect()),
        integ: Zeroizing::new((0..ilen).map(|i| seed.wrapping_mul(3).wrapping_add(i as u8)).collect()),
    }
}

/// The two mirrored specs of one CHILD SA between `a` and `b` (same keys on both sides).
pub fn sa_pair(p: &SaParams, a: SocketAddr, b: SocketAddr) -> (ChildSaSpec, ChildSaSpec) {
    let (k_ab, k_ba) = (keys(p.encr, p.integ, 0x11), keys(p.encr, p.integ, 0x77));
    let base = |local,
                remote,
                spi_in,
                spi_out,
                keys_in: &KeyMaterial,
                keys_out: &KeyMaterial,
                lts: &Vec<_>,
                rts: &Vec<_>| {
        ChildSaSpec {
            name: "test/child".into(),
            reqid: p.reqid,
            spi_in,
            spi_out,
            encr: p.encr,
            integ: p.integ,
            esn: p.esn,
            mode: p.mode,
            local,
            remote,
            udp_encap: p.udp_encap,
            replay_window: 1024,
            lifetime: LifetimeLimits::default(),
            local_ts: lts.clone(),
            remote_ts: rts.clone(),
            keys_in: keys_in.clone(),
            keys_out: keys_out.clone(),
            replaces_spi_in: None,
            defer_outbound: false,
            iv_key: None,
        }
    };
    (
        base(a, b, p.spi_ba, p.spi_ab, &k_ba, &k_ab, &p.ts_a, &p.ts_b),
        base(b, a, p.spi_ab, p.spi_ba, &k_ab, &k_ba, &p.ts_b, &p.ts_a),
    )
}

/// Wait up to `timeout` for an event matching `pred`.
pub fn wait_event(
    rx: &mut EventReceiver,
    timeout: Duration,
    pred: impl Fn(&DataplaneEvent) -> bool,
) -> Option<DataplaneEvent> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match rx.try_recv() {
            Ok(ev) if pred(&ev) => return Some(ev),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

pub fn ping(ns: &NsPair, from: &str, src: &str, dst: &str, count: u32) -> bool {
    let c = count.to_string();
    let o = ns.exec(from, &["ping", "-c", &c, "-i", "0.2", "-W", "2", "-I", src, dst]);
    if !o.status.success() {
        eprintln!("ping {src} -> {dst}: {}", String::from_utf8_lossy(&o.stdout));
    }
    o.status.success()
}

/// A packet capture running in a namespace (tshark), if tshark is installed.
pub struct Capture {
    child: std::process::Child,
    pub file: String,
}

impl Capture {
    pub fn start(ns: &str, dev: &str, tag: &str) -> Option<Capture> {
        if !tandem_testbed::which("tshark") {
            // The test goes on without its wire check: say so (and fail under CI=true).
            tandem_testbed::skip("tshark not installed: the wire check of this test did not run");
            return None;
        }
        let file = format!("/tmp/tdp-{}-{tag}.pcap", std::process::id());
        let _ = std::fs::remove_file(&file);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "tshark", "-q", "-i", dev, "-w", &file])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        // Wait until the capture runs (the file appears).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !std::path::Path::new(&file).exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Some(Capture { child, file })
    }

    /// Stop and return the protocol stacks of the captured frames ("eth:ethertype:ip:udp:esp"...).
    pub fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGINT,
        );
        let _ = self.child.wait();
        let o = run(&["tshark", "-r", &self.file, "-T", "fields", "-e", "frame.protocols"]);
        let _ = std::fs::remove_file(&self.file);
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The IKE handshake benchmark behind `scripts/bench-ike`: the same load (tandem-load, N IKE SAs with
//! a CHILD SA each, distinct identities) against a tandemd responder and then against a strongSwan
//! charon responder, in one run on one namespace pair. Reports handshakes per second, per CPU-second
//! of the responder, and responder memory per established IKE SA; writes docs/performance.md.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;
use tandem_testbed::charon::Charon;
use tandem_testbed::netns::{Netns, Pair};
use tandem_testbed::tandemd::{bin_dir, Tandemd};

struct Measured {
    name: &'static str,
    rate: f64,
    cpu_s: f64,
    per_cpu_s: f64,
    kib_per_sa: f64,
    p50: f64,
    p99: f64,
    established: u64,
    failed: u64,
}

/// utime + stime of a process and its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The process that really runs the responder: `ip netns exec` execs it, but charon sits under
/// `env`/`unshare`/`sh`, which all exec, so the spawned PID is the daemon itself.
fn load(gen: &Netns, count: usize, concurrency: usize, ike: &str, esp: &str) -> serde_json::Value {
    let out = gen
        .command(bin_dir().join("tandem-load").to_str().expect("utf-8"))
        .args(["--local", "10.99.1.1", "--target", "10.99.1.2", "--count", &count.to_string()])
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--proposal",
            ike,
            "--esp",
            esp,
            "--timeout",
            "300",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run tandem-load");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("tandem-load output: {}", String::from_utf8_lossy(&out.stdout)))
}

fn measure(
    name: &'static str,
    pid: u32,
    gen: &Netns,
    count: usize,
    conc: usize,
    ike: &str,
    esp: &str,
) -> Measured {
    let (cpu0, rss0) = (cpu_seconds(pid), rss_kib(pid));
    let r = load(gen, count, conc, ike, esp);
    let (cpu1, rss1) = (cpu_seconds(pid), rss_kib(pid));
    let established = r["established"].as_u64().unwrap_or(0);
    let elapsed = r["elapsed_s"].as_f64().unwrap_or(1.0);
    let cpu = cpu1 - cpu0;
    Measured {
        name,
        rate: established as f64 / elapsed,
        cpu_s: cpu,
        per_cpu_s: if cpu > 0.0 { established as f64 / cpu } else { 0.0 },
        kib_per_sa: if established > 0 { (rss1 - rss0) / established as f64 } else { 0.0 },
        p50: r["latency_ms_p50"].as_f64().unwrap_or(0.0),
        p99: r["latency_ms_p99"].as_f64().unwrap_or(0.0),
        established,
        failed: r["failed"].as_u64().unwrap_or(0),
    }
}

fn main() {
    let count: usize = std::env::var("BENCH_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let conc: usize = std::env::var("BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let (ike, esp) = ("aes256gcm16-prfsha256-x25519", "aes256gcm16");
    let mut pair = Pair::new();

    eprintln!("== tandemd responder: {count} IKE SAs, {conc} in flight");
    let dir = Tandemd::dir_for(&pair.right);
    let sock = dir.join("tandemd.sock");
    let toml = format!(
        r#"[daemon]
socket = "{}"
listen = ["10.99.1.2"]
cookie-threshold = 1000000
[ike-policy.i]
proposals = ["{ike}"]
[ipsec-policy.e]
proposals = ["{esp}"]
[vpn.load]
ike-policy = "i"
ipsec-policy = "e"
local-id = "responder.test"
[[vpn.load.security-policy]]
name = "c"
local-ts = ["0.0.0.0/0"]
remote-ts = ["0.0.0.0/0"]
[pre-shared-key.any]
secret = "load-test-secret"
"#,
        sock.display()
    );
    let t = Tandemd::start_logging(&mut pair.right, dir, &toml, "warn");
    let tandem = measure("tandemd", t.pid, &pair.left, count, conc, ike, esp);
    pair.right.stop(t.pid, Duration::from_secs(5));

    eprintln!("== strongSwan charon responder: {count} IKE SAs, {conc} in flight");
    let swanctl = format!(
        r#"connections {{
  load {{
    version = 2
    local_addrs = 10.99.1.2
    remote_addrs = %any
    proposals = {ike}
    local {{
      auth = psk
      id = responder.test
    }}
    remote {{
      auth = psk
      id = %any
    }}
    children {{
      c {{
        local_ts = 0.0.0.0/0
        remote_ts = 0.0.0.0/0
        esp_proposals = {esp}
      }}
    }}
  }}
}}
secrets {{
  ike-any {{
    secret = "load-test-secret"
  }}
}}
"#
    );
    let extra = "install_routes = no\n  block_threshold = 1000000\n  cookie_threshold = 1000000\n  init_limit_half_open = 0\n  ikesa_table_size = 4096";
    let c = Charon::start_with(&mut pair.right, &swanctl, extra, -1);
    let charon = measure("strongSwan charon 5.9.8", c.pid, &pair.left, count, conc, ike, esp);

    let rows = [&tandem, &charon];
    let mut table = String::from("| responder | established / failed | handshakes/s | responder CPU s | handshakes per CPU-second | latency p50 / p99 ms | RSS KiB per IKE SA |\n|---|---|---|---|---|---|---|\n");
    for m in rows {
        table.push_str(&format!(
            "| {} | {} / {} | {:.0} | {:.2} | {:.0} | {:.1} / {:.1} | {:.1} |\n",
            m.name, m.established, m.failed, m.rate, m.cpu_s, m.per_cpu_s, m.p50, m.p99, m.kib_per_sa
        ));
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let summary = format!(
        "tandemd / charon: {:.2}x handshakes per second, {:.2}x handshakes per responder CPU-second, {:.2}x memory per IKE SA.",
        ratio(tandem.rate, charon.rate),
        ratio(tandem.per_cpu_s, charon.per_cpu_s),
        ratio(tandem.kib_per_sa, charon.kib_per_sa)
    );
    println!("{table}\n{summary}");
    if let Ok(path) = std::env::var("BENCH_WRITE") {
        let host = Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let section = format!(
            "## IKE handshakes (IKE_SA_INIT + IKE_AUTH with a CHILD SA, PSK, {ike}, ESP {esp})\n\nCommand: `scripts/bench-ike` (BENCH_COUNT={count}, BENCH_CONCURRENCY={conc}). The load generator is\n`tandem-load` (tandem's engine as initiator, one identity per IKE SA), in its own namespace; the\nresponder runs in another, on the same {cpus} vCPUs (kernel {host}). CPU is the responder's\nutime+stime during the run; memory is the growth of its RSS divided by the IKE SAs it holds. tandemd\nruns its engine on one thread; charon uses its default thread pool. The generator shares the cores with\nthe responder: when a responder's CPU seconds are well below the run's length, the generator is the\nlimit, and handshakes per responder CPU-second is the fairer comparison. Expect 5-10% noise between runs.\n\n{table}\n{summary}\n"
        );
        // Only this benchmark's section: the dataplane section (scripts/bench) is kept.
        tandem_testbed::bench::doc::write_section(&path, "ike", &section).expect("write performance doc");
        eprintln!("wrote {path}");
    }
}

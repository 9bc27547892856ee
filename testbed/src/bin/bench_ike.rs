//! The IKE handshake benchmark behind `scripts/bench-ike`: the same load (tandem-load, N IKE SAs with
//! a CHILD SA each, distinct identities) against a tandemd responder and then against a strongSwan
//! charon responder, in one run on one namespace pair. Reports handshakes per second, per CPU-second
//! of the responder, and responder memory per established IKE SA; writes docs/performance.md.
#![forbid(unsafe_code)]

use std::time::Duration;
use tandem_testbed::bench::cpu_seconds;
use tandem_testbed::bench::ike::{host, load_command, rss_kib, start_charon, start_tandemd, ESP, IKE};
use tandem_testbed::netns::{Netns, Pair};

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

fn load(gen: &Netns, count: usize, concurrency: usize) -> serde_json::Value {
    let out = load_command(gen, count, concurrency, 300)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run tandem-load");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("tandem-load output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The responder's PID is the daemon itself: `ip netns exec` execs it, and charon's
/// `env`/`unshare`/`sh` chain execs too.
fn measure(name: &'static str, pid: u32, gen: &Netns, count: usize, conc: usize) -> Measured {
    let (cpu0, rss0) = (cpu_seconds(pid), rss_kib(pid));
    let r = load(gen, count, conc);
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
    let (ike, esp) = (IKE, ESP);
    let mut pair = Pair::new();

    eprintln!("== tandemd responder: {count} IKE SAs, {conc} in flight");
    let t = start_tandemd(&mut pair.right);
    let tandem = measure("tandemd", t.pid, &pair.left, count, conc);
    pair.right.stop(t.pid, Duration::from_secs(5));

    eprintln!("== strongSwan charon responder: {count} IKE SAs, {conc} in flight");
    let c = start_charon(&mut pair.right);
    let charon = measure("strongSwan charon 5.9.8", c.pid, &pair.left, count, conc);

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
        let (host, cpus) = host();
        let section = format!(
            "## IKE handshakes (IKE_SA_INIT + IKE_AUTH with a CHILD SA, PSK, {ike}, ESP {esp})\n\nCommand: `scripts/bench-ike` (BENCH_COUNT={count}, BENCH_CONCURRENCY={conc}). The load generator is\n`tandem-load` (tandem's engine as initiator, one identity per IKE SA), in its own namespace; the\nresponder runs in another, on the same {cpus} vCPUs (kernel {host}). CPU is the responder's\nutime+stime during the run; memory is the growth of its RSS divided by the IKE SAs it holds. tandemd\nruns its engine on one thread; charon uses its default thread pool. The generator shares the cores with\nthe responder: when a responder's CPU seconds are well below the run's length, the generator is the\nlimit, and handshakes per responder CPU-second is the fairer comparison. Expect 5-10% noise between runs.\n\n{table}\n{summary}\n"
        );
        // Only this benchmark's section: the dataplane section (scripts/bench) is kept.
        tandem_testbed::bench::doc::write_section(&path, "ike", &section).expect("write performance doc");
        eprintln!("wrote {path}");
    }
}

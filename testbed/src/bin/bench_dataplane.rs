//! The dataplane benchmark behind `scripts/bench`: raw veth, tandemd to tandemd (ESP-in-UDP and raw
//! ESP), strongSwan kernel-libipsec and boringtun (default and `--threads 1`), one after another in
//! one run, each on a fresh namespace pair of the same shape. Measures TCP throughput (1 and 4
//! streams), UDP packet rates (64-byte and 1400-byte packets), ping latency idle and under a TCP
//! stream, the daemons' CPU time and UDP receive-buffer drops per run; writes the dataplane section
//! of docs/performance.md.
//!
//! Options: `--runs N` (3), `--seconds S` (5), `--only veth,tandem,strongswan,boringtun` (all; the
//! finer keys tandem-udp, tandem-raw, boringtun-t1 work too), `--no-write`, `--quiet-wait SECS`
//! (30: how long to wait, before each path, for the rest of the machine to go quiet).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use tandem_testbed::bench::iperf::{self, Load};
use tandem_testbed::bench::paths::{self, Kind, Tunnel, LEFT_INNER, RIGHT_INNER};
use tandem_testbed::bench::{self as b, check_interrupt, cpu_seconds, loadavg, median, udp_counter};
use tandem_testbed::netns::Pair;

struct Opts {
    runs: u32,
    seconds: u32,
    only: Vec<Kind>,
    write: bool,
    quiet_wait: u32,
}

fn usage() -> ! {
    eprintln!("usage: bench_dataplane [--runs N] [--seconds S] [--only veth,tandem,strongswan,boringtun] [--no-write] [--quiet-wait SECS]");
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts { runs: 3, seconds: 5, only: Kind::ALL.to_vec(), write: true, quiet_wait: 30 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |lo: u32, hi: u32| -> u32 {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| (lo..=hi).contains(n))
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--runs" => o.runs = num(1, 50),
            "--seconds" => o.seconds = num(2, 120),
            "--quiet-wait" => o.quiet_wait = num(0, 600),
            "--no-write" => o.write = false,
            "--only" => {
                let list = args.next().unwrap_or_else(|| usage());
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                for n in &names {
                    if !Kind::ALL.iter().any(|k| k.group() == *n || k.key() == *n) {
                        eprintln!("unknown path {n:?}");
                        usage();
                    }
                }
                o.only = Kind::ALL
                    .iter()
                    .copied()
                    .filter(|k| names.contains(&k.group()) || names.contains(&k.key()))
                    .collect();
            }
            _ => usage(),
        }
    }
    o
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Test {
    Tcp1,
    Tcp4,
    Udp64,
    Udp1400,
    PingLoad,
}

impl Test {
    const ALL: [Test; 5] = [Test::Tcp1, Test::Tcp4, Test::Udp64, Test::Udp1400, Test::PingLoad];

    fn name(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP, 1 stream (Gbit/s)",
            Test::Tcp4 => "TCP, 4 streams (Gbit/s)",
            Test::Udp64 => "UDP 64 B payload (kpps received)",
            Test::Udp1400 => "UDP 1400 B packets (kpps received)",
            Test::PingLoad => "ping under 1 TCP stream (avg ms)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Test::Tcp1 => "tcp-1",
            Test::Tcp4 => "tcp-4",
            Test::Udp64 => "udp-64",
            Test::Udp1400 => "udp-1400",
            Test::PingLoad => "ping-load",
        }
    }
}

/// One run of one test.
#[derive(Clone, Debug)]
struct Run {
    /// The figure: Gbit/s, kpps received, or ms.
    value: f64,
    /// The second figure: UDP loss %, ping p99 ms, TCP retransmits.
    second: f64,
    /// CPU seconds of each daemon (left, right) during the run.
    cpu: Vec<f64>,
    /// UdpRcvbufErrors during the run in (left, right).
    rcvbuf: [u64; 2],
    load1: f64,
}

#[derive(Default)]
struct PathResult {
    tests: BTreeMap<Test, (Vec<Run>, Vec<String>)>,
    ping_idle: Option<iperf::PingResult>,
    facts: Vec<String>,
    load_before: [f64; 3],
    load_after: [f64; 3],
    busy_before: f64,
}

fn fmt_load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// Wait (bounded) until the rest of the machine uses under 30% of the CPUs; returns the last share.
fn wait_quiet(max_secs: u32) -> f64 {
    let mut busy = b::cpu_busy(Duration::from_secs(1));
    let mut waited = 0;
    while busy > 0.3 && waited < max_secs {
        check_interrupt();
        if waited % 10 == 0 {
            eprintln!(
                "   machine busy ({:.0}% CPU by others), waiting up to {}s more",
                busy * 100.0,
                max_secs - waited
            );
        }
        busy = b::cpu_busy(Duration::from_secs(1));
        waited += 1;
    }
    busy
}

fn one_run(pair: &Pair, tun: &Tunnel, test: Test, secs: u32) -> Result<Run, String> {
    check_interrupt();
    let load1 = loadavg()[0];
    let cpu0: Vec<f64> = tun.daemons.iter().map(|&p| cpu_seconds(p)).collect();
    let rb0 = [udp_counter(&pair.left, "RcvbufErrors"), udp_counter(&pair.right, "RcvbufErrors")];
    let (value, second) = match test {
        Test::Tcp1 | Test::Tcp4 => {
            let streams = if test == Test::Tcp1 { 1 } else { 4 };
            let r = iperf::run_client(&pair.left, Load::Tcp { streams }, LEFT_INNER, RIGHT_INNER, secs)?;
            (r.bps / 1e9, r.retransmits)
        }
        Test::Udp64 | Test::Udp1400 => {
            // 1400-byte IP packets: 1372 bytes of UDP payload, the largest that every tunnel here
            // (inner MTU 1400 or more) carries without fragmenting.
            let len = if test == Test::Udp64 { 64 } else { 1372 };
            let r = iperf::run_client(&pair.left, Load::Udp { len }, LEFT_INNER, RIGHT_INNER, secs)?;
            (r.recv_pps / 1e3, r.loss_pct)
        }
        Test::PingLoad => {
            let left = &pair.left;
            let count = (secs.saturating_sub(2)).max(1) * 50;
            std::thread::scope(|s| {
                let stream = s.spawn(move || {
                    iperf::run_client(left, Load::Tcp { streams: 1 }, LEFT_INNER, RIGHT_INNER, secs)
                });
                std::thread::sleep(Duration::from_millis(1000));
                let p = iperf::ping(left, LEFT_INNER, RIGHT_INNER, count, 20);
                let st = stream.join().map_err(|_| "iperf3 thread panicked".to_string())?;
                let p = p?;
                st.map_err(|e| format!("load stream: {e}"))?;
                let lost = p.sent - p.received;
                if lost > 0 {
                    eprintln!("   {lost} of {} pings lost", p.sent);
                }
                Ok::<_, String>((p.avg_ms, p.p99_ms))
            })?
        }
    };
    let cpu: Vec<f64> = tun.daemons.iter().zip(&cpu0).map(|(&p, c0)| cpu_seconds(p) - c0).collect();
    let rcvbuf = [
        udp_counter(&pair.left, "RcvbufErrors").saturating_sub(rb0[0]),
        udp_counter(&pair.right, "RcvbufErrors").saturating_sub(rb0[1]),
    ];
    for &pid in &tun.daemons {
        if !b::alive(pid) {
            return Err(format!("daemon {pid} died during the run"));
        }
    }
    Ok(Run { value, second, cpu, rcvbuf, load1 })
}

fn measure_path(kind: Kind, o: &Opts) -> Result<PathResult, String> {
    let mut res =
        PathResult { busy_before: wait_quiet(o.quiet_wait), load_before: loadavg(), ..Default::default() };
    eprintln!("== {}: setting up (load {})", kind.label(), fmt_load(res.load_before));
    let mut dirs = DirGuard(Vec::new());
    let mut pair = Pair::new();
    let tun = paths::setup(kind, &mut pair, &mut dirs.0)?;
    res.facts.extend(tun.facts.iter().cloned());
    let srv_log = std::env::temp_dir().join(format!("tandem-bench-iperf-{}.log", pair.right.name));
    dirs.0.push(srv_log.clone());
    let mut srv = pair.right.command("iperf3");
    srv.args(["-s", "-B", RIGHT_INNER])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&srv_log).map_err(|e| e.to_string())?);
    pair.right.spawn(srv);
    std::thread::sleep(Duration::from_millis(300));
    res.ping_idle = iperf::ping(&pair.left, LEFT_INNER, RIGHT_INNER, 20, 50).ok();
    if let Some(p) = &res.ping_idle {
        eprintln!("   ping idle: avg {:.3} ms, p99 {:.3} ms", p.avg_ms, p.p99_ms);
    }
    for test in Test::ALL {
        let mut runs = Vec::new();
        let mut errors = Vec::new();
        for i in 1..=o.runs {
            match one_run(&pair, &tun, test, o.seconds) {
                Ok(r) => {
                    eprintln!(
                        "   {} run {i}/{}: {:.3} ({:.2}), daemons' CPU {:?} s, RcvbufErrors {:?}, load {:.2}",
                        test.short(),
                        o.runs,
                        r.value,
                        r.second,
                        r.cpu.iter().map(|c| (c * 100.0).round() / 100.0).collect::<Vec<_>>(),
                        r.rcvbuf,
                        r.load1
                    );
                    runs.push(r);
                }
                Err(e) => {
                    eprintln!("   {} run {i}/{} failed: {e}", test.short(), o.runs);
                    errors.push(e);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        res.tests.insert(test, (runs, errors));
    }
    for t in &tun.tandemds {
        res.facts.push(format!("tandem SA counters after the run: {}", paths::tandem_counters(t)));
    }
    drop(tun);
    drop(pair);
    res.load_after = loadavg();
    Ok(res)
}

/// Temporary files and directories of one path, removed when it ends (after its namespaces).
struct DirGuard(Vec<std::path::PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d).or_else(|_| std::fs::remove_file(d));
        }
    }
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

fn cell(res: &Result<PathResult, String>, test: Test) -> String {
    let Ok(r) = res else { return "not measured".into() };
    let Some((runs, errs)) = r.tests.get(&test) else { return "-".into() };
    if runs.is_empty() {
        return format!(
            "failed ({})",
            errs.first().map_or("", |e| e.as_str()).chars().take(60).collect::<String>()
        );
    }
    let v = med(runs, |r| r.value);
    let s = med(runs, |r| r.second);
    match test {
        Test::Tcp1 | Test::Tcp4 => format!("{v:.2}"),
        Test::Udp64 | Test::Udp1400 => format!("{v:.0} ({s:.1}%)"),
        Test::PingLoad => format!("{v:.2} / {s:.2}"),
    }
}

fn value(res: &Result<PathResult, String>, test: Test) -> Option<f64> {
    let r = res.as_ref().ok()?;
    let (runs, _) = r.tests.get(&test)?;
    if runs.is_empty() {
        None
    } else {
        Some(med(runs, |r| r.value))
    }
}

fn render(
    results: &[(Kind, Result<PathResult, String>)],
    o: &Opts,
    load0: [f64; 3],
    load1: [f64; 3],
    date: &str,
) -> String {
    let mut d = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = tandem_testbed::netns::run("uname", &["-r"]);
    let kernel = String::from_utf8_lossy(&kernel.stdout).trim().to_string();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let cmd = std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "scripts/bench".into());
    let commit = tandem_testbed::netns::run("git", &["rev-parse", "--short", "HEAD"]);
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    let _ = writeln!(
        d,
        "## ESP dataplane (AES-256-GCM; tandem against raw veth, strongSwan kernel-libipsec and boringtun)\n"
    );
    let _ = writeln!(
        d,
        "Command: `{cmd}` ({} runs of {} s per figure, the median shown), at commit {commit}. Measured {date} on {cpus} vCPUs ({model}), kernel {kernel}; load average (1/5/15 min) {} before and {} after the run.\n",
        o.runs,
        o.seconds,
        fmt_load(load0),
        fmt_load(load1)
    );
    let _ = writeln!(d, "Topology, the same for every path: two gateway namespaces joined by one veth (10.99.1.1, 10.99.1.2); the inner hosts are /32 addresses on `lo` of each gateway (10.99.10.1 and 10.99.20.1), and iperf3 and ping run in the gateway namespaces between those addresses, so traffic enters and leaves each tunnel exactly once. Each path gets a fresh namespace pair. iperf3 client, server and both tunnel daemons share the same {cpus} vCPUs (and the machine is shared with other work: see the load column), so a daemon that needs less CPU leaves more to the endpoints. Inner MTU: tandem `tun-mtu = 1400`, strongSwan ipsec0 1400, WireGuard 1420. UDP tests send as fast as iperf3 can (`-b 0`, `-w 4M` so iperf3's own sockets do not drop); \"64 B\" is the UDP payload (92-byte IP packets), \"1400 B\" the IP packet (1372-byte payload, the largest every tunnel carries unfragmented). Received packets/s are the sender's datagrams minus the receiver's losses, over the send time. Ping under load: one ping every 20 ms during a single TCP stream, average / p99 of the replies. The raw veth UDP rates are iperf3's own ceiling here (one sending and one receiving thread), not the veth's; the tunnels' UDP losses are mostly the receiving daemon's socket (RcvbufErrors, below).\n");

    let _ = writeln!(d, "| path | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP 64 B kpps received (loss) | UDP 1400 B kpps received (loss) | ping idle avg ms | ping under load avg / p99 ms | daemons' CPU on TCP 1 stream (cores, left + right) | load avg 1 min during |");
    let _ = writeln!(d, "|---|---|---|---|---|---|---|---|---|");
    for (k, r) in results {
        let (idle, cores, load) = match r {
            Ok(p) => {
                let idle = p.ping_idle.as_ref().map_or("-".into(), |x| format!("{:.3}", x.avg_ms));
                let cores = p
                    .tests
                    .get(&Test::Tcp1)
                    .filter(|(runs, _)| !runs.is_empty() && !runs[0].cpu.is_empty())
                    .map_or("-".into(), |(runs, _)| {
                        format!("{:.2}", med(runs, |r| r.cpu.iter().sum::<f64>()) / f64::from(o.seconds))
                    });
                let loads: Vec<f64> =
                    p.tests.values().flat_map(|(runs, _)| runs.iter().map(|r| r.load1)).collect();
                let lo = loads.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = loads.iter().copied().fold(0.0, f64::max);
                (idle, cores, if loads.is_empty() { "-".into() } else { format!("{lo:.2}-{hi:.2}") })
            }
            Err(e) => (
                format!("not measured: {}", e.chars().take(300).collect::<String>()),
                String::new(),
                String::new(),
            ),
        };
        if let Err(e) = r {
            let e = e.replace('|', "/").replace('\n', " ");
            let _ = writeln!(
                d,
                "| {} | not measured: {} | | | | | | | |",
                k.label(),
                e.chars().take(300).collect::<String>()
            );
            continue;
        }
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} | {} | {idle} | {} | {cores} | {load} |",
            k.label(),
            cell(r, Test::Tcp1),
            cell(r, Test::Tcp4),
            cell(r, Test::Udp64),
            cell(r, Test::Udp1400),
            cell(r, Test::PingLoad)
        );
    }

    // Ratios and targets.
    let get = |k: Kind, t: Test| results.iter().find(|(x, _)| *x == k).and_then(|(_, r)| value(r, t));
    let bt_best = |t: Test| match (get(Kind::BoringtunDefault, t), get(Kind::BoringtunT1, t)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    let _ = writeln!(
        d,
        "\nRatios (medians; higher is better for tandem; boringtun = the better of its two settings):\n"
    );
    let _ = writeln!(d, "| tandem path | figure | / raw veth | / strongSwan | / boringtun |");
    let _ = writeln!(d, "|---|---|---|---|---|");
    for k in [Kind::TandemUdp, Kind::TandemRaw] {
        if !o.only.contains(&k) {
            continue;
        }
        for t in [Test::Tcp1, Test::Tcp4, Test::Udp64, Test::Udp1400] {
            let me = get(k, t);
            let _ = writeln!(
                d,
                "| {} | {} | {} | {} | {} |",
                k.key(),
                t.name(),
                ratio(me, get(Kind::Veth, t)),
                ratio(me, get(Kind::Strongswan, t)),
                ratio(me, bt_best(t))
            );
        }
    }
    let _ = writeln!(d, "\nTargets (single-stream TCP):\n");
    let _ = writeln!(d, "| target | tandem-udp | tandem-raw |");
    let _ = writeln!(d, "|---|---|---|");
    let verdict = |k: Kind, base: Option<f64>, factor: f64| match (get(k, Test::Tcp1), base) {
        _ if !o.only.contains(&k) => "not run".to_string(),
        (None, _) => "not measured".to_string(),
        (_, None) => "no baseline measured".to_string(),
        (Some(me), Some(b)) => {
            format!(
                "{} ({:.2} vs {:.2} Gbit/s needed)",
                if me >= b * factor { "met" } else { "NOT met" },
                me,
                b * factor
            )
        }
    };
    let targets = [
        (">= 10x strongSwan libipsec", get(Kind::Strongswan, Test::Tcp1), 10.0),
        (">= boringtun (its better setting)", bt_best(Test::Tcp1), 1.0),
        (">= 40% of raw veth", get(Kind::Veth, Test::Tcp1), 0.4),
    ];
    for (name, base, f) in targets {
        let _ = writeln!(
            d,
            "| {name} | {} | {} |",
            verdict(Kind::TandemUdp, base, f),
            verdict(Kind::TandemRaw, base, f)
        );
    }

    let _ = writeln!(d, "\nEvery run's figures: median / min / max over the runs; the daemons' CPU seconds per run (utime+stime from /proc/PID/stat, left / right); UDP receive-buffer drops per run (`Udp RcvbufErrors` from /proc/net/snmp inside each namespace, left / right); the second figure is the UDP loss %, the ping p99 ms, or the TCP retransmits.\n");
    let _ = writeln!(d, "| path | test | median | min / max | second figure (median) | daemons' CPU s per run | RcvbufErrors per run | load 1 min | failed runs |");
    let _ = writeln!(d, "|---|---|---|---|---|---|---|---|---|");
    for (k, r) in results {
        let Ok(p) = r else { continue };
        for (t, (runs, errs)) in &p.tests {
            let vals: Vec<f64> = runs.iter().map(|r| r.value).collect();
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let cpu = if runs.first().is_some_and(|r| !r.cpu.is_empty()) {
                let n = runs[0].cpu.len();
                (0..n).map(|i| format!("{:.2}", med(runs, |r| r.cpu[i]))).collect::<Vec<_>>().join(" / ")
            } else {
                "-".into()
            };
            let rb = format!(
                "{:.0} / {:.0}",
                med(runs, |r| r.rcvbuf[0] as f64),
                med(runs, |r| r.rcvbuf[1] as f64)
            );
            let loads: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.load1)).collect();
            let fails = if errs.is_empty() {
                "0".to_string()
            } else {
                format!("{}: {}", errs.len(), errs[0].replace('|', "/").chars().take(120).collect::<String>())
            };
            let _ = writeln!(
                d,
                "| {} | {} | {:.3} | {:.3} / {:.3} | {:.2} | {cpu} | {rb} | {} | {fails} |",
                k.key(),
                t.short(),
                median(&vals),
                lo,
                hi,
                med(runs, |r| r.second),
                loads.join(" "),
            );
        }
    }
    let _ = writeln!(d, "\nWhat each path's setup checked, and the machine before it (share of CPU busy with other work over 1 s, load average):\n");
    for (k, r) in results {
        match r {
            Ok(p) => {
                let _ = writeln!(
                    d,
                    "- {}: other work {:.0}% CPU, load {} before, {} after. {}",
                    k.key(),
                    p.busy_before * 100.0,
                    fmt_load(p.load_before),
                    fmt_load(p.load_after),
                    p.facts.join(". ").replace('\n', " ")
                );
            }
            Err(e) => {
                let _ = writeln!(d, "- {}: not measured: {}", k.key(), e.replace('\n', " "));
            }
        }
    }
    let _ = writeln!(d, "\nThe machine is 2 vCPUs shared with other engineers' builds and tests; figures taken while the load average was high are lower than the machine can do, and all paths in one run share the same conditions only roughly. Compare within one run, and rerun when the load column is high.");
    d
}

fn main() {
    let o = parse_opts();
    b::install_signal_handlers();
    let date =
        String::from_utf8_lossy(&tandem_testbed::netns::run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).stdout)
            .trim()
            .to_string();
    let load0 = loadavg();
    eprintln!(
        "== dataplane benchmark: {} runs x {} s, paths {:?}, load {}",
        o.runs,
        o.seconds,
        o.only.iter().map(|k| k.key()).collect::<Vec<_>>(),
        fmt_load(load0)
    );
    let mut results = Vec::new();
    for &k in &o.only {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure_path(k, &o)))
            .unwrap_or_else(|e| Err(format!("panicked: {}", panic_text(&*e))));
        if b::interrupted() {
            eprintln!("interrupted: namespaces removed, nothing written");
            std::process::exit(130);
        }
        if let Err(e) = &r {
            eprintln!("   {} not measured: {e}", k.key());
        }
        results.push((k, r));
    }
    let load1 = loadavg();
    let section = render(&results, &o, load0, load1, &date);
    println!("{section}");
    if o.write {
        let path = std::env::var("BENCH_WRITE").unwrap_or_else(|_| "docs/performance.md".into());
        tandem_testbed::bench::doc::write_section(&path, "dataplane", &section)
            .expect("write performance doc");
        eprintln!("wrote the dataplane section of {path}");
    }
}

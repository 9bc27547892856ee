//! The scale benchmark behind `scripts/bench-scale` (issue 9 section 3): for each tunnel count
//! (default 1,000 and 10,000), `tandem-load` establishes that many IKE SAs, each with a CHILD SA,
//! against a tandemd responder (its dataplane installing every CHILD SA) and then against a
//! strongSwan charon responder, each on a fresh namespace pair. Then it keeps them up for a hold
//! period in which it rekeys every CHILD SA every 50-100% of `BENCH_SCALE_REKEY` seconds, lets the
//! responder idle briefly, and times the responder's listings (`tandemctl show ike-sa` and
//! `show ipsec-sa`; `swanctl --list-sas` for charon). Writes the "scale" section of
//! docs/performance.md when `BENCH_WRITE` names it.
//!
//! Environment: BENCH_SCALE_COUNTS ("1000 10000"), BENCH_CONCURRENCY (64), BENCH_SCALE_REKEY (120),
//! BENCH_SCALE_HOLD (150), BENCH_SCALE_IDLE (10), BENCH_SCALE_ONLY ("tandemd" or "charon": one
//! responder only, for trying things out).
#![forbid(unsafe_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tandem_testbed::bench::ike::{host, load_command, rss_kib, start_charon, start_tandemd, ESP, IKE};
use tandem_testbed::bench::{alive, check_interrupt, cpu_seconds, install_signal_handlers};
use tandem_testbed::charon::Charon;
use tandem_testbed::netns::Pair;
use tandem_testbed::tandemd::Tandemd;
use tandem_testbed::wait_until;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

enum Responder {
    Tandemd(Tandemd),
    Charon(Charon),
}

impl Responder {
    fn name(&self) -> &'static str {
        match self {
            Responder::Tandemd(_) => "tandemd",
            Responder::Charon(_) => "strongSwan charon 5.9.8",
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Responder::Tandemd(t) => t.pid,
            Responder::Charon(c) => c.pid,
        }
    }

    /// The operator's listings, each timed: (command, seconds, lines printed or the error).
    fn listings(&self) -> Vec<Listing> {
        let timed = |what: &'static str, f: &dyn Fn() -> std::process::Output| {
            let t = Instant::now();
            let o = f();
            let secs = t.elapsed().as_secs_f64();
            let result = if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).lines().count())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
            };
            Listing { what, secs, result }
        };
        match self {
            Responder::Tandemd(t) => vec![
                timed("tandemctl show ike-sa", &|| t.ctl(&["show", "ike-sa"])),
                timed("tandemctl show ipsec-sa", &|| t.ctl(&["show", "ipsec-sa"])),
            ],
            Responder::Charon(c) => vec![timed("swanctl --list-sas", &|| c.swanctl(&["--list-sas"]))],
        }
    }
}

struct Listing {
    what: &'static str,
    secs: f64,
    /// Lines printed, or what failed.
    result: Result<usize, String>,
}

/// One responder at one tunnel count.
struct Run {
    responder: &'static str,
    count: usize,
    established: u64,
    failed: u64,
    establish_s: f64,
    establish_cpu_s: f64,
    rss_kib_per_tunnel: f64,
    rekeys: u64,
    hold_s: f64,
    hold_cpu_s: f64,
    idle_cpu_per_s: f64,
    ike_at_end: u64,
    listings: Vec<Listing>,
}

impl Run {
    fn handshakes_per_cpu_s(&self) -> f64 {
        if self.establish_cpu_s > 0.0 {
            self.established as f64 / self.establish_cpu_s
        } else {
            0.0
        }
    }

    /// Responder CPU per CHILD SA rekey over the hold, all of it (timers and idle work included).
    fn cpu_ms_per_rekey(&self) -> f64 {
        if self.rekeys > 0 {
            self.hold_cpu_s * 1e3 / self.rekeys as f64
        } else {
            f64::NAN
        }
    }

    /// The same less what the responder spends idle with all its tunnels up; NaN when it was not
    /// idle afterwards (still working off the hold: the rate is no baseline).
    fn net_cpu_ms_per_rekey(&self) -> f64 {
        if self.rekeys > 0 && self.idle_cpu_per_s <= BUSY_AFTER_HOLD {
            (self.hold_cpu_s - self.idle_cpu_per_s * self.hold_s).max(0.0) * 1e3 / self.rekeys as f64
        } else {
            f64::NAN
        }
    }
}

/// Idle-window CPU share above which a responder counts as still busy with the hold's work.
const BUSY_AFTER_HOLD: f64 = 0.5;

/// Complete lines of a file that another process is writing.
fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// Wait until `path` holds `n` JSON lines (or the writer `pid` exited, or `timeout` passed) and
/// return line `n`.
fn await_line(path: &Path, n: usize, pid: u32, timeout: Duration) -> Value {
    let ok = wait_until(timeout, Duration::from_millis(100), || {
        check_interrupt();
        lines_of(path).len() >= n || !alive(pid)
    });
    let lines = lines_of(path);
    let line = lines.get(n - 1).unwrap_or_else(|| {
        panic!("tandem-load gave no line {n} (waited: {ok}, exited: {}); output: {lines:?}", !alive(pid))
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("tandem-load line {n} {line:?}: {e}"))
}

fn measure(which: &str, count: usize, conc: usize, rekey_s: u64, hold_s: u64, idle_s: u64) -> Run {
    let mut pair = Pair::with_prefix("tscale");
    let responder = match which {
        "tandemd" => Responder::Tandemd(start_tandemd(&mut pair.right)),
        _ => Responder::Charon(start_charon(&mut pair.right)),
    };
    let pid = responder.pid();
    eprintln!(
        "== {}: {count} IKE SAs with a CHILD SA each, {conc} in flight; then {hold_s} s with CHILD SA rekeys every {}-{rekey_s} s",
        responder.name(),
        rekey_s / 2
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("tandem-scale-{}", pair.left.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create run dir");
    let out = dir.join("load.json");
    let establish_timeout = (count as u64 / 20).max(300);
    let mut cmd = load_command(&pair.left, count, conc, establish_timeout);
    cmd.args(["--child-rekey", &rekey_s.to_string(), "--hold", &hold_s.to_string()])
        .stdout(std::fs::File::create(&out).expect("create load output"))
        .stderr(Stdio::inherit());
    let (cpu0, rss0) = (cpu_seconds(pid), rss_kib(pid));
    // Stopped with the namespace guard if anything below fails.
    let load_pid = pair.left.spawn(cmd);

    let up = await_line(&out, 1, load_pid, Duration::from_secs(establish_timeout + 60));
    let (cpu1, rss1) = (cpu_seconds(pid), rss_kib(pid));
    let established = up["established"].as_u64().unwrap_or(0);
    eprintln!(
        "== {}: {established} established in {:.1} s; responder {:.2} CPU s, RSS {:.0} MiB; holding",
        responder.name(),
        up["elapsed_s"].as_f64().unwrap_or(0.0),
        cpu1 - cpu0,
        rss1 / 1024.0
    );
    let held = await_line(&out, 2, load_pid, Duration::from_secs(hold_s + 120));
    let cpu2 = cpu_seconds(pid);
    let exited = wait_until(Duration::from_secs(30), Duration::from_millis(50), || !alive(load_pid));
    if !exited {
        pair.left.stop(load_pid, Duration::from_secs(2));
    }
    eprintln!(
        "== {}: {} CHILD SA rekeys during the hold; idling {idle_s} s",
        responder.name(),
        held["child_rekeys"]
    );
    let idle0 = cpu_seconds(pid);
    let idle_t = Instant::now();
    // The idle window is the measurement itself: nothing to await.
    std::thread::sleep(Duration::from_secs(idle_s));
    let idle_cpu_per_s = (cpu_seconds(pid) - idle0) / idle_t.elapsed().as_secs_f64();
    check_interrupt();
    eprintln!("== {}: timing the SA listings", responder.name());
    let listings = responder.listings();
    for l in &listings {
        eprintln!("   {}: {:.2} s, {:?}", l.what, l.secs, l.result);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        responder: responder.name(),
        count,
        established,
        failed: up["failed"].as_u64().unwrap_or(0),
        establish_s: up["elapsed_s"].as_f64().unwrap_or(0.0),
        establish_cpu_s: cpu1 - cpu0,
        rss_kib_per_tunnel: if established > 0 { (rss1 - rss0) / established as f64 } else { 0.0 },
        rekeys: held["child_rekeys"].as_u64().unwrap_or(0),
        hold_s: held["hold_s"].as_f64().unwrap_or(0.0),
        hold_cpu_s: cpu2 - cpu1,
        idle_cpu_per_s,
        ike_at_end: held["ike_sas_at_end"].as_u64().unwrap_or(0),
        listings,
    }
}

fn listing_cell(l: &Listing, count: usize) -> String {
    match &l.result {
        Ok(lines) => {
            format!("{:.2} s ({lines} lines, {:.0} us per tunnel)", l.secs, l.secs * 1e6 / count as f64)
        }
        Err(e) => format!("failed after {:.1} s: {}", l.secs, e.lines().next().unwrap_or("")),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// A per-tunnel cost that grows by more than this factor from the smallest to the largest count
/// counts as growing (run-to-run noise here is 5-10%, a shared machine adds more).
const GROWTH_LIMIT: f64 = 1.25;

fn report(runs: &[Run], counts: &[usize], conc: usize, rekey_s: u64, hold_s: u64, idle_s: u64) -> String {
    let mut t = String::from(
        "| tunnels | responder | established / failed | time to establish all s | handshakes per responder CPU-second | RSS KiB per tunnel | CHILD SA rekeys in the hold | responder CPU ms per rekey (all / less idle) | responder idle CPU % | IKE SAs up at the end |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        t.push_str(&format!(
            "| {} | {} | {} / {} | {:.1} | {:.0} | {:.1} | {} | {:.2} / {} | {:.1} | {} |\n",
            r.count,
            r.responder,
            r.established,
            r.failed,
            r.establish_s,
            r.handshakes_per_cpu_s(),
            r.rss_kib_per_tunnel,
            r.rekeys,
            r.cpu_ms_per_rekey(),
            match r.net_cpu_ms_per_rekey() {
                x if x.is_nan() => "n/a (still busy after the hold)".to_string(),
                x => format!("{x:.2}"),
            },
            r.idle_cpu_per_s * 100.0,
            r.ike_at_end
        ));
    }
    let mut l = String::from("| tunnels | responder | listing | time |\n|---|---|---|---|\n");
    for r in runs {
        for x in &r.listings {
            l.push_str(&format!(
                "| {} | {} | `{}` | {} |\n",
                r.count,
                r.responder,
                x.what,
                listing_cell(x, r.count)
            ));
        }
    }
    let find = |who: &str, n: usize| runs.iter().find(|r| r.responder.starts_with(who) && r.count == n);
    let mut targets = String::from("| target | figure | status |\n|---|---|---|\n");
    for &n in counts {
        if let (Some(t), Some(c)) = (find("tandemd", n), find("strongSwan", n)) {
            let hs = ratio(t.handshakes_per_cpu_s(), c.handshakes_per_cpu_s());
            targets.push_str(&format!(
                "| >= 2x charon's handshakes per responder CPU-second, dataplane installing CHILD SAs ({n} tunnels) | {hs:.2}x ({:.0} vs {:.0}) | {} |\n",
                t.handshakes_per_cpu_s(),
                c.handshakes_per_cpu_s(),
                verdict(hs >= 2.0)
            ));
            let mem = ratio(t.rss_kib_per_tunnel, c.rss_kib_per_tunnel);
            targets.push_str(&format!(
                "| memory per tunnel <= half of charon's ({n} tunnels) | {mem:.2}x ({:.1} vs {:.1} KiB; charon's kernel SAs and policies are not in its RSS) | {} |\n",
                t.rss_kib_per_tunnel,
                c.rss_kib_per_tunnel,
                verdict(mem <= 0.5)
            ));
        }
        if let Some(t) = find("tandemd", n) {
            let all = t.established == n as u64 && t.ike_at_end == n as u64;
            targets.push_str(&format!(
                "| {n} tunnels established and kept through the rekeys (tandemd) | {} established, {} up at the end | {} |\n",
                t.established,
                t.ike_at_end,
                verdict(all)
            ));
        }
    }
    if let (Some(&lo), Some(&hi)) = (counts.iter().min(), counts.iter().max()) {
        if let (Some(a), Some(b), true) = (find("tandemd", lo), find("tandemd", hi), lo < hi) {
            let inv = |x: f64| if x > 0.0 { 1.0 / x } else { f64::NAN };
            let mut costs = vec![
                (
                    "CPU per handshake",
                    inv(a.handshakes_per_cpu_s()) * 1e3,
                    inv(b.handshakes_per_cpu_s()) * 1e3,
                    "ms",
                ),
                ("RSS per tunnel", a.rss_kib_per_tunnel, b.rss_kib_per_tunnel, "KiB"),
                (
                    "CPU per CHILD SA rekey (less idle)",
                    a.net_cpu_ms_per_rekey(),
                    b.net_cpu_ms_per_rekey(),
                    "ms",
                ),
                (
                    "idle CPU per tunnel",
                    a.idle_cpu_per_s * 1e6 / lo as f64,
                    b.idle_cpu_per_s * 1e6 / hi as f64,
                    "us/s",
                ),
            ];
            for (i, x) in a.listings.iter().enumerate() {
                if let Some(y) = b.listings.get(i) {
                    costs.push((x.what, x.secs * 1e6 / lo as f64, y.secs * 1e6 / hi as f64, "us"));
                }
            }
            for (what, x, y, unit) in costs {
                let g = ratio(y, x);
                targets.push_str(&format!(
                    "| no per-tunnel cost that grows with the count (tandemd): {what}, {lo} -> {hi} tunnels | {x:.3} -> {y:.3} {unit} ({g:.2}x) | {} |\n",
                    verdict(g.is_finite() && g <= GROWTH_LIMIT)
                ));
            }
        }
    }
    let (kernel, cpus) = host();
    format!(
        "## Scale (issue 9 section 3)\n\nCommand: `scripts/bench-scale` (BENCH_SCALE_COUNTS=\"{}\", BENCH_CONCURRENCY={conc}, BENCH_SCALE_REKEY={rekey_s}, BENCH_SCALE_HOLD={hold_s}, BENCH_SCALE_IDLE={idle_s}); binary `testbed/src/bin/bench_scale.rs`. For each count, `tandem-load` (tandem's engine as initiator, one identity per IKE SA) establishes that many IKE SAs with a CHILD SA each ({IKE}, ESP {ESP} without PFS) against a tandemd responder, whose userspace dataplane installs every CHILD SA (SAD and SPD), and against a strongSwan charon responder (kernel SAs and policies, no routes), each on a fresh namespace pair on the same {cpus} vCPUs (kernel {kernel}), shared with the generator and with other work on this machine. Then the generator holds the SAs for {hold_s} s and rekeys every CHILD SA after {}-{rekey_s} s (CREATE_CHILD_SA, initiated by the generator; the responder installs the new SA and retires the old); then the responder idles {idle_s} s with every tunnel up; then its SA listings are timed.\n\nCPU is the responder's utime+stime; \"handshakes per responder CPU-second\" divides the SAs established by the CPU it spent establishing them; RSS per tunnel is the growth of its RSS over the establishment divided by the tunnels (charon's kernel state is not in it: the comparison flatters charon). CPU per rekey divides the responder's CPU over the hold by the rekeys completed in it, all of it, and less the idle rate measured afterwards (not given for a responder still more than half busy then: it has not caught up with the hold's work, so its CPU per rekey is a lower bound). Listings are run once each, as an operator would, on the responder's control socket.\n\n{t}\n{l}\nTargets (a per-tunnel cost \"grows\" when it rises more than {GROWTH_LIMIT}x from the smallest to the largest count):\n\n{targets}",
        counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" "),
        rekey_s / 2,
    )
}

fn main() {
    install_signal_handlers();
    let counts: Vec<usize> = std::env::var("BENCH_SCALE_COUNTS")
        .unwrap_or_else(|_| "1000 10000".into())
        .split([' ', ','])
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let conc: usize = env_num("BENCH_CONCURRENCY", 64);
    let rekey_s: u64 = env_num("BENCH_SCALE_REKEY", 120);
    let hold_s: u64 = env_num("BENCH_SCALE_HOLD", 150);
    let idle_s: u64 = env_num("BENCH_SCALE_IDLE", 10);
    let only = std::env::var("BENCH_SCALE_ONLY").unwrap_or_default();
    let mut runs = Vec::new();
    for &count in &counts {
        for which in ["tandemd", "charon"] {
            if only.is_empty() || only == which {
                runs.push(measure(which, count, conc, rekey_s, hold_s, idle_s));
                check_interrupt();
            }
        }
    }
    let section = report(&runs, &counts, conc, rekey_s, hold_s, idle_s);
    println!("{section}");
    if let Ok(path) = std::env::var("BENCH_WRITE") {
        tandem_testbed::bench::doc::write_section(&path, "scale", &section).expect("write performance doc");
        eprintln!("wrote {path}");
    }
}

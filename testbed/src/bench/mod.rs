//! Helpers for the benchmarks (`bench_dataplane`, `bench_ike`, `bench_scale`): bounded command runs, process CPU,
//! per-namespace UDP counters, load average, Ctrl-C handling and the sections of docs/performance.md.

pub mod doc;
pub mod ike;
pub mod iperf;
pub mod paths;

use crate::netns::Netns;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP: the benchmark notices at its next step (`check_interrupt`),
/// unwinds, and its namespace guards stop the processes they started and delete the namespaces.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Panic (and so unwind through the guards) when a signal arrived.
pub fn check_interrupt() {
    if interrupted() {
        panic!("interrupted by a signal: cleaning up");
    }
}

/// Run a command to completion, killing it after `timeout`. Output goes through temporary files so
/// a chatty child cannot block on a full pipe. Err says what failed.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let mut out = tempfile("out")?;
    let mut err = tempfile("err")?;
    cmd.stdin(Stdio::null())
        .stdout(out.0.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.0.try_clone().map_err(|e| e.to_string())?);
    let mut child = cmd.spawn().map_err(|e| format!("cannot spawn {cmd:?}: {e}"))?;
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait for {cmd:?}: {e}")),
        }
    };
    let read = |f: &mut (std::fs::File, std::path::PathBuf)| {
        let mut v = Vec::new();
        let mut file = std::fs::File::open(&f.1).map_err(|e| e.to_string())?;
        file.read_to_end(&mut v).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&f.1);
        Ok::<_, String>(v)
    };
    Ok(Output { status, stdout: read(&mut out)?, stderr: read(&mut err)? })
}

fn tempfile(what: &str) -> Result<(std::fs::File, std::path::PathBuf), String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "tandem-bench-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::create(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
    Ok((f, p))
}

/// Run a command in `ns` (bounded) and require success; Err carries stderr.
pub fn ns_must(ns: &Netns, program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut c = ns.command(program);
    c.args(args);
    let o = run_bounded(c, timeout)?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?} in {} failed: {}{}",
            ns.name,
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        ))
    }
}

/// utime + stime of a process (all its threads), in seconds; 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Whether `pid` is still running (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// A field of the `Udp:` line of /proc/net/snmp as seen inside `ns` (for example "RcvbufErrors").
/// Read per namespace, so nothing shares nstat's history file.
pub fn udp_counter(ns: &Netns, field: &str) -> u64 {
    let text = ns_must(ns, "cat", &["/proc/net/snmp"], Duration::from_secs(5)).unwrap_or_default();
    snmp_field(&text, "Udp:", field).unwrap_or(0)
}

/// Parse one counter from /proc/net/snmp text: a header line and a value line share a prefix.
pub fn snmp_field(text: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let head: Vec<&str> = lines.next()?.split_whitespace().collect();
    let vals: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = head.iter().position(|h| *h == field)?;
    vals.get(i)?.parse().ok()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// Busy share of all CPUs (0..1) over `window`, from /proc/stat: what the rest of the machine does
/// while the benchmark itself is idle.
pub fn cpu_busy(window: Duration) -> f64 {
    fn sample() -> (u64, u64) {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = s
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        (total, idle)
    }
    let (t0, i0) = sample();
    std::thread::sleep(window);
    let (t1, i1) = sample();
    let dt = t1.saturating_sub(t0);
    if dt == 0 {
        0.0
    } else {
        1.0 - i1.saturating_sub(i0) as f64 / dt as f64
    }
}

/// Median of the values (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The p-th percentile (0..100) by nearest rank; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// A command that runs `program args` inside `ns` with a private directory bind-mounted over /run,
/// in its own mount namespace: for daemons whose socket or pid file paths under /run are fixed
/// (WireGuard's UAPI socket, charon's pid file). Every exec in the chain replaces the previous
/// process, so the spawned PID is the program itself.
pub fn with_private_run(ns: &Netns, run_dir: &std::path::Path, program: &str, args: &[&str]) -> Command {
    let mut c = ns.command("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$1\" /run && shift && exec \"$@\"",
        "sh",
    ])
    .arg(run_dir)
    .arg(program)
    .args(args);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
    }

    #[test]
    fn snmp() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\nUdp: 10 0 7 12 5 0 0 0 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(snmp_field(t, "Udp:", "RcvbufErrors"), Some(5));
        assert_eq!(snmp_field(t, "Udp:", "InErrors"), Some(7));
        assert_eq!(snmp_field(t, "Udp:", "Nope"), None);
    }
}

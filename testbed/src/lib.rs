//! Test hosts in network namespaces, a strongSwan `charon` driver and a `tandemd` driver, for the
//! interop tests in `tests/`. Everything a test creates is removed when its guard drops, even when
//! the test fails; processes are stopped by the PID we started, never by name.

pub mod bench;
pub mod charon;
pub mod cluster;
pub mod esp_capture;
pub mod faults;
pub mod lanhost;
pub mod load_peer;
pub mod netns;
pub mod nsenter;
pub mod probe;
pub mod replay;
pub mod stream;
pub mod tandemd;
pub mod timestamp;
pub mod topo;

use std::time::{Duration, Instant};

/// Poll `cond` every `every` until it holds or `timeout` passes; returns whether it held.
/// Tests use this to await an outcome instead of sleeping for a fixed time.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Whether a test that cannot run here must fail instead of being skipped: `CI=true` in the
/// environment (`scripts/test` sets it, so the suite can never pass on tests that did not run).
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Tests that skipped in this process, for the line printed after libtest's summary.
static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The current test cannot run on this machine (`reason`: what is missing). Returns false, for
/// `if !prerequisites_present() { return; }` style callers.
///
/// Under `CI=true` this panics: a missing prerequisite is a failure there. Otherwise it prints
/// `SKIPPED <test>: <reason>` straight to the process's stderr, appends that line to the file named
/// by `TANDEM_SKIP_LOG` (scripts/test counts them), and, once the test binary's summary is
/// printed, a count of the skipped tests. libtest captures only the print macros of a passing test
/// and has no "skipped" outcome, so without this a skipped test would show as a plain green "ok".
pub fn skip(reason: &str) -> bool {
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_string();
    let line = format!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("TANDEM_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
    if strict() {
        panic!("{line} (CI=true: a test whose prerequisites are missing fails)");
    }
    {
        use std::io::Write;
        let _ = write!(std::io::stderr(), "\n{line}\n");
    }
    let mut skipped = SKIPPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if skipped.is_empty() {
        // SAFETY: registers a plain `extern "C" fn` without arguments, as atexit(3) expects; it
        // runs once at exit, after libtest printed its summary (libtest has no hook of its own).
        unsafe {
            libc::atexit(print_skip_summary);
        }
    }
    skipped.push(test);
    false
}

/// At exit of a test binary that skipped tests: how many and which, below libtest's "ok" summary.
extern "C" fn print_skip_summary() {
    use std::io::Write;
    let skipped = SKIPPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {} test(s) that did not run here (counted as passed by libtest; CI=true makes them fail): {}",
        skipped.len(),
        skipped.join(", ")
    );
}

/// Root, strongSwan's charon and swanctl, and `ip`: what every interop test needs. Returns false
/// (after `skip`) when the caller should return.
pub fn prerequisites_present() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let charon = std::path::Path::new(charon::CHARON).exists();
    let (swanctl, ip) = (which("swanctl"), which("ip"));
    if root && charon && swanctl && ip {
        return true;
    }
    skip(&format!(
        "interop prerequisites missing (root: {root}, charon: {charon}, swanctl: {swanctl}, ip: {ip}); run scripts/test to install them"
    ))
}

/// As `prerequisites_present`, and the named tools are on PATH too (traffic tests need `tshark`,
/// `iperf3`, `nft`...).
pub fn tools_present(tools: &[&str]) -> bool {
    if !prerequisites_present() {
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !which(t)).collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!("tools missing: {missing:?}; run scripts/test to install them"))
}

/// Whether `cmd` is an executable name found on PATH.
pub fn which(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).exists()))
}

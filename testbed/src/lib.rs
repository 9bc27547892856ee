//! Test hosts in network namespaces, a strongSwan `charon` driver and a `tandemd` driver, for the
//! interop tests in `tests/`. Everything a test creates is removed when its guard drops, even when
//! the test fails; processes are stopped by the PID we started, never by name.

pub mod bench;
pub mod charon;
pub mod netns;
pub mod probe;
pub mod replay;
pub mod tandemd;
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

/// With CI=true a missing prerequisite is a failure; elsewhere the test is skipped with a message.
/// Returns false when the caller should skip.
pub fn prerequisites_present() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let charon = std::path::Path::new(charon::CHARON).exists();
    let ok = root && charon && which("swanctl") && which("ip");
    if !ok {
        let msg = format!("interop prerequisites missing (root: {root}, charon: {charon}); run scripts/test to install them");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    ok
}

/// As `prerequisites_present`, and the named tools are on PATH too (traffic tests need `tshark`,
/// `iperf3`, `nft`...). With CI=true a missing one is a failure.
pub fn tools_present(tools: &[&str]) -> bool {
    if !prerequisites_present() {
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !which(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("traffic test tools missing: {missing:?}; run scripts/test to install them");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).exists()))
}

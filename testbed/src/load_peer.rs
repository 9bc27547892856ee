//! `tandem-load` as the remote side of a `cluster::Cluster`: in the `peer` namespace instead of
//! charon, many initiators towards the VIP, each with its own identity (`load-N.test`) and inner
//! address (`LOAD_INNER` + N + 1), so every tunnel is a distinct policy on the cluster and can carry
//! the generator's ICMP probes to the cluster's protected address (`cluster::CLUSTER_INNER`, on `lo`
//! of both gateways).
//!
//! The generator prints two JSON lines on stdout: when every IKE SA is up, and after the hold (ended
//! early by its stop file). `LoadPeer` waits for each, bounded, and the namespace guard stops the
//! process should anything fail in between.

use crate::bench::alive;
use crate::cluster::{CLUSTER_INNER, PEER_WAN, SOCKET_PLACEHOLDER, VIP};
use crate::netns::{unique_tag, Netns};
use crate::tandemd::bin_dir;
use crate::wait_until;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const IKE: &str = "aes256gcm16-prfsha256-x25519";
pub const ESP: &str = "aes256gcm16";
/// The generator's inner addresses start after this one (tunnel N: + N + 1).
pub const LOAD_INNER: &str = "10.200.0.0";
/// The cluster's remote selector: every tunnel's inner address is in it (up to 65,534 tunnels).
pub const LOAD_INNER_NET: &str = "10.200.0.0/16";
pub const LOAD_PSK: &str = "load-test-secret";

/// The cluster's configuration for a `tandem-load` peer (everything but `[ha]`, the socket as
/// `SOCKET_PLACEHOLDER`, for `Cluster::start_nodes_toml`): one vpn for any identity with the PSK,
/// the VIP as its address, 10.99.10.0/24 on its side, each tunnel narrowed to its generator's inner
/// /32. `dataplane_extra`: lines for `[dataplane]`.
pub fn cluster_load_toml(dataplane_extra: &str) -> String {
    format!(
        r#"[daemon]
socket = "{SOCKET_PLACEHOLDER}"
listen = ["{VIP}"]
cookie-threshold = 1000000

[dataplane]
{dataplane_extra}

[ike-policy.i]
proposals = ["{IKE}"]

[ipsec-policy.e]
proposals = ["{ESP}"]

[vpn.load]
ike-policy = "i"
ipsec-policy = "e"
local-address = "{VIP}"
local-id = "responder.test"

[[vpn.load.security-policy]]
name = "c"
local-ts = ["10.99.10.0/24"]
remote-ts = ["{LOAD_INNER_NET}"]

[pre-shared-key.any]
secret = "{LOAD_PSK}"
"#
    )
}

/// What the generator is asked to do.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    pub count: usize,
    pub concurrency: usize,
    /// The generator gives up establishing after this long.
    pub timeout_s: u64,
    /// Longest hold (the stop file ends it earlier).
    pub hold_s: u64,
    /// Tunnels probed during the hold (0: none), and how often each.
    pub probe: usize,
    pub probe_interval_ms: u64,
    /// `--child-rekey` (0: never).
    pub child_rekey_s: u64,
}

impl LoadOpts {
    pub fn new(count: usize) -> LoadOpts {
        LoadOpts {
            count,
            concurrency: 32,
            timeout_s: 300,
            hold_s: 600,
            probe: 0,
            probe_interval_ms: 10,
            child_rekey_s: 0,
        }
    }
}

/// A running `tandem-load` in the cluster's peer namespace.
pub struct LoadPeer {
    pub pid: u32,
    dir: PathBuf,
    out: PathBuf,
    stop: PathBuf,
}

/// Complete lines of a file that another process is writing.
fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

impl LoadPeer {
    /// Start the generator in `ns` (the cluster's peer), from the peer's address to the VIP.
    pub fn start(ns: &mut Netns, o: &LoadOpts) -> LoadPeer {
        let dir = std::env::temp_dir().join(format!("tandem-load-{}-{}", ns.name, unique_tag()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create load dir");
        let (out, stop) = (dir.join("load.json"), dir.join("stop"));
        let bin = bin_dir().join("tandem-load");
        assert!(
            bin.exists(),
            "{} is missing: build with `cargo build --workspace --bins` first",
            bin.display()
        );
        let mut cmd = ns.command(bin.to_str().expect("utf-8 path"));
        cmd.args(["--local", PEER_WAN, "--target", VIP, "--count", &o.count.to_string()])
            .args(["--concurrency", &o.concurrency.to_string(), "--proposal", IKE, "--esp", ESP])
            .args(["--psk", LOAD_PSK, "--timeout", &o.timeout_s.to_string()])
            .args(["--hold", &o.hold_s.to_string(), "--stop-file"])
            .arg(&stop)
            .args(["--inner", LOAD_INNER, "--probe", &o.probe.to_string(), "--probe-target", CLUSTER_INNER])
            .args(["--probe-interval-ms", &o.probe_interval_ms.to_string()])
            .args(["--child-rekey", &o.child_rekey_s.to_string()])
            .stdout(std::fs::File::create(&out).expect("create load output"))
            .stderr(std::fs::File::create(dir.join("load.log")).expect("create load log"));
        let pid = ns.spawn(cmd);
        LoadPeer { pid, dir, out, stop }
    }

    /// The generator's progress and error output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("load.log")).unwrap_or_default()
    }

    /// Await JSON line `n` (1: all established; 2: the hold's report), at most `timeout`, or until
    /// the generator exits; `Err` says why there is none.
    pub fn line(&self, n: usize, timeout: Duration) -> Result<Value, String> {
        wait_until(timeout, Duration::from_millis(20), || lines_of(&self.out).len() >= n || !alive(self.pid));
        let lines = lines_of(&self.out);
        let line = lines.get(n - 1).ok_or_else(|| {
            format!(
                "tandem-load gave no line {n} within {timeout:?} (exited: {}); stdout {lines:?}; log:\n{}",
                !alive(self.pid),
                crate::cluster::tail(&self.log(), 20)
            )
        })?;
        serde_json::from_str(line).map_err(|e| format!("tandem-load line {n} {line:?}: {e}"))
    }

    /// End the hold (the stop file), await the report, reap the process.
    pub fn finish(self, ns: &mut Netns, timeout: Duration) -> Result<Value, String> {
        std::fs::write(&self.stop, b"stop").expect("write the stop file");
        let report = self.line(2, timeout);
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || !alive(self.pid));
        ns.stop(self.pid, Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

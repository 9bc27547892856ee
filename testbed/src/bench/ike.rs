//! What the IKE benchmarks (`bench_ike`, `bench_scale`) share: the two responders (tandemd and
//! strongSwan charon, configured alike: PSK, any identity, `0.0.0.0/0` on both sides, no cookies or
//! half-open limits), the `tandem-load` command line, and the responder's RSS.

use crate::charon::Charon;
use crate::netns::Netns;
use crate::tandemd::{bin_dir, Tandemd};
use std::process::Command;

/// The IKE proposal of every handshake.
pub const IKE: &str = "aes256gcm16-prfsha256-x25519";
/// The ESP proposal of every CHILD SA (no PFS: a CHILD SA rekey is one CREATE_CHILD_SA exchange
/// without a key exchange).
pub const ESP: &str = "aes256gcm16";
/// The generator's address (left end of `netns::Pair`) and the responder's (right end).
pub const GEN_ADDR: &str = "10.99.1.1";
pub const RESPONDER_ADDR: &str = "10.99.1.2";

/// The responder's resident set, KiB; 0 when it is gone.
pub fn rss_kib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A tandemd responder for `tandem-load` in `ns` (with its dataplane: every CHILD SA is installed
/// in the SAD and SPD), logging warnings only.
pub fn start_tandemd(ns: &mut Netns) -> Tandemd {
    let dir = Tandemd::dir_for(ns);
    let sock = dir.join("tandemd.sock");
    let toml = format!(
        r#"[daemon]
socket = "{}"
listen = ["{RESPONDER_ADDR}"]
cookie-threshold = 1000000
[ike-policy.i]
proposals = ["{IKE}"]
[ipsec-policy.e]
proposals = ["{ESP}"]
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
    Tandemd::start_logging(ns, dir, &toml, "warn")
}

/// A strongSwan charon responder for `tandem-load` in `ns`, logging nothing, with kernel SAs and
/// policies (no routes).
pub fn start_charon(ns: &mut Netns) -> Charon {
    let swanctl = format!(
        r#"connections {{
  load {{
    version = 2
    local_addrs = {RESPONDER_ADDR}
    remote_addrs = %any
    proposals = {IKE}
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
        esp_proposals = {ESP}
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
    Charon::start_with(ns, &swanctl, extra, -1)
}

/// `tandem-load` in the generator's namespace: `count` IKE SAs with a CHILD SA each against the
/// responder, `concurrency` in flight, giving up after `timeout_s`. Callers add their own flags.
pub fn load_command(gen: &Netns, count: usize, concurrency: usize, timeout_s: u64) -> Command {
    let mut c = gen.command(bin_dir().join("tandem-load").to_str().expect("utf-8"));
    c.args(["--local", GEN_ADDR, "--target", RESPONDER_ADDR, "--count", &count.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--proposal", IKE, "--esp", ESP])
        .args(["--timeout", &timeout_s.to_string()]);
    c
}

/// The kernel release and CPU count, for the documents' "measured on" lines.
pub fn host() -> (String, usize) {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    (kernel, std::thread::available_parallelism().map_or(0, |n| n.get()))
}

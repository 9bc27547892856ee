//! A `tandemd` in a namespace, configured from a TOML string, driven with `tandemctl`.

use crate::netns::Netns;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// Where the built binaries are: `TANDEM_BIN_DIR`, else the workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("TANDEM_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("debug")
    })
}

/// The standard tandem side of `netns::Pair` (left host), as TOML.
pub fn left_config(socket: &str, ike: &str, esp: &str, extra_daemon: &str, extra_ike: &str) -> String {
    left_config_full(socket, ike, esp, extra_daemon, extra_ike, "")
}

/// As `left_config`, with extra lines for the `[ipsec-policy]` table too.
pub fn left_config_full(
    socket: &str,
    ike: &str,
    esp: &str,
    extra_daemon: &str,
    extra_ike: &str,
    extra_ipsec: &str,
) -> String {
    format!(
        r#"[daemon]
socket = "{socket}"
listen = ["10.99.1.1"]
{extra_daemon}

[ike-policy.ike1]
proposals = [{ike}]
{extra_ike}

[ipsec-policy.ipsec1]
proposals = [{esp}]
{extra_ipsec}

[vpn.t]
ike-policy = "ike1"
ipsec-policy = "ipsec1"
local-address = "10.99.1.1"
remote-address = "10.99.1.2"
local-id = "a.test"
remote-id = "b.test"

[[vpn.t.security-policy]]
name = "net"
local-ts = ["10.99.10.0/24"]
remote-ts = ["10.99.20.0/24"]

[pre-shared-key.t]
ids = ["a.test", "b.test"]
secret = "a-long-test-psk"
"#,
        ike = quote_list(ike),
        esp = quote_list(esp),
    )
}

fn quote_list(csv: &str) -> String {
    csv.split(',').map(|p| format!("\"{}\"", p.trim())).collect::<Vec<_>>().join(", ")
}

pub struct Tandemd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pid: u32,
}

impl Tandemd {
    /// Directory for this instance's files; put the socket path from here into the config.
    pub fn dir_for(ns: &Netns) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-tandemd-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create tandemd dir");
        dir
    }

    pub fn start(ns: &mut Netns, dir: PathBuf, config_toml: &str) -> Tandemd {
        Self::start_logging(ns, dir, config_toml, "debug")
    }

    /// Start with a log filter (benchmarks run with "warn").
    pub fn start_logging(ns: &mut Netns, dir: PathBuf, config_toml: &str, log_level: &str) -> Tandemd {
        let bin = bin_dir().join("tandemd");
        assert!(
            bin.exists(),
            "{} is missing: build with `cargo build --workspace --bins` first",
            bin.display()
        );
        let conf = dir.join("tandem.toml");
        std::fs::write(&conf, config_toml).expect("write config");
        let socket = dir.join("tandemd.sock");
        let mut cmd = ns.command(bin.to_str().expect("utf-8 path"));
        cmd.arg("--config")
            .arg(&conf)
            .arg("--socket")
            .arg(&socket)
            .args(["--log-level", log_level])
            .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join("tandemd.log")).expect("log file"));
        let pid = ns.spawn(cmd);
        let t = Tandemd { dir, socket, pid };
        let up = crate::wait_until(Duration::from_secs(15), Duration::from_millis(25), || {
            t.ctl(&["status"]).status.success()
        });
        assert!(up, "tandemd did not come up: {}", t.log());
        t
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("tandemctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tandemctl")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(&a);
        assert!(out.status.success(), "tandemctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("tandemctl --json output")
    }

    pub fn ike_sas(&self) -> Vec<Value> {
        self.json(&["show", "ike-sa"]).as_array().cloned().unwrap_or_default()
    }

    pub fn child_sas(&self) -> Vec<Value> {
        self.json(&["show", "child-sa"]).as_array().cloned().unwrap_or_default()
    }

    pub fn established(&self) -> Vec<Value> {
        self.ike_sas().into_iter().filter(|s| s["state"] == "established").collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tandemd.log")).unwrap_or_default()
    }
}

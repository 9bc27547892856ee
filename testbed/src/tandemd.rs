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

impl Tandemd {
    /// `tandemctl show ipsec-sa --json`: one `SaInfo` object per SA direction.
    pub fn ipsec_sas(&self) -> Vec<Value> {
        self.json(&["show", "ipsec-sa"]).as_array().cloned().unwrap_or_default()
    }

    /// `tandemctl status --json`: the engine's drop counters (`engine`) and the IKE sockets' I/O
    /// counters (`io`) among others.
    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// `tandemctl show ipsec-stat --json`: `{"esp": GlobalStats, "io": CountersSnapshot}`.
    pub fn ipsec_stat(&self) -> Value {
        self.json(&["show", "ipsec-stat"])
    }

    /// Sum of one per-SA counter (`counters.NAME`) over the SAs of one direction ("in"/"out").
    pub fn sa_counter(&self, direction: &str, name: &str) -> u64 {
        self.ipsec_sas()
            .iter()
            .filter(|s| s["direction"] == direction)
            .map(|s| s["counters"][name].as_u64().unwrap_or(0))
            .sum()
    }
}

/// A `[manual-sa.NAME]` entry (keyed by hand, no IKE).
#[derive(Debug, Clone)]
pub struct ManualSa {
    pub name: String,
    pub local_address: String,
    pub remote_address: String,
    pub spi_in: u32,
    pub spi_out: u32,
    pub encryption: String,
    pub integrity: Option<String>,
    pub key_in: String,
    pub key_out: String,
    pub integrity_key_in: Option<String>,
    pub integrity_key_out: Option<String>,
    pub mode: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub esn: bool,
    pub replay_window: u32,
    pub encap: bool,
}

impl ManualSa {
    /// The same SA pair as the peer configures it: addresses, SPIs, keys and selectors swapped.
    pub fn mirrored(&self) -> ManualSa {
        ManualSa {
            local_address: self.remote_address.clone(),
            remote_address: self.local_address.clone(),
            spi_in: self.spi_out,
            spi_out: self.spi_in,
            key_in: self.key_out.clone(),
            key_out: self.key_in.clone(),
            integrity_key_in: self.integrity_key_out.clone(),
            integrity_key_out: self.integrity_key_in.clone(),
            local_ts: self.remote_ts.clone(),
            remote_ts: self.local_ts.clone(),
            ..self.clone()
        }
    }

    fn toml(&self) -> String {
        let mut s = format!(
            "[manual-sa.{name}]\nlocal-address = \"{la}\"\nremote-address = \"{ra}\"\nspi-in = {si:#x}\nspi-out = {so:#x}\nencryption = \"{enc}\"\nkey-in = \"{ki}\"\nkey-out = \"{ko}\"\nmode = \"{mode}\"\nlocal-ts = [{lts}]\nremote-ts = [{rts}]\nesn = {esn}\nreplay-window = {rw}\nencap = {encap}\n",
            name = self.name,
            la = self.local_address,
            ra = self.remote_address,
            si = self.spi_in,
            so = self.spi_out,
            enc = self.encryption,
            ki = self.key_in,
            ko = self.key_out,
            mode = self.mode,
            lts = quote_vec(&self.local_ts),
            rts = quote_vec(&self.remote_ts),
            esn = self.esn,
            rw = self.replay_window,
            encap = self.encap,
        );
        if let Some(i) = &self.integrity {
            s += &format!("integrity = \"{i}\"\n");
        }
        if let Some(k) = &self.integrity_key_in {
            s += &format!("integrity-key-in = \"{k}\"\n");
        }
        if let Some(k) = &self.integrity_key_out {
            s += &format!("integrity-key-out = \"{k}\"\n");
        }
        s
    }
}

fn quote_vec(v: &[String]) -> String {
    v.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ")
}

/// A tandemd configuration for traffic tests: one vpn `t` (IKE, PSK) with one security policy
/// `net`, and/or manual SAs. Every field maps to one documented key; `None`/empty leaves the key
/// out so the daemon default applies.
#[derive(Debug, Clone)]
pub struct TandemConf {
    pub socket: String,
    pub listen: Vec<String>,
    pub ike_proposals: String,
    pub esp_proposals: String,
    /// Include `[vpn.t]` (false: manual SAs only).
    pub vpn: bool,
    pub local_address: String,
    /// `None` leaves `remote-address` out (a responder accepting any peer).
    pub remote_address: Option<String>,
    pub local_id: String,
    pub remote_id: String,
    /// Selectors of the security policy; empty = no `[[vpn.t.security-policy]]` at all.
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub mode: Option<String>,
    pub esn: Option<bool>,
    pub replay_window: Option<u32>,
    pub encap: Option<bool>,
    pub start_action: Option<String>,
    /// Route-based: `interface = "..."` on the vpn.
    pub interface: Option<String>,
    /// Extra lines for `[daemon]`, `[dataplane]`, `[ike-policy.ike1]`, `[ipsec-policy.ipsec1]`, `[vpn.t]`.
    pub daemon_extra: String,
    pub dataplane_extra: String,
    pub ike_extra: String,
    pub ipsec_extra: String,
    pub vpn_extra: String,
    pub manual: Vec<ManualSa>,
}

impl TandemConf {
    /// The left host of `netns::Pair` / `topo::Topo`, initiating to the right one.
    pub fn left(socket: &str, ike: &str, esp: &str) -> TandemConf {
        TandemConf {
            socket: socket.to_string(),
            listen: Vec::new(),
            ike_proposals: ike.to_string(),
            esp_proposals: esp.to_string(),
            vpn: true,
            local_address: "10.99.1.1".into(),
            remote_address: Some("10.99.1.2".into()),
            local_id: "a.test".into(),
            remote_id: "b.test".into(),
            local_ts: vec!["10.99.10.0/24".into()],
            remote_ts: vec!["10.99.20.0/24".into()],
            mode: None,
            esn: None,
            replay_window: None,
            encap: None,
            start_action: None,
            interface: None,
            daemon_extra: String::new(),
            dataplane_extra: String::new(),
            ike_extra: String::new(),
            ipsec_extra: String::new(),
            vpn_extra: String::new(),
            manual: Vec::new(),
        }
    }

    /// The same vpn seen from the right host (a tandemd peer): addresses, identities and
    /// selectors swapped.
    pub fn mirrored(&self, socket: &str, local_address: &str, remote_address: Option<&str>) -> TandemConf {
        TandemConf {
            socket: socket.to_string(),
            listen: Vec::new(),
            local_address: local_address.to_string(),
            remote_address: remote_address.map(str::to_string),
            local_id: self.remote_id.clone(),
            remote_id: self.local_id.clone(),
            local_ts: self.remote_ts.clone(),
            remote_ts: self.local_ts.clone(),
            start_action: None,
            manual: self.manual.iter().map(ManualSa::mirrored).collect(),
            ..self.clone()
        }
    }

    pub fn toml(&self) -> String {
        let listen =
            if self.listen.is_empty() { vec![self.local_address.clone()] } else { self.listen.clone() };
        let mut s = format!(
            "[daemon]\nsocket = \"{}\"\nlisten = [{}]\n{}\n\n",
            self.socket,
            quote_vec(&listen),
            self.daemon_extra
        );
        if !self.dataplane_extra.is_empty() {
            s += &format!("[dataplane]\n{}\n\n", self.dataplane_extra);
        }
        if self.vpn {
            s += &format!(
                "[ike-policy.ike1]\nproposals = [{}]\n{}\n\n",
                quote_list(&self.ike_proposals),
                self.ike_extra
            );
            s += &format!("[ipsec-policy.ipsec1]\nproposals = [{}]\n", quote_list(&self.esp_proposals));
            if let Some(m) = &self.mode {
                s += &format!("mode = \"{m}\"\n");
            }
            if let Some(e) = self.esn {
                s += &format!("esn = {e}\n");
            }
            if let Some(w) = self.replay_window {
                s += &format!("replay-window = {w}\n");
            }
            s += &format!("{}\n\n", self.ipsec_extra);
            s += &format!(
                "[vpn.t]\nike-policy = \"ike1\"\nipsec-policy = \"ipsec1\"\nlocal-address = \"{}\"\nlocal-id = \"{}\"\nremote-id = \"{}\"\n",
                self.local_address, self.local_id, self.remote_id
            );
            if let Some(r) = &self.remote_address {
                s += &format!("remote-address = \"{r}\"\n");
            }
            if let Some(e) = self.encap {
                s += &format!("encap = {e}\n");
            }
            if let Some(i) = &self.interface {
                s += &format!("interface = \"{i}\"\n");
            }
            s += &format!("{}\n\n", self.vpn_extra);
            if !self.local_ts.is_empty() || !self.remote_ts.is_empty() {
                s += &format!(
                    "[[vpn.t.security-policy]]\nname = \"net\"\nlocal-ts = [{}]\nremote-ts = [{}]\n",
                    quote_vec(&self.local_ts),
                    quote_vec(&self.remote_ts)
                );
                if let Some(a) = &self.start_action {
                    s += &format!("start-action = \"{a}\"\n");
                }
                s += "\n";
            }
            s += &format!(
                "[pre-shared-key.t]\nids = [\"{}\", \"{}\"]\nsecret = \"a-long-test-psk\"\n\n",
                self.local_id, self.remote_id
            );
        }
        for m in &self.manual {
            s += &m.toml();
            s += "\n";
        }
        s
    }
}

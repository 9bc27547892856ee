//! An active/standby tandem cluster (docs/ha.md) facing one remote peer, in network namespaces:
//!
//! ```text
//!   peer (charon)              wan (bridge)              gw1 (tandemd, node 1)
//!   10.95.0.1  ---------------- br ---------------------- 10.95.0.11 (+ VIP 10.95.0.10 while it serves)
//!   lo: 10.99.20.1              |                          lo: 10.99.10.1     |
//!                               +---------------------- gw2 (tandemd, node 2) | sync link (veth)
//!                                                          10.95.0.12          | 10.96.0.1 <-> 10.96.0.2
//!                                                          lo: 10.99.10.1 -----+
//!
//!                              lan (bridge)               gw1 10.97.0.11, gw2 10.97.0.12
//!                                                          (+ LAN VIP 10.97.0.10 while serving)
//! ```
//!
//! The cluster's protected address (tandem's usual left inner address, 10.99.10.1) is on `lo` of
//! both gateways, so a ping through the tunnel is answered by whichever node is active. The VIP
//! (10.95.0.10) is the tunnel's local address on both nodes' configurations; both list it in
//! `[daemon] listen` (tandemd binds with IP_FREEBIND) and it is configured on one node at a time
//! (`move_vip`, or keepalived: `start_keepalived` runs `examples/ha/keepalived.conf.node{1,2}` with
//! `examples/ha/tandem-notify.sh`, which move both VIPs and order the takeover themselves). The lan
//! segment joins only the two gateways: it carries the second VRRP instance of keepalived's sync
//! group (the protected hosts' gateway address), nothing routes through it.
//!
//! Each node's tandemd runs under its own process name (a symlink to the binary, named per run:
//! `/proc/PID/comm` is the first 15 bytes of the name exec'd), because keepalived's
//! `track_process` matches by name and every namespace shares the host's PID namespace.
//! Everything is removed when the `Cluster` drops, even when a test fails: keepalived first (by
//! the PIDs started, its `/run/keepalived/NS/` directories too), then the processes and namespaces.

use crate::charon::{Charon, CharonConfig, IkeSa};
use crate::netns::{must, unique_tag, Netns};
use crate::probe::{parse_ping, PingResult};
use crate::tandemd::{bin_dir, TandemConf, Tandemd};
use crate::timestamp::rfc3339_epoch;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const PEER_WAN: &str = "10.95.0.1";
pub const VIP: &str = "10.95.0.10";
pub const GW_WAN: [&str; 2] = ["10.95.0.11", "10.95.0.12"];
pub const WAN_PREFIX: u8 = 24;
pub const SYNC: [&str; 2] = ["10.96.0.1", "10.96.0.2"];
/// The lan segment: the second VIP of keepalived's sync group and each gateway's own address.
pub const LAN_VIP: &str = "10.97.0.10";
pub const GW_LAN: [&str; 2] = ["10.97.0.11", "10.97.0.12"];
pub const LAN_PREFIX: u8 = 24;
/// keepalived's sync group in `examples/ha/` (the notify script's `--group`): tandem's
/// `listen-ha-group`.
pub const HA_GROUP: &str = "TANDEM";
/// The cluster's protected host address (on lo of both gateways) and the peer's.
pub const CLUSTER_INNER: &str = crate::topo::LEFT_INNER4;
pub const PEER_INNER: &str = crate::topo::RIGHT_INNER4;

/// Where `Cluster::start_nodes_toml`'s configuration names the node's control socket.
pub const SOCKET_PLACEHOLDER: &str = "@SOCKET@";

/// The namespaces and links. `gw[0]` is node 1, `gw[1]` node 2.
pub struct Cluster {
    pub peer: Netns,
    pub gw: [Netns; 2],
    pub wan: Netns,
    /// The peer's interface on the wan bridge.
    pub peer_if: String,
    /// Each gateway's interface on the wan bridge (where the VIP goes).
    pub gw_if: [String; 2],
    /// Each gateway's end of the sync link.
    pub sync_if: [String; 2],
    /// Each gateway's interface on the lan bridge (where the LAN VIP goes).
    pub lan_if: [String; 2],
    /// Each node's tandemd process name (comm), unique to this run.
    pub process_name: [String; 2],
    nodes: Option<Nodes>,
    keepalived: [Option<Keepalived>; 2],
    /// tandemd's `--log-level` for the nodes ("debug" unless `set_log_level`).
    log_level: String,
}

/// What `start_nodes` set up, for restarting a node with the same key, pins and configuration.
struct Nodes {
    conf: TandemConf,
    /// A whole configuration instead of `conf` (`start_nodes_toml`), its socket path written as
    /// `SOCKET_PLACEHOLDER`.
    toml: Option<String>,
    ha_extra: String,
    dirs: [PathBuf; 2],
    keys: [PathBuf; 2],
    pins: [String; 2],
}

/// A keepalived started by `Cluster::start_keepalived` (the parent: `-n`, it stays in the
/// foreground; its VRRP child's PID is in `vrrp_pid_file`).
pub struct Keepalived {
    pub pid: u32,
    pub conf: PathBuf,
    /// Its console log (`-l -D`).
    pub log: PathBuf,
    /// The notify script's log (`--log-file`): one line per transition, epoch timestamps.
    pub notify_log: PathBuf,
    vrrp_pid_file: PathBuf,
}

fn veth(a: &str, b: &str) {
    must("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
}

fn move_link(dev: &str, ns: &Netns) {
    must("ip", &["link", "set", dev, "netns", &ns.name]);
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::with_prefix("tha")
    }

    /// As `new`, with namespaces named `{prefix}{tag}P`, `W`, `A` and `B` (a benchmark's own
    /// prefix tells its namespaces from the tests' in `ip netns list`).
    pub fn with_prefix(prefix: &str) -> Cluster {
        let tag = unique_tag();
        let peer = Netns::new(format!("{prefix}{tag}P"));
        let wan = Netns::new(format!("{prefix}{tag}W"));
        let gw = [Netns::new(format!("{prefix}{tag}A")), Netns::new(format!("{prefix}{tag}B"))];
        for br in ["wanbr", "lanbr"] {
            wan.ip(&["link", "add", "name", br, "type", "bridge"]);
            wan.ip(&["link", "set", br, "up"]);
        }
        // One veth per host on the bridge: HOST side `h{tag}{x}`, bridge side `h{tag}{x}w`.
        let peer_if = format!("h{tag}p");
        let gw_if = [format!("h{tag}a"), format!("h{tag}b")];
        let lan_if = [format!("h{tag}l"), format!("h{tag}m")];
        for (dev, ns, br) in [
            (&peer_if, &peer, "wanbr"),
            (&gw_if[0], &gw[0], "wanbr"),
            (&gw_if[1], &gw[1], "wanbr"),
            (&lan_if[0], &gw[0], "lanbr"),
            (&lan_if[1], &gw[1], "lanbr"),
        ] {
            let port = format!("{dev}w");
            veth(dev, &port);
            move_link(dev, ns);
            move_link(&port, &wan);
            wan.ip(&["link", "set", &port, "master", br]);
            wan.ip(&["link", "set", &port, "up"]);
        }
        let p = WAN_PREFIX;
        peer.ip(&["addr", "add", &format!("{PEER_WAN}/{p}"), "dev", &peer_if]);
        peer.ip(&["link", "set", &peer_if, "up"]);
        peer.ip(&["addr", "add", &format!("{PEER_INNER}/32"), "dev", "lo"]);
        // The sync link: its own veth between the gateways.
        let sync_if = [format!("h{tag}s"), format!("h{tag}t")];
        veth(&sync_if[0], &sync_if[1]);
        for (i, ns) in gw.iter().enumerate() {
            move_link(&sync_if[i], ns);
            ns.ip(&["addr", "add", &format!("{}/{p}", GW_WAN[i]), "dev", &gw_if[i]]);
            ns.ip(&["link", "set", &gw_if[i], "up"]);
            ns.ip(&["addr", "add", &format!("{}/30", SYNC[i]), "dev", &sync_if[i]]);
            ns.ip(&["link", "set", &sync_if[i], "up"]);
            ns.ip(&["addr", "add", &format!("{CLUSTER_INNER}/32"), "dev", "lo"]);
            ns.ip(&["addr", "add", &format!("{}/{LAN_PREFIX}", GW_LAN[i]), "dev", &lan_if[i]]);
            ns.ip(&["link", "set", &lan_if[i], "up"]);
        }
        let process_name = [format!("tdm{tag}-n1"), format!("tdm{tag}-n2")];
        for n in &process_name {
            assert!(n.len() <= 15, "process name {n:?} is longer than a comm (15 bytes)");
        }
        Cluster {
            peer,
            gw,
            wan,
            peer_if,
            gw_if,
            sync_if,
            lan_if,
            process_name,
            nodes: None,
            keepalived: [None, None],
            log_level: "debug".into(),
        }
    }

    /// tandemd's `--log-level` for the nodes started from now on (benchmarks log warnings only).
    pub fn set_log_level(&mut self, level: &str) {
        self.log_level = level.to_string();
    }

    /// The MAC address of a gateway's wan interface.
    pub fn gw_mac(&self, i: usize) -> String {
        let out = self.gw[i].ip(&["-j", "link", "show", "dev", &self.gw_if[i]]);
        let v: Value = serde_json::from_str(&out).expect("ip -j link");
        v[0]["address"].as_str().expect("link address").to_string()
    }

    /// Which gateways have the VIP configured.
    pub fn vip_on(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| {
                let out = self.gw[i].ip(&["-4", "-o", "addr", "show", "dev", &self.gw_if[i]]);
                out.contains(&format!(" {VIP}/"))
            })
            .collect()
    }

    /// Which gateways have the LAN VIP configured.
    pub fn lan_vip_on(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| {
                let out = self.gw[i].ip(&["-4", "-o", "addr", "show", "dev", &self.lan_if[i]]);
                out.contains(&format!(" {LAN_VIP}/"))
            })
            .collect()
    }

    /// Put the VIP on gateway `to`: removed from `from` first (what keepalived does on a node that
    /// is still alive; a dead node's namespace keeps its addresses, so it is removed there too),
    /// then added on `to`, and the peer's neighbour entry pointed at `to` at once (what the
    /// gratuitous ARP of keepalived achieves).
    pub fn move_vip(&self, from: Option<usize>, to: usize) {
        let vip = format!("{VIP}/{WAN_PREFIX}");
        if let Some(f) = from {
            self.gw[f].ip(&["addr", "del", &vip, "dev", &self.gw_if[f]]);
        }
        self.gw[to].ip(&["addr", "add", &vip, "dev", &self.gw_if[to]]);
        let mac = self.gw_mac(to);
        self.peer.ip(&["neigh", "replace", VIP, "lladdr", &mac, "dev", &self.peer_if, "nud", "reachable"]);
    }

    /// Move the VIP from gateway `from` to `to` make-before-break, as a VRRP preemption does: on
    /// `to` first, the peer's neighbour entry pointed at it, then off `from`. For a planned
    /// switchover, where both nodes can forward for a moment.
    pub fn move_vip_make_before_break(&self, from: usize, to: usize) {
        let vip = format!("{VIP}/{WAN_PREFIX}");
        self.gw[to].ip(&["addr", "add", &vip, "dev", &self.gw_if[to]]);
        let mac = self.gw_mac(to);
        self.peer.ip(&["neigh", "replace", VIP, "lladdr", &mac, "dev", &self.peer_if, "nud", "reachable"]);
        self.gw[from].ip(&["addr", "del", &vip, "dev", &self.gw_if[from]]);
    }

    /// Start both nodes from one configuration (`conf`: everything but `[ha]` and the socket is the
    /// same on both, as the cluster digest requires). Node keys come from `tandemctl ha keygen` in
    /// each node's directory, pins cross-pasted. `roles`: each node's `initial-role`.
    /// `ha_extra`: more `[ha]` lines for both (e.g. `oseq-shift = 4096`).
    pub fn start_nodes(&mut self, conf: &TandemConf, roles: [&str; 2], ha_extra: &str) -> [Tandemd; 2] {
        self.prepare_nodes(conf.clone(), None, ha_extra);
        [self.start_node(0, roles[0]), self.start_node(1, roles[1])]
    }

    /// As `start_nodes`, from a whole configuration (everything but `[ha]`) instead of a
    /// `TandemConf`; `toml` writes the control socket's path as `SOCKET_PLACEHOLDER`. For peers
    /// that `TandemConf` cannot describe (`load_peer`: any identity, one policy for many tunnels).
    pub fn start_nodes_toml(&mut self, toml: &str, roles: [&str; 2], ha_extra: &str) -> [Tandemd; 2] {
        assert!(toml.contains(SOCKET_PLACEHOLDER), "the configuration has no {SOCKET_PLACEHOLDER}");
        self.prepare_nodes(TandemConf::left("", "", ""), Some(toml.to_string()), ha_extra);
        [self.start_node(0, roles[0]), self.start_node(1, roles[1])]
    }

    /// Node directories, keys (`tandemctl ha keygen`) and cross-pasted pins.
    fn prepare_nodes(&mut self, conf: TandemConf, toml: Option<String>, ha_extra: &str) {
        let dirs = [Tandemd::dir_for(&self.gw[0]), Tandemd::dir_for(&self.gw[1])];
        let keys = [dirs[0].join("node.pem"), dirs[1].join("node.pem")];
        let pins = [keygen(&keys[0]), keygen(&keys[1])];
        self.nodes = Some(Nodes { conf, toml, ha_extra: ha_extra.to_string(), dirs, keys, pins });
    }

    /// Node `i`'s directory (its configuration, key, socket, logs, keepalived's files).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.nodes.as_ref().expect("start_nodes first").dirs[i].clone()
    }

    /// Node `i`'s tandemd control socket.
    pub fn node_socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("tandemd.sock")
    }

    /// Start (or restart, after `kill_node`) node `i`'s tandemd with `initial-role = role`, from
    /// what `start_nodes` set up. The log of an earlier run is kept as `tandemd.log.N`.
    pub fn start_node(&mut self, i: usize, role: &str) -> Tandemd {
        let toml = self.node_toml(i, role);
        let dir = self.node_dir(i);
        let log = dir.join("tandemd.log");
        if log.exists() {
            let kept = (1..).map(|k| dir.join(format!("tandemd.log.{k}"))).find(|p| !p.exists());
            std::fs::rename(&log, kept.expect("a free name")).expect("keep the old tandemd log");
        }
        let name = self.process_name[i].clone();
        let level = self.log_level.clone();
        start_tandemd_as(&mut self.gw[i], dir, &toml, &name, &level)
    }

    /// Node `i`'s whole configuration file: the nodes' common part and its `[ha]` table.
    fn node_toml(&self, i: usize, role: &str) -> String {
        let n = self.nodes.as_ref().expect("start_nodes first");
        let socket = self.node_socket(i).to_str().expect("utf-8 path").to_string();
        let base = match &n.toml {
            Some(t) => t.replace(SOCKET_PLACEHOLDER, &socket),
            None => {
                let mut c = n.conf.clone();
                c.socket = socket;
                c.toml()
            }
        };
        let ha = ha_toml(i as u8 + 1, SYNC[i], SYNC[1 - i], role, &n.keys[i], &n.pins[1 - i], &n.ha_extra);
        format!("{base}\n{ha}")
    }

    /// Change the nodes' common configuration (as `start_nodes_toml`: everything but `[ha]`, the
    /// socket as `SOCKET_PLACEHOLDER`). Nothing is applied: `reload_node` or `start_node` does.
    pub fn set_nodes_toml(&mut self, toml: &str) {
        assert!(toml.contains(SOCKET_PLACEHOLDER), "the configuration has no {SOCKET_PLACEHOLDER}");
        self.nodes.as_mut().expect("start_nodes first").toml = Some(toml.to_string());
    }

    /// Write the current configuration (`set_nodes_toml`) to running node `i`'s file and apply it
    /// with `tandemctl reload`. `role`: the `initial-role` written (a reload does not change it).
    /// Returns tandemctl's output.
    pub fn reload_node(&self, i: usize, t: &Tandemd, role: &str) -> std::process::Output {
        std::fs::write(t.dir.join("tandem.toml"), self.node_toml(i, role)).expect("write config");
        t.ctl(&["--json", "reload"])
    }

    /// `kill -9` a node's tandemd (by the PID we started; checked to be that node's tandemd),
    /// await its death (a zombie: it holds no socket any more), and reap it.
    pub fn kill_node(&mut self, i: usize, t: &Tandemd) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", t.pid)).unwrap_or_default();
        assert_eq!(comm.trim(), self.process_name[i], "PID {} is not node {}'s tandemd", t.pid, i + 1);
        must("kill", &["-KILL", &t.pid.to_string()]);
        let dead = crate::wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            // /proc/PID/stat: "PID (comm) STATE ..."; gone or Z once the kernel is done with it.
            std::fs::read_to_string(format!("/proc/{}/stat", t.pid))
                .ok()
                .is_none_or(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        });
        assert!(dead, "tandemd {} did not die on SIGKILL", t.pid);
        self.gw[i].stop(t.pid, Duration::from_secs(2));
    }

    /// keepalived's configuration for node `i`: `examples/ha/keepalived.conf.node{i+1}` with this
    /// cluster's interface names, the node's tandemd process name, socket, tandemctl, and the notify
    /// script copied into the node directory (with a `--log-file`). Each substituted value must be
    /// in the example, so the example and the test cannot drift apart silently.
    pub fn keepalived_conf(&self, i: usize) -> String {
        let file = examples_ha().join(format!("keepalived.conf.node{}", i + 1));
        let mut conf =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let dir = self.node_dir(i);
        let tandemctl = std::fs::canonicalize(bin_dir().join("tandemctl")).expect("tandemctl built");
        let notify = format!(
            "{} --log-file {} ",
            dir.join("tandem-notify.sh").display(),
            dir.join("notify.log").display()
        );
        for p in [&dir, &tandemctl] {
            // keepalived splits the notify and script lines at spaces.
            assert!(
                !p.to_string_lossy().contains(char::is_whitespace),
                "a path with spaces: {}",
                p.display()
            );
        }
        let subst: [(&str, String); 7] = [
            ("eth0", self.gw_if[i].clone()),
            ("eth1", self.lan_if[i].clone()),
            ("process tandemd\n", format!("process {}\n", self.process_name[i])),
            ("/usr/local/sbin/tandem-notify.sh ", notify),
            ("/usr/local/bin/tandemctl", tandemctl.display().to_string()),
            ("/run/tandem/tandemd.sock", self.node_socket(i).display().to_string()),
            ("/run/tandem/keepalived-notify.fifo", dir.join("notify.fifo").display().to_string()),
        ];
        for (from, to) in &subst {
            assert!(
                conf.contains(from),
                "{} has no {from:?} any more (testbed/src/cluster.rs substitutes it)",
                file.display()
            );
            conf = conf.replace(from, to);
        }
        for must_have in [
            format!("{VIP}/{WAN_PREFIX} dev {}", self.gw_if[i]),
            format!("{LAN_VIP}/{LAN_PREFIX} dev {}", self.lan_if[i]),
            format!("--group {HA_GROUP} "),
            format!("vrrp_sync_group {HA_GROUP} "),
            "vrrp_notify_fifo_script ".to_string(),
        ] {
            assert!(conf.contains(&must_have), "{}: no {must_have:?}", file.display());
        }
        conf
    }

    /// Start keepalived for node `i` in its namespace, as `keepalived --namespace=NS` (the
    /// process connector behind `track_process` refuses a keepalived under `ip netns exec`), with
    /// its files in the node directory: `-n -l -D -P`, per-instance pid files. Starts once both
    /// interfaces are oper-UP (an instance on a down interface starts in FAULT) and returns once
    /// keepalived reports "Startup complete". The node's tandemd must be running: it is tracked.
    pub fn start_keepalived(&mut self, i: usize) {
        assert!(self.keepalived[i].is_none(), "keepalived of node {} runs already", i + 1);
        for dev in [&self.gw_if[i], &self.lan_if[i]] {
            let up = crate::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                let out = self.gw[i].ip(&["-j", "link", "show", "dev", dev]);
                serde_json::from_str::<Value>(&out).is_ok_and(|v| v[0]["operstate"] == "UP")
            });
            assert!(up, "{dev} of node {} is not oper-UP", i + 1);
        }
        let dir = self.node_dir(i);
        // A copy in the node directory: keepalived (enable_script_security) refuses a script any
        // part of whose path a non-root user can write, whatever the checkout's directories are.
        std::fs::copy(examples_ha().join("tandem-notify.sh"), dir.join("tandem-notify.sh"))
            .expect("copy examples/ha/tandem-notify.sh");
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, self.keepalived_conf(i)).expect("write keepalived.conf");
        // keepalived's own check of the configuration, in the namespace (its interfaces exist).
        let check = Command::new("keepalived")
            .arg(format!("--namespace={}", self.gw[i].name))
            .arg("-t")
            .arg("-f")
            .arg(&conf)
            .output()
            .expect("run keepalived -t");
        assert!(
            check.status.success(),
            "keepalived -t rejects {} ({}): {}{}",
            conf.display(),
            check.status,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join("keepalived.log");
        let notify_log = dir.join("notify.log");
        let vrrp_pid_file = dir.join("keepalived-vrrp.pid");
        let out = std::fs::File::create(&log).expect("keepalived log");
        let mut cmd = Command::new("keepalived");
        cmd.arg(format!("--namespace={}", self.gw[i].name))
            .args(["-n", "-l", "-D", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(&vrrp_pid_file)
            .arg("-c")
            .arg(dir.join("keepalived-checkers.pid"))
            .stdout(out.try_clone().expect("keepalived log"))
            .stderr(out);
        let pid = self.gw[i].spawn(cmd);
        let ka = Keepalived { pid, conf, log, notify_log, vrrp_pid_file };
        let started = crate::wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            std::fs::read_to_string(&ka.log).is_ok_and(|l| l.contains("Startup complete"))
        });
        let text = std::fs::read_to_string(&ka.log).unwrap_or_default();
        self.keepalived[i] = Some(ka);
        assert!(started, "keepalived of node {} did not start:\n{}", i + 1, tail(&text, 40));
    }

    /// Stop node `i`'s keepalived (SIGTERM: it removes its VIPs and sends a priority-0 advert),
    /// and its VRRP child should it outlive the parent (checked to be ours by its command line).
    pub fn stop_keepalived(&mut self, i: usize) {
        let Some(ka) = self.keepalived[i].take() else { return };
        self.gw[i].stop(ka.pid, Duration::from_secs(3));
        let child =
            std::fs::read_to_string(&ka.vrrp_pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = child {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(ka.conf.to_str().unwrap_or("\0"));
            if ours {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
            }
        }
    }

    /// Node `i`'s keepalived log ("" before `start_keepalived`).
    pub fn keepalived_log(&self, i: usize) -> String {
        self.keepalived[i].as_ref().and_then(|k| std::fs::read_to_string(&k.log).ok()).unwrap_or_default()
    }

    /// Node `i`'s notify script log.
    pub fn notify_log(&self, i: usize) -> String {
        self.nodes
            .as_ref()
            .and_then(|n| std::fs::read_to_string(n.dirs[i].join("notify.log")).ok())
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..2 {
            self.stop_keepalived(i);
        }
        // keepalived --namespace=NS keeps its run files in /run/keepalived/NS/ on the host.
        for ns in &self.gw {
            let _ = std::fs::remove_dir_all(Path::new("/run/keepalived").join(&ns.name));
        }
        let _ = std::fs::remove_dir(Path::new("/run/keepalived"));
    }
}

/// `examples/ha/` of this checkout.
pub fn examples_ha() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ha")
}

/// As `Tandemd::start`, through a symlink named `name` in `dir` to the built tandemd, so the
/// process's name (comm) is `name`; checked after the start.
fn start_tandemd_as(ns: &mut Netns, dir: PathBuf, config_toml: &str, name: &str, log_level: &str) -> Tandemd {
    let bin = bin_dir().join("tandemd");
    let bin = std::fs::canonicalize(&bin).unwrap_or_else(|_| {
        panic!("{} is missing: build with `cargo build --workspace --bins` first", bin.display())
    });
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&bin, &link).expect("symlink tandemd");
    let conf = dir.join("tandem.toml");
    std::fs::write(&conf, config_toml).expect("write config");
    let socket = dir.join("tandemd.sock");
    let mut cmd = ns.command(link.to_str().expect("utf-8 path"));
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
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), name, "tandemd started as {name} runs as {comm:?}");
    t
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

/// The cluster as one tandem site, as TandemConf: the left side of the usual tests (identities,
/// selectors 10.99.10.0/24 <-> 10.99.20.0/24), its tunnel endpoint the VIP, towards the peer.
pub fn cluster_conf(ike: &str, esp: &str) -> TandemConf {
    let mut c = TandemConf::left("", ike, esp);
    c.listen = vec![VIP.into()];
    c.local_address = VIP.into();
    c.remote_address = Some(PEER_WAN.into());
    c
}

/// charon on the peer, as the right side of the usual tests, towards the VIP.
pub fn peer_conf(ike: &str, esp: &str) -> CharonConfig {
    let mut c = CharonConfig::right(ike, esp);
    c.local_addr = PEER_WAN.into();
    c.remote_addr = VIP.into();
    c
}

/// An `[ha]` table.
pub fn ha_toml(
    node_id: u8,
    local: &str,
    remote: &str,
    role: &str,
    key_file: &Path,
    peer_pin: &str,
    extra: &str,
) -> String {
    format!(
        "[ha]\nnode-id = {node_id}\nlocal-address = \"{local}\"\nremote-address = \"{remote}\"\ninitial-role = \"{role}\"\nkey-file = \"{}\"\npeer-pin = \"{peer_pin}\"\n{extra}\n",
        key_file.display()
    )
}

/// `tandemctl ha keygen --out FILE`: writes the node key, returns its pin (64 hex digits).
pub fn keygen(out: &Path) -> String {
    let o = Command::new(bin_dir().join("tandemctl"))
        .args(["ha", "keygen", "--out"])
        .arg(out)
        .output()
        .expect("run tandemctl ha keygen");
    assert!(o.status.success(), "tandemctl ha keygen: {}", String::from_utf8_lossy(&o.stderr));
    let pin = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
        "tandemctl ha keygen printed {pin:?}, not a 64-hex-digit pin"
    );
    pin
}

/// `tandemctl ha status --json` (GET /v1/ha).
pub fn ha_status(t: &Tandemd) -> Value {
    let o = t.ctl(&["--json", "ha", "status"]);
    assert!(o.status.success(), "tandemctl ha status: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("ha status JSON")
}

/// `tandemctl ha set-state STATE`; returns the status it answers with (error: stderr).
pub fn ha_set_state(t: &Tandemd, state: &str) -> Result<Value, String> {
    let o = t.ctl(&["--json", "ha", "set-state", state]);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("ha set-state JSON: {e}"))
}

/// Which node is active, when exactly one is and the other is standby (None otherwise). Tests
/// driven by keepalived ask this rather than assume it: at 10 ms adverts on a loaded 2-core host,
/// a BACKUP that misses three adverts becomes MASTER, and at equal priority the higher address
/// (node 2) then keeps the VIPs (seen in CI: node 2 active before the tunnel came up).
pub fn sole_active(nodes: [&Tandemd; 2]) -> Option<usize> {
    let roles = nodes.map(|t| ha_status(t)["role"].as_str().unwrap_or("").to_string());
    let a = roles.iter().position(|r| r == "active")?;
    (roles[1 - a] == "standby").then_some(a)
}

/// Whether gateway `i` routes `dst` into its TUN (`tandem0`): `ip route get` for a packet
/// without tandem's fwmark, so through tandem's policy-routing table as protected traffic is.
pub fn routed_into_tun(cl: &Cluster, i: usize, dst: &str) -> bool {
    let out = cl.gw[i].exec("ip", &["-4", "route", "get", dst]);
    String::from_utf8_lossy(&out.stdout).contains(" dev tandem0 ")
}

pub fn hex64(v: &Value) -> String {
    format!("{:016x}", v.as_u64().unwrap_or(0))
}

pub fn hex_u32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or(0)
}

/// The SAs of a settled tunnel between charon and one node, as both agree on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sas {
    /// charon's (initiator, responder) IKE SPIs, hex.
    pub ike: (String, String),
    /// tandem's (inbound, outbound) CHILD SA SPIs.
    pub child: (u32, u32),
}

/// charon's IKE SA and its one live (not DELETED) CHILD SA: (IKE SPIs, charon's CHILD (in, out)).
pub fn charon_view(c: &Charon) -> Option<(IkeSa, (u32, u32))> {
    let sas = c.list_sas();
    let [sa] = &sas[..] else { return None };
    let live: Vec<_> = sa.children.iter().filter(|c| c.state != "DELETED").collect();
    let [child] = &live[..] else { return None };
    let spis = (hex_u32(&child.spi_in), hex_u32(&child.spi_out));
    Some((sa.clone(), spis))
}

/// tandem node `t` lists exactly one established IKE SA and one CHILD SA, charon exactly one IKE SA
/// with one CHILD SA that is not DELETED, and the SPIs agree crosswise. None otherwise.
pub fn settled(t: &Tandemd, c: &Charon) -> Option<Sas> {
    let (ike, child) = (t.ike_sas(), t.child_sas());
    let ([t_sa], [t_child]) = (&ike[..], &child[..]) else { return None };
    let (c_sa, (c_in, c_out)) = charon_view(c)?;
    let c_child = c_sa.children.iter().find(|x| hex_u32(&x.spi_in) == c_in)?;
    let t_spis =
        (t_child["spi_in"].as_u64().unwrap_or(0) as u32, t_child["spi_out"].as_u64().unwrap_or(0) as u32);
    let agree = t_sa["state"] == "established"
        && c_sa.established()
        && c_child.state == "INSTALLED"
        && hex64(&t_sa["spi_i"]) == c_sa.spi_i
        && hex64(&t_sa["spi_r"]) == c_sa.spi_r
        && t_spis == (c_out, c_in);
    agree.then(|| Sas { ike: (c_sa.spi_i.clone(), c_sa.spi_r.clone()), child: t_spis })
}

/// Whether tandem's dataplane still has either direction of the CHILD SA `child` (in, out).
pub fn in_dataplane(t: &Tandemd, child: (u32, u32)) -> bool {
    t.ipsec_sas().iter().any(|s| {
        let spi = s["spi"].as_u64().unwrap_or(0) as u32;
        (s["direction"] == "in" && spi == child.0) || (s["direction"] == "out" && spi == child.1)
    })
}

/// Whether charon still lists the CHILD SA whose tandem-side SPIs are `child` (in, out).
pub fn at_charon(c: &Charon, child: (u32, u32)) -> bool {
    c.list_sas()
        .iter()
        .flat_map(|s| s.children.clone())
        .any(|x| hex_u32(&x.spi_out) == child.0 || hex_u32(&x.spi_in) == child.1)
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A `ping -D -O` running in the background until `stop` (interval as short as 2 ms, as root), its
/// output in a file: one timestamped line per reply, so the largest gap can be measured.
pub struct BackgroundPing {
    pid: u32,
    file: PathBuf,
}

impl BackgroundPing {
    pub fn start(ns: &mut Netns, src: &str, dst: &str, interval: Duration) -> BackgroundPing {
        let file = std::env::temp_dir().join(format!("tandem-ping-{}-{}.txt", ns.name, unique_tag()));
        let interval = format!("{:.3}", interval.as_secs_f64());
        let mut cmd = ns.command("ping");
        cmd.args(["-4", "-n", "-D", "-O", "-W", "1", "-i", &interval, "-I", src, dst])
            .stdout(std::fs::File::create(&file).expect("ping output file"))
            .stderr(std::process::Stdio::null());
        let pid = ns.spawn(cmd);
        BackgroundPing { pid, file }
    }

    /// SIGINT (ping prints its summary and exits), await the summary, reap the process.
    pub fn stop(self, ns: &mut Netns) -> PingResult {
        let _ = Command::new("kill").args(["-INT", &self.pid.to_string()]).status();
        let done = crate::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            std::fs::read_to_string(&self.file).is_ok_and(|s| s.contains(" packets transmitted, "))
        });
        ns.stop(self.pid, Duration::from_secs(1));
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let _ = std::fs::remove_file(&self.file);
        assert!(done, "background ping did not print its summary:\n{}", tail(&text, 20));
        parse_ping(&text)
    }
}

/// The replies of a `ping -D` run: (icmp_seq, arrival time in seconds), in arrival order.
pub fn reply_times(r: &PingResult) -> Vec<(u32, f64)> {
    r.output
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok()?;
            let seq = l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse::<u32>().ok()?;
            Some((seq, ts))
        })
        .collect()
}

/// The largest time between two consecutive replies: (gap, icmp_seq before it, icmp_seq after it).
pub fn largest_gap(r: &PingResult) -> Option<(Duration, u32, u32)> {
    reply_times(r)
        .windows(2)
        .map(|w| (Duration::from_secs_f64((w[1].1 - w[0].1).max(0.0)), w[0].0, w[1].0))
        .max_by_key(|g| g.0)
}

/// `ip -ts -o monitor address` running in a namespace until `stop`: when addresses (the VIPs)
/// came and went there, to the microsecond.
pub struct AddrMonitor {
    pid: u32,
    file: PathBuf,
}

/// One address event of an `AddrMonitor`.
#[derive(Debug, Clone)]
pub struct AddrEvent {
    /// Seconds since the epoch.
    pub at: f64,
    pub added: bool,
    /// The address with its prefix length, e.g. `10.95.0.10/24`.
    pub addr: String,
}

impl AddrMonitor {
    pub fn start(ns: &mut Netns) -> AddrMonitor {
        let file = std::env::temp_dir().join(format!("tandem-addrmon-{}-{}.txt", ns.name, unique_tag()));
        let mut cmd = ns.command("ip");
        cmd.env("TZ", "UTC")
            .args(["-ts", "-o", "monitor", "address"])
            .stdout(std::fs::File::create(&file).expect("monitor output file"))
            .stderr(Stdio::null());
        let pid = ns.spawn(cmd);
        AddrMonitor { pid, file }
    }

    pub fn stop(self, ns: &mut Netns) -> Vec<AddrEvent> {
        ns.stop(self.pid, Duration::from_secs(1));
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let _ = std::fs::remove_file(&self.file);
        text.lines().filter_map(parse_addr_event).collect()
    }
}

/// `[2026-12-03T15:43:32.727713] [Deleted ]3: dev    inet 10.95.0.10/24 ...` (UTC).
fn parse_addr_event(line: &str) -> Option<AddrEvent> {
    let (ts, rest) = line.strip_prefix('[')?.split_once(']')?;
    let at = rfc3339_epoch(ts)?;
    let rest = rest.trim_start();
    let added = !rest.starts_with("Deleted");
    let mut words = rest.split_whitespace();
    words.find(|w| *w == "inet" || *w == "inet6")?;
    Some(AddrEvent { at, added, addr: words.next()?.to_string() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn addr_event_parses() {
        let e = super::parse_addr_event(
            "[2026-12-03T15:43:32.727713] Deleted 1: lo    inet 10.255.255.1/32 scope global lo\\       valid_lft forever",
        )
        .unwrap();
        assert!(!e.added);
        assert_eq!(e.addr, "10.255.255.1/32");
        // date -u -d 2026-12-03T15:43:32 +%s
        assert!((e.at - 1_796_312_612.727_713).abs() < 1e-6, "{}", e.at);
    }
}

//! An active/standby tandem cluster (docs/ha.md) facing one remote peer, in network namespaces:
//!
//! ```text
//!   peer (charon)              wan (bridge)              gw1 (tandemd, node 1)
//!   10.95.0.1  ---------------- br ---------------------- 10.95.0.11 (+ VIP 10.95.0.10 while it serves)
//!   lo: 10.99.20.1              |                          lo: 10.99.10.1     |
//!                               +---------------------- gw2 (tandemd, node 2) | sync link (veth)
//!                                                          10.95.0.12          | 10.96.0.1 <-> 10.96.0.2
//!                                                          lo: 10.99.10.1 -----+
//! ```
//!
//! The cluster's protected address (tandem's usual left inner address, 10.99.10.1) is on `lo` of
//! both gateways, so a ping through the tunnel is answered by whichever node is active. The VIP
//! (10.95.0.10) is the tunnel's local address on both nodes' configurations; both list it in
//! `[daemon] listen` (tandemd binds with IP_FREEBIND) and it is configured on one node at a time
//! (`move_vip`). Everything is removed when the `Cluster` drops, even when a test fails.

use crate::charon::{Charon, CharonConfig, IkeSa};
use crate::netns::{must, unique_tag, Netns};
use crate::probe::{parse_ping, PingResult};
use crate::tandemd::{bin_dir, TandemConf, Tandemd};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const PEER_WAN: &str = "10.95.0.1";
pub const VIP: &str = "10.95.0.10";
pub const GW_WAN: [&str; 2] = ["10.95.0.11", "10.95.0.12"];
pub const WAN_PREFIX: u8 = 24;
pub const SYNC: [&str; 2] = ["10.96.0.1", "10.96.0.2"];
/// The cluster's protected host address (on lo of both gateways) and the peer's.
pub const CLUSTER_INNER: &str = crate::topo::LEFT_INNER4;
pub const PEER_INNER: &str = crate::topo::RIGHT_INNER4;

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
}

fn veth(a: &str, b: &str) {
    must("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
}

fn move_link(dev: &str, ns: &Netns) {
    must("ip", &["link", "set", dev, "netns", &ns.name]);
}

impl Cluster {
    pub fn new() -> Cluster {
        let tag = unique_tag();
        let peer = Netns::new(format!("tha{tag}P"));
        let wan = Netns::new(format!("tha{tag}W"));
        let gw = [Netns::new(format!("tha{tag}A")), Netns::new(format!("tha{tag}B"))];
        wan.ip(&["link", "add", "name", "wanbr", "type", "bridge"]);
        wan.ip(&["link", "set", "wanbr", "up"]);
        // One veth per host on the bridge: HOST side `h{tag}{x}`, bridge side `h{tag}{x}w`.
        let peer_if = format!("h{tag}p");
        let gw_if = [format!("h{tag}a"), format!("h{tag}b")];
        for (dev, ns) in [(&peer_if, &peer), (&gw_if[0], &gw[0]), (&gw_if[1], &gw[1])] {
            let port = format!("{dev}w");
            veth(dev, &port);
            move_link(dev, ns);
            move_link(&port, &wan);
            wan.ip(&["link", "set", &port, "master", "wanbr"]);
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
        }
        Cluster { peer, gw, wan, peer_if, gw_if, sync_if }
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

    /// Start both nodes from one configuration (`conf`: everything but `[ha]` and the socket is the
    /// same on both, as the cluster digest requires). Node keys come from `tandemctl ha keygen` in
    /// each node's directory, pins cross-pasted. `roles`: each node's `initial-role`.
    /// `ha_extra`: more `[ha]` lines for both (e.g. `oseq-shift = 4096`).
    pub fn start_nodes(&mut self, conf: &TandemConf, roles: [&str; 2], ha_extra: &str) -> [Tandemd; 2] {
        let dirs = [Tandemd::dir_for(&self.gw[0]), Tandemd::dir_for(&self.gw[1])];
        let keys = [dirs[0].join("node.pem"), dirs[1].join("node.pem")];
        let pins = [keygen(&keys[0]), keygen(&keys[1])];
        let toml = |i: usize| {
            let socket = dirs[i].join("tandemd.sock");
            let mut c = conf.clone();
            c.socket = socket.to_str().expect("utf-8 path").to_string();
            format!(
                "{}\n{}",
                c.toml(),
                ha_toml(i as u8 + 1, SYNC[i], SYNC[1 - i], roles[i], &keys[i], &pins[1 - i], ha_extra)
            )
        };
        let (t0, t1) = (toml(0), toml(1));
        let [g0, g1] = &mut self.gw;
        let a = Tandemd::start(g0, dirs[0].clone(), &t0);
        let b = Tandemd::start(g1, dirs[1].clone(), &t1);
        [a, b]
    }

    /// `kill -9` a node's tandemd (by the PID we started; checked to be tandemd), await its death
    /// (a zombie: it holds no socket any more), and reap it.
    pub fn kill_node(&mut self, i: usize, t: &Tandemd) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", t.pid)).unwrap_or_default();
        assert_eq!(comm.trim(), "tandemd", "PID {} is not our tandemd", t.pid);
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

//! The tunnels the dataplane benchmark compares, each set up on a fresh `netns::Pair` so every path
//! has the same topology: two gateway namespaces on one veth (10.99.1.1 / 10.99.1.2), the inner
//! hosts 10.99.10.1 (left) and 10.99.20.1 (right) as /32 addresses on `lo` of each gateway, and the
//! traffic between those inner addresses.

use super::{alive, ns_must, run_bounded, with_private_run};
use crate::charon::{Charon, CharonConfig, CHARON};
use crate::netns::{Netns, Pair};
use crate::tandemd::{bin_dir, TandemConf, Tandemd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const LEFT_INNER: &str = "10.99.10.1";
pub const RIGHT_INNER: &str = "10.99.20.1";
const IKE: &str = "aes256gcm16-prfsha256-x25519";
const ESP: &str = "aes256gcm16";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Veth,
    TandemUdp,
    TandemRaw,
    Strongswan,
    BoringtunDefault,
    BoringtunT1,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Veth,
        Kind::Strongswan,
        Kind::BoringtunDefault,
        Kind::BoringtunT1,
        Kind::TandemUdp,
        Kind::TandemRaw,
    ];

    /// The `--only` group it belongs to, and its own name (also accepted by `--only`).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Veth => "veth",
            Kind::TandemUdp | Kind::TandemRaw => "tandem",
            Kind::Strongswan => "strongswan",
            Kind::BoringtunDefault | Kind::BoringtunT1 => "boringtun",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Veth => "veth",
            Kind::TandemUdp => "tandem-udp",
            Kind::TandemRaw => "tandem-raw",
            Kind::Strongswan => "strongswan",
            Kind::BoringtunDefault => "boringtun",
            Kind::BoringtunT1 => "boringtun-t1",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Veth => "raw veth, no tunnel",
            Kind::TandemUdp => "tandemd to tandemd, ESP-in-UDP (`encap = true`)",
            Kind::TandemRaw => "tandemd to tandemd, raw ESP (`[dataplane] raw-esp`)",
            Kind::Strongswan => "strongSwan 5.9.8 kernel-libipsec to strongSwan",
            Kind::BoringtunDefault => "boringtun-cli 0.7.1, default (4 threads)",
            Kind::BoringtunT1 => "boringtun-cli 0.7.1, `--threads 1`",
        }
    }
}

/// A running path: the daemons (left, right) whose CPU is recorded, and what was checked.
pub struct Tunnel {
    pub daemons: Vec<u32>,
    /// What the setup observed (for example the SA's encapsulation), for the report.
    pub facts: Vec<String>,
    /// Temporary directories removed after the path.
    pub dirs: Vec<PathBuf>,
    /// The tandemd handles, for their SA counters after the run.
    pub tandemds: Vec<Tandemd>,
}

fn t(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Set up `kind` on `pair` and prove that a ping crosses it between the inner addresses.
/// `dirs` collects the temporary directories as they are made, so they are removed even when the
/// setup fails half way.
pub fn setup(kind: Kind, pair: &mut Pair, dirs: &mut Vec<PathBuf>) -> Result<Tunnel, String> {
    for ns in [&pair.left, &pair.right] {
        dirs.push(std::env::temp_dir().join(format!("tandem-charon-{}", ns.name)));
        dirs.push(std::env::temp_dir().join(format!("tandem-tandemd-{}", ns.name)));
        dirs.push(std::env::temp_dir().join(format!("tandem-bench-wg-{}", ns.name)));
    }
    let tun = match kind {
        Kind::Veth => {
            pair.left.ip(&["route", "add", "10.99.20.0/24", "via", "10.99.1.2", "src", LEFT_INNER]);
            pair.right.ip(&["route", "add", "10.99.10.0/24", "via", "10.99.1.1", "src", RIGHT_INNER]);
            Tunnel { daemons: vec![], facts: vec![], dirs: vec![], tandemds: vec![] }
        }
        Kind::Strongswan => strongswan(pair)?,
        Kind::BoringtunDefault => boringtun(pair, None)?,
        Kind::BoringtunT1 => boringtun(pair, Some(1))?,
        Kind::TandemUdp => tandem(pair, true)?,
        Kind::TandemRaw => tandem(pair, false)?,
    };
    let ok = crate::wait_until(t(15), Duration::from_millis(200), || {
        super::check_interrupt();
        ns_must(&pair.left, "ping", &["-n", "-c", "1", "-W", "1", "-I", LEFT_INNER, RIGHT_INNER], t(5))
            .is_ok()
    });
    if !ok {
        return Err(format!("no ping from {LEFT_INNER} to {RIGHT_INNER} through the path within 15 s"));
    }
    for &pid in &tun.daemons {
        if !alive(pid) {
            return Err(format!("daemon {pid} exited during setup"));
        }
    }
    Ok(tun)
}

fn strongswan(pair: &mut Pair) -> Result<Tunnel, String> {
    if !crate::wait_until(t(120), t(1), || {
        super::check_interrupt();
        Path::new(CHARON).exists()
    }) {
        return Err(format!("{CHARON} is not installed"));
    }
    let right = CharonConfig::right(IKE, ESP);
    let left = CharonConfig {
        local_addr: "10.99.1.1".into(),
        remote_addr: "10.99.1.2".into(),
        local_id: "a.test".into(),
        remote_id: "b.test".into(),
        local_ts: "10.99.10.0/24".into(),
        remote_ts: "10.99.20.0/24".into(),
        ..right.clone()
    };
    // Log level 0: no per-exchange logging while measuring.
    let cr = Charon::start_with(&mut pair.right, &right.swanctl_conf(), "install_routes = yes", 0);
    let cl = Charon::start_with(&mut pair.left, &left.swanctl_conf(), "install_routes = yes", 0);
    let out = cl.initiate();
    if !out.status.success() {
        return Err(format!(
            "swanctl --initiate failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            cl.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        ));
    }
    let sas = cl.list_sas();
    let installed = sas.iter().any(|s| s.established() && !s.installed_children().is_empty());
    if !installed {
        return Err(format!("no installed CHILD SA after initiate: {sas:?}"));
    }
    Ok(Tunnel {
        daemons: vec![cl.pid, cr.pid],
        facts: vec!["strongSwan: CHILD SA installed, ESP-in-UDP on 4500 (kernel-libipsec always encapsulates), TUN ipsec0 MTU 1400".into()],
        dirs: vec![cl.dir.clone(), cr.dir.clone()],
        tandemds: vec![],
    })
}

/// Where `cargo install --root target/bench-tools boringtun-cli` put the binary.
pub fn boringtun_bin() -> PathBuf {
    std::env::var_os("BORINGTUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("../bench-tools/bin/boringtun-cli"))
}

fn wg_key(args: &[&str], input: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut c = Command::new("wg");
    c.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("cannot run wg (apt-get install wireguard-tools): {e}"))?;
    if let Some(i) = input {
        child.stdin.take().expect("piped").write_all(i.as_bytes()).map_err(|e| e.to_string())?;
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("wg {args:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn boringtun(pair: &mut Pair, threads: Option<u32>) -> Result<Tunnel, String> {
    let bin = boringtun_bin();
    if !bin.exists() {
        return Err(format!("{} missing: scripts/bench installs it with cargo install", bin.display()));
    }
    let bin = bin.to_str().ok_or("non-UTF-8 path")?.to_string();
    let keys = [wg_key(&["genkey"], None)?, wg_key(&["genkey"], None)?];
    let pubs = [wg_key(&["pubkey"], Some(&keys[0]))?, wg_key(&["pubkey"], Some(&keys[1]))?];
    let mut daemons = Vec::new();
    let mut dirs = Vec::new();
    let sides = [
        (&mut pair.left, "10.99.1.2", "10.99.20.0/24", LEFT_INNER, 0usize),
        (&mut pair.right, "10.99.1.1", "10.99.10.0/24", RIGHT_INNER, 1usize),
    ];
    for (ns, peer, allowed, src, i) in sides {
        let dir = std::env::temp_dir().join(format!("tandem-bench-wg-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run/wireguard")).map_err(|e| e.to_string())?;
        dirs.push(dir.clone());
        let key = dir.join("private.key");
        std::fs::write(&key, &keys[i]).map_err(|e| e.to_string())?;
        let run = dir.join("run");
        let mut args = vec!["-f", "--disable-drop-privileges"];
        let th = threads.map(|n| n.to_string());
        if let Some(n) = th.as_deref() {
            args.extend(["--threads", n]);
        }
        args.push("wg0");
        let mut cmd = with_private_run(ns, &run, &bin, &args);
        cmd.stdout(std::fs::File::create(dir.join("stdout")).map_err(|e| e.to_string())?)
            .stderr(std::fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?);
        let pid = ns.spawn(cmd);
        daemons.push(pid);
        let up = crate::wait_until(t(10), Duration::from_millis(50), || {
            super::check_interrupt();
            dir.join("run/wireguard/wg0.sock").exists()
        });
        if !up {
            return Err(format!(
                "boringtun did not create its UAPI socket: {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            ));
        }
        let endpoint = format!("{peer}:51820");
        let key_s = key.to_str().ok_or("path")?;
        let wg_args = [
            "set",
            "wg0",
            "private-key",
            key_s,
            "listen-port",
            "51820",
            "peer",
            &pubs[1 - i],
            "endpoint",
            &endpoint,
            "allowed-ips",
            allowed,
        ];
        let o = run_bounded(with_private_run(ns, &run, "wg", &wg_args), t(10))?;
        if !o.status.success() {
            return Err(format!("wg set: {}", String::from_utf8_lossy(&o.stderr)));
        }
        ns.ip(&["link", "set", "wg0", "mtu", "1420", "up"]);
        ns.ip(&["route", "add", allowed, "dev", "wg0", "src", src]);
    }
    Ok(Tunnel {
        daemons,
        facts: vec![format!(
            "boringtun: WireGuard over UDP 51820, TUN wg0 MTU 1420, threads {}",
            threads.map_or("default (4)".to_string(), |n| n.to_string())
        )],
        dirs,
        tandemds: vec![],
    })
}

/// tandemd configuration for one side of the pair: the testbed's standard vpn `t` (left
/// 10.99.10.0/24 <-> right 10.99.20.0/24), AES-256-GCM, the TUN MTU of the other tunnels.
pub fn tandem_config(left: bool, socket: &Path, encap: bool) -> String {
    let socket = socket.display().to_string();
    let mut conf = TandemConf::left(&socket, IKE, ESP);
    conf.encap = Some(encap);
    conf.dataplane_extra =
        "enabled = true\ntun-mtu = 1400\noffload = true\nraw-esp = true\ninstall-routes = true".into();
    if !left {
        conf = conf.mirrored(&socket, "10.99.1.2", Some("10.99.1.1"));
    }
    conf.toml()
}

fn ctl_ok(t: &Tandemd, args: &[&str]) -> Result<String, String> {
    let o = t.ctl(args);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "tandemctl {args:?}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        ))
    }
}

fn start_tandemd(ns: &mut Netns, left: bool, encap: bool) -> Result<Tandemd, String> {
    let dir = Tandemd::dir_for(ns);
    let conf = tandem_config(left, &dir.join("tandemd.sock"), encap);
    // Tandemd::start_logging panics when the daemon does not come up; turn that into an error
    // carrying its log.
    let log = dir.join("tandemd.log");
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tandemd::start_logging(ns, dir.clone(), &conf, "warn")
    }))
    .map_err(|_| {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        format!("tandemd did not start: {}", l.lines().rev().take(15).collect::<Vec<_>>().join(" | "))
    })
}

fn tandem(pair: &mut Pair, encap: bool) -> Result<Tunnel, String> {
    let r = start_tandemd(&mut pair.right, false, encap)?;
    let l = start_tandemd(&mut pair.left, true, encap)?;
    let out = ctl_ok(&l, &["initiate", "t", "--wait", "10"]);
    if let Err(e) = out {
        return Err(format!(
            "{e}; left log: {}",
            l.log().lines().rev().take(15).collect::<Vec<_>>().join(" | ")
        ));
    }
    // The SA must exist in the dataplane, with the encapsulation asked for.
    let sas = ctl_ok(&l, &["--json", "show", "ipsec-sa"])?;
    let v: serde_json::Value =
        serde_json::from_str(&sas).map_err(|e| format!("ipsec-sa JSON: {e}: {sas}"))?;
    let outbound: Vec<&serde_json::Value> =
        v.as_array().map(|a| a.iter().filter(|s| s["direction"] == "out").collect()).unwrap_or_default();
    let Some(sa) = outbound.first() else {
        return Err(format!("no outbound IPsec SA in tandemctl show ipsec-sa: {sas}"));
    };
    let udp = sa["udp_encap"].as_bool().unwrap_or(false);
    if udp != encap {
        return Err(format!("SA udp_encap = {udp}, wanted {encap}: {sa}"));
    }
    let routes = pair.left.ip(&["route", "show", "table", "220"]);
    Ok(Tunnel {
        daemons: vec![l.pid, r.pid],
        facts: vec![format!(
            "tandem: outbound SA {} {} udp_encap={udp}; left table 220: {}",
            sa["spi"],
            sa["encr"],
            routes.trim().replace('\n', "; ")
        )],
        dirs: vec![l.dir.clone(), r.dir.clone()],
        tandemds: vec![l, r],
    })
}

/// tandem's per-SA packet counters after a run (proof the traffic went through its SAs).
pub fn tandem_counters(t: &Tandemd) -> String {
    match ctl_ok(t, &["--json", "show", "ipsec-sa"]) {
        Ok(s) => serde_json::from_str::<serde_json::Value>(&s)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|sa| {
                format!(
                    "{} {}: {} packets",
                    sa["direction"].as_str().unwrap_or("?"),
                    sa["spi"],
                    sa["counters"]["packets"]
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tandem_configs_mirror_each_other() {
        let l = tandem_config(true, Path::new("/tmp/l.sock"), true);
        let r = tandem_config(false, Path::new("/tmp/r.sock"), true);
        for (text, me, peer, lts) in
            [(&l, "10.99.1.1", "10.99.1.2", "10.99.10.0/24"), (&r, "10.99.1.2", "10.99.1.1", "10.99.20.0/24")]
        {
            assert!(text.contains(&format!("local-address = \"{me}\"")), "{text}");
            assert!(text.contains(&format!("remote-address = \"{peer}\"")), "{text}");
            assert!(text.contains(&format!("local-ts = [\"{lts}\"]")), "{text}");
            assert!(text.contains("encap = true") && text.contains("tun-mtu = 1400"), "{text}");
        }
    }
}

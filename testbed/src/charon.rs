//! A strongSwan 5.9 `charon` in a namespace (recipe from shared/guides/STRONGSWAN.md): own config,
//! own vici socket, own mount namespace with a private /run (the pid file path is compiled in), ESP
//! in userspace through kernel-libipsec.

use crate::netns::Netns;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// The swanctl connection `t` with one child `net`.
#[derive(Clone, Debug)]
pub struct CharonConfig {
    pub local_addr: String,
    pub remote_addr: String,
    pub local_id: String,
    pub remote_id: String,
    pub psk: String,
    pub proposals: String,
    pub esp_proposals: String,
    pub local_ts: String,
    pub remote_ts: String,
    pub mode: String,
    pub dpd_delay: String,
    pub rekey_time: String,
    pub child_rekey_time: String,
    /// `start_action` of the child: none, start or trap.
    pub start_action: String,
    /// Force UDP encapsulation (`encap = yes`); kernel-libipsec encapsulates anyway.
    pub encap: bool,
    /// Extra lines inside the child (e.g. `rand_time = 1s`, `life_time = 8s`).
    pub child_extra: String,
    /// Extra lines inside the connection.
    pub conn_extra: String,
}

impl CharonConfig {
    /// charon on the right host of `netns::Pair`, talking to tandem on the left.
    pub fn right(proposals: &str, esp_proposals: &str) -> CharonConfig {
        CharonConfig {
            local_addr: "10.99.1.2".into(),
            remote_addr: "10.99.1.1".into(),
            local_id: "b.test".into(),
            remote_id: "a.test".into(),
            psk: "a-long-test-psk".into(),
            proposals: proposals.into(),
            esp_proposals: esp_proposals.into(),
            local_ts: "10.99.20.0/24".into(),
            remote_ts: "10.99.10.0/24".into(),
            mode: "tunnel".into(),
            dpd_delay: "0s".into(),
            rekey_time: "4h".into(),
            child_rekey_time: "1h".into(),
            start_action: "none".into(),
            encap: false,
            child_extra: String::new(),
            conn_extra: String::new(),
        }
    }

    pub fn swanctl_conf(&self) -> String {
        format!(
            r#"connections {{
  t {{
    version = 2
    local_addrs = {la}
    remote_addrs = {ra}
    proposals = {p}
    rekey_time = {rk}
    dpd_delay = {dpd}
    encap = {encap}
    {conn_extra}
    local {{
      auth = psk
      id = {li}
    }}
    remote {{
      auth = psk
      id = {ri}
    }}
    children {{
      net {{
        mode = {mode}
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        rekey_time = {crk}
        start_action = {sa}
        {child_extra}
      }}
    }}
  }}
}}
secrets {{
  ike-t {{
    id-a = {li}
    id-b = {ri}
    secret = "{psk}"
  }}
}}
"#,
            la = self.local_addr,
            ra = self.remote_addr,
            p = self.proposals,
            rk = self.rekey_time,
            dpd = self.dpd_delay,
            li = self.local_id,
            ri = self.remote_id,
            mode = self.mode,
            lts = self.local_ts,
            rts = self.remote_ts,
            esp = self.esp_proposals,
            crk = self.child_rekey_time,
            psk = self.psk,
            encap = if self.encap { "yes" } else { "no" },
            conn_extra = self.conn_extra,
            sa = self.start_action,
            child_extra = self.child_extra,
        )
    }
}

pub struct Charon {
    pub dir: PathBuf,
    pub pid: u32,
    ns: String,
}

fn strongswan_conf(dir: &std::path::Path, extra: &str, log_level: i32) -> String {
    let d = dir.display();
    format!(
        r#"charon {{
  {extra}
  load = random nonce openssl aes gcm sha1 sha2 hmac curve25519 gmp chapoly kdf pem pkcs1 x509 pubkey kernel-libipsec kernel-netlink socket-default vici updown
  load_modular = no
  install_virtual_ip = no
  retransmit_timeout = 2.0
  retransmit_tries = 3
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
    kernel-libipsec {{
      allow_peer_ts = no
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  filelog {{
    main {{
      path = {d}/charon.log
      append = no
      flush_line = yes
      time_format = %H:%M:%S
      ike_name = yes
      default = {l1}
      ike = {l2}
      knl = {l1}
      chd = {l2}
      cfg = {l2}
    }}
  }}
}}
"#,
        l1 = log_level.min(1),
        l2 = log_level
    )
}

impl Charon {
    /// Start charon in `ns` and load `cfg`. Waits (bounded) until its vici socket answers.
    pub fn start(ns: &mut Netns, cfg: &CharonConfig) -> Charon {
        Self::start_with(ns, &cfg.swanctl_conf(), "install_routes = yes", 2)
    }

    /// Start charon with a swanctl.conf text, extra `charon { }` settings and a log level (-1..4).
    pub fn start_with(ns: &mut Netns, swanctl_conf: &str, extra: &str, log_level: i32) -> Charon {
        let dir = std::env::temp_dir().join(format!("tandem-charon-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "run",
            "swanctl/x509",
            "swanctl/x509ca",
            "swanctl/private",
            "swanctl/pubkey",
            "swanctl/rsa",
            "swanctl/ecdsa",
            "swanctl/pkcs8",
            "swanctl/pkcs12",
            "swanctl/x509aa",
            "swanctl/x509ocsp",
            "swanctl/x509ac",
            "swanctl/x509crl",
            "swanctl/conf.d",
            "swanctl/bliss",
            "swanctl/pkcs12",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("create charon dir");
        }
        std::fs::write(dir.join("strongswan.conf"), strongswan_conf(&dir, extra, log_level))
            .expect("write strongswan.conf");
        std::fs::write(dir.join("swanctl/swanctl.conf"), swanctl_conf).expect("write swanctl.conf");
        let mut cmd = ns.command("env");
        cmd.arg(format!("STRONGSWAN_CONF={}", dir.join("strongswan.conf").display()))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$1\" /run && exec \"$2\"",
                "sh",
            ])
            .arg(dir.join("run"))
            .arg(CHARON)
            .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"));
        let pid = ns.spawn(cmd);
        let c = Charon { dir, pid, ns: ns.name.clone() };
        let up = crate::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            c.swanctl(&["--stats"]).status.success()
        });
        assert!(up, "charon did not come up: {}", c.log());
        let out =
            c.swanctl(&["--load-all", "--file", &c.dir.join("swanctl/swanctl.conf").display().to_string()]);
        assert!(out.status.success(), "swanctl --load-all: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    pub fn swanctl(&self, args: &[&str]) -> Output {
        let uri = format!("unix://{}/charon.vici", self.dir.display());
        let mut full: Vec<String> = vec![args[0].to_string()];
        full.extend(["--uri".to_string(), uri]);
        full.extend(args[1..].iter().map(|s| s.to_string()));
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "env"])
            .arg(format!("STRONGSWAN_CONF={}", self.dir.join("strongswan.conf").display()))
            .arg("swanctl")
            .args(&full)
            .output()
            .expect("run swanctl")
    }

    /// Initiate the child `net` (and so the IKE SA), bounded by swanctl's timeout.
    pub fn initiate(&self) -> Output {
        self.swanctl(&["--initiate", "--child", "net", "--timeout", "20"])
    }

    pub fn list_sas(&self) -> Vec<IkeSa> {
        let out = self.swanctl(&["--list-sas", "--raw"]);
        parse_list_sas(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }
}

/// An IKE SA as listed by `swanctl --list-sas --raw`.
#[derive(Debug, Default, Clone)]
pub struct IkeSa {
    pub name: String,
    pub state: String,
    pub spi_i: String,
    pub spi_r: String,
    pub children: Vec<ChildSa>,
}

#[derive(Debug, Default, Clone)]
pub struct ChildSa {
    pub name: String,
    pub state: String,
    pub spi_in: String,
    pub spi_out: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    /// Packets charon's kernel-libipsec decrypted / encrypted on this CHILD SA.
    pub packets_in: u64,
    pub packets_out: u64,
}

impl IkeSa {
    pub fn established(&self) -> bool {
        self.state == "ESTABLISHED"
    }

    pub fn installed_children(&self) -> Vec<&ChildSa> {
        self.children.iter().filter(|c| c.state == "INSTALLED").collect()
    }
}

fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '{' | '}' | '[' | ']' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(ch.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parse vici's raw dump: `list-sa event {NAME {k=v ... child-sas {CHILD {k=v ... local-ts [..]}}}}`.
pub fn parse_list_sas(text: &str) -> Vec<IkeSa> {
    let t = tokens(text);
    let mut sas: Vec<IkeSa> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        let tok = &t[i];
        match tok.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            _ => {
                let next_open = t.get(i + 1).map(String::as_str) == Some("{");
                let next_list = t.get(i + 1).map(String::as_str) == Some("[");
                if next_open && depth == 1 {
                    sas.push(IkeSa { name: tok.clone(), ..Default::default() });
                } else if next_open && depth == 3 {
                    if let Some(sa) = sas.last_mut() {
                        sa.children.push(ChildSa { name: tok.clone(), ..Default::default() });
                    }
                } else if next_list {
                    let mut items = Vec::new();
                    let mut j = i + 2;
                    while j < t.len() && t[j] != "]" {
                        items.push(t[j].clone());
                        j += 1;
                    }
                    if depth == 4 {
                        if let Some(c) = sas.last_mut().and_then(|s| s.children.last_mut()) {
                            match tok.trim_end_matches('=') {
                                "local-ts" => c.local_ts = items,
                                "remote-ts" => c.remote_ts = items,
                                _ => {}
                            }
                        }
                    }
                    i = j;
                } else if let Some((k, v)) = tok.split_once('=') {
                    if depth == 2 {
                        if let Some(sa) = sas.last_mut() {
                            match k {
                                "state" => sa.state = v.into(),
                                "initiator-spi" => sa.spi_i = v.into(),
                                "responder-spi" => sa.spi_r = v.into(),
                                _ => {}
                            }
                        }
                    } else if depth == 4 {
                        if let Some(c) = sas.last_mut().and_then(|s| s.children.last_mut()) {
                            match k {
                                "state" => c.state = v.into(),
                                "spi-in" => c.spi_in = v.into(),
                                "spi-out" => c.spi_out = v.into(),
                                "packets-in" => c.packets_in = v.parse().unwrap_or(0),
                                "packets-out" => c.packets_out = v.parse().unwrap_or(0),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        i += 1;
    }
    sas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_list_sas() {
        let raw = "list-sa event {t {uniqueid=1 version=2 state=ESTABLISHED local-host=10.99.1.2 initiator-spi=10de5230a6b801af responder-spi=c78ce7b57579b3d8 child-sas {net-1 {name=net state=INSTALLED spi-in=18658047 spi-out=2bc8af8f bytes-in=84 packets-in=1 bytes-out=168 packets-out=2 local-ts=[10.99.20.0/24] remote-ts=[10.99.10.0/24]}}}}\n";
        let s = parse_list_sas(raw);
        assert_eq!(s.len(), 1);
        assert!(s[0].established());
        assert_eq!(s[0].spi_r, "c78ce7b57579b3d8");
        let c = &s[0].children[0];
        assert_eq!((c.spi_in.as_str(), c.spi_out.as_str()), ("18658047", "2bc8af8f"));
        assert_eq!(c.local_ts, vec!["10.99.20.0/24"]);
        assert_eq!((c.packets_in, c.packets_out), (1, 2));
    }
}

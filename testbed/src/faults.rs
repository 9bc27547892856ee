//! Faults on a link, made with nftables inside one test namespace: `DropUdp` drops every UDP
//! datagram to or from a port (the HA sync link's QUIC, port 4510), in both directions, counting
//! what it dropped, until `restore`. The table lives in the namespace, so it goes with it even if a
//! test fails before restoring.

use crate::netns::Netns;
use std::io::Write;
use std::process::{Command, Stdio};

/// The sync link's UDP port (`[ha] port`'s default).
pub const SYNC_PORT: u16 = 4510;
const TABLE: &str = "tandem_fault";

/// Dropping UDP `port` in and out of a namespace.
pub struct DropUdp {
    ns: String,
    port: u16,
    active: bool,
}

fn nft(ns: &str, script: &str) -> Result<String, String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nft: {e}"))?;
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("nft -f: {}\n{script}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl DropUdp {
    /// From now on, drop UDP to and from `port` in `ns` (input and output hooks: both directions).
    pub fn start(ns: &Netns, port: u16) -> DropUdp {
        let script = format!(
            "table inet {TABLE} {{\n\
             chain input {{ type filter hook input priority -10; policy accept;\n\
               udp dport {port} counter drop\n  udp sport {port} counter drop\n }}\n\
             chain output {{ type filter hook output priority -10; policy accept;\n\
               udp dport {port} counter drop\n  udp sport {port} counter drop\n }}\n\
             }}\n"
        );
        nft(&ns.name, &script).unwrap_or_else(|e| panic!("{e}"));
        DropUdp { ns: ns.name.clone(), port, active: true }
    }

    /// Datagrams dropped so far: (in, out).
    pub fn dropped(&self) -> (u64, u64) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "-j", "list", "table", "inet", TABLE])
            .output()
            .expect("run nft list");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let (mut inp, mut outp) = (0, 0);
        for item in v["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            let Some(exprs) = rule["expr"].as_array() else { continue };
            let packets: u64 = exprs.iter().filter_map(|e| e["counter"]["packets"].as_u64()).sum();
            match rule["chain"].as_str() {
                Some("input") => inp += packets,
                Some("output") => outp += packets,
                _ => {}
            }
        }
        (inp, outp)
    }

    /// Stop dropping; returns what was dropped (in, out).
    pub fn restore(mut self) -> (u64, u64) {
        let d = self.dropped();
        nft(&self.ns, &format!("delete table inet {TABLE}\n")).unwrap_or_else(|e| panic!("{e}"));
        self.active = false;
        d
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DropUdp {
    fn drop(&mut self) {
        if self.active {
            let _ = nft(&self.ns, &format!("delete table inet {TABLE}\n"));
        }
    }
}

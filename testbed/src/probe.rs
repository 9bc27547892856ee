//! Traffic probes run inside test namespaces: `ping`, `iperf3` and a `dumpcap` capture summarised
//! with `tshark`. Every process is started through `Netns::spawn` (so it dies with its namespace)
//! and stopped by its PID.

use crate::netns::Netns;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The outcome of one `ping` run.
#[derive(Debug, Clone, Default)]
pub struct PingResult {
    pub transmitted: u32,
    pub received: u32,
    pub output: String,
}

impl PingResult {
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }

    /// Of a verbose run: the requests never answered, as (icmp_seq, `[unix time]` at which ping
    /// reported it overdue, if it did).
    pub fn missing(&self) -> Vec<(u32, Option<String>)> {
        let seq_of = |l: &str| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse::<u32>().ok();
        let mut answered = std::collections::BTreeSet::new();
        let mut overdue = std::collections::BTreeMap::new();
        for line in self.output.lines() {
            let Some(seq) = seq_of(line) else { continue };
            if line.contains("no answer yet") {
                let ts = line.split(']').next().map(|t| t.trim_start_matches('[').to_string());
                overdue.insert(seq, ts);
            } else if line.contains(" bytes from ") {
                answered.insert(seq);
            }
        }
        (1..=self.transmitted)
            .filter(|s| !answered.contains(s))
            .map(|s| (s, overdue.get(&s).cloned().flatten()))
            .collect()
    }
}

/// A ping run: `count` echo requests every `interval`, from `src` to `dst` (IPv4 or IPv6, chosen by
/// the address), each reply awaited at most `wait` (`-W`).
#[derive(Debug, Clone)]
pub struct Ping<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    pub count: u32,
    pub interval: Duration,
    pub wait: Duration,
    pub size: Option<u32>,
    /// One line per reply and per overdue request, with timestamps (`-D -O`), so that a loss can
    /// be placed in time ([`PingResult::missing`]).
    pub verbose: bool,
}

impl<'a> Ping<'a> {
    pub fn new(src: &'a str, dst: &'a str, count: u32) -> Ping<'a> {
        Ping {
            src,
            dst,
            count,
            interval: Duration::from_millis(100),
            wait: Duration::from_secs(2),
            size: None,
            verbose: false,
        }
    }

    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    pub fn size(mut self, s: u32) -> Self {
        self.size = Some(s);
        self
    }

    pub fn run(&self, ns: &Netns) -> PingResult {
        let family = if self.dst.contains(':') { "-6" } else { "-4" };
        let interval = format!("{:.3}", self.interval.as_secs_f64());
        let count = self.count.to_string();
        let wait = self.wait.as_secs().max(1).to_string();
        // A deadline too: with `-c` alone, once the last request is out ping waits only two
        // round-trip times for outstanding replies (not `-W`), so a merely late reply counts as
        // lost. With `-w` it waits for `count` replies until the deadline.
        let deadline = ((f64::from(self.count) * self.interval.as_secs_f64()).ceil() as u64
            + self.wait.as_secs().max(1))
        .to_string();
        let mut args =
            vec![family, "-n", "-c", &count, "-i", &interval, "-W", &wait, "-w", &deadline, "-I", self.src];
        args.extend(if self.verbose { ["-D", "-O"].as_slice() } else { ["-q"].as_slice() });
        let size;
        if let Some(s) = self.size {
            size = s.to_string();
            args.extend(["-s", &size]);
        }
        args.push(self.dst);
        let out = ns.exec("ping", &args);
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        parse_ping(&text)
    }
}

/// Parse ping's summary line: `5 packets transmitted, 5 received, 0% packet loss, time 4005ms`.
pub fn parse_ping(text: &str) -> PingResult {
    let mut r = PingResult { output: text.to_string(), ..Default::default() };
    for line in text.lines() {
        if let Some((tx, rest)) = line.split_once(" packets transmitted, ") {
            r.transmitted = tx.trim().parse().unwrap_or(0);
            r.received = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    r
}

/// Ping once (1 s wait) until a reply comes or `timeout` passes; true if one came.
pub fn ping_until_reply(ns: &Netns, src: &str, dst: &str, timeout: Duration) -> bool {
    crate::wait_until(timeout, Duration::from_millis(100), || {
        let mut p = Ping::new(src, dst, 1);
        p.wait = Duration::from_secs(1);
        p.run(ns).received == 1
    })
}

/// What an iperf3 client reported.
#[derive(Debug, Clone, Default)]
pub struct IperfResult {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bits_per_second: f64,
    pub retransmits: u64,
}

/// Start a one-shot iperf3 server (`-1`) bound to `bind` in `server_ns`, wait until it listens,
/// run the client from `client_ns` (bound to `src`) for `secs`, and parse the client's JSON.
pub fn iperf3(
    server_ns: &mut Netns,
    client_ns: &Netns,
    src: &str,
    dst: &str,
    port: u16,
    secs: u32,
) -> Result<IperfResult, String> {
    let port_s = port.to_string();
    let mut cmd = server_ns.command("iperf3");
    cmd.args(["-s", "-1", "-B", dst, "-p", &port_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let pid = server_ns.spawn(cmd);
    let listening = crate::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let o = server_ns.exec("ss", &["-Hltn", &format!("sport = :{port}")]);
        !String::from_utf8_lossy(&o.stdout).trim().is_empty()
    });
    if !listening {
        server_ns.stop(pid, Duration::from_secs(1));
        return Err("iperf3 server did not start listening".into());
    }
    let secs_s = secs.to_string();
    let out = client_ns.exec(
        "iperf3",
        &["-c", dst, "-B", src, "-p", &port_s, "-t", &secs_s, "-J", "--connect-timeout", "5000"],
    );
    server_ns.stop(pid, Duration::from_secs(2));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("iperf3 JSON: {e}: {text}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("iperf3: {e}"));
    }
    parse_iperf3(&v).ok_or_else(|| format!("iperf3 output without end.sum_*: {text}"))
}

pub fn parse_iperf3(v: &Value) -> Option<IperfResult> {
    let sent = v.get("end")?.get("sum_sent")?;
    let recv = v.get("end")?.get("sum_received")?;
    Some(IperfResult {
        bytes_sent: sent.get("bytes")?.as_u64()?,
        bytes_received: recv.get("bytes")?.as_u64()?,
        bits_per_second: recv.get("bits_per_second")?.as_f64()?,
        retransmits: sent.get("retransmits").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// A packet capture on one interface of a namespace, written to a pcapng file by `dumpcap`
/// (headers only: the first 160 bytes of each frame). The file is removed when the capture drops
/// unless `TANDEM_KEEP_CAPTURES` is set.
pub struct Capture {
    pub file: PathBuf,
    pid: u32,
    iface: String,
    stopped: bool,
}

/// Sends one Ethernet broadcast frame with the local experimental EtherType 0x88b5 and a payload.
const MARKER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(b"\xff" * 6 + s.getsockname()[4][:6] + b"\x88\xb5" + sys.argv[2].encode())
"#;

impl Drop for Capture {
    fn drop(&mut self) {
        if std::env::var_os("TANDEM_KEEP_CAPTURES").is_none() {
            let _ = std::fs::remove_file(&self.file);
            let _ = std::fs::remove_file(self.file.with_extension("log"));
            if let Some(dir) = self.file.parent() {
                let _ = std::fs::remove_dir(dir); // only if empty
            }
        }
    }
}

fn file_tail_contains(file: &Path, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(file) else { return false };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    buf.windows(needle.len()).any(|w| w == needle)
}

impl Capture {
    /// Start capturing on `iface` (optionally with a capture filter). dumpcap says "Capturing on"
    /// a little before its socket really receives, so this returns only once a marker frame sent
    /// out of the interface after that is in the file: everything sent later is captured.
    pub fn start(ns: &mut Netns, iface: &str, filter: Option<&str>) -> Capture {
        let dir = std::env::temp_dir().join(format!("tandem-capture-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("capture dir");
        let file = dir.join(format!("{iface}-{}.pcapng", crate::netns::unique_tag()));
        let log = file.with_extension("log");
        let mut cmd = ns.command("dumpcap");
        cmd.args(["-q", "-s", "160", "-i", iface, "-w"]).arg(&file);
        if let Some(f) = filter {
            // Keep the marker frames whatever the filter.
            cmd.args(["-f", &format!("({f}) or ether proto 0x88b5")]);
        }
        cmd.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&log).expect("capture log"));
        let pid = ns.spawn(cmd);
        let up = crate::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("Capturing on"))
        });
        assert!(up, "dumpcap did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        let cap = Capture { file, pid, iface: iface.to_string(), stopped: false };
        let armed = crate::wait_until(Duration::from_secs(15), Duration::from_millis(1), || {
            cap.marker_seen(ns, "start")
        });
        assert!(armed, "dumpcap never captured the start marker frame");
        cap
    }

    /// Send a marker frame and wait (up to 1.5 s) until it is in the file.
    fn marker_seen(&self, ns: &Netns, what: &str) -> bool {
        let marker = format!("tandem-capture-{what}-{}", crate::netns::unique_tag());
        let out = ns.exec("python3", &["-c", MARKER, &self.iface, &marker]);
        assert!(out.status.success(), "marker frame: {}", String::from_utf8_lossy(&out.stderr));
        crate::wait_until(Duration::from_millis(1500), Duration::from_millis(20), || {
            file_tail_contains(&self.file, marker.as_bytes())
        })
    }

    /// Stop the capture and return the file. libpcap hands frames over in blocks, and frames still
    /// in the kernel's ring when dumpcap exits are lost; so first send a marker frame out of the
    /// interface and wait until it is in the file (then everything before it is too), then stop
    /// dumpcap by PID (SIGTERM; it closes the file cleanly).
    pub fn stop(&mut self, ns: &mut Netns) -> &Path {
        if !self.stopped {
            let seen = crate::wait_until(Duration::from_secs(15), Duration::from_millis(1), || {
                self.marker_seen(ns, "end")
            });
            assert!(seen, "the capture never wrote the end marker frame");
            ns.stop(self.pid, Duration::from_secs(5));
            self.stopped = true;
        }
        &self.file
    }
}

/// One captured frame as tshark dissects it.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// `frame.protocols`, e.g. `eth:ethertype:ip:udp:udpencap:esp`.
    pub protocols: String,
    /// Every IPv4/IPv6 source and destination address tshark found in the frame (all layers).
    pub addrs: Vec<String>,
    pub esp_spi: Option<u32>,
    pub esp_seq: Option<u64>,
    pub len: u32,
    /// ICMPv6 type of the outermost ICMPv6 header (neighbour discovery and MLD are 130-143).
    pub icmpv6_type: Option<u32>,
}

impl Frame {
    pub fn layers(&self) -> Vec<&str> {
        self.protocols.split(':').collect()
    }

    pub fn is_esp(&self) -> bool {
        self.layers().contains(&"esp")
    }

    /// ESP directly in IP (protocol 50), not in UDP.
    pub fn is_raw_esp(&self) -> bool {
        self.is_esp() && !self.layers().contains(&"udp")
    }
}

/// Dissect a capture file with `tshark -r FILE -T fields`.
pub fn frames(file: &Path) -> Vec<Frame> {
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
            "-e",
            "frame.protocols",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "esp.spi",
            "-e",
            "esp.sequence",
            "-e",
            "frame.len",
            "-e",
            "icmpv6.type",
        ])
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark -r: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("");
            let mut addrs = Vec::new();
            for i in 1..=4 {
                addrs.extend(get(i).split(',').filter(|a| !a.is_empty()).map(str::to_string));
            }
            let first = |s: &str| s.split(',').next().unwrap_or("").to_string();
            Frame {
                protocols: get(0).to_string(),
                addrs,
                esp_spi: parse_num(&first(get(5))).map(|v| v as u32),
                esp_seq: parse_num(&first(get(6))),
                len: get(7).parse().unwrap_or(0),
                icmpv6_type: parse_num(&first(get(8))).map(|v| v as u32),
            }
        })
        .collect()
}

fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// What crossed the wire, by kind. Frames are counted as captured: on veth a UDP GSO send shows
/// up as one super-frame carrying several datagrams, so counts can be below the packets sent.
#[derive(Debug, Default, Clone)]
pub struct WireSummary {
    pub total: usize,
    pub esp_udp: usize,
    pub esp_raw: usize,
    pub ike: usize,
    /// Distinct SPIs of the ESP frames.
    pub esp_spis: std::collections::BTreeSet<u32>,
    /// Link-layer housekeeping between the outer addresses: ARP, IPv6 neighbour discovery,
    /// NAT-T keepalives, IP fragments of (reassembled) ESP datagrams.
    pub housekeeping: usize,
    /// Frames that are none of the above (e.g. ICMP, TCP): should not exist on a protected link.
    pub other: Vec<String>,
    /// Frames carrying an inner (protected-subnet) address anywhere in their headers.
    pub leaking: Vec<String>,
}

/// Classify frames; `inner_prefixes` are address prefixes that must never appear on the wire
/// (e.g. "10.99.10.", "fd00:99:10:").
pub fn summarise(frames: &[Frame], inner_prefixes: &[&str]) -> WireSummary {
    let mut s = WireSummary { total: frames.len(), ..Default::default() };
    for f in frames {
        let layers = f.layers();
        if f.addrs.iter().any(|a| inner_prefixes.iter().any(|p| a.starts_with(p))) {
            s.leaking.push(format!("{} {:?}", f.protocols, f.addrs));
        }
        if !layers.iter().any(|l| *l == "ip" || *l == "ipv6" || *l == "arp") {
            // Not IP at all: the capture's own end marker (EtherType 0x88b5), LLDP and the like.
            s.housekeeping += 1;
        } else if f.is_esp() {
            s.esp_spis.extend(f.esp_spi);
            if layers.contains(&"udp") {
                s.esp_udp += 1;
            } else {
                s.esp_raw += 1;
            }
        } else if layers.contains(&"isakmp") {
            s.ike += 1;
        } else if layers.contains(&"arp")
            || layers.contains(&"udpencap")
            || layers.contains(&"ipv6.fraghdr")
            || f.icmpv6_type.is_some_and(|t| (130..=143).contains(&t))
            || layers.windows(2).any(|w| w == ["ip", "data"])
        {
            s.housekeeping += 1;
        } else {
            s.other.push(format!("{} {:?}", f.protocols, f.addrs));
        }
    }
    s
}

/// The namespace's UDP error counters (receive buffer overflows, checksum errors...) from
/// /proc/net/snmp and /proc/net/snmp6, non-zero ones only, for failure messages.
pub fn udp_errors(ns_name: &str) -> String {
    let cat = |f: &str| {
        let o = std::process::Command::new("ip").args(["netns", "exec", ns_name, "cat", f]).output();
        o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    let (four, six) = (cat("/proc/net/snmp"), cat("/proc/net/snmp6"));
    let mut out = Vec::new();
    let lines: Vec<&str> = four.lines().filter(|l| l.starts_with("Udp:")).collect();
    if let [names, values] = lines[..] {
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
            if v != "0" {
                out.push(format!("Udp{n}={v}"));
            }
        }
    }
    for l in six.lines().filter(|l| l.starts_with("Udp6")) {
        let mut it = l.split_whitespace();
        if let (Some(n), Some(v)) = (it.next(), it.next()) {
            if v != "0" {
                out.push(format!("{n}={v}"));
            }
        }
    }
    format!("{ns_name}: {}", out.join(" "))
}

/// Datagrams the kernel dropped (receive buffer full) on the IPv4 UDP sockets bound to `port` in
/// `ns_name`: the `drops` column of `/proc/net/udp`, summed. With a process's own receive counters
/// this closes the account of every datagram that reached the host.
pub fn udp_socket_drops(ns_name: &str, port: u16) -> u64 {
    let o =
        std::process::Command::new("ip").args(["netns", "exec", ns_name, "cat", "/proc/net/udp"]).output();
    let text = o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    parse_udp_drops(&text, port)
}

/// The sum of the `drops` column over the lines of a `/proc/net/udp` text whose local port is `port`.
pub fn parse_udp_drops(text: &str, port: u16) -> u64 {
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 13 && f[1].ends_with(&want)).then(|| f[12].parse::<u64>().unwrap_or(0))
        })
        .sum()
}

#[cfg(test)]
mod udp_drop_tests {
    #[test]
    fn parses_proc_net_udp_drops() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  281: 0101630A:01F4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51311 2 0000000000000000 17\n\
  541: 0101630A:1194 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51312 2 0000000000000000 0\n\
  542: 0100007F:01F4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51313 2 0000000000000000 3\n";
        assert_eq!(super::parse_udp_drops(text, 500), 20);
        assert_eq!(super::parse_udp_drops(text, 4500), 0);
        assert_eq!(super::parse_udp_drops(text, 50), 0);
    }
}

#[cfg(test)]
mod ping_tests {
    #[test]
    fn finds_the_requests_never_answered() {
        let text = "PING 10.2.0.1 (10.2.0.1) from 10.1.0.1 : 56(84) bytes of data.\n\
[1764750000.100000] 64 bytes from 10.2.0.1: icmp_seq=1 ttl=64 time=0.1 ms\n\
[1764750000.300000] no answer yet for icmp_seq=2\n\
[1764750000.400000] no answer yet for icmp_seq=3\n\
[1764750000.410000] 64 bytes from 10.2.0.1: icmp_seq=3 ttl=64 time=210 ms\n\
[1764750000.500000] 64 bytes from 10.2.0.1: icmp_seq=4 ttl=64 time=0.1 ms\n\
\n--- 10.2.0.1 ping statistics ---\n\
5 packets transmitted, 3 received, 40% packet loss, time 400ms\n";
        let r = super::parse_ping(text);
        assert_eq!((r.transmitted, r.received), (5, 3));
        assert_eq!(r.missing(), vec![(2, Some("1764750000.300000".to_string())), (5, None)]);
    }
}

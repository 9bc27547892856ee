//! iperf3 and ping runs between the inner addresses, with their JSON and text output parsed.

use super::{run_bounded, Netns};
use serde_json::Value;
use std::time::Duration;

/// One iperf3 client run's result.
#[derive(Clone, Debug, Default)]
pub struct IperfResult {
    /// Receiver-side bits per second.
    pub bps: f64,
    /// TCP retransmissions (sender).
    pub retransmits: f64,
    /// UDP: datagrams sent per second.
    pub sent_pps: f64,
    /// UDP: datagrams received per second (sent minus lost, over the send time).
    pub recv_pps: f64,
    /// UDP: share lost, percent.
    pub loss_pct: f64,
}

/// What to send.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    Tcp {
        streams: u32,
    },
    /// UDP datagrams with this payload length, as fast as the sender can.
    Udp {
        len: u32,
    },
}

/// iperf3 client arguments for `load` from `src` to `dst` for `seconds`.
pub fn client_args(load: Load, src: &str, dst: &str, seconds: u32) -> Vec<String> {
    let mut a: Vec<String> =
        ["-c", dst, "-B", src, "-J", "-t", &seconds.to_string(), "--connect-timeout", "3000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    match load {
        Load::Tcp { streams } => a.extend(["-P".to_string(), streams.to_string()]),
        // -b 0: unlimited; -w 4M: socket buffers large enough that iperf3's own sockets are not
        // where datagrams are dropped (checked: on loopback this removes all of iperf3's loss).
        Load::Udp { len } => {
            a.extend(["-u", "-l", &len.to_string(), "-b", "0", "-w", "4M"].iter().map(|s| s.to_string()))
        }
    }
    a
}

pub fn parse_iperf(json: &[u8], load: Load) -> Result<IperfResult, String> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("iperf3 output is not JSON ({e}): {}", String::from_utf8_lossy(json)))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    let end = &v["end"];
    match load {
        Load::Tcp { .. } => Ok(IperfResult {
            bps: end["sum_received"]["bits_per_second"].as_f64().ok_or("no sum_received")?,
            retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
            ..Default::default()
        }),
        Load::Udp { .. } => {
            let r = &end["sum_received"];
            let packets = r["packets"].as_f64().ok_or("no packets")?;
            let lost = r["lost_packets"].as_f64().unwrap_or(0.0);
            let secs = end["sum_sent"]["seconds"].as_f64().filter(|s| *s > 0.0).ok_or("no seconds")?;
            Ok(IperfResult {
                bps: r["bits_per_second"].as_f64().unwrap_or(0.0),
                retransmits: 0.0,
                sent_pps: packets / secs,
                recv_pps: (packets - lost).max(0.0) / secs,
                loss_pct: r["lost_percent"].as_f64().unwrap_or(0.0),
            })
        }
    }
}

/// Run one iperf3 client in `ns`, bounded by the test length plus a margin.
pub fn run_client(ns: &Netns, load: Load, src: &str, dst: &str, seconds: u32) -> Result<IperfResult, String> {
    let mut c = ns.command("iperf3");
    c.args(client_args(load, src, dst, seconds));
    let o = run_bounded(c, Duration::from_secs(u64::from(seconds) + 20))?;
    parse_iperf(&o.stdout, load).map_err(|e| format!("{e} {}", String::from_utf8_lossy(&o.stderr)))
}

/// Round-trip times of a ping run.
#[derive(Clone, Debug, Default)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    pub avg_ms: f64,
    pub p99_ms: f64,
}

/// `count` pings every `interval_ms` from `src` to `dst`, each waiting at most one second.
pub fn ping(ns: &Netns, src: &str, dst: &str, count: u32, interval_ms: u32) -> Result<PingResult, String> {
    let interval = format!("{:.3}", f64::from(interval_ms) / 1000.0);
    let deadline = (u64::from(count) * u64::from(interval_ms)) / 1000 + 3;
    // Not -q: every reply line carries its RTT, which the percentile needs.
    let mut c = ns.command("ping");
    c.args(["-n", "-I", src, "-c", &count.to_string(), "-i", &interval, "-W", "1"]).args([
        "-w",
        &deadline.to_string(),
        dst,
    ]);
    let o = run_bounded(c, Duration::from_secs(deadline + 5))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let rtts = parse_ping_rtts(&text);
    if rtts.is_empty() {
        return Err(format!("no ping replies: {text}{}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(PingResult {
        sent: count,
        received: rtts.len() as u32,
        avg_ms: rtts.iter().sum::<f64>() / rtts.len() as f64,
        p99_ms: super::percentile(&rtts, 99.0),
    })
}

/// The `time=X ms` values of ping's per-reply lines.
pub fn parse_ping_rtts(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.split_once("time=").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping() {
        let t = "PING 10.99.20.1 (10.99.20.1) from 10.99.10.1 : 56(84) bytes of data.\n64 bytes from 10.99.20.1: icmp_seq=1 ttl=64 time=0.052 ms\n64 bytes from 10.99.20.1: icmp_seq=2 ttl=64 time=1.50 ms\n\n--- 10.99.20.1 ping statistics ---\nrtt min/avg/max/mdev = 0.052/0.776/1.500/0.724 ms\n";
        assert_eq!(parse_ping_rtts(t), vec![0.052, 1.5]);
    }

    #[test]
    fn parses_iperf_udp() {
        let j = br#"{"end":{"sum_sent":{"seconds":2.0,"packets":100},"sum_received":{"packets":100,"lost_packets":25,"lost_percent":25.0,"bits_per_second":1000.0}}}"#;
        let r = parse_iperf(j, Load::Udp { len: 64 }).unwrap();
        assert_eq!((r.sent_pps, r.recv_pps, r.loss_pct), (50.0, 37.5, 25.0));
        let e = br#"{"error":"unable to connect"}"#;
        assert!(parse_iperf(e, Load::Tcp { streams: 1 }).is_err());
    }
}

//! tandem-load: an IKEv2 load generator, like strongSwan's load-tester plugin (not packaged in
//! Debian). It opens `--count` IKE SAs (each with a CHILD SA) against a responder, every one with its
//! own identity (`load-N.test`), at most `--concurrency` at a time, and prints what it measured as JSON.
//!
//! It is the same sans-IO engine as tandemd, driven by a small blocking loop: one receive thread per
//! UDP socket (500 and 4500), the engine on the main thread.
//!
//! With `--hold`, the SAs are kept for that long after the last one is up (or until `--stop-file`
//! exists), the engine answering and (with `--child-rekey`) rekeying them, and a second JSON line
//! reports what happened meanwhile: the first line is printed as soon as all are up, so a caller can
//! sample the responder between. What the second line tells about renegotiation: IKE SAs that came
//! up or went down during the hold, CHILD SAs lost, failures, and every IKE message sent and
//! received during the hold by exchange type (an `IKE_SA_INIT` there is a new handshake).
//!
//! With `--inner`, tunnel N carries traffic: its own inner address (`--inner` + N + 1, a /32
//! selector; the responder narrows its side), ESP in UDP to port 4500 (`force_encap`), and with
//! `--probe K` an ICMP echo request every `--probe-interval-ms` through each of K tunnels spread
//! over the count, sealed with the CHILD SA's keys (tandem's ESP code) towards `--probe-target` (an
//! address the responder's side answers, e.g. a protected address on its `lo`). The echo replies
//! are opened and timed: the second line reports replies per probed tunnel, each tunnel's largest
//! gap between replies, and the largest gap of all probes together with its epoch timestamps (the
//! outage of a failover on the responder's side).
#![forbid(unsafe_code)]

use clap::Parser;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal};
use tandem_dataplane::install::spec_from_install;
use tandem_dataplane::tandem_esp::{open_sa, seal, ChildSaPair, CoarseClock};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

#[derive(Parser, Debug)]
#[command(name = "tandem-load", about = "Open many IKE SAs against a responder and measure the rate")]
struct Args {
    /// Local address to initiate from (binds ports 500 and 4500).
    #[arg(long)]
    local: IpAddr,
    /// Responder address.
    #[arg(long)]
    target: IpAddr,
    /// IKE SAs to establish.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value = "aes256gcm16-prfsha256-x25519")]
    proposal: String,
    #[arg(long, default_value = "aes256gcm16")]
    esp: String,
    #[arg(long, default_value = "load-test-secret")]
    psk: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Delete the SAs at the end (otherwise they stay up on the responder).
    #[arg(long)]
    cleanup: bool,
    /// Rekey each CHILD SA after this many seconds, less up to half of it at random (0: never).
    #[arg(long, default_value_t = 0)]
    child_rekey: u64,
    /// Keep the SAs up this many seconds after the last one is established, then report.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// End the hold early once this file exists (checked every 100 ms).
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Give tunnel N the inner address INNER + N + 1 (IPv4, a /32 traffic selector) and send ESP
    /// in UDP: the tunnels can carry probes.
    #[arg(long)]
    inner: Option<Ipv4Addr>,
    /// Probe this many tunnels (spread evenly over the count) during the hold; needs `--inner`.
    #[arg(long, default_value_t = 0)]
    probe: usize,
    /// Where the probes go: an address on the responder's side of every tunnel.
    #[arg(long)]
    probe_target: Option<Ipv4Addr>,
    /// One echo request through each probed tunnel this often.
    #[arg(long, default_value_t = 10)]
    probe_interval_ms: u64,
}

/// Tunnel `i`'s inner address with `--inner`.
fn inner_addr(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(i as u32 + 1))
}

fn peer(i: usize, a: &Args) -> Result<PeerConfig, String> {
    let ike = parse_ike_proposal(&a.proposal).map_err(|e| e.to_string())?;
    let esp = parse_esp_proposal(&a.esp).map_err(|e| e.to_string())?;
    let any = if a.local.is_ipv4() { TrafficSelector::any_v4() } else { TrafficSelector::any_v6() };
    let local_ts = match a.inner {
        Some(base) => {
            TrafficSelector::from_subnet(IpAddr::V4(inner_addr(base, i)), 32).ok_or("bad --inner")?
        }
        None => any,
    };
    Ok(PeerConfig {
        name: format!("load-{i}"),
        local_addr: Some(a.local),
        remote_addr: Some(a.target),
        remote_port: 500,
        local_id: Identity::Fqdn(format!("load-{i}.test")),
        remote_id: None,
        ike_proposals: vec![ike],
        ike_lifetimes: Lifetimes::default(),
        reauth: false,
        dpd_delay: None,
        dpd_timeout: None,
        dpd_action: DeadPeerAction::Clear,
        force_encap: a.inner.is_some(),
        initial_contact: false,
        unique: tandem_ike::UniquePolicy::default(),
        reqid_per_sa: false,
        childless: tandem_ike::Childless::default(),
        children: vec![ChildConfig {
            name: "c".into(),
            local_ts: vec![local_ts],
            remote_ts: vec![any],
            esp_proposals: vec![esp],
            mode: IpsecMode::Tunnel,
            lifetimes: child_lifetimes(a.child_rekey),
            start_action: StartAction::None,
            close_action: DeadPeerAction::Clear,
            replay_window: 0,
        }],
    })
}

/// CHILD SA lifetimes for `--child-rekey`: rekey after 50-100% of it, hard limit at twice it.
fn child_lifetimes(rekey_s: u64) -> Lifetimes {
    if rekey_s == 0 {
        return Lifetimes::default();
    }
    let r = Duration::from_secs(rekey_s);
    Lifetimes { rekey_time: Some(r), rand_time: r / 2, life_time: Some(r * 2), ..Lifetimes::default() }
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("tandem-load: {e}");
        std::process::exit(1);
    }
}

/// A datagram off one of the sockets, stamped when it was read.
enum Rx {
    Ike { local: SocketAddr, remote: SocketAddr, data: Vec<u8> },
    Esp { data: Vec<u8>, at: f64 },
}

fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn run(a: &Args) -> Result<(), String> {
    if a.probe > 0 && (a.inner.is_none() || a.probe_target.is_none()) {
        return Err("--probe needs --inner and --probe-target".into());
    }
    let peers = (0..a.count).map(|i| peer(i, a)).collect::<Result<Vec<_>, _>>()?;
    let psk = PreSharedKey { ids: vec![], secret: Zeroizing::new(a.psk.as_bytes().to_vec()) };
    let config = EndpointConfig { cookie_threshold: usize::MAX, ..EndpointConfig::default() };
    let mut ep = Endpoint::new(config, peers, vec![psk]);
    let mut sockets = HashMap::new();
    let (tx, rx) = mpsc::channel::<Rx>();
    for port in [500u16, 4500] {
        let local = SocketAddr::new(a.local, port);
        let s = UdpSocket::bind(local).map_err(|e| format!("bind {local}: {e}"))?;
        let r = s.try_clone().map_err(|e| e.to_string())?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, remote)) = r.recv_from(&mut buf) {
                let d = if port == 4500 {
                    if n < 4 {
                        continue;
                    }
                    if buf[..4] != [0, 0, 0, 0] {
                        // ESP in UDP (RFC 3948): the SPI where the marker would be.
                        if tx.send(Rx::Esp { data: buf[..n].to_vec(), at: epoch_now() }).is_err() {
                            return;
                        }
                        continue;
                    }
                    buf[4..n].to_vec()
                } else {
                    buf[..n].to_vec()
                };
                if tx.send(Rx::Ike { local, remote, data: d }).is_err() {
                    return;
                }
            }
        });
        sockets.insert(port, s);
    }
    let mut io = Io { sockets, msgs: Msgs::default(), esp: Esp::new(a) };
    let start = Instant::now();
    let give_up = start + Duration::from_secs(a.timeout);
    let (mut started, mut up, mut failed) = (0usize, 0usize, 0usize);
    let mut began: HashMap<u64, Instant> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(a.count);
    let mut tally = Tally::default();
    // Why handshakes failed, by the engine's message: a figure without its cause says little.
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_progress = start;
    while up + failed < a.count && Instant::now() < give_up {
        let now = Instant::now();
        while started < a.count && started - up - failed < a.concurrency {
            match ep.initiate(now, &format!("load-{started}")) {
                Ok(id) => {
                    began.insert(id, now);
                }
                Err(e) => {
                    failed += 1;
                    *failures.entry(format!("initiate: {e}")).or_default() += 1;
                }
            }
            started += 1;
        }
        io.flush(&mut ep);
        while let Some(e) = ep.poll_event() {
            io.esp.event(&e);
            match e {
                Event::IkeSaUp { ike_sa, .. } => {
                    up += 1;
                    if let Some(t0) = began.remove(&ike_sa) {
                        latencies.push(now.duration_since(t0));
                    }
                }
                Event::Failure { message, .. } => {
                    failed += 1;
                    *failures.entry(message).or_default() += 1;
                }
                e => tally.count(&e),
            }
        }
        if now.duration_since(last_progress) >= Duration::from_secs(1) {
            eprintln!(
                "tandem-load: {up}/{} established, {failed} failed, {:.0}/s",
                a.count,
                up as f64 / start.elapsed().as_secs_f64()
            );
            last_progress = now;
        }
        io.pump(&mut ep, &rx, None);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        json!({
            "count": a.count, "established": up, "failed": failed, "elapsed_s": elapsed,
            "rate_per_s": up as f64 / elapsed, "latency_ms_p50": pct(0.5), "latency_ms_p99": pct(0.99),
            "child_sas": io.esp.pairs.len(), "failures": failures,
        })
    );
    if a.hold > 0 {
        // Flushed at once: the caller samples the responder between the two lines.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let hold_start = Instant::now();
        let end = hold_start + Duration::from_secs(a.hold);
        let during = std::mem::take(&mut tally);
        let msgs_before = std::mem::take(&mut io.msgs);
        let mut ike_up = 0u64;
        let mut last_progress = hold_start;
        let mut last_stop_check = hold_start;
        let interval = Duration::from_millis(a.probe_interval_ms.max(1));
        let mut next_probe = hold_start;
        let stop_requested = |f: &Option<PathBuf>| f.as_ref().is_some_and(|p| p.exists());
        while Instant::now() < end {
            let now = Instant::now();
            if a.probe > 0 && now >= next_probe {
                io.probe_all();
                next_probe += interval;
                if next_probe < now {
                    next_probe = now + interval;
                }
            }
            io.flush(&mut ep);
            while let Some(e) = ep.poll_event() {
                io.esp.event(&e);
                if matches!(e, Event::IkeSaUp { .. }) {
                    ike_up += 1;
                }
                tally.count(&e);
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "tandem-load: holding {up} IKE SAs, {:.0}/{} s, {} CHILD SA rekeys, {} IKE SAs down, probes {} sent {} answered",
                    hold_start.elapsed().as_secs_f64(),
                    a.hold,
                    tally.child_rekeys,
                    tally.ike_down,
                    io.esp.sent,
                    io.esp.replies,
                );
                last_progress = Instant::now();
            }
            if last_stop_check.elapsed() >= Duration::from_millis(100) {
                if stop_requested(&a.stop_file) {
                    break;
                }
                last_stop_check = Instant::now();
            }
            io.pump(&mut ep, &rx, (a.probe > 0).then_some(next_probe));
        }
        io.flush(&mut ep);
        let live = ep.ike_sas().iter().filter(|s| s.state != IkeSaState::Connecting).count();
        println!(
            "{}",
            json!({
                "hold_s": hold_start.elapsed().as_secs_f64(), "child_rekeys": tally.child_rekeys,
                "child_rekeys_before_hold": during.child_rekeys, "ike_sas_down": tally.ike_down,
                "child_sas_down": tally.child_down, "failures": tally.failures, "ike_sas_at_end": live,
                "ike_sas_up": ike_up, "child_sas_at_end": io.esp.pairs.len(),
                "ike_sent": io.msgs.json(true), "ike_received": io.msgs.json(false),
                "ike_sent_before_hold": msgs_before.json(true),
                "probe": io.esp.report(),
            })
        );
    }
    if a.cleanup {
        let now = Instant::now();
        for sa in ep.ike_sas() {
            let _ = ep.terminate_ike_sa(now, sa.id);
        }
        io.flush(&mut ep);
    }
    Ok(())
}

/// What the engine reported besides the handshakes being counted.
#[derive(Default)]
struct Tally {
    child_rekeys: u64,
    child_down: u64,
    ike_down: u64,
    failures: u64,
}

impl Tally {
    fn count(&mut self, e: &Event) {
        match e {
            Event::ChildSaUp(c) if c.replaces_spi_in.is_some() => self.child_rekeys += 1,
            Event::ChildSaDown { reason, .. } if *reason != DownReason::Rekeyed => self.child_down += 1,
            Event::IkeSaDown { .. } => self.ike_down += 1,
            Event::Failure { .. } => self.failures += 1,
            _ => {}
        }
    }
}

/// IKE messages by direction, exchange type and request/response, from their headers.
#[derive(Default)]
struct Msgs {
    /// (sent, exchange type, response) -> count.
    n: HashMap<(bool, u8, bool), u64>,
}

impl Msgs {
    fn count(&mut self, sent: bool, msg: &[u8]) {
        if msg.len() >= 28 {
            // RFC 7296 section 3.1: exchange type at 18, flags at 19 (0x20: response).
            *self.n.entry((sent, msg[18], msg[19] & 0x20 != 0)).or_default() += 1;
        }
    }

    /// `{"IKE_SA_INIT": {"requests": n, "responses": m}, ...}` of one direction.
    fn json(&self, sent: bool) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (&(s, x, resp), &n) in &self.n {
            if s != sent {
                continue;
            }
            let name = match x {
                34 => "IKE_SA_INIT".to_string(),
                35 => "IKE_AUTH".to_string(),
                36 => "CREATE_CHILD_SA".to_string(),
                37 => "INFORMATIONAL".to_string(),
                x => format!("exchange {x}"),
            };
            let e = m.entry(name).or_insert_with(|| json!({"requests": 0, "responses": 0}));
            e[if resp { "responses" } else { "requests" }] = json!(n);
        }
        serde_json::Value::Object(m)
    }
}

/// The sockets, the message counts and the tunnels' ESP state.
struct Io {
    sockets: HashMap<u16, UdpSocket>,
    msgs: Msgs,
    esp: Esp,
}

impl Io {
    /// Wait for datagrams (up to the engine's next deadline, `cap`, at most 100 ms) and feed them to
    /// the engine (IKE) or open them (ESP), or fire the engine's timers.
    fn pump(&mut self, ep: &mut Endpoint, rx: &mpsc::Receiver<Rx>, cap: Option<Instant>) {
        let deadline = ep.poll_timeout();
        let now = Instant::now();
        let mut wait = deadline.map_or(Duration::from_millis(100), |d| d.saturating_duration_since(now));
        if let Some(c) = cap {
            wait = wait.min(c.saturating_duration_since(now));
        }
        match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(first) => {
                self.take(ep, first);
                while let Ok(d) = rx.try_recv() {
                    self.take(ep, d);
                }
                // A steady stream of datagrams must not starve the timers (rekeys, retransmits).
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    ep.handle_timeout(Instant::now());
                }
            }
            Err(_) => ep.handle_timeout(Instant::now()),
        }
    }

    fn take(&mut self, ep: &mut Endpoint, d: Rx) {
        match d {
            Rx::Ike { local, remote, data } => {
                self.msgs.count(false, &data);
                ep.handle_datagram(Instant::now(), local, remote, &data);
            }
            Rx::Esp { mut data, at } => self.esp.receive(&mut data, at),
        }
    }

    /// Send the engine's datagrams, with the non-ESP marker on port 4500.
    fn flush(&mut self, ep: &mut Endpoint) {
        while let Some(t) = ep.poll_transmit() {
            self.msgs.count(true, &t.data);
            let Some(s) = self.sockets.get(&t.local.port()) else { continue };
            let _ = if t.local.port() == 4500 {
                s.send_to(&[&[0u8; 4][..], &t.data].concat(), t.remote)
            } else {
                s.send_to(&t.data, t.remote)
            };
        }
    }

    /// One echo request through each probed tunnel that has a CHILD SA.
    fn probe_all(&mut self) {
        let Some(s) = self.sockets.get(&4500) else { return };
        self.esp.clock.set(Instant::now());
        for k in 0..self.esp.probed.len() {
            if let Some((dst, pkt)) = self.esp.probe(k) {
                let _ = s.send_to(&pkt, dst);
            }
        }
    }
}

/// One probed tunnel's tally.
#[derive(Default, Clone)]
struct Probed {
    tunnel: usize,
    seq: u16,
    sent: u64,
    replies: u64,
    last_reply: Option<f64>,
    /// (gap seconds, from epoch, to epoch)
    largest_gap: Option<(f64, f64, f64)>,
}

/// The tunnels' CHILD SAs as ESP state (with `--inner`), and the probes through them.
struct Esp {
    on: bool,
    target: Ipv4Addr,
    inner: Ipv4Addr,
    clock: Arc<CoarseClock>,
    /// Inbound SPI -> the pair (its outbound half is the tunnel's current one when it is newest).
    pairs: HashMap<u32, ChildSaPair>,
    /// Tunnel -> inbound SPI of its newest CHILD SA.
    current: HashMap<usize, u32>,
    probed: Vec<Probed>,
    /// Probe slot by tunnel.
    slot: HashMap<usize, usize>,
    sent: u64,
    replies: u64,
    /// Replies that were not ours, or failed to open.
    bad: u64,
    last_any: Option<f64>,
    largest_gap: Option<(f64, f64, f64)>,
}

impl Esp {
    fn new(a: &Args) -> Esp {
        let k = a.probe.min(a.count);
        let probed: Vec<Probed> =
            (0..k).map(|j| Probed { tunnel: j * a.count / k.max(1), ..Probed::default() }).collect();
        let slot = probed.iter().enumerate().map(|(j, p)| (p.tunnel, j)).collect();
        Esp {
            on: a.inner.is_some(),
            target: a.probe_target.unwrap_or(Ipv4Addr::UNSPECIFIED),
            inner: a.inner.unwrap_or(Ipv4Addr::UNSPECIFIED),
            clock: Arc::new(CoarseClock::new(Instant::now())),
            pairs: HashMap::new(),
            current: HashMap::new(),
            probed,
            slot,
            sent: 0,
            replies: 0,
            bad: 0,
            last_any: None,
            largest_gap: None,
        }
    }

    /// Follow the engine's CHILD SA installs and removals.
    fn event(&mut self, e: &Event) {
        if !self.on {
            return;
        }
        match e {
            Event::ChildSaUp(i) => {
                let Some(tunnel) = i.vpn.strip_prefix("load-").and_then(|n| n.parse::<usize>().ok()) else {
                    return;
                };
                match ChildSaPair::new(&spec_from_install(i), &self.clock) {
                    Ok(p) => {
                        self.pairs.insert(i.spi_in, p);
                        self.current.insert(tunnel, i.spi_in);
                    }
                    Err(e) => eprintln!("tandem-load: cannot build the ESP SA of {}: {e:?}", i.vpn),
                }
            }
            // A peer cluster's RFC 6311 replay counter sync after a stale takeover.
            Event::OutboundSeqAdvance { spi_in, delta, .. } => {
                if let Some(p) = self.pairs.get(spi_in) {
                    p.outbound.set_next_seq(p.outbound.next_seq().saturating_add(*delta));
                }
            }
            Event::ChildSaDown { vpn, spi_in, .. } => {
                self.pairs.remove(spi_in);
                if let Some(t) = vpn.strip_prefix("load-").and_then(|n| n.parse::<usize>().ok()) {
                    if self.current.get(&t) == Some(spi_in) {
                        self.current.remove(&t);
                    }
                }
            }
            _ => {}
        }
    }

    /// The next echo request of probe slot `k`, sealed: (where to, the UDP payload).
    fn probe(&mut self, k: usize) -> Option<(SocketAddr, Vec<u8>)> {
        let p = &mut self.probed[k];
        let pair = self.pairs.get(self.current.get(&p.tunnel)?)?;
        p.seq = p.seq.wrapping_add(1);
        let inner = echo_request(inner_addr(self.inner, p.tunnel), self.target, k as u16, p.seq);
        let mut buf = vec![0u8; inner.len() + 128];
        let n = seal(&pair.outbound, &inner, 4, &mut buf).ok()?;
        buf.truncate(n);
        p.sent += 1;
        self.sent += 1;
        Some((pair.outbound.remote(), buf))
    }

    /// An ESP packet from the responder: open it and, if it is a probe's echo reply, time it.
    fn receive(&mut self, data: &mut [u8], at: f64) {
        let spi = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let Some(pair) = self.pairs.get(&spi) else {
            self.bad += 1;
            return;
        };
        let Ok(o) = open_sa(&pair.inbound, data) else {
            self.bad += 1;
            return;
        };
        let Some(id) = echo_reply_id(&data[o.payload]) else {
            self.bad += 1;
            return;
        };
        let Some(p) = self.probed.get_mut(id as usize) else {
            self.bad += 1;
            return;
        };
        if self.slot.get(&p.tunnel) != Some(&(id as usize)) {
            self.bad += 1;
            return;
        }
        p.replies += 1;
        if let Some(last) = p.last_reply {
            if p.largest_gap.is_none_or(|g| at - last > g.0) {
                p.largest_gap = Some((at - last, last, at));
            }
        }
        p.last_reply = Some(p.last_reply.map_or(at, |l| l.max(at)));
        self.replies += 1;
        if let Some(last) = self.last_any {
            if self.largest_gap.is_none_or(|g| at - last > g.0) {
                self.largest_gap = Some((at - last, last, at));
            }
        }
        self.last_any = Some(self.last_any.map_or(at, |l| l.max(at)));
    }

    fn report(&self) -> serde_json::Value {
        let gap = |g: Option<(f64, f64, f64)>| {
            g.map_or(
                serde_json::Value::Null,
                |(d, from, to)| json!({"ms": d * 1000.0, "from_epoch": from, "to_epoch": to}),
            )
        };
        json!({
            "tunnels": self.probed.len(), "sent": self.sent,
            "replies": self.replies, "bad": self.bad, "largest_gap": gap(self.largest_gap),
            "per_tunnel": self.probed.iter().map(|p| json!({
                "tunnel": p.tunnel, "sent": p.sent, "replies": p.replies,
                "last_reply_epoch": p.last_reply, "largest_gap": gap(p.largest_gap),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The Internet checksum (RFC 1071) of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request from `src` to `dst` with identifier `id` and sequence `seq`.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"tandem-load probe");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// The identifier of an IPv4 ICMP echo reply, None for anything else.
fn echo_reply_id(p: &[u8]) -> Option<u16> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    if p.first()? >> 4 != 4 || *p.get(9)? != 1 || p.len() < ihl + 8 || p[ihl] != 0 {
        return None;
    }
    Some(u16::from_be_bytes([p[ihl + 4], p[ihl + 5]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_verify() {
        let p = echo_request(Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 99, 10, 1), 7, 3);
        // A correct checksum makes the sum over the covered bytes 0xffff (its complement 0).
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(checksum(&p[20..]), 0);
        let mut reply = p.clone();
        reply[20] = 0;
        assert_eq!(echo_reply_id(&reply), Some(7));
        assert_eq!(echo_reply_id(&p), None, "a request is not a reply");
        assert_eq!(inner_addr(Ipv4Addr::new(10, 200, 0, 0), 255), Ipv4Addr::new(10, 200, 1, 0));
    }
}

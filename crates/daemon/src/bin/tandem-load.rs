//! tandem-load: an IKEv2 load generator, like strongSwan's load-tester plugin (not packaged in
//! Debian). It opens `--count` IKE SAs (each with a CHILD SA) against a responder, every one with its
//! own identity (`load-N.test`), at most `--concurrency` at a time, and prints what it measured as JSON.
//!
//! It is the same sans-IO engine as tandemd, driven by a small blocking loop: one receive thread per
//! UDP socket (500 and 4500), the engine on the main thread.
//!
//! With `--hold`, the SAs are kept for that long after the last one is up, the engine answering and
//! (with `--child-rekey`) rekeying them, and a second JSON line reports what happened meanwhile:
//! the first line is printed as soon as all are up, so a caller can sample the responder between.
#![forbid(unsafe_code)]

use clap::Parser;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal};
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
}

fn peer(i: usize, a: &Args) -> Result<PeerConfig, String> {
    let ike = parse_ike_proposal(&a.proposal).map_err(|e| e.to_string())?;
    let esp = parse_esp_proposal(&a.esp).map_err(|e| e.to_string())?;
    let any = if a.local.is_ipv4() { TrafficSelector::any_v4() } else { TrafficSelector::any_v6() };
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
        force_encap: false,
        initial_contact: false,
        unique: tandem_ike::UniquePolicy::default(),
        reqid_per_sa: false,
        childless: tandem_ike::Childless::default(),
        children: vec![ChildConfig {
            name: "c".into(),
            local_ts: vec![any],
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

fn run(a: &Args) -> Result<(), String> {
    let peers = (0..a.count).map(|i| peer(i, a)).collect::<Result<Vec<_>, _>>()?;
    let psk = PreSharedKey { ids: vec![], secret: Zeroizing::new(a.psk.as_bytes().to_vec()) };
    let config = EndpointConfig { cookie_threshold: usize::MAX, ..EndpointConfig::default() };
    let mut ep = Endpoint::new(config, peers, vec![psk]);
    let mut sockets = HashMap::new();
    let (tx, rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>();
    for port in [500u16, 4500] {
        let local = SocketAddr::new(a.local, port);
        let s = UdpSocket::bind(local).map_err(|e| format!("bind {local}: {e}"))?;
        let r = s.try_clone().map_err(|e| e.to_string())?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, remote)) = r.recv_from(&mut buf) {
                let d = if port == 4500 {
                    if n < 4 || buf[..4] != [0, 0, 0, 0] {
                        continue;
                    }
                    buf[4..n].to_vec()
                } else {
                    buf[..n].to_vec()
                };
                if tx.send((local, remote, d)).is_err() {
                    return;
                }
            }
        });
        sockets.insert(port, s);
    }
    let start = Instant::now();
    let give_up = start + Duration::from_secs(a.timeout);
    let (mut started, mut up, mut failed) = (0usize, 0usize, 0usize);
    let mut began: HashMap<u64, Instant> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(a.count);
    let mut tally = Tally::default();
    let mut last_progress = start;
    while up + failed < a.count && Instant::now() < give_up {
        let now = Instant::now();
        while started < a.count && started - up - failed < a.concurrency {
            match ep.initiate(now, &format!("load-{started}")) {
                Ok(id) => {
                    began.insert(id, now);
                }
                Err(_) => failed += 1,
            }
            started += 1;
        }
        flush(&mut ep, &sockets);
        while let Some(e) = ep.poll_event() {
            match e {
                Event::IkeSaUp { ike_sa, .. } => {
                    up += 1;
                    if let Some(t0) = began.remove(&ike_sa) {
                        latencies.push(now.duration_since(t0));
                    }
                }
                Event::Failure { .. } => failed += 1,
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
        pump(&mut ep, &rx);
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
        })
    );
    if a.hold > 0 {
        // Flushed at once: the caller samples the responder between the two lines.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let hold_start = Instant::now();
        let end = hold_start + Duration::from_secs(a.hold);
        let during = std::mem::take(&mut tally);
        let mut last_progress = hold_start;
        while Instant::now() < end {
            flush(&mut ep, &sockets);
            while let Some(e) = ep.poll_event() {
                tally.count(&e);
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "tandem-load: holding {up} IKE SAs, {:.0}/{} s, {} CHILD SA rekeys, {} IKE SAs down",
                    hold_start.elapsed().as_secs_f64(),
                    a.hold,
                    tally.child_rekeys,
                    tally.ike_down
                );
                last_progress = Instant::now();
            }
            pump(&mut ep, &rx);
        }
        flush(&mut ep, &sockets);
        let live = ep.ike_sas().iter().filter(|s| s.state != IkeSaState::Connecting).count();
        println!(
            "{}",
            json!({
                "hold_s": hold_start.elapsed().as_secs_f64(), "child_rekeys": tally.child_rekeys,
                "child_rekeys_before_hold": during.child_rekeys, "ike_sas_down": tally.ike_down,
                "child_sas_down": tally.child_down, "failures": tally.failures, "ike_sas_at_end": live,
            })
        );
    }
    if a.cleanup {
        let now = Instant::now();
        for sa in ep.ike_sas() {
            let _ = ep.terminate_ike_sa(now, sa.id);
        }
        flush(&mut ep, &sockets);
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

/// Wait for datagrams (up to the engine's next deadline, at most 100 ms) and feed them to the
/// engine, or fire its timers.
fn pump(ep: &mut Endpoint, rx: &mpsc::Receiver<(SocketAddr, SocketAddr, Vec<u8>)>) {
    let deadline = ep.poll_timeout();
    let wait = deadline.map_or(Duration::from_millis(100), |d| d.saturating_duration_since(Instant::now()));
    match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
        Ok((local, remote, d)) => {
            ep.handle_datagram(Instant::now(), local, remote, &d);
            while let Ok((local, remote, d)) = rx.try_recv() {
                ep.handle_datagram(Instant::now(), local, remote, &d);
            }
            // A steady stream of datagrams must not starve the timers (rekeys, retransmits).
            if deadline.is_some_and(|d| d <= Instant::now()) {
                ep.handle_timeout(Instant::now());
            }
        }
        Err(_) => ep.handle_timeout(Instant::now()),
    }
}

/// Send the engine's datagrams, with the non-ESP marker on port 4500.
fn flush(ep: &mut Endpoint, sockets: &HashMap<u16, UdpSocket>) {
    while let Some(t) = ep.poll_transmit() {
        let Some(s) = sockets.get(&t.local.port()) else { continue };
        let _ = if t.local.port() == 4500 {
            s.send_to(&[&[0u8; 4][..], &t.data].concat(), t.remote)
        } else {
            s.send_to(&t.data, t.remote)
        };
    }
}

//! Real traffic for failover tests: a numbered, paced UDP stream in both directions between two
//! hosts in test namespaces, and a TCP transfer that must complete.
//!
//! Everything runs in threads of the test process: sockets are opened inside the namespaces
//! (`nsenter`), so no process is started and nothing outlives the test. Each UDP datagram carries
//! its direction and its number; the receiver timestamps each arrival, so a report gives per
//! direction what was sent, received, lost, duplicated and reordered, and the largest gap between
//! two consecutive arrivals (the outage a failover causes, to within one packet interval). The
//! sender's own largest pause is reported too: a gap the sender made (descheduled on a busy host)
//! is not the network's.

use crate::netns::Netns;
use crate::nsenter::{in_netns, spawn_in_netns};
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"TDMS";
/// Bytes per datagram (header: magic, direction, number, send time).
const DATAGRAM: usize = 100;

/// One end of a stream: a namespace and an address of a host in it.
#[derive(Clone, Copy)]
pub struct End<'a> {
    pub ns: &'a Netns,
    pub addr: &'a str,
}

/// A gap between two consecutive arrivals (first arrivals of distinct numbers, in arrival order).
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    pub len: Duration,
    /// The numbers received just before and just after it.
    pub before: u64,
    pub after: u64,
    /// When the packet before it arrived.
    pub from: Instant,
}

/// What one direction of a stream measured.
#[derive(Debug, Clone)]
pub struct FlowReport {
    pub name: String,
    /// Numbers sent (a send that failed, e.g. no route for a moment, counts: the number is used).
    pub sent: u64,
    pub send_errors: u64,
    /// Datagrams received (duplicates included).
    pub received: u64,
    /// Numbers received more than once.
    pub duplicates: u64,
    /// Numbers sent and never received.
    pub lost: u64,
    /// Arrivals below a number already received.
    pub reordered: u64,
    /// The sender's longest time between two sends.
    pub sender_max_pause: Duration,
    /// First arrival of each number, in arrival order.
    pub arrivals: Vec<(u64, Instant)>,
}

impl FlowReport {
    fn from_arrivals(
        name: String,
        sent: u64,
        send_errors: u64,
        pause: Duration,
        all: Vec<(u64, Instant)>,
    ) -> Self {
        let received = all.len() as u64;
        let mut seen = HashSet::with_capacity(all.len());
        let mut arrivals = Vec::with_capacity(all.len());
        let (mut duplicates, mut reordered, mut top) = (0, 0, None::<u64>);
        for (n, at) in all {
            if !seen.insert(n) {
                duplicates += 1;
                continue;
            }
            if top.is_some_and(|t| n < t) {
                reordered += 1;
            }
            top = Some(top.map_or(n, |t| t.max(n)));
            arrivals.push((n, at));
        }
        let lost = (0..sent).filter(|n| !seen.contains(n)).count() as u64;
        FlowReport {
            name,
            sent,
            send_errors,
            received,
            duplicates,
            lost,
            reordered,
            sender_max_pause: pause,
            arrivals,
        }
    }

    /// Every gap longer than `over`, in time order.
    pub fn gaps(&self, over: Duration) -> Vec<Gap> {
        self.arrivals
            .windows(2)
            .map(|w| Gap { len: w[1].1 - w[0].1, before: w[0].0, after: w[1].0, from: w[0].1 })
            .filter(|g| g.len > over)
            .collect()
    }

    pub fn largest_gap(&self) -> Option<Gap> {
        self.gaps(Duration::ZERO).into_iter().max_by_key(|g| g.len)
    }

    /// Received packets that arrived after `t`.
    pub fn received_after(&self, t: Instant) -> usize {
        self.arrivals.iter().filter(|a| a.1 > t).count()
    }

    /// One line for the test output; times relative to `t0`.
    pub fn line(&self, t0: Instant) -> String {
        let gap = self.largest_gap().map_or("none".to_string(), |g| {
            format!(
                "{:.1} ms (between #{} and #{}, at {:+.1} ms)",
                ms(g.len),
                g.before,
                g.after,
                signed_ms(g.from, t0)
            )
        });
        format!(
            "{}: sent {}, received {}, lost {}, duplicates {}, reordered {}, send errors {}, largest gap {gap}, sender's longest pause {:.1} ms",
            self.name,
            self.sent,
            self.received,
            self.lost,
            self.duplicates,
            self.reordered,
            self.send_errors,
            ms(self.sender_max_pause)
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `t` relative to `t0` in ms, negative when before.
pub fn signed_ms(t: Instant, t0: Instant) -> f64 {
    if t >= t0 {
        ms(t - t0)
    } else {
        -ms(t0 - t)
    }
}

struct Flow {
    name: String,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// Nanoseconds since the stream started of the last arrival.
    last_arrival: Arc<AtomicU64>,
    sender: Option<JoinHandle<(u64, u64, Duration)>>,
    receiver: Option<JoinHandle<Vec<(u64, Instant)>>>,
}

/// A paced, numbered UDP stream in both directions between `a` and `b`.
pub struct UdpStream {
    started: Instant,
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    flows: Vec<Flow>,
}

fn bind_in(end: End<'_>, port: u16) -> UdpSocket {
    let addr: SocketAddr = format!("{}:{port}", end.addr).parse().expect("address");
    let s = in_netns(&end.ns.name, || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", end.ns.name));
    s.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
    s
}

impl UdpStream {
    /// Start sending `rate` datagrams per second each way between `a` and `b` (UDP port `port`
    /// on both). Directions are named "a->b" and "b->a" after `names`.
    pub fn start(a: End<'_>, b: End<'_>, port: u16, rate: u32, names: [&str; 2]) -> UdpStream {
        let (sa, sb) = (bind_in(a, port), bind_in(b, port));
        let to_b: SocketAddr = format!("{}:{port}", b.addr).parse().expect("address");
        let to_a: SocketAddr = format!("{}:{port}", a.addr).parse().expect("address");
        let started = Instant::now();
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop_recv = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs(1) / rate;
        let mut flows = Vec::new();
        let dirs = [
            (0u32, format!("{}->{}", names[0], names[1]), &sa, to_b, &sb),
            (1u32, format!("{}->{}", names[1], names[0]), &sb, to_a, &sa),
        ];
        for (id, name, from, to, at) in dirs {
            let sent = Arc::new(AtomicU64::new(0));
            let received = Arc::new(AtomicU64::new(0));
            let last_arrival = Arc::new(AtomicU64::new(0));
            let tx = from.try_clone().expect("clone socket");
            let rx = at.try_clone().expect("clone socket");
            let (s, stop) = (sent.clone(), stop_send.clone());
            let sender = std::thread::Builder::new()
                .name(format!("udp-send-{id}"))
                .spawn(move || send_loop(&tx, to, id, interval, &stop, &s))
                .expect("spawn sender");
            let (r, l, stop) = (received.clone(), last_arrival.clone(), stop_recv.clone());
            let receiver = std::thread::Builder::new()
                .name(format!("udp-recv-{id}"))
                .spawn(move || recv_loop(&rx, id, started, &stop, &r, &l))
                .expect("spawn receiver");
            flows.push(Flow {
                name,
                sent,
                received,
                last_arrival,
                sender: Some(sender),
                receiver: Some(receiver),
            });
        }
        UdpStream { started, stop_send, stop_recv, flows }
    }

    /// Datagrams received so far in direction `dir` (0: a->b, 1: b->a).
    pub fn received(&self, dir: usize) -> u64 {
        self.flows[dir].received.load(Ordering::Relaxed)
    }

    pub fn sent(&self, dir: usize) -> u64 {
        self.flows[dir].sent.load(Ordering::Relaxed)
    }

    /// Both directions received at least `n` more datagrams than `from` (as from `received`).
    pub fn await_more(&self, from: [u64; 2], n: u64, timeout: Duration) -> bool {
        crate::wait_until(timeout, Duration::from_millis(2), || {
            self.received(0) >= from[0] + n && self.received(1) >= from[1] + n
        })
    }

    pub fn counts(&self) -> [u64; 2] {
        [self.received(0), self.received(1)]
    }

    /// Stop sending, let what is in flight arrive (until every number arrived or nothing came
    /// for 300 ms, at most 3 s), and report both directions.
    pub fn stop(mut self) -> [FlowReport; 2] {
        self.stop_send.store(true, Ordering::Relaxed);
        let mut sent = vec![];
        for f in &mut self.flows {
            let s = f.sender.take().expect("sender").join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            sent.push(s);
        }
        let started = self.started;
        crate::wait_until(Duration::from_secs(3), Duration::from_millis(5), || {
            self.flows.iter().zip(&sent).all(|(f, s)| {
                let quiet = started
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(f.last_arrival.load(Ordering::Relaxed)))
                    > Duration::from_millis(300);
                f.received.load(Ordering::Relaxed) >= s.0 || quiet
            })
        });
        self.stop_recv.store(true, Ordering::Relaxed);
        let mut reports = vec![];
        for (f, (n, errors, pause)) in self.flows.iter_mut().zip(sent) {
            let arrivals =
                f.receiver.take().expect("receiver").join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            reports.push(FlowReport::from_arrivals(f.name.clone(), n, errors, pause, arrivals));
        }
        let b = reports.pop().expect("two flows");
        let a = reports.pop().expect("two flows");
        [a, b]
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop_send.store(true, Ordering::Relaxed);
        self.stop_recv.store(true, Ordering::Relaxed);
        for f in &mut self.flows {
            if let Some(t) = f.sender.take() {
                let _ = t.join();
            }
            if let Some(t) = f.receiver.take() {
                let _ = t.join();
            }
        }
    }
}

/// Send number 0, 1, ... one every `interval` on a fixed schedule (late sends go at once, so the
/// rate holds on average). Returns (numbers sent, send errors, longest pause).
fn send_loop(
    s: &UdpSocket,
    to: SocketAddr,
    id: u32,
    interval: Duration,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> (u64, u64, Duration) {
    let mut buf = [0u8; DATAGRAM];
    buf[..4].copy_from_slice(MAGIC);
    buf[4..8].copy_from_slice(&id.to_be_bytes());
    let start = Instant::now();
    let (mut n, mut errors, mut pause, mut last) = (0u64, 0u64, Duration::ZERO, None::<Instant>);
    while !stop.load(Ordering::Relaxed) {
        let due = start + interval * n as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        buf[8..16].copy_from_slice(&n.to_be_bytes());
        if s.send_to(&buf, to).is_err() {
            errors += 1;
        }
        let now = Instant::now();
        if let Some(l) = last {
            pause = pause.max(now - l);
        }
        last = Some(now);
        n += 1;
        sent.store(n, Ordering::Relaxed);
    }
    (n, errors, pause)
}

fn recv_loop(
    s: &UdpSocket,
    id: u32,
    started: Instant,
    stop: &AtomicBool,
    received: &AtomicU64,
    last: &AtomicU64,
) -> Vec<(u64, Instant)> {
    let mut out = Vec::with_capacity(1 << 16);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match s.recv_from(&mut buf) {
            Ok((n, _)) => {
                let at = Instant::now();
                if n < 16 || &buf[..4] != MAGIC || buf[4..8] != id.to_be_bytes() {
                    continue;
                }
                let seq = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
                out.push((seq, at));
                received.fetch_add(1, Ordering::Relaxed);
                last.store((at - started).as_nanos() as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // ICMP errors of our own sends (port unreachable while the far end is not bound).
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("udp stream receive: {e}"),
        }
    }
    out
}

/// What a TCP transfer did.
#[derive(Debug, Clone)]
pub struct TcpReport {
    pub bytes: u64,
    /// Bytes the server received, and whether each had the value the pattern gives it.
    pub received: u64,
    pub intact: bool,
    /// The client got the server's count back (the transfer finished end to end).
    pub acknowledged: bool,
    pub duration: Duration,
    /// The longest time the server waited between two reads while the transfer ran.
    pub largest_stall: Duration,
    pub error: Option<String>,
}

impl TcpReport {
    pub fn completed(&self) -> bool {
        self.received == self.bytes && self.intact && self.acknowledged && self.error.is_none()
    }

    pub fn line(&self) -> String {
        format!(
            "TCP transfer: {} of {} bytes received{}, {}, in {:.2} s ({:.2} MB/s), largest stall {:.1} ms{}",
            self.received,
            self.bytes,
            if self.intact { "" } else { " (CORRUPTED)" },
            if self.acknowledged { "acknowledged" } else { "NOT acknowledged" },
            self.duration.as_secs_f64(),
            self.received as f64 / self.duration.as_secs_f64().max(1e-9) / 1e6,
            ms(self.largest_stall),
            self.error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default()
        )
    }
}

/// The byte at offset `i` of a transfer.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// What the server side ends with: bytes received, whether intact, the largest stall, an error.
type Served = (u64, bool, Duration, Option<String>);

/// A TCP transfer of `bytes` from a client to a server, paced at `rate` bytes per second.
pub struct TcpTransfer {
    bytes: u64,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
    server: Option<JoinHandle<Served>>,
    client: Option<JoinHandle<Result<bool, String>>>,
}

impl TcpTransfer {
    /// The server listens on `server.addr:port` before the client connects from `client`'s
    /// namespace (its source address is what the routes there choose).
    pub fn start(client: End<'_>, server: End<'_>, port: u16, bytes: u64, rate: u64) -> TcpTransfer {
        let addr: SocketAddr = format!("{}:{port}", server.addr).parse().expect("address");
        let listener = in_netns(&server.ns.name, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", server.ns.name));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (progress.clone(), stop.clone());
        let server = std::thread::Builder::new()
            .name("tcp-server".into())
            .spawn(move || serve(&listener, &p, &s))
            .expect("spawn the TCP server");
        let s = stop.clone();
        let client = spawn_in_netns(&client.ns.name, "tcp-client", move || send(addr, bytes, rate, &s));
        TcpTransfer {
            bytes,
            progress,
            stop,
            started: Instant::now(),
            server: Some(server),
            client: Some(client),
        }
    }

    /// Bytes the server has received so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Await the end of the transfer (at most `timeout`), then report.
    pub fn finish(mut self, timeout: Duration) -> TcpReport {
        let client = self.client.take().expect("client");
        let server = self.server.take().expect("server");
        let done = crate::wait_until(timeout, Duration::from_millis(10), || {
            client.is_finished() && server.is_finished()
        });
        self.stop.store(true, Ordering::Relaxed);
        let client = client.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        let (received, intact, largest_stall, server_error) =
            server.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        let duration = self.started.elapsed();
        let (acknowledged, client_error) = match client {
            Ok(a) => (a, None),
            Err(e) => (false, Some(e)),
        };
        let error = match (done, client_error, server_error) {
            (false, c, s) => Some(format!("not finished within {timeout:?} (client: {c:?}, server: {s:?})")),
            (true, Some(c), _) => Some(format!("client: {c}")),
            (true, None, Some(s)) => Some(format!("server: {s}")),
            (true, None, None) => None,
        };
        TcpReport { bytes: self.bytes, received, intact, acknowledged, duration, largest_stall, error }
    }
}

impl Drop for TcpTransfer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.client.take() {
            let _ = c.join();
        }
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// Accept one connection, read to its end checking the pattern, answer with the count.
fn serve(listener: &TcpListener, progress: &AtomicU64, stop: &AtomicBool) -> Served {
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return (0, true, Duration::ZERO, Some("no connection".into()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return (0, true, Duration::ZERO, Some(format!("accept: {e}"))),
        }
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    let (mut total, mut intact, mut stall, mut last) = (0u64, true, Duration::ZERO, None::<Instant>);
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                if let Some(l) = last {
                    stall = stall.max(now - l);
                }
                last = Some(now);
                intact &= buf[..n].iter().enumerate().all(|(k, b)| *b == pattern(total + k as u64));
                total += n as u64;
                progress.store(total, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return (total, intact, stall, Some("stopped before the end of the stream".into()));
                }
            }
            Err(e) => return (total, intact, stall, Some(format!("read: {e}"))),
        }
    }
    let err = conn.write_all(&total.to_be_bytes()).err().map(|e| format!("write the count: {e}"));
    (total, intact, stall, err)
}

/// Connect, write `bytes` of the pattern paced at `rate` bytes/s, close the sending side, read the
/// server's count. Ok(whether the count matches).
fn send(addr: SocketAddr, bytes: u64, rate: u64, stop: &AtomicBool) -> Result<bool, String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    c.set_write_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    let _ = c.set_nodelay(true);
    const CHUNK: u64 = 16 * 1024;
    let start = Instant::now();
    let mut off = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK as usize);
    while off < bytes {
        let due = start + Duration::from_secs_f64(off as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let n = CHUNK.min(bytes - off);
        chunk.clear();
        chunk.extend((off..off + n).map(pattern));
        let mut done = 0usize;
        while done < chunk.len() {
            if stop.load(Ordering::Relaxed) {
                return Err(format!("stopped after {} bytes", off + done as u64));
            }
            match c.write(&chunk[done..]) {
                Ok(k) => done += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("write at {}: {e}", off + done as u64)),
            }
        }
        off += n;
    }
    c.shutdown(std::net::Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let mut count = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match c.read(&mut count[got..]) {
            Ok(0) => return Err("server closed without its count".into()),
            Ok(k) => got += k,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Err("stopped waiting for the server's count".into());
                }
            }
            Err(e) => return Err(format!("read the count: {e}")),
        }
    }
    Ok(u64::from_be_bytes(count) == bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_loss_duplicates_reordering_and_the_gap() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // 0..10 sent; 3 and 4 lost, 6 twice, 8 before 7; a 40 ms gap between 2 and 5.
        let arrivals = vec![
            (0, at(0)),
            (1, at(1)),
            (2, at(2)),
            (5, at(42)),
            (6, at(43)),
            (6, at(43)),
            (8, at(44)),
            (7, at(45)),
            (9, at(46)),
        ];
        let r = FlowReport::from_arrivals("x".into(), 10, 0, Duration::ZERO, arrivals);
        assert_eq!((r.sent, r.received, r.lost, r.duplicates, r.reordered), (10, 9, 2, 1, 1));
        let g = r.largest_gap().unwrap();
        assert_eq!((g.len, g.before, g.after), (Duration::from_millis(40), 2, 5));
        assert_eq!(r.gaps(Duration::from_millis(5)).len(), 1);
        assert_eq!(r.received_after(at(42)), 4);
    }

    #[test]
    fn pattern_is_not_constant() {
        assert_ne!(pattern(0), pattern(1));
        assert_eq!(pattern(251), pattern(0));
    }
}

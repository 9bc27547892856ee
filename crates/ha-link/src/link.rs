//! The link: configuration, the sending handle, and the task that owns the QUIC endpoint, keeps
//! one connection to the peer up and moves messages between it and the caller's queues.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, watch, Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use zeroize::Zeroizing;

use crate::key::{NodeKey, Pin};
use crate::rx::{Ctl, Held, LinkRx};
use crate::stats::{ChannelCounters, Counters, LinkStats};
use crate::tls;
use crate::{Channel, DownReason, LinkError};

/// Application close codes, seen by the peer in [`DownReason::PeerClosed`].
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_REPLACED: u32 = 2;

/// quinn sends higher priorities first.
const LIVE_PRIORITY: i32 = 1;
const BULK_PRIORITY: i32 = 0;

/// Per-stream receive window. The connection's send window is 8 of these and its receive window
/// 3: the bulk stream can never have more than one window unacknowledged (its flow-control credit),
/// so it can never exhaust the connection-level limits a live message also needs.
const STREAM_WINDOW: u32 = 2 << 20;
/// Received messages per channel that may wait for the `LinkRx` (bytes are bounded separately by
/// `receive_budget`); this only bounds the per-message overhead of many tiny messages.
const EVENT_QUEUE: usize = 4096;
/// Unauthenticated handshakes in progress at once on the server; more are refused, which bounds
/// the memory and CPU a flood of them can take. Each lasts at most the idle timeout, and sources
/// must first prove their address (QUIC Retry), so a spoofed flood cannot fill these slots.
const MAX_HANDSHAKES: usize = 32;
/// Upper bound for queue lengths (tokio's channels have a maximum, and a larger queue is a typo).
const MAX_QUEUE_MESSAGES: usize = 1 << 20;
/// Longest peer-supplied text (close reasons) kept in a `DownReason`.
const MAX_REASON: usize = 80;

/// Limits of one send queue: `send` fails with [`SendError::Full`] once either is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
}

/// Configuration of one node's end. Both nodes use the same shape with local/remote and
/// key/peer-pin swapped.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Address to bind (both roles bind it; the client dials from it).
    pub local: SocketAddr,
    /// The peer's `local`; dialled only in the client role (see [`Role`]).
    pub remote: SocketAddr,
    pub key: NodeKey,
    pub peer_pin: Pin,
    /// QUIC PING interval; must be below `idle_timeout`.
    pub keepalive: Duration,
    /// Silence after which the peer counts as gone (QUIC takes the smaller of both sides').
    pub idle_timeout: Duration,
    /// Limit for the TLS handshake and the stream setup that follows it.
    pub handshake_timeout: Duration,
    /// Largest message, sent or received. A peer sending a larger frame is a protocol error.
    pub max_message: usize,
    pub live_queue: QueueLimits,
    pub bulk_queue: QueueLimits,
    /// Bytes per channel received but not yet taken from the [`LinkRx`]; past that, reading from
    /// the peer pauses. At least `max_message`.
    pub receive_budget: usize,
    /// Client redial delay: starts at `backoff_min` and doubles per failed attempt up to
    /// `backoff_max`; reset once a connection stayed up for `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl LinkConfig {
    /// The defaults of the HA design: keep-alive 100 ms, idle timeout 500 ms, 16 MiB messages.
    pub fn new(local: SocketAddr, remote: SocketAddr, key: NodeKey, peer_pin: Pin) -> Self {
        LinkConfig {
            local,
            remote,
            key,
            peer_pin,
            keepalive: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(5),
            max_message: 16 << 20,
            live_queue: QueueLimits { messages: 4096, bytes: 32 << 20 },
            bulk_queue: QueueLimits { messages: 1024, bytes: 64 << 20 },
            receive_budget: 64 << 20,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<Role, LinkError> {
        let bad = |s: &str| Err(LinkError::Config(s.to_string()));
        let Some(role) = Role::for_pins(&self.key.pin(), &self.peer_pin) else {
            return bad("peer-pin is this node's own pin: each node needs its own key");
        };
        if self.keepalive.is_zero() || self.keepalive >= self.idle_timeout {
            return bad("keepalive must be non-zero and shorter than the idle timeout");
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake timeout must be non-zero");
        }
        if self.max_message == 0 || self.max_message > u32::MAX as usize {
            return bad("max message size must be between 1 byte and 4 GiB");
        }
        for q in [self.live_queue, self.bulk_queue] {
            if q.messages == 0 || q.messages > MAX_QUEUE_MESSAGES || q.bytes < self.max_message {
                return bad("each send queue needs 1 to 2^20 messages and at least max-message bytes");
            }
        }
        if self.receive_budget < self.max_message || self.receive_budget > Semaphore::MAX_PERMITS {
            return bad("receive budget must be at least the max message size");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff must be non-zero and its maximum at least its minimum");
        }
        if role == Role::Client && (self.remote.ip().is_unspecified() || self.remote.port() == 0) {
            return bad("remote must be a concrete address and port: this node dials it");
        }
        Ok(role)
    }
}

/// Which side of the single connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dials the peer's address.
    Client,
    /// Accepts the peer's connection.
    Server,
}

impl Role {
    /// The node with the lower pin dials. `None` if the pins are equal (one key on both nodes).
    pub fn for_pins(own: &Pin, peer: &Pin) -> Option<Role> {
        match own.cmp(peer) {
            std::cmp::Ordering::Less => Some(Role::Client),
            std::cmp::Ordering::Greater => Some(Role::Server),
            std::cmp::Ordering::Equal => None,
        }
    }
}

/// Why [`LinkTx::send`] refused a message (the message is dropped and wiped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The channel's queue is at its message or byte limit (counted in `queue_full`): the peer is
    /// slow, gone, or the caller is sending faster than the link carries. The caller is now out of
    /// sync with the peer.
    #[error("{0:?} queue is full")]
    Full(Channel),
    /// Larger than `max_message`; would be refused by the peer.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    /// The link's task has stopped.
    #[error("the HA link has stopped")]
    Closed,
}

type Msg = Zeroizing<Vec<u8>>;

struct TxQueue {
    tx: mpsc::Sender<Msg>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

struct QueueRx {
    rx: mpsc::Receiver<Msg>,
    bytes: Arc<AtomicUsize>,
}

fn queue(limits: QueueLimits) -> (TxQueue, QueueRx) {
    let (tx, rx) = mpsc::channel(limits.messages);
    let bytes = Arc::new(AtomicUsize::new(0));
    (TxQueue { tx, bytes: bytes.clone(), max_bytes: limits.bytes }, QueueRx { rx, bytes })
}

struct TxShared {
    live: TxQueue,
    bulk: TxQueue,
    max_message: usize,
    stats: Arc<Counters>,
    role: Role,
    local_addr: SocketAddr,
    /// Dropped with the last `LinkTx`, which tells the link's task to shut down.
    _shutdown: watch::Sender<()>,
}

/// Sends messages to the peer. Cheap to clone; the link shuts down (closing the connection with
/// code 0) when the last clone is dropped.
#[derive(Clone)]
pub struct LinkTx {
    shared: Arc<TxShared>,
}

impl LinkTx {
    /// Queues `msg` for the peer on `channel`. Never blocks or awaits: if the queue is full the
    /// message is refused at once. Messages queued while no connection is up are dropped when the
    /// next one comes up (the `PeerUp` that follows tells both sides to resync).
    pub fn send(&self, channel: Channel, msg: Vec<u8>) -> Result<(), SendError> {
        let msg = Zeroizing::new(msg);
        let len = msg.len();
        let s = &self.shared;
        if len > s.max_message {
            return Err(SendError::TooLarge { len, max: s.max_message });
        }
        let q = match channel {
            Channel::Live => &s.live,
            Channel::Bulk => &s.bulk,
        };
        let full = || {
            s.stats.channel(channel).queue_full.fetch_add(1, Ordering::Relaxed);
            Err(SendError::Full(channel))
        };
        // Reserve the bytes first, so two racing senders cannot both squeeze under the limit.
        let before = q.bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > q.max_bytes {
            q.bytes.fetch_sub(len, Ordering::AcqRel);
            return full();
        }
        match q.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                q.bytes.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => full(),
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                }
            }
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.shared.stats.snapshot()
    }

    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// The address actually bound (useful when `local` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }
}

/// Starts links; see the crate documentation.
pub struct Link;

impl Link {
    /// Binds `cfg.local` and starts the link's task on the current tokio runtime. Errors are only
    /// local ones (configuration, socket, TLS setup); an absent or wrong peer is not an error but
    /// the absence of `PeerUp`.
    pub fn start(cfg: LinkConfig) -> Result<(LinkTx, LinkRx), LinkError> {
        let socket = std::net::UdpSocket::bind(cfg.local).map_err(LinkError::Socket)?;
        Self::start_on(cfg, socket)
    }

    /// Like [`start`](Self::start) on a socket the caller bound (`cfg.local` is then unused): for
    /// binding before dropping privileges, or for tests that need the port before the config.
    pub fn start_on(cfg: LinkConfig, socket: std::net::UdpSocket) -> Result<(LinkTx, LinkRx), LinkError> {
        let role = cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LinkError::Config("Link::start must be called inside a tokio runtime".into()));
        }
        let runtime = quinn::default_runtime().ok_or_else(|| LinkError::Config("no async runtime".into()))?;
        let stats = Arc::new(Counters::default());
        let transport = Arc::new(transport_config(&cfg)?);
        let (server_cfg, mode) = match role {
            Role::Server => (Some(tls::server_config(&cfg.key, cfg.peer_pin, &stats, transport)?), None),
            Role::Client => (None, Some(tls::client_config(&cfg.key, cfg.peer_pin, &stats, transport)?)),
        };
        socket.set_nonblocking(true).map_err(LinkError::Socket)?;
        let endpoint = Endpoint::new(quinn::EndpointConfig::default(), server_cfg, socket, runtime)
            .map_err(LinkError::Socket)?;
        let local_addr = endpoint.local_addr().map_err(LinkError::Socket)?;
        let mode = match mode {
            Some(client_cfg) => Mode::Client(client_cfg),
            None => {
                let (tx, rx) = mpsc::channel(1);
                let acceptor = Acceptor {
                    endpoint: endpoint.clone(),
                    accepted: tx,
                    peer_pin: cfg.peer_pin,
                    handshake_timeout: cfg.handshake_timeout,
                    stats: stats.clone(),
                };
                tokio::spawn(acceptor.run());
                Mode::Server(rx)
            }
        };

        let (live_tx, live_q) = queue(cfg.live_queue);
        let (bulk_tx, bulk_q) = queue(cfg.bulk_queue);
        let (ctl_tx, ctl_rx) = mpsc::channel(EVENT_QUEUE);
        let (bulk_ev_tx, bulk_ev_rx) = mpsc::channel(EVENT_QUEUE);
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        tracing::info!(
            local = %local_addr, remote = %cfg.remote, ?role, pin = %cfg.key.pin(), peer_pin = %cfg.peer_pin,
            "HA link starting"
        );
        let supervisor = Supervisor {
            endpoint,
            mode,
            remote: cfg.remote,
            peer_pin: cfg.peer_pin,
            max_message: cfg.max_message,
            handshake_timeout: cfg.handshake_timeout,
            backoff_min: cfg.backoff_min,
            backoff_max: cfg.backoff_max,
            linger: cfg.idle_timeout,
            live_q: Arc::new(Mutex::new(live_q)),
            bulk_q: Arc::new(Mutex::new(bulk_q)),
            sinks: Sinks {
                ctl: ctl_tx,
                bulk: bulk_ev_tx,
                live_budget: Arc::new(Semaphore::new(cfg.receive_budget)),
                bulk_budget: Arc::new(Semaphore::new(cfg.receive_budget)),
            },
            stats: stats.clone(),
            shutdown: shutdown_rx,
            generation: 0,
        };
        tokio::spawn(supervisor.run());
        let tx = LinkTx {
            shared: Arc::new(TxShared {
                live: live_tx,
                bulk: bulk_tx,
                max_message: cfg.max_message,
                stats: stats.clone(),
                role,
                local_addr,
                _shutdown: shutdown_tx,
            }),
        };
        Ok((tx, LinkRx::new(ctl_rx, bulk_ev_rx, stats)))
    }
}

fn transport_config(cfg: &LinkConfig) -> Result<quinn::TransportConfig, LinkError> {
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|_| LinkError::Config("idle timeout too large".into()))?;
    let mut t = quinn::TransportConfig::default();
    // Exactly the two unidirectional streams; no datagrams (nothing here is loss-tolerant).
    t.max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(2))
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(cfg.keepalive))
        .max_idle_timeout(Some(idle))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(3 * STREAM_WINDOW))
        .send_window(8 * u64::from(STREAM_WINDOW));
    Ok(t)
}

/// Where received messages go, and the byte budgets that bound them.
#[derive(Clone)]
struct Sinks {
    ctl: mpsc::Sender<Ctl>,
    bulk: mpsc::Sender<Held>,
    live_budget: Arc<Semaphore>,
    bulk_budget: Arc<Semaphore>,
}

enum Mode {
    Client(quinn::ClientConfig),
    /// Authenticated connections from the acceptor task.
    Server(mpsc::Receiver<Connection>),
}

/// The next connection the acceptor hands over; never, for a client. `None`: the acceptor ended
/// (the endpoint closed).
async fn next_accepted(mode: &mut Mode) -> Option<Connection> {
    match mode {
        Mode::Server(rx) => rx.recv().await,
        Mode::Client(_) => std::future::pending().await,
    }
}

enum Served {
    /// The connection ended (or never came up: `up_for` zero).
    Ended {
        up_for: Duration,
    },
    /// The peer opened a newer connection; serve it next.
    Replaced(Connection),
    Shutdown,
}

struct Streams {
    live_send: SendStream,
    bulk_send: SendStream,
    live_recv: RecvStream,
    bulk_recv: RecvStream,
}

struct Supervisor {
    endpoint: Endpoint,
    mode: Mode,
    remote: SocketAddr,
    peer_pin: Pin,
    max_message: usize,
    handshake_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    linger: Duration,
    /// Locked by the connection's writer task while it runs; the supervisor's own once that task
    /// is gone (to purge). A mutex rather than ownership, so aborting the task cannot lose the queue.
    live_q: Arc<Mutex<QueueRx>>,
    bulk_q: Arc<Mutex<QueueRx>>,
    sinks: Sinks,
    stats: Arc<Counters>,
    shutdown: watch::Receiver<()>,
    generation: u64,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = self.backoff_min;
        let mut next: Option<Connection> = None;
        loop {
            let conn = match next.take() {
                Some(c) => c,
                None => match self.obtain(&mut backoff).await {
                    Some(c) => c,
                    None => break,
                },
            };
            match self.serve(conn).await {
                Served::Replaced(c) => next = Some(c),
                Served::Shutdown => break,
                Served::Ended { up_for } => {
                    if matches!(self.mode, Mode::Client(_)) {
                        if up_for >= self.backoff_max {
                            backoff = self.backoff_min;
                        }
                        if !self.pause(&mut backoff).await {
                            break;
                        }
                    }
                }
            }
        }
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        // Let the CONNECTION_CLOSE go out before the socket does. Past the idle timeout the peer
        // has given up on us anyway, so waiting out a full drain period would buy nothing.
        let _ = timeout(self.linger, self.endpoint.wait_idle()).await;
        tracing::info!("HA link stopped");
    }

    /// Sleeps the current backoff and doubles it; false if shut down meanwhile.
    async fn pause(&mut self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(self.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.changed() => false,
        }
    }

    /// An authenticated connection, or `None` at shutdown.
    async fn obtain(&mut self, backoff: &mut Duration) -> Option<Connection> {
        loop {
            let cfg = match &mut self.mode {
                Mode::Server(rx) => {
                    return tokio::select! {
                        c = rx.recv() => c,
                        _ = self.shutdown.changed() => None,
                    };
                }
                Mode::Client(cfg) => cfg.clone(),
            };
            let attempt = dial(&self.endpoint, cfg, self.remote, self.peer_pin, self.handshake_timeout);
            let result = tokio::select! {
                r = attempt => r,
                _ = self.shutdown.changed() => return None,
            };
            match result {
                Ok(conn) => return Some(conn),
                Err(why) => {
                    self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(remote = %self.remote, %why, "HA link: connecting failed");
                }
            }
            if !self.pause(backoff).await {
                return None;
            }
        }
    }

    async fn serve(&mut self, conn: Connection) -> Served {
        let peer = conn.remote_address();
        let setup = tokio::select! {
            r = timeout(self.handshake_timeout, open_streams(&conn)) => match r {
                Ok(r) => r,
                Err(_) => Err(DownReason::Protocol("peer did not open its streams in time".into())),
            },
            _ = self.shutdown.changed() => {
                close(&conn, CLOSE_SHUTDOWN, "shutdown");
                return Served::Shutdown;
            }
            c = next_accepted(&mut self.mode) => {
                close(&conn, CLOSE_REPLACED, "replaced");
                return c.map_or(Served::Shutdown, Served::Replaced);
            }
        };
        let streams = match setup {
            Ok(s) => s,
            Err(reason) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(reason, DownReason::Protocol(_)) {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    close(&conn, CLOSE_PROTOCOL, "protocol error");
                }
                tracing::debug!(%peer, %reason, "HA link: connection failed before it came up");
                return Served::Ended { up_for: Duration::ZERO };
            }
        };

        // Whatever waited in the queues was meant for a connection that is gone; the peer resyncs
        // after this PeerUp, so delivering it now would replay stale state.
        purge(&mut *self.live_q.lock().await, &self.stats.live);
        purge(&mut *self.bulk_q.lock().await, &self.stats.bulk);
        self.generation += 1;
        let generation = self.generation;
        self.stats.generation.store(generation, Ordering::Relaxed);
        self.stats.peer_up.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation, %peer, "HA link: peer up");
        if !self.report(Ctl::Up(generation)).await {
            close(&conn, CLOSE_SHUTDOWN, "shutdown");
            self.stats.peer_up.store(false, Ordering::Relaxed);
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            return Served::Shutdown;
        }
        let started = Instant::now();

        let mut tasks = self.spawn_loops(streams, generation);
        let mut replacement = None;
        let mut leftover = None;
        let reason = tokio::select! {
            r = tasks.join_next() => match r {
                Some(Ok((reason, stream))) => {
                    leftover = Some(stream);
                    reason
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "HA link: a stream task failed");
                    DownReason::Transport("internal error in a stream task".into())
                }
                None => DownReason::Shutdown,
            },
            e = conn.closed() => conn_reason(e),
            _ = self.shutdown.changed() => DownReason::Shutdown,
            c = next_accepted(&mut self.mode) => match c {
                Some(c) => {
                    replacement = Some(c);
                    DownReason::Replaced
                }
                None => DownReason::Shutdown,
            },
        };
        // Close first: the aborted writers drop their streams, which would otherwise send a clean
        // FIN ahead of the CONNECTION_CLOSE and look like a protocol error to the peer.
        match &reason {
            DownReason::Shutdown => close(&conn, CLOSE_SHUTDOWN, "shutdown"),
            DownReason::Replaced => close(&conn, CLOSE_REPLACED, "replaced"),
            DownReason::Protocol(_) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                close(&conn, CLOSE_PROTOCOL, "protocol error");
            }
            // Usually already closed by the peer or the transport (then this does nothing); if a
            // stream failed on its own, the connection is no use either.
            _ => close(&conn, CLOSE_PROTOCOL, "stream failed"),
        }
        drop(leftover);
        // Abort and wait: once this returns no reader can queue another message of `generation`,
        // and the writers have released the send queues.
        tasks.shutdown().await;
        self.stats.peer_up.store(false, Ordering::Relaxed);
        self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        if matches!(reason, DownReason::Shutdown | DownReason::Replaced) {
            tracing::info!(generation, %peer, %reason, "HA link: connection ended");
        } else {
            tracing::warn!(generation, %peer, %reason, "HA link: peer down");
        }
        // The readers are gone, so this Down follows every message of `generation`, as the LinkRx
        // expects.
        let down = Ctl::Down(generation, reason.clone());
        if reason == DownReason::Shutdown {
            // The caller may hold a full, unread LinkRx; a shutdown must not wait for it.
            let _ = self.sinks.ctl.try_send(down);
            return Served::Shutdown;
        }
        self.report(down).await;
        match replacement {
            Some(c) => Served::Replaced(c),
            None => Served::Ended { up_for: started.elapsed() },
        }
    }
}

impl Supervisor {
    /// Queues a control event for the LinkRx, waiting while a caller that reads slowly has it
    /// full, but not past a shutdown (a caller may drop its LinkTx and keep an unread LinkRx).
    /// False if shut down first. A dropped LinkRx counts as delivered: nobody is listening.
    async fn report(&mut self, event: Ctl) -> bool {
        tokio::select! {
            _ = self.sinks.ctl.send(event) => true,
            _ = self.shutdown.changed() => false,
        }
    }

    /// One task per stream and direction. Separate tasks, not branches of one `select!`: a bulk
    /// loop that always finds data ready would otherwise keep its task busy and starve the live
    /// loop beside it (seen in testing: a live message waiting for a whole 20 MB transfer).
    fn spawn_loops(&self, streams: Streams, generation: u64) -> JoinSet<Ended> {
        let Streams { live_send, bulk_send, live_recv, bulk_recv } = streams;
        let mut tasks = JoinSet::new();
        for (channel, send, q) in
            [(Channel::Live, live_send, &self.live_q), (Channel::Bulk, bulk_send, &self.bulk_q)]
        {
            tasks.spawn(writer(send, q.clone(), channel, self.stats.clone()));
        }
        for (channel, recv) in [(Channel::Live, live_recv), (Channel::Bulk, bulk_recv)] {
            let (sinks, stats, max) = (self.sinks.clone(), self.stats.clone(), self.max_message);
            tasks.spawn(reader(recv, channel, sinks, generation, max, stats));
        }
        tasks
    }
}

fn close(conn: &Connection, code: u32, why: &str) {
    conn.close(VarInt::from_u32(code), why.as_bytes());
}

fn purge(q: &mut QueueRx, c: &ChannelCounters) {
    while let Ok(m) = q.rx.try_recv() {
        q.bytes.fetch_sub(m.len(), Ordering::AcqRel);
        c.purged.fetch_add(1, Ordering::Relaxed);
    }
}

async fn dial(
    endpoint: &Endpoint,
    cfg: quinn::ClientConfig,
    remote: SocketAddr,
    peer_pin: Pin,
    limit: Duration,
) -> Result<Connection, String> {
    let connecting = endpoint.connect_with(cfg, remote, tls::SERVER_NAME).map_err(|e| e.to_string())?;
    let conn = timeout(limit, connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| clean(&e.to_string()))?;
    if let Err(why) = tls::confirm_peer(&conn, peer_pin) {
        close(&conn, CLOSE_PROTOCOL, why);
        return Err(why.to_string());
    }
    Ok(conn)
}

/// Opens our two streams (the kind byte makes each visible to the peer) and takes the peer's two.
/// For the client, the server's streams are the proof that the server accepted our certificate:
/// in TLS 1.3 the client finishes its handshake before the server has checked it.
async fn open_streams(conn: &Connection) -> Result<Streams, DownReason> {
    let mut live_send = conn.open_uni().await.map_err(conn_reason)?;
    let mut bulk_send = conn.open_uni().await.map_err(conn_reason)?;
    // These fail only on a stream already closed, which the write below reports.
    let _ = live_send.set_priority(LIVE_PRIORITY);
    let _ = bulk_send.set_priority(BULK_PRIORITY);
    live_send.write_all(&[Channel::Live.kind_byte()]).await.map_err(|e| write_reason(e, Channel::Live))?;
    bulk_send.write_all(&[Channel::Bulk.kind_byte()]).await.map_err(|e| write_reason(e, Channel::Bulk))?;
    let (mut live_recv, mut bulk_recv) = (None, None);
    for _ in 0..2 {
        let mut s = conn.accept_uni().await.map_err(conn_reason)?;
        let mut kind = [0u8; 1];
        s.read_exact(&mut kind).await.map_err(|e| read_reason(e, "a new"))?;
        match Channel::from_kind_byte(kind[0]) {
            Some(Channel::Live) if live_recv.is_none() => live_recv = Some(s),
            Some(Channel::Bulk) if bulk_recv.is_none() => bulk_recv = Some(s),
            _ => return Err(DownReason::Protocol(format!("unexpected stream kind {}", kind[0]))),
        }
    }
    match (live_recv, bulk_recv) {
        (Some(live_recv), Some(bulk_recv)) => Ok(Streams { live_send, bulk_send, live_recv, bulk_recv }),
        _ => Err(DownReason::Protocol("peer did not open one stream of each kind".into())),
    }
}

/// A stream handed back by its finished task. It is dropped only after the connection is closed:
/// dropping an open stream sends FIN or STOP_SENDING, which could reach the peer ahead of our
/// CONNECTION_CLOSE and be reported there as a protocol violation instead of the real reason.
enum Leftover {
    #[allow(dead_code)] // held, never read
    Send(SendStream),
    #[allow(dead_code)] // held, never read
    Recv(RecvStream),
}

type Ended = (DownReason, Leftover);

async fn writer(
    mut send: SendStream,
    q: Arc<Mutex<QueueRx>>,
    channel: Channel,
    stats: Arc<Counters>,
) -> Ended {
    let mut q = q.lock_owned().await;
    (write_loop(&mut send, &mut q, channel, &stats).await, Leftover::Send(send))
}

async fn reader(
    mut recv: RecvStream,
    channel: Channel,
    sinks: Sinks,
    generation: u64,
    max: usize,
    stats: Arc<Counters>,
) -> Ended {
    (read_loop(&mut recv, channel, &sinks, generation, max, &stats).await, Leftover::Recv(recv))
}

async fn write_loop(
    send: &mut SendStream,
    q: &mut QueueRx,
    channel: Channel,
    stats: &Counters,
) -> DownReason {
    loop {
        // `None`: every LinkTx is gone.
        let Some(msg) = q.rx.recv().await else { return DownReason::Shutdown };
        q.bytes.fetch_sub(msg.len(), Ordering::AcqRel);
        // `send` refused anything over max_message, which fits in u32.
        let header = (msg.len() as u32).to_be_bytes();
        if let Err(e) = send.write_all(&header).await {
            return write_reason(e, channel);
        }
        if let Err(e) = send.write_all(&msg).await {
            return write_reason(e, channel);
        }
        stats.channel(channel).sent(msg.len());
        if channel == Channel::Bulk {
            // A bulk message can take a while to copy; let other tasks on this worker run between
            // them even when the stream never blocks.
            tokio::task::yield_now().await;
        }
    }
}

async fn read_loop(
    recv: &mut RecvStream,
    channel: Channel,
    sinks: &Sinks,
    generation: u64,
    max: usize,
    stats: &Counters,
) -> DownReason {
    let (name, budget) = match channel {
        Channel::Live => ("live", &sinks.live_budget),
        Channel::Bulk => ("bulk", &sinks.bulk_budget),
    };
    loop {
        let mut header = [0u8; 4];
        if let Err(e) = recv.read_exact(&mut header).await {
            return read_reason(e, name);
        }
        let len = u32::from_be_bytes(header);
        if len as usize > max {
            return DownReason::Protocol(format!("{name} frame of {len} bytes exceeds the maximum of {max}"));
        }
        // Wait for room before allocating: this is the back-pressure that reaches the peer.
        let Ok(permit) = budget.clone().acquire_many_owned(len).await else {
            return DownReason::Shutdown;
        };
        let mut bytes = Zeroizing::new(vec![0u8; len as usize]);
        if let Err(e) = recv.read_exact(&mut bytes[..]).await {
            return read_reason(e, name);
        }
        stats.channel(channel).received(bytes.len());
        let held = Held { generation, bytes, permit };
        // A dropped LinkRx discards (and wipes) what arrives; the link itself keeps running.
        let _ = match channel {
            Channel::Live => sinks.ctl.send(Ctl::Live(held)).await.is_ok(),
            Channel::Bulk => sinks.bulk.send(held).await.is_ok(),
        };
        if channel == Channel::Bulk {
            tokio::task::yield_now().await;
        }
    }
}

fn conn_reason(e: ConnectionError) -> DownReason {
    match e {
        ConnectionError::TimedOut => DownReason::TimedOut,
        ConnectionError::Reset => DownReason::Reset,
        ConnectionError::ApplicationClosed(c) => DownReason::PeerClosed {
            code: c.error_code.into_inner(),
            reason: clean(&String::from_utf8_lossy(&c.reason)),
        },
        ConnectionError::LocallyClosed => DownReason::Shutdown,
        other => DownReason::Transport(clean(&other.to_string())),
    }
}

fn read_reason(e: quinn::ReadExactError, stream: &str) -> DownReason {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            DownReason::Protocol(format!("peer finished {stream} stream"))
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => conn_reason(e),
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(_)) => {
            DownReason::Protocol(format!("peer reset {stream} stream"))
        }
        quinn::ReadExactError::ReadError(other) => DownReason::Transport(other.to_string()),
    }
}

fn write_reason(e: quinn::WriteError, channel: Channel) -> DownReason {
    match e {
        quinn::WriteError::ConnectionLost(e) => conn_reason(e),
        quinn::WriteError::Stopped(_) => DownReason::Protocol(format!("peer stopped our {channel:?} stream")),
        other => DownReason::Transport(other.to_string()),
    }
}

/// Peer-supplied text, made safe to log: printable characters only, and short.
fn clean(s: &str) -> String {
    s.chars().take(MAX_REASON).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The server side's acceptor: runs handshakes concurrently (bounded) so that a slow or hostile
/// handshake never delays the genuine peer's, and passes on only authenticated connections.
struct Acceptor {
    endpoint: Endpoint,
    accepted: mpsc::Sender<Connection>,
    peer_pin: Pin,
    handshake_timeout: Duration,
    stats: Arc<Counters>,
}

impl Acceptor {
    async fn run(self) {
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        while let Some(incoming) = self.endpoint.accept().await {
            if !incoming.remote_address_validated() {
                // One extra round trip on a LAN; the retried Initial carries the token.
                if incoming.retry().is_err() {
                    self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            };
            let (accepted, stats) = (self.accepted.clone(), self.stats.clone());
            let (peer_pin, limit) = (self.peer_pin, self.handshake_timeout);
            tokio::spawn(async move {
                let _slot = slot;
                let from = incoming.remote_address();
                let result = match incoming.accept() {
                    Ok(connecting) => match timeout(limit, connecting).await {
                        Ok(Ok(conn)) => match tls::confirm_peer(&conn, peer_pin) {
                            Ok(()) => Ok(conn),
                            Err(why) => {
                                close(&conn, CLOSE_PROTOCOL, why);
                                Err(why.to_string())
                            }
                        },
                        Ok(Err(e)) => Err(clean(&e.to_string())),
                        Err(_) => Err("handshake timed out".to_string()),
                    },
                    Err(e) => Err(clean(&e.to_string())),
                };
                match result {
                    Ok(conn) => {
                        if let Err(mpsc::error::SendError(conn)) = accepted.send(conn).await {
                            close(&conn, CLOSE_SHUTDOWN, "shutdown");
                        }
                    }
                    Err(why) => {
                        stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%from, %why, "HA link: incoming connection failed");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_complementary_and_equal_pins_refused() {
        let a = Pin::from_bytes([1; 32]);
        let b = Pin::from_bytes([2; 32]);
        assert_eq!(Role::for_pins(&a, &b), Some(Role::Client));
        assert_eq!(Role::for_pins(&b, &a), Some(Role::Server));
        assert_eq!(Role::for_pins(&a, &a), None);
        // Byte order equals hex-string order, as documented for operators.
        assert_eq!(a.to_string() < b.to_string(), a < b);
    }

    #[test]
    fn config_validation() {
        let k = crate::keygen().unwrap();
        let addr: SocketAddr = "127.0.0.1:4500".parse().unwrap();
        let peer = crate::keygen().unwrap().pin();
        let ok = LinkConfig::new(addr, addr, k.clone(), peer);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.peer_pin = k.pin();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.keepalive = c.idle_timeout;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.bulk_queue.bytes = c.max_message - 1;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.live_queue.messages = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.receive_budget = 1;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.backoff_max = Duration::ZERO;
        assert!(c.validate().is_err());
    }

    #[test]
    fn peer_text_is_cleaned() {
        assert_eq!(clean("a\nb\x1b[31m"), "a?b?[31m");
        assert_eq!(clean(&"x".repeat(500)).len(), MAX_REASON);
    }
}

//! Two links on loopback. Every await is under a timeout, so a broken link fails a test instead of
//! hanging it; waits are for events, or for counters where there is no event.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_ha_link::{
    keygen, Channel, DownReason, Link, LinkConfig, LinkEvent, LinkRx, LinkTx, NodeKey, Pin, Role, SendError,
    TryRecvError,
};
use tokio::time::timeout;

/// Upper bound for anything a test awaits: far above what a working link needs.
const LIMIT: Duration = Duration::from_secs(15);

fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

fn start(
    key: &NodeKey,
    peer: Pin,
    sock: UdpSocket,
    remote: SocketAddr,
    tweak: impl FnOnce(&mut LinkConfig),
) -> (LinkTx, LinkRx) {
    let mut cfg = LinkConfig::new(addr(&sock), remote, key.clone(), peer);
    tweak(&mut cfg);
    Link::start_on(cfg, sock).unwrap()
}

type End = (LinkTx, LinkRx);

/// Two nodes pointing at each other directly.
fn pair_with(tweak_a: impl FnOnce(&mut LinkConfig), tweak_b: impl FnOnce(&mut LinkConfig)) -> (End, End) {
    let (ka, kb) = (keygen().unwrap(), keygen().unwrap());
    let (sa, sb) = (socket(), socket());
    let (aa, ab) = (addr(&sa), addr(&sb));
    let a = start(&ka, kb.pin(), sa, ab, tweak_a);
    let b = start(&kb, ka.pin(), sb, aa, tweak_b);
    assert_ne!(a.0.role(), b.0.role());
    (a, b)
}

fn pair() -> (End, End) {
    pair_with(|_| {}, |_| {})
}

async fn next(rx: &mut LinkRx) -> LinkEvent {
    timeout(LIMIT, rx.recv()).await.expect("timed out waiting for a link event").expect("link stopped")
}

async fn expect_up(rx: &mut LinkRx) -> u64 {
    match next(rx).await {
        LinkEvent::PeerUp { generation } => generation,
        other => panic!("expected PeerUp, got {other:?}"),
    }
}

async fn expect_down(rx: &mut LinkRx) -> DownReason {
    match next(rx).await {
        LinkEvent::PeerDown { reason, .. } => reason,
        other => panic!("expected PeerDown, got {other:?}"),
    }
}

async fn expect_msg(rx: &mut LinkRx) -> (Channel, Vec<u8>) {
    match next(rx).await {
        LinkEvent::Message { channel, bytes } => (channel, bytes),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// For conditions only counters show. Polls; fails after `LIMIT`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn ping(from: &LinkTx, to: &mut LinkRx, channel: Channel, text: &[u8]) {
    from.send(channel, text.to_vec()).unwrap();
    assert_eq!(expect_msg(to).await, (channel, text.to_vec()));
}

fn tagged(side: u8, channel: Channel, i: u32) -> Vec<u8> {
    let mut m = vec![side, channel as u8];
    m.extend_from_slice(&i.to_be_bytes());
    // Vary the size so framing boundaries move around.
    m.resize(6 + (i as usize * 37) % 3000, 0xA5);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_both_ways_on_both_channels_in_order() {
    let ((atx, mut arx), (btx, mut brx)) = pair();
    assert_eq!(expect_up(&mut arx).await, 1);
    assert_eq!(expect_up(&mut brx).await, 1);
    const N: u32 = 200;
    for (side, tx) in [(b'A', &atx), (b'B', &btx)] {
        for i in 0..N {
            tx.send(Channel::Live, tagged(side, Channel::Live, i)).unwrap();
            tx.send(Channel::Bulk, tagged(side, Channel::Bulk, i)).unwrap();
        }
    }
    for (peer_side, rx) in [(b'B', &mut arx), (b'A', &mut brx)] {
        let (mut live, mut bulk) = (0, 0);
        while live < N || bulk < N {
            let (channel, bytes) = expect_msg(rx).await;
            let n = match channel {
                Channel::Live => &mut live,
                Channel::Bulk => &mut bulk,
            };
            assert_eq!(bytes, tagged(peer_side, channel, *n), "{channel:?} message {n} out of order");
            *n += 1;
        }
    }
    for tx in [&atx, &btx] {
        wait_until("send counters", || {
            let s = tx.stats();
            (s.live.sent_messages, s.bulk.sent_messages) == (N as u64, N as u64)
        })
        .await;
        let s = tx.stats();
        assert_eq!((s.live.received_messages, s.bulk.received_messages), (N as u64, N as u64));
        assert_eq!((s.connects, s.disconnects, s.generation, s.peer_up), (1, 0, 1, true));
        assert_eq!(s.bulk.sent_bytes, (0..N).map(|i| tagged(0, Channel::Bulk, i).len() as u64).sum::<u64>());
    }
    assert_eq!(arx.try_recv(), Err(TryRecvError::Empty));
}

/// A node whose configured peer pin is wrong keeps its role (so one side still dials), refuses
/// the genuine peer's key, and neither side ever reports PeerUp or delivers a message.
async fn wrong_pin_case(wrong_side: Role) {
    let (k1, k2) = (keygen().unwrap(), keygen().unwrap());
    let (client_key, server_key) = if k1.pin() < k2.pin() { (k1, k2) } else { (k2, k1) };
    let stranger = (0..200)
        .map(|_| keygen().unwrap().pin())
        .find(|p| match wrong_side {
            Role::Client => *p > client_key.pin(),
            Role::Server => *p < server_key.pin(),
        })
        .expect("a stranger pin on the right side");
    let (cs, ss) = (socket(), socket());
    let (ca, sa) = (addr(&cs), addr(&ss));
    let client_pin = if wrong_side == Role::Client { stranger } else { server_key.pin() };
    let server_pin = if wrong_side == Role::Server { stranger } else { client_key.pin() };
    let (ctx, mut crx) = start(&client_key, client_pin, cs, sa, |_| {});
    let (stx, mut srx) = start(&server_key, server_pin, ss, ca, |_| {});
    assert_eq!((ctx.role(), stx.role()), (Role::Client, Role::Server));
    let refuser = if wrong_side == Role::Client { &ctx } else { &stx };
    wait_until("two refused handshakes", || {
        refuser.stats().auth_failures >= 2
            && ctx.stats().handshake_failures >= 2
            && stx.stats().handshake_failures >= 2
    })
    .await;
    let _ = ctx.send(Channel::Live, b"secret".to_vec());
    let _ = stx.send(Channel::Live, b"secret".to_vec());
    for (tx, rx) in [(&ctx, &mut crx), (&stx, &mut srx)] {
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let s = tx.stats();
        assert_eq!((s.connects, s.generation, s.peer_up, s.live.received_messages), (0, 0, false, 0));
    }
    let other = if wrong_side == Role::Client { &stx } else { &ctx };
    assert_eq!(other.stats().auth_failures, 0, "the correctly configured side accepted the key it pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_at_client_is_refused_on_both_sides() {
    wrong_pin_case(Role::Client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_at_server_is_refused_on_both_sides() {
    wrong_pin_case(Role::Server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_message_overtakes_a_20_mb_bulk_transfer() {
    let ((atx, mut arx), (_btx, mut brx)) = pair();
    expect_up(&mut arx).await;
    expect_up(&mut brx).await;
    const PARTS: u32 = 20;
    const PART: usize = 1_000_000;
    for i in 0..PARTS {
        let mut m = vec![0u8; PART];
        m[..4].copy_from_slice(&i.to_be_bytes());
        atx.send(Channel::Bulk, m).unwrap();
    }
    // The transfer is under way once its first part has arrived.
    let (channel, first) = expect_msg(&mut brx).await;
    assert_eq!((channel, &first[..4]), (Channel::Bulk, &0u32.to_be_bytes()[..]));
    let sent_at = Instant::now();
    atx.send(Channel::Live, b"lease".to_vec()).unwrap();
    let (mut bulk_done, mut live_after) = (1u32, None);
    while bulk_done < PARTS || live_after.is_none() {
        match expect_msg(&mut brx).await {
            (Channel::Live, m) => {
                assert_eq!(m, b"lease");
                live_after = Some(bulk_done);
                eprintln!(
                    "live message after {bulk_done} of {PARTS} bulk parts, {:?} after sending",
                    sent_at.elapsed()
                );
            }
            (Channel::Bulk, m) => {
                assert_eq!((m.len(), &m[..4]), (PART, &bulk_done.to_be_bytes()[..]));
                bulk_done += 1;
            }
        }
    }
    // It only has to beat the end of the transfer; half way is a margin for a loaded machine
    // (typically it comes right after the part that was in flight).
    let live_after = live_after.unwrap_or(PARTS);
    assert!(live_after <= PARTS / 2, "the live message waited for {live_after} of {PARTS} bulk parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drop_is_reported_at_once() {
    let ((atx, mut arx), (btx, mut brx)) = pair();
    expect_up(&mut arx).await;
    expect_up(&mut brx).await;
    drop((btx, brx));
    let reason = expect_down(&mut arx).await;
    assert!(matches!(reason, DownReason::PeerClosed { code: 0, .. }), "{reason}");
    assert_eq!(atx.stats().disconnects, 1);
}

/// A UDP relay between the client and the server that can be cut (blackhole) without either end
/// closing anything, as a crash or a pulled cable would, and re-pointed at a restarted server.
struct Relay {
    front: SocketAddr,
    cut: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(target: SocketAddr) -> Relay {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Mutex::new(target));
    let (c, t) = (cut.clone(), target.clone());
    let task = tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                r = front.recv_from(&mut up) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    let to = *t.lock().unwrap();
                    if !c.load(Ordering::SeqCst) {
                        let _ = back.send_to(&up[..n], to).await;
                    }
                }
                r = back.recv_from(&mut down) => {
                    let Ok((n, _)) = r else { return };
                    if let (Some(to), false) = (client, c.load(Ordering::SeqCst)) {
                        let _ = front.send_to(&down[..n], to).await;
                    }
                }
            }
        }
    });
    Relay { front: front_addr, cut, target, task }
}

/// Kills one node silently (no CONNECTION_CLOSE reaches the other), checks that the survivor
/// notices within about the idle timeout, then restarts the dead node with the same key and checks
/// that a new generation comes up and messages flow again.
async fn loss_and_restart(victim: Role) {
    let (k1, k2) = (keygen().unwrap(), keygen().unwrap());
    let (ck, sk) = if k1.pin() < k2.pin() { (k1, k2) } else { (k2, k1) };
    let (cs, ss) = (socket(), socket());
    let (ca, sa) = (addr(&cs), addr(&ss));
    let relay = relay(sa).await;
    let mut client = Some(start(&ck, sk.pin(), cs, relay.front, |_| {}));
    let mut server = Some(start(&sk, ck.pin(), ss, ca, |_| {}));
    for end in [&mut client, &mut server] {
        let (tx, rx) = end.as_mut().unwrap();
        assert_eq!(expect_up(rx).await, 1);
        assert_eq!(tx.stats().generation, 1);
    }
    {
        let ((ctx, crx), (stx, srx)) = (client.as_mut().unwrap(), server.as_mut().unwrap());
        ping(ctx, srx, Channel::Live, b"before").await;
        ping(stx, crx, Channel::Bulk, b"before").await;
    }

    relay.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let (dead, survivor) = match victim {
        Role::Client => (&mut client, &mut server),
        Role::Server => (&mut server, &mut client),
    };
    drop(dead.take());
    let (stx, srx) = survivor.as_mut().unwrap();
    let reason = expect_down(srx).await;
    let noticed = cut_at.elapsed();
    eprintln!("{victim:?} lost: survivor reported {reason} after {noticed:?}");
    assert_eq!(reason, DownReason::TimedOut);
    assert!(noticed < Duration::from_millis(1500), "peer loss took {noticed:?}");
    assert!(!stx.stats().peer_up);

    // Heal the path, then restart the victim with the same key on a new socket.
    let fresh = socket();
    if victim == Role::Server {
        *relay.target.lock().unwrap() = addr(&fresh);
    }
    relay.cut.store(false, Ordering::SeqCst);
    let restarted = match victim {
        Role::Client => start(&ck, sk.pin(), fresh, relay.front, |_| {}),
        Role::Server => start(&sk, ck.pin(), fresh, ca, |_| {}),
    };
    *dead = Some(restarted);
    let (rtx, rrx) = dead.as_mut().unwrap();
    assert_eq!(expect_up(rrx).await, 1, "a restarted node starts its own generations");
    let (stx, srx) = survivor.as_mut().unwrap();
    let generation = expect_up(srx).await;
    assert!(generation > 1, "survivor's generation must grow, got {generation}");
    ping(stx, rrx, Channel::Live, b"after").await;
    ping(rtx, srx, Channel::Bulk, b"after").await;
    assert_eq!((stx.stats().connects, stx.stats().disconnects), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_loss_is_detected_and_restart_reconnects() {
    loss_and_restart(Role::Client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_loss_is_detected_and_restart_reconnects() {
    loss_and_restart(Role::Server).await;
}

/// The client crashes and comes back before the server's idle timeout: the server must take the
/// new connection at once (reporting the old one as replaced), not wait out the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_client_replaces_the_stale_connection() {
    let (k1, k2) = (keygen().unwrap(), keygen().unwrap());
    let (ck, sk) = if k1.pin() < k2.pin() { (k1, k2) } else { (k2, k1) };
    let (cs, ss) = (socket(), socket());
    let ca = addr(&cs);
    let relay = relay(addr(&ss)).await;
    // Long idle timeouts (QUIC uses the smaller of both sides'), so only replacement can end it.
    let patient = |c: &mut LinkConfig| c.idle_timeout = Duration::from_secs(5);
    let (old_tx, mut old_rx) = start(&ck, sk.pin(), cs, relay.front, patient);
    let (stx, mut srx) = start(&sk, ck.pin(), ss, ca, patient);
    assert_eq!(expect_up(&mut srx).await, 1);
    assert_eq!(expect_up(&mut old_rx).await, 1);
    // Crash: nothing of the client's close gets through. Its receiver ends once the stopped link
    // has sent (into the void) everything it had to send.
    relay.cut.store(true, Ordering::SeqCst);
    drop(old_tx);
    assert_eq!(expect_down(&mut old_rx).await, DownReason::Shutdown);
    assert_eq!(timeout(LIMIT, old_rx.recv()).await.unwrap(), None);
    // Heal first: a lost first Initial costs QUIC's initial PTO (about a second).
    relay.cut.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    let (ctx, mut crx) = start(&ck, sk.pin(), socket(), relay.front, patient);
    assert_eq!(expect_up(&mut crx).await, 1);
    eprintln!("restarted client up after {:?}", t0.elapsed());
    assert_eq!(expect_down(&mut srx).await, DownReason::Replaced);
    assert_eq!(expect_up(&mut srx).await, 2);
    ping(&ctx, &mut srx, Channel::Live, b"new").await;
    ping(&stx, &mut crx, Channel::Live, b"welcome").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_returns_full_without_blocking() {
    // No peer at all: nothing drains the queues.
    let nobody = socket();
    let (tx, mut rx) = start(&keygen().unwrap(), keygen().unwrap().pin(), socket(), addr(&nobody), |c| {
        c.max_message = 1000;
        c.live_queue.messages = 3;
        c.live_queue.bytes = 1000;
        c.bulk_queue.messages = 100;
        c.bulk_queue.bytes = 1500;
    });
    let t0 = Instant::now();
    for _ in 0..3 {
        tx.send(Channel::Live, vec![1; 10]).unwrap();
    }
    assert_eq!(tx.send(Channel::Live, vec![1; 10]), Err(SendError::Full(Channel::Live)));
    tx.send(Channel::Bulk, vec![2; 1000]).unwrap();
    assert_eq!(tx.send(Channel::Bulk, vec![2; 600]), Err(SendError::Full(Channel::Bulk)));
    tx.send(Channel::Bulk, vec![2; 500]).unwrap();
    assert_eq!(tx.send(Channel::Bulk, vec![2; 1001]), Err(SendError::TooLarge { len: 1001, max: 1000 }));
    assert!(t0.elapsed() < Duration::from_millis(100));
    let s = tx.stats();
    assert_eq!((s.live.queue_full, s.bulk.queue_full), (1, 1));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    // Dropping the sender stops the link, and the receiver then ends.
    drop(tx);
    assert_eq!(timeout(LIMIT, rx.recv()).await.unwrap(), None);
}

/// The receiver does not read. Its budget fills, QUIC flow control stops the sender, the sender's
/// queue fills and `send` says Full. Nothing accepted is lost, and a live message sent last is
/// still delivered ahead of the bulk backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_receiver_back_pressures_the_sender_into_full() {
    let small = |c: &mut LinkConfig| {
        c.max_message = 64 << 10;
        c.receive_budget = 1 << 20;
        c.bulk_queue.bytes = 1 << 20;
    };
    let ((atx, mut arx), (btx, mut brx)) = pair_with(small, small);
    expect_up(&mut arx).await;
    let mut accepted = 0u32;
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut m = vec![0u8; 64 << 10];
        m[..4].copy_from_slice(&accepted.to_be_bytes());
        match atx.send(Channel::Bulk, m) {
            Ok(()) => accepted += 1,
            Err(SendError::Full(Channel::Bulk)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "never became full after {accepted} messages");
        // Let the link move what it can before trying again.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(atx.stats().bulk.queue_full, 1);
    eprintln!("sender full after {accepted} x 64 KiB while the receiver was not reading");
    atx.send(Channel::Live, b"urgent".to_vec()).unwrap();
    wait_until("the live message to arrive", || btx.stats().live.received_messages == 1).await;

    assert_eq!(expect_up(&mut brx).await, 1);
    assert_eq!(expect_msg(&mut brx).await, (Channel::Live, b"urgent".to_vec()));
    for i in 0..accepted {
        let (channel, m) = expect_msg(&mut brx).await;
        assert_eq!((channel, &m[..4]), (Channel::Bulk, &i.to_be_bytes()[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_closes_the_connection_with_a_protocol_error() {
    // A accepts at most 1 MiB; B is configured to send up to 4 MiB.
    let ((atx, mut arx), (btx, mut brx)) =
        pair_with(|c| c.max_message = 1 << 20, |c| c.max_message = 4 << 20);
    expect_up(&mut arx).await;
    expect_up(&mut brx).await;
    btx.send(Channel::Live, vec![7; 2 << 20]).unwrap();
    let reason = expect_down(&mut arx).await;
    assert!(matches!(&reason, DownReason::Protocol(why) if why.contains("exceeds")), "{reason}");
    let reason = expect_down(&mut brx).await;
    assert!(matches!(reason, DownReason::PeerClosed { code: 1, .. }), "{reason}");
    assert_eq!(atx.stats().protocol_errors, 1);
    // The link recovers with a new generation.
    assert_eq!(expect_up(&mut arx).await, 2);
    assert_eq!(expect_up(&mut brx).await, 2);
    ping(&btx, &mut arx, Channel::Live, b"small").await;
    ping(&atx, &mut brx, Channel::Bulk, b"fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_datagrams_change_nothing() {
    let ((atx, mut arx), (btx, mut brx)) = pair();
    expect_up(&mut arx).await;
    expect_up(&mut brx).await;
    let junk = socket();
    let mut x: u32 = 0x9e37_79b9;
    for i in 0..300usize {
        let len = 1 + (i * 53) % 1400;
        let d: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for to in [atx.local_addr(), btx.local_addr()] {
            let _ = junk.send_to(&d, to);
        }
    }
    ping(&atx, &mut brx, Channel::Live, b"still here").await;
    ping(&btx, &mut arx, Channel::Bulk, b"me too").await;
    assert_eq!(arx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!((atx.stats().disconnects, btx.stats().disconnects), (0, 0));
}

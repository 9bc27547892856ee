//! Counters, shared by the caller's handles and the link's tasks as relaxed atomics: each is an
//! independent tally for operators and tests, never used to synchronise anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::Channel;

#[derive(Debug, Default)]
pub(crate) struct ChannelCounters {
    pub sent_messages: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received_messages: AtomicU64,
    pub received_bytes: AtomicU64,
    pub queue_full: AtomicU64,
    pub purged: AtomicU64,
    pub stale: AtomicU64,
}

impl ChannelCounters {
    pub fn sent(&self, len: usize) {
        self.sent_messages.fetch_add(1, Relaxed);
        self.sent_bytes.fetch_add(len as u64, Relaxed);
    }

    pub fn received(&self, len: usize) {
        self.received_messages.fetch_add(1, Relaxed);
        self.received_bytes.fetch_add(len as u64, Relaxed);
    }

    fn snapshot(&self) -> ChannelStats {
        ChannelStats {
            sent_messages: self.sent_messages.load(Relaxed),
            sent_bytes: self.sent_bytes.load(Relaxed),
            received_messages: self.received_messages.load(Relaxed),
            received_bytes: self.received_bytes.load(Relaxed),
            queue_full: self.queue_full.load(Relaxed),
            purged: self.purged.load(Relaxed),
            stale: self.stale.load(Relaxed),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub live: ChannelCounters,
    pub bulk: ChannelCounters,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub generation: AtomicU64,
    pub peer_up: AtomicBool,
}

impl Counters {
    pub fn channel(&self, c: Channel) -> &ChannelCounters {
        match c {
            Channel::Live => &self.live,
            Channel::Bulk => &self.bulk,
        }
    }

    pub fn snapshot(&self) -> LinkStats {
        LinkStats {
            live: self.live.snapshot(),
            bulk: self.bulk.snapshot(),
            connects: self.connects.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            handshake_failures: self.handshake_failures.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            generation: self.generation.load(Relaxed),
            peer_up: self.peer_up.load(Relaxed),
        }
    }
}

/// Per-channel counts. "Sent" means handed to QUIC (not yet acknowledged); "received" means read
/// off the wire (it may still wait in the [`LinkRx`](crate::LinkRx)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    pub sent_messages: u64,
    pub sent_bytes: u64,
    pub received_messages: u64,
    pub received_bytes: u64,
    /// `send` calls refused with [`SendError::Full`](crate::SendError::Full).
    pub queue_full: u64,
    /// Messages queued while no connection was up, dropped when the next one came up (the peer
    /// resyncs after `PeerUp`, so delivering them late would only replay stale state).
    pub purged: u64,
    /// Received messages of a connection already reported down, dropped by the `LinkRx`.
    pub stale: u64,
}

/// A snapshot of the link's counters, from [`LinkTx::stats`](crate::LinkTx::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub live: ChannelStats,
    pub bulk: ChannelStats,
    /// Connections that came up (one `PeerUp` each).
    pub connects: u64,
    /// Connections that went down after coming up (one `PeerDown` each).
    pub disconnects: u64,
    /// Connection attempts (dialled or accepted) that failed before `PeerUp`, whatever the cause.
    pub handshake_failures: u64,
    /// Of those, certificates refused because they were not the pinned key.
    pub auth_failures: u64,
    /// Connections closed because the peer broke the framing rules.
    pub protocol_errors: u64,
    /// Generation of the newest connection that came up (0: none yet).
    pub generation: u64,
    pub peer_up: bool,
}

//! Per-SA and global counters, in the spirit of `show ipsec-sa all-properties` and `ipsec-stat`
//! (seed 003). All are relaxed atomics: exact totals matter, ordering between them does not. The
//! batch paths add once per batch (or per run of packets of one SA) rather than per packet, so
//! worker threads sharing an SA rarely touch its counter cache line.

use crate::error::DropReason;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Adds `n` to a counter.
pub fn bump(a: &AtomicU64, n: u64) {
    if n != 0 {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// Counters of one SA (one direction).
#[derive(Debug, Default)]
pub struct SaCounters {
    /// Packets sealed (outbound) or delivered after authentication (inbound; dummy packets are
    /// counted in `dummy` only).
    pub packets: AtomicU64,
    /// Payload bytes (the inner packet, without ESP overhead).
    pub bytes: AtomicU64,
    pub replay_drops: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Bad padding, bad next header, malformed inner packet.
    pub malformed: AtomicU64,
    pub policy_mismatch: AtomicU64,
    /// Dummy (next header 59) packets received.
    pub dummy: AtomicU64,
    /// Packets refused because a hard limit or the sequence space was reached.
    pub expired_drops: AtomicU64,
    /// Packets that could not be sealed for lack of buffer room or a crypto failure.
    pub seal_errors: AtomicU64,
    /// HA: packets not sealed because the SA was at its sequence-number lease ceiling (the
    /// standby's ack of a renewal was late). Kept apart from `expired_drops`: the SA is healthy
    /// and this is the number to alarm on when sync lags.
    pub lease_stalls: AtomicU64,
    /// `packets` at the last [`SaCounters::packets_since_last_read`] call (for HA).
    last_read_packets: AtomicU64,
}

/// A copy of [`SaCounters`] for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SaCountersSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub replay_drops: u64,
    pub auth_failures: u64,
    pub malformed: u64,
    pub policy_mismatch: u64,
    pub dummy: u64,
    pub expired_drops: u64,
    pub seal_errors: u64,
    /// `#[serde(default)]`: listings serialized before the counter existed still parse.
    #[serde(default)]
    pub lease_stalls: u64,
}

impl SaCounters {
    pub fn snapshot(&self) -> SaCountersSnapshot {
        SaCountersSnapshot {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            replay_drops: get(&self.replay_drops),
            auth_failures: get(&self.auth_failures),
            malformed: get(&self.malformed),
            policy_mismatch: get(&self.policy_mismatch),
            dummy: get(&self.dummy),
            expired_drops: get(&self.expired_drops),
            seal_errors: get(&self.seal_errors),
            lease_stalls: get(&self.lease_stalls),
        }
    }

    /// Packets since the previous call (HA sync uses this to decide whether an SA's sequence or
    /// replay state needs sending). Costs nothing on the hot path.
    pub fn packets_since_last_read(&self) -> u64 {
        let now = get(&self.packets);
        now.saturating_sub(self.last_read_packets.swap(now, Ordering::Relaxed))
    }

    /// Counts `n` packets the sequence counter refused: exhaustion as an expiry, a lease stall
    /// on its own.
    pub(crate) fn count_seq_refusal(&self, e: crate::seq::SeqError, n: u64) {
        let c = match e {
            crate::seq::SeqError::Exhausted => &self.expired_drops,
            crate::seq::SeqError::LeaseStall => &self.lease_stalls,
        };
        bump(c, n);
    }

    /// Counts an inbound drop on the SA it was meant for.
    pub(crate) fn count_drop(&self, reason: DropReason) {
        let c = match reason {
            DropReason::ReplayOld | DropReason::ReplayDuplicate => &self.replay_drops,
            DropReason::AuthFailed => &self.auth_failures,
            DropReason::Malformed
            | DropReason::BadPadding
            | DropReason::BadNextHeader(_)
            | DropReason::InnerMalformed => &self.malformed,
            DropReason::PolicyMismatch => &self.policy_mismatch,
            DropReason::Dummy => &self.dummy,
            DropReason::Expired => &self.expired_drops,
            DropReason::NoSa(_) => return,
        };
        bump(c, 1);
    }
}

/// Counters of the whole dataplane (`ipsec-stat`). The SPD ones are bumped by the daemon's
/// outbound path, the rest by `open`.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    /// Inbound ESP packets with an unknown SPI.
    pub in_no_sa: AtomicU64,
    /// Inbound packets too short or misaligned (before or after the SA lookup).
    pub in_malformed: AtomicU64,
    pub in_replay: AtomicU64,
    pub in_auth_failed: AtomicU64,
    pub in_policy_mismatch: AtomicU64,
    pub in_dummy: AtomicU64,
    pub in_expired: AtomicU64,
    /// Outbound packets matching a Discard policy.
    pub out_policy_discard: AtomicU64,
    /// Outbound packets matching no policy.
    pub out_no_policy: AtomicU64,
    /// Outbound packets matching a Protect policy with no SA installed (trap, RFC 4301 ACQUIRE).
    pub out_no_sa: AtomicU64,
    /// Outbound packets that could not be sealed.
    pub out_seal_errors: AtomicU64,
}

/// A copy of [`GlobalCounters`] for `show ipsec-stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GlobalStats {
    pub in_no_sa: u64,
    pub in_malformed: u64,
    pub in_replay: u64,
    pub in_auth_failed: u64,
    pub in_policy_mismatch: u64,
    pub in_dummy: u64,
    pub in_expired: u64,
    pub out_policy_discard: u64,
    pub out_no_policy: u64,
    pub out_no_sa: u64,
    pub out_seal_errors: u64,
}

impl GlobalCounters {
    pub fn snapshot(&self) -> GlobalStats {
        GlobalStats {
            in_no_sa: get(&self.in_no_sa),
            in_malformed: get(&self.in_malformed),
            in_replay: get(&self.in_replay),
            in_auth_failed: get(&self.in_auth_failed),
            in_policy_mismatch: get(&self.in_policy_mismatch),
            in_dummy: get(&self.in_dummy),
            in_expired: get(&self.in_expired),
            out_policy_discard: get(&self.out_policy_discard),
            out_no_policy: get(&self.out_no_policy),
            out_no_sa: get(&self.out_no_sa),
            out_seal_errors: get(&self.out_seal_errors),
        }
    }

    /// Counts an inbound drop.
    pub fn count_drop(&self, reason: DropReason) {
        let c = match reason {
            DropReason::NoSa(_) => &self.in_no_sa,
            DropReason::ReplayOld | DropReason::ReplayDuplicate => &self.in_replay,
            DropReason::AuthFailed => &self.in_auth_failed,
            DropReason::Malformed
            | DropReason::BadPadding
            | DropReason::BadNextHeader(_)
            | DropReason::InnerMalformed => &self.in_malformed,
            DropReason::PolicyMismatch => &self.in_policy_mismatch,
            DropReason::Dummy => &self.in_dummy,
            DropReason::Expired => &self.in_expired,
        };
        bump(c, 1);
    }
}

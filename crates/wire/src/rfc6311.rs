//! The notification data of RFC 6311 (IKEv2/IPsec high availability), section 4.
//!
//! After a failover the new active node may have a stale copy of an IKE SA's Message ID counters and
//! of its CHILD SAs' replay counters. RFC 6311 lets it resynchronise them with the peer in an
//! INFORMATIONAL exchange that uses Message ID 0 (a number no regular request uses after
//! IKE_SA_INIT). Two of the four notify types carry data and are decoded here; the two
//! `*_SUPPORTED` notifies carry none and are announced in IKE_AUTH.
//!
//! Every notify of this RFC is about the IKE SA itself: Protocol ID 0 and SPI size 0. The codecs are
//! structural only: a value that parses is well-formed, not necessarily acceptable (the Message ID
//! rules of RFC 6311 section 5.1 belong to the engine, which knows the SA's counters).

use crate::codes::{NotifyType, ProtocolId};
use crate::error::WireError;
use crate::payload::Notify;
use serde::{Deserialize, Serialize};

/// Checks that `n` is an RFC 6311 notify of type `ty`: the right type, about the IKE SA (protocol
/// 0, no SPI). Anything else is a peer bug, and guessing which SA it meant would be worse.
fn ike_sa_notify<'a>(n: &'a Notify, ty: NotifyType, what: &'static str) -> Result<&'a [u8], WireError> {
    if n.notify_type != ty || n.protocol != ProtocolId::NONE || !n.spi.is_empty() {
        return Err(WireError::Invalid(what));
    }
    Ok(&n.data)
}

/// IKEV2_MESSAGE_ID_SYNC data (RFC 6311 section 4.1): a 4-octet nonce, then the sender's view of
/// the two Message ID counters, 12 octets in all, big-endian.
///
/// The counters are relative to the *sender* of the notify, not to the original IKE roles: in the
/// cluster's request they are (M1, P1) = (our next request MID, the peer request MID we expect
/// next); in the peer's response they are (P2, M2) = (its next request MID, the MID it now expects
/// from us). A response is matched to its request by the echoed nonce, since both use MID 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageIdSync {
    /// Random in a request; echoed unchanged in the response.
    pub nonce: u32,
    /// EXPECTED_SEND_REQ_MESSAGE_ID: the Message ID the sender will use in its next request.
    pub expected_send_req_mid: u32,
    /// EXPECTED_RECV_REQ_MESSAGE_ID: the Message ID the sender expects in the next request it
    /// receives.
    pub expected_recv_req_mid: u32,
}

impl MessageIdSync {
    /// Length of the notification data.
    pub const LEN: usize = 12;

    /// Decodes the notification data. Exactly [`Self::LEN`] octets: a longer field is not a
    /// future extension (the RFC defines none), it is a framing error.
    pub fn parse(data: &[u8]) -> Result<MessageIdSync, WireError> {
        const WHAT: &str = "IKEV2_MESSAGE_ID_SYNC data";
        let Ok(b) = <&[u8; Self::LEN]>::try_from(data) else {
            return Err(if data.len() < Self::LEN {
                WireError::Truncated(WHAT)
            } else {
                WireError::BadLength(WHAT)
            });
        };
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(MessageIdSync { nonce: word(0), expected_send_req_mid: word(4), expected_recv_req_mid: word(8) })
    }

    /// Encodes the notification data (always [`Self::LEN`] octets).
    pub fn emit(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.nonce.to_be_bytes());
        v.extend_from_slice(&self.expected_send_req_mid.to_be_bytes());
        v.extend_from_slice(&self.expected_recv_req_mid.to_be_bytes());
        v
    }

    /// The whole notify, ready to put into an SK payload.
    pub fn to_notify(&self) -> Notify {
        Notify::new(NotifyType::IKEV2_MESSAGE_ID_SYNC, self.emit())
    }

    /// Decodes an IKEV2_MESSAGE_ID_SYNC notify, rejecting one that names a protocol or an SPI.
    pub fn from_notify(n: &Notify) -> Result<MessageIdSync, WireError> {
        Self::parse(ike_sa_notify(n, NotifyType::IKEV2_MESSAGE_ID_SYNC, "IKEV2_MESSAGE_ID_SYNC notify")?)
    }
}

/// IPSEC_REPLAY_COUNTER_SYNC data (RFC 6311 section 4.2): the "Incoming IPsec SA delta value".
///
/// The sender asks the peer to add `delta` to the outbound sequence counters of every CHILD SA of
/// this IKE SA (the sender's inbound SAs), so that the sender can move its inbound replay windows
/// forward by the same amount without dropping legitimate packets or accepting replays.
///
/// The field is 4 octets for SAs with 32-bit sequence numbers and 8 octets with Extended Sequence
/// Numbers, so the width is part of the value: a 32-bit delta cannot express a step past 2^32, and
/// an ESN peer may expect the full width whatever the delta. The fields are private so a narrow
/// value above `u32::MAX` cannot be built and [`Self::emit`] never has to truncate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayCounterSync {
    delta: u64,
    wide: bool,
}

impl ReplayCounterSync {
    /// Data length for SAs with 32-bit sequence numbers.
    pub const NARROW_LEN: usize = 4;
    /// Data length for SAs with Extended Sequence Numbers.
    pub const WIDE_LEN: usize = 8;

    /// A delta for SAs with 32-bit sequence numbers.
    pub fn narrow(delta: u32) -> ReplayCounterSync {
        ReplayCounterSync { delta: u64::from(delta), wide: false }
    }

    /// A delta for SAs with Extended Sequence Numbers.
    pub fn wide(delta: u64) -> ReplayCounterSync {
        ReplayCounterSync { delta, wide: true }
    }

    /// A delta for SAs with (`esn`) or without ESN; a delta too large for 32 bits is an error
    /// without ESN rather than a silently truncated value.
    pub fn new(delta: u64, esn: bool) -> Result<ReplayCounterSync, WireError> {
        if esn {
            return Ok(Self::wide(delta));
        }
        u32::try_from(delta)
            .map(Self::narrow)
            .map_err(|_| WireError::Invalid("replay counter delta over 32 bits"))
    }

    /// The amount to add to the counters.
    pub fn delta(&self) -> u64 {
        self.delta
    }

    /// True for the 8-octet (ESN) encoding.
    pub fn is_wide(&self) -> bool {
        self.wide
    }

    /// Decodes the notification data: exactly 4 or 8 octets.
    pub fn parse(data: &[u8]) -> Result<ReplayCounterSync, WireError> {
        const WHAT: &str = "IPSEC_REPLAY_COUNTER_SYNC data";
        if let Ok(b) = <[u8; Self::NARROW_LEN]>::try_from(data) {
            return Ok(Self::narrow(u32::from_be_bytes(b)));
        }
        if let Ok(b) = <[u8; Self::WIDE_LEN]>::try_from(data) {
            return Ok(Self::wide(u64::from_be_bytes(b)));
        }
        Err(if data.len() < Self::NARROW_LEN {
            WireError::Truncated(WHAT)
        } else {
            WireError::BadLength(WHAT)
        })
    }

    /// Encodes the notification data (4 or 8 octets, as constructed).
    pub fn emit(&self) -> Vec<u8> {
        if self.wide {
            self.delta.to_be_bytes().to_vec()
        } else {
            // `narrow`, `new` and `parse` only make narrow values that fit 32 bits.
            (self.delta as u32).to_be_bytes().to_vec()
        }
    }

    /// The whole notify, ready to put into an SK payload.
    pub fn to_notify(&self) -> Notify {
        Notify::new(NotifyType::IPSEC_REPLAY_COUNTER_SYNC, self.emit())
    }

    /// Decodes an IPSEC_REPLAY_COUNTER_SYNC notify, rejecting one that names a protocol or an SPI.
    pub fn from_notify(n: &Notify) -> Result<ReplayCounterSync, WireError> {
        Self::parse(ike_sa_notify(
            n,
            NotifyType::IPSEC_REPLAY_COUNTER_SYNC,
            "IPSEC_REPLAY_COUNTER_SYNC notify",
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_sync_field_order_is_nonce_send_recv() {
        let m =
            MessageIdSync { nonce: 0x0a0b0c0d, expected_send_req_mid: 7, expected_recv_req_mid: 0x01000000 };
        assert_eq!(m.emit(), [0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 7, 1, 0, 0, 0]);
    }

    #[test]
    fn narrow_replay_delta_keeps_32_bits() {
        assert_eq!(ReplayCounterSync::narrow(u32::MAX).emit(), [0xff; 4]);
        assert!(ReplayCounterSync::new(u64::from(u32::MAX) + 1, false).is_err());
        assert_eq!(ReplayCounterSync::new(1 << 40, true).unwrap().emit(), [0, 0, 1, 0, 0, 0, 0, 0]);
    }
}

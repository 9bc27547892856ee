//! The messages of the sync protocol and their encoding: postcard behind a two-byte protocol
//! version, one message per frame of the sync link. Messages that carry keys (IKE SA snapshots)
//! are zeroized when dropped.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Version of the sync protocol. Nodes speaking different versions do not sync (each logs it).
/// 2: `Changes` (one engine turn's changes, applied whole).
pub const PROTOCOL_VERSION: u16 = 2;

/// Role of a node as it announces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Active,
    Standby,
}

/// One change of the engine's state, as its observer reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaChange {
    /// The whole state of one IKE SA (tandem_ike::snapshot bytes).
    IkeSa { id: u64, snapshot: Zeroizing<Vec<u8>> },
    /// The IKE SA is gone.
    IkeSaRemoved { id: u64 },
}

/// One sync message. Those with a `seq` are numbered by the active in one sequence and
/// acknowledged cumulatively by the standby once applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// First message on every new connection, both ways.
    Hello {
        node_id: u8,
        role: Role,
        /// Fencing: raised by every takeover; data of a lower epoch is ignored.
        epoch: u64,
        /// SHA-256 of the cluster configuration (everything but `[ha]`); see tandem-config.
        config_digest: [u8; 32],
    },
    /// The standby discards what it mirrored: a full snapshot follows, then `BulkDone`.
    BulkStart { seq: u64 },
    /// Every IKE SA that existed at `BulkStart` has been sent.
    BulkDone { seq: u64 },
    /// The whole state of one IKE SA (tandem_ike::snapshot bytes).
    IkeSa { seq: u64, id: u64, snapshot: Zeroizing<Vec<u8>> },
    /// The IKE SA is gone.
    IkeSaRemoved { seq: u64, id: u64 },
    /// The active may seal on the outbound SA of the CHILD SA with inbound SPI `spi_in` up to
    /// sequence number `ceiling`, once this is acknowledged.
    Lease { seq: u64, spi_in: u32, ceiling: u64 },
    /// The inbound replay window of the CHILD SA with inbound SPI `spi_in` (esp `ReplayState`).
    Replay { seq: u64, spi_in: u32, window: u32, top: u64, bitmap: Vec<u64> },
    /// Standby to active: every message up to `seq` is applied.
    Ack { seq: u64 },
    /// Planned switchover: the standby takes over on applying it. The active sent every replay
    /// window just before, and speaks no more for its SAs. `last`: per CHILD SA (inbound SPI), the
    /// highest outbound sequence number the old active may still seal (its ceiling: it keeps
    /// forwarding traffic that reaches it while the addresses move); the new active resumes just
    /// above. Last variant: the encoding of the others is unchanged.
    Handover { seq: u64, last: Vec<(u32, u64)> },
    /// Either way, unnumbered: the sender's configuration digest changed (a reload) since its
    /// Hello. Appended last for the same reason as `Handover`.
    Config { config_digest: [u8; 32] },
    /// Several changes of one engine turn, applied whole (docs/ha.md, B8): an IKE SA rekey
    /// reports the new SA and the old one's change (the response or the Delete that moves the peer
    /// to the new SA) together; a standby that applied only one would hold, after a takeover, an SA
    /// the peer never learnt of, or a response for an SA it lacks.
    Changes { seq: u64, changes: Vec<SaChange> },
}

impl SyncMsg {
    /// The sequence number of a numbered message.
    pub fn seq(&self) -> Option<u64> {
        match self {
            SyncMsg::BulkStart { seq }
            | SyncMsg::BulkDone { seq }
            | SyncMsg::IkeSa { seq, .. }
            | SyncMsg::IkeSaRemoved { seq, .. }
            | SyncMsg::Lease { seq, .. }
            | SyncMsg::Replay { seq, .. }
            | SyncMsg::Handover { seq, .. }
            | SyncMsg::Changes { seq, .. } => Some(*seq),
            SyncMsg::Hello { .. } | SyncMsg::Ack { .. } | SyncMsg::Config { .. } => None,
        }
    }

    /// Encode as one frame (holds keys for `IkeSa`: zeroizing).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(PROTOCOL_VERSION.to_be_bytes().to_vec());
        // Encoding plain data into a Vec cannot fail.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&Zeroizing::new(body));
        }
        out
    }

    pub fn decode(frame: &[u8]) -> Result<SyncMsg, DecodeError> {
        let (v, body) = frame.split_at_checked(2).ok_or(DecodeError::Short)?;
        let version = u16::from_be_bytes([v[0], v[1]]);
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        postcard::from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame shorter than its version field")]
    Short,
    #[error("sync protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("malformed sync message: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            SyncMsg::Hello { node_id: 2, role: Role::Standby, epoch: 7, config_digest: [9; 32] },
            SyncMsg::BulkStart { seq: 1 },
            SyncMsg::BulkDone { seq: 2 },
            SyncMsg::IkeSa { seq: 3, id: 0x1234, snapshot: Zeroizing::new(vec![1, 2, 3]) },
            SyncMsg::IkeSaRemoved { seq: 4, id: 0x1234 },
            SyncMsg::Lease { seq: 5, spi_in: 0xc000_0001, ceiling: 1 << 40 },
            SyncMsg::Replay { seq: 6, spi_in: 7, window: 128, top: 1000, bitmap: vec![u64::MAX, 3] },
            SyncMsg::Ack { seq: u64::MAX },
            SyncMsg::Handover { seq: 8, last: vec![(7, 1 << 33), (9, 17)] },
            SyncMsg::Config { config_digest: [3; 32] },
            SyncMsg::Changes {
                seq: 9,
                changes: vec![
                    SaChange::IkeSa { id: 5, snapshot: Zeroizing::new(vec![4, 5]) },
                    SaChange::IkeSaRemoved { id: 6 },
                ],
            },
        ];
        for m in msgs {
            assert_eq!(SyncMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn another_version_is_refused() {
        let mut f = SyncMsg::Ack { seq: 1 }.encode();
        f[1] ^= 0xff;
        assert!(matches!(SyncMsg::decode(&f), Err(DecodeError::Version(_))));
        assert_eq!(SyncMsg::decode(&[0]), Err(DecodeError::Short));
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(f in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SyncMsg::decode(&f);
        }
    }
}

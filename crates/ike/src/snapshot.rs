//! Snapshots of IKE SAs for HA sync: the whole state of an IKE SA and its CHILD SAs (keys, Message
//! IDs, cached request and response, an in-flight key exchange, every deadline), as bytes a standby
//! turns back into an SA it can take over.
//!
//! Deadlines are `Instant`s, which mean nothing on another machine. A snapshot carries each one
//! relative to the moment it was taken (microseconds, may be negative), and decoding places it
//! relative to the moment the snapshot is decoded. The error is the sync delay, milliseconds on a
//! LAN; no wall clock has to agree between the nodes. Rekey and expiry timers therefore resume from
//! the synced deadlines, never from fresh lifetimes (a flapping cluster would otherwise never
//! rekey).
//!
//! The encoding is postcard behind a one-byte format version. Snapshots hold keys: they live in
//! zeroizing buffers.

use crate::sa::IkeSa;
use std::cell::Cell;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Format version of the snapshot bytes (first byte). Both nodes of a cluster must agree.
pub const SNAPSHOT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot format version {0}, this node reads {SNAPSHOT_VERSION}")]
    Version(u8),
    #[error("empty snapshot")]
    Empty,
    #[error("snapshot of an IKE SA that is not established")]
    NotEstablished,
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

thread_local! {
    /// The instant deadlines are relative to, while a snapshot is encoded or decoded.
    static ANCHOR: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets the anchor for the duration of one encode or decode (reset even on a panic).
struct Anchored;

impl Anchored {
    fn new(now: Instant) -> Self {
        ANCHOR.with(|a| a.set(Some(now)));
        Anchored
    }
}

impl Drop for Anchored {
    fn drop(&mut self) {
        ANCHOR.with(|a| a.set(None));
    }
}

/// Encode `sa` as seen at `now`.
pub fn encode(sa: &IkeSa, now: Instant) -> Result<Zeroizing<Vec<u8>>, SnapshotError> {
    let _anchor = Anchored::new(now);
    let mut out = Zeroizing::new(vec![SNAPSHOT_VERSION]);
    let body =
        Zeroizing::new(postcard::to_allocvec(sa).map_err(|e| SnapshotError::Malformed(e.to_string()))?);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a snapshot received at `now`.
pub fn decode(bytes: &[u8], now: Instant) -> Result<Box<IkeSa>, SnapshotError> {
    let (&version, body) = bytes.split_first().ok_or(SnapshotError::Empty)?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let _anchor = Anchored::new(now);
    let sa: IkeSa = postcard::from_bytes(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    Ok(Box::new(sa))
}

/// Serde adapter for `Option<Instant>` fields of the SA state (see the module doc). Outside an
/// encode or decode (a listing through serde_json, say) a deadline is written as absent.
pub(crate) mod deadline {
    use super::*;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        let anchor = ANCHOR.with(|a| a.get());
        let rel: Option<i64> = match (t, anchor) {
            (Some(t), Some(now)) => Some(if *t >= now {
                i64::try_from((*t - now).as_micros()).unwrap_or(i64::MAX)
            } else {
                -i64::try_from((now - *t).as_micros()).unwrap_or(i64::MAX)
            }),
            _ => None,
        };
        rel.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        let rel = Option::<i64>::deserialize(d)?;
        let Some(now) = ANCHOR.with(|a| a.get()) else { return Ok(None) };
        Ok(rel.and_then(|us| {
            let mag = Duration::from_micros(us.unsigned_abs());
            if us >= 0 {
                now.checked_add(mag)
            } else {
                // Before this process's clock could express it: the earliest instant we can.
                Some(now.checked_sub(mag).unwrap_or(now))
            }
        }))
    }
}

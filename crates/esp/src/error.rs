//! Error enums of the ESP core: building an SA, sealing a packet, and why a received packet was
//! dropped. Drops are data: each reason has its own counter.

use crate::replay::ReplayError;
use crate::seq::SeqError;
use serde::{Deserialize, Serialize};

/// An SA could not be built from its parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    #[error("bad key length: expected {expected} bytes, got {got}")]
    BadKeyLength { expected: usize, got: usize },
    #[error("an AEAD cipher cannot be combined with an integrity algorithm")]
    AeadWithIntegrity,
    #[error("a non-AEAD cipher needs an integrity algorithm")]
    MissingIntegrity,
    #[error("SPI {0:#x} is reserved (SPIs 0..=255 are not usable)")]
    ReservedSpi(u32),
    #[error(transparent)]
    WindowTooLarge(#[from] crate::replay::WindowTooLarge),
    #[error("the crypto library refused the key")]
    Crypto,
}

/// A packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SealError {
    /// The buffer lacks room: `headroom` before the payload or `len` in total were needed.
    #[error("buffer too small: need {headroom} bytes of headroom and {len} in total")]
    BufferTooSmall { headroom: usize, len: usize },
    /// Sequence numbers are used up (RFC 4303 section 3.3.3): the SA must be rekeyed.
    #[error("outbound sequence numbers exhausted")]
    SeqExhausted,
    /// HA: the SA is at its sequence-number lease ceiling and waits for the standby to renew it
    /// (`seq::SeqError::LeaseStall`); the SA itself is fine.
    #[error("outbound sequence numbers at the HA lease ceiling")]
    LeaseStall,
    /// A hard byte or packet lifetime is reached.
    #[error("SA hard lifetime reached")]
    Expired,
    /// The crypto library failed (not expected with valid keys).
    #[error("encryption failed")]
    Crypto,
    /// Transport mode: not a whole, valid IP packet.
    #[error("not a whole IP packet")]
    NotIp,
}

/// Why a received ESP packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// Too short or misaligned to be ESP for this SA.
    #[error("malformed ESP packet")]
    Malformed,
    /// No inbound SA with this SPI (candidate for an INVALID_SPI notify, RFC 7296 section 2.21).
    #[error("no SA for SPI {0:#010x}")]
    NoSa(u32),
    /// Below the replay window.
    #[error("replayed packet (below window)")]
    ReplayOld,
    /// Already received.
    #[error("replayed packet (duplicate)")]
    ReplayDuplicate,
    /// The ICV or AEAD tag did not verify.
    #[error("authentication failed")]
    AuthFailed,
    /// Padding bytes not 1, 2, 3, ... or pad length longer than the data.
    #[error("bad ESP padding")]
    BadPadding,
    /// A next header that this SA's mode cannot carry (e.g. not IPv4/IPv6 in tunnel mode).
    #[error("unexpected next header {0}")]
    BadNextHeader(u8),
    /// The inner IP packet of a tunnel-mode SA is malformed or longer than the payload.
    #[error("malformed inner packet")]
    InnerMalformed,
    /// The inner packet does not match the SA's traffic selectors (RFC 4301 section 5.2).
    #[error("inner packet outside the SA's traffic selectors")]
    PolicyMismatch,
    /// A dummy packet (next header 59, RFC 4303 section 2.6): dropped silently, counted.
    #[error("dummy packet")]
    Dummy,
    /// A hard lifetime of the SA is reached.
    #[error("SA expired")]
    Expired,
}

impl From<SeqError> for SealError {
    fn from(e: SeqError) -> SealError {
        match e {
            SeqError::Exhausted => SealError::SeqExhausted,
            SeqError::LeaseStall => SealError::LeaseStall,
        }
    }
}

impl DropReason {
    pub(crate) fn from_replay(e: ReplayError) -> DropReason {
        match e {
            ReplayError::Old => DropReason::ReplayOld,
            ReplayError::Duplicate => DropReason::ReplayDuplicate,
        }
    }

    /// A short stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoSa(_) => "no-sa",
            DropReason::ReplayOld | DropReason::ReplayDuplicate => "replay",
            DropReason::AuthFailed => "auth-failed",
            DropReason::BadPadding => "bad-padding",
            DropReason::BadNextHeader(_) => "bad-next-header",
            DropReason::InnerMalformed => "inner-malformed",
            DropReason::PolicyMismatch => "policy-mismatch",
            DropReason::Dummy => "dummy",
            DropReason::Expired => "expired",
        }
    }
}

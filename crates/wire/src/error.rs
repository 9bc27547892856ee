//! Errors of the wire layer: every way a datagram can be malformed.

/// Why bytes could not be parsed. The engine turns these into counted drops or, where RFC 7296 says
/// so, into an error notify (INVALID_SYNTAX, UNSUPPORTED_CRITICAL_PAYLOAD, INVALID_MAJOR_VERSION).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("bad length in {0}")]
    BadLength(&'static str),
    #[error("unsupported IKE major version {0}")]
    BadVersion(u8),
    #[error("unsupported critical payload {0}")]
    UnsupportedCriticalPayload(crate::PayloadType),
    #[error("invalid traffic selector")]
    InvalidSelector,
    #[error("the SK payload must be the last payload")]
    SkNotLast,
    #[error("too many {0}")]
    TooMany(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

//! tandem-wire: IKEv2 and ESP codecs. Typed parse and emit over bytes; no I/O, no crypto.
//! Every parser returns a [`WireError`] for malformed input and never panics.
#![forbid(unsafe_code)]

pub mod codes;
pub mod error;
pub mod esp;
pub mod fragment;
pub mod message;
pub mod payload;
mod reader;
pub mod rfc6311;
pub mod ts;

pub use codes::{flags, AuthMethod, CfgType, ExchangeType, IdType, NotifyType, PayloadType, ProtocolId};
pub use error::WireError;
pub use message::{emit_payloads, parse_payloads, IkeHeader, Message};
pub use payload::{
    ConfigAttribute, ConfigPayload, Delete, Encrypted, EncryptedFragment, Identification, Notify, Payload,
    Proposal, Transform, TransformAttribute,
};
pub use rfc6311::{MessageIdSync, ReplayCounterSync};
pub use ts::TrafficSelector;

//! tandem-esp: the ESP dataplane core, pure functions over buffers with no I/O.
//!
//! - [`replay`]: RFC 6479 anti-replay window with ESN inference (RFC 4303 Appendix A).
//! - [`sa`]: outbound/inbound SAs with prepared keys, sequence counter, counters, lifetimes.
//! - [`seal()`] / [`open()`]: RFC 4303 encapsulation in place (AES-GCM-16, ChaCha20-Poly1305,
//!   AES-CBC + HMAC-SHA1/SHA2), tunnel and [`transport`] mode; [`batch`] for the hot path.
//! - [`sad`] (lock-free reads via snapshots) and [`spd`] (ordered policies, trap/acquire).
//!
//! No allocation per packet: seal and open work in place in caller buffers with fixed-size stack
//! arrays for nonces, AAD and tags; SAD lookups borrow from a snapshot; counters are atomics. This is
//! checked by `tests/no_alloc.rs` with a counting global allocator.
#![forbid(unsafe_code)]

pub mod batch;
pub mod cipher;
pub mod clock;
pub mod counters;
pub mod csum;
pub mod error;
pub mod esp_packet;
pub mod gro;
pub mod ip;
pub mod lifetime;
pub mod listing;
pub mod observer;
pub mod open;
pub mod replay;
pub mod sa;
pub mod sad;
pub mod seal;
pub mod selector;
pub mod seq;
pub mod spd;
pub mod transport;

pub use batch::{open_batch, seal_batch, OpenStats, PacketBatch, PacketMeta, PacketStatus, SealStats};
pub use cipher::EspSizes;
pub use clock::CoarseClock;
pub use counters::{GlobalCounters, GlobalStats, SaCounters, SaCountersSnapshot};
pub use error::{DropReason, SaError, SealError};
pub use lifetime::{LifetimeLimits, LifetimeState};
pub use listing::{SaInfo, SaState};
pub use observer::{Direction, RemoveReason, SadEvent, SadObserver};
pub use open::{open, open_in, open_sa, Opened};
pub use replay::{esn_infer, ReplayError, ReplayState, ReplayWindow};
pub use sa::{ChildSaPair, ChildSaSpec, InboundSa, KeyMaterial, Mode, OutboundSa, Resume, SaCommon};
pub use sad::{Sad, SadError, SadSnapshot};
pub use seal::{seal, seal_in_place};
pub use selector::{packet_selector, PacketSelector};
pub use seq::{SeqCounter, SeqError};
pub use spd::{lookup_outbound, LookupResult, Policy, PolicyAction, Spd};
pub use transport::{open_transport, seal_transport};

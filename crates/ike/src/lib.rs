//! tandem-ike: a sans-IO IKEv2 engine (RFC 7296).
//!
//! One [`Endpoint`] owns every IKE SA of a node. It never reads a clock or touches a socket: the
//! daemon feeds it datagrams and `now`, and drains datagrams ([`Endpoint::poll_transmit`]), events
//! ([`Endpoint::poll_event`]) and the next deadline ([`Endpoint::poll_timeout`]).
#![forbid(unsafe_code)]
// Unit tests take one real instant as the origin of their fake clock; the engine itself may not
// read a clock or the OS generator (crates/ike/clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod api;
mod child_retry;
pub mod config;
mod endpoint;
mod ex_auth;
mod ex_child;
mod ex_info;
mod ex_init;
mod ident;
mod mid_sync;
pub mod observer;
mod peers;
pub mod proposal;
mod rekey_child;
pub mod reliability;
mod reqid;
pub mod sa;
pub mod snapshot;
pub mod spi;
mod standby;
mod table;
mod tombstones;
mod unique;

pub use api::*;
pub use config::*;
pub use endpoint::{Endpoint, EngineError};
pub use standby::{Mirrored, Takeover};

/// Engine counters (drops by reason), as shown by `tandemctl status`.
pub mod endpoint_stats {
    pub use crate::endpoint::Stats;
}
pub use observer::SaObserver;

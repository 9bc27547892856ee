//! tandem-ike: a sans-IO IKEv2 engine (RFC 7296).
//!
//! One [`Endpoint`] owns every IKE SA of a node. It never reads a clock or touches a socket: the
//! daemon feeds it datagrams and `now`, and drains datagrams ([`Endpoint::poll_transmit`]), events
//! ([`Endpoint::poll_event`]) and the next deadline ([`Endpoint::poll_timeout`]).

pub mod api;
pub mod config;
mod endpoint;
pub mod observer;

pub use api::*;
pub use config::*;
pub use endpoint::{Endpoint, EngineError};
pub use observer::SaObserver;

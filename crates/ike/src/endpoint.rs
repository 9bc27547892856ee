//! The Endpoint: owns all IKE SAs of a node and routes datagrams, timers and commands to them.
//! (Skeleton: the signatures the daemon codes against. Bodies are being written.)

use crate::api::{ChildSaInfo, Event, IkeSaId, IkeSaInfo, Transmit};
use crate::config::{EndpointConfig, PeerConfig, PreSharedKey};
use crate::observer::SaObserver;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Errors of operator commands (datagram problems are counted and logged, never returned).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("no vpn named {0:?}")]
    UnknownVpn(String),
    #[error("no IKE SA {0:#018x}")]
    UnknownIkeSa(IkeSaId),
    #[error("no CHILD SA with SPI {0:#010x}")]
    UnknownChildSa(u32),
    #[error("vpn {0:?} has no remote address to initiate to")]
    NoRemoteAddress(String),
    #[error("{0}")]
    Other(String),
}

pub struct Endpoint {
    _private: (),
}

impl Endpoint {
    pub fn new(_config: EndpointConfig, _peers: Vec<PeerConfig>, _psks: Vec<PreSharedKey>) -> Self {
        Endpoint { _private: () }
    }

    /// Replace the peer configuration (reload). Existing SAs stay up; SAs of removed vpns are deleted.
    pub fn set_peers(&mut self, _now: Instant, _peers: Vec<PeerConfig>, _psks: Vec<PreSharedKey>) {}

    /// Install the HA observer.
    pub fn set_observer(&mut self, _observer: Box<dyn SaObserver>) {}

    /// Feed one received IKE datagram (non-ESP marker already stripped). `local` is the address and
    /// port it arrived on.
    pub fn handle_datagram(&mut self, _now: Instant, _local: SocketAddr, _remote: SocketAddr, _data: &[u8]) {}

    /// Run due timers (retransmissions, rekeys, lifetimes, DPD).
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// Initiate the vpn (all its CHILD SAs). `local` is the local address to use when the config
    /// names none.
    pub fn initiate(&mut self, _now: Instant, vpn: &str) -> Result<IkeSaId, EngineError> {
        Err(EngineError::UnknownVpn(vpn.to_string()))
    }

    /// A packet matched a trap policy of `vpn`/`child`: initiate if no negotiation is under way.
    pub fn acquire(&mut self, _now: Instant, _vpn: &str, _child: &str) {}

    /// The dataplane received ESP for an unknown SPI from `remote`: notify the peer (rate-limited).
    pub fn report_invalid_spi(&mut self, _now: Instant, _remote: IpAddr, _spi: u32) {}

    /// Delete an IKE SA (and its CHILD SAs) with an INFORMATIONAL Delete.
    pub fn terminate_ike_sa(&mut self, _now: Instant, id: IkeSaId) -> Result<(), EngineError> {
        Err(EngineError::UnknownIkeSa(id))
    }

    /// Delete a CHILD SA by either of its SPIs.
    pub fn terminate_child_sa(&mut self, _now: Instant, spi: u32) -> Result<(), EngineError> {
        Err(EngineError::UnknownChildSa(spi))
    }

    /// Start a CHILD SA rekey (operator command or byte/packet soft limit seen by the dataplane).
    pub fn rekey_child_sa(&mut self, _now: Instant, spi: u32) -> Result<(), EngineError> {
        Err(EngineError::UnknownChildSa(spi))
    }

    /// Start an IKE SA rekey.
    pub fn rekey_ike_sa(&mut self, _now: Instant, id: IkeSaId) -> Result<(), EngineError> {
        Err(EngineError::UnknownIkeSa(id))
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        None
    }

    /// The earliest deadline at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn ike_sas(&self) -> Vec<IkeSaInfo> {
        Vec::new()
    }

    pub fn child_sas(&self) -> Vec<ChildSaInfo> {
        Vec::new()
    }
}

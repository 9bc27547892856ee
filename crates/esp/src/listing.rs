//! What `tandemctl show ipsec-sa [--all-properties]` prints for one SA, modelled on the seed's
//! `show ipsec-sa all-properties` (direction, SPI, reqid, protocol, mode, state, algorithm, usage,
//! lifetimes, replay window, create time, last use). Times are relative to the listing's `now`, so
//! the struct is plain data for the JSON API.

use crate::counters::SaCountersSnapshot;
use crate::lifetime::{LifetimeLimits, LifetimeState};
use crate::observer::Direction;
use crate::sa::{InboundSa, Mode, OutboundSa, SaCommon};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Instant;

/// SA state as operators know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaState {
    /// In use, below its soft limits.
    Mature,
    /// A soft limit is reached: being rekeyed.
    Dying,
    /// A hard limit is reached.
    Expired,
    /// Replaced by a rekey; kept briefly for packets in flight (inbound only receives).
    Retired,
}

/// One SA (one direction) for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaInfo {
    pub name: String,
    pub direction: Direction,
    pub spi: u32,
    pub reqid: u32,
    /// Always "esp".
    pub protocol: String,
    pub mode: Mode,
    pub state: SaState,
    /// Encryption algorithm keyword (e.g. "aes256gcm16").
    pub encr: String,
    /// Integrity algorithm keyword, `None` for AEADs.
    pub integ: Option<String>,
    pub esn: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    pub counters: SaCountersSnapshot,
    pub lifetime: LifetimeLimits,
    /// Effective anti-replay window (inbound; 0 = disabled).
    pub replay_window: Option<u32>,
    /// Highest sequence number received (inbound) or next to send (outbound).
    pub seq: u64,
    pub age_secs: u64,
    /// Seconds since the last packet, `None` if never used.
    pub last_use_secs_ago: Option<u64>,
}

fn state_of(lifetime: LifetimeState, retired: bool) -> SaState {
    if retired {
        return SaState::Retired;
    }
    match lifetime {
        LifetimeState::Ok => SaState::Mature,
        LifetimeState::Soft => SaState::Dying,
        LifetimeState::Hard => SaState::Expired,
    }
}

fn common(sa: &SaCommon, direction: Direction, now: Instant) -> SaInfo {
    SaInfo {
        name: sa.name().to_string(),
        direction,
        spi: sa.spi(),
        reqid: sa.reqid(),
        protocol: "esp".to_string(),
        mode: sa.mode(),
        state: SaState::Mature,
        encr: sa.encr().name().to_string(),
        integ: sa.integ().map(|i| i.name().to_string()),
        esn: sa.esn(),
        local: sa.local(),
        remote: sa.remote(),
        udp_encap: sa.udp_encap(),
        counters: sa.counters().snapshot(),
        lifetime: *sa.lifetime(),
        replay_window: None,
        seq: 0,
        age_secs: now.saturating_duration_since(sa.created()).as_secs(),
        last_use_secs_ago: sa.last_use().map(|t| now.saturating_duration_since(t).as_secs()),
    }
}

impl SaInfo {
    /// Listing of an outbound SA.
    pub fn outbound(sa: &OutboundSa, retired: bool, now: Instant) -> SaInfo {
        SaInfo {
            state: state_of(sa.lifetime_state(now), retired),
            seq: sa.next_seq(),
            ..common(sa, Direction::Out, now)
        }
    }

    /// Listing of an inbound SA.
    pub fn inbound(sa: &InboundSa, retired: bool, now: Instant) -> SaInfo {
        SaInfo {
            state: state_of(sa.lifetime_state(now), retired),
            replay_window: Some(sa.replay_window()),
            seq: sa.replay_top(),
            ..common(sa, Direction::In, now)
        }
    }
}

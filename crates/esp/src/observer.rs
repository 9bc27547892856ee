//! The one interface through which SAD changes leave the dataplane: the IKE engine listens for soft
//! and hard limits (rekey, delete), HA sync for installs and removals. Observers run on the control
//! plane (inside `Sad::install`, `remove`, `retire`, `flush`, `tick`), never on the packet path.

use crate::counters::SaCountersSnapshot;
use crate::sa::{InboundSa, OutboundSa};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Direction of an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Why a pair left the SAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveReason {
    /// `Sad::remove` (the IKE engine or an operator deleted it).
    Deleted,
    /// Replaced by a rekey; its grace period for in-flight packets is over.
    Rekeyed,
    /// A hard lifetime (or the sequence space) ran out.
    Expired,
    /// `Sad::flush`.
    Flushed,
}

/// One SAD change. SAs are identified by their inbound SPI (unique on this node) and also carry
/// the outbound SPI and reqid so the IKE engine can find its CHILD SA.
#[derive(Debug, Clone)]
pub enum SadEvent {
    /// A pair was installed; the handles let HA read sequence and replay state later.
    Installed { inbound: Arc<InboundSa>, outbound: Arc<OutboundSa> },
    /// A soft limit was reached in `direction`: rekey (reported once per pair).
    SoftLimit { spi_in: u32, spi_out: u32, reqid: u32, direction: Direction },
    /// A hard limit was reached in `direction`; a `Removed { reason: Expired }` follows.
    HardLimit { spi_in: u32, spi_out: u32, reqid: u32, direction: Direction },
    /// The pair is gone from the SAD; the final counters let the daemon keep global totals and HA
    /// log the last state.
    Removed {
        spi_in: u32,
        spi_out: u32,
        reqid: u32,
        reason: RemoveReason,
        counters_in: SaCountersSnapshot,
        counters_out: SaCountersSnapshot,
    },
}

/// Receives every [`SadEvent`]. Must not call back into the `Sad` that reports to it.
pub trait SadObserver: Send {
    fn on_event(&mut self, event: &SadEvent);
}

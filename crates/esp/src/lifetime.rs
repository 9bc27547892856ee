//! Byte, packet and time limits of an SA (RFC 4301 section 4.4.2.1). The soft limit asks the control
//! plane to rekey, the hard limit makes the dataplane stop using the SA. Time limits are usually
//! enforced by the IKE engine's own timers; they are here too so manually keyed SAs can expire.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits of one SA; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LifetimeLimits {
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
    pub soft_time: Option<Duration>,
    pub hard_time: Option<Duration>,
}

/// Where an SA stands with respect to its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifetimeState {
    /// Below every soft limit.
    Ok,
    /// A soft limit (or the sequence-number soft threshold) is reached: rekey.
    Soft,
    /// A hard limit is reached (or sequence numbers are exhausted): delete; the SA no longer seals.
    Hard,
}

impl LifetimeLimits {
    /// True when a hard byte or packet limit is reached (checked on the hot path).
    pub fn hard_usage_reached(&self, bytes: u64, packets: u64) -> bool {
        reached(self.hard_bytes, bytes) || reached(self.hard_packets, packets)
    }

    /// The state for the given usage and age.
    pub fn state(&self, bytes: u64, packets: u64, age: Duration) -> LifetimeState {
        if self.hard_usage_reached(bytes, packets) || self.hard_time.is_some_and(|t| age >= t) {
            LifetimeState::Hard
        } else if reached(self.soft_bytes, bytes)
            || reached(self.soft_packets, packets)
            || self.soft_time.is_some_and(|t| age >= t)
        {
            LifetimeState::Soft
        } else {
            LifetimeState::Ok
        }
    }
}

fn reached(limit: Option<u64>, used: u64) -> bool {
    limit.is_some_and(|l| used >= l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_then_hard() {
        let l = LifetimeLimits {
            soft_packets: Some(10),
            hard_packets: Some(20),
            soft_time: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert_eq!(l.state(0, 9, Duration::ZERO), LifetimeState::Ok);
        assert_eq!(l.state(0, 10, Duration::ZERO), LifetimeState::Soft);
        assert_eq!(l.state(0, 1, Duration::from_secs(5)), LifetimeState::Soft);
        assert_eq!(l.state(0, 20, Duration::ZERO), LifetimeState::Hard);
        assert_eq!(LifetimeLimits::default().state(u64::MAX, u64::MAX, Duration::MAX), LifetimeState::Ok);
    }
}

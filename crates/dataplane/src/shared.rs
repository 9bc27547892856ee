//! State shared by the worker threads and the control handle. Everything the hot path reads is
//! either an atomic or an immutable snapshot behind `arc-swap` (SAD, SPD, interface table), loaded
//! once per batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tandem_esp::sad::Sad;

use crate::config::DataplaneConfig;
use crate::counters::Counters;
use crate::events::EventSink;
use crate::policy::Policies;
use crate::sys::Waker;
use crate::tun::Tun;
use crate::udp::EncapSocket;

/// One TUN interface and, for a route-based interface, the reqid whose SA carries everything
/// routed into it (0.0.0.0/0 and ::/0 selectors).
#[derive(Clone)]
pub struct TunEntry {
    pub tun: Arc<Tun>,
    pub reqid: Option<u32>,
}

/// The interfaces; index 0 is the policy-based TUN.
#[derive(Clone, Default)]
pub struct TunTable {
    pub list: Vec<TunEntry>,
    /// reqid → index in `list` for route-based interfaces (inbound packets of those SAs go there).
    pub by_reqid: HashMap<u32, usize>,
}

impl TunTable {
    pub fn rebuild_index(&mut self) {
        self.by_reqid = self.list.iter().enumerate().filter_map(|(i, e)| e.reqid.map(|r| (r, i))).collect();
    }

    /// The interface inbound packets of SAs with `reqid` are written to.
    pub fn for_reqid(&self, reqid: u32) -> usize {
        self.by_reqid.get(&reqid).copied().unwrap_or(0)
    }
}

pub struct Shared {
    pub cfg: DataplaneConfig,
    pub sad: Arc<Sad>,
    pub policies: Policies,
    pub counters: Arc<Counters>,
    pub events: EventSink,
    pub tuns: ArcSwap<TunTable>,
    /// Bumped whenever `tuns` changes, so workers rebuild their per-interface state.
    pub tuns_generation: AtomicU64,
    pub udp: Vec<Arc<EncapSocket>>,
    pub shutdown: AtomicBool,
    /// Wakes the outbound worker (new SA: flush trap queues; new interface; shutdown).
    pub wake_out: Waker,
    /// Wakes the inbound worker (new interface; shutdown).
    pub wake_in: Waker,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_interface_by_reqid_defaults_to_policy_tun() {
        let t = TunTable::default();
        assert_eq!(t.for_reqid(5), 0);
        let mut t = TunTable { by_reqid: [(5, 2)].into_iter().collect(), ..Default::default() };
        assert_eq!(t.for_reqid(5), 2);
        assert_eq!(t.for_reqid(6), 0);
        t.rebuild_index();
        assert_eq!(t.for_reqid(5), 0, "rebuilt from an empty list");
    }
}

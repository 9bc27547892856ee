//! Exchanges two nodes may both complete, and the CHILD SAs they make (crates/ha/model, findings
//! F1 and F2).
//!
//! A CREATE_CHILD_SA request this node sent is mirrored with its nonce and key-exchange secret
//! (write-ahead: it leaves only once the standby has it). Whichever node later reads the peer's
//! response derives the same CHILD SA keys. Sequence numbers then have to be kept apart by hand:
//! - **inherited** (this node took over with the request outstanding): the old active may have
//!   completed the exchange and sealed on the new SA within its implicit lease before it died, so
//!   this node starts that SA above the lease (`StandbySync::resume_seq`), not at 1;
//! - **left behind** (this node went solo with the request outstanding, so the standby it lost
//!   holds it): the standby may take over later and start the SA at `oseq-shift + 1`, so this node
//!   must not grant itself leases on it alone; it counts as mirrored (rekeyed at its ceiling).
//!
//! A CHILD SA is taken to come from such a request when it is installed after the request stopped
//! being outstanding. A CHILD SA installed while the request is still outstanding came from a
//! request of the peer's (fresh nonces: nothing shared). The test is conservative: a request that
//! made no CHILD SA (a DPD, an IKE rekey) marks the next CHILD SA of that IKE SA instead, which
//! costs that SA at most `oseq-shift` sequence numbers or one early rekey, never a repeated nonce.

use crate::active::ActiveSync;
use crate::standby::StandbySync;
use std::collections::HashMap;

/// Where a CHILD SA being installed starts sealing, and up to where (its lease ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub next_seq: u64,
    pub ceiling: u64,
    pub shared: Shared,
}

/// The one rule for every CHILD SA a node installs as active: `resumed_at` when a takeover resumes
/// it (a mirrored SA), else 1, or above the old active's lease for one that completes a request
/// inherited at takeover; with the ceiling `ActiveSync::child_sa_installed` gives it. The daemon
/// and the seeded simulation (crates/ha/tests/schedules.rs) both call this.
#[allow(clippy::too_many_arguments)]
pub fn place_child_sa<T>(
    active: &mut ActiveSync<T>,
    standby: &StandbySync,
    shared: &mut SharedExchanges,
    ike_sa: u64,
    spi_in: u32,
    outstanding_now: Option<u32>,
    resumed_at: Option<u64>,
) -> Placement {
    // A resumed SA was mirrored: it is not the one a shared request makes (and must not use up
    // the record of that request).
    let shared = match resumed_at {
        Some(_) => Shared::default(),
        None => shared.installing(ike_sa, outstanding_now),
    };
    let next_seq = match resumed_at {
        Some(n) => n,
        None if shared.inherited => standby.resume_seq(spi_in),
        None => 1,
    };
    let ceiling = active.child_sa_installed(spi_in, next_seq, shared.left_behind);
    Placement { next_seq, ceiling, shared }
}

/// How a CHILD SA being installed relates to an exchange another node may also complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shared {
    /// The old active may have used these keys: start above its lease.
    pub inherited: bool,
    /// A standby this node lost may complete it: no solo leases.
    pub left_behind: bool,
}

#[derive(Debug, Default)]
pub struct SharedExchanges {
    /// By IKE SA id: the Message ID of the shared request, and how it is shared.
    by_sa: HashMap<u64, (u32, Shared)>,
}

impl SharedExchanges {
    pub fn new() -> Self {
        Self::default()
    }

    fn mark(&mut self, outstanding: impl IntoIterator<Item = (u64, u32)>, f: impl Fn(&mut Shared)) {
        for (id, mid) in outstanding {
            let e = self.by_sa.entry(id).or_insert((mid, Shared::default()));
            if e.0 != mid {
                *e = (mid, Shared::default());
            }
            f(&mut e.1);
        }
    }

    /// This node took over: the requests the mirrored IKE SAs had outstanding.
    pub fn inherited(&mut self, outstanding: impl IntoIterator<Item = (u64, u32)>) {
        self.mark(outstanding, |s| s.inherited = true);
    }

    /// This node lost its standby: the requests outstanding at that moment.
    pub fn left_behind(&mut self, outstanding: impl IntoIterator<Item = (u64, u32)>) {
        self.mark(outstanding, |s| s.left_behind = true);
    }

    /// A CHILD SA of IKE SA `ike_sa` is being installed, and that IKE SA now has
    /// `outstanding_now` outstanding. Returns how its keys are shared (default: not at all).
    pub fn installing(&mut self, ike_sa: u64, outstanding_now: Option<u32>) -> Shared {
        match self.by_sa.get(&ike_sa) {
            Some(&(mid, _)) if outstanding_now == Some(mid) => Shared::default(),
            Some(_) => self.by_sa.remove(&ike_sa).map(|(_, s)| s).unwrap_or_default(),
            None => Shared::default(),
        }
    }

    /// The IKE SA is gone.
    pub fn removed(&mut self, ike_sa: u64) {
        self.by_sa.remove(&ike_sa);
    }

    pub fn len(&self) -> usize {
        self.by_sa.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sa.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_installed_once_the_request_completed_is_shared() {
        let mut s = SharedExchanges::new();
        s.inherited([(1, 4), (2, 7)]);
        assert_eq!(s.installing(1, Some(4)), Shared::default(), "request 4 still out: the peer's exchange");
        assert_eq!(s.installing(1, None), Shared { inherited: true, left_behind: false });
        assert_eq!(s.installing(1, None), Shared::default(), "once only");
        assert_eq!(
            s.installing(2, Some(8)),
            Shared { inherited: true, left_behind: false },
            "a later request"
        );
        assert_eq!(s.installing(3, None), Shared::default(), "no shared request");
        assert!(s.is_empty());
    }

    #[test]
    fn both_kinds_combine_for_the_same_request_and_a_new_request_replaces() {
        let mut s = SharedExchanges::new();
        s.inherited([(1, 4)]);
        s.left_behind([(1, 4)]);
        assert_eq!(s.installing(1, None), Shared { inherited: true, left_behind: true });
        s.inherited([(5, 1)]);
        s.left_behind([(5, 2)]);
        assert_eq!(s.installing(5, None), Shared { inherited: false, left_behind: true });
        s.left_behind([(6, 1)]);
        s.removed(6);
        assert!(s.is_empty());
    }
}

//! The standby node's side of the sync: applies what the active sends to a standby `Endpoint`,
//! keeps the leases, acknowledges what it applied, and says where each outbound SA resumes after a
//! takeover.

use crate::lease::resume_at;
use crate::msg::{SaChange, SyncMsg};
use crate::replay::MirroredWindow;
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tandem_ike::Endpoint;
use tracing::{info, warn};

/// Counters shown by `tandemctl ha status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StandbyStats {
    pub applied: u64,
    pub snapshots_refused: u64,
    pub out_of_order: u64,
    pub bulk_transfers: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandbyError {
    /// A message was lost or reordered: the mirror may miss a change, so it must be rebuilt
    /// (reconnect and bulk sync).
    #[error("sync message {got} after {applied}: resync needed")]
    Gap { applied: u64, got: u64 },
}

pub struct StandbySync {
    shift: u64,
    /// Last sequence number applied.
    applied: u64,
    /// Ceilings acknowledged, by inbound SPI.
    leases: HashMap<u32, u64>,
    /// Inbound replay windows, by inbound SPI.
    windows: HashMap<u32, MirroredWindow>,
    /// A bulk transfer is complete since the last (re)connection.
    in_sync: bool,
    /// Waiting for a `BulkStart`: what comes before it is from a numbering this node dropped.
    awaiting_bulk: bool,
    /// A `Handover` was applied: the daemon takes over (`take_handover`).
    handover: bool,
    /// From the `Handover`: the highest outbound number the old active may seal, by inbound SPI.
    handed_over: HashMap<u32, u64>,
    /// During a bulk transfer: IKE SAs mirrored before it and not sent again yet. They are kept
    /// until `BulkDone` (then dropped: the active has them no more), so that a takeover in the
    /// middle of a resync still has every SA, most of them current.
    unconfirmed: HashSet<u64>,
    /// IKE SAs mirrored, replaced or dropped since `take_mirror_changes`: the daemon routes their
    /// CHILD SAs' selectors into the TUN ahead of a takeover.
    changed: Vec<u64>,
    /// The highest outbound number this node itself may have sealed on a CHILD SA, by inbound
    /// SPI, in an active spell that ended with a step-down (docs/ha.md B5). The other node's
    /// leases do not cover those numbers: it ran beside this node, its ceiling is below them. Kept
    /// across reconnections and bulk transfers, for as long as the SA lives.
    own_seals: HashMap<u32, u64>,
    pub stats: StandbyStats,
}

impl StandbySync {
    pub fn new(oseq_shift: u64) -> Self {
        StandbySync {
            shift: oseq_shift.max(2),
            applied: 0,
            leases: HashMap::new(),
            windows: HashMap::new(),
            in_sync: false,
            awaiting_bulk: true,
            handover: false,
            handed_over: HashMap::new(),
            unconfirmed: HashSet::new(),
            changed: Vec::new(),
            own_seals: HashMap::new(),
            stats: StandbyStats::default(),
        }
    }

    /// Everything the active sent since the last bulk transfer began is applied.
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// A new connection, or a resync asked for: numbering restarts with the active's bulk
    /// transfer, and what arrives before it is ignored.
    pub fn link_up(&mut self) {
        self.handed_over.clear();
        self.applied = 0;
        self.in_sync = false;
        self.awaiting_bulk = true;
    }

    /// Apply one message from the active. Returns the ack to send, if any.
    pub fn handle(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        msg: SyncMsg,
    ) -> Result<Option<SyncMsg>, StandbyError> {
        let Some(seq) = msg.seq() else { return Ok(None) };
        let bulk_start = matches!(msg, SyncMsg::BulkStart { .. });
        if self.awaiting_bulk && !bulk_start {
            return Ok(None);
        }
        self.awaiting_bulk = false;
        if seq != self.applied + 1 && !bulk_start {
            self.stats.out_of_order += 1;
            return Err(StandbyError::Gap { applied: self.applied, got: seq });
        }
        match msg {
            SyncMsg::BulkStart { .. } => {
                // Everything is sent again. What was mirrored stays until BulkDone: leases and
                // windows only ever grow, so the old ones are safe to keep, and a takeover before
                // the end still finds every SA.
                self.unconfirmed = ep.ike_sas().iter().map(|s| s.id).collect();
                self.in_sync = false;
                self.stats.bulk_transfers += 1;
            }
            SyncMsg::BulkDone { .. } => {
                let gone = std::mem::take(&mut self.unconfirmed);
                self.remove_sas(now, ep, &gone);
                let live: HashSet<u32> = ep.child_sas().iter().map(|c| c.spi_in).collect();
                self.leases.retain(|spi, _| live.contains(spi));
                self.windows.retain(|spi, _| live.contains(spi));
                self.own_seals.retain(|spi, _| live.contains(spi));
                self.in_sync = true;
                info!(target: "ha", ike_sas = ep.ike_sas().len(), leases = self.leases.len(), "mirror complete");
            }
            SyncMsg::IkeSa { id, snapshot, .. } => self.apply(now, ep, SaChange::IkeSa { id, snapshot }),
            SyncMsg::IkeSaRemoved { id, .. } => self.apply(now, ep, SaChange::IkeSaRemoved { id }),
            SyncMsg::Changes { changes, .. } => {
                for c in changes {
                    self.apply(now, ep, c);
                }
            }
            SyncMsg::Lease { spi_in, ceiling, .. } => {
                let l = self.leases.entry(spi_in).or_default();
                *l = (*l).max(ceiling);
            }
            SyncMsg::Replay { spi_in, window, top, bitmap, .. } => {
                let w = MirroredWindow::update(self.windows.get(&spi_in), window, top, bitmap, now);
                self.windows.insert(spi_in, w);
            }
            SyncMsg::Handover { last, .. } => {
                info!(target: "ha", child_sas = last.len(), "planned switchover: the active hands its SAs over");
                self.handed_over.extend(last);
                self.handover = true;
            }
            SyncMsg::Hello { .. } | SyncMsg::Ack { .. } | SyncMsg::Config { .. } => {}
        }
        self.applied = seq;
        self.stats.applied += 1;
        Ok(Some(SyncMsg::Ack { seq }))
    }

    fn apply(&mut self, now: Instant, ep: &mut Endpoint, change: SaChange) {
        match change {
            SaChange::IkeSa { id, snapshot } => {
                self.unconfirmed.remove(&id);
                match ep.mirror(now, &snapshot) {
                    Ok(m) => self.changed.extend(m.moved_from),
                    Err(e) => {
                        self.stats.snapshots_refused += 1;
                        warn!(target: "ha", sa = format_args!("{id:#018x}"), "snapshot not applied: {e}");
                    }
                }
                self.changed.push(id);
            }
            SaChange::IkeSaRemoved { id } => {
                self.unconfirmed.remove(&id);
                self.remove_sas(now, ep, &HashSet::from([id]));
            }
        }
    }

    /// Drop these IKE SAs from the mirror, with the leases and windows of their CHILD SAs (each
    /// SA's own, not a listing of every CHILD SA per removal: at 10,000 SAs every IKE rekey
    /// removes one).
    fn remove_sas(&mut self, now: Instant, ep: &mut Endpoint, ids: &HashSet<u64>) {
        for &id in ids {
            for spi in ep.child_spis_in(id) {
                self.leases.remove(&spi);
                self.windows.remove(&spi);
                self.own_seals.remove(&spi);
            }
            ep.unmirror(now, id);
            self.changed.push(id);
        }
    }

    /// The IKE SAs whose mirror changed (mirrored, replaced or dropped) since the last call, each
    /// once, in the order of their first change.
    pub fn take_mirror_changes(&mut self) -> Vec<u64> {
        let mut seen = HashSet::new();
        let mut v = std::mem::take(&mut self.changed);
        v.retain(|id| seen.insert(*id));
        v
    }

    /// A planned switchover was applied (once): take over now, with the exact replay windows.
    pub fn take_handover(&mut self) -> bool {
        std::mem::take(&mut self.handover)
    }

    /// The mirrored inbound window of this CHILD SA, if any.
    pub fn window(&self, spi_in: u32) -> Option<&MirroredWindow> {
        self.windows.get(&spi_in)
    }

    /// This node was active and steps down: `seals` holds, per inbound SPI, the highest outbound
    /// number it sealed or may still seal (the dataplane's frozen counters). A later takeover
    /// resumes above them too, not only above the other node's leases.
    pub fn remember_own_seals(&mut self, seals: impl IntoIterator<Item = (u32, u64)>) {
        for (spi, last) in seals {
            let s = self.own_seals.entry(spi).or_default();
            *s = (*s).max(last);
        }
    }

    /// Where the outbound SA of this CHILD SA resumes after a takeover: above its lease, or, in
    /// a planned switchover, just above the last number the old active may seal; and in either
    /// case above whatever this node sealed on it itself before it stepped down.
    pub fn resume_seq(&self, spi_in: u32) -> u64 {
        let other = match self.handed_over.get(&spi_in) {
            Some(&last) => last.saturating_add(1),
            None => resume_at(self.leases.get(&spi_in).copied(), self.shift),
        };
        let own = self.own_seals.get(&spi_in).map_or(0, |&s| s.saturating_add(1));
        other.max(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ha.md B5: what this node sealed itself before a step-down is resumed above, whatever
    /// the other node's lease says; below it the lease rules as before.
    #[test]
    fn a_takeover_resumes_above_this_nodes_own_seals() {
        let shift = 1024;
        let mut s = StandbySync::new(shift);
        assert_eq!(s.resume_seq(7), shift + 1, "no lease: the implicit one");
        s.remember_own_seals([(7, 5000), (8, 10)]);
        assert_eq!(s.resume_seq(7), 5001);
        assert_eq!(s.resume_seq(8), shift + 1, "a lease above its own seals wins");
        s.remember_own_seals([(7, 4000)]);
        assert_eq!(s.resume_seq(7), 5001, "the record only rises");
        s.link_up();
        assert_eq!(s.resume_seq(7), 5001, "a reconnection forgets nothing of it");
    }
}

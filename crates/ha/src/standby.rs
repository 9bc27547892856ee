//! The standby node's side of the sync: applies what the active sends to a standby `Endpoint`,
//! keeps the leases, acknowledges what it applied, and says where each outbound SA resumes after a
//! takeover.

use crate::lease::resume_at;
use crate::msg::SyncMsg;
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
                self.remove_sas(ep, &gone);
                let live: HashSet<u32> = ep.child_sas().iter().map(|c| c.spi_in).collect();
                self.leases.retain(|spi, _| live.contains(spi));
                self.windows.retain(|spi, _| live.contains(spi));
                self.in_sync = true;
                info!(target: "ha", ike_sas = ep.ike_sas().len(), leases = self.leases.len(), "mirror complete");
            }
            SyncMsg::IkeSa { id, snapshot, .. } => {
                self.unconfirmed.remove(&id);
                self.changed.push(id);
                if let Err(e) = ep.mirror(now, &snapshot) {
                    self.stats.snapshots_refused += 1;
                    warn!(target: "ha", sa = format_args!("{id:#018x}"), "snapshot not applied: {e}");
                }
            }
            SyncMsg::IkeSaRemoved { id, .. } => {
                self.unconfirmed.remove(&id);
                self.remove_sas(ep, &HashSet::from([id]));
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

    /// Drop these IKE SAs from the mirror, with the leases and windows of their CHILD SAs. The
    /// CHILD SAs are listed once for all of them: a resync that drops many SAs stays linear.
    fn remove_sas(&mut self, ep: &mut Endpoint, ids: &HashSet<u64>) {
        if ids.is_empty() {
            return;
        }
        for c in ep.child_sas().iter().filter(|c| ids.contains(&c.ike_sa)) {
            self.leases.remove(&c.spi_in);
            self.windows.remove(&c.spi_in);
        }
        for &id in ids {
            ep.unmirror(id);
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

    /// Where the outbound SA of this CHILD SA resumes after a takeover: above its lease, or, in
    /// a planned switchover, just above the last number the old active may seal.
    pub fn resume_seq(&self, spi_in: u32) -> u64 {
        match self.handed_over.get(&spi_in) {
            Some(&last) => last.saturating_add(1),
            None => resume_at(self.leases.get(&spi_in).copied(), self.shift),
        }
    }
}

//! HA: the standby role and the takeover (issue 10, guides/HA.md section c).
//!
//! A standby's table holds the SAs mirrored from the active node, decoded from the snapshots the
//! active's [`SaObserver`](crate::SaObserver) produced, deadlines and all. While standby the
//! endpoint sends nothing, runs no timer, initiates nothing and answers no datagram: the SAs are
//! the active's, and a second voice on them would break the peer's Message ID sequence.
//! [`Endpoint::take_over`] makes them this node's own at once: every IKE SA resumes exactly where
//! the last snapshot left it, its outstanding request (if any) is sent again byte for byte, and
//! the dataplane is told of every CHILD SA to install. The peer sees no new exchange.

use crate::api::{Event, IkeSaId, MirroredRoute};
use crate::endpoint::{Endpoint, EngineError};
use crate::ex_child::dataplane_selectors;
use crate::reqid::Adopted;
use crate::sa::SaState;
use crate::snapshot::{self, SnapshotError};
use std::time::Instant;
use tracing::{info, warn};
use zeroize::Zeroizing;

/// What a takeover did, for the log and `tandemctl ha status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Takeover {
    /// IKE SAs now run by this node.
    pub ike_sas: usize,
    /// CHILD SAs handed to the dataplane.
    pub child_sas: usize,
    /// Outstanding requests of the old active sent again.
    pub retransmitted: usize,
    /// Mirrored SAs not taken: not established, or of a vpn this node has no configuration for.
    pub dropped: usize,
}

/// What [`Endpoint::mirror`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// The IKE SA stored or replaced.
    pub id: IkeSaId,
    /// Other mirrored IKE SAs that held some of its CHILD SAs and lost them to it.
    pub moved_from: Vec<IkeSaId>,
}

impl Endpoint {
    /// Standby: whether mirroring changed this node's reqids since the last call (see
    /// `Reqids::adopt`). The daemon then applies its policies, trap routes and route-based
    /// interfaces again (`reqid` answers with the new numbers).
    pub fn take_reqids_renumbered(&mut self) -> bool {
        std::mem::take(&mut self.reqids_renumbered)
    }

    /// Become an HA standby: from now on the endpoint only mirrors. Call it before anything else
    /// happens on a node that boots as standby (no vpn is started, no timer runs).
    pub fn set_standby(&mut self) {
        self.standby = true;
    }

    /// Planned switchover: stop speaking for the SAs (the other node takes them over from the
    /// mirror) but keep them, and the dataplane's CHILD SAs with them, so that traffic still
    /// reaching this node is forwarded until the addresses move. `demote` drops them after;
    /// `cancel_hand_over` takes them back if the other node never took over.
    pub fn hand_over(&mut self) {
        self.standby = true;
        info!(target: "ike", ike_sas = self.sas.values().count(), "handing the SAs over to the other HA node");
    }

    /// The switchover did not happen: run the SAs again, timers where they were.
    pub fn cancel_hand_over(&mut self) {
        self.standby = false;
        warn!(target: "ike", "switchover cancelled: running the SAs again");
    }

    pub fn is_standby(&self) -> bool {
        self.standby
    }

    pub(crate) fn refuse_on_standby(&self) -> Result<(), EngineError> {
        if self.standby {
            Err(EngineError::Standby)
        } else {
            Ok(())
        }
    }

    /// Standby: store (or replace) the mirrored SA of a snapshot received at `now`. Half-open SAs
    /// are refused: the active never sends them (their peers are not authenticated), and one
    /// would be an orphan after a takeover.
    ///
    /// A CHILD SA belongs to one IKE SA. When another mirrored IKE SA still holds one of this
    /// snapshot's CHILD SAs (a stale mirror: the active rekeyed the IKE SA, moving its CHILD SAs
    /// to the new one, while this node was away), that IKE SA loses it here; otherwise the stale
    /// SA's removal at the end of the resync would take the CHILD SA's lease and routes with it
    /// (docs/ha.md, B8).
    pub fn mirror(&mut self, now: Instant, bytes: &[u8]) -> Result<Mirrored, SnapshotError> {
        let sa = snapshot::decode(bytes, now)?;
        if sa.established.is_none() {
            return Err(SnapshotError::NotEstablished);
        }
        let id = sa.id;
        if self.sas.contains(&id) {
            self.sas.discard(id);
        }
        let mut moved_from = Vec::new();
        for c in &sa.children {
            let Some(other) = self.sas.holder_of_spi_in(c.spi_in).filter(|o| *o != id) else { continue };
            self.sas.update(&other, |o| o.children.retain(|k| k.spi_in != c.spi_in));
            if !moved_from.contains(&other) {
                moved_from.push(other);
            }
        }
        let instance = sa.vpn.as_deref().and_then(|v| self.peer(v)).is_some_and(|p| p.reqid_per_sa);
        for c in &sa.children {
            let adopted = if instance {
                if self.reqids.claim_instance(c.reqid) {
                    Adopted::Renumbered
                } else {
                    Adopted::Same
                }
            } else {
                self.reqids.adopt(sa.vpn.as_deref().unwrap_or_default(), &c.name, c.reqid)
            };
            match adopted {
                Adopted::Same => {}
                Adopted::Renumbered => {
                    self.stats.reqids_adopted += 1;
                    self.reqids_renumbered = true;
                    info!(target: "ike", vpn = ?sa.vpn, child = %c.name, reqid = c.reqid,
                          "numbering CHILD SA configurations as the active node does (their reload histories differ)");
                }
                Adopted::Conflict => {
                    self.stats.reqid_conflicts += 1;
                    warn!(target: "ike", vpn = ?sa.vpn, child = %c.name, reqid = c.reqid,
                          "the active node's reqid for this CHILD SA configuration is held by another mirrored CHILD SA");
                }
            }
        }
        self.sas.commit(sa);
        Ok(Mirrored { id, moved_from })
    }

    /// Active: a snapshot of every established IKE SA, with the inbound SPIs of the CHILD SAs it
    /// holds (for the bulk transfer to a standby that joins). Ordered by SA id.
    #[allow(clippy::type_complexity)]
    pub fn snapshots(&self, now: Instant) -> Vec<(IkeSaId, Zeroizing<Vec<u8>>, Vec<u32>)> {
        let mut v: Vec<_> = self
            .sas
            .values()
            .filter(|sa| sa.established.is_some())
            .filter_map(|sa| {
                let snap = snapshot::encode(sa, now).ok()?;
                Some((sa.id, snap, sa.children.iter().map(|c| c.spi_in).collect()))
            })
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// The Message ID of the request this IKE SA has outstanding, if any. The HA layer uses it to
    /// tell which CHILD SAs complete an exchange another node may also complete (the request was
    /// mirrored): their keys are the same on both nodes, so their sequence numbers must not be.
    pub fn outstanding_request(&self, id: IkeSaId) -> Option<u32> {
        self.sas.get(&id)?.rel.outstanding.as_ref().map(|o| o.message_id)
    }

    /// Every IKE SA with a request outstanding, with that request's Message ID.
    pub fn outstanding_requests(&self) -> Vec<(IkeSaId, u32)> {
        let mut v: Vec<_> = self
            .sas
            .values()
            .filter_map(|sa| Some((sa.id, sa.rel.outstanding.as_ref()?.message_id)))
            .collect();
        v.sort_unstable();
        v
    }

    /// The CHILD SAs of mirrored IKE SA `id` with the selectors the dataplane will install for
    /// them (none when `id` is not here). One SA's, not a listing of all: called for each SA
    /// whose mirror changed.
    pub fn mirrored_routes(&self, id: IkeSaId) -> Vec<MirroredRoute> {
        let Some(sa) = self.sas.get(&id) else { return Vec::new() };
        sa.children
            .iter()
            .map(|c| {
                let (local_ts, remote_ts) = dataplane_selectors(sa, c);
                MirroredRoute { reqid: c.reqid, spi_in: c.spi_in, local_ts, remote_ts }
            })
            .collect()
    }

    /// The inbound SPIs of the CHILD SAs of IKE SA `id` (none when it is not here): one SA's,
    /// not a listing of all.
    pub fn child_spis_in(&self, id: IkeSaId) -> Vec<u32> {
        self.sas.get(&id).map(|sa| sa.children.iter().map(|c| c.spi_in).collect()).unwrap_or_default()
    }

    /// Standby: the active removed this SA at `now`. Its recent last response is kept as a
    /// tombstone, as the active keeps it (`drop_sa`), so a takeover answers the peer's
    /// retransmission of the request that ended it. Returns whether it was mirrored here.
    pub fn unmirror(&mut self, now: Instant, id: IkeSaId) -> bool {
        let known = self.sas.contains(&id);
        if let Some(mut sa) = self.sas.checkout(&id) {
            self.bury_last_response(now, &mut sa);
        }
        if known {
            self.sas.discard(id);
        }
        known
    }

    /// Step down from active to standby (the cluster's arbiter made the other node active, e.g. a
    /// healed VRRP split): every SA is dropped here without a word to its peer (the other node runs
    /// it and will send this node its state again), the dataplane is told to remove the CHILD SAs
    /// (`ChildSaDown`), and nothing is sent, timed out or initiated from now on.
    pub fn demote(&mut self) -> usize {
        let mut ids: Vec<IkeSaId> = self.sas.values().map(|sa| sa.id).collect();
        ids.sort_unstable();
        for &id in &ids {
            let Some(mut sa) = self.sas.checkout(&id) else { continue };
            let vpn = sa.vpn.clone().unwrap_or_default();
            for c in std::mem::take(&mut sa.children).into_iter().filter(|c| c.announced) {
                self.events.push_back(Event::ChildSaDown {
                    ike_sa: id,
                    vpn: vpn.clone(),
                    child: c.name,
                    reqid: c.reqid,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    reason: crate::api::DownReason::LocalDelete,
                });
            }
            self.forget_half_open(&mut sa);
            self.sas.discard(id);
        }
        self.transmits.clear();
        self.restarts.clear();
        self.spawned.clear();
        self.standby = true;
        info!(target: "ike", ike_sas = ids.len(), "stepped down to HA standby: SAs dropped here, kept by the active node");
        ids.len()
    }

    /// Leave the standby role and run every mirrored SA as this node's own (see the module doc).
    /// The caller installs the CHILD SAs of the `ChildSaUp` events with the sequence numbers and
    /// replay windows the HA layer synced, before any of them seals a packet.
    pub fn take_over(&mut self, now: Instant) -> Takeover {
        self.now = Some(now);
        self.standby = false;
        let mut report = Takeover::default();
        let mut ids: Vec<IkeSaId> = self.sas.values().map(|sa| sa.id).collect();
        ids.sort_unstable();
        for id in ids {
            let Some(mut sa) = self.sas.checkout(&id) else { continue };
            let peer = sa.vpn.as_deref().and_then(|v| self.peer(v)).cloned();
            let (Some(peer), true) = (peer, sa.established.is_some()) else {
                report.dropped += 1;
                warn!(target: "ike", sa = format_args!("{id:#018x}"), vpn = ?sa.vpn, "mirrored IKE SA not taken over");
                self.sas.discard(id);
                continue;
            };
            let vpn = peer.name.clone();
            if sa.state != SaState::Deleting && !sa.superseded {
                self.events.push_back(Event::IkeSaUp { ike_sa: id, vpn: vpn.clone() });
            }
            for c in sa.children.iter().filter(|c| c.announced) {
                let Some(cfg) = peer.children.iter().find(|x| x.name == c.name) else { continue };
                // A rekey we answered, its predecessor still here: the peer may not have our
                // response yet (the old active may have died before sending it), so keep sending
                // on the old SA until the peer's first packet on the new one, as the old active
                // did. Whether its dataplane had switched already is not synced; deferring again
                // costs nothing, since the peer keeps the old SA until it deletes it.
                let defer =
                    c.replaces.is_some_and(|old| !c.initiated && sa.children.iter().any(|o| o.spi_in == old));
                let iv_key = Zeroizing::new(self.rng.vec(16));
                let install = crate::ex_child::install_of(&sa, c, cfg, defer, iv_key);
                self.events.push_back(Event::ChildSaUp(Box::new(install)));
                report.child_sas += 1;
            }
            if let Some(d) = sa.rel.resume(now, &self.config.retransmit) {
                report.retransmitted += 1;
                self.send_datagrams(sa.local, sa.remote, d);
            }
            report.ike_sas += 1;
            self.finish(now, sa);
        }
        info!(target: "ike", ike_sas = report.ike_sas, child_sas = report.child_sas,
              retransmitted = report.retransmitted, dropped = report.dropped, "took over as HA active");
        self.start_configured(now);
        report
    }
}

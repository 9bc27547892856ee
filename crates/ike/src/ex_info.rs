//! INFORMATIONAL exchanges (RFC 7296 section 1.4): Delete, liveness checks, INVALID_SPI (seed 001).

use crate::api::DownReason;
use crate::endpoint::Endpoint;
use crate::sa::{IkeSa, Queued, Request, SaState};
use std::time::Instant;
use tandem_wire::{Delete, ExchangeType, NotifyType, Payload, ProtocolId};
use tracing::{info, warn};

impl Endpoint {
    pub(crate) fn start_delete_ike(&mut self, now: Instant, sa: &mut IkeSa) {
        let d = Delete { protocol: ProtocolId::IKE, spi_size: 0, spis: vec![] };
        sa.state = SaState::Deleting;
        self.send_request(now, sa, ExchangeType::INFORMATIONAL, vec![Payload::Delete(d)], Request::DeleteIke);
    }

    pub(crate) fn start_delete_children(&mut self, now: Instant, sa: &mut IkeSa, spis_in: Vec<u32>) {
        let spis: Vec<u32> = spis_in
            .into_iter()
            .filter(|s| sa.children.iter().any(|c| c.spi_in == *s && !c.deleting))
            .collect();
        for c in sa.children.iter_mut().filter(|c| spis.contains(&c.spi_in)) {
            c.deleting = true;
        }
        self.send_delete_children(now, sa, spis);
    }

    /// The Delete request itself, for whatever SPIs are given (the CHILD SAs may be gone here).
    pub(crate) fn send_delete_children(&mut self, now: Instant, sa: &mut IkeSa, spis: Vec<u32>) {
        if spis.is_empty() {
            return;
        }
        let d = Delete {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
        };
        self.send_request(
            now,
            sa,
            ExchangeType::INFORMATIONAL,
            vec![Payload::Delete(d)],
            Request::DeleteChild(spis),
        );
    }

    /// Responder: an INFORMATIONAL request. Returns the response payloads.
    pub(crate) fn responder_informational(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        req: Vec<Payload>,
    ) -> Vec<Payload> {
        let mut our_spis = Vec::new();
        for p in &req {
            match p {
                Payload::Delete(d) if d.protocol == ProtocolId::IKE => {
                    info!(target: "ike", vpn = ?sa.vpn, "peer deleted the IKE SA");
                    self.hand_back_children(sa);
                    sa.state = SaState::Deleting;
                    sa.down_reason = Some(DownReason::PeerDelete);
                    sa.rel.outstanding = None;
                    sa.queue.clear();
                    return vec![];
                }
                Payload::Delete(d) if d.protocol == ProtocolId::ESP => {
                    for spi in &d.spis {
                        let Ok(b) = <[u8; 4]>::try_from(spi.as_slice()) else { continue };
                        let spi_out = u32::from_be_bytes(b);
                        if let Some(c) = sa.children.iter().find(|c| c.spi_out == spi_out) {
                            let spi_in = c.spi_in;
                            // Row C6: when both delete it, the response carries no Delete for it
                            // (section 1.4.1); our own request removes the rest.
                            if !c.deleting {
                                our_spis.push(spi_in);
                            }
                            self.remove_child(sa, spi_in, DownReason::PeerDelete);
                        }
                    }
                }
                Payload::Notify(n) if n.notify_type == NotifyType::INVALID_SPI => {
                    let Ok(b) = <[u8; 4]>::try_from(n.data.as_slice()) else { continue };
                    self.peer_reports_invalid_spi(now, sa, u32::from_be_bytes(b));
                }
                _ => {}
            }
        }
        if our_spis.is_empty() {
            return vec![];
        }
        vec![Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: our_spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
        })]
    }

    /// The peer deletes an IKE SA that its rekey made while our own rekey of the same SA is in
    /// flight: it lost the collision and this is its redundant SA (row I1 with the Delete before
    /// our response). The CHILD SAs go back to the old SA, which our response then moves on.
    fn hand_back_children(&mut self, sa: &mut IkeSa) {
        let Some(old_id) = sa.replaces_ike else { return };
        self.sas.update(&old_id, |old| {
            let ours_in_flight = matches!(old.request, Some(Request::RekeyIke(_)));
            if !ours_in_flight || old.rekeyed_by_peer.as_ref().is_none_or(|r| r.0 != sa.id) {
                return;
            }
            old.children.append(&mut sa.children);
            old.rekeyed_by_peer = None;
            old.superseded = false;
            old.retire_at = None;
            sa.superseded = true;
        });
    }

    /// The peer does not know one of our outbound SPIs (seed 001): the CHILD SA is dead. Remove it now
    /// and establish it again at once instead of waiting for its lifetime to end.
    fn peer_reports_invalid_spi(&mut self, _now: Instant, sa: &mut IkeSa, spi: u32) {
        let Some(c) = sa.children.iter().find(|c| c.spi_out == spi) else { return };
        let (name, spi_in) = (c.name.clone(), c.spi_in);
        warn!(target: "ike", vpn = ?sa.vpn, child = %name, spi = format_args!("{spi:#010x}"), "INVALID_SPI from peer: replacing CHILD SA");
        self.remove_child(sa, spi_in, DownReason::InvalidSpi);
        // Tell the peer in case it still holds its half, then negotiate a fresh CHILD SA.
        sa.queue.push(Queued::DeleteRemoved(vec![spi_in]));
        sa.queue.push(Queued::CreateChild { name, rekeys_spi_in: None });
    }
}

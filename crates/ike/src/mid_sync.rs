//! RFC 6311 Message ID synchronisation (issue 10, model finding F3).
//!
//! An HA node that takes over from a mirror that may be stale (the sync link was down, or the
//! standby had fallen behind) may not know the Message IDs the old active used last: the old active
//! may have run exchanges alone. Its next request would then carry an ID the peer takes for an old
//! retransmission and ignores, and it would drop the peer's next request as out of window, so the
//! IKE SA dies within a retransmission schedule and is renegotiated. RFC 6311 lets it ask the peer:
//! an INFORMATIONAL request with Message ID 0 carrying IKEV2_MESSAGE_ID_SYNC (a nonce, our next
//! request ID, the peer request ID we expect); the peer answers with its own view, both sides take
//! the larger values, and the nonce ties the answer to the request.
//!
//! Both roles are here:
//! - the cluster's ([`Endpoint::sync_message_ids`]): only on IKE SAs whose peer announced
//!   IKEV2_MESSAGE_ID_SYNC_SUPPORTED in IKE_AUTH. strongSwan announces it only as the original
//!   initiator, and refuses a sync whose sender ID is below the one it expects, so our ID is
//!   pushed forward by a margin larger than the number of requests the old active can have sent
//!   alone. A request the old active left outstanding is first retransmitted for one period
//!   (the peer answers it from its cache if that request was its last): a sync discards the
//!   peer's cached response, and redoing an exchange the peer already completed (a rekey) would be
//!   worse than waiting. If the retransmission is not answered the request is given up, the sync
//!   goes, and the request's work is queued again under the new Message IDs.
//! - the peer's ([`Endpoint::answer_mid_sync`]): a sync from a clustered peer is answered; one whose
//!   sender ID is below what we expect is ignored, so a replayed old sync changes nothing.
//!
//! IPSEC_REPLAY_COUNTER_SYNC (section 4.2) is neither announced nor sent: no peer measured here
//! supports it, and the inbound replay windows of a stale takeover are moved forward instead
//! (`replay-advance`, docs/ha.md).

use crate::endpoint::Endpoint;
use crate::sa::{IkeSa, Queued, Request, SaState};
use std::time::Instant;
use tandem_wire::{ExchangeType, MessageIdSync, Notify, NotifyType, Payload};
use tracing::{debug, info, warn};

/// The IKEV2_MESSAGE_ID_SYNC_SUPPORTED status notify, sent in every IKE_AUTH (request and
/// response): any tandem node answers a sync, and a clustered one may need to send one.
pub(crate) fn announcement() -> Payload {
    Payload::Notify(Notify::new(NotifyType::IKEV2_MESSAGE_ID_SYNC_SUPPORTED, vec![]))
}

/// The peer's IKE_AUTH message announces IKEV2_MESSAGE_ID_SYNC_SUPPORTED.
pub(crate) fn announced(payloads: &[Payload]) -> bool {
    payloads.iter().any(
        |p| matches!(p, Payload::Notify(n) if n.notify_type == NotifyType::IKEV2_MESSAGE_ID_SYNC_SUPPORTED),
    )
}

/// A Message ID 0 INFORMATIONAL is a sync request when it carries an IKEV2_MESSAGE_ID_SYNC notify.
pub(crate) fn is_sync_request(payloads: &[Payload]) -> bool {
    sync_notify(payloads).is_some()
}

fn sync_notify(payloads: &[Payload]) -> Option<&Notify> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type == NotifyType::IKEV2_MESSAGE_ID_SYNC => Some(n),
        _ => None,
    })
}

impl Endpoint {
    /// HA: after a takeover from a mirror that may be stale, synchronise the Message IDs of every
    /// established IKE SA whose peer supports RFC 6311, our next request ID pushed forward by
    /// `margin`. Returns the number of IKE SAs that will be synchronised.
    pub fn sync_message_ids(&mut self, now: Instant, margin: u32) -> usize {
        self.now = Some(now);
        let mut ids: Vec<_> = self
            .sas
            .values()
            .filter(|sa| sa.peer_mid_sync && sa.state == SaState::Established && !sa.superseded)
            .map(|sa| sa.id)
            .collect();
        ids.sort_unstable();
        for &id in &ids {
            let Some(mut sa) = self.sas.checkout(&id) else { continue };
            sa.mid_sync_due = Some(margin);
            if sa.rel.can_send() {
                self.start_mid_sync(now, &mut sa);
            }
            self.finish(now, sa);
        }
        if !ids.is_empty() {
            info!(target: "ike", ike_sas = ids.len(), margin, "synchronising Message IDs with the peers (RFC 6311)");
        }
        ids.len()
    }

    /// Send the sync owed on `sa` (its window must be free).
    pub(crate) fn start_mid_sync(&mut self, now: Instant, sa: &mut IkeSa) {
        let Some(margin) = sa.mid_sync_due.take() else { return };
        let sync = MessageIdSync {
            nonce: self.rng.u32(),
            expected_send_req_mid: sa.rel.next_request_id.saturating_add(margin),
            expected_recv_req_mid: sa.rel.expected_peer_id,
        };
        debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), send = sync.expected_send_req_mid,
               recv = sync.expected_recv_req_mid, "sending IKEV2_MESSAGE_ID_SYNC");
        let datagrams =
            self.seal(sa, ExchangeType::INFORMATIONAL, false, 0, vec![Payload::Notify(sync.to_notify())]);
        sa.rel.send_out_of_sequence(now, 0, datagrams.clone(), &self.config.retransmit);
        sa.request = Some(Request::MidSync(sync.nonce));
        self.stats.mid_syncs_sent += 1;
        self.send_datagrams(sa.local, sa.remote, datagrams);
    }

    /// A sync is owed and the inherited request outstanding on `sa` went one retransmission
    /// period unanswered: the peer has moved past it. Give it up, queue its work again, and send
    /// the sync now. Returns whether it did.
    pub(crate) fn give_up_stale_request(&mut self, now: Instant, sa: &mut IkeSa) -> bool {
        let due = sa.rel.outstanding.as_ref().is_some_and(|o| o.deadline.is_some_and(|d| d <= now));
        if sa.mid_sync_due.is_none() || !due || matches!(sa.request, Some(Request::MidSync(_))) {
            return false;
        }
        debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), "inherited request unanswered: synchronising Message IDs");
        Self::requeue_outstanding(sa);
        self.start_mid_sync(now, sa);
        true
    }

    /// Drop the outstanding request of `sa` (the peer will not answer its Message ID) and queue
    /// its work first, to go again under a new Message ID.
    fn requeue_outstanding(sa: &mut IkeSa) {
        sa.rel.outstanding = None;
        let again = match sa.request.take() {
            Some(Request::CreateChild(p)) => {
                Some(Queued::CreateChild { name: p.name, rekeys_spi_in: p.rekeys_spi_in })
            }
            Some(Request::RekeyIke(_)) => Some(Queued::RekeyIke),
            Some(Request::DeleteChild(spis)) => {
                for c in sa.children.iter_mut().filter(|c| spis.contains(&c.spi_in)) {
                    c.deleting = false;
                }
                Some(Queued::DeleteChild(spis))
            }
            Some(Request::DeleteIke) => Some(Queued::DeleteIke),
            _ => None,
        };
        if let Some(q) = again {
            sa.queue.insert(0, q);
        }
    }

    /// Our sync's response: take the peer's counters.
    pub(crate) fn mid_sync_response(&mut self, sa: &mut IkeSa, payloads: &[Payload], nonce: u32) {
        let answer = sync_notify(payloads).map(MessageIdSync::from_notify);
        let Some(Ok(r)) = answer.filter(|a| a.as_ref().is_ok_and(|r| r.nonce == nonce)) else {
            self.stats.mid_syncs_rejected += 1;
            warn!(target: "ike", vpn = ?sa.vpn, "Message ID sync answered without a matching IKEV2_MESSAGE_ID_SYNC: counters kept");
            return;
        };
        // The peer's view: P2 is the ID of its next request, M2 the ID it expects from us.
        let (old_send, old_recv) = (sa.rel.next_request_id, sa.rel.expected_peer_id);
        sa.rel.next_request_id = r.expected_recv_req_mid.max(old_send);
        sa.rel.expected_peer_id = r.expected_send_req_mid.max(old_recv);
        self.stats.mid_syncs_done += 1;
        info!(target: "ike", vpn = ?sa.vpn, send = sa.rel.next_request_id, send_was = old_send,
              recv = sa.rel.expected_peer_id, recv_was = old_recv, "Message IDs synchronised with the peer (RFC 6311)");
    }

    /// A clustered peer asks for our Message ID counters (its mirror may be stale). Answers with
    /// Message ID 0; the answer is not cached (a retransmitted sync is simply answered again).
    pub(crate) fn answer_mid_sync(&mut self, now: Instant, sa: &mut IkeSa, payloads: &[Payload]) {
        let Some(Ok(req)) = sync_notify(payloads).map(MessageIdSync::from_notify) else {
            self.stats.mid_syncs_rejected += 1;
            return;
        };
        // The sender's next request ID below the one we expect: an old sync replayed, or a peer
        // going backwards. Ignored, as strongSwan does; nothing changes.
        if req.expected_send_req_mid < sa.rel.expected_peer_id {
            self.stats.mid_syncs_rejected += 1;
            debug!(target: "ike", vpn = ?sa.vpn, theirs = req.expected_send_req_mid, ours = sa.rel.expected_peer_id,
                   "ignoring a Message ID sync below the expected Message ID");
            return;
        }
        sa.last_received = Some(now);
        let syncing = matches!(sa.request, Some(Request::MidSync(_)));
        let regular = sa.rel.outstanding.as_ref().filter(|_| !syncing).map(|o| o.message_id);
        // The ID our next request will carry: the outstanding one's (we keep retransmitting it),
        // unless the peer says it is past it, in which case that request's work goes again.
        let ours = regular.unwrap_or(sa.rel.next_request_id);
        let p2 = req.expected_recv_req_mid.max(ours);
        if p2 > ours && regular.is_some() {
            Self::requeue_outstanding(sa);
        }
        if sa.rel.outstanding.is_none() || syncing {
            sa.rel.next_request_id = p2.max(sa.rel.next_request_id);
        }
        let m2 = req.expected_send_req_mid;
        sa.rel.expected_peer_id = m2;
        let answer = MessageIdSync { nonce: req.nonce, expected_send_req_mid: p2, expected_recv_req_mid: m2 };
        let datagrams =
            self.seal(sa, ExchangeType::INFORMATIONAL, true, 0, vec![Payload::Notify(answer.to_notify())]);
        self.stats.mid_syncs_answered += 1;
        info!(target: "ike", vpn = ?sa.vpn, send = p2, recv = m2, "peer requested a Message ID sync (RFC 6311): answered");
        self.send_datagrams(sa.local, sa.remote, datagrams);
    }
}

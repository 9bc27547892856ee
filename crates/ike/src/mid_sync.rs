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
//!
//! IPSEC_REPLAY_COUNTER_SYNC (section 4.2) goes in the same Message ID 0 request, after a
//! takeover from a stale mirror, to a peer that announced IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED: the new active
//! jumped its inbound replay windows by `delta` (the old active may have accepted packets after the
//! last window it synced), and the peer moves its outbound sequence numbers by as much, so nothing
//! it sends next is refused as a replay and nothing the old active received can be replayed. A
//! peer that did not announce it gets the estimated `replay-advance` instead (docs/ha.md). As the
//! peer, tandem announces it and honours it (`Event::OutboundSeqAdvance`). strongSwan announces
//! neither replay notify.

use crate::api::Event;
use crate::endpoint::Endpoint;
use crate::sa::{IkeSa, Queued, Request, SaState, SyncDue};
use std::collections::HashSet;
use std::time::Instant;
use tandem_wire::{ExchangeType, MessageIdSync, Notify, NotifyType, Payload, ReplayCounterSync};
use tracing::{debug, info, warn};

/// The two RFC 6311 status notifies, sent in every IKE_AUTH (request and response): any tandem
/// node answers both syncs, and a clustered one may need to send them.
pub(crate) fn announcements() -> [Payload; 2] {
    [NotifyType::IKEV2_MESSAGE_ID_SYNC_SUPPORTED, NotifyType::IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED]
        .map(|t| Payload::Notify(Notify::new(t, vec![])))
}

/// strongSwan (5.9 to today) derives the IV of each AEAD-encrypted IKE message from its Message ID
/// and refuses a number it used before, in each of two ranges (`iv_gen_seq.c`). Once it has
/// answered a request of ours (its answer to our Message ID 0 took the second range's 0), it can
/// never encrypt another Message ID 0, so a sync's answer fails and it destroys the IKE SA at once,
/// ESP and all, without a Delete. Such an SA is better left as it is: it may carry traffic for a
/// while and die by DPD, which a peer's `dpd_action = restart` repairs. The peer is not
/// identified, so a peer without this limitation goes without the sync too.
fn strongswan_cannot_answer(sa: &IkeSa) -> bool {
    sa.suite.is_some_and(|s| s.encr.is_aead()) && sa.rel.next_request_id > 0
}

/// What the peer's IKE_AUTH message announces: (Message ID sync, replay counter sync).
pub(crate) fn announced(payloads: &[Payload]) -> (bool, bool) {
    let has = |t: NotifyType| notify(payloads, t).is_some();
    (has(NotifyType::IKEV2_MESSAGE_ID_SYNC_SUPPORTED), has(NotifyType::IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED))
}

/// A Message ID 0 INFORMATIONAL is a sync request when it carries either sync notify.
pub(crate) fn is_sync_request(payloads: &[Payload]) -> bool {
    sync_notify(payloads).is_some() || notify(payloads, NotifyType::IPSEC_REPLAY_COUNTER_SYNC).is_some()
}

fn sync_notify(payloads: &[Payload]) -> Option<&Notify> {
    notify(payloads, NotifyType::IKEV2_MESSAGE_ID_SYNC)
}

fn notify(payloads: &[Payload], t: NotifyType) -> Option<&Notify> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type == t => Some(n),
        _ => None,
    })
}

impl Endpoint {
    /// HA, after a takeover: the RFC 6311 syncs. `mid_margin`: synchronise Message IDs, our next
    /// request ID pushed forward by it; `replay_delta`: ask the peer to move its outbound sequence numbers by as much as our
    /// inbound replay windows jumped. Each goes only to a peer that announced it (the CHILD SAs
    /// concerned are [`Endpoint::replay_sync_children`]). Returns the number of IKE SAs synced.
    pub fn sync_after_takeover(
        &mut self,
        now: Instant,
        mid_margin: Option<u32>,
        replay_delta: Option<u64>,
    ) -> usize {
        self.now = Some(now);
        let mut skipped = 0;
        let mut due: Vec<_> = self
            .sas
            .values()
            .filter(|sa| sa.state == SaState::Established && !sa.superseded)
            .filter(|sa| {
                let answerable = !strongswan_cannot_answer(sa);
                skipped += usize::from(!answerable && (sa.peer_mid_sync || sa.peer_replay_sync));
                answerable
            })
            .filter_map(|sa| {
                let replay =
                    replay_delta.filter(|_| sa.peer_replay_sync && sa.children.iter().any(|c| c.live()));
                // With a replay sync, a Message ID sync (margin 0 when the mirror is current)
                // goes too: the peer then ignores a replayed copy of the request.
                let mid = mid_margin.or(replay.map(|_| 0)).filter(|_| sa.peer_mid_sync);
                (mid.is_some() || replay.is_some())
                    .then_some((sa.id, SyncDue { mid_margin: mid, replay_delta: replay }))
            })
            .collect();
        due.sort_unstable_by_key(|d| d.0);
        for &(id, d) in &due {
            let Some(mut sa) = self.sas.checkout(&id) else { continue };
            sa.sync_due = Some(d);
            if sa.rel.can_send() {
                self.start_takeover_sync(now, &mut sa);
            }
            self.finish(now, sa);
        }
        if !due.is_empty() {
            info!(target: "ike", ike_sas = due.len(), ?mid_margin, ?replay_delta, "RFC 6311 sync with the peers");
        }
        if skipped > 0 {
            self.stats.mid_syncs_skipped += skipped as u64;
            warn!(target: "ike", ike_sas = skipped, "no RFC 6311 sync on IKE SAs with AEAD encryption on which this \
                  cluster already sent a request: strongSwan cannot encrypt the answer and would destroy them");
        }
        due.len()
    }

    /// Inbound SPIs of the CHILD SAs whose peer announced IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED: at
    /// a takeover their replay windows may jump by the delta of [`Endpoint::sync_after_takeover`].
    pub fn replay_sync_children(&self) -> HashSet<u32> {
        self.sas
            .values()
            .filter(|sa| sa.peer_replay_sync && sa.state == SaState::Established && !sa.superseded)
            .flat_map(|sa| sa.children.iter().filter(|c| c.live()).map(|c| c.spi_in))
            .collect()
    }

    /// Send the sync owed on `sa` (its window must be free).
    pub(crate) fn start_takeover_sync(&mut self, now: Instant, sa: &mut IkeSa) {
        let Some(due) = sa.sync_due.take() else { return };
        let mut payloads = Vec::new();
        let nonce = due.mid_margin.map(|margin| {
            let sync = MessageIdSync {
                nonce: self.rng.u32(),
                expected_send_req_mid: sa.rel.next_request_id.saturating_add(margin),
                expected_recv_req_mid: sa.rel.expected_peer_id,
            };
            debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), send = sync.expected_send_req_mid,
                   recv = sync.expected_recv_req_mid, "sending IKEV2_MESSAGE_ID_SYNC");
            payloads.push(Payload::Notify(sync.to_notify()));
            self.stats.mid_syncs_sent += 1;
            sync.nonce
        });
        if let Some(delta) = due.replay_delta {
            let esn = sa.children.iter().filter(|c| c.live()).all(|c| c.sel.esn == tandem_crypto::Esn::Yes);
            if let Ok(r) = ReplayCounterSync::new(delta, esn) {
                payloads.push(Payload::Notify(r.to_notify()));
                self.stats.replay_syncs_sent += 1;
            }
        }
        if payloads.is_empty() {
            return;
        }
        let datagrams = self.seal(sa, ExchangeType::INFORMATIONAL, false, 0, payloads);
        sa.rel.send_out_of_sequence(now, 0, datagrams.clone(), &self.config.retransmit);
        sa.request = Some(Request::TakeoverSync(nonce));
        self.send_datagrams(sa.local, sa.remote, datagrams);
    }

    /// A sync is owed and the inherited request outstanding on `sa` went one retransmission
    /// period unanswered: the peer has moved past it. Give it up, queue its work again, and send
    /// the sync now. Returns whether it did.
    pub(crate) fn give_up_stale_request(&mut self, now: Instant, sa: &mut IkeSa) -> bool {
        let due = sa.rel.outstanding.as_ref().is_some_and(|o| o.deadline.is_some_and(|d| d <= now));
        if sa.sync_due.is_none() || !due || matches!(sa.request, Some(Request::TakeoverSync(_))) {
            return false;
        }
        debug!(target: "ike", sa = format_args!("{:#018x}", sa.id), "inherited request unanswered: synchronising");
        Self::requeue_outstanding(sa);
        self.start_takeover_sync(now, sa);
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

    /// Our sync's response: take the peer's counters (when we asked for them).
    pub(crate) fn takeover_sync_response(
        &mut self,
        sa: &mut IkeSa,
        payloads: &[Payload],
        nonce: Option<u32>,
    ) {
        let Some(nonce) = nonce else { return };
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

    /// A clustered peer asks for our Message ID counters (its mirror may be stale) and/or for our
    /// outbound sequence numbers to move past its replay windows. Answers with Message ID 0; the
    /// answer is not cached (a retransmitted sync is simply answered again).
    pub(crate) fn answer_mid_sync(&mut self, now: Instant, sa: &mut IkeSa, payloads: &[Payload]) {
        let mid = sync_notify(payloads).map(MessageIdSync::from_notify);
        let replay =
            notify(payloads, NotifyType::IPSEC_REPLAY_COUNTER_SYNC).map(ReplayCounterSync::from_notify);
        let (Ok(mid), Ok(replay)) = (mid.transpose(), replay.transpose()) else {
            self.stats.mid_syncs_rejected += 1;
            return;
        };
        // The sender's next request ID below the one we expect: an old sync replayed, or a peer
        // going backwards. Ignored, as strongSwan does, replay notify and all: nothing changes.
        if mid.is_some_and(|m| m.expected_send_req_mid < sa.rel.expected_peer_id) {
            self.stats.mid_syncs_rejected += 1;
            debug!(target: "ike", vpn = ?sa.vpn, ours = sa.rel.expected_peer_id,
                   "ignoring a Message ID sync below the expected Message ID");
            return;
        }
        sa.last_received = Some(now);
        let mut response = Vec::new();
        if let Some(req) = mid {
            let answer = self.take_peer_message_ids(sa, &req);
            response.push(Payload::Notify(answer.to_notify()));
        }
        if let Some(r) = replay {
            self.stats.replay_syncs_answered += 1;
            let vpn = sa.vpn.clone();
            for c in sa.children.iter().filter(|c| c.live() && c.announced) {
                self.events.push_back(Event::OutboundSeqAdvance {
                    ike_sa: sa.id,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    delta: r.delta(),
                });
            }
            info!(target: "ike", ?vpn, delta = r.delta(), "peer requested a replay counter sync (RFC 6311): outbound sequence numbers moved on");
        }
        let datagrams = self.seal(sa, ExchangeType::INFORMATIONAL, true, 0, response);
        self.send_datagrams(sa.local, sa.remote, datagrams);
    }

    /// Take a clustered peer's Message ID counters (section 5.1: both sides keep the larger
    /// values); returns our answer.
    fn take_peer_message_ids(&mut self, sa: &mut IkeSa, req: &MessageIdSync) -> MessageIdSync {
        let syncing = matches!(sa.request, Some(Request::TakeoverSync(_)));
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
        self.stats.mid_syncs_answered += 1;
        info!(target: "ike", vpn = ?sa.vpn, send = p2, recv = m2, "peer requested a Message ID sync (RFC 6311): answered");
        MessageIdSync { nonce: req.nonce, expected_send_req_mid: p2, expected_recv_req_mid: m2 }
    }
}

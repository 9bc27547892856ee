//! IKE_AUTH with pre-shared keys (RFC 7296 sections 1.2 and 2.15), carrying the first CHILD SA.

use crate::api::Event;
use crate::config::{Identity, IpsecMode, PeerConfig};
use crate::endpoint::{jitter, Endpoint};
use crate::ex_init::error_notify;
use crate::sa::{IkeSa, PendingChild, Request, SaState};
use std::time::Instant;
use tandem_crypto::{psk_auth, signed_octets};
use tandem_wire::{AuthMethod, ExchangeType, Notify, NotifyType, Payload};
use tracing::{info, warn};
use zeroize::Zeroizing;

impl Endpoint {
    /// The PSK for a pair of identities: one naming both wins over one naming either, which wins over
    /// a wildcard (no ids).
    pub(crate) fn find_psk(&self, local: &Identity, remote: &Identity) -> Option<Zeroizing<Vec<u8>>> {
        let score = |ids: &[Identity]| -> Option<u8> {
            if ids.is_empty() {
                return Some(1);
            }
            let (l, r) = (ids.contains(local), ids.contains(remote));
            match (l, r) {
                (true, true) => Some(4),
                (false, true) => Some(3),
                (true, false) => Some(2),
                _ => None,
            }
        };
        self.psks
            .iter()
            .filter_map(|p| score(&p.ids).map(|s| (s, p)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p.secret.clone())
    }

    fn auth_value(
        &self,
        sa: &IkeSa,
        psk: &[u8],
        signer_is_initiator: bool,
        id_body: &[u8],
    ) -> Option<Vec<u8>> {
        let keys = sa.keys.as_ref()?;
        let prf = sa.suite?.prf?;
        let (first, peer_nonce, sk_p) = if signer_is_initiator {
            (&sa.init_request, &sa.nr, &keys.sk_pi)
        } else {
            (&sa.init_response, &sa.ni, &keys.sk_pr)
        };
        let octets = signed_octets(first, peer_nonce, prf, sk_p, id_body);
        Some(psk_auth(prf, psk, &octets).to_vec())
    }

    /// Initiator: send IKE_AUTH with the vpn's first CHILD SA.
    pub(crate) fn send_auth_request(&mut self, now: Instant, sa: &mut IkeSa, peer: &PeerConfig) {
        let local_id = peer.local_id.clone();
        let Some(psk) = self.find_psk(&local_id, peer.remote_id.as_ref().unwrap_or(&local_id)) else {
            return self.fail_sa(sa, "no pre-shared key for these identities");
        };
        let id_payload = local_id.to_payload();
        let Some(auth) = self.auth_value(sa, &psk, true, &id_payload.body()) else { return };
        sa.local_id = Some(local_id);
        let mut payloads = vec![Payload::IdI(id_payload)];
        if let Some(r) = &peer.remote_id {
            payloads.push(Payload::IdR(r.to_payload()));
        }
        payloads.push(Payload::Auth { method: AuthMethod::SHARED_KEY_MESSAGE_INTEGRITY_CODE, data: auth });
        if peer.initial_contact {
            payloads.push(Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, vec![])));
        }
        payloads.extend(crate::mid_sync::announcements());
        let childless = match peer.childless {
            crate::config::Childless::Allow => false,
            crate::config::Childless::Prefer => sa.peer_childless,
            crate::config::Childless::Force => true,
        };
        let first = if childless { None } else { peer.children.first() };
        let pending = match first {
            Some(child) => {
                let spi_in = self.alloc_esp_spi();
                let pending = PendingChild {
                    name: child.name.clone(),
                    spi_in,
                    local_ts: child.local_ts.clone(),
                    remote_ts: child.remote_ts.clone(),
                    rekeys_spi_in: None,
                    nonce: Vec::new(),
                    ke: None,
                };
                payloads.extend(self.child_request_payloads(child, &pending, false));
                Some(pending)
            }
            None => None,
        };
        sa.state = SaState::AuthSent;
        self.send_request(now, sa, ExchangeType::IKE_AUTH, payloads, Request::Auth(pending));
    }

    /// Initiator: the IKE_AUTH response.
    pub(crate) fn initiator_auth_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: Vec<Payload>,
        pending: Option<PendingChild>,
    ) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        let Some(peer) = self.peer(&vpn).cloned() else { return };
        let idr = payloads.iter().find_map(|p| if let Payload::IdR(i) = p { Some(i.clone()) } else { None });
        let auth = payloads.iter().find_map(|p| {
            if let Payload::Auth { data, .. } = p {
                Some(data.clone())
            } else {
                None
            }
        });
        let (Some(idr), Some(auth)) = (idr, auth) else {
            let why = error_notify(&payloads)
                .map_or("IKE_AUTH response lacks IDr or AUTH".to_string(), |n| {
                    format!("peer refused IKE_AUTH: {n}")
                });
            return self.fail_sa(sa, &why);
        };
        let Some(remote_id) = Identity::from_payload(&idr) else {
            return self.fail_sa(sa, "unsupported responder ID type");
        };
        if peer.remote_id.as_ref().is_some_and(|r| *r != remote_id) {
            return self.fail_sa(sa, &format!("responder identity {remote_id} is not the configured one"));
        }
        let local_id = sa.local_id.clone().unwrap_or_else(|| peer.local_id.clone());
        let Some(psk) = self.find_psk(&local_id, &remote_id) else {
            return self.fail_sa(sa, "no pre-shared key for the responder identity");
        };
        let expected = self.auth_value(sa, &psk, false, &idr.body());
        if expected
            .as_deref()
            .is_none_or(|e| aws_lc_rs::constant_time::verify_slices_are_equal(e, &auth).is_err())
        {
            return self.fail_sa(sa, "responder AUTH payload does not verify");
        }
        sa.remote_id = Some(remote_id.clone());
        (sa.peer_mid_sync, sa.peer_replay_sync) = crate::mid_sync::announced(&payloads);
        self.establish(now, sa, &peer);
        info!(target: "ike", vpn, remote = %sa.remote, id = %remote_id, "IKE SA established (initiator)");
        // Further CHILD SAs of the vpn (all of them after a childless IKE_AUTH).
        let sent = usize::from(pending.is_some());
        if let Some(pending) = pending {
            self.complete_child_as_initiator(now, sa, &payloads, pending, None);
        }
        sa.forget_handshake();
        for c in peer.children.iter().skip(sent) {
            sa.queue.push(crate::sa::Queued::CreateChild { name: c.name.clone(), rekeys_spi_in: None });
        }
    }

    /// Mark an IKE SA established and arm its timers.
    pub(crate) fn establish(&mut self, now: Instant, sa: &mut IkeSa, peer: &PeerConfig) {
        sa.state = SaState::Established;
        sa.established = Some(now);
        self.forget_half_open(sa);
        let lt = &peer.ike_lifetimes;
        sa.rekey_at = lt.rekey_time.map(|r| now + jitter(&mut *self.rng, r, lt.rand_time));
        sa.expire_at = lt.life_time.map(|l| now + l);
        sa.dpd_at = peer.dpd_delay.map(|d| now + d);
        self.events.push_back(Event::IkeSaUp { ike_sa: sa.id, vpn: peer.name.clone() });
    }

    /// Responder: IKE_AUTH request. Returns the response payloads.
    pub(crate) fn responder_auth(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: Vec<Payload>,
    ) -> Vec<Payload> {
        let fail = |t: NotifyType| vec![Payload::Notify(Notify::new(t, vec![]))];
        let idi = payloads.iter().find_map(|p| if let Payload::IdI(i) = p { Some(i.clone()) } else { None });
        let idr =
            payloads
                .iter()
                .find_map(|p| if let Payload::IdR(i) = p { Identity::from_payload(i) } else { None });
        let auth = payloads.iter().find_map(|p| {
            if let Payload::Auth { method, data } = p {
                Some((*method, data.clone()))
            } else {
                None
            }
        });
        let (Some(idi), Some((method, auth))) = (idi, auth) else {
            sa.state = SaState::Deleting;
            return fail(NotifyType::INVALID_SYNTAX);
        };
        let remote_id = Identity::from_payload(&idi);
        // Pick the vpn: among candidates, one whose remote id matches (a configured id beats "any"),
        // and whose local id matches IDr when the initiator sent one.
        let peer = remote_id.as_ref().and_then(|rid| {
            let cands: Vec<&PeerConfig> = sa.candidates.iter().filter_map(|n| self.peers.get(n)).collect();
            let fits = |p: &&PeerConfig| idr.as_ref().is_none_or(|r| *r == p.local_id);
            cands
                .iter()
                .find(|p| p.remote_id.as_ref() == Some(rid) && fits(p))
                .or_else(|| cands.iter().find(|p| p.remote_id.is_none() && fits(p)))
                .map(|p| (*p).clone())
        });
        let (Some(peer), Some(remote_id)) = (peer, remote_id) else {
            warn!(target: "ike", remote = %sa.remote, "no vpn matches the initiator identity");
            sa.state = SaState::Deleting;
            return fail(NotifyType::AUTHENTICATION_FAILED);
        };
        let local_id = peer.local_id.clone();
        let psk = self.find_psk(&local_id, &remote_id);
        let expected = psk.as_ref().and_then(|k| self.auth_value(sa, k, true, &idi.body()));
        let ok = method == AuthMethod::SHARED_KEY_MESSAGE_INTEGRITY_CODE
            && expected
                .as_deref()
                .is_some_and(|e| aws_lc_rs::constant_time::verify_slices_are_equal(e, &auth).is_ok());
        if !ok {
            warn!(target: "ike", vpn = %peer.name, remote = %sa.remote, id = %remote_id, "AUTHENTICATION_FAILED");
            self.events.push_back(Event::Failure {
                vpn: Some(peer.name.clone()),
                message: format!("authentication of {remote_id} failed"),
            });
            sa.state = SaState::Deleting;
            return fail(NotifyType::AUTHENTICATION_FAILED);
        }
        let Some(psk) = psk else { return fail(NotifyType::AUTHENTICATION_FAILED) };
        let id_payload = local_id.to_payload();
        let Some(our_auth) = self.auth_value(sa, &psk, false, &id_payload.body()) else {
            return fail(NotifyType::AUTHENTICATION_FAILED);
        };
        sa.vpn = Some(peer.name.clone());
        sa.local_id = Some(local_id);
        sa.remote_id = Some(remote_id.clone());
        if payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(n) if n.notify_type == NotifyType::INITIAL_CONTACT))
        {
            self.initial_contact(now, sa, &remote_id);
        }
        if !self.enforce_unique(now, sa, &peer) {
            self.events.push_back(Event::Failure {
                vpn: Some(peer.name.clone()),
                message: format!("{remote_id} already has an IKE SA (unique = keep)"),
            });
            sa.state = SaState::Deleting;
            return fail(NotifyType::AUTHENTICATION_FAILED);
        }
        (sa.peer_mid_sync, sa.peer_replay_sync) = crate::mid_sync::announced(&payloads);
        self.establish(now, sa, &peer);
        info!(target: "ike", vpn = %peer.name, remote = %sa.remote, id = %remote_id, "IKE SA established (responder)");
        let mut out = vec![
            Payload::IdR(id_payload),
            Payload::Auth { method: AuthMethod::SHARED_KEY_MESSAGE_INTEGRITY_CODE, data: our_auth },
        ];
        out.extend(crate::mid_sync::announcements());
        if payloads.iter().any(|p| matches!(p, Payload::Sa(_))) {
            out.extend(self.respond_child(now, sa, &peer, &payloads, None, None));
        }
        sa.forget_handshake();
        out
    }

    /// INITIAL_CONTACT: the peer lost its state; drop our other IKE SAs with the same identities.
    fn initial_contact(&mut self, _now: Instant, sa: &IkeSa, remote_id: &Identity) {
        let Some(vpn) = &sa.vpn else { return };
        let stale: Vec<u64> =
            self.sas.of_identity(vpn, remote_id).filter(|o| o.id != sa.id).map(|o| o.id).collect();
        for id in stale {
            if let Some(mut old) = self.sas.checkout(&id) {
                info!(target: "ike", vpn = ?old.vpn, "INITIAL_CONTACT: removing stale IKE SA");
                self.drop_sa(&mut old, crate::api::DownReason::PeerDelete);
            }
        }
        self.restarts.retain(|(_, v)| Some(v) != sa.vpn.as_ref());
        if let Some(v) = &sa.vpn {
            self.start_attempts.remove(v);
        }
    }
}

/// True when the peer asked for transport mode.
pub(crate) fn wants_transport(payloads: &[Payload]) -> bool {
    payloads
        .iter()
        .any(|p| matches!(p, Payload::Notify(n) if n.notify_type == NotifyType::USE_TRANSPORT_MODE))
}

pub(crate) fn mode_notify(mode: IpsecMode) -> Option<Payload> {
    (mode == IpsecMode::Transport)
        .then(|| Payload::Notify(Notify::new(NotifyType::USE_TRANSPORT_MODE, vec![])))
}

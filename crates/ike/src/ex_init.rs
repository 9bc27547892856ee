//! IKE_SA_INIT (RFC 7296 section 1.2): proposal selection, INVALID_KE_PAYLOAD retry, stateless
//! COOKIEs (section 2.6) and NAT detection (section 2.23).

use crate::api::IkeSaId;
use crate::endpoint::{Endpoint, EngineError};
use crate::proposal::{self, Selected};
use crate::sa::{IkeSa, Request, SaState};
use aws_lc_rs::digest;
use std::net::SocketAddr;
use std::time::Instant;
use tandem_crypto::{derive_ike_keys, DhGroup, IkeSuite, KeyExchange};
use tandem_wire::{flags, ExchangeType, IkeHeader, Message, Notify, NotifyType, Payload, ProtocolId};
use tracing::{debug, info, warn};

const NONCE_LEN: usize = 32;

/// NAT_DETECTION_*_IP data: SHA1(SPIi | SPIr | IP | port).
pub(crate) fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match addr.ip() {
        std::net::IpAddr::V4(a) => ctx.update(&a.octets()),
        std::net::IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

fn nat_payloads(spi_i: u64, spi_r: u64, local: SocketAddr, remote: SocketAddr) -> [Payload; 2] {
    [
        Payload::Notify(Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, nat_hash(spi_i, spi_r, local))),
        Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat_hash(spi_i, spi_r, remote),
        )),
    ]
}

/// (NAT in front of us, NAT in front of the peer) from the peer's NAT_DETECTION notifies.
fn detect_nat(
    payloads: &[Payload],
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<(bool, bool)> {
    let mut src = Vec::new();
    let mut dst = None;
    for p in payloads {
        if let Payload::Notify(n) = p {
            match n.notify_type {
                NotifyType::NAT_DETECTION_SOURCE_IP => src.push(n.data.clone()),
                NotifyType::NAT_DETECTION_DESTINATION_IP => dst = Some(n.data.clone()),
                _ => {}
            }
        }
    }
    let dst = dst?;
    let nat_local = dst != nat_hash(spi_i, spi_r, local);
    let nat_remote = !src.contains(&nat_hash(spi_i, spi_r, remote));
    Some((nat_local, nat_remote))
}

fn notify_of(payloads: &[Payload], t: NotifyType) -> Option<&Notify> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type == t => Some(n),
        _ => None,
    })
}

pub(crate) fn error_notify(payloads: &[Payload]) -> Option<NotifyType> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
        _ => None,
    })
}

fn suite_of(sel: &Selected) -> Option<IkeSuite> {
    Some(IkeSuite { encr: sel.encr, prf: sel.prf?, integ: sel.integ })
}

impl Endpoint {
    pub(crate) fn initiate_sa_init(&mut self, now: Instant, vpn: &str) -> Result<IkeSaId, EngineError> {
        let peer = self.peer(vpn).ok_or_else(|| EngineError::UnknownVpn(vpn.to_string()))?.clone();
        let remote_ip = peer.remote_addr.ok_or_else(|| EngineError::NoRemoteAddress(vpn.to_string()))?;
        let local_ip =
            peer.local_addr.ok_or_else(|| EngineError::Other(format!("vpn {vpn:?} has no local-address")))?;
        let group = peer
            .ike_proposals
            .first()
            .and_then(|p| p.dh.first().copied())
            .ok_or_else(|| EngineError::Other(format!("vpn {vpn:?} has no IKE proposal")))?;
        let id = self.alloc_ike_spi();
        let local = SocketAddr::new(local_ip, 500);
        let remote = SocketAddr::new(remote_ip, peer.remote_port);
        let mut sa = IkeSa::new(id, true, local, remote, now);
        sa.vpn = Some(vpn.to_string());
        sa.ni = self.rng.vec(NONCE_LEN);
        sa.ke = Some(
            KeyExchange::generate(group, &mut *self.rng).map_err(|e| EngineError::Other(e.to_string()))?,
        );
        info!(target: "ike", vpn, %remote, "initiating IKE SA");
        let bytes = self.build_sa_init_request(&sa, &peer.ike_proposals);
        sa.init_request = bytes.clone();
        sa.rel.send_request(now, vec![bytes.clone()], &self.config.retransmit);
        sa.request = Some(Request::SaInit);
        self.send_datagrams(local, remote, vec![bytes]);
        self.finish(now, sa);
        Ok(id)
    }

    fn build_sa_init_request(&self, sa: &IkeSa, proposals: &[tandem_crypto::Proposal]) -> Vec<u8> {
        let ke = sa.ke.as_ref().expect("initiator SA has a key exchange");
        let mut payloads = Vec::new();
        if let Some(c) = &sa.cookie {
            payloads.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c.clone())));
        }
        payloads.push(Payload::Sa(proposal::to_wire(proposals, ProtocolId::IKE, &[])));
        payloads.push(Payload::Ke { dh_group: ke.group().transform_id(), data: ke.public_value().to_vec() });
        payloads.push(Payload::Nonce(sa.ni.clone()));
        payloads.extend(nat_payloads(sa.spi_i, 0, sa.local, sa.remote));
        payloads.push(Payload::Notify(Notify::new(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, vec![])));
        // RFC 6023: we accept an IKE SA without a CHILD SA in IKE_AUTH.
        payloads.push(Payload::Notify(Notify::new(NotifyType::CHILDLESS_IKEV2_SUPPORTED, vec![])));
        let header = IkeHeader::new(sa.spi_i, 0, ExchangeType::IKE_SA_INIT, flags::INITIATOR, 0);
        Message { header, payloads }.emit()
    }

    /// Initiator: the IKE_SA_INIT response (or a COOKIE / INVALID_KE_PAYLOAD / error notify).
    pub(crate) fn initiator_sa_init_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        msg: Message,
    ) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        let Some(peer) = self.peer(&vpn).cloned() else { return };
        let p = &msg.payloads;
        if let Some(c) = notify_of(p, NotifyType::COOKIE) {
            debug!(target: "ike", vpn, "responder demands a COOKIE; retrying");
            sa.cookie = Some(c.data.clone());
            return self.retry_sa_init(now, sa, &peer.ike_proposals);
        }
        if let Some(n) = notify_of(p, NotifyType::INVALID_KE_PAYLOAD) {
            let group =
                n.data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])).and_then(DhGroup::from_transform);
            match group {
                Some(g)
                    if proposal::accepts_group(&peer.ike_proposals, g)
                        && sa.ke.as_ref().map(|k| k.group()) != Some(g) =>
                {
                    info!(target: "ike", vpn, group = g.name(), "INVALID_KE_PAYLOAD: retrying with the responder's group");
                    match KeyExchange::generate(g, &mut *self.rng) {
                        Ok(k) => sa.ke = Some(k),
                        Err(_) => return self.fail_sa(sa, "key generation failed"),
                    }
                    return self.retry_sa_init(now, sa, &peer.ike_proposals);
                }
                _ => return self.fail_sa(sa, "INVALID_KE_PAYLOAD with a group we did not offer"),
            }
        }
        if let Some(err) = error_notify(p) {
            return self.fail_sa(sa, &format!("peer refused IKE_SA_INIT: {err}"));
        }
        let sa_prop = p.iter().find_map(|x| if let Payload::Sa(v) = x { Some(v) } else { None });
        let ke = p.iter().find_map(|x| {
            if let Payload::Ke { dh_group, data } = x {
                Some((*dh_group, data))
            } else {
                None
            }
        });
        let nonce = p.iter().find_map(|x| if let Payload::Nonce(n) = x { Some(n) } else { None });
        let (Some(sa_prop), Some((group, ke_data)), Some(nr)) = (sa_prop, ke, nonce) else {
            return self.fail_sa(sa, "IKE_SA_INIT response lacks SA, KE or Nonce");
        };
        let Some((_, sel)) = proposal::accept_response(sa_prop, &peer.ike_proposals, ProtocolId::IKE) else {
            return self.fail_sa(sa, "responder chose a proposal we did not offer");
        };
        let Some(our_ke) = sa.ke.take() else { return };
        if Some(our_ke.group()) != sel.dh || group != our_ke.group().transform_id() {
            return self.fail_sa(sa, "KE group does not match the chosen proposal");
        }
        if !(16..=256).contains(&nr.len()) {
            return self.fail_sa(sa, "bad nonce length");
        }
        let shared = match our_ke.compute_shared(ke_data) {
            Ok(s) => s,
            Err(_) => return self.fail_sa(sa, "invalid KE payload"),
        };
        sa.spi_r = msg.header.spi_r;
        sa.nr = nr.clone();
        sa.init_response = raw.to_vec();
        let Some(suite) = suite_of(&sel) else { return };
        match derive_ike_keys(&suite, &shared, &sa.ni, &sa.nr, sa.spi_i, sa.spi_r) {
            Ok(k) => sa.keys = Some(k),
            Err(_) => return self.fail_sa(sa, "key derivation failed"),
        }
        sa.suite = Some(sel);
        sa.frag_supported = notify_of(p, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
        sa.peer_childless = notify_of(p, NotifyType::CHILDLESS_IKEV2_SUPPORTED).is_some();
        if let Some((nl, nr)) = detect_nat(p, sa.spi_i, sa.spi_r, local, remote) {
            sa.nat_local = nl;
            sa.nat_remote = nr;
        }
        if sa.nat_local || sa.nat_remote || peer.force_encap {
            // RFC 7296 section 2.23: move to port 4500 for IKE_AUTH onward.
            sa.local.set_port(4500);
            sa.remote.set_port(4500);
        }
        self.send_auth_request(now, sa, &peer);
    }

    fn retry_sa_init(&mut self, now: Instant, sa: &mut IkeSa, proposals: &[tandem_crypto::Proposal]) {
        let bytes = self.build_sa_init_request(sa, proposals);
        sa.init_request = bytes.clone();
        sa.rel.next_request_id = 0;
        sa.rel.send_request(now, vec![bytes.clone()], &self.config.retransmit);
        sa.request = Some(Request::SaInit);
        self.send_datagrams(sa.local, sa.remote, vec![bytes]);
    }

    pub(crate) fn fail_sa(&mut self, sa: &mut IkeSa, why: &str) {
        warn!(target: "ike", vpn = ?sa.vpn, remote = %sa.remote, "IKE SA failed: {why}");
        self.events.push_back(crate::api::Event::Failure { vpn: sa.vpn.clone(), message: why.to_string() });
        sa.state = SaState::Deleting;
        sa.down_reason = Some(crate::api::DownReason::Failed(why.to_string()));
        sa.rel.outstanding = None;
        sa.queue.clear();
    }

    fn cookie_for(&self, ni: &[u8], remote: SocketAddr, spi_i: u64) -> Vec<u8> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(ni);
        match remote.ip() {
            std::net::IpAddr::V4(a) => ctx.update(&a.octets()),
            std::net::IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&spi_i.to_be_bytes());
        ctx.update(&self.cookie_secret);
        let mut c = vec![1u8];
        c.extend_from_slice(ctx.finish().as_ref());
        c
    }

    fn send_stateless(&mut self, local: SocketAddr, remote: SocketAddr, spi_i: u64, n: Notify) {
        let header = IkeHeader::new(spi_i, 0, ExchangeType::IKE_SA_INIT, flags::RESPONSE, 0);
        let bytes = Message { header, payloads: vec![Payload::Notify(n)] }.emit();
        self.send_datagrams(local, remote, vec![bytes]);
    }

    /// Responder: a new IKE_SA_INIT request.
    pub(crate) fn respond_sa_init(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
        msg: Message,
    ) {
        let p = &msg.payloads;
        let spi_i = msg.header.spi_i;
        if msg.header.message_id != 0 || !msg.header.is_initiator() {
            self.stats.malformed += 1;
            return;
        }
        let nonce = p.iter().find_map(|x| if let Payload::Nonce(n) = x { Some(n.clone()) } else { None });
        let sa_prop = p.iter().find_map(|x| if let Payload::Sa(v) = x { Some(v.clone()) } else { None });
        let ke = p.iter().find_map(|x| {
            if let Payload::Ke { dh_group, data } = x {
                Some((*dh_group, data.clone()))
            } else {
                None
            }
        });
        let (Some(ni), Some(sa_prop), Some((ke_group, ke_data))) = (nonce, sa_prop, ke) else {
            self.stats.malformed += 1;
            return;
        };
        if !(16..=256).contains(&ni.len()) {
            self.stats.malformed += 1;
            return;
        }
        let half_open = self.half_open.len();
        if half_open >= self.config.max_half_open {
            self.stats.half_open_dropped += 1;
            return;
        }
        if half_open >= self.config.cookie_threshold {
            let expected = self.cookie_for(&ni, remote, spi_i);
            let ok = matches!(p.first(), Some(Payload::Notify(n)) if n.notify_type == NotifyType::COOKIE && n.data == expected);
            if !ok {
                self.stats.cookies_sent += 1;
                debug!(target: "ike", %remote, "demanding a COOKIE");
                self.send_stateless(local, remote, spi_i, Notify::new(NotifyType::COOKIE, expected));
                return;
            }
        }
        let candidates: Vec<&crate::config::PeerConfig> = self
            .peers
            .for_remote(remote.ip())
            .into_iter()
            .filter(|c| c.local_addr.is_none_or(|a| a == local.ip() || a.is_unspecified()))
            .collect();
        let ours: Vec<tandem_crypto::Proposal> =
            candidates.iter().flat_map(|c| c.ike_proposals.clone()).collect();
        let names: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
        let Some((number, _, sel)) = proposal::select(&sa_prop, &ours, ProtocolId::IKE) else {
            info!(target: "ike", %remote, "no acceptable IKE proposal");
            self.send_stateless(local, remote, spi_i, Notify::new(NotifyType::NO_PROPOSAL_CHOSEN, vec![]));
            return;
        };
        let Some(group) = sel.dh else { return };
        if ke_group != group.transform_id() {
            debug!(target: "ike", %remote, group = group.name(), "INVALID_KE_PAYLOAD");
            self.send_stateless(
                local,
                remote,
                spi_i,
                Notify::new(NotifyType::INVALID_KE_PAYLOAD, group.transform_id().to_be_bytes().to_vec()),
            );
            return;
        }
        let Ok(our_ke) = KeyExchange::generate(group, &mut *self.rng) else { return };
        let Ok(shared) = our_ke.compute_shared(&ke_data) else {
            self.stats.malformed += 1;
            self.send_stateless(local, remote, spi_i, Notify::new(NotifyType::INVALID_SYNTAX, vec![]));
            return;
        };
        let id = self.alloc_ike_spi();
        let mut sa = IkeSa::new(id, false, local, remote, now);
        sa.spi_i = spi_i;
        sa.candidates = names;
        sa.ni = ni;
        sa.nr = self.rng.vec(NONCE_LEN);
        sa.init_request = raw.to_vec();
        let Some(suite) = suite_of(&sel) else { return };
        match derive_ike_keys(&suite, &shared, &sa.ni, &sa.nr, sa.spi_i, sa.spi_r) {
            Ok(k) => sa.keys = Some(k),
            Err(_) => return,
        }
        sa.suite = Some(sel);
        if let Some((nl, nr)) = detect_nat(p, spi_i, 0, local, remote) {
            sa.nat_local = nl;
            sa.nat_remote = nr;
        }
        sa.frag_supported = notify_of(p, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
        let mut payloads = vec![
            Payload::Sa(vec![proposal::selected_to_wire(&sel, number, ProtocolId::IKE, &[])]),
            Payload::Ke { dh_group: group.transform_id(), data: our_ke.public_value().to_vec() },
            Payload::Nonce(sa.nr.clone()),
            nat_payloads(spi_i, id, local, remote)[0].clone(),
            nat_payloads(spi_i, id, local, remote)[1].clone(),
        ];
        if sa.frag_supported {
            payloads.push(Payload::Notify(Notify::new(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, vec![])));
        }
        // RFC 6023 section 3: a responder that accepts childless IKE SAs says so, so that a strict
        // initiator may omit the CHILD SA from IKE_AUTH.
        payloads.push(Payload::Notify(Notify::new(NotifyType::CHILDLESS_IKEV2_SUPPORTED, vec![])));
        let header = IkeHeader::new(spi_i, id, ExchangeType::IKE_SA_INIT, flags::RESPONSE, 0);
        let bytes = Message { header, payloads }.emit();
        sa.init_response = bytes.clone();
        sa.rel.responded(now, 0, vec![bytes.clone()]);
        self.half_open.insert((spi_i, remote), id);
        sa.half_open_key = Some((spi_i, remote));
        self.send_datagrams(local, remote, vec![bytes]);
        self.finish(now, sa);
    }
}

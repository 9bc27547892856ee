//! CHILD SA negotiation (in IKE_AUTH and CREATE_CHILD_SA, RFC 7296 sections 1.3, 2.9, 2.17) and the
//! IKE SA rekey (section 1.3.2, 2.18).

use crate::api::{ChildSaInstall, DownReason, Event};
use crate::config::{ChildConfig, IpsecMode, PeerConfig};
use crate::endpoint::{jitter, Endpoint};
use crate::ex_auth::{mode_notify, wants_transport};
use crate::ex_init::error_notify;
use crate::proposal::{self, Selected};
use crate::rekey_child::Collision;
use crate::sa::{child_directions, ChildSa, IkeSa, PendingChild, PendingIkeRekey, Queued, Request, SaState};
use std::time::Instant;
use tandem_crypto::{derive_child_keys, derive_rekeyed_ike_keys, IkeSuite, KeyExchange, Proposal};
use tandem_wire::{ExchangeType, Notify, NotifyType, Payload, ProtocolId, TrafficSelector};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 32;

/// How long a superseded IKE SA waits for the Delete its peer owes before we delete it ourselves
/// (charon waits 30 s for a redundant SA's Delete).
pub(crate) const SUPERSEDED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How a negotiated CHILD SA enters the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Install {
    /// Inbound and outbound at once.
    Active,
    /// Inbound at once; outbound once the peer's first packet arrives on it.
    Deferred,
    /// Not at all (a redundant SA deleted at once).
    Not,
}

/// The responder nonce and optional PFS shared secret of a CREATE_CHILD_SA exchange.
pub(crate) type ExchangeNonce = (Vec<u8>, Option<Zeroizing<Vec<u8>>>);

fn find<T>(payloads: &[Payload], f: impl Fn(&Payload) -> Option<T>) -> Option<T> {
    payloads.iter().find_map(f)
}

/// ESP proposals as used in IKE_AUTH, where no key exchange happens (RFC 7296 section 1.2).
fn without_dh(props: &[Proposal]) -> Vec<Proposal> {
    props.iter().map(|p| Proposal { dh: Vec::new(), ..p.clone() }).collect()
}

/// Intersections of the offered selectors with ours (narrowing, RFC 7296 section 2.9).
fn narrow(offered: &[TrafficSelector], ours: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for o in offered {
        for m in ours {
            if let Some(x) = o.intersect(m) {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
        }
    }
    out
}

fn within(returned: &[TrafficSelector], proposed: &[TrafficSelector]) -> bool {
    !returned.is_empty() && returned.iter().all(|r| proposed.iter().any(|p| p.contains(r)))
}

fn spi_u32(spi: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(spi.try_into().ok()?))
}

fn spi_u64(spi: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(spi.try_into().ok()?))
}

impl Endpoint {
    pub(crate) fn alloc_esp_spi(&mut self) -> u32 {
        self.spis.esp_spi(&mut *self.rng, |s| self.sas.spi_in_use(s))
    }

    /// An IKE SPI of ours no SA holds: stored or checked out (the table keeps those filed), or
    /// born of this turn and not committed yet.
    pub(crate) fn alloc_ike_spi(&mut self) -> u64 {
        self.spis.ike_spi(&mut *self.rng, |s| self.sas.contains(&s) || self.spawned.iter().any(|n| n.id == s))
    }

    /// SA, [Nonce, KE,] TSi, TSr and mode notify of a CHILD SA request.
    pub(crate) fn child_request_payloads(
        &self,
        child: &ChildConfig,
        pending: &PendingChild,
        create_child: bool,
    ) -> Vec<Payload> {
        let props = if create_child { child.esp_proposals.clone() } else { without_dh(&child.esp_proposals) };
        let mut v = Vec::new();
        if let Some(old) = pending.rekeys_spi_in {
            v.push(Payload::Notify(Notify {
                protocol: ProtocolId::ESP,
                spi: old.to_be_bytes().to_vec(),
                notify_type: NotifyType::REKEY_SA,
                data: vec![],
            }));
        }
        v.extend(mode_notify(child.mode));
        v.push(Payload::Sa(proposal::to_wire(&props, ProtocolId::ESP, &pending.spi_in.to_be_bytes())));
        if create_child {
            v.push(Payload::Nonce(pending.nonce.clone()));
            if let Some(ke) = &pending.ke {
                v.push(Payload::Ke { dh_group: ke.group().transform_id(), data: ke.public_value().to_vec() });
            }
        }
        v.push(Payload::TsI(pending.local_ts.clone()));
        v.push(Payload::TsR(pending.remote_ts.clone()));
        v
    }

    /// Record a negotiated CHILD SA and tell the dataplane.
    #[allow(clippy::too_many_arguments)]
    fn install_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        child: &ChildConfig,
        sel: Selected,
        mode: IpsecMode,
        spi_in: u32,
        spi_out: u32,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        keys: tandem_crypto::ChildKeys,
        we_initiated: bool,
        replaces: Option<u32>,
        dataplane: Install,
    ) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        Self::child_retry_done(sa, &child.name);
        // A rekey keeps its predecessor's reqid; a new CHILD SA of a vpn serving any remote gets
        // one of its own (see `reqid`).
        let inherited =
            replaces.and_then(|old| sa.children.iter().find(|c| c.spi_in == old)).map(|c| c.reqid);
        let reqid = match inherited {
            Some(r) => r,
            None if self.peer(&vpn).is_some_and(|p| p.reqid_per_sa) => self.reqids.instance(),
            None => self.reqid(&vpn, &child.name),
        };
        let (keys_in, keys_out) = child_directions(keys, we_initiated);
        let lt = child.lifetimes;
        // Drawn before the rekey jitter, as always: seeded runs stay what they were.
        let iv_key = (dataplane != Install::Not).then(|| Zeroizing::new(self.rng.vec(16)));
        let c = ChildSa {
            name: child.name.clone(),
            reqid,
            spi_in,
            spi_out,
            sel,
            mode,
            local_ts,
            remote_ts,
            keys_in,
            keys_out,
            retired: None,
            deleting: false,
            announced: dataplane != Install::Not,
            initiated: we_initiated,
            replaces,
            exchange_nonces: None,
            peer_successor: None,
            created: Some(now),
            rekey_at: lt.rekey_time.map(|r| now + jitter(&mut *self.rng, r, lt.rand_time)),
            expire_at: lt.life_time.map(|l| now + l),
        };
        if let Some(iv_key) = iv_key {
            let install = install_of(sa, &c, child, dataplane == Install::Deferred, iv_key);
            self.events.push_back(Event::ChildSaUp(Box::new(install)));
        }
        info!(target: "ike", vpn, child = %child.name, spi_in = format_args!("{spi_in:#010x}"),
              spi_out = format_args!("{spi_out:#010x}"), "CHILD SA established");
        sa.children.push(c);
    }
}

/// The selectors the dataplane installs (and routes) for CHILD SA `c` of `sa`: (local, remote).
/// Transport mode across a NAT (RFC 7296 section 2.23.1): the selectors name the hosts' own
/// addresses, but packets carry the addresses seen on the wire, so the SA installed protects the
/// outer addresses; the selectors on the wire (and in rekeys) stay as negotiated.
pub(crate) fn dataplane_selectors(sa: &IkeSa, c: &ChildSa) -> (Vec<TrafficSelector>, Vec<TrafficSelector>) {
    if c.mode == IpsecMode::Transport && (sa.nat_local || sa.nat_remote) {
        (host_selectors(&c.local_ts, sa.local.ip()), host_selectors(&c.remote_ts, sa.remote.ip()))
    } else {
        (c.local_ts.clone(), c.remote_ts.clone())
    }
}

/// What the dataplane needs to install CHILD SA `c` of `sa` (configured as `child`): at its
/// negotiation, and again on an HA standby that takes the SA over.
pub(crate) fn install_of(
    sa: &IkeSa,
    c: &ChildSa,
    child: &ChildConfig,
    defer_outbound: bool,
    iv_key: Zeroizing<Vec<u8>>,
) -> ChildSaInstall {
    let (dp_local_ts, dp_remote_ts) = dataplane_selectors(sa, c);
    ChildSaInstall {
        ike_sa: sa.id,
        vpn: sa.vpn.clone().unwrap_or_default(),
        child: c.name.clone(),
        reqid: c.reqid,
        spi_in: c.spi_in,
        spi_out: c.spi_out,
        mode: c.mode,
        encr: c.sel.encr,
        integ: c.sel.integ,
        esn: c.sel.esn,
        keys_in: c.keys_in.clone(),
        keys_out: c.keys_out.clone(),
        local_ts: dp_local_ts,
        remote_ts: dp_remote_ts,
        local: sa.local,
        remote: sa.remote,
        udp_encap: sa.local.port() != 500 || sa.nat_local || sa.nat_remote,
        replay_window: child.replay_window,
        lifetimes: child.lifetimes,
        replaces_spi_in: c.replaces,
        defer_outbound,
        iv_key,
    }
}

impl Endpoint {
    /// Responder side of a CHILD SA (IKE_AUTH when `exchange_ni` is None, else CREATE_CHILD_SA).
    pub(crate) fn respond_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        peer: &PeerConfig,
        req: &[Payload],
        exchange_ni: Option<&[u8]>,
        rekeys: Option<usize>,
    ) -> Vec<Payload> {
        let err = |t: NotifyType| vec![Payload::Notify(Notify::new(t, vec![]))];
        let offered =
            find(req, |p| if let Payload::Sa(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let tsi =
            find(req, |p| if let Payload::TsI(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let tsr =
            find(req, |p| if let Payload::TsR(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let create_child = exchange_ni.is_some();
        let mut any_proposal = false;
        let mut chosen = None;
        for child in &peer.children {
            if let Some(i) = rekeys {
                if sa.children[i].name != child.name {
                    continue;
                }
            }
            let ours =
                if create_child { child.esp_proposals.clone() } else { without_dh(&child.esp_proposals) };
            let Some((_, spi, sel)) = proposal::select(&offered, &ours, ProtocolId::ESP) else { continue };
            any_proposal = true;
            let (n_i, n_r) = (narrow(&tsi, &child.remote_ts), narrow(&tsr, &child.local_ts));
            if n_i.is_empty() || n_r.is_empty() {
                continue;
            }
            chosen = Some((child.clone(), spi, sel, n_i, n_r));
            break;
        }
        let Some((child, spi, sel, remote_ts, local_ts)) = chosen else {
            let t = if any_proposal { NotifyType::TS_UNACCEPTABLE } else { NotifyType::NO_PROPOSAL_CHOSEN };
            info!(target: "ike", vpn = ?sa.vpn, "refusing CHILD SA: {t}");
            return err(t);
        };
        let Some(spi_out) = spi_u32(&spi) else { return err(NotifyType::INVALID_SYNTAX) };
        let mode = if wants_transport(req) && child.mode == IpsecMode::Transport {
            IpsecMode::Transport
        } else {
            IpsecMode::Tunnel
        };
        let mut out = Vec::new();
        let (ni, nr, shared) = match exchange_ni {
            None => (sa.ni.clone(), sa.nr.clone(), None),
            Some(ni) => {
                let nr = self.rng.vec(NONCE_LEN);
                let mut shared = None;
                if let Some(group) = sel.dh {
                    let ke = find(req, |p| {
                        if let Payload::Ke { dh_group, data } = p {
                            Some((*dh_group, data.clone()))
                        } else {
                            None
                        }
                    });
                    match ke {
                        Some((g, data)) if g == group.transform_id() => {
                            let Ok(k) = KeyExchange::generate(group, &mut *self.rng) else {
                                return err(NotifyType::NO_PROPOSAL_CHOSEN);
                            };
                            let Ok(s) = k.compute_shared(&data) else {
                                return err(NotifyType::INVALID_SYNTAX);
                            };
                            shared = Some(s);
                            out.push(Payload::Ke { dh_group: g, data: k.public_value().to_vec() });
                        }
                        _ => {
                            return vec![Payload::Notify(Notify::new(
                                NotifyType::INVALID_KE_PAYLOAD,
                                group.transform_id().to_be_bytes().to_vec(),
                            ))]
                        }
                    }
                }
                (ni.to_vec(), nr, shared)
            }
        };
        let (Some(keys_d), Some(prf)) = (sa.keys.as_ref(), sa.suite.and_then(|s| s.prf)) else {
            return err(NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let Ok(keys) = derive_child_keys(
            prf,
            &keys_d.sk_d,
            shared.as_ref().map(|s| s.as_slice()),
            &ni,
            &nr,
            sel.encr,
            sel.integ,
        ) else {
            return err(NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let spi_in = self.alloc_esp_spi();
        let replaces = rekeys.map(|i| {
            let old = &mut sa.children[i];
            old.peer_successor = Some(spi_in);
            old.spi_in
        });
        // Without a rekey of our own in flight the peer's is final: the old SA is replaced. With
        // one, our response settles it (`rekey_child`).
        if let Some(i) = rekeys.filter(|_| !sa.child_rekey_in_flight(replaces)) {
            sa.children[i].retired = Some(crate::sa::Retired::Replaced(spi_in));
        }
        self.install_child(
            now,
            sa,
            &child,
            sel,
            mode,
            spi_in,
            spi_out,
            local_ts.clone(),
            remote_ts.clone(),
            keys,
            false,
            replaces,
            // The peer installs this SA when our response arrives: keep sending on the old one
            // until its first packet on the new one (or the old one's end), as charon does.
            if replaces.is_some() { Install::Deferred } else { Install::Active },
        );
        if let (Some(c), true) = (sa.children.last_mut(), exchange_ni.is_some()) {
            c.exchange_nonces = Some((ni.clone(), nr.clone()));
        }
        let mut resp = Vec::new();
        resp.extend(mode_notify(mode));
        resp.push(Payload::Sa(vec![proposal::selected_to_wire(
            &sel,
            1,
            ProtocolId::ESP,
            &spi_in.to_be_bytes(),
        )]));
        if exchange_ni.is_some() {
            resp.push(Payload::Nonce(nr));
        }
        resp.extend(out);
        resp.push(Payload::TsI(remote_ts));
        resp.push(Payload::TsR(local_ts));
        resp
    }

    /// Initiator side: interpret the CHILD SA part of a response.
    pub(crate) fn complete_child_as_initiator(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        resp: &[Payload],
        pending: PendingChild,
        exchange: Option<ExchangeNonce>,
    ) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        let Some(child) =
            self.peer(&vpn).and_then(|p| p.children.iter().find(|c| c.name == pending.name)).cloned()
        else {
            return;
        };
        if let Some(e) = error_notify(resp) {
            if let Some(old) = pending.rekeys_spi_in {
                return self.child_rekey_refused(now, sa, old, e);
            }
            let retry = child.start_action == crate::config::StartAction::Start;
            if retry {
                self.schedule_child_retry(now, sa, &child.name, &e.to_string());
            } else {
                warn!(target: "ike", vpn, child = %child.name, "CHILD SA refused by peer: {e}");
            }
            self.events.push_back(Event::Failure {
                vpn: Some(vpn),
                message: format!(
                    "CHILD SA {} refused: {e}{}",
                    child.name,
                    if retry { " (retrying)" } else { "" }
                ),
            });
            return;
        }
        let create_child = exchange.is_some();
        let ours = if create_child { child.esp_proposals.clone() } else { without_dh(&child.esp_proposals) };
        let returned =
            find(resp, |p| if let Payload::Sa(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let tsi =
            find(resp, |p| if let Payload::TsI(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let tsr =
            find(resp, |p| if let Payload::TsR(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let Some((spi, sel)) = proposal::accept_response(&returned, &ours, ProtocolId::ESP) else {
            warn!(target: "ike", vpn, "CHILD SA response has no acceptable proposal");
            return;
        };
        let Some(spi_out) = spi_u32(&spi) else { return };
        if !within(&tsi, &pending.local_ts) || !within(&tsr, &pending.remote_ts) {
            warn!(target: "ike", vpn, "peer returned traffic selectors we did not propose");
            return;
        }
        let mode = if child.mode == IpsecMode::Transport && wants_transport(resp) {
            IpsecMode::Transport
        } else {
            IpsecMode::Tunnel
        };
        let (ni, nr, shared) = match exchange {
            None => (sa.ni.clone(), sa.nr.clone(), None),
            Some((nr, shared)) => (pending.nonce.clone(), nr, shared),
        };
        if sel.dh.is_some() && shared.is_none() && create_child {
            warn!(target: "ike", vpn, "PFS group chosen but no KE answered");
            return;
        }
        let (Some(k), Some(prf)) = (sa.keys.as_ref(), sa.suite.and_then(|s| s.prf)) else { return };
        let Ok(keys) = derive_child_keys(
            prf,
            &k.sk_d,
            shared.as_ref().map(|s| s.as_slice()),
            &ni,
            &nr,
            sel.encr,
            sel.integ,
        ) else {
            return;
        };
        let replaces = pending.rekeys_spi_in;
        // A simultaneous rekey is settled before anything is installed, so that the loser never
        // sends on its redundant SA (charon commit 15e745cf4d).
        let outcome = replaces.map(|old| Self::settle_child_rekey(sa, old, pending.spi_in, &ni, &nr));
        let lost = matches!(outcome, Some(Collision::Lost { .. }));
        self.install_child(
            now,
            sa,
            &child,
            sel,
            mode,
            pending.spi_in,
            spi_out,
            tsi,
            tsr,
            keys,
            true,
            replaces,
            // The loser of a simultaneous rekey never installs its redundant SA: the winner
            // never sends on it, and an outbound SA the peer deletes at once only loses packets.
            if lost { Install::Not } else { Install::Active },
        );
        if let Some(c) = sa.children.last_mut() {
            c.exchange_nonces = Some((ni, nr));
        }
        if let (Some(old), Some(outcome)) = (replaces, outcome) {
            self.conclude_child_rekey(sa, old, pending.spi_in, outcome);
        }
    }

    /// Start a CREATE_CHILD_SA exchange for a new CHILD SA or a rekey of `rekeys_spi_in`.
    pub(crate) fn start_create_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        name: &str,
        rekeys_spi_in: Option<u32>,
    ) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        let Some(child) = self.peer(&vpn).and_then(|p| p.children.iter().find(|c| c.name == name)).cloned()
        else {
            return;
        };
        let old = rekeys_spi_in.and_then(|s| sa.children.iter().find(|c| c.spi_in == s));
        if rekeys_spi_in.is_some() && old.is_none_or(|c| !c.live() || c.peer_successor.is_some()) {
            return; // already rekeyed or gone (e.g. the peer rekeyed it first)
        }
        // Not while the rekey that made it is unfinished (its predecessor is still here): the
        // peer may not know it yet. The rekey is put off, not dropped.
        if let (Some(spi), Some(pred)) = (rekeys_spi_in, old.and_then(|c| c.replaces)) {
            if sa.children.iter().any(|c| c.spi_in == pred) {
                if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == spi) {
                    c.rekey_at = Some(now + std::time::Duration::from_secs(1));
                }
                return;
            }
        }
        let (local_ts, remote_ts) = match old {
            Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
            None => (child.local_ts.clone(), child.remote_ts.clone()),
        };
        let group = child.esp_proposals.first().and_then(|p| p.dh.first().copied());
        let ke = match group.map(|g| KeyExchange::generate(g, &mut *self.rng)) {
            Some(Ok(k)) => Some(k),
            Some(Err(_)) => return,
            None => None,
        };
        let pending = PendingChild {
            name: name.to_string(),
            spi_in: self.alloc_esp_spi(),
            local_ts,
            remote_ts,
            rekeys_spi_in,
            nonce: self.rng.vec(NONCE_LEN),
            ke,
        };
        debug!(target: "ike", vpn, child = name, rekey = rekeys_spi_in.is_some(), "CREATE_CHILD_SA");
        let payloads = self.child_request_payloads(&child, &pending, true);
        self.send_request(now, sa, ExchangeType::CREATE_CHILD_SA, payloads, Request::CreateChild(pending));
    }

    pub(crate) fn initiator_child_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        resp: Vec<Payload>,
        pending: PendingChild,
    ) {
        let nr = find(&resp, |p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None });
        let ke = find(&resp, |p| if let Payload::Ke { data, .. } = p { Some(data.clone()) } else { None });
        if let Some(n) = find(&resp, |p| match p {
            Payload::Notify(n) if n.notify_type == NotifyType::INVALID_KE_PAYLOAD => Some(n.clone()),
            _ => None,
        }) {
            debug!(target: "ike", "CREATE_CHILD_SA: INVALID_KE_PAYLOAD {:?}", n.data);
        }
        let shared = match (&pending.ke, ke) {
            (Some(k), Some(data)) => match k.compute_shared(&data) {
                Ok(s) => Some(s),
                Err(_) => return,
            },
            _ => None,
        };
        match nr {
            Some(nr) => self.complete_child_as_initiator(now, sa, &resp, pending, Some((nr, shared))),
            None => self.complete_child_as_initiator(now, sa, &resp, pending, Some((Vec::new(), None))),
        }
    }

    /// Responder: a CREATE_CHILD_SA request (new CHILD SA, CHILD SA rekey or IKE SA rekey).
    pub(crate) fn responder_create_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        req: Vec<Payload>,
    ) -> Vec<Payload> {
        let err = |t: NotifyType| vec![Payload::Notify(Notify::new(t, vec![]))];
        let Some(peer) = sa.vpn.as_ref().and_then(|v| self.peer(v)).cloned() else {
            return err(NotifyType::NO_ADDITIONAL_SAS);
        };
        let Some(ni) = find(&req, |p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None }) else {
            return err(NotifyType::INVALID_SYNTAX);
        };
        let offered =
            find(&req, |p| if let Payload::Sa(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        if offered.iter().any(|p| p.protocol == ProtocolId::IKE) {
            return self.responder_rekey_ike(now, sa, &peer, &req, &ni);
        }
        let rekey = find(&req, |p| match p {
            Payload::Notify(n) if n.notify_type == NotifyType::REKEY_SA => Some(n.spi.clone()),
            _ => None,
        });
        if sa.ike_exchange_in_flight() {
            // Row I5: no CHILD SA changes while we rekey or delete the IKE SA.
            return err(NotifyType::TEMPORARY_FAILURE);
        }
        let rekeys = match rekey {
            None => None,
            Some(spi) => match spi_u32(&spi).and_then(|s| sa.children.iter().position(|c| c.spi_out == s)) {
                Some(i) => {
                    if let Err(t) = Self::may_peer_rekey(sa, i) {
                        return vec![Payload::Notify(Notify {
                            protocol: ProtocolId::ESP,
                            spi,
                            notify_type: t,
                            data: vec![],
                        })];
                    }
                    Some(i)
                }
                None => {
                    return vec![Payload::Notify(Notify {
                        protocol: ProtocolId::ESP,
                        spi,
                        notify_type: NotifyType::CHILD_SA_NOT_FOUND,
                        data: vec![],
                    })]
                }
            },
        };
        self.respond_child(now, sa, &peer, &req, Some(&ni), rekeys)
    }

    fn responder_rekey_ike(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        peer: &PeerConfig,
        req: &[Payload],
        ni: &[u8],
    ) -> Vec<Payload> {
        let err = |t: NotifyType| vec![Payload::Notify(Notify::new(t, vec![]))];
        if sa.child_exchange_in_flight() || sa.state != SaState::Established || sa.superseded {
            // Row I4: not while a CHILD SA create or rekey of ours is in flight (the peer may
            // have made the CHILD SA, and its response would land on the old IKE SA) or the IKE
            // SA is going away. A Delete in flight does not block: it is sent again on the new
            // IKE SA (`take_child_work`), and a Delete is idempotent. Blocking on it let a Delete
            // whose responses a lossy link kept losing refuse every IKE rekey until the IKE SA
            // expired (seed 48069).
            return err(NotifyType::TEMPORARY_FAILURE);
        }
        let offered =
            find(req, |p| if let Payload::Sa(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let Some((number, spi, sel)) = proposal::select(&offered, &peer.ike_proposals, ProtocolId::IKE)
        else {
            return err(NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let (Some(group), Some(peer_spi)) = (sel.dh, spi_u64(&spi)) else {
            return err(NotifyType::INVALID_SYNTAX);
        };
        let ke = find(req, |p| {
            if let Payload::Ke { dh_group, data } = p {
                Some((*dh_group, data.clone()))
            } else {
                None
            }
        });
        let Some((_, data)) = ke.filter(|(g, _)| *g == group.transform_id()) else {
            return vec![Payload::Notify(Notify::new(
                NotifyType::INVALID_KE_PAYLOAD,
                group.transform_id().to_be_bytes().to_vec(),
            ))];
        };
        let Ok(k) = KeyExchange::generate(group, &mut *self.rng) else {
            return err(NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let Ok(shared) = k.compute_shared(&data) else { return err(NotifyType::INVALID_SYNTAX) };
        let nr = self.rng.vec(NONCE_LEN);
        let new_id = self.alloc_ike_spi();
        let Some(new) = self.rekeyed_sa(now, sa, peer, sel, false, peer_spi, new_id, ni, &nr, &shared) else {
            return err(NotifyType::NO_PROPOSAL_CHOSEN);
        };
        info!(target: "ike", vpn = %peer.name, old = format_args!("{:#018x}", sa.id), new = format_args!("{new_id:#018x}"), "IKE SA rekeyed (responder)");
        sa.rekeyed_by_peer = Some((new.id, ni.to_vec(), nr.clone()));
        let mut new = new;
        new.replaces_ike = Some(sa.id);
        // Row I2: the peer deletes the old SA; if its Delete never comes, we do.
        sa.retire_at = Some(now + SUPERSEDED_WAIT);
        self.spawned.push(new);
        vec![
            Payload::Sa(vec![proposal::selected_to_wire(
                &sel,
                number,
                ProtocolId::IKE,
                &new_id.to_be_bytes(),
            )]),
            Payload::Nonce(nr),
            Payload::Ke { dh_group: group.transform_id(), data: k.public_value().to_vec() },
        ]
    }

    /// Build the IKE SA that replaces `old` after a rekey; moves the CHILD SAs over.
    #[allow(clippy::too_many_arguments)]
    fn rekeyed_sa(
        &mut self,
        now: Instant,
        old: &mut IkeSa,
        peer: &PeerConfig,
        sel: Selected,
        we_initiated: bool,
        peer_spi: u64,
        our_spi: u64,
        ni: &[u8],
        nr: &[u8],
        shared: &[u8],
    ) -> Option<Box<IkeSa>> {
        let old_prf = old.suite?.prf?;
        let old_keys = old.keys.as_ref()?;
        let suite = IkeSuite { encr: sel.encr, prf: sel.prf?, integ: sel.integ };
        let (spi_i, spi_r) = if we_initiated { (our_spi, peer_spi) } else { (peer_spi, our_spi) };
        let keys =
            derive_rekeyed_ike_keys(old_prf, &old_keys.sk_d, &suite, shared, ni, nr, spi_i, spi_r).ok()?;
        let mut new = IkeSa::new(our_spi, we_initiated, old.local, old.remote, now);
        new.spi_i = spi_i;
        new.spi_r = spi_r;
        new.vpn = old.vpn.clone();
        new.nat_local = old.nat_local;
        new.nat_remote = old.nat_remote;
        // What the peer announced about the IKE SA holds for its successors (strongSwan keeps its
        // extensions across a rekey): fragmentation (RFC 7383) and Message ID sync (RFC 6311).
        new.frag_supported = old.frag_supported;
        new.peer_mid_sync = old.peer_mid_sync;
        new.peer_replay_sync = old.peer_replay_sync;
        new.suite = Some(sel);
        new.keys = Some(keys);
        new.ni = ni.to_vec();
        new.nr = nr.to_vec();
        new.local_id = old.local_id.clone();
        new.remote_id = old.remote_id.clone();
        new.children = std::mem::take(&mut old.children);
        // CHILD SA work queued on the old SA follows its CHILD SAs (a rekey whose timer fired
        // while the IKE rekey was in flight would otherwise be lost with the old SA).
        new.queue = Self::take_child_work(old);
        Self::resend_moved_deletes(&mut new);
        // No IKE_AUTH follows a rekey: SK_pi and SK_pr are never used.
        new.forget_handshake();
        new.state = SaState::Established;
        new.established = Some(now);
        let lt = &peer.ike_lifetimes;
        new.rekey_at = lt.rekey_time.map(|r| now + jitter(&mut *self.rng, r, lt.rand_time));
        new.expire_at = lt.life_time.map(|l| now + l);
        new.dpd_at = peer.dpd_delay.map(|d| now + d);
        old.superseded = true;
        old.rekey_at = None;
        old.expire_at = None;
        old.dpd_at = None;
        Some(new)
    }

    pub(crate) fn start_rekey_ike(&mut self, now: Instant, sa: &mut IkeSa) {
        sa.ike_rekey_waits = false;
        let Some(peer) = sa.vpn.as_ref().and_then(|v| self.peer(v)).cloned() else { return };
        if sa.superseded {
            return;
        }
        let group = sa
            .suite
            .and_then(|s| s.dh)
            .or_else(|| peer.ike_proposals.first().and_then(|p| p.dh.first().copied()));
        let Some(Ok(ke)) = group.map(|g| KeyExchange::generate(g, &mut *self.rng)) else { return };
        let new_spi = self.alloc_ike_spi();
        let nonce = self.rng.vec(NONCE_LEN);
        let payloads = vec![
            Payload::Sa(proposal::to_wire(&peer.ike_proposals, ProtocolId::IKE, &new_spi.to_be_bytes())),
            Payload::Nonce(nonce.clone()),
            Payload::Ke { dh_group: ke.group().transform_id(), data: ke.public_value().to_vec() },
        ];
        debug!(target: "ike", vpn = %peer.name, "rekeying IKE SA");
        self.send_request(
            now,
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::RekeyIke(PendingIkeRekey { new_spi, nonce, ke: Some(ke) }),
        );
    }

    pub(crate) fn initiator_rekey_ike_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        resp: Vec<Payload>,
        pending: PendingIkeRekey,
    ) {
        let Some(peer) = sa.vpn.as_ref().and_then(|v| self.peer(v)).cloned() else { return };
        if let Some(e) = error_notify(&resp) {
            // Row T1: never retry at once; a persistent refusal ends with the hard lifetime.
            let wait = crate::rekey_child::retry_delay(&mut *self.rng, now, sa.expire_at);
            warn!(target: "ike", vpn = %peer.name, ?wait, "IKE SA rekey refused: {e}; retrying");
            sa.rekey_at = Some(now + wait);
            sa.ike_rekey_waits = e == NotifyType::TEMPORARY_FAILURE;
            return;
        }
        let returned =
            find(&resp, |p| if let Payload::Sa(v) = p { Some(v.clone()) } else { None }).unwrap_or_default();
        let nr = find(&resp, |p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None });
        let ke = find(&resp, |p| if let Payload::Ke { data, .. } = p { Some(data.clone()) } else { None });
        let (Some((spi, sel)), Some(nr), Some(ke_data), Some(our_ke)) =
            (proposal::accept_response(&returned, &peer.ike_proposals, ProtocolId::IKE), nr, ke, pending.ke)
        else {
            warn!(target: "ike", vpn = %peer.name, "bad IKE SA rekey response");
            return;
        };
        let (Some(peer_spi), Ok(shared)) = (spi_u64(&spi), our_ke.compute_shared(&ke_data)) else { return };
        let Some(new) = self.rekeyed_sa(
            now,
            sa,
            &peer,
            sel,
            true,
            peer_spi,
            pending.new_spi,
            &pending.nonce,
            &nr,
            &shared,
        ) else {
            return;
        };
        let mut new = new;
        // Simultaneous rekey (RFC 7296 section 2.8.1): the peer rekeyed this IKE SA while our request
        // was in flight, and the CHILD SAs already moved to its new IKE SA. The new SA made by the
        // exchange with the lowest nonce is redundant; its initiator deletes it, the other side
        // deletes the old SA.
        if let Some((theirs_id, tni, tnr)) = sa.rekeyed_by_peer.clone() {
            let ours_lowest =
                pending.nonce.as_slice().min(nr.as_slice()) < tni.as_slice().min(tnr.as_slice());
            if ours_lowest {
                info!(target: "ike", vpn = %peer.name, "simultaneous IKE SA rekey: ours is redundant, deleting it");
                new.superseded = true;
                self.start_delete_ike(now, &mut new);
                self.finish(now, new);
                // The winner deletes the old SA; if it never does, we do.
                sa.retire_at = Some(now + SUPERSEDED_WAIT);
                return;
            }
            info!(target: "ike", vpn = %peer.name, "simultaneous IKE SA rekey: ours wins");
            if let Some(mut theirs) = self.sas.checkout(&theirs_id) {
                new.children = std::mem::take(&mut theirs.children);
                // CHILD SA work that followed the CHILD SAs to the peer's new SA follows them on to
                // ours, the in-flight request included: the peer drops the redundant SA and never
                // answers it, and a rekey left waiting there would let the CHILD SA reach its hard
                // lifetime unrekeyed (seed 2427).
                new.queue.extend(Self::take_child_work(&mut theirs));
                Self::resend_moved_deletes(&mut new);
                theirs.superseded = true;
                // Its creator deletes it; if that Delete never comes, we do (row I1).
                theirs.retire_at = Some(now + SUPERSEDED_WAIT);
                self.spawned.push(theirs);
            }
        }
        info!(target: "ike", vpn = %peer.name, old = format_args!("{:#018x}", sa.id), new = format_args!("{:#018x}", new.id), "IKE SA rekeyed (initiator)");
        self.spawned.push(new);
        sa.queue.clear();
        sa.queue.push(Queued::DeleteIke);
    }

    /// The CHILD SA work of `sa` as queued requests: its queue's, and its in-flight CHILD SA
    /// request, which stays on the wire as `Request::Abandoned`.
    fn take_child_work(sa: &mut IkeSa) -> Vec<Queued> {
        let mut work = Vec::new();
        match sa.request.take() {
            Some(Request::CreateChild(p)) => {
                work.push(Queued::CreateChild { name: p.name, rekeys_spi_in: p.rekeys_spi_in });
                sa.request = Some(Request::Abandoned);
            }
            Some(Request::DeleteChild(spis)) => {
                work.push(Queued::DeleteChild(spis));
                sa.request = Some(Request::Abandoned);
            }
            other => sa.request = other,
        }
        let (child_work, rest): (Vec<Queued>, Vec<Queued>) =
            std::mem::take(&mut sa.queue).into_iter().partition(Queued::is_child_work);
        sa.queue = rest;
        work.extend(child_work);
        work
    }

    /// CHILD SAs whose Delete was in flight on the IKE SA they left are no longer being deleted
    /// there: clear the mark, so that the Delete queued on their new IKE SA goes out again.
    fn resend_moved_deletes(sa: &mut IkeSa) {
        let spis: Vec<u32> = sa
            .queue
            .iter()
            .filter_map(|q| if let Queued::DeleteChild(s) = q { Some(s.clone()) } else { None })
            .flatten()
            .collect();
        for c in sa.children.iter_mut().filter(|c| spis.contains(&c.spi_in)) {
            c.deleting = false;
        }
    }

    pub(crate) fn remove_child(&mut self, sa: &mut IkeSa, spi_in: u32, reason: DownReason) {
        if let Some(i) = sa.children.iter().position(|c| c.spi_in == spi_in) {
            let c = sa.children.remove(i);
            let reason =
                if c.retired.is_some() || c.peer_successor.is_some() { DownReason::Rekeyed } else { reason };
            if reason != DownReason::Rekeyed {
                self.release_reqid_if_unused(sa, c.reqid);
            }
            info!(target: "ike", vpn = ?sa.vpn, child = %c.name, spi_in = format_args!("{:#010x}", c.spi_in), ?reason, "CHILD SA down");
            if !c.announced {
                return;
            }
            self.events.push_back(Event::ChildSaDown {
                ike_sa: sa.id,
                vpn: sa.vpn.clone().unwrap_or_default(),
                child: c.name,
                reqid: c.reqid,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                reason,
            });
        }
    }
}

/// `ts` with every address range replaced by the single address `host` (protocol and ports kept),
/// without duplicates.
fn host_selectors(ts: &[TrafficSelector], host: std::net::IpAddr) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for t in ts.iter().filter(|t| t.is_ipv4() == host.is_ipv4()) {
        let h = TrafficSelector { start_addr: host, end_addr: host, ..*t };
        if !out.contains(&h) {
            out.push(h);
        }
    }
    if out.is_empty() {
        out.push(TrafficSelector::from_range(host, host));
    }
    out
}

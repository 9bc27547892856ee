//! Proposals: configured `tandem_crypto::Proposal`s to SA payload proposals and back, and selection
//! of one proposal from a peer's offer (RFC 7296 section 2.7 and 3.3).

use serde::{Deserialize, Serialize};
use tandem_crypto::alg::transform_type as tt;
use tandem_crypto::{DhGroup, EncrAlg, Esn, IntegAlg, PrfAlg, Proposal};
use tandem_wire::{ProtocolId, Transform};

/// The single set of algorithms chosen for an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selected {
    pub encr: EncrAlg,
    pub prf: Option<PrfAlg>,
    pub integ: Option<IntegAlg>,
    pub dh: Option<DhGroup>,
    pub esn: Esn,
}

/// Build SA payload proposals (numbered from 1) for our configured proposals.
pub fn to_wire(props: &[Proposal], protocol: ProtocolId, spi: &[u8]) -> Vec<tandem_wire::Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t = Vec::new();
            t.extend(p.encr.iter().map(|e| Transform::new(tt::ENCR, e.transform_id(), e.key_length_attr())));
            t.extend(p.prf.iter().map(|f| Transform::new(tt::PRF, f.transform_id(), None)));
            t.extend(p.integ.iter().map(|a| Transform::new(tt::INTEG, a.transform_id(), None)));
            t.extend(p.dh.iter().map(|d| Transform::new(tt::KE, d.transform_id(), None)));
            if protocol == ProtocolId::ESP {
                let esn = if p.esn.is_empty() { vec![Esn::No] } else { p.esn.clone() };
                t.extend(esn.iter().map(|e| Transform::new(tt::ESN, e.transform_id(), None)));
            }
            tandem_wire::Proposal { number: (i + 1) as u8, protocol, spi: spi.to_vec(), transforms: t }
        })
        .collect()
}

/// The one-proposal SA payload a responder returns.
pub fn selected_to_wire(
    sel: &Selected,
    number: u8,
    protocol: ProtocolId,
    spi: &[u8],
) -> tandem_wire::Proposal {
    let p = Proposal {
        encr: vec![sel.encr],
        prf: sel.prf.into_iter().collect(),
        integ: sel.integ.into_iter().collect(),
        dh: sel.dh.into_iter().collect(),
        esn: vec![sel.esn],
    };
    let mut w = to_wire(&[p], protocol, spi).remove(0);
    w.number = number;
    w
}

fn pick<T: Copy + PartialEq>(
    offered: &[Transform],
    ty: u8,
    ours: &[T],
    conv: impl Fn(&Transform) -> Option<T>,
) -> Pick<T> {
    let of_type: Vec<&Transform> = offered.iter().filter(|t| t.transform_type == ty).collect();
    if of_type.is_empty() {
        return Pick::Absent;
    }
    // Our preference order wins among what the peer offered in this proposal.
    for o in ours {
        if of_type.iter().any(|t| conv(t) == Some(*o)) {
            return Pick::Chosen(*o);
        }
    }
    Pick::NoMatch
}

enum Pick<T> {
    Absent,
    Chosen(T),
    NoMatch,
}

/// Match one offered proposal against one of ours.
fn match_one(offer: &tandem_wire::Proposal, ours: &Proposal, protocol: ProtocolId) -> Option<Selected> {
    let ts = &offer.transforms;
    let encr =
        match pick(ts, tt::ENCR, &ours.encr, |t| EncrAlg::from_transform(t.transform_id, t.key_length())) {
            Pick::Chosen(e) => e,
            _ => return None,
        };
    let prf = match pick(ts, tt::PRF, &ours.prf, |t| PrfAlg::from_transform(t.transform_id)) {
        Pick::Chosen(p) => Some(p),
        Pick::Absent if protocol != ProtocolId::IKE => None,
        _ => return None,
    };
    let integ = match pick(ts, tt::INTEG, &ours.integ, |t| IntegAlg::from_transform(t.transform_id)) {
        Pick::Chosen(i) if !encr.is_aead() => Some(i),
        Pick::Absent if encr.is_aead() => None,
        // An AEAD offer may list integrity NONE (id 0).
        Pick::NoMatch
            if encr.is_aead() && ts.iter().all(|t| t.transform_type != tt::INTEG || t.transform_id == 0) =>
        {
            None
        }
        _ => return None,
    };
    let offers_real_dh = ts.iter().any(|t| t.transform_type == tt::KE && t.transform_id != 0);
    let dh = if ours.dh.is_empty() {
        // No PFS configured: accept an offer that has no group or lists NONE.
        if offers_real_dh && !ts.iter().any(|t| t.transform_type == tt::KE && t.transform_id == 0) {
            return None;
        }
        None
    } else {
        match pick(ts, tt::KE, &ours.dh, |t| DhGroup::from_transform(t.transform_id)) {
            Pick::Chosen(d) => Some(d),
            _ => return None,
        }
    };
    if protocol == ProtocolId::IKE && dh.is_none() {
        return None;
    }
    let our_esn = if ours.esn.is_empty() { vec![Esn::No] } else { ours.esn.clone() };
    let esn = match pick(ts, tt::ESN, &our_esn, |t| Esn::from_transform(t.transform_id)) {
        Pick::Chosen(e) => e,
        Pick::Absent if protocol == ProtocolId::IKE || our_esn.contains(&Esn::No) => Esn::No,
        _ => return None,
    };
    Some(Selected { encr, prf, integ, dh, esn })
}

/// Choose the first offered proposal (the peer's order) that one of ours accepts.
/// Returns the offered proposal's number and SPI with the selection.
pub fn select(
    offered: &[tandem_wire::Proposal],
    ours: &[Proposal],
    protocol: ProtocolId,
) -> Option<(u8, Vec<u8>, Selected)> {
    for offer in offered.iter().filter(|o| o.protocol == protocol) {
        for mine in ours {
            if let Some(sel) = match_one(offer, mine, protocol) {
                return Some((offer.number, offer.spi.clone(), sel));
            }
        }
    }
    None
}

/// Interpret the single proposal a responder returned and check that we offered it.
pub fn accept_response(
    returned: &[tandem_wire::Proposal],
    ours: &[Proposal],
    protocol: ProtocolId,
) -> Option<(Vec<u8>, Selected)> {
    if returned.len() != 1 {
        return None;
    }
    let (_, spi, sel) = select(returned, ours, protocol)?;
    // The returned proposal must hold exactly one transform per type.
    let types: Vec<u8> = returned[0].transforms.iter().map(|t| t.transform_type).collect();
    let mut dedup = types.clone();
    dedup.sort_unstable();
    dedup.dedup();
    (dedup.len() == types.len()).then_some((spi, sel))
}

/// All groups we would accept in IKE proposals, for choosing a retry group on INVALID_KE_PAYLOAD.
pub fn accepts_group(ours: &[Proposal], group: DhGroup) -> bool {
    ours.iter().any(|p| p.dh.contains(&group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_crypto::{parse_esp_proposal, parse_ike_proposal};

    #[test]
    fn selects_matching_ike_proposal_and_round_trips() {
        let ours = vec![parse_ike_proposal("aes128-sha256-modp2048").unwrap()];
        let offer = to_wire(
            &[
                parse_ike_proposal("aes256gcm16-prfsha256-x25519").unwrap(),
                parse_ike_proposal("aes128-sha256-modp2048").unwrap(),
            ],
            ProtocolId::IKE,
            &[],
        );
        let (num, _, sel) = select(&offer, &ours, ProtocolId::IKE).unwrap();
        assert_eq!(num, 2);
        assert_eq!(sel.dh, Some(DhGroup::Modp2048));
        let back = selected_to_wire(&sel, num, ProtocolId::IKE, &[]);
        assert_eq!(accept_response(&[back], &ours, ProtocolId::IKE).unwrap().1, sel);
    }

    #[test]
    fn esp_pfs_and_esn_rules() {
        let no_pfs = vec![parse_esp_proposal("aes256gcm16").unwrap()];
        let with_pfs =
            to_wire(&[parse_esp_proposal("aes256gcm16-x25519").unwrap()], ProtocolId::ESP, &[1, 2, 3, 4]);
        assert!(select(&with_pfs, &no_pfs, ProtocolId::ESP).is_none());
        let plain = to_wire(&no_pfs, ProtocolId::ESP, &[1, 2, 3, 4]);
        let (_, spi, sel) = select(&plain, &no_pfs, ProtocolId::ESP).unwrap();
        assert_eq!((spi, sel.esn, sel.dh), (vec![1, 2, 3, 4], Esn::No, None));
        let esn_only = to_wire(&[parse_esp_proposal("aes256gcm16-esn").unwrap()], ProtocolId::ESP, &[0; 4]);
        assert!(select(&esn_only, &no_pfs, ProtocolId::ESP).is_none());
    }
}

//! Proposal strings in strongSwan syntax, e.g. `aes256gcm16-prfsha256-x25519` (IKE) or
//! `aes128-sha256-modp2048-esn` (ESP), so operators can copy proposals between tandem and strongSwan.

use crate::alg::{DhGroup, EncrAlg, Esn, IntegAlg, PrfAlg, Proposal};
use std::fmt;

/// A proposal string that cannot be used, with the offending keyword.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("unknown algorithm keyword {0:?}")]
    UnknownKeyword(String),
    #[error("proposal {0:?} has no encryption algorithm")]
    NoEncryption(String),
    #[error("proposal {0:?} has no PRF (an AEAD IKE proposal needs a prfXXX keyword)")]
    NoPrf(String),
    #[error("proposal {0:?} has no key exchange method")]
    NoKeyExchange(String),
    #[error("proposal {0:?} needs an integrity algorithm for its non-AEAD cipher")]
    NoIntegrity(String),
    #[error("proposal {0:?} mixes AEAD and non-AEAD ciphers, or AEAD with an integrity algorithm")]
    AeadMix(String),
    #[error("{0:?} is not valid in an ESP proposal")]
    NotForEsp(String),
}

enum Kw {
    Encr(EncrAlg),
    Integ(IntegAlg),
    Prf(PrfAlg),
    Dh(DhGroup),
    Esn(Esn),
}

fn keyword(k: &str) -> Option<Kw> {
    Some(match k {
        "aes128" | "aes128cbc" => Kw::Encr(EncrAlg::AesCbc128),
        "aes192" | "aes192cbc" => Kw::Encr(EncrAlg::AesCbc192),
        "aes256" | "aes256cbc" | "aes" => Kw::Encr(EncrAlg::AesCbc256),
        "aes128gcm16" | "aes128gcm128" | "aes128gcm" => Kw::Encr(EncrAlg::AesGcm16_128),
        "aes256gcm16" | "aes256gcm128" | "aes256gcm" => Kw::Encr(EncrAlg::AesGcm16_256),
        "chacha20poly1305" => Kw::Encr(EncrAlg::ChaCha20Poly1305),
        "sha1" | "sha" => Kw::Integ(IntegAlg::HmacSha1_96),
        "sha256" | "sha2_256" => Kw::Integ(IntegAlg::HmacSha256_128),
        "sha384" | "sha2_384" => Kw::Integ(IntegAlg::HmacSha384_192),
        "sha512" | "sha2_512" => Kw::Integ(IntegAlg::HmacSha512_256),
        "prfsha1" => Kw::Prf(PrfAlg::HmacSha1),
        "prfsha256" => Kw::Prf(PrfAlg::HmacSha256),
        "prfsha384" => Kw::Prf(PrfAlg::HmacSha384),
        "prfsha512" => Kw::Prf(PrfAlg::HmacSha512),
        "modp2048" => Kw::Dh(DhGroup::Modp2048),
        "modp3072" => Kw::Dh(DhGroup::Modp3072),
        "ecp256" => Kw::Dh(DhGroup::Ecp256),
        "ecp384" => Kw::Dh(DhGroup::Ecp384),
        "curve25519" | "x25519" => Kw::Dh(DhGroup::Curve25519),
        "esn" => Kw::Esn(Esn::Yes),
        "noesn" => Kw::Esn(Esn::No),
        _ => return None,
    })
}

fn prf_for_integ(i: IntegAlg) -> PrfAlg {
    match i {
        IntegAlg::HmacSha1_96 => PrfAlg::HmacSha1,
        IntegAlg::HmacSha256_128 => PrfAlg::HmacSha256,
        IntegAlg::HmacSha384_192 => PrfAlg::HmacSha384,
        IntegAlg::HmacSha512_256 => PrfAlg::HmacSha512,
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn parse_common(s: &str) -> Result<Proposal, ProposalError> {
    let mut p = Proposal::default();
    for k in s.trim().split('-') {
        match keyword(&k.to_ascii_lowercase()).ok_or_else(|| ProposalError::UnknownKeyword(k.to_string()))? {
            Kw::Encr(e) => push_unique(&mut p.encr, e),
            Kw::Integ(i) => push_unique(&mut p.integ, i),
            Kw::Prf(f) => push_unique(&mut p.prf, f),
            Kw::Dh(d) => push_unique(&mut p.dh, d),
            Kw::Esn(e) => push_unique(&mut p.esn, e),
        }
    }
    if p.encr.is_empty() {
        return Err(ProposalError::NoEncryption(s.to_string()));
    }
    let aead = p.encr.iter().filter(|e| e.is_aead()).count();
    if aead != 0 && (aead != p.encr.len() || !p.integ.is_empty()) {
        return Err(ProposalError::AeadMix(s.to_string()));
    }
    if aead == 0 && p.integ.is_empty() {
        return Err(ProposalError::NoIntegrity(s.to_string()));
    }
    Ok(p)
}

/// Parse an IKE proposal. Without a `prf` keyword the PRFs follow the integrity algorithms, as in
/// strongSwan.
pub fn parse_ike_proposal(s: &str) -> Result<Proposal, ProposalError> {
    let mut p = parse_common(s)?;
    if !p.esn.is_empty() {
        return Err(ProposalError::UnknownKeyword("esn".into()));
    }
    if p.prf.is_empty() {
        p.prf = p.integ.iter().map(|&i| prf_for_integ(i)).collect();
    }
    if p.prf.is_empty() {
        return Err(ProposalError::NoPrf(s.to_string()));
    }
    if p.dh.is_empty() {
        return Err(ProposalError::NoKeyExchange(s.to_string()));
    }
    Ok(p)
}

/// Parse an ESP proposal. A key exchange method means PFS; without `esn`/`noesn` ESN is off.
pub fn parse_esp_proposal(s: &str) -> Result<Proposal, ProposalError> {
    let mut p = parse_common(s)?;
    if let Some(f) = p.prf.first() {
        return Err(ProposalError::NotForEsp(f.name().to_string()));
    }
    if p.esn.is_empty() {
        p.esn.push(Esn::No);
    }
    Ok(p)
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<&str> = Vec::new();
        parts.extend(self.encr.iter().map(|e| e.name()));
        parts.extend(self.integ.iter().map(|i| i.name()));
        parts.extend(self.prf.iter().map(|p| p.name()));
        parts.extend(self.dh.iter().map(|d| d.name()));
        parts.extend(self.esn.iter().map(|e| if *e == Esn::Yes { "esn" } else { "noesn" }));
        f.write_str(&parts.join("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_suites_parse() {
        let p = parse_ike_proposal("aes256gcm16-prfsha256-x25519").unwrap();
        assert_eq!(
            (p.encr[0], p.prf[0], p.dh[0]),
            (EncrAlg::AesGcm16_256, PrfAlg::HmacSha256, DhGroup::Curve25519)
        );
        assert!(p.integ.is_empty());
        let p = parse_ike_proposal("aes128-sha256-modp2048").unwrap();
        assert_eq!(p.prf, vec![PrfAlg::HmacSha256]);
        assert_eq!(p.integ, vec![IntegAlg::HmacSha256_128]);
        let p = parse_ike_proposal("aes256-sha384-ecp384").unwrap();
        assert_eq!(p.dh, vec![DhGroup::Ecp384]);
        let p = parse_ike_proposal("chacha20poly1305-prfsha256-curve25519").unwrap();
        assert_eq!(p.encr, vec![EncrAlg::ChaCha20Poly1305]);
        let p = parse_esp_proposal("aes256gcm16-esn").unwrap();
        assert_eq!(p.esn, vec![Esn::Yes]);
        let p = parse_esp_proposal("aes128-sha1-modp3072").unwrap();
        assert_eq!((p.dh[0], p.esn[0]), (DhGroup::Modp3072, Esn::No));
        assert_eq!(p.to_string(), "aes128-sha1-modp3072-noesn");
    }

    #[test]
    fn bad_proposals_name_the_problem() {
        assert_eq!(
            parse_ike_proposal("aes999-sha256-x25519"),
            Err(ProposalError::UnknownKeyword("aes999".into()))
        );
        assert!(matches!(parse_ike_proposal("aes256gcm16-x25519"), Err(ProposalError::NoPrf(_))));
        assert!(matches!(parse_ike_proposal("aes256-sha256"), Err(ProposalError::NoKeyExchange(_))));
        assert!(matches!(parse_esp_proposal("aes256"), Err(ProposalError::NoIntegrity(_))));
        assert!(matches!(parse_esp_proposal("aes256gcm16-sha256"), Err(ProposalError::AeadMix(_))));
        assert!(matches!(parse_esp_proposal("aes256gcm16-prfsha256"), Err(ProposalError::NotForEsp(_))));
    }
}

//! Key derivation of RFC 7296: SKEYSEED and the IKE SA keys (section 2.14), the IKE SA rekey
//! (section 2.18), CHILD SA keying material (section 2.17) and the PSK AUTH value (section 2.15).

use crate::alg::{EncrAlg, IntegAlg, PrfAlg};
use crate::prf::{prf, prf_parts, prf_plus};
use crate::CryptoError;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The algorithms of an established IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSuite {
    pub encr: EncrAlg,
    pub prf: PrfAlg,
    /// `None` with AEAD ciphers.
    pub integ: Option<IntegAlg>,
}

/// The seven IKE SA secrets. `i` keys protect initiator-to-responder messages.
#[derive(Clone, Serialize, Deserialize)]
pub struct IkeKeys {
    pub sk_d: Zeroizing<Vec<u8>>,
    pub sk_ai: Zeroizing<Vec<u8>>,
    pub sk_ar: Zeroizing<Vec<u8>>,
    pub sk_ei: Zeroizing<Vec<u8>>,
    pub sk_er: Zeroizing<Vec<u8>>,
    pub sk_pi: Zeroizing<Vec<u8>>,
    pub sk_pr: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IkeKeys(<redacted>)")
    }
}

fn spi_seed(ni: &[u8], nr: &[u8], spi_i: u64, spi_r: u64) -> Vec<u8> {
    let mut s = Vec::with_capacity(ni.len() + nr.len() + 16);
    s.extend_from_slice(ni);
    s.extend_from_slice(nr);
    s.extend_from_slice(&spi_i.to_be_bytes());
    s.extend_from_slice(&spi_r.to_be_bytes());
    s
}

fn split_ike_keys(suite: &IkeSuite, km: &[u8]) -> IkeKeys {
    let p = suite.prf.output_len();
    let a = suite.integ.map_or(0, |i| i.key_len());
    let e = suite.encr.key_material_len();
    let mut off = 0;
    let mut take = |n: usize| {
        let v = Zeroizing::new(km[off..off + n].to_vec());
        off += n;
        v
    };
    IkeKeys {
        sk_d: take(p),
        sk_ai: take(a),
        sk_ar: take(a),
        sk_ei: take(e),
        sk_er: take(e),
        sk_pi: take(p),
        sk_pr: take(p),
    }
}

fn ike_key_len(suite: &IkeSuite) -> usize {
    3 * suite.prf.output_len()
        + 2 * suite.integ.map_or(0, |i| i.key_len())
        + 2 * suite.encr.key_material_len()
}

/// Keys of a new IKE SA: SKEYSEED = prf(Ni | Nr, g^ir), then
/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
pub fn derive_ike_keys(
    suite: &IkeSuite,
    shared: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeKeys, CryptoError> {
    let nonces = [ni, nr].concat();
    let skeyseed = prf(suite.prf, &nonces, shared);
    let km = prf_plus(suite.prf, &skeyseed, &spi_seed(ni, nr, spi_i, spi_r), ike_key_len(suite))?;
    Ok(split_ike_keys(suite, &km))
}

/// Keys of an IKE SA created by rekeying (section 2.18): SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
/// with the OLD SA's PRF; the rest as for a new SA with the new suite.
#[allow(clippy::too_many_arguments)]
pub fn derive_rekeyed_ike_keys(
    old_prf: PrfAlg,
    old_sk_d: &[u8],
    suite: &IkeSuite,
    shared: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeKeys, CryptoError> {
    let skeyseed = prf_parts(old_prf, old_sk_d, &[shared, ni, nr]);
    let km = prf_plus(suite.prf, &skeyseed, &spi_seed(ni, nr, spi_i, spi_r), ike_key_len(suite))?;
    Ok(split_ike_keys(suite, &km))
}

/// CHILD SA keys. `*_i` protect traffic from the IKE SA initiator... precisely: the keys of the SA
/// that carries traffic from the initiator of the exchange that created the CHILD SA to its responder.
#[derive(Clone, Serialize, Deserialize)]
pub struct ChildKeys {
    pub encr_i: Zeroizing<Vec<u8>>,
    pub integ_i: Zeroizing<Vec<u8>>,
    pub encr_r: Zeroizing<Vec<u8>>,
    pub integ_r: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChildKeys(<redacted>)")
    }
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), taken as: initiator-to-responder encryption key,
/// its integrity key, then responder-to-initiator encryption and integrity keys (section 2.17).
pub fn derive_child_keys(
    prf_alg: PrfAlg,
    sk_d: &[u8],
    shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: EncrAlg,
    integ: Option<IntegAlg>,
) -> Result<ChildKeys, CryptoError> {
    let e = encr.key_material_len();
    let a = integ.map_or(0, |i| i.key_len());
    let mut seed = Zeroizing::new(Vec::new());
    if let Some(s) = shared {
        seed.extend_from_slice(s);
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    let km = prf_plus(prf_alg, sk_d, &seed, 2 * (e + a))?;
    Ok(ChildKeys {
        encr_i: Zeroizing::new(km[..e].to_vec()),
        integ_i: Zeroizing::new(km[e..e + a].to_vec()),
        encr_r: Zeroizing::new(km[e + a..2 * e + a].to_vec()),
        integ_r: Zeroizing::new(km[2 * e + a..].to_vec()),
    })
}

/// The octets an AUTH payload signs (section 2.15): the first message of the signer (IKE_SA_INIT
/// request for the initiator, response for the responder) | the peer's nonce | prf(SK_p, RestOfIDPayload),
/// where RestOfIDPayload is the ID payload body: ID type, three reserved bytes and the identification data.
pub fn signed_octets(
    first_message: &[u8],
    peer_nonce: &[u8],
    prf_alg: PrfAlg,
    sk_p: &[u8],
    id_body: &[u8],
) -> Vec<u8> {
    let mac = prf(prf_alg, sk_p, id_body);
    [first_message, peer_nonce, &mac].concat()
}

/// AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) for pre-shared keys.
pub fn psk_auth(prf_alg: PrfAlg, psk: &[u8], signed_octets: &[u8]) -> Zeroizing<Vec<u8>> {
    let pad_key = prf(prf_alg, psk, b"Key Pad for IKEv2");
    prf(prf_alg, &pad_key, signed_octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ike_key_layout_matches_prf_plus_split() {
        let suite = IkeSuite {
            encr: EncrAlg::AesCbc128,
            prf: PrfAlg::HmacSha256,
            integ: Some(IntegAlg::HmacSha256_128),
        };
        let (ni, nr) = ([1u8; 32], [2u8; 32]);
        let keys = derive_ike_keys(&suite, b"shared", &ni, &nr, 0x1111, 0x2222).unwrap();
        let skeyseed = prf(PrfAlg::HmacSha256, &[ni, nr].concat(), b"shared");
        let seed = [&ni[..], &nr[..], &0x1111u64.to_be_bytes(), &0x2222u64.to_be_bytes()].concat();
        let km = prf_plus(PrfAlg::HmacSha256, &skeyseed, &seed, 32 * 3 + 32 * 2 + 16 * 2).unwrap();
        assert_eq!(*keys.sk_d, km[..32]);
        assert_eq!(*keys.sk_ai, km[32..64]);
        assert_eq!(*keys.sk_ar, km[64..96]);
        assert_eq!(*keys.sk_ei, km[96..112]);
        assert_eq!(*keys.sk_er, km[112..128]);
        assert_eq!(*keys.sk_pi, km[128..160]);
        assert_eq!(*keys.sk_pr, km[160..192]);
    }

    #[test]
    fn aead_keys_include_salt_and_no_integrity() {
        let suite = IkeSuite { encr: EncrAlg::AesGcm16_256, prf: PrfAlg::HmacSha256, integ: None };
        let keys = derive_ike_keys(&suite, b"x", b"n1", b"n2", 1, 2).unwrap();
        assert_eq!(keys.sk_ei.len(), 36);
        assert!(keys.sk_ai.is_empty());
        let child = derive_child_keys(
            PrfAlg::HmacSha256,
            &keys.sk_d,
            None,
            b"n1",
            b"n2",
            EncrAlg::AesGcm16_128,
            None,
        )
        .unwrap();
        assert_eq!(child.encr_i.len(), 20);
        assert_ne!(child.encr_i, child.encr_r);
    }

    #[test]
    fn rekeyed_keys_depend_on_old_sk_d() {
        let suite = IkeSuite { encr: EncrAlg::AesGcm16_128, prf: PrfAlg::HmacSha256, integ: None };
        let a = derive_rekeyed_ike_keys(PrfAlg::HmacSha256, b"d1", &suite, b"g", b"n", b"m", 1, 2).unwrap();
        let b = derive_rekeyed_ike_keys(PrfAlg::HmacSha256, b"d2", &suite, b"g", b"n", b"m", 1, 2).unwrap();
        assert_ne!(a.sk_d, b.sk_d);
    }
}

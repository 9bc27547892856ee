//! Key exchange methods: MODP groups 14/15 (RFC 3526), ECP groups 19/20 (RFC 5903) and Curve25519
//! (RFC 8031), with the KE payload encodings IKEv2 uses.

use crate::alg::DhGroup;
use crate::random::Random;
use crate::CryptoError;
use aws_lc_rs::agreement::{self, UnparsedPublicKey};
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use zeroize::Zeroizing;

/// RFC 3526 section 3, 2048-bit MODP prime: 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 ).
const MODP_2048_P: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";
/// RFC 3526 section 4, 3072-bit MODP prime: 2^3072 - 2^3008 - 1 + 2^64 * ( [2^2942 pi] + 1690314 ).
const MODP_3072_P: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF";

/// Private exponent length for MODP groups. 512 bits is well above twice the strength of either group
/// (about 110 and 130 bits, RFC 3526 section 8) and keeps modexp cheap.
const MODP_EXPONENT_BITS: u32 = 512;

enum Secret {
    Ecdh(agreement::PrivateKey),
    Modp { exponent: BoxedUint, params: BoxedMontyParams, bits: u32 },
}

/// One side of a key exchange: a private key and its public value in KE payload encoding.
///
/// Serializable (group and private key bytes) so that an exchange in flight survives an HA
/// failover: the standby finishes it when the peer's response arrives. The serialized form holds
/// the private key: callers keep it in zeroizing buffers and only send it over the encrypted sync
/// channel.
pub struct KeyExchange {
    group: DhGroup,
    secret: Secret,
    public: Vec<u8>,
    /// The private key as drawn (ECDH scalar, MODP exponent), kept for export.
    private: Zeroizing<Vec<u8>>,
}

/// The serialized form of a [`KeyExchange`].
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyExchangeState {
    group: DhGroup,
    private: Zeroizing<Vec<u8>>,
}

impl serde::Serialize for KeyExchange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        KeyExchangeState { group: self.group, private: self.private.clone() }.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for KeyExchange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let st = KeyExchangeState::deserialize(d)?;
        KeyExchange::restore(st.group, &st.private).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyExchange").field("group", &self.group).finish_non_exhaustive()
    }
}

impl Drop for KeyExchange {
    fn drop(&mut self) {
        if let Secret::Modp { exponent, .. } = &mut self.secret {
            zeroize::Zeroize::zeroize(exponent);
        }
    }
}

fn ecdh_alg(group: DhGroup) -> Option<&'static agreement::Algorithm> {
    match group {
        DhGroup::Ecp256 => Some(&agreement::ECDH_P256),
        DhGroup::Ecp384 => Some(&agreement::ECDH_P384),
        DhGroup::Curve25519 => Some(&agreement::X25519),
        _ => None,
    }
}

fn modp_params(group: DhGroup) -> (BoxedMontyParams, u32) {
    let (hex, bits) = match group {
        DhGroup::Modp3072 => (MODP_3072_P, 3072),
        _ => (MODP_2048_P, 2048),
    };
    let p = BoxedUint::from_be_hex(hex, bits).expect("RFC 3526 prime constant is valid hex");
    let p = Odd::new(p).expect("RFC 3526 primes are odd");
    (BoxedMontyParams::new(p), bits)
}

impl KeyExchange {
    /// A fresh private key for `group`, drawn from `rng` (so a seeded simulation reproduces it).
    /// ECDH keys are built from drawn scalar bytes; a draw the curve rejects (a P-256 or P-384
    /// scalar at or above the group order, probability below 2^-32) is drawn again.
    pub fn generate(group: DhGroup, rng: &mut dyn Random) -> Result<KeyExchange, CryptoError> {
        if let Some(alg) = ecdh_alg(group) {
            let len = match group {
                DhGroup::Ecp384 => 48,
                _ => 32,
            };
            let mut raw = Zeroizing::new(vec![0u8; len]);
            for _ in 0..64 {
                rng.fill(&mut raw);
                if let Ok(key) = agreement::PrivateKey::from_private_key(alg, &raw) {
                    return Self::from_ecdh(group, key, raw);
                }
            }
            return Err(CryptoError::KeyGeneration);
        }
        let mut raw = Zeroizing::new(vec![0u8; (MODP_EXPONENT_BITS / 8) as usize]);
        rng.fill(&mut raw);
        raw[0] |= 0x80; // full-length exponent
        Self::from_modp_exponent(group, raw)
    }

    /// Rebuild a key exchange from its exported private key (an HA standby finishing an exchange
    /// its active node started). Wrong lengths are refused.
    pub fn restore(group: DhGroup, private: &[u8]) -> Result<KeyExchange, CryptoError> {
        if ecdh_alg(group).is_some() {
            return Self::from_private_key(group, private);
        }
        if private.len() != (MODP_EXPONENT_BITS / 8) as usize {
            return Err(CryptoError::KeyGeneration);
        }
        Self::from_modp_exponent(group, Zeroizing::new(private.to_vec()))
    }

    fn from_modp_exponent(group: DhGroup, raw: Zeroizing<Vec<u8>>) -> Result<KeyExchange, CryptoError> {
        let (params, bits) = modp_params(group);
        let exponent =
            BoxedUint::from_be_slice(&raw, MODP_EXPONENT_BITS).map_err(|_| CryptoError::KeyGeneration)?;
        let g = BoxedMontyForm::new(
            BoxedUint::from_be_slice(&[2], bits).map_err(|_| CryptoError::KeyGeneration)?,
            &params,
        );
        let public = g.pow(&exponent).retrieve().to_be_bytes().to_vec();
        Ok(KeyExchange { group, secret: Secret::Modp { exponent, params, bits }, public, private: raw })
    }

    /// Build from a known private key (tests with published vectors). ECDH groups only.
    pub fn from_private_key(group: DhGroup, private: &[u8]) -> Result<KeyExchange, CryptoError> {
        let alg = ecdh_alg(group).ok_or(CryptoError::UnsupportedGroup(group.transform_id()))?;
        let key =
            agreement::PrivateKey::from_private_key(alg, private).map_err(|_| CryptoError::KeyGeneration)?;
        Self::from_ecdh(group, key, Zeroizing::new(private.to_vec()))
    }

    fn from_ecdh(
        group: DhGroup,
        key: agreement::PrivateKey,
        private: Zeroizing<Vec<u8>>,
    ) -> Result<KeyExchange, CryptoError> {
        let public = key.compute_public_key().map_err(|_| CryptoError::KeyGeneration)?;
        let bytes = public.as_ref();
        // aws-lc-rs gives 0x04 | x | y for NIST curves; IKEv2 (RFC 5903) sends x | y.
        let public = if group == DhGroup::Curve25519 { bytes.to_vec() } else { bytes[1..].to_vec() };
        Ok(KeyExchange { group, secret: Secret::Ecdh(key), public, private })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public value as carried in the KE payload.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^ir with the peer's public value. Invalid peer values are rejected: wrong
    /// length, MODP values outside 1 < y < p-1, points not on the curve, an all-zero X25519 result.
    pub fn compute_shared(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if peer.len() != self.group.public_len() {
            return Err(CryptoError::InvalidPublicValue);
        }
        match &self.secret {
            Secret::Ecdh(key) => {
                let alg = ecdh_alg(self.group).ok_or(CryptoError::InvalidPublicValue)?;
                let encoded = if self.group == DhGroup::Curve25519 {
                    peer.to_vec()
                } else {
                    [&[4u8][..], peer].concat()
                };
                let shared = agreement::agree(
                    key,
                    UnparsedPublicKey::new(alg, &encoded),
                    CryptoError::InvalidPublicValue,
                    |s| Ok(Zeroizing::new(s.to_vec())),
                )?;
                if shared.iter().all(|&b| b == 0) {
                    return Err(CryptoError::InvalidPublicValue);
                }
                Ok(shared)
            }
            Secret::Modp { exponent, params, bits } => {
                let y = BoxedUint::from_be_slice(peer, *bits).map_err(|_| CryptoError::InvalidPublicValue)?;
                let p = params.modulus().as_ref().clone();
                let one = BoxedUint::one_with_precision(*bits);
                let p_minus_one = p.wrapping_sub(&one);
                if y <= one || y >= p_minus_one {
                    return Err(CryptoError::InvalidPublicValue);
                }
                let shared = BoxedMontyForm::new(y, params).pow(exponent).retrieve();
                Ok(Zeroizing::new(shared.to_be_bytes().to_vec()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_agrees() {
        for g in DhGroup::ALL {
            let a = KeyExchange::generate(g, &mut crate::OsRandom).unwrap();
            let b = KeyExchange::generate(g, &mut crate::OsRandom).unwrap();
            assert_eq!(a.public_value().len(), g.public_len(), "{g:?}");
            let s1 = a.compute_shared(b.public_value()).unwrap();
            let s2 = b.compute_shared(a.public_value()).unwrap();
            assert_eq!(s1, s2, "{g:?}");
            assert!(a.compute_shared(&b.public_value()[1..]).is_err());
        }
    }

    #[test]
    fn modp_rejects_degenerate_values() {
        let a = KeyExchange::generate(DhGroup::Modp2048, &mut crate::OsRandom).unwrap();
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert!(a.compute_shared(&one).is_err());
        assert!(a.compute_shared(&[0xff; 256]).is_err());
    }

    #[test]
    fn ecp_rejects_points_off_the_curve() {
        let a = KeyExchange::generate(DhGroup::Ecp256, &mut crate::OsRandom).unwrap();
        assert!(a.compute_shared(&[7u8; 64]).is_err());
    }

    #[test]
    fn an_exported_key_exchange_agrees_like_the_original() {
        for g in DhGroup::ALL {
            let a = KeyExchange::generate(g, &mut crate::OsRandom).unwrap();
            let b = KeyExchange::generate(g, &mut crate::OsRandom).unwrap();
            let json = serde_json::to_vec(&a).unwrap();
            let a2: KeyExchange = serde_json::from_slice(&json).unwrap();
            assert_eq!(a2.public_value(), a.public_value(), "{g:?}");
            assert_eq!(
                *a2.compute_shared(b.public_value()).unwrap(),
                *b.compute_shared(a.public_value()).unwrap()
            );
        }
        assert!(KeyExchange::restore(DhGroup::Modp2048, &[1, 2, 3]).is_err());
        assert!(KeyExchange::restore(DhGroup::Curve25519, &[1, 2, 3]).is_err());
    }

    // RFC 7748 section 6.1.
    #[test]
    fn x25519_rfc7748_vector() {
        let a_priv = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let b_pub = hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f").unwrap();
        let a = KeyExchange::from_private_key(DhGroup::Curve25519, &a_priv).unwrap();
        assert_eq!(
            hex::encode(a.public_value()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(&*a.compute_shared(&b_pub).unwrap()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
        assert!(a.compute_shared(&[0u8; 32]).is_err());
    }
}

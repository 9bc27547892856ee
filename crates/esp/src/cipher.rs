//! Prepared per-direction keys of an SA (aws-lc-rs key schedules built once at install) and the
//! ESP sizes that follow from the algorithms.
//!
//! AEADs (AES-GCM-16, RFC 4106; ChaCha20-Poly1305, RFC 7634) use `LessSafeKey` because ESP builds its
//! own nonce, salt(4) | IV(8). AES-CBC uses the unpadded `cipher::EncryptingKey::cbc` on block-aligned
//! data (ESP padding is its own, RFC 4303 section 2.4), with a separate HMAC key (RFC 2404, RFC 4868).

use crate::error::SaError;
use aws_lc_rs::aead::{LessSafeKey, UnboundKey};
use aws_lc_rs::cipher::{DecryptingKey, EncryptingKey, UnboundCipherKey, AES_128};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tandem_crypto::sk::{aead_algorithm, cbc_algorithm};
use tandem_crypto::{EncrAlg, IntegAlg};
use zeroize::{Zeroize, Zeroizing};

/// The AEAD salt (last 4 bytes of the key material), wiped on drop.
pub(crate) struct Salt(pub(crate) [u8; 4]);

impl Drop for Salt {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Sizes of the ESP framing for one algorithm combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspSizes {
    /// Explicit IV carried after the sequence number (8 for AEADs, 16 for AES-CBC).
    pub iv_len: usize,
    /// ICV (AEAD tag or truncated HMAC) at the end of the packet.
    pub icv_len: usize,
    /// The ciphertext (payload, padding, pad length, next header) is a multiple of this (4 or 16).
    pub align: usize,
}

impl EspSizes {
    /// Sizes for `encr` with `integ` (which must be `None` for AEADs).
    pub fn new(encr: EncrAlg, integ: Option<IntegAlg>) -> EspSizes {
        let icv_len = if encr.is_aead() { encr.tag_len() } else { integ.map_or(0, |i| i.icv_len()) };
        EspSizes { iv_len: encr.iv_len(), icv_len, align: encr.block_size().max(4) }
    }

    /// Bytes before the payload: SPI, sequence number, IV.
    pub fn header_len(&self) -> usize {
        crate::esp_packet::ESP_HEADER_LEN + self.iv_len
    }

    /// Most bytes after the payload: padding, pad length, next header, ICV.
    pub fn max_trailer_len(&self) -> usize {
        self.align - 1 + 2 + self.icv_len
    }

    /// Padding needed after `payload_len` bytes (RFC 4303 section 2.4).
    pub fn pad_len(&self, payload_len: usize) -> usize {
        (self.align - (payload_len + 2) % self.align) % self.align
    }

    /// Length of the ESP packet carrying `payload_len` bytes.
    pub fn sealed_len(&self, payload_len: usize) -> usize {
        self.header_len() + payload_len + self.pad_len(payload_len) + 2 + self.icv_len
    }
}

/// The sealing half of an SA's keys. The AEAD key is inline (one pointer chase less per packet on
/// the fast suites); the CBC + HMAC keys are boxed: inline they made every SA, AEAD ones
/// included, 2.2 KB larger (issue 9: memory per tunnel), and CBC's per-packet cost dwarfs a
/// pointer chase.
pub(crate) enum SealCipher {
    Aead { key: LessSafeKey, salt: Salt },
    Cbc(Box<CbcSeal>),
}

/// `iv_key` makes the CBC IVs: IV = AES-ECB(iv_key, sequence number as a 16-byte block). The key
/// is random per SA and never leaves it, so IVs are unique (one per sequence number) and
/// unpredictable to anyone without it (RFC 3602 section 2.3), the AES-CTR DRBG idea without a
/// random-number call per packet.
pub(crate) struct CbcSeal {
    pub(crate) key: EncryptingKey,
    pub(crate) mac: hmac::Key,
    pub(crate) iv_key: EncryptingKey,
}

/// The opening half of an SA's keys (the CBC keys boxed for the same reason as [`SealCipher`]'s).
pub(crate) enum OpenCipher {
    Aead { key: LessSafeKey, salt: Salt },
    Cbc(Box<CbcOpen>),
}

pub(crate) struct CbcOpen {
    pub(crate) key: DecryptingKey,
    pub(crate) mac: hmac::Key,
}

fn hmac_algorithm(integ: IntegAlg) -> hmac::Algorithm {
    match integ {
        IntegAlg::HmacSha1_96 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        IntegAlg::HmacSha256_128 => hmac::HMAC_SHA256,
        IntegAlg::HmacSha384_192 => hmac::HMAC_SHA384,
        IntegAlg::HmacSha512_256 => hmac::HMAC_SHA512,
    }
}

/// Checks the algorithm combination and the key lengths.
fn validate(
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    encr_key: &[u8],
    integ_key: &[u8],
) -> Result<(), SaError> {
    if encr_key.len() != encr.key_material_len() {
        return Err(SaError::BadKeyLength { expected: encr.key_material_len(), got: encr_key.len() });
    }
    match (encr.is_aead(), integ) {
        (true, Some(_)) => Err(SaError::AeadWithIntegrity),
        (false, None) => Err(SaError::MissingIntegrity),
        (false, Some(i)) if integ_key.len() != i.key_len() => {
            Err(SaError::BadKeyLength { expected: i.key_len(), got: integ_key.len() })
        }
        _ => Ok(()),
    }
}

fn aead_key(encr: EncrAlg, encr_key: &[u8]) -> Result<(LessSafeKey, Salt), SaError> {
    let alg = aead_algorithm(encr).ok_or(SaError::Crypto)?;
    let (k, s) = encr_key.split_at(encr_key.len() - 4);
    let key = LessSafeKey::new(UnboundKey::new(alg, k).map_err(|_| SaError::Crypto)?);
    let mut salt = [0u8; 4];
    salt.copy_from_slice(s);
    Ok((key, Salt(salt)))
}

fn cbc_key(encr: EncrAlg, encr_key: &[u8]) -> Result<UnboundCipherKey, SaError> {
    let alg = cbc_algorithm(encr).ok_or(SaError::Crypto)?;
    UnboundCipherKey::new(alg, encr_key).map_err(|_| SaError::Crypto)
}

impl SealCipher {
    pub(crate) fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_key: &[u8],
        integ_key: &[u8],
        given_iv_key: Option<&[u8]>,
    ) -> Result<Self, SaError> {
        validate(encr, integ, encr_key, integ_key)?;
        match integ {
            None => {
                let (key, salt) = aead_key(encr, encr_key)?;
                Ok(SealCipher::Aead { key, salt })
            }
            Some(i) => {
                let mut iv_key = Zeroizing::new([0u8; 16]);
                match given_iv_key {
                    Some(k) if k.len() == 16 => iv_key.copy_from_slice(k),
                    Some(_) => return Err(SaError::Crypto),
                    None => SystemRandom::new().fill(&mut iv_key[..]).map_err(|_| SaError::Crypto)?,
                }
                let iv_key = UnboundCipherKey::new(&AES_128, &iv_key[..]).map_err(|_| SaError::Crypto)?;
                Ok(SealCipher::Cbc(Box::new(CbcSeal {
                    key: EncryptingKey::cbc(cbc_key(encr, encr_key)?).map_err(|_| SaError::Crypto)?,
                    mac: hmac::Key::new(hmac_algorithm(i), integ_key),
                    iv_key: EncryptingKey::ecb(iv_key).map_err(|_| SaError::Crypto)?,
                })))
            }
        }
    }
}

impl OpenCipher {
    pub(crate) fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_key: &[u8],
        integ_key: &[u8],
    ) -> Result<Self, SaError> {
        validate(encr, integ, encr_key, integ_key)?;
        match integ {
            None => {
                let (key, salt) = aead_key(encr, encr_key)?;
                Ok(OpenCipher::Aead { key, salt })
            }
            Some(i) => Ok(OpenCipher::Cbc(Box::new(CbcOpen {
                key: DecryptingKey::cbc(cbc_key(encr, encr_key)?).map_err(|_| SaError::Crypto)?,
                mac: hmac::Key::new(hmac_algorithm(i), integ_key),
            }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_padding() {
        let gcm = EspSizes::new(EncrAlg::AesGcm16_256, None);
        assert_eq!((gcm.header_len(), gcm.icv_len, gcm.align), (16, 16, 4));
        assert_eq!(gcm.pad_len(2), 0);
        assert_eq!(gcm.pad_len(3), 3);
        assert_eq!(gcm.sealed_len(100), 16 + 100 + 2 + 2 + 16);
        let cbc = EspSizes::new(EncrAlg::AesCbc128, Some(IntegAlg::HmacSha1_96));
        assert_eq!((cbc.header_len(), cbc.icv_len, cbc.align), (24, 12, 16));
        assert_eq!(cbc.pad_len(14), 0);
        assert_eq!(cbc.pad_len(15), 15);
    }

    #[test]
    fn rejects_bad_combinations_and_lengths() {
        let k = [0u8; 36];
        assert!(matches!(
            SealCipher::new(EncrAlg::AesGcm16_256, Some(IntegAlg::HmacSha256_128), &k, &k[..32], None),
            Err(SaError::AeadWithIntegrity)
        ));
        assert!(matches!(
            OpenCipher::new(EncrAlg::AesCbc256, None, &k[..32], &[]),
            Err(SaError::MissingIntegrity)
        ));
        assert!(matches!(
            SealCipher::new(EncrAlg::AesGcm16_128, None, &k, &[], None),
            Err(SaError::BadKeyLength { expected: 20, got: 36 })
        ));
        assert!(SealCipher::new(EncrAlg::ChaCha20Poly1305, None, &k, &[], None).is_ok());
    }
}

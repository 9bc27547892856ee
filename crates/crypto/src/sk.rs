//! Protection of the SK payload of IKE messages (RFC 7296 section 3.14; RFC 5282 for AES-GCM,
//! RFC 7634 for ChaCha20-Poly1305).
//!
//! The SK payload body is `IV | ciphertext | ICV`, where the plaintext is
//! `inner payloads | padding | pad length (1 byte)`. `prefix` is every byte of the message before the
//! body: the IKE header and the SK generic payload header (plus, for SKF, the fragment number and total).
//! With AEAD the prefix is the additional authenticated data and the nonce is salt (4) | IV (8); with
//! AES-CBC the ICV is the integrity algorithm over `prefix | IV | ciphertext`.

use crate::alg::{EncrAlg, IntegAlg};
use crate::prf::{integ_compute, integ_verify};
use crate::random::Random;
use crate::CryptoError;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use zeroize::Zeroizing;

enum Cipher {
    Aead { key: LessSafeKey, salt: [u8; 4] },
    Cbc(Box<CbcKeys>),
}

struct CbcKeys {
    enc: EncryptingKey,
    dec: DecryptingKey,
    integ: IntegAlg,
    integ_key: Zeroizing<Vec<u8>>,
}

/// One direction's SK payload protection (an IKE SA has one for each direction).
pub struct SkCrypter {
    encr: EncrAlg,
    cipher: Cipher,
}

impl std::fmt::Debug for SkCrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkCrypter").field("encr", &self.encr).finish_non_exhaustive()
    }
}

/// The aws-lc-rs AEAD algorithm and key length (without salt) for an AEAD `EncrAlg`.
pub fn aead_algorithm(encr: EncrAlg) -> Option<&'static aead::Algorithm> {
    match encr {
        EncrAlg::AesGcm16_128 => Some(&aead::AES_128_GCM),
        EncrAlg::AesGcm16_256 => Some(&aead::AES_256_GCM),
        EncrAlg::ChaCha20Poly1305 => Some(&aead::CHACHA20_POLY1305),
        _ => None,
    }
}

/// The aws-lc-rs block cipher for an AES-CBC `EncrAlg`.
pub fn cbc_algorithm(encr: EncrAlg) -> Option<&'static cipher::Algorithm> {
    match encr {
        EncrAlg::AesCbc128 => Some(&cipher::AES_128),
        EncrAlg::AesCbc192 => Some(&cipher::AES_192),
        EncrAlg::AesCbc256 => Some(&cipher::AES_256),
        _ => None,
    }
}

impl SkCrypter {
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_key: &[u8],
        integ_key: &[u8],
    ) -> Result<Self, CryptoError> {
        if encr_key.len() != encr.key_material_len() {
            return Err(CryptoError::BadKeyLength);
        }
        let cipher = if let Some(alg) = aead_algorithm(encr) {
            if integ.is_some() {
                return Err(CryptoError::AeadWithIntegrity);
            }
            let (k, s) = encr_key.split_at(encr_key.len() - 4);
            let key = LessSafeKey::new(UnboundKey::new(alg, k).map_err(|_| CryptoError::BadKeyLength)?);
            let mut salt = [0u8; 4];
            salt.copy_from_slice(s);
            Cipher::Aead { key, salt }
        } else {
            let integ = integ.ok_or(CryptoError::MissingIntegrity)?;
            if integ_key.len() != integ.key_len() {
                return Err(CryptoError::BadKeyLength);
            }
            let alg = cbc_algorithm(encr).ok_or(CryptoError::BadKeyLength)?;
            let enc = EncryptingKey::cbc(
                UnboundCipherKey::new(alg, encr_key).map_err(|_| CryptoError::BadKeyLength)?,
            )
            .map_err(|_| CryptoError::BadKeyLength)?;
            let dec = DecryptingKey::cbc(
                UnboundCipherKey::new(alg, encr_key).map_err(|_| CryptoError::BadKeyLength)?,
            )
            .map_err(|_| CryptoError::BadKeyLength)?;
            Cipher::Cbc(Box::new(CbcKeys { enc, dec, integ, integ_key: Zeroizing::new(integ_key.to_vec()) }))
        };
        Ok(SkCrypter { encr, cipher })
    }

    fn icv_len(&self) -> usize {
        match &self.cipher {
            Cipher::Aead { .. } => 16,
            Cipher::Cbc(k) => k.integ.icv_len(),
        }
    }

    fn padded_len(&self, plaintext_len: usize) -> usize {
        let with_pad_len = plaintext_len + 1;
        let bs = self.encr.block_size();
        with_pad_len.div_ceil(bs) * bs
    }

    /// Length of the SK payload body that `seal` produces for `plaintext_len` bytes of inner payloads.
    pub fn body_len(&self, plaintext_len: usize) -> usize {
        self.encr.iv_len() + self.padded_len(plaintext_len) + self.icv_len()
    }

    /// Encrypt and authenticate `plaintext` into `out_body`, which must be exactly `body_len` bytes.
    /// The IV is drawn from `rng`.
    pub fn seal(
        &self,
        prefix: &[u8],
        plaintext: &[u8],
        out_body: &mut [u8],
        rng: &mut dyn Random,
    ) -> Result<(), CryptoError> {
        if out_body.len() != self.body_len(plaintext.len()) {
            return Err(CryptoError::BadLength);
        }
        let iv_len = self.encr.iv_len();
        let padded = self.padded_len(plaintext.len());
        let (iv, rest) = out_body.split_at_mut(iv_len);
        let (ct, icv) = rest.split_at_mut(padded);
        rng.fill(iv);
        ct[..plaintext.len()].copy_from_slice(plaintext);
        let pad = padded - plaintext.len() - 1;
        for (i, b) in ct[plaintext.len()..padded - 1].iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        ct[padded - 1] = pad as u8;
        match &self.cipher {
            Cipher::Aead { key, salt } => {
                let nonce = aead_nonce(salt, iv);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(prefix), ct)
                    .map_err(|_| CryptoError::EncryptionFailed)?;
                icv.copy_from_slice(tag.as_ref());
            }
            Cipher::Cbc(k) => {
                let CbcKeys { enc, integ, integ_key, .. } = &**k;
                let mut ivb = [0u8; 16];
                ivb.copy_from_slice(iv);
                enc.less_safe_encrypt(ct, EncryptionContext::Iv128(FixedLength::from(ivb)))
                    .map_err(|_| CryptoError::EncryptionFailed)?;
                let mac = integ_compute(*integ, integ_key, &[prefix, iv, ct]);
                icv.copy_from_slice(&mac);
            }
        }
        Ok(())
    }

    /// Verify and decrypt an SK payload body; returns the inner payload bytes (padding removed).
    pub fn open(&self, prefix: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        if body.len() < iv_len + icv_len + 1 {
            return Err(CryptoError::BadLength);
        }
        let (iv, rest) = body.split_at(iv_len);
        let (ct, icv) = rest.split_at(rest.len() - icv_len);
        let mut buf = Zeroizing::new(Vec::with_capacity(ct.len() + icv_len));
        let plain_len = match &self.cipher {
            Cipher::Aead { key, salt } => {
                buf.extend_from_slice(ct);
                buf.extend_from_slice(icv);
                let nonce = aead_nonce(salt, iv);
                key.open_in_place(nonce, Aad::from(prefix), &mut buf)
                    .map_err(|_| CryptoError::IntegrityCheckFailed)?
                    .len()
            }
            Cipher::Cbc(k) => {
                let CbcKeys { dec, integ, integ_key, .. } = &**k;
                if ct.is_empty() || ct.len() % 16 != 0 {
                    return Err(CryptoError::BadLength);
                }
                integ_verify(*integ, integ_key, &[prefix, iv, ct], icv)?;
                buf.extend_from_slice(ct);
                let mut ivb = [0u8; 16];
                ivb.copy_from_slice(iv);
                dec.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(ivb)))
                    .map_err(|_| CryptoError::IntegrityCheckFailed)?
                    .len()
            }
        };
        buf.truncate(plain_len);
        let pad = *buf.last().ok_or(CryptoError::BadPadding)? as usize;
        if pad + 1 > buf.len() {
            return Err(CryptoError::BadPadding);
        }
        let keep = buf.len() - pad - 1;
        buf.truncate(keep);
        Ok(buf)
    }
}

fn aead_nonce(salt: &[u8; 4], iv: &[u8]) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn suites() -> Vec<(EncrAlg, Option<IntegAlg>)> {
        let mut v = vec![
            (EncrAlg::AesGcm16_128, None),
            (EncrAlg::AesGcm16_256, None),
            (EncrAlg::ChaCha20Poly1305, None),
        ];
        for e in [EncrAlg::AesCbc128, EncrAlg::AesCbc192, EncrAlg::AesCbc256] {
            for i in IntegAlg::ALL {
                v.push((e, Some(i)));
            }
        }
        v
    }

    fn crypter(e: EncrAlg, i: Option<IntegAlg>) -> SkCrypter {
        let ek: Vec<u8> = (0..e.key_material_len() as u8).collect();
        let ik = vec![7u8; i.map_or(0, |i| i.key_len())];
        SkCrypter::new(e, i, &ek, &ik).unwrap()
    }

    #[test]
    fn round_trip_and_tamper_detection_for_every_suite() {
        for (e, i) in suites() {
            let c = crypter(e, i);
            for len in [0usize, 1, 15, 16, 17, 100] {
                let plain: Vec<u8> = (0..len as u8).collect();
                let prefix = b"ike header and sk header....";
                let mut body = vec![0u8; c.body_len(len)];
                c.seal(prefix, &plain, &mut body, &mut crate::OsRandom).unwrap();
                assert_eq!(*c.open(prefix, &body).unwrap(), plain, "{e:?} {i:?} {len}");
                let mut bad = body.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(c.open(prefix, &bad).is_err());
                assert!(c.open(b"other prefix", &body).is_err());
            }
        }
    }

    // RFC 8439 section 2.8.2: checks the nonce layout (salt = constant, IV = the 8 remaining bytes).
    #[test]
    fn chacha20_poly1305_rfc8439_vector() {
        let key = hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f").unwrap();
        let mut km = key.clone();
        km.extend_from_slice(&[0x07, 0, 0, 0]);
        let c = SkCrypter::new(EncrAlg::ChaCha20Poly1305, None, &km, &[]).unwrap();
        let Cipher::Aead { key, salt } = &c.cipher else { panic!() };
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let mut msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let iv = hex::decode("4041424344454647").unwrap();
        let tag =
            key.seal_in_place_separate_tag(aead_nonce(salt, &iv), Aad::from(&aad[..]), &mut msg).unwrap();
        assert_eq!(hex::encode(tag.as_ref()), "1ae10b594f09e26a7e902ecbd0600691");
        assert_eq!(hex::encode(&msg[..16]), "d31a8d34648e60db7b86afbc53ef7ec2");
    }

    proptest! {
        #[test]
        fn open_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200), idx in 0usize..12) {
            let all = suites();
            let (e, i) = all[idx % all.len()];
            let _ = crypter(e, i).open(b"p", &body);
        }
    }
}

//! PRFs and integrity algorithms (HMAC family) and prf+ (RFC 7296 section 2.13).

use crate::alg::{IntegAlg, PrfAlg};
use crate::CryptoError;
use aws_lc_rs::{constant_time, hmac};
use zeroize::Zeroizing;

fn prf_hmac_alg(alg: PrfAlg) -> hmac::Algorithm {
    match alg {
        PrfAlg::HmacSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        PrfAlg::HmacSha256 => hmac::HMAC_SHA256,
        PrfAlg::HmacSha384 => hmac::HMAC_SHA384,
        PrfAlg::HmacSha512 => hmac::HMAC_SHA512,
    }
}

fn integ_hmac_alg(alg: IntegAlg) -> hmac::Algorithm {
    match alg {
        IntegAlg::HmacSha1_96 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        IntegAlg::HmacSha256_128 => hmac::HMAC_SHA256,
        IntegAlg::HmacSha384_192 => hmac::HMAC_SHA384,
        IntegAlg::HmacSha512_256 => hmac::HMAC_SHA512,
    }
}

/// prf(key, data). HMAC accepts keys of any length, so no key padding or truncation is needed for
/// any PRF tandem implements (RFC 7296 section 2.14 only matters for fixed-key PRFs such as AES-XCBC).
pub fn prf(alg: PrfAlg, key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
    prf_parts(alg, key, &[data])
}

/// prf(key, data[0] | data[1] | ...), without concatenating the parts first.
pub fn prf_parts(alg: PrfAlg, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let key = hmac::Key::new(prf_hmac_alg(alg), key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    Zeroizing::new(ctx.sign().as_ref().to_vec())
}

/// prf+ (RFC 7296 section 2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), truncated to `len`.
pub fn prf_plus(alg: PrfAlg, key: &[u8], seed: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let block = alg.output_len();
    if len > block * 255 {
        return Err(CryptoError::KeyMaterialTooLong(len));
    }
    let hkey = hmac::Key::new(prf_hmac_alg(alg), key);
    let mut out = Zeroizing::new(Vec::with_capacity(len + block));
    let mut prev: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    let mut counter: u8 = 1;
    while out.len() < len {
        let mut ctx = hmac::Context::with_key(&hkey);
        ctx.update(&prev);
        ctx.update(seed);
        ctx.update(&[counter]);
        let t = ctx.sign();
        out.extend_from_slice(t.as_ref());
        prev = Zeroizing::new(t.as_ref().to_vec());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    Ok(out)
}

/// The truncated ICV of an integrity algorithm over `parts` concatenated.
pub fn integ_compute(alg: IntegAlg, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(integ_hmac_alg(alg), key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    tag.as_ref()[..alg.icv_len()].to_vec()
}

/// Constant-time check of a received ICV.
pub fn integ_verify(alg: IntegAlg, key: &[u8], parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError> {
    let expected = integ_compute(alg, key, parts);
    constant_time::verify_slices_are_equal(&expected, icv).map_err(|_| CryptoError::IntegrityCheckFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    // RFC 4231 test case 1 and 2.
    #[test]
    fn rfc4231_vectors() {
        let key = [0x0bu8; 20];
        let data = b"Hi There";
        assert_eq!(
            *prf(PrfAlg::HmacSha256, &key, data),
            unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            *prf(PrfAlg::HmacSha384, &key, data),
            unhex("afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6")
        );
        assert_eq!(
            *prf(PrfAlg::HmacSha512, &key, data),
            unhex("87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854")
        );
        assert_eq!(
            *prf(PrfAlg::HmacSha256, b"Jefe", b"what do ya want for nothing?"),
            unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    // RFC 2202 HMAC-SHA1 test case 2.
    #[test]
    fn rfc2202_sha1() {
        assert_eq!(
            *prf(PrfAlg::HmacSha1, b"Jefe", b"what do ya want for nothing?"),
            unhex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
    }

    // RFC 4868 section 2.7.2.1 AUTH256-1: HMAC-SHA-256-128 truncation of test case 1.
    #[test]
    fn rfc4868_truncation() {
        let key = [0x0bu8; 32];
        let icv = integ_compute(IntegAlg::HmacSha256_128, &key, &[b"Hi There"]);
        assert_eq!(icv, unhex("198a607eb44bfbc69903a0f1cf2bbdc5"));
        assert!(integ_verify(IntegAlg::HmacSha256_128, &key, &[b"Hi ", b"There"], &icv).is_ok());
        assert!(integ_verify(IntegAlg::HmacSha256_128, &key, &[b"Hi there"], &icv).is_err());
    }

    #[test]
    fn prf_plus_matches_manual_expansion() {
        let key = b"key";
        let seed = b"seed";
        let t1 = prf_parts(PrfAlg::HmacSha256, key, &[seed, &[1]]);
        let t2 = prf_parts(PrfAlg::HmacSha256, key, &[&t1, seed, &[2]]);
        let t3 = prf_parts(PrfAlg::HmacSha256, key, &[&t2, seed, &[3]]);
        let expect: Vec<u8> = [t1.as_slice(), t2.as_slice(), t3.as_slice()].concat();
        let got = prf_plus(PrfAlg::HmacSha256, key, seed, 80).unwrap();
        assert_eq!(*got, expect[..80]);
        assert!(prf_plus(PrfAlg::HmacSha256, key, seed, 32 * 256).is_err());
    }
}

//! Outbound ESP (RFC 4303 section 3.3), in place in a caller's buffer: the payload already sits in
//! the buffer with headroom before it for SPI, sequence number and IV, and tailroom after it for
//! padding, pad length, next header and ICV. Nothing is allocated per packet.
//!
//! - AES-GCM-16 (RFC 4106) and ChaCha20-Poly1305 (RFC 7634): the IV is the 64-bit sequence number,
//!   unique per SA as RFC 4106 section 3.1 allows; nonce = salt | IV; AAD = SPI | seq, or with ESN
//!   SPI | seq high | seq low (RFC 4106 section 5).
//! - AES-CBC with HMAC: an unpredictable IV, the sequence number encrypted under a random per-SA IV
//!   key (see `cipher::SealCipher`); the ICV is the HMAC over
//!   SPI .. ciphertext, with the high 32 sequence bits appended (not sent) under ESN (RFC 4303
//!   section 2.2.1), truncated to the algorithm's ICV length.

use crate::cipher::{CbcSeal, SealCipher};
use crate::error::SealError;
use crate::esp_packet::{aead_aad, aead_nonce, write_header, write_padding, ESP_HEADER_LEN};
use crate::sa::OutboundSa;
use aws_lc_rs::aead::{Aad, Nonce};
use aws_lc_rs::cipher::EncryptionContext;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use std::ops::Range;

/// Seals `inner` (an IP packet in tunnel mode, the transport segment in transport mode) into `out`
/// and returns the ESP packet's length. `out` needs `sa.sizes().sealed_len(inner.len())` bytes.
pub fn seal(sa: &OutboundSa, inner: &[u8], next_header: u8, out: &mut [u8]) -> Result<usize, SealError> {
    let hdr = sa.sizes().header_len();
    let need = sa.sizes().sealed_len(inner.len());
    if out.len() < need {
        sa.counters().seal_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(SealError::BufferTooSmall { headroom: hdr, len: need });
    }
    out[hdr..hdr + inner.len()].copy_from_slice(inner);
    seal_in_place(sa, out, hdr..hdr + inner.len(), next_header).map(|r| r.end)
}

/// Seals the payload at `buf[payload]` in place: the ESP header goes just before it (needs
/// `sa.sizes().header_len()` bytes of headroom), the trailer and ICV after it. Returns the range of
/// the ESP packet in `buf`. Takes one sequence number and counts the packet.
pub fn seal_in_place(
    sa: &OutboundSa,
    buf: &mut [u8],
    payload: Range<usize>,
    next_header: u8,
) -> Result<Range<usize>, SealError> {
    if sa.hard_usage_reached() {
        crate::counters::bump(&sa.counters().expired_drops, 1);
        return Err(SealError::Expired);
    }
    let seq = match sa.seq().reserve(1) {
        Ok(seq) => seq,
        Err(e) => {
            sa.counters().count_seq_refusal(e, 1);
            return Err(e.into());
        }
    };
    let len = payload.len() as u64;
    match seal_with_seq(sa, seq, buf, payload, next_header) {
        Ok(r) => {
            sa.count_use(1, len);
            Ok(r)
        }
        Err(e) => {
            crate::counters::bump(&sa.counters().seal_errors, 1);
            Err(e)
        }
    }
}

/// The sealing itself with a sequence number already reserved; counts nothing.
pub(crate) fn seal_with_seq(
    sa: &OutboundSa,
    seq: u64,
    buf: &mut [u8],
    payload: Range<usize>,
    next_header: u8,
) -> Result<Range<usize>, SealError> {
    let sizes = sa.sizes();
    let hdr = sizes.header_len();
    let pad = sizes.pad_len(payload.len());
    let ct_end = payload.end + pad + 2;
    let end = ct_end + sizes.icv_len;
    if payload.start < hdr || payload.start > payload.end || buf.len() < end {
        return Err(SealError::BufferTooSmall { headroom: hdr, len: end.max(payload.start) });
    }
    let start = payload.start - hdr;
    write_padding(&mut buf[payload.end..payload.end + pad]);
    buf[payload.end + pad] = pad as u8;
    buf[payload.end + pad + 1] = next_header;
    write_header(&mut buf[start..], sa.spi(), seq);
    let iv_at = start + ESP_HEADER_LEN;
    match &sa.cipher {
        SealCipher::Aead { key, salt } => {
            let iv = seq.to_be_bytes();
            buf[iv_at..iv_at + 8].copy_from_slice(&iv);
            let nonce = Nonce::assume_unique_for_key(aead_nonce(&salt.0, &iv));
            let (aad, aad_len) = aead_aad(sa.spi(), seq, sa.esn());
            let tag = key
                .seal_in_place_separate_tag(
                    nonce,
                    Aad::from(&aad[..aad_len]),
                    &mut buf[payload.start..ct_end],
                )
                .map_err(|_| SealError::Crypto)?;
            buf[ct_end..end].copy_from_slice(&tag.as_ref()[..sizes.icv_len]);
        }
        SealCipher::Cbc(cbc) => {
            let CbcSeal { key, mac, iv_key } = &**cbc;
            let mut iv = [0u8; 16];
            iv[8..].copy_from_slice(&seq.to_be_bytes());
            iv_key.less_safe_encrypt(&mut iv, EncryptionContext::None).map_err(|_| SealError::Crypto)?;
            buf[iv_at..iv_at + 16].copy_from_slice(&iv);
            key.less_safe_encrypt(
                &mut buf[payload.start..ct_end],
                EncryptionContext::Iv128(FixedLength::from(iv)),
            )
            .map_err(|_| SealError::Crypto)?;
            let mut ctx = hmac::Context::with_key(mac);
            ctx.update(&buf[start..ct_end]);
            if sa.esn() {
                ctx.update(&((seq >> 32) as u32).to_be_bytes());
            }
            let tag = ctx.sign();
            buf[ct_end..end].copy_from_slice(&tag.as_ref()[..sizes.icv_len]);
        }
    }
    Ok(start..end)
}

//! Inbound ESP (RFC 4303 section 3.4), in place. The order is the RFC's and the cheap one first:
//! length checks, SPI lookup, replay check (no crypto for replays), ICV/tag verification and
//! decryption, replay mark (only authenticated packets move the window), then trailer checks.
//!
//! Decisions:
//! - Padding bytes are checked to be 1, 2, 3, ... (RFC 4303 section 2.4 default contents). The packet
//!   already authenticated, so a mismatch is a broken peer, not an attack: it is dropped and counted
//!   as malformed rather than silently accepted, to surface interop bugs.
//! - Next header 59 ("no next header", a dummy packet, RFC 4303 section 2.6) is dropped and counted as
//!   `DropReason::Dummy` after it has been authenticated and marked.
//! - In tunnel mode the next header must be 4 or 41, and the payload is cut to the inner IP packet's
//!   own length, which drops TFC padding (RFC 4303 section 2.7); the inner packet must match the
//!   SA's traffic selectors (RFC 4301 section 5.2) when the SA has any.
//! - ESN: the high half is inferred from the window (RFC 4303 Appendix A); the optional
//!   resynchronisation of Appendix A.3 is not implemented: a wrong guess fails authentication.

use crate::cipher::{CbcOpen, OpenCipher};
use crate::counters::GlobalCounters;
use crate::error::DropReason;
use crate::esp_packet::{
    aead_aad, aead_nonce, padding_ok, peek_header, ESP_HEADER_LEN, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
};
use crate::ip::ip_packet_len;
use crate::sa::{InboundSa, Mode};
use crate::sad::{Sad, SadSnapshot};
use crate::selector::packet_selector;
use aws_lc_rs::aead::{Aad, Nonce};
use aws_lc_rs::cipher::DecryptionContext;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use std::ops::Range;

/// A packet that authenticated and decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub spi: u32,
    /// Full (ESN-inferred) sequence number.
    pub seq: u64,
    /// 4 (IPv4) or 41 (IPv6) in tunnel mode; the transport protocol in transport mode.
    pub next_header: u8,
    /// Where the plaintext payload lies in the packet buffer (TFC padding removed in tunnel mode).
    pub payload: Range<usize>,
}

/// Opens one ESP packet (starting at the SPI) in place: looks its SA up in `sad`, verifies and
/// decrypts it, and counts the outcome on the SA and, for drops, globally.
pub fn open(sad: &Sad, packet: &mut [u8]) -> Result<Opened, DropReason> {
    let snap = sad.snapshot();
    let r = open_in(&snap, sad.global(), packet);
    if let Some(sa) = r.as_ref().ok().and_then(|o| snap.inbound(o.spi)) {
        sad.confirm_received(sa);
    }
    r
}

/// [`open`] against a snapshot already loaded (the batch path loads one per batch).
pub fn open_in(sad: &SadSnapshot, global: &GlobalCounters, packet: &mut [u8]) -> Result<Opened, DropReason> {
    let result = match peek_header(packet) {
        None => Err(DropReason::Malformed),
        Some((spi, _)) => match sad.inbound(spi) {
            None => Err(DropReason::NoSa(spi)),
            Some(sa) => return open_sa_counted(sa, global, packet),
        },
    };
    if let Err(reason) = result {
        global.count_drop(reason);
    }
    result
}

/// Opens one packet for a known SA and counts the outcome.
pub fn open_sa(sa: &InboundSa, packet: &mut [u8]) -> Result<Opened, DropReason> {
    let r = open_uncounted(sa, packet);
    match &r {
        Ok(o) => sa.count_use(1, o.payload.len() as u64),
        Err(reason) => sa.counters().count_drop(*reason),
    }
    r
}

fn open_sa_counted(sa: &InboundSa, global: &GlobalCounters, packet: &mut [u8]) -> Result<Opened, DropReason> {
    let r = open_sa(sa, packet);
    if let Err(reason) = r {
        global.count_drop(reason);
    }
    r
}

/// The whole inbound processing of one packet for `sa`; counts nothing except that a dummy packet
/// is reported as `Err(Dummy)` after its bytes were accepted (the caller counts it).
pub(crate) fn open_uncounted(sa: &InboundSa, packet: &mut [u8]) -> Result<Opened, DropReason> {
    let sizes = *sa.sizes();
    let hdr = sizes.header_len();
    let Some((spi, seq_low)) = peek_header(packet) else { return Err(DropReason::Malformed) };
    let ct_len = packet.len().checked_sub(hdr + sizes.icv_len).ok_or(DropReason::Malformed)?;
    if ct_len < 2 || (sizes.align > 4 && ct_len % sizes.align != 0) {
        return Err(DropReason::Malformed);
    }
    if sa.hard_usage_reached() {
        return Err(DropReason::Expired);
    }
    let seq = sa.replay_check(seq_low).map_err(DropReason::from_replay)?;
    let ct_end = hdr + ct_len;
    match &sa.cipher {
        OpenCipher::Aead { key, salt } => {
            let mut iv = [0u8; 8];
            iv.copy_from_slice(&packet[ESP_HEADER_LEN..ESP_HEADER_LEN + 8]);
            let nonce = Nonce::assume_unique_for_key(aead_nonce(&salt.0, &iv));
            let (aad, aad_len) = aead_aad(spi, seq, sa.esn());
            let (body, tag) = packet.split_at_mut(ct_end);
            key.open_in_place_separate_tag(nonce, Aad::from(&aad[..aad_len]), tag, &mut body[hdr..])
                .map_err(|_| DropReason::AuthFailed)?;
        }
        OpenCipher::Cbc(cbc) => {
            let CbcOpen { key, mac } = &**cbc;
            let mut ctx = hmac::Context::with_key(mac);
            ctx.update(&packet[..ct_end]);
            if sa.esn() {
                ctx.update(&((seq >> 32) as u32).to_be_bytes());
            }
            let tag = ctx.sign();
            verify_slices_are_equal(&tag.as_ref()[..sizes.icv_len], &packet[ct_end..])
                .map_err(|_| DropReason::AuthFailed)?;
            let mut iv = [0u8; 16];
            iv.copy_from_slice(&packet[ESP_HEADER_LEN..ESP_HEADER_LEN + 16]);
            key.decrypt(&mut packet[hdr..ct_end], DecryptionContext::Iv128(FixedLength::from(iv)))
                .map_err(|_| DropReason::Malformed)?;
        }
    }
    sa.replay_mark(seq).map_err(DropReason::from_replay)?;
    let next_header = packet[ct_end - 1];
    let pad = usize::from(packet[ct_end - 2]);
    if pad + 2 > ct_len {
        return Err(DropReason::BadPadding);
    }
    let payload_end = ct_end - 2 - pad;
    if !padding_ok(&packet[payload_end..ct_end - 2]) {
        return Err(DropReason::BadPadding);
    }
    if next_header == NEXT_HEADER_NONE {
        return Err(DropReason::Dummy);
    }
    let mut payload = hdr..payload_end;
    if sa.mode() == Mode::Tunnel {
        let inner = &packet[payload.clone()];
        let version_ok = match next_header {
            NEXT_HEADER_IPV4 => inner.first().is_some_and(|b| b >> 4 == 4),
            NEXT_HEADER_IPV6 => inner.first().is_some_and(|b| b >> 4 == 6),
            other => return Err(DropReason::BadNextHeader(other)),
        };
        let len = ip_packet_len(inner).filter(|_| version_ok).ok_or(DropReason::InnerMalformed)?;
        payload.end = payload.start + len;
        if !sa.local_ts().is_empty() || !sa.remote_ts().is_empty() {
            let sel = packet_selector(&packet[payload.clone()]).ok_or(DropReason::InnerMalformed)?;
            if !sa.inner_allowed(&sel) {
                return Err(DropReason::PolicyMismatch);
            }
        }
    }
    Ok(Opened { spi, seq, next_header, payload })
}

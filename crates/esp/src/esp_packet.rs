//! ESP packet layout (RFC 4303 section 2): `SPI(4) | Sequence Number(4) | IV | ciphertext | ICV`, the
//! ciphertext being `payload | padding 1,2,3.. | pad length(1) | next header(1)`. Helpers here only
//! read and write those fields; sealing and opening are in `seal.rs` and `open.rs`.

/// SPI and sequence number.
pub const ESP_HEADER_LEN: usize = 8;
/// Next header for an IPv4 packet (tunnel mode).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next header for an IPv6 packet (tunnel mode).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// "No next header": a dummy packet for traffic flow confidentiality (RFC 4303 section 2.6).
pub const NEXT_HEADER_NONE: u8 = 59;
/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;

/// Reads the SPI of an ESP packet (for the SAD lookup), if it has one.
pub fn peek_spi(packet: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(packet.get(..4)?.try_into().ok()?))
}

/// Reads SPI and the low 32 bits of the sequence number.
pub fn peek_header(packet: &[u8]) -> Option<(u32, u32)> {
    let spi = peek_spi(packet)?;
    let seq = u32::from_be_bytes(packet.get(4..8)?.try_into().ok()?);
    Some((spi, seq))
}

/// Writes SPI and the low 32 bits of `seq` at the start of `buf` (at least 8 bytes).
pub(crate) fn write_header(buf: &mut [u8], spi: u32, seq: u64) {
    buf[..4].copy_from_slice(&spi.to_be_bytes());
    buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
}

/// The additional authenticated data of AEAD ESP (RFC 4106 section 5): SPI | seq (8 bytes), or with
/// ESN SPI | seq high | seq low (12 bytes). Returns the array and the length used.
pub(crate) fn aead_aad(spi: u32, seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        aad[4..8].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
        aad[8..12].copy_from_slice(&(seq as u32).to_be_bytes());
        (aad, 12)
    } else {
        aad[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        (aad, 8)
    }
}

/// The AEAD nonce: salt(4) | IV(8) (RFC 4106 section 4, RFC 7634 section 2).
pub(crate) fn aead_nonce(salt: &[u8; 4], iv: &[u8; 8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

/// Writes the self-describing padding 1, 2, 3, ... (RFC 4303 section 2.4) into `pad`.
pub(crate) fn write_padding(pad: &mut [u8]) {
    for (i, b) in pad.iter_mut().enumerate() {
        *b = (i + 1) as u8;
    }
}

/// True when `pad` holds 1, 2, 3, ...
pub(crate) fn padding_ok(pad: &[u8]) -> bool {
    pad.iter().enumerate().all(|(i, &b)| b == (i + 1) as u8)
}

//! Transport mode over whole IP packets, in place: ESP goes between the IP header and the transport
//! segment (RFC 4303 section 3.1.1). Outbound the IP header moves forward by the ESP header length
//! and its protocol becomes 50; inbound it moves back behind the decrypted segment and gets the
//! protocol from the ESP next header. Lengths and the IPv4 header checksum are fixed both ways.
//!
//! With ESP in UDP (RFC 3948) the socket delivers only the ESP part: the daemon calls `open`, then
//! rebuilds the header with `ip::write_ip_header` from the socket's addresses, and behind a NAT fixes
//! TCP/UDP checksums with `ip::recompute_l4_checksum` (RFC 3948 section 3.1.2).

use crate::error::{DropReason, SealError};
use crate::esp_packet::IPPROTO_ESP;
use crate::ip::{fix_ip_header, ip_packet_len, split_ip};
use crate::open::{open, Opened};
use crate::sa::OutboundSa;
use crate::sad::Sad;
use crate::seal::seal_in_place;
use std::ops::Range;

/// Seals the IP packet at `buf[packet]` in transport mode. Needs `sa.sizes().header_len()` bytes of
/// headroom before it and `sa.sizes().max_trailer_len()` after it. Returns the new packet's range.
pub fn seal_transport(
    sa: &OutboundSa,
    buf: &mut [u8],
    packet: Range<usize>,
) -> Result<Range<usize>, SealError> {
    let split = buf.get(packet.clone()).and_then(split_ip).ok_or(SealError::NotIp)?;
    let len = buf.get(packet.clone()).and_then(ip_packet_len).ok_or(SealError::NotIp)?;
    let hdr = sa.sizes().header_len();
    if packet.start < hdr {
        return Err(SealError::BufferTooSmall { headroom: hdr, len: packet.end });
    }
    let hl = split.header_len;
    let new_start = packet.start - hdr;
    let payload = packet.start + hl..packet.start + len;
    // Move the IP header forward first: the ESP header takes the place of its last bytes.
    buf.copy_within(packet.start..packet.start + hl, new_start);
    let esp = seal_in_place(sa, buf, payload, split.protocol)?;
    let out = new_start..esp.end;
    if !fix_ip_header(&mut buf[out.clone()], split.protocol_offset, IPPROTO_ESP) {
        return Err(SealError::NotIp);
    }
    Ok(out)
}

/// Opens the transport-mode IP packet at `buf[packet]` (protocol 50 after the IP header). Returns
/// what `open` returns (with `payload` relative to `buf`) and the range of the restored IP packet.
pub fn open_transport(
    sad: &Sad,
    buf: &mut [u8],
    packet: Range<usize>,
) -> Result<(Opened, Range<usize>), DropReason> {
    let pkt = buf.get(packet.clone()).ok_or(DropReason::Malformed)?;
    let split = split_ip(pkt).ok_or(DropReason::Malformed)?;
    let len = ip_packet_len(pkt).ok_or(DropReason::Malformed)?;
    if split.protocol != IPPROTO_ESP {
        return Err(DropReason::Malformed);
    }
    let hl = split.header_len;
    let esp = packet.start + hl..packet.start + len;
    let mut opened = open(sad, &mut buf[esp.clone()])?;
    opened.payload = esp.start + opened.payload.start..esp.start + opened.payload.end;
    let new_start = opened.payload.start - hl;
    buf.copy_within(packet.start..packet.start + hl, new_start);
    let out = new_start..opened.payload.end;
    if !fix_ip_header(&mut buf[out.clone()], split.protocol_offset, opened.next_header) {
        return Err(DropReason::InnerMalformed);
    }
    Ok((opened, out))
}

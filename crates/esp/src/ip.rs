//! The few IP header operations ESP needs: the length of an inner packet (to strip TFC padding in
//! tunnel mode), and for transport mode splitting a packet into header and upper-layer payload and
//! fixing the header after the protocol changed (IPv4 total length and checksum, IPv6 payload length),
//! plus recomputing TCP/UDP checksums when NAT changed the addresses (RFC 3948 section 3.1.2).

use crate::csum::{pseudo_header, Sum};
use crate::selector::is_ipv6_ext;

/// Where the upper-layer payload of an IP packet starts and which byte holds its protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpSplit {
    /// Bytes of IP header (IPv4 header with options; IPv6 header with the extension headers that
    /// come before ESP).
    pub header_len: usize,
    /// The upper-layer protocol (next header).
    pub protocol: u8,
    /// Offset of the byte holding `protocol` (9 in IPv4, 6 or inside the last extension header in
    /// IPv6): ESP replaces it by 50 and restores it on the way in.
    pub protocol_offset: usize,
}

/// The total length an IP packet claims (IPv4 total length, IPv6 40 + payload length), if the
/// header is valid and the claim fits in `pkt`.
pub fn ip_packet_len(pkt: &[u8]) -> Option<usize> {
    let len = match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes(pkt.get(2..4)?.try_into().ok()?));
            if ihl < 20 || total < ihl {
                return None;
            }
            total
        }
        6 => 40 + usize::from(u16::from_be_bytes(pkt.get(4..6)?.try_into().ok()?)),
        _ => return None,
    };
    (len <= pkt.len()).then_some(len)
}

/// Splits a whole (unfragmented) IP packet for transport mode. `None` for fragments and malformed
/// headers: transport mode protects whole datagrams only (RFC 4303 section 3.1.1).
pub fn split_ip(pkt: &[u8]) -> Option<IpSplit> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return None;
            }
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            if frag & 0x3fff != 0 {
                return None;
            }
            Some(IpSplit { header_len: ihl, protocol: pkt[9], protocol_offset: 9 })
        }
        6 => {
            if pkt.len() < 40 {
                return None;
            }
            let (mut next, mut protocol_offset, mut off) = (pkt[6], 6usize, 40usize);
            // ESP goes after hop-by-hop, routing and destination options headers (RFC 4303 section
            // 3.1.1); a fragment header means this is not a whole datagram.
            for _ in 0..16 {
                match next {
                    0 | 43 | 60 => {
                        let h = pkt.get(off..off + 2)?;
                        protocol_offset = off;
                        next = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                    }
                    _ => break,
                }
            }
            if is_ipv6_ext(next) || off > pkt.len() {
                return None;
            }
            Some(IpSplit { header_len: off, protocol: next, protocol_offset })
        }
        _ => None,
    }
}

/// After the payload of `pkt` changed: sets the protocol byte at `protocol_offset`, the length field
/// to `pkt.len()` and, for IPv4, the header checksum. `false` when `pkt` is not a valid IP header.
pub fn fix_ip_header(pkt: &mut [u8], protocol_offset: usize, protocol: u8) -> bool {
    if protocol_offset >= pkt.len() {
        return false;
    }
    match pkt[0] >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let Ok(total) = u16::try_from(pkt.len()) else { return false };
            if ihl < 20 || pkt.len() < ihl {
                return false;
            }
            pkt[protocol_offset] = protocol;
            pkt[2..4].copy_from_slice(&total.to_be_bytes());
            pkt[10..12].copy_from_slice(&[0, 0]);
            let sum = Sum::default().add_bytes(&pkt[..ihl]).checksum_bytes();
            pkt[10..12].copy_from_slice(&sum);
            true
        }
        6 => {
            let Ok(payload) = u16::try_from(pkt.len().wrapping_sub(40)) else { return false };
            if pkt.len() < 40 {
                return false;
            }
            pkt[protocol_offset] = protocol;
            pkt[4..6].copy_from_slice(&payload.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// Recomputes the TCP or UDP checksum of a whole IP packet from its current addresses (transport
/// mode behind NAT, RFC 3948 section 3.1.2). Returns `false` (and changes nothing) for other
/// protocols and malformed packets. An IPv4 UDP checksum of zero (none) stays zero.
pub fn recompute_l4_checksum(pkt: &mut [u8]) -> bool {
    let Some(split) = split_ip(pkt) else { return false };
    let Some(total) = ip_packet_len(pkt) else { return false };
    let (hl, proto) = (split.header_len, split.protocol);
    if total < hl {
        return false;
    }
    let l4_len = total - hl;
    let csum_at = match proto {
        6 if l4_len >= 20 => 16,
        17 if l4_len >= 8 => 6,
        _ => return false,
    };
    let v4 = pkt[0] >> 4 == 4;
    if v4 && proto == 17 && pkt[hl + 6..hl + 8] == [0, 0] {
        return true;
    }
    let Ok(l4_len16) = u16::try_from(l4_len) else { return false };
    pkt[hl + csum_at..hl + csum_at + 2].copy_from_slice(&[0, 0]);
    let mut sum = pseudo_header(pkt, !v4, proto, l4_len16).add_bytes(&pkt[hl..total]).checksum_bytes();
    if proto == 17 && sum == [0, 0] {
        sum = [0xff, 0xff];
    }
    pkt[hl + csum_at..hl + csum_at + 2].copy_from_slice(&sum);
    true
}

/// Writes a minimal IP header (IPv4 without options, TTL 64, DF clear; or IPv6, hop limit 64) for a
/// payload of `payload_len` bytes at the start of `buf`; returns its length. Used where the socket
/// delivers no IP header (ESP in UDP, raw IPv6) and a transport-mode packet must be rebuilt from the
/// socket's addresses. `None` when `buf` is too short, the families differ or the length overflows.
pub fn write_ip_header(
    buf: &mut [u8],
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    protocol: u8,
    payload_len: usize,
) -> Option<usize> {
    use std::net::IpAddr;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(payload_len + 20).ok()?;
            let h = buf.get_mut(..20)?;
            h.copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let sum = Sum::default().add_bytes(h).checksum_bytes();
            h[10..12].copy_from_slice(&sum);
            Some(20)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let plen = u16::try_from(payload_len).ok()?;
            let h = buf.get_mut(..40)?;
            h[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, protocol, 64]);
            h[4..6].copy_from_slice(&plen.to_be_bytes());
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            Some(40)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP packet 10.0.0.1:1000 -> 10.0.0.2:2000 with a 4-byte payload and valid checksums.
    pub(crate) fn udp4() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        p.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 12, 0xff, 0xff, b'p', b'i', b'n', b'g']);
        assert!(fix_ip_header(&mut p, 9, 17));
        assert!(recompute_l4_checksum(&mut p));
        p
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = udp4();
        assert!(Sum::default().add_bytes(&p[..20]).is_valid());
        assert_eq!(ip_packet_len(&p), Some(32));
        // UDP checksum verifies over pseudo header + segment.
        assert!(pseudo_header(&p, false, 17, 12).add_bytes(&p[20..]).is_valid());
    }

    #[test]
    fn split_and_fix_ipv6_with_hop_by_hop() {
        let mut p = vec![0x60, 0, 0, 0, 0, 12, 0, 64];
        p.extend_from_slice(&[0; 32]);
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0; 4]);
        let s = split_ip(&p).unwrap();
        assert_eq!(s, IpSplit { header_len: 48, protocol: 17, protocol_offset: 40 });
        assert!(fix_ip_header(&mut p, s.protocol_offset, 50));
        assert_eq!(p[40], 50);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 12);
    }

    #[test]
    fn fragments_are_not_split() {
        let mut p = udp4();
        p[6] = 0x20; // MF
        assert!(split_ip(&p).is_none());
        assert!(split_ip(&[0x45]).is_none());
        assert!(ip_packet_len(&[0x45, 0, 0, 10]).is_none());
    }
}

//! The selector fields of an IP packet (RFC 4301 section 4.4.1.1): addresses, next-layer protocol and
//! ports, parsed without allocation for SPD lookups and the inbound selector check.
//!
//! ICMP and ICMPv6 carry no ports; as in IKEv2 traffic selectors (RFC 7296 section 3.13.1) their
//! type and code stand in for a port, `type << 8 | code`, on both sides. Non-initial fragments and
//! truncated headers have no ports ("OPAQUE"): they only match selectors that allow any port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tandem_wire::TrafficSelector;

/// The fields of one packet that policies match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSelector {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// `None` when the packet carries no port for this protocol or is a non-initial fragment.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;
const PROTO_UDPLITE: u8 = 136;

/// True when `sel` admits the packet's address, protocol and port (`None` port: only "any port").
pub fn ts_matches(sel: &TrafficSelector, addr: IpAddr, protocol: u8, port: Option<u16>) -> bool {
    match port {
        Some(p) => sel.matches(addr, protocol, p),
        None => sel.is_any_port() && sel.matches(addr, protocol, 0),
    }
}

/// True when any selector of `list` admits the fields.
pub fn ts_list_matches(list: &[TrafficSelector], addr: IpAddr, protocol: u8, port: Option<u16>) -> bool {
    list.iter().any(|s| ts_matches(s, addr, protocol, port))
}

/// Ports (or ICMP type/code) of the transport header `l4` for `protocol`.
fn ports(protocol: u8, l4: &[u8]) -> (Option<u16>, Option<u16>) {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_UDPLITE if l4.len() >= 4 => {
            (Some(u16::from_be_bytes([l4[0], l4[1]])), Some(u16::from_be_bytes([l4[2], l4[3]])))
        }
        PROTO_ICMP | PROTO_ICMPV6 if l4.len() >= 2 => {
            let tc = u16::from_be_bytes([l4[0], l4[1]]);
            (Some(tc), Some(tc))
        }
        _ => (None, None),
    }
}

/// Parses the selector fields of an IPv4 or IPv6 packet; `None` when it is not a valid IP header.
pub fn packet_selector(pkt: &[u8]) -> Option<PacketSelector> {
    match pkt.first()? >> 4 {
        4 => ipv4_selector(pkt),
        6 => ipv6_selector(pkt),
        _ => None,
    }
}

fn ipv4_selector(pkt: &[u8]) -> Option<PacketSelector> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let protocol = pkt[9];
    let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    let (src_port, dst_port) = if frag_offset == 0 { ports(protocol, &pkt[ihl..]) } else { (None, None) };
    Some(PacketSelector { src: src.into(), dst: dst.into(), protocol, src_port, dst_port })
}

/// IPv6 extension headers that may precede the upper-layer header (RFC 8200 section 4).
pub(crate) fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

fn ipv6_selector(pkt: &[u8]) -> Option<PacketSelector> {
    if pkt.len() < 40 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?);
    let mut next = pkt[6];
    let mut off = 40usize;
    let mut opaque = false;
    // Each step consumes at least 8 bytes, so this ends; the bound only caps the work.
    for _ in 0..16 {
        if !is_ipv6_ext(next) {
            break;
        }
        let Some(h) = pkt.get(off..off + 2) else {
            opaque = true;
            break;
        };
        let len = match next {
            44 => {
                let frag = pkt.get(off + 2..off + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) >> 3);
                if frag != Some(0) {
                    opaque = true;
                }
                8
            }
            51 => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        next = h[0];
        off += len;
        if opaque {
            break;
        }
    }
    let (src_port, dst_port) =
        if opaque || is_ipv6_ext(next) { (None, None) } else { ports(next, pkt.get(off..).unwrap_or(&[])) };
    Some(PacketSelector { src: src.into(), dst: dst.into(), protocol: next, src_port, dst_port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, (frag >> 8) as u8, frag as u8, 64, proto, 0, 0];
        p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn ipv4_udp_icmp_and_fragments() {
        let s = packet_selector(&v4(17, 0, &[0x12, 0x34, 0, 53, 0, 0, 0, 0])).unwrap();
        assert_eq!(s.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((s.protocol, s.src_port, s.dst_port), (17, Some(0x1234), Some(53)));
        let s = packet_selector(&v4(1, 0, &[8, 0, 0, 0])).unwrap();
        assert_eq!((s.src_port, s.dst_port), (Some(0x0800), Some(0x0800)));
        let s = packet_selector(&v4(6, 0x0010, &[0x12, 0x34, 0, 80])).unwrap();
        assert_eq!((s.protocol, s.src_port), (6, None));
        let s = packet_selector(&v4(6, 0x2000, &[0x12, 0x34, 0, 80])).unwrap();
        assert_eq!(s.dst_port, Some(80), "first fragment (MF set) still has ports");
        assert!(packet_selector(&[0x45, 0, 0]).is_none());
        assert!(packet_selector(&[0x75; 40]).is_none());
    }

    #[test]
    fn ipv6_walks_extension_headers() {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
        p.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        // Hop-by-hop (8 bytes) -> fragment (offset 0) -> TCP.
        p.extend_from_slice(&[44, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0, 22, 0x30, 0x39]);
        let s = packet_selector(&p).unwrap();
        assert_eq!((s.protocol, s.src_port, s.dst_port), (6, Some(22), Some(12345)));
        // Non-initial fragment: no ports.
        p[51] = 0x08;
        let s = packet_selector(&p).unwrap();
        assert_eq!((s.protocol, s.src_port), (6, None));
    }

    #[test]
    fn opaque_ports_match_only_any_port() {
        let mut ts = TrafficSelector::any_v4();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(ts_matches(&ts, a, 6, None));
        ts.start_port = 80;
        ts.end_port = 80;
        assert!(!ts_matches(&ts, a, 6, None));
        assert!(ts_matches(&ts, a, 6, Some(80)));
    }
}

//! Traffic selectors (RFC 7296 section 3.13.1): an address range, an IP protocol and a port range.
//!
//! The same type is used by the IKE engine (negotiation and narrowing), the ESP dataplane (SPD) and
//! the configuration, so a selector means the same thing everywhere.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TS type for IPv4 address ranges.
pub const TS_IPV4_ADDR_RANGE: u8 = 7;
/// TS type for IPv6 address ranges.
pub const TS_IPV6_ADDR_RANGE: u8 = 8;

/// One traffic selector. `start_addr` and `end_addr` are always of the same family.
/// `ip_protocol` 0 means any protocol; ports 0..=65535 mean any port (ICMP carries type/code in the
/// port fields, RFC 7296 section 3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrafficSelector {
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start_addr: IpAddr,
    pub end_addr: IpAddr,
}

impl TrafficSelector {
    /// Every IPv4 address, every protocol and port.
    pub fn any_v4() -> Self {
        Self::from_range(Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::BROADCAST.into())
    }

    /// Every IPv6 address, every protocol and port.
    pub fn any_v6() -> Self {
        Self::from_range(Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::from(u128::MAX).into())
    }

    /// An address range with any protocol and port.
    pub fn from_range(start_addr: IpAddr, end_addr: IpAddr) -> Self {
        TrafficSelector { ip_protocol: 0, start_port: 0, end_port: u16::MAX, start_addr, end_addr }
    }

    /// A subnet `addr/prefix_len` with any protocol and port. Host bits of `addr` are ignored.
    /// Returns `None` when the prefix length is too long for the family.
    pub fn from_subnet(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => {
                if prefix_len > 32 {
                    return None;
                }
                let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - prefix_len) };
                let start = u32::from(a) & mask;
                Some(Self::from_range(Ipv4Addr::from(start).into(), Ipv4Addr::from(start | !mask).into()))
            }
            IpAddr::V6(a) => {
                if prefix_len > 128 {
                    return None;
                }
                let mask = if prefix_len == 0 { 0 } else { u128::MAX << (128 - prefix_len) };
                let start = u128::from(a) & mask;
                Some(Self::from_range(Ipv6Addr::from(start).into(), Ipv6Addr::from(start | !mask).into()))
            }
        }
    }

    /// The TS type code for the wire.
    pub fn ts_type(&self) -> u8 {
        if self.start_addr.is_ipv4() {
            TS_IPV4_ADDR_RANGE
        } else {
            TS_IPV6_ADDR_RANGE
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.start_addr.is_ipv4()
    }

    /// True when the selector's fields are consistent (same family, start <= end).
    pub fn is_valid(&self) -> bool {
        self.start_port <= self.end_port
            && match (self.start_addr, self.end_addr) {
                (IpAddr::V4(s), IpAddr::V4(e)) => s <= e,
                (IpAddr::V6(s), IpAddr::V6(e)) => s <= e,
                _ => false,
            }
    }

    /// True when a packet with these fields falls inside the selector.
    pub fn matches(&self, addr: IpAddr, ip_protocol: u8, port: u16) -> bool {
        addr_in_range(addr, self.start_addr, self.end_addr)
            && (self.ip_protocol == 0 || self.ip_protocol == ip_protocol)
            && (self.is_any_port() || (self.start_port <= port && port <= self.end_port))
    }

    /// True when every port is allowed.
    pub fn is_any_port(&self) -> bool {
        self.start_port == 0 && self.end_port == u16::MAX
    }

    /// True when `other` lies entirely inside `self`.
    pub fn contains(&self, other: &TrafficSelector) -> bool {
        self.intersect(other).as_ref() == Some(other)
    }

    /// The largest selector inside both, used for narrowing (RFC 7296 section 2.9), or `None` when
    /// they do not overlap.
    pub fn intersect(&self, other: &TrafficSelector) -> Option<TrafficSelector> {
        if self.is_ipv4() != other.is_ipv4() {
            return None;
        }
        let ip_protocol = match (self.ip_protocol, other.ip_protocol) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let start_port = self.start_port.max(other.start_port);
        let end_port = self.end_port.min(other.end_port);
        if start_port > end_port {
            return None;
        }
        let start_addr = max_addr(self.start_addr, other.start_addr);
        let end_addr = min_addr(self.end_addr, other.end_addr);
        if !addr_le(start_addr, end_addr) {
            return None;
        }
        Some(TrafficSelector { ip_protocol, start_port, end_port, start_addr, end_addr })
    }

    /// The prefix length when the address range is exactly one CIDR subnet.
    pub fn prefix_len(&self) -> Option<u8> {
        let (s, e, bits) = match (self.start_addr, self.end_addr) {
            (IpAddr::V4(s), IpAddr::V4(e)) => (u32::from(s) as u128, u32::from(e) as u128, 32u32),
            (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128u32),
            _ => return None,
        };
        let host = s ^ e;
        if host.count_ones() != host.trailing_ones() || s & host != 0 {
            return None;
        }
        Some((bits - host.count_ones()) as u8)
    }
}

impl fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len() {
            Some(p) => write!(f, "{}/{}", self.start_addr, p)?,
            None => write!(f, "{}-{}", self.start_addr, self.end_addr)?,
        }
        if self.ip_protocol != 0 || !self.is_any_port() {
            write!(f, "[{}", self.ip_protocol)?;
            if !self.is_any_port() {
                if self.start_port == self.end_port {
                    write!(f, "/{}", self.start_port)?;
                } else {
                    write!(f, "/{}-{}", self.start_port, self.end_port)?;
                }
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

fn addr_le(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
        _ => false,
    }
}

fn max_addr(a: IpAddr, b: IpAddr) -> IpAddr {
    if addr_le(a, b) {
        b
    } else {
        a
    }
}

fn min_addr(a: IpAddr, b: IpAddr) -> IpAddr {
    if addr_le(a, b) {
        a
    } else {
        b
    }
}

fn addr_in_range(addr: IpAddr, start: IpAddr, end: IpAddr) -> bool {
    addr_le(start, addr) && addr_le(addr, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_and_prefix_round_trip() {
        let ts = TrafficSelector::from_subnet("10.1.2.3".parse().unwrap(), 24).unwrap();
        assert_eq!(ts.start_addr, "10.1.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(ts.end_addr, "10.1.2.255".parse::<IpAddr>().unwrap());
        assert_eq!(ts.prefix_len(), Some(24));
        assert_eq!(ts.to_string(), "10.1.2.0/24");
        assert_eq!(TrafficSelector::any_v6().prefix_len(), Some(0));
    }

    #[test]
    fn narrowing_intersects_ranges_protocols_and_ports() {
        let wide = TrafficSelector::from_subnet("10.0.0.0".parse().unwrap(), 8).unwrap();
        let mut narrow = TrafficSelector::from_subnet("10.9.0.0".parse().unwrap(), 16).unwrap();
        narrow.ip_protocol = 6;
        narrow.start_port = 80;
        narrow.end_port = 80;
        assert_eq!(wide.intersect(&narrow), Some(narrow));
        assert!(wide.contains(&narrow));
        assert!(!narrow.contains(&wide));
        let other = TrafficSelector::from_subnet("192.168.0.0".parse().unwrap(), 16).unwrap();
        assert_eq!(wide.intersect(&other), None);
        assert_eq!(wide.intersect(&TrafficSelector::any_v6()), None);
    }
}

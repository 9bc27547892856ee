//! IKE identities <-> ID payloads (RFC 7296 section 3.5).

use crate::config::Identity;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use tandem_wire::{IdType, Identification};

impl Identity {
    pub fn to_payload(&self) -> Identification {
        let (id_type, data) = match self {
            Identity::Ipv4(a) => (IdType::IPV4_ADDR, a.octets().to_vec()),
            Identity::Ipv6(a) => (IdType::IPV6_ADDR, a.octets().to_vec()),
            Identity::Fqdn(s) => (IdType::FQDN, s.as_bytes().to_vec()),
            Identity::Rfc822(s) => (IdType::RFC822_ADDR, s.as_bytes().to_vec()),
            Identity::KeyId(k) => (IdType::KEY_ID, k.clone()),
        };
        Identification { id_type, data }
    }

    /// `None` for ID types tandem does not match on (distinguished names need certificates).
    pub fn from_payload(id: &Identification) -> Option<Identity> {
        Some(match id.id_type {
            IdType::IPV4_ADDR => {
                Identity::Ipv4(Ipv4Addr::from(<[u8; 4]>::try_from(id.data.as_slice()).ok()?))
            }
            IdType::IPV6_ADDR => {
                Identity::Ipv6(Ipv6Addr::from(<[u8; 16]>::try_from(id.data.as_slice()).ok()?))
            }
            IdType::FQDN => Identity::Fqdn(String::from_utf8(id.data.clone()).ok()?),
            IdType::RFC822_ADDR => Identity::Rfc822(String::from_utf8(id.data.clone()).ok()?),
            IdType::KEY_ID => Identity::KeyId(id.data.clone()),
            _ => return None,
        })
    }

    /// Parse the operator's notation: an IP literal, `user@domain` (RFC822), `@fqdn` or `fqdn`,
    /// `keyid:HEX`.
    pub fn parse(s: &str) -> Identity {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Identity::Ipv4(a);
        }
        if let Ok(a) = s.parse::<Ipv6Addr>() {
            return Identity::Ipv6(a);
        }
        if let Some(hex) = s.strip_prefix("keyid:") {
            if let Some(bytes) = decode_hex(hex) {
                return Identity::KeyId(bytes);
            }
        }
        if let Some(f) = s.strip_prefix('@') {
            return Identity::Fqdn(f.to_string());
        }
        if s.contains('@') {
            return Identity::Rfc822(s.to_string());
        }
        Identity::Fqdn(s.to_string())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) | Identity::Rfc822(s) => f.write_str(s),
            Identity::KeyId(k) => {
                f.write_str("keyid:")?;
                k.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notation_and_payload_round_trip() {
        for s in ["10.1.2.3", "2001:db8::1", "gw.example", "user@example.org", "keyid:0a0b"] {
            let id = Identity::parse(s);
            assert_eq!(Identity::from_payload(&id.to_payload()), Some(id.clone()));
            assert_eq!(id.to_string(), s);
        }
        assert_eq!(Identity::parse("@gw.example"), Identity::Fqdn("gw.example".into()));
    }
}

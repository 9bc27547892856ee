//! IKEv2 payloads (RFC 7296 section 3.2-3.16, RFC 7383 section 2.5): typed values with parse and emit.

use crate::codes::{AuthMethod, CfgType, IdType, NotifyType, PayloadType, ProtocolId};
use crate::error::WireError;
use crate::reader::Reader;
use crate::ts::{TrafficSelector, TS_IPV4_ADDR_RANGE, TS_IPV6_ADDR_RANGE};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the generic payload header.
pub const GENERIC_HEADER_LEN: usize = 4;
/// The critical bit of the generic payload header.
pub const CRITICAL: u8 = 0x80;
/// Upper bound on list entries of one payload, to keep hostile input cheap.
const MAX_ITEMS: usize = 256;

/// A transform attribute (RFC 7296 section 3.3.5). Key Length (14) is TV; others may be TLV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformAttribute {
    pub attr_type: u16,
    /// TV format (the AF bit): the value is exactly two bytes.
    pub tv: bool,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transform {
    pub transform_type: u8,
    pub transform_id: u16,
    pub attributes: Vec<TransformAttribute>,
}

impl Transform {
    pub const KEY_LENGTH: u16 = 14;

    pub fn new(transform_type: u8, transform_id: u16, key_length: Option<u16>) -> Self {
        let attributes = key_length
            .map(|k| {
                vec![TransformAttribute {
                    attr_type: Self::KEY_LENGTH,
                    tv: true,
                    value: k.to_be_bytes().to_vec(),
                }]
            })
            .unwrap_or_default();
        Transform { transform_type, transform_id, attributes }
    }

    /// The Key Length attribute in bits, if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes
            .iter()
            .find(|a| a.attr_type == Self::KEY_LENGTH && a.value.len() == 2)
            .map(|a| u16::from_be_bytes([a.value[0], a.value[1]]))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub number: u8,
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identification {
    pub id_type: IdType,
    pub data: Vec<u8>,
}

impl Identification {
    /// The ID payload body that AUTH covers: type, three reserved bytes, data (RFC 7296 section 2.15).
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.id_type.0, 0, 0, 0];
        v.extend_from_slice(&self.data);
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub notify_type: NotifyType,
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about the IKE SA (no SPI).
    pub fn new(notify_type: NotifyType, data: Vec<u8>) -> Self {
        Notify { protocol: ProtocolId::NONE, spi: Vec::new(), notify_type, data }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub protocol: ProtocolId,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigAttribute {
    pub attr_type: u16,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPayload {
    pub cfg_type: CfgType,
    pub attributes: Vec<ConfigAttribute>,
}

/// The SK payload: `first_inner` is the type of the first payload inside; `body` is
/// IV | ciphertext | ICV, opaque to this layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    pub first_inner: PayloadType,
    pub body: Vec<u8>,
}

/// The SKF payload (RFC 7383). `first_inner` is meaningful in fragment 1 only (0 elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedFragment {
    pub fragment_number: u16,
    pub total_fragments: u16,
    pub first_inner: PayloadType,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        dh_group: u16,
        data: Vec<u8>,
    },
    IdI(Identification),
    IdR(Identification),
    Cert {
        encoding: u8,
        data: Vec<u8>,
    },
    CertReq {
        encoding: u8,
        data: Vec<u8>,
    },
    Auth {
        method: AuthMethod,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    VendorId(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    Encrypted(Encrypted),
    EncryptedFragment(EncryptedFragment),
    Cp(ConfigPayload),
    Eap(Vec<u8>),
    /// A payload this layer does not know, without the critical bit: kept so it round-trips.
    Unknown {
        payload_type: PayloadType,
        critical: bool,
        data: Vec<u8>,
    },
}

impl Payload {
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke { .. } => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Cert { .. } => PayloadType::CERT,
            Payload::CertReq { .. } => PayloadType::CERTREQ,
            Payload::Auth { .. } => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Encrypted(_) => PayloadType::SK,
            Payload::EncryptedFragment(_) => PayloadType::SKF,
            Payload::Cp(_) => PayloadType::CP,
            Payload::Eap(_) => PayloadType::EAP,
            Payload::Unknown { payload_type, .. } => *payload_type,
        }
    }

    /// For SK/SKF the "next payload" field carries the first inner payload type instead.
    pub(crate) fn inner_first(&self) -> Option<PayloadType> {
        match self {
            Payload::Encrypted(e) => Some(e.first_inner),
            Payload::EncryptedFragment(f) => Some(f.first_inner),
            _ => None,
        }
    }

    /// Parse one payload body of type `t`.
    pub(crate) fn parse_body(
        t: PayloadType,
        critical: bool,
        next: PayloadType,
        body: &[u8],
    ) -> Result<Payload, WireError> {
        let mut r = Reader::new(body);
        Ok(match t {
            PayloadType::SA => Payload::Sa(parse_proposals(body)?),
            PayloadType::KE => {
                let dh_group = r.u16("KE")?;
                r.skip(2, "KE")?;
                Payload::Ke { dh_group, data: r.rest().to_vec() }
            }
            PayloadType::IDI | PayloadType::IDR => {
                let id_type = IdType(r.u8("ID")?);
                r.skip(3, "ID")?;
                let id = Identification { id_type, data: r.rest().to_vec() };
                if t == PayloadType::IDI {
                    Payload::IdI(id)
                } else {
                    Payload::IdR(id)
                }
            }
            PayloadType::CERT => Payload::Cert { encoding: r.u8("CERT")?, data: r.rest().to_vec() },
            PayloadType::CERTREQ => Payload::CertReq { encoding: r.u8("CERTREQ")?, data: r.rest().to_vec() },
            PayloadType::AUTH => {
                let method = AuthMethod(r.u8("AUTH")?);
                r.skip(3, "AUTH")?;
                Payload::Auth { method, data: r.rest().to_vec() }
            }
            PayloadType::NONCE => Payload::Nonce(body.to_vec()),
            PayloadType::NOTIFY => {
                let protocol = ProtocolId(r.u8("Notify")?);
                let spi_size = r.u8("Notify")? as usize;
                let notify_type = NotifyType(r.u16("Notify")?);
                let spi = r.take(spi_size, "Notify SPI")?.to_vec();
                Payload::Notify(Notify { protocol, spi, notify_type, data: r.rest().to_vec() })
            }
            PayloadType::DELETE => {
                let protocol = ProtocolId(r.u8("Delete")?);
                let spi_size = r.u8("Delete")?;
                let n = r.u16("Delete")? as usize;
                if spi_size == 0 && n != 0 || (spi_size as usize) * n != r.remaining() {
                    return Err(WireError::BadLength("Delete"));
                }
                let spis = (0..n)
                    .map(|_| r.take(spi_size as usize, "Delete").map(|s| s.to_vec()))
                    .collect::<Result<_, _>>()?;
                Payload::Delete(Delete { protocol, spi_size, spis })
            }
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsI(parse_selectors(body)?),
            PayloadType::TSR => Payload::TsR(parse_selectors(body)?),
            PayloadType::SK => Payload::Encrypted(Encrypted { first_inner: next, body: body.to_vec() }),
            PayloadType::SKF => {
                let fragment_number = r.u16("SKF")?;
                let total_fragments = r.u16("SKF")?;
                if fragment_number == 0 || total_fragments == 0 || fragment_number > total_fragments {
                    return Err(WireError::Invalid("fragment number"));
                }
                Payload::EncryptedFragment(EncryptedFragment {
                    fragment_number,
                    total_fragments,
                    first_inner: next,
                    body: r.rest().to_vec(),
                })
            }
            PayloadType::CP => {
                let cfg_type = CfgType(r.u8("CP")?);
                r.skip(3, "CP")?;
                let mut attributes = Vec::new();
                while r.remaining() > 0 {
                    if attributes.len() >= MAX_ITEMS {
                        return Err(WireError::TooMany("configuration attributes"));
                    }
                    let attr_type = r.u16("CP attribute")? & 0x7fff;
                    let len = r.u16("CP attribute")? as usize;
                    attributes
                        .push(ConfigAttribute { attr_type, value: r.take(len, "CP attribute")?.to_vec() });
                }
                Payload::Cp(ConfigPayload { cfg_type, attributes })
            }
            PayloadType::EAP => Payload::Eap(body.to_vec()),
            other if critical => return Err(WireError::UnsupportedCriticalPayload(other)),
            other => Payload::Unknown { payload_type: other, critical, data: body.to_vec() },
        })
    }

    /// Append the payload body (without the generic header).
    pub(crate) fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => emit_proposals(props, out),
            Payload::Ke { dh_group, data } => {
                out.extend_from_slice(&dh_group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
                out.push(*encoding);
                out.extend_from_slice(data);
            }
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[method.0, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(d) | Payload::VendorId(d) | Payload::Eap(d) => out.extend_from_slice(d),
            Payload::Notify(n) => {
                out.push(n.protocol.0);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.notify_type.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.push(d.protocol.0);
                out.push(d.spi_size);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::TsI(ts) | Payload::TsR(ts) => emit_selectors(ts, out),
            Payload::Encrypted(e) => out.extend_from_slice(&e.body),
            Payload::EncryptedFragment(f) => {
                out.extend_from_slice(&f.fragment_number.to_be_bytes());
                out.extend_from_slice(&f.total_fragments.to_be_bytes());
                out.extend_from_slice(&f.body);
            }
            Payload::Cp(cp) => {
                out.extend_from_slice(&[cp.cfg_type.0, 0, 0, 0]);
                for a in &cp.attributes {
                    out.extend_from_slice(&(a.attr_type & 0x7fff).to_be_bytes());
                    out.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                    out.extend_from_slice(&a.value);
                }
            }
            Payload::Unknown { data, .. } => out.extend_from_slice(data),
        }
    }

    pub(crate) fn critical(&self) -> bool {
        matches!(self, Payload::Unknown { critical: true, .. })
    }
}

fn parse_proposals(body: &[u8]) -> Result<Vec<Proposal>, WireError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    loop {
        if out.len() >= MAX_ITEMS {
            return Err(WireError::TooMany("proposals"));
        }
        let last = r.u8("proposal")?;
        r.skip(1, "proposal")?;
        let len = r.u16("proposal")? as usize;
        if len < 8 {
            return Err(WireError::BadLength("proposal"));
        }
        let mut p = Reader::new(r.take(len - 4, "proposal")?);
        let number = p.u8("proposal")?;
        let protocol = ProtocolId(p.u8("proposal")?);
        let spi_size = p.u8("proposal")? as usize;
        let n = p.u8("proposal")? as usize;
        let spi = p.take(spi_size, "proposal SPI")?.to_vec();
        let mut transforms = Vec::with_capacity(n);
        for i in 0..n {
            let t_last = p.u8("transform")?;
            if (t_last == 0) != (i + 1 == n) || (t_last != 0 && t_last != 3) {
                return Err(WireError::Invalid("transform substructure chain"));
            }
            p.skip(1, "transform")?;
            let tlen = p.u16("transform")? as usize;
            if tlen < 8 {
                return Err(WireError::BadLength("transform"));
            }
            let mut t = Reader::new(p.take(tlen - 4, "transform")?);
            let transform_type = t.u8("transform")?;
            t.skip(1, "transform")?;
            let transform_id = t.u16("transform")?;
            let mut attributes = Vec::new();
            while t.remaining() > 0 {
                if attributes.len() >= MAX_ITEMS {
                    return Err(WireError::TooMany("transform attributes"));
                }
                let raw = t.u16("attribute")?;
                let tv = raw & 0x8000 != 0;
                let value = if tv {
                    t.take(2, "attribute")?.to_vec()
                } else {
                    let l = t.u16("attribute")? as usize;
                    t.take(l, "attribute")?.to_vec()
                };
                attributes.push(TransformAttribute { attr_type: raw & 0x7fff, tv, value });
            }
            transforms.push(Transform { transform_type, transform_id, attributes });
        }
        if p.remaining() != 0 {
            return Err(WireError::BadLength("proposal"));
        }
        out.push(Proposal { number, protocol, spi, transforms });
        match last {
            0 if r.remaining() == 0 => return Ok(out),
            2 if r.remaining() > 0 => continue,
            _ => return Err(WireError::Invalid("proposal substructure chain")),
        }
    }
}

fn emit_proposals(props: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in props.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(&[if i + 1 == props.len() { 0 } else { 2 }, 0, 0, 0]);
        out.extend_from_slice(&[p.number, p.protocol.0, p.spi.len() as u8, p.transforms.len() as u8]);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            let ts = out.len();
            out.extend_from_slice(&[if j + 1 == p.transforms.len() { 0 } else { 3 }, 0, 0, 0]);
            out.push(t.transform_type);
            out.push(0);
            out.extend_from_slice(&t.transform_id.to_be_bytes());
            for a in &t.attributes {
                if a.tv {
                    out.extend_from_slice(&(a.attr_type | 0x8000).to_be_bytes());
                    let mut v = [0u8; 2];
                    for (d, s) in v.iter_mut().zip(&a.value) {
                        *d = *s;
                    }
                    out.extend_from_slice(&v);
                } else {
                    out.extend_from_slice(&(a.attr_type & 0x7fff).to_be_bytes());
                    out.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                    out.extend_from_slice(&a.value);
                }
            }
            let tl = (out.len() - ts) as u16;
            out[ts + 2..ts + 4].copy_from_slice(&tl.to_be_bytes());
        }
        let pl = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&pl.to_be_bytes());
    }
}

fn parse_selectors(body: &[u8]) -> Result<Vec<TrafficSelector>, WireError> {
    let mut r = Reader::new(body);
    let n = r.u8("TS")? as usize;
    r.skip(3, "TS")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ts_type = r.u8("selector")?;
        let ip_protocol = r.u8("selector")?;
        let len = r.u16("selector")? as usize;
        let start_port = r.u16("selector")?;
        let end_port = r.u16("selector")?;
        let (start_addr, end_addr) = match (ts_type, len) {
            (TS_IPV4_ADDR_RANGE, 16) => {
                let s: [u8; 4] = r.array("selector")?;
                let e: [u8; 4] = r.array("selector")?;
                (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(e)))
            }
            (TS_IPV6_ADDR_RANGE, 40) => {
                let s: [u8; 16] = r.array("selector")?;
                let e: [u8; 16] = r.array("selector")?;
                (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(e)))
            }
            _ => return Err(WireError::InvalidSelector),
        };
        out.push(TrafficSelector { ip_protocol, start_port, end_port, start_addr, end_addr });
    }
    if r.remaining() != 0 {
        return Err(WireError::BadLength("TS"));
    }
    Ok(out)
}

fn emit_selectors(ts: &[TrafficSelector], out: &mut Vec<u8>) {
    out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
    for t in ts {
        let len: u16 = if t.is_ipv4() { 16 } else { 40 };
        out.push(t.ts_type());
        out.push(t.ip_protocol);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&t.start_port.to_be_bytes());
        out.extend_from_slice(&t.end_port.to_be_bytes());
        for a in [t.start_addr, t.end_addr] {
            match a {
                IpAddr::V4(v) => out.extend_from_slice(&v.octets()),
                IpAddr::V6(v) => out.extend_from_slice(&v.octets()),
            }
        }
    }
}

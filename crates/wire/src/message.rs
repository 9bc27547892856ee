//! The IKE header and whole messages (RFC 7296 section 3.1-3.2).
//!
//! Encrypted messages: the SK (or SKF) payload is always last and its body is opaque here. To build
//! one, emit a [`Message`] whose last payload is `Encrypted { body: zeroes of the sealed length }`, then
//! overwrite the last `body.len()` bytes with the sealed body. Everything before the body (the IKE
//! header, the SK generic payload header, and for SKF the fragment number and total) is the
//! associated data / integrity-protected prefix.

use crate::codes::{flags, ExchangeType, PayloadType};
use crate::error::WireError;
use crate::payload::{Payload, CRITICAL, GENERIC_HEADER_LEN};
use crate::reader::Reader;
use serde::{Deserialize, Serialize};

/// Upper bound on payloads in one message.
const MAX_PAYLOADS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeHeader {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: PayloadType,
    /// Major version in the high nibble (2), minor in the low (0).
    pub version: u8,
    pub exchange: ExchangeType,
    pub flags: u8,
    pub message_id: u32,
    /// Total message length; filled in by `Message::emit`.
    pub length: u32,
}

impl IkeHeader {
    pub const LEN: usize = 28;

    pub fn new(spi_i: u64, spi_r: u64, exchange: ExchangeType, flags: u8, message_id: u32) -> Self {
        IkeHeader {
            spi_i,
            spi_r,
            next_payload: PayloadType::NONE,
            version: 0x20,
            exchange,
            flags,
            message_id,
            length: 0,
        }
    }

    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    /// Set by the original initiator of the IKE SA.
    pub fn is_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }

    /// Parse the fixed header. The length field must match `buf.len()` exactly (RFC 7296 section 3.1).
    pub fn parse(buf: &[u8]) -> Result<IkeHeader, WireError> {
        let mut r = Reader::new(buf);
        let spi_i = r.u64("IKE header")?;
        let spi_r = r.u64("IKE header")?;
        let next_payload = PayloadType(r.u8("IKE header")?);
        let version = r.u8("IKE header")?;
        let exchange = ExchangeType(r.u8("IKE header")?);
        let flags = r.u8("IKE header")?;
        let message_id = r.u32("IKE header")?;
        let length = r.u32("IKE header")?;
        if version >> 4 != 2 {
            return Err(WireError::BadVersion(version >> 4));
        }
        if length as usize != buf.len() {
            return Err(WireError::BadLength("IKE header"));
        }
        Ok(IkeHeader { spi_i, spi_r, next_payload, version, exchange, flags, message_id, length })
    }

    pub fn emit_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next_payload.0);
        out.push(self.version);
        out.push(self.exchange.0);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub header: IkeHeader,
    pub payloads: Vec<Payload>,
}

impl Message {
    pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
        let header = IkeHeader::parse(buf)?;
        let payloads = parse_payloads(header.next_payload, &buf[IkeHeader::LEN..])?;
        Ok(Message { header, payloads })
    }

    /// Serialize, computing the payload chain and every length field.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let mut header = self.header.clone();
        let (first, body) = emit_payloads(&self.payloads);
        header.next_payload = first;
        header.length = (IkeHeader::LEN + body.len()) as u32;
        header.emit_into(&mut out);
        out.extend_from_slice(&body);
        out
    }

    /// The first payload of a type, for convenience.
    pub fn find<'a, T>(&'a self, f: impl Fn(&'a Payload) -> Option<T>) -> Option<T> {
        self.payloads.iter().find_map(f)
    }
}

/// Parse a payload chain starting with type `first`. Stops after an SK/SKF payload, which must be last.
pub fn parse_payloads(first: PayloadType, buf: &[u8]) -> Result<Vec<Payload>, WireError> {
    let mut r = Reader::new(buf);
    let mut next = first;
    let mut out = Vec::new();
    while next != PayloadType::NONE {
        if out.len() >= MAX_PAYLOADS {
            return Err(WireError::TooMany("payloads"));
        }
        let this = next;
        next = PayloadType(r.u8("payload header")?);
        let critical = r.u8("payload header")? & CRITICAL != 0;
        let len = r.u16("payload header")? as usize;
        if len < GENERIC_HEADER_LEN {
            return Err(WireError::BadLength("payload header"));
        }
        let body = r.take(len - GENERIC_HEADER_LEN, "payload")?;
        let p = Payload::parse_body(this, critical, next, body)?;
        let is_sk = p.inner_first().is_some();
        out.push(p);
        if is_sk {
            if r.remaining() != 0 {
                return Err(WireError::SkNotLast);
            }
            return Ok(out);
        }
    }
    if r.remaining() != 0 {
        return Err(WireError::BadLength("payload chain"));
    }
    Ok(out)
}

/// Serialize a payload chain; returns the type of the first payload and the bytes.
pub fn emit_payloads(payloads: &[Payload]) -> (PayloadType, Vec<u8>) {
    let mut out = Vec::with_capacity(256);
    for (i, p) in payloads.iter().enumerate() {
        let next = p
            .inner_first()
            .unwrap_or_else(|| payloads.get(i + 1).map_or(PayloadType::NONE, |n| n.payload_type()));
        let start = out.len();
        out.extend_from_slice(&[next.0, if p.critical() { CRITICAL } else { 0 }, 0, 0]);
        p.emit_body(&mut out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    (payloads.first().map_or(PayloadType::NONE, |p| p.payload_type()), out)
}

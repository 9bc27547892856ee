//! ESP framing facts shared by the daemon and the dataplane (RFC 4303, RFC 3948).

/// The fixed ESP header: SPI and the low 32 bits of the sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspHeader {
    pub spi: u32,
    pub seq: u32,
}

impl EspHeader {
    pub const LEN: usize = 8;

    pub fn parse(buf: &[u8]) -> Option<EspHeader> {
        let b: &[u8; 8] = buf.get(..8)?.try_into().ok()?;
        Some(EspHeader {
            spi: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// Length of the non-ESP marker that precedes IKE messages on the NAT-T port.
pub const NON_ESP_MARKER_LEN: usize = 4;

/// True when a datagram on the NAT-T port carries IKE (four zero bytes where an ESP SPI would be;
/// SPI 0 is reserved, RFC 3948 section 2.2).
pub fn is_non_esp_marker(datagram: &[u8]) -> bool {
    datagram.len() >= NON_ESP_MARKER_LEN && datagram[..4] == [0, 0, 0, 0]
}

/// True for a NAT-keepalive packet (a single 0xFF byte, RFC 3948 section 2.3).
pub fn is_nat_keepalive(datagram: &[u8]) -> bool {
    datagram == [0xff]
}

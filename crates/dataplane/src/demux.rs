//! What a datagram on the UDP encapsulation port is (RFC 3948 section 2): IKE behind the 4-byte
//! non-ESP marker, a one-byte NAT keepalive, or ESP (a non-zero SPI in the first four bytes).

use tandem_wire::esp::{is_nat_keepalive, is_non_esp_marker, NON_ESP_MARKER_LEN};

#[derive(Debug, PartialEq, Eq)]
pub enum NattKind<'a> {
    /// An IKE message (marker removed).
    Ike(&'a [u8]),
    /// A NAT keepalive (0xFF): counted and dropped.
    Keepalive,
    /// An ESP packet starting with its SPI.
    Esp(&'a [u8]),
    /// Too short to be any of these (1-7 bytes other than a keepalive): counted and dropped.
    Runt,
}

/// Classify one datagram received on a NAT-T socket.
pub fn classify(datagram: &[u8]) -> NattKind<'_> {
    if is_nat_keepalive(datagram) {
        NattKind::Keepalive
    } else if is_non_esp_marker(datagram) {
        NattKind::Ike(&datagram[NON_ESP_MARKER_LEN..])
    } else if datagram.len() < tandem_wire::esp::EspHeader::LEN {
        NattKind::Runt
    } else {
        NattKind::Esp(datagram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_demux() {
        assert_eq!(classify(&[0, 0, 0, 0, 1, 2, 3]), NattKind::Ike(&[1, 2, 3]));
        assert_eq!(classify(&[0, 0, 0, 0]), NattKind::Ike(&[]));
        assert_eq!(classify(&[0xff]), NattKind::Keepalive);
        assert_eq!(classify(&[]), NattKind::Runt);
        assert_eq!(classify(&[0xff, 0xff]), NattKind::Runt);
        assert_eq!(classify(&[0, 0, 1, 0, 0, 0, 0]), NattKind::Runt);
        let esp = [0, 0, 1, 0, 0, 0, 0, 1, 9, 9];
        assert_eq!(classify(&esp), NattKind::Esp(&esp));
    }
}

//! The Internet checksum (RFC 1071) at the speed the inbound path needs: coalescing TCP segments
//! into one TUN super-frame means the kernel no longer checks each segment's checksum, so we check
//! every segment we merge. The sum is kept in native byte order, which RFC 1071 section 2(B) shows
//! is equivalent up to one final swap.

/// A running one's complement sum (not folded, native byte order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    /// Add `data`. Every part but the last must have an even length, so 16-bit words stay aligned
    /// across parts (packet headers and payloads do).
    #[inline]
    pub fn add_bytes(self, data: &[u8]) -> Sum {
        // 32-bit words added into four independent 64-bit lanes: no carry chain, and the loop
        // vectorises. A 32-bit word is two 16-bit words with 2^16 = 1 (mod 2^16 - 1), so the
        // lanes fold to the same one's complement sum. 2^32 additions would be needed to
        // overflow a lane.
        let mut lanes = [0u64; 4];
        let mut chunks = data.chunks_exact(16);
        for c in &mut chunks {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane += u64::from(u32::from_ne_bytes([c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]]));
            }
        }
        let rest = chunks.remainder();
        // Zero padding keeps each byte in its place within its 16-bit word.
        let mut last = [0u8; 16];
        last[..rest.len()].copy_from_slice(rest);
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane += u64::from(u32::from_ne_bytes([
                last[4 * i],
                last[4 * i + 1],
                last[4 * i + 2],
                last[4 * i + 3],
            ]));
        }
        let mut acc = self.0;
        for lane in lanes {
            let (s, carry) = acc.overflowing_add(lane);
            acc = s + u64::from(carry);
        }
        Sum(acc)
    }

    /// Add a 16-bit big-endian value (a protocol number, a length).
    #[inline]
    pub fn add_u16(self, v: u16) -> Sum {
        self.add_bytes(&v.to_be_bytes())
    }

    /// The folded 16-bit sum as the two bytes to store in a packet (not complemented).
    pub fn folded_bytes(self) -> [u8; 2] {
        let mut a = self.0;
        a = (a & 0xffff_ffff) + (a >> 32);
        a = (a & 0xffff_ffff) + (a >> 32);
        a = (a & 0xffff) + (a >> 16);
        a = (a & 0xffff) + (a >> 16);
        (a as u16).to_ne_bytes()
    }

    /// Whether a packet whose checksum field is included sums to all ones (the field is correct).
    pub fn is_valid(self) -> bool {
        self.folded_bytes() == [0xff, 0xff]
    }

    /// The checksum field value: the complemented folded sum.
    pub fn checksum_bytes(self) -> [u8; 2] {
        let [a, b] = self.folded_bytes();
        [!a, !b]
    }
}

/// The pseudo-header sum of TCP/UDP (RFC 793, RFC 8200 section 8.1) for the IP packet `pkt`
/// (IPv4 or IPv6, addresses read from it) and an L4 length.
pub fn pseudo_header(pkt: &[u8], v6: bool, protocol: u8, l4_len: u16) -> Sum {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    Sum::default().add_bytes(addrs).add_u16(u16::from(protocol)).add_u16(l4_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071's straightforward definition: big-endian 16-bit words, folded.
    fn reference(parts: &[&[u8]]) -> u16 {
        let mut acc: u64 = 0;
        for p in parts {
            for c in p.chunks(2) {
                acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let s = Sum::default().add_bytes(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(u16::from_be_bytes(s.folded_bytes()), 0xddf2);
        assert_eq!(s.checksum_bytes(), [!0xdd, !0xf2]);
    }

    #[test]
    fn ipv4_header_checksum_validates() {
        // A real IPv4 header (with its checksum b861) sums to all ones.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(Sum::default().add_bytes(&h).is_valid());
        let mut bad = h;
        bad[15] ^= 1;
        assert!(!Sum::default().add_bytes(&bad).is_valid());
    }

    proptest! {
        #[test]
        fn matches_the_reference(
            a in proptest::collection::vec(any::<u8>(), 0..64).prop_map(|mut v| { v.truncate(v.len() & !1); v }),
            b in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let s = Sum::default().add_bytes(&a).add_bytes(&b);
            prop_assert_eq!(u16::from_be_bytes(s.folded_bytes()), reference(&[&a, &b]));
        }
    }
}

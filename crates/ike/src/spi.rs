//! SPI allocation. Every SPI this node hands out carries the cluster node-id in its top four bits, so
//! members of a cluster can never allocate the same SPI (RFC 6027 section 3.9); the rest is random.

use tandem_crypto::Random;

#[derive(Debug, Clone, Copy)]
pub struct SpiAllocator {
    node_id: u8,
}

impl SpiAllocator {
    pub fn new(node_id: u8) -> Self {
        SpiAllocator { node_id: node_id & 0x0f }
    }

    /// A non-zero IKE SPI for which `in_use` is false.
    pub fn ike_spi(&self, rng: &mut dyn Random, in_use: impl Fn(u64) -> bool) -> u64 {
        loop {
            let mut spi = rng.u64();
            if self.node_id != 0 {
                spi = (spi & !(0xf << 60)) | ((self.node_id as u64) << 60);
            }
            if spi != 0 && !in_use(spi) {
                return spi;
            }
        }
    }

    /// An ESP SPI >= 256 (0-255 are reserved, RFC 4303 section 2.1) for which `in_use` is false.
    pub fn esp_spi(&self, rng: &mut dyn Random, in_use: impl Fn(u32) -> bool) -> u32 {
        loop {
            let mut spi = rng.u32();
            if self.node_id != 0 {
                spi = (spi & !(0xf << 28)) | ((self.node_id as u32) << 28);
            }
            if spi >= 256 && !in_use(spi) {
                return spi;
            }
        }
    }
}

/// The node-id carried by an SPI (0 when allocated by a standalone node or by a peer).
pub fn node_of_esp_spi(spi: u32) -> u8 {
    (spi >> 28) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_in_the_top_bits_and_reserved_values_are_avoided() {
        let a = SpiAllocator::new(5);
        let r = &mut tandem_crypto::SeededRandom::from_u64(1);
        for _ in 0..1000 {
            let s = a.esp_spi(r, |_| false);
            assert_eq!(node_of_esp_spi(s), 5);
            assert!(s >= 256);
            assert_eq!(a.ike_spi(r, |_| false) >> 60, 5);
        }
        let taken = a.esp_spi(r, |_| false);
        assert_ne!(a.esp_spi(r, |s| s == taken), taken);
    }
}

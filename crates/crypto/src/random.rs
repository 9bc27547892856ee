//! The one source of randomness of the protocol code. Nonces, SPIs, IVs, private keys and jitter are
//! all drawn from a [`Random`] that the caller injects: the operating system's generator (through
//! aws-lc-rs) in production, a seeded ChaCha20 generator in tests and simulations, so that a run of
//! any number of endpoints is reproducible bit for bit from one seed.

use aws_lc_rs::rand::SecureRandom;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// A source of random bytes. Implementations must be cryptographically strong: what they produce
/// becomes key material.
pub trait Random: Send {
    fn fill(&mut self, dst: &mut [u8]);

    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_be_bytes(b)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_be_bytes(b)
    }

    fn vec(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }

    /// A value in `0..=max` (uniform up to a bias below 2^-32 for the small ranges used here).
    fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.u64();
        }
        self.u64() % (max + 1)
    }

    /// A fresh 32-byte seed, to give a sub-component a generator of its own.
    fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.fill(&mut s);
        s
    }
}

/// The operating system's generator. Its failing is unrecoverable for a security gateway, so this
/// aborts loudly rather than continue with predictable values.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        aws_lc_rs::rand::SystemRandom::new().fill(dst).expect("system random generator failed");
    }
}

/// A ChaCha20 stream from a seed: reproducible, for tests and simulations only.
pub struct SeededRandom(rand_chacha::ChaCha20Rng);

impl SeededRandom {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SeededRandom(rand_chacha::ChaCha20Rng::from_seed(seed))
    }

    /// A generator from a short seed, as printed by a failing simulation.
    pub fn from_u64(seed: u64) -> Self {
        SeededRandom(rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }
}

impl std::fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededRandom")
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_its_stream_and_seeds_differ() {
        let (mut a, mut b, mut c) =
            (SeededRandom::from_u64(7), SeededRandom::from_u64(7), SeededRandom::from_u64(8));
        let (x, y, z) = (a.vec(64), b.vec(64), c.vec(64));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert!(a.up_to(9) <= 9);
        assert_ne!(OsRandom.vec(32), OsRandom.vec(32));
    }
}

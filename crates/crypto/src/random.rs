//! Randomness from the operating system (through aws-lc-rs). Nonces, SPIs, IVs and private keys all
//! come from here.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Fill `buf` with random bytes. The system generator failing is unrecoverable for a security
/// gateway, so this aborts loudly rather than continue with predictable values.
pub fn fill_random(buf: &mut [u8]) {
    SystemRandom::new().fill(buf).expect("system random generator failed");
}

pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    u64::from_be_bytes(b)
}

pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    fill_random(&mut b);
    u32::from_be_bytes(b)
}

/// A fresh random vector of `len` bytes.
pub fn random_vec(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(&mut v);
    v
}

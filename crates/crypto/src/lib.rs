//! tandem-crypto: the algorithm registry, strongSwan-style proposal strings, prf+ and IKEv2 key
//! derivation, Diffie-Hellman groups, and SK payload protection, all on aws-lc-rs.

pub mod alg;

pub use alg::{DhGroup, EncrAlg, Esn, IntegAlg, PrfAlg, Proposal};

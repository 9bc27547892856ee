//! tandem-crypto: the algorithm registry, strongSwan-style proposal strings, prf+ and IKEv2 key
//! derivation, Diffie-Hellman groups, and SK payload protection, all on aws-lc-rs.
#![forbid(unsafe_code)]

pub mod alg;
pub mod dh;
pub mod keys;
pub mod prf;
pub mod proposal;
pub mod random;
pub mod sk;

pub use alg::{DhGroup, EncrAlg, Esn, IntegAlg, PrfAlg, Proposal};
pub use dh::KeyExchange;
pub use keys::{
    derive_child_keys, derive_ike_keys, derive_rekeyed_ike_keys, psk_auth, signed_octets, ChildKeys, IkeKeys,
    IkeSuite,
};
pub use prf::{integ_compute, integ_verify, prf, prf_parts, prf_plus};
pub use proposal::{parse_esp_proposal, parse_ike_proposal, ProposalError};
pub use random::{OsRandom, Random, SeededRandom};
pub use sk::SkCrypter;

/// Errors of cryptographic operations. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("requested {0} bytes of key material, more than prf+ can produce")]
    KeyMaterialTooLong(usize),
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    #[error("bad padding")]
    BadPadding,
    #[error("bad length")]
    BadLength,
    #[error("bad key length")]
    BadKeyLength,
    #[error("an AEAD cipher cannot be combined with an integrity algorithm")]
    AeadWithIntegrity,
    #[error("a non-AEAD cipher needs an integrity algorithm")]
    MissingIntegrity,
    #[error("encryption failed")]
    EncryptionFailed,
    #[error("key generation failed")]
    KeyGeneration,
    #[error("invalid key exchange public value")]
    InvalidPublicValue,
    #[error("unsupported key exchange method {0}")]
    UnsupportedGroup(u16),
}

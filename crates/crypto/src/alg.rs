//! The algorithm registry: every transform tandem implements, with its IKEv2 transform ID (RFC 7296
//! section 3.3.2, IANA "IKEv2 Transform Type N Transform IDs") and its key and block sizes.
//!
//! These enums are shared by the IKE engine (negotiation, SK payload protection) and the ESP dataplane
//! (packet protection), so both name algorithms the same way.

use serde::{Deserialize, Serialize};

/// IKEv2 transform types (RFC 7296 section 3.3.2).
pub mod transform_type {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    /// Key exchange method (formerly "Diffie-Hellman group").
    pub const KE: u8 = 4;
    /// Extended Sequence Numbers.
    pub const ESN: u8 = 5;
}

/// Transform attribute type for the key length (RFC 7296 section 3.3.5), always TV format.
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Encryption algorithms (transform type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncrAlg {
    /// ENCR_AES_CBC (12) with a 128-bit key.
    #[serde(rename = "aes128")]
    AesCbc128,
    /// ENCR_AES_CBC (12) with a 192-bit key.
    #[serde(rename = "aes192")]
    AesCbc192,
    /// ENCR_AES_CBC (12) with a 256-bit key.
    #[serde(rename = "aes256")]
    AesCbc256,
    /// ENCR_AES_GCM_16 (20) with a 128-bit key (RFC 4106 / RFC 5282).
    #[serde(rename = "aes128gcm16")]
    AesGcm16_128,
    /// ENCR_AES_GCM_16 (20) with a 256-bit key.
    #[serde(rename = "aes256gcm16")]
    AesGcm16_256,
    /// ENCR_CHACHA20_POLY1305 (28), RFC 7634.
    #[serde(rename = "chacha20poly1305")]
    ChaCha20Poly1305,
}

impl EncrAlg {
    pub const ALL: [EncrAlg; 6] = [
        EncrAlg::AesCbc128,
        EncrAlg::AesCbc192,
        EncrAlg::AesCbc256,
        EncrAlg::AesGcm16_128,
        EncrAlg::AesGcm16_256,
        EncrAlg::ChaCha20Poly1305,
    ];

    /// IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            EncrAlg::AesCbc128 | EncrAlg::AesCbc192 | EncrAlg::AesCbc256 => 12,
            EncrAlg::AesGcm16_128 | EncrAlg::AesGcm16_256 => 20,
            EncrAlg::ChaCha20Poly1305 => 28,
        }
    }

    /// Value of the Key Length attribute in bits, for algorithms that carry one.
    pub fn key_length_attr(self) -> Option<u16> {
        match self {
            EncrAlg::AesCbc128 | EncrAlg::AesGcm16_128 => Some(128),
            EncrAlg::AesCbc192 => Some(192),
            EncrAlg::AesCbc256 | EncrAlg::AesGcm16_256 => Some(256),
            EncrAlg::ChaCha20Poly1305 => None,
        }
    }

    /// Map a transform ID and optional Key Length attribute to an algorithm we implement.
    pub fn from_transform(id: u16, key_bits: Option<u16>) -> Option<EncrAlg> {
        match (id, key_bits) {
            (12, Some(128)) => Some(EncrAlg::AesCbc128),
            (12, Some(192)) => Some(EncrAlg::AesCbc192),
            (12, Some(256)) => Some(EncrAlg::AesCbc256),
            (20, Some(128)) => Some(EncrAlg::AesGcm16_128),
            (20, Some(256)) => Some(EncrAlg::AesGcm16_256),
            (28, None) => Some(EncrAlg::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// True for combined-mode (AEAD) algorithms, which take no separate integrity transform.
    pub fn is_aead(self) -> bool {
        matches!(self, EncrAlg::AesGcm16_128 | EncrAlg::AesGcm16_256 | EncrAlg::ChaCha20Poly1305)
    }

    /// Keying material taken from prf+ for this algorithm, in bytes. For AEADs this includes the
    /// 4-byte salt (RFC 4106 section 8.1, RFC 7634 section 2).
    pub fn key_material_len(self) -> usize {
        match self {
            EncrAlg::AesCbc128 => 16,
            EncrAlg::AesCbc192 => 24,
            EncrAlg::AesCbc256 => 32,
            EncrAlg::AesGcm16_128 => 16 + 4,
            EncrAlg::AesGcm16_256 => 32 + 4,
            EncrAlg::ChaCha20Poly1305 => 32 + 4,
        }
    }

    /// Length of the explicit IV carried in each packet/SK payload.
    pub fn iv_len(self) -> usize {
        match self {
            EncrAlg::AesCbc128 | EncrAlg::AesCbc192 | EncrAlg::AesCbc256 => 16,
            _ => 8,
        }
    }

    /// Cipher block size used for padding (1 means stream-like; ESP still pads to 4).
    pub fn block_size(self) -> usize {
        match self {
            EncrAlg::AesCbc128 | EncrAlg::AesCbc192 | EncrAlg::AesCbc256 => 16,
            _ => 1,
        }
    }

    /// Length of the AEAD tag (0 for non-AEAD ciphers, whose ICV comes from the integrity transform).
    pub fn tag_len(self) -> usize {
        if self.is_aead() {
            16
        } else {
            0
        }
    }

    /// strongSwan keyword, used in logs, the API and proposal strings.
    pub fn name(self) -> &'static str {
        match self {
            EncrAlg::AesCbc128 => "aes128",
            EncrAlg::AesCbc192 => "aes192",
            EncrAlg::AesCbc256 => "aes256",
            EncrAlg::AesGcm16_128 => "aes128gcm16",
            EncrAlg::AesGcm16_256 => "aes256gcm16",
            EncrAlg::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }
}

/// Pseudo-random functions (transform type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrfAlg {
    /// PRF_HMAC_SHA1 (2).
    #[serde(rename = "prfsha1")]
    HmacSha1,
    /// PRF_HMAC_SHA2_256 (5).
    #[serde(rename = "prfsha256")]
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (6).
    #[serde(rename = "prfsha384")]
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (7).
    #[serde(rename = "prfsha512")]
    HmacSha512,
}

impl PrfAlg {
    pub const ALL: [PrfAlg; 4] =
        [PrfAlg::HmacSha1, PrfAlg::HmacSha256, PrfAlg::HmacSha384, PrfAlg::HmacSha512];

    pub fn transform_id(self) -> u16 {
        match self {
            PrfAlg::HmacSha1 => 2,
            PrfAlg::HmacSha256 => 5,
            PrfAlg::HmacSha384 => 6,
            PrfAlg::HmacSha512 => 7,
        }
    }

    pub fn from_transform(id: u16) -> Option<PrfAlg> {
        PrfAlg::ALL.into_iter().find(|p| p.transform_id() == id)
    }

    /// Output length in bytes; also the preferred key length (RFC 7296 section 2.13).
    pub fn output_len(self) -> usize {
        match self {
            PrfAlg::HmacSha1 => 20,
            PrfAlg::HmacSha256 => 32,
            PrfAlg::HmacSha384 => 48,
            PrfAlg::HmacSha512 => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PrfAlg::HmacSha1 => "prfsha1",
            PrfAlg::HmacSha256 => "prfsha256",
            PrfAlg::HmacSha384 => "prfsha384",
            PrfAlg::HmacSha512 => "prfsha512",
        }
    }
}

/// Integrity algorithms (transform type 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IntegAlg {
    /// AUTH_HMAC_SHA1_96 (2).
    #[serde(rename = "sha1")]
    HmacSha1_96,
    /// AUTH_HMAC_SHA2_256_128 (12), RFC 4868.
    #[serde(rename = "sha256")]
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (13).
    #[serde(rename = "sha384")]
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (14).
    #[serde(rename = "sha512")]
    HmacSha512_256,
}

impl IntegAlg {
    pub const ALL: [IntegAlg; 4] =
        [IntegAlg::HmacSha1_96, IntegAlg::HmacSha256_128, IntegAlg::HmacSha384_192, IntegAlg::HmacSha512_256];

    pub fn transform_id(self) -> u16 {
        match self {
            IntegAlg::HmacSha1_96 => 2,
            IntegAlg::HmacSha256_128 => 12,
            IntegAlg::HmacSha384_192 => 13,
            IntegAlg::HmacSha512_256 => 14,
        }
    }

    pub fn from_transform(id: u16) -> Option<IntegAlg> {
        IntegAlg::ALL.into_iter().find(|p| p.transform_id() == id)
    }

    /// Key length in bytes (the HMAC hash output length).
    pub fn key_len(self) -> usize {
        match self {
            IntegAlg::HmacSha1_96 => 20,
            IntegAlg::HmacSha256_128 => 32,
            IntegAlg::HmacSha384_192 => 48,
            IntegAlg::HmacSha512_256 => 64,
        }
    }

    /// Truncated ICV length in bytes.
    pub fn icv_len(self) -> usize {
        match self {
            IntegAlg::HmacSha1_96 => 12,
            IntegAlg::HmacSha256_128 => 16,
            IntegAlg::HmacSha384_192 => 24,
            IntegAlg::HmacSha512_256 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IntegAlg::HmacSha1_96 => "sha1",
            IntegAlg::HmacSha256_128 => "sha256",
            IntegAlg::HmacSha384_192 => "sha384",
            IntegAlg::HmacSha512_256 => "sha512",
        }
    }
}

/// Key exchange methods (transform type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DhGroup {
    /// 2048-bit MODP group (14), RFC 3526.
    #[serde(rename = "modp2048")]
    Modp2048,
    /// 3072-bit MODP group (15), RFC 3526.
    #[serde(rename = "modp3072")]
    Modp3072,
    /// 256-bit random ECP group (19), RFC 5903.
    #[serde(rename = "ecp256")]
    Ecp256,
    /// 384-bit random ECP group (20), RFC 5903.
    #[serde(rename = "ecp384")]
    Ecp384,
    /// Curve25519 (31), RFC 8031.
    #[serde(rename = "curve25519")]
    Curve25519,
}

impl DhGroup {
    pub const ALL: [DhGroup; 5] =
        [DhGroup::Modp2048, DhGroup::Modp3072, DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Curve25519];

    pub fn transform_id(self) -> u16 {
        match self {
            DhGroup::Modp2048 => 14,
            DhGroup::Modp3072 => 15,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Curve25519 => 31,
        }
    }

    pub fn from_transform(id: u16) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|p| p.transform_id() == id)
    }

    /// Length of the public value in the KE payload (RFC 7296 / RFC 5903 / RFC 8031 encodings).
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => 256,
            DhGroup::Modp3072 => 384,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Modp2048 => "modp2048",
            DhGroup::Modp3072 => "modp3072",
            DhGroup::Ecp256 => "ecp256",
            DhGroup::Ecp384 => "ecp384",
            DhGroup::Curve25519 => "curve25519",
        }
    }
}

/// Extended Sequence Numbers transform (type 5): 0 = no ESN, 1 = ESN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Esn {
    #[serde(rename = "noesn")]
    No,
    #[serde(rename = "esn")]
    Yes,
}

impl Esn {
    pub fn transform_id(self) -> u16 {
        match self {
            Esn::No => 0,
            Esn::Yes => 1,
        }
    }

    pub fn from_transform(id: u16) -> Option<Esn> {
        match id {
            0 => Some(Esn::No),
            1 => Some(Esn::Yes),
            _ => None,
        }
    }
}

/// One proposal: the algorithms offered together. Empty lists mean "not part of this proposal"
/// (e.g. `integ` is empty for AEAD proposals, `dh` is empty for ESP proposals without PFS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Proposal {
    pub encr: Vec<EncrAlg>,
    pub prf: Vec<PrfAlg>,
    pub integ: Vec<IntegAlg>,
    pub dh: Vec<DhGroup>,
    pub esn: Vec<Esn>,
}

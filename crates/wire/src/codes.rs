//! IKEv2 code points as newtypes with named constants. Unknown values are kept, so they round-trip
//! and can be shown in logs as numbers.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! code {
    ($(#[$m:meta])* $name:ident($t:ty) { $($c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        pub struct $name(pub $t);
        #[allow(missing_docs)]
        impl $name {
            $(pub const $c: $name = $name($v);)*
            /// The registered name, if known.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($v => Some(stringify!($c)),)* _ => None }
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() { Some(n) => f.write_str(n), None => write!(f, "{}({})", stringify!($name), self.0) }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Debug::fmt(self, f) }
        }
    };
}

code!(
    /// Exchange types (RFC 7296 section 3.1).
    ExchangeType(u8) { IKE_SA_INIT = 34, IKE_AUTH = 35, CREATE_CHILD_SA = 36, INFORMATIONAL = 37 }
);

code!(
    /// Payload types (RFC 7296 section 3.2, RFC 7383).
    PayloadType(u8) {
        NONE = 0, SA = 33, KE = 34, IDI = 35, IDR = 36, CERT = 37, CERTREQ = 38, AUTH = 39, NONCE = 40,
        NOTIFY = 41, DELETE = 42, VENDOR_ID = 43, TSI = 44, TSR = 45, SK = 46, CP = 47, EAP = 48, SKF = 53,
    }
);

code!(
    /// Notify message types (RFC 7296 section 3.10.1 and later RFCs).
    NotifyType(u16) {
        UNSUPPORTED_CRITICAL_PAYLOAD = 1, INVALID_IKE_SPI = 4, INVALID_MAJOR_VERSION = 5, INVALID_SYNTAX = 7,
        INVALID_MESSAGE_ID = 9, INVALID_SPI = 11, NO_PROPOSAL_CHOSEN = 14, INVALID_KE_PAYLOAD = 17,
        AUTHENTICATION_FAILED = 24, SINGLE_PAIR_REQUIRED = 34, NO_ADDITIONAL_SAS = 35,
        INTERNAL_ADDRESS_FAILURE = 36, FAILED_CP_REQUIRED = 37, TS_UNACCEPTABLE = 38, INVALID_SELECTORS = 39,
        TEMPORARY_FAILURE = 43, CHILD_SA_NOT_FOUND = 44,
        INITIAL_CONTACT = 16384, SET_WINDOW_SIZE = 16385, ADDITIONAL_TS_POSSIBLE = 16386, IPCOMP_SUPPORTED = 16387,
        NAT_DETECTION_SOURCE_IP = 16388, NAT_DETECTION_DESTINATION_IP = 16389, COOKIE = 16390,
        USE_TRANSPORT_MODE = 16391, HTTP_CERT_LOOKUP_SUPPORTED = 16392, REKEY_SA = 16393,
        ESP_TFC_PADDING_NOT_SUPPORTED = 16394, NON_FIRST_FRAGMENTS_ALSO = 16395, MOBIKE_SUPPORTED = 16396,
        MULTIPLE_AUTH_SUPPORTED = 16404, REDIRECT_SUPPORTED = 16406, CHILDLESS_IKEV2_SUPPORTED = 16418,
        IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420, IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED = 16421,
        IKEV2_MESSAGE_ID_SYNC = 16422, IPSEC_REPLAY_COUNTER_SYNC = 16423, IKEV2_FRAGMENTATION_SUPPORTED = 16430,
        SIGNATURE_HASH_ALGORITHMS = 16431,
    }
);

impl NotifyType {
    /// Types below 16384 report errors (RFC 7296 section 3.10.1).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

code!(
    /// Security protocol identifiers.
    ProtocolId(u8) { NONE = 0, IKE = 1, AH = 2, ESP = 3 }
);

code!(
    /// Identification types (RFC 7296 section 3.5).
    IdType(u8) {
        IPV4_ADDR = 1, FQDN = 2, RFC822_ADDR = 3, IPV6_ADDR = 5, DER_ASN1_DN = 9, DER_ASN1_GN = 10, KEY_ID = 11,
    }
);

code!(
    /// Authentication methods (RFC 7296 section 3.8, RFC 4754, RFC 7427).
    AuthMethod(u8) {
        RSA_DIGITAL_SIGNATURE = 1, SHARED_KEY_MESSAGE_INTEGRITY_CODE = 2, DSS_DIGITAL_SIGNATURE = 3,
        ECDSA_SHA256_P256 = 9, ECDSA_SHA384_P384 = 10, ECDSA_SHA512_P521 = 11, DIGITAL_SIGNATURE = 14,
    }
);

code!(
    /// Configuration payload types (RFC 7296 section 3.15).
    CfgType(u8) { CFG_REQUEST = 1, CFG_REPLY = 2, CFG_SET = 3, CFG_ACK = 4 }
);

/// IKE header flags.
pub mod flags {
    pub const INITIATOR: u8 = 0x08;
    pub const VERSION: u8 = 0x10;
    pub const RESPONSE: u8 = 0x20;
}

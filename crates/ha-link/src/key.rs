//! A node's identity (a self-signed certificate and its private key) and the pin its peer checks.
//!
//! The certificate only carries the public key through TLS: nothing in it is trusted except the
//! key itself, which the peer compares with the pin its operator configured. That is why the pin is
//! the SHA-256 of the certificate's SubjectPublicKeyInfo, not of the whole certificate: it names the
//! key, so the same key re-wrapped in a new certificate keeps its pin.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ParsedCertificate;
use rustls::sign::{CertifiedKey, SigningKey};
use zeroize::{Zeroize, Zeroizing};

const CERT_LABEL: &str = "CERTIFICATE";
const KEY_LABEL: &str = "PRIVATE KEY";
/// Subject alternative name of generated certificates. Never checked (the pin is), but a name
/// makes the certificate recognisable in a packet capture or `openssl x509` output.
const CERT_NAME: &str = "tandem-ha";
/// Key files are refused above this size: a node key file is well under 2 KiB, and a bound keeps a
/// wrong path (a log, a device) from being read into memory whole.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Errors of key generation, loading and pin parsing. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("generating the node key failed: {0}")]
    Generate(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: readable by group or others (mode {mode:03o}); it holds a private key, chmod 600 it", path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: larger than {MAX_KEY_FILE} bytes, not a node key file", path.display())]
    TooLarge { path: PathBuf },
    #[error("node key PEM: {0}")]
    Pem(&'static str),
    #[error("node certificate: {0}")]
    Certificate(String),
    #[error("node private key: {0}")]
    PrivateKey(String),
    #[error("node private key does not belong to the certificate")]
    Mismatch,
    #[error("pin: {0}")]
    Pin(&'static str),
}

/// SHA-256 of a node's SubjectPublicKeyInfo (DER), the value an operator pastes into the peer's
/// `peer-pin`. Displayed and parsed as 64 lowercase hex digits.
///
/// Pins are public (they name a public key), so comparing them needs no constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Pin(out)
    }

    /// The pin of the key in a DER certificate (any issuer; only the key counts).
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, KeyError> {
        let der = CertificateDer::from(cert_der);
        let parsed = ParsedCertificate::try_from(&der).map_err(|e| KeyError::Certificate(e.to_string()))?;
        Ok(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Pin(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Pin {
    fn from(bytes: [u8; 32]) -> Self {
        Pin(bytes)
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

impl FromStr for Pin {
    type Err = KeyError;

    /// Exactly 64 hex digits, either case, surrounding whitespace ignored. Colon-separated
    /// fingerprints are refused on purpose: `openssl x509 -fingerprint` prints those, and they hash
    /// the whole certificate, not the key, so they would never match.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(KeyError::Pin("expected 64 hex digits (SHA-256 of the peer's SubjectPublicKeyInfo)"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::Pin("not a hex string"))?;
        Ok(Pin(out))
    }
}

/// A node's identity: a self-signed certificate and its PKCS#8 private key.
///
/// The private key bytes live in a [`Zeroizing`] buffer, wiped when the key is dropped; `Debug`
/// shows only the pin.
#[derive(Clone)]
pub struct NodeKey {
    cert: CertificateDer<'static>,
    pkcs8: Zeroizing<Vec<u8>>,
    pin: Pin,
}

/// Generates a fresh node identity: an ECDSA P-256 key (widely supported, fast to verify) in a
/// self-signed certificate. Expiry is irrelevant (the pin is the trust), so rcgen's default validity
/// is kept.
pub fn keygen() -> Result<NodeKey, KeyError> {
    NodeKey::generate()
}

impl NodeKey {
    /// See [`keygen`].
    pub fn generate() -> Result<Self, KeyError> {
        let gen_err = |e: rcgen::Error| KeyError::Generate(e.to_string());
        let mut key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()]).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, CERT_NAME);
        let cert = params.self_signed(&key_pair);
        let pkcs8 = Zeroizing::new(key_pair.serialized_der().to_vec());
        key_pair.zeroize();
        let cert = cert.map_err(gen_err)?;
        Self::from_der(cert.der().to_vec(), pkcs8)
    }

    /// Builds a key from a DER certificate and a DER PKCS#8 private key, checking that the key
    /// parses and belongs to the certificate (so a mixed-up file fails here, not at the peer).
    pub fn from_der(cert_der: Vec<u8>, pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let pin = Pin::of_certificate(&cert_der)?;
        let key = NodeKey { cert: CertificateDer::from(cert_der), pkcs8, pin };
        let certified = CertifiedKey::new(vec![key.cert.clone()], key.signing_key()?);
        certified.keys_match().map_err(|_| KeyError::Mismatch)?;
        Ok(key)
    }

    /// This node's pin, for the peer's `peer-pin`; `to_string()` gives the lowercase hex form.
    pub fn pin(&self) -> Pin {
        self.pin
    }

    /// The DER certificate (public).
    pub fn certificate_der(&self) -> &[u8] {
        self.cert.as_ref()
    }

    /// The signing key as rustls wants it. Parsed from a borrow of the zeroizing buffer, so no
    /// unwiped copy of the DER is made; aws-lc wipes its own copy when it frees the key.
    pub(crate) fn signing_key(&self) -> Result<Arc<dyn SigningKey>, KeyError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(&self.pkcs8[..]));
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
            .map_err(|e| KeyError::PrivateKey(e.to_string()))
    }

    pub(crate) fn certified_key(&self) -> Result<Arc<CertifiedKey>, KeyError> {
        Ok(Arc::new(CertifiedKey::new(vec![self.cert.clone()], self.signing_key()?)))
    }

    /// Both parts as one PEM text: a CERTIFICATE block, then a PRIVATE KEY (PKCS#8) block. The
    /// buffer is wiped on drop; it is sized up front so that growing it leaves no stray copies.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let cap = pem_len(self.cert.len(), CERT_LABEL) + pem_len(self.pkcs8.len(), KEY_LABEL);
        let mut out = Zeroizing::new(String::with_capacity(cap));
        push_pem(&mut out, CERT_LABEL, self.cert.as_ref());
        push_pem(&mut out, KEY_LABEL, &self.pkcs8);
        out
    }

    /// Parses the text [`to_pem`](Self::to_pem) writes: exactly one CERTIFICATE and one PRIVATE KEY
    /// (PKCS#8) block, in any order; text outside blocks is ignored (RFC 7468 allows it).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let mut cert: Option<Vec<u8>> = None;
        let mut key: Option<Zeroizing<Vec<u8>>> = None;
        let mut open: Option<(&str, Zeroizing<String>)> = None;
        for line in pem.lines() {
            let line = line.trim();
            if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
                if open.is_some() {
                    return Err(KeyError::Pem("BEGIN inside an unfinished block"));
                }
                open = Some((label, Zeroizing::new(String::with_capacity(pem.len()))));
            } else if let Some(label) = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----")) {
                let Some((begun, body)) = open.take() else {
                    return Err(KeyError::Pem("END without BEGIN"));
                };
                if begun != label {
                    return Err(KeyError::Pem("END label differs from its BEGIN"));
                }
                let der = decode_b64(&body)?;
                match label {
                    CERT_LABEL if cert.is_none() => cert = Some(der.to_vec()),
                    KEY_LABEL if key.is_none() => key = Some(der),
                    CERT_LABEL | KEY_LABEL => return Err(KeyError::Pem("more than one block of a kind")),
                    _ => return Err(KeyError::Pem("unexpected block (only CERTIFICATE and PRIVATE KEY)")),
                }
            } else if let Some((_, body)) = open.as_mut() {
                body.push_str(line);
            }
        }
        if open.is_some() {
            return Err(KeyError::Pem("unterminated block"));
        }
        let cert = cert.ok_or(KeyError::Pem("no CERTIFICATE block"))?;
        let key = key.ok_or(KeyError::Pem("no PRIVATE KEY block"))?;
        Self::from_der(cert, key)
    }

    /// Writes [`to_pem`](Self::to_pem) to `path` with mode 0600: into a new file beside it that is
    /// created 0600 (so the key is never readable by others, even for an instant), then renamed
    /// over `path` (so a crash leaves the old file or the new one, never half of one).
    pub fn write_pem_file(&self, path: &Path) -> Result<(), KeyError> {
        let io_err = |source| KeyError::Io { path: path.to_path_buf(), source };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // A leftover from an interrupted write would make create_new fail forever.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(self.to_pem().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err)
    }

    /// Reads a file written by [`write_pem_file`](Self::write_pem_file). Refuses a file that group
    /// or others may read, as ssh does: such a key must be treated as leaked.
    pub fn read_pem_file(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io { path: path.to_path_buf(), source };
        let mut f = fs::File::open(path).map_err(io_err)?;
        let meta = f.metadata().map_err(io_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(KeyError::TooLarge { path: path.to_path_buf() });
        }
        let mut text = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
        (&mut f).take(MAX_KEY_FILE + 1).read_to_end(&mut text).map_err(io_err)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(KeyError::TooLarge { path: path.to_path_buf() });
        }
        let text = std::str::from_utf8(&text).map_err(|_| KeyError::Pem("not UTF-8 text"))?;
        Self::from_pem(text)
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").field("pin", &self.pin).finish_non_exhaustive()
    }
}

/// Bytes one PEM block of `der_len` bytes takes, 64 base64 characters a line.
fn pem_len(der_len: usize, label: &str) -> usize {
    let b64 = der_len.div_ceil(3) * 4;
    2 * (label.len() + 17) + b64 + b64.div_ceil(64)
}

fn push_pem(out: &mut String, label: &str, der: &[u8]) {
    let b64 = Zeroizing::new(B64.encode(der));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every byte is one char.
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// Decodes into a buffer allocated once at its final upper bound and wiped on drop.
fn decode_b64(body: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut out = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(body.len())]);
    let n = B64.decode_slice(body.as_bytes(), &mut out[..]).map_err(|_| KeyError::Pem("bad base64"))?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_pin_and_key() {
        let k = keygen().unwrap();
        let pem = k.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let back = NodeKey::from_pem(&pem).unwrap();
        assert_eq!(back.pin(), k.pin());
        assert_eq!(back.certificate_der(), k.certificate_der());
        assert_eq!(&back.pkcs8[..], &k.pkcs8[..]);
        assert!(pem.len() <= pem_len(k.cert.len(), CERT_LABEL) + pem_len(k.pkcs8.len(), KEY_LABEL));
    }

    #[test]
    fn pin_is_sha256_of_spki_and_parses_back() {
        let k = keygen().unwrap();
        let hexpin = k.pin().to_string();
        assert_eq!(hexpin.len(), 64);
        assert_eq!(hexpin, hexpin.to_lowercase());
        assert_eq!(hexpin.parse::<Pin>().unwrap(), k.pin());
        assert_eq!(format!("  {}\n", hexpin.to_uppercase()).parse::<Pin>().unwrap(), k.pin());
        // Not the hash of the whole certificate.
        assert_ne!(k.pin(), Pin::of_spki(k.certificate_der()));
        assert!("ab:cd".parse::<Pin>().is_err());
        assert!("zz".repeat(32).parse::<Pin>().is_err());
        assert!(keygen().unwrap().pin() != k.pin());
    }

    #[test]
    fn mismatched_key_and_certificate_are_refused() {
        let a = keygen().unwrap();
        let b = keygen().unwrap();
        let err = NodeKey::from_der(a.certificate_der().to_vec(), b.pkcs8.clone()).unwrap_err();
        assert!(matches!(err, KeyError::Mismatch), "{err}");
    }

    #[test]
    fn broken_pem_is_an_error_not_a_panic() {
        let k = keygen().unwrap();
        let pem = k.to_pem();
        let cert_only: String =
            pem.split_inclusive('\n').take_while(|l| !l.contains("BEGIN PRIVATE")).collect();
        for bad in [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            "-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            cert_only.as_str(),
            &format!("{}{}", &*pem, &*pem),
        ] {
            assert!(NodeKey::from_pem(bad).is_err(), "accepted {bad:?}");
        }
        // Truncations at every line boundary are errors too.
        let lines: Vec<&str> = pem.split_inclusive('\n').collect();
        for n in 0..lines.len() {
            assert!(NodeKey::from_pem(&lines[..n].concat()).is_err());
        }
    }

    #[test]
    fn key_file_is_0600_and_loose_modes_are_refused() {
        let dir = std::env::temp_dir().join(format!("tandem-ha-link-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.pem");
        let k = keygen().unwrap();
        k.write_pem_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(NodeKey::read_pem_file(&path).unwrap().pin(), k.pin());
        // Overwriting keeps 0600 and replaces the content.
        let k2 = keygen().unwrap();
        k2.write_pem_file(&path).unwrap();
        assert_eq!(NodeKey::read_pem_file(&path).unwrap().pin(), k2.pin());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(NodeKey::read_pem_file(&path), Err(KeyError::Permissions { mode: 0o640, .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = keygen().unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&k.pin().to_string()));
        assert!(!dbg.contains(&hex::encode(&k.pkcs8[..8])));
    }
}

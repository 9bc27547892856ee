//! TLS 1.3 for the link: both sides present a certificate, and each accepts exactly one key, the
//! pinned one. There is no CA, no name check and no expiry check: the two nodes are configured
//! with each other's pin, and that is the whole trust decision.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::sign::SingleCertAndKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::key::{NodeKey, Pin};
use crate::stats::Counters;
use crate::LinkError;

/// ALPN protocol of the link. A version bump of the framing changes it, so mismatched versions
/// fail in the handshake instead of misparsing each other.
pub const ALPN: &[u8] = b"tandem-ha/1";
/// The name the client asks for. Never checked by [`PinVerifier`]; QUIC just needs one.
pub(crate) const SERVER_NAME: &str = "tandem-ha";

/// aws-lc-rs with TLS 1.3 suites only, and the X25519+ML-KEM-768 hybrid first: the link carries
/// SA keys, whose confidentiality must outlive a future quantum attack on a recorded session.
/// Plain X25519 stays as a fallback so a build without the hybrid still interoperates.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut p = default_provider();
    p.cipher_suites.retain(|s| s.tls13().is_some());
    p.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
    Arc::new(p)
}

/// Accepts exactly the pinned key, as client and as server verifier. Signatures are checked by
/// rustls' own TLS 1.3 code against the key in the certificate, so possession is proven.
#[derive(Debug)]
struct PinVerifier {
    pin: Pin,
    algs: WebPkiSupportedAlgorithms,
    stats: Arc<Counters>,
}

impl PinVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        // Our nodes send one self-signed certificate; anything else is not a tandem peer.
        if !intermediates.is_empty() {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        let parsed = ParsedCertificate::try_from(end_entity).inspect_err(|_| {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        })?;
        let got = Pin::of_spki(parsed.subject_public_key_info().as_ref());
        if got != self.pin {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(expected = %self.pin, presented = %got, "HA link: peer presented a key that is not the pinned one");
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(())
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

fn no_tls12() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not allowed on the HA link".into())
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for PinVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn verifier(provider: &CryptoProvider, peer_pin: Pin, stats: &Arc<Counters>) -> Arc<PinVerifier> {
    Arc::new(PinVerifier {
        pin: peer_pin,
        algs: provider.signature_verification_algorithms,
        stats: stats.clone(),
    })
}

fn tls_err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Tls(e.to_string())
}

/// Server side. Session tickets are off: a resumed session would skip the certificate, and so the
/// pin check, on every reconnect after the first.
pub(crate) fn server_config(
    key: &NodeKey,
    peer_pin: Pin,
    stats: &Arc<Counters>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, LinkError> {
    let quic = QuicServerConfig::try_from(server_tls(key, peer_pin, stats)?).map_err(tls_err)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}

fn server_tls(
    key: &NodeKey,
    peer_pin: Pin,
    stats: &Arc<Counters>,
) -> Result<rustls::ServerConfig, LinkError> {
    let provider = provider();
    let certified = key.certified_key().map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier(&provider, peer_pin, stats))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// Client side; resumption and 0-RTT off for the same reason as on the server.
pub(crate) fn client_config(
    key: &NodeKey,
    peer_pin: Pin,
    stats: &Arc<Counters>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, LinkError> {
    let quic = QuicClientConfig::try_from(client_tls(key, peer_pin, stats)?).map_err(tls_err)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}

fn client_tls(
    key: &NodeKey,
    peer_pin: Pin,
    stats: &Arc<Counters>,
) -> Result<rustls::ClientConfig, LinkError> {
    let provider = provider();
    let certified = key.certified_key().map_err(tls_err)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier(&provider, peer_pin, stats))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    Ok(tls)
}

/// Defence in depth after the handshake: the negotiated ALPN and the presented key, read back from
/// the connection, must be ours. The verifiers already enforce both; this catches a future
/// configuration change that would silently bypass them.
pub(crate) fn confirm_peer(conn: &quinn::Connection, peer_pin: Pin) -> Result<(), &'static str> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() != Some(ALPN) {
        return Err("ALPN is not tandem-ha/1");
    }
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no peer certificate")?;
    let first = certs.first().ok_or("no peer certificate")?;
    match Pin::of_certificate(first.as_ref()) {
        Ok(p) if p == peer_pin => Ok(()),
        _ => Err("peer certificate is not the pinned key"),
    }
}

#[cfg(test)]
mod tests {
    //! Raw quinn endpoints with the link's TLS configurations, to try peers the link itself never
    //! produces: another ALPN, no client certificate, a different key.
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Runs one handshake; returns whether each side ended up with a working connection.
    async fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> (bool, bool) {
        let server_cfg =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server).unwrap()));
        let server_ep = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let client_ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let client_cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).unwrap()));
        let addr = server_ep.local_addr().unwrap();
        let server_side = async {
            let incoming = server_ep.accept().await.unwrap();
            // Kept (not dropped) so the connection stays open until the client has looked at it.
            incoming.accept().unwrap().await.ok()
        };
        let client_side = async {
            let conn = client_ep.connect_with(client_cfg, addr, SERVER_NAME).unwrap().await.ok()?;
            // In TLS 1.3 the client is done before the server has checked its certificate:
            // a refusal shows up as the connection closing right after.
            match timeout(Duration::from_millis(300), conn.closed()).await {
                Ok(_) => None,
                Err(_) => Some(conn),
            }
        };
        let (s, c) = timeout(LIMIT, async { tokio::join!(server_side, client_side) }).await.unwrap();
        (c.is_some(), s.is_some())
    }

    fn keys() -> (NodeKey, NodeKey, Arc<Counters>) {
        (crate::keygen().unwrap(), crate::keygen().unwrap(), Arc::new(Counters::default()))
    }

    #[tokio::test]
    async fn pinned_keys_connect() {
        let (c, s, st) = keys();
        let r = handshake(client_tls(&c, s.pin(), &st).unwrap(), server_tls(&s, c.pin(), &st).unwrap()).await;
        assert_eq!(r, (true, true));
        assert_eq!(st.auth_failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn other_alpn_is_refused() {
        let (c, s, st) = keys();
        let mut client = client_tls(&c, s.pin(), &st).unwrap();
        client.alpn_protocols = vec![b"tandem-ha/2".to_vec()];
        assert_eq!(handshake(client, server_tls(&s, c.pin(), &st).unwrap()).await, (false, false));
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let (c, s, st) = keys();
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier(&provider(), s.pin(), &st))
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN.to_vec()];
        assert_eq!(handshake(client, server_tls(&s, c.pin(), &st).unwrap()).await, (false, false));
    }

    #[tokio::test]
    async fn unpinned_server_key_is_refused_by_the_client() {
        let (c, s, st) = keys();
        let impostor = crate::keygen().unwrap();
        let client = client_tls(&c, s.pin(), &st).unwrap();
        let r = handshake(client, server_tls(&impostor, c.pin(), &Default::default()).unwrap()).await;
        assert_eq!(r, (false, false));
        assert_eq!(st.auth_failures.load(Ordering::Relaxed), 1);
    }
}

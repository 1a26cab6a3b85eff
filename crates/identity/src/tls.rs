//! rustls configurations for SPIFFE mutual TLS.
//!
//! Both sides present the newest SVID of the [`SvidStore`] at every handshake
//! (certificate resolvers read the store, so a rotation takes effect at the
//! next handshake and established connections are untouched), and verify the
//! peer with [`validate_svid`] against the store's current bundles. The DNS
//! server name is ignored: SPIFFE authentication is by the URI SAN. Only the
//! ring provider is used; TLS 1.3 and 1.2; ALPN `h2`. Session resumption is
//! off on both sides, so that every connection is authenticated by a full
//! handshake against the current SVID and bundles.
//!
//! A refusal by the verifiers is logged once (`refused peer svid`, with the
//! reason) and returned as `rustls::Error::InvalidCertificate(
//! CertificateError::Other(OtherError(..)))` holding the [`SvidError`] itself,
//! which callers can downcast.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

use crate::error::{IdentityError, SvidError};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::SvidStore;
use crate::validate::{AllowedTrustDomains, PeerRole, validate_svid};

/// ALPN protocols offered and accepted: gRPC runs over HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Which server identities a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpectedPeer {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any of these IDs.
    AnyOf(Vec<SpiffeId>),
    /// Any ID of the client's own trust domain.
    AnyInTrustDomain,
}

impl ExpectedPeer {
    /// The trust domains whose SVIDs may be accepted at all.
    fn allowed(&self, local: &TrustDomain) -> AllowedTrustDomains {
        match self {
            Self::Exact(id) => AllowedTrustDomains::Only(vec![id.trust_domain().clone()]),
            Self::AnyOf(ids) => {
                let mut tds = ids.iter().map(|id| id.trust_domain().clone()).collect::<Vec<_>>();
                tds.sort();
                tds.dedup();
                AllowedTrustDomains::Only(tds)
            }
            Self::AnyInTrustDomain => AllowedTrustDomains::local(local),
        }
    }

    fn matches(&self, id: &SpiffeId, local: &TrustDomain) -> bool {
        match self {
            Self::Exact(expected) => expected == id,
            Self::AnyOf(list) => list.contains(id),
            Self::AnyInTrustDomain => id.trust_domain() == local,
        }
    }
}

/// The server side of SPIFFE mTLS: client certificate required and verified
/// with [`validate_svid`] (role client, the store's own trust domain only);
/// the server certificate is the store's newest SVID at each handshake.
pub fn server_config(store: Arc<SvidStore>) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(SvidClientVerifier {
        // The store's ID, hence its trust domain, is fixed for its life.
        allowed: AllowedTrustDomains::local(store.trust_domain()),
        store: Arc::clone(&store),
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(NewestSvid { store }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a resumed session skips certificates, so it would carry
    // the identity of an earlier handshake past a rotation (the old SVID, the
    // old bundles). Every connection is a full handshake with fresh checks.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of SPIFFE mTLS: presents the store's newest SVID at each
/// handshake, verifies the server chain with [`validate_svid`] (role server)
/// and then that its ID matches `expected`.
pub fn client_config(
    store: Arc<SvidStore>,
    expected: ExpectedPeer,
) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(SvidServerVerifier {
        allowed: expected.allowed(store.trust_domain()),
        store: Arc::clone(&store),
        expected,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(NewestSvid { store }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption, for the same reason as on the server side.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Refuses a peer: one warning per refusal, and the reason kept inside the
/// rustls error so that the handshake error names it.
fn refuse(err: SvidError) -> rustls::Error {
    tracing::warn!(reason = %err, "refused peer svid");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

fn full_chain<'a>(
    end_entity: &CertificateDer<'a>,
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    chain
}

/// Presents the store's newest SVID, read at every handshake.
#[derive(Debug)]
struct NewestSvid {
    store: Arc<SvidStore>,
}

impl ResolvesServerCert for NewestSvid {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.svid().certified_key())
    }
}

impl ResolvesClientCert for NewestSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.store.svid().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client SVIDs on the server side.
#[derive(Debug)]
struct SvidClientVerifier {
    store: Arc<SvidStore>,
    /// The store's own trust domain only.
    allowed: AllowedTrustDomains,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // A client that sends no certificate is refused by rustls before this
    // verifier runs, with `Error::NoCertificatesPresented`.
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = full_chain(end_entity, intermediates);
        match validate_svid(
            &chain,
            &self.store.bundles(),
            &self.allowed,
            now,
            PeerRole::Client,
        ) {
            Ok(id) => {
                tracing::debug!(peer = %id, "accepted client svid");
                Ok(ClientCertVerified::assertion())
            }
            Err(err) => Err(refuse(err)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies server SVIDs on the client side.
#[derive(Debug)]
struct SvidServerVerifier {
    store: Arc<SvidStore>,
    expected: ExpectedPeer,
    /// The trust domains `expected` allows, made once.
    allowed: AllowedTrustDomains,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // SPIFFE authenticates by the URI SAN; the DNS name only routes.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = full_chain(end_entity, intermediates);
        let local = self.store.trust_domain();
        let id = validate_svid(
            &chain,
            &self.store.bundles(),
            &self.allowed,
            now,
            PeerRole::Server,
        )
        .map_err(refuse)?;
        if !self.expected.matches(&id, local) {
            return Err(refuse(SvidError::UnexpectedPeer { id }));
        }
        tracing::debug!(peer = %id, "accepted server svid");
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Logs why a TLS handshake failed, for refusals rustls decides before the
/// SVID verifiers run (most importantly a client that sends no certificate:
/// rustls refuses it with `NoCertificatesPresented`, since client
/// certificates are mandatory). Refusals made by the verifiers were already
/// logged with their reason and are not logged twice. Call it with the error
/// of a failed `accept`/`connect`.
pub fn log_refused_handshake(err: &std::io::Error) {
    let rustls_err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(_))) => {}
        Some(rustls::Error::NoCertificatesPresented) => {
            tracing::warn!(reason = %SvidError::EmptyChain, "refused peer svid");
        }
        Some(other) => tracing::warn!(reason = %other, "refused tls handshake"),
        // The peer went away mid-handshake (reset, EOF): nothing was
        // refused, and a client that drops connections must not be able to
        // flood the log at warn level.
        None if peer_went_away(err) => {
            tracing::debug!(reason = %err, "tls handshake abandoned by the peer");
        }
        None => tracing::warn!(reason = %err, "refused tls handshake"),
    }
}

/// Whether a failed handshake is the peer going away (reset, EOF, broken
/// pipe, aborted) rather than a refusal.
pub fn peer_went_away(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

//! X509-SVID validation, rule for rule as the SPIFFE X509-SVID specification
//! states it (and as go-spiffe's `x509svid.Verify` applies it):
//!
//! 1. the leaf carries exactly one URI SAN, a SPIFFE ID with a non-root path
//!    (other SAN types may coexist);
//! 2. the leaf is not a CA, its keyUsage is present and critical, has
//!    digitalSignature, and has neither keyCertSign nor cRLSign;
//! 3. the leaf is not self-signed (an SVID is issued by a signing authority);
//! 4. the leaf's trust domain is allowed here and has a bundle;
//! 5. the chain verifies with webpki against trust anchors made from that one
//!    bundle only, never a union of bundles, at the given time and for the
//!    extended key usage of the role (checked only when the leaf has EKUs).
//!
//! Every failing rule has its own [`SvidError`] variant.
//!
//! Rules 1 and 2 depend on the leaf's bytes alone, and a workload meets the
//! same few peer SVIDs at handshake after handshake: a leaf that passed them
//! is remembered by its exact DER ([`CHECKED_LEAVES`]), so that the next
//! handshake with the very same certificate, and [`peer_spiffe_id`] after
//! it, read the SPIFFE ID without parsing the certificate again. Any other
//! byte string is parsed and checked in full. Rules 3 to 5 (self-signature,
//! trust domain, bundle, chain, time, EKU) run at every call.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};

use crate::bundle::BundleSet;
use crate::error::SvidError;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Which side of a TLS connection the presented chain authenticates, hence
/// which extended key usage it must allow (when it has an EKU extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// A TLS client: id-kp-clientAuth.
    Client,
    /// A TLS server: id-kp-serverAuth.
    Server,
}

/// The trust domains whose SVIDs an endpoint accepts. The default everywhere
/// in this crate is the local trust domain only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllowedTrustDomains {
    /// Exactly these trust domains.
    Only(Vec<TrustDomain>),
}

impl AllowedTrustDomains {
    /// The local trust domain only.
    pub fn local(td: &TrustDomain) -> Self {
        Self::Only(vec![td.clone()])
    }

    /// Whether `td` is accepted.
    pub fn allows(&self, td: &TrustDomain) -> bool {
        match self {
            Self::Only(list) => list.contains(td),
        }
    }
}

/// The extended key usage a chain is verified for. The store checks its own
/// SVID for either role, since a workload both serves and dials.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Usage {
    Role(PeerRole),
    EitherRole,
}

/// Full X509-SVID validation of a presented chain (leaf first) against the
/// bundle set, at `now`, for `role`. Returns the leaf's SPIFFE ID.
pub fn validate_svid(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    allowed: &AllowedTrustDomains,
    now: UnixTime,
    role: PeerRole,
) -> Result<SpiffeId, SvidError> {
    validate_chain(chain, bundles, allowed, now, Usage::Role(role))
}

/// The SPIFFE ID in the URI SAN of an already-verified leaf (`certs[0]`).
///
/// This only reads the ID; it proves nothing unless the chain went through
/// [`validate_svid`] (as it does in a handshake with this crate's configs).
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, SvidError> {
    let leaf = certs.first().ok_or(SvidError::EmptyChain)?;
    // The leaf of a handshake has just been checked by `validate_svid`,
    // which remembered it: its ID is read back without a second parse.
    if let Some(id) = CHECKED_LEAVES.get(leaf.as_ref()) {
        return Ok(id);
    }
    let x509 = parse(leaf, 0)?;
    leaf_spiffe_id(&x509)
}

/// How many leaves [`CHECKED_LEAVES`] holds at most; a full memo is emptied
/// and refilled, so a peer presenting ever new certificates costs a parse
/// per handshake (as without the memo) and never more memory than this.
const MAX_CHECKED_LEAVES: usize = 256;

/// Leaves that passed [`check_leaf`], by their exact DER, with the SPIFFE ID
/// it returned. `check_leaf` reads nothing but those bytes, so for the same
/// bytes it would return the same ID again: the memo skips only re-parsing.
/// The key is the whole certificate, not a digest, serial or name: a
/// certificate that differs in any byte is another key, parsed and checked
/// in full. Refused leaves are not remembered.
static CHECKED_LEAVES: LazyLock<LeafMemo> = LazyLock::new(LeafMemo::default);

#[derive(Debug, Default)]
struct LeafMemo {
    entries: Mutex<HashMap<Box<[u8]>, SpiffeId>>,
}

impl LeafMemo {
    fn get(&self, der: &[u8]) -> Option<SpiffeId> {
        self.lock().get(der).cloned()
    }

    fn insert(&self, der: &[u8], id: &SpiffeId) {
        let mut entries = self.lock();
        if entries.len() >= MAX_CHECKED_LEAVES {
            entries.clear();
        }
        entries.insert(der.into(), id.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, SpiffeId>> {
        // Entries are inserted whole: a panic elsewhere cannot leave one
        // half-written, so a poisoned map is still sound.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`check_leaf`] of `leaf`, parsed from its DER unless these exact bytes
/// passed it before ([`CHECKED_LEAVES`]).
fn checked_leaf(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    if let Some(id) = CHECKED_LEAVES.get(leaf.as_ref()) {
        return Ok(id);
    }
    let x509 = parse(leaf, 0)?;
    let id = check_leaf(&x509)?;
    CHECKED_LEAVES.insert(leaf.as_ref(), &id);
    Ok(id)
}

pub(crate) fn validate_chain(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    allowed: &AllowedTrustDomains,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    for (index, cert) in chain.iter().enumerate().skip(1) {
        parse(cert, index)?;
    }
    let id = checked_leaf(leaf)?;
    let ee = EndEntityCert::try_from(leaf).map_err(|err| SvidError::Malformed {
        index: 0,
        reason: format!("{err:?}"),
    })?;
    if is_self_signed(leaf, &ee, now) {
        return Err(SvidError::SelfSignedLeaf);
    }

    let td = id.trust_domain();
    if !allowed.allows(td) {
        return Err(SvidError::TrustDomainNotAllowed {
            trust_domain: td.clone(),
        });
    }
    let bundle = bundles.get(td).ok_or_else(|| SvidError::NoBundle {
        trust_domain: td.clone(),
    })?;
    if bundle.roots().iter().any(|root| root.as_ref() == leaf.as_ref()) {
        return Err(SvidError::SelfSignedLeaf);
    }
    // Anchors from the leaf's own trust domain only: a root trusted for
    // another trust domain must never vouch for this one.
    let anchors = bundle
        .roots()
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect::<Vec<TrustAnchor<'_>>>();

    let verify = |eku: KeyUsage| {
        ee.verify_for_usage(algorithms(), &anchors, intermediates, now, eku, None, None)
            .map(|_| ())
    };
    let result = match usage {
        Usage::Role(PeerRole::Client) => verify(KeyUsage::client_auth()),
        Usage::Role(PeerRole::Server) => verify(KeyUsage::server_auth()),
        Usage::EitherRole => match verify(KeyUsage::server_auth()) {
            Err(err) if is_eku_error(&err) => verify(KeyUsage::client_auth()),
            other => other,
        },
    };
    result.map_err(|err| map_webpki_error(err, td, usage))?;
    Ok(id)
}

/// Every check of the leaf that needs neither a bundle nor a clock.
pub(crate) fn check_leaf(x509: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let id = leaf_spiffe_id(x509)?;
    if id.path().is_empty() {
        return Err(SvidError::RootSpiffeId { id });
    }

    let basic = x509
        .get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS)
        .map_err(|_| SvidError::UnparseableExtension {
            extension: "basic constraints",
        })?;
    if let Some(ext) = basic {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(SvidError::LeafIsCa),
            ParsedExtension::BasicConstraints(_) => {}
            _ => {
                return Err(SvidError::UnparseableExtension {
                    extension: "basic constraints",
                });
            }
        }
    }

    let key_usage = x509
        .get_extension_unique(&OID_X509_EXT_KEY_USAGE)
        .map_err(|_| SvidError::UnparseableExtension {
            extension: "key usage",
        })?
        .ok_or(SvidError::MissingKeyUsage)?;
    let ParsedExtension::KeyUsage(ku) = key_usage.parsed_extension() else {
        return Err(SvidError::UnparseableExtension {
            extension: "key usage",
        });
    };
    if !key_usage.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    if !ku.digital_signature() {
        return Err(SvidError::MissingDigitalSignature);
    }
    if ku.key_cert_sign() {
        return Err(SvidError::LeafHasKeyCertSign);
    }
    if ku.crl_sign() {
        return Err(SvidError::LeafHasCrlSign);
    }
    Ok(id)
}

/// The one URI SAN of a leaf, as a SPIFFE ID.
fn leaf_spiffe_id(x509: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = x509
        .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
        .map_err(|_| SvidError::UnparseableExtension {
            extension: "subject alternative name",
        })?
        .ok_or(SvidError::NoUriSan)?;
    let ParsedExtension::SubjectAlternativeName(names) = san.parsed_extension() else {
        return Err(SvidError::UnparseableExtension {
            extension: "subject alternative name",
        });
    };
    let uris = names
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect::<Vec<&str>>();
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(SvidError::InvalidSpiffeId),
        more => Err(SvidError::MultipleUriSans { count: more.len() }),
    }
}

/// A self-issued leaf whose signature verifies with its own key: it vouches
/// for itself, which the X509-SVID model (leaf issued by a signing authority
/// of the trust domain) never allows, whatever the bundle holds.
fn is_self_signed(leaf: &CertificateDer<'_>, ee: &EndEntityCert<'_>, now: UnixTime) -> bool {
    // Self-issued: the subject Name is byte for byte the issuer Name.
    if ee.subject() != ee.issuer() {
        return false;
    }
    let Ok(anchor) = webpki::anchor_from_trusted_cert(leaf) else {
        return false;
    };
    let anchors = [anchor];
    [KeyUsage::server_auth(), KeyUsage::client_auth()]
        .into_iter()
        .any(|eku| {
            match ee.verify_for_usage(algorithms(), &anchors, &[], now, eku, None, None) {
                Ok(_) => true,
                // The signature was checked and held; only time or EKU failed.
                Err(err) => {
                    matches!(
                        err,
                        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }
                    ) || is_eku_error(&err)
                }
            }
        })
}

fn parse<'a>(cert: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>, SvidError> {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok(([], x509)) => Ok(x509),
        Ok(_) => Err(SvidError::Malformed {
            index,
            reason: "trailing data after certificate".into(),
        }),
        Err(err) => Err(SvidError::Malformed {
            index,
            reason: err.to_string(),
        }),
    }
}

/// The signature algorithms of the ring provider, the only provider in use
/// (taken from it once: building the provider allocates its suite lists).
pub(crate) fn algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    static ALGORITHMS: LazyLock<&'static [&'static dyn SignatureVerificationAlgorithm]> =
        LazyLock::new(|| {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all
        });
    *ALGORITHMS
}

#[expect(
    deprecated,
    reason = "webpki still returns the deprecated variant in some paths"
)]
fn is_eku_error(err: &webpki::Error) -> bool {
    matches!(
        err,
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_)
    )
}

fn map_webpki_error(err: webpki::Error, td: &TrustDomain, usage: Usage) -> SvidError {
    match err {
        webpki::Error::CertExpired { time, not_after } => SvidError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        webpki::Error::CertNotValidYet { time, not_before } => SvidError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        webpki::Error::UnknownIssuer => SvidError::UnknownIssuer {
            trust_domain: td.clone(),
        },
        webpki::Error::InvalidSignatureForPublicKey => SvidError::BadSignature,
        err if is_eku_error(&err) => SvidError::ExtendedKeyUsage {
            role: match usage {
                Usage::Role(PeerRole::Client) => "client",
                Usage::Role(PeerRole::Server) => "server",
                Usage::EitherRole => "client or server",
            },
        },
        other => SvidError::ChainInvalid(other),
    }
}

//! The crate's errors: [`SvidError`] says why a presented X509-SVID chain is
//! refused, [`IdentityError`] why identity material cannot be loaded, built or
//! rotated.

use std::time::Duration;

use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a presented X509-SVID (a certificate chain, leaf first) is refused.
///
/// Every rule of the X509-SVID specification that can fail has its own
/// variant, so that a refusal always names its reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The peer presented no certificate at all.
    #[error("peer presented no certificate")]
    EmptyChain,
    /// A certificate of the chain is not parseable DER X.509.
    #[error("certificate {index} of the chain cannot be parsed: {reason}")]
    Malformed {
        /// Position in the chain, 0 being the leaf.
        index: usize,
        /// The parser's description of the problem.
        reason: String,
    },
    /// An extension the checks rely on is present but cannot be parsed, or is present twice.
    #[error("leaf {extension} extension cannot be parsed or is duplicated")]
    UnparseableExtension {
        /// The extension's name.
        extension: &'static str,
    },
    /// The leaf has no URI SAN.
    #[error("leaf certificate has no uri san")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("leaf certificate has {count} uri sans, exactly one is allowed")]
    MultipleUriSans {
        /// How many URI SANs the leaf carries.
        count: usize,
    },
    /// The leaf's URI SAN is not a SPIFFE ID.
    #[error("leaf uri san is not a valid spiffe id: {0}")]
    InvalidSpiffeId(#[source] SpiffeIdError),
    /// The leaf's SPIFFE ID is the trust domain's own ID (no path): that is not a workload.
    #[error("leaf spiffe id {id} has no path: a leaf svid needs a non-root path")]
    RootSpiffeId {
        /// The refused ID.
        id: SpiffeId,
    },
    /// The leaf's trust domain is not one this endpoint accepts.
    #[error("trust domain {trust_domain} is not allowed")]
    TrustDomainNotAllowed {
        /// The leaf's trust domain.
        trust_domain: TrustDomain,
    },
    /// There is no bundle for the leaf's trust domain.
    #[error("no trust bundle for trust domain {trust_domain}")]
    NoBundle {
        /// The leaf's trust domain.
        trust_domain: TrustDomain,
    },
    /// The leaf is a CA certificate (basicConstraints CA=true).
    #[error("leaf certificate is a ca (basic constraints ca=true)")]
    LeafIsCa,
    /// The leaf has no keyUsage extension.
    #[error("leaf certificate has no key usage extension")]
    MissingKeyUsage,
    /// The leaf's keyUsage extension is not marked critical.
    #[error("leaf certificate key usage extension is not critical")]
    KeyUsageNotCritical,
    /// The leaf's keyUsage lacks digitalSignature.
    #[error("leaf certificate key usage lacks digitalSignature")]
    MissingDigitalSignature,
    /// The leaf's keyUsage has keyCertSign.
    #[error("leaf certificate key usage has keyCertSign")]
    LeafHasKeyCertSign,
    /// The leaf's keyUsage has cRLSign.
    #[error("leaf certificate key usage has cRLSign")]
    LeafHasCrlSign,
    /// The leaf is self-issued, or is itself one of the trust anchors: an SVID
    /// must be issued by a signing authority (a non-root path).
    #[error("leaf certificate is self-signed or a root: an svid needs a non-root path")]
    SelfSignedLeaf,
    /// The validity period of a certificate of the chain ended before `now`.
    #[error("certificate expired at unix time {not_after} (now {now})")]
    Expired {
        /// End of validity, seconds since the Unix epoch.
        not_after: u64,
        /// The verification time, seconds since the Unix epoch.
        now: u64,
    },
    /// The validity period of a certificate of the chain starts after `now`.
    #[error("certificate is not valid before unix time {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity, seconds since the Unix epoch.
        not_before: u64,
        /// The verification time, seconds since the Unix epoch.
        now: u64,
    },
    /// The chain does not lead to a root of the leaf's own trust domain bundle.
    #[error("chain does not lead to a root in the bundle of trust domain {trust_domain}")]
    UnknownIssuer {
        /// The leaf's trust domain, whose bundle was used.
        trust_domain: TrustDomain,
    },
    /// A signature in the chain does not verify.
    #[error("a signature in the certificate chain is invalid")]
    BadSignature,
    /// The leaf's extendedKeyUsage does not allow the role it is used for.
    #[error("leaf extended key usage does not allow {role} authentication")]
    ExtendedKeyUsage {
        /// `client` or `server`.
        role: &'static str,
    },
    /// Any other reason the path validation failed.
    #[error("certificate chain verification failed: {0}")]
    ChainInvalid(#[source] webpki::Error),
    /// The server's SPIFFE ID is valid but is not the one this client expects.
    #[error("peer spiffe id {id} is not the expected peer")]
    UnexpectedPeer {
        /// The ID the server presented.
        id: SpiffeId,
    },
}

/// Why identity material cannot be loaded, built or rotated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A SPIFFE ID or trust domain name is malformed.
    #[error("invalid spiffe id: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    /// PEM input cannot be decoded.
    #[error("invalid pem ({what}): {reason}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// The decoder's description of the problem.
        reason: String,
    },
    /// DER input is not a sequence of X.509 certificates.
    #[error("invalid der certificate ({what}): {reason}")]
    Der {
        /// What was being read.
        what: &'static str,
        /// The parser's description of the problem.
        reason: String,
    },
    /// A bundle has no root certificate.
    #[error("bundle for trust domain {trust_domain} has no root certificate")]
    EmptyBundle {
        /// The bundle's trust domain.
        trust_domain: TrustDomain,
    },
    /// A bundle root cannot serve as a trust anchor.
    #[error("bundle root {index} of trust domain {trust_domain} is not a usable trust anchor: {source}")]
    BadRoot {
        /// The bundle's trust domain.
        trust_domain: TrustDomain,
        /// Position of the root in the bundle.
        index: usize,
        /// Why webpki refused it.
        #[source]
        source: webpki::Error,
    },
    /// An SVID chain is empty.
    #[error("svid certificate chain is empty")]
    EmptyChain,
    /// The SVID private key cannot be loaded, or does not match the leaf.
    #[error("svid private key is unusable: {0}")]
    PrivateKey(#[source] rustls::Error),
    /// The SVID does not satisfy the X509-SVID specification or does not
    /// chain to its trust domain's bundle.
    #[error("svid refused: {0}")]
    Svid(#[from] SvidError),
    /// The SVID's SPIFFE ID is not the workload's own ID.
    #[error("svid spiffe id {found} is not the workload's id {expected}")]
    IdMismatch {
        /// The workload's ID.
        expected: SpiffeId,
        /// The ID the SVID carries.
        found: SpiffeId,
    },
    /// A rustls configuration cannot be built.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// No Workload API endpoint was given and `SPIFFE_ENDPOINT_SOCKET` is unset.
    #[error("no workload api endpoint: pass one or set SPIFFE_ENDPOINT_SOCKET")]
    NoEndpoint,
    /// The Workload API endpoint is not one of the forms the SPIFFE Workload
    /// Endpoint specification (and go-spiffe) accepts: `unix:/path`,
    /// `unix:///path`, `tcp://IP:PORT`.
    #[error("invalid workload api endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is refused.
        reason: String,
    },
    /// The Workload API failed.
    #[error("workload api: {0}")]
    WorkloadApi(#[source] spiffe::X509SourceError),
    /// No SVID arrived from the Workload API within the allowed time.
    /// `answer` is what the Workload API said to one more request made at
    /// the deadline: the reason an operator needs (no socket, not
    /// registered, a refusal with its gRPC status and message).
    #[error("no svid from the workload api at {endpoint} within {waited:?}: {answer}")]
    Timeout {
        /// The endpoint as given.
        endpoint: String,
        /// How long the workload waited.
        waited: Duration,
        /// The Workload API's answer to the last request.
        answer: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// One example of every [`SvidError`] variant, derived from the enum
    /// itself: each row is a pattern and an example of it. The patterns form
    /// a `match` with no wildcard (allowed here, inside the crate, where
    /// `#[non_exhaustive]` does not apply), so a new variant is a compile
    /// error until it gets its row; and each example must match its own
    /// pattern, so no row can stand in for another.
    macro_rules! one_of_each {
        ($($pattern:pat => $example:expr),+ $(,)?) => {{
            // Never called: it exists for the compiler's exhaustiveness check.
            #[allow(dead_code, reason = "only compiled, for exhaustiveness")]
            fn exhaustive(error: &SvidError) {
                match error {
                    $($pattern => {})+
                }
            }
            vec![$({
                let example: SvidError = $example;
                assert!(
                    matches!(example, $pattern),
                    "{example:?} is not an example of {}",
                    stringify!($pattern)
                );
                example
            }),+]
        }};
    }

    fn every_svid_error() -> Vec<SvidError> {
        let td = TrustDomain::parse("b.test").unwrap();
        let id = SpiffeId::parse("spiffe://b.test/workload").unwrap();
        one_of_each![
            SvidError::EmptyChain => SvidError::EmptyChain,
            SvidError::Malformed { .. } => SvidError::Malformed {
                index: 1,
                reason: "trailing data".to_owned(),
            },
            SvidError::UnparseableExtension { .. } => SvidError::UnparseableExtension {
                extension: "subjectAltName",
            },
            SvidError::NoUriSan => SvidError::NoUriSan,
            SvidError::MultipleUriSans { .. } => SvidError::MultipleUriSans { count: 2 },
            SvidError::InvalidSpiffeId(_) => SvidError::InvalidSpiffeId(SpiffeIdError::WrongScheme),
            SvidError::RootSpiffeId { .. } => SvidError::RootSpiffeId {
                id: SpiffeId::parse("spiffe://b.test").unwrap(),
            },
            SvidError::TrustDomainNotAllowed { .. } => SvidError::TrustDomainNotAllowed {
                trust_domain: td.clone(),
            },
            SvidError::NoBundle { .. } => SvidError::NoBundle {
                trust_domain: td.clone(),
            },
            SvidError::LeafIsCa => SvidError::LeafIsCa,
            SvidError::MissingKeyUsage => SvidError::MissingKeyUsage,
            SvidError::KeyUsageNotCritical => SvidError::KeyUsageNotCritical,
            SvidError::MissingDigitalSignature => SvidError::MissingDigitalSignature,
            SvidError::LeafHasKeyCertSign => SvidError::LeafHasKeyCertSign,
            SvidError::LeafHasCrlSign => SvidError::LeafHasCrlSign,
            SvidError::SelfSignedLeaf => SvidError::SelfSignedLeaf,
            SvidError::Expired { .. } => SvidError::Expired {
                not_after: 1_700_000_000,
                now: 1_800_000_000,
            },
            SvidError::NotYetValid { .. } => SvidError::NotYetValid {
                not_before: 1_900_000_000,
                now: 1_800_000_000,
            },
            SvidError::UnknownIssuer { .. } => SvidError::UnknownIssuer {
                trust_domain: td.clone(),
            },
            SvidError::BadSignature => SvidError::BadSignature,
            SvidError::ExtendedKeyUsage { .. } => SvidError::ExtendedKeyUsage { role: "client" },
            SvidError::ChainInvalid(_) => SvidError::ChainInvalid(webpki::Error::UnknownIssuer),
            SvidError::UnexpectedPeer { .. } => SvidError::UnexpectedPeer { id: id.clone() },
        ]
    }

    /// Every refusal reads as a lowercase reason (it is logged and carried
    /// in TLS errors mid-sentence), for every variant there is.
    #[test]
    fn every_svid_refusal_reads_as_a_lowercase_reason() {
        for error in every_svid_error() {
            let reason = error.to_string();
            assert!(
                reason.starts_with(|c: char| c.is_ascii_lowercase()),
                "{error:?}: {reason}"
            );
            assert!(!reason.ends_with('.'), "{error:?}: {reason}");
        }
    }
}

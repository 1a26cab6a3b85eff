//! Trust bundles: the X.509 roots of one trust domain, and the set of bundles
//! a workload knows, keyed by trust domain.
//!
//! Bundles are never pooled: a chain is verified only against the bundle of
//! its leaf's own trust domain, so a CA trusted for `a.example` can never mint
//! an identity that passes for `b.example`.

use std::collections::BTreeMap;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::error::IdentityError;
use crate::spiffe_id::TrustDomain;

/// One trust domain's X.509 roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
}

impl Bundle {
    /// Builds a bundle; every root must be a parseable certificate that can
    /// serve as a webpki trust anchor, and there must be at least one.
    pub fn new(td: TrustDomain, roots: Vec<CertificateDer<'static>>) -> Result<Self, IdentityError> {
        if roots.is_empty() {
            return Err(IdentityError::EmptyBundle { trust_domain: td });
        }
        for (index, root) in roots.iter().enumerate() {
            if let Err(source) = webpki::anchor_from_trusted_cert(root) {
                return Err(IdentityError::BadRoot {
                    trust_domain: td,
                    index,
                    source,
                });
            }
        }
        Ok(Self {
            trust_domain: td,
            roots,
        })
    }

    /// Builds a bundle from concatenated DER certificates (the Workload API encoding).
    pub fn from_der_concat(td: TrustDomain, der: &[u8]) -> Result<Self, IdentityError> {
        Self::new(td, split_der_certificates(der, "bundle")?)
    }

    /// Builds a bundle from PEM `CERTIFICATE` blocks (other blocks are ignored).
    pub fn from_pem(td: TrustDomain, pem: &[u8]) -> Result<Self, IdentityError> {
        Self::new(td, certificates_from_pem(pem, "bundle")?)
    }

    /// The trust domain these roots belong to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as PEM `CERTIFICATE` blocks, 64 columns.
    pub fn to_pem(&self) -> String {
        let mut out = String::new();
        for root in &self.roots {
            out.push_str(&certificate_pem(root));
        }
        out
    }
}

/// Bundles by trust domain.
///
/// Never pooled: a chain is verified only against the bundle of the SVID's
/// own trust domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

impl BundleSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bundle, replacing any previous bundle of the same trust domain.
    pub fn insert(&mut self, bundle: Bundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    /// The bundle of one trust domain.
    pub fn get(&self, td: &TrustDomain) -> Option<&Bundle> {
        self.bundles.get(td)
    }

    /// All bundles, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }

    /// How many trust domains have a bundle.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether the set has no bundle.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

/// Splits concatenated DER certificates, each parsed as X.509 to find where it ends.
pub(crate) fn split_der_certificates(
    mut der: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).map_err(|err| IdentityError::Der {
            what,
            reason: err.to_string(),
        })?;
        let used = der.len() - rest.len();
        certs.push(CertificateDer::from(der[..used].to_vec()));
        der = rest;
    }
    Ok(certs)
}

/// Reads every PEM `CERTIFICATE` block.
pub(crate) fn certificates_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| IdentityError::Pem {
            what,
            reason: err.to_string(),
        })
}

/// One certificate as a PEM block.
fn certificate_pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    // base64 output is ASCII, so splitting on byte boundaries never cuts a character.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

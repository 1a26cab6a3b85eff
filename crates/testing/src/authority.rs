//! The development authority of a test, and the identities it issues.

use std::sync::Arc;
use std::time::Duration;

use soma_ca::{Authority, AuthorityOptions, IssueOptions};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};

/// The trust domain of [`Ca::new`].
pub const TD: &str = "somastack.test";

/// A development authority in a temp dir (removed when dropped).
#[derive(Debug)]
pub struct Ca {
    /// The directory holding the authority's root key and certificate.
    pub dir: tempfile::TempDir,
    /// The authority itself.
    pub authority: Arc<Authority>,
}

impl Ca {
    /// A fresh authority for [`TD`].
    pub fn new() -> Self {
        Self::for_trust_domain(TD)
    }

    /// A fresh authority for the trust domain `name` (e.g. the
    /// `somastack.local` a `soma` process expects by default).
    pub fn for_trust_domain(name: &str) -> Self {
        Self::with_options(name, AuthorityOptions::default())
    }

    /// A fresh authority for the trust domain `name` with `options` (e.g. a
    /// root lifetime short enough to see it rotate).
    pub fn with_options(name: &str, options: AuthorityOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let authority =
            Authority::open_or_create_with(dir.path(), &TrustDomain::parse(name).unwrap(), options).unwrap();
        Self {
            dir,
            authority: Arc::new(authority),
        }
    }

    /// The SPIFFE ID `path` (e.g. `/svc/analytics`) of this trust domain.
    pub fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::from_parts(self.authority.trust_domain(), path).unwrap()
    }

    /// The bundle set holding this authority's root.
    pub fn bundles(&self) -> BundleSet {
        let mut set = BundleSet::new();
        set.insert(
            Bundle::from_der_concat(
                self.authority.trust_domain().clone(),
                &self.authority.bundle_der(),
            )
            .unwrap(),
        );
        set
    }

    /// A live identity for `path`: an SVID valid for `ttl`, and the bundles
    /// it verifies peers against.
    pub fn store(&self, path: &str, ttl: Duration) -> Arc<SvidStore> {
        let id = self.id(path);
        let issued = self.authority.issue(&id, ttl, IssueOptions::default()).unwrap();
        let svid = Svid::from_der(&issued.chain_der_concatenated(), &issued.key_pkcs8_der).unwrap();
        SvidStore::new(id, svid, self.bundles()).unwrap()
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

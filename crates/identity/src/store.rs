//! The live identity of a workload: its current SVID and bundles, swapped as
//! one unit on rotation.
//!
//! Rotation is validate-then-swap. A new SVID is checked completely (its ID is
//! the workload's own, it satisfies the X509-SVID rules, it chains to its own
//! trust domain's bundle *in the new bundle set*, and it is valid now) before
//! it replaces the current one; on any failure the current SVID and bundles
//! stay in place and the reason is logged. Readers take an `Arc` snapshot, so
//! a handshake in progress keeps the SVID it started with, every handshake
//! that starts after the swap gets the new one, and established connections
//! are never touched.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::UnixTime;

use crate::bundle::BundleSet;
use crate::error::IdentityError;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{Svid, hex};
use crate::validate::{AllowedTrustDomains, Usage, validate_chain};

/// The live identity of a workload: current SVID + bundles, swapped on rotation.
pub struct SvidStore {
    own_id: SpiffeId,
    current: RwLock<Arc<Current>>,
    rotations: AtomicU64,
    refusals: AtomicU64,
}

/// One consistent generation of identity material.
struct Current {
    svid: Arc<Svid>,
    bundles: Arc<BundleSet>,
}

impl SvidStore {
    /// Builds the store after validating `svid` against `bundles` and `own_id`.
    pub fn new(own_id: SpiffeId, svid: Svid, bundles: BundleSet) -> Result<Arc<Self>, IdentityError> {
        check(&own_id, &svid, &bundles)?;
        tracing::info!(
            spiffe_id = %own_id,
            serial = %hex(&svid.serial()),
            "svid loaded"
        );
        Ok(Arc::new(Self {
            own_id,
            current: RwLock::new(Arc::new(Current {
                svid: Arc::new(svid),
                bundles: Arc::new(bundles),
            })),
            rotations: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }))
    }

    /// Replaces the SVID and bundles, after validating the new SVID against
    /// the new bundles. On error the current material is kept and the reason logged.
    pub fn rotate(&self, svid: Svid, bundles: BundleSet) -> Result<(), IdentityError> {
        if let Err(err) = check(&self.own_id, &svid, &bundles) {
            tracing::warn!(
                spiffe_id = %self.own_id,
                refused_serial = %hex(&svid.serial()),
                current_serial = %hex(&self.current_serial()),
                reason = %err,
                "refused svid rotation, keeping the current svid"
            );
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        let serial = svid.serial();
        let next = Arc::new(Current {
            svid: Arc::new(svid),
            bundles: Arc::new(bundles),
        });
        // The lock only guards an `Arc` swap, which cannot be left half done,
        // so a poisoned lock still holds consistent material.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        self.rotations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(spiffe_id = %self.own_id, serial = %hex(&serial), "svid rotated");
        Ok(())
    }

    /// How many updates (a new SVID, or new bundles) replaced the material.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// How many updates were refused (the current material was kept).
    pub fn refused_rotations(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// The workload's SPIFFE ID (fixed for the life of the store).
    pub fn own_id(&self) -> &SpiffeId {
        &self.own_id
    }

    /// The workload's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.own_id.trust_domain()
    }

    /// The serial of the current SVID's leaf.
    pub fn current_serial(&self) -> Vec<u8> {
        self.snapshot().svid.serial()
    }

    /// The current bundles.
    pub fn bundles(&self) -> Arc<BundleSet> {
        Arc::clone(&self.snapshot().bundles)
    }

    /// The current SVID.
    pub fn svid(&self) -> Arc<Svid> {
        Arc::clone(&self.snapshot().svid)
    }

    fn snapshot(&self) -> Arc<Current> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.snapshot();
        f.debug_struct("SvidStore")
            .field("own_id", &self.own_id.to_string())
            .field("svid", &current.svid)
            .field(
                "trust_domains",
                &current
                    .bundles
                    .iter()
                    .map(|b| b.trust_domain().name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The workload's own SVID must carry its own ID and pass full validation
/// against its own trust domain's bundle, for either TLS role.
fn check(own_id: &SpiffeId, svid: &Svid, bundles: &BundleSet) -> Result<(), IdentityError> {
    if svid.spiffe_id() != own_id {
        return Err(IdentityError::IdMismatch {
            expected: own_id.clone(),
            found: svid.spiffe_id().clone(),
        });
    }
    validate_chain(
        svid.chain(),
        bundles,
        &AllowedTrustDomains::local(own_id.trust_domain()),
        UnixTime::now(),
        Usage::EitherRole,
    )?;
    Ok(())
}

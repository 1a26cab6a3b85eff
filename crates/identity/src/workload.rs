//! The workload's identity from the SPIFFE Workload API (a SPIRE agent in
//! production, `soma-ca` in development), through the `spiffe` crate's
//! `X509Source`.
//!
//! Every update of the source is converted and handed to
//! [`SvidStore::rotate`], which validates before it swaps: a bad update is
//! logged and the previous SVID keeps serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::bundle::{Bundle, BundleSet};
use crate::error::IdentityError;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::SvidStore;
use crate::svid::Svid;

/// The environment variable naming the Workload API socket.
const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Backoff between reconnection attempts to the Workload API.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Production/dev identity source: the SPIFFE Workload API through the
/// spiffe crate's `X509Source`, feeding an [`SvidStore`].
#[derive(Debug)]
pub struct WorkloadIdentity {
    store: Arc<SvidStore>,
    source: Arc<spiffe::X509Source>,
    updater: JoinHandle<()>,
}

impl WorkloadIdentity {
    /// Connects to the Workload API at `endpoint` (`unix:///abs/path.sock`,
    /// or `None` for `SPIFFE_ENDPOINT_SOCKET`), waits up to `timeout` for the
    /// first SVID (the source retries with backoff meanwhile), builds the
    /// store (its own ID is the first SVID's, which must equal `expected_id`
    /// when given), and spawns the task that rotates on every update.
    pub async fn connect(
        endpoint: Option<&str>,
        expected_id: Option<&SpiffeId>,
        timeout: Duration,
    ) -> Result<Self, IdentityError> {
        let endpoint = match endpoint {
            Some(endpoint) => endpoint.to_owned(),
            None => std::env::var(ENDPOINT_ENV).map_err(|_| IdentityError::NoEndpoint)?,
        };
        check_endpoint(&endpoint)?;

        let build = spiffe::X509Source::builder()
            .endpoint(&endpoint)
            .reconnect_backoff(MIN_BACKOFF, MAX_BACKOFF)
            .initial_sync_timeout(timeout)
            .build();
        // The outer timeout also bounds connection set-up, which the
        // source's own initial-sync timeout may not cover.
        let source = match tokio::time::timeout(timeout, build).await {
            Ok(Ok(source)) => Arc::new(source),
            Ok(Err(spiffe::X509SourceError::InitialSyncTimeout)) | Err(_) => {
                return Err(IdentityError::Timeout(timeout));
            }
            Ok(Err(err)) => return Err(IdentityError::WorkloadApi(err)),
        };

        let (svid, bundles) = match material(&source) {
            Ok(material) => material,
            Err(err) => {
                source.shutdown().await;
                return Err(err);
            }
        };
        let own_id = match expected_id {
            Some(expected) if expected != svid.spiffe_id() => {
                source.shutdown().await;
                return Err(IdentityError::IdMismatch {
                    expected: expected.clone(),
                    found: svid.spiffe_id().clone(),
                });
            }
            Some(expected) => expected.clone(),
            None => svid.spiffe_id().clone(),
        };
        let store = match SvidStore::new(own_id, svid, bundles) {
            Ok(store) => store,
            Err(err) => {
                source.shutdown().await;
                return Err(err);
            }
        };
        let updater = tokio::spawn(follow_updates(Arc::clone(&source), Arc::clone(&store)));
        Ok(Self {
            store,
            source,
            updater,
        })
    }

    /// The live identity.
    pub fn store(&self) -> Arc<SvidStore> {
        Arc::clone(&self.store)
    }

    /// Stops watching the Workload API. The store keeps its last SVID.
    pub async fn shutdown(self) {
        self.source.shutdown().await;
        // The update loop ends once the source is closed; waiting for it
        // ensures no rotation happens after shutdown returns.
        if let Err(err) = self.updater.await {
            tracing::warn!(error = %err, "workload api update task ended abnormally");
        }
    }
}

/// Rotates the store on every update until the source closes.
async fn follow_updates(source: Arc<spiffe::X509Source>, store: Arc<SvidStore>) {
    let mut updates = source.updated();
    while updates.changed().await.is_ok() {
        match material(&source) {
            // `rotate` logs its own refusals and keeps the old SVID.
            Ok((svid, bundles)) => {
                let _refused_and_logged = store.rotate(svid, bundles);
            }
            Err(err) => {
                tracing::warn!(reason = %err, "unusable workload api update, keeping the current svid");
            }
        }
    }
    tracing::debug!("workload api source closed");
}

/// The selected SVID and all bundles of the source, in this crate's types.
fn material(source: &spiffe::X509Source) -> Result<(Svid, BundleSet), IdentityError> {
    let x509 = source.svid().map_err(IdentityError::WorkloadApi)?;
    let chain = x509
        .cert_chain()
        .iter()
        .flat_map(|cert| cert.as_bytes().iter().copied())
        .collect::<Vec<u8>>();
    let svid = Svid::from_der(&chain, x509.private_key().as_bytes())?;

    let mut bundles = BundleSet::new();
    for (td, bundle) in source.bundle_set().map_err(IdentityError::WorkloadApi)?.iter() {
        let td = TrustDomain::parse(td.as_str())?;
        let roots = bundle
            .authorities()
            .iter()
            .map(|cert| rustls::pki_types::CertificateDer::from(cert.as_bytes().to_vec()))
            .collect();
        bundles.insert(Bundle::new(td, roots)?);
    }
    Ok((svid, bundles))
}

/// Only Unix socket and TCP endpoints exist in the Workload API spec.
fn check_endpoint(endpoint: &str) -> Result<(), IdentityError> {
    let bad = |reason| {
        Err(IdentityError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason,
        })
    };
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return bad("a unix socket path must be absolute (unix:///abs/path.sock)");
        }
        return Ok(());
    }
    if endpoint.starts_with("tcp://") {
        return Ok(());
    }
    bad("the scheme must be unix:// or tcp://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert!(check_endpoint("unix:///run/spire/agent.sock").is_ok());
        assert!(check_endpoint("tcp://127.0.0.1:8081").is_ok());
        assert!(matches!(
            check_endpoint("unix://relative.sock"),
            Err(IdentityError::BadEndpoint { .. })
        ));
        assert!(matches!(
            check_endpoint("/run/agent.sock"),
            Err(IdentityError::BadEndpoint { .. })
        ));
    }
}

//! The gateway as the mesh serves it, for the benchmark examples.

use std::path::Path;
use std::sync::Arc;

use soma_identity::SvidStore;
use soma_mesh::{MeshSettings, ServiceSpec};
use soma_store::Database;

/// The `Gateway` service of a development gateway whose issuer key and
/// config live under `dir`.
pub async fn gateway_spec(
    db: Database,
    settings: &MeshSettings,
    store: &Arc<SvidStore>,
    dir: &Path,
) -> anyhow::Result<ServiceSpec> {
    let region = soma_gateway::Region::parse("local").map_err(anyhow::Error::msg)?;
    let config = soma_gateway::GatewayConfig::dev(dir, &region, None)?;
    let (signer, _) = soma_auth::ClaimsSigner::generate("gateway-1")?;
    let gateway =
        soma_gateway::Gateway::build(db, &settings.limits, config, store, &settings.peers, signer).await?;
    Ok(gateway.spec)
}

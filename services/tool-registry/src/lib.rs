//! ToolRegistry: signed tool releases, versioned keys, revocation, and
//! sandboxed execution of verified adapters.
//!
//! What is built so far is the service's place in the mesh: its routes,
//! message limits, readiness and migrations. Every RPC answers
//! `UNIMPLEMENTED` until it is built.

use soma_mesh::{Limits, Readiness, ServiceSpec};
use soma_proto::v1::tool_registry_server::{ToolRegistry, ToolRegistryServer};
use soma_store::{Database, Migrations};
use tonic::service::Routes;

/// The service's migrations (none yet).
pub static MIGRATIONS: Migrations = Migrations(&[]);

/// The ToolRegistry service.
#[derive(Clone, Debug)]
pub struct ToolRegistryService {
    _db: Database,
}

#[tonic::async_trait]
impl ToolRegistry for ToolRegistryService {}

/// The service as the mesh runtime serves it.
pub fn spec(db: Database, limits: &Limits) -> ServiceSpec {
    let server = ToolRegistryServer::new(ToolRegistryService { _db: db.clone() })
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    ServiceSpec {
        name: "somastack.v1.ToolRegistry",
        routes: Routes::new(server),
        readiness: Readiness::of_database(db),
    }
}

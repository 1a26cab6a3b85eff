//! Analytics: billing, capsule-run, drill, persona-regression and anomaly
//! data in a MACed store and an RFC 9162 Merkle ledger, with signed exports.
//!
//! What is built so far is the service's place in the mesh: its routes,
//! message limits, readiness and migrations. Every RPC answers
//! `UNIMPLEMENTED` until the ledger and the store it needs exist; nothing
//! here pretends otherwise.

use soma_mesh::{Limits, Readiness, ServiceSpec};
use soma_proto::v1::analytics_server::{Analytics, AnalyticsServer};
use soma_store::{Database, Migrations};
use tonic::service::Routes;

/// The service's migrations (none yet: no table exists before the ledger).
pub static MIGRATIONS: Migrations = Migrations(&[]);

/// The Analytics service.
#[derive(Clone, Debug)]
pub struct AnalyticsService {
    _db: Database,
}

#[tonic::async_trait]
impl Analytics for AnalyticsService {}

/// The service as the mesh runtime serves it.
pub fn spec(db: Database, limits: &Limits) -> ServiceSpec {
    let server = AnalyticsServer::new(AnalyticsService { _db: db.clone() })
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    ServiceSpec {
        name: "somastack.v1.Analytics",
        routes: Routes::new(server),
        readiness: Readiness::of_database(db),
    }
}

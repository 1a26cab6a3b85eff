//! Test support shared by the integration tests of SomaStack's crates and
//! services; for tests only (a dev-dependency, never a dependency).
//!
//! It owns what more than one crate's tests need: a development authority in
//! a temp dir ([`Ca`]) and the SVIDs it mints, fresh databases of every
//! engine ([`engine_stores`]), any [`soma_mesh::ServiceSpec`] served
//! in-process on 127.0.0.1:0 with real mTLS ([`serve`]), mTLS clients and the
//! runtime's own endpoints (health, reflection, the admin listener), claims
//! envelopes sealed as the gateway seals them, SQL on either engine, and the
//! interop Python.
//!
//! It deliberately knows no service: it depends on no `services/*` crate,
//! so the mesh's and every service's tests can use it; what starts a real
//! service stays with that service's tests (or with `crates/soma`, the
//! composition root).
//!
//! Security-relevant default: everything is real. Certificates are minted at
//! run time by a real authority, servers verify them in real TLS handshakes,
//! and envelopes are really signed; nothing here bypasses a check.
//!
//! Every helper panics on failure: in a test, the panic is the report.

#![expect(
    clippy::unwrap_used,
    reason = "test support: a failure is the test's failure, reported by the panic"
)]

mod authority;
mod claims;
mod client;
mod encoding;
mod interop;
mod log;
mod running;
mod sql;
mod stores;

pub use authority::{Ca, TD};
pub use claims::{claims_request, operator_claims_request, tenant_request};
pub use client::{
    assert_database_busy, channel, grpc_reason, health, http_get, reflection_list, reflection_list_v1alpha,
};
pub use encoding::pem;
pub use interop::python;
pub use log::CapturedLog;
pub use running::{Running, restartable_addr, serve, settings};
pub use sql::{SqliteWriterLock, exec, scalar, scalar_text};
pub use stores::{Stores, engine_stores};

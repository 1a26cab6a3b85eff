//! ToolRegistry: signed tool releases, a WebAssembly sandbox that runs only
//! verified adapters, and billing from what the sandbox measured.
//!
//! A release is a manifest (RFC 8785 canonical JSON, signed by a registered
//! publisher's Ed25519 key as a DSSE envelope) and a WebAssembly module
//! (stored content-addressed by its SHA-256). The registry seals each
//! release (HMAC-SHA256 over the manifest digest, with a versioned key) and
//! MACs every row it keeps. `ExecuteTool` compiles and runs a release only
//! after its full verification, in the `soma-sandbox` (fuel, memory cap,
//! deadline, no imports), and bills every run through a durable outbox to
//! Analytics; publishing, revoking and publisher-key changes go the same
//! way as audit events.
//!
//! Modules: `releases` (publish, read, verify, revoke), `publishers`
//! (publisher keys), `execute` (verification cache, sandbox, billing),
//! `outbox` (delivery to Analytics), `store` (the tables, both engines),
//! `seal` (row MACs), `service` (the gRPC surface), `config`, `error`.
//!
//! Security-relevant defaults: the tenant of an execution comes only from
//! the gateway's verified claims; publisher keys are an operator's to add
//! and retire; a revoked release never runs again and revocation has no
//! undo; a row whose MAC fails is never trusted (`DATA_LOSS`).

mod actor;
pub mod config;
mod error;
mod event;
mod execute;
mod migrations;
mod outbox;
mod publishers;
mod registry;
mod releases;
mod seal;
mod service;
mod store;

pub use actor::Actor;
pub use config::{Price, RegistryConfig};
pub use error::RegistryError;
pub(crate) use event::{audit_event, now_nanos, random_id, timestamp};
pub use execute::REVALIDATE_AFTER;
pub use migrations::MIGRATIONS;
pub use registry::{Registry, Resealed};
pub use service::{ToolRegistryService, spec};

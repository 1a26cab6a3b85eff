//! Gateway: the tenants' only door.
//!
//! It runs two listeners. The mesh listener (mTLS, SPIFFE) serves the
//! `Gateway` service to operators' workloads like every other service. The
//! edge listener serves tenants: HTTP/JSON transcoded from the descriptor
//! set's `google.api.http` annotations, and gRPC with a bearer token, both
//! through one admission pipeline — JWT, residency, capability and MFA, kill
//! switches, moderation, rate limit — before any backend is contacted. An
//! admitted request is forwarded over mTLS with a `VerifiedClaims` envelope
//! signed by the gateway for that backend alone: unary calls through the
//! edge's own relay ([`relay`]), server streams through tonic channels.
//! Every refusal or failure the gateway answers is one [`Refusal`], turned
//! into a gRPC status or the edge's JSON body in one place ([`refusal`]).
//!
//! It executes no tool itself: `RunCapsule` moderates its input, then
//! orchestrates CapsuleRepo (resolution), ToolRegistry (execution) and
//! Analytics (the run's record) in `capsule_run`.
//!
//! Security-relevant defaults: a gateway without a residency allow-list or
//! without token issuers does not start; a method without a policy, or
//! whose policy names no capability, is refused to tenants; client-supplied
//! regions are never read; limits on headers, body and JSON depth are
//! enforced before any token is verified; the edge closes connections whose
//! head or body stalls or that sit idle, and caps connections in total and
//! per client address ([`listener`]).

pub mod admission;
pub mod capsule_run;
pub mod config;
pub mod context;
pub mod edge;
pub mod edge_metrics;
pub mod error;
pub mod forward;
pub mod killswitch;
pub mod listener;
mod migrations;
pub mod moderation;
pub mod openapi;
pub mod ratelimit;
pub mod refusal;
pub mod relay;
pub mod routes;
mod server;
pub mod service;
mod step_digest;
pub mod transcode;

pub use admission::{Admission, AdmissionRequest};
pub use config::{EdgeConnections, GatewayConfig, Region, Residency};
pub use context::{RequestContext, RequestId};
pub use edge::EdgeState;
pub use edge_metrics::EdgeMetrics;
pub use error::{BuildError, GatewayConfigError, GatewayError};
pub use listener::{ConnectionMetrics, ConnectionStats, is_body_timeout};
pub use migrations::MIGRATIONS;
pub use refusal::Refusal;
pub use server::{EdgeServer, Gateway};
pub use service::GatewayService;

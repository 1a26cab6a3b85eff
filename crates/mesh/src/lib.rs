//! The runtime every SomaStack service shares.
//!
//! It owns the mTLS listener (SPIFFE X.509-SVIDs from `soma-identity`, with a
//! handshake timeout), per-method authorization read from the
//! `somastack.v1.policy` option of each RPC, the verification of the
//! gateway's signed `VerifiedClaims` envelope, `grpc.health.v1`, server
//! reflection (v1 and v1alpha), explicit message limits, graceful shutdown,
//! a plaintext admin listener on loopback (`/live`, `/ready`, their Kubernetes
//! names `/healthz`, `/readyz`, and `/metrics` in the Prometheus format,
//! where a service adds its own series, e.g. its outbox's figures),
//! typed settings, client channels that present the own SVID and verify
//! the server's expected SPIFFE ID (to a peer with several instances, to the
//! one that serves, followed by its health), a service instance that stands
//! by (health NOT_SERVING, writes refused `standby`), and the process's logs
//! and traces
//! (OpenTelemetry over OTLP when the standard `OTEL_*` variables ask; every
//! RPC a server span, child of the caller's W3C `traceparent`).
//!
//! It does not implement any SomaStack RPC, nor tenant authentication (the
//! gateway's JWT pipeline): handlers receive an already verified [`Caller`].
//!
//! Security-relevant default: deny. A method without a policy, a caller whose
//! SPIFFE ID is not listed, a caller from another trust domain, and a claims
//! envelope that does not verify are all refused before the handler runs.

mod admin;
mod authz;
mod caller;
mod client;
mod error;
mod failover;
mod metrics;
mod observe;
mod outbox;
mod server;
mod serving;
mod settings;
mod telemetry;

pub use admin::{AdminServer, Readiness};
pub use authz::{AuthzLayer, REASON_METADATA, REQUEST_ID_METADATA};
pub use caller::{Caller, OPERATOR_PATH_PATTERN, PeerInfo};
pub use client::{MeshConnector, channel};
pub use error::MeshError;
pub use failover::{FAILURE_PENALTY, MeshChannel, PeerSet, ResponseFuture};
pub use metrics::{Histogram, Metrics, MetricsSource, Seconds};
pub use outbox::OutboxMetrics;
pub use server::{Application, ServiceSpec, builtin_policies};
pub use serving::Serving;
pub use settings::{ConfigError, Limits, MeshSettings, PeerAddr, PeerAddrs, Peers, ServiceKind};
pub use telemetry::{LogStyle, Telemetry, extract_trace_context, inject_trace_context, set_trace_parent};

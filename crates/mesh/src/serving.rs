//! Whether a running instance of a service serves.
//!
//! An instance can be up, healthy and still not the one that serves: an
//! Analytics standby waits for the ledger writer's lease while another
//! instance holds it. A service that can stand by hands the runtime a
//! [`watch`](tokio::sync::watch) of its [`Serving`] state
//! ([`crate::ServiceSpec::serving`]), and the runtime makes everyone see
//! it the same way:
//!
//! - `grpc.health.v1` reports the service and the whole server (`""`)
//!   NOT_SERVING while it stands by, and SERVING again once it serves, to
//!   every `Check` and on every open `Watch` stream (which is what clients
//!   with several addresses of a peer follow, [`crate::PeerSet`]);
//! - every method its proto does not declare `read_only` is refused
//!   UNAVAILABLE with the state's reason (`soma-reason: standby`) before
//!   any handler runs, and the refusal is logged and counted like every
//!   other refusal ([`crate::AuthzLayer`]); health, reflection and the
//!   read-only methods are answered;
//! - the service's own readiness check (`/readyz`) says why it is not
//!   ready: the runtime leaves that text to the service, which knows it.

/// Whether an instance serves now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// It serves every method.
    Yes,
    /// It stands by: only health, reflection and read-only methods are
    /// answered. The reason is machine-readable, sent as `soma-reason`
    /// with every refusal; `/metrics` counts the refusals of `standby`
    /// (its bounded reasons), the one reason SomaStack's services give.
    No(&'static str),
}

impl Serving {
    /// Whether it serves.
    pub fn is_serving(self) -> bool {
        self == Self::Yes
    }
}

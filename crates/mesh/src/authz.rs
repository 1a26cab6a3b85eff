//! Per-method authorization and claims verification, in front of every
//! handler.
//!
//! Order matters and is fixed: the peer's trust domain, then the method's
//! policy (deny when absent), then the peer's SPIFFE ID path against the
//! policy's callers, then the claims envelope (only the gateway may send
//! one), then the tenant capability and MFA the policy names, then — on an
//! instance that stands by ([`crate::Serving`]) — whether the method is
//! declared `read_only` (anything else is UNAVAILABLE with the standing's
//! reason, `standby`). Only when all pass is the request handed on, with a
//! [`Caller`] in its extensions.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use soma_auth::ClaimsVerifier;
use soma_identity::TrustDomain;
use soma_proto::PolicyTable;
use tokio::sync::watch;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::caller::{Caller, PeerInfo};
use crate::metrics::Metrics;
use crate::observe::Recorder;
use crate::serving::Serving;

/// Metadata key carrying the machine-readable reason of a refusal.
pub const REASON_METADATA: &str = "soma-reason";

/// Metadata key carrying the edge's request id to every backend call (an
/// attribute of each RPC's server span).
pub const REQUEST_ID_METADATA: &str = "x-request-id";

/// [`REQUEST_ID_METADATA`] as a header name, parsed once rather than on
/// every call.
static REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_METADATA);

/// Builds [`Authz`] services. See the module documentation.
#[derive(Clone, Debug)]
pub struct AuthzLayer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    trust_domain: TrustDomain,
    policies: PolicyTable,
    claims: Option<ClaimsVerifier>,
    metrics: Metrics,
    /// Whether this instance serves; `None`: it always does.
    serving: Option<watch::Receiver<Serving>>,
}

impl AuthzLayer {
    /// A layer enforcing `policies` for peers of `trust_domain`, verifying
    /// claims envelopes with `claims` (no verifier: every envelope is
    /// refused), and refusing every method not declared `read_only` while
    /// `serving` (when given) says the instance stands by.
    pub fn new(
        trust_domain: TrustDomain,
        policies: PolicyTable,
        claims: Option<ClaimsVerifier>,
        metrics: Metrics,
        serving: Option<watch::Receiver<Serving>>,
    ) -> Self {
        Self {
            state: Arc::new(State {
                trust_domain,
                policies,
                claims,
                metrics,
                serving,
            }),
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The authorization service; see [`AuthzLayer`].
#[derive(Clone, Debug)]
pub struct Authz<S> {
    inner: S,
    state: Arc<State>,
}

/// A refusal: gRPC code, stable reason code, and a safe message.
struct Denial {
    code: tonic::Code,
    reason: &'static str,
    message: String,
}

impl State {
    fn authorize(&self, req: &http::Request<Body>) -> Result<Caller, Denial> {
        let path = req.uri().path();
        let Some(peer) = req.extensions().get::<Arc<PeerInfo>>() else {
            return Err(Denial {
                code: tonic::Code::Unauthenticated,
                reason: "no_peer_identity",
                message: "no verified peer identity on this connection".to_owned(),
            });
        };
        if peer.spiffe_id.trust_domain() != &self.trust_domain {
            return Err(Denial {
                code: tonic::Code::PermissionDenied,
                reason: "foreign_trust_domain",
                message: format!(
                    "caller {} is not in trust domain {}",
                    peer.spiffe_id, self.trust_domain
                ),
            });
        }
        let Some(policy) = self.policies.get(path) else {
            return Err(Denial {
                code: tonic::Code::PermissionDenied,
                reason: "no_policy",
                message: format!("method {path} has no policy: denied by default"),
            });
        };
        if !policy.allows_path(peer.spiffe_id.path()) {
            return Err(Denial {
                code: tonic::Code::PermissionDenied,
                reason: "caller_not_allowed",
                message: format!("caller {} may not call {path}", peer.spiffe_id),
            });
        }
        let claims = match &self.claims {
            Some(verifier) => verifier
                .verify(Some(&peer.spiffe_id), req.headers(), SystemTime::now())
                .map_err(|e| Denial {
                    code: tonic::Code::Unauthenticated,
                    reason: "claims_rejected",
                    message: format!("claims envelope rejected: {} ({})", e, e.reason()),
                })?,
            None if has_envelope(req.headers()) => {
                return Err(Denial {
                    code: tonic::Code::Unauthenticated,
                    reason: "claims_rejected",
                    message: "claims envelope rejected: this service verifies no claims".to_owned(),
                });
            }
            None => None,
        };
        if let Some(claims) = &claims {
            // Defence in depth: the gateway checked these already, but a
            // backend never acts on claims that do not grant the method.
            if policy.capability.is_empty() || !claims.capabilities.contains(&policy.capability) {
                return Err(Denial {
                    code: tonic::Code::PermissionDenied,
                    reason: "insufficient_scope",
                    message: format!("claims do not grant capability {:?}", policy.capability),
                });
            }
            if policy.mfa_required && !claims.mfa {
                return Err(Denial {
                    code: tonic::Code::PermissionDenied,
                    reason: "mfa_required",
                    message: "method requires multi-factor authentication".to_owned(),
                });
            }
        }
        // Last: an instance that stands by answers who may call it like any
        // other, and then that it does not serve this method now.
        if let Some(serving) = &self.serving
            && let Serving::No(reason) = *serving.borrow()
            && !policy.read_only
        {
            return Err(Denial {
                code: tonic::Code::Unavailable,
                reason,
                message: format!(
                    "this instance does not serve {path} now ({reason}): another instance of the service does"
                ),
            });
        }
        Ok(Caller {
            peer: peer.clone(),
            claims,
        })
    }
}

fn has_envelope(headers: &http::HeaderMap) -> bool {
    headers.contains_key(soma_auth::CLAIMS_METADATA) || headers.contains_key(soma_auth::SIGNATURE_METADATA)
}

impl<S> Service<http::Request<Body>> for Authz<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>,
        std::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match self.state.authorize(&req) {
            Ok(caller) => {
                let metrics = &self.state.metrics;
                let recorder = metrics.enabled().then(|| {
                    let method = metrics.method(req.uri().path());
                    metrics.dispatched_at(method);
                    Recorder::start(metrics.clone(), method)
                });
                // The RPC's server span, child of the caller's trace context.
                let span = tracing::info_span!(
                    "grpc.server",
                    otel.name = req.uri().path(),
                    otel.kind = "server",
                    rpc.system = "grpc",
                    rpc.method = req.uri().path(),
                    request_id = req
                        .headers()
                        .get(&REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(""),
                );
                crate::set_trace_parent(&span, crate::extract_trace_context(req.headers()));
                req.extensions_mut().insert(caller);
                let response = {
                    let _entered = span.enter();
                    self.inner.call(req)
                };
                futures::future::Either::Left(Box::pin(tracing::Instrument::instrument(
                    async move {
                        let response = response.await?;
                        Ok(match recorder {
                            Some(recorder) => recorder.observe(response),
                            None => response,
                        })
                    },
                    span,
                )))
            }
            Err(denial) => {
                let path = req.uri().path();
                let peer = req
                    .extensions()
                    .get::<Arc<PeerInfo>>()
                    .map(|p| p.spiffe_id.to_string());
                tracing::warn!(
                    method = path,
                    peer = peer.as_deref().unwrap_or("-"),
                    reason = denial.reason,
                    code = ?denial.code,
                    "request refused: {}",
                    denial.message
                );
                self.state.metrics.denied(path, denial.reason);
                self.state
                    .metrics
                    .handled(path, denial.code, std::time::Duration::ZERO);
                let mut status = tonic::Status::new(denial.code, denial.message);
                if let Ok(value) = denial.reason.parse() {
                    status.metadata_mut().insert(REASON_METADATA, value);
                }
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

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

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use soma_auth::ClaimsVerifier;
use soma_identity::TrustDomain;
use soma_proto::PolicyTable;
use tokio::sync::watch;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::caller::{Caller, PeerInfo};
use crate::metrics::Metrics;
use crate::observe::{ObservedBody, Recorder};
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

/// The RPC's server span, child of the caller's trace context when the
/// request carries one.
///
/// With traces exported ([`crate::telemetry::traces_exported`]) the span
/// carries what OpenTelemetry reads (`otel.name`, `otel.kind`,
/// `rpc.system`) beside the method and the request id. With logs only, it
/// carries the two fields a log line needs, the method and the request id
/// (only when the call has one): the log layer formats every field of every
/// span when it is created, log event or not, and the three OpenTelemetry
/// fields are constants or repeat the method.
fn server_span(req: &http::Request<Body>) -> tracing::Span {
    let path = req.uri().path();
    // `None` records nothing: the field is left out rather than empty.
    let request_id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok());
    let span = if crate::telemetry::traces_exported() {
        tracing::info_span!(
            "grpc.server",
            otel.name = path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = path,
            request_id,
        )
    } else {
        tracing::info_span!("grpc.server", rpc.method = path, request_id)
    };
    crate::set_trace_parent(&span, crate::extract_trace_context(req.headers()));
    span
}

fn has_envelope(headers: &http::HeaderMap) -> bool {
    headers.contains_key(soma_auth::CLAIMS_METADATA) || headers.contains_key(soma_auth::SIGNATURE_METADATA)
}

impl<S> Service<http::Request<Body>> for Authz<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Unpin + Send + 'static,
{
    type Response = http::Response<ObservedBody>;
    type Error = S::Error;
    type Future = futures::future::Either<
        ResponseFuture<S::Future>,
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
                let span = server_span(&req);
                req.extensions_mut().insert(caller);
                let inner = {
                    let _entered = span.enter();
                    self.inner.call(req)
                };
                futures::future::Either::Left(ResponseFuture {
                    inner,
                    span,
                    recorder,
                })
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
                futures::future::Either::Right(std::future::ready(Ok(status
                    .into_http()
                    .map(ObservedBody::unobserved))))
            }
        }
    }
}

/// The response of an authorized call: the handler's, polled inside the
/// RPC's server span, its end recorded for the metrics.
///
/// A named future rather than a boxed `async` block: the router's future is
/// `Unpin`, so nothing needs a heap allocation per call to be polled.
#[derive(Debug)]
pub struct ResponseFuture<F> {
    inner: F,
    span: tracing::Span,
    recorder: Option<Recorder>,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = Result<http::Response<ObservedBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = {
            // Entered at every poll, as `Instrument` would: whatever the
            // handler logs belongs to its RPC's span.
            let _entered = this.span.enter();
            ready!(Pin::new(&mut this.inner).poll(cx))?
        };
        Poll::Ready(Ok(match this.recorder.take() {
            Some(recorder) => recorder.observe(response),
            None => response.map(ObservedBody::unobserved),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use soma_identity::SpiffeId;
    use soma_testing::CapturedLog;

    use super::*;

    /// The log line the handler writes for one authorized health check
    /// carrying `headers`, under a text log subscriber.
    fn handler_log_line(headers: &[(&'static str, &'static str)]) -> String {
        let captured = CapturedLog::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let id = SpiffeId::parse("spiffe://somastack.test/operator/alice").unwrap();
        let mut policies = PolicyTable::default();
        for p in crate::builtin_policies() {
            policies.insert(p);
        }
        let layer = AuthzLayer::new(
            id.trust_domain().clone(),
            policies,
            None,
            Metrics::new(["/grpc.health.v1.Health/Check"]),
            None,
        );
        // Boxed: the runtime's router future is `Unpin`, an `async` block is not.
        let mut authz = layer.layer(tower::service_fn(|_req: http::Request<Body>| {
            Box::pin(async {
                tracing::info!("handler ran");
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            })
        }));
        let mut req = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(Body::empty())
            .unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        req.extensions_mut().insert(Arc::new(PeerInfo {
            spiffe_id: id,
            remote_addr: "127.0.0.1:1".parse().unwrap(),
        }));
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(authz.call(req)).unwrap();
        });
        let text = captured.text();
        text.lines()
            .find(|l| l.contains("handler ran"))
            .unwrap_or_else(|| panic!("no handler log line in {text:?}"))
            .to_owned()
    }

    #[test]
    fn a_handler_log_line_carries_the_method_and_the_request_id_of_its_rpc() {
        let line = handler_log_line(&[(REQUEST_ID_METADATA, "req-7")]);
        assert!(
            line.contains(r#"grpc.server{rpc.method="/grpc.health.v1.Health/Check" request_id="req-7"}"#),
            "{line}"
        );
        // Traces are not exported here: the fields only OpenTelemetry
        // reads are not formatted into every span.
        assert!(!line.contains("otel."), "{line}");
        assert!(!line.contains("rpc.system"), "{line}");

        // A call without a request id has no empty request_id field.
        let line = handler_log_line(&[]);
        assert!(
            line.contains(r#"grpc.server{rpc.method="/grpc.health.v1.Health/Check"}"#),
            "{line}"
        );
    }
}

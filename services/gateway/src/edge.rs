//! The edge: HTTP/JSON (HTTP/1.1 and HTTP/2) and tenant gRPC on one
//! listener, in front of the admission pipeline.
//!
//! JSON requests are transcoded by the descriptor set and the
//! `google.api.http` annotations — no handler is written per route: the
//! route table maps method and path to an RPC, path and query parameters and
//! the body become the request message (proto3 JSON mapping), the reply
//! becomes JSON, and a server stream becomes newline-delimited JSON. gRPC
//! requests (`content-type: application/grpc`, bearer token in the
//! `authorization` metadata) pass the same pipeline and are relayed as
//! encoded messages.
//!
//! Order of checks, so that hostile input costs little: everything the
//! request head decides comes before one byte of the body is read — header
//! size (431), declared body size (413), the route, then admission (token,
//! residency, capability and MFA, kill switches, rate limit). Only an
//! admitted request has its body read: its size enforced while it streams
//! in (413), JSON depth (400) and syntax, then transcoding, moderation of
//! the final message (path, query and body merged), and forwarding. A
//! refusal sent before the body was read closes an HTTP/1.x connection
//! (`Connection: close`) instead of draining it. Every refusal is a
//! [`Refusal`]: one JSON body `{code, reason, message, request_id, details}`
//! at the JSON edge, one gRPC status at the gRPC ingress, each built in one
//! place.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut as _, Bytes};
use futures::StreamExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};
use tonic::codec::Streaming;

use crate::admission::{Admission, AdmissionRequest};
use crate::config::{EdgeConnections, EdgeLimits};
use crate::context::{REQUEST_ID_HEADER, RequestContext, RequestId};
use crate::edge_metrics::{self, EdgeMetrics};
use crate::forward::{Backends, BytesCodec};
use crate::refusal::Refusal;
use crate::relay::{self, GRPC_TIMEOUT};
use crate::routes::{Route, RouteBody, RouteMatch, RouteTable, bind_params, parse_query};
use crate::service::GatewayService;
use crate::transcode::{self, TranscodeError};

/// grpc-gateway's table of HTTP statuses, where the edge's callers look for it.
pub use crate::refusal::http_status;

/// Content type of server streams at the edge.
const NDJSON: &str = "application/x-ndjson";

/// Everything the edge needs, shared by every request.
#[derive(Debug)]
pub struct EdgeState {
    routes: RouteTable,
    admission: Admission,
    backends: Backends,
    local: GatewayService,
    limits: EdgeLimits,
    /// Header fields one HTTP/1.1 request head may carry
    /// (`connections.max_headers`).
    max_headers: usize,
    cors_origins: Vec<String>,
    openapi: Bytes,
    metrics: EdgeMetrics,
}

impl EdgeState {
    /// Assembles the edge.
    pub fn new(
        routes: RouteTable,
        admission: Admission,
        backends: Backends,
        local: GatewayService,
        limits: EdgeLimits,
        cors_origins: Vec<String>,
        openapi: Bytes,
    ) -> Self {
        Self {
            routes,
            admission,
            backends,
            local,
            limits,
            max_headers: EdgeConnections::default().max_headers,
            cors_origins,
            openapi,
            metrics: EdgeMetrics::default(),
        }
    }

    /// Sets the header fields one HTTP/1.1 request head may carry
    /// (`connections.max_headers`; its default otherwise).
    #[must_use]
    pub fn with_max_headers(mut self, max_headers: usize) -> Self {
        self.max_headers = max_headers;
        self
    }

    /// The edge's request counters (shared with the running edge).
    pub fn metrics(&self) -> EdgeMetrics {
        self.metrics.clone()
    }
}

/// The edge's router: one fallback handler serves everything.
pub fn router(state: Arc<EdgeState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

/// What a backend answered.
enum Reply {
    Unary(Bytes),
    Stream(Streaming<Bytes>),
}

async fn handle(State(state): State<Arc<EdgeState>>, request: Request) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::mint);
    let origin = request.headers().get(header::ORIGIN).cloned();
    let start = std::time::Instant::now();
    let mut route = edge_metrics::UNROUTED.to_owned();
    let mut refused_for = None;
    // The request's span: the root of its trace (or a child of the
    // client's `traceparent`); every backend call carries its context.
    let span = tracing::info_span!(
        "edge.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = request_id.as_str(),
    );
    soma_mesh::set_trace_parent(&span, soma_mesh::extract_trace_context(request.headers()));
    let served =
        tracing::Instrument::instrument(serve(&state, request, &request_id, &mut route), span.clone()).await;
    span.record("http.route", route.as_str());
    let mut response = match served {
        Ok(response) => response,
        Err(refusal) => {
            refused_for = Some(refusal.reason().to_owned());
            let status = refusal.http_status();
            if status.is_server_error() {
                tracing::warn!(request_id = request_id.as_str(), status = status.as_u16(), reason = %refusal.reason(), message = %refusal.message(), "request failed");
            } else {
                tracing::info!(request_id = request_id.as_str(), status = status.as_u16(), reason = %refusal.reason(), message = %refusal.message(), "request refused");
            }
            refusal.into_response(&request_id)
        }
    };
    span.record("http.response.status_code", response.status().as_u16());
    state.metrics.record(
        &route,
        response.status().as_u16(),
        start.elapsed(),
        refused_for.as_deref(),
    );
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if let Some(origin) = origin
        && state.cors_allows(&origin)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after, www-authenticate"),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

impl EdgeState {
    fn cors_allows(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.cors_origins.iter().any(|allowed| allowed == o))
    }
}

/// Serves one request; `route` is set to the metrics label of the route it
/// took as soon as that is known.
async fn serve(
    state: &Arc<EdgeState>,
    request: Request,
    request_id: &RequestId,
    route_label: &mut String,
) -> Result<Response, Refusal> {
    let limits = state.limits;
    // 1. Header count (HTTP/1.1; an HTTP/2 header list is bounded by its
    // size) and size, before anything reads them. The HTTP/1.1 parser
    // takes up to `listener::HEAD_FIELDS_PARSED` fields so that the count
    // is refused here, with its reason, rather than by the parser.
    if request.version() <= http::Version::HTTP_11 && request.headers().len() > state.max_headers {
        return Err(Refusal::bad_request(
            "too_many_headers",
            format!(
                "the request head has more than {} header fields",
                state.max_headers
            ),
        )
        .with_http_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Refusal::bad_request(
            "headers_too_large",
            format!("request headers exceed {} bytes", limits.max_header_bytes),
        )
        .with_http_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }

    // 2. CORS preflight: answered without authentication.
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        "preflight".clone_into(route_label);
        return preflight(state, &request);
    }

    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        "grpc_ingress".clone_into(route_label);
        return Ok(grpc_ingress(Arc::clone(state), request).await);
    }

    let path = request.uri().path().to_owned();
    if path == "/openapi.json" && request.method() == Method::GET {
        "openapi".clone_into(route_label);
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            state.openapi.clone(),
        )
            .into_response());
    }

    // 3 and 4. Everything the head decides: nothing of the body is read
    // before it, so a refusal here closes an HTTP/1.x connection instead of
    // draining its body.
    let (route, path_params, mut context) = admit_head(
        state,
        request.method(),
        request.headers(),
        &path,
        request_id,
        route_label,
    )
    .await
    .map_err(|refusal| refusal.closing_if_body_unread(&request))?;

    // 5. The body, its size enforced while it streams in, then its JSON
    // depth and syntax.
    let query = request.uri().query().unwrap_or("").to_owned();
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let version = request.version();
    let body = read_body(request.into_body(), limits.max_body_bytes)
        .await
        .map_err(|refusal| refusal.closing_on_http1(version))?;
    let body_json = if matches!(route.body, RouteBody::None) {
        if !body.is_empty() {
            return Err(Refusal::bad_request(
                "unexpected_body",
                format!("{} {} takes no body", route.http_method, route.template),
            ));
        }
        None
    } else {
        if !body.is_empty()
            && let Some(ct) = content_type
            && !ct.to_str().is_ok_and(|c| c.starts_with("application/json"))
        {
            return Err(
                Refusal::bad_request("unsupported_media_type", "the body must be application/json")
                    .with_http_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            );
        }
        transcode::check_depth(&body, limits.max_json_depth)
            .map_err(|e| Refusal::bad_request("json_too_deep", e.to_string()))?;
        Some(transcode::parse_json(&body).map_err(|e| Refusal::bad_request(e.reason(), e.to_string()))?)
    };

    // 6. Transcoding: path, query and body merged into the message the
    // backend will receive; moderation runs on exactly that message.
    let message = build_message(route, body_json.as_ref(), &path_params, &query)?;
    if route.policy.as_ref().is_some_and(|p| p.moderate) {
        let input = transcode::message_to_value(&message).map_err(|e| {
            tracing::error!(error = %e, method = %route.grpc_path, "request message has no JSON form");
            Refusal::bad_request("invalid_argument", "the request message cannot be moderated")
        })?;
        state
            .admission
            .moderate(&route.grpc_path, &mut context, &input)
            .await?;
    }
    let encoded = Bytes::from(prost::Message::encode_to_vec(&message));

    // 7. Forwarding.
    let context = Arc::new(context);
    let reply = dispatch(state, route, Arc::clone(&context), encoded, None)
        .await
        .map_err(|s| Refusal::from_status(&s))?;
    let output = route.method.output();
    match reply {
        Reply::Unary(bytes) => {
            let json = transcode::bytes_to_json(&output, &bytes).map_err(|e| {
                tracing::error!(error = %e, method = %route.grpc_path, "backend reply does not decode");
                bad_backend_reply("the backend's reply does not decode")
            })?;
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response())
        }
        Reply::Stream(stream) => Ok(ndjson(stream, output, context)),
    }
}

/// The decisions the request head alone makes, in order: the declared body
/// size, the route, then admission (token, residency, capability and MFA,
/// kill switches, rate limit). Nothing here reads the body.
async fn admit_head<'s>(
    state: &'s EdgeState,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    request_id: &RequestId,
    route_label: &mut String,
) -> Result<(&'s Route, Vec<(String, String)>, RequestContext), Refusal> {
    let limits = state.limits;
    // 3. Body size, from the declared length (the rest while reading).
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_body_bytes as u64
    {
        return Err(too_large(limits.max_body_bytes));
    }

    let (route, path_params) = match state.routes.find(method, path) {
        RouteMatch::Found { route, path_params } => (route, path_params),
        RouteMatch::MethodNotAllowed { allowed } => {
            let mut refusal = Refusal::new(
                tonic::Code::Unimplemented,
                "method_not_allowed",
                format!("{method} is not served for {path}"),
            )
            .with_http_status(StatusCode::METHOD_NOT_ALLOWED);
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                refusal = refusal.with_header(header::ALLOW, v);
            }
            return Err(refusal);
        }
        RouteMatch::NotFound => {
            return Err(Refusal::new(
                tonic::Code::NotFound,
                "route_not_found",
                format!("no route for {path}"),
            ));
        }
    };
    // Routed: whatever admission decides counts under the route's label.
    route.grpc_path.clone_into(route_label);

    // 4. Admission from the head alone: a request without a valid token, or
    // one its route, residency, capability, kill switch or rate limit
    // refuses, is answered before one byte of its body is read.
    let context = state
        .admission
        .admit(AdmissionRequest {
            method: &route.grpc_path,
            policy: route.policy.as_ref(),
            authorization: headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
            request_id: request_id.clone(),
        })
        .await?;
    Ok((route, path_params, context))
}

/// Reads a request body whole, refusing it as soon as more than `max` bytes
/// have arrived (nothing beyond `max` is ever buffered). A refused body is
/// left unread, so its connection is not reused.
async fn read_body(body: Body, max: usize) -> Result<Bytes, Refusal> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) if crate::listener::is_body_timeout(e.as_ref()) => Err(Refusal::new(
            tonic::Code::DeadlineExceeded,
            "body_timeout",
            "the request body did not arrive within the body read timeout",
        )
        .with_http_status(StatusCode::REQUEST_TIMEOUT)),
        Err(e) => {
            tracing::info!(error = %e, "request body not read");
            Err(Refusal::new(
                tonic::Code::Cancelled,
                "body_read_failed",
                "the request body could not be read",
            )
            .with_http_status(StatusCode::BAD_REQUEST))
        }
    }
}

fn too_large(max: usize) -> Refusal {
    Refusal::bad_request("body_too_large", format!("the body exceeds {max} bytes"))
        .with_http_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// 502: a backend's reply that the edge cannot turn into JSON.
fn bad_backend_reply(message: &'static str) -> Refusal {
    Refusal::new(tonic::Code::Internal, "bad_backend_reply", message)
        .with_http_status(StatusCode::BAD_GATEWAY)
}

fn preflight(state: &EdgeState, request: &Request) -> Result<Response, Refusal> {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| state.cors_allows(o))
    else {
        return Err(Refusal::new(
            tonic::Code::PermissionDenied,
            "cors_origin_denied",
            "this origin may not call the edge",
        ));
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-request-id"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    Ok(response)
}

/// The request message from the body, path and query parameters.
fn build_message(
    route: &Route,
    body: Option<&Value>,
    path_params: &[(String, String)],
    query: &str,
) -> Result<DynamicMessage, Refusal> {
    let input = route.method.input();
    let field_error = |e: TranscodeError| Refusal::bad_request(e.reason(), e.to_string());
    let mut message = match (&route.body, body) {
        (RouteBody::Whole, Some(v)) => transcode::json_to_message(&input, v).map_err(field_error)?,
        (RouteBody::Field(name), Some(v)) => {
            let field = input.get_field_by_name(name).ok_or_else(|| {
                Refusal::new(tonic::Code::Internal, "bad_route", "route body field missing")
            })?;
            let wrapped = json!({ field.json_name(): v });
            transcode::json_to_message(&input, &wrapped).map_err(field_error)?
        }
        _ => DynamicMessage::new(input),
    };
    let mut params = path_params.to_vec();
    let query_params =
        parse_query(query).map_err(|e| Refusal::bad_request("invalid_argument", e.to_string()))?;
    if !query_params.is_empty() && matches!(route.body, RouteBody::Whole) {
        return Err(Refusal::bad_request(
            "invalid_argument",
            "query parameters are not accepted when the body is the whole message",
        ));
    }
    params.extend(query_params);
    bind_params(&mut message, &params)
        .map_err(|e| Refusal::bad_request("invalid_argument", e.to_string()))?;
    Ok(message)
}

/// Calls the route's RPC: the gateway's own methods in-process, every other
/// one on its backend over mTLS with the signed claims envelope. A unary
/// backend call waits at most the relay's timeout, or `deadline` (a gRPC
/// client's) when that is shorter; server streams run as long as the
/// client keeps them.
async fn dispatch(
    state: &EdgeState,
    route: &Route,
    context: Arc<RequestContext>,
    message: Bytes,
    deadline: Option<Duration>,
) -> Result<Reply, tonic::Status> {
    let path = http::uri::PathAndQuery::try_from(route.grpc_path.as_str())
        .map_err(|_| Refusal::without_reason(tonic::Code::Internal, "route has an invalid gRPC path"))?;
    if route.service == "somastack.v1.Gateway" {
        let call = local_call(&state.local, route, Arc::clone(&context), message);
        return RequestContext::scope(context, call).await;
    }
    let backend = state.backends.get(&route.service).ok_or_else(|| {
        Refusal::new(
            tonic::Code::Unavailable,
            "backend_not_configured",
            format!("no backend is configured for {}", route.service),
        )
    })?;
    let metadata = state.backends.metadata(&context, &backend.id)?;
    let reply = if route.server_streaming {
        backend.await_serving().await;
        let request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
        let grpc = tonic::client::Grpc::new(backend.channel.clone());
        call(grpc, true, request, path).await
    } else {
        backend
            .call(path, metadata.into_headers(), message, deadline)
            .await
            .map(Reply::Unary)
    };
    reply.inspect_err(|status| {
        if status.code() == tonic::Code::Unavailable
            && status.metadata().get(soma_mesh::REASON_METADATA).is_none()
        {
            tracing::warn!(backend = %backend.id, message = %status.message(), "backend not reachable");
        }
    })
}

/// One of the gateway's own methods, called in this process: the message
/// decoded as the method's request, the handler called with the admitted
/// context in the request's extensions (as a gRPC server would pass it),
/// the reply encoded. Every method of the service is unary.
async fn local_call(
    local: &GatewayService,
    route: &Route,
    context: Arc<RequestContext>,
    message: Bytes,
) -> Result<Reply, tonic::Status> {
    use soma_proto::v1::gateway_server::Gateway as _;
    let method = route.grpc_path.rsplit('/').next().unwrap_or_default();
    match method {
        "RunCapsule" => local_unary(message, context, |r| local.run_capsule(r)).await,
        "WhoAmI" => local_unary(message, context, |r| local.who_am_i(r)).await,
        "ListKillSwitches" => local_unary(message, context, |r| local.list_kill_switches(r)).await,
        "SetKillSwitch" => local_unary(message, context, |r| local.set_kill_switch(r)).await,
        _ => Err(tonic::Status::unimplemented(format!(
            "{} is not a method of the gateway",
            route.grpc_path
        ))),
    }
}

/// A unary method of the gateway on `message`, for `context`.
async fn local_unary<Req, Resp, F, Fut>(
    message: Bytes,
    context: Arc<RequestContext>,
    handler: F,
) -> Result<Reply, tonic::Status>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let decoded = Req::decode(message)
        .map_err(|e| tonic::Status::invalid_argument(format!("the request message does not decode: {e}")))?;
    let mut request = tonic::Request::new(decoded);
    if let Ok(v) = context.request_id.as_str().parse() {
        request.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
    request.extensions_mut().insert(context);
    let reply = handler(request).await?;
    Ok(Reply::Unary(Bytes::from(reply.into_inner().encode_to_vec())))
}

/// One call of `path` on `grpc` (a backend channel), unary or
/// server-streaming.
async fn call<T>(
    mut grpc: tonic::client::Grpc<T>,
    streaming: bool,
    request: tonic::Request<Bytes>,
    path: http::uri::PathAndQuery,
) -> Result<Reply, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    grpc.ready().await.map_err(|e| {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        relay::not_reachable(&e.to_string())
    })?;
    if streaming {
        grpc.server_streaming(request, path, BytesCodec)
            .await
            .map(|r| Reply::Stream(r.into_inner()))
    } else {
        grpc.unary(request, path, BytesCodec)
            .await
            .map(|r| Reply::Unary(r.into_inner()))
    }
}

/// A server stream as newline-delimited JSON: one message per line; an
/// error after the first message ends the stream with one `{"error": …}`
/// line (the status line has been sent already).
fn ndjson(
    stream: Streaming<Bytes>,
    output: prost_reflect::MessageDescriptor,
    context: Arc<RequestContext>,
) -> Response {
    let lines = futures::stream::unfold(Some(stream), move |state| {
        let output = output.clone();
        let context = Arc::clone(&context);
        async move {
            let mut stream = state?;
            match stream.next().await {
                None => None,
                Some(Ok(bytes)) => match transcode::bytes_to_json(&output, &bytes) {
                    Ok(mut line) => {
                        line.push(b'\n');
                        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), Some(stream)))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "stream message does not decode");
                        let refusal = bad_backend_reply("a streamed message does not decode");
                        Some((Ok(refusal.into_stream_error_line(&context.request_id)), None))
                    }
                },
                Some(Err(status)) => {
                    let refusal = Refusal::from_status(&status);
                    Some((Ok(refusal.into_stream_error_line(&context.request_id)), None))
                }
            }
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, NDJSON)],
        Body::from_stream(lines),
    )
        .into_response()
}

/// gRPC from tenants: the same admission (bearer token in the metadata),
/// decided from the request head before the message is read; then the one
/// request message is read (at most the edge's body limit, enforced from its
/// length prefix while it streams in), checked to decode as the method's
/// input, moderated when the method's policy asks, and relayed.
async fn grpc_ingress(state: Arc<EdgeState>, request: Request) -> Response {
    match grpc_call(&state, request).await {
        Ok(response) => response,
        Err(status) => {
            tracing::info!(code = ?status.code(), message = %status.message(), "gRPC request refused");
            grpc_error(status)
        }
    }
}

/// One tenant gRPC call. The ingress's own refusals are [`Refusal`]s in
/// their gRPC form (`?` converts them); a backend's status passes through
/// as the backend sent it.
async fn grpc_call(state: &Arc<EdgeState>, request: Request) -> Result<Response, tonic::Status> {
    let path = request.uri().path();
    let route = state.routes.by_grpc_path(path).ok_or_else(|| {
        Refusal::without_reason(tonic::Code::Unimplemented, format!("unknown method {path}"))
    })?;
    let headers = request.headers();
    let deadline = grpc_deadline(headers, path)?;
    if let Some(encoding) = headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        // Nothing is advertised in grpc-accept-encoding, so a compressed
        // message is a client's mistake (and a decompression bomb is never
        // inflated here).
        return Err(Refusal::new(
            tonic::Code::Unimplemented,
            "encoding_unsupported",
            format!("message encoding {encoding:?} is not supported"),
        )
        .into());
    }
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::mint);
    let mut context = state
        .admission
        .admit(AdmissionRequest {
            method: &route.grpc_path,
            policy: route.policy.as_ref(),
            authorization: headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
            request_id,
        })
        .await?;

    let message = read_grpc_message(request.into_body(), state.limits.max_body_bytes).await?;
    let decoded = DynamicMessage::decode(route.method.input(), message.as_ref()).map_err(|e| {
        Refusal::new(
            tonic::Code::InvalidArgument,
            "malformed_message",
            format!(
                "the request message does not decode as {}: {e}",
                route.method.input().full_name()
            ),
        )
    })?;
    if route.policy.as_ref().is_some_and(|p| p.moderate) {
        let input = transcode::message_to_value(&decoded).map_err(|e| {
            Refusal::bad_request(
                "invalid_argument",
                format!("the request message cannot be moderated: {e}"),
            )
        })?;
        state
            .admission
            .moderate(&route.grpc_path, &mut context, &input)
            .await?;
    }
    match dispatch(state, route, Arc::new(context), message, deadline).await? {
        Reply::Unary(bytes) => Ok(grpc_reply(futures::stream::iter([
            Ok(http_body::Frame::data(grpc_frame(&bytes))),
            Ok(http_body::Frame::trailers(grpc_ok_trailers())),
        ]))),
        Reply::Stream(stream) => {
            let frames = futures::stream::unfold(Some(stream), |state| async move {
                let mut stream = state?;
                match stream.next().await {
                    Some(Ok(bytes)) => Some((Ok(http_body::Frame::data(grpc_frame(&bytes))), Some(stream))),
                    None => Some((Ok(http_body::Frame::trailers(grpc_ok_trailers())), None)),
                    Some(Err(status)) => Some((Ok(http_body::Frame::trailers(grpc_trailers(&status))), None)),
                }
            });
            Ok(grpc_reply(frames))
        }
    }
}

/// A gRPC response: `200`, `application/grpc`, then `frames`.
fn grpc_reply(
    frames: impl futures::Stream<Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>>
    + Send
    + 'static,
) -> Response {
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// One length-prefixed, uncompressed gRPC message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = bytes::BytesMut::with_capacity(GRPC_PREFIX + message.len());
    frame.put_u8(0);
    // Replies come from backends limited to far less than 4 GiB.
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(message);
    frame.freeze()
}

/// The trailers of a call that ended well.
fn grpc_ok_trailers() -> HeaderMap {
    grpc_trailers(&tonic::Status::new(tonic::Code::Ok, ""))
}

/// The trailers that end a gRPC response with `status`, written by tonic
/// as it writes every status (INTERNAL if it cannot write this one).
fn grpc_trailers(status: &tonic::Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
    }
    trailers
}

/// Bytes of a gRPC message's prefix: a compressed flag and a big-endian
/// 32-bit length.
const GRPC_PREFIX: usize = 5;

/// Reads the one message of a unary or server-streaming request: its
/// length prefix is checked against `max` before any of it is buffered, and
/// a request that ends early, carries a second message or flags
/// compression is refused with its own reason.
async fn read_grpc_message(body: Body, max: usize) -> Result<Bytes, Refusal> {
    use bytes::Buf as _;
    use http_body_util::BodyExt as _;

    let refuse =
        |code: tonic::Code, reason: &'static str, message: String| Refusal::new(code, reason, message);
    let mut body = body;
    let mut buffer = bytes::BytesMut::new();
    let mut expected: Option<usize> = None;
    loop {
        if expected.is_none() && buffer.len() >= GRPC_PREFIX {
            let compressed = buffer[0];
            let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            match compressed {
                0 => {}
                1 => {
                    return Err(refuse(
                        tonic::Code::Unimplemented,
                        "encoding_unsupported",
                        "compressed messages are not accepted".to_owned(),
                    ));
                }
                flag => {
                    return Err(refuse(
                        tonic::Code::InvalidArgument,
                        "malformed_frame",
                        format!("the message prefix has compressed flag {flag}"),
                    ));
                }
            }
            if len > max {
                return Err(refuse(
                    tonic::Code::ResourceExhausted,
                    "body_too_large",
                    format!("the message is {len} bytes, more than the {max} accepted"),
                ));
            }
            buffer.advance(GRPC_PREFIX);
            buffer.reserve(len.saturating_sub(buffer.len()));
            expected = Some(len);
        }
        if let Some(len) = expected
            && buffer.len() > len
        {
            return Err(refuse(
                tonic::Code::InvalidArgument,
                "extra_message",
                "the method takes exactly one request message".to_owned(),
            ));
        }
        let Some(frame) = body.frame().await else { break };
        let frame = frame.map_err(|e| {
            if crate::listener::is_body_timeout(&e) {
                return refuse(
                    tonic::Code::DeadlineExceeded,
                    "body_timeout",
                    "the request message did not arrive within the body read timeout".to_owned(),
                );
            }
            tracing::info!(error = %e, "gRPC request body not read");
            refuse(
                tonic::Code::Cancelled,
                "body_read_failed",
                "the request body could not be read".to_owned(),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            // Bounded: until the prefix is known at most 4 more bytes are
            // kept than one frame; after it, at most `len` plus one frame
            // before the check above refuses.
            buffer.extend_from_slice(&data);
        }
    }
    match expected {
        Some(len) if buffer.len() == len => Ok(buffer.freeze()),
        Some(len) => Err(refuse(
            tonic::Code::InvalidArgument,
            "truncated_message",
            format!("the message ends after {} of its {len} bytes", buffer.len()),
        )),
        None if buffer.is_empty() => Err(refuse(
            tonic::Code::InvalidArgument,
            "missing_message",
            "the request carries no message".to_owned(),
        )),
        None => Err(refuse(
            tonic::Code::InvalidArgument,
            "truncated_message",
            format!("the message prefix ends after {} bytes", buffer.len()),
        )),
    }
}

/// A gRPC response that is its status alone (trailers-only), as tonic
/// writes it.
fn grpc_error(status: tonic::Status) -> Response {
    status.into_http::<Body>().map(Body::new)
}

/// The client's deadline from `grpc-timeout`, if it sent one; a value that
/// is not one is refused before anything else, as gRPC servers do
/// (INTERNAL, "malformed grpc-timeout").
fn grpc_deadline(headers: &HeaderMap, path: &str) -> Result<Option<Duration>, Refusal> {
    let Some(value) = headers.get(GRPC_TIMEOUT) else {
        return Ok(None);
    };
    match relay::parse_grpc_timeout(value.as_bytes()) {
        Some(deadline) => Ok(Some(deadline)),
        None => {
            tracing::info!(path, value = ?value, "request refused: malformed grpc-timeout");
            Err(Refusal::new(
                tonic::Code::Internal,
                "malformed_grpc_timeout",
                format!("malformed grpc-timeout {value:?}"),
            ))
        }
    }
}

/// The edge's TLS settings: the certificate chain and key from PEM files,
/// TLS 1.2 and 1.3 (ring), ALPN `h2` then `http/1.1`.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

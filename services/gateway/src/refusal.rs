//! The gateway's one refusal type, and the one place it becomes an answer.
//!
//! Every refusal or failure the gateway answers itself — admission's, the
//! JSON edge's, the gRPC ingress's, the `Gateway` service's — is a
//! [`Refusal`]: an HTTP status, a gRPC code, a stable reason, a safe
//! message, structured details and the headers that go with them
//! (`Retry-After`, `WWW-Authenticate`, `Allow`, `Connection: close`). It
//! has exactly two forms: [`Refusal::into_status`], the gRPC status with the
//! reason in [`soma_mesh::REASON_METADATA`]; and [`Refusal::into_response`],
//! the edge's JSON body `{code, reason, message, request_id, details}` with
//! its headers (the same body ends a failed NDJSON stream,
//! [`Refusal::into_stream_error_line`]). A backend's status is read back into one by
//! [`Refusal::from_status`], with grpc-gateway's table of HTTP statuses
//! ([`http_status`]).
//!
//! A failure that names no reason of its own (a backend's status without
//! one, or the gateway's own failures that never carried one) keeps none in
//! its gRPC form, and its JSON body names the code's ([`code_reason`]).

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tonic::metadata::{AsciiMetadataValue, MetadataKey};

use crate::context::RequestId;

/// A refused or failed request, as both protocols answer it.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// HTTP status at the edge.
    http: StatusCode,
    /// gRPC code at the ingress and in the JSON body.
    code: tonic::Code,
    /// Stable machine-readable reason; `None`: the code's.
    reason: Option<Cow<'static, str>>,
    /// Safe human-readable message.
    message: String,
    /// Structured details (moderation findings).
    details: Vec<Value>,
    /// HTTP headers (`Retry-After`, `WWW-Authenticate`, `Allow`,
    /// `Connection: close`), in order; those in [`GRPC_HEADERS`] are
    /// metadata of the gRPC form too.
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Metadata key of an HTTP status that differs from the one grpc-gateway's
/// table gives the code (e.g. 409 for a revoked release a `RunCapsule`
/// cannot run, whose code is `FAILED_PRECONDITION`): set by
/// [`Refusal::into_status`], read back by [`Refusal::from_status`], so that
/// the gateway's own methods keep their HTTP status across the in-process
/// call the edge makes. Only 4xx statuses travel this way.
pub const HTTP_STATUS_METADATA: &str = "soma-http-status";

/// The headers a gRPC client is told as well, as metadata of the status.
const GRPC_HEADERS: [HeaderName; 2] = [header::RETRY_AFTER, header::WWW_AUTHENTICATE];

impl Refusal {
    /// A refusal with `code` and a stable `reason`, answered at the edge
    /// with grpc-gateway's HTTP status for `code`.
    pub fn new(code: tonic::Code, reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..Self::without_reason(code, message)
        }
    }

    /// A failure that names no reason of its own: its gRPC status carries
    /// no `soma-reason`, its JSON body names the code's.
    pub fn without_reason(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            http: http_status(code),
            code,
            reason: None,
            message: message.into(),
            details: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// 401 for a missing or refused token, with its challenge (RFC 6750 §3).
    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        let challenge = if reason == "token_missing" {
            "Bearer".to_owned()
        } else {
            format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"")
        };
        Self::new(tonic::Code::Unauthenticated, reason, message).with_www_authenticate(&challenge)
    }

    /// 400 for a request the edge cannot read.
    pub fn bad_request(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(tonic::Code::InvalidArgument, reason, message)
    }

    /// A backend's status: its code (HTTP status from grpc-gateway's
    /// table), its message, its `soma-reason` if it named one, and its
    /// `retry-after`.
    pub fn from_status(status: &tonic::Status) -> Self {
        let metadata = status.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let mut refusal = Self {
            reason: text(soma_mesh::REASON_METADATA).map(|r| Cow::Owned(r.to_owned())),
            ..Self::without_reason(status.code(), status.message())
        };
        if let Some(v) = text("retry-after").and_then(|v| HeaderValue::from_str(v).ok()) {
            refusal.headers.push((header::RETRY_AFTER, v));
        }
        if let Some(http) = text(HTTP_STATUS_METADATA)
            .and_then(|v| v.parse::<u16>().ok())
            .and_then(|v| StatusCode::from_u16(v).ok())
            .filter(StatusCode::is_client_error)
        {
            refusal.http = http;
        }
        refusal
    }

    /// Answered at the edge with `http` instead of the code's HTTP status.
    pub fn with_http_status(mut self, http: StatusCode) -> Self {
        self.http = http;
        self
    }

    /// With `Retry-After: seconds` (429, 503).
    pub fn with_retry_after(self, seconds: u64) -> Self {
        self.with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    /// With a `WWW-Authenticate` challenge (401).
    pub fn with_www_authenticate(self, challenge: &str) -> Self {
        match HeaderValue::from_str(challenge) {
            Ok(v) => self.with_header(header::WWW_AUTHENTICATE, v),
            Err(_) => self,
        }
    }

    /// With structured details (moderation findings).
    pub fn with_details(mut self, details: Vec<Value>) -> Self {
        self.details = details;
        self
    }

    /// With one more HTTP header (`Allow` of a 405, `Connection: close`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A refusal answered before the request's body was read: on HTTP/1.x,
    /// a request that may carry a body gets `Connection: close`, so the
    /// connection is not kept for a body nobody will read (RFC 9112 §9.6).
    pub fn closing_if_body_unread<B>(self, request: &http::Request<B>) -> Self {
        let may_have_body = request.headers().contains_key(header::TRANSFER_ENCODING)
            || request
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if may_have_body {
            self.closing_on_http1(request.version())
        } else {
            self
        }
    }

    /// `Connection: close` on HTTP/1.x (HTTP/2 streams end on their own).
    pub fn closing_on_http1(self, version: http::Version) -> Self {
        if version < http::Version::HTTP_2 {
            self.with_header(header::CONNECTION, HeaderValue::from_static("close"))
        } else {
            self
        }
    }

    /// The HTTP status at the edge.
    pub fn http_status(&self) -> StatusCode {
        self.http
    }

    /// The gRPC code.
    pub fn code(&self) -> tonic::Code {
        self.code
    }

    /// The stable reason: its own, else the code's.
    pub fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or_else(|| code_reason(self.code))
    }

    /// The safe message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured details.
    pub fn details(&self) -> &[Value] {
        &self.details
    }

    /// The gRPC form: the code and message, the reason in `soma-reason`
    /// (when it names one), and `retry-after` / `www-authenticate` when set.
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code, self.message);
        let m = status.metadata_mut();
        if let Some(reason) = self.reason
            && let Ok(v) = reason.parse()
        {
            m.insert(soma_mesh::REASON_METADATA, v);
        }
        if self.http != http_status(self.code)
            && self.http.is_client_error()
            && let Ok(v) = self.http.as_str().parse()
        {
            m.insert(HTTP_STATUS_METADATA, v);
        }
        for (name, value) in self.headers {
            if GRPC_HEADERS.contains(&name)
                && let Ok(key) = MetadataKey::from_bytes(name.as_str().as_bytes())
                && let Ok(v) = AsciiMetadataValue::try_from(value.as_bytes())
            {
                m.insert(key, v);
            }
        }
        status
    }

    /// The HTTP form: the JSON body `{code, reason, message, request_id,
    /// details}` and the headers.
    pub fn into_response(self, request_id: &RequestId) -> Response {
        let body = self.body(request_id).to_string();
        let mut response = (self.http, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }

    /// The last line of a newline-delimited JSON stream that failed after
    /// its status line was sent: `{"error": <the JSON body>}`.
    pub fn into_stream_error_line(self, request_id: &RequestId) -> Bytes {
        let mut line = json!({ "error": self.body(request_id) }).to_string().into_bytes();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn body(&self, request_id: &RequestId) -> Value {
        json!({
            "code": self.code as i32,
            "reason": self.reason(),
            "message": self.message,
            "request_id": request_id.as_str(),
            "details": self.details,
        })
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        refusal.into_status()
    }
}

/// grpc-gateway's mapping of gRPC codes to HTTP statuses.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        // 499 Client Closed Request; a valid status number.
        C::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The reason of a code, for a failure that names none of its own.
pub fn code_reason(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_http_statuses_of_grpc_gateway() {
        use tonic::Code as C;
        let table: [(C, u16, &str); 17] = [
            (C::Ok, 200, "ok"),
            (C::Cancelled, 499, "cancelled"),
            (C::Unknown, 500, "unknown"),
            (C::InvalidArgument, 400, "invalid_argument"),
            (C::DeadlineExceeded, 504, "deadline_exceeded"),
            (C::NotFound, 404, "not_found"),
            (C::AlreadyExists, 409, "already_exists"),
            (C::PermissionDenied, 403, "permission_denied"),
            (C::ResourceExhausted, 429, "resource_exhausted"),
            (C::FailedPrecondition, 400, "failed_precondition"),
            (C::Aborted, 409, "aborted"),
            (C::OutOfRange, 400, "out_of_range"),
            (C::Unimplemented, 501, "unimplemented"),
            (C::Internal, 500, "internal"),
            (C::Unavailable, 503, "unavailable"),
            (C::DataLoss, 500, "data_loss"),
            (C::Unauthenticated, 401, "unauthenticated"),
        ];
        for (code, status, reason) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
            let refusal = Refusal::from_status(&tonic::Status::new(code, "m"));
            assert_eq!(
                (refusal.http_status().as_u16(), refusal.reason()),
                (status, reason),
                "{code:?}"
            );
        }
        // A backend's own reason wins over the code's.
        let status = Refusal::new(
            tonic::Code::DeadlineExceeded,
            "backend_slow",
            "the service did not answer within 15s",
        )
        .into_status();
        let refusal = Refusal::from_status(&status);
        assert_eq!(
            (refusal.http_status().as_u16(), refusal.reason()),
            (504, "backend_slow")
        );
    }

    #[test]
    fn the_grpc_form_carries_a_reason_only_when_the_refusal_names_one() {
        let named = Refusal::new(tonic::Code::ResourceExhausted, "rate_limited", "slow down")
            .with_retry_after(7)
            .into_status();
        let text =
            |s: &tonic::Status, key: &str| s.metadata().get(key).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            (
                named.code(),
                named.message(),
                text(&named, soma_mesh::REASON_METADATA).as_deref(),
                text(&named, "retry-after").as_deref()
            ),
            (
                tonic::Code::ResourceExhausted,
                "slow down",
                Some("rate_limited"),
                Some("7")
            )
        );
        let unnamed = Refusal::without_reason(tonic::Code::Internal, "broken").into_status();
        assert!(unnamed.metadata().is_empty(), "{:?}", unnamed.metadata());
    }
}

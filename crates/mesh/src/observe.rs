//! The end of every RPC, observed for the metrics: its gRPC status code and
//! the time from its arrival to the last byte of its response.
//!
//! A unary or streaming response ends with trailers carrying `grpc-status`;
//! a "trailers-only" response (an error before any message) carries it in
//! its headers. The response body is wrapped so that the status is read
//! where it really is, and a response the client abandons before its end
//! (the body dropped unfinished) counts as `CANCELLED`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;
use tonic::body::Body;

use crate::metrics::{MethodId, Metrics};

/// Records one RPC's end, once.
#[derive(Debug)]
pub(crate) struct Recorder {
    metrics: Metrics,
    /// The RPC's method, looked up when it arrived (the path is not copied).
    method: MethodId,
    start: Instant,
}

impl Recorder {
    pub(crate) fn start(metrics: Metrics, method: MethodId) -> Self {
        Self {
            metrics,
            method,
            start: Instant::now(),
        }
    }

    fn record(self, code: tonic::Code) {
        self.metrics.handled_at(self.method, code, self.start.elapsed());
    }

    /// Records the response now if its headers carry the status, or hands
    /// the recording to its body otherwise.
    pub(crate) fn observe(self, response: http::Response<Body>) -> http::Response<ObservedBody> {
        if let Some(code) = status_of(response.headers()) {
            self.record(code);
            return response.map(ObservedBody::unobserved);
        }
        response.map(|inner| ObservedBody {
            inner,
            recorder: Some(self),
        })
    }
}

/// A response body that records the status from its trailers, when it was
/// handed a [`Recorder`].
///
/// It is the runtime's response body type itself rather than boxed into a
/// `tonic::body::Body`: tonic boxes whatever body the service returns once,
/// and a box inside that box would cost every response one more allocation
/// and one more indirection per frame.
#[derive(Debug)]
pub struct ObservedBody {
    inner: Body,
    recorder: Option<Recorder>,
}

impl ObservedBody {
    /// A body with nothing to record (a refusal, counted when it was made;
    /// metrics off; a status already read from the headers).
    pub(crate) fn unobserved(inner: Body) -> Self {
        Self {
            inner,
            recorder: None,
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of)
                    && let Some(recorder) = self.recorder.take()
                {
                    recorder.record(code);
                }
            }
            // A body that fails or ends without a status: the client sees
            // no status either, which gRPC reads as UNKNOWN / INTERNAL.
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.record(tonic::Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.record(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Dropped before its trailers were sent: the client went away.
        if let Some(recorder) = self.recorder.take() {
            recorder.record(tonic::Code::Cancelled);
        }
    }
}

/// The `grpc-status` header's name, parsed once rather than at every look-up.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The `grpc-status` of a header map, if it has one.
fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    Some(tonic::Code::from(value.parse::<i32>().ok()?))
}
